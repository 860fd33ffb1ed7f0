"""harness.run.probe without Docker: the KVM probe's container, its answer, its bounds."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from harness.engine import client as eng
from harness.run import probe
from harness.stages import smoke as runner

RUN = "20261123T120000Z-aaaa"
KVM = {"format": 1, "accel": "kvm", "accel_reason": "booted in 1.2 s", "setup_error": None}


class Container:
    def __init__(self, client: Client):
        self.client, self.id, self.archives = client, "c1", []
        self.removed = self.killed = False

    def put_archive(self, path: str, data: bytes) -> None:
        self.archives.append(path)

    def kill(self) -> None:
        self.killed = True
        self.client.killed.set()

    def remove(self, force: bool, v: bool) -> None:
        self.removed = True


class Client:
    """Stands in for docker.DockerClient where the probe calls it."""

    def __init__(self, out: bytes = b"", err: bytes = b"", code: int = 0, hang: bool = False):
        self.out, self.err, self.code, self.hang = out, err, code, hang
        self.runs: list[dict[str, Any]] = []
        self.commands: list[list[str]] = []
        self.container: Container | None = None
        self.killed = threading.Event()
        self.containers = SimpleNamespace(run=self._run)
        self.api = SimpleNamespace(
            exec_create=self._exec_create, exec_start=self._exec_start, exec_inspect=self._inspect
        )

    def _run(self, image: str, command: list[str], **options: Any) -> Container:
        self.runs.append({"image": image, **options})
        self.container = Container(self)
        return self.container

    def _exec_create(self, container_id: str, command: list[str], workdir: str) -> dict[str, str]:
        self.commands.append(command)
        return {"Id": "e1"}

    def _exec_start(self, exec_id: str, demux: bool) -> tuple[bytes, bytes]:
        if self.hang:  # a guest hung under KVM: only the watchdog's kill ends it
            assert self.killed.wait(10)
            return b"", b"booting under KVM\n"
        return self.out, self.err

    def _inspect(self, exec_id: str) -> dict[str, int]:
        return {"ExitCode": self.code}


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    path = tmp_path / "guest.tar"
    path.write_bytes(b"guest")
    return path


def ask(client: Any, guest: Path, log_dir: Path, boot_timeout: float = 120, **kw: Any):
    policy = SimpleNamespace(boot_timeout=boot_timeout)
    return probe.probe_accel(client, "hvgate/cell:a", guest, policy, RUN, log_dir, **kw)  # type: ignore[arg-type]


def test_a_kvm_answer_is_kept_for_the_host(guest, tmp_path):
    client = Client(json.dumps(KVM).encode() + b"\n", b"accel: kvm\n")
    found = ask(client, guest, tmp_path / "logs", boot_timeout=90)
    assert found == probe.Found("kvm", "booted in 1.2 s", True)
    (options,) = client.runs
    # As a cell's smoke container: the same image, /dev/kvm, an init, the run's label.
    assert options["image"] == "hvgate/cell:a"
    assert options["devices"] == ["/dev/kvm:/dev/kvm:rwm"]
    assert options["init"] is True
    assert options["labels"] == {eng.LABEL_RUN: RUN}
    assert options["name"] == f"hvgate-{RUN}-accel-probe"
    assert client.container is not None
    assert client.container.archives == [runner.REMOTE, runner.REMOTE]  # the runner, the guest
    assert client.commands == [
        ["python3", "-m", "smoke", "--probe", "--accel", "auto"]
        + ["--kvm-probe-timeout", "20", "--boot-timeout", "90"]
    ]
    assert client.container.removed
    assert (tmp_path / "logs" / probe.LOG).read_bytes() == b"accel: kvm\n"


def test_a_tcg_answer_is_kept_too(guest, tmp_path):
    answer = {**KVM, "accel": "tcg", "accel_reason": "KVM probe failed (no marker); using TCG"}
    found = ask(Client(json.dumps(answer).encode()), guest, tmp_path)
    assert found == probe.Found("tcg", "KVM probe failed (no marker); using TCG", True)


@pytest.mark.parametrize(
    ("out", "err", "code", "says"),
    [
        (b"", b"usage: smoke\nsmoke: error: unrecognized arguments: --probe\n", 2, "exited 2"),
        (b"not json\n", b"", 0, "without an answer: no output"),
        (json.dumps({**KVM, "format": 2}).encode(), b"", 0, "without an answer"),
        (json.dumps({**KVM, "accel": "hvf"}).encode(), b"", 0, "without an answer"),
        (
            json.dumps({**KVM, "accel": "tcg", "setup_error": "virtqemud did not start"}).encode(),
            b"",
            0,
            "libvirt did not start: virtqemud did not start",
        ),
    ],
)
def test_no_clear_answer_means_tcg_for_this_run_only(guest, tmp_path, out, err, code, says):
    client = Client(out, err, code)
    found = ask(client, guest, tmp_path)
    assert found.accel == "tcg" and not found.lasting
    assert found.reason.startswith("KVM probe failed (") and says in found.reason
    assert found.reason.endswith("); using TCG")
    assert client.container is not None and client.container.removed


def test_a_hung_probe_is_killed_within_its_bound(guest, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "PROBE_TIMEOUT", 0.1)
    monkeypatch.setattr(probe, "SLACK", 0.1)
    client = Client(hang=True)
    found = ask(client, guest, tmp_path, boot_timeout=0.1)
    assert found.accel == "tcg" and found.lasting  # KVM hangs here: not worth probing again
    assert "did not finish within" in found.reason
    assert client.container is not None and client.container.killed and client.container.removed


def test_a_container_that_does_not_start_means_tcg(guest, tmp_path):
    client = Client()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise docker.errors.APIError("error gathering device information: /dev/kvm")

    client.containers.run = refuse
    found = ask(client, guest, tmp_path)
    assert found.accel == "tcg" and not found.lasting
    assert "its container did not start" in found.reason


def test_nothing_starts_once_stopped(guest, tmp_path):
    stop = threading.Event()
    stop.set()
    client = Client()
    found = ask(client, guest, tmp_path, stop=stop)
    assert client.runs == [] and found.accel == "tcg" and not found.lasting
