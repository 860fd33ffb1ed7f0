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


def ensure_base(
    engine: docker.DockerClient,
    name: str,
    base: Base,
    log_dir: Path,
    keyring_base: tuple[str, Base] | None = None,
) -> str:
    """Returns the image id of hvgate/base:NAME, obtaining it the cheapest way that works.

    keyring_base: a Debian base whose archive ships ubuntu-keyring, for bootstrapping Ubuntu."""
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
    return bootstrap(engine, name, base, log_dir, keyring_base)


def bootstrap_command(base: Base, target: str, keyring: Path | None = None) -> list[str]:
    # Ubuntu marks apt and its keyring "important", not "required": minbase would leave them out.
    command = ["mmdebstrap", "--variant=minbase", "--mode=auto", "--include=apt"]
    if keyring:
        command += [f"--keyring={keyring}", "--include=ubuntu-keyring"]
    if not base.check_valid_until:
        # Only where matrix.yaml says this release's Release file may be expired (archive snapshots).
        command.append('--aptopt=Acquire::Check-Valid-Until "false"')
    command += [base.codename, target]
    if base.mirror:
        command.append(base.mirror)
    return command


def bootstrap(
    engine: docker.DockerClient,
    name: str,
    base: Base,
    log_dir: Path,
    keyring_base: tuple[str, Base] | None = None,
) -> str:
    if not shutil.which("mmdebstrap"):
        raise EngineError(
            f"base {name}: no local image, no registry, and mmdebstrap is not installed "
            "(apt-get install mmdebstrap)"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"base-{name}.log"
    keyring = ubuntu_keyring(engine, keyring_base, log_dir) if base.distro == "ubuntu" else None
    with tempfile.TemporaryDirectory(prefix="hvgate-base-") as tmp:
        tarball = str(Path(tmp) / f"{name}.tar")
        command = bootstrap_command(base, tarball, keyring)
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


HOST_UBUNTU_KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
KEYRING_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "ubuntu-archive-keyring.gpg"


def ubuntu_keyring(
    engine: docker.DockerClient, keyring_base: tuple[str, Base] | None, log_dir: Path
) -> Path:
    """The Ubuntu archive keyring: the host's, or the ubuntu-keyring package of a Debian archive,
    fetched and verified by that Debian base's apt (signature checks are never turned off)."""
    if HOST_UBUNTU_KEYRING.exists():
        return HOST_UBUNTU_KEYRING
    if KEYRING_CACHE.exists():
        return KEYRING_CACHE
    if keyring_base is None:
        raise EngineError(
            "bootstrapping Ubuntu needs its archive keyring: install ubuntu-keyring on the host, "
            "or add a Debian 13 (or newer) base to matrix.yaml"
        )
    name, base = keyring_base
    ensure_base(engine, name, base, log_dir)
    say("ubuntu-keyring", f"from the {name} archive")
    script = (
        "set -e; cd /tmp; apt-get update -qq; apt-get download -qq ubuntu-keyring; "
        "dpkg-deb --fsys-tarfile ubuntu-keyring_*.deb | tar -xO ./usr/share/keyrings/ubuntu-archive-keyring.gpg"
    )
    try:
        data = engine.containers.run(
            f"hvgate/base:{name}",
            ["sh", "-c", script],
            remove=True,
            labels={"io.hvgate.run": "keyring"},
        )
    except docker.errors.ContainerError as exc:
        raise EngineError(
            f"could not fetch ubuntu-keyring from the {name} archive: {exc}"
        ) from None
    if not data:
        raise EngineError(f"the {name} archive's ubuntu-keyring holds no archive keyring")
    KEYRING_CACHE.parent.mkdir(parents=True, exist_ok=True)
    partial = KEYRING_CACHE.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(KEYRING_CACHE)
    return KEYRING_CACHE
