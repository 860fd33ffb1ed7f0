"""Integration tests use the real Docker engine; outside CI they skip, saying why, when it is missing."""

import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def engine_problem():
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # any failure means: no usable engine
        return f"no Docker engine: {exc}"
    return None


@pytest.fixture(scope="session")
def engine():
    problem = engine_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the Docker engine: {problem}")
        pytest.skip(problem)
    import docker

    return docker.from_env(timeout=600)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


# One real run of the default matrix's Debian 12 cells serves every test that needs a run to
# look at (the cell itself, the output formats, the pin files): each such run costs minutes.
SHARED_CELLS = ("debian-12-release", "debian-12-backports")
# The default policy needs two nights for `safe` (31 clean runs); these tests look at a decided
# run, not at the statistics (test_verdicts and test_evidence do): four clean runs decide here.
SHARED_POLICY = {"unsafe_failure_rate": 0.5, "confidence": 0.9, "max_runs": 8}


@dataclass(frozen=True)
class SharedRun:
    results_dir: Path
    done: subprocess.CompletedProcess
    data: dict
    summary: Path

    def cell(self, cell_id):
        (cell,) = [c for c in self.data["cells"] if c["id"] == cell_id]
        return cell


@pytest.fixture(scope="session")
def debian12_run(engine, tmp_path_factory):
    from tests.cli import invoke
    from tests.integration.live import small_matrix

    results_dir = tmp_path_factory.mktemp("debian-12-run")
    matrix = small_matrix(
        tmp_path_factory.mktemp("debian-12-matrix"), SHARED_CELLS, SHARED_POLICY, scenarios=None
    )
    summary = results_dir / "step-summary.md"
    with pytest.MonkeyPatch.context() as patch:  # the CLI inherits the environment
        patch.setenv("GITHUB_STEP_SUMMARY", str(summary))
        done = invoke("matrix.run", "--matrix", str(matrix), results_dir=results_dir, timeout=5400)
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    return SharedRun(results_dir, done, data, summary)


PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu python3-libvirt qemu-system-x86 qemu-utils"
# The backports suite on the mirror the base image's own sources name: no host name written here.
DOWNLOAD = f"""
sed -n 's/^deb \\([^ ]*\\) bookworm main$/deb \\1 bookworm-backports main/p' /etc/apt/sources.list \
    > /etc/apt/sources.list.d/backports.list
grep -q backports /etc/apt/sources.list.d/backports.list
apt-get update -q
apt-get install -y -q --download-only --no-install-recommends -t bookworm-backports {PACKAGES}
"""


@pytest.fixture(scope="session")
def debian12_base(engine, tmp_path_factory):
    """hvgate/base:debian-12, bootstrapped if this engine has none yet."""
    from harness.core.model import Base
    from tests.integration.support import base_on_engine

    debian_12 = Base(distro="debian", release="12", codename="bookworm")
    return base_on_engine(engine, "debian-12", debian_12, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def backports_debs(engine, debian12_base, tmp_path_factory):
    """The .debs apt needs for libvirt and QEMU from backports, in a directory of our own."""
    container = engine.containers.run(
        debian12_base,
        ["sh", "-ec", DOWNLOAD],
        detach=True,
        labels={"io.hvgate.run": "test-private-build"},
    )
    try:
        assert container.wait(timeout=900)["StatusCode"] == 0, container.logs()[-2000:]
        stream, _ = container.get_archive("/var/cache/apt/archives")
        data = io.BytesIO(b"".join(stream))
    finally:
        container.remove(force=True)
    directory = tmp_path_factory.mktemp("private-build")
    with tarfile.open(fileobj=data) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".deb"):
                name = member.name.rsplit("/", 1)[-1]
                (directory / name).write_bytes(tar.extractfile(member).read())
    assert any(directory.glob("libvirt-daemon_*bpo12*.deb")), sorted(directory.iterdir())
    return directory
