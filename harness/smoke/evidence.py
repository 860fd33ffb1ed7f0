"""What a failed or hung scenario leaves as evidence: log tails, thread states, the blocked call."""

import os
import re

from . import daemons
from .guest import DOMAIN, Console, path

CONSOLE = path("console.log")
# Where the worker's faulthandler writes its threads' stacks when a scenario overruns.
STACK_FILE = path("worker-stack.txt")
FRAME_RE = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def tail(filename, lines=15):
    try:
        with open(filename, "rb") as handle:
            handle.seek(max(0, os.path.getsize(filename) - 16384))
            return handle.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def log_tails(daemon):
    return {
        "daemon": tail(daemons.log_file(daemon)),
        "qemu": tail(os.path.join(daemons.LOG_DIR, "qemu", f"{DOMAIN}.log")),
        "console": Console(CONSOLE).tail(),
    }


def stack():
    """The worker's stacks as faulthandler wrote them (most recent call first), or []."""
    return tail(STACK_FILE, lines=60)


def blocked_call(lines):
    """What the worker's scenario was waiting in, from its stack: ("libvirt", "managedSave at
    scenarios.py:415") for a libvirt call, ("runner", "...") for anything else, or None."""
    frames = []
    for line in lines:
        if line.startswith(("Thread ", "Current thread ")):
            if any(f[0].endswith("worker.py") for f in frames):
                break  # the thread that runs the scenario; other threads come later
            frames = []
            continue
        match = FRAME_RE.search(line)
        if match:
            frames.append((match.group(1), match.group(2), match.group(3)))
    if not any(f[0].endswith("worker.py") for f in frames):
        return None
    ours = [f for f in frames if "/smoke/" in f[0]]
    where = f" at {os.path.basename(ours[0][0])}:{ours[0][1]}" if ours else ""
    if os.path.basename(frames[0][0]) == "libvirt.py":
        return "libvirt", f"the libvirt call {frames[0][2]}{where}"
    function = ours[0][2] if ours else frames[0][2]
    return "runner", f"the runner's {function}{where}"


def hang(daemon, worker_pid):
    """Evidence of a hung scenario: every thread of the daemon, QEMU and the worker, with the
    kernel function each waits in, and the worker's Python stack."""
    pids = daemons.pidof(daemon) + daemons.qemu_pids() + [worker_pid]
    return {
        **log_tails(daemon),
        "threads": [line for pid in pids for line in daemons.threads(pid)],
        "stack": stack(),
    }
