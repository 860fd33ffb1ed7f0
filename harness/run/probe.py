"""The KVM probe, host side: one short, bounded container run before any smoke test decides
whether the run's cells use KVM or TCG (`--accel auto`), and why."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import docker

from ..core.model import Policy
from ..core.results import Found
from ..core.text import one_line
from ..engine import client as eng
from ..stages.smoke import ENGINE_FAILURES, REMOTE, copy_runner, killed_after

PROBE_TIMEOUT = 20  # s for the guest to reach its ready marker under KVM
SLACK = 60  # s for the container, the libvirt daemon's start and the files copied in
LOG = "accel-probe.log"
__all__ = ["Found", "probe_accel", "read_answer"]


def probe_accel(
    engine: docker.DockerClient,
    image: str,
    guest_tar: Path,
    policy: Policy,
    run_id: str,
    log_dir: Path,
    stop: threading.Event | None = None,
) -> Found:
    """Boots the guest under KVM in a container of a cell's image (with /dev/kvm, the runner
    and the guest copied in as for a smoke test); anything but a clear answer within
    PROBE_TIMEOUT + boot_timeout + SLACK seconds means TCG, with the reason."""
    if stop is not None and stop.is_set():
        return Found("tcg", "interrupted before the KVM probe", False)
    overall = PROBE_TIMEOUT + policy.boot_timeout + SLACK
    try:
        container = engine.containers.run(
            image,
            ["sleep", "infinity"],
            detach=True,
            init=True,
            name=f"hvgate-{run_id}-accel-probe",
            labels={eng.LABEL_RUN: run_id},  # removed with the run's containers on Ctrl-C
            devices=["/dev/kvm:/dev/kvm:rwm"],
        )
    except ENGINE_FAILURES as exc:
        return _failed(f"its container did not start: {one_line(exc)}", lasting=False)
    try:
        with killed_after(container, overall) as timed_out:
            out, err, code = _ask(engine, container, guest_tar, policy)
    except ENGINE_FAILURES as exc:
        if timed_out.is_set():  # the kill cut the engine's answer short
            return _failed(f"it did not finish within {overall:.0f} s", lasting=True)
        return _failed(f"the Docker engine failed: {one_line(exc)}", lasting=False)
    finally:
        with contextlib.suppress(*ENGINE_FAILURES):
            container.remove(force=True, v=True)
    _keep_log(log_dir, err or b"")
    if timed_out.is_set():
        # A guest that hangs under KVM (seen with nested virtualisation) is this host's trait.
        return _failed(f"it did not finish within {overall:.0f} s", lasting=True)
    return read_answer(out or b"", err or b"", code)


def _ask(
    engine: docker.DockerClient, container: Any, guest_tar: Path, policy: Policy
) -> tuple[bytes | None, bytes | None, int | None]:
    """Copies the runner and the guest in and runs the runner's probe: (stdout, stderr, exit code)."""
    copy_runner(container, guest_tar)
    command = [
        "python3",
        "-m",
        "smoke",
        "--probe",
        "--accel",
        "auto",
        "--kvm-probe-timeout",
        str(PROBE_TIMEOUT),
        "--boot-timeout",
        str(policy.boot_timeout),
    ]
    exec_id = engine.api.exec_create(container.id, command, workdir=REMOTE)["Id"]
    out, err = engine.api.exec_start(exec_id, demux=True)
    return out, err, engine.api.exec_inspect(exec_id).get("ExitCode")


def read_answer(out: bytes, err: bytes, code: int | None) -> Found:
    """The probe's one JSON line: {"format": 1, "accel", "accel_reason", "setup_error"}."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        answer: Any = json.loads(lines[-1])
    except (ValueError, IndexError):
        answer = None
    if (
        not isinstance(answer, dict)
        or answer.get("format") != 1
        or answer.get("accel") not in ("kvm", "tcg")
    ):
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        return _failed(f"the probe exited {code} without an answer: {tail or 'no output'}", False)
    if answer.get("setup_error"):
        # libvirt did not come up, so KVM was not tried: nothing learned about the host.
        return _failed(f"libvirt did not start: {one_line(answer['setup_error'])}", lasting=False)
    reason = str(answer.get("accel_reason") or f"the probe chose {answer['accel']}")
    return Found(answer["accel"], reason, True)


def _failed(why: str, lasting: bool) -> Found:
    return Found("tcg", f"KVM probe failed ({why}); using TCG", lasting)


def _keep_log(log_dir: Path, err: bytes) -> None:
    # The runner's progress lines: why KVM failed, when it did.
    with contextlib.suppress(OSError):
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / LOG).write_bytes(err)
