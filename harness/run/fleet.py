"""Several Docker engines at once: which engines (URLs or Docker contexts), base images brought
to each engine that lacks them, and cells handed to whichever engine is free."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, TypeVar

import docker
import docker.errors
import requests
from docker.context import ContextAPI

from ..core.errors import ConfigurationError, EngineError, HvgateError
from ..core.model import Cell, Matrix
from ..core.options import ENGINES_ENV
from ..core.progress import say
from ..core.results import BuildResult, CellResult
from ..core.text import did_you_mean, one_line
from ..engine import client as eng
from ..engine.bases import base_image_tag
from ..engine.package_cache import PackageCache
from ..engine.protocol import Engine
from .engines import DockerEngine

T = TypeVar("T")
SCHEMES = ("unix://", "tcp://", "ssh://")
CONTEXT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.+-]*")
FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException)


def addresses(value: str | None, environ: Mapping[str, str]) -> list[str]:
    """The engines asked for: --engines, else $HVGATE_ENGINES; checked before connecting."""
    raw = value if value is not None else environ.get(ENGINES_ENV, "")
    flag = "--engines" if value is not None else ENGINES_ENV
    items = [item.strip() for item in str(raw).split(",") if item.strip()]
    problems = []
    for item in items:
        if "://" in item:
            if not item.startswith(SCHEMES):
                problems.append(
                    f"{flag} {item!r}: use a unix://, tcp:// or ssh:// URL, or a Docker context's name"
                )
        elif not CONTEXT_NAME.fullmatch(item):
            problems.append(f"{flag} {item!r}: not an engine URL nor a Docker context's name")
        elif item != "default" and ContextAPI.get_context(item) is None:
            names = [ctx.Name for ctx in ContextAPI.contexts()]
            problems.append(
                f"{flag} {item!r}: no such Docker context{did_you_mean(item, names)}; "
                f"contexts: {', '.join(names)}"
            )
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        problems.append(f"{flag}: {', '.join(twice)} given more than once")
    if problems:
        raise ConfigurationError(problems)
    return items


def connect(address: str) -> docker.DockerClient:
    """A pinged client of one engine; EngineError (exit 3) naming it when it cannot be reached."""
    client = None
    try:
        if address == "default":
            client = docker.from_env(timeout=600)
        elif "://" in address:
            # ssh:// through the ssh command, so that ~/.ssh/config and agents apply.
            client = docker.DockerClient(
                base_url=address, timeout=600, use_ssh_client=address.startswith("ssh://")
            )
        else:
            context = ContextAPI.get_context(address)
            client = docker.DockerClient(
                base_url=context.Host,
                tls=context.TLSConfig or False,
                timeout=600,
                use_ssh_client=str(context.Host).startswith("ssh://"),
            )
        client.ping()
    except FAILURES as exc:
        if client is not None:
            client.close()
        reason = one_line(exc)
        raise EngineError(f"cannot reach the Docker engine {address}: {reason}") from None
    return client


class BaseImage(NamedTuple):
    """A base image on one engine: its id, or why it cannot be there."""

    id: str | None
    problem: str | None = None


class Fleet:
    """The engines of one run. With one engine everything happens in the caller's thread, as
    without a fleet; with several, one thread per engine."""

    def __init__(self, engines: Sequence[Engine]):
        self.engines = list(engines)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._bases: dict[tuple[str, str], BaseImage] = {}

    @classmethod
    def of(cls, items: Sequence[str] = ()) -> Fleet:
        """The engines of the (checked) addresses, connected; none: the default engine."""
        if not items:
            return cls([DockerEngine("default", eng.client())])
        engines = [DockerEngine(item, connect(item)) for item in items]
        ids: dict[tuple[str, ...], str] = {}
        for engine in engines:
            info = engine.client.info()
            # Engines on one host may share the daemon key (and so ID), never their data root.
            engine_id = tuple(str(info.get(k)) for k in ("ID", "Name", "DockerRootDir"))
            if engine_id in ids:
                raise ConfigurationError(
                    f"--engines: {ids[engine_id]} and {engine.name} are the same engine; "
                    "name each engine once"
                )
            ids[engine_id] = engine.name
        return cls(engines)

    @property
    def several(self) -> bool:
        return len(self.engines) > 1

    def where(self, engine: Engine) -> str:
        """' on ENGINE' for progress lines, when there is more than one engine."""
        return f" on {engine.name}" if self.several else ""

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks[key]

    # --- images --------------------------------------------------------------------------------

    def base(self, engine: Engine, matrix: Matrix, name: str, log_dir: Path) -> BaseImage:
        """Makes base image NAME present on the engine, once per run: its id, or why not.

        Copied from another engine that has it (`docker save | docker load` keeps the image id,
        so a cell's content hash and tag are the same on every engine); else pulled or
        bootstrapped there, once: the other engines then copy it."""
        key = (engine.name, name)
        tag = base_image_tag(name)
        with self._lock(f"base {name}"):
            if key not in self._bases:
                try:
                    if not engine.has_image(tag):
                        others = (e for e in self.engines if e is not engine)
                        source = next((e for e in others if e.has_image(tag)), None)
                        if source is not None:
                            copy_image(source, engine, tag)
                    self._bases[key] = BaseImage(engine.ensure_base(name, matrix.bases, log_dir))
                except HvgateError as exc:
                    self._bases[key] = BaseImage(None, str(exc))
            return self._bases[key]

    def guest(
        self, engine: Engine, matrix: Matrix, log_dir: Path, cache: PackageCache | None = None
    ) -> Path:
        """The guest's tar (one file, the same for every engine), built where needed."""
        base = self.base(engine, matrix, matrix.guest.base, log_dir)
        if base.id is None:
            raise EngineError(
                f"the guest's base {matrix.guest.base}{self.where(engine)}: {base.problem}"
            )
        # One at a time: the first builds (or finds) the kept tar, the others find it.
        with self._lock("guest"):
            return engine.build_guest(matrix, base.id, log_dir, cache)

    def build(
        self,
        engine: Engine,
        matrix: Matrix,
        cell: Cell,
        log_dir: Path,
        cache: PackageCache | None = None,
    ) -> BuildResult:
        """The cell's image, built (or found unchanged) on the engine it will run on."""
        base = self.base(engine, matrix, cell.base_name, log_dir)
        if base.id is None:
            return BuildResult(cell.id, "unavailable", reason=f"base image: {base.problem}")
        timeout = matrix.policy.build_timeout
        return engine.build_cell(cell, base.id, log_dir, timeout, cache)

    def mark(self, result: CellResult, engine: Engine) -> CellResult:
        """With several engines, the result says which one built and ran the cell."""
        if not self.several:
            return result
        return replace(result, build={**result.build, "engine": engine.name})

    # --- scheduling ----------------------------------------------------------------------------

    def spread(
        self,
        items: Sequence[T],
        work: Callable[[Engine, T], None],
        prepare: Callable[[Engine], object] | None = None,
        can_take: Callable[[Engine, T], bool] | None = None,
        stop: Stop | None = None,
    ) -> list[T]:
        """Runs work(engine, item) for every item and returns those no engine could take.

        Each engine first gets one item in turn (so that every engine is used when there are
        enough items), then takes the next item whenever it is free. The first failure (or
        `stop`) stops the others from taking more; a failure is raised here once they are done."""
        if not self.several:
            return _in_order(self.engines[0], items, work, prepare, can_take)
        pending = list(items)
        left: list[T] = []
        lock = threading.Lock()
        stop = stop or Stop()
        failures: list[BaseException] = []

        def take(engine: Engine) -> T | None:
            with lock:
                for index, item in enumerate(pending):
                    if can_take is None or can_take(engine, item):
                        return pending.pop(index)
            return None

        firsts = {engine.name: take(engine) for engine in self.engines}

        def worker(engine: Engine) -> None:
            item = firsts[engine.name]
            try:
                if prepare and item is not None and not stop.is_set():
                    prepare(engine)
                while item is not None and not stop.is_set():
                    work(engine, item)
                    item = take(engine)
            except BaseException as exc:  # handed to the caller's thread below
                failures.append(exc)
                stop.set()
            finally:
                if item is not None and stop.is_set():
                    with lock:
                        left.append(item)

        run_threads(
            [
                threading.Thread(target=worker, args=(e,), name=f"engine {e.name}", daemon=True)
                for e in self.engines
            ],
            stop,
        )
        if failures:
            raise failures[0]
        return left + pending


def _in_order(
    engine: Engine,
    items: Sequence[T],
    work: Callable[[Engine, T], None],
    prepare: Callable[[Engine], object] | None,
    can_take: Callable[[Engine, T], bool] | None,
) -> list[T]:
    """One engine: every item in the caller's thread, in order; returns those it cannot take."""
    if prepare:
        prepare(engine)
    left = []
    for item in items:
        if can_take is None or can_take(engine, item):
            work(engine, item)
        else:
            left.append(item)
    return left


def copy_image(source: Engine, target: Engine, tag: str) -> None:
    """`docker save | docker load`, streamed: no registry is needed between engines."""
    say(tag, f"copying from {source.name} to {target.name}")
    try:
        target.load_image(source.save_image(tag))
    except FAILURES as exc:
        reason = one_line(exc)
        raise EngineError(f"copying {tag} from {source.name} to {target.name}: {reason}") from None
    if not target.has_image(tag):
        raise EngineError(f"copying {tag} from {source.name} to {target.name}: it did not arrive")


class AccelChoice:
    """The accel of every cell of a run: the one given, or while that is 'auto', what one probe
    finds. The first smoke test to need it runs the probe (a short, bounded step) and the others,
    on any engine, wait for its answer instead of probing again."""

    def __init__(self, accel: str, reason: str | None):
        self.accel, self.reason = accel, reason
        self._lock = threading.Lock()

    def decide(self, probe: Callable[[], tuple[str, str]]) -> tuple[str, str | None]:
        with self._lock:
            if self.accel == "auto":
                self.accel, self.reason = probe()
            return self.accel, self.reason


class Stop(threading.Event):
    """Set once an interrupt (or a failure) has begun: nothing new starts after it, since every
    build, probe and container checks it first. It keeps the worker threads started under it,
    so that the interrupt's cleanup can wait for them and then remove what they left."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def join(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds in all for the worker threads; whether they all ended."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.is_alive():  # one never started (Ctrl-C came first) cannot be joined
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)


def run_threads(
    threads: Sequence[threading.Thread],
    stop: Stop,
    wake: Callable[[], None] | None = None,
) -> None:
    """Starts the threads and waits for them all; a Ctrl-C or SIGTERM meanwhile (they reach the
    main thread only while it is not blocked) sets `stop`, calls `wake` (for threads waiting on
    a condition) and goes on up, leaving the threads to the caller's cleanup (Stop.join)."""
    stop.threads.extend(threads)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except BaseException:
        stop.set()
        if wake is not None:
            wake()
        raise
