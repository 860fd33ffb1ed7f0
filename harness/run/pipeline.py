"""The pipeline in one place: load → select → render → build → smoke → judge → publish.

`run` is one Run (`matrix.run`, or without builds `matrix.test`): an object with one method per
step the schedule calls (prepare, build, probe, smoke) and the state the run shares between its
worker threads (results, builds, guests, the accel choice, the stop, the fleet, the package
caches), written under its lock. `build` is the same for `matrix.build` (Build)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import docker.errors
import requests

from ..core.errors import EngineError, Interrupted, UnsafeCells
from ..core.files import write_atomic
from ..core.model import Cell, Matrix
from ..core.options import RunOptions, SmokeJob
from ..core.paths import HOST_STATE
from ..core.progress import Bar, bar, say
from ..core.results import BuildResult, CellResult, Prior, RunResult, SmokeRun, Status
from ..core.text import one_line
from ..engine import client as eng
from ..engine import lease
from ..engine.bases import Bases, base_image_tag
from ..engine.package_cache import PackageCache
from ..engine.protocol import Engine
from ..matrix.load import load
from ..matrix.lockfile import apply_lock, changes, lock_path, merged, read_lock, write_lock
from ..matrix.select import select, split_patterns
from ..matrix.select import shard as take_shard
from ..stages.formats import coming
from ..stages.judge import judge_cell, not_run
from ..stages.peer import UPGRADE, pairs_into
from ..stages.publish import publish
from ..stages.render import render_all
from ..stages.resolve import resolve as resolve_entries
from ..stages.smoke import kvm_device_available, smoke_tar
from . import checkpoint, evidence, history, schedule
from .fleet import AccelChoice, Fleet, Stop

PROBED_ACCEL = HOST_STATE / "accel-probe.json"
# How long an interrupt waits for worker threads, once the run's containers are gone: a smoke
# test then ends in seconds; a build may go on, but starts nothing of the run's.
GRACE = 15.0
# The engine went away mid-run: the run ends, its finished cells kept.
ENGINE_FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException)


def locked(matrix_path: str) -> tuple[Matrix, tuple[Cell, ...]]:
    """The matrix and all its cells, with the versions its lock file holds."""
    matrix, all_cells = load(matrix_path)
    path = lock_path(matrix_path)
    return matrix, apply_lock(all_cells, read_lock(path), path)


def selected(
    matrix_path: str, cells: str | None, exclude: str | None, shard: str | None = None
) -> tuple[Matrix, tuple[Cell, ...]]:
    matrix, all_cells = locked(matrix_path)
    return matrix, take_shard(select(all_cells, cells, exclude), shard)


def upgrade_sources(matrix_path: str, chosen: tuple[Cell, ...]) -> dict[str, Cell]:
    """The cells (locked) that upgrade migrations into the chosen ones start from, where they
    are not chosen themselves: a run builds their images, but tests them not."""
    matrix, all_cells = locked(matrix_path)
    ids = {cell.id for cell in chosen}
    wanted = {pair.from_ for pair in matrix.migrations if pair.to in ids} - ids
    return {cell.id: cell for cell in all_cells if cell.id in wanted}


def resolve(
    matrix_path: str,
    cells: str | None,
    exclude: str | None,
    check: bool = False,
    *,
    log_dir: Path,
) -> list[str]:
    """Resolves the selected cells into the lock file; with check, only lists what moved."""
    matrix, all_cells = load(matrix_path)
    chosen = select(all_cells, cells, exclude)
    path = lock_path(matrix_path)
    old = read_lock(path)
    engine = eng.client()
    bases = Bases(engine, matrix.bases, log_dir)
    held: lease.Lease | None = None
    try:
        for name in dict.fromkeys(c.base_name for c in chosen):
            bases.ensure(name)  # apt answers in a container of the base image
        # Its containers are labelled resolve-CELL: `matrix.clean` keeps them while it runs.
        held = lease.run_lease(engine, "resolve-*", base_image_tag(chosen[0].base_name))
        entries = resolve_entries(engine, chosen)
    except KeyboardInterrupt:
        for cell in chosen:
            eng.remove_labelled(engine, f"resolve-{cell.id}")
        raise
    finally:
        if held is not None:
            held.release()
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
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Images:
    """What `matrix.build` and a run share: the guest and each cell's image on the engines,
    through each engine's package cache; with the state their worker threads share."""

    def __init__(self, options: RunOptions, matrix: Matrix, cells: tuple[Cell, ...], fleet: Fleet):
        self.options, self.matrix, self.cells, self.fleet = options, matrix, cells, fleet
        # Set on Ctrl-C (or a worker's failure): no build, probe or container starts after it.
        self.stop = Stop()
        self.lock = threading.Lock()  # over the dicts below, which worker threads write
        self.guests: dict[str, Path] = {}  # engine name -> the guest's tar
        self.builds: dict[str, BuildResult] = {}
        self.caches: dict[str, PackageCache | None] = {}  # engine name -> its package cache

    @contextlib.contextmanager
    def package_caches(self, enabled: bool) -> Iterator[None]:
        """Each engine's package cache (built from the guest's base, which the guest needs
        anyway) around the whole schedule, the guest included; none unless enabled."""
        base = base_image_tag(self.matrix.guest.base)
        with contextlib.ExitStack() as stack:
            for engine in self.fleet.engines:
                self.caches[engine.name] = (
                    stack.enter_context(engine.package_cache(base, self.options.logs))
                    if enabled
                    else None
                )
            yield

    def prepare(self, engine: Engine) -> None:
        """The guest, built (or found) on the engine before its first cell."""
        cache = self.caches.get(engine.name)
        guest = self.fleet.guest(engine, self.matrix, self.options.logs, cache)
        with self.lock:
            self.guests[engine.name] = guest

    def image(self, engine: Engine, cell: Cell) -> BuildResult:
        """The cell's image, built (or found unchanged) on the engine."""
        cache = self.caches.get(engine.name)
        return self.fleet.build(engine, self.matrix, cell, self.options.logs, cache)


class Build(Images):
    """`matrix.build`: each cell's image, --jobs at a time (schedule.Steps, without smoke tests)."""

    smokes = False

    def execute(self) -> dict[str, BuildResult]:
        with self.package_caches(self.options.package_cache):
            schedule.spread(self.fleet, self.cells, self, self.options.jobs)
        return {cell.id: self.builds[cell.id] for cell in self.cells}

    def can_take(self, engine: Engine, cell: Cell) -> bool:
        return True

    def build(self, engine: Engine, cell: Cell) -> BuildResult:
        result = self.image(engine, cell)
        with self.lock:
            self.builds[cell.id] = result
        return result

    def smoke(self, engine: Engine, cell: Cell, built: BuildResult) -> None:
        """Nothing: `matrix.build` smoke-tests nothing."""


def build(options: RunOptions, fleet: Fleet | None = None) -> dict[str, BuildResult]:
    """Builds each selected cell (spread over the engines the options name, or `fleet`)."""
    matrix, chosen = selected(options.matrix, options.cells, options.exclude, options.shard)
    render_all(chosen)
    return Build(options, matrix, chosen, fleet or Fleet.of(options.engines)).execute()


def upgrade_sources_into(matrix: Matrix, cell_id: str) -> tuple[str, ...]:
    return tuple(sorted(pair.from_ for pair in pairs_into(matrix, cell_id)))


class Tested:
    """The cell of a run that smoke-tests an experiment; cells of the run with the same one
    wait for its smoke test and are judged on it."""

    def __init__(self, cell_id: str, sources: tuple[str, ...] = ()):
        self.cell_id = cell_id
        self.sources = sources  # the cells whose upgrade migrations into it it runs
        self.smoke: SmokeRun | None = None
        self.done = threading.Event()

    def finish(self, smoke: SmokeRun | None) -> None:
        self.smoke = smoke if smoke is not None and smoke.report is not None else None
        self.done.set()

    def wait(self, stop: Stop) -> SmokeRun | None:
        """Its smoke test once it has ended (bounded as every smoke test is); None if it got no
        report, or the run was interrupted."""
        while not self.done.wait(1.0):
            if stop.is_set():
                return None
        return self.smoke


class Run(Images):
    """One run of the selected cells: builds (or, for `matrix.test`, finds) each image, smoke-tests
    and judges it, keeps each verdict on disk as it comes (for --resume), and publishes."""

    smokes = True  # for the schedule (schedule.Steps)

    def __init__(
        self,
        options: RunOptions,
        matrix: Matrix,
        cells: tuple[Cell, ...],
        fleet: Fleet,
        progress: checkpoint.Progress,
    ):
        super().__init__(options, matrix, cells, fleet)
        self.progress, self.run_id = progress, progress.run_id
        self.results: dict[str, CellResult] = dict(progress.finished)
        self.choice = AccelChoice(*initial_accel(options.accel or matrix.accel))
        self.log_root = options.run_dir(self.run_id) / "logs"
        self.bar = Bar(None, None)
        # Earlier runs of each experiment pool with this one's (harness/run/evidence.py).
        self.past = history.read(history.history_path(options.results))
        self.runner_digest = evidence.digest(smoke_tar())
        self.guest_digests: dict[str, str] = {}  # engine name -> the digest of its guest's tar
        # (evidence key, scenarios) -> the cell of this run that smoke-tests that experiment
        self.tested: dict[tuple[str, tuple[str, ...]], Tested] = {}
        # Cells not in the run whose images its upgrade migrations start from (upgrade_sources)
        self.sources = upgrade_sources(options.matrix, cells) if options.build else {}
        self.sources_lock = threading.Lock()  # one build of each at a time
        # Cells waiting for another's smoke test of their experiment: off the --jobs slots.
        self.followers: list[threading.Thread] = []
        self.follower_failures: list[BaseException] = []
        # The policy's run_timeout: counted from here; shared among the cells still to test.
        self.started_at = time.monotonic()
        self.to_test = 0  # set by execute: the cells this run judges
        # Cells that take no more of the run's time: tested, judged on another's smoke test.
        self.done_testing: set[str] = set()
        self.untestable: set[str] = set()  # cells whose image could not be built or found
        self.overruns: list[float] = []  # seconds smoke tests took beyond their share

    def execute(self) -> tuple[RunResult, dict[str, Path]]:
        """Every cell not finished yet (all but a resumed run's); then the results, published.
        An interrupt or an engine's failure ends the run with what finished, published under its
        own id only."""
        todo = tuple(cell for cell in self.cells if cell.id not in self.results)
        self.to_test = len(todo)
        log = self.options.run_dir(self.run_id) / "progress.log"
        try:
            with bar(len(todo), log) as self.bar:
                if self.options.resumed:
                    self.cleanup()  # what the interrupted attempt left running
                # Builds feed smoke tests, --jobs of each at a time.
                with self.package_caches(self.options.package_cache and self.options.build):
                    left = schedule.spread(self.fleet, todo, self, self.options.jobs)
                for cell in left:  # on no engine: judged as not built
                    engine = self.fleet.engines[0]
                    self.smoke(engine, cell, self.build(engine, cell))
                self.join_followers()
        except KeyboardInterrupt:
            self.interrupted()
        except ENGINE_FAILURES as exc:
            self.engine_failed(exc)
        finished = self.finish()
        self.progress.close(checkpoint.FINISHED)
        return finished

    # --- the steps, as harness/run/schedule.py calls them (schedule.Steps) ----------------------

    def can_take(self, engine: Engine, cell: Cell) -> bool:
        """`matrix.test` on several engines: a cell goes to an engine that has its image."""
        if self.fleet.several and not self.options.build:
            return engine.existing_image(cell).ok
        return True

    def build(self, engine: Engine, cell: Cell) -> BuildResult:
        """Builds (or finds) the cell's image on the engine; kept once it is smoke-tested."""
        built = self.image(engine, cell) if self.options.build else engine.existing_image(cell)
        if not built.ok:
            with self.lock:
                self.untestable.add(cell.id)
        return built

    def smoke(self, engine: Engine, cell: Cell, built: BuildResult) -> None:
        """Smoke-tests and judges the cell's image on the engine, and keeps the verdict."""
        if self.stop.is_set():
            # Built after the interrupt (maybe without its package cache, which is stopped then):
            # not kept, and no smoke test, which would start after the cleanup.
            return
        with self.lock:
            self.builds[cell.id] = built
        tag = built.image
        if not built.ok or tag is None:
            self.keep(judge_cell(cell, built, None, self.matrix.thresholds))
            return
        self.build_sources(engine, cell)
        # The first smoke test runs the probe; the others wait for it (bounded), then all go.
        accel, reason = self.choice.decide(lambda: self.probe(engine, cell, tag))
        say(cell.id, f"smoke test ({accel}){self.fleet.where(engine)}")
        prior = self.prior(engine, cell, built, accel)
        first, mine = self.claim(cell, prior)
        if first is not None:  # waits for that smoke test without holding a --jobs slot

            def follow() -> None:
                try:
                    self.tested_and_judged(engine, cell, built, tag, accel, reason, prior, first)
                except BaseException as exc:  # handed to the run's thread by join_followers
                    with self.lock:
                        self.follower_failures.append(exc)

            follower = threading.Thread(target=follow, name=f"follow-{cell.id}", daemon=True)
            with self.lock:
                self.followers.append(follower)
                self.done_testing.add(cell.id)  # waits, using none of the run's time
            follower.start()
            return
        self.tested_and_judged(engine, cell, built, tag, accel, reason, prior, None, mine)

    def join_followers(self) -> None:
        """Waits for the cells judged on another's smoke test (each wait is bounded by that
        smoke test's own bounds, and ends on an interrupt); raises what failed in one."""
        with self.lock:
            followers = list(self.followers)
        for follower in followers:
            while follower.is_alive():
                follower.join(1.0)
        if self.follower_failures:
            raise self.follower_failures[0]

    def tested_and_judged(
        self,
        engine: Engine,
        cell: Cell,
        built: BuildResult,
        tag: str,
        accel: str,
        reason: str | None,
        prior: Prior | None,
        first: Tested | None,
        mine: Tested | None = None,
    ) -> None:
        """The cell judged on the smoke test of `first` (the cell of the run testing the same
        experiment), or on its own when there is none or that one got no report."""
        smoke = first.wait(self.stop) if first else None
        if smoke is not None:
            assert first is not None and prior is not None
            say(cell.id, f"the same experiment as {first.cell_id} (evidence key {prior.key}): "
                "judged on its smoke test")  # fmt: skip
            smoke = self.own_part(cell, smoke)
        elif self.stop.is_set():
            return
        else:  # the first to test the experiment (or the first got no report: tested again)
            job = self.job(engine, cell, tag, accel, reason, self.log_root / cell.id, prior)
            with self.lock:
                job = dataclasses.replace(job, cell_timeout=self.time_share())
            began = time.monotonic()
            try:
                smoke = engine.smoke(job)
            finally:
                with self.lock:
                    self.done_testing.add(cell.id)
                if mine is not None:
                    mine.finish(smoke)
            if job.cell_timeout is not None and smoke.report is not None:
                with self.lock:  # what the smoke test took beyond its share: setup, last scenario
                    self.overruns.append(max(time.monotonic() - began - job.cell_timeout, 0.0))
        ran = (smoke.report.get("accel") if smoke.report else None) or accel
        if ran != accel:  # the runner fell back to another accelerator: another experiment
            prior = self.prior(engine, cell, built, ran)
        tested_as = first.cell_id if first is not None and first.smoke is not None else None
        judged = judge_cell(cell, built, smoke, self.matrix.thresholds, prior, tested_as)
        verdict = self.fleet.mark(judged, engine)
        if self.stop.is_set():  # cut short by the interrupt: not a verdict
            return
        self.keep(verdict)
        say(cell.id, f"{verdict.status}" + (f": {verdict.reason}" if verdict.reason else ""))

    def time_share(self) -> float | None:
        """Under the policy's run_timeout, the seconds a smoke test starting now may use: the
        time left, shared among the slots and the cells still to test (this one included), less
        what smoke tests take beyond their share, at most cell_timeout (at least 1 s: a smoke
        test past the limit reports its scenarios undecided, with the runs they need)."""
        policy = self.matrix.policy
        if policy.run_timeout is None:
            return None
        left = policy.run_timeout - (time.monotonic() - self.started_at)
        slots = (self.options.jobs or schedule.default_jobs()) * len(self.fleet.engines)
        # Called under self.lock. The cells still to test, this one and those under way (which
        # hold their slots for part of the time left) included.
        cells = max(self.to_test - len(self.done_testing | self.untestable), 1)
        # A smoke test takes a little more than its share (the container, the daemon, the
        # scenario under way): as much as the finished ones did, on average, else 30 s.
        overrun = sum(self.overruns) / len(self.overruns) if self.overruns else 30.0
        share = left * slots / max(cells, slots)
        return round(max(1.0, min(share - overrun, policy.cell_timeout)), 1)

    def build_sources(self, engine: Engine, cell: Cell) -> None:
        """The images the upgrade migrations into the cell start from, built on the engine if
        the run does not test those cells itself (a nightly job runs one cell)."""
        for pair in pairs_into(self.matrix, cell.id):
            source = self.sources.get(pair.from_)
            if source is None or self.stop.is_set():
                continue
            with self.sources_lock:
                with self.lock:
                    done = source.id in self.builds
                if done:
                    continue
                say(cell.id, f"building {source.id}, where its upgrade migration starts")
                built = self.image(engine, source)
                with self.lock:
                    self.builds[source.id] = built
                if not built.ok:
                    say(cell.id, f"{source.id} is {built.status}: {built.reason}")

    def claim(self, cell: Cell, prior: Prior | None) -> tuple[Tested | None, Tested | None]:
        """(the cell of this run already testing the same experiment, or None; this cell's
        claim to test it, or None). Same key and same scenarios: the same smoke test, unless the
        cell has upgrade migrations into it that the other has not (one without any takes the
        other's smoke test without its upgrade migrations: own_part)."""
        if prior is None:
            return None, None
        experiment = (prior.key, cell.scenarios)
        sources = upgrade_sources_into(self.matrix, cell.id)
        with self.lock:
            first = self.tested.get(experiment)
            if first is not None and (not sources or first.sources == sources):
                return first, None
            if first is not None:
                return None, None  # tested apart, and not shared further
            mine = self.tested[experiment] = Tested(cell.id, sources)
        return None, mine

    def own_part(self, cell: Cell, smoke: SmokeRun) -> SmokeRun:
        """Of another cell's smoke test, what this cell asked for: without the upgrade
        migrations into the other cell when there are none into this one."""
        if upgrade_sources_into(self.matrix, cell.id) or smoke.report is None:
            return smoke
        report = copy.copy(smoke.report)
        repetitions = ([r for r in rep if r["name"] != UPGRADE] for rep in report["runs"])
        report["runs"] = [rep for rep in repetitions if rep]
        if entries := report.get("not_applicable"):
            report["not_applicable"] = [e for e in entries if e.get("name") != UPGRADE]
        return dataclasses.replace(smoke, report=report)

    def prior(self, engine: Engine, cell: Cell, built: BuildResult, accel: str) -> Prior | None:
        """The earlier runs of the experiment the cell's image is under `accel`; with a fixed
        count of runs (--runs), only its key: such a run adds to later ones, it is not judged
        on earlier ones."""
        if built.packages is None:  # an image from before images recorded their packages
            return None
        with self.lock:
            if engine.name not in self.guest_digests:
                self.guest_digests[engine.name] = evidence.content_digest(
                    self.guests[engine.name].read_bytes()
                )
            guest = self.guest_digests[engine.name]
        key = evidence.key(
            built.packages, self.runner_digest, guest, accel, evidence.definition(cell)
        )
        if key is None:
            return None
        if self.options.runs or self.matrix.policy.runs:
            return Prior(key)
        now = datetime.datetime.now(datetime.timezone.utc)
        return evidence.prior(self.past, key, self.run_id, now, self.matrix.policy.evidence_days)

    def probe(self, engine: Engine, cell: Cell, image: str) -> tuple[str, str]:
        """The run's one KVM probe (`--accel auto`, not yet known since this host booted), in a
        container of the first image to be smoke-tested; kept for the host's later runs."""
        say("run", f"KVM probe in a container of {cell.id}'s image{self.fleet.where(engine)}")
        found = engine.probe(self.job(engine, cell, image, "auto", None, self.log_root))
        say("run", f"accel: {found.accel} ({found.reason})")
        if found.lasting and not self.stop.is_set():  # an interrupted probe found nothing
            remember_accel(found.accel, found.reason)
        return found.accel, f"{found.reason} (probed with {cell.id}'s image)"

    def job(
        self,
        engine: Engine,
        cell: Cell,
        image: str,
        accel: str,
        reason: str | None,
        log_dir: Path,
        prior: Prior | None = None,
    ) -> SmokeJob:
        """A container of the cell's image on the engine, as this run starts them."""
        return SmokeJob(
            cell=cell,
            image=image,
            matrix=self.matrix,
            run_id=self.run_id,
            guest=self.guests[engine.name],
            accel=accel,
            log_dir=log_dir,
            runs=self.options.runs or self.matrix.policy.runs,
            accel_reason=reason,
            stop=self.stop,
            images=self.images(engine),
            prior=prior.outcomes if prior else {},
        )

    def images(self, engine: Engine) -> dict[str, str]:
        """The cells' images this run has built or found so far (on this engine or another:
        the smoke stage looks for them on its own)."""
        with self.lock:
            builds = list(self.builds.values())
        return {b.cell_id: b.image for b in builds if b.ok and b.image}

    # --- the end ---------------------------------------------------------------------------------

    def keep(self, result: CellResult) -> None:
        with self.lock:
            self.results[result.id] = result
        self.progress.keep(result)
        self.bar.advance(result.id)

    def cleanup(self) -> None:
        for engine in self.fleet.engines:
            engine.cleanup(self.run_id)

    def interrupted(self) -> NoReturn:
        self.stop.set()
        with checkpoint.shielded():  # a second Ctrl-C does not cut the cleanup short
            say("run", "interrupted: removing containers, keeping finished results")
            self.cleanup()  # running smoke tests end once their container is gone
            if not self.stop.join(GRACE):
                say("run", f"not waiting longer than {GRACE:.0f} s for a build to end")
            self.cleanup()  # what a worker started between the check and the stop
            self.finish(interrupted=True)
            self.progress.close(checkpoint.INTERRUPTED)
        raise Interrupted(
            f"interrupted; finished cells are kept: `--resume` continues run {self.run_id}"
        ) from None

    def engine_failed(self, exc: BaseException) -> NoReturn:
        """The engine went away mid-run: keep what finished, and say so in one line."""
        with checkpoint.shielded():
            self.finish(interrupted=True)
            self.progress.close(checkpoint.INTERRUPTED)
        raise EngineError(
            f"the Docker engine failed during run {self.run_id}: {one_line(exc)}; finished cells "
            "are kept, `--resume` continues"
        ) from None

    def finish(self, interrupted: bool = False) -> tuple[RunResult, dict[str, Path]]:
        """The run's results, published. A run cut short is published under its own id only,
        for `--resume`: its partial table never replaces the last complete latest.*, nor enters
        the history (the resumed run does, once finished)."""
        reason = "interrupted before it ran" if interrupted else "not run"
        with self.lock:
            cells = [self.results.get(c.id) or not_run(c, reason) for c in self.cells]
        host = {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()}
        # The policy the verdicts were judged by, as matrix.yaml has it (--runs as `runs`).
        policy = self.matrix.policy.model_dump(mode="json")
        if self.options.runs:
            policy["runs"] = self.options.runs
        run_result = RunResult(
            self.run_id, self.progress.started, now_iso(), host, cells, policy=policy
        )
        # The history annotates the run before it is published and keeps it once it is.
        results_dir = self.options.results

        def publish_run(result: RunResult, past: list[dict[str, Any]]) -> dict[str, Path]:
            return publish(result, results_dir, latest=not interrupted, history=past)

        return history.record(run_result, publish_run, results_dir, keep=not interrupted)


def run(options: RunOptions, fleet: Fleet | None = None) -> tuple[RunResult, dict[str, Path]]:
    """Builds (unless told not to), smoke-tests, judges and publishes the selected cells, on the
    engines the options name (or `fleet`).

    Each finished cell is kept on disk at once; `--resume` continues the newest interrupted run
    with its own options, without redoing its finished cells."""
    opts = checkpoint.resumed(options)
    matrix, chosen = selected(opts.matrix, opts.cells, opts.exclude, opts.shard)
    # The history is read again to publish: a bad one is refused now, not after the run.
    history.read(history.history_path(opts.results))
    render_all(chosen)
    fleet = fleet or Fleet.of(opts.engines)
    # One run per results directory; the lock is held until close() or the process's end.
    progress = checkpoint.start(opts, matrix, chosen, new_run_id(), now_iso())
    say("run", f"{progress.run_id}: {len(chosen)} cells: {', '.join(c.id for c in chosen)}")
    return Run(opts, matrix, chosen, fleet, progress).execute()


def check_outcome(run_result: RunResult, table: Path | None = None) -> None:
    """Raises the exit code the run deserves: tool failures and unsafe cells are told apart.
    table: the run's Markdown table, which the message points to."""
    see = f"(see {table or 'results/latest.md'})"
    errors = [c.id for c in run_result.cells if c.status == Status.ERROR]
    unsafe = [
        c.id
        for c in run_result.cells
        if c.status in (Status.FLAKY, Status.BROKEN, Status.INCONCLUSIVE)
    ]
    if errors:
        raise EngineError(f"the tool failed on: {', '.join(errors)} {see}")
    regressions = [e["cell"] for e in coming(run_result.to_json()) if e["regression"]]
    if regressions:
        unsafe.append(f"coming to your gate, regressions in {', '.join(regressions)}")
    if unsafe:
        raise UnsafeCells(f"not safe: {', '.join(unsafe)} {see}")


def clean(runs: str | None = None, everything: bool = False) -> tuple[list[str], list[str]]:
    """What `matrix.clean` removed and kept (see harness.engine.lease.clean)."""
    patterns = split_patterns(runs) if runs else None
    return lease.clean(eng.client(), patterns, everything)
