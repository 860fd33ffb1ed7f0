"""The power scenarios (harness/smoke/power.py) for real, and able to fail: each runs twice in
three Debian 12 cells (tests/integration/data/power.yaml).

- power-clean: every run passes: the guest boots again after a hard reboot, shuts down by the
  ACPI power button within nova's 60 s and boots when powered on, boots the rescue disk seeing
  its own disk second and its own disk after unrescue.
- power-start-fault: a libvirt QEMU hook fails every second guest start. Each scenario's fresh
  guest is the odd start; the start its operation makes (the hard reboot's, the power on's, the
  rescue's) the even one: every run fails, as `fail` (libvirt's refusal), never `error`.
- power-acpi-fault: the guest ignores the power button, so nova's clean shutdown times out and
  nova destroys the guest: power-off-on fails (the guest lost its clean shutdown); the other
  two pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import ROOT
from tests.integration.support import run_matrix

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "power.yaml"
RUNS = 2
SCENARIOS = ["hard-reboot", "power-off-on", "rescue-unrescue"]


@pytest.fixture(scope="module")
def run_result(engine, results_dir):
    flags = ("--accel", "tcg", "--runs", str(RUNS), "--jobs", "1")
    return run_matrix(MATRIX, results_dir, *flags, label="power")


def scenarios_of(data, cell_id):
    (cell,) = [c for c in data["cells"] if c["id"] == cell_id]
    return cell, {s["name"]: s for s in cell["scenarios"]}


def test_the_clean_cell_passes_every_run(run_result):
    _, data = run_result
    cell, scenarios = scenarios_of(data, "power-clean")
    assert list(scenarios) == SCENARIOS
    for name, s in scenarios.items():
        assert (s["runs"], s["failures"], s["errors"]) == (RUNS, 0, 0), (name, s["messages"])


def test_a_failing_start_fails_each_operation(run_result):
    _, data = run_result
    cell, scenarios = scenarios_of(data, "power-start-fault")
    for name, s in scenarios.items():
        # libvirt refused the operation's start: a failure of the cell, not of the runner.
        assert (s["runs"], s["failures"], s["errors"]) == (RUNS, RUNS, 0), (name, s["messages"])
        assert any("hook" in m.lower() for m in s["messages"]), (name, s["messages"])
    # The hook's log: odd starts passed, even ones failed, one failure per run.
    lines = (Path(cell["log_dir"]) / "libvirt-hvgate-fault.log").read_text().splitlines()
    outcomes = [line.split()[1] for line in lines]
    assert outcomes == ["pass", "fail"] * (len(SCENARIOS) * RUNS)


def test_a_guest_deaf_to_the_power_button_fails_the_clean_shutdown(run_result):
    _, data = run_result
    cell, scenarios = scenarios_of(data, "power-acpi-fault")
    power = scenarios["power-off-on"]
    assert (power["runs"], power["failures"], power["errors"]) == (RUNS, RUNS, 0)
    assert any(
        "did not shut down within 60 s of the ACPI power button" in m
        and "never reacted to the button" in m
        for m in power["messages"]
    ), power["messages"]
    for name in ("hard-reboot", "rescue-unrescue"):
        s = scenarios[name]
        assert (s["runs"], s["failures"], s["errors"]) == (RUNS, 0, 0), (name, s["messages"])
