"""The scenario worker: the one process that holds the libvirt connection and the guest.

The supervisor (smoke/__main__.py) sends it one JSON request a line on stdin and reads one JSON
answer a line; it kills the worker when an answer does not come in time, since a libvirt call
blocked on a hung daemon cannot be interrupted from inside (libvirt retries its poll on EINTR).
"""

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
import traceback

import libvirt

from . import busy, confinement, daemons, evidence, migration, volumes
from .guest import ScenarioFailure
from .scenarios import SCENARIOS, Session

# The volume scenarios (smoke/volumes.py) and the several guests (smoke/busy.py) run before
# teardown, which leaves no guest; the migrations run against a second host, which the
# runner's environment names.
SCENARIOS = {
    **{name: function for name, function in SCENARIOS.items() if name != "teardown"},
    **volumes.SCENARIOS,
    **busy.SCENARIOS,
    "teardown": SCENARIOS["teardown"],
    **migration.SCENARIOS,
}
# The stacks are written this long after a scenario's timeout, before the supervisor gives up.
STACK_AFTER = 2.0
EXPECTED = (ScenarioFailure, libvirt.libvirtError, subprocess.CalledProcessError)


class ScenarioTimeout(ScenarioFailure):
    pass


def _alarm(signum, frame):
    raise ScenarioTimeout("the scenario timed out")


def dotted(number):
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def run_scenario(name, session, daemon, timeout, stack_file=None):
    """One scenario, bounded by SIGALRM where Python code waits; if a call blocks in C past
    the timeout, the threads' stacks go to stack_file for the supervisor."""
    started = time.monotonic()
    caught = None
    result = {"name": name, "status": "pass", "error": None, "error_class": None, "details": {}}
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    if stack_file is not None:
        stack_file.seek(0)
        stack_file.truncate()
        faulthandler.dump_traceback_later(timeout + STACK_AFTER, file=stack_file)
    try:
        result["details"] = SCENARIOS[name](session) or {}
    except ScenarioTimeout:
        result.update(
            status="fail",
            error=f"the scenario did not finish within {timeout:.0f} s",
            error_class="ScenarioTimeout",
        )
    except EXPECTED as exc:
        caught = exc
        result.update(status="fail", error=str(exc).strip(), error_class=type(exc).__name__)
    except Exception as exc:  # a bug of the runner, not of libvirt or QEMU
        result.update(
            status="error",
            error=traceback.format_exc(limit=4).strip(),
            error_class=type(exc).__name__,
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if stack_file is not None:
            faulthandler.cancel_dump_traceback_later()
    result["duration_s"] = round(time.monotonic() - started, 2)
    result["logs"] = evidence.log_tails(daemon)
    if getattr(caught, "threads", None):
        result["logs"]["threads"] = caught.threads  # a daemon's, as it was when killed
    return result


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


class Worker:
    """Answers the supervisor's requests against one session."""

    def __init__(self, daemon, boot_timeout, stack_file):
        self.daemon = daemon
        self.boot_timeout = boot_timeout
        self.stack_file = stack_file
        self.session = None

    def connect(self, accel, timeout):
        conn = daemons.connect(self.daemon, timeout)
        self.session = Session(conn, accel, self.boot_timeout, daemon=self.daemon)
        return {
            "libvirt_version": dotted(conn.getLibVersion()),
            "qemu_version": dotted(conn.getVersion()),
            "not_exercised": confinement.not_exercised(conn),
        }

    def accel(self, requested, probe_timeout, reason=None):
        accel, why = choose_accel(requested, self.session, probe_timeout, reason)
        self.session.accel = accel
        return {"accel": accel, "reason": why}

    def scenario(self, name, timeout):
        return run_scenario(name, self.session, self.daemon, timeout, self.stack_file)

    def recover(self):
        """After a failure: a live connection and no guest, so that the next scenario boots a
        fresh one instead of inheriting whatever state the failure left."""
        self.session.reconnect()
        busy.remove_extra(self.session.conn)
        self.session.destroy()
        self.session.replace_guest()
        self.session.conn.getLibVersion()  # the daemon answers
        return {}

    def handle(self, request):
        op = request.pop("op")
        try:
            return getattr(self, op)(**request)
        except EXPECTED as exc:
            return {
                "error": str(exc).strip() or type(exc).__name__,
                "error_class": type(exc).__name__,
            }
        except Exception as exc:
            return {
                "error": traceback.format_exc(limit=4).strip(),
                "error_class": type(exc).__name__,
                "bug": True,
            }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="smoke.worker", description=__doc__)
    parser.add_argument("--daemon", required=True)
    parser.add_argument("--boot-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    # Answers go to a descriptor of their own: nothing a scenario or libvirt prints can be
    # taken for one.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.makedirs(os.path.dirname(evidence.STACK_FILE), exist_ok=True)
    with open(evidence.STACK_FILE, "w") as stack_file:
        daemons.start_event_loop()
        worker = Worker(args.daemon, args.boot_timeout, stack_file)
        for line in sys.stdin:
            answer = worker.handle(json.loads(line))
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
