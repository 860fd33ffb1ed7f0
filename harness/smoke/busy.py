"""Several guests at once on one daemon, as on a busy compute node.

nova's compute manager runs the operations of different instances at the same time (each
under its own instance lock), and its libvirt driver makes every libvirt call through one
shared connection from native threads (nova.virt.libvirt.host.Host wraps the connection in
eventlet's tpool.Proxy). The scenario does the same: two more guests boot beside the first,
all at once, then three operations run at the same moment through the one connection, one on
each guest: a live snapshot (nova's _live_snapshot), a managed save and restore (suspend and
resume), and a disk hot-plug and unplug (attach_volume, detach_volume). Every operation must
succeed, and every guest must live on afterwards.
"""

import contextlib
import threading
import time

import libvirt

from .guest import DOMAIN, ScenarioFailure
from .scenarios import Session, disk_hotplug, live_snapshot, managed_save

# The guests besides the session's own; with it, three on the daemon.
EXTRA = 2
PREFIX = DOMAIN + "-busy-"


def _in_thread(target, *args):
    """Runs target(*args) in a thread of its own; returns (thread, outcome): outcome gets
    "result" or "error" when it ends."""
    outcome = {}

    def work():
        started = time.monotonic()
        try:
            outcome["result"] = target(*args)
        except BaseException as exc:  # reported by the scenario, whatever it is
            outcome["error"] = exc
        outcome["seconds"] = round(time.monotonic() - started, 2)

    thread = threading.Thread(target=work, name=getattr(target, "__name__", "op"), daemon=True)
    thread.start()
    return thread, outcome


def _together(jobs, timeout):
    """Runs the jobs ({label: (function, args)}) at once and waits for all of them, at most
    timeout s in all. Returns {label: seconds}; the first failure (in the jobs' order) is
    raised, naming the job, after every job has ended or the time is up."""
    started = {label: _in_thread(function, *args) for label, (function, args) in jobs.items()}
    deadline = time.monotonic() + timeout
    for thread, _ in started.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    late = [label for label, (thread, _) in started.items() if thread.is_alive()]
    if late:
        raise ScenarioFailure(
            f"{', '.join(late)} did not finish within {timeout:.0f} s while the other guests' "
            "operations ran"
        )
    for label, (_, outcome) in started.items():
        error = outcome.get("error")
        if error is None:
            continue
        if isinstance(error, (ScenarioFailure, libvirt.libvirtError)):
            raise ScenarioFailure(f"{label}: {str(error).strip()}") from error
        raise error
    return {label: outcome["seconds"] for label, (_, outcome) in started.items()}


def remove_extra(conn):
    """Destroys and undefines every extra guest this scenario may have left (also after a
    failure or a timeout of it)."""
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith(PREFIX):
            continue
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


def busy_node(session):
    """Three guests on one daemon: they boot at once, then a live snapshot, a managed save and
    restore, and a disk hot-plug run at once, one on each, through the same connection."""
    session.ensure_running(filled=True)
    session.wait_alive()
    others = [
        Session(
            session.conn,
            session.accel,
            session.boot_timeout,
            session.job_timeout,
            name=f"{PREFIX}{number}",
        )
        for number in range(1, EXTRA + 1)
    ]
    remove_extra(session.conn)
    try:
        boots = _together(
            {other.name: (other.boot, ()) for other in others}, session.boot_timeout * 1.5
        )
        for guest in [session, *others]:
            guest.wait_alive()
        operations = _together(
            {
                f"the live snapshot of {session.name}": (live_snapshot, (session,)),
                f"the managed save of {others[0].name}": (managed_save, (others[0],)),
                f"the disk hot-plug of {others[1].name}": (disk_hotplug, (others[1],)),
            },
            session.job_timeout * 2,
        )
        for guest in [session, *others]:
            guest.wait_alive()
    finally:
        remove_extra(session.conn)
    running = [
        d.name() for d in session.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    ]
    if running != [session.name]:
        raise ScenarioFailure(f"after the extra guests were removed, the daemon runs {running}")
    return {
        "guests": EXTRA + 1,
        "boot_s": max(boots.values()),
        "operations_s": max(operations.values()),
    }


SCENARIOS = {"busy-node": busy_node}
