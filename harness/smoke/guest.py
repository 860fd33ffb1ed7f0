"""The guest as libvirt sees it: disks, domain XML, and the serial console the guest writes markers to."""

import json
import os
import re
import subprocess
import time

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


def domain_xml(accel, disk, console, memory_mib=256):
    # ACPI is needed for PCI hot-plug on the pc machine; append='on' keeps the console
    # file intact across managed-save restores.
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{GUEST_DIR}/vmlinuz</kernel>
    <initrd>{GUEST_DIR}/initramfs.img</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {disk_xml(disk, "vda")}
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
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


def fresh_disks():
    """A nova-like disk: an empty base image in a cache and the instance's overlay on it."""
    os.makedirs(path("cache"), exist_ok=True)
    base = path("cache", "base.qcow2")
    if not os.path.exists(base):
        run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
    disk = path("disk.qcow2")
    if os.path.exists(disk):
        os.unlink(disk)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk])
    return base, disk
