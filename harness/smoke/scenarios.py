"""The smoke scenarios: each drives libvirt the way a cloud compute node does and checks the guest.

REQUIREMENTS says, for every scenario, what a cell needs to run it; a cell without it reports
the scenario not-applicable, with the reason.
"""

import contextlib
import glob
import os
import re
import threading
import time
import typing

import libvirt

from . import daemons, encryption, power
from .guest import (
    BEATS_PER_SECOND,
    DOMAIN,
    READY_RE,
    Console,
    ScenarioFailure,
    check_chain,
    disk_xml,
    domain_xml,
    fill,
    fresh_disks,
    path,
    qemu_img_info,
    run,
)

# Data in the guest's own disk layer, so that a block copy of it has something to copy: more
# than QEMU's mirror buffer (16 MiB), which is copied at once, before the speed limit applies.
COPY_FILL_MIB = 48
# The throttled copy then needs 32 s for the rest: still running when the daemon restarts.
COPY_BANDWIDTH_MIB = 1
COPY_FLAGS = (
    libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY
    | libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT
    | libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW
)
# The guest writes without pause to a disk with this serial (images/guest/init), and reports
# its passes of 1 MiB: at the 1st, the 17th, the 33rd, ... The detach waits for the 17th.
WRITE_SERIAL = "hvgate-write"
LOAD_PASSES = 17
LOAD_ALIAS = "ua-hvgate-load"
# A managed save can be over before the runner sees it running; it tries again that often.
SAVE_ATTEMPTS = 3


class Session:
    """One libvirt connection and one guest, shared by the scenarios of a run."""

    def __init__(self, conn, accel, boot_timeout, job_timeout=60.0, daemon=None, name=DOMAIN):
        self.conn = conn
        self.name = name  # the domain's; another guest beside the first has its own files
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.job_timeout = job_timeout
        self.daemon = daemon
        prefix = "" if name == DOMAIN else name + "."
        self.console = Console(path(prefix + "console.log"))
        self.disk_name = prefix + "disk.qcow2"
        self.boot_id = None
        self.base = None
        self.disk = None
        self.filled = None  # the disk the last boot wrote COPY_FILL_MIB into
        self._versions = None

    def domain(self):
        try:
            return self.conn.lookupByName(self.name)
        except libvirt.libvirtError:
            return None

    def destroy(self):
        dom = self.domain()
        if dom is None:
            return
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )

    def versions(self):
        """The cell's libvirt and QEMU versions, (major, minor, micro), for the domain XML."""
        if self._versions is None:
            self._versions = {
                "libvirt": number_tuple(self.conn.getLibVersion()),
                "qemu": number_tuple(self.conn.getVersion()),
            }
        return self._versions

    def domain_xml(self, disk, accel=None, **kwargs):
        """The guest's domain (guest.domain_xml) for this cell."""
        return domain_xml(
            accel or self.accel,
            disk,
            self.console.filename,
            versions=self.versions(),
            name=self.name,
            **kwargs,
        )

    def boot(self, accel=None, timeout=None):
        """Defines and starts a fresh guest, its disk layer filled with COPY_FILL_MIB of data
        (for the block copies: filling costs a tenth of a second, a boot of its own three);
        returns seconds from start to the ready marker."""
        self.destroy()
        os.makedirs(path(), exist_ok=True)
        self.base, self.disk = fresh_disks(self.disk_name)
        fill(self.disk, COPY_FILL_MIB)
        self.filled = self.disk
        offset = self.console.size()
        xml = self.domain_xml(self.disk, accel)
        dom = self.conn.defineXML(xml)
        started = time.monotonic()
        dom.create()
        match = self.console.wait_for(
            READY_RE, offset, timeout or self.boot_timeout, "the guest's ready marker"
        )
        self.boot_id = match.group(1)
        return time.monotonic() - started

    def ensure_running(self, filled=False):
        """The running guest (one whose disk layer holds data, if filled), else a fresh one."""
        self.reconnect()
        dom = self.domain()
        if (
            dom is None
            or not dom.isActive()
            or self.boot_id is None
            or (filled and self.filled != self.disk)
        ):
            self.boot()
            dom = self.domain()
        return dom

    def reconnect(self):
        """A live connection: an earlier scenario may have left the daemon stopped or restarted."""
        if self.daemon is None or self.conn.isAlive():
            return
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
        if daemons.pidof(self.daemon):
            self.conn = libvirt.open(daemons.URI)
        else:
            self.conn = daemons.start(self.daemon, timeout=60.0)

    def restart_daemon(self):
        """Restarts the libvirt daemon under the running guest; returns the seconds it took."""
        if self.daemon is None:
            raise ScenarioFailure("no libvirt daemon is known to restart")
        old = self.conn
        started = time.monotonic()
        try:
            self.conn = daemons.restart(self.daemon, timeout=60.0)
        except daemons.StopTimeout as exc:
            self.conn = exc.conn or self.conn  # restarted, as systemd does: the run goes on
            raise
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                old.close()
        return time.monotonic() - started

    def replace_guest(self):
        """The next scenario boots a fresh guest instead of inheriting this one's state."""
        self.boot_id = None

    def wait_alive(self, timeout=30.0):
        """The guest's heartbeat goes on: a new beat of the same boot appears. It beats
        BEATS_PER_SECOND times a second; the limit allows for a TCG guest on a loaded host, not
        for a hang."""
        beat, boot = (
            self.console.last_heartbeat() if self.console.heartbeats() else (0, self.boot_id)
        )
        if boot != self.boot_id:
            beat = 0
        return self.console.wait_heartbeat_after(beat, self.boot_id, 0, timeout)


def fresh(*paths):
    """The paths, with whatever an earlier run left there removed."""
    for stale in paths:
        if os.path.exists(stale):
            os.unlink(stale)
    return paths


def state_name(dom):
    state = dom.state()[0]
    names = {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    }
    return names.get(state, f"state {state}")


def expect_state(dom, wanted):
    actual = state_name(dom)
    if actual != wanted:
        raise ScenarioFailure(f"the domain is {actual}, expected {wanted}")


def boot(session):
    seconds = session.boot()
    session.wait_alive()
    return {"boot_s": round(seconds, 2)}


def reboot(session):
    dom = session.ensure_running()
    old_boot = session.boot_id
    offset = session.console.size()
    started = time.monotonic()
    # A reset inside the same QEMU process: what a guest-initiated reboot looks like to libvirt.
    dom.reset(0)
    match = session.console.wait_for(
        READY_RE, offset, session.boot_timeout, "the ready marker after reset"
    )
    if match.group(1) == old_boot:
        raise ScenarioFailure("the guest printed the old boot id after the reset")
    session.boot_id = match.group(1)
    expect_state(dom, "running")
    session.wait_alive()
    return {"reboot_s": round(time.monotonic() - started, 2)}


def pause_resume(session):
    dom = session.ensure_running()
    session.wait_alive()
    dom.suspend()
    expect_state(dom, "paused")
    # A beat already on its way out may still land; after that, a paused guest prints none
    # in the time of BEATS_PER_SECOND beats.
    time.sleep(0.3)
    paused_at = session.console.size()
    time.sleep(1.0)
    during = session.console.heartbeats(paused_at)
    if during:
        raise ScenarioFailure(f"the guest printed {len(during)} heartbeats while paused")
    dom.resume()
    expect_state(dom, "running")
    session.wait_alive()
    return {}


def _job_ready(dom, disk):
    """nova's BlockDevice.is_job_complete: no job left, or cur == end (and end > 0)."""
    info = dom.blockJobInfo(disk, 0)
    if not info:
        return True
    return info.get("cur") == info.get("end") and info.get("end", 0) > 0


def _copy_target(session, dom, delta):
    """nova's delta image for a live snapshot: empty, on the guest's base image. Returns the
    domain's persistent XML, to define it again after the copy."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    # Idempotent: clears a job left behind by an earlier failure.
    with contextlib.suppress(libvirt.libvirtError):
        dom.blockJobAbort("vda", 0)
    info = qemu_img_info(session.disk)
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            session.base,
            delta,
            str(info["virtual-size"]),
        ]
    )
    return xml


def _wait_copy_ready(dom, timeout):
    deadline = time.monotonic() + timeout
    while not _job_ready(dom, "vda"):
        if time.monotonic() > deadline:
            raise ScenarioFailure(f"the block copy was not ready within {timeout:.0f} s")
        time.sleep(0.05)


def live_snapshot(session):
    """nova's _live_snapshot: a shallow block copy of the running disk into a delta image."""
    dom = session.ensure_running()
    delta, flat = fresh(path("snapshot.delta"), path("snapshot.qcow2"))
    xml = _copy_target(session, dom, delta)
    started = time.monotonic()
    # Block copy needs a transient domain; nova undefines it and defines it again afterwards.
    if dom.isPersistent():
        dom.undefine()
    try:
        dom.blockRebase("vda", delta, 0, COPY_FLAGS)
        _wait_copy_ready(dom, session.job_timeout)
        # Abort, not pivot: the guest keeps its disk and the copy becomes the snapshot.
        dom.blockJobAbort("vda", 0)
    finally:
        session.conn.defineXML(xml)
    copy_s = time.monotonic() - started
    run(["qemu-img", "check", "-q", delta])
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", delta, flat])
    run(["qemu-img", "check", "-q", flat])
    if not dom.isPersistent():
        raise ScenarioFailure("the domain is not persistent again after the snapshot")
    expect_state(dom, "running")
    session.wait_alive()
    return {"copy_s": round(copy_s, 2)}


def _restart_under(session, what):
    """Restarts the daemon while `what` runs; the domain must be listed again afterwards."""
    restart_s = session.restart_daemon()
    dom = session.domain()
    if dom is None:
        raise ScenarioFailure(f"the domain is not listed after the daemon restarted during {what}")
    return dom, restart_s


def snapshot_during_restart(session):
    """live_snapshot's block copy, throttled so that it still runs when the daemon restarts:
    the daemon must find the guest and the job again, and the copy must complete, or end
    cleanly, with every image of the chains intact."""
    dom = session.ensure_running(filled=True)
    session.wait_alive()
    (delta,) = fresh(path("restart.delta"))
    xml = _copy_target(session, dom, delta)
    if dom.isPersistent():
        dom.undefine()
    try:
        dom.blockRebase("vda", delta, COPY_BANDWIDTH_MIB, COPY_FLAGS)
        before = _wait_copying(dom, session.job_timeout)
        dom, restart_s = _restart_under(session, "a block copy")
        expect_state(dom, "running")
        after = dom.blockJobInfo("vda", 0)
        if after:
            # The restarted daemon must be able to steer the job: lift its speed limit.
            dom.blockJobSetSpeed("vda", 0, 0)
            _wait_copy_ready(dom, session.job_timeout)
            dom.blockJobAbort("vda", 0)
    finally:
        # Checked below; an error here must not hide the one that brought us here.
        with contextlib.suppress(libvirt.libvirtError):
            session.conn.defineXML(xml)
    live = dom.XMLDesc(0)
    if "<mirror" in live or session.disk not in live:
        raise ScenarioFailure("after the copy the guest's disk is not its own, or still mirrored")
    if dom.blockJobInfo("vda", 0):
        raise ScenarioFailure("a block job is left on vda after the copy")
    checked = check_chain(session.disk)
    details = {
        "restart_s": round(restart_s, 2),
        "copied_before_restart": before["cur"],
        "copy_size": before["end"],
        "job_after_restart": bool(after),
        "bandwidth_after_restart": after.get("bandwidth") if after else None,
        "outcome": "completed" if after else "ended with the restart",
    }
    if after:
        checked += check_chain(delta)
        # The copy holds what the guest's disk layer held.
        run(["qemu-img", "compare", "-U", "-q", session.disk, delta])
    details["checked"] = len(checked)
    if not dom.isPersistent():
        raise ScenarioFailure("the domain is not persistent again after the snapshot")
    session.wait_alive()
    return details


def _wait_copying(dom, timeout):
    """The copy's job info once it has copied something, while it has not copied everything."""
    deadline = time.monotonic() + timeout
    while True:
        info = dom.blockJobInfo("vda", 0)
        if info and info.get("end", 0) > 0 and info.get("cur") == info.get("end"):
            raise ScenarioFailure(
                f"the block copy limited to {COPY_BANDWIDTH_MIB} MiB/s was done at once "
                f"({info['end']} bytes): the speed limit did not hold"
            )
        if info and info.get("cur", 0) > 0:
            return info
        if not info:
            raise ScenarioFailure("the block copy ended before it reported progress")
        if time.monotonic() > deadline:
            raise ScenarioFailure(f"the block copy copied nothing within {timeout:.0f} s")
        time.sleep(0.05)


def external_snapshot(session):
    dom = session.ensure_running()
    memory, overlay = fresh(path("external.mem"), path("external.qcow2"))
    xml = (
        "<domainsnapshot><name>hvgate-external</name>"
        f"<memory snapshot='external' file='{memory}'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{overlay}'/></disk></disks>"
        "</domainsnapshot>"
    )
    started = time.monotonic()
    snapshot = dom.snapshotCreateXML(xml, 0)
    create_s = time.monotonic() - started
    expect_state(dom, "running")
    if overlay not in dom.XMLDesc(0):
        raise ScenarioFailure("the domain does not use the snapshot's overlay")
    backing = qemu_img_info(overlay).get("backing-filename")
    if backing != session.disk:
        raise ScenarioFailure(
            f"the overlay's backing file is {backing!r}, expected {session.disk!r}"
        )
    if not os.path.getsize(memory):
        raise ScenarioFailure("the memory state file is empty")
    session.wait_alive()
    # Drop the metadata only: the overlay stays the guest's disk.
    snapshot.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    session.disk = overlay
    return {"create_s": round(create_s, 2)}


def managed_save(session):
    dom = session.ensure_running()
    session.wait_alive()
    beat, boot_id = session.console.last_heartbeat()
    offset = session.console.size()
    started = time.monotonic()
    dom.managedSave(0)
    if dom.isActive():
        raise ScenarioFailure("the domain is still active after managed save")
    if dom.hasManagedSaveImage(0) != 1:
        raise ScenarioFailure("libvirt reports no managed save image")
    dom.create()
    resumed = session.console.wait_heartbeat_after(beat, boot_id, offset, session.boot_timeout)
    restore_s = time.monotonic() - started
    if READY_RE.search(session.console.text(offset)):
        raise ScenarioFailure("the guest booted again instead of resuming")
    # More beats than fit between reading the last one and the pause (the call is quick):
    # the guest ran on somewhere it should not have.
    if resumed > beat + 3 * BEATS_PER_SECOND:
        raise ScenarioFailure(f"the heartbeat jumped from #{beat} to #{resumed}")
    if dom.hasManagedSaveImage(0) != 0:
        raise ScenarioFailure("the managed save image is still there after start")
    return {"save_restore_s": round(restore_s, 2), "beat_before": beat, "beat_after": resumed}


def managed_save_during_restart(session):
    """The daemon restarts while a managed save runs. Either the save completes (the domain is
    shut off with its image, and resumes from it) or it is undone (the guest runs on, no image);
    either way the guest resumes where it was, not booted again, on an intact disk chain."""
    dom = session.ensure_running()
    attempts = 0
    while True:
        attempts += 1
        session.wait_alive()
        beat, boot_id = session.console.last_heartbeat()
        offset = session.console.size()
        call = {}
        saving = threading.Thread(target=_save, args=(dom, call), name="managed-save", daemon=True)
        started = time.monotonic()
        saving.start()
        seen = _wait_saving(dom, saving, session.job_timeout)
        if seen is not None:
            break
        # Over before it was seen: a plain managed save, not what this scenario is about.
        saving.join(session.job_timeout)
        try:
            _resume(session, dom, beat, boot_id, offset)
        except ScenarioFailure as exc:
            raise ScenarioFailure(f"{exc} (the save call: {call.get('result')})") from None
        if attempts == SAVE_ATTEMPTS:
            # The tool's failure to catch the save running, not libvirt's: a runner error.
            raise RuntimeError(
                f"the managed save was over before it was seen running, {attempts} times"
            )
    dom, restart_s = _restart_under(session, "a managed save")
    saving.join(session.job_timeout)
    if saving.is_alive():
        raise ScenarioFailure(
            f"the managed save call did not return within {session.job_timeout:.0f} s "
            "of the daemon restart"
        )
    outcome, resumed = _resume(session, dom, beat, boot_id, offset)
    checked = check_chain(session.disk)
    return {
        "outcome": outcome,
        "attempts": attempts,
        "save_seen_s": round(seen, 2),
        "restart_s": round(restart_s, 2),
        "total_s": round(time.monotonic() - started, 2),
        "save_call": call.get("result"),
        "beat_before": beat,
        "beat_after": resumed,
        "checked": len(checked),
    }


def _save(dom, call):
    try:
        dom.managedSave(0)
        call["result"] = "returned"
    except libvirt.libvirtError as exc:
        # The connection closes under the call: that is the restart, not a failure.
        call["result"] = str(exc).strip().splitlines()[0]


def _wait_saving(dom, thread, timeout):
    """Seconds until the domain is paused for the save (libvirt stops the guest, then writes its
    state), or None if the call is over first. The state needs no job, so this never waits on
    the save itself."""
    started = time.monotonic()
    while thread.is_alive() and time.monotonic() - started < timeout:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                return time.monotonic() - started
        time.sleep(0.005)
    return None


def _resume(session, dom, beat, boot_id, offset):
    """After a managed save that completed ("saved": started from its image) or was undone
    ("undone": still running, no image): the guest beats on from `beat`, not booted again.
    Returns the outcome and the first beat after."""
    state = state_name(dom)
    if state == "shut off":
        if dom.hasManagedSaveImage(0) != 1:
            raise ScenarioFailure("the domain is shut off after the save, without a save image")
        outcome = "saved"
        dom.create()
    elif state == "running":
        if dom.hasManagedSaveImage(0) != 0:
            raise ScenarioFailure("the domain runs after the save, yet has a save image")
        outcome = "undone"
    else:
        raise ScenarioFailure(f"the domain is {state} after the managed save")
    resumed = session.console.wait_heartbeat_after(beat, boot_id, offset, session.boot_timeout)
    if READY_RE.search(session.console.text(offset)):
        raise ScenarioFailure("the guest booted again instead of resuming")
    expect_state(dom, "running")
    if dom.hasManagedSaveImage(0) != 0:
        raise ScenarioFailure("the managed save image is still there after start")
    return outcome, resumed


def _wait_for_marker(session, text, offset, timeout, what):
    return session.console.wait_for(re.compile(re.escape(text)), offset, timeout, what)


def disk_hotplug(session):
    dom = session.ensure_running()
    (extra,) = fresh(path("hotplug.qcow2"))
    run(["qemu-img", "create", "-q", "-f", "qcow2", extra, "16M"])
    xml = disk_xml(extra, "vdb")
    offset = session.console.size()
    started = time.monotonic()
    dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    _wait_for_marker(
        session, "HVGATE-DISK-ADDED vdb", offset, session.job_timeout, "the guest's report of vdb"
    )
    attach_s = time.monotonic() - started
    offset = session.console.size()
    started = time.monotonic()
    dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    _wait_for_marker(
        session,
        "HVGATE-DISK-REMOVED vdb",
        offset,
        session.job_timeout,
        "the guest's report that vdb is gone",
    )
    deadline = time.monotonic() + session.job_timeout
    while extra in dom.XMLDesc(0):
        if time.monotonic() > deadline:
            raise ScenarioFailure(
                f"libvirt still lists vdb {session.job_timeout:.0f} s after detach"
            )
        time.sleep(0.05)
    detach_s = time.monotonic() - started
    session.wait_alive()
    return {"attach_s": round(attach_s, 2), "detach_s": round(detach_s, 2)}


def detach_under_load(session):
    """Detach a disk while the guest writes to it: the device-removed event must arrive, and the
    guest must see the disk go and live on."""
    dom = session.ensure_running()
    (extra,) = fresh(path("load.qcow2"))
    run(["qemu-img", "create", "-q", "-f", "qcow2", extra, "16M"])
    xml = disk_xml(extra, "vdb", serial=WRITE_SERIAL, alias=LOAD_ALIAS)
    offset = session.console.size()
    dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    _wait_for_marker(
        session,
        f"HVGATE-DISK-WRITES vdb {LOAD_PASSES}",
        offset,
        session.job_timeout,
        f"the guest's report of {LOAD_PASSES} writes to vdb",
    )
    removed = threading.Event()

    def on_removed(conn, domain, alias, opaque):
        if alias == LOAD_ALIAS:
            removed.set()

    timeout = session.job_timeout
    callback = session.conn.domainEventRegisterAny(
        dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, on_removed, None
    )
    try:
        started = time.monotonic()
        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        call_s = time.monotonic() - started
        if not removed.wait(timeout):
            raise ScenarioFailure(
                f"no device-removed event for vdb within {timeout:.0f} s of its detach "
                "while the guest wrote to it"
            )
        detach_s = time.monotonic() - started
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            session.conn.domainEventDeregisterAny(callback)
    stopped = session.console.wait_for(
        re.compile(r"HVGATE-DISK-WRITER-STOPPED vdb (\d+)"),
        offset,
        timeout,
        "the guest's report that its writes to vdb stopped",
    )
    _wait_for_marker(
        session, "HVGATE-DISK-REMOVED vdb", offset, timeout, "the guest's report that vdb is gone"
    )
    if extra in dom.XMLDesc(0):
        raise ScenarioFailure("libvirt still lists vdb after its device-removed event")
    run(["qemu-img", "check", "-q", extra])
    session.wait_alive()
    return {
        "detach_call_s": round(call_s, 2),
        "detach_s": round(detach_s, 2),
        "writes": int(stopped.group(1)),
    }


def teardown(session):
    dom = session.ensure_running()
    dom.destroy()
    dom.undefineFlags(
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    )
    session.boot_id = None
    problems = []
    left = [d.name() for d in session.conn.listAllDomains(0)]
    if left:
        problems.append(f"domains still defined: {left}")
    deadline = time.monotonic() + 10
    while daemons.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemons.qemu_pids():
        problems.append(f"qemu processes still running: {daemons.qemu_pids()}")
    stray = [
        name
        for pattern in (
            f"/run/libvirt/qemu/{DOMAIN}.*",
            f"/var/lib/libvirt/qemu/save/{DOMAIN}.save",
            f"/var/lib/libvirt/qemu/snapshot/{DOMAIN}/*",
            f"/var/lib/libvirt/qemu/domain-*-{DOMAIN}",
            f"/etc/libvirt/qemu/{DOMAIN}.xml",
        )
        for name in glob.glob(pattern)
    ]
    if stray:
        problems.append(f"files left behind: {stray}")
    if problems:
        raise ScenarioFailure("; ".join(problems))
    return {}


SCENARIOS = {
    "boot": boot,
    "reboot": reboot,
    "pause-resume": pause_resume,
    "live-snapshot": live_snapshot,
    "snapshot-during-restart": snapshot_during_restart,
    "external-snapshot": external_snapshot,
    "managed-save": managed_save,
    "managed-save-during-restart": managed_save_during_restart,
    "disk-hotplug": disk_hotplug,
    "detach-under-load": detach_under_load,
    **encryption.SCENARIOS,  # encrypted-volume, encrypted-image (harness/smoke/encryption.py)
    **power.SCENARIOS,
    "teardown": teardown,
}


# A NamedTuple, not a dataclass: the runner runs on Python 3.6.
class Needs(typing.NamedTuple):
    """What a scenario needs of a cell; without it the scenario is not-applicable there."""

    libvirt: str = ""  # the lowest libvirt version, dotted ("6.0.0"); empty: any
    qemu: str = ""  # the same for QEMU
    kvm: bool = False  # a guest under KVM, not TCG
    hosts: int = 1  # libvirt hosts the scenario drives (2 for a migration)
    why: str = ""  # what the versions are for
    drivers: tuple = ()  # libvirt's loadable drivers it uses besides qemu ("secret")


FORCE_SHARE = (
    "nova's qemu-img info passes --force-share, which came with image locking in QEMU 2.10"
)
USER_ALIAS = (
    "nova's detach waits for the device-removed event naming the disk by its user alias "
    "(ua-VOLUME), taken from libvirt 3.9"
)
REQUIREMENTS = {
    "boot": Needs(),
    "reboot": Needs(),
    "pause-resume": Needs(),
    "live-snapshot": Needs(),
    "snapshot-during-restart": Needs(
        libvirt="5.10.0",
        qemu="4.2.0",
        why="libvirt keeps a block job's state across a daemon restart only with -blockdev, "
        "which it uses from 5.10 on with QEMU 4.2",
    ),
    "external-snapshot": Needs(),
    "managed-save": Needs(),
    "managed-save-during-restart": Needs(),
    "disk-hotplug": Needs(),
    "detach-under-load": Needs(
        libvirt="3.9.0",
        why="the disk is named in the device-removed event by a user alias, taken from libvirt 3.9",
    ),
    "encrypted-volume": Needs(
        libvirt="2.2.0",
        qemu="2.6.0",
        why="QEMU opens LUKS images from 2.6, and libvirt hands it a disk's LUKS secret from 2.2 "
        "(nova's MIN_LIBVIRT_LUKS_VERSION and MIN_QEMU_LUKS_VERSION)",
        drivers=("secret",),
    ),
    "encrypted-image": Needs(
        libvirt="4.5.0",
        qemu="2.10.0",
        why="qcow2 takes encrypt.format=luks from QEMU 2.10; libvirt reads <encryption> inside "
        "<source> from 3.9 and uses LUKS for encrypted qcow2 disks from 4.5",
        drivers=("secret",),
    ),
    # harness/smoke/power.py: what they use is in every libvirt and QEMU of the matrix.
    "hard-reboot": Needs(),
    "power-off-on": Needs(),
    "rescue-unrescue": Needs(),
    "teardown": Needs(),
    "live-migration": Needs(hosts=2),
    # smoke/volumes.py
    "image-ops": Needs(qemu="2.10.0", why=FORCE_SHARE),
    "cold-snapshot": Needs(qemu="2.10.0", why=FORCE_SHARE),
    "volume-extend": Needs(libvirt="3.9.0", why=USER_ALIAS),
    "root-resize": Needs(qemu="2.10.0", why=FORCE_SHARE),
    "detach": Needs(libvirt="3.9.0", why=USER_ALIAS),
    # smoke/busy.py: what it uses is in every libvirt and QEMU of the matrix.
    "busy-node": Needs(),
}


def number_tuple(number):
    """libvirt's version numbers (major * 1000000 + minor * 1000 + micro) as a tuple."""
    return (number // 1000000, number // 1000 % 1000, number % 1000)


def version_tuple(version):
    return tuple(int(part) for part in re.findall(r"\d+", version or "")[:3])


def unmet(needs, facts):
    """Why a cell cannot run a scenario, in one line, or None when it can. facts: the cell's
    libvirt and qemu versions (dotted), accel ("kvm" or "tcg"), hosts, and drivers (the names of
    libvirt's loadable drivers in the image; None: not known, taken as all)."""
    missing = []
    for component, label in (("libvirt", "libvirt"), ("qemu", "QEMU")):
        lowest, have = getattr(needs, component), facts.get(component)
        if lowest and (not have or version_tuple(have) < version_tuple(lowest)):
            missing.append(f"{label} >= {lowest} (the cell has {have or 'an unknown version'})")
    if needs.kvm and facts.get("accel") != "kvm":
        missing.append(
            f"KVM (the guest runs under {facts.get('accel') or 'an unknown accelerator'})"
        )
    if needs.hosts > facts.get("hosts", 1):
        missing.append(f"{needs.hosts} hosts (the run has {facts.get('hosts', 1)})")
    why = needs.why if missing else ""  # the reason is the versions'
    drivers = facts.get("drivers")
    for driver in needs.drivers:
        if drivers is not None and driver not in drivers:
            missing.append(
                f"libvirt's {driver} driver (the image has no libvirt_driver_{driver}.so: "
                f"a distro that splits it out ships it as libvirt-daemon-driver-{driver})"
            )
    if not missing:
        return None
    return "needs " + ", ".join(missing) + (f": {why}" if why else "")
