"""Parallel cells on one engine: a pool of builds feeding a pool of smoke tests (--jobs of each at
a time), so that cells are built while others are tested, all through one package cache."""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from ..core.model import Matrix
from ..core.progress import say
from ..engine.bases import base_image_tag
from ..engine.package_cache import serving
from .fleet import Engine, Fleet, Stop, run_threads

T = TypeVar("T")
Serve = Callable[[Engine], AbstractContextManager[object]]


def default_jobs() -> int:
    return os.cpu_count() or 1


def package_cache(matrix: Matrix, log_dir: Path, enabled: bool) -> Serve:
    """The package cache of each engine, built from the guest's base (present for the guest)."""
    base = base_image_tag(matrix.guest.base)
    return lambda engine: serving(engine.client, base, log_dir, enabled)


def spread(
    fleet: Fleet,
    items: Sequence[T],
    work: Callable[..., None],
    prepare: Callable[[Engine], object] | None = None,
    can_take: Callable[[Engine, T], bool] | None = None,
    *,
    jobs: int | None = None,
    stage: Callable[[Engine, T], Any] | None = None,
    serve: Serve | None = None,
    stop: Stop | None = None,
) -> list[T]:
    """Runs work(engine, item[, stage(engine, item)]) for every item; returns those no engine
    could take (as Fleet.spread does).

    With one engine and jobs > 1, `stage` (the build) runs for up to `jobs` items at a time in
    the items' order, and `work` (the smoke test) for up to `jobs` built items at a time, in the
    order they were built. Several engines take one item at a time each, as Fleet.spread does.
    The first failure stops the others from taking more, and is raised once they are done.
    Once `stop` is set (an interrupt), no thread takes another item."""
    jobs = jobs or default_jobs()
    stop = stop or Stop()

    def whole(engine: Engine, item: T) -> None:
        if stage is None:
            work(engine, item)
        else:
            work(engine, item, stage(engine, item))

    with contextlib.ExitStack() as stack:
        if serve is not None:
            for engine in fleet.engines:
                stack.enter_context(serve(engine))
        if fleet.several or jobs <= 1:
            return fleet.spread(items, whole, prepare, can_take, stop)
        engine = fleet.engines[0]
        if prepare:
            prepare(engine)
        if stage is None:  # one stage only (matrix.build): `jobs` of it at a time
            say("run", f"up to {jobs} cells at a time")
            return Overlap(engine, None, work, can_take, jobs, stop).run(items)
        say("run", f"up to {jobs} images built (or found) and {jobs} smoke tests at a time")
        return Overlap(engine, work, stage, can_take, jobs, stop).run(items)


class Overlap:
    """The two pools of one engine; daemon threads, so that Ctrl-C is never kept waiting."""

    def __init__(
        self,
        engine: Engine,
        work: Callable[..., None] | None,
        stage: Callable[[Engine, Any], Any],
        can_take: Callable[[Engine, Any], bool] | None,
        jobs: int,
        stop: Stop,
    ):
        self.engine, self.work, self.stage, self.can_take = engine, work, stage, can_take
        self.jobs, self.stop = jobs, stop
        self.cond = threading.Condition()
        self.failures: list[BaseException] = []
        self.todo: collections.deque[int] = collections.deque()
        self.built: collections.deque[tuple[int, Any]] = collections.deque()
        self.done: set[int] = set()
        self.builders = 0

    def run(self, items: Sequence[Any]) -> list[Any]:
        self.items = list(items)
        self.todo.extend(range(len(self.items)))
        self.builders = self.jobs
        threads = [
            threading.Thread(target=self._builder, name=f"build-{n}", daemon=True)
            for n in range(self.jobs)
        ] + [
            threading.Thread(target=self._tester, name=f"test-{n}", daemon=True)
            for n in range(self.jobs)
        ]
        run_threads(threads, self.stop, wake=self._halt)
        if self.failures:
            raise self.failures[0]
        return [item for n, item in enumerate(self.items) if n not in self.done]

    def _halt(self) -> None:
        with self.cond:
            self.stop.set()
            self.cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            self.failures.append(exc)
        self._halt()

    def _builder(self) -> None:
        try:
            while not self.stop.is_set():
                with self.cond:
                    if not self.todo:
                        return
                    n = self.todo.popleft()
                item = self.items[n]
                if self.can_take is not None and not self.can_take(self.engine, item):
                    continue  # left for the caller, as Fleet.spread leaves it
                if self.stop.is_set():
                    return  # stopped while this builder was waiting for the engine's answer
                staged = self.stage(self.engine, item)
                with self.cond:
                    self.built.append((n, staged))
                    self.cond.notify()
        except BaseException as exc:  # handed to the caller's thread
            self._fail(exc)
        finally:
            with self.cond:
                self.builders -= 1
                self.cond.notify_all()

    def _tester(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.built and self.builders and not self.stop.is_set():
                        self.cond.wait(1.0)  # a stop set without notifying is seen too
                    if self.stop.is_set() or not self.built:
                        return
                    n, staged = self.built.popleft()
                if self.work is not None:
                    self.work(self.engine, self.items[n], staged)
                with self.cond:
                    self.done.add(n)
        except BaseException as exc:
            self._fail(exc)
