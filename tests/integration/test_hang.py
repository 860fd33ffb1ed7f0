"""A daemon that hangs for real, mid-scenario: the scenario fails within its timeout, naming the
call that did not return, with the daemon's thread states as evidence, and the next scenario
passes on a renewed daemon (no mocks: tests/integration/data/hang.yaml)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "hang.yaml"
SCENARIO_TIMEOUT = 20  # hang.yaml's policy
GRACE = 10  # harness/smoke/supervisor.py: past the timeout before the worker is killed


@pytest.fixture(scope="module")
def hung(engine, tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("hang")
    started = time.monotonic()
    done = invoke("matrix.run", "--matrix", str(MATRIX), results_dir=results_dir, timeout=1800)
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    (cell,) = json.loads((results_dir / "latest.json").read_text())["cells"]
    cell["log_dir"] = str(results_dir / cell["log_dir"])  # relative to the results directory
    return done, cell, seconds


def scenario(cell, name):
    (found,) = [s for s in cell["scenarios"] if s["name"] == name]
    return found


def test_the_hung_scenario_fails_in_time_naming_the_call(hung):
    done, cell, _ = hung
    saved = scenario(cell, "managed-save")
    assert (saved["runs"], saved["failures"], saved["errors"]) == (1, 1, 0), saved
    (message,) = saved["messages"]
    assert message.startswith("the libvirt call create at scenarios.py:"), message
    assert f"did not return within {SCENARIO_TIMEOUT} s" in message
    assert "libvirtd" in message and "is stopped" in message, message
    # Within its timeout plus the grace, not the cell's bound.
    (seconds,) = saved["durations_s"]
    assert SCENARIO_TIMEOUT <= seconds <= SCENARIO_TIMEOUT + GRACE + 5, seconds
    # The evidence: every daemon thread stopped, and the worker's stack in the libvirt call.
    threads = saved["logs"]["threads"]
    assert threads and any("libvirtd: stopped" in line for line in threads), threads
    assert any("libvirt.py" in line and "in create" in line for line in saved["logs"]["stack"])
    assert "Traceback" not in done.stderr


def test_the_scenarios_around_it_pass(hung):
    _, cell, _ = hung
    assert scenario(cell, "boot")["failures"] == 0
    after = scenario(cell, "pause-resume")
    assert (after["runs"], after["failures"], after["errors"]) == (1, 0, 0), after
    # The hook saw three starts: boot, the hung restore, and the renewed guest of pause-resume.
    hook_log = (Path(cell["log_dir"]) / "libvirt-hvgate-hang.log").read_text().splitlines()
    assert [line.split()[-1] for line in hook_log if " start " in line] == ["1", "2", "3"]


def test_the_cell_is_judged_not_errored(hung):
    done, cell, _ = hung
    assert cell["status"] != "error", cell["reason"]
    assert done.returncode == 1, done.stderr[-3000:]  # a finding against libvirt, not a crash
