"""The pipeline in one place: load → select → render → build → smoke → judge → publish."""

from __future__ import annotations

import datetime
import json
import os
import platform
import secrets
from pathlib import Path

import docker
import docker.errors

from . import engine as eng
from .build import (
    CACHE,
    BuildResult,
    build_cells,
    build_guest,
    built_image,
    cell_context,
)
from .errors import EngineError, Interrupted, UnsafeCells
from .judge import judge_cell, not_run
from .load import load
from .model import Cell, Matrix
from .progress import say
from .publish import RESULTS, publish
from .render import base_image_tag, render, render_all
from .results import CellResult, RunResult, Status
from .runner import kvm_device_available, run_cell
from .select import select

LOGS = RESULTS / "logs"
ACCEL_CACHE = CACHE / "accel-probe.json"


def selected(
    matrix_path: str, cells: str | None, exclude: str | None
) -> tuple[Matrix, tuple[Cell, ...]]:
    matrix, all_cells = load(matrix_path)
    return matrix, select(all_cells, cells, exclude)


def render_cells(matrix_path: str, cells: str | None, exclude: str | None) -> dict[str, str]:
    _, chosen = selected(matrix_path, cells, exclude)
    return render_all(chosen)


def build(matrix_path: str, cells: str | None, exclude: str | None) -> dict[str, BuildResult]:
    matrix, chosen = selected(matrix_path, cells, exclude)
    render_all(chosen)
    engine = eng.client()
    build_guest(engine, matrix, LOGS)
    return build_cells(engine, matrix, chosen, LOGS)


def existing_images(engine: docker.DockerClient, cells: tuple[Cell, ...]) -> dict[str, BuildResult]:
    """The already built image of each cell, without building anything."""
    missing = "not built: run `invoke matrix.build` first"
    results = {}
    for cell in cells:
        try:
            base_id = str(engine.images.get(base_image_tag(cell.base_name)).id)
        except docker.errors.ImageNotFound:
            results[cell.id] = BuildResult(cell.id, "unavailable", reason=missing)
            continue
        found = built_image(engine, cell, cell_context(render(cell)), base_id)
        results[cell.id] = found or BuildResult(cell.id, "unavailable", reason=missing)
    return results


def host_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def initial_accel(requested: str) -> tuple[str, str | None]:
    """The accel to start with, and a reason when it was decided without booting anything."""
    if requested != "auto":
        return requested, f"{requested} was asked for"
    if not kvm_device_available():
        return "tcg", "no /dev/kvm on the host"
    try:
        cached = json.loads(ACCEL_CACHE.read_text())
        if cached.get("boot_id") == host_boot_id():
            return cached["accel"], f"{cached['reason']} (probed earlier since this host booted)"
    except (OSError, ValueError, KeyError):
        pass
    return "auto", None


def remember_accel(accel: str, reason: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    ACCEL_CACHE.write_text(
        json.dumps({"boot_id": host_boot_id(), "accel": accel, "reason": reason})
    )


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run(
    matrix_path: str,
    cells: str | None,
    exclude: str | None,
    accel: str | None = None,
    runs: int | None = None,
    do_build: bool = True,
) -> tuple[RunResult, dict[str, Path]]:
    """Builds (unless told not to), smoke-tests, judges and publishes the selected cells."""
    matrix, chosen = selected(matrix_path, cells, exclude)
    render_all(chosen)
    engine = eng.client()
    run_id = new_run_id()
    started = now_iso()
    results: dict[str, CellResult] = {}
    builds: dict[str, BuildResult] = {}
    say("run", f"{run_id}: {len(chosen)} cells: {', '.join(c.id for c in chosen)}")
    try:
        guest = build_guest(engine, matrix, LOGS)
        builds = (
            build_cells(engine, matrix, chosen, LOGS)
            if do_build
            else existing_images(engine, chosen)
        )
        current, reason = initial_accel(accel or matrix.accel)
        for cell in chosen:
            result = builds[cell.id]
            if not result.ok or result.image is None:
                results[cell.id] = judge_cell(cell, result, None, matrix.thresholds)
                continue
            say(cell.id, f"smoke test ({current})")
            smoke = run_cell(
                engine,
                cell,
                result.image,
                matrix,
                run_id,
                guest,
                current,
                RESULTS / "runs" / run_id / "logs" / cell.id,
                runs or matrix.policy.runs,
                reason,
            )
            if current == "auto" and smoke.report and smoke.report.get("accel"):
                # One probe per host boot: the other cells use what the first one found.
                current, reason = smoke.report["accel"], smoke.report.get("accel_reason")
                remember_accel(current, reason or "")
                reason = f"{reason} (probed in {cell.id})"
            verdict = judge_cell(cell, result, smoke, matrix.thresholds)
            results[cell.id] = verdict
            say(cell.id, f"{verdict.status}" + (f": {verdict.reason}" if verdict.reason else ""))
    except KeyboardInterrupt:
        say("run", "interrupted: removing containers, keeping finished results")
        eng.remove_labelled(engine, run_id)
        _finish(run_id, started, chosen, results, builds, interrupted=True)
        raise Interrupted("interrupted; finished cells are in results/") from None
    return _finish(run_id, started, chosen, results, builds)


def _finish(
    run_id: str,
    started: str,
    chosen: tuple[Cell, ...],
    results: dict[str, CellResult],
    builds: dict[str, BuildResult],
    interrupted: bool = False,
) -> tuple[RunResult, dict[str, Path]]:
    reason = "interrupted before it ran" if interrupted else "not run"
    cells = [results.get(c.id) or not_run(c, reason) for c in chosen]
    host = {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()}
    run_result = RunResult(run_id, started, now_iso(), host, cells)
    paths = publish(run_result)
    return run_result, paths


def check_outcome(run_result: RunResult) -> None:
    """Raises the exit code the run deserves: tool failures and unsafe cells are told apart."""
    errors = [c.id for c in run_result.cells if c.status == Status.ERROR]
    unsafe = [
        c.id
        for c in run_result.cells
        if c.status in (Status.FLAKY, Status.BROKEN, Status.INCONCLUSIVE)
    ]
    if errors:
        raise EngineError(f"the tool failed on: {', '.join(errors)} (see results/latest.md)")
    if unsafe:
        raise UnsafeCells(f"not safe: {', '.join(unsafe)} (see results/latest.md)")


def clean() -> list[str]:
    return eng.remove_labelled(eng.client())
