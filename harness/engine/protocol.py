"""The engine as a run uses it: one small protocol, so that harness/run (the pipeline, the schedule,
the fleet) works the same against Docker (harness.run.engines.DockerEngine) and, in unit tests,
against a fake without Docker (tests/unit/run/fakes.py).

It names what a run does on one engine, not the Docker SDK's surface: images (present, copied
between engines, built), the KVM probe and smoke tests in containers, and cleanup by run label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..core.model import Base, Cell, Matrix
from ..core.options import SmokeJob
from ..core.results import BuildResult, Found, SmokeRun
from .package_cache import PackageCache


@runtime_checkable
class Engine(Protocol):
    """One engine of a run. Its failures are the Docker SDK's and requests' exceptions (the
    run then ends with EngineError, its finished cells kept); a build or smoke test that fails
    is a result, not an exception."""

    @property
    def name(self) -> str:
        """As the user gave it: a URL or a Docker context's name ("default": DOCKER_HOST)."""
        ...

    # --- images ----------------------------------------------------------------------------------

    def has_image(self, tag: str) -> bool: ...

    def save_image(self, tag: str) -> Iterable[bytes]:
        """The image as `docker save` streams it, to load on another engine."""
        ...

    def load_image(self, chunks: Iterable[bytes]) -> None: ...

    def ensure_base(self, name: str, bases: Mapping[str, Base], log_dir: Path) -> str:
        """The image id of base NAME, obtained (pulled or bootstrapped) when missing; raises
        HvgateError when it cannot be."""
        ...

    def build_guest(
        self, matrix: Matrix, base_id: str, log_dir: Path, cache: PackageCache | None
    ) -> Path:
        """The guest's tar, built once from its base."""
        ...

    def build_cell(
        self, cell: Cell, base_id: str, log_dir: Path, timeout: float, cache: PackageCache | None
    ) -> BuildResult:
        """The cell's image, found unchanged or built (through `cache` when given)."""
        ...

    def existing_image(self, cell: Cell) -> BuildResult:
        """The cell's image if it is built, without building; else `unavailable`."""
        ...

    def package_cache(self, base_image: str, log_dir: Path) -> AbstractContextManager[PackageCache]:
        """The engine's package cache, for the builds within it."""
        ...

    # --- containers ------------------------------------------------------------------------------

    def probe(self, job: SmokeJob) -> Found:
        """The KVM probe in a container of `job.image`, its log under `job.log_dir`."""
        ...

    def smoke(self, job: SmokeJob) -> SmokeRun: ...

    def cleanup(self, run_id: str) -> None:
        """Removes what the run started on this engine; never raises."""
        ...
