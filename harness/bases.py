"""Base images without a registry: a local image, else a pull, else mmdebstrap + `docker import`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import docker
import docker.errors

from .errors import EngineError
from .model import Base
from .progress import say
from .render import base_image_tag


def ensure_base(engine: docker.DockerClient, name: str, base: Base, log_dir: Path) -> str:
    """Returns the image id of hvgate/base:NAME, obtaining it the cheapest way that works."""
    tag = base_image_tag(name)
    try:
        return str(engine.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    try:
        say(name, f"pulling {base.registry_image}")
        image = engine.images.pull(base.registry_image)
        image.tag(tag)
        return str(image.id)
    except docker.errors.APIError as exc:
        reason = (getattr(exc, "explanation", None) or str(exc)).splitlines()[0][:120]
        say(name, f"no registry image ({reason}); bootstrapping")
    return bootstrap(engine, name, base, log_dir)


def bootstrap_command(base: Base, target: str) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", "--mode=auto"]
    if not base.check_valid_until:
        # Only where matrix.yaml says this release's Release file may be expired (archive snapshots).
        command.append('--aptopt=Acquire::Check-Valid-Until "false"')
    command += [base.codename, target]
    if base.mirror:
        command.append(base.mirror)
    return command


def bootstrap(engine: docker.DockerClient, name: str, base: Base, log_dir: Path) -> str:
    if not shutil.which("mmdebstrap"):
        raise EngineError(
            f"base {name}: no local image, no registry, and mmdebstrap is not installed "
            "(apt-get install mmdebstrap)"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"base-{name}.log"
    with tempfile.TemporaryDirectory(prefix="hvgate-base-") as tmp:
        tarball = str(Path(tmp) / f"{name}.tar")
        command = bootstrap_command(base, tarball)
        say(name, f"mmdebstrap {base.codename} (log: {log_path})")
        with open(log_path, "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            hint = ""
            if any("expired" in line or "Valid-Until" in line for line in tail):
                hint = f" (the archive's Release file has expired: set check_valid_until: false on base {name})"
            raise EngineError(f"base {name}: mmdebstrap failed{hint}: {' | '.join(tail)}")
        say(name, "docker import")
        engine.api.import_image_from_file(
            tarball, repository="hvgate/base", tag=name, changes=['CMD ["/bin/bash"]']
        )
    return str(engine.images.get(base_image_tag(name)).id)
