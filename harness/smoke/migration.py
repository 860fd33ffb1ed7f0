"""Live migration, container side: the destination's daemon (`python3 -m smoke.migration serve`)
and the migration scenarios, run in the source container against that destination over TCP.

The host (harness/migrate.py) puts both containers on a private network, mounts one Docker
volume at SHARED_DIR in both, and gives the runner the destination's address in PEER_ENV.
"""

import contextlib
import glob
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import libvirt

from . import daemons
from .guest import (
    DOMAIN,
    READY_RE,
    Console,
    ScenarioFailure,
    domain_xml,
    path,
    run,
)

PEER_ENV = "HVGATE_MIGRATION_PEER"
SHARED_DIR = "/var/lib/hvgate/shared"  # the Docker volume, at the same path in both containers
COPIED_DIR = path("migrate")  # local to each container: block migration copies the disk here
DISK_SIZE = "64M"
MIGRATION_LIMIT = 120.0  # seconds for one migration call; a few are usual, even under TCG
BEAT_WAIT = 60.0  # seconds for a heartbeat (four a second) on a loaded host
# The destination's daemon takes TCP without authentication: only ever on the run's private
# network.
LISTEN = {"listen_tls": "0", "listen_tcp": "1", "auth_tcp": '"none"'}


def dotted(number):
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def nova_flags():
    """nova's flags: the source's daemon drives the migration itself (peer to peer), the guest
    keeps running, the destination keeps the definition and the source drops it."""
    return (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )


def _configure(filename, settings):
    """Sets keys in a libvirt daemon config file, keeping every other line."""
    lines = []
    with contextlib.suppress(FileNotFoundError), open(filename, encoding="utf-8") as handle:
        lines = [
            line
            for line in handle.read().splitlines()
            if line.split("=", 1)[0].strip() not in settings
        ]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    with open(filename, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _start(argv):
    name = os.path.basename(argv[0])
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{daemons.log_file(name)}")
    subprocess.run([*argv, "-d"], check=True, env=env)


def serve(timeout=60.0):
    """Starts the destination's daemons, listening on TCP; returns what the source needs to know."""
    os.makedirs(os.path.join(daemons.LOG_DIR, "qemu"), exist_ok=True)
    os.makedirs(COPIED_DIR, exist_ok=True)
    # The disk block migration copies into must exist, as nova's pre_live_migration makes it
    # (libvirt creates a missing one only in a storage pool, and not every cell has that
    # driver). Every migration overwrites all of it: whatever an earlier one left is harmless.
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            os.path.join(COPIED_DIR, "disk.qcow2"),
            DISK_SIZE,
        ]
    )
    daemon = daemons.daemon_name()
    # A host UUID of its own: containers of one host may read the same SMBIOS UUID, and libvirt
    # refuses to migrate to "the same host".
    host_uuid = {"host_uuid": f'"{uuid.uuid4()}"'}
    subprocess.run(["virtlogd", "-d"], check=True)  # a fresh container: nothing runs yet
    if daemon == "libvirtd":
        _configure("/etc/libvirt/libvirtd.conf", {**LISTEN, **host_uuid})
        _start(["libvirtd", "--listen"])
    else:
        # Modular daemons: virtproxyd listens and hands the calls on to virtqemud.
        _configure("/etc/libvirt/virtqemud.conf", host_uuid)
        _configure("/etc/libvirt/virtproxyd.conf", LISTEN)
        for argv in (["virtqemud"], ["virtproxyd", "--listen"]):
            _start(argv)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = libvirt.open(f"qemu+tcp://{os.uname().nodename}/system")
            break
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise ScenarioFailure(
                    f"{daemon} did not accept a TCP connection within {timeout:.0f} s: {exc}"
                ) from None
            time.sleep(0.2)
    try:
        return {
            "daemon": daemon,
            "hostname": conn.getHostname(),
            "libvirt_version": dotted(conn.getLibVersion()),
            "qemu_version": dotted(conn.getVersion()),
        }
    finally:
        conn.close()


class JobWatch:
    """Polls the source's migration job for when QEMU began moving data: the call's time
    before that is libvirt's part (connecting to the destination, preparing it, starting its
    QEMU). Aborts the job after `limit` seconds: the scenario's alarm cannot interrupt a call
    that waits inside libvirt."""

    def __init__(self, dom, limit):
        self.dom = dom
        self.limit = limit
        self.started = time.monotonic()
        self.transfer_started = None
        self.ended = None
        self.aborted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(0.05):
            if not self.aborted and time.monotonic() - self.started > self.limit:
                self.aborted = True
                with contextlib.suppress(libvirt.libvirtError):
                    self.dom.abortJob()
            try:
                stats = self.dom.jobStats(0)
            except libvirt.libvirtError:
                continue
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            moved = stats.get("memory_processed", 0) + stats.get("disk_processed", 0)
            if moved and self.transfer_started is None:
                self.transfer_started = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.ended = time.monotonic()
        self._stop.set()
        self._thread.join(5)

    def figures(self):
        total = self.ended - self.started
        out = {"call_s": round(total, 2)}
        if self.transfer_started is not None:
            out["transfer_s"] = round(self.ended - self.transfer_started, 2)
            out["before_transfer_s"] = round(self.transfer_started - self.started, 2)
        return out


def _remove(conn, name=DOMAIN):
    """Destroys and undefines a domain of an earlier (failed) run, if there is one."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


def _disks(directory):
    """A nova-like disk (an overlay on a base image) in `directory`, fresh."""
    os.makedirs(directory, exist_ok=True)
    base, disk = os.path.join(directory, "base.qcow2"), os.path.join(directory, "disk.qcow2")
    for stale in (base, disk):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, DISK_SIZE])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk])
    return disk


def _source_clean(session, timeout=15.0):
    """What the source must not keep after a migration: the domain, QEMU, its runtime files."""
    problems = []
    left = [d.name() for d in session.conn.listAllDomains(0)]
    if left:
        problems.append(f"domains still on the source: {left}")
    deadline = time.monotonic() + timeout
    while daemons.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemons.qemu_pids():
        problems.append(f"QEMU still running on the source: {daemons.qemu_pids()}")
    stray = glob.glob(f"/run/libvirt/qemu/{DOMAIN}.*") + glob.glob(
        f"/etc/libvirt/qemu/{DOMAIN}.xml"
    )
    if stray:
        problems.append(f"files left on the source: {stray}")
    if problems:
        raise ScenarioFailure("; ".join(problems))


def migrate_once(session, dest, peer, shared):
    """Boots a guest on the source, migrates it live to `dest`, and checks both sides."""
    kind = "shared storage" if shared else "block migration"
    session.destroy()
    session.boot_id = None
    _remove(dest)
    console = Console(
        os.path.join(SHARED_DIR, f"migration-console-{'shared' if shared else 'block'}.log")
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(console.filename)
    disk = _disks(SHARED_DIR if shared else COPIED_DIR)
    # The destination's address in both URIs: libvirt and QEMU connect without resolving a name
    # (the destination would otherwise name itself by its host name, which the source must
    # resolve; a slow resolver stalls the call long before QEMU's part starts).
    params = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{_uri_host(peer)}"}
    flags = nova_flags()
    if shared:
        # The volume is a local filesystem to libvirt, which never counts one as shared
        # storage (and refuses before it looks at the cache mode): say the storage is shared.
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    else:
        # Block migration: QEMU copies the listed disks, all of each, over NBD. (nova's
        # NON_SHARED_INC copies only the top image, onto a fresh overlay it makes each time.)
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = ["vda"]
    dom = session.conn.defineXML(
        domain_xml(session.accel, disk, console.filename, versions=session.versions())
    )
    dom.create()
    ready = console.wait_for(READY_RE, 0, session.boot_timeout, "the guest's ready marker")
    boot_id = ready.group(1)
    beat_before = console.wait_heartbeat_after(0, boot_id, 0, BEAT_WAIT)
    with JobWatch(dom, MIGRATION_LIMIT) as watch:
        try:
            dom.migrateToURI3(daemon_uri(peer), params, flags)
        except libvirt.libvirtError as exc:
            if watch.aborted:
                raise ScenarioFailure(
                    f"{kind}: not done within {MIGRATION_LIMIT:.0f} s, aborted: {str(exc).strip()}"
                ) from None
            raise ScenarioFailure(f"{kind}: {str(exc).strip()}") from None
    figures = watch.figures()
    try:
        moved = dest.lookupByName(DOMAIN)
    except libvirt.libvirtError:
        raise ScenarioFailure(f"{kind}: the domain is not on the destination") from None
    if not moved.isActive() or moved.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        raise ScenarioFailure(f"{kind}: the domain is not running on the destination")
    if not moved.isPersistent():
        raise ScenarioFailure(f"{kind}: the destination did not keep the domain's definition")
    _source_clean(session)
    # Only the destination's QEMU is left: a beat after this point is the destination's.
    offset = console.size()
    beat_after = console.wait_heartbeat_after(beat_before, boot_id, offset, BEAT_WAIT)
    if READY_RE.search(console.text(offset)):
        raise ScenarioFailure(f"{kind}: the guest booted again on the destination")
    with contextlib.suppress(libvirt.libvirtError):
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        for key in ("time_elapsed", "downtime"):
            if key in stats:
                figures[f"libvirt_{key}_ms"] = stats[key]
        for key in ("memory_processed", "disk_processed"):
            if stats.get(key):
                figures[f"{key}_bytes"] = stats[key]
    _remove(dest)
    return {**figures, "beat_before": beat_before, "beat_after": beat_after}


def _uri_host(address):
    return f"[{address}]" if ":" in address else address


def daemon_uri(address):
    """The destination daemon's URI: TCP, no authentication (a private network)."""
    return f"qemu+tcp://{_uri_host(address)}/system"


def live_migration(session):
    """Migrates a running guest to the destination twice: on shared storage, then copying it."""
    name = os.environ.get(PEER_ENV)
    if not name:
        # The host's omission, not libvirt's: a runner error, not a failed run.
        raise RuntimeError(f"live-migration needs a second host: {PEER_ENV} is not set")
    dest = libvirt.open(daemon_uri(name))
    try:
        return {
            "destination": {
                "libvirt_version": dotted(dest.getLibVersion()),
                "qemu_version": dotted(dest.getVersion()),
            },
            "shared": migrate_once(session, dest, name, shared=True),
            "block": migrate_once(session, dest, name, shared=False),
        }
    finally:
        session.boot_id = None  # the next scenario boots a guest of its own
        dest.close()


# The host runs it for `upgrade-migration` too, with a destination of another (newer) cell.
SCENARIOS = {"live-migration": live_migration}


def main(argv):
    if argv[1:] != ["serve"]:
        print("usage: python3 -m smoke.migration serve", file=sys.stderr)
        return 2
    try:
        print(json.dumps(serve()))
    except (ScenarioFailure, libvirt.libvirtError, subprocess.CalledProcessError) as exc:
        print(json.dumps({"error": str(exc).strip()}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
