"""A directory of .deb files as an apt repository of its own, for a private or candidate build.

The index (dists/NAME/main/binary-amd64/Packages and an unsigned Release naming the suite NAME)
is written on the host into the build context, so the image needs no tool to make it and apt
pins the suite by its Release file like any other.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from ..core.errors import ConfigurationError
from ..core.model import Source
from ..core.paths import ROOT

IN_IMAGE = "/opt/hvgate/debs"


def directory(source: Source) -> Path:
    assert source.debs is not None
    path = Path(source.debs)
    return path if path.is_absolute() else ROOT / path


def uri(name: str) -> str:
    return f"file://{IN_IMAGE}/{name}"


def problem(source: Source) -> str | None:
    """Why the source's directory cannot be used, or None."""
    path = directory(source)
    if not path.is_dir():
        return f"{path} is not a directory"
    if not any(path.glob("*.deb")):
        return f"{path} holds no .deb files"
    if shutil.which("dpkg-deb") is None:
        return "reading .deb files needs dpkg-deb (Debian's dpkg package) on this host"
    return None


def _control(deb: Path) -> str:
    done = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigurationError(f"{deb}: not a .deb file: {done.stderr.strip()[:200]}")
    return done.stdout.rstrip("\n") + "\n"


def repository(name: str, source: Source) -> list[tuple[str, bytes, int]]:
    """(path, content, mode) of the repository under debs/NAME/: the .debs and their index."""
    files: list[tuple[str, bytes, int]] = []
    stanzas = []
    for deb in sorted(directory(source).glob("*.deb")):
        data = deb.read_bytes()
        pool = f"pool/{deb.name}"
        files.append((f"debs/{name}/{pool}", data, 0o644))
        stanzas.append(
            _control(deb)
            + f"Filename: {pool}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    release = (
        f"Suite: {name}\nCodename: {name}\nComponents: main\nArchitectures: amd64 all\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} "
        "main/binary-amd64/Packages\n"
    )
    files.append((f"debs/{name}/dists/{name}/main/binary-amd64/Packages", packages, 0o644))
    files.append((f"debs/{name}/dists/{name}/Release", release.encode(), 0o644))
    return files


def repositories(sources: tuple[tuple[str, Source], ...]) -> list[tuple[str, bytes, int]]:
    return [f for name, s in sources if s.debs for f in repository(name, s)]
