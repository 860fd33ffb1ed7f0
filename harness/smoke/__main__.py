"""Smoke runner entry point, run inside a cell container: prints one JSON document on stdout.

Progress goes to stderr, one line per event. Standard library and libvirt only, Python 3.6 (Ubuntu 18.04's).
With --stop-rule (the host's sequential test as a table, see harness/stats.py) each scenario is
repeated until the table decides it; a decided scenario is skipped in later runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from . import daemons, evidence, migration
from .guest import GUEST_DIR, ScenarioFailure
from .scenarios import REQUIREMENTS, Needs, unmet
from .supervisor import RunnerError, Supervisor
from .worker import SCENARIOS

FORMAT = 1
VERSION_PACKAGES = ("libvirt-daemon", "qemu-system-x86", "python3-libvirt")


def progress(message):
    print(message, file=sys.stderr, flush=True)


def installed_versions():
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *VERSION_PACKAGES],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


class Tracker:
    """One scenario's runs against the host's stop rule; mirrors harness.stats.StopRule.walk.

    The rule has, per run count n, the largest failure count that accepts "safe" (accept[n-1])
    and the smallest that rejects it (reject[n-1]); the same two on the passes accept or reject
    "broken". Each test keeps its first decision.
    """

    def __init__(self, rule):
        self.rule = rule
        self.runs = self.failures = 0
        self.failures_test = self.passes_test = None
        self.decision = None

    def replay(self, outcomes):
        """The earlier runs of the same experiment, "P" passed and "F" failed, oldest first."""
        for outcome in outcomes:
            self.add("fail" if outcome == "F" else "pass")

    def add(self, status):
        if status == "not-run":
            return  # not a run: what it needed was broken by an earlier scenario's failure
        if status == "error":
            # A failure of this runner, not of libvirt or QEMU: more runs would not tell more.
            self.decision = "error"
            return
        self.runs += 1
        self.failures += status == "fail"
        if self.rule is None or self.runs > len(self.rule["accept"]):
            return
        accept, reject = self.rule["accept"][self.runs - 1], self.rule["reject"][self.runs - 1]
        self.failures_test = self.failures_test or crossed(self.failures, accept, reject)
        self.passes_test = self.passes_test or crossed(self.runs - self.failures, accept, reject)
        if self.failures_test == "accept":
            self.decision = "safe"
        elif self.passes_test == "accept":
            self.decision = "broken"
        elif self.failures_test == "reject" and self.passes_test == "reject":
            self.decision = "flaky"


def repeat(names, trackers, max_runs, run_one, runs, stopped=None, next_round=None):
    """Runs the undecided scenarios, in order, once per round, until none is left, max_runs, or
    stopped() gives a reason to end (returned); appends each round's results to `runs` as they
    come (an interrupted run keeps them)."""
    for run_index in range(max_runs):
        pending = [name for name in names if trackers[name].decision is None]
        if not pending:
            return None
        if next_round:
            next_round()
        results = []
        runs.append(results)
        for name in pending:
            why = stopped() if stopped else None
            if why:
                if not results:
                    runs.pop()
                return why
            result = run_one(name)
            results.append(result)
            trackers[name].add(result["status"])
            decided = trackers[name].decision
            progress(
                f"run {run_index + 1}/{max_runs} {name}: {result['status']} "
                f"({result['duration_s']:.1f} s)"
                + (f" {result['error'].splitlines()[0]}" if result["error"] else "")
                + (f" -> {decided}" if decided else "")
            )
    return None


def crossed(count, accept, reject):
    if count <= accept:
        return "accept"
    if count >= reject:
        return "reject"
    return None


def not_applicable(names, facts):
    """[{name, reason}] for the scenarios whose REQUIREMENTS the cell does not meet."""
    reasons = [(name, unmet(REQUIREMENTS.get(name, Needs()), facts)) for name in names]
    return [{"name": name, "reason": why} for name, why in reasons if why]


def parser():
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--runs", type=int, default=1, help="runs without a --stop-rule")
    parser.add_argument(
        "--stop-rule",
        type=json.loads,
        help="the host's sequential test as JSON: lists accept and reject, one entry per run",
    )
    parser.add_argument(
        "--prior",
        type=json.loads,
        default={},
        help="earlier runs of the same experiment as JSON: scenario -> 'PF...', oldest first; "
        "the stop rule starts from them",
    )
    parser.add_argument("--boot-timeout", type=float, default=120.0)
    parser.add_argument("--scenario-timeout", type=float, default=300.0)
    parser.add_argument(
        "--cell-timeout", type=float, default=3600.0, help="no scenario starts after this"
    )
    parser.add_argument(
        "--time-reason",
        default="its cell_timeout",
        help="what --cell-timeout is, for the report",
    )
    parser.add_argument("--kvm-probe-timeout", type=float, default=20.0)
    parser.add_argument("--accel-reason", help="why the host chose --accel, for the report")
    parser.add_argument("--list", action="store_true", help="print the scenario names and exit")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="only decide the accelerator (boot one guest under KVM) and print it as JSON",
    )
    return parser


def probe(supervisor, args):
    """The host's accel probe: one JSON line {format, accel, accel_reason, setup_error}."""
    answer = {"format": FORMAT, "accel": "tcg", "accel_reason": None, "setup_error": None}
    try:
        supervisor.start(args.accel, args.accel_reason)
        answer.update(accel=supervisor.accel, accel_reason=supervisor.accel_reason)
    except (ScenarioFailure, RunnerError, subprocess.CalledProcessError) as exc:
        answer["setup_error"] = str(exc).strip()
        answer["accel_reason"] = (
            f"KVM probe failed ({answer['setup_error'].splitlines()[0]}); using TCG"
        )
    finally:
        supervisor.close()
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")
    return 0


def main(argv=None):
    options = parser()
    args = options.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        options.error(f"unknown scenarios: {', '.join(unknown)}")

    daemon = daemons.daemon_name()
    supervisor = Supervisor(daemon, args.boot_timeout, args.kvm_probe_timeout)
    if args.probe:
        return probe(supervisor, args)
    rule = args.stop_rule
    # What this run may add to each scenario; the table reaches beyond, over the earlier runs.
    max_runs = rule.get("max_runs", len(rule["accept"])) if rule else args.runs
    trackers = {name: Tracker(rule) for name in names}
    for name, seen in args.prior.items():
        if name in trackers:
            trackers[name].replay(seen)
    started = time.time()
    deadline = time.monotonic() + args.cell_timeout
    report = {
        "format": FORMAT,
        "started": started,
        "kernel": os.uname().release,
        "versions": installed_versions(),
        "runs": [],
        "not_applicable": [],
        "setup_error": None,
        "aborted": None,
        "daemon": daemon,
    }
    with open(os.path.join(GUEST_DIR, "kernel-version")) as handle:
        report["guest_kernel"] = handle.read().strip()

    def stopped():
        if supervisor.aborted:
            return supervisor.aborted
        if time.monotonic() > deadline:
            return f"the cell reached {args.time_reason} of {args.cell_timeout:.0f} s"
        return None

    try:
        report.update(supervisor.start(args.accel, args.accel_reason))
        report.update(accel=supervisor.accel, accel_reason=supervisor.accel_reason)
        progress(f"accel: {supervisor.accel} ({supervisor.accel_reason})")
        facts = {
            "libvirt": report["libvirt_version"],
            "qemu": report["qemu_version"],
            "accel": supervisor.accel,
            # A second host is there when the host side started a migration peer.
            "hosts": 2 if os.environ.get(migration.PEER_ENV) else 1,
            "drivers": daemons.drivers(),
        }
        report["not_applicable"] = not_applicable(names, facts)
        for entry in report["not_applicable"]:
            trackers[entry["name"]].decision = "not-applicable"
            progress(f"{entry['name']}: not applicable: {entry['reason']}")
        report["aborted"] = repeat(
            names,
            trackers,
            max_runs,
            lambda name: supervisor.scenario(name, args.scenario_timeout),
            report["runs"],
            stopped,
            supervisor.next_round,
        )
        if report["aborted"]:
            progress(f"stopped: {report['aborted']}")
    except (ScenarioFailure, RunnerError, subprocess.CalledProcessError) as exc:
        report["setup_error"] = str(exc).strip()
        report["setup_logs"] = evidence.log_tails(daemon)
        progress(f"setup failed: {report['setup_error']}")
    finally:
        supervisor.close()
    report["decisions"] = {name: tracker.decision for name, tracker in trackers.items()}
    report["duration_s"] = round(time.time() - started, 2)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
