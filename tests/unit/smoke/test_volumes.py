"""harness/smoke/volumes.py against fake libvirt objects: the qemu-img command lines and limits
nova uses, the cold snapshot's order, the volume and root disk resizes, and nova's detach
retries (the real ones run in tests/integration/test_volumes.py)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from harness.core import model
from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

MIB = 1024 * 1024
CONSTANTS = {
    "VIR_DOMAIN_AFFECT_CONFIG": 2,
    "VIR_DOMAIN_AFFECT_LIVE": 1,
    "VIR_DOMAIN_BLOCK_RESIZE_BYTES": 1,
    "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED": 15,
    "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED": 22,
    "VIR_DOMAIN_XML_INACTIVE": 2,
    "VIR_ERR_DEVICE_MISSING": 99,
    "VIR_ERR_OPERATION_FAILED": 9,
}


@pytest.fixture
def volumes(smoke, monkeypatch):
    stub = sys.modules["libvirt"]
    for name, value in CONSTANTS.items():
        monkeypatch.setattr(stub, name, value, raising=False)
    return importlib.import_module("harness.smoke.volumes")


# --- registration ----------------------------------------------------------------------------


def test_the_scenarios_run_before_teardown_and_declare_their_needs(smoke, volumes):
    names = list(smoke.main.SCENARIOS)
    assert names[-2:] == ["teardown", "live-migration"]
    assert names[names.index("rescue-unrescue") + 1 : names.index("teardown")] == [
        *volumes.SCENARIOS,
        "busy-node",
    ]
    assert tuple(names) == model.SCENARIOS
    needs = smoke.scenarios.REQUIREMENTS
    assert needs["image-ops"].qemu == needs["cold-snapshot"].qemu == "2.10.0"
    assert "--force-share" in needs["root-resize"].why
    assert needs["detach"].libvirt == needs["volume-extend"].libvirt == "3.9.0"
    facts = {"libvirt": "4.0.0", "qemu": "2.11.1", "accel": "tcg", "hosts": 1}  # Ubuntu 18.04
    assert all(smoke.scenarios.unmet(needs[name], facts) is None for name in volumes.SCENARIOS)
    old = smoke.scenarios.unmet(needs["image-ops"], {**facts, "qemu": "2.8.0"})
    assert old.startswith("needs QEMU >= 2.10.0 (the cell has 2.8.0): nova's qemu-img info")


# --- qemu-img as nova calls it ---------------------------------------------------------------


def test_qemu_img_info_is_novas_command_under_novas_limits(volumes, monkeypatch):
    calls = []
    monkeypatch.setattr(
        volumes, "run", lambda argv, **kw: calls.append(argv) or '{"format": "qcow2"}'
    )
    assert volumes.qemu_img_info("/d.qcow2") == {"format": "qcow2"}
    (argv,) = calls
    assert argv[:2] == [sys.executable, volumes.PRLIMIT]
    assert argv[2:5] == ["--as=2147483648", "--cpu=30", "--"]
    assert argv[5:] == [
        "env", "LC_ALL=C", "LANG=C", "qemu-img", "info", "/d.qcow2", "--force-share",
        "--output=json",
    ]  # fmt: skip
    volumes.qemu_img_info("/d.raw", fmt="raw")
    assert calls[1][-2:] == ["-f", "raw"]


def test_qemu_img_info_failing_names_the_limits(volumes, monkeypatch):
    def killed(argv, **kw):
        raise volumes.ScenarioFailure("env ... exited -9: ")

    monkeypatch.setattr(volumes, "run", killed)
    with pytest.raises(volumes.ScenarioFailure, match="30 s of CPU, 2 GiB of address space"):
        volumes.qemu_img_info("/d.qcow2")


def test_prlimit_sets_soft_and_hard_limits_then_execs(volumes):
    script = "ulimit -S -t; ulimit -H -t; ulimit -S -v; ulimit -H -v"
    done = subprocess.run(
        [sys.executable, volumes.PRLIMIT, "--as=2147483648", "--cpu=30", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["30", "30", "2097152", "2097152"]  # ulimit -v is in KiB


def guest_of(volumes):
    """harness/smoke/guest.py as the runner's modules import it: where nova's O_DIRECT probe is,
    for the volume and encrypted-disk scenarios alike."""
    return sys.modules[volumes.cache_mode.__module__]


def test_convert_image_is_novas_command(volumes, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(volumes, "run", lambda argv, **kw: calls.append(argv) or "")
    monkeypatch.setattr(guest_of(volumes), "supports_direct_io", lambda directory: False)
    assert volumes.convert_image("/a.qcow2", f"{tmp_path}/b.raw", "qcow2", "raw") == "writeback"
    assert calls == [
        ["qemu-img", "convert", "-t", "writeback", "-O", "raw", "-f", "qcow2", "/a.qcow2",
         f"{tmp_path}/b.raw"]
    ]  # fmt: skip
    monkeypatch.setattr(guest_of(volumes), "supports_direct_io", lambda directory: True)
    volumes.convert_image("/a.qcow2", f"{tmp_path}/b.raw", "qcow2", "raw")
    assert calls[1][2:4] == ["-t", "none"]


def test_supports_direct_io(volumes, tmp_path, monkeypatch):
    guest = guest_of(volumes)
    assert guest.supports_direct_io(str(tmp_path)) in (True, False)
    assert list(tmp_path.iterdir()) == []  # the test file is gone
    assert guest.supports_direct_io(str(tmp_path / "missing")) is False  # ENOENT

    def einval(*args):
        raise OSError(22, "Invalid argument")  # tmpfs and the like

    monkeypatch.setattr(volumes.os, "open", einval)
    assert volumes.cache_mode(str(tmp_path)) == "writeback"


@pytest.fixture
def qemu_img():
    """The host's qemu-img: outside CI a machine without it skips; CI must have it."""
    if not shutil.which("qemu-img"):
        if os.environ.get("CI"):
            pytest.fail("CI needs qemu-img on the host (Debian's qemu-utils)")
        pytest.skip("needs qemu-img")


def test_image_ops_with_the_real_qemu_img(qemu_img, smoke, volumes, tmp_path, monkeypatch):
    """The command lines against the host's own qemu-img: every result equals the chain."""
    monkeypatch.setattr(smoke.guest, "WORK_DIR", str(tmp_path))
    monkeypatch.setattr(volumes, "path", smoke.guest.path)
    base, disk = smoke.guest.fresh_disks()

    class Session:
        def ensure_running(self, filled=False):
            return None

        def wait_alive(self):
            return 1

    session = Session()
    session.base, session.disk = base, disk
    details = volumes.image_ops(session)
    assert details["cache_mode"] in ("none", "writeback")
    work = tmp_path / "image-ops"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(work / "renamed.qcow2")],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename"] == "base-copy.raw"


def test_a_conversion_that_differs_fails_naming_it(qemu_img, volumes, tmp_path):
    first, second = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    for image in (first, second):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", second], check=True)
    with pytest.raises(volumes.ScenarioFailure, match="the snapshot differs from the disk: "):
        volumes.compare(first, second, "qcow2", "qcow2", "the snapshot differs from the disk")


# --- fakes -------------------------------------------------------------------------------------


class Conn:
    def __init__(self):
        self.callbacks = {}

    def isAlive(self):
        return 1

    def domainEventRegisterAny(self, dom, event, callback, opaque):
        key = len(self.callbacks) + 1
        self.callbacks[key] = (event, callback, opaque)
        return key

    def domainEventDeregisterAny(self, key):
        del self.callbacks[key]

    def emit(self, dom, event, alias):
        for registered, callback, opaque in list(self.callbacks.values()):
            if registered == event:
                callback(self, dom, alias, opaque)


class Domain:
    """A running, persistent guest whose console gets what images/guest/init would print.
    `unplug_at`: the live detach attempt the guest answers (None: never); `fail_event`: libvirt
    sends device-removal-failed instead."""

    def __init__(self, libvirt, conn, console, unplug_at=1, fail_event=False):
        self.libvirt, self.conn, self.console = libvirt, conn, console
        self.unplug_at, self.fail_event = unplug_at, fail_event
        self.live, self.config = {}, {}  # source -> alias
        self.attempts = {}  # source -> live detaches
        self.calls = []
        self.active, self.saved = True, False

    def print(self, *lines):
        with open(self.console, "a") as handle:
            handle.write("".join(f"{line}\n" for line in lines))

    def isActive(self):
        return self.active

    def isPersistent(self):
        return True

    def attachDeviceFlags(self, xml, flags):
        self.calls.append(("attach", flags))
        source = xml.split("<source file='")[1].split("'")[0]
        alias = xml.split("<alias name='")[1].split("'")[0]
        self.live[source] = self.config[source] = alias
        self.print(f"HVGATE-DISK-ADDED vdb size={1024 * MIB // 512}")
        if "<serial>hvgate-write</serial>" in xml:
            self.print("HVGATE-DISK-WRITES vdb 1", "HVGATE-DISK-WRITES vdb 17")

    def detachDeviceFlags(self, xml, flags):
        self.calls.append(("detach", flags))
        source = xml.split("<source file='")[1].split("'")[0]
        if flags == self.libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            del self.config[source]
            return
        self.attempts[source] = attempt = self.attempts.get(source, 0) + 1
        if self.fail_event:
            self.conn.emit(self, self.libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, "x")
            self.conn.emit(
                self,
                self.libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                self.live[source],
            )
            return
        if attempt > 1:
            raise self.libvirt.libvirtError("device vdb is already in the process of unplug")
        if self.unplug_at is not None and attempt >= self.unplug_at:
            self._unplug(source)

    def _unplug(self, source):
        alias = self.live.pop(source)
        self.print("HVGATE-DISK-WRITER-STOPPED vdb 23", "HVGATE-DISK-REMOVED vdb")
        self.conn.emit(self, self.libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, alias)

    def XMLDesc(self, flags):
        disks = self.config if flags == self.libvirt.VIR_DOMAIN_XML_INACTIVE else self.live
        return "<domain>" + "".join(f"<disk file='{s}'/>" for s in disks) + "</domain>"

    def suspend(self):
        self.calls.append(("suspend", 0))

    def resume(self):
        self.calls.append(("resume", 0))

    def blockResize(self, disk, size, flags):
        self.calls.append(("blockResize", disk, size, flags))
        self.print(f"HVGATE-DISK-RESIZED {disk} size={getattr(self, 'seen', size // 512)}")
        self.capacity = size
        for source in self.live:  # QEMU grows a raw file
            with open(source, "ab") as handle:
                handle.truncate(size)

    def blockInfo(self, disk, flags):
        return [self.capacity, self.capacity, self.capacity]

    def state(self):
        running, shutoff = self.libvirt.VIR_DOMAIN_RUNNING, self.libvirt.VIR_DOMAIN_SHUTOFF
        return [running if self.active else shutoff, 0]

    def destroy(self):
        self.calls.append(("destroy", 0))
        self.active = False

    def create(self):
        self.calls.append(("create", 0))
        self.active = True
        self.print(f"HVGATE-DISK-PRESENT vda size={self.vda // 512}", "HVGATE-READY boot=new")

    def managedSave(self, flags):
        self.calls.append(("managedSave", flags))
        self.active, self.saved = False, True

    def hasManagedSaveImage(self, flags):
        return int(self.saved)

    def createWithFlags(self, flags):
        self.calls.append(("createWithFlags", flags))
        self.active, self.saved = True, False
        self.print("HVGATE-HEARTBEAT 9 boot=abc")


@pytest.fixture
def session(smoke, volumes, tmp_path, monkeypatch):
    monkeypatch.setattr(volumes, "path", lambda *names: str(tmp_path.joinpath(*names)))
    monkeypatch.setattr(smoke.scenarios, "path", lambda *names: str(tmp_path.joinpath(*names)))
    commands = []
    monkeypatch.setattr(volumes, "run", lambda argv, **kw: commands.append(argv) or "")
    conn = Conn()
    session = smoke.scenarios.Session(conn, "tcg", 5.0, job_timeout=1.0)
    session.dom = Domain(smoke.scenarios.libvirt, conn, session.console.filename)
    session.ensure_running = lambda filled=False: session.dom
    session.boot_id, session.disk, session.base = "abc", "/w/disk.qcow2", "/w/base.qcow2"
    session.wait_alive = lambda timeout=15.0: 1
    session.commands = commands
    lower_limits(volumes, monkeypatch, timeout="1", attempts="2")
    return session


def lower_limits(volumes, monkeypatch, timeout="0.2", attempts="3"):
    monkeypatch.setenv(volumes.DETACH_TIMEOUT_ENV, timeout)
    monkeypatch.setenv(volumes.DETACH_ATTEMPTS_ENV, attempts)


# --- detach with nova's retries ----------------------------------------------------------------


def test_detach_limits_are_novas_defaults(volumes, monkeypatch):
    monkeypatch.delenv(volumes.DETACH_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(volumes.DETACH_ATTEMPTS_ENV, raising=False)
    assert volumes.detach_limits() == (20.0, 8)


def test_detach_idle_and_under_load_in_one_attempt_each(volumes, session):
    details = volumes.detach(session)
    assert details["attempts_idle"] == details["attempts_load"] == 1
    assert details["writes"] == 23
    libvirt = volumes.libvirt
    both = libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE
    # nova's order: attached persistent and live; detached from the config, then live.
    assert (
        session.dom.calls
        == [
            ("attach", both),
            ("detach", libvirt.VIR_DOMAIN_AFFECT_CONFIG),
            ("detach", libvirt.VIR_DOMAIN_AFFECT_LIVE),
        ]
        * 2
    )
    assert session.conn.callbacks == {}  # deregistered
    assert [argv[:2] for argv in session.commands].count(["qemu-img", "check"]) == 2


def test_retries_until_the_device_is_gone(volumes, session, monkeypatch):
    lower_limits(volumes, monkeypatch, timeout="0.3", attempts="4")
    dom = session.dom
    dom.unplug_at = None
    volume = "/w/v.qcow2"
    xml = volumes.disk_xml(volume, "vdb", alias="ua-v")
    dom.attachDeviceFlags(xml, 3)
    # The guest lets go during the second wait: the third look finds it gone.
    threading.Timer(0.45, lambda: dom._unplug(volume)).start()
    started = time.monotonic()
    assert volumes.detach_with_retry(session, dom, xml, volume, "vdb") == 2
    assert 0.3 <= time.monotonic() - started < 2.0
    live = [c for c in dom.calls if c == ("detach", volumes.libvirt.VIR_DOMAIN_AFFECT_LIVE)]
    assert len(live) == 2  # the second raised "already in the process of unplug": ignored


def test_a_detach_that_never_completes_fails_naming_its_bounds(volumes, session, monkeypatch):
    lower_limits(volumes, monkeypatch, timeout="0.2", attempts="3")
    dom = session.dom
    dom.unplug_at = None
    volume = "/w/v.qcow2"
    xml = volumes.disk_xml(volume, "vdb", alias="ua-v")
    dom.attachDeviceFlags(xml, 3)
    started = time.monotonic()
    with pytest.raises(volumes.ScenarioFailure) as info:
        volumes.detach_with_retry(session, dom, xml, volume, "vdb")
    assert time.monotonic() - started >= 0.6
    assert str(info.value) == (
        "vdb is still attached after 3 detach attempts, each waiting 0 s for libvirt's "
        "device-removed event (nova's device_detach_attempts and device_detach_timeout)"
    )
    assert session.conn.callbacks == {}


def test_device_removal_failed_is_a_failure(volumes, session, monkeypatch):
    lower_limits(volumes, monkeypatch)
    dom = session.dom
    dom.fail_event = True
    with pytest.raises(volumes.ScenarioFailure, match="libvirt reported the removal of vdb failed"):
        volumes.detach(session)


def test_the_planted_fault_pauses_the_guest_and_resumes_it(volumes, session, monkeypatch):
    lower_limits(volumes, monkeypatch, timeout="0.1", attempts="2")
    monkeypatch.setenv(volumes.DETACH_FAULT_ENV, "paused")
    dom = session.dom
    dom.unplug_at = None
    with pytest.raises(volumes.ScenarioFailure, match="still attached after 2 detach attempts"):
        volumes.detach(session)
    names = [c[0] for c in dom.calls]
    assert names.index("suspend") < names.index("resume")
    assert names[-1] == "resume"


def test_a_device_gone_before_the_retry_is_detached(volumes, session, monkeypatch):
    lower_limits(volumes, monkeypatch)
    dom = session.dom
    volume = "/w/v.qcow2"
    xml = volumes.disk_xml(volume, "vdb", alias="ua-v")
    dom.attachDeviceFlags(xml, 3)
    error = volumes.libvirt.libvirtError("device not found")
    error.get_error_code = lambda: volumes.libvirt.VIR_ERR_DEVICE_MISSING

    def missing(xml, flags):
        dom.live.clear()
        raise error

    dom.detachDeviceFlags = missing
    dom.config.clear()
    assert volumes.detach_with_retry(session, dom, xml, volume, "vdb") == 1


# --- resizes and the cold snapshot -------------------------------------------------------------


def test_volume_extend(volumes, session):
    details = volumes.volume_extend(session)
    (resize,) = [c for c in session.dom.calls if c[0] == "blockResize"]
    assert resize == (
        "blockResize",
        "vdb",
        2048 * MIB,
        volumes.libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES,
    )
    assert details["sectors"] == 2048 * MIB // 512 and details["attempts"] == 1
    assert session.commands[0][:5] == ["qemu-img", "create", "-q", "-f", "raw"]


def test_volume_extend_fails_when_the_guest_sees_another_size(volumes, session):
    session.dom.seen = 32768
    with pytest.raises(volumes.ScenarioFailure, match="the guest sees vdb with 32768 sectors"):
        volumes.volume_extend(session)


def test_volume_extend_fails_when_the_guest_sees_no_resize(volumes, session):
    session.dom.print = lambda *lines: None  # the guest stays silent
    with pytest.raises(volumes.ScenarioFailure, match="the guest's report of vdb did not appear"):
        volumes.volume_extend(session)


def test_root_resize(volumes, session, monkeypatch):
    sizes = iter([64 * MIB, 128 * MIB])

    def info(image, fmt=None):
        return {"format": "qcow2", "backing-filename": session.base, "virtual-size": next(sizes)}

    monkeypatch.setattr(volumes, "qemu_img_info", info)
    session.dom.vda = 128 * MIB
    details = volumes.root_resize(session)
    assert [c[0] for c in session.dom.calls] == ["destroy", "create"]
    assert session.commands == [["qemu-img", "resize", "-f", "qcow2", session.disk, str(128 * MIB)]]
    assert details["sectors"] == 128 * MIB // 512
    assert session.boot_id == "new"


def test_root_resize_fails_when_the_guest_sees_the_old_size(volumes, session, monkeypatch):
    sizes = iter([64 * MIB, 128 * MIB])
    monkeypatch.setattr(
        volumes,
        "qemu_img_info",
        lambda image, fmt=None: {
            "format": "qcow2",
            "backing-filename": session.base,
            "virtual-size": next(sizes),
        },
    )
    session.dom.vda = 64 * MIB
    with pytest.raises(volumes.ScenarioFailure, match="sees vda with 131072 sectors"):
        volumes.root_resize(session)


def test_cold_snapshot_saves_extracts_and_resumes(volumes, session, monkeypatch):
    session.dom.print("HVGATE-HEARTBEAT 8 boot=abc")
    monkeypatch.setattr(
        volumes, "qemu_img_info", lambda image, fmt=None: {"format": "qcow2", "virtual-size": 1}
    )
    monkeypatch.setattr(guest_of(volumes), "supports_direct_io", lambda directory: True)
    details = volumes.cold_snapshot(session)
    assert [c[0] for c in session.dom.calls] == ["managedSave", "createWithFlags"]
    convert, compare, check = session.commands
    assert convert[:8] == ["qemu-img", "convert", "-t", "none", "-O", "qcow2", "-f", "qcow2"]
    assert convert[8] == session.disk
    assert compare[:2] == ["qemu-img", "compare"] and check[:2] == ["qemu-img", "check"]
    assert (details["beat_before"], details["beat_after"]) == (8, 9)


def test_cold_snapshot_resumes_the_guest_when_the_extract_fails(volumes, session, monkeypatch):
    session.dom.print("HVGATE-HEARTBEAT 8 boot=abc")
    monkeypatch.setattr(volumes, "qemu_img_info", lambda image, fmt=None: {"format": "qcow2"})

    def failing(argv, **kw):
        raise volumes.ScenarioFailure("qemu-img convert exited 1: injected")

    monkeypatch.setattr(volumes, "run", failing)
    with pytest.raises(volumes.ScenarioFailure, match="injected"):
        volumes.cold_snapshot(session)
    assert [c[0] for c in session.dom.calls] == ["managedSave", "createWithFlags"]
