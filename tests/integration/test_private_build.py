"""A private build as one more cell: a directory of .deb files (here downloaded from Debian 12's
backports, as a maintainer would drop their own build) becomes the cell's source; the cell is
resolved, built and smoke-tested like any other."""

import io
import json
import tarfile
import textwrap

import pytest

from tests.cli import invoke

pytestmark = pytest.mark.integration

PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu python3-libvirt qemu-system-x86 qemu-utils"
# The backports suite on the mirror the base image's own sources name: no host name written here.
DOWNLOAD = f"""
sed -n 's/^deb \\([^ ]*\\) bookworm main$/deb \\1 bookworm-backports main/p' /etc/apt/sources.list \
    > /etc/apt/sources.list.d/backports.list
grep -q backports /etc/apt/sources.list.d/backports.list
apt-get update -q
apt-get install -y -q --download-only --no-install-recommends -t bookworm-backports {PACKAGES}
"""


@pytest.fixture(scope="module")
def debs(engine, tmp_path_factory):
    """The .debs apt needs for libvirt and QEMU from backports, in a directory of our own."""
    container = engine.containers.run(
        "hvgate/base:debian-12",
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


@pytest.fixture(scope="module")
def matrix(debs, tmp_path_factory):
    path = tmp_path_factory.mktemp("matrix") / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            bases:
              debian-12: {{distro: debian, release: "12", codename: bookworm}}
            sources:
              private: {{description: a build of our own, debs: "{debs}"}}
            cells:
              - {{base: debian-12, source: private, id: debian-12-private}}
            policy: {{runs: 1}}
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def locked(engine, matrix, results_dir):
    done = invoke("matrix.resolve", "--matrix", str(matrix), results_dir=results_dir, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lock = json.loads(matrix.with_suffix(".lock.json").read_text())
    return {c["id"]: c["packages"] for c in lock["cells"]["debian-12-private"]["cells"]}


def test_the_directory_is_resolved_like_an_archive(locked, debs):
    packages = locked["debian-12-private"]
    assert "bpo12" in packages["libvirt-daemon"]
    assert "bpo12" in packages["qemu-system-x86"]
    listed = {p.name.split("_")[1].replace("%3a", ":") for p in debs.glob("libvirt-daemon_*.deb")}
    assert packages["libvirt-daemon"] in listed


def test_the_private_cell_builds_and_runs_every_scenario(locked, matrix, results_dir):
    done = invoke("matrix.run", "--matrix", str(matrix), results_dir=results_dir, timeout=2400)
    assert "Traceback" not in done.stderr
    (cell,) = json.loads((results_dir / "latest.json").read_text())["cells"]
    assert cell["id"] == "debian-12-private"
    # The image holds exactly the locked versions from the directory.
    for package, version in locked["debian-12-private"].items():
        assert cell["versions"][package] == version
    assert cell["libvirt_version"].startswith("11.")
    assert cell["scenarios"], cell.get("reason")
    for scenario in cell["scenarios"]:
        assert scenario["runs"] >= 1 and scenario["failures"] == 0, scenario
