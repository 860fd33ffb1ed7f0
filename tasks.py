"""hvgate tasks: `invoke --list`, `invoke --help matrix.run`. Each task calls one function of harness/."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit
from invoke.tasks import task

from harness import pipeline
from harness.errors import HvgateError
from harness.publish import markdown

MATRIX = "matrix.yaml"
SELECT_HELP = {
    "matrix": f"the matrix file (default: {MATRIX})",
    "cells": "comma-separated shell patterns of cell ids to include, e.g. 'debian-12*' (default: all)",
    "exclude": "comma-separated shell patterns of cell ids to leave out, e.g. '*-backports'",
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


@task(name="list", help={**SELECT_HELP, "json": "print the cells as JSON (for CI job matrices)"})
@reported
def list_cells(c, matrix=MATRIX, cells=None, exclude=None, json_=False):
    """List the cells of the matrix (id, base, sources, versions)."""
    _, chosen = pipeline.selected(matrix, cells, exclude)
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


@task(name="render", help=SELECT_HELP)
@reported
def render_task(c, matrix=MATRIX, cells=None, exclude=None):
    """Render each selected cell's Dockerfile under images/cells/ (validates everything first)."""
    for cell_id in pipeline.render_cells(matrix, cells, exclude):
        print(f"images/cells/{cell_id}/Dockerfile")


@task(name="build", help=SELECT_HELP)
@reported
def build_task(c, matrix=MATRIX, cells=None, exclude=None):
    """Build the guest and each selected cell's image; unchanged cells are not rebuilt."""
    results = pipeline.build(matrix, cells, exclude)
    for result in results.values():
        detail = result.image if result.ok else result.reason
        print(f"{result.cell_id:<28} {result.status:<12} {detail}")
    if not all(r.ok for r in results.values()):
        raise Exit("some cells did not build (see above)", code=1)


RUN_HELP = {
    **SELECT_HELP,
    "accel": "auto (probe KVM by booting a guest, fall back to TCG), kvm or tcg (default: matrix.yaml's)",
    "runs": "repetitions of the scenario set per cell (default: matrix.yaml's policy.runs)",
}


def _run(
    matrix: str,
    cells: str | None,
    exclude: str | None,
    accel: str | None,
    runs: int | None,
    do_build: bool,
) -> None:
    if accel not in (None, "auto", "kvm", "tcg"):
        raise Exit(f"error: --accel {accel!r}: use auto, kvm or tcg", code=2)
    if runs is not None and not (str(runs).isdigit() and 1 <= int(runs) <= 1000):
        raise Exit(f"error: --runs {runs!r}: use a whole number from 1 to 1000", code=2)
    result, paths = pipeline.run(
        matrix, cells, exclude, accel, int(runs) if runs else None, do_build
    )
    print(markdown(result.to_json()))
    print(f"results: {paths['json']}\ntable:   {paths['markdown']}", file=sys.stderr)
    pipeline.check_outcome(result)


@task(name="test", help=RUN_HELP)
@reported
def test_task(c, matrix=MATRIX, cells=None, exclude=None, accel=None, runs=None):
    """Smoke-test the already built images of the selected cells, judge and publish."""
    _run(matrix, cells, exclude, accel, runs, do_build=False)


@task(name="run", help=RUN_HELP)
@reported
def run_task(c, matrix=MATRIX, cells=None, exclude=None, accel=None, runs=None):
    """Render, build, smoke-test, judge and publish: the whole pipeline. Prints the table."""
    _run(matrix, cells, exclude, accel, runs, do_build=True)


@task(name="clean")
@reported
def clean_task(c):
    """Remove every container, network and volume a (killed) run left behind, found by label."""
    removed = pipeline.clean()
    print("\n".join(removed) if removed else "nothing to remove")


@task(name="schema", help={"check": "only check that matrix.schema.json is current"})
@reported
def schema_task(c, check=False):
    """Write matrix.schema.json, the JSON Schema of matrix.yaml generated from the models."""
    from harness.schema import write_schema

    changed = write_schema(check=check)
    if check and changed:
        raise Exit("matrix.schema.json is out of date: run `invoke matrix.schema`", code=1)


matrix_tasks = Collection("matrix")
for t in (list_cells, render_task, build_task, test_task, run_task, clean_task, schema_task):
    matrix_tasks.add_task(t)
namespace = Collection(matrix_tasks)
