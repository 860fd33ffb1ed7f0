"""Smoke runner entry point, run inside a cell container: prints one JSON document on stdout.

Progress goes to stderr, one line per event. Standard library and libvirt only, Python 3.10.
With --stop-rule (the host's sequential test as a table, see harness/stats.py) each scenario is
repeated until the table decides it; a decided scenario is skipped in later runs.
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback

import libvirt

from . import daemons, migration
from .guest import DOMAIN, GUEST_DIR, ScenarioFailure
from .scenarios import REQUIREMENTS, SCENARIOS, Needs, Session, unmet

# The migrations run against a second host, which the runner's environment names.
SCENARIOS = {**SCENARIOS, **migration.SCENARIOS}

FORMAT = 1
VERSION_PACKAGES = ("libvirt-daemon", "qemu-system-x86", "python3-libvirt")


class ScenarioTimeout(ScenarioFailure):
    pass


def progress(message):
    print(message, file=sys.stderr, flush=True)


def installed_versions():
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *VERSION_PACKAGES],
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def dotted(number):
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def tail(filename, lines=15):
    try:
        with open(filename, "rb") as handle:
            handle.seek(max(0, os.path.getsize(filename) - 16384))
            return handle.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def log_tails(session, daemon):
    return {
        "daemon": tail(daemons.log_file(daemon)),
        "qemu": tail(os.path.join(daemons.LOG_DIR, "qemu", f"{DOMAIN}.log")),
        "console": session.console.tail() if session else [],
    }


def _alarm(signum, frame):
    raise ScenarioTimeout("the scenario timed out")


def run_scenario(name, session, daemon, timeout):
    started = time.monotonic()
    result = {"name": name, "status": "pass", "error": None, "details": {}}
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result["details"] = SCENARIOS[name](session) or {}
    except ScenarioTimeout:
        result.update(status="fail", error=f"the scenario did not finish within {timeout:.0f} s")
    except (ScenarioFailure, libvirt.libvirtError) as exc:
        result.update(status="fail", error=str(exc).strip())
    except Exception:  # a bug of the runner, not of libvirt or QEMU
        result.update(status="error", error=traceback.format_exc(limit=4).strip())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["duration_s"] = round(time.monotonic() - started, 2)
    result["logs"] = log_tails(session, daemon)
    return result


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

    def add(self, status):
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


def repeat(names, trackers, max_runs, run_one, runs):
    """Runs the undecided scenarios, in order, once per round, until none is left or max_runs;
    appends each round's results to `runs` as they come (an interrupted run keeps them)."""
    for run_index in range(max_runs):
        pending = [name for name in names if trackers[name].decision is None]
        if not pending:
            return
        results = []
        runs.append(results)
        for name in pending:
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


def crossed(count, accept, reject):
    if count <= accept:
        return "accept"
    if count >= reject:
        return "reject"
    return None


def choose_accel(requested, session, probe_timeout, given_reason=None):
    """(accel, reason). A present /dev/kvm is no proof: nested guests can hang, so boot one."""
    if requested == "tcg":
        return "tcg", given_reason or "TCG was asked for"
    if not os.path.exists("/dev/kvm"):
        if requested == "kvm":
            raise ScenarioFailure("KVM was asked for, but the container has no /dev/kvm")
        return "tcg", "no /dev/kvm in the container"
    if requested == "kvm":
        return "kvm", given_reason or "KVM was asked for"
    try:
        session.conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        seconds = session.boot(accel="kvm", timeout=probe_timeout)
    except (ScenarioFailure, libvirt.libvirtError) as exc:
        reason = str(exc).strip().splitlines()[0]
        with contextlib.suppress(libvirt.libvirtError):
            session.destroy()
        return "tcg", f"KVM probe failed ({reason}); using TCG"
    session.destroy()
    session.boot_id = None
    return "kvm", f"a KVM guest reached the ready marker in {seconds:.1f} s"


def not_applicable(names, facts):
    """[{name, reason}] for the scenarios whose REQUIREMENTS the cell does not meet."""
    reasons = [(name, unmet(REQUIREMENTS.get(name, Needs()), facts)) for name in names]
    return [{"name": name, "reason": why} for name, why in reasons if why]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--runs", type=int, default=1, help="runs without a --stop-rule")
    parser.add_argument(
        "--stop-rule",
        type=json.loads,
        help="the host's sequential test as JSON: lists accept and reject, one entry per run",
    )
    parser.add_argument("--boot-timeout", type=float, default=120.0)
    parser.add_argument("--scenario-timeout", type=float, default=300.0)
    parser.add_argument("--kvm-probe-timeout", type=float, default=20.0)
    parser.add_argument("--accel-reason", help="why the host chose --accel, for the report")
    parser.add_argument("--list", action="store_true", help="print the scenario names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")

    rule = args.stop_rule
    max_runs = len(rule["accept"]) if rule else args.runs
    trackers = {name: Tracker(rule) for name in names}
    started = time.time()
    report = {
        "format": FORMAT,
        "started": started,
        "kernel": os.uname().release,
        "versions": installed_versions(),
        "runs": [],
        "not_applicable": [],
        "setup_error": None,
    }
    with open(os.path.join(GUEST_DIR, "kernel-version")) as handle:
        report["guest_kernel"] = handle.read().strip()
    daemon = daemons.daemon_name()
    report["daemon"] = daemon
    session = None
    try:
        daemons.start_event_loop()
        conn = daemons.start(daemon, timeout=60.0)
        report["libvirt_version"] = dotted(conn.getLibVersion())
        report["qemu_version"] = dotted(conn.getVersion())
        session = Session(conn, "tcg", args.boot_timeout, daemon=daemon)
        accel, reason = choose_accel(args.accel, session, args.kvm_probe_timeout, args.accel_reason)
        session.accel = accel
        report.update(accel=accel, accel_reason=reason)
        progress(f"accel: {accel} ({reason})")
        facts = {
            "libvirt": report["libvirt_version"],
            "qemu": report["qemu_version"],
            "accel": accel,
            # A second host is there when the host side started a migration peer.
            "hosts": 2 if os.environ.get(migration.PEER_ENV) else 1,
        }
        report["not_applicable"] = not_applicable(names, facts)
        for entry in report["not_applicable"]:
            trackers[entry["name"]].decision = "not-applicable"
            progress(f"{entry['name']}: not applicable: {entry['reason']}")
        repeat(
            names,
            trackers,
            max_runs,
            lambda name: run_scenario(name, session, daemon, args.scenario_timeout),
            report["runs"],
        )
    except (ScenarioFailure, libvirt.libvirtError, subprocess.CalledProcessError) as exc:
        report["setup_error"] = str(exc).strip()
        report["setup_logs"] = log_tails(session, daemon)
        progress(f"setup failed: {report['setup_error']}")
    report["decisions"] = {name: tracker.decision for name, tracker in trackers.items()}
    report["duration_s"] = round(time.time() - started, 2)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
