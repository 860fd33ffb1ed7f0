"""Builds the guest artifact and one image per cell, content-addressed so unchanged cells are reused."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ..core.apt_log import diagnose, without_hosts
from ..core.errors import EngineError
from ..core.model import (
    DEB_PACKAGE_RE,
    DEB_VERSION_RE,
    ORIGIN_SUITE_RE,
    VERSION_LABEL_PACKAGES,
    Cell,
    Matrix,
)
from ..core.paths import CONTEXT, HOST_STATE, IMAGES
from ..core.progress import say
from ..core.results import BuildResult
from ..engine import client as eng
from ..engine.bases import Bases, base_image_tag
from ..engine.image_build import content_hash, docker_build
from ..engine.package_cache import RETRY_AFTER, PackageCache, build_args
from ..matrix import debs
from .render import render
from .resolve import uses_loopback

GUEST_DIR = IMAGES / "guest"
VERSION_LINE = re.compile(r"^HVGATE-VERSION (\S+)\t(\S+)$")
ORIGIN_LINE = re.compile(r"^HVGATE-ORIGIN (\S+)\t(\S+)\t(\S+)$")
ORIGINS_DONE = re.compile(r"^HVGATE-ORIGINS ([0-9]+)$")
PACKAGES_DIGEST = re.compile(r"[0-9a-f]{64}")
PACKAGES_LINE = re.compile(r"^HVGATE-PACKAGES ([0-9a-f]{64})$")
# The digest of every installed package at its version (record-versions).
LABEL_PACKAGES = f"{eng.LABEL}.packages"
# The packages from beyond the base's suites, as one label: "PACKAGE=VERSION@SUITE,SUITE ...".
LABEL_ORIGINS = f"{eng.LABEL}.origins"


def cell_context(cell: Cell) -> bytes:
    """The build context: the rendered Dockerfile, the context scripts and any .deb repository;
    its hash names the image, so a changed .deb rebuilds the cell."""
    files = [("Dockerfile", render(cell).encode(), 0o644)] + eng.files_under(CONTEXT, "context")
    return eng.tar_of(files + debs.repositories(cell.sources))


def image_tag(cell_id: str, digest: str) -> str:
    return f"hvgate/cell:{cell_id}-{digest}"


def built_image(
    engine: docker.DockerClient, cell: Cell, context: bytes, base_id: str
) -> BuildResult | None:
    """The cell's image if one with this content hash was built and labelled, else None."""
    tag = image_tag(cell.id, content_hash(context, base_id))
    try:
        image = engine.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    versions = _versions_from_labels(image.labels)
    labels = image.labels or {}
    packages = labels.get(LABEL_PACKAGES)
    if not versions or not packages or not PACKAGES_DIGEST.fullmatch(packages):
        # Labelled by a build that did not record every package (an older hvgate on the same
        # context): built again, so that its runs pool with the same experiment's.
        return None
    origins = origins_from_label(labels.get(LABEL_ORIGINS))
    return BuildResult(
        cell.id,
        "cached",
        tag,
        versions,
        size_bytes=image.attrs.get("Size"),
        origins=origins,
        packages=packages,
    )


def existing_image(engine: docker.DockerClient, cell: Cell) -> BuildResult:
    """The cell's already built image, without building anything; `unavailable` when there is none."""
    missing = BuildResult(
        cell.id, "unavailable", reason="not built: run `hvgate matrix.build` first"
    )
    try:
        base_id = str(engine.images.get(base_image_tag(cell.base_name)).id)
    except docker.errors.ImageNotFound:
        return missing
    return built_image(engine, cell, cell_context(cell), base_id) or missing


def build_cell(
    engine: docker.DockerClient,
    cell: Cell,
    base_id: str,
    log_dir: Path,
    timeout: float,
    cache: PackageCache | None = None,
) -> BuildResult:
    """The cell's image: found unchanged, else built (through `cache` when given) and labelled
    with the versions it installed. A build that fails is a result, with its reason and log."""
    context = cell_context(cell)
    cached = built_image(engine, cell, context, base_id)
    if cached:
        say(cell.id, f"unchanged: {cached.image}")
        return cached
    digest = content_hash(context, base_id)
    tag = image_tag(cell.id, digest)
    log_path = log_dir / cell.id / "build.log"
    known = cache.remembered(tag) if cache is not None else None
    if known:  # the same content found its archive unreachable a moment ago
        return _remembered(cell, known)
    started = time.monotonic()
    say(cell.id, f"building {tag}")
    # Unique to this build: two runs (of any checkout or host) building the cell at once never
    # label or remove each other's image; the shared tags are set once the image is whole.
    unlabelled = f"hvgate/cell-unlabelled:{cell.id}-{digest}-{secrets.token_hex(4)}"
    ok, lines = _build(engine, cell, context, unlabelled, log_path, timeout, cache)
    if not ok:
        return _failed(cell, tag, lines, log_path, time.monotonic() - started, cache)
    versions, origins, packages = _versions(engine, unlabelled, lines)
    image = _labelled(engine, cell, unlabelled, tag, digest, versions, origins, packages, log_path)
    seconds = time.monotonic() - started
    say(cell.id, f"built in {seconds:.0f} s: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return BuildResult(
        cell.id,
        "built",
        tag,
        versions,
        seconds=seconds,
        log=str(log_path),
        size_bytes=image.attrs.get("Size"),
        origins=origins,
        packages=packages,
    )


def _remembered(cell: Cell, known: dict[str, Any]) -> BuildResult:
    say(cell.id, f"unavailable (remembered, not retried for {RETRY_AFTER // 3600} h)")
    tail, log = tuple(known["log_tail"]), known.get("log")
    log = log if log and Path(log).exists() else None  # a results directory since removed
    return BuildResult(cell.id, "unavailable", reason=known["reason"], log=log, log_tail=tail)


def _build(
    engine: docker.DockerClient,
    cell: Cell,
    context: bytes,
    tag: str,
    log_path: Path,
    timeout: float,
    cache: PackageCache | None,
) -> tuple[bool, list[str]]:
    """The build, through the package cache first when there is one; (ok, log lines)."""
    loopback = uses_loopback(cell)  # the package cache cannot reach the host's loopback
    proxy = {} if loopback else build_args(cache)
    attempts = [proxy, {}] if proxy else [{}]
    for attempt, args in enumerate(attempts, 1):
        ok, lines = docker_build(
            engine,
            context,
            tag,
            log_path,
            cell.id,
            timeout,
            buildargs=args,
            network_mode="host" if loopback else None,
        )
        if ok or attempt == len(attempts) or diagnose(lines, cell)[0] != "unavailable":
            break
        # The archive, or the package cache in front of it, failed: the archive decides.
        say(cell.id, "an archive failed through the package cache; trying without it")
    return ok, lines


def _failed(
    cell: Cell,
    tag: str,
    lines: list[str],
    log_path: Path,
    seconds: float,
    cache: PackageCache | None,
) -> BuildResult:
    status, reason = diagnose(lines, cell)
    say(cell.id, f"build {status}: {reason}")
    tail = tuple(without_hosts(line) for line in lines[-20:])
    if status == "unavailable" and cache is not None:
        cache.remember(tag, reason, str(log_path), tail)
    return BuildResult(
        cell.id,
        status,
        None,
        seconds=seconds,
        reason=reason,
        log=str(log_path),
        log_tail=tail,
    )


def _versions(
    engine: docker.DockerClient, unlabelled: str, lines: list[str]
) -> tuple[dict[str, str], list[dict[str, Any]] | None, str | None]:
    """The installed versions, origins and packages digest the build printed; read from the
    image when it printed nothing."""
    versions = recorded_versions(lines)
    if "libvirt-daemon" not in versions:
        # Every step came from the layer cache (another cell, or another matrix, has the same
        # Dockerfile), so the build printed nothing: the image keeps what record-versions wrote.
        output = engine.containers.run(
            unlabelled,
            ["/opt/hvgate/bin/record-versions"],
            remove=True,
            labels={eng.LABEL_RUN: "versions"},
        )
        lines = output.decode(errors="replace").splitlines()
        versions = recorded_versions(lines)
    return versions, recorded_origins(lines), recorded_packages(lines)


def _labelled(
    engine: docker.DockerClient,
    cell: Cell,
    unlabelled: str,
    tag: str,
    digest: str,
    versions: dict[str, str],
    origins: list[dict[str, Any]] | None,
    packages: str | None,
    log_path: Path,
) -> Any:
    """The image tagged `tag`, labelled with the versions (known only after the build ran
    dpkg-query, so a second, two-line build labels it)."""
    labels = {f"{eng.LABEL_VERSION}{pkg}": ver for pkg, ver in versions.items()}
    labels.update({eng.LABEL_CELL: cell.id, eng.LABEL_HASH: digest})
    if origins is not None:  # each field passed its grammar in recorded_origins
        labels[LABEL_ORIGINS] = " ".join(
            f"{o['package']}={o['version']}@{','.join(o['suites'])}" for o in origins
        )
    if packages is not None:  # 64 hex digits (recorded_packages)
        labels[LABEL_PACKAGES] = packages
    bad = [v for v in versions.values() if not DEB_VERSION_RE.fullmatch(v)]
    if bad or "libvirt-daemon" not in versions:
        raise EngineError(f"{cell.id}: the image reported no usable versions: {versions}")
    label_line = " ".join(f'"{k}"="{v}"' for k, v in sorted(labels.items()))
    label_context = eng.tar_of(
        [("Dockerfile", f"FROM {unlabelled}\nLABEL {label_line}\n".encode(), 0o644)]
    )
    ok, more = docker_build(
        engine, label_context, tag, log_path.with_name("label.log"), cell.id, 120
    )
    if not ok:
        raise EngineError(f"{cell.id}: labelling the image failed: {more[-1] if more else ''}")
    # Only a tag: a concurrent build of the same cell may hold it (409), and that is fine.
    with contextlib.suppress(docker.errors.APIError):
        engine.images.remove(unlabelled, noprune=True)
    engine.images.get(tag).tag("hvgate/cell", cell.id)
    return engine.images.get(tag)


def recorded_packages(lines: list[str]) -> str | None:
    """The digest of every installed package, from the line record-versions prints."""
    return next((m.group(1) for line in lines if (m := PACKAGES_LINE.match(line))), None)


def recorded_versions(lines: list[str]) -> dict[str, str]:
    """Package -> version, from the lines record-versions prints."""
    return {m.group(1): m.group(2) for line in lines if (m := VERSION_LINE.match(line))}


def _origin(package: str, version: str, suites: list[str]) -> dict[str, Any] | None:
    if not (
        DEB_PACKAGE_RE.fullmatch(package)
        and DEB_VERSION_RE.fullmatch(version)
        and all(ORIGIN_SUITE_RE.fullmatch(s) for s in suites)
    ):
        return None
    return {"package": package, "version": version, "suites": suites}


def recorded_origins(lines: list[str]) -> list[dict[str, Any]] | None:
    """The packages record-origins found from beyond the base's suites, or None when the image
    recorded none (an override template without the step); a line that fails its grammar makes
    the whole record None."""
    origins: list[dict[str, Any]] = []
    for line in lines:
        if m := ORIGIN_LINE.match(line):
            suites = [] if m.group(3) == "-" else m.group(3).split(",")
            origin = _origin(m.group(1), m.group(2), suites)
            if origin is None:
                return None
            origins.append(origin)
        elif (m := ORIGINS_DONE.match(line)) and int(m.group(1)) == len(origins):
            return origins
    return None


def origins_from_label(label: str | None) -> list[dict[str, Any]] | None:
    if label is None:
        return None
    origins = []
    for word in label.split():
        package, _, rest = word.partition("=")
        version, _, suites = rest.partition("@")
        origin = _origin(package, version, suites.split(",") if suites else [])
        if origin is None:
            return None
        origins.append(origin)
    return origins


def _versions_from_labels(labels: dict[str, str] | None) -> dict[str, str]:
    labels = labels or {}
    versions = {
        pkg: labels[f"{eng.LABEL_VERSION}{pkg}"]
        for pkg in VERSION_LABEL_PACKAGES
        if f"{eng.LABEL_VERSION}{pkg}" in labels
    }
    return versions if "libvirt-daemon" in versions else {}


def build_guest(
    engine: docker.DockerClient,
    matrix: Matrix,
    log_dir: Path,
    *,
    base_id: str | None = None,
    cache: PackageCache | None = None,
) -> Path:
    """Builds the guest (kernel + initramfs) once and keeps it as a tar to copy into cells.
    A run gives the id of the guest's base it made present; alone, it obtains the base here."""
    if base_id is None:
        base_id = Bases(engine, matrix.bases, log_dir).ensure(matrix.guest.base)
    context = eng.tar_of(eng.files_under(GUEST_DIR, "."))
    digest = content_hash(context, base_id)
    kept = HOST_STATE / f"guest-{digest}.tar"
    if kept.exists():
        return kept
    tag = f"hvgate/guest:{digest}"
    say("guest", f"building {tag}")
    ok, lines = docker_build(
        engine,
        context,
        tag,
        log_dir / "guest-build.log",
        "guest",
        1800,
        buildargs={
            "BASE_IMAGE": f"hvgate/base:{matrix.guest.base}",
            **build_args(cache),
        },
    )
    if not ok:
        raise EngineError(
            f"the guest did not build: {lines[-1] if lines else ''} (log: {log_dir / 'guest-build.log'})"
        )
    container = engine.containers.create(tag, ["true"], labels={eng.LABEL_RUN: "guest-build"})
    try:
        stream, _ = container.get_archive("/guest")
        data = b"".join(stream)
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
    if not {"guest/vmlinuz", "guest/initramfs.img", "guest/kernel-version"} <= names:
        raise EngineError(f"the guest image lacks a kernel or initramfs: {sorted(names)}")
    HOST_STATE.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_suffix(f".{os.getpid()}.part")  # runs of other results dirs may race
    tmp.write_bytes(data)
    tmp.replace(kept)
    return kept
