"""harness.run.checkpoint: finished cells kept on disk for --resume. No Docker: the run's cells
are the unit matrix's, their results made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.core.errors import ConfigurationError, InputError
from harness.core.options import RunOptions
from harness.core.results import Status
from harness.run import checkpoint
from harness.stages.judge import not_run


def given(results: Path, matrix: str = "matrix.yaml", **flags) -> RunOptions:
    """What `matrix.test` was asked for, with its results under `results`."""
    return RunOptions(results=results, matrix=matrix, build=False, **flags)


def resuming(results: Path) -> RunOptions:
    return given(results, resume=True)


def start(tmp_path, unit_matrix, opts=None, run_id="20261123T120000Z-aaaa"):
    matrix, cells = unit_matrix
    opts = opts or given(tmp_path)
    return checkpoint.start(opts, matrix, cells, run_id, "2026-11-23T12:00:00+00:00")


# --- options and resume ----------------------------------------------------------------------


def test_without_resume_the_given_options_are_used(tmp_path):
    opts = given(tmp_path, "m.yaml", cells="debian-*", accel="tcg", runs=3)
    assert checkpoint.resumed(opts) is opts


def test_resume_without_an_interrupted_run_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="no interrupted run"):
        checkpoint.resumed(resuming(tmp_path))


def test_resume_takes_the_newest_unfinished_run_and_its_options(tmp_path, unit_matrix):
    old = start(
        tmp_path,
        unit_matrix,
        given(tmp_path, "a.yaml", cells="debian-12*"),
        "20261123T100000Z-aaaa",
    )
    old.close(checkpoint.INTERRUPTED)
    new = start(
        tmp_path,
        unit_matrix,
        given(tmp_path, "b.yaml", cells="ubuntu-*", exclude="x", accel="tcg", runs=2),
        "20261123T110000Z-bbbb",
    )
    new.lock.release()  # killed: the state stays "running"
    finished = start(tmp_path, unit_matrix, run_id="20261123T090000Z-cccc")
    finished.close(checkpoint.FINISHED)
    opts = checkpoint.resumed(resuming(tmp_path))
    assert opts.resumed == "20261123T110000Z-bbbb"
    assert (opts.cells, opts.exclude, opts.accel, opts.runs) == ("ubuntu-*", "x", "tcg", 2)
    assert opts.matrix == str(Path("b.yaml").resolve())  # resumable from another directory


def test_resume_refuses_a_new_selection(tmp_path, unit_matrix):
    start(tmp_path, unit_matrix).lock.release()
    with pytest.raises(ConfigurationError, match="leave out --cells, --runs"):
        checkpoint.resumed(given(tmp_path, cells="x*", runs=2, resume=True))


def test_finished_cells_come_back_and_changed_ones_do_not(tmp_path, unit_matrix, cell_by_id):
    first = start(tmp_path, unit_matrix)
    kept = not_run(cell_by_id["debian-12-release"], "made up for the test")
    first.keep(kept)
    first.keep(not_run(cell_by_id["debian-13-release"], "another"))
    first.close(checkpoint.INTERRUPTED)
    # The resumed run's debian-13-release is another cell (its Dockerfile changed): run again.
    first_prints = json.loads((first.run_dir / "cells" / "debian-13-release.json").read_text())
    record = {**first_prints, "fingerprint": "0" * 16}
    (first.run_dir / "cells" / "debian-13-release.json").write_text(json.dumps(record))
    opts = checkpoint.resumed(resuming(tmp_path))
    again = start(tmp_path, unit_matrix, opts, run_id="20261123T130000Z-dddd")
    assert again.run_id == first.run_id and again.started == first.started
    assert list(again.finished) == ["debian-12-release"]
    assert again.finished["debian-12-release"] == kept
    assert again.finished["debian-12-release"].status == Status.INCONCLUSIVE
    state = json.loads((again.run_dir / "run.json").read_text())
    assert state["state"] == checkpoint.RUNNING
    again.close(checkpoint.FINISHED)
    assert checkpoint.latest_unfinished(tmp_path) is None


def test_an_unreadable_cell_file_is_run_again(tmp_path, unit_matrix, cell_by_id):
    first = start(tmp_path, unit_matrix)
    first.keep(not_run(cell_by_id["debian-12-release"], "x"))
    (first.run_dir / "cells" / "debian-12-release.json").write_text('{"fingerp')
    first.lock.release()
    opts = checkpoint.resumed(resuming(tmp_path))
    again = start(tmp_path, unit_matrix, opts)
    again.lock.release()
    assert again.finished == {}


def test_temporary_files_of_a_killed_writer_are_swept(tmp_path, unit_matrix):
    run_dir = tmp_path / "runs" / "20261123T120000Z-aaaa"
    (run_dir / "cells").mkdir(parents=True)
    stale = [
        tmp_path / ".latest.json.k3j_9x2a",
        run_dir / "cells" / ".debian-12-release.json.abcdefgh",
    ]
    kept = [tmp_path / "latest.json", tmp_path / ".gitignore"]
    for path in stale + kept:
        path.write_text("{")
    first = start(tmp_path, unit_matrix, run_id="20261123T120000Z-aaaa")
    first.lock.release()
    opts = checkpoint.resumed(resuming(tmp_path))
    start(tmp_path, unit_matrix, opts).lock.release()
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.exists() for p in kept)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"matrix": "m.yaml\n## FORGED"}, "matrix"),
        ({"accel": "kvm; reboot"}, "accel"),
        ({"selected": ["../x"]}, "selected[0]"),
        ({"forged": 1}, "forged"),
    ],
)
def test_a_tampered_run_state_is_refused_in_one_line(tmp_path, unit_matrix, change, field):
    first = start(tmp_path, unit_matrix)
    first.lock.release()
    path = first.run_dir / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(InputError) as info:
        checkpoint.resumed(resuming(tmp_path))
    assert str(info.value).startswith(f"{path}: {field}: ")
    assert "\n" not in str(info.value)


def test_a_tampered_cell_result_is_run_again(tmp_path, unit_matrix, cell_by_id):
    first = start(tmp_path, unit_matrix)
    first.keep(not_run(cell_by_id["debian-12-release"], "x"))
    path = first.run_dir / "cells" / "debian-12-release.json"
    record = json.loads(path.read_text())
    record["result"]["source"] = "../../FORGED"
    path.write_text(json.dumps(record))
    first.lock.release()
    again = start(tmp_path, unit_matrix, checkpoint.resumed(resuming(tmp_path)))
    again.lock.release()
    assert again.finished == {}
