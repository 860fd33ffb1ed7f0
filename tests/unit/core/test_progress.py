"""Progress lines and the bar of cells: on a terminal the lines go to the run's log only."""

from __future__ import annotations

from harness.core import progress


def test_without_a_terminal_lines_go_to_stderr_and_the_log(tmp_path, capsys):
    log = tmp_path / "run" / "progress.log"
    with progress.bar(2, log, terminal=False) as bar:
        progress.say("debian-12-release", "smoke test (tcg)")
        bar.advance("debian-12-release")
    progress.say("run", "after the bar")
    err = capsys.readouterr().err
    assert "debian-12-release      smoke test (tcg)" in err and "after the bar" in err
    text = log.read_text()
    assert "smoke test (tcg)" in text and "after the bar" not in text


def test_on_a_terminal_a_bar_counts_cells_and_the_lines_go_to_the_log(tmp_path, capsys):
    log = tmp_path / "progress.log"
    with progress.bar(3, log, terminal=True) as bar:
        progress.say("debian-13-release", "built in 61.0 s")
        bar.advance("debian-13-release")
        assert bar._progress is not None
        task = bar._progress.tasks[0]
        assert (task.completed, task.total) == (1, 3)
        assert task.description == "last: debian-13-release"
    err = capsys.readouterr().err
    assert "built in 61.0 s" not in err  # the bar, not the line
    assert f"progress lines: {log}" in err
    assert "built in 61.0 s" in log.read_text()
    progress.say("run", "the bar is gone")
    assert "the bar is gone" in capsys.readouterr().err
