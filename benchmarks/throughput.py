"""Scenario runs per minute over the whole default matrix, by --jobs, and where the time goes.

    python3 benchmarks/throughput.py [--jobs 1,2,3,4] [--runs 2] [--cells PATTERNS] [--keep DIR]

For each --jobs value, one warm `hvgate matrix.test --runs N --jobs J --accel tcg` of the
default matrix (its images built before: `hvgate matrix.build`) into a results directory of its
own. Counts the scenario runs the smoke tests made (a cell judged on another's smoke test adds
none), the wall time, and the host's CPU use over the run (from /proc/stat: the share of both
cores busy). Prints, per --jobs, runs a minute and its ratio to the first --jobs value; then,
for the last one, each scenario's median duration and its share of all scenario time, and the
CPU seconds a scenario run costs (busy CPU time over the runs): with every core busy, that is
the limit, cores x 60 / CPU seconds a run, whatever the --jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def measure(jobs: int, runs: int, cells: str | None, results: Path) -> dict:
    env = dict(os.environ, HVGATE_RESULTS=str(results))
    command = [sys.executable, "-m", "invoke", "matrix.test", "--runs", str(runs)]
    command += ["--jobs", str(jobs), "--accel", "tcg"] + (["--cells", cells] if cells else [])
    busy0, total0 = cpu_ticks()
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    busy1, total1 = cpu_ticks()
    latest = results / "latest.json"
    if done.returncode not in (0, 1) or not latest.exists():
        raise SystemExit(f"--jobs {jobs}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    data = json.loads(latest.read_text())
    tested = [c for c in data["cells"] if not (c.get("evidence") or {}).get("tested_as")]
    durations: dict[str, list[float]] = {}
    for cell in tested:
        for scenario in cell.get("scenarios") or []:
            durations.setdefault(scenario["name"], []).extend(scenario.get("durations_s") or [])
    count = sum(len(d) for d in durations.values())
    cores = os.cpu_count() or 1
    busy = (busy1 - busy0) / max(total1 - total0, 1)
    return {
        "jobs": jobs,
        "runs": count,
        "cells": len([c for c in tested if c.get("scenarios")]),
        "wall": wall,
        "per_minute": count / wall * 60,
        "busy": busy,
        "cpu_per_run": busy * cores * wall / count if count else float("nan"),
        "durations": durations,
    }


def main(argv: list[str] | None = None) -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--jobs", default="1,2,3,4", help="comma-separated --jobs values")
    options.add_argument("--runs", type=int, default=2, help="repetitions of each scenario")
    options.add_argument("--cells", help="the cells (matrix.test --cells); default: all")
    options.add_argument("--keep", type=Path, help="keep the results directories under DIR")
    args = options.parse_args(argv)
    top = args.keep or Path(tempfile.mkdtemp(prefix="hvgate-throughput-"))
    cores = os.cpu_count() or 1
    print(
        f"warm `matrix.test --runs {args.runs} --accel tcg` of the default matrix"
        f"{' (' + args.cells + ')' if args.cells else ''}, {cores} cores,"
        f" load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for jobs in [int(j) for j in args.jobs.split(",")]:
        row = measure(jobs, args.runs, args.cells, top / f"jobs-{jobs}")
        rows.append(row)
        print(
            f"--jobs {jobs}: {row['runs']} scenario runs in {row['cells']} cells,"
            f" {row['wall']:.0f} s, {row['per_minute']:.1f} runs/min, CPU busy"
            f" {row['busy']:.0%}, {row['cpu_per_run']:.2f} CPU s a run",
            flush=True,
        )
    first = rows[0]
    print("\n| --jobs | scenario runs | wall | runs/min | ratio | CPU busy | CPU s a run |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['jobs']} | {row['runs']} | {row['wall']:.0f} s | {row['per_minute']:.1f} |"
            f" {row['per_minute'] / first['per_minute']:.2f}x | {row['busy']:.0%} |"
            f" {row['cpu_per_run']:.2f} |"
        )
    last = rows[-1]
    total = sum(sum(d) for d in last["durations"].values())
    print(f"\nwhere a scenario run's time goes (--jobs {last['jobs']}):")
    print("| scenario | runs | median | share of scenario time |")
    print("|---|---|---|---|")
    for name, values in sorted(last["durations"].items(), key=lambda kv: -sum(kv[1])):
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} s |"
            f" {sum(values) / total:.0%} |"
        )
    best = max(rows, key=lambda r: r["per_minute"])
    print(
        f"\nlimit with every core busy: {cores} x 60 / {best['cpu_per_run']:.2f} CPU s ="
        f" {cores * 60 / best['cpu_per_run']:.0f} runs/min (best measured:"
        f" {best['per_minute']:.1f} at --jobs {best['jobs']}); results in {top}"
    )


if __name__ == "__main__":
    main()
