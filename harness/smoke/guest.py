"""The guest as libvirt sees it: disks, domain XML, and the serial console the guest writes markers to."""

import contextlib
import errno
import json
import mmap
import os
import re
import subprocess
import time
import uuid as uuid_module

GUEST_DIR = "/opt/hvgate/guest"
WORK_DIR = "/var/lib/hvgate"
DOMAIN = "hvgate-guest"

READY_RE = re.compile(r"HVGATE-READY boot=(\S+)")
HEARTBEAT_RE = re.compile(r"HVGATE-HEARTBEAT (\d+) boot=(\S+)")
BEATS_PER_SECOND = 4  # images/guest/init beats every 250 ms


class ScenarioFailure(Exception):
    """libvirt or QEMU did not behave as the scenario requires."""


def run(argv, timeout=120.0):
    """Runs a command; a non-zero exit is a scenario failure naming the command and its output."""
    try:
        # Python 3.6's text mode: no capture_output or text, and the C locale's ASCII unless
        # told otherwise (a tool's message may not be ASCII).
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ScenarioFailure(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ScenarioFailure(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}"
        )
    return done.stdout


def qemu_img_info(path):
    return json.loads(run(["qemu-img", "info", "-U", "--output=json", path]))


def path(*names):
    return os.path.join(WORK_DIR, *names)


class Console:
    """The file-backed serial console; offsets let a wait look only at what came after an action."""

    def __init__(self, filename):
        self.filename = filename

    def size(self):
        try:
            return os.path.getsize(self.filename)
        except FileNotFoundError:
            return 0

    def text(self, offset=0):
        """The complete lines written after offset. QEMU writes the serial port a byte at a
        time, so the last line may still be on its way: it is left out until its newline
        comes, or a marker would be read with half its boot id."""
        try:
            with open(self.filename, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return ""
        return data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")

    def wait_for(self, pattern, offset, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.text(offset))
            if match:
                return match
            if time.monotonic() > deadline:
                raise ScenarioFailure(
                    f"{what} did not appear on the console within {timeout:.0f} s"
                )
            time.sleep(0.05)

    def heartbeats(self, offset=0):
        """(count, boot id) of every heartbeat after offset."""
        return [(int(m.group(1)), m.group(2)) for m in HEARTBEAT_RE.finditer(self.text(offset))]

    def last_heartbeat(self):
        beats = self.heartbeats()
        if not beats:
            raise ScenarioFailure("the guest has printed no heartbeat")
        return beats[-1]

    def wait_heartbeat_after(self, count, boot_id, offset, timeout):
        deadline = time.monotonic() + timeout
        while True:
            # Looked at once more after the deadline: a runner held up past it (a loaded host)
            # must not miss beats that came in the meantime.
            past = time.monotonic() > deadline
            for beat, boot in self.heartbeats(offset):
                if boot == boot_id and beat > count:
                    return beat
            if past:
                break
            time.sleep(0.05)
        raise ScenarioFailure(
            f"no heartbeat after #{count} of boot {boot_id[:8]} within {timeout:.0f} s"
        )

    def tail(self, lines=15):
        """The last lines, the one still being written included (evidence, not markers)."""
        try:
            with open(self.filename, "rb") as handle:
                handle.seek(max(0, self.size() - 16384))
                return handle.read().decode("utf-8", "replace").splitlines()[-lines:]
        except FileNotFoundError:
            return []


def disk_xml(filename, target, fmt="qcow2", serial=None, alias=None):
    # The guest reads the serial (see images/guest/init); a user alias (ua-...) names the
    # device in libvirt's events.
    extra = (f"<serial>{serial}</serial>" if serial else "") + (
        f"<alias name='{alias}'/>" if alias else ""
    )
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{filename}'/><target dev='{target}' bus='virtio'/>{extra}</disk>"
    )


# What the guest's domain mirrors of nova's libvirt driver (nova/virt/libvirt/driver.py,
# _get_guest_config) as devstack configures it for its gate with virt_type=qemu:
# [libvirt] cpu_mode=custom, cpu_models=Nehalem (devstack's stackrc, LIBVIRT_CPU_MODE/MODEL);
# the machine type of libvirt_utils.get_default_machine_type for x86_64 ("pc": nova's default,
# q35 only when [libvirt] hw_machine_type says so); mem_stats_period_seconds=10 and
# rng_dev_path=/dev/urandom (nova's defaults).
NOVA_CPU_MODEL = "Nehalem"
NOVA_MACHINE_TYPE = "pc"
NOVA_MEM_STATS_PERIOD = 10
NOVA_RNG_PATH = "/dev/urandom"
# nova's kernel command line for an image with a kernel (_set_guest_for_inst_kernel): root
# device and consoles, plus no_timer_check under virt_type=qemu. Only ttyS0 of nova's consoles:
# the last console= is the guest's /dev/console, where /init prints its markers. The rest is
# the guest's own: quiet; a panic stops the guest instead of rebooting it; no crypto self-tests
# at boot (0.17 s). Interrupts stay as nova's guests have them: ACPI's PCI links and MSI-X for
# the virtio devices (acpi=noirq would save about 0.1 s of AML per device under TCG, but it
# leaves the kernel without MSI, and the virtio devices on legacy interrupts). The domain
# definition stays nova's.
CMDLINE = "root=/dev/vda console=ttyS0 no_timer_check quiet loglevel=3 panic=-1 cryptomgr.notests"
# Added to the rescue boot's command line, so that the guest shows which kernel line it got.
RESCUE_CMDLINE = "hvgate.rescue=1"
# Test only (an override template sets it): the guest ignores the ACPI power button, so that a
# clean shutdown cannot complete (images/overrides/fault-acpi.Dockerfile.j2).
IGNORE_ACPI_ENV = "HVGATE_FAULT_GUEST_IGNORES_ACPI"
IGNORE_ACPI_CMDLINE = "hvgate.acpi=ignore"
# Elements of nova's XML that old libvirt or QEMU does not know, with the versions that do
# (libvirt's formatdomain documentation; QEMU's device).
VMCOREINFO_SINCE = {"libvirt": (4, 4, 0), "qemu": (2, 11, 0)}
FREE_PAGE_REPORTING_SINCE = {"libvirt": (6, 9, 0), "qemu": (5, 1, 0)}


def has(versions, since):
    """Whether a cell of these versions ({"libvirt": (9, 0, 0), "qemu": (7, 2, 0)}) has what
    `since` names; unknown versions have nothing optional."""
    versions = versions or {}
    return all(versions.get(part, (0, 0, 0)) >= lowest for part, lowest in since.items())


def domain_xml(
    accel,
    disk,
    console,
    memory_mib=256,
    versions=None,
    uuid=None,
    kernel=None,
    initrd=None,
    cmdline=CMDLINE,
    extra_disks=(),
    name=DOMAIN,
):
    """nova's domain for a guest that boots its image's kernel, with the serial console in a
    file instead of nova's pty with a virtlogd log (append='on' keeps the file across restores).
    versions: the cell's libvirt and QEMU, for the elements older ones do not know. extra_disks:
    (file, target) after the root disk, as a legacy rescue attaches the original disk."""
    kvm = accel == "kvm"
    if os.environ.get(IGNORE_ACPI_ENV):
        cmdline += " " + IGNORE_ACPI_CMDLINE
    uuid = uuid or str(uuid_module.uuid4())
    # _set_features: ACPI (which PCI hot-plug on pc needs) and APIC; vmcoreinfo on x86.
    features = "<acpi/><apic/>" + ("<vmcoreinfo/>" if has(versions, VMCOREINFO_SINCE) else "")
    # _set_clock: UTC; the timers only under KVM (_set_kvm_timers).
    timers = (
        "<timer name='pit' tickpolicy='delay'/><timer name='rtc' tickpolicy='catchup'/>"
        "<timer name='hpet' present='no'/>"
        if kvm
        else ""
    )
    # _guest_add_memory_balloon and LibvirtConfigMemoryBalloon.
    balloon = "autodeflate='on'" + (
        " freePageReporting='on'" if has(versions, FREE_PAGE_REPORTING_SINCE) else ""
    )
    disks = "\n    ".join(
        [disk_xml(disk, "vda")] + [disk_xml(name, target) for name, target in extra_disks]
    )
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>OpenStack Foundation</entry>
      <entry name='product'>OpenStack Nova</entry>
      <entry name='serial'>{uuid}</entry>
      <entry name='uuid'>{uuid}</entry>
      <entry name='family'>Virtual Machine</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='{NOVA_MACHINE_TYPE}'>hvm</type>
    <kernel>{kernel or GUEST_DIR + "/vmlinuz"}</kernel>
    <initrd>{initrd or GUEST_DIR + "/initramfs.img"}</initrd>
    <cmdline>{cmdline}</cmdline>
    <smbios mode='sysinfo'/>
  </os>
  <features>{features}</features>
  <cpu mode='custom' match='exact'><model>{NOVA_CPU_MODEL}</model></cpu>
  <clock offset='utc'>{timers}</clock>
  <devices>
    {disks}
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>{NOVA_RNG_PATH}</backend></rng>
    <controller type='usb' index='0' model='none'/>
    <memballoon model='virtio' {balloon}><stats period='{NOVA_MEM_STATS_PERIOD}'/></memballoon>
  </devices>
</domain>"""


def fill(image, mib, pattern=0x5A):
    """Writes mib MiB of data at the start of a qcow2 image that no QEMU has open."""
    run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 {mib}M", image])


def backing_chain(image):
    """The files of an image's backing chain, the image first (read while QEMU may hold it)."""
    chain = json.loads(run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", image]))
    return [entry["filename"] for entry in chain]


def check_chain(image):
    """`qemu-img check` on every image of the chain; returns the files checked."""
    files = backing_chain(image)
    for name in files:
        run(["qemu-img", "check", "-U", "-q", name])
    return files


def fresh_disks(disk_name="disk.qcow2"):
    """A nova-like disk: an empty base image in a cache and the instance's overlay on it."""
    os.makedirs(path("cache"), exist_ok=True)
    base = path("cache", "base.qcow2")
    if not os.path.exists(base):
        run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
    disk = path(disk_name)
    if os.path.exists(disk):
        os.unlink(disk)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk])
    return base, disk


def supports_direct_io(directory):
    """nova.privsep.utils.supports_direct_io: can a file there be written with O_DIRECT?"""
    if not hasattr(os, "O_DIRECT"):
        return False
    test = os.path.join(directory, f".directio.test.{uuid_module.uuid4().hex[:8]}")
    fd = None
    try:
        fd = os.open(test, os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
        block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        block.write(b"x" * 4096)
        os.write(fd, block)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return False
        raise
    finally:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(test)


def cache_mode(directory):
    """The cache nova uses for a disk it writes or attaches there (disk_cachemode, and the target
    of convert_image): none, or writeback where O_DIRECT fails."""
    return "none" if supports_direct_io(directory) else "writeback"
