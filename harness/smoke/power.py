"""Power operations as nova's libvirt driver does them: hard reboot, power off (clean shutdown
by the ACPI power button, then destroy) and on, rescue and unrescue.

Each function names the nova function it mirrors (nova/virt/libvirt/driver.py and guest.py).
"""

import os
import re
import shutil
import time

import libvirt

from .guest import (
    CMDLINE,
    GUEST_DIR,
    READY_RE,
    RESCUE_CMDLINE,
    ScenarioFailure,
    path,
    run,
)

# nova's [DEFAULT] shutdown_timeout and [compute] shutdown_retry_interval, the defaults the
# compute manager passes to power_off.
SHUTDOWN_TIMEOUT = 60
RETRY_INTERVAL = 10
# The states nova's _clean_shutdown takes for shut down (power_state SHUTDOWN and CRASHED).
SHUTDOWN_STATES = (
    libvirt.VIR_DOMAIN_SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED,
)
# Guest.delete_configuration's flags (no vTPM, NVRAM not kept).
UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
# nova's _hard_reboot polls the power state every 0.5 s until the guest runs.
RUNNING_POLL = 0.5

# What images/guest/init prints before its ready marker, and on the power button.
CMDLINE_RE = re.compile(r"HVGATE-CMDLINE (.*)")
DISK_HEAD_RE = re.compile(r"HVGATE-DISK-HEAD (\S+) (\S*)")
ACPI_RE = re.compile(r"HVGATE-ACPI (\S+)")
POWEROFF_RE = re.compile(r"HVGATE-POWEROFF boot=(\S+)")
# The first bytes of the instance's disk (the session fills it with 0x5A) and of an empty one.
FILLED_HEAD = "5a5a5a5a"
EMPTY_HEAD = "00000000"


def _booted(session, offset, old_boot, what):
    """Waits for the ready marker of a new boot after offset; returns what the guest reported
    before it: {"boot", "cmdline", "disks": {name: first bytes}}."""
    match = session.console.wait_for(READY_RE, offset, session.boot_timeout, what)
    if match.group(1) == old_boot:
        raise ScenarioFailure(f"{what} carries the old boot id: the guest did not boot again")
    text = session.console.text(offset)[: match.end()]
    cmdlines = CMDLINE_RE.findall(text)
    session.boot_id = match.group(1)
    return {
        "boot": match.group(1),
        "cmdline": cmdlines[-1] if cmdlines else "",
        "disks": dict(DISK_HEAD_RE.findall(text)),
    }


def _expect_disks(report, expected, when):
    """The guest saw exactly these disks, each starting with these bytes."""
    if report["disks"] != expected:
        raise ScenarioFailure(
            f"{when} the guest saw the disks {report['disks']} (name: first bytes), "
            f"expected {expected}"
        )


def _wait_running(dom, timeout):
    """nova's _wait_for_reboot: the power state, every 0.5 s, until the domain runs."""
    deadline = time.monotonic() + timeout
    while dom.info()[0] != libvirt.VIR_DOMAIN_RUNNING:
        if time.monotonic() > deadline:
            raise ScenarioFailure(f"the domain was not running within {timeout:.0f} s of start")
        time.sleep(RUNNING_POLL)


def _destroy(dom):
    """nova's _destroy: Guest.poweroff (virDomainDestroy) of a domain that runs."""
    if dom.isActive():
        dom.destroy()


def hard_reboot_domain(session, dom):
    """nova's _hard_reboot: destroy() (poweroff, then undefine with delete_configuration's
    flags), the domain XML generated again, then _create_guest: define it and launch it
    (createWithFlags(0): nova waits for no network event here). Returns the new domain."""
    xml = session.domain_xml(session.disk, uuid=dom.UUIDString())
    _destroy(dom)
    dom.undefineFlags(UNDEFINE_FLAGS)
    dom = session.conn.defineXML(xml)
    dom.createWithFlags(0)
    _wait_running(dom, session.boot_timeout)
    return dom


def _after_start(session, dom, offset, old_boot, what):
    """The guest booted again from the instance's own disk, and beats."""
    report = _booted(session, offset, old_boot, what)
    _expect_disks(report, {"vda": FILLED_HEAD}, f"after {what}")
    if not dom.isPersistent() or session.disk not in dom.XMLDesc(0):
        raise ScenarioFailure(f"after {what} the domain is not defined on the instance's disk")
    session.wait_alive()
    return report


def hard_reboot(session):
    """nova's LibvirtDriver._hard_reboot (reboot_type HARD): the guest boots again, with a new
    boot id, on the same disk."""
    dom = session.ensure_running(filled=True)
    session.wait_alive()
    offset = session.console.size()
    started = time.monotonic()
    dom = hard_reboot_domain(session, dom)
    _after_start(session, dom, offset, session.boot_id, "the hard reboot")
    return {"hard_reboot_s": round(time.monotonic() - started, 2)}


def clean_shutdown(dom, timeout=SHUTDOWN_TIMEOUT, retry_interval=RETRY_INTERVAL, sleep=time.sleep):
    """nova's LibvirtDriver._clean_shutdown: Guest.shutdown (virDomainShutdown: the ACPI power
    button, the guest having no agent), then the power state once a second for `timeout` s,
    pressing again every `retry_interval` s (nova's countdown: at 10, 21, 32, ... s). Returns
    (shut down, seconds, presses)."""
    if dom.info()[0] in SHUTDOWN_STATES:
        return True, 0, 0
    presses = 0
    try:
        dom.shutdown()
        presses += 1
    except libvirt.libvirtError:
        pass  # nova ignores it, and presses again later
    countdown = retry_interval
    for second in range(timeout):
        if dom.info()[0] in SHUTDOWN_STATES:
            return True, second, presses
        if countdown == 0:
            countdown = retry_interval
            try:
                dom.shutdown()
                presses += 1
            except libvirt.libvirtError:
                continue  # nova: it may just have shut down; look again at once
        else:
            countdown -= 1
        sleep(1)
    return False, timeout, presses


def _acpi_of_boot(session):
    """What images/guest/init said about the power button before the current boot's ready
    marker (None if it said nothing)."""
    text = session.console.text()
    ready = text.find(f"HVGATE-READY boot={session.boot_id}")
    said = ACPI_RE.findall(text[: max(ready, 0)])
    return said[-1] if said else None


def power_off_on(session):
    """nova's LibvirtDriver.power_off with a clean shutdown (_clean_shutdown, then _destroy),
    then power_on (which is _hard_reboot). The guest, which powers off on the ACPI button,
    must shut down by itself within nova's 60 s: if nova has to destroy it, the clean shutdown
    failed, and so does the scenario (the instance still ends up off, as nova reports it, but
    the guest lost its shutdown)."""
    dom = session.ensure_running(filled=True)
    session.wait_alive()
    listener = _acpi_of_boot(session)
    if listener in (None, "none"):
        # The guest image's fault (no button driver or input device), not libvirt's or QEMU's.
        raise RuntimeError(f"the guest listens to no ACPI power button (HVGATE-ACPI {listener})")
    offset = session.console.size()
    started = time.monotonic()
    clean, seconds, presses = clean_shutdown(dom)
    shutdown_s = time.monotonic() - started
    _destroy(dom)
    state, reason = dom.state()
    if state != libvirt.VIR_DOMAIN_SHUTOFF:
        raise ScenarioFailure(f"the domain is in state {state}, not shut off, after power off")
    marker = POWEROFF_RE.search(session.console.text(offset))
    if not clean:
        raise ScenarioFailure(
            f"the guest did not shut down within {SHUTDOWN_TIMEOUT} s of the ACPI power button "
            f"(pressed {presses} times, every {RETRY_INTERVAL + 1} s); nova then destroys it. "
            + (
                "The guest had printed its power-off marker"
                if marker
                else "The guest never reacted to the button"
            )
        )
    if reason != libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN:
        raise ScenarioFailure(f"the domain is shut off for reason {reason}, not a guest shutdown")
    if not marker or marker.group(1) != session.boot_id:
        raise ScenarioFailure("the domain shut off without the guest's power-off marker")
    old_boot = session.boot_id
    offset = session.console.size()
    started = time.monotonic()
    dom = hard_reboot_domain(session, dom)
    _after_start(session, dom, offset, old_boot, "power on")
    return {
        "clean": clean,
        "shutdown_s": round(shutdown_s, 2),
        "shutdown_polls": seconds,
        "presses": presses,
        "power_on_s": round(time.monotonic() - started, 2),
    }


def _remove_rescue_files():
    """unrescue's clean-up: unrescue.xml and every *.rescue file of the instance."""
    for name in ("unrescue.xml", "disk.rescue", "kernel.rescue", "ramdisk.rescue"):
        if os.path.exists(path(name)):
            os.unlink(path(name))


def rescue_unrescue(session):
    """nova's LibvirtDriver.rescue, the legacy mode (no hw_rescue_device/hw_rescue_bus on the
    image): the running domain's XML kept in unrescue.xml; a rescue disk from the instance's
    image (disk.rescue, an overlay on the cached base) as vda with the instance's disk as vdb,
    the image's kernel and ramdisk as kernel.rescue and ramdisk.rescue; _destroy, then
    _create_guest (define, launch). Then unrescue: _destroy, define unrescue.xml, launch,
    remove the rescue files. The guest must boot from the rescue disk seeing its own disk
    second, then from its own disk again."""
    dom = session.ensure_running(filled=True)
    session.wait_alive()
    _remove_rescue_files()
    unrescue_xml = dom.XMLDesc(0)
    with open(path("unrescue.xml"), "w") as handle:
        handle.write(unrescue_xml)
    rescue_disk, kernel, ramdisk = (
        path(n) for n in ("disk.rescue", "kernel.rescue", "ramdisk.rescue")
    )
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", session.base, rescue_disk])
    shutil.copyfile(os.path.join(GUEST_DIR, "vmlinuz"), kernel)
    shutil.copyfile(os.path.join(GUEST_DIR, "initramfs.img"), ramdisk)
    xml = session.domain_xml(
        rescue_disk,
        uuid=dom.UUIDString(),
        kernel=kernel,
        initrd=ramdisk,
        cmdline=f"{CMDLINE} {RESCUE_CMDLINE}",
        extra_disks=[(session.disk, "vdb")],
    )
    offset = session.console.size()
    started = time.monotonic()
    _destroy(dom)
    dom = session.conn.defineXML(xml)
    dom.createWithFlags(0)
    report = _booted(session, offset, session.boot_id, "the rescue boot's ready marker")
    if RESCUE_CMDLINE not in report["cmdline"].split():
        raise ScenarioFailure(
            f"the rescue boot's kernel line is {report['cmdline']!r}, without {RESCUE_CMDLINE}"
        )
    _expect_disks(report, {"vda": EMPTY_HEAD, "vdb": FILLED_HEAD}, "in rescue")
    session.wait_alive()
    rescue_s = time.monotonic() - started

    with open(path("unrescue.xml")) as handle:
        xml = handle.read()
    offset = session.console.size()
    started = time.monotonic()
    _destroy(dom)
    dom = session.conn.defineXML(xml)
    dom.createWithFlags(0)
    _remove_rescue_files()
    report = _after_start(session, dom, offset, session.boot_id, "unrescue")
    if RESCUE_CMDLINE in report["cmdline"].split():
        raise ScenarioFailure("after unrescue the guest still boots the rescue kernel line")
    if "disk.rescue" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
        raise ScenarioFailure("after unrescue the domain's definition still has the rescue disk")
    return {"rescue_s": round(rescue_s, 2), "unrescue_s": round(time.monotonic() - started, 2)}


SCENARIOS = {
    "hard-reboot": hard_reboot,
    "power-off-on": power_off_on,
    "rescue-unrescue": rescue_unrescue,
}
