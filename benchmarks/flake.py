"""A planted 10% flake, judged night after night by the default policy with pooled evidence.

    python3 benchmarks/flake.py [--trials 10] [--nights 7] [--parallel 2] [--keep DIR]

One Debian 12 cell whose libvirt QEMU hook fails 10% of guest starts at random
(images/overrides/fault-boot-10.Dockerfile.j2: 6554 of the hook's 65536 draws, p = 0.100006),
scenario `boot` only (one guest start a run, so each run is one draw), under the default
matrix's policy and timeouts. A trial is a results directory of its own and a `hvgate matrix.run`
a night into it, up to --nights nights or until the cell is decided: every night adds at most
the policy's max_runs runs and the sequential test decides on the pooled runs, as a nightly job
does. Trials are independent (no shared evidence) and --parallel of them run at once on the
engine. Prints, per trial, the verdict, the nights and pooled runs it took, the pooled failure
rate and whether 0.10 is inside the reported interval; then how many trials flagged the flake
(flaky or broken), how many of those had 0.10 inside their interval, and the wall time.
Exits 0 when it ran every trial, 2 when a night did not produce a result for the cell.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CELL = "flake-10"
TRUE_RATE = 6554 / 65536  # the hook fails when a 16-bit draw * 100 < 10 * 65536


@dataclass
class Trial:
    number: int
    status: str = "not run"
    nights: int = 0
    runs: int = 0
    failures: int = 0
    interval: tuple[float, float] = (0.0, 1.0)
    seconds: float = 0.0
    problem: str | None = None

    @property
    def flagged(self) -> bool:
        return self.status in ("flaky", "broken")

    @property
    def covers(self) -> bool:
        return self.interval[0] <= TRUE_RATE <= self.interval[1]


def write_matrix(directory: Path) -> Path:
    """The default matrix's policy and guest, one cell with the planted flake, `boot` only."""
    default = yaml.safe_load((ROOT / "matrix.yaml").read_text())
    matrix = {
        "bases": {"debian-12": default["bases"]["debian-12"]},
        "sources": {"release": {"suite": "{codename}"}},
        "cells": [{"base": "debian-12", "id": CELL, "template": "fault-boot-10.Dockerfile.j2"}],
        "scenarios": ["boot"],
        "policy": default["policy"],
        "guest": default["guest"],
        "accel": "tcg",
    }
    path = directory / "flake.yaml"
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    return path


def hvgate(*args: str, results: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HVGATE_RESULTS=str(results))
    command = [sys.executable, "-m", "invoke", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def run_trial(number: int, matrix: Path, results: Path, nights: int) -> Trial:
    trial = Trial(number)
    started = time.monotonic()
    for night in range(1, nights + 1):
        done = hvgate("matrix.run", "--matrix", str(matrix), results=results)
        latest = results / "latest.json"
        cells = json.loads(latest.read_text())["cells"] if latest.exists() else []
        cell = next((c for c in cells if c["id"] == CELL), None)
        if done.returncode not in (0, 1) or cell is None or not cell.get("scenarios"):
            trial.problem = f"night {night}: exit {done.returncode}: {done.stderr.strip()[-300:]}"
            break
        (boot,) = cell["scenarios"]
        pooled = boot.get("pooled") or {"runs": boot["runs"], "failures": boot["failures"]}
        trial.status, trial.nights = boot["status"], night
        trial.runs, trial.failures = pooled["runs"], pooled["failures"]
        trial.interval = (boot["interval"][0], boot["interval"][1])
        print(
            f"trial {number} night {night}: {trial.status}, {trial.failures} of {trial.runs}"
            f" pooled runs failed ({boot['runs']} this night)",
            file=sys.stderr,
            flush=True,
        )
        if trial.status != "inconclusive":
            break
    trial.seconds = time.monotonic() - started
    return trial


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--trials", type=int, default=10)
    options.add_argument("--nights", type=int, default=7, help="nights a trial may take")
    options.add_argument("--parallel", type=int, default=2, help="trials at once")
    options.add_argument("--keep", type=Path, help="keep every trial's results under DIR")
    args = options.parse_args(argv)
    top = args.keep or Path(tempfile.mkdtemp(prefix="hvgate-flake-"))
    top.mkdir(parents=True, exist_ok=True)
    matrix = write_matrix(top)
    policy = yaml.safe_load(matrix.read_text())["policy"]
    print(
        f"planted flake: {TRUE_RATE:.6f} of guest starts fail; policy p0"
        f" {policy['safe_failure_rate']}, p1 {policy['unsafe_failure_rate']} at"
        f" {policy['confidence']} confidence, at most {policy['max_runs']} runs a night;"
        f" {args.trials} trials of up to {args.nights} nights, {args.parallel} at once",
        flush=True,
    )
    built = hvgate("matrix.build", "--matrix", str(matrix), results=top / "build")
    if built.returncode != 0:
        print(f"the cell did not build: {built.stderr.strip()[-500:]}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        trials = list(
            pool.map(
                lambda n: run_trial(n, matrix, top / f"trial-{n:02d}", args.nights),
                range(1, args.trials + 1),
            )
        )
    wall = time.monotonic() - started
    print("| trial | verdict | nights | pooled runs | failures | rate | interval | 0.10 inside |")
    print("|---|---|---|---|---|---|---|---|")
    for t in trials:
        rate = t.failures / t.runs if t.runs else 0.0
        print(
            f"| {t.number} | {t.status} | {t.nights} | {t.runs} | {t.failures} | {rate:.3f} |"
            f" [{t.interval[0]:.3f}, {t.interval[1]:.3f}] | {'yes' if t.covers else 'no'} |"
            + (f" {t.problem}" if t.problem else "")
        )
    flagged = [t for t in trials if t.flagged]
    print(
        f"flagged (flaky or broken): {len(flagged)} of {len(trials)};"
        f" 0.10 inside the interval: {sum(t.covers for t in flagged)} of {len(flagged)} flagged;"
        f" called safe: {sum(t.status == 'safe' for t in trials)};"
        f" still inconclusive: {sum(t.status == 'inconclusive' for t in trials)};"
        f" mean nights {sum(t.nights for t in trials) / len(trials):.1f},"
        f" mean pooled runs {sum(t.runs for t in trials) / len(trials):.1f};"
        f" wall time {wall:.0f} s; results in {top}"
    )
    return 2 if any(t.problem for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
