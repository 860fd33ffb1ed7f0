"""Three shards of a selection, run at once in three processes (each with its own results
directory), merge into the same cells, versions and verdicts as one unsharded run of it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cli import invoke
from tests.integration.live import small_matrix

pytestmark = pytest.mark.integration

# Images the other integration tests build too; three cells, so three shards of one cell each.
CELLS = ["debian-12-release", "debian-12-backports", "debian-13-release"]
TIMEOUT = 3600  # TCG boots on a loaded machine


def verdicts(data):
    """What a run found, cell by cell: the columns of the table that are not timings."""
    return [
        {
            "id": cell["id"],
            "status": cell["status"],
            "versions": cell["versions"],
            "accel": cell["accel"],
            "thresholds": cell["thresholds"],
            "scenarios": [(s["name"], s["status"]) for s in cell["scenarios"]],
        }
        for cell in data["cells"]
    ]


@pytest.fixture(scope="module")
def runs(engine, tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    matrix = str(small_matrix(base, CELLS))
    # Unsharded first: it builds whatever is missing, so the shards compare like with like.
    whole = invoke("matrix.run", "--matrix", matrix, results_dir=base / "whole", timeout=TIMEOUT)
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                invoke,
                "matrix.run",
                "--matrix",
                matrix,
                "--shard",
                f"{k}/3",
                results_dir=base / f"shard-{k}",
                timeout=TIMEOUT,
            )
            for k in (1, 2, 3)
        ]
        shards = [future.result() for future in futures]
    merged = invoke(
        "matrix.merge",
        str(base / "shard-*"),
        "--format",
        "markdown",
        "--out",
        str(base / "merged"),
        "--matrix",
        matrix,
        results_dir=base / "unused",
    )
    return base, matrix, whole, shards, merged


def read(path):
    return json.loads(path.read_text())


def test_every_run_finishes_with_a_verdict(runs):
    _, _, whole, shards, merged = runs
    for done in (whole, *shards):
        assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some cell is not safe
    assert merged.returncode == 0, merged.stderr


def test_each_shard_ran_its_own_cell(runs):
    base = runs[0]
    for k, cell_id in enumerate(CELLS, 1):
        data = read(base / f"shard-{k}" / "latest.json")
        assert [c["id"] for c in data["cells"]] == [cell_id]
    run_ids = {read(base / f"shard-{k}" / "latest.json")["run_id"] for k in (1, 2, 3)}
    assert len(run_ids) == 3


def test_the_merge_finds_what_the_unsharded_run_found(runs):
    base = runs[0]
    whole, merged = read(base / "whole" / "latest.json"), read(base / "merged" / "latest.json")
    assert [c["id"] for c in merged["cells"]] == CELLS  # the matrix's order
    assert verdicts(merged) == verdicts(whole)
    assert all(c["versions"].get("libvirt-daemon") for c in merged["cells"])  # built and run
    parts = merged["host"]["merged_runs"]
    assert sorted(p["run_id"] for p in parts) == sorted(
        read(base / f"shard-{k}" / "latest.json")["run_id"] for k in (1, 2, 3)
    )


def test_the_merged_table_has_every_cell(runs):
    _, _, _, _, merged = runs
    for cell_id in CELLS:
        assert f"| {cell_id} |" in merged.stdout


def test_merging_the_merge_with_a_shard_again_changes_nothing(runs):
    base, matrix = runs[0], runs[1]
    again = base / "again"
    done = invoke(
        "matrix.merge",
        f"{base / 'merged' / 'latest.json'},{base / 'shard-2'}",
        "--out",
        str(again),
        "--matrix",
        matrix,
        results_dir=again,
    )
    assert done.returncode == 0, done.stderr
    assert read(again / "latest.json") == read(base / "merged" / "latest.json")


def test_merging_the_unsharded_run_with_a_shard_is_refused(runs):
    """The same cell from two runs: at least their timings differ."""
    base, matrix = runs[0], runs[1]
    done = invoke(
        "matrix.merge",
        f"{base / 'whole'},{base / 'shard-1'}",
        "--out",
        str(base / "refused"),
        "--matrix",
        matrix,
        results_dir=base / "refused",
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: cell {CELLS[0]}: ")
    assert not (base / "refused").exists()
