"""Parallel cells on one engine: a pool of builds feeding a pool of smoke tests (--jobs of each at
a time), so that cells are built while others are tested; several engines take a cell each."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from ..core.progress import say
from ..engine.protocol import Engine
from .fleet import Fleet, Stop, run_threads


class Steps(Protocol):
    """What the schedule does with each cell (harness.run.pipeline's Run and Build): `build`
    (the image, built or found), then `smoke` with what it returned; `prepare` once per engine
    before its first cell. Once `stop` is set (an interrupt), no thread takes another cell."""

    stop: Stop

    @property
    def smokes(self) -> bool:
        """False for `matrix.build`: the builds alone, --jobs of them at a time."""
        ...

    def prepare(self, engine: Engine) -> object: ...

    def can_take(self, engine: Engine, item: Any) -> bool:
        """Whether this engine can take the cell (`matrix.test`: it has the cell's image)."""
        ...

    def build(self, engine: Engine, item: Any) -> Any: ...

    def smoke(self, engine: Engine, item: Any, built: Any) -> None: ...


def default_jobs() -> int:
    return os.cpu_count() or 1


def spread(fleet: Fleet, items: Sequence[Any], steps: Steps, jobs: int | None = None) -> list[Any]:
    """Builds and smoke-tests every item; returns those no engine could take (as Fleet.spread
    does).

    With one engine and jobs > 1, `build` runs for up to `jobs` items at a time in the items'
    order, and `smoke` for up to `jobs` built items at a time, in the order they were built.
    Several engines take one item at a time each, as Fleet.spread does. The first failure stops
    the others from taking more, and is raised once they are done."""
    jobs = jobs or default_jobs()

    def whole(engine: Engine, item: Any) -> None:
        built = steps.build(engine, item)
        if steps.smokes:
            steps.smoke(engine, item, built)

    if fleet.several or jobs <= 1:
        return fleet.spread(items, whole, steps.prepare, steps.can_take, steps.stop)
    engine = fleet.engines[0]
    steps.prepare(engine)
    if steps.smokes:
        say("run", f"up to {jobs} images built (or found) and {jobs} smoke tests at a time")
    else:
        say("run", f"up to {jobs} cells at a time")
    return Overlap(engine, steps, jobs).run(items)


class Overlap:
    """The two pools of one engine; daemon threads, so that Ctrl-C is never kept waiting."""

    def __init__(self, engine: Engine, steps: Steps, jobs: int):
        self.engine, self.steps, self.jobs, self.stop = engine, steps, jobs, steps.stop
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
                if not self.steps.can_take(self.engine, item):
                    continue  # left for the caller, as Fleet.spread leaves it
                if self.stop.is_set():
                    return  # stopped while this builder was waiting for the engine's answer
                staged = self.steps.build(self.engine, item)
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
                if self.steps.smokes:
                    self.steps.smoke(self.engine, self.items[n], staged)
                with self.cond:
                    self.done.add(n)
        except BaseException as exc:
            self._fail(exc)
