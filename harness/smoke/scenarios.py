"""The smoke scenarios: each drives libvirt the way a cloud compute node does and checks the guest."""

import contextlib
import glob
import os
import re
import time

import libvirt

from . import daemons
from .guest import (
    DOMAIN,
    READY_RE,
    Console,
    ScenarioFailure,
    disk_xml,
    domain_xml,
    fresh_disks,
    path,
    qemu_img_info,
    run,
)


class Session:
    """One libvirt connection and one guest, shared by the scenarios of a run."""

    def __init__(self, conn, accel, boot_timeout, job_timeout=60.0):
        self.conn = conn
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.job_timeout = job_timeout
        self.console = Console(path("console.log"))
        self.boot_id = None
        self.base = None
        self.disk = None

    def domain(self):
        try:
            return self.conn.lookupByName(DOMAIN)
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

    def boot(self, accel=None, timeout=None):
        """Defines and starts a fresh guest; returns seconds from start to the ready marker."""
        self.destroy()
        os.makedirs(path(), exist_ok=True)
        self.base, self.disk = fresh_disks()
        offset = self.console.size()
        xml = domain_xml(accel or self.accel, self.disk, self.console.filename)
        dom = self.conn.defineXML(xml)
        started = time.monotonic()
        dom.create()
        match = self.console.wait_for(
            READY_RE, offset, timeout or self.boot_timeout, "the guest's ready marker"
        )
        self.boot_id = match.group(1)
        return time.monotonic() - started

    def ensure_running(self):
        dom = self.domain()
        if dom is None or not dom.isActive() or self.boot_id is None:
            self.boot()
            dom = self.domain()
        return dom

    def wait_alive(self, timeout=15.0):
        """The guest's heartbeat goes on: a new beat of the same boot appears."""
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
    # Let a couple of beats' worth of time pass; a paused guest must not print any.
    time.sleep(0.3)
    paused_at = session.console.size()
    time.sleep(2.0)
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


def live_snapshot(session):
    """nova's _live_snapshot: a shallow block copy of the running disk into a delta image."""
    dom = session.ensure_running()
    delta, flat = fresh(path("snapshot.delta"), path("snapshot.qcow2"))
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
    started = time.monotonic()
    # Block copy needs a transient domain; nova undefines it and defines it again afterwards.
    if dom.isPersistent():
        dom.undefine()
    try:
        dom.blockRebase(
            "vda",
            delta,
            0,
            libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY
            | libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT
            | libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW,
        )
        deadline = time.monotonic() + session.job_timeout
        while not _job_ready(dom, "vda"):
            if time.monotonic() > deadline:
                raise ScenarioFailure(
                    f"the block copy was not ready within {session.job_timeout:.0f} s"
                )
            time.sleep(0.05)
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
    if resumed > beat + 3:
        raise ScenarioFailure(f"the heartbeat jumped from #{beat} to #{resumed}")
    if dom.hasManagedSaveImage(0) != 0:
        raise ScenarioFailure("the managed save image is still there after start")
    return {"save_restore_s": round(restore_s, 2), "beat_before": beat, "beat_after": resumed}


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
    "external-snapshot": external_snapshot,
    "managed-save": managed_save,
    "disk-hotplug": disk_hotplug,
    "teardown": teardown,
}
