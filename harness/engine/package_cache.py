"""What makes a re-run cheap: one package cache that every build shares (apt-cacher-ng in a
container the tool starts and stops, its downloads kept in a labelled volume between runs), and
the remembered outcome of cells whose archive could not be reached.

A run opens one PackageCache per engine (`serving`) and hands it to each build explicitly; a
build given None (--no-cache, HVGATE_PACKAGE_CACHE=off, `matrix.test`) downloads directly and
remembers nothing."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from ..core.errors import EngineError
from ..core.files import write_atomic
from ..core.paths import HOST_STATE, IMAGES
from ..core.progress import say
from ..core.text import one_line
from . import client as eng
from . import lease
from .image_build import content_hash, docker_build

RECIPE = IMAGES / "package-cache"
NAME = "hvgate-package-cache"  # the container's and the volume's
STATE_MUTEX = "hvgate-package-cache-state"
LABEL_CACHE = f"{eng.LABEL}.cache"
PORT = 3142
MOUNT = "/var/cache/apt-cacher-ng"
UNAVAILABLE = HOST_STATE / "unavailable"
# Long enough that runs of one working day reuse the answer, short enough that a nightly
# run asks the archive again.
RETRY_AFTER = 6 * 3600
FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class PackageCache:
    """The package cache of one engine for one run, started when the first build asks for it.

    Several runs (of other checkouts, results directories or hosts) may share the container:
    each holds a lease on the engine while it uses it (harness/engine/lease.py), and the last
    one to leave stops it."""

    def __init__(self, client: docker.DockerClient, base_image: str, log_dir: Path):
        self.client = client
        self.base_image = base_image
        self.log_dir = log_dir
        self._lock = threading.Lock()
        self._asked = False
        self._proxy: str | None = None
        self._lease: lease.Lease | None = None
        # Once closed (the run's schedule is over, or interrupted), a build still going on
        # downloads directly and remembers nothing, as without a cache.
        self._closed = False

    def proxy(self) -> str | None:
        """The proxy URL builds reach the cache by, or None when it could not be started."""
        with self._lock:
            if self._closed:
                return None
            if not self._asked:
                self._asked = True
                try:
                    self._proxy = self._start()
                except (EngineError, *FAILURES) as exc:
                    reason = one_line(exc, 200)
                    say("package-cache", f"warning: not used, builds download directly: {reason}")
                    self._leave()
            return self._proxy

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._leave()

    def build_args(self) -> dict[str, str]:
        """Build args that send a build's apt through the cache: `http_proxy` is one of Docker's
        predefined args, which the Dockerfile need not declare and which never invalidate the
        layer cache, so the rendered Dockerfile and the image's content hash are the same
        without it."""
        proxy = self.proxy()
        return {"http_proxy": proxy} if proxy else {}

    # --- remembered outcomes -------------------------------------------------------------------

    def remembered(self, tag: str) -> dict[str, Any] | None:
        """The 'unavailable' outcome of the build of this very content, if it is recent enough."""
        if self._closed:
            return None
        try:
            outcome = json.loads(_outcome_path(tag).read_text())
            if 0 <= time.time() - float(outcome["when"]) < RETRY_AFTER:
                return dict(outcome)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def remember(self, tag: str, reason: str, log: str | None, log_tail: tuple[str, ...]) -> None:
        """Keeps an 'unavailable' outcome: a re-run within RETRY_AFTER does not ask the archive
        again."""
        if self._closed:
            return
        outcome = {"when": time.time(), "reason": reason, "log": log, "log_tail": list(log_tail)}
        write_atomic(_outcome_path(tag), json.dumps(outcome))

    # --- start and stop, under the engine's lock -----------------------------------------------

    @contextlib.contextmanager
    def _state(self) -> Iterator[None]:
        """Held while the container is started or stopped, by any run on this engine, from any
        checkout or host: a start never meets a stop. A mutex on the engine itself."""
        with lease.mutex(self.client, self.base_image, STATE_MUTEX):
            yield

    def _start(self) -> str:
        started = time.monotonic()
        image = self._image()
        with self._state():
            # This run's lease as a user of the cache, on the engine: the last user stops it.
            self._lease = lease.Lease(
                self.client,
                self.base_image,
                f"hvgate-cache-user-{secrets.token_hex(6)}",
                {lease.LABEL_CACHE_USER: "packages"},
            )
            container = self._container(image)
            address = container.attrs["NetworkSettings"].get("IPAddress")
            if not address:
                raise EngineError("the cache container has no address on the default network")
            self._probe(image, address)
        proxy = f"http://{address}:{PORT}"
        say("package-cache", f"serving at {proxy} ({time.monotonic() - started:.1f} s to start)")
        return proxy

    def _image(self) -> str:
        """hvgate/package-cache:HASH, built once from the base image and the recipe."""
        context = eng.tar_of(eng.files_under(RECIPE, "."))
        base_id = str(self.client.images.get(self.base_image).id)
        tag = f"hvgate/package-cache:{content_hash(context, base_id)}"
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.get(tag)
            return tag
        say("package-cache", f"building {tag}")
        log = self.log_dir / "package-cache-build.log"
        ok, lines = docker_build(
            self.client, context, tag, log, "package-cache", 600, {"BASE_IMAGE": self.base_image}
        )
        if not ok:
            raise EngineError(f"its image did not build: {lines[-1] if lines else ''} (log: {log})")
        # Older recipes' images, unless a container (of another run) still uses one.
        for old in self.client.images.list(name="hvgate/package-cache"):
            if tag not in old.tags:
                with contextlib.suppress(docker.errors.APIError):
                    self.client.images.remove(str(old.id))
        return tag

    def _container(self, image: str) -> Any:
        """The running cache container: one another run started (replaced when it runs an
        older image and nobody else uses it), else a new one."""
        try:
            container = self.client.containers.get(NAME)
            current = container.attrs.get("Image") == self.client.images.get(image).id
            if container.status == "running" and (current or not self._alone()):
                return container
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        try:
            self.client.volumes.get(NAME)
        except docker.errors.NotFound:
            self.client.volumes.create(NAME, labels={LABEL_CACHE: "packages"})
        container = self.client.containers.run(
            image,
            detach=True,
            name=NAME,
            # The run label lets `matrix.clean` remove a container a killed run left behind;
            # the volume has no run label, so the downloads survive that.
            labels={LABEL_CACHE: "packages", eng.LABEL_RUN: "package-cache"},
            volumes={NAME: {"bind": MOUNT, "mode": "rw"}},
        )
        container.reload()  # the address is known once it has started
        return container

    def _alone(self) -> bool:
        """Whether no other run holds a lease on the cache (asked under the state mutex, so
        none can start meanwhile)."""
        assert self._lease is not None
        return set(lease.alive(self.client, lease.LABEL_CACHE_USER)) <= {self._lease.name}

    def _probe(self, image: str, address: str) -> None:
        """Waits until a container on the default network (where builds run) reaches the cache."""
        script = (
            f"for i in $(seq 100); do (exec 3<>/dev/tcp/{address}/{PORT}) 2>/dev/null && exit 0;"
            " sleep 0.1; done; exit 1"
        )
        try:
            self.client.containers.run(
                image,
                ["bash", "-c", script],
                remove=True,
                labels={eng.LABEL_RUN: "package-cache"},
            )
        except docker.errors.ContainerError:
            raise EngineError(
                f"the cache at {address}:{PORT} is not reachable from a container"
            ) from None

    def _leave(self) -> None:
        """Gives up this run's lease; the last user stops and removes the container."""
        if self._lease is None:
            return
        held, self._lease = self._lease, None
        try:
            with self._state():
                others = set(lease.alive(self.client, lease.LABEL_CACHE_USER)) - {held.name}
                held.release()
                if others:
                    return  # another run still builds through it
                try:
                    container = self.client.containers.get(NAME)
                    container.stop(timeout=10)
                    container.remove(force=True)
                    say("package-cache", "stopped")
                except docker.errors.NotFound:
                    pass
        except FAILURES as exc:
            held.release()
            say("package-cache", f"warning: could not stop {NAME}: {str(exc)[:200]}")


@contextlib.contextmanager
def serving(client: docker.DockerClient, base_image: str, log_dir: Path) -> Iterator[PackageCache]:
    """The engine's package cache for the builds within it (started on the first build that
    asks); stopped at the end unless other runs use it."""
    cache = PackageCache(client, base_image, log_dir)
    try:
        yield cache
    finally:
        cache.close()


def build_args(cache: PackageCache | None) -> dict[str, str]:
    """The build args of a build through `cache`; none without one."""
    return cache.build_args() if cache is not None else {}


def _outcome_path(tag: str) -> Path:
    return UNAVAILABLE / (tag.replace("/", "_").replace(":", "_") + ".json")
