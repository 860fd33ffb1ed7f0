"""harness.stages.smoke: the runner's report is parsed on the host; a report of another format
or shape is the cell's error, with a one-line reason, and never reaches the judge."""

from __future__ import annotations

import dataclasses

import pytest

from harness.core.results import BuildResult, Status
from harness.stages import smoke as runner
from harness.stages.judge import judge_cell
from tests.unit.stages.test_peer import Recorder, job, smoke_args

BUILT = BuildResult("debian-12-release", "built", "img", {"libvirt-daemon": "9.0.0-4"})


@pytest.fixture
def smoke_of(unit_matrix, tmp_path, monkeypatch):
    """The SmokeRun and the verdict of debian-12-release when its runner prints `report`."""
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    cell, matrix, guest = smoke_args(unit_matrix, tmp_path, "debian-12-release", ("boot",))

    def run(report):
        engine = Recorder()
        engine.report = report
        smoke = runner.run_cell(engine, job(cell, "img", matrix, guest, tmp_path / "logs"))  # type: ignore[arg-type]
        return smoke, judge_cell(cell, BUILT, smoke, matrix.thresholds)

    return run


def test_a_report_of_the_runners_format_is_judged(smoke_of):
    passing = {"name": "boot", "status": "pass", "error": None, "duration_s": 1.0}
    smoke, verdict = smoke_of({"format": 1, "runs": [[passing]], "accel": "tcg"})
    assert smoke.error is None and smoke.report is not None
    assert smoke.report["runs"] == [[passing]]
    assert verdict.accel == "tcg" and [s.name for s in verdict.scenarios] == ["boot"]


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (
            {"format": 2, "runs": []},
            "the smoke runner's report has format 2; this hvgate reads format 1",
        ),
        ({"format": 1}, "the smoke runner's report has no list of `runs`"),
        (
            {"format": 1, "runs": [[{"name": "boot", "status": "skipped", "duration_s": 1}]]},
            "the smoke runner's report runs[0][0] (boot): status 'skipped' is none of pass, "
            "fail, error, not-run",
        ),
        (["not", "a", "report"], "the smoke runner's report is not a JSON object but list"),
    ],
    ids=["format", "no-runs", "status", "not-an-object"],
)
def test_a_report_of_another_format_or_shape_is_the_cells_error(smoke_of, report, reason):
    smoke, verdict = smoke_of(report)
    assert smoke.report is None and smoke.error == reason
    assert verdict.status == Status.ERROR and verdict.reason == reason
    assert "\n" not in reason


def test_the_runner_gets_the_cells_share_of_the_run_timeout(unit_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    cell, matrix, guest = smoke_args(unit_matrix, tmp_path, "debian-12-release", ("boot",))

    def command(cell_timeout):
        engine = Recorder()
        smoke_job = dataclasses.replace(
            job(cell, "img", matrix, guest, tmp_path / "logs"), cell_timeout=cell_timeout
        )
        runner.run_cell(engine, smoke_job)  # type: ignore[arg-type]
        (argv,) = [c[1][1] for c in engine.calls if c[0] == "exec_create" and "smoke" in c[1][1]]
        return argv

    plain = command(None)
    assert plain[plain.index("--cell-timeout") + 1] == str(matrix.policy.cell_timeout)
    assert "--time-reason" not in plain
    shared = command(120.0)
    assert shared[shared.index("--cell-timeout") + 1] == "120.0"
    assert shared[shared.index("--time-reason") + 1] == "its share of the run's run_timeout"


def test_a_share_is_split_between_the_cell_and_its_upgrade_migrations(
    unit_matrix, tmp_path, monkeypatch
):
    cell, matrix, guest = smoke_args(unit_matrix, tmp_path, "debian-12-release", ("boot",))
    own = len([s for s in matrix.scenarios if s in cell.scenarios])
    shared = dataclasses.replace(job(cell, "img", matrix, guest, tmp_path), cell_timeout=700.0)
    assert runner.split_share(shared) == (700.0, None)  # no upgrade migration into the cell
    monkeypatch.setattr(runner, "pairs_into", lambda matrix, cell_id: ["one", "two"])
    total = own + 2 * runner.UPGRADE_WEIGHT
    assert runner.split_share(shared) == (
        round(700 * own / total, 1),
        round(700 * runner.UPGRADE_WEIGHT / total, 1),
    )
    unshared = job(cell, "img", matrix, guest, tmp_path)
    assert runner.split_share(unshared) == (None, None)
