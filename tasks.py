"""hvgate tasks: `hvgate --list`, `hvgate --help matrix.run` (or the same with `invoke`). Each task
calls one function of harness/; `main` is the `hvgate` command, Invoke's Program with the tool's
exit codes for every failure, its usage errors included."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.program import Program
from invoke.tasks import Task
from invoke.tasks import task as invoke_task
from rich.console import Console

from harness.core.errors import ConfigurationError, HvgateError, UnsafeCells
from harness.core.options import (
    RunOptions,
    accel_flag,
    jobs_flag,
    package_cache_wanted,
    results_dir,
    runs_flag,
)
from harness.core.paths import ROOT
from harness.core.text import one_line
from harness.matrix.schema import write_schema
from harness.matrix.select import parse_shard
from harness.run import history, pipeline
from harness.run.fleet import addresses
from harness.stages.formats import TERMINAL_WIDTH, files_text, summary
from harness.stages.publish import markdown, report, stored_results, write_results_schema
from harness.tools import bisect
from harness.tools.diff import diff, load_run
from harness.tools.merge import merge_files
from harness.tools.pin import pin

# The checkout's matrix wherever the tasks are run from (`invoke -r DIR`, `hvgate` anywhere).
MATRIX = "matrix.yaml" if Path.cwd() == ROOT else str(ROOT / "matrix.yaml")
# Short flags, the same in every task that has the flag; -h is always --help.
SHORT_FLAGS = {"matrix": "m", "cells": "c", "exclude": "x", "jobs": "j", "out": "o", "input": "i"}
SELECT_HELP = {
    "matrix": f"the matrix file (default: {MATRIX})",
    "cells": "comma-separated shell patterns of cell ids to include, e.g. 'debian-12*' (default: all)",
    "exclude": "comma-separated shell patterns of cell ids to leave out, e.g. '*-backports'",
}
SHARD_HELP = {
    "shard": "K/N: only the K-th (1-based) of N near-equal, contiguous slices of the selected "
    "cells, e.g. 2/3 (for CI jobs; the same K/N always gives the same cells)",
}
ENGINES_HELP = {
    "engines": "comma-separated Docker engines to spread the cells over: unix://, tcp:// or "
    "ssh:// URLs or Docker context names (default: $HVGATE_ENGINES, else the default engine)",
}


class FlagsTask(Task):
    """A task whose short flags come from SHORT_FLAGS rather than from each name's first free
    letter, which made -h mean --shard in one task and --check in another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "auto_shortflags": False})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # `--dry` asks Invoke to echo shell commands instead of running them; these tasks run
        # none, so they would do their real work: refused before any.
        if args and args[0] is not None and args[0].config.run.dry:
            raise Exit(
                f"error: --dry: matrix.{self.name} runs no shell command to echo; "
                "`matrix.list` shows the cells a run would take",
                code=ConfigurationError.exit_code,
            )
        return super().__call__(*args, **kwargs)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Any]:
        # Invoke pops each flag's help as it builds the flags: kept for the next parser.
        kept = dict(self.help)
        try:
            return super().get_arguments(ignore_unknown_help)
        finally:
            self.help = kept

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"] = [*opts["names"], SHORT_FLAGS[name]]
        return opts


task = functools.partial(invoke_task, klass=FlagsTask)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def reported(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turns every failure into one clear message and its exit code; never a traceback: the
    tool's errors carry their code, anything else is the tool failing (3)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _sigterm)
        try:
            return function(*args, **kwargs)
        except Exit:
            raise
        except HvgateError as exc:
            lines = str(exc).splitlines() or [type(exc).__name__]
            if exc.exit_code != 1:  # a failure of the tool or of the input, not a verdict
                lines = [f"error: {line}" for line in lines]
            raise Exit("\n".join(lines), code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not the tool failing
        except Exception as exc:
            raise Exit(f"error: {type(exc).__name__}: {one_line(exc)}", code=3) from None

    return wrapper


@task(
    name="list",
    help={**SELECT_HELP, **SHARD_HELP, "json": "print the cells as JSON (for CI job matrices)"},
)
@reported
def list_cells(c, matrix=MATRIX, cells=None, exclude=None, shard=None, json_=False):
    """List the cells of the matrix (id, base, sources, versions)."""
    _, chosen = pipeline.selected(matrix, cells, exclude, shard)
    if json_:
        print(
            json.dumps(
                [
                    {"id": cell.id, "base": cell.base_name, "source": cell.source_name}
                    for cell in chosen
                ]
            )
        )
        return
    for cell in chosen:
        parts = ", ".join(
            f"{ch.component} {ch.version} from {ch.source_name}" for ch in cell.components
        )
        print(
            f"{cell.id:<28} {cell.base.distro} {cell.base.release} ({cell.base.codename}): {parts}"
        )


@task(name="render", help={**SELECT_HELP, **SHARD_HELP})
@reported
def render_task(c, matrix=MATRIX, cells=None, exclude=None, shard=None):
    """Render each selected cell's Dockerfile under images/cells/ (validates everything first)."""
    for cell_id in pipeline.render_cells(matrix, cells, exclude, shard):
        print(f"images/cells/{cell_id}/Dockerfile")


JOBS_HELP = {
    "jobs": "how many cells at a time: N builds feeding N smoke tests (default: the CPU count)",
}
CACHE_HELP = {
    "no_cache": "download every package from the archives, without the shared package cache "
    "(also: HVGATE_PACKAGE_CACHE=off), and retry cells remembered as unavailable",
}


def flags_of(given: dict[str, Any]) -> dict[str, Any]:
    """A task's flags by name: its locals() taken first thing, without Invoke's context."""
    return {name: value for name, value in given.items() if name != "c"}


def run_options(
    *,
    matrix: str,
    cells: str | None = None,
    exclude: str | None = None,
    shard: str | None = None,
    engines: str | None = None,
    jobs: Any = None,
    no_cache: bool = False,
    accel: str | None = None,
    runs: Any = None,
    build: bool = True,
    resume: bool = False,
    environ: Mapping[str, str] | None = None,
) -> RunOptions:
    """The one RunOptions of `matrix.build`, `matrix.test` and `matrix.run`, from the flags and
    the environment, checked (in this order) before anything is rendered or built."""
    environ = os.environ if environ is None else environ
    accel = accel_flag(accel)
    fixed_runs = runs_flag(runs)
    if shard is not None:
        parse_shard(shard)
    checked_engines = tuple(addresses(engines, environ))
    return RunOptions(
        results=results_dir(environ),
        matrix=matrix,
        cells=cells,
        exclude=exclude,
        shard=shard,
        accel=accel,
        runs=fixed_runs,
        engines=checked_engines,
        jobs=jobs_flag(jobs),
        package_cache=package_cache_wanted(no_cache, environ),
        build=build,
        resume=resume,
    )


@task(name="build", help={**SELECT_HELP, **SHARD_HELP, **ENGINES_HELP, **JOBS_HELP, **CACHE_HELP})
@reported
def build_task(
    c, matrix=MATRIX, cells=None, exclude=None, shard=None, engines=None, jobs=None, no_cache=False
):
    """Build the guest and each selected cell's image; unchanged cells are not rebuilt."""
    results = pipeline.build(run_options(**flags_of(locals())))
    for result in results.values():
        detail = result.image if result.ok else result.reason
        print(f"{result.cell_id:<28} {result.status:<12} {detail}")
    if not all(r.ok for r in results.values()):
        raise Exit("some cells did not build (see above)", code=1)


RUN_HELP = {
    **SELECT_HELP,
    **SHARD_HELP,
    **ENGINES_HELP,
    **JOBS_HELP,
    "accel": "auto (probe KVM by booting a guest, fall back to TCG), kvm or tcg (default: matrix.yaml's)",
    "runs": "run each scenario exactly N times, judged at run N (default: matrix.yaml's policy: "
    "repeat until the sequential test decides, from min_runs to max_runs)",
    "resume": "continue the newest interrupted run (its matrix, cells and options) without "
    "redoing its finished cells",
}


FORMATS = ("summary", "markdown", "json")
FORMAT_HELP = {
    "format": "what to print: summary (default: counts, what to pin, the cells that need "
    "attention, where the files are; 100 columns at most), markdown (the whole table) or json "
    "(the results document)",
}


def output_format(value: str | None) -> str:
    """The --format flag, checked before anything runs."""
    chosen = value or "summary"
    if chosen not in FORMATS:
        raise ConfigurationError(f"--format {value!r}: one of {', '.join(FORMATS)}")
    return chosen


def show(paths: Mapping[str, Path], chosen: str) -> None:
    """Prints a published result set as the document itself holds it, in the chosen format."""
    data = json.loads(paths.get("latest_json", paths["json"]).read_text(encoding="utf-8"))
    if chosen == "json":
        print(json.dumps(data, indent=1))
    elif chosen == "markdown":
        print(markdown(data))
    else:
        files = {
            "results": paths.get("latest_json", paths["json"]),
            "page": paths.get("latest_html", paths.get("html")),
            "table": paths.get("latest_markdown", paths.get("markdown")),
            "junit": paths.get("latest_junit", paths.get("junit")),
        }
        console = Console(highlight=False)
        # Not a terminal (a pipe, a CI log): as wide as a terminal would allow, no wider.
        width = min(TERMINAL_WIDTH, console.width) if console.is_terminal else TERMINAL_WIDTH
        Console(width=width, highlight=False).print(summary(data))
        print(files_text({k: v for k, v in files.items() if v}), end="")


def _run(options: RunOptions, chosen: str) -> None:
    result, paths = pipeline.run(options)
    show(paths, chosen)
    pipeline.check_outcome(result, paths.get("latest_markdown", paths.get("markdown")))


@task(name="test", help={**RUN_HELP, **FORMAT_HELP})
@reported
def test_task(
    c,
    matrix=MATRIX,
    cells=None,
    exclude=None,
    accel=None,
    runs=None,
    resume=False,
    shard=None,
    engines=None,
    jobs=None,
    format=None,
):
    """Smoke-test the already built images of the selected cells, judge and publish."""
    chosen = output_format(format)
    flags = {k: v for k, v in flags_of(locals()).items() if k not in ("format", "chosen")}
    _run(run_options(build=False, **flags), chosen)


@task(name="run", help={**RUN_HELP, **CACHE_HELP, **FORMAT_HELP})
@reported
def run_task(
    c,
    matrix=MATRIX,
    cells=None,
    exclude=None,
    accel=None,
    runs=None,
    resume=False,
    shard=None,
    engines=None,
    jobs=None,
    no_cache=False,
    format=None,
):
    """Render, build, smoke-test, judge and publish: the whole pipeline. Prints a summary."""
    chosen = output_format(format)
    flags = {k: v for k, v in flags_of(locals()).items() if k not in ("format", "chosen")}
    _run(run_options(**flags), chosen)


@task(
    name="merge",
    help={
        "results": "comma-separated results files (latest.json or runs/ID/results.json) or "
        "directories holding a latest.json; quoted shell patterns work: 'shards/*/latest.json'",
        "out": "the results directory to write the merge to (default: results/, or $HVGATE_RESULTS)",
        "matrix": f"the matrix whose cell order the merge follows (default: {MATRIX})",
        **FORMAT_HELP,
    },
)
@reported
def merge_task(c, results, out=None, matrix=MATRIX, format=None):
    """Merge the results of several runs or shards into one result set and publish it."""
    chosen = output_format(format)
    _, cells = pipeline.selected(matrix, None, None)
    out_dir = Path(out) if out else results_dir(os.environ)
    _, paths = merge_files(results, out_dir, [c.id for c in cells])
    show(paths, chosen)


@task(
    name="resolve",
    help={
        **SELECT_HELP,
        "check": "write nothing; list what moved since the lock and exit 1 if anything did",
    },
)
@reported
def resolve_task(c, matrix=MATRIX, cells=None, exclude=None, check=False):
    """Read each cell's apt indexes and lock exact libvirt/QEMU versions in matrix.lock.json."""
    logs = results_dir(os.environ) / "logs"
    moved = pipeline.resolve(matrix, cells, exclude, check=check, log_dir=logs)
    if check:
        print("\n".join(moved) if moved else "the lock is current: nothing moved")
        if moved:
            raise Exit(f"{len(moved)} change(s) since the lock", code=1)


@task(
    name="report",
    help={
        "run": "a stored run's id, read from results/runs/RUN_ID/results.json",
        "input": "a results JSON file to read (default: results/latest.json)",
        "out": "the directory to write to (default: the input's own)",
        "format": "what to print besides the files written: nothing (default), summary, "
        "markdown or json",
    },
)
@reported
def report_task(c, run=None, input=None, out=None, format=None):
    """Render the Markdown, HTML and JUnit results again from a stored results JSON; runs nothing."""
    chosen = output_format(format) if format else None
    where = results_dir(os.environ)
    written = report(
        run_id=run,
        input_path=input,
        output_dir=out,
        results_dir=where,
        history=lambda root: history.read(history.history_path(root)),
    )
    if chosen is None:
        for path in written.values():
            print(path)
        return
    _, source = stored_results(run, input, where)
    show({"json": source, **written}, chosen)


@task(
    name="pin",
    help={
        "run": "a stored run's id, read from results/runs/RUN_ID/results.json",
        "input": "a results JSON file to read (default: results/latest.json)",
        "out": "the directory to write to (default: results/pins/RUN_ID/)",
        "matrix": f"the matrix that names each cell's apt suites (default: {MATRIX})",
        "block": "also pin the libvirt and QEMU versions the run found flaky or broken at -1",
        "snapshot": "a snapshot archive's base URL: the pins name it as of the run's start "
        "(default: $HVGATE_PIN_SNAPSHOT)",
    },
)
@reported
def pin_task(c, run=None, input=None, out=None, matrix=MATRIX, block=False, snapshot=None):
    """Write apt preferences, a shell check and JSON pins of each base and source's newest safe versions."""
    snapshot = snapshot or os.environ.get("HVGATE_PIN_SNAPSHOT") or None
    plan, paths = pin(run, input, out, matrix, results_dir(os.environ), block, snapshot)
    for line in plan.refused + plan.superseded:
        print(line)
    for path in paths:
        print(path)
    if not plan.pins:
        raise UnsafeCells(f"nothing to pin: no cell of run {plan.data['run_id']} is safe")


@task(
    name="diff",
    help={
        "a": "the older run: a run id, `latest` or a results JSON file",
        "b": "the newer run: the same",
    },
)
@reported
def diff_task(c, a, b):
    """Compare two runs: cells added or removed, status and version changes, one line each."""
    where = results_dir(os.environ)
    lines = diff(load_run(a, where), load_run(b, where))
    print("\n".join(lines) if lines else "no differences")


@task(
    name="bisect",
    help={
        "matrix": SELECT_HELP["matrix"],
        "scenario": "the scenario that goes from safe to failing, e.g. live-snapshot",
        "base": "the base whose versions are bisected, e.g. ubuntu-24.04",
        "component": "libvirt (default) or qemu",
        "versions": "comma-separated versions, oldest first (default: every version the lock lists)",
        "builds": "comma-separated directories of .deb files, oldest first, instead of versions",
    },
)
@reported
def bisect_task(c, scenario, base, matrix=MATRIX, component="libvirt", versions=None, builds=None):
    """Find the first version (or build) at which a scenario goes from safe to failing."""
    last_safe, first_failing, steps = bisect.run(
        matrix, scenario, base, component, versions, builds, results_dir=results_dir(os.environ)
    )
    for step in steps:
        print(f"{step.candidate.label}: {step.status} ({step.evidence}) [{step.results}]")
    if first_failing is None:
        print(
            f"no failure: {scenario} is safe up to {last_safe.candidate.label if last_safe else '?'}"
        )
    elif last_safe is None:
        print(f"{scenario} already fails at the first candidate, {first_failing.candidate.label}")
    else:
        print(
            f"first failing: {first_failing.candidate.label} "
            f"(last safe: {last_safe.candidate.label})"
        )


@task(
    name="clean",
    help={
        "run_ids": "comma-separated shell patterns of run ids: only their objects (default: every run's)",
        "all": "remove the objects of live runs too (another checkout's, another CI job's), "
        "and their leases; needs --yes",
        "yes": "confirm --all",
    },
)
@reported
def clean_task(c, run_ids=None, all_=False, yes=False):
    """Remove the containers, networks and volumes of runs that are no longer alive (found by
    label; a live run holds a lease on the engine); say what is kept and why."""
    if all_ and not yes:
        raise ConfigurationError(
            "matrix.clean --all also removes what live runs use, on this engine, from any "
            "checkout or host: add --yes to confirm"
        )
    removed, kept = pipeline.clean(run_ids, everything=all_)
    for line in removed + kept:
        print(line)
    if not removed:
        print("nothing to remove")


@task(name="schema", help={"check": "only check that the committed schemas are current"})
@reported
def schema_task(c, check=False):
    """Write matrix.schema.json and results.schema.json, generated from the models and result types."""
    # Both run, so a check reports either file.
    changed = write_schema(check=check) | write_results_schema(check=check)
    if check and changed:
        raise Exit("a schema file is out of date: run `hvgate matrix.schema`", code=1)


matrix_tasks = Collection("matrix")
for t in (
    list_cells,
    resolve_task,
    render_task,
    build_task,
    test_task,
    run_task,
    merge_task,
    report_task,
    pin_task,
    diff_task,
    bisect_task,
    clean_task,
    schema_task,
):
    matrix_tasks.add_task(t)
namespace = Collection(matrix_tasks)


class Gate(Program):
    """Invoke's Program with the tool's exit codes: a usage error (unknown task or flag, missing
    argument, bad value) is bad input, 2, where Invoke says 1, the code of a finding; anything
    uncaught is one line and 3; an interruption 130."""

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        argv = list(sys.argv if argv is None else argv)
        # `TASK -h` is that task's help, also where the task has required arguments.
        named = [i for i, arg in enumerate(argv) if arg.startswith("matrix.")]
        if named and {"-h", "--help"} & set(argv[named[0] + 1 :]):
            argv = [*argv[: named[0]], "--help", argv[named[0]]]
        try:
            self.create_config()
            try:
                self.parse_core(argv)
                self.parse_collection()
                self.parse_tasks()
                self.parse_cleanup()
            except ValueError as exc:  # a flag's value Invoke could not convert, e.g. -T abc
                raise ParseError(str(exc)) from None
            self.update_config()
            self.execute()
            code = 0
        except ParseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            code = exc.code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
        except BrokenPipeError:
            # The reader went away (`hvgate ... | head`): what it read was right, and nothing
            # more can be said; 141 is a shell's code for a command ended by SIGPIPE.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 141
        except Exception as exc:
            print(f"error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            code = 3
        if exit:
            sys.exit(code)


def main() -> None:
    """The `hvgate` command: these tasks, the exit codes of the README."""
    Gate(name="hvgate", binary="hvgate", namespace=namespace, version=version("hvgate")).run()


if __name__ == "__main__":
    main()
