"""tasks.py and harness.engine: user mistakes and engine failures become one clear message and an exit code."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys

import docker
import docker.errors
import pytest
from invoke.exceptions import Exit

from harness import engine
from harness.errors import ConfigurationError, EngineError, HvgateError, UnsafeCells

# --- the Docker client, stubbed at its call site ---------------------------------------------


def test_client_reports_an_unreachable_engine(monkeypatch):
    calls = []

    def from_env(**kwargs):
        calls.append(kwargs)
        raise docker.errors.DockerException("boom")

    monkeypatch.setattr(engine.docker, "from_env", from_env)
    with pytest.raises(EngineError) as info:
        engine.client()
    assert str(info.value) == "cannot reach the Docker engine: boom"
    assert info.value.exit_code == 3
    assert info.value.__cause__ is None  # no chained traceback to show
    assert len(calls) == 1


def test_client_reports_a_failed_ping(monkeypatch):
    class Client:
        def ping(self):
            raise docker.errors.APIError("500 Server Error: engine is shutting down")

    monkeypatch.setattr(engine.docker, "from_env", lambda **kwargs: Client())
    with pytest.raises(EngineError, match="cannot reach the Docker engine: 500 Server Error"):
        engine.client()


def test_client_returns_the_pinged_client(monkeypatch):
    pings = []

    class Client:
        def ping(self):
            pings.append(True)
            return True

    client = Client()
    seen = {}

    def from_env(**kwargs):
        seen.update(kwargs)
        return client

    monkeypatch.setattr(engine.docker, "from_env", from_env)
    assert engine.client() is client
    assert pings == [True]
    assert seen.get("timeout", 0) >= 60  # builds and smoke runs are slow calls


def test_exit_codes():
    assert ConfigurationError("x").exit_code == 2
    assert EngineError("x").exit_code == 3
    assert UnsafeCells("x").exit_code == 1
    assert issubclass(ConfigurationError, HvgateError)
    assert ConfigurationError(["a", "b"]).problems == ["a", "b"]
    assert str(ConfigurationError(["a", "b"])) == "a\nb"


# --- tasks, in the process --------------------------------------------------------------------


@pytest.fixture
def tasks(monkeypatch, root):
    """The tasks module; `reported` installs a SIGTERM handler, which is put back afterwards."""
    monkeypatch.syspath_prepend(str(root))
    previous = signal.getsignal(signal.SIGTERM)
    import tasks as module

    yield module
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def bad_matrix(tmp_path, matrix_text):
    def edit(data):
        data["cells"][2]["base"] = "debain-13"
        data["policy"]["runs"] = "many"
        data["accel"] = "fast"

    path = tmp_path / "matrix.yaml"
    path.write_text(matrix_text(edit))
    return path


def test_reported_turns_a_configuration_error_into_exit_2(tasks, bad_matrix):
    with pytest.raises(Exit) as info:
        tasks.list_cells.body(None, matrix=str(bad_matrix))
    assert info.value.code == 2
    lines = str(info.value.message).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"error: {bad_matrix}:")
    assert all(f"{bad_matrix}:" in line for line in lines)


def test_reported_turns_interrupts_into_exit_130(tasks, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.pipeline, "selected", interrupted)
    with pytest.raises(Exit) as info:
        tasks.list_cells.body(None)
    assert info.value.code == 130


@pytest.mark.parametrize(
    ("accel", "runs", "flag"),
    [("fast", None, "--accel"), (None, "0", "--runs"), (None, "1001", "--runs")],
)
def test_run_flags_are_checked_before_any_work(tasks, monkeypatch, accel, runs, flag):
    def no_work(*args, **kwargs):
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(tasks.pipeline, "run", no_work)
    with pytest.raises(Exit) as info:
        tasks.test_task.body(None, accel=accel, runs=runs)
    assert info.value.code == 2
    assert flag in str(info.value.message)


def test_runs_that_is_not_a_number_is_a_usage_error(tasks, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(tasks.pipeline, "run", no_work)
    with pytest.raises(Exit) as info:
        tasks.test_task.body(None, runs="abc")
    assert info.value.code == 2
    assert "--runs" in str(info.value.message)


def test_every_task_has_help_for_every_flag(tasks):
    for task in tasks.matrix_tasks.tasks.values():
        assert task.__doc__, task.name
        flags = list(inspect.signature(task.body).parameters)[1:]  # after the context
        missing = [flag for flag in flags if flag.rstrip("_") not in task.help]
        assert not missing, f"matrix.{task.name}: no help for {missing}"


# --- tasks, as a user runs them ---------------------------------------------------------------


def invoke(root, tmp_path, *args):
    env = dict(os.environ, HVGATE_RESULTS=str(tmp_path / "results"))
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_with_a_bad_matrix_exits_2_with_one_line_per_problem(root, tmp_path, bad_matrix):
    done = invoke(root, tmp_path, "matrix.list", "--matrix", str(bad_matrix))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith("error: ")
    assert all(f"{bad_matrix}:" in line for line in lines)
    assert any("cells[2].base" in line and "did you mean 'debian-13'?" in line for line in lines)
    assert any("policy.runs" in line for line in lines)
    assert any(": accel: " in line for line in lines)
    assert not (tmp_path / "results").exists()


def test_list_with_a_file_that_is_not_utf8(root, tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_bytes(b"bases: \xff\n")
    done = invoke(root, tmp_path, "matrix.list", "--matrix", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "not UTF-8" in done.stderr


def test_list_json_of_the_default_matrix(root, tmp_path, default_matrix):
    done = invoke(root, tmp_path, "matrix.list", "--json", "--cells", "debian-12*")
    assert done.returncode == 0, done.stderr
    cells = json.loads(done.stdout)
    expected = [c.id for c in default_matrix[1] if c.id.startswith("debian-12")]
    assert [c["id"] for c in cells] == expected
    assert all(c["base"] == "debian-12" for c in cells)


def test_list_with_a_pattern_matching_nothing(root, tmp_path):
    done = invoke(root, tmp_path, "matrix.list", "--cells", "debian-12-relase")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "did you mean 'debian-12-release'?" in done.stderr
