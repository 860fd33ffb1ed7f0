"""Two nights in a row on one real cell, as the nightly workflow runs them: the second starts
from a fresh results directory holding only the first night's history (what the workflow's
cache carries), pools the first night's runs, and decides what neither night decides alone.
A scenario the first night already decided does not run again."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.cli import invoke
from tests.integration.live import small_matrix

pytestmark = pytest.mark.integration

CELL = "debian-12-release"
# Three clean runs make a scenario safe under this policy (p1 0.5, alpha = beta = 0.2); a night
# adds at most two.
POLICY = {
    "safe_failure_rate": 0.01,
    "unsafe_failure_rate": 0.5,
    "confidence": 0.8,
    "min_runs": 1,
    "max_runs": 2,
}
SCENARIOS = ["boot", "pause-resume"]


def night(engine, matrix, results, started_from=None):
    results.mkdir(parents=True)
    if started_from is not None:  # the workflow's cache: the history, nothing else
        shutil.copy(started_from / "history.jsonl", results / "history.jsonl")
    done = invoke(
        "matrix.run", "--matrix", str(matrix), "--cells", CELL, "--accel", "tcg",
        results_dir=results, timeout=1800,
    )  # fmt: skip
    assert (results / "latest.json").exists(), done.stderr[-3000:]
    (cell,) = json.loads((results / "latest.json").read_text())["cells"]
    return done, cell


def test_the_second_night_adds_to_the_first(engine, tmp_path):
    matrix = small_matrix(tmp_path, [CELL], POLICY)
    data = yaml.safe_load(matrix.read_text())
    data["scenarios"] = SCENARIOS
    matrix.write_text(yaml.safe_dump(data, sort_keys=False))

    done, first = night(engine, matrix, tmp_path / "night-1")
    assert done.returncode == 1, done.stderr[-3000:]  # inconclusive: a finding, exit 1
    assert first["status"] == "inconclusive", first["reason"]
    key = first["evidence"]["key"]
    for scenario in first["scenarios"]:
        assert (scenario["runs"], scenario["outcomes"], scenario["pooled"]) == (2, "PP", None)
        assert "needs at least 1 more run, all passing, to be safe" in scenario["decision"]
    history = (tmp_path / "night-1" / "history.jsonl").read_text()
    assert f'"key":"{key}"' in history

    done, second = night(engine, matrix, tmp_path / "night-2", tmp_path / "night-1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert second["status"] == "safe", second["reason"]
    assert second["evidence"] == {"key": key, "since": first_started(tmp_path / "night-1")}
    for scenario in second["scenarios"]:
        # One more run was enough: three clean runs, two of them from the first night.
        assert (scenario["runs"], scenario["outcomes"]) == (1, "P"), scenario
        assert scenario["pooled"]["runs"] == 3 and scenario["pooled"]["failures"] == 0
        assert scenario["pooled"]["matrix_runs"] == 2
        assert "1 from this run, 2 from 1 earlier" in scenario["decision"]

    # A third night has nothing left to decide: no scenario runs, the verdict stands.
    done, third = night(engine, matrix, tmp_path / "night-3", tmp_path / "night-2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert third["status"] == "safe"
    for scenario in third["scenarios"]:
        assert (scenario["runs"], scenario["pooled"]["runs"]) == (0, 3), scenario
        assert scenario["pooled"]["matrix_runs"] == 2


def first_started(results):
    return json.loads((results / "latest.json").read_text())["started"]
