"""A Docker engine behind harness.engine.protocol.Engine: what a run does on one engine, done by
the stages with that engine's client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import docker
import docker.errors

from ..core.model import Base, Cell, Matrix
from ..core.options import SmokeJob
from ..core.results import BuildResult, Found, SmokeRun
from ..engine import client as eng
from ..engine.bases import Bases
from ..engine.lease import Leases
from ..engine.package_cache import PackageCache, serving
from ..stages.build import build_cell, build_guest, existing_image
from ..stages.smoke import run_cell
from .probe import probe_accel


class DockerEngine:
    """One Docker engine of one run, and the run's one Bases of that engine."""

    def __init__(self, name: str, client: docker.DockerClient):
        self.name = name  # as the user gave it: a URL or a Docker context's name
        self.client = client
        self._bases: Bases | None = None
        # The run's lease on this engine, taken before its first container (with that
        # container's image): `matrix.clean` elsewhere keeps what a live run has.
        self.leases = Leases(client)

    def __repr__(self) -> str:
        return f"DockerEngine({self.name!r})"

    def has_image(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def save_image(self, tag: str) -> Iterable[bytes]:
        return self.client.images.get(tag).save(named=tag)

    def load_image(self, chunks: Iterable[bytes]) -> None:
        # requests sends any iterable as a chunked body: the image is never held whole.
        self.client.images.load(chunks)  # type: ignore[arg-type]

    def ensure_base(self, name: str, bases: Mapping[str, Base], log_dir: Path) -> str:
        if self._bases is None:
            self._bases = Bases(self.client, dict(bases), log_dir)
        return self._bases.ensure(name)

    def build_guest(
        self, matrix: Matrix, base_id: str, log_dir: Path, cache: PackageCache | None
    ) -> Path:
        return build_guest(self.client, matrix, log_dir, base_id=base_id, cache=cache)

    def build_cell(
        self, cell: Cell, base_id: str, log_dir: Path, timeout: float, cache: PackageCache | None
    ) -> BuildResult:
        return build_cell(self.client, cell, base_id, log_dir, timeout, cache)

    def existing_image(self, cell: Cell) -> BuildResult:
        return existing_image(self.client, cell)

    def package_cache(self, base_image: str, log_dir: Path) -> AbstractContextManager[PackageCache]:
        return serving(self.client, base_image, log_dir)

    def probe(self, job: SmokeJob) -> Found:
        self.leases.hold(job.run_id, job.image)
        policy = job.matrix.policy
        return probe_accel(
            self.client, job.image, job.guest, policy, job.run_id, job.log_dir, job.stop
        )

    def smoke(self, job: SmokeJob) -> SmokeRun:
        self.leases.hold(job.run_id, job.image)
        return run_cell(self.client, job)

    def cleanup(self, run_id: str) -> None:
        eng.cleanup(self.client, run_id)
