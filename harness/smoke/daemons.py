"""Starts virtlogd and the libvirt daemon in a container without systemd, and opens a connection."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import threading
import time

import libvirt

from .guest import ScenarioFailure

URI = "qemu:///system"
LOG_DIR = "/var/log/libvirt"


def daemon_name():
    # The monolithic daemon where the distro still ships it, else the modular QEMU one.
    for name in ("libvirtd", "virtqemud"):
        if shutil.which(name) or os.path.exists(f"/usr/sbin/{name}"):
            return name
    raise ScenarioFailure("neither libvirtd nor virtqemud is installed")


def drivers():
    """The names of libvirt's loadable connection drivers installed in the cell ("qemu",
    "secret", ...); None where no such folder is found (drivers built in, or another layout)."""
    found = glob.glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_*.so") + glob.glob(
        "/usr/lib*/libvirt/connection-driver/libvirt_driver_*.so"
    )
    if not found:
        return None
    return sorted({os.path.basename(f)[len("libvirt_driver_") : -len(".so")] for f in found})


def log_file(name):
    return os.path.join(LOG_DIR, f"{name}.log")


def start_event_loop():
    """Runs libvirt's default event loop in a thread. Domain events need it, and it must be
    registered before the first connection opens: connections opened earlier get no events."""
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=_run_events, name="libvirt-events", daemon=True).start()


def _run_events():
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)


def processes(field):
    """(pid, what field(pid) read from /proc) of every process it could read: gone ones and
    unreadable files are left out."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append((int(entry), field(int(entry))))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _read(path, mode="r"):
    with open(path, mode) as handle:
        return handle.read()


def pidof(name):
    """The ids of the processes whose command name is name."""
    comms = processes(lambda pid: _read(f"/proc/{pid}/comm").strip())
    return [pid for pid, comm in comms if comm == name]


def launch(name, timeout=30.0):
    """Starts virtlogd (if not running) and the daemon, which go to the background."""
    os.makedirs(os.path.join(LOG_DIR, "qemu"), exist_ok=True)
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{log_file(name)}")
    try:
        if not pidof("virtlogd"):
            subprocess.run(["virtlogd", "-d"], check=True, env=dict(os.environ), timeout=timeout)
        subprocess.run([name, "-d"], check=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ScenarioFailure(f"{exc.cmd[0]} -d did not return within {timeout:.0f} s") from None


def start(name, timeout):
    """Starts virtlogd (if not running) and the daemon; returns an open connection."""
    launch(name)
    return connect(name, timeout)


def connect(name, timeout):
    """A connection to the daemon, waiting for its socket to appear."""
    deadline = time.monotonic() + timeout
    error = None
    while time.monotonic() < deadline:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError as exc:
            error = exc
            # Only a socket that is not there yet is worth waiting for.
            if "socket" not in str(exc) and "No such file" not in str(exc):
                break
            time.sleep(0.1)
    raise ScenarioFailure(
        f"{name} did not accept a connection (waited up to {timeout:.0f} s): {error}"
    )


# What systemd gives libvirtd.service between SIGTERM and SIGKILL: the distros' unit (Ubuntu
# 18.04's libvirt 4.0, 20.04's 6.0, and upstream's since) sets no TimeoutStopSec, so systemd's
# DefaultTimeoutStopSec of 90 s applies; KillMode=process sends both to the daemon alone, so
# QEMU lives on.
STOP_TIMEOUT = 90.0


class StopTimeout(ScenarioFailure):
    """The daemon outlived the service manager's stop timeout: a defect of the daemon, which
    was then killed and started again, as systemd does; `conn` is the new connection."""

    def __init__(self, message, conn=None, threads=()):
        super().__init__(message)
        self.conn = conn
        self.threads = list(threads)  # where each of the daemon's threads waited when killed


def stop(name, timeout=STOP_TIMEOUT):
    """Stops the daemon as `systemctl stop` does: SIGTERM, and SIGKILL to the daemon alone once
    `timeout` has passed. Returns None when it exited on SIGTERM, else where its threads waited
    when it was killed: one line, and a line per thread."""
    for pid in pidof(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pidof(name):
        if time.monotonic() > deadline:
            pids = pidof(name)
            waited = describe(name), [line for pid in pids for line in threads(pid)]
            kill(pids)
            # Gone once init has reaped it.
            deadline = time.monotonic() + 10
            while pidof(name):
                if time.monotonic() > deadline:
                    raise ScenarioFailure(f"{name} did not end within 10 s of SIGKILL")
                time.sleep(0.05)
            return waited
        time.sleep(0.05)
    return None


def restart(name, timeout=60.0, stop_timeout=STOP_TIMEOUT):
    """Stops and starts the daemon, as `systemctl restart` does; returns a new connection.
    StopTimeout (carrying the new connection) when SIGTERM did not end it."""
    started = time.monotonic()
    waited = stop(name, stop_timeout)
    stopped_s = time.monotonic() - started
    conn = start(name, timeout)
    if waited is not None:
        summary, lines = waited
        raise StopTimeout(
            f"{name} did not exit within {stop_timeout:.0f} s of SIGTERM (systemd's stop "
            f"timeout for it): killed with SIGKILL after {stopped_s:.1f} s and started again, "
            f"as systemd does; when killed, {summary}",
            conn,
            lines,
        )
    return conn


def children(pids):
    """The processes whose parent is one of pids: a daemon's forked helper keeps the name of the
    thread that forked it (libvirtd's "daemon-init") until it executes its program, so pidof
    does not find one stuck before that."""
    parents = processes(lambda pid: int(_read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[1]))
    return [pid for pid, parent in parents if parent in pids]


def qemu_pids():
    argv0s = processes(lambda pid: _read(f"/proc/{pid}/cmdline", "rb").split(b"\0", 1)[0])
    return [pid for pid, argv0 in argv0s if b"qemu-system" in argv0]


def kill(pids):
    """SIGKILL, which also ends a stopped process; waits (briefly) until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}/stat") and state(pid) != "Z" for pid in pids):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def state(pid, tid=None):
    """A process's (or one of its threads') state letter from /proc: R, S, D, T, Z, ..."""
    where = f"/proc/{pid}" + (f"/task/{tid}" if tid else "")
    try:
        with open(f"{where}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible wait", "T": "stopped"}


def threads(pid):
    """One line per thread of a process: id, name, state and the kernel function it waits in."""
    lines = []
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return lines
    for tid in tids:
        fields = []
        for item in ("comm", "wchan"):
            try:
                with open(f"/proc/{pid}/task/{tid}/{item}") as handle:
                    fields.append(handle.read().strip() or "-")
            except OSError:
                fields.append("?")
        letter = state(pid, tid)
        lines.append(f"{pid}/{tid} {fields[0]}: {STATES.get(letter, letter)} in {fields[1]}")
    return lines


def describe(name):
    """One line on how a daemon's processes are: a stopped or stuck daemon is told apart."""
    pids = pidof(name)
    if not pids:
        return f"{name} is not running"
    parts = []
    for pid in pids:
        letter = state(pid)
        if letter == "T":
            parts.append(f"{name} {pid} is stopped")
            continue
        waits = [line.rsplit(" in ", 1)[-1] for line in threads(pid)]
        common = max(set(waits), key=waits.count) if waits else "?"
        parts.append(
            f"{name} {pid} is {STATES.get(letter, letter)}, {len(waits)} threads, "
            f"{waits.count(common)} waiting in {common}"
        )
    return "; ".join(parts)
