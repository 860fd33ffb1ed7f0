"""A fake engine (harness.engine.protocol.Engine) for the unit tests of harness/run: no Docker;
images are names, builds and smoke tests answer at once (or do what a test tells them), and
every call is noted in order."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from harness.core.model import Base, Cell, Matrix
from harness.core.options import SmokeJob
from harness.core.results import BuildResult, Found, SmokeRun, parse_report
from harness.core.stats import StopRule
from harness.engine.package_cache import PackageCache

# Three passes decide "safe" (tests/unit/stages/test_judge.py has the arithmetic).
RULE = StopRule(0.01, 0.5, 0.8, min_runs=1, max_runs=3)
REASON = "a KVM guest reached the ready marker in 1.0 s"


def passing_report(cell: Cell, accel: str, reason: str | None) -> dict[str, object]:
    """What the runner prints for a cell whose scenarios all pass, three times."""
    runs = [
        [
            {"name": name, "status": "pass", "error": None, "duration_s": 1.0}
            for name in cell.scenarios
        ]
    ] * 3
    return {"format": 1, "runs": runs, "accel": accel, "accel_reason": reason}


class FakeEngine:
    """One engine of a run, in memory. Every cell builds (or is found built) unless a test says
    otherwise; every smoke test passes, after `during(cell id, stop)`."""

    def __init__(self, name: str = "default", guest: Path = Path("guest.tar")):
        self.name = name
        self.guest = guest
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.smoked: list[tuple[str, str, str | None]] = []  # cell, accel, reason
        self.cleanups = 0
        self.late: list[str] = []  # smoke tests started after the stop
        self.unavailable: set[str] = set()  # cells whose build finds no archive
        self.unbuilt: set[str] = set()  # cells without an image (for matrix.test)
        self.caches: list[PackageCache | None] = []  # the cache each build was given
        self.found = Found("kvm", REASON, True)
        # What a cell's smoke test does besides returning its report: (cell id, stop) -> None.
        self.during: Callable[[str, threading.Event], None] = lambda cell_id, stop: None

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def __repr__(self) -> str:
        return f"FakeEngine({self.name!r})"

    # --- images ----------------------------------------------------------------------------------

    def has_image(self, tag: str) -> bool:
        return True  # the bases are there

    def save_image(self, tag: str) -> Iterable[bytes]:
        raise AssertionError("a base was copied between engines that all have it")

    def load_image(self, chunks: Iterable[bytes]) -> None:
        raise AssertionError("a base was copied between engines that all have it")

    def ensure_base(self, name: str, bases: Mapping[str, Base], log_dir: Path) -> str:
        return f"sha256:{name}"

    def build_guest(
        self, matrix: Matrix, base_id: str, log_dir: Path, cache: PackageCache | None
    ) -> Path:
        self.note("guest")
        return self.guest

    def build_cell(
        self, cell: Cell, base_id: str, log_dir: Path, timeout: float, cache: PackageCache | None
    ) -> BuildResult:
        self.note(f"build {cell.id}")
        with self.lock:
            self.caches.append(cache)
        if cell.id in self.unavailable:
            return BuildResult(cell.id, "unavailable", reason="the archive did not answer")
        return BuildResult(cell.id, "cached", image=f"hvgate/cell:{cell.id}")

    def existing_image(self, cell: Cell) -> BuildResult:
        if cell.id in self.unbuilt:
            return BuildResult(cell.id, "unavailable", reason="not built")
        return BuildResult(cell.id, "cached", image=f"hvgate/cell:{cell.id}")

    @contextlib.contextmanager
    def package_cache(self, base_image: str, log_dir: Path) -> Iterator[PackageCache]:
        self.note("serve")
        # Never started: the fake's builds do not ask it for a proxy.
        cache = PackageCache(None, base_image, log_dir)  # type: ignore[arg-type]
        try:
            yield cache
        finally:
            cache.close()
            self.note("stop serving")

    # --- containers ------------------------------------------------------------------------------

    def probe(self, job: SmokeJob) -> Found:
        self.note(f"probe {job.image}")
        return self.found

    def smoke(self, job: SmokeJob) -> SmokeRun:
        cell = job.cell
        assert job.stop is not None
        if job.stop.is_set():  # an assertion here would be lost in a worker thread
            self.late.append(cell.id)
        self.note(f"smoke {cell.id}")
        with self.lock:
            self.smoked.append((cell.id, job.accel, job.accel_reason))
        self.during(cell.id, job.stop)
        report = parse_report(passing_report(cell, job.accel, job.accel_reason))
        return SmokeRun(cell.id, report, log_dir=str(job.log_dir), rule=RULE)

    def cleanup(self, run_id: str) -> None:
        with self.lock:
            self.cleanups += 1
