"""The encrypted-disk scenarios (harness/smoke/encryption.py) against fake libvirt objects and a
fake qemu-img: the commands cinder and nova would run, the secret's life, the disk XML, and the
failures each step reports (the real ones run in tests/integration/test_encryption.py)."""

from __future__ import annotations

import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

STRANGER = "an image nobody wrote"


class NoSecret(test_smoke_runner.StubLibvirtError):
    def __init__(self, libvirt):
        super().__init__("Secret not found")
        self.code = libvirt.VIR_ERR_NO_SECRET

    def get_error_code(self):
        return self.code


class FakeSecret:
    def __init__(self, conn, secret_uuid, usage_id):
        self.conn, self.uuid, self.usage_id = conn, secret_uuid, usage_id
        self.value = None

    def UUIDString(self):
        return self.uuid

    def usageType(self):
        return self.conn.libvirt.VIR_SECRET_USAGE_TYPE_VOLUME

    def setValue(self, value):
        self.value = value

    def undefine(self):
        del self.conn.secrets[self.uuid]


class FakeConn:
    def __init__(self, libvirt):
        self.libvirt = libvirt
        self.dom = None
        self.secrets = {}
        self.callbacks = {}
        self.defined = []

    def isAlive(self):
        return 1

    def lookupByName(self, name):
        return self.dom

    def secretDefineXML(self, xml):
        root = ET.fromstring(xml)
        assert (root.get("ephemeral"), root.get("private")) == ("no", "no")  # nova's, for volumes
        assert root.find("usage").get("type") == "volume"
        secret = FakeSecret(
            self, root.findtext("uuid") or str(uuid.uuid4()), root.findtext("usage/volume")
        )
        self.secrets[secret.uuid] = secret
        self.defined.append(xml)
        return secret

    def secretLookupByUsage(self, usage_type, usage_id):
        assert usage_type == self.libvirt.VIR_SECRET_USAGE_TYPE_VOLUME
        for secret in self.secrets.values():
            if secret.usage_id == usage_id:
                return secret
        raise NoSecret(self.libvirt)

    def listAllSecrets(self, flags):
        return list(self.secrets.values())

    def domainEventRegisterAny(self, dom, event, callback, opaque):
        self.callbacks[len(self.callbacks) + 1] = callback
        return len(self.callbacks)

    def domainEventDeregisterAny(self, callback_id):
        del self.callbacks[callback_id]


class FakeImages:
    """What the fake qemu-img and qemu-io did: each image's passphrase and the md5 of its first
    blocks of plain content."""

    def __init__(self):
        self.keys = {}
        self.sums = {}
        self.commands = []

    def run(self, argv, **kwargs):
        self.commands.append(argv)
        key = next((a.split("file=")[1] for a in argv if a.startswith("secret,")), None)
        passphrase = None
        if key:
            with open(key) as handle:
                passphrase = handle.read()
        if argv[:2] == ["qemu-img", "create"] and passphrase:
            self.keys[argv[-2]] = passphrase
        elif argv[0] == "qemu-io":
            target = argv[-1]
            if target.startswith("driver=luks"):
                target = re.search(r"file\.filename=([^,]+)", target).group(1)
                assert self.keys[target] == passphrase
            self.sums[target] = self.written(argv)
        elif argv[:2] == ["qemu-img", "convert"]:
            self.keys[argv[-1]] = passphrase
            self.sums[argv[-1]] = self.sums.get(argv[-2], STRANGER)
        return ""

    @staticmethod
    def written(argv):
        data = b""
        for command in [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]:
            _, _, pattern, offset, length = command.split()
            assert int(offset) == len(data)
            data += bytes([int(pattern, 16)]) * int(length)
        return hashlib.md5(data).hexdigest()


def luks_info(fmt, cipher, encrypted=True, slots=True, size=16 * 1024 * 1024):
    header = dict(cipher, slots=[{"active": slots}], **{"payload-offset": 2068480})
    if fmt == "qcow2":
        data = {"compat": "1.1", "encrypt": dict(header, format="luks")}
        return {"format": fmt, "virtual-size": size, "encrypted": encrypted,
                "format-specific": {"type": fmt, "data": data}}  # fmt: skip
    return {"format": fmt, "virtual-size": size, "format-specific": {"type": fmt, "data": header}}


def info_of(image):
    # What QEMU 7.2 reports: a plain64 IV has no hash, so no ivgen-hash-alg.
    return luks_info("qcow2" if image.endswith(".qcow2") else "luks", dict(CIPHER, **SHA256))


CIPHER = {"cipher-alg": "aes-256", "cipher-mode": "xts", "ivgen-alg": "plain64"}
SHA256 = {"hash-alg": "sha256"}
SHA256 = {"hash-alg": "sha256"}


class FakeDomain:
    """A running, persistent guest: hot-plugged disks land in its live and persistent XML, and
    its console gets what the guest's /init would print, reading the image QEMU decrypted."""

    def __init__(self, libvirt, conn, console, images):
        self.libvirt, self.conn, self.console, self.images = libvirt, conn, console, images
        self.live, self.config = {}, {}
        self.calls = []
        self.reads = None  # the md5 the guest prints, when not the image's

    def print(self, *lines):
        with open(self.console, "a") as handle:
            handle.write("".join(f"{line}\n" for line in lines))

    def isActive(self):
        return True

    def attachDeviceFlags(self, xml, flags):
        self.calls.append(("attach", flags))
        disk = ET.fromstring(xml)
        source = disk.find("source").get("file")
        secret = self.conn.secrets[disk.find(".//encryption/secret").get("uuid")]
        if secret.value != self.images.keys[source]:
            raise test_smoke_runner.StubLibvirtError(
                "internal error: unable to execute QEMU command 'blockdev-add': "
                "Invalid password, cannot unlock any keyslot"
            )
        self.live[source] = xml.replace("</disk>", "<alias name='virtio-disk1'/></disk>")
        if flags & self.libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            self.config[source] = xml
        self.print(
            "HVGATE-DISK-ADDED vdb", f"HVGATE-DISK-SUM vdb {self.reads or self.images.sums[source]}"
        )

    def detachDeviceFlags(self, xml, flags):
        self.calls.append(("detach", flags))
        source = ET.fromstring(xml).find("source").get("file")
        if flags & self.libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            del self.config[source]
        if flags & self.libvirt.VIR_DOMAIN_AFFECT_LIVE:
            del self.live[source]
            self.print("HVGATE-DISK-REMOVED vdb")
            for callback in list(self.conn.callbacks.values()):
                callback(self.conn, self, "virtio-disk1", None)

    def XMLDesc(self, flags):
        disks = self.config if flags & self.libvirt.VIR_DOMAIN_XML_INACTIVE else self.live
        return f"<domain><devices>{''.join(disks.values())}</devices></domain>"


@pytest.fixture
def session(smoke, tmp_path, monkeypatch):
    for module in (smoke.scenarios, smoke.encryption):
        monkeypatch.setattr(module, "path", lambda *names: str(tmp_path.joinpath(*names)))
    images = FakeImages()
    monkeypatch.setattr(smoke.encryption, "run", images.run)
    monkeypatch.setattr(smoke.encryption, "qemu_img_info", info_of)
    monkeypatch.delenv(smoke.encryption.FAULT_ENV, raising=False)
    monkeypatch.setattr(smoke.encryption, "_defined", smoke.encryption.collections.Counter())
    libvirt = smoke.scenarios.libvirt
    conn = FakeConn(libvirt)
    session = smoke.scenarios.Session(conn, "tcg", 5.0, job_timeout=1.0)
    conn.dom = FakeDomain(libvirt, conn, session.console.filename, images)
    session.boot_id = "abc"
    session.wait_alive = lambda timeout=15.0: 1
    session.images = images
    return session


SCENARIOS = ("encrypted_volume", "encrypted_image")


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_scenario_attaches_reads_and_detaches_its_encrypted_disk(smoke, session, name):
    libvirt = smoke.scenarios.libvirt
    details = getattr(smoke.encryption, name)(session)
    assert details["guest_disk"] == "vdb"
    assert details["attach_s"] >= 0 and details["detach_s"] >= 0
    dom = session.conn.dom
    live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
    # nova: attached live and persistent; detached from the persistent definition first.
    assert dom.calls == [("attach", live | config), ("detach", config), ("detach", live)]
    assert dom.live == dom.config == {}
    assert session.conn.secrets == {}  # undefined after the detach
    assert session.conn.callbacks == {}  # deregistered
    assert not list(Path(session.console.filename).parent.glob("*.key"))  # keys removed


def test_encrypted_volume_runs_cinders_create_and_names_the_secret_by_volume(smoke, session):
    smoke.encryption.encrypted_volume(session)
    create, write = session.images.commands
    key = create[create.index("--object") + 1].split("file=")[1]
    volume = create[-2]
    assert create == [
        "qemu-img", "create", "-f", "luks",
        "-o", "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64",
        "--object", f"secret,id=luks_sec,format=raw,file={key}",
        "-o", "key-secret=luks_sec", volume, "16M",
    ]  # fmt: skip
    assert write[-2:] == [
        "--image-opts",
        f"driver=luks,file.driver=file,file.filename={volume},key-secret=sec0",
    ]
    assert write.count("-c") == smoke.encryption.BLOCKS
    (xml,) = session.conn.defined
    volume_id = ET.fromstring(xml).findtext("usage/volume")
    assert str(uuid.UUID(volume_id)) == volume_id
    assert ET.fromstring(xml).find("uuid") is None  # libvirt picks it, as nova lets it
    # The passphrase is the hex of a 256-bit key, as nova and cinder derive it.
    assert re.fullmatch(r"[0-9a-f]{64}", session.images.keys[volume])


def test_encrypted_image_converts_as_nova_does(smoke, session):
    smoke.encryption.encrypted_image(session)
    create, fill, to_luks, to_qcow2 = session.images.commands
    assert create[:5] == ["qemu-img", "create", "-q", "-f", "qcow2"]
    assert fill[:3] == ["qemu-io", "-f", "qcow2"]
    for argv, fmt, prefix in ((to_luks, "luks", ""), (to_qcow2, "qcow2", "encrypt.")):
        key = argv[argv.index("--object") + 1].split("file=")[1]
        assert argv[:9] == [
            "qemu-img", "convert", "-t", argv[3], "-O", fmt, "-f", "qcow2", "--object",
        ]  # fmt: skip
        assert argv[3] in ("none", "writeback")
        assert argv[9] == f"secret,id=sec1,file={key}"
        options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
        assert options[0] == f"{prefix}key-secret=sec1"
        assert (f"{prefix}format=luks" in options) == (fmt == "qcow2")
        assert f"{prefix}iter-time=2000" in options and f"{prefix}cipher-mode=xts" in options
        assert argv[-2] == fill[-1]
    (xml,) = session.conn.defined
    root = ET.fromstring(xml)
    instance, bdm = root.findtext("usage/volume").split("_")
    assert uuid.UUID(instance) and uuid.UUID(bdm)
    assert uuid.UUID(root.findtext("uuid"))  # the key manager's secret UUID, given by nova


def test_the_volume_has_its_encryption_at_disk_level_and_the_image_inside_source(smoke):
    volume = ET.fromstring(smoke.encryption.volume_xml("/x/v.luks", "none", "u-1"))
    assert volume.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none"}
    assert volume.find("encryption").get("format") == "luks"
    assert volume.find("encryption/secret").attrib == {"type": "passphrase", "uuid": "u-1"}
    assert volume.find("source/encryption") is None
    assert volume.findtext("serial") == smoke.encryption.SUM_SERIAL
    image = ET.fromstring(smoke.encryption.image_xml("/x/i.qcow2", "writeback", "u-2"))
    assert image.find("driver").get("type") == "qcow2"
    assert image.find("encryption") is None
    assert image.find("source/encryption/secret").attrib == {"type": "passphrase", "uuid": "u-2"}
    assert image.findtext("serial") == smoke.encryption.SUM_SERIAL


def test_new_data_differs_each_time_and_its_md5_is_that_of_the_writes(smoke):
    commands, md5 = smoke.encryption.new_data()
    assert FakeImages.written([*commands, "image"]) == md5
    assert len(commands) == 2 * smoke.encryption.BLOCKS
    assert smoke.encryption.new_data()[1] != md5


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_wrong_checksum_is_a_failure_naming_both(smoke, session, name):
    session.conn.dom.reads = "0" * 32
    with pytest.raises(smoke.guest.ScenarioFailure, match=r"the guest read 64 KiB with md5 0{32}"):
        getattr(smoke.encryption, name)(session)


def test_a_disk_the_guest_cannot_read_says_so(smoke, session):
    session.conn.dom.reads = "d41d8cd98f00b204e9800998ecf8427e"
    with pytest.raises(smoke.guest.ScenarioFailure, match="the md5 of nothing"):
        smoke.encryption.encrypted_volume(session)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (luks_info("raw", CIPHER), "as 'raw', not luks"),
        (luks_info("luks", dict(CIPHER, **{"cipher-mode": "cbc"})), "'cipher-mode': 'cbc'"),
        (luks_info("luks", CIPHER, slots=False), "no active key slot"),
        (luks_info("luks", CIPHER, size=1024), "virtual size of 1024"),
    ],
)
def test_qemu_img_info_of_a_luks_volume(smoke, monkeypatch, info, message):
    monkeypatch.setattr(smoke.encryption, "qemu_img_info", lambda image: info)
    with pytest.raises(smoke.guest.ScenarioFailure, match=re.escape(message)):
        smoke.encryption.check_encrypted_info("/x/v.luks", "luks", CIPHER)


def test_qemu_img_info_of_an_encrypted_qcow2(smoke, monkeypatch):
    info = luks_info("qcow2", CIPHER)
    monkeypatch.setattr(smoke.encryption, "qemu_img_info", lambda image: info)
    assert smoke.encryption.check_encrypted_info("/x/i.qcow2", "qcow2", CIPHER)["slots"]
    info["encrypted"] = False
    with pytest.raises(smoke.guest.ScenarioFailure, match="does not call /x/i.qcow2 encrypted"):
        smoke.encryption.check_encrypted_info("/x/i.qcow2", "qcow2", CIPHER)


def test_a_stale_secret_is_forgotten_before_the_scenario(smoke, session):
    stale = session.conn.secretDefineXML(
        "<secret ephemeral='no' private='no'><usage type='volume'><volume>old</volume>"
        "</usage></secret>"
    )
    smoke.encryption.encrypted_volume(session)
    assert stale.uuid not in session.conn.secrets


def test_a_detach_without_its_event_names_the_bound(smoke, session):
    dom = session.conn.dom
    detach = dom.detachDeviceFlags

    def silent(xml, flags):
        if flags & smoke.scenarios.libvirt.VIR_DOMAIN_AFFECT_LIVE:
            return  # the guest never lets go
        detach(xml, flags)

    dom.detachDeviceFlags = silent
    with pytest.raises(
        smoke.guest.ScenarioFailure, match="no device-removed event for virtio-disk1 within 1 s"
    ):
        smoke.encryption.encrypted_volume(session)
    assert session.conn.callbacks == {}


@pytest.mark.parametrize("name", ["encrypted-volume", "encrypted-image"])
def test_the_planted_fault_fails_every_second_run_as_libvirt_does(
    smoke, session, monkeypatch, name
):
    """The test-only switch: every 2nd secret gets a wrong value; QEMU cannot open the image, the
    attach raises libvirt's error, and the worker reports `fail`, not `error`."""
    monkeypatch.setenv(smoke.encryption.FAULT_ENV, "2")
    statuses = []
    for _ in range(4):
        result = smoke.worker.run_scenario(name, session, "virtqemud", 10.0)
        statuses.append(result["status"])
        if result["status"] == "fail":
            assert "cannot unlock any keyslot" in result["error"]
    assert statuses == ["pass", "fail", "pass", "fail"]


def test_the_new_scenarios_are_registered_with_their_needs(smoke):
    needs = smoke.scenarios.REQUIREMENTS
    facts = {"libvirt": "9.0.0", "qemu": "7.2.0", "accel": "tcg", "hosts": 1}
    for name in ("encrypted-volume", "encrypted-image"):
        assert smoke.scenarios.SCENARIOS[name] is smoke.encryption.SCENARIOS[name]
        assert smoke.scenarios.unmet(needs[name], facts) is None
    # Ubuntu 18.04: libvirt 4.0, QEMU 2.11.
    old = {"libvirt": "4.0.0", "qemu": "2.11.1", "accel": "tcg", "hosts": 1}
    assert smoke.scenarios.unmet(needs["encrypted-volume"], old) is None
    assert smoke.scenarios.unmet(needs["encrypted-image"], old).startswith(
        "needs libvirt >= 4.5.0 (the cell has 4.0.0): "
    )
    names = list(smoke.scenarios.SCENARIOS)
    assert names.index("detach-under-load") < names.index("encrypted-image")
    assert names.index("encrypted-image") < names.index("teardown")


def test_with_the_modular_daemons_virtsecretd_is_started_once(
    smoke, session, monkeypatch, tmp_path
):
    started = []
    socket = tmp_path / "virtsecretd-sock"

    def fake_run(argv, **kwargs):
        started.append(argv)
        socket.touch()

    monkeypatch.setattr(smoke.encryption, "SECRET_SOCKET", str(socket))
    monkeypatch.setattr(smoke.encryption.subprocess, "run", fake_run)
    monkeypatch.setattr(smoke.encryption.daemons, "pidof", lambda name: [1] if started else [])
    smoke.encryption.secret_daemon(session)  # libvirtd (here: no daemon named) has its own
    assert started == []
    session.daemon = "virtqemud"
    smoke.encryption.secret_daemon(session)
    smoke.encryption.secret_daemon(session)
    assert started == [["virtsecretd", "-d"]]


def test_an_image_without_libvirts_secret_driver_cannot_run_them(smoke):
    """Distros that split libvirt's drivers (Debian's 10.x and later packages) ship the secret
    driver as libvirt-daemon-driver-secret: an image without it is no cell for these scenarios,
    not a failure of libvirt."""
    needs = smoke.scenarios.REQUIREMENTS
    facts = {"libvirt": "11.3.0", "qemu": "10.0.2", "accel": "tcg", "hosts": 1}
    for name in ("encrypted-volume", "encrypted-image"):
        assert smoke.scenarios.unmet(needs[name], {**facts, "drivers": ["qemu", "secret"]}) is None
        assert smoke.scenarios.unmet(needs[name], {**facts, "drivers": None}) is None
        why = smoke.scenarios.unmet(needs[name], {**facts, "drivers": ["qemu"]})
        assert why == (
            "needs libvirt's secret driver (the image has no libvirt_driver_secret.so: a distro"
            " that splits it out ships it as libvirt-daemon-driver-secret)"
        )
    assert smoke.scenarios.unmet(needs["boot"], {**facts, "drivers": ["qemu"]}) is None


def test_the_drivers_are_read_from_libvirts_connection_driver_folder(smoke, monkeypatch):
    folder = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver"
    monkeypatch.setattr(
        smoke.daemons.glob,
        "glob",
        lambda pattern: (
            [f"{folder}/libvirt_driver_qemu.so", f"{folder}/libvirt_driver_secret.so"]
            if pattern.startswith("/usr/lib/*/")
            else []
        ),
    )
    assert smoke.daemons.drivers() == ["qemu", "secret"]
    monkeypatch.setattr(smoke.daemons.glob, "glob", lambda pattern: [])
    assert smoke.daemons.drivers() is None
