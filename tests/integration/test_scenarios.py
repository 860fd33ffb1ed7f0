"""The scenarios that restart the libvirt daemon under a running job, and detach a disk the guest
writes to, on the real Debian 12 and 13 release cells, repeated until the default policy's
sequential test decides (no mocks).

tests/integration/data/scenarios.yaml runs only those three scenarios, under TCG: a clean
scenario is `safe` after 11 runs. The test then checks, run by run, that each scenario did what
it claims: the daemon really restarted (its log shows a start per restart) while the job ran,
and the guest really wrote to the disk it lost.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness.core.results import Status
from harness.core.stats import StopRule
from harness.engine import client as eng
from harness.matrix.load import load
from harness.stages.build import build_guest
from harness.stages.judge import judge_scenarios
from harness.stages.peer import cell_image
from harness.stages.smoke import REMOTE, smoke_tar
from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "scenarios.yaml"
CELLS = ("debian-12-release", "debian-13-release")
NEW = ("snapshot-during-restart", "managed-save-during-restart", "detach-under-load")
LOAD_PASSES = 17  # harness/smoke/scenarios.py: the guest's writes before the detach


def clean_runs() -> int:
    """The runs a scenario that never fails needs to be called safe under the test's policy."""
    matrix, _ = load(str(MATRIX))
    rule = StopRule.from_policy(matrix.policy)
    return rule.walk([False] * rule.max_runs).runs


@pytest.fixture(scope="module")
def run_result(engine, results_dir):
    started = time.monotonic()
    done = invoke(
        "matrix.run", "--matrix", str(MATRIX), "--cells", ",".join(CELLS), "--accel", "tcg",
        results_dir=results_dir, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    for cell in data["cells"]:  # log paths are relative to the results directory
        cell["log_dir"] = str(results_dir / cell["log_dir"])
    # What the run saw, for the log of the test session (pytest -s, or -rA).
    print(f"\nscenarios run: {seconds:.0f} s")
    for cell in data["cells"]:
        for s in cell["scenarios"]:
            durations = s["durations_s"] or [0]
            print(
                f"  {cell['id']:<18} {s['name']:<28} {s['status']:<8} "
                f"{s['failures']}/{s['runs']} failed, mean {sum(durations) / len(durations):.1f} s, "
                f"max {max(durations):.1f} s; {s['decision']}"
            )
            for message in s["messages"]:
                print(f"    {message}")
    return done, data


def cell_of(data, cell_id):
    (cell,) = [c for c in data["cells"] if c["id"] == cell_id]
    return cell


def scenario_of(cell, name):
    (scenario,) = [s for s in cell["scenarios"] if s["name"] == name]
    return scenario


def test_the_run_is_safe_and_exits_zero(run_result):
    done, data = run_result
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert [c["id"] for c in data["cells"]] == list(CELLS)


@pytest.mark.parametrize("cell_id", CELLS)
@pytest.mark.parametrize("name", NEW)
def test_each_new_scenario_is_safe_after_the_fewest_runs(run_result, cell_id, name):
    _, data = run_result
    cell = cell_of(data, cell_id)
    scenario = scenario_of(cell, name)
    assert scenario["status"] == "safe", (scenario["messages"], scenario["logs"])
    assert (scenario["runs"], scenario["failures"], scenario["errors"]) == (clean_runs(), 0, 0)
    assert cell["status"] == "safe"


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_block_copy_ran_across_the_restart(run_result, cell_id):
    scenario = scenario_of(cell_of(run_result[1], cell_id), "snapshot-during-restart")
    for details in scenario["details"]:
        # The daemon went down mid-copy: part copied, the rest after it came back.
        assert 0 < details["copied_before_restart"] < details["copy_size"], details
        assert details["restart_s"] > 0
        # What a sibling machine saw on these versions: the job survives the restart, with
        # the speed limit it was started with, and completes; its copy equals the disk.
        assert details["job_after_restart"] is True, details
        assert details["bandwidth_after_restart"] == 1, details
        assert details["outcome"] == "completed"
        assert details["checked"] == 4  # the disk and its base, the copy and its base


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_managed_save_ran_across_the_restart(run_result, cell_id):
    scenario = scenario_of(cell_of(run_result[1], cell_id), "managed-save-during-restart")
    for details in scenario["details"]:
        assert details["outcome"] in ("saved", "undone"), details
        # The guest was seen paused for the save before the restart began.
        assert details["save_seen_s"] < details["total_s"]
        assert 1 <= details["attempts"] <= 3
        assert details["restart_s"] > 0
        assert details["beat_after"] > details["beat_before"]
        assert details["checked"] == 2


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_daemon_started_once_per_restart(run_result, cell_id):
    cell = cell_of(run_result[1], cell_id)
    # Each passing run restarted the daemon once (a failing one may have stopped before).
    restarts = sum(
        len([d for d in scenario_of(cell, name)["details"] if d])
        for name in ("snapshot-during-restart", "managed-save-during-restart")
    )
    log = Path(cell["log_dir"]) / f"libvirt-{cell['daemon']}.log"
    starts = log.read_text(errors="replace").count("info : libvirt version:")
    assert starts >= restarts + 1, (starts, restarts)


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_disk_was_written_to_when_it_went(run_result, cell_id):
    cell = cell_of(run_result[1], cell_id)
    scenario = scenario_of(cell, "detach-under-load")
    for details in scenario["details"]:
        assert details["writes"] >= LOAD_PASSES, details
        assert details["detach_s"] < 60  # the scenario's own bound: the session's job timeout
    console = (Path(cell["log_dir"]) / "console.log").read_text(errors="replace")
    assert console.count("HVGATE-DISK-WRITER-STOPPED vdb") == scenario["runs"]


def test_a_scenario_the_cell_cannot_run_is_not_applicable(engine, results_dir, tmp_path):
    """On a real cell, without the second host `live-migration` needs: the runner reports it
    not-applicable with the reason, runs the rest, and the verdict has no runs for it."""
    if cell_image(engine, CELLS[0]) is None:
        done = invoke(
            "matrix.build", "--matrix", str(MATRIX), "--cells", CELLS[0],
            results_dir=results_dir, timeout=1800,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    matrix, _ = load(str(MATRIX))
    guest = build_guest(engine, matrix, tmp_path)
    container = engine.containers.run(
        f"hvgate/cell:{CELLS[0]}",
        ["sleep", "infinity"],
        detach=True,
        init=True,
        labels={eng.LABEL_RUN: f"test-scenarios-{os.getpid()}"},
    )
    try:
        container.put_archive(REMOTE, smoke_tar())
        container.put_archive(REMOTE, guest.read_bytes())
        command = ["python3", "-m", "smoke", "--scenarios", "detach-under-load,live-migration"]
        code, (out, err) = container.exec_run(
            [*command, "--accel", "tcg", "--runs", "1"], workdir=REMOTE, demux=True
        )
    finally:
        container.remove(force=True, v=True)
    assert code == 0, (err or b"").decode(errors="replace")[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["not_applicable"] == [
        {"name": "live-migration", "reason": "needs 2 hosts (the run has 1)"}
    ]
    assert report["decisions"]["live-migration"] == "not-applicable"
    assert [r["name"] for run in report["runs"] for r in run] == ["detach-under-load"]
    verdicts = {v.name: v for v in judge_scenarios(report)}
    assert verdicts["detach-under-load"].runs == 1
    na = verdicts["live-migration"]
    assert (na.status, na.runs, na.failure_rate) == (Status.NOT_APPLICABLE, 0, None)
    assert na.decision == "not applicable: needs 2 hosts (the run has 1)"
