"""The backtest matrix's Ubuntu 18.04 cell, for real: its image builds with the release pocket's
versions, and the smoke runner runs on the distro's Python 3.6, reporting a scenario the cell's
libvirt is too old for as not-applicable. One run of three scenarios keeps it cheap."""

import json

import pytest

from tests.integration.support import BACKTEST, backtest_cell

pytestmark = pytest.mark.integration

CELL = "ubuntu-18.04-release"
# One that runs everywhere, one that needs libvirt 5.10 (18.04 has 4.0), and one whose user
# alias needs libvirt 3.9.
SCENARIOS = ["boot", "snapshot-during-restart", "detach-under-load"]


@pytest.fixture(scope="module")
def bionic(engine, tmp_path_factory):
    return backtest_cell(tmp_path_factory.mktemp("backtest"), CELL, SCENARIOS, 1, 1800)


def test_the_run_reports_without_a_traceback(bionic):
    done, cell = bionic
    # One run each cannot prove the policy's bound: inconclusive, exit 1; never the tool's 3.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert cell["id"] == CELL and cell["status"] != "error", cell.get("reason")


def test_the_runner_runs_on_python_3_6(bionic, engine):
    _, cell = bionic
    output = engine.containers.run(
        cell["image"],
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        remove=True,
        labels={"io.hvgate.run": "test-backtest"},
    )
    assert output.decode().strip() == "3.6"
    # The runner imports every module of harness/smoke: it compiled and ran there.
    by_name = {s["name"]: s for s in cell["scenarios"]}
    assert by_name["boot"]["runs"] == 1 and by_name["boot"]["failures"] == 0, by_name["boot"]
    assert by_name["detach-under-load"]["runs"] == 1, by_name["detach-under-load"]


def test_a_scenario_the_cell_is_too_old_for_is_not_applicable(bionic):
    _, cell = bionic
    (scenario,) = [s for s in cell["scenarios"] if s["name"] == "snapshot-during-restart"]
    assert scenario["status"] == "not-applicable"
    assert scenario["runs"] == 0
    assert "libvirt >= 5.10.0 (the cell has 4.0.0)" in scenario["decision"]


def test_the_release_cell_has_the_release_pockets_versions(bionic):
    # apt 1.6 ignores a src: pin: the pin scripts name the source's binaries too, or libvirt0
    # and the other binaries would come from -updates.
    _, cell = bionic
    lock = json.loads(BACKTEST.with_suffix(".lock.json").read_text())
    locked = lock["cells"][CELL]["cells"][0]["packages"]
    listed = lock["cells"][CELL]["listed"]["libvirt-daemon"]
    assert locked["libvirt-daemon"] in listed["bionic"]
    assert cell["versions"]["libvirt-daemon"] == locked["libvirt-daemon"]
    assert cell["versions"]["qemu-system-x86"] == locked["qemu-system-x86"]
    assert cell["libvirt_version"] == "4.0.0"


def test_the_runner_records_what_the_container_left_out_on_python_3_6(bionic):
    _, cell = bionic
    features = [entry["feature"] for entry in cell["not_exercised"]]
    assert {"apparmor", "dac", "cgroups", "namespaces"} <= set(features), features
