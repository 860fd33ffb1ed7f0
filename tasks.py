"""hvgate tasks: `invoke --list`, `invoke --help matrix.run`. Each task calls one function of harness/."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit
from invoke.tasks import task

from harness.core.errors import HvgateError, UnsafeCells
from harness.core.options import (
    RunOptions,
    accel_flag,
    jobs_flag,
    package_cache_wanted,
    results_dir,
    runs_flag,
)
from harness.matrix.schema import write_schema
from harness.matrix.select import parse_shard
from harness.run import pipeline
from harness.run.fleet import addresses
from harness.stages.publish import markdown, report, write_results_schema
from harness.tools import bisect
from harness.tools.diff import diff, load_run
from harness.tools.merge import merge_files
from harness.tools.pin import pin

MATRIX = "matrix.yaml"
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


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def reported(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turns the tool's errors into one clear message and its exit code; never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _sigterm)
        try:
            return function(*args, **kwargs)
        except HvgateError as exc:
            lines = str(exc).splitlines() or [type(exc).__name__]
            if exc.exit_code != 1:  # a failure of the tool or of the input, not a verdict
                lines = [f"error: {line}" for line in lines]
            raise Exit("\n".join(lines), code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

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


def _run(options: RunOptions) -> None:
    result, paths = pipeline.run(options)
    print(markdown(result.to_json()))
    print(
        f"results: {paths['json']}\ntable:   {paths['markdown']}\npage:    {paths['html']}"
        f"\njunit:   {paths['junit']}",
        file=sys.stderr,
    )
    pipeline.check_outcome(result)


@task(name="test", help=RUN_HELP)
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
):
    """Smoke-test the already built images of the selected cells, judge and publish."""
    _run(run_options(build=False, **flags_of(locals())))


@task(name="run", help={**RUN_HELP, **CACHE_HELP})
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
):
    """Render, build, smoke-test, judge and publish: the whole pipeline. Prints the table."""
    _run(run_options(**flags_of(locals())))


@task(
    name="merge",
    help={
        "results": "comma-separated results files (latest.json or runs/ID/results.json) or "
        "directories holding a latest.json; quoted shell patterns work: 'shards/*/latest.json'",
        "out": "the results directory to write the merge to (default: results/, or $HVGATE_RESULTS)",
        "matrix": f"the matrix whose cell order the merge follows (default: {MATRIX})",
    },
)
@reported
def merge_task(c, results, out=None, matrix=MATRIX):
    """Merge the results of several runs or shards into one result set and publish it."""
    _, cells = pipeline.selected(matrix, None, None)
    out_dir = Path(out) if out else results_dir(os.environ)
    run, paths = merge_files(results, out_dir, [c.id for c in cells])
    print(markdown(run.to_json()))
    print(f"results: {paths['json']}\ntable:   {paths['markdown']}", file=sys.stderr)


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
        "output": "the directory to write to (default: the input's own)",
    },
)
@reported
def report_task(c, run=None, input=None, output=None):
    """Render the Markdown, HTML and JUnit results again from a stored results JSON; runs nothing."""
    where = results_dir(os.environ)
    for path in report(run_id=run, input_path=input, output_dir=output, results_dir=where).values():
        print(path)


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


@task(name="clean")
@reported
def clean_task(c):
    """Remove every container, network and volume a (killed) run left behind, found by label."""
    removed = pipeline.clean()
    print("\n".join(removed) if removed else "nothing to remove")


@task(name="schema", help={"check": "only check that the committed schemas are current"})
@reported
def schema_task(c, check=False):
    """Write matrix.schema.json and results.schema.json, generated from the models and result types."""
    # Both run, so a check reports either file.
    changed = write_schema(check=check) | write_results_schema(check=check)
    if check and changed:
        raise Exit("a schema file is out of date: run `invoke matrix.schema`", code=1)


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
