"""harness.run.history: every run kept as lines of results/history.jsonl, and each cell's history
in a run."""

from __future__ import annotations

import json
import os

import pytest

from harness.core.results import CellResult, RunResult, Status
from harness.run import history
from harness.stages.publish import publish


def cell(cell_id, status, versions=None):
    return CellResult(
        id=cell_id,
        distro="debian",
        release="12",
        codename="bookworm",
        source="release",
        status=Status(status),
        versions=versions if versions is not None else {"libvirt-daemon": "9.0.0-4"},
    )


def run(run_id, *cells):
    return RunResult(run_id, f"{run_id}-started", f"{run_id}-finished", {}, list(cells))


def statuses(path):
    return [(e["run_id"], e["cell"], e["status"]) for e in history.read(path)]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "results" / "history.jsonl"


# --- the file -----------------------------------------------------------------------------------


def test_append_writes_one_compact_line_per_cell(path):
    history.append(path, run("r1", cell("a", "safe"), cell("b", "broken", {})).to_json())
    history.append(path, run("r2", cell("a", "flaky")).to_json())
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {
        "run_id": "r1",
        "time": "r1-started",
        "cell": "a",
        "status": "safe",
        "versions": {"libvirt-daemon": "9.0.0-4"},
    }
    assert " " not in lines[0]  # compact
    assert statuses(path) == [("r1", "a", "safe"), ("r1", "b", "broken"), ("r2", "a", "flaky")]


def test_append_is_one_write_then_fsync(path, monkeypatch):
    calls = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(
        history.os,
        "write",
        lambda fd, data: calls.append(("write", bytes(data))) or real_write(fd, data),
    )
    monkeypatch.setattr(history.os, "fsync", lambda fd: calls.append(("fsync",)) or real_fsync(fd))
    history.append(path, run("r1", cell("a", "safe"), cell("b", "safe")).to_json())
    assert [c[0] for c in calls] == ["write", "fsync"]
    assert calls[0][1].count(b"\n") == 2 and calls[0][1].endswith(b"\n")


def test_append_keeps_what_is_there(path):
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id":"r0","time":"t","cell":"a","status":"safe","versions":{}}\n')
    history.append(path, run("r1", cell("a", "broken")).to_json())
    assert statuses(path) == [("r0", "a", "safe"), ("r1", "a", "broken")]


def test_read_skips_a_torn_line_and_a_missing_file(path, capsys):
    assert history.read(path) == []
    history.append(path, run("r1", cell("a", "safe")).to_json())
    with path.open("a") as handle:
        handle.write('{"run_id":"r2","cell":"a","sta')  # a crash in the middle of a write
    assert statuses(path) == [("r1", "a", "safe")]
    assert "history.jsonl:2: skipped" in capsys.readouterr().err


# --- a cell's history ---------------------------------------------------------------------------


def past(*pairs):
    return [{"run_id": r, "cell": "a", "status": s} for r, s in pairs]


def test_a_new_cell():
    assert history.cell_history("safe", "r1", []) == {
        "since": "r1",
        "first_seen": "r1",
        "last_seen": None,
        "previous": None,
        "change": None,
    }


def test_since_is_where_the_current_status_began():
    earlier = past(("r1", "broken"), ("r2", "safe"), ("r3", "safe"))
    got = history.cell_history("safe", "r4", earlier)
    assert got == {
        "since": "r2",
        "first_seen": "r1",
        "last_seen": "r3",
        "previous": "safe",
        "change": None,
    }
    assert history.cell_history("broken", "r4", earlier)["since"] == "r4"


@pytest.mark.parametrize(
    ("before", "now", "change"),
    [
        ("safe", "flaky", "regression"),
        ("safe", "broken", "regression"),
        ("flaky", "safe", "fix"),
        ("broken", "safe", "fix"),
        ("flaky", "broken", None),
        ("safe", "safe", None),
        ("safe", "unavailable", None),  # says nothing about libvirt or QEMU
        ("safe", "error", None),
        ("safe", "inconclusive", None),
    ],
)
def test_change(before, now, change):
    assert history.cell_history(now, "r2", past(("r1", before)))["change"] == change


def test_a_regression_is_seen_across_runs_that_decided_nothing():
    earlier = past(("r1", "safe"), ("r2", "unavailable"), ("r3", "inconclusive"))
    got = history.cell_history("broken", "r4", earlier)
    assert got["change"] == "regression"
    assert got["previous"] == "inconclusive"


def test_annotate_leaves_out_the_run_itself():
    entries = past(("r1", "broken"), ("r2", "safe"))
    annotated = history.annotate(run("r2", cell("a", "safe"), cell("new", "safe")), entries)
    a, new = annotated.cells
    assert a.history == {
        "since": "r2",
        "first_seen": "r1",
        "last_seen": "r1",
        "previous": "broken",
        "change": "fix",
    }
    assert new.history["first_seen"] == "r2" and new.history["previous"] is None


def test_history_round_trips_through_json():
    annotated = history.annotate(run("r2", cell("a", "broken")), past(("r1", "safe")))
    assert RunResult.from_json(json.loads(json.dumps(annotated.to_json()))) == annotated
    assert annotated.to_json()["cells"][0]["history"]["change"] == "regression"


# --- record: annotate, publish, append ----------------------------------------------------------


def test_record_publishes_the_history_then_keeps_the_run(tmp_path):
    results = tmp_path / "results"
    history.record(run("r1", cell("a", "safe")), lambda r, _: publish(r, results), results)
    annotated, paths = history.record(
        run("r2", cell("a", "broken")), lambda r, _: publish(r, results), results
    )
    published = json.loads(paths["json"].read_text())
    assert published["cells"][0]["history"]["change"] == "regression"
    assert published["cells"][0]["history"]["previous"] == "safe"
    assert annotated.cells[0].history["change"] == "regression"
    assert statuses(paths["history"]) == [("r1", "a", "safe"), ("r2", "a", "broken")]


def test_a_run_that_could_not_be_published_is_not_kept(tmp_path):
    results = tmp_path / "results"

    def failing(_, __):
        raise OSError("disk full")

    with pytest.raises(OSError):
        history.record(run("r1", cell("a", "safe")), failing, results)
    assert history.read(history.history_path(results)) == []


def test_record_starts_the_history_from_the_runs_already_kept(tmp_path):
    results = tmp_path / "results"
    for r in (run("r2", cell("a", "broken")), run("r1", cell("a", "safe"))):
        publish(r, results)
    history.record(run("r3", cell("a", "safe")), lambda r, _: publish(r, results), results)
    assert statuses(results / "history.jsonl") == [
        ("r1", "a", "safe"),
        ("r2", "a", "broken"),
        ("r3", "a", "safe"),
    ]
    assert json.loads((results / "latest.json").read_text())["cells"][0]["history"] == {
        "since": "r3",
        "first_seen": "r1",
        "last_seen": "r2",
        "previous": "broken",
        "change": "fix",
    }


def test_a_run_cut_short_is_published_under_its_id_only(tmp_path):
    """An interrupted run: its partial table is kept for --resume, and replaces neither the last
    complete latest.* nor enters the history (it does once it has finished)."""
    results = tmp_path / "results"
    history.record(run("r1", cell("a", "safe")), lambda r, _: publish(r, results), results)
    before = (results / "latest.json").read_text()
    cut = run("r2", cell("a", "inconclusive"))
    annotated, paths = history.record(
        cut, lambda r, _: publish(r, results, latest=False), results, keep=False
    )
    assert (results / "latest.json").read_text() == before
    assert not any(name.startswith("latest") for name in paths) and "history" not in paths
    assert json.loads(paths["json"].read_text())["run_id"] == "r2"
    assert annotated.cells[0].history["previous"] == "safe"
    assert statuses(history.history_path(results)) == [("r1", "a", "safe")]


def test_the_history_starts_from_the_finished_runs_only(tmp_path):
    results = tmp_path / "results"
    for r, state in [
        (run("r1", cell("a", "safe")), "finished"),
        (run("r2", cell("a", "inconclusive")), "interrupted"),
        (run("r3", cell("a", "inconclusive")), "running"),  # killed, or being resumed now
        (run("r4", cell("a", "broken")), None),  # a merge: no run.json
    ]:
        publish(r, results)
        if state:
            (results / "runs" / r.run_id / "run.json").write_text(json.dumps({"state": state}))
    history.backfill(results)
    assert statuses(history.history_path(results)) == [("r1", "a", "safe"), ("r4", "a", "broken")]
