"""harness.tools.diff and `matrix.diff`: two runs compared, one line per difference."""

from __future__ import annotations

import pytest

from harness.core.errors import ConfigurationError
from harness.run import history
from harness.stages.publish import publish
from harness.tools import diff as diff_tool
from tests import cli
from tests.unit.run.test_history import cell, run


@pytest.fixture
def two_runs(tmp_path):
    results = tmp_path / "results"
    old = run(
        "r1",
        cell("a", "safe", {"libvirt-daemon": "9.0.0-4", "qemu-system-x86": "1:7.2+dfsg-7"}),
        cell("b", "broken"),
        cell("gone", "safe"),
    )
    new = run(
        "r2",
        cell("a", "flaky", {"libvirt-daemon": "9.0.0-5", "qemu-system-x86": "1:7.2+dfsg-7"}),
        cell("b", "safe"),
        cell("c", "safe", {"libvirt-daemon": "11.3.0-1"}),
    )
    for r in (old, new):
        history.record(r, lambda r, _: publish(r, results), results)
    return results


def test_diff_one_line_per_difference(two_runs):
    old = diff_tool.load_run("r1", two_runs)
    new = diff_tool.load_run("r2", two_runs)
    assert diff_tool.diff(old, new) == [
        "status   a: safe -> flaky (regression)",
        "version  a: libvirt-daemon 9.0.0-4 -> 9.0.0-5",
        "status   b: broken -> safe (fix)",
        "added    c: safe (libvirt-daemon 11.3.0-1)",
        "removed  gone: was safe",
    ]
    assert diff_tool.diff(new, new) == []


def test_load_run_by_file_latest_and_history(two_runs):
    by_file = diff_tool.load_run(str(two_runs / "runs" / "r1" / "results.json"), two_runs)
    assert by_file == diff_tool.load_run("r1", two_runs)
    assert diff_tool.load_run("latest", two_runs)["run_id"] == "r2"
    # A run whose results directory is gone is still in the history.
    (two_runs / "runs" / "r1" / "results.json").unlink()
    from_history = diff_tool.load_run("r1", two_runs)
    assert from_history == by_file


@pytest.mark.parametrize("ref", ["nope", "../runs", "", "r1/results.json"])
def test_load_run_refuses_an_unknown_run(two_runs, ref):
    with pytest.raises(ConfigurationError) as info:
        diff_tool.load_run(ref, two_runs)
    assert info.value.exit_code == 2
    assert "no such run" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not JSON"),
        ('{"cells": []}', "results format None"),
        ("[1]", "not an hvgate results document"),
    ],
)
def test_load_run_refuses_a_file_that_is_not_a_run(tmp_path, text, says):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=says) as info:
        diff_tool.load_run(str(path), tmp_path)
    assert str(info.value).startswith(str(path))


def test_diff_task(two_runs):
    done = cli.invoke("matrix.diff", "r1", "r2", results_dir=two_runs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "status   a: safe -> flaky (regression)"
    assert len(done.stdout.splitlines()) == 5
    same = cli.invoke("matrix.diff", "r2", "latest", results_dir=two_runs)
    assert same.stdout.strip() == "no differences"


def test_diff_task_with_a_bad_run_id_exits_2_with_one_line(two_runs):
    done = cli.invoke("matrix.diff", "r1", "no-such-run", results_dir=two_runs)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: 'no-such-run': no such run")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
