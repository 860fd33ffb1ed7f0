"""Parallel scheduling: builds feed smoke tests, --jobs of each; nothing starts once stopped."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from harness.core.errors import ConfigurationError
from harness.core.options import jobs_flag
from harness.engine.protocol import Engine
from harness.run import schedule
from harness.run.fleet import Fleet, Stop
from tests.unit.run.fakes import FakeEngine

WAIT = 10.0  # generous: a test fails by deadlock detection, never by a slow machine


def one_engine() -> Fleet:
    return Fleet([FakeEngine("default")])


class Steps:
    """schedule.Steps from plain functions: `stage` builds and `work` smoke-tests what it built;
    without `stage`, `work` is the build itself (matrix.build)."""

    def __init__(
        self,
        work: Callable[..., Any],
        prepare: Callable[[Engine], object] | None,
        can_take: Callable[[Engine, Any], bool] | None,
        stage: Callable[[Engine, Any], Any] | None,
        stop: Stop | None,
    ):
        self.work, self.stage = work, stage
        self._prepare, self._can_take = prepare, can_take
        self.stop = stop or Stop()
        self.smokes = stage is not None

    def prepare(self, engine: Engine) -> None:
        if self._prepare:
            self._prepare(engine)

    def can_take(self, engine: Engine, item: Any) -> bool:
        return self._can_take is None or self._can_take(engine, item)

    def build(self, engine: Engine, item: Any) -> Any:
        return self.stage(engine, item) if self.stage else self.work(engine, item)

    def smoke(self, engine: Engine, item: Any, built: Any) -> None:
        self.work(engine, item, built)


def spread(
    fleet: Fleet,
    items: Sequence[Any],
    work: Callable[..., Any],
    prepare: Callable[[Engine], object] | None = None,
    can_take: Callable[[Engine, Any], bool] | None = None,
    *,
    jobs: int,
    stage: Callable[[Engine, Any], Any] | None = None,
    stop: Stop | None = None,
) -> list[Any]:
    return schedule.spread(fleet, items, Steps(work, prepare, can_take, stage, stop), jobs)


class Counter:
    """How many calls run at once, and the most that ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1


def test_one_job_is_sequential_build_then_test() -> None:
    events: list[str] = []
    prepared: list[str] = []

    def stage(engine: Engine, item: str) -> str:
        events.append(f"build {item}")
        return f"image {item}"

    def work(engine: Engine, item: str, image: str) -> None:
        events.append(f"test {item} with {image}")

    left = spread(
        one_engine(),
        ["a", "b"],
        work,
        prepare=lambda engine: prepared.append(engine.name),
        jobs=1,
        stage=stage,
    )
    assert left == []
    assert prepared == ["default"]
    assert events == ["build a", "test a with image a", "build b", "test b with image b"]


def test_a_cell_is_tested_while_the_next_one_builds() -> None:
    first_tested = threading.Event()
    order: list[str] = []

    def stage(engine: Engine, item: str) -> str:
        if item == "b":
            # Done only once a's smoke test has started: impossible without overlap.
            assert first_tested.wait(WAIT), "a's smoke test never ran while b was building"
        order.append(f"built {item}")
        return item

    def work(engine: Engine, item: str, image: str) -> None:
        if item == "a":
            first_tested.set()
        order.append(f"tested {item}")

    # jobs=2 lets a and b build at once; b's build waits for a's test.
    spread(one_engine(), ["a", "b"], work, jobs=2, stage=stage)
    assert order.index("tested a") < order.index("built b")
    assert sorted(order) == ["built a", "built b", "tested a", "tested b"]


def test_jobs_bound_each_pool() -> None:
    builds, tests = Counter(), Counter()

    def stage(engine: Engine, item: int) -> int:
        with builds.inside():
            time.sleep(0.05)
        return item

    def work(engine: Engine, item: int, image: int) -> None:
        with tests.inside():
            time.sleep(0.05)

    done = spread(one_engine(), list(range(12)), work, jobs=3, stage=stage)
    assert done == []
    assert 1 < builds.most <= 3
    assert 1 < tests.most <= 3


def test_every_smoke_test_slot_starts_at_once() -> None:
    """No smoke test waits for another: the accel is decided before the first one starts."""
    together = threading.Barrier(3, timeout=WAIT)  # broken (and raising) if one waits for another

    def work(engine: Engine, item: int, image: int) -> None:
        together.wait()

    assert spread(one_engine(), [0, 1, 2], work, jobs=3, stage=lambda e, i: i) == []


def test_once_stopped_nothing_new_is_built_or_tested() -> None:
    stop = Stop()
    staged: list[int] = []
    tested: list[int] = []
    second_started = threading.Event()

    def stage(engine: Engine, item: int) -> int:
        if item >= 2:  # the builders are busy with 2 and 3 when the interrupt comes
            assert stop.wait(WAIT)
        staged.append(item)
        return item

    def work(engine: Engine, item: int, image: int) -> None:
        tested.append(item)
        if item == 0:  # Ctrl-C while 0 and 1 are smoke-tested
            assert second_started.wait(WAIT)
            stop.set()
        else:
            second_started.set()
            assert stop.wait(WAIT)

    left = spread(one_engine(), list(range(10)), work, jobs=2, stage=stage, stop=stop)
    assert sorted(tested) == [0, 1]
    assert sorted(staged) == [0, 1, 2, 3]  # in hand when stopped; nothing taken after
    assert left == list(range(2, 10))
    assert len(stop.threads) == 4 and stop.join(WAIT)  # the cleanup can wait for them


def test_several_engines_take_nothing_once_stopped() -> None:
    fleet = Fleet([FakeEngine(n) for n in ("one", "two")])
    stop = Stop()
    ran: list[str] = []
    lock = threading.Lock()

    def work(engine: Engine, item: str, image: str) -> None:
        with lock:
            ran.append(item)
        stop.set()

    spread(fleet, list("abcdef"), work, jobs=2, stage=lambda e, i: i, stop=stop)
    assert 1 <= len(ran) <= 2  # each engine's first cell at most


def test_one_stage_only_runs_in_parallel() -> None:
    """matrix.build: no smoke tests, the builds themselves --jobs at a time."""
    builds = Counter()
    seen: list[str] = []

    def work(engine: Engine, item: str) -> None:
        with builds.inside():
            time.sleep(0.05)
        seen.append(item)

    assert spread(one_engine(), list("abcd"), work, jobs=2) == []
    assert sorted(seen) == list("abcd")
    assert builds.most == 2


def test_the_first_failure_stops_the_rest_and_is_raised() -> None:
    built: list[int] = []

    def stage(engine: Engine, item: int) -> int:
        if item == 1:
            raise RuntimeError("the engine went away")
        time.sleep(0.05)
        built.append(item)
        return item

    with pytest.raises(RuntimeError, match="went away"):
        spread(one_engine(), list(range(20)), lambda *args: None, jobs=2, stage=stage)
    assert len(built) < 19  # the others stopped taking cells


def test_cells_an_engine_cannot_take_are_returned_in_order() -> None:
    tested: list[str] = []
    left = spread(
        one_engine(),
        ["a", "b", "c", "d"],
        lambda engine, item, image: tested.append(item),
        can_take=lambda engine, item: item in ("a", "c"),
        jobs=2,
        stage=lambda engine, item: item,
    )
    assert left == ["b", "d"]
    assert sorted(tested) == ["a", "c"]


def test_the_build_alone_is_not_followed_by_a_smoke_test() -> None:
    """matrix.build on one engine, one job at a time: every cell built once, nothing else."""
    built: list[str] = []
    left = spread(one_engine(), list("abc"), lambda engine, item: built.append(item), jobs=1)
    assert left == [] and built == list("abc")


def test_several_engines_take_one_cell_at_a_time_each() -> None:
    fleet = Fleet([FakeEngine(n) for n in ("one", "two")])
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(engine: Engine, item: str, image: str) -> None:
        with lock:
            ran.append((engine.name, image))

    spread(fleet, list("abcd"), work, jobs=4, stage=lambda e, item: item.upper())
    assert sorted(image for _, image in ran) == list("ABCD")
    assert {name for name, _ in ran} == {"one", "two"}


def test_default_jobs_is_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule.os, "cpu_count", lambda: 6)
    assert schedule.default_jobs() == 6
    monkeypatch.setattr(schedule.os, "cpu_count", lambda: None)
    assert schedule.default_jobs() == 1


def test_jobs_flag_is_a_whole_number_from_1() -> None:
    assert jobs_flag(None) is None
    assert jobs_flag("3") == 3
    for bad in ("0", "-1", "two", "1.5", "65"):
        with pytest.raises(ConfigurationError) as info:
            jobs_flag(bad)
        assert info.value.exit_code == 2
        assert str(info.value) == f"--jobs {bad!r}: use a whole number from 1 to 64"
