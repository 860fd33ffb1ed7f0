"""Builds the guest artifact and one image per cell, content-addressed so unchanged cells are reused."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import urllib3

from . import cache, debs
from . import engine as eng
from .bases import Bases
from .errors import EngineError, HvgateError
from .model import DEB_VERSION_RE, VERSION_LABEL_PACKAGES, Cell, Matrix
from .progress import say
from .render import CONTEXT, IMAGES, render
from .resolve import uses_loopback

GUEST_DIR = IMAGES / "guest"
CACHE = Path(__file__).resolve().parent.parent / ".cache"
VERSION_LINE = re.compile(r"^HVGATE-VERSION (\S+)\t(\S+)$")
STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : (.*)")


@dataclass(frozen=True)
class BuildResult:
    cell_id: str
    status: str  # built | cached | failed | unavailable
    image: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str | None = None
    log: str | None = None
    log_tail: tuple[str, ...] = ()
    size_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached")


def cell_context(cell: Cell) -> bytes:
    """The build context: the rendered Dockerfile, the context scripts and any .deb repository;
    its hash names the image, so a changed .deb rebuilds the cell."""
    files = [("Dockerfile", render(cell).encode(), 0o644)] + eng.files_under(CONTEXT, "context")
    return eng.tar_of(files + debs.repositories(cell.sources))


def content_hash(context: bytes, base_id: str) -> str:
    return hashlib.sha256(base_id.encode() + b"\0" + context).hexdigest()[:16]


def image_tag(cell_id: str, digest: str) -> str:
    return f"hvgate/cell:{cell_id}-{digest}"


def diagnose(lines: list[str], cell: Cell) -> tuple[str, str]:
    """(status, reason) of a failed build, from the log: archive problems make a cell unavailable."""
    # apt's errors come coloured through the classic builder.
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))
    # Through the package cache, a host that does not resolve is the proxy's 503: same reason.
    text = re.sub(r" *\[IP: [^]\n]*\]", "", text)
    text = re.sub(
        r"\b503 +(?:Host not found|DNS error for hostname .*)",
        "Could not resolve the archive's host",
        text,
    )
    # First: a full disk breaks downloads too, and is not the archive's fault.
    full = r"(?i).*(?:no space left on device|have enough free space).*"
    if re.search(full, text):
        return "failed", "the build ran out of disk space: " + _first(text, full)
    expired = re.search(r"Release file for (\S+) is expired", text)
    if expired:
        names = ", ".join(name for name, _ in cell.sources)
        return (
            "unavailable",
            f"the Release file of {without_hosts(expired.group(1))} has expired; if that archive is a snapshot, "
            f"set check_valid_until: false on its source ({names}) in matrix.yaml",
        )
    if re.search(
        r"Could not resolve|Failed to fetch|Unable to connect|Temporary failure resolving", text
    ):
        return "unavailable", "source unreachable: " + _first(
            text,
            r".*(?:Could not resolve|Failed to fetch|Unable to connect|Temporary failure resolving).*",
        )
    missing_suite = re.search(
        r"The repository '\S+ (\S+) Release' does not have a Release file", text
    )
    if missing_suite:
        return "unavailable", f"suite not served: {missing_suite.group(1)} has no Release file"
    gone = re.search(r"Version '(\S+)' for '(\S+)' was not found", text)
    if gone and cell.locked_versions.get(gone.group(2)) == gone.group(1):
        return (
            "unavailable",
            f"locked version {gone.group(1)} of {gone.group(2)} is no longer served by the "
            "cell's sources (`invoke matrix.resolve` locks what they serve now)",
        )
    if re.search(
        r"Unable to locate package|has no installation candidate|Version '.*' for '.*' was not found",
        text,
    ):
        return "unavailable", "package not in the source: " + _first(
            text, r".*(?:Unable to locate|no installation candidate|was not found).*"
        )
    unmet = _first(text, r"^ \S+ : Depends: .*")
    if unmet:
        return "failed", f"unmet dependency: {unmet}"
    return "failed", _first(text, r"^(?:E: |add-apt-source: |pin-source: ).*") or (
        lines[-1] if lines else "the build failed"
    )


def _first(text: str, pattern: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return without_hosts(match.group(0).strip()) if match else ""


def without_hosts(text: str) -> str:
    """Reasons end up in committed tables: archive host names stay in the build log only."""
    text = re.sub(r"\b[a-z]+://\S+", "<archive URL>", text)
    return re.sub(r"'[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\.[a-z]{2,}'", "the archive's host", text)


def docker_build(
    engine: docker.DockerClient,
    context: bytes,
    tag: str,
    log_path: Path,
    subject: str,
    timeout: float,
    buildargs: dict[str, str] | None = None,
    network_mode: str | None = None,
) -> tuple[bool, list[str]]:
    """Streams a classic build into a log file, showing each step; returns (ok, log lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    ok = True
    deadline = time.monotonic() + timeout
    with open(log_path, "w") as log:
        stream = engine.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=buildargs or {},
            timeout=int(timeout),
            network_mode=network_mode,
        )
        for chunk in _chunks(stream, timeout):
            text = chunk.get("stream") or ""
            if "error" in chunk:
                ok = False
                text = f"ERROR: {chunk['error']}\n"
            if not text:
                continue
            log.write(text)
            for line in text.splitlines():
                lines.append(line)
                step = STEP_LINE.match(line)
                if step:
                    say(subject, f"step {step.group(1)}/{step.group(2)}: {step.group(3)[:70]}")
            if time.monotonic() > deadline:
                ok = False
                lines.append(f"ERROR: the build did not finish within {timeout:.0f} s")
                log.write(lines[-1] + "\n")
                break
    return ok, lines


def _chunks(stream: Iterator[dict[str, Any]], timeout: float) -> Iterator[dict[str, Any]]:
    """The build's output; a failed connection (a build silent for longer than its timeout, or
    an engine that went away) ends it with an error chunk that says which, not an exception."""
    try:
        yield from stream
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        reason = " ".join(str(exc).split())[:200]
        if "timed out" in reason.lower():
            yield {"error": f"the build did not finish within {timeout:.0f} s (silent that long)"}
        else:
            yield {"error": f"the Docker engine failed during the build: {reason}"}


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
    if not versions:
        return None
    return BuildResult(cell.id, "cached", tag, versions, size_bytes=image.attrs.get("Size"))


def build_cell(
    engine: docker.DockerClient, cell: Cell, base_id: str, log_dir: Path, timeout: float
) -> BuildResult:
    context = cell_context(cell)
    cached = built_image(engine, cell, context, base_id)
    if cached:
        say(cell.id, f"unchanged: {cached.image}")
        return cached
    digest = content_hash(context, base_id)
    tag = image_tag(cell.id, digest)
    log_path = log_dir / cell.id / "build.log"
    known = cache.remembered(engine, tag)
    if known:  # the same content found its archive unreachable a moment ago
        say(cell.id, f"unavailable (remembered, not retried for {cache.RETRY_AFTER // 3600} h)")
        tail, log = tuple(known["log_tail"]), known.get("log")
        log = log if log and Path(log).exists() else None  # a results directory since removed
        return BuildResult(cell.id, "unavailable", reason=known["reason"], log=log, log_tail=tail)
    started = time.monotonic()
    say(cell.id, f"building {tag}")
    unlabelled = f"hvgate/cell-unlabelled:{cell.id}-{digest}"
    loopback = uses_loopback(cell)  # the cache cannot reach the host's loopback
    proxy = {} if loopback else cache.build_args(engine)
    attempts = [proxy, {}] if proxy else [{}]
    for attempt, args in enumerate(attempts, 1):
        ok, lines = docker_build(
            engine,
            context,
            unlabelled,
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
    if not ok:
        status, reason = diagnose(lines, cell)
        say(cell.id, f"build {status}: {reason}")
        tail = tuple(without_hosts(line) for line in lines[-20:])
        if status == "unavailable":
            cache.remember(engine, tag, reason, str(log_path), tail)
        return BuildResult(
            cell.id,
            status,
            None,
            seconds=time.monotonic() - started,
            reason=reason,
            log=str(log_path),
            log_tail=tail,
        )
    versions = recorded_versions(lines)
    if "libvirt-daemon" not in versions:
        # Every step came from the layer cache (another cell, or another matrix, has the same
        # Dockerfile), so the build printed nothing: the image keeps what record-versions wrote.
        output = engine.containers.run(
            unlabelled,
            ["sed", "s/^/HVGATE-VERSION /", "/etc/hvgate/versions"],
            remove=True,
            labels={eng.LABEL_RUN: "versions"},
        )
        versions = recorded_versions(output.decode(errors="replace").splitlines())
    labels = {f"{eng.LABEL_VERSION}{pkg}": ver for pkg, ver in versions.items()}
    labels.update({eng.LABEL_CELL: cell.id, eng.LABEL_HASH: digest})
    # The versions are known only after the build ran dpkg-query, so a two-line build labels it.
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
    image = engine.images.get(tag)
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
    )


def recorded_versions(lines: list[str]) -> dict[str, str]:
    """Package -> version, from the lines record-versions prints."""
    return {m.group(1): m.group(2) for line in lines if (m := VERSION_LINE.match(line))}


def _versions_from_labels(labels: dict[str, str] | None) -> dict[str, str]:
    labels = labels or {}
    versions = {
        pkg: labels[f"{eng.LABEL_VERSION}{pkg}"]
        for pkg in VERSION_LABEL_PACKAGES
        if f"{eng.LABEL_VERSION}{pkg}" in labels
    }
    return versions if "libvirt-daemon" in versions else {}


def build_guest(engine: docker.DockerClient, matrix: Matrix, log_dir: Path) -> Path:
    """Builds the guest (kernel + initramfs) once and caches it as a tar to copy into cells."""
    base_id = Bases(engine, matrix.bases, log_dir).ensure(matrix.guest.base)
    context = eng.tar_of(eng.files_under(GUEST_DIR, "."))
    digest = content_hash(context, base_id)
    cached = CACHE / f"guest-{digest}.tar"
    if cached.exists():
        return cached
    tag = f"hvgate/guest:{digest}"
    say("guest", f"building {tag}")
    ok, lines = docker_build(
        engine,
        context,
        tag,
        log_dir / "guest-build.log",
        "guest",
        1800,
        buildargs={"BASE_IMAGE": f"hvgate/base:{matrix.guest.base}", **cache.build_args(engine)},
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
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.part")  # runs of other results dirs may race
    tmp.write_bytes(data)
    tmp.replace(cached)
    return cached


def build_cells(
    engine: docker.DockerClient, matrix: Matrix, cells: tuple[Cell, ...], log_dir: Path
) -> dict[str, BuildResult]:
    """Builds every selected cell; a failing base or build is a result, and the others go on."""
    results: dict[str, BuildResult] = {}
    base_ids: dict[str, str | HvgateError] = {}
    bases = Bases(engine, matrix.bases, log_dir)
    for cell in cells:
        if cell.base_name not in base_ids:
            try:
                base_ids[cell.base_name] = bases.ensure(cell.base_name)
            except HvgateError as exc:
                say(cell.base_name, f"base unavailable: {exc}")
                base_ids[cell.base_name] = exc
        base_id = base_ids[cell.base_name]
        if isinstance(base_id, HvgateError):
            results[cell.id] = BuildResult(cell.id, "unavailable", reason=f"base image: {base_id}")
            continue
        results[cell.id] = build_cell(engine, cell, base_id, log_dir, matrix.policy.build_timeout)
    return results
