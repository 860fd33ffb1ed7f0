"""tasks.py and harness.engine.client: user mistakes and engine failures become one clear message and an exit code."""

from __future__ import annotations

import inspect
import json
import re

import docker
import docker.errors
import pytest
from invoke.exceptions import Exit

from harness.core.errors import ConfigurationError, EngineError, HvgateError, UnsafeCells
from harness.engine import client as engine
from tests import cli

# --- the Docker client, stubbed at its call site ---------------------------------------------


def test_client_reports_an_unreachable_engine(monkeypatch):
    calls = []

    def from_env(**kwargs):
        calls.append(kwargs)
        raise docker.errors.DockerException("boom")

    monkeypatch.setattr(engine.docker, "from_env", from_env)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/nowhere.sock")
    with pytest.raises(EngineError) as info:
        engine.client()
    assert str(info.value) == "cannot reach the Docker engine at unix:///run/nowhere.sock: boom"
    assert info.value.exit_code == 3
    assert info.value.__cause__ is None  # no chained traceback to show
    assert len(calls) == 1


def test_client_reports_a_failed_ping(monkeypatch):
    class Client:
        def ping(self):
            raise docker.errors.APIError("500 Server Error: engine is shutting down")

    monkeypatch.setattr(engine.docker, "from_env", lambda **kwargs: Client())
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    with pytest.raises(EngineError, match="Docker engine at the default socket: 500 Server Error"):
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
def bad_matrix(tmp_path, matrix_text):
    def edit(data):
        data["cells"][2]["base"] = "debain-13"
        data["policy"]["runs"] = "many"
        data["accel"] = "fast"

    path = tmp_path / "matrix.yaml"
    path.write_text(matrix_text(edit))
    return path


def problem_line(path) -> re.Pattern[str]:
    """One problem of a matrix file as the tasks report it: error: FILE:LINE: PATH: MESSAGE."""
    return re.compile(rf"error: {re.escape(str(path))}:(\d+): (\S+): (.+)")


def test_reported_turns_a_configuration_error_into_exit_2(tasks, bad_matrix):
    with pytest.raises(Exit) as info:
        tasks.list_cells.body(None, matrix=str(bad_matrix))
    assert info.value.code == 2
    lines = str(info.value.message).splitlines()
    assert len(lines) == 3
    # Every line, not only the first, says it is an error.
    matches = [problem_line(bad_matrix).fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [m.group(2) for m in matches] == ["cells[2].base", "policy.runs", "accel"]


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        # Exit 1 is a verdict (unsafe cells), not a failure of the tool: no prefix.
        (
            UnsafeCells("2 cells are not safe:\ndebian-12-release: broken"),
            1,
            ["2 cells are not safe:", "debian-12-release: broken"],
        ),
        (
            EngineError("cannot reach the Docker engine:\nconnection refused"),
            3,
            ["error: cannot reach the Docker engine:", "error: connection refused"],
        ),
        (KeyboardInterrupt(), 130, ["interrupted"]),
    ],
    ids=["verdict", "engine-error", "interrupt"],
)
def test_reported_turns_errors_into_exit_codes(tasks, monkeypatch, error, code, message):
    def fail(*args):
        raise error

    monkeypatch.setattr(tasks.pipeline, "selected", fail)
    with pytest.raises(Exit) as info:
        tasks.list_cells.body(None)
    assert info.value.code == code
    assert str(info.value.message).splitlines() == message


@pytest.mark.parametrize(
    ("accel", "runs", "flag"),
    [
        ("fast", None, "--accel"),
        (None, "0", "--runs"),
        (None, "1001", "--runs"),
        (None, "abc", "--runs"),
    ],
)
def test_run_flags_are_checked_before_any_work(tasks, monkeypatch, accel, runs, flag):
    def no_work(*args, **kwargs):
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(tasks.pipeline, "run", no_work)
    with pytest.raises(Exit) as info:
        tasks.test_task.body(None, accel=accel, runs=runs)
    assert info.value.code == 2
    assert flag in str(info.value.message)


def test_every_task_has_help_for_every_flag(tasks):
    for task in tasks.matrix_tasks.tasks.values():
        assert task.__doc__, task.name
        flags = list(inspect.signature(task.body).parameters)[1:]  # after the context
        missing = [flag for flag in flags if flag.rstrip("_") not in task.help]
        assert not missing, f"matrix.{task.name}: no help for {missing}"


# --- tasks, as a user runs them ---------------------------------------------------------------


def invoke(root, tmp_path, *args):
    assert root == cli.ROOT
    return cli.invoke(*args, results_dir=tmp_path / "results")


def test_list_with_a_bad_matrix_exits_2_with_one_line_per_problem(root, tmp_path, bad_matrix):
    done = invoke(root, tmp_path, "matrix.list", "--matrix", str(bad_matrix))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    matches = [problem_line(bad_matrix).fullmatch(line) for line in lines]
    assert all(matches), done.stderr
    problems = {m.group(2): m.group(3) for m in matches}
    assert list(problems) == ["cells[2].base", "policy.runs", "accel"]  # in the file's order
    assert "did you mean 'debian-13'?" in problems["cells[2].base"]
    assert not (tmp_path / "results").exists()


def test_list_with_a_file_that_is_not_utf8(root, tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_bytes(b"bases: \xff\n")
    done = invoke(root, tmp_path, "matrix.list", "--matrix", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {path}:1: bases: ")
    assert "not UTF-8" in line


def test_list_json(root, tmp_path, unit_matrix_path):
    done = invoke(
        root,
        tmp_path,
        "matrix.list",
        "--matrix",
        str(unit_matrix_path),
        "--json",
        "--cells",
        "debian-1*",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"id": "debian-12-release", "base": "debian-12", "source": "release"},
        {"id": "debian-12-backports", "base": "debian-12", "source": "backports"},
        {"id": "debian-13-release", "base": "debian-13", "source": "release"},
        {"id": "debian-13-release-qemu-backports", "base": "debian-13", "source": "release"},
        {"id": "debian-12-plain", "base": "debian-12", "source": "image"},
    ]


def test_list_with_exclude(root, tmp_path, unit_matrix_path):
    done = invoke(
        root,
        tmp_path,
        "matrix.list",
        "--matrix",
        str(unit_matrix_path),
        "--cells",
        "ubuntu-*,debian-13*",
        "--exclude",
        "*-release",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "debian-13-release-qemu-backports",
        "ubuntu-24.04-cloud-archive-epoxy",
    ]
    assert lines[0].endswith(
        "debian 13 (trixie): libvirt latest from release, qemu latest from backports"
    )


def test_list_with_a_pattern_matching_nothing(root, tmp_path, unit_matrix_path):
    done = invoke(
        root,
        tmp_path,
        "matrix.list",
        "--matrix",
        str(unit_matrix_path),
        "--cells",
        "debian-12-relase",
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: --cells 'debian-12-relase' matches no cell")
    assert "did you mean 'debian-12-release'?" in line


# --- the options of a run, built and checked once --------------------------------------------


def test_run_options_come_from_the_flags_and_the_environment(tasks, tmp_path):
    environ = {
        "HVGATE_RESULTS": str(tmp_path / "r"),
        "HVGATE_ENGINES": "unix:///a.sock, unix:///b.sock",
        "HVGATE_PACKAGE_CACHE": "off",
    }
    opts = tasks.run_options(
        matrix="m.yaml", cells="debian-*", jobs="3", runs="5", accel="tcg", environ=environ
    )
    assert (opts.results, opts.matrix, opts.cells) == (tmp_path / "r", "m.yaml", "debian-*")
    assert (opts.jobs, opts.runs, opts.accel) == (3, 5, "tcg")
    assert opts.engines == ("unix:///a.sock", "unix:///b.sock")
    assert not opts.package_cache
    # The flag wins over the environment; none of either: the defaults.
    opts = tasks.run_options(matrix="m.yaml", engines="unix:///c.sock", environ={})
    assert opts.engines == ("unix:///c.sock",) and opts.package_cache
    assert opts.results == cli.ROOT / "results" and opts.jobs is None and opts.runs is None


def test_run_options_check_the_flags_in_order(tasks):
    """Several bad flags: the first of accel, runs, shard, engines, jobs is reported, as before."""
    bad = {"accel": "fast", "runs": "0", "shard": "x", "engines": "ftp://x", "jobs": "0"}
    for flag in list(bad):
        with pytest.raises(ConfigurationError) as info:
            tasks.run_options(matrix="m.yaml", environ={}, **bad)
        assert str(info.value).startswith(f"--{flag} ")
        del bad[flag]


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["matrix.run", "--jobs", "0"], {}, "error: --jobs '0': use a whole number from 1 to 64"),
        (
            ["matrix.build", "--jobs", "65"],
            {},
            "error: --jobs '65': use a whole number from 1 to 64",
        ),
        (
            ["matrix.test", "--runs", "abc"],
            {},
            "error: --runs 'abc': use a whole number from 1 to 1000",
        ),
        (["matrix.test", "--accel", "fast"], {}, "error: --accel 'fast': use auto, kvm or tcg"),
        (
            ["matrix.run"],
            {"HVGATE_ENGINES": "ftp://y"},
            "error: HVGATE_ENGINES 'ftp://y': use a unix://, tcp:// or ssh:// URL, or a Docker "
            "context's name",
        ),
    ],
    ids=["run-jobs", "build-jobs", "test-runs", "test-accel", "engines-env"],
)
def test_a_bad_flag_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, args, env, line):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = cli.invoke(*args, results_dir=tmp_path / "results")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")
    assert not (tmp_path / "results").exists()


def test_clean_all_needs_a_confirmation(tmp_path, monkeypatch):
    # Refused before the engine is asked: no engine here, and the exit code is 2, not 3.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    done = cli.invoke("matrix.clean", "--all", results_dir=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: matrix.clean --all") and "--yes" in line
