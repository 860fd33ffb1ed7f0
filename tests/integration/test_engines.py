"""Several engines: a second dockerd, started here on its own socket and data root, takes part of a
run; the cells spread over both engines and are judged as on one engine."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest

from tests.cli import invoke
from tests.integration.live import small_matrix

pytestmark = pytest.mark.integration

CELLS = ["debian-12-release", "debian-13-release"]
TIMEOUT = 3600


def main_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def why_no_second_engine(engine) -> str | None:
    if os.geteuid() != 0:
        return "starting a second dockerd needs root"
    if not shutil.which("dockerd"):
        return "no dockerd binary to start a second engine with"
    if not main_address().startswith("unix://"):
        return f"the main engine ({main_address()}) is not on this host"
    return None


def accepts(path: Path) -> bool:
    """Whether something listens on the unix socket (docker's client would leak a socket)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def second_engine(engine):
    """A dockerd of its own (socket, data root, exec root, pidfile, config), with the main
    engine's storage driver. Its iptables handling is off, since two daemons would rewrite the
    same chains; its containers join the main engine's bridge in an address range of their own,
    so that builds reach the archive through the main engine's NAT rule."""
    problem = why_no_second_engine(engine)
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a second Docker engine: {problem}")
        pytest.skip(problem)
    bridge = engine.networks.get("bridge")
    bridge_name = bridge.attrs["Options"].get("com.docker.network.bridge.name", "docker0")
    subnet = ipaddress.ip_network(bridge.attrs["IPAM"]["Config"][0]["Subnet"])
    own_range = list(subnet.subnets(new_prefix=max(subnet.prefixlen, 24)))[-2]
    # Its containers sit on that bridge: they need its MTU, or replies larger than the bridge's
    # MTU are lost and downloads stall.
    mtu = bridge.attrs["Options"].get("com.docker.network.driver.mtu", "1500")
    directory = Path(tempfile.mkdtemp(prefix="hvgate-engine-", dir="/tmp"))
    (directory / "daemon.json").write_text("{}")
    address = f"unix://{directory}/docker.sock"
    log = open(directory / "dockerd.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [
            "dockerd",
            f"--config-file={directory}/daemon.json",
            f"--host={address}",
            f"--data-root={directory}/data",
            f"--exec-root={directory}/exec",
            f"--pidfile={directory}/docker.pid",
            f"--storage-driver={engine.info()['Driver']}",
            f"--bridge={bridge_name}",
            f"--fixed-cidr={own_range}",
            "--iptables=false",
            "--ip-masq=false",
            f"--mtu={mtu}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = None
    try:
        deadline = time.monotonic() + 120
        while not accepts(directory / "docker.sock"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "dockerd.log").read_text()[-2000:]
                pytest.fail(f"the second dockerd did not start:\n{tail}")
            time.sleep(0.5)
        client = docker.DockerClient(base_url=address, timeout=600)
        client.ping()
        yield address, client
    finally:
        if client is not None:
            client.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(engine, second_engine, tmp_path_factory):
    address, _ = second_engine
    base = tmp_path_factory.mktemp("engines")
    matrix = str(small_matrix(base, CELLS))
    one = invoke("matrix.run", "--matrix", matrix, results_dir=base / "one", timeout=TIMEOUT)
    two = invoke(
        "matrix.run",
        "--matrix",
        matrix,
        "--engines",
        f"default,{address}",
        results_dir=base / "two",
        timeout=TIMEOUT,
    )
    return (
        one,
        two,
        json.loads((base / "one" / "latest.json").read_text()),
        json.loads((base / "two" / "latest.json").read_text()),
    )


def test_both_runs_finish_with_a_verdict(runs):
    one, two, _, _ = runs
    assert one.returncode in (0, 1), one.stderr[-3000:]
    assert two.returncode == one.returncode, two.stderr[-3000:]


def test_the_cells_spread_over_both_engines(runs, second_engine):
    address, _ = second_engine
    _, two, _, data = runs
    assert {c["id"]: c["build"].get("engine") for c in data["cells"]} == {
        CELLS[0]: "default",
        CELLS[1]: address,
    }
    assert "smoke test (" in two.stderr and f"on {address}" in two.stderr


def test_the_verdicts_are_those_of_one_engine(runs):
    _, _, one, two = runs
    for a, b in zip(one["cells"], two["cells"], strict=True):
        assert a["id"] == b["id"]
        assert a["status"] == b["status"], (a["reason"], b["reason"])
        assert a["versions"] == b["versions"]
        assert [(s["name"], s["status"]) for s in a["scenarios"]] == [
            (s["name"], s["status"]) for s in b["scenarios"]
        ]
        assert "engine" not in a["build"]  # one engine: nothing to say


def test_the_cell_was_built_on_the_engine_it_ran_on(runs, second_engine, engine):
    _, client = second_engine
    _, _, _, data = runs
    cell = next(c for c in data["cells"] if c["id"] == CELLS[1])
    image = client.images.get(cell["image"])
    assert image.labels["io.hvgate.version.libvirt-daemon"] == cell["versions"]["libvirt-daemon"]
    # Its base was copied, not bootstrapped again: the same image id on both engines.
    base = "hvgate/base:debian-13"
    assert client.images.get(base).id == engine.images.get(base).id


def test_no_containers_are_left_on_either_engine(runs, second_engine, engine):
    _, client = second_engine
    _, _, _, data = runs
    label = {"label": f"io.hvgate.run={data['run_id']}"}
    assert client.containers.list(all=True, filters=label) == []
    assert engine.containers.list(all=True, filters=label) == []
