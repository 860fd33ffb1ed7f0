"""Soak: thousands of runs of the default scenario set on cells of different libvirt/QEMU
generations, on a loaded host; the figure that matters is how many of them the harness caused.

    python3 benchmarks/soak.py [--cells A,B,C] [--runs N] [--jobs J] [--accel tcg] [--no-load]
                               [--results DIR] [--no-build] [--dry-run]
    python3 benchmarks/soak.py --input DIR/latest.json [--runs N]    # report only, runs nothing

It builds the cells if needed (`invoke matrix.build`), loads every core (stress-ng if it is
installed, else a Python busy loop per core; the load always stops when the script does), runs
one `invoke matrix.test --runs N` into its own results directory, then reads the results JSON
and prints, per cell and in total, the scenario runs, failures, errors and runs not run, the
failures grouped by fingerprint, and the harness-caused count: runner errors (status `error`)
and failures whose cause is `harness`. Exit 0 when it is 0 and every planned run ran, 1 when
the harness caused anything, 2 when the soak could not run what it planned.
It only uses the CLI and the results JSON, so it does not depend on harness/'s internals.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.core.fingerprint import headline

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CELLS = "debian-12-release,debian-13-release,ubuntu-24.04-release"
MIN_TOTAL_RUNS = 2000  # the default --runs is the fewest that reach this many scenario runs
HARNESS = "harness"
STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line of the soak itself, between the tool's own."""
    elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - STARTED))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"[soak {elapsed}, load {load}] {message}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def figure(name: str, value: object) -> None:
    print(f"  {name:<44} {value}", flush=True)


# --- the load ------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: its own session (a Ctrl-C at the terminal is the soak's to
    handle), and SIGKILL when the soak dies, even by SIGKILL."""
    os.setsid()
    # Not Linux: no parent-death signal, but stop() still ends it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Load:
    """CPU load on every core: stress-ng if installed, else one Python busy loop per core.
    Each process leads its own process group, which stop() ends by its id."""

    def __init__(self, kind: str, cores: int) -> None:
        self.kind = kind  # stress-ng, python or none
        self.cores = cores
        self.processes: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def choose(enabled: bool) -> Load:
        cores = os.cpu_count() or 1
        if not enabled:
            return Load("none", 0)
        return Load("stress-ng" if shutil.which("stress-ng") else "python", cores)

    def commands(self) -> list[list[str]]:
        if self.kind == "stress-ng":
            return [["stress-ng", "--cpu", str(self.cores), "--quiet"]]
        if self.kind == "python":
            return [[sys.executable, "-c", "while True: pass"]] * self.cores
        return []

    def describe(self) -> str:
        if self.kind == "none":
            return "none (--no-load)"
        if self.kind == "stress-ng":
            return f"stress-ng --cpu {self.cores} (one CPU worker per core, {self.cores} cores)"
        return f"a Python busy loop per core ({self.cores}; stress-ng is not installed)"

    def start(self) -> None:
        for command in self.commands():
            self.processes.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,  # stress-ng warns when stopped "prematurely"
                    preexec_fn=_die_with_parent,  # before the sampler thread starts
                )
            )
        time.sleep(1)
        if self.kind == "stress-ng" and self.processes[0].poll() is not None:
            self.stop()
            say("stress-ng exited at once; a Python busy loop per core instead")
            self.kind = "python"
            self.start()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)  # its group: stress-ng's workers too
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes = []


class LoadSampler(threading.Thread):
    """The 1-minute load average every 30 s while the test runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(30):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        if not self.samples:
            return "no sample (under 30 s)"
        mean = sum(self.samples) / len(self.samples)
        return (
            f"min {min(self.samples):.1f}, mean {mean:.1f}, max {max(self.samples):.1f} "
            f"({len(self.samples)} samples)"
        )


# --- running the CLI ---------------------------------------------------------------------------


def invoke_command(task: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "invoke", task, *args]


def shown(command: list[str], results: Path | None = None) -> str:
    words = ["python3", *command[1:]] if command and command[0] == sys.executable else command
    prefix = f"HVGATE_RESULTS={shlex.quote(str(results))} " if results else ""
    return prefix + shlex.join(words)


def stream(command: list[str], results: Path) -> int:
    """Runs a task with its output going straight through. In a session of its own, so that
    an interrupt reaches it once, from here: on Ctrl-C or SIGTERM the soak sends it SIGINT and
    waits while it cleans up after itself (containers, the run lock)."""
    env = dict(os.environ, HVGATE_RESULTS=str(results))
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        return process.wait()
    finally:
        if process.poll() is None:
            say(f"interrupting {shown(command)}; waiting for it to clean up")
            for sig, grace in ((signal.SIGINT, 600), (signal.SIGTERM, 60), (signal.SIGKILL, None)):
                process.send_signal(sig)
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue


def selected_cells(matrix: str, cells: str) -> list[str]:
    """The cell ids the patterns select, from the CLI itself (needs no Docker)."""
    done = subprocess.run(
        invoke_command("matrix.list", "--json", "--matrix", matrix, "--cells", cells),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr.strip() or done.stdout.strip() or "matrix.list failed", file=sys.stderr)
        raise SystemExit(2)
    return [cell["id"] for cell in json.loads(done.stdout)]


def matrix_scenarios(matrix: str) -> list[str]:
    with open(ROOT / matrix, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return list(document.get("scenarios") or [])


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- reading the results -------------------------------------------------------------------------


@dataclass
class Group:
    """The failed runs of one fingerprint."""

    fingerprint: str
    cause: str
    scenario: str
    message: str
    count: int
    cells: set[str] = field(default_factory=set)


@dataclass
class CellTotals:
    id: str
    status: str = "missing"
    reason: str = ""
    libvirt: str = "?"
    qemu: str = "?"
    accel: str = "?"
    planned: int = 0
    runs: int = 0
    failures: int = 0
    errors: int = 0
    not_run: int = 0
    not_applicable: list[str] = field(default_factory=list)
    not_run_reasons: dict[str, list[str]] = field(default_factory=dict)  # per scenario
    harness: int = 0
    setup_errors: int = 0  # 1 when the cell's setup failed: no scenario ran at all


@dataclass
class Summary:
    cells: list[CellTotals]
    groups: list[Group]

    def total(self, name: str) -> int:
        return sum(getattr(cell, name) for cell in self.cells)


def one_line(text: str, width: int = 110) -> str:
    first = headline(text) or "(no message)"
    return first if len(first) <= width else first[: width - 3] + "..."


def scenario_groups(cell_id: str, scenario: dict[str, Any]) -> tuple[list[Group], int]:
    """One scenario's failure groups, and how many of its runs the harness caused: its runner
    errors are among the groups, as cause harness (a results file of an hvgate before
    failures_by_cause has no groups: its errors are counted)."""
    groups = []
    for entry in scenario.get("failures_by_cause") or []:
        message, error_class = entry["message"], entry["error_class"]
        if error_class not in ("failure", "error") and not message.startswith(error_class):
            message = f"[{error_class}] {message}"
        groups.append(
            Group(
                entry["fingerprint"],
                entry["cause"],
                scenario["name"],
                message,
                entry["count"],
                {cell_id},
            )
        )
    by_harness = sum(g.count for g in groups if g.cause == HARNESS)
    return groups, max(scenario.get("errors", 0), by_harness)


def summarise(
    data: dict[str, Any], cell_ids: list[str], scenarios: list[str], runs: int
) -> Summary:
    """Per selected cell: runs, failures, errors, runs not run, harness-caused; and the failure
    groups over all of them."""
    found = {cell["id"]: cell for cell in data.get("cells", [])}
    by_key: dict[tuple[str, str, str], Group] = {}
    totals = []
    for cell_id in cell_ids:
        cell = found.get(cell_id)
        row = CellTotals(cell_id)
        listed = [s["name"] for s in (cell or {}).get("scenarios", [])]
        names = scenarios + [n for n in listed if n not in scenarios]
        row.planned = runs * len(names)
        if cell is None:
            row.reason = "not in the results"
            row.not_run = row.planned
            totals.append(row)
            continue
        row.status = cell.get("status", "?")
        row.reason = one_line(cell.get("reason") or "", 200) if cell.get("reason") else ""
        row.libvirt = cell.get("libvirt_version") or "?"
        row.qemu = cell.get("qemu_version") or "?"
        row.accel = cell.get("accel") or "?"
        results = {s["name"]: s for s in cell.get("scenarios", [])}
        for name in names:
            scenario = results.get(name)
            if scenario is None:
                row.not_run += runs
                continue
            if scenario.get("status") == "not-applicable":
                row.not_applicable.append(name)
            row.runs += scenario.get("runs", 0)
            row.failures += scenario.get("failures", 0)
            row.errors += scenario.get("errors", 0)
            # The repetitions it could not start in, where the file says; and in any case those
            # of the N it did not run (a runner error ends a scenario's runs, for one).
            row.not_run += max(int(scenario.get("not_run", 0)), runs - scenario.get("runs", 0))
            if scenario.get("not_run_reasons"):
                row.not_run_reasons[name] = list(scenario["not_run_reasons"])
            groups, harness = scenario_groups(cell_id, scenario)
            if scenario.get("status") == "error" and not harness:
                harness = 1  # an error status is the harness's even where no run says why
            row.harness += harness
            for group in groups:
                key = (group.fingerprint, group.scenario, group.cause)
                if key in by_key:
                    by_key[key].count += group.count
                    by_key[key].cells |= group.cells
                else:
                    by_key[key] = group
        if row.status == "error" and not cell.get("scenarios"):
            # The cell's setup failed (or its runner printed nothing): the harness's, once.
            row.harness += 1
            row.setup_errors = 1
            group = Group("-", HARNESS, "(cell setup)", cell.get("reason") or "", 1, {cell_id})
            by_key[(f"cell:{cell_id}", "(cell setup)", HARNESS)] = group
        totals.append(row)
    groups = sorted(by_key.values(), key=lambda g: (-g.count, g.scenario, g.message))
    return Summary(totals, groups)


def incomplete_runs(summary: Summary, runs: int) -> int:
    """Planned runs that did not run, other than those of scenarios a cell cannot run."""
    return sum(max(0, cell.not_run - runs * len(cell.not_applicable)) for cell in summary.cells)


def print_report(summary: Summary, runs: int) -> None:
    section("per cell")
    w = max([24, *(len(c.id) for c in summary.cells)])
    header = (
        f"  {'cell':<{w}} {'libvirt':<9} {'qemu':<9} {'accel':<5} {'status':<13} "
        f"{'runs':>6} {'failures':>8} {'errors':>6} {'not-run':>7} {'harness':>7}"
    )
    print(header)
    for c in summary.cells:
        print(
            f"  {c.id:<{w}} {c.libvirt[:9]:<9} {c.qemu[:9]:<9} {c.accel:<5} {c.status:<13} "
            f"{c.runs:>6} {c.failures:>8} {c.errors:>6} {c.not_run:>7} {c.harness:>7}"
        )
    print(
        f"  {'total':<{w}} {'':<9} {'':<9} {'':<5} {'':<13} {summary.total('runs'):>6} "
        f"{summary.total('failures'):>8} {summary.total('errors'):>6} "
        f"{summary.total('not_run'):>7} {summary.total('harness'):>7}"
    )
    print(f"  planned: {summary.total('planned')} scenario runs ({runs} of each scenario per cell)")
    for c in summary.cells:
        if c.not_applicable:
            print(f"  {c.id}: not applicable, so not run: {', '.join(c.not_applicable)}")
        for name, reasons in c.not_run_reasons.items():
            counted = Counter(one_line(reason, 150) for reason in reasons)
            for reason, times in counted.most_common():
                print(f"  {c.id}: {name}: {times} not run: {reason}")
        if c.status not in ("safe", "flaky", "broken") and c.reason:
            print(f"  {c.id}: {c.status}: {c.reason}")

    section("failures by fingerprint")
    if not summary.groups:
        print("  none")
    else:
        print(f"  {'count':>5}  {'cause':<16} {'scenario':<28} {'fingerprint':<12}  message")
        for g in summary.groups:
            print(f"  {g.count:>5}  {g.cause:<16} {g.scenario:<28} {g.fingerprint:<12}  ", end="")
            print(f"{one_line(g.message)}")
            print(f"  {'':>5}  {'':<16} in {', '.join(sorted(g.cells))}")


def verdict(summary: Summary, runs: int) -> int:
    harness = summary.total("harness")
    total = summary.total("runs")
    errors, setup = summary.total("errors"), summary.total("setup_errors")
    others = harness - errors - setup
    section("harness-caused")
    print(
        f"  {harness} of {total} scenario runs were caused by the harness (runner errors: "
        f"{errors}; failures with cause harness: {others}"
        + (f"; cells whose setup failed, once each: {setup}" if setup else "")
        + ")"
    )
    missing = incomplete_runs(summary, runs)
    if harness:
        return 1
    if missing or not total:
        print(f"  but {missing} planned runs did not run: the soak is incomplete")
        return 2
    return 0


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"soak: {path}: cannot read a results document: {exc}", flush=True)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        print(f"soak: {path}: not an hvgate results document (no `cells`)", flush=True)
        return None
    return data


def report_file(
    path: Path, data: dict[str, Any], cell_ids: list[str] | None, scenarios: list[str], runs: int
) -> int:
    ids = cell_ids if cell_ids is not None else [c["id"] for c in data.get("cells", [])]
    section(f"results {path} (run {data.get('run_id', '?')})")
    figure("started, finished", f"{data.get('started', '?')}, {data.get('finished', '?')}")
    host = data.get("host") or {}
    figure("host", ", ".join(f"{k} {v}" for k, v in host.items()) or "?")
    accels = sorted(
        {c["accel"] for c in data.get("cells", []) if c.get("accel") and c.get("id") in ids}
    )
    figure("accel used (per the results)", ", ".join(accels) or "?")
    summary = summarise(data, ids, scenarios, runs)
    print_report(summary, runs)
    return verdict(summary, runs)


# --- main ----------------------------------------------------------------------------------------


def default_runs(cells: int, scenarios: int) -> int:
    return min(1000, math.ceil(MIN_TOTAL_RUNS / max(1, cells * scenarios)))


def reproduce(args: argparse.Namespace, runs: int, jobs: int) -> str:
    words = ["python3", "benchmarks/soak.py", "--cells", args.cells, "--runs", str(runs)]
    words += ["--jobs", str(jobs), "--accel", args.accel]
    if args.matrix != "matrix.yaml":
        words += ["--matrix", args.matrix]
    if not args.load:
        words.append("--no-load")
    if args.results:
        words += ["--results", args.results]
    if not args.build:
        words.append("--no-build")
    return shlex.join(words)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=" ".join((__doc__ or "").split("\n\n")[0].split()),
        epilog="Exit status: 0 no harness-caused run and every planned run ran; 1 the harness "
        "caused some; 2 the soak could not run what it planned (or bad arguments); 130 "
        "interrupted. The load always stops when the script does.",
    )
    parser.add_argument(
        "--cells",
        help=f"comma-separated cell ids or shell patterns (default: {DEFAULT_CELLS}; with "
        "--input: every cell of the file)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        help=f"runs of every scenario per cell (default: the fewest that make {MIN_TOTAL_RUNS} "
        "scenario runs in total: 61 for 3 cells of 11 scenarios)",
    )
    parser.add_argument(
        "--jobs", type=int, help="cells at a time (default: the CPU count, at most the cells)"
    )
    parser.add_argument(
        "--accel", default="tcg", choices=("auto", "kvm", "tcg"), help="(default: tcg)"
    )
    parser.add_argument("--matrix", default="matrix.yaml", help="(default: matrix.yaml)")
    parser.add_argument(
        "--no-load", dest="load", action="store_false", help="do not load the host's cores"
    )
    parser.add_argument(
        "--no-build", dest="build", action="store_false", help="skip `invoke matrix.build`"
    )
    parser.add_argument(
        "--results",
        help="the results directory of the test (default: a new one under the temporary "
        "directory; kept, with every log)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands; run nothing"
    )
    parser.add_argument(
        "--input",
        type=Path,
        help="print the report of this results JSON (a finished soak's latest.json) and exit; "
        "runs nothing",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 1000:
        parser.error("--runs: use a whole number from 1 to 1000")
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        parser.error("--jobs: use a whole number from 1 to 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    scenarios = matrix_scenarios(args.matrix)
    if args.input:
        ids = selected_cells(args.matrix, args.cells) if args.cells else None
        data = read_json(args.input)
        if data is None:
            return 2
        observed = [s.get("runs", 0) for c in data.get("cells", []) for s in c.get("scenarios", [])]
        runs = args.runs or max(observed, default=0)
        print(f"hvgate soak report of {args.input} ({runs} runs of each scenario planned)")
        return report_file(args.input, data, ids, scenarios, runs)

    args.cells = args.cells or DEFAULT_CELLS
    cells = selected_cells(args.matrix, args.cells)
    runs = args.runs or default_runs(len(cells), len(scenarios))
    jobs = args.jobs or max(1, min(os.cpu_count() or 1, len(cells)))
    load = Load.choose(args.load)
    results = Path(args.results) if args.results else None
    if results is None and not args.dry_run:
        results = Path(tempfile.mkdtemp(prefix="hvgate-soak-"))
    shown_results = results or Path(tempfile.gettempdir()) / "hvgate-soak-XXXXXXXX"
    cell_list = ",".join(cells)
    build = invoke_command("matrix.build", "--matrix", args.matrix, "--cells", cell_list)
    test = invoke_command(
        "matrix.test", "--matrix", args.matrix, "--cells", cell_list, "--runs", str(runs),
        "--accel", args.accel, "--jobs", str(jobs),
    )  # fmt: skip

    print(f"hvgate soak, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs")
    figure("cells", f"{len(cells)}: {cell_list}")
    if len(cells) < 3:
        print("  (fewer than three cells: the soak is meant for three libvirt/QEMU generations)")
    figure("scenarios", f"{len(scenarios)}: {', '.join(scenarios)}")
    figure("runs of each scenario per cell", runs)
    figure("scenario runs planned", len(cells) * len(scenarios) * runs)
    figure("jobs", jobs)
    figure("accel", args.accel)
    figure("load", load.describe())
    figure("results directory", shown_results)
    figure("to reproduce", reproduce(args, runs, jobs))
    if args.build:
        print(f"  build: {shown(build, shown_results)}")
    print(f"  test:  {shown(test, shown_results)}")
    if args.dry_run:
        return 0

    assert results is not None
    results.mkdir(parents=True, exist_ok=True)
    previous = results / "latest.json"
    before = previous.read_bytes() if previous.exists() else None
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    # Even when started in the background, where the shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sampler = LoadSampler()
    try:
        if args.build:
            say(f"building (unchanged cells are not rebuilt): {shown(build)}")
            started = time.monotonic()
            code = stream(build, results)
            say(f"build done in {time.monotonic() - started:.0f} s, exit {code}")
            if code != 0:
                print("soak: not every cell built (see above); nothing was tested", flush=True)
                return 2
        if load.kind != "none":
            say(f"starting the load: {load.describe()}")
            load.start()
        sampler.start()
        say(f"testing: {shown(test)}")
        started = time.monotonic()
        code = stream(test, results)
        test_seconds = time.monotonic() - started
    except KeyboardInterrupt:
        print("\nsoak: interrupted", flush=True)
        return 130
    finally:
        sampler.done.set()
        if load.processes:
            load.stop()
            say("load stopped")
    say(f"test done in {test_seconds:.0f} s, exit {code}")

    section("soak")
    figure("wall time, all of it", f"{time.monotonic() - STARTED:.0f} s")
    figure("wall time of matrix.test", f"{test_seconds:.0f} s")
    figure("matrix.test exit status", code)
    figure("load", load.describe())
    figure("load average (1 min) during the test", sampler.summary())
    figure("accel asked for", args.accel)
    figure("to reproduce", reproduce(args, runs, jobs))
    figure("the test alone", shown(test, results))
    if not previous.exists() or previous.read_bytes() == before:
        print(f"soak: the test wrote no new {previous}: nothing to report", flush=True)
        return 2
    data = read_json(previous)
    return 2 if data is None else report_file(previous, data, cells, scenarios, runs)


if __name__ == "__main__":
    sys.exit(main())
