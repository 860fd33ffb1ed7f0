"""The command line's contract, for every task: the exit codes (0 clean, 1 a finding, 2 bad input
or a usage error, 3 the tool failed, 130 interrupted), -h as help, one meaning per short flag, and
the README's tables of tasks, flags and exit codes against the collection."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import invoke
import pytest
from invoke.program import Program

from harness.core import errors
from tests import cli

README = (cli.ROOT / "README.md").read_text()


def tasks_module():
    """tasks.py of this checkout, for parametrizing by task."""
    if str(cli.ROOT) not in sys.path:
        sys.path.insert(0, str(cli.ROOT))
    import tasks

    return tasks


TASKS = sorted(tasks_module().matrix_tasks.task_names)


def positionals(tasks, name: str) -> list[str]:
    """A value for each positional argument of a task, so that only the tested fault is wrong."""
    return ["x" for arg in tasks.matrix_tasks[name].get_arguments() if arg.positional]


def hvgate(tasks, capsys, *argv: str) -> tuple[int, str, str]:
    """`hvgate ARGV` in this process, through the same Program as the console script."""
    with pytest.raises(SystemExit) as info:
        tasks.Gate(name="hvgate", binary="hvgate", namespace=tasks.namespace).run(["hvgate", *argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def broken(tasks, monkeypatch):
    """Every function and module of harness/ that tasks.py calls raises `error` when used, but
    the one that words the report of an error."""

    def install(error: BaseException) -> None:
        def fail(*args, **kwargs):
            raise error

        class Failing:
            def __getattr__(self, name):
                fail()

        for name, value in list(vars(tasks).items()):
            module = getattr(value, "__module__", None) or ""
            if name == "one_line":
                continue
            if callable(value) and module.startswith("harness.") and isinstance(value, type(fail)):
                monkeypatch.setattr(tasks, name, fail)
            elif type(value).__name__ == "module" and value.__name__.startswith("harness."):
                monkeypatch.setattr(tasks, name, Failing())

    return install


@pytest.mark.parametrize("name", TASKS)
def test_an_unknown_flag_is_a_usage_error(tasks, capsys, name):
    code, out, err = hvgate(tasks, capsys, f"matrix.{name}", *positionals(tasks, name), "--bogus")
    assert (code, out) == (2, "")
    assert err == "error: No idea what '--bogus' is!\n"


@pytest.mark.parametrize("name", [n for n in TASKS if n in ("bisect", "diff", "merge")])
def test_a_missing_argument_is_a_usage_error(tasks, capsys, name):
    assert positionals(tasks, name)
    code, out, err = hvgate(tasks, capsys, f"matrix.{name}")
    assert (code, out) == (2, "")
    assert re.fullmatch(r"error: 'matrix\.\w+' did not receive required positional .*\n", err)


def value_flags(tasks, name: str) -> list[str]:
    args = tasks.matrix_tasks[name].get_arguments()
    return [a.names[0] for a in args if not a.positional and a.kind is not bool]


@pytest.mark.parametrize("name", [n for n in TASKS if value_flags(tasks_module(), n)])
def test_a_flag_without_its_value_is_a_usage_error(tasks, capsys, name):
    flag = value_flags(tasks, name)[0]
    code, out, err = hvgate(tasks, capsys, f"matrix.{name}", *positionals(tasks, name), f"--{flag}")
    assert (code, out) == (2, "")
    assert err.startswith("error: Flag ") and "needed value" in err


def test_an_unknown_task_and_a_bad_core_value_are_usage_errors(tasks, capsys):
    assert hvgate(tasks, capsys, "matrix.publish")[0] == 2
    assert hvgate(tasks, capsys, "--help", "matrix.publish")[0] == 2
    code, _, err = hvgate(tasks, capsys, "-T", "soon", "matrix.list")
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", TASKS)
def test_dry_is_refused(tasks, capsys, broken, name):
    broken(AssertionError("the task ran"))  # refused before any work
    code, out, err = hvgate(tasks, capsys, "--dry", f"matrix.{name}", *positionals(tasks, name))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: --dry: matrix.{name} runs no shell command")


@pytest.mark.parametrize("name", TASKS)
def test_an_internal_error_is_one_line_and_exit_3(tasks, capsys, broken, name):
    broken(RuntimeError("forced\nfailure"))
    code, out, err = hvgate(tasks, capsys, f"matrix.{name}", *positionals(tasks, name))
    assert (code, out) == (3, "")
    assert err == "error: RuntimeError: forced failure\n"


@pytest.mark.parametrize("name", TASKS)
def test_an_interruption_is_exit_130(tasks, capsys, broken, name):
    broken(KeyboardInterrupt())
    code, _, err = hvgate(tasks, capsys, f"matrix.{name}", *positionals(tasks, name))
    assert (code, err) == (130, "interrupted\n")


@pytest.mark.parametrize("name", TASKS)
def test_help_works_on_every_task(tasks, capsys, name):
    for argv in (
        ["--help", f"matrix.{name}"],
        [f"matrix.{name}", "-h"],
        [f"matrix.{name}", "--help"],
    ):
        code, out, _ = hvgate(tasks, capsys, *argv)
        assert code == 0
        assert out.startswith(f"Usage: hvgate [--core-opts] matrix.{name} ")


def test_a_short_flag_means_one_thing_and_h_is_help(tasks):
    meaning: dict[str, set[str]] = {}
    for task in tasks.matrix_tasks.tasks.values():
        for arg in task.get_arguments():
            for short in (n for n in arg.names if len(n) == 1 and not arg.positional):
                meaning.setdefault(short, set()).add(arg.names[0])
    assert "h" not in meaning
    assert {short: names for short, names in meaning.items() if len(names) > 1} == {}
    assert {short: names.pop() for short, names in meaning.items()} == {
        v: k for k, v in tasks.SHORT_FLAGS.items()
    }


# --- the entry points, as processes ------------------------------------------------------------


def run(*argv: str, cwd, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HVGATE_RESULTS": str(tmp_path / "results")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hvgate_from_another_directory_finds_the_matrix(tmp_path):
    done = run(str(cli.ROOT / "tasks.py"), "matrix.list", "--json", cwd=tmp_path, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"id": "debian-12-release"' in done.stdout
    done = run(
        str(cli.ROOT / "tasks.py"), "matrix.list", "--bogus", cwd=tmp_path, tmp_path=tmp_path
    )
    assert (done.returncode, done.stderr) == (2, "error: No idea what '--bogus' is!\n")


def test_invoke_runs_the_same_tasks_with_its_own_code_for_usage_errors(tmp_path):
    """`invoke -r DIR` finds the matrix from elsewhere; the task's own codes hold under `invoke`,
    but Invoke exits 1 for its usage errors (README: Tasks), which is why CI calls `hvgate`."""
    base = ["-m", "invoke", "-r", str(cli.ROOT)]
    done = run(*base, "matrix.list", "-c", "debian-12-release", cwd=tmp_path, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("debian-12-release ")
    done = run(*base, "--dry", "matrix.list", cwd=tmp_path, tmp_path=tmp_path)
    assert done.returncode == 2
    done = run(*base, "matrix.list", "--bogus", cwd=tmp_path, tmp_path=tmp_path)
    assert done.returncode == 1


# --- the README's tables ---------------------------------------------------------------------------


def table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after a line starting with `heading`."""
    text = README[README.index(heading) :]
    lines = text[text.index("\n|") + 1 :].split("\n\n")[0].splitlines()[2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_the_readme_lists_every_task_with_flags_it_has(tasks):
    rows = table("## Tasks")
    named = [re.match(r"`hvgate matrix\.(\w+)", row[0]).group(1) for row in rows]
    assert sorted(named) == TASKS
    for name, row in zip(named, rows, strict=True):
        flags = {a.names[0] for a in tasks.matrix_tasks[name].get_arguments()}
        assert set(re.findall(r"--([a-z-]+)", row[0])) <= flags, row[0]


def test_the_readme_table_of_flags_is_the_tasks_flags(tasks):
    documented = {}
    for flag, short, names in table("The flags, and the tasks that have each"):
        long = re.match(r"`--([a-z-]+)", flag).group(1)
        documented[long] = (short.strip("`-") or None, sorted(names.split(", ")))
    actual: dict[str, tuple[str | None, list[str]]] = {}
    for name in TASKS:
        for arg in tasks.matrix_tasks[name].get_arguments():
            if arg.positional:
                continue
            short = next((n for n in arg.names if len(n) == 1), None)
            actual.setdefault(arg.names[0], (short, []))[1].append(name)
    assert documented == actual


def test_the_readme_table_of_exit_codes_is_the_code():
    documented = {int(row[0]) for row in table("Every task exits with one of these codes")}
    codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.HvgateError)
    }
    assert documented == {0} | codes


@pytest.mark.parametrize("name", TASKS)
def test_invoke_help_works_on_every_task(capsys, name):
    """`invoke --help TASK` through Invoke's own Program, which loads tasks.py as `invoke` does."""
    program = Program(version=invoke.__version__, binary="inv[oke]", binary_names=["invoke", "inv"])
    with pytest.raises(SystemExit) as info:
        program.run(["invoke", "-r", str(cli.ROOT), "--help", f"matrix.{name}"])
    assert info.value.code in (0, None)
    assert capsys.readouterr().out.startswith(f"Usage: inv[oke] [--core-opts] matrix.{name} ")


def test_a_reader_that_goes_away_is_no_error():
    """`hvgate ... | head`: the command ends quietly with a shell's SIGPIPE code, not exit 3."""
    read, write = os.pipe()
    os.close(read)  # gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "tasks.py", "matrix.list"],
            cwd=cli.ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
