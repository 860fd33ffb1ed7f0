"""Parallel scheduling: builds feed smoke tests, --jobs of each; the accel probe comes first."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from harness import schedule
from harness.fleet import Engine, Fleet

WAIT = 10.0  # generous: a test fails by deadlock detection, never by a slow machine


def one_engine() -> Fleet:
    return Fleet([Engine("default", client=object())])  # type: ignore[arg-type]


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

    left = schedule.spread(
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
    schedule.spread(one_engine(), ["a", "b"], work, jobs=2, stage=stage)
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

    done = schedule.spread(one_engine(), list(range(12)), work, jobs=3, stage=stage)
    assert done == []
    assert 1 < builds.most <= 3
    assert 1 < tests.most <= 3


def test_smoke_tests_run_alone_until_the_accel_probe_decides() -> None:
    decided = threading.Event()
    tests = Counter()
    concurrent_before: list[int] = []

    def work(engine: Engine, item: int, image: int) -> None:
        with tests.inside():
            if not decided.is_set():
                concurrent_before.append(tests.now)
                time.sleep(0.1)  # the others had time to start, were they allowed to
                if item == 2:  # the third cell's probe settles the accel
                    decided.set()
            else:
                time.sleep(0.05)

    schedule.spread(
        one_engine(),
        list(range(8)),
        work,
        jobs=4,
        stage=lambda engine, item: item,
        ready=decided.is_set,
    )
    assert concurrent_before and max(concurrent_before) == 1
    assert tests.most > 1  # once decided, several at a time


def test_one_stage_only_runs_in_parallel() -> None:
    """matrix.build: no smoke tests, the builds themselves --jobs at a time."""
    builds = Counter()
    seen: list[str] = []

    def work(engine: Engine, item: str) -> None:
        with builds.inside():
            time.sleep(0.05)
        seen.append(item)

    assert schedule.spread(one_engine(), list("abcd"), work, jobs=2) == []
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
        schedule.spread(one_engine(), list(range(20)), lambda *args: None, jobs=2, stage=stage)
    assert len(built) < 19  # the others stopped taking cells


def test_cells_an_engine_cannot_take_are_returned_in_order() -> None:
    tested: list[str] = []
    left = schedule.spread(
        one_engine(),
        ["a", "b", "c", "d"],
        lambda engine, item, image: tested.append(item),
        can_take=lambda engine, item: item in ("a", "c"),
        jobs=2,
        stage=lambda engine, item: item,
    )
    assert left == ["b", "d"]
    assert sorted(tested) == ["a", "c"]


def test_the_package_cache_is_served_around_the_whole_schedule() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def serve(engine: Engine) -> Iterator[None]:
        events.append(f"serve {engine.name}")
        yield
        events.append(f"stop {engine.name}")

    schedule.spread(
        one_engine(),
        ["a"],
        lambda engine, item, image: events.append(f"test {item}"),
        prepare=lambda engine: events.append("guest"),
        jobs=2,
        stage=lambda engine, item: events.append(f"build {item}"),
        serve=serve,
    )
    # The guest is built through the cache too.
    assert events == ["serve default", "guest", "build a", "test a", "stop default"]


def test_several_engines_take_one_cell_at_a_time_each() -> None:
    fleet = Fleet([Engine(n, client=object()) for n in ("one", "two")])  # type: ignore[arg-type]
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(engine: Engine, item: str, image: str) -> None:
        with lock:
            ran.append((engine.name, image))

    schedule.spread(fleet, list("abcd"), work, jobs=4, stage=lambda e, item: item.upper())
    assert sorted(image for _, image in ran) == list("ABCD")
    assert {name for name, _ in ran} == {"one", "two"}


def test_default_jobs_is_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule.os, "cpu_count", lambda: 6)
    assert schedule.default_jobs() == 6
    monkeypatch.setattr(schedule.os, "cpu_count", lambda: None)
    assert schedule.default_jobs() == 1


def test_jobs_flag_is_a_whole_number_from_1() -> None:
    from invoke.exceptions import Exit

    import tasks

    assert tasks._jobs(None) is None
    assert tasks._jobs("3") == 3
    for bad in ("0", "-1", "two", "1.5", "65"):
        with pytest.raises(Exit) as info:
            tasks._jobs(bad)
        assert info.value.code == 2
        assert f"--jobs {bad!r}" in str(info.value.message)
