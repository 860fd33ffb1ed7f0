"""harness.tools.merge and `matrix.merge`: result sets of several runs or shards become one, whatever the
order, idempotently, and two inputs that disagree about a cell are refused in one line."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import pytest

from harness.core.errors import ConfigurationError
from harness.core.results import RunResult
from harness.stages.publish import publish
from harness.tools import merge as m
from tests import cli
from tests.results_sample import document, sample_run

ORDER = [
    "debian-12-release",
    "debian-12-backports",
    "debian-13-release-qemu-backports",
    "debian-13-backports",
    "ubuntu-24.04-release",
    "debian-unstable",
]


@pytest.fixture
def whole():
    """One run's document: six cells, one of each status."""
    return document(sample_run())


def shard_of(whole, index, cell_ids, started, finished, kernel="6.1.0"):
    """The document a shard would have written: some of the cells, its own run id and times."""
    data = copy.deepcopy(whole)
    data["run_id"] = f"20240101T00000{index}Z-000{index}"
    data["started"], data["finished"] = started, finished
    data["host"] = {**data["host"], "kernel": kernel}
    data["cells"] = [c for c in data["cells"] if c["id"] in cell_ids]
    return data


@pytest.fixture
def shards(whole):
    ids = [c["id"] for c in whole["cells"]]
    return [
        (
            "a.json",
            shard_of(whole, 1, ids[:2], "2024-01-01T00:00:00+00:00", "2024-01-01T00:05:00+00:00"),
        ),
        (
            "b.json",
            shard_of(whole, 2, ids[2:4], "2024-01-01T00:00:30+00:00", "2024-01-01T00:09:00+00:00"),
        ),
        (
            "c.json",
            shard_of(whole, 3, ids[4:], "2024-01-01T00:00:10+00:00", "2024-01-01T00:04:00+00:00"),
        ),
    ]


def without_history(cells):
    return [{k: v for k, v in c.items() if k != "history"} for c in cells]


def test_the_merge_of_shards_holds_every_cell_as_the_whole_run_does(whole, shards):
    merged = m.merge(shards, ORDER)
    assert without_history(merged["cells"]) == without_history(
        sorted(whole["cells"], key=lambda c: ORDER.index(c["id"]))
    )
    assert merged["started"] == "2024-01-01T00:00:00+00:00"  # the earliest shard's start
    assert merged["finished"] == "2024-01-01T00:09:00+00:00"  # the latest shard's end
    assert merged["run_id"].startswith("20240101T000000Z-merge-")
    parts = merged["host"][m.PARTS]
    assert [p["run_id"] for p in parts] == [
        "20240101T000001Z-0001",
        "20240101T000003Z-0003",
        "20240101T000002Z-0002",
    ]  # in the order they started
    assert merged["host"]["machine"] == "x86_64"  # shared by every shard
    assert merged["format"] == whole["format"]
    RunResult.from_json(merged)  # a document the result types read


def test_the_order_of_the_inputs_does_not_matter(shards):
    results = [json.dumps(m.merge(list(p), ORDER)) for p in itertools.permutations(shards)]
    assert len(set(results)) == 1


def test_merging_a_merge_with_one_of_its_inputs_changes_nothing(shards):
    merged = m.merge(shards, ORDER)
    for shard in shards:
        assert m.merge([("merged.json", merged), shard], ORDER) == merged
    assert m.merge([("merged.json", merged), ("again.json", merged)], ORDER) == merged
    # And a merge of merges is the merge of all their inputs.
    ab = m.merge(shards[:2], ORDER)
    bc = m.merge(shards[1:], ORDER)
    assert m.merge([("ab.json", ab), ("bc.json", bc)], ORDER) == merged


def test_one_input_is_its_own_merge(whole):
    merged = m.merge([("whole.json", whole)], ORDER)
    assert {k: merged[k] for k in ("run_id", "started", "finished", "host")} == {
        k: whole[k] for k in ("run_id", "started", "finished", "host")
    }
    assert m.PARTS not in merged["host"]


def test_identical_duplicates_are_fine(shards):
    a = shards[0]
    assert m.merge([a, ("copy-of-a.json", copy.deepcopy(a[1]))], ORDER) == m.merge([a], ORDER)


def test_a_cells_history_is_not_a_conflict(shards):
    """History is computed where a result set is published, so two copies may differ in it."""
    name, data = shards[0]
    other = copy.deepcopy(data)
    other["cells"][0]["history"] = {"previous": "safe", "change": "regression"}
    merged = m.merge([(name, data), ("published-elsewhere.json", other)], ORDER)
    assert all(c["history"] == {} for c in merged["cells"])


def test_cells_missing_from_the_order_come_last_by_id(shards):
    merged = m.merge(shards, ["ubuntu-24.04-release"])
    ids = [c["id"] for c in merged["cells"]]
    assert ids[0] == "ubuntu-24.04-release"
    assert ids[1:] == sorted(ids[1:])


def conflict(shards, change):
    name, data = shards[0]
    other = copy.deepcopy(data)
    change(other["cells"][0])
    with pytest.raises(ConfigurationError) as info:
        m.merge([("z-rerun.json", other), shards[1], (name, data)], ORDER)
    assert info.value.exit_code == 2
    (line,) = str(info.value).splitlines()
    assert line.startswith("cell debian-12-release: ")
    assert "a.json and z-rerun.json" in line  # both files, in a fixed order
    return line


def test_different_versions_are_refused(shards):
    def newer(cell):
        cell["versions"]["qemu-system-x86"] = "1:7.2+dfsg-7+deb12u99"

    line = conflict(shards, newer)
    assert "different versions (qemu-system-x86 1:7.2.0+dfsg-1 vs 1:7.2+dfsg-7+deb12u99)" in line


def test_different_verdicts_are_refused(shards):
    def safe(cell):
        cell["status"] = "safe"

    assert "different verdicts (flaky vs safe)" in conflict(shards, safe)


def test_different_scenario_verdicts_are_refused(shards):
    def passed(cell):
        cell["scenarios"][1]["status"] = "safe"

    assert "different verdicts of reboot (flaky vs safe)" in conflict(shards, passed)


def test_two_runs_of_one_cell_are_refused(shards):
    def slower(cell):
        cell["duration_s"] = 99.0

    assert "results of two runs (they differ in duration_s)" in conflict(shards, slower)


def test_nothing_to_merge():
    with pytest.raises(ConfigurationError, match="no results files"):
        m.merge([], ORDER)


# --- files -----------------------------------------------------------------------------------


@pytest.fixture
def shard_dirs(tmp_path, shards):
    """Each shard published to its own results directory, as HVGATE_RESULTS=... runs leave them."""
    dirs = []
    for index, (_, data) in enumerate(shards, 1):
        directory = tmp_path / "shards" / f"shard-{index}"
        publish(RunResult.from_json(data), directory)
        dirs.append(directory)
    return dirs


def test_inputs_from_paths_patterns_and_directories(tmp_path, shard_dirs):
    files = [d / "latest.json" for d in shard_dirs]
    assert m.inputs(f"{files[0]},{files[1]}") == files[:2]
    assert m.inputs(str(tmp_path / "shards" / "*" / "latest.json")) == files
    assert m.inputs(str(tmp_path / "shards" / "*")) == files  # a directory: its latest.json
    assert m.inputs([str(files[0]), str(shard_dirs[0])]) == files[:1]  # one file, read once
    with pytest.raises(ConfigurationError, match=r"'.*/nothing\*' matches no results file"):
        m.inputs(str(tmp_path / "nothing*"))


def test_merge_files_publishes_and_is_idempotent(tmp_path, shard_dirs, whole):
    out = tmp_path / "merged"
    run, paths = m.merge_files(str(tmp_path / "shards" / "*"), out, ORDER)
    stored = json.loads((out / "latest.json").read_text())
    assert stored == json.loads(paths["json"].read_text())
    assert paths["json"] == out / "runs" / run.run_id / "results.json"
    table = (out / "latest.md").read_text()
    assert all(cell_id in table for cell_id in ORDER)
    assert (out / "latest.html").exists()
    assert [c["id"] for c in stored["cells"]] == ORDER
    # Each shard's paths, relative to its own results directory, lead to the same files from
    # the merge's.
    assert without_history(m.located(stored, out / "latest.json")["cells"]) == without_history(
        sorted(whole["cells"], key=lambda c: ORDER.index(c["id"]))
    )
    assert not any(Path(c.get("log_dir") or "").is_absolute() for c in stored["cells"])
    assert stored["cells"][0]["history"]["first_seen"] == run.run_id  # annotated where published
    # The merge merged again with one of its inputs, elsewhere: the same document.
    again = tmp_path / "again"
    m.merge_files([str(out / "latest.json"), str(shard_dirs[1])], again, ORDER)
    assert json.loads((again / "latest.json").read_text()) == stored


def test_a_conflict_writes_nothing(tmp_path, shard_dirs):
    data = json.loads((shard_dirs[0] / "latest.json").read_text())
    data["run_id"] = "20240102T000000Z-ffff"
    data["cells"][0]["status"] = "broken"
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps(data))
    out = tmp_path / "merged"
    with pytest.raises(ConfigurationError, match="different verdicts"):
        m.merge_files([str(rerun), str(shard_dirs[0])], out, ORDER)
    assert not out.exists()


# --- the task, as a user runs it ------------------------------------------------------------


def test_merge_task(tmp_path, shard_dirs):
    out = tmp_path / "out"
    done = cli.invoke(
        "matrix.merge",
        str(tmp_path / "shards" / "*"),
        "--out",
        str(out),
        results_dir=tmp_path / "r",
    )
    assert done.returncode == 0, done.stderr
    # The summary: what needs attention, and where the merge is.
    assert done.stdout.startswith("hvgate run ")
    assert "debian-13-release-qemu-backports" in done.stdout
    assert f"results:  {out}/latest.json" in done.stdout.splitlines()
    assert len(json.loads((out / "latest.json").read_text())["cells"]) == 6
    assert not (tmp_path / "r").exists()  # --out, not HVGATE_RESULTS
    table = cli.invoke(
        "matrix.merge",
        str(tmp_path / "shards" / "*"),
        "--out",
        str(out),
        "--format",
        "markdown",
        results_dir=tmp_path / "r",
    )
    assert table.returncode == 0, table.stderr
    assert "| ubuntu-24.04-release |" in table.stdout


def missing(directory):
    return directory / "missing.json"


def not_json(directory):
    (directory / "bad.json").write_text("{")
    return directory / "bad.json"


def other_format(directory):
    (directory / "other.json").write_text('{"cells": [], "format": 99}')
    return directory / "other.json"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (missing, r"error: .*/missing\.json: no such results file"),
        (not_json, r"error: .*/bad\.json:1: not JSON: .*"),
        (other_format, r"error: .*/other\.json: results format 99; this hvgate reads format 1"),
    ],
    ids=["missing", "not-json", "format"],
)
def test_merge_task_refuses_bad_input_in_one_line(tmp_path, shard_dirs, make, expected):
    path = make(tmp_path)
    out = tmp_path / "out"
    done = cli.invoke("matrix.merge", f"{shard_dirs[0]},{path}", results_dir=out)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(expected, line), line
    assert not out.exists()  # every input is read before anything is written


def test_merge_task_refuses_a_conflict_in_one_line(tmp_path, shard_dirs):
    data = json.loads((shard_dirs[1] / "latest.json").read_text())
    data["run_id"] = "20240102T000000Z-ffff"
    data["cells"][0]["versions"]["libvirt-daemon"] = "10.0.0-2"
    (tmp_path / "rerun.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    done = cli.invoke(
        "matrix.merge", f"{tmp_path / 'shards' / '*'},{tmp_path / 'rerun.json'}", results_dir=out
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "error: cell ubuntu-24.04-release: different versions (libvirt-daemon 10.0.0-2 vs 10.0.0-1)"
    ), line
    assert not out.exists()
