"""Leases held on the Docker engine itself, so that runs of several checkouts, hosts or CI jobs
sharing one engine can tell which of them are alive.

A lease is a container running `cat` on its standard input, which the holder keeps attached:
when the holder's process ends, however it ends (even SIGKILL, or a host that goes away), its
connection closes, the engine closes the container's input, `cat` ends and the engine removes
the container. So a running lease container is a live holder, and no heartbeat or expiry is
needed. A lease with a fixed name is also a mutex: the engine creates one name once.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors

from . import client as eng

# The run id whose lease this is (a run's objects carry io.hvgate.run=RUN_ID).
LABEL_LEASE = f"{eng.LABEL}.lease"
# A lease of a user of the shared package cache.
LABEL_CACHE_USER = f"{eng.LABEL}.cache-user"
STALE = 30.0


class Lease:
    """One lease container, held until `release` or the end of the process."""

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        name: str,
        labels: dict[str, str],
    ):
        self.client = client
        self.name = name
        created = client.api.create_container(
            image,
            ["cat"],
            name=name,
            labels=labels,
            # Not detached, with an open input: StdinOnce, closed when the attached client goes.
            stdin_open=True,
            detach=False,
            entrypoint=[],
            host_config=client.api.create_host_config(auto_remove=True, network_mode="none"),
        )
        container = client.containers.get(created["Id"])
        try:
            # Attached before it starts: the container's input is this connection.
            self._socket: Any = container.attach_socket(params={"stdin": 1, "stream": 1})
            container.start()
        except BaseException:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise
        self.container = container

    def release(self) -> None:
        """Ends the lease now (the end of the process would, too)."""
        # The wrapper and the socket under it (docker's attach gives a SocketIO on a unix one).
        for end in (self._socket, getattr(self._socket, "_sock", None)):
            with contextlib.suppress(Exception):
                if end is not None:
                    end.close()
        with contextlib.suppress(docker.errors.APIError):
            self.container.remove(force=True)


def alive(client: docker.DockerClient, label: str) -> dict[str, str]:
    """The running lease containers with this label: container name -> the label's value."""
    found = client.containers.list(filters={"label": label, "status": "running"})
    return {str(c.name): c.labels.get(label, "") for c in found}


def live_runs(client: docker.DockerClient) -> set[str]:
    """The run ids (or shell patterns of them: `resolve-*`) whose runs hold a lease on this
    engine."""
    return set(alive(client, LABEL_LEASE).values())


def run_lease(client: docker.DockerClient, run_id: str, image: str) -> Lease:
    """A run's lease on the engine: its containers, networks and volumes are kept by `clean`
    while it is held. `run_id` may be a shell pattern, for a task whose objects carry several
    (`matrix.resolve`: one per cell)."""
    return Lease(
        client,
        image,
        f"hvgate-lease-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{secrets.token_hex(3)}",
        {LABEL_LEASE: run_id},
    )


@contextlib.contextmanager
def mutex(
    client: docker.DockerClient, image: str, name: str, timeout: float = 600.0
) -> Iterator[None]:
    """Held by one holder at a time on the engine (any process, any host); a holder that dies
    lets go at once. Waits up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = Lease(client, image, name, {eng.LABEL: "mutex"})
            break
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or time.monotonic() > deadline:
                raise
            _remove_if_stale(client, name)
            time.sleep(0.2 + secrets.randbelow(300) / 1000)
    try:
        yield
    finally:
        held.release()  # removes the container: the name is free again


def _remove_if_stale(client: docker.DockerClient, name: str) -> None:
    """A lease container that never started (its holder died between creating and starting
    it, a matter of milliseconds) would hold its name for ever: removed after STALE seconds."""
    with contextlib.suppress(docker.errors.APIError, ValueError):
        container = client.containers.get(name)
        created = container.attrs.get("Created", "")
        age = (
            time.time()
            - datetime.datetime.fromisoformat(created[:19])
            .replace(tzinfo=datetime.timezone.utc)
            .timestamp()
        )
        if container.status != "running" and age > STALE:
            container.remove(force=True)


class Leases:
    """The leases a run holds on one engine, taken on first need (a lease needs an image)."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}

    def hold(self, run_id: str, image: str) -> None:
        with self._lock:
            if run_id not in self._held:
                self._held[run_id] = run_lease(self.client, run_id, image)

    def release(self, run_id: str) -> None:
        with self._lock:
            held = self._held.pop(run_id, None)
        if held is not None:
            held.release()


# Objects of no one run: the package cache (kept while a run uses it), and what a build or a
# base's bootstrap starts for a moment (kept while any run is alive: they hold no lease of their
# own).
CACHE_RUN = "package-cache"
TRANSIENT_RUNS = ("guest-build", "keyring")


def labelled(client: docker.DockerClient) -> list[tuple[str, str, Any]]:
    """Every container, network and volume labelled with a run: (kind, run id, object)."""
    found: list[tuple[str, str, Any]] = []
    selector: Any = {"label": eng.LABEL_RUN}
    collections: list[tuple[str, list[Any]]] = [
        ("container", client.containers.list(all=True, filters=selector)),
        ("network", client.networks.list(filters=selector)),
        ("volume", client.volumes.list(filters=selector)),
    ]
    for kind, collection in collections:
        for item in collection:
            labels = (item.attrs.get("Labels") if kind != "container" else item.labels) or {}
            found.append((kind, labels.get(eng.LABEL_RUN, ""), item))
    return found


def clean(
    client: docker.DockerClient, runs: list[str] | None = None, everything: bool = False
) -> tuple[list[str], list[str]]:
    """Removes the containers, networks and volumes of runs that are no longer alive (of the
    runs whose ids match `runs`' shell patterns, when given); with `everything`, those of live
    runs too, and their leases. Returns what it removed and what it kept, and why."""
    # Objects first, leases second: a run takes its lease before it creates anything, so an
    # object seen here belongs to a run whose lease is seen below if it is alive.
    objects = labelled(client)
    live = live_runs(client)
    cache_users = len(alive(client, LABEL_CACHE_USER))
    removed, kept = [], []
    for kind, run, item in objects:
        if runs is not None and not any(fnmatch.fnmatchcase(run, p) for p in runs):
            continue
        what = f"{kind} {item.name}"
        why = None
        holder = next((r for r in sorted(live) if fnmatch.fnmatchcase(run, r)), None)
        if holder is not None:
            why = f"run {holder} is alive"
        elif run == CACHE_RUN and cache_users:
            why = f"the package cache is in use by {cache_users} live run(s)"
        elif run in TRANSIENT_RUNS and (live or cache_users):
            why = f"a {run} object while {len(live) + cache_users} run(s) are alive"
        if why and not everything:
            kept.append(f"kept {what}: {why}")
            continue
        with contextlib.suppress(docker.errors.NotFound):
            if kind == "container":
                item.remove(force=True, v=True)
            elif kind == "volume":
                item.remove(force=True)
            else:
                item.remove()
            removed.append(f"removed {what}" + (f" (run {run})" if run else ""))
    if everything:
        for name in [*alive(client, LABEL_LEASE), *alive(client, LABEL_CACHE_USER)]:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)
                removed.append(f"removed lease {name}")
    return removed, kept
