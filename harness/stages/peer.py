"""Live migration, host side: the second container a migration scenario needs (of the same cell,
or of a newer one for an upgrade migration), a private network and a volume both mount.

Everything is labelled with the run (io.hvgate.run), so a killed run's `matrix.clean` removes it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests

from ..core.model import PEER_SCENARIOS, Cell, Matrix, Migration, expand
from ..core.progress import say
from ..core.results import ScenarioRun, SmokeReport
from ..engine import client as eng

# The same names as harness/smoke/migration.py (a unit test keeps them equal).
PEER_ENV = "HVGATE_MIGRATION_PEER"
SHARED_DIR = "/var/lib/hvgate/shared"
REMOTE = "/opt/hvgate"
UPGRADE = "upgrade-migration"
# Host names and network aliases: short, and unambiguous on a network of their own.
SOURCE_HOST = "hvgate-source"
DESTINATION_HOST = "hvgate-destination"
ENGINE_FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException)


class PeerFailure(Exception):
    """The destination container or its daemon did not come up: the tool's failure, not libvirt's."""


def needs_peer(scenarios: Iterable[str]) -> bool:
    return any(name in PEER_SCENARIOS for name in scenarios)


def _quiet(action: Callable[[], object]) -> None:
    # Cleanup goes on past what is already gone or cannot be removed.
    with contextlib.suppress(*ENGINE_FAILURES):
        action()


@dataclass
class Peer:
    """The destination of a run's migrations; `NO_PEER` when the run needs none."""

    engine: Any = None
    network: str | None = None
    volume: str | None = None
    container: Any = None
    address: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def source_options(self) -> dict[str, Any]:
        """Extra arguments of the source container's `containers.run`."""
        if self.network is None:
            return {}
        return _attached(self.engine, self.network, self.volume, SOURCE_HOST)

    def environment(self) -> dict[str, str]:
        """The smoke runner's environment: the destination's address (no name to resolve)."""
        return {PEER_ENV: self.address} if self.address else {}

    def close(self) -> None:
        """Removes the destination, then the network and the volume: call it once the source
        container is gone (a network with a container attached cannot be removed)."""
        if self.container is not None:
            _quiet(lambda: self.container.remove(force=True, v=True))
        if self.network is not None:
            _quiet(lambda: self.engine.networks.get(self.network).remove())
        if self.volume is not None:
            _quiet(lambda: self.engine.volumes.get(self.volume).remove(force=True))


NO_PEER = Peer()


def _attached(
    engine: docker.DockerClient, network: str, volume: str | None, hostname: str
) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "network": network,
        # The alias makes the host name resolvable by Docker's own DNS on this network.
        "networking_config": {network: engine.api.create_endpoint_config(aliases=[hostname])},
        "volumes": {volume: {"bind": SHARED_DIR, "mode": "rw"}} if volume else {},
    }


def start_peer(
    engine: docker.DockerClient,
    scenarios: Iterable[str],
    run_id: str,
    name: str,
    cell_id: str,
    image: str,
    devices: list[str],
    files: Iterable[bytes],
) -> Peer:
    """The destination for `scenarios`, or NO_PEER when none needs one. `name` prefixes the
    network, volume and container, `cell_id` labels them; `files` are tars unpacked under
    /opt/hvgate in the container. Raises PeerFailure or an engine error, having removed what
    it made."""
    if not needs_peer(scenarios):
        return NO_PEER
    labels = {eng.LABEL_RUN: run_id, eng.LABEL_CELL: cell_id}
    peer = Peer(engine)
    try:
        # Internal: the daemons listen without authentication, and only here.
        network, volume = f"{name}-migration", f"{name}-shared"
        engine.networks.create(network, driver="bridge", internal=True, labels=labels)
        peer.network = network
        engine.volumes.create(volume, labels=labels)
        peer.volume = volume
        attached = _attached(engine, network, volume, DESTINATION_HOST)
        peer.container = engine.containers.run(
            image,
            ["sleep", "infinity"],
            detach=True,
            init=True,
            name=f"{name}-destination",
            labels=labels,
            devices=devices,
            hostname=attached["hostname"],
            network=network,
            networking_config=attached["networking_config"],
            volumes=attached["volumes"],
        )
        for tar in files:
            peer.container.put_archive(REMOTE, tar)
        peer.info = _serve(peer.container)
        peer.container.reload()
        networks = peer.container.attrs["NetworkSettings"]["Networks"]
        peer.address = networks[peer.network]["IPAddress"]
    except BaseException:
        peer.close()
        raise
    say(cell_id, f"migration destination {peer.address}: {peer.info.get('daemon')} listening")
    return peer


def _serve(container: Any) -> dict[str, Any]:
    """Starts the destination's daemon listening on TCP; its report, or PeerFailure."""
    code, out = container.exec_run(["python3", "-m", "smoke.migration", "serve"], workdir=REMOTE)
    text = out.decode(errors="replace").strip()
    try:
        info = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        info = {"error": f"exited {code}: {' | '.join(text.splitlines()[-5:])}"}
    if code != 0 or "error" in info:
        raise PeerFailure(f"the migration destination did not start: {info.get('error')}")
    return dict(info)


def cell_image(
    engine: docker.DockerClient, cell_id: str, images: Mapping[str, str] | None = None
) -> str | None:
    """The cell's image: the one this run built or found (`images`), else the newest built
    for it by any checkout (`matrix.build` tags it hvgate/cell:ID), if the engine has it."""
    for tag in ((images or {}).get(cell_id), f"hvgate/cell:{cell_id}"):
        if tag is None:
            continue
        try:
            engine.images.get(tag)
        except docker.errors.ImageNotFound:
            continue
        return tag
    return None


def pairs_into(matrix: Matrix, cell_id: str) -> list[Migration]:
    return [pair for pair in matrix.migrations if pair.to == cell_id]


def upgrades(
    report: SmokeReport | None,
    engine: docker.DockerClient,
    matrix: Matrix,
    cell: Cell,
    run_source: Callable[[Cell, str], tuple[SmokeReport | None, str | None]],
    images: Mapping[str, str] | None = None,
) -> SmokeReport | None:
    """Adds the upgrade migrations into `cell` to its smoke report, as scenario
    `upgrade-migration`: `run_source(older cell, its image)` runs the older cell's container
    against a destination of this cell's image and returns (report, error)."""
    pairs = pairs_into(matrix, cell.id)
    if report is None or not pairs:
        return report
    cells = {c.id: c for c in expand(matrix)}

    def not_applicable(reason: str) -> None:
        # The judge records it as the scenario's status when no pair into the cell ran.
        entries = report.get("not_applicable") or []
        entries.append({"name": UPGRADE, "reason": reason})
        report["not_applicable"] = entries
        say(cell.id, f"{UPGRADE} not applicable: {reason}")

    for pair in pairs:
        image = cell_image(engine, pair.from_, images)
        if image is None:
            not_applicable(
                f"from {pair.from_}: its image is not built "
                f"(`hvgate matrix.build --cells {pair.from_}`)"
            )
            continue
        say(cell.id, f"{UPGRADE} from {pair.from_}")
        source_report, error = run_source(cells[pair.from_], image)
        skipped = [
            entry["reason"]
            for entry in (source_report.get("not_applicable") if source_report else None) or []
            if entry.get("name") in PEER_SCENARIOS
        ]
        if skipped and not error:
            not_applicable(f"from {pair.from_}: {'; '.join(skipped)}")
            continue
        report["runs"].extend(upgrade_runs(pair, source_report, error))
    return report


def upgrade_runs(
    pair: Migration, source: SmokeReport | None, error: str | None
) -> list[list[ScenarioRun]]:
    """The source container's runs, each result naming the cell and versions it came from; a
    source that failed before any run is one runner error (the tool's, not libvirt's)."""
    origin: dict[str, Any] = {"from": pair.from_}
    if source is not None:
        origin.update(
            libvirt_version=source.get("libvirt_version"), qemu_version=source.get("qemu_version")
        )
    failure = error or (source.get("setup_error") if source else None)
    if source is None or failure or not source.get("runs"):
        message = f"from {pair.from_}: {failure or 'the source container ran nothing'}"
        failed: ScenarioRun = {
            "name": UPGRADE,
            "status": "error",
            "error": message,
            "duration_s": 0.0,
            "details": origin,
            "logs": {},
        }
        return [[failed]]
    # The source ran `live-migration`; into another cell, it is this cell's upgrade migration.
    return [
        [
            {**result, "name": UPGRADE, "details": {**origin, **(result.get("details") or {})}}
            for result in run
        ]
        for run in source["runs"]
    ]
