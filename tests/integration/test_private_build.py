"""A private build as one more cell: a directory of .deb files (here downloaded from Debian 12's
backports, as a maintainer would drop their own build) becomes the cell's source; the cell is
resolved, built and smoke-tested like any other."""

import json
import textwrap

import pytest

from tests.cli import invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def matrix(backports_debs, tmp_path_factory):
    debs = backports_debs
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


def test_the_directory_is_resolved_like_an_archive(locked, backports_debs):
    debs = backports_debs
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
        if scenario["status"] == "not-applicable":
            # libvirt 11's Debian packages ship the secret driver apart; the image has only
            # what the cell installs.
            assert scenario["name"].startswith("encrypted-"), scenario
            assert "libvirt's secret driver" in scenario["decision"], scenario
            continue
        assert scenario["runs"] >= 1 and scenario["failures"] == 0, scenario
