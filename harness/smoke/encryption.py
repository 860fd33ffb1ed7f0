"""Encrypted disks as nova and cinder make them: LUKS images made with qemu-img, the passphrase in
a libvirt secret of usage type 'volume', and the disk hot-plugged into the running guest with
QEMU decrypting it (libvirt's native LUKS support, which nova uses instead of os-brick's
cryptsetup encryptors for the 'luks' provider: nova's _allow_native_luksv1).

Each scenario writes random data into the plain content of its image before the attach; the
guest prints the md5 of the first 64 KiB it reads from a disk whose serial is SUM_SERIAL
(images/guest/init), which must be that data's.
"""

import base64
import collections
import contextlib
import hashlib
import os
import re
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import libvirt

from . import daemons
from .guest import ScenarioFailure, cache_mode, path, qemu_img_info, run

# The guest checksums this many blocks of this size from the start of the disk.
BLOCK = 4096
BLOCKS = 16
SUM_SERIAL = "hvgate-sum"
SUM_RE = re.compile(r"HVGATE-DISK-SUM (vd[a-z]+) (\S+)")
TARGET = "vdb"
SIZE_MIB = 16
# A cinder volume type's encryption spec: provider luks, cipher aes-xts-plain64, key size 256,
# as cinder's decode_cipher splits it for qemu-img.
CINDER_CIPHER = "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64"
# nova/privsep/qemu.py's fixed LUKS options for an encrypted destination (QEMU's defaults).
NOVA_LUKS_OPTIONS = (
    ("cipher-alg", "aes-256"),
    ("cipher-mode", "xts"),
    ("hash-alg", "sha256"),
    ("iter-time", "2000"),
    ("ivgen-alg", "plain64"),
    ("ivgen-hash-alg", "sha256"),
)
ATTACH_FLAGS = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
# Test only: every Nth secret a scenario defines gets a value other than its image's passphrase,
# so that QEMU cannot open the image (tests/integration/test_encryption.py). Unset: never.
FAULT_ENV = "HVGATE_FAULT_WRONG_PASSPHRASE"
_defined = collections.Counter()  # secrets defined, by scenario, for FAULT_ENV


# --- the host side: images, as cinder and nova make them ----------------------------------------


def new_data():
    """(qemu-io commands writing BLOCKS blocks of random bytes, the md5 of those blocks): each
    block is one random byte repeated, so a stale disk or one read undecrypted cannot match."""
    patterns = os.urandom(BLOCKS)
    commands, data = [], b""
    for index, byte in enumerate(patterns):
        commands += ["-c", f"write -P {byte:#x} {index * BLOCK} {BLOCK}"]
        data += bytes([byte]) * BLOCK
    return commands, hashlib.md5(data).hexdigest()


def key_file(name, passphrase):
    """The passphrase in a file only root can read, for qemu-img's --object secret,file=."""
    filename = path(name)
    fd = os.open(filename, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(passphrase)
    return filename


def fresh(*paths):
    for stale in paths:
        if os.path.exists(stale):
            os.unlink(stale)
    return paths


def create_cinder_volume(volume, key):
    """cinder's _create_encrypted_volume (RBD driver): a blank LUKS volume of the type's cipher."""
    run(
        [
            "qemu-img", "create", "-f", "luks",
            "-o", CINDER_CIPHER,
            "--object", f"secret,id=luks_sec,format=raw,file={key}",
            "-o", "key-secret=luks_sec",
            volume, f"{SIZE_MIB}M",
        ]
    )  # fmt: skip


def write_encrypted(volume, key, commands):
    """The data written through the LUKS layer, as a guest that used the volume before would."""
    run(
        [
            "qemu-io", "--object", f"secret,id=sec0,format=raw,file={key}", *commands,
            "--image-opts", f"driver=luks,file.driver=file,file.filename={volume},key-secret=sec0",
        ]
    )  # fmt: skip


def nova_convert(source, dest, out_format, key, cache):
    """nova/privsep/qemu.py's unprivileged_convert_image of a plain qcow2 image into an encrypted
    destination: 'luks' (encrypted raw) or qcow2 with encrypt.format=luks."""
    prefix = "encrypt." if out_format == "qcow2" else ""
    argv = ["qemu-img", "convert", "-t", cache, "-O", out_format, "-f", "qcow2"]
    argv += ["--object", f"secret,id=sec1,file={key}", "-o", f"{prefix}key-secret=sec1"]
    if prefix:
        argv += ["-o", f"{prefix}format=luks"]
    for option, value in NOVA_LUKS_OPTIONS:
        argv += ["-o", f"{prefix}{option}={value}"]
    run([*argv, source, dest])


def check_encrypted_info(image, fmt, cipher):
    """`qemu-img info` (nova's, with --force-share) reads the image as LUKS-encrypted with the
    cipher asked for; returns the LUKS header's fields. cipher: {field: value}."""
    info = qemu_img_info(image)
    if info.get("format") != fmt:
        raise ScenarioFailure(f"qemu-img info reads {image} as {info.get('format')!r}, not {fmt}")
    if info.get("virtual-size") != SIZE_MIB * 1024 * 1024:
        raise ScenarioFailure(
            f"qemu-img info gives {image} a virtual size of {info.get('virtual-size')}, "
            f"not {SIZE_MIB} MiB"
        )
    data = (info.get("format-specific") or {}).get("data") or {}
    if fmt == "qcow2":
        if info.get("encrypted") is not True:
            raise ScenarioFailure(f"qemu-img info does not call {image} encrypted")
        data = data.get("encrypt") or {}
        if data.get("format") != "luks":
            raise ScenarioFailure(
                f"qemu-img info gives {image} the encryption format {data.get('format')!r}, "
                "not luks"
            )
    wrong = {k: data.get(k) for k, v in cipher.items() if data.get(k) != v}
    if wrong:
        raise ScenarioFailure(f"the LUKS header of {image} has {wrong}, expected {cipher}")
    if not any(slot.get("active") for slot in data.get("slots") or []):
        raise ScenarioFailure(f"the LUKS header of {image} has no active key slot")
    return data


# --- the libvirt secret, as nova's Host.create_secret / find_secret / delete_secret ---------------


SECRET_SOCKET = "/run/libvirt/virtsecretd-sock"


def secret_daemon(session, timeout=30.0):
    """With the modular daemons, secrets are virtsecretd's, which systemd starts on demand; the
    runner starts it as it starts virtlogd. libvirtd has its own secret driver."""
    if session.daemon != "virtqemud" or daemons.pidof("virtsecretd"):
        return
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{daemons.log_file('virtsecretd')}")
    try:
        subprocess.run(["virtsecretd", "-d"], check=True, env=env, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScenarioFailure(
            f"virtsecretd, which keeps virtqemud's secrets, did not start: {exc}"
        ) from None
    deadline = time.monotonic() + timeout
    while not os.path.exists(SECRET_SOCKET):
        if time.monotonic() > deadline:
            raise ScenarioFailure(f"virtsecretd made no socket within {timeout:.0f} s")
        time.sleep(0.1)


def define_secret(session, scenario, usage_id, passphrase, secret_uuid=None):
    """A persistent, non-private secret of usage type 'volume' holding the passphrase."""
    xml = "<secret ephemeral='no' private='no'>"
    if secret_uuid:
        xml += f"<uuid>{secret_uuid}</uuid>"
    xml += f"<usage type='volume'><volume>{usage_id}</volume></usage></secret>"
    secret = session.conn.secretDefineXML(xml)
    _defined[scenario] += 1
    every = os.environ.get(FAULT_ENV)
    if every and _defined[scenario] % int(every) == 0:
        passphrase = "wrong-" + passphrase  # the planted fault: not the image's passphrase
    secret.setValue(passphrase)
    return secret


def find_secret(session, usage_id):
    try:
        return session.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage_id)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
            return None
        raise


def delete_secret(session, usage_id):
    """nova's _detach_encryptor: the volume's secret goes once the disk is detached; then it
    must be gone."""
    secret = find_secret(session, usage_id)
    if secret is None:
        raise ScenarioFailure(f"libvirt has no secret for {usage_id} to undefine")
    secret.undefine()
    if find_secret(session, usage_id) is not None:
        raise ScenarioFailure(f"libvirt still finds the secret for {usage_id} after undefine")


def forget_secrets(session):
    """Volume secrets an earlier failed run left in the daemon (every one here is this runner's)."""
    for secret in session.conn.listAllSecrets(0):
        if secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_VOLUME:
            secret.undefine()


# --- the disk XML ------------------------------------------------------------------------------


def _encryption(secret_uuid):
    return (
        f"<encryption format='luks'><secret type='passphrase' uuid='{secret_uuid}'/></encryption>"
    )


def volume_xml(volume, cache, secret_uuid):
    """nova's LibvirtBaseVolumeDriver.get_config for a file volume with a volume secret: raw
    driver, the encryption a child of the disk (LibvirtConfigGuestDisk.volume_encryption)."""
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw' cache='{cache}'/>"
        f"<source file='{volume}'/><target dev='{TARGET}' bus='virtio'/>"
        f"<serial>{SUM_SERIAL}</serial>{_encryption(secret_uuid)}</disk>"
    )


def image_xml(image, cache, secret_uuid):
    """nova's Image.libvirt_info for an encrypted qcow2 disk: the encryption a child of the source
    (LibvirtConfigGuestDisk.ephemeral_encryption)."""
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='{cache}'/>"
        f"<source file='{image}'>{_encryption(secret_uuid)}</source>"
        f"<target dev='{TARGET}' bus='virtio'/><serial>{SUM_SERIAL}</serial></disk>"
    )


def live_disk(dom, source):
    """The <disk> element of the running domain whose source is `source`, or None."""
    for disk in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
        element = disk.find("source")
        if element is not None and element.get("file") == source:
            return disk
    return None


def _listed(dom, source, flags):
    return source in dom.XMLDesc(flags)


# --- attach and detach, as nova's attach_volume and _detach_with_retry -------------------------


def attach(session, dom, xml, source, secret_uuid, md5):
    """Hot-plugs the disk into the running guest and into its persistent definition; the guest
    must see it and read the data the host wrote. Returns (guest's disk name, seconds)."""
    offset = session.console.size()
    started = time.monotonic()
    dom.attachDeviceFlags(xml, ATTACH_FLAGS)
    timeout = session.job_timeout
    match = session.console.wait_for(
        SUM_RE, offset, timeout, f"the guest's checksum of the disk with serial {SUM_SERIAL}"
    )
    attach_s = time.monotonic() - started
    name, seen = match.group(1), match.group(2)
    if seen != md5:
        raise ScenarioFailure(
            f"the guest read {BLOCKS * BLOCK // 1024} KiB with md5 {seen} from the decrypted "
            f"disk {name}; the host wrote {md5}"
            + (
                " (the md5 of nothing: the guest could not read it)"
                if seen.startswith("d41d8")
                else ""
            )
        )
    disk = live_disk(dom, source)
    if disk is None:
        raise ScenarioFailure(f"the running domain does not list {source} after the attach")
    encryption = disk.find(".//encryption")
    secret = encryption.find("secret") if encryption is not None else None
    if secret is None or encryption.get("format") != "luks" or secret.get("uuid") != secret_uuid:
        raise ScenarioFailure(
            f"the running domain lists {source} without <encryption format='luks'> and its secret"
        )
    if not _listed(dom, source, libvirt.VIR_DOMAIN_XML_INACTIVE):
        raise ScenarioFailure(f"the persistent definition does not list {source} after the attach")
    return name, attach_s


def detach(session, dom, xml, source, name):
    """nova's _detach_with_retry: from the persistent definition first, then from the running
    guest, waiting for libvirt's device-removed event (one attempt, bounded by job_timeout);
    the guest must report the disk gone. Returns seconds."""
    disk = live_disk(dom, source)
    alias = disk.find("alias") if disk is not None else None
    if alias is None:
        raise ScenarioFailure(f"the running domain lists no alias for {source}")
    removed = threading.Event()

    def on_removed(conn, domain, device, opaque):
        if device == alias.get("name"):
            removed.set()

    timeout = session.job_timeout
    offset = session.console.size()
    started = time.monotonic()
    dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    if _listed(dom, source, libvirt.VIR_DOMAIN_XML_INACTIVE):
        raise ScenarioFailure(f"the persistent definition still lists {source} after its detach")
    callback = session.conn.domainEventRegisterAny(
        dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, on_removed, None
    )
    try:
        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if not removed.wait(timeout):
            raise ScenarioFailure(
                f"no device-removed event for {alias.get('name')} within {timeout:.0f} s "
                "of its detach"
            )
    finally:
        # The error that brought us here, if any, is the one to report.
        with contextlib.suppress(libvirt.libvirtError):
            session.conn.domainEventDeregisterAny(callback)
    session.console.wait_for(
        re.compile(re.escape(f"HVGATE-DISK-REMOVED {name}")),
        offset,
        timeout,
        f"the guest's report that {name} is gone",
    )
    if live_disk(dom, source) is not None:
        raise ScenarioFailure(f"the running domain still lists {source} after its removed event")
    return time.monotonic() - started


# --- the scenarios -----------------------------------------------------------------------------


def encrypted_volume(session):
    """An encrypted cinder volume attached to a running guest with QEMU's native LUKS: cinder's
    _create_encrypted_volume (`qemu-img create -f luks` with the type's cipher), nova's
    _attach_encryptor (a secret of usage 'volume' named by the volume id, holding the hex of the
    volume's key), LibvirtBaseVolumeDriver.get_config (disk-level <encryption>), attach_volume,
    then detach_volume: _detach_with_retry and _detach_encryptor (the secret undefined)."""
    dom = session.ensure_running()
    secret_daemon(session)
    forget_secrets(session)
    volume, key = fresh(path("volume.luks"), path("volume.key"))
    volume_id = str(uuid.uuid4())
    # The key manager's symmetric key, as nova and cinder turn it into a passphrase.
    passphrase = os.urandom(32).hex()
    commands, md5 = new_data()
    key_file("volume.key", passphrase)
    started = time.monotonic()
    try:
        create_cinder_volume(volume, key)
        create_s = time.monotonic() - started
        write_encrypted(volume, key, commands)
    finally:
        os.unlink(key)
    header = check_encrypted_info(
        volume, "luks", {"cipher-alg": "aes-256", "cipher-mode": "xts", "ivgen-alg": "plain64"}
    )
    if find_secret(session, volume_id) is not None:
        raise ScenarioFailure(f"libvirt has a secret for the new volume {volume_id} already")
    secret = define_secret(session, "encrypted-volume", volume_id, passphrase)
    xml = volume_xml(volume, cache_mode(path()), secret.UUIDString())
    name, attach_s = attach(session, dom, xml, volume, secret.UUIDString(), md5)
    detach_s = detach(session, dom, xml, volume, name)
    delete_secret(session, volume_id)
    session.wait_alive()
    return {
        "create_s": round(create_s, 2),
        "attach_s": round(attach_s, 2),
        "detach_s": round(detach_s, 2),
        "payload_offset": header.get("payload-offset"),
        "guest_disk": name,
    }


def encrypted_image(session):
    """nova's ephemeral encryption (hw:ephemeral_encryption, format luks): the instance's image
    converted as nova/privsep/qemu.py's unprivileged_convert_image does, into `-O luks` and into
    qcow2 with encrypt.format=luks; the passphrase (base64 of 64 random bytes, as
    crypto.create_encryption_secret) in a secret of usage '<instance>_<bdm>' with the key
    manager's UUID (_add_ephemeral_encryption_driver_bdm_attrs); the qcow2 attached with the
    <encryption> inside <source> (Image.libvirt_info), detached, and the secret deleted
    (_cleanup_ephemeral_encryption_secrets)."""
    dom = session.ensure_running()
    secret_daemon(session)
    forget_secrets(session)
    image, luks, qcow2, key = fresh(
        path("image.qcow2"), path("image.luks"), path("image-luks.qcow2"), path("image.key")
    )
    passphrase = base64.b64encode(os.urandom(64)).decode("ascii")
    commands, md5 = new_data()
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, f"{SIZE_MIB}M"])
    run(["qemu-io", "-f", "qcow2", *commands, image])
    cache = cache_mode(path())
    key_file("image.key", passphrase)
    started = time.monotonic()
    try:
        nova_convert(image, luks, "luks", key, cache)
        luks_s = time.monotonic() - started
        nova_convert(image, qcow2, "qcow2", key, cache)
    finally:
        os.unlink(key)
    qcow2_s = time.monotonic() - started - luks_s
    # What the LUKS header records: not iter-time, and no IV hash for plain64.
    cipher = {k: v for k, v in NOVA_LUKS_OPTIONS if k not in ("iter-time", "ivgen-hash-alg")}
    check_encrypted_info(luks, "luks", cipher)
    check_encrypted_info(qcow2, "qcow2", cipher)
    usage_id = f"{uuid.uuid4()}_{uuid.uuid4()}"
    secret_uuid = str(uuid.uuid4())
    define_secret(session, "encrypted-image", usage_id, passphrase, secret_uuid)
    xml = image_xml(qcow2, cache, secret_uuid)
    name, attach_s = attach(session, dom, xml, qcow2, secret_uuid, md5)
    detach_s = detach(session, dom, xml, qcow2, name)
    delete_secret(session, usage_id)
    session.wait_alive()
    return {
        "convert_luks_s": round(luks_s, 2),
        "convert_qcow2_s": round(qcow2_s, 2),
        "cache": cache,
        "attach_s": round(attach_s, 2),
        "detach_s": round(detach_s, 2),
        "guest_disk": name,
    }


SCENARIOS = {"encrypted-volume": encrypted_volume, "encrypted-image": encrypted_image}
