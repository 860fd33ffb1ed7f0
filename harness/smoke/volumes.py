"""Disk and volume operations as nova and cinder perform them: qemu-img on instance disks
(nova/virt/images.py, nova/privsep/qemu.py), a cold snapshot, extending an attached volume and
the root disk, and detaching a volume with nova's retries (driver.py _detach_with_retry).

The flags, limits and bounds are nova's; where nova reads them from nova.conf, the default.
"""

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid

import libvirt

from .guest import READY_RE, ScenarioFailure, cache_mode, disk_xml, path, run
from .scenarios import LOAD_PASSES, WRITE_SERIAL, expect_state, fresh

# nova.privsep.qemu.QEMU_IMG_LIMITS: nova.conf [libvirt] images_cpu_time_limit (30 s) and
# images_address_space_limit (2 GiB), for `qemu-img info` on a disk nova did not write.
QEMU_IMG_CPU_TIME = 30
QEMU_IMG_ADDRESS_SPACE = 2 * 1024**3
PRLIMIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prlimit.py")
MIB = 1024 * 1024
SECTOR = 512
# nova.conf [libvirt] device_detach_timeout and device_detach_attempts. A test can lower them,
# with the environment variables, to fail a planted fault in seconds instead of minutes.
DETACH_TIMEOUT = 20.0
DETACH_ATTEMPTS = 8
DETACH_TIMEOUT_ENV = "HVGATE_DEVICE_DETACH_TIMEOUT"
DETACH_ATTEMPTS_ENV = "HVGATE_DEVICE_DETACH_ATTEMPTS"
# Test only (images/overrides/fault-volumes.Dockerfile.j2): "paused" pauses the guest before
# the first detach, as a guest that does not answer the unplug request; resumed afterwards.
DETACH_FAULT_ENV = "HVGATE_FAULT_DETACH"
# image-ops: a raw base as nova's image cache keeps it (force_raw_images), the instance's qcow2
# overlay on it; each with data of its own, overlapping.
IMAGE_MIB = 64
# A volume of cinder's smallest size, 1 GiB (sparse). volume-extend's is raw (cinder's NFS
# driver, nfs_qcow2_volumes off), grown by libvirt to 2 GiB.
VOLUME_MIB = 1024
EXTENDED_MIB = 2048
# root-resize: what a larger flavor's root disk adds.
ROOT_GROW_MIB = 64


# --- qemu-img as nova calls it ---------------------------------------------------------------


def qemu_img_info(image, fmt=None):
    """nova.virt.images.qemu_img_info: `qemu-img info --force-share --output=json` in the C
    locale, under QEMU_IMG_LIMITS (oslo_concurrency.prlimit). --force-share reads an image a
    running QEMU holds locked."""
    argv = ["env", "LC_ALL=C", "LANG=C", "qemu-img", "info", image, "--force-share"]
    argv += ["--output=json"] + (["-f", fmt] if fmt else [])
    limits = [f"--as={QEMU_IMG_ADDRESS_SPACE}", f"--cpu={QEMU_IMG_CPU_TIME}"]
    try:
        out = run([sys.executable, PRLIMIT] + limits + ["--"] + argv)
    except ScenarioFailure as exc:
        raise ScenarioFailure(
            f"{exc} (qemu-img info under nova's limits: {QEMU_IMG_CPU_TIME} s of CPU, "
            f"{QEMU_IMG_ADDRESS_SPACE // 1024**3} GiB of address space)"
        ) from None
    if not out.strip():
        raise ScenarioFailure(f"qemu-img info {image} printed nothing")
    return json.loads(out)


def convert_image(source, dest, in_format, out_format):
    """nova.privsep.qemu.unprivileged_convert_image, unencrypted and uncompressed (nova's
    snapshot_compression defaults to off)."""
    mode = cache_mode(os.path.dirname(dest))
    run(["qemu-img", "convert", "-t", mode, "-O", out_format, "-f", in_format, source, dest])
    return mode


def compare(first, second, first_format, second_format, what):
    """`qemu-img compare`: the same guest-visible content (a larger second image must read
    zeros beyond the first's end)."""
    try:
        run(["qemu-img", "compare", "-f", first_format, "-F", second_format, first, second])
    except ScenarioFailure as exc:
        raise ScenarioFailure(f"{what}: {exc}") from None


def backing_of(info):
    return info.get("backing-filename")


def expect_info(info, image, fmt, backing=None, size=None):
    problems = []
    if info.get("format") != fmt:
        problems.append(f"format {info.get('format')!r}, expected {fmt!r}")
    if backing_of(info) != backing:
        problems.append(f"backing file {backing_of(info)!r}, expected {backing!r}")
    if size is not None and info.get("virtual-size") != size:
        problems.append(f"virtual size {info.get('virtual-size')}, expected {size}")
    if problems:
        raise ScenarioFailure(f"qemu-img info {os.path.basename(image)}: " + "; ".join(problems))


def check(image):
    run(["qemu-img", "check", "-q", image])


def image_ops(session):
    """qemu-img as nova uses it on instance disks: qemu_img_info (with --force-share, under
    nova's limits) of the running guest's disk; convert_image of a disk chain (a raw base as
    nova's image cache keeps it, the instance's qcow2 overlay) to a standalone qcow2 and to raw;
    _rebase_with_qemu_img's safe rebases (onto no backing file, onto another base) and cinder's
    unsafe `rebase -u` to a relative backing name (remotefs _rebase_img); disk.api.extend's
    `qemu-img resize`. Each result has the chain's content (`qemu-img compare`) and checks."""
    session.ensure_running()
    started = time.monotonic()
    live = qemu_img_info(session.disk)
    # The guest's disk is an overlay: on the cached base, or on an earlier disk after an
    # external snapshot.
    backing = live.get("full-backing-filename") or backing_of(live)
    if live.get("format") != "qcow2" or not backing or not os.path.exists(backing):
        raise ScenarioFailure(
            f"qemu-img info of the running guest's disk: format {live.get('format')!r}, "
            f"backing file {backing!r}; expected a qcow2 overlay on an existing file"
        )
    work = path("image-ops")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    base, overlay = os.path.join(work, "base.raw"), os.path.join(work, "disk.qcow2")
    size = IMAGE_MIB * MIB
    run(["qemu-img", "create", "-q", "-f", "raw", base, str(size)])
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 8M", base])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 4M 8M", overlay])
    expect_info(qemu_img_info(overlay), overlay, "qcow2", backing=base, size=size)

    flat = os.path.join(work, "flat.qcow2")
    mode = convert_image(overlay, flat, "qcow2", "qcow2")
    expect_info(qemu_img_info(flat), flat, "qcow2", size=size)
    check(flat)
    compare(overlay, flat, "qcow2", "qcow2", "the chain converted to a standalone qcow2 differs")
    raw = os.path.join(work, "flat.raw")
    convert_image(overlay, raw, "qcow2", "raw")
    expect_info(qemu_img_info(raw), raw, "raw", size=size)
    compare(overlay, raw, "qcow2", "raw", "the chain converted to raw differs")

    # nova's _rebase_with_qemu_img(path, None): onto no backing file, which copies the base in.
    alone = os.path.join(work, "alone.qcow2")
    shutil.copyfile(overlay, alone)
    run(["qemu-img", "rebase", "-b", "", alone])
    expect_info(qemu_img_info(alone), alone, "qcow2")
    check(alone)
    compare(overlay, alone, "qcow2", "qcow2", "the disk rebased onto no backing file differs")
    # _rebase_with_qemu_img(path, other): onto another base, with its format named (-F).
    other, moved = os.path.join(work, "other.raw"), os.path.join(work, "moved.qcow2")
    run(["qemu-img", "create", "-q", "-f", "raw", other, str(size)])
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 2M", other])
    shutil.copyfile(overlay, moved)
    run(["qemu-img", "rebase", "-b", other, "-F", qemu_img_info(other)["format"], moved])
    expect_info(qemu_img_info(moved), moved, "qcow2", backing=other)
    check(moved)
    compare(overlay, moved, "qcow2", "qcow2", "the disk rebased onto another base differs")
    # cinder's _rebase_img: `rebase -u` to the same base under a relative name; nothing is
    # copied, so the content stays only because the base is the same.
    renamed, relative = os.path.join(work, "renamed.qcow2"), "base-copy.raw"
    shutil.copyfile(base, os.path.join(work, relative))
    shutil.copyfile(overlay, renamed)
    run(["qemu-img", "rebase", "-u", "-b", relative, renamed, "-F", "raw"])
    info = qemu_img_info(renamed)
    expect_info(info, renamed, "qcow2", backing=relative)
    if info.get("full-backing-filename") != os.path.join(work, relative):
        raise ScenarioFailure(
            f"the relative backing file resolves to {info.get('full-backing-filename')!r}"
        )
    compare(overlay, renamed, "qcow2", "qcow2", "the disk after an unsafe rebase differs")

    # nova.virt.disk.api.extend: `qemu-img resize -f qcow2 PATH BYTES`.
    grown = size + ROOT_GROW_MIB * MIB
    run(["qemu-img", "resize", "-f", "qcow2", flat, str(grown)])
    expect_info(qemu_img_info(flat), flat, "qcow2", size=grown)
    check(flat)
    compare(overlay, flat, "qcow2", "qcow2", "the resized image differs")
    session.wait_alive()
    return {"cache_mode": mode, "ops_s": round(time.monotonic() - started, 2)}


# --- a cold snapshot ---------------------------------------------------------------------------


def cold_snapshot(session):
    """nova's snapshot() for a guest that is not live-snapshotted: suspend (a managed save),
    snapshot_extract (extract_snapshot: convert_image of the active disk's chain to qcow2),
    then _resume_guest_after_snapshot (guest.launch: the domain started from its save image).
    The guest beats on with the same boot; the image checks and holds the disk's content."""
    dom = session.ensure_running(filled=True)
    session.wait_alive()
    beat, boot_id = session.console.last_heartbeat()
    offset = session.console.size()
    (image,) = fresh(path("cold-snapshot.qcow2"))
    started = time.monotonic()
    dom.managedSave(0)  # nova's suspend(): guest.save_memory_state()
    if dom.isActive() or dom.hasManagedSaveImage(0) != 1:
        raise ScenarioFailure("the domain is not shut off with a managed save image after suspend")
    try:
        source_format = qemu_img_info(session.disk)["format"]
        extract_started = time.monotonic()
        mode = convert_image(session.disk, image, source_format, "qcow2")
        extract_s = time.monotonic() - extract_started
        # Compared before the guest runs again: the disk is the snapshot's source, unchanged.
        compare(session.disk, image, source_format, "qcow2", "the snapshot differs from the disk")
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            dom.createWithFlags(0)
        raise
    dom.createWithFlags(0)  # guest.launch(pause=False)
    resumed = session.console.wait_heartbeat_after(beat, boot_id, offset, session.boot_timeout)
    total_s = time.monotonic() - started
    if READY_RE.search(session.console.text(offset)):
        raise ScenarioFailure("the guest booted again instead of resuming after the snapshot")
    expect_state(dom, "running")
    if dom.hasManagedSaveImage(0) != 0:
        raise ScenarioFailure("the managed save image is still there after the resume")
    info = qemu_img_info(image)
    expect_info(info, image, "qcow2", size=qemu_img_info(session.disk)["virtual-size"])
    check(image)
    return {
        "cache_mode": mode,
        "extract_s": round(extract_s, 2),
        "total_s": round(total_s, 2),
        "beat_before": beat,
        "beat_after": resumed,
    }


# --- extending disks --------------------------------------------------------------------------


def _marker(session, pattern, offset, what):
    return session.console.wait_for(re.compile(pattern), offset, session.job_timeout, what)


def _attach(session, dom, xml, target, offset):
    """nova's attach_volume: guest.attach_device(persistent=True, live=True); returns the size
    in sectors the guest reports for the disk."""
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
    if dom.isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    dom.attachDeviceFlags(xml, flags)
    added = _marker(
        session,
        rf"HVGATE-DISK-ADDED {target} size=(\d+)",
        offset,
        f"the guest's report of {target}",
    )
    return int(added.group(1))


def volume_extend(session):
    """Extending an attached volume as nova's extend_volume does for a file volume (NFS: the
    volume driver leaves it to libvirt): guest.get_block_device(dev).resize(bytes), which is
    virDomainBlockResize with VIR_DOMAIN_BLOCK_RESIZE_BYTES. The guest must see the new size;
    then the volume is detached with nova's retries."""
    dom = session.ensure_running()
    (volume,) = fresh(path("volume.raw"))
    run(["qemu-img", "create", "-q", "-f", "raw", volume, f"{VOLUME_MIB}M"])
    volume_id = str(uuid.uuid4())
    alias = "ua-" + volume_id  # nova's make_libvirt_device_alias
    xml = disk_xml(volume, "vdb", fmt="raw", serial=volume_id, alias=alias)
    before = _attach(session, dom, xml, "vdb", session.console.size())
    if before != VOLUME_MIB * MIB // SECTOR:
        raise ScenarioFailure(
            f"the guest sees vdb with {before} sectors, expected {VOLUME_MIB * MIB // SECTOR}"
        )
    new_size = EXTENDED_MIB * MIB
    offset = session.console.size()
    started = time.monotonic()
    dom.blockResize("vdb", new_size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    resized = _marker(
        session, r"HVGATE-DISK-RESIZED vdb size=(\d+)", offset, "the guest's report of vdb resized"
    )
    seen_s = time.monotonic() - started
    if int(resized.group(1)) != new_size // SECTOR:
        raise ScenarioFailure(
            f"the guest sees vdb with {resized.group(1)} sectors after the resize to "
            f"{new_size} bytes, expected {new_size // SECTOR}"
        )
    capacity = dom.blockInfo("vdb", 0)[0]
    if capacity != new_size:
        raise ScenarioFailure(f"libvirt reports vdb's capacity {capacity}, expected {new_size}")
    if os.path.getsize(volume) != new_size:
        raise ScenarioFailure(
            f"the volume file has {os.path.getsize(volume)} bytes after the resize, "
            f"expected {new_size}"
        )
    offset = session.console.size()
    attempts = detach_with_retry(session, dom, xml, volume, "vdb")
    _marker(session, "HVGATE-DISK-REMOVED vdb", offset, "the guest's report that vdb is gone")
    session.wait_alive()
    return {
        "resize_seen_s": round(seen_s, 2),
        "sectors": int(resized.group(1)),
        "attempts": attempts,
    }


def root_resize(session):
    """A larger root disk, as nova's resize does it: the guest powered off, the disk grown
    offline (nova.virt.disk.api.extend: can_resize_image, then `qemu-img resize -f qcow2 PATH
    BYTES`), the guest started again; it must see the larger vda."""
    dom = session.ensure_running()
    before = qemu_img_info(session.disk)
    old_size = before["virtual-size"]
    new_size = old_size + ROOT_GROW_MIB * MIB
    # nova's power_off ends in destroy when the guest does not shut down (this one has no ACPI
    # shutdown handling).
    dom.destroy()
    expect_state(dom, "shut off")
    run(["qemu-img", "resize", "-f", "qcow2", session.disk, str(new_size)])
    expect_info(
        qemu_img_info(session.disk),
        session.disk,
        before["format"],
        backing=backing_of(before),
        size=new_size,
    )
    offset = session.console.size()
    started = time.monotonic()
    dom.create()
    ready = session.console.wait_for(
        READY_RE, offset, session.boot_timeout, "the ready marker after the root disk's resize"
    )
    session.boot_id = ready.group(1)
    boot_s = time.monotonic() - started
    present = re.search(r"HVGATE-DISK-PRESENT vda size=(\d+)", session.console.text(offset))
    if not present:
        raise ScenarioFailure("the guest reported no vda at boot after the resize")
    if int(present.group(1)) != new_size // SECTOR:
        raise ScenarioFailure(
            f"the guest sees vda with {present.group(1)} sectors after the resize to "
            f"{new_size} bytes, expected {new_size // SECTOR}"
        )
    session.wait_alive()
    return {"boot_s": round(boot_s, 2), "sectors": int(present.group(1))}


# --- detaching with nova's retries -------------------------------------------------------------


def detach_limits():
    """(timeout, attempts): nova's defaults, unless a test lowered them."""
    timeout = float(os.environ.get(DETACH_TIMEOUT_ENV) or DETACH_TIMEOUT)
    attempts = int(os.environ.get(DETACH_ATTEMPTS_ENV) or DETACH_ATTEMPTS)
    return timeout, attempts


def _listed(dom, source, flags=0):
    return f"'{source}'" in dom.XMLDesc(flags)


def _missing(exc):
    """nova's _detach_sync: the device is already gone (DeviceNotFound)."""
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    if code == getattr(libvirt, "VIR_ERR_DEVICE_MISSING", None):
        return True
    return code == getattr(libvirt, "VIR_ERR_OPERATION_FAILED", None) and "not found" in str(exc)


def detach_with_retry(session, dom, xml, source, target):
    """nova's _detach_with_retry: detach from the persistent config (once; it is synchronous),
    then from the live domain: each attempt waits device_detach_timeout for libvirt's
    device-removed (or removal-failed) event, then looks whether the disk is still there, up to
    device_detach_attempts times. Returns the live attempts it took (0: not live)."""
    timeout, attempts = detach_limits()
    in_config = dom.isPersistent() and _listed(dom, source, libvirt.VIR_DOMAIN_XML_INACTIVE)
    live = dom.isActive() and _listed(dom, source)
    if not in_config and not live:
        raise ScenarioFailure(f"{target} is neither in the live nor in the persistent config")
    if in_config:
        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        if _listed(dom, source, libvirt.VIR_DOMAIN_XML_INACTIVE):
            raise ScenarioFailure(f"{target} is still in the persistent config after its detach")
    if not live:
        return 0
    alias = re.search(r"<alias name='([^']+)'/>", xml).group(1)
    seen = {}
    arrived = threading.Event()

    def removed(conn, domain, device, opaque):
        if device == alias:
            seen["event"] = opaque
            arrived.set()

    callbacks = [
        session.conn.domainEventRegisterAny(dom, event, removed, name)
        for event, name in (
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "removed"),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, "removal-failed"),
        )
    ]
    paused = False
    try:
        if os.environ.get(DETACH_FAULT_ENV) == "paused":
            dom.suspend()
            paused = True
        for attempt in range(1, attempts + 1):
            arrived.clear()
            try:
                dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                # nova waits on when QEMU says an earlier request is still under way, and is
                # done when the device is gone already.
                if _missing(exc) and not _listed(dom, source):
                    return attempt
                if "already in the process of unplug" not in str(exc):
                    raise
            arrived.wait(timeout)
            if seen.get("event") == "removal-failed":
                raise ScenarioFailure(
                    f"libvirt reported the removal of {target} failed (attempt {attempt})"
                )
            if not _listed(dom, source):
                return attempt
        raise ScenarioFailure(
            f"{target} is still attached after {attempts} detach attempts, each waiting "
            f"{timeout:.0f} s for libvirt's device-removed event (nova's device_detach_attempts "
            "and device_detach_timeout)"
        )
    finally:
        for callback in callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                session.conn.domainEventDeregisterAny(callback)
        if paused:
            with contextlib.suppress(libvirt.libvirtError):
                dom.resume()


def detach(session):
    """nova's detach_volume (_detach_with_retry) of a volume attached as nova attaches one
    (persistent and live), first while the guest leaves it idle, then while the guest writes
    to it without pause; the guest must report it gone each time, and beat on."""
    dom = session.ensure_running()
    details = {}
    for label, serial in (("idle", None), ("load", WRITE_SERIAL)):
        (volume,) = fresh(path(f"detach-{label}.qcow2"))
        run(["qemu-img", "create", "-q", "-f", "qcow2", volume, f"{VOLUME_MIB}M"])
        volume_id = str(uuid.uuid4())
        xml = disk_xml(volume, "vdb", serial=serial or volume_id, alias="ua-" + volume_id)
        offset = session.console.size()
        _attach(session, dom, xml, "vdb", offset)
        if serial:
            _marker(
                session,
                f"HVGATE-DISK-WRITES vdb {LOAD_PASSES}",
                offset,
                f"the guest's report of {LOAD_PASSES} writes to vdb",
            )
        offset = session.console.size()
        started = time.monotonic()
        details[f"attempts_{label}"] = detach_with_retry(session, dom, xml, volume, "vdb")
        details[f"detach_{label}_s"] = round(time.monotonic() - started, 2)
        if serial:
            stopped = _marker(
                session,
                r"HVGATE-DISK-WRITER-STOPPED vdb (\d+)",
                offset,
                "the guest's report that its writes to vdb stopped",
            )
            details["writes"] = int(stopped.group(1))
        _marker(session, "HVGATE-DISK-REMOVED vdb", offset, "the guest's report that vdb is gone")
        check(volume)
    session.wait_alive()
    return details


SCENARIOS = {
    "image-ops": image_ops,
    "cold-snapshot": cold_snapshot,
    "volume-extend": volume_extend,
    "root-resize": root_resize,
    "detach": detach,
}
