"""Interrupts of real runs: Ctrl-C and SIGTERM leave nothing of the run behind, start nothing
after them, keep every finished cell and leave the last complete latest.* as it was; --resume
finishes the run without redoing them; a second run at once is refused; SIGKILL at any moment
never leaves an unreadable results file."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from harness.core.results import RunResult
from harness.run import checkpoint
from harness.stages.publish import publish
from tests.cli import invoke
from tests.integration.live import (
    CELLS,
    SCENARIOS,
    LiveRun,
    leftovers,
    small_matrix,
    wait_for_container,
)
from tests.results_sample import sample_run

pytestmark = pytest.mark.integration

FIRST, SECOND = CELLS
RUN_TIMEOUT = 1800
# A cell judged to the end (under load a TCG guest may miss a heartbeat: its verdict is its own).
VERDICTS = ("safe", "flaky", "broken")
# Four runs of each scenario (about 25 s a cell): a signal sent once a cell's first boot has
# passed still finds it running, however quickly the scenarios go.
LONGER = {"min_runs": 4, "max_runs": 4}
SMOKE_TEST = re.compile(r"\]\s+(\S+)\s+smoke test ")


def results_of(results: Path, run_id: str) -> dict[str, dict]:
    data = json.loads((results / "runs" / run_id / "results.json").read_text())
    assert data["run_id"] == run_id
    return {cell["id"]: cell for cell in data["cells"]}


def state_of(results: Path, run_id: str) -> str:
    return json.loads((results / "runs" / run_id / "run.json").read_text())["state"]


def complete_latest(results: Path) -> dict[str, bytes]:
    """A complete run's latest.* (as a user's last good table), to check that an interrupted run
    leaves it as it was."""
    publish(sample_run(results), results)
    return latest_files(results)


def latest_files(results: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(results.glob("latest*"))}


def test_ctrl_c_keeps_finished_cells_and_resume_finishes_the_run(engine, tmp_path):
    matrix = small_matrix(tmp_path, policy=LONGER)
    results = tmp_path / "results"
    # One cell at a time, so that the first has finished while the second runs.
    args = ("matrix.run", "--matrix", str(matrix), "--accel", "tcg", "--jobs", "1")
    table = complete_latest(results)
    live = LiveRun(*args, results_dir=results)
    run_id = live.run_id()

    # A second run in the same checkout and results directory is refused while this one runs.
    wait_for_container(engine, live, run_id, FIRST, timeout=RUN_TIMEOUT)
    second = invoke(*args, results_dir=results, timeout=300)
    assert second.returncode == 3, second.stderr
    (line,) = second.stderr.splitlines()
    assert "is in use by another run" in line and run_id in line, line
    assert "Traceback" not in second.stderr

    # Ctrl-C while the second cell runs: the first one's result must survive.
    live.wait_for(rf"{FIRST}\s+(?:safe|flaky|broken)\b", timeout=RUN_TIMEOUT)
    wait_for_container(engine, live, run_id, SECOND, timeout=600)
    live.wait_for(rf"{SECOND}\s.*\bboot: pass", timeout=600)
    live.signal(signal.SIGINT)
    code = live.finish(timeout=300)
    assert code == 130, live.output()
    assert live.lines[-1].startswith("error: interrupted"), live.output()
    assert f"--resume` continues run {run_id}" in live.lines[-1]
    assert leftovers(engine, run_id) == []
    cells = results_of(results, run_id)
    assert cells[FIRST]["status"] in VERDICTS
    assert [s["name"] for s in cells[FIRST]["scenarios"]] == SCENARIOS
    assert cells[SECOND]["status"] == "inconclusive" and "interrupted" in cells[SECOND]["reason"]
    assert state_of(results, run_id) == checkpoint.INTERRUPTED
    assert (results / "runs" / run_id / "cells" / f"{FIRST}.json").is_file()
    assert not (results / "runs" / run_id / "cells" / f"{SECOND}.json").exists()
    assert latest_files(results) == table  # the partial run replaced nothing

    # --resume: the same run, the first cell as it was, only the second one run again.
    done = invoke("matrix.run", "--resume", results_dir=results, timeout=RUN_TIMEOUT)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert f"resuming {run_id}: 1 of 2 cells finished, 1 to go" in done.stderr
    assert f"{FIRST}" not in "".join(
        line for line in done.stderr.splitlines() if "smoke test" in line or ": pass" in line
    )
    resumed = results_of(results, run_id)
    assert resumed[FIRST] | {"history": None} == cells[FIRST] | {"history": None}
    assert resumed[SECOND]["status"] in VERDICTS
    assert (done.returncode == 0) == all(c["status"] == "safe" for c in resumed.values())
    assert [s["name"] for s in resumed[SECOND]["scenarios"]] == SCENARIOS
    assert state_of(results, run_id) == checkpoint.FINISHED
    assert json.loads((results / "latest.json").read_text())["run_id"] == run_id
    assert leftovers(engine, run_id) == []
    # Nothing is left to resume.
    again = invoke("matrix.run", "--resume", results_dir=results, timeout=120)
    assert again.returncode == 2 and "no interrupted run" in again.stderr


def test_sigterm_during_a_cell_leaves_nothing_behind(engine, tmp_path):
    matrix = small_matrix(tmp_path, cells=[FIRST], policy=LONGER)
    results = tmp_path / "results"
    table = complete_latest(results)
    live = LiveRun("matrix.test", "--matrix", str(matrix), "--accel", "tcg", results_dir=results)
    run_id = live.run_id()
    wait_for_container(engine, live, run_id, FIRST, timeout=RUN_TIMEOUT)
    live.wait_for(rf"{FIRST}\s.*\bboot: pass", timeout=600)
    live.signal(signal.SIGTERM)
    assert live.finish(timeout=300) == 130, live.output()
    assert leftovers(engine, run_id) == []
    cell = results_of(results, run_id)[FIRST]
    assert cell["status"] == "inconclusive", cell
    assert state_of(results, run_id) == checkpoint.INTERRUPTED
    assert latest_files(results) == table


def test_ctrl_c_while_cells_wait_starts_nothing_after_it(engine, tmp_path):
    """--jobs 2 and three cells: Ctrl-C while two are smoke-tested and the third waits for a
    slot. Nothing of the run may start after it, nor be left once the process has exited."""
    matrix = small_matrix(tmp_path, cells=[*CELLS, "debian-12-backports"], policy=LONGER)
    results = tmp_path / "results"
    table = complete_latest(results)
    args = ("matrix.run", "--matrix", str(matrix), "--accel", "tcg", "--jobs", "2")
    live = LiveRun(*args, results_dir=results)
    run_id = live.run_id()
    live.wait_for(r"\bboot: pass", timeout=RUN_TIMEOUT)
    tested = {m.group(1) for m in map(SMOKE_TEST.search, live.lines) if m}
    assert len(tested) <= 2, live.output()  # at least one cell is still waiting
    seen = len(live.lines)
    live.signal(signal.SIGINT)
    assert live.finish(timeout=300) == 130, live.output()
    assert not [line for line in live.lines[seen:] if SMOKE_TEST.search(line)], live.output()
    assert leftovers(engine, run_id) == []
    time.sleep(5)  # a worker that started something late would have it by now
    assert leftovers(engine, run_id) == []
    cells = results_of(results, run_id)
    assert {cells[cell]["status"] for cell in cells} == {"inconclusive"}
    assert state_of(results, run_id) == checkpoint.INTERRUPTED
    assert latest_files(results) == table


# --- SIGKILL at random moments -----------------------------------------------------------------

KILLS = 20


def many_cells_matrix(directory: Path, count: int = 40) -> Path:
    """Cells that are not built: `matrix.test` judges each unavailable at once and keeps it, so
    a run is a couple of seconds of nothing but writing results (per cell, then the whole run)."""
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "matrix.yaml").read_text())
    data["cells"] = [
        {"base": "debian-12", "source": "release", "id": f"sigkill-{n:02d}"} for n in range(count)
    ]
    data.pop("migrations", None)  # between the matrix's own cells, which these replace
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_readable(results: Path) -> int:
    """Every results file parses: the JSON documents, each format, the history. Returns how many."""
    checked = 0
    for path in results.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue  # a write_atomic temporary of the killed run, swept by the next one
        text = path.read_text()
        if path.name in ("results.json", "latest.json"):
            RunResult.from_json(json.loads(text))
        elif path.suffix == ".json":
            json.loads(text)
        elif path.name.endswith(".xml"):
            ElementTree.fromstring(text)
        elif path.suffix == ".jsonl":
            for line in text.splitlines():
                json.loads(line)
        elif path.suffix in (".md", ".html"):
            assert text.strip(), path
        checked += 1
    return checked


def test_sigkill_at_random_moments_never_leaves_an_unreadable_results_file(engine, tmp_path):
    matrix = many_cells_matrix(tmp_path)
    results = tmp_path / "results"
    rng = random.Random(20261123)
    # A first run to the end leaves a complete latest.json (to keep intact) and warms caches.
    done = invoke("matrix.test", "--matrix", str(matrix), results_dir=results, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # How long a run writes here (from its first line, once it holds the lock, to its end): the
    # last run that was not killed. Kills are spread over that time, not over Python's start.
    typical = None
    kills = runs = resumes = midway = 0
    while kills < KILLS and runs < 3 * KILLS:
        runs += 1
        resume = checkpoint.latest_unfinished(results) is not None
        resumes += resume
        args = ["--resume"] if resume else ["--matrix", str(matrix)]
        kept = len(list(results.glob("runs/*/cells/*.json")))
        live = LiveRun("matrix.test", *args, results_dir=results)
        live.run_id(timeout=120)
        started = time.monotonic()
        moment = rng.uniform(0.05, 1.0) * typical if typical else None
        try:
            live.proc.wait(timeout=moment)
            typical = time.monotonic() - started
        except subprocess.TimeoutExpired:
            live.signal(signal.SIGKILL)
            kills += 1
            # Killed while it was writing: after its first cell was kept, before the end.
            midway += len(list(results.glob("runs/*/cells/*.json"))) > kept
        code = live.finish(timeout=300)
        # Never "in use by another run": the killed run's lock went with its process.
        assert code in (0, -signal.SIGKILL), live.output()
        assert check_readable(results) > 0
    assert kills >= KILLS, f"{kills} kills in {runs} runs"
    assert midway >= KILLS // 4, f"only {midway} of {kills} kills came while cells were kept"
    # Whatever was cut short, a last --resume (or a new run) completes with every cell once.
    last = ["--resume"] if checkpoint.latest_unfinished(results) else ["--matrix", str(matrix)]
    done = invoke("matrix.test", *last, results_dir=results, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((results / "latest.json").read_text())
    assert sorted(c["id"] for c in final["cells"]) == [f"sigkill-{n:02d}" for n in range(40)]
    assert {c["status"] for c in final["cells"]} == {"unavailable"}
    assert resumes > 0
    print(
        f"{kills} kills in {runs} runs ({resumes} resumed, {midway} killed while writing); "
        f"a whole run took {typical:.1f} s"
    )
