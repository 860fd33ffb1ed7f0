"""The supervisor's side of the scenario worker: every answer waited for with a bound, and a hung
or dead worker turned into that scenario's result, with evidence, before daemon, QEMU and worker
are renewed for the next scenario. It makes no libvirt call itself, so nothing here can block."""

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time

from . import daemons, evidence
from .guest import ScenarioFailure

GRACE = 10.0  # past a scenario's own timeout before the worker is taken for hung
CONNECT_TIMEOUT = 60.0  # the daemon's socket after a start
RECOVER_TIMEOUT = 150.0  # a daemon restart: up to 60 s to stop it and 60 s to start it
RENEWALS = 2  # renewals that fail one after the other before the cell ends
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # /opt/hvgate


class WorkerLost(Exception):
    """The worker did not answer in time (hung) or ended."""

    def __init__(self, message, hung):
        super().__init__(message)
        self.hung = hung


class RunnerError(Exception):
    """A bug of the runner reported by the worker: never counted against libvirt or QEMU."""


def how_it_ended(code):
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class WorkerProcess:
    """`python3 -m smoke.worker` and its two pipes."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.pending = b""

    @property
    def pid(self):
        return self.proc.pid

    def ask(self, request, timeout):
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._ended() from None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerLost(f"no answer within {timeout:.0f} s", hung=True)
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise self._ended()
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def _ended(self):
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return WorkerLost(f"the worker ended ({how_it_ended(self.proc.returncode)})", hung=False)

    def kill(self):
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def not_run(name, reason):
    return {
        "name": name,
        "status": "not-run",
        "error": reason,
        "error_class": None,
        "details": {},
        "duration_s": 0.0,
        "logs": {},
    }


class Supervisor:
    """Runs scenarios in a worker; renews worker, daemon and guest when one of them breaks."""

    def __init__(self, daemon, boot_timeout, probe_timeout=20.0):
        self.daemon = daemon
        self.boot_timeout = boot_timeout
        self.probe_timeout = probe_timeout
        self.worker = None
        self.accel, self.accel_reason = "tcg", None
        self.broken = None  # why no scenario can start until the next repetition
        self.failed_renewals = 0
        self.aborted = None  # why the cell ends before its runs are done

    def start(self, accel, reason=None):
        """The daemon and a worker connected to it, the accel decided; returns the versions."""
        daemons.launch(self.daemon)
        info = self._connect()
        self._decide(accel, reason)
        return info

    def _connect(self):
        argv = [sys.executable, "-m", "smoke.worker", "--daemon", self.daemon]
        self.worker = WorkerProcess(argv + ["--boot-timeout", str(self.boot_timeout)])
        request = {"op": "connect", "accel": self.accel, "timeout": CONNECT_TIMEOUT}
        return self._ask(request, CONNECT_TIMEOUT + GRACE)

    def _decide(self, accel, reason):
        request = {"op": "accel", "requested": accel, "probe_timeout": self.probe_timeout}
        answer = self._ask({**request, "reason": reason}, self.probe_timeout + 60 + GRACE)
        self.accel, self.accel_reason = answer["accel"], answer["reason"]

    def _ask(self, request, timeout):
        """An answer to a request other than a scenario; what fails is raised."""
        try:
            answer = self.worker.ask(request, timeout)
        except WorkerLost as lost:
            state = daemons.describe(self.daemon)
            self.discard()
            raise ScenarioFailure(f"{request['op']}: {lost}; {state}") from None
        if "error" in answer:
            if answer.get("bug"):
                raise RunnerError(answer["error"])
            raise ScenarioFailure(answer["error"])
        return answer

    def discard(self):
        """Ends the worker, the daemon and QEMU: the next scenario starts them afresh."""
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
        pids = daemons.pidof(self.daemon)
        daemons.kill(pids + daemons.children(pids) + daemons.qemu_pids())

    def renew(self):
        self.discard()
        daemons.launch(self.daemon)
        self._connect()
        self._decide(self.accel, self.accel_reason)

    def next_round(self):
        self.broken = None

    def scenario(self, name, timeout):
        """The scenario's result: pass, fail (libvirt, QEMU or the guest), error (the runner),
        or not-run (an earlier failure broke what it needs, and it could not be renewed)."""
        if self.broken:
            return not_run(name, self.broken)
        if self.worker is None:
            try:
                self.renew()
            except (ScenarioFailure, RunnerError) as exc:
                self.failed_renewals += 1
                self.broken = f"the daemon and guest could not be renewed: {one_line(exc)}"
                if self.failed_renewals >= RENEWALS:
                    self.aborted = f"{self.broken} ({self.failed_renewals} times)"
                return not_run(name, self.broken)
            self.failed_renewals = 0
        started = time.monotonic()
        try:
            result = self.worker.ask(
                {"op": "scenario", "name": name, "timeout": timeout}, timeout + GRACE
            )
        except WorkerLost as lost:
            result = self._lost(name, lost, timeout, time.monotonic() - started)
            self.discard()
            return result
        if result["status"] != "pass":
            try:
                self._ask({"op": "recover"}, RECOVER_TIMEOUT)
            except (ScenarioFailure, RunnerError):
                self.discard()  # renewed before the next scenario
        return result

    def _lost(self, name, lost, timeout, seconds):
        """A worker that hung in a scenario or died in it: what it waited on, with evidence."""
        status, error_class = "error", "WorkerDied"
        if lost.hung:
            logs = evidence.hang(self.daemon, self.worker.pid)
            kind, what = evidence.blocked_call(logs["stack"]) or ("runner", "the scenario")
            message = (
                f"{what} did not return within {timeout:.0f} s; {daemons.describe(self.daemon)}"
            )
            # Only a call into libvirt that never came back is held against libvirt.
            status, error_class = (
                ("fail", "ScenarioHang") if kind == "libvirt" else ("error", "RunnerHang")
            )
        else:
            logs = evidence.log_tails(self.daemon)
            message = f"the scenario worker died: {lost}"
        return {
            "name": name,
            "status": status,
            "error": message,
            "error_class": error_class,
            "details": {},
            "duration_s": round(seconds, 2),
            "logs": logs,
        }

    def close(self):
        if self.worker is not None:
            self.worker.kill()
            self.worker = None


def one_line(exc):
    return " ".join(str(exc).split())[:300]
