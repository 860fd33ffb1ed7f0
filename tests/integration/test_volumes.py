"""The volume scenarios (harness/smoke/volumes.py) on a real Debian 12 cell, and on the same cell
with each scenario's own operation made to fail (images/overrides/fault-volumes.Dockerfile.j2):
there every run of every scenario is a `fail` naming the planted fault, never a runner `error`
(no mocks: tests/integration/data/volumes.yaml, two runs of each)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "volumes.yaml"
RUNS = 2  # volumes.yaml's policy
SCENARIOS = ("image-ops", "cold-snapshot", "volume-extend", "root-resize", "detach")
# What each scenario's failure names on the faulty cell.
FAULTS = {
    "image-ops": "hvgate fault injection: qemu-img convert fails",
    "cold-snapshot": "hvgate fault injection: qemu-img convert fails",
    "volume-extend": "File too large",
    "root-resize": "hvgate fault injection: qemu-img resize fails",
    "detach": "vdb is still attached after 2 detach attempts, each waiting 3 s",
}


@pytest.fixture(scope="module")
def cells(engine, tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("volumes")
    started = time.monotonic()
    done = invoke(
        "matrix.run", "--matrix", str(MATRIX), "--jobs", "1",
        results_dir=results_dir, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    print(f"\nvolumes run: {seconds:.0f} s")
    by_id = {}
    for cell in data["cells"]:
        cell["log_dir"] = str(results_dir / cell["log_dir"])  # relative to the results directory
        by_id[cell["id"]] = cell
        for s in cell["scenarios"]:
            print(
                f"  {cell['id']:<15} {s['name']:<14} {s['status']:<12} "
                f"{s['failures']}/{s['runs']} failed, {s['errors']} errors, "
                f"durations {s['durations_s']}; {s['messages'][:1]}"
            )
    assert "Traceback" not in done.stderr
    return done, by_id


def scenario(cell, name):
    (found,) = [s for s in cell["scenarios"] if s["name"] == name]
    return found


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_passes_on_the_clean_cell(cells, name):
    _, by_id = cells
    found = scenario(by_id["volumes-clean"], name)
    assert (found["runs"], found["failures"], found["errors"]) == (RUNS, 0, 0), (
        found["messages"],
        found["logs"],
    )


def test_the_clean_cell_did_what_the_scenarios_claim(cells):
    _, by_id = cells
    cell = by_id["volumes-clean"]
    for details in scenario(cell, "volume-extend")["details"]:
        assert details["sectors"] == 2048 * 1024 * 2, details  # 2 GiB in 512-byte sectors
    for details in scenario(cell, "detach")["details"]:
        assert details["attempts_idle"] >= 1 and details["attempts_load"] >= 1, details
        assert details["writes"] >= 17, details
    for details in scenario(cell, "cold-snapshot")["details"]:
        assert details["beat_after"] > details["beat_before"], details
    console = (Path(cell["log_dir"]) / "console.log").read_text(errors="replace")
    assert "HVGATE-DISK-RESIZED vdb size=4194304" in console
    assert "HVGATE-DISK-PRESENT vda size=" in console


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_planted_fault_is_a_failure_not_an_error(cells, name):
    _, by_id = cells
    found = scenario(by_id["volumes-faults"], name)
    assert (found["runs"], found["failures"], found["errors"]) == (RUNS, RUNS, 0), found
    assert found["status"] != "error"
    assert found["messages"] and all(FAULTS[name] in m for m in found["messages"]), found


def test_the_faulty_cell_is_judged_and_the_run_exits_one(cells):
    done, by_id = cells
    assert by_id["volumes-faults"]["status"] not in ("error", "safe")
    assert done.returncode == 1, done.stderr[-3000:]  # a finding against QEMU, not a crash
    log = Path(by_id["volumes-faults"]["log_dir"]) / "libvirt-hvgate-qemu-img.log"
    refused = log.read_text().split()
    assert refused.count("convert") >= 2 * RUNS and refused.count("resize") >= RUNS
