"""What a run was asked for: one frozen RunOptions, built and checked once (in tasks.py) from the
flags and the environment, and handed to every stage that needs it; and what each smoke test is
asked for (SmokeJob). Nothing reads HVGATE_* at import time; the checks raise ConfigurationError
(exit 2), one line each."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .model import Cell, Matrix
from .paths import ROOT

# The environment the tool reads, always through these names and only when a task starts.
RESULTS_ENV = "HVGATE_RESULTS"  # moves the outputs elsewhere (tests, CI shards)
CACHE_ENV = "HVGATE_PACKAGE_CACHE"  # off: builds download directly, as with --no-cache
ENGINES_ENV = "HVGATE_ENGINES"  # the engines when --engines is not given
OFF = ("0", "off", "no", "false")
ACCELS = ("auto", "kvm", "tcg")
MAX_JOBS = 64
MAX_RUNS = 1000
# The options a run's state keeps (runs/RUN_ID/run.json) and `--resume` takes back, in order.
STORED = ("matrix", "cells", "exclude", "accel", "runs", "shard")
RESELECTING = ("cells", "exclude", "accel", "runs", "shard")


def results_dir(environ: Mapping[str, str]) -> Path:
    """Where the results go: $HVGATE_RESULTS, else the checkout's results/."""
    return Path(environ.get(RESULTS_ENV) or ROOT / "results")


def package_cache_wanted(no_cache: bool, environ: Mapping[str, str]) -> bool:
    """Whether builds use the package cache: not with --no-cache, nor with HVGATE_PACKAGE_CACHE=off."""
    return not no_cache and environ.get(CACHE_ENV, "on").strip().lower() not in OFF


def _whole(value: Any, flag: str, most: int) -> int | None:
    if value is not None and not (str(value).isdigit() and 1 <= int(value) <= most):
        raise ConfigurationError(f"{flag} {value!r}: use a whole number from 1 to {most}")
    return int(value) if value is not None else None


def jobs_flag(value: Any) -> int | None:
    """--jobs: how many cells at a time, 1 to 64; None: the CPU count."""
    return _whole(value, "--jobs", MAX_JOBS)


def runs_flag(value: Any) -> int | None:
    """--runs: a fixed count of runs, 1 to 1000; None: the policy's sequential test."""
    return _whole(value, "--runs", MAX_RUNS) or None


def accel_flag(value: str | None) -> str | None:
    """--accel: auto, kvm or tcg; None: matrix.yaml's."""
    if value not in (None, *ACCELS):
        raise ConfigurationError(f"--accel {value!r}: use auto, kvm or tcg")
    return value


@dataclass(frozen=True)
class RunOptions:
    """One `matrix.run`, `matrix.test` or `matrix.build`, as asked for. A resumed run is the
    same options with the interrupted run's selection (harness.run.checkpoint.resumed)."""

    results: Path  # the results directory: $HVGATE_RESULTS, else results/
    matrix: str = "matrix.yaml"
    cells: str | None = None
    exclude: str | None = None
    shard: str | None = None
    accel: str | None = None  # None: matrix.yaml's
    runs: int | None = None  # None: the policy's sequential test decides
    engines: tuple[str, ...] = ()  # --engines, else $HVGATE_ENGINES; none: the default engine
    jobs: int | None = None  # None: the CPU count
    package_cache: bool = True  # not with --no-cache, nor HVGATE_PACKAGE_CACHE=off
    build: bool = True  # matrix.run builds; matrix.test only finds the built images
    resume: bool = False
    resumed: str | None = None  # the run id --resume continues, once found

    def __post_init__(self) -> None:
        # Programs build options too (tests, benchmarks): the same bounds as the flags'.
        jobs_flag(self.jobs)
        runs_flag(self.runs)
        accel_flag(self.accel)

    @property
    def task(self) -> str:
        return "matrix.run" if self.build else "matrix.test"

    @property
    def logs(self) -> Path:
        """The logs of what a run shares between its cells: bases, the guest, the package cache."""
        return self.results / "logs"

    def run_dir(self, run_id: str) -> Path:
        return self.results / "runs" / run_id

    def stored(self) -> dict[str, Any]:
        """What a run's state keeps of its options, for `--resume`."""
        return {name: getattr(self, name) for name in STORED}


@dataclass(frozen=True)
class SmokeJob:
    """One smoke test, as a run asks for it: a cell's image, and what the run decided for it."""

    cell: Cell
    image: str
    matrix: Matrix
    run_id: str
    guest: Path  # the guest's tar
    accel: str
    log_dir: Path
    runs: int | None  # a fixed count of runs; None: the policy's sequential test decides
    accel_reason: str | None = None
    stop: threading.Event | None = None  # once set (an interrupt), no container starts
    # The images this run built or found, by cell id: an upgrade migration's source comes from
    # here first, not from the hvgate/cell:ID tag another checkout may have moved.
    images: Mapping[str, str] = field(default_factory=dict)
    # Earlier runs of the same experiment, by scenario ("PF...", oldest first): the runner's
    # sequential test starts from them, so a scenario they decided does not run again.
    prior: Mapping[str, str] = field(default_factory=dict)
    # The smoke test's own time, when the run's run_timeout leaves it less than cell_timeout.
    cell_timeout: float | None = None
