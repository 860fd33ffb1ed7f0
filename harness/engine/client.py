"""The Docker engine: one client, the labels on everything the tool starts, and cleanup by label."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors
import requests

from ..core.errors import EngineError
from ..core.progress import say
from ..core.text import one_line

LABEL = "io.hvgate"
LABEL_RUN = f"{LABEL}.run"
LABEL_CELL = f"{LABEL}.cell"
LABEL_HASH = f"{LABEL}.hash"
LABEL_VERSION = f"{LABEL}.version."


def client() -> docker.DockerClient:
    """A client for the engine DOCKER_HOST (or the default socket) names; fails clearly."""
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = one_line(exc, None)
        raise EngineError(f"cannot reach the Docker engine at {where}: {reason}") from None
    return engine


def tar_of(files: Iterable[tuple[str, bytes, int]]) -> bytes:
    """An in-memory tar of (name, content, mode) entries, with fixed metadata so it hashes stably."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content, mode in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def files_under(directory: Path, prefix: str) -> list[tuple[str, bytes, int]]:
    return [
        (f"{prefix}/{path.relative_to(directory)}", path.read_bytes(), path.stat().st_mode & 0o777)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]


def remove_labelled(engine: docker.DockerClient, run_id: str | None = None) -> list[str]:
    """Removes containers, networks and volumes the tool labelled (of one run, or all)."""
    selector = f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN
    removed = []
    # One already gone (its run's own cleanup got there first) is not a failure.
    for container in engine.containers.list(all=True, filters={"label": selector}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
            removed.append(f"container {container.name}")
    for network in engine.networks.list(filters={"label": selector}):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
            removed.append(f"network {network.name}")
    for volume in engine.volumes.list(filters={"label": selector}):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
    return removed


def cleanup(engine: docker.DockerClient, run_id: str) -> None:
    """Removes one run's containers, networks and volumes; never raises (an interrupted run
    still writes its results), and says what it could not do."""
    try:
        removed = remove_labelled(engine, run_id)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = one_line(exc, 200)
        say("run", f"could not remove run {run_id}'s containers ({reason}); `hvgate matrix.clean`")
        return
    if removed:
        say("run", f"removed {', '.join(removed)}")
