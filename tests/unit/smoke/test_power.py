"""The nova-like domain XML and the power scenarios (harness/smoke/power.py) against a fake
libvirt domain whose "guest" prints what images/guest/init would (the real ones run in
tests/integration/test_power.py)."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET

import pytest

from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

OLD = {"libvirt": (4, 0, 0), "qemu": (2, 11, 1)}  # Ubuntu 18.04
NEW = {"libvirt": (9, 0, 0), "qemu": (7, 2, 0)}  # Debian 12


# --- the domain XML ------------------------------------------------------------------------


def parse(text):
    return ET.fromstring(text)


def test_the_domain_is_nova_s_for_its_gate(smoke):
    root = parse(smoke.guest.domain_xml("tcg", "/w/disk.qcow2", "/w/console.log", versions=NEW))
    assert root.get("type") == "qemu"
    # devstack for virt_type=qemu: cpu_mode=custom, cpu_models=Nehalem
    cpu = root.find("cpu")
    assert (cpu.get("mode"), cpu.get("match"), cpu.findtext("model")) == (
        "custom",
        "exact",
        "Nehalem",
    )
    assert root.find("os/type").get("machine") == "pc"  # nova's x86_64 default
    assert "no_timer_check" in root.findtext("os/cmdline").split()
    # nova's line, then the guest's own (README: the guest's quiet boot in 2.2 s).
    assert root.findtext("os/cmdline").split()[:3] == [
        "root=/dev/vda",
        "console=ttyS0",
        "no_timer_check",
    ]
    assert root.findtext("os/cmdline").split()[3:] == [
        "quiet",
        "loglevel=3",
        "panic=-1",
        "cryptomgr.notests",
    ]
    assert [f.tag for f in root.find("features")] == ["acpi", "apic", "vmcoreinfo"]
    assert root.find("clock").get("offset") == "utc"
    assert list(root.find("clock")) == []  # timers only under KVM
    rng = root.find("devices/rng")
    assert rng.get("model") == "virtio"
    assert (rng.find("backend").get("model"), rng.findtext("backend")) == ("random", "/dev/urandom")
    balloon = root.find("devices/memballoon")
    assert balloon.attrib == {
        "model": "virtio",
        "autodeflate": "on",
        "freePageReporting": "on",
    }
    assert balloon.find("stats").get("period") == "10"
    usb = root.find("devices/controller")
    assert (usb.get("type"), usb.get("model")) == ("usb", "none")
    disk = root.find("devices/disk")
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    # The serial console stays a file the runner reads, kept across restores.
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").attrib == {"path": "/w/console.log", "append": "on"}
    assert root.findtext("memory") == "256"


def test_sysinfo_names_nova_and_the_domain_s_uuid(smoke):
    given = str(uuid.uuid4())
    root = parse(smoke.guest.domain_xml("tcg", "/d", "/c", uuid=given))
    assert root.findtext("uuid") == given
    entries = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert entries == {
        "manufacturer": "OpenStack Foundation",
        "product": "OpenStack Nova",
        "serial": given,
        "uuid": given,
        "family": "Virtual Machine",
    }
    assert root.find("os/smbios").get("mode") == "sysinfo"
    # Without a uuid each domain gets its own.
    assert uuid.UUID(parse(smoke.guest.domain_xml("tcg", "/d", "/c")).findtext("uuid"))


def test_old_libvirt_and_qemu_get_only_what_they_know(smoke):
    root = parse(smoke.guest.domain_xml("tcg", "/d", "/c", versions=OLD))
    assert [f.tag for f in root.find("features")] == ["acpi", "apic"]  # vmcoreinfo: 4.4
    assert "freePageReporting" not in root.find("devices/memballoon").attrib  # 6.9 and 5.1
    # Unknown versions: nothing optional.
    root = parse(smoke.guest.domain_xml("tcg", "/d", "/c"))
    assert root.find("features/vmcoreinfo") is None
    # One of the two too old is enough to leave it out.
    mixed = {"libvirt": (7, 0, 0), "qemu": (5, 0, 0)}
    assert (
        "freePageReporting"
        not in parse(smoke.guest.domain_xml("tcg", "/d", "/c", versions=mixed))
        .find("devices/memballoon")
        .attrib
    )


def test_kvm_gets_nova_s_kvm_timers(smoke):
    root = parse(smoke.guest.domain_xml("kvm", "/d", "/c", versions=NEW))
    assert root.get("type") == "kvm"
    timers = [t.attrib for t in root.find("clock")]
    assert timers == [
        {"name": "pit", "tickpolicy": "delay"},
        {"name": "rtc", "tickpolicy": "catchup"},
        {"name": "hpet", "present": "no"},
    ]


def test_a_rescue_domain_boots_its_own_kernel_with_the_disk_second(smoke):
    root = parse(
        smoke.guest.domain_xml(
            "tcg",
            "/w/disk.rescue",
            "/c",
            kernel="/w/kernel.rescue",
            initrd="/w/ramdisk.rescue",
            cmdline="x hvgate.rescue=1",
            extra_disks=[("/w/disk.qcow2", "vdb")],
        )
    )
    assert root.findtext("os/kernel") == "/w/kernel.rescue"
    assert root.findtext("os/initrd") == "/w/ramdisk.rescue"
    assert root.findtext("os/cmdline") == "x hvgate.rescue=1"
    disks = [(d.find("source").get("file"), d.find("target").get("dev")) for d in root.iter("disk")]
    assert disks == [("/w/disk.rescue", "vda"), ("/w/disk.qcow2", "vdb")]


def test_the_acpi_fault_switch_reaches_the_kernel_line(smoke, monkeypatch):
    monkeypatch.setenv(smoke.guest.IGNORE_ACPI_ENV, "1")
    line = parse(smoke.guest.domain_xml("tcg", "/d", "/c")).findtext("os/cmdline")
    assert line.endswith(" hvgate.acpi=ignore")


def test_the_session_reads_the_versions_once(smoke):
    class Conn:
        calls = 0

        def getLibVersion(self):
            Conn.calls += 1
            return 9000000

        def getVersion(self):
            return 7002000

    session = smoke.scenarios.Session(Conn(), "tcg", 5.0)
    assert session.versions() == {"libvirt": (9, 0, 0), "qemu": (7, 2, 0)}
    assert session.versions() is session.versions() and Conn.calls == 1
    assert "<vmcoreinfo/>" in session.domain_xml("/d")


# --- nova's clean shutdown -----------------------------------------------------------------


class Countdown:
    """A domain that shuts off `after` presses of the power button (never, if None)."""

    def __init__(self, smoke, after=None, refuse=0):
        self.libvirt = smoke.scenarios.libvirt
        self.after, self.refuse = after, refuse
        self.presses = 0
        self.off = False

    def info(self):
        return [self.libvirt.VIR_DOMAIN_SHUTOFF if self.off else self.libvirt.VIR_DOMAIN_RUNNING]

    def shutdown(self):
        if self.refuse:
            self.refuse -= 1
            raise self.libvirt.libvirtError("not now")
        self.presses += 1
        if self.after is not None and self.presses >= self.after:
            self.off = True


def test_a_clean_shutdown_on_the_first_press(smoke):
    slept = []
    assert smoke.power.clean_shutdown(Countdown(smoke, after=1), sleep=slept.append) == (
        True,
        0,
        1,
    )
    assert slept == []


def test_the_button_is_pressed_again_on_nova_s_schedule(smoke):
    dom, slept = Countdown(smoke), []
    presses = []

    def sleep(seconds):
        slept.append(seconds)
        presses.append(dom.presses)

    assert smoke.power.clean_shutdown(dom, sleep=sleep) == (False, 60, 6)
    assert slept == [1] * 60
    # Pressed at 0 s, then at seconds 10, 21, 32, 43 and 54 of the loop.
    pressed_at = [i for i in range(1, 60) if presses[i] > presses[i - 1]]
    assert pressed_at == [10, 21, 32, 43, 54]


def test_a_later_press_can_shut_it_down(smoke):
    assert smoke.power.clean_shutdown(Countdown(smoke, after=2), sleep=lambda s: None) == (
        True,
        11,
        2,
    )


def test_a_refused_press_is_ignored_as_nova_does(smoke):
    dom = Countdown(smoke, after=1, refuse=1)
    assert smoke.power.clean_shutdown(dom, sleep=lambda s: None) == (True, 11, 1)


def test_an_already_shut_off_domain_needs_no_press(smoke):
    dom = Countdown(smoke)
    dom.off = True
    assert smoke.power.clean_shutdown(dom) == (True, 0, 0)
    assert dom.presses == 0


# --- the scenarios against a fake guest ----------------------------------------------------


class Guest:
    """A libvirt domain whose guest prints images/guest/init's markers on the console file."""

    def __init__(self, libvirt, console, filled, hears_button=True, sees_second_disk=True):
        self.libvirt, self.console, self.filled = libvirt, console, filled
        self.hears_button, self.sees_second_disk = hears_button, sees_second_disk
        self.xml = None
        self.active = False
        self.persistent = True
        self.reason = 0
        self.boot = None
        self.calls = []

    def print(self, *lines):
        with open(self.console, "a") as handle:
            handle.write("".join(f"{line}\n" for line in lines))

    def UUIDString(self):
        return re.search(r"<uuid>(.*?)</uuid>", self.xml).group(1)

    def XMLDesc(self, flags):
        return self.xml

    def isActive(self):
        return self.active

    def isPersistent(self):
        return self.persistent

    def info(self):
        return [self.state()[0]]

    def state(self):
        if self.active:
            return [self.libvirt.VIR_DOMAIN_RUNNING, 1]
        return [self.libvirt.VIR_DOMAIN_SHUTOFF, self.reason]

    def createWithFlags(self, flags):
        assert not self.active
        self.calls.append("create")
        self.active = True
        self.boot = str(uuid.uuid4())
        root = ET.fromstring(self.xml)
        line = root.findtext("os/cmdline")
        files = [d.find("source").get("file") for d in root.iter("disk")]
        if not self.sees_second_disk:
            files = files[:1]
        names = [f"vd{chr(ord('a') + i)}" for i in range(len(files))]
        heads = ["5a5a5a5a" if f == self.filled else "00000000" for f in files]
        self.print(
            f"HVGATE-CMDLINE {line}",
            *(f"HVGATE-DISK-HEAD {n} {h}" for n, h in zip(names, heads, strict=True)),
            "HVGATE-ACPI " + ("ignored" if "hvgate.acpi=ignore" in line else "event0"),
            f"HVGATE-READY boot={self.boot} disks={','.join(names)}",
            f"HVGATE-HEARTBEAT 1 boot={self.boot}",
        )

    def shutdown(self):
        self.calls.append("shutdown")
        if self.hears_button and self.active:
            self.print(f"HVGATE-POWEROFF boot={self.boot}")
            self.active = False
            self.reason = self.libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN

    def destroy(self):
        self.calls.append("destroy")
        self.active = False
        self.reason = 2

    def undefineFlags(self, flags):
        self.calls.append(("undefine", flags))
        self.persistent = False


class Conn:
    def __init__(self, dom):
        self.dom = dom

    def isAlive(self):
        return 1

    def lookupByName(self, name):
        return self.dom

    def defineXML(self, xml):
        self.dom.calls.append("define")
        self.dom.xml = xml
        self.dom.persistent = True
        return self.dom

    def getLibVersion(self):
        return 9000000

    def getVersion(self):
        return 7002000


@pytest.fixture
def running(smoke, tmp_path, monkeypatch):
    """A session with a booted fake guest on a filled disk; returns (session, guest)."""
    monkeypatch.setattr(smoke.guest, "WORK_DIR", str(tmp_path))
    guest_dir = tmp_path / "guest"
    guest_dir.mkdir()
    (guest_dir / "vmlinuz").write_text("kernel")
    (guest_dir / "initramfs.img").write_text("initramfs")
    monkeypatch.setattr(smoke.power, "GUEST_DIR", str(guest_dir))
    commands = []
    monkeypatch.setattr(smoke.power, "run", commands.append)
    monkeypatch.setattr(smoke.power, "RUNNING_POLL", 0.01)

    def make(**kwargs):
        disk = str(tmp_path / "disk.qcow2")
        console = str(tmp_path / "console.log")
        dom = Guest(smoke.scenarios.libvirt, console, disk, **kwargs)
        session = smoke.scenarios.Session(Conn(dom), "tcg", 2.0)
        session.base, session.disk, session.filled = str(tmp_path / "base.qcow2"), disk, disk
        session.conn.defineXML(session.domain_xml(disk))
        dom.createWithFlags(0)
        session.boot_id = dom.boot
        session.wait_alive = lambda timeout=30.0: 1  # the fake guest beats once per boot
        dom.calls.clear()
        session.commands = commands
        return session, dom

    return make


def test_hard_reboot_destroys_undefines_defines_and_starts(smoke, running):
    session, dom = running()
    old_boot, old_uuid = session.boot_id, dom.UUIDString()
    details = smoke.power.hard_reboot(session)
    flags = smoke.power.UNDEFINE_FLAGS
    assert dom.calls == ["destroy", ("undefine", flags), "define", "create"]
    assert session.boot_id == dom.boot != old_boot
    assert dom.UUIDString() == old_uuid  # the instance's uuid, as nova's XML has
    assert details["hard_reboot_s"] >= 0


def test_a_hard_reboot_that_comes_back_on_another_disk_fails(smoke, running):
    session, dom = running()
    dom.filled = "/elsewhere"  # the guest's vda no longer starts with the data
    with pytest.raises(smoke.guest.ScenarioFailure, match="disks"):
        smoke.power.hard_reboot(session)


def test_power_off_on_shuts_down_cleanly_and_starts_again(smoke, running):
    session, dom = running()
    old_boot = session.boot_id
    details = smoke.power.power_off_on(session)
    assert dom.calls == [
        "shutdown",
        ("undefine", smoke.power.UNDEFINE_FLAGS),
        "define",
        "create",
    ]
    assert details["clean"] is True and details["presses"] == 1
    assert session.boot_id != old_boot


def test_a_guest_that_ignores_the_button_is_destroyed_and_fails(smoke, running, monkeypatch):
    session, dom = running(hears_button=False)
    monkeypatch.setattr(smoke.power, "SHUTDOWN_TIMEOUT", 3)
    monkeypatch.setattr(smoke.power, "RETRY_INTERVAL", 1)
    original = smoke.power.clean_shutdown

    def quick(d):
        return original(d, smoke.power.SHUTDOWN_TIMEOUT, smoke.power.RETRY_INTERVAL, lambda s: None)

    monkeypatch.setattr(smoke.power, "clean_shutdown", quick)
    with pytest.raises(smoke.guest.ScenarioFailure, match="never reacted to the button"):
        smoke.power.power_off_on(session)
    assert dom.calls[-1] == "destroy"  # nova's power_off destroys it then
    assert dom.calls.count("shutdown") == 2


def test_a_guest_without_a_button_listener_is_a_runner_error(smoke, running, tmp_path):
    session, dom = running()
    console = tmp_path / "console.log"
    console.write_text(console.read_text().replace("HVGATE-ACPI event0", "HVGATE-ACPI none"))
    with pytest.raises(RuntimeError, match="HVGATE-ACPI none"):
        smoke.power.power_off_on(session)
    assert dom.calls == []


def test_rescue_boots_the_rescue_disk_then_unrescue_the_instance_s(smoke, running, tmp_path):
    session, dom = running()
    original_xml = dom.xml
    seen = []
    create = dom.createWithFlags

    def watch(flags):
        seen.append(dom.xml)
        create(flags)

    dom.createWithFlags = watch
    details = smoke.power.rescue_unrescue(session)
    assert dom.calls == ["destroy", "define", "create", "destroy", "define", "create"]
    rescue = ET.fromstring(seen[0])
    assert rescue.findtext("os/kernel") == str(tmp_path / "kernel.rescue")
    assert rescue.findtext("uuid") == ET.fromstring(original_xml).findtext("uuid")
    assert seen[1] == original_xml  # unrescue.xml: the domain as it ran
    # nova's rescue disk: an overlay on the cached base image.
    (command,) = session.commands
    assert command[-3:] == ["-b", session.base, str(tmp_path / "disk.rescue")]
    assert not list(tmp_path.glob("*.rescue")) and not (tmp_path / "unrescue.xml").exists()
    console = (tmp_path / "console.log").read_text()
    assert "HVGATE-CMDLINE root=/dev/vda" in console and "hvgate.rescue=1" in console
    assert set(details) == {"rescue_s", "unrescue_s"}


def test_a_rescue_that_loses_the_instance_s_disk_fails(smoke, running):
    session, dom = running(sees_second_disk=False)
    with pytest.raises(smoke.guest.ScenarioFailure, match="in rescue the guest saw the disks"):
        smoke.power.rescue_unrescue(session)


def test_the_power_scenarios_are_registered(smoke):
    names = list(smoke.scenarios.SCENARIOS)
    assert names[names.index("hard-reboot") :][:4] == [
        "hard-reboot",
        "power-off-on",
        "rescue-unrescue",
        "teardown",
    ]
    assert names.index("detach-under-load") < names.index("hard-reboot")
    for name in smoke.power.SCENARIOS:
        assert smoke.scenarios.REQUIREMENTS[name] == smoke.scenarios.Needs()
