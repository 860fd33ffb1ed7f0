"""The pipeline in one place: load → select → render → build → smoke → judge → publish."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import secrets
from pathlib import Path

import docker
import docker.errors
import requests

from ..core.errors import EngineError, Interrupted, UnsafeCells
from ..core.files import write_atomic
from ..core.model import Cell, Matrix
from ..core.paths import HOST_STATE, RESULTS
from ..core.progress import say
from ..core.results import BuildResult, CellResult, RunResult, Status
from ..core.text import one_line
from ..engine import client as eng
from ..engine.bases import Bases, base_image_tag
from ..matrix.load import load
from ..matrix.lockfile import apply_lock, changes, lock_path, merged, read_lock, write_lock
from ..matrix.select import select
from ..matrix.select import shard as take_shard
from ..stages.build import built_image, cell_context
from ..stages.formats import coming
from ..stages.judge import judge_cell, not_run
from ..stages.publish import publish
from ..stages.render import render_all
from ..stages.resolve import resolve as resolve_entries
from ..stages.smoke import kvm_device_available, run_cell
from . import checkpoint, history, schedule
from .fleet import AccelChoice, Engine, Fleet, Stop
from .probe import probe_accel

LOGS = RESULTS / "logs"
PROBED_ACCEL = HOST_STATE / "accel-probe.json"
# How long an interrupt waits for worker threads, once the run's containers are gone: a smoke
# test then ends in seconds; a build may go on, but starts nothing of the run's.
GRACE = 15.0


def selected(
    matrix_path: str, cells: str | None, exclude: str | None, shard: str | None = None
) -> tuple[Matrix, tuple[Cell, ...]]:
    matrix, all_cells = load(matrix_path)
    path = lock_path(matrix_path)
    chosen = select(apply_lock(all_cells, read_lock(path), path), cells, exclude)
    return matrix, take_shard(chosen, shard)


def resolve(
    matrix_path: str, cells: str | None, exclude: str | None, check: bool = False
) -> list[str]:
    """Resolves the selected cells into the lock file; with check, only lists what moved."""
    matrix, all_cells = load(matrix_path)
    chosen = select(all_cells, cells, exclude)
    path = lock_path(matrix_path)
    old = read_lock(path)
    engine = eng.client()
    bases = Bases(engine, matrix.bases, LOGS)
    try:
        for name in dict.fromkeys(c.base_name for c in chosen):
            bases.ensure(name)  # apt answers in a container of the base image
        entries = resolve_entries(engine, chosen)
    except KeyboardInterrupt:
        for cell in chosen:
            eng.remove_labelled(engine, f"resolve-{cell.id}")
        raise
    if check:
        return changes(old, entries)
    write_lock(path, merged(old, entries, keep=[c.id for c in all_cells]))
    say("resolve", f"wrote {path}")
    return []


def render_cells(
    matrix_path: str, cells: str | None, exclude: str | None, shard: str | None = None
) -> dict[str, str]:
    _, chosen = selected(matrix_path, cells, exclude, shard)
    return render_all(chosen)


def build(
    matrix_path: str,
    cells: str | None,
    exclude: str | None,
    shard: str | None = None,
    engines: str | None = None,
    jobs: int | None = None,
    package_cache: bool = True,
) -> dict[str, BuildResult]:
    """Builds each selected cell (spread over the engines, when several are given)."""
    matrix, chosen = selected(matrix_path, cells, exclude, shard)
    render_all(chosen)
    fleet = Fleet.of(engines)
    built: dict[str, BuildResult] = {}

    def one(engine: Engine, cell: Cell) -> None:
        built[cell.id] = fleet.build(engine, matrix, cell, LOGS)

    schedule.spread(
        fleet,
        chosen,
        one,
        lambda engine: fleet.guest(engine, matrix, LOGS),
        jobs=jobs,
        serve=schedule.package_cache(matrix, LOGS, package_cache),
    )
    return {cell.id: built[cell.id] for cell in chosen}


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
        found = built_image(engine, cell, cell_context(cell), base_id)
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
        kept = json.loads(PROBED_ACCEL.read_text())
        if kept.get("boot_id") == host_boot_id():
            return kept["accel"], f"{kept['reason']} (probed earlier since this host booted)"
    except (OSError, ValueError, KeyError):
        pass
    return "auto", None


def remember_accel(accel: str, reason: str) -> None:
    # Atomic: runs of other results directories in this checkout read it at any moment.
    write_atomic(
        PROBED_ACCEL, json.dumps({"boot_id": host_boot_id(), "accel": accel, "reason": reason})
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
    resume: bool = False,
    shard: str | None = None,
    engines: str | None = None,
    jobs: int | None = None,
    package_cache: bool = True,
) -> tuple[RunResult, dict[str, Path]]:
    """Builds (unless told not to), smoke-tests, judges and publishes the selected cells.

    Each finished cell is kept on disk at once; `resume` continues the newest interrupted run
    with its own options, without redoing its finished cells."""
    given = checkpoint.Options(matrix_path, cells, exclude, accel, runs, shard)
    opts = checkpoint.options(RESULTS, resume, given)
    matrix, chosen = selected(opts.matrix, opts.cells, opts.exclude, opts.shard)
    accel, runs = opts.accel, opts.runs
    render_all(chosen)
    fleet = Fleet.of(engines)
    task = "matrix.run" if do_build else "matrix.test"
    # One run per results directory; the lock is held until close() or the process's end.
    progress = checkpoint.start(RESULTS, opts, matrix, chosen, new_run_id(), now_iso(), task)
    run_id, started = progress.run_id, progress.started
    results: dict[str, CellResult] = dict(progress.finished)
    todo = tuple(cell for cell in chosen if cell.id not in results)
    builds: dict[str, BuildResult] = {}
    say("run", f"{run_id}: {len(chosen)} cells: {', '.join(c.id for c in chosen)}")
    guests: dict[str, Path] = {}
    choice = AccelChoice(*initial_accel(accel or matrix.accel))
    # Set on Ctrl-C (or a worker's failure): no build, probe or container starts after it.
    stop = Stop()
    log_root = RESULTS / "runs" / run_id / "logs"

    def prepare(engine: Engine) -> None:
        guests[engine.name] = fleet.guest(engine, matrix, LOGS)

    def built_on(engine: Engine, cell: Cell) -> bool:
        return existing_images(engine.client, (cell,))[cell.id].ok

    def image(engine: Engine, cell: Cell) -> BuildResult:
        """Builds (or finds) the cell's image on the engine."""
        if do_build:
            return fleet.build(engine, matrix, cell, LOGS)
        return existing_images(engine.client, (cell,))[cell.id]

    def probe(engine: Engine, cell: Cell, image: str) -> tuple[str, str]:
        """The run's one KVM probe (`--accel auto`, not yet known since this host booted), in a
        container of the first image to be smoke-tested; kept for the host's later runs."""
        say("run", f"KVM probe in a container of {cell.id}'s image{fleet.where(engine)}")
        found = probe_accel(
            engine.client, image, guests[engine.name], matrix.policy, run_id, log_root, stop
        )
        say("run", f"accel: {found.accel} ({found.reason})")
        if found.lasting and not stop.is_set():  # an interrupted probe found nothing
            remember_accel(found.accel, found.reason)
        return found.accel, f"{found.reason} (probed with {cell.id}'s image)"

    def one(engine: Engine, cell: Cell, result: BuildResult | None = None) -> None:
        """Smoke-tests and judges the cell's image (built first unless given) on the engine."""
        result = result or image(engine, cell)
        if stop.is_set():
            # Built after the interrupt (maybe without its package cache, which is stopped then):
            # not kept, and no smoke test, which would start after the cleanup.
            return
        builds[cell.id] = result
        tag = result.image
        if not result.ok or tag is None:
            results[cell.id] = judge_cell(cell, result, None, matrix.thresholds)
            progress.keep(results[cell.id])
            return
        # The first smoke test runs the probe; the others wait for it (bounded), then all go.
        current, reason = choice.decide(lambda: probe(engine, cell, tag))
        say(cell.id, f"smoke test ({current}){fleet.where(engine)}")
        smoke = run_cell(
            engine.client,
            cell,
            tag,
            matrix,
            run_id,
            guests[engine.name],
            current,
            log_root / cell.id,
            runs or matrix.policy.runs,
            reason,
            stop=stop,
        )
        verdict = fleet.mark(judge_cell(cell, result, smoke, matrix.thresholds), engine)
        if stop.is_set():  # cut short by the interrupt: not a verdict
            return
        results[cell.id] = verdict
        progress.keep(verdict)
        say(cell.id, f"{verdict.status}" + (f": {verdict.reason}" if verdict.reason else ""))

    try:
        if opts.resumed:
            for engine in fleet.engines:  # what the interrupted attempt left running
                eng.cleanup(engine.client, run_id)
        # `matrix.test` on several engines: a cell goes to an engine that has its image.
        can_take = built_on if fleet.several and not do_build else None
        # Builds feed smoke tests, --jobs of each at a time.
        for cell in schedule.spread(
            fleet,
            todo,
            one,
            prepare,
            can_take,
            jobs=jobs,
            stage=image,
            serve=schedule.package_cache(matrix, LOGS, package_cache and do_build),
            stop=stop,
        ):
            one(fleet.engines[0], cell)  # on no engine: judged as not built
    except KeyboardInterrupt:
        stop.set()
        with checkpoint.shielded():  # a second Ctrl-C does not cut the cleanup short
            say("run", "interrupted: removing containers, keeping finished results")
            for engine in fleet.engines:  # running smoke tests end once their container is gone
                eng.cleanup(engine.client, run_id)
            if not stop.join(GRACE):
                say("run", f"not waiting longer than {GRACE:.0f} s for a build to end")
            for engine in fleet.engines:  # what a worker started between the check and the stop
                eng.cleanup(engine.client, run_id)
            _finish(run_id, started, chosen, results, builds, interrupted=True)
            progress.close(checkpoint.INTERRUPTED)
        raise Interrupted(
            f"interrupted; finished cells are kept: `--resume` continues run {run_id}"
        ) from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # The engine went away mid-run: keep what finished, and say so in one line.
        with checkpoint.shielded():
            _finish(run_id, started, chosen, results, builds, interrupted=True)
            progress.close(checkpoint.INTERRUPTED)
        raise EngineError(
            f"the Docker engine failed during run {run_id}: {one_line(exc)}; finished cells are "
            "kept, `--resume` continues"
        ) from None
    finished = _finish(run_id, started, chosen, results, builds)
    progress.close(checkpoint.FINISHED)
    return finished


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
    # The history annotates the run before it is published and keeps it once it is. A run cut
    # short is published under its own id only, for `--resume`: its partial table never replaces
    # the last complete latest.*, nor enters the history (the resumed run does, once finished).
    publish_run = functools.partial(publish, results_dir=RESULTS, latest=not interrupted)
    return history.record(run_result, publish_run, RESULTS, keep=not interrupted)


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
    regressions = [e["cell"] for e in coming(run_result.to_json()) if e["regression"]]
    if regressions:
        unsafe.append(f"coming to your gate, regressions in {', '.join(regressions)}")
    if unsafe:
        raise UnsafeCells(f"not safe: {', '.join(unsafe)} (see results/latest.md)")


def clean() -> list[str]:
    return eng.remove_labelled(eng.client())
