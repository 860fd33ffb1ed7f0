"""Resolve stage: reads each cell's apt indexes into the committed lock file, and applies the lock.

Resolution runs where the build will: in a container of the cell's base image with the cell's
sources added by the same commands its Dockerfile uses, so the apt that answers is the apt that
installs. `latest` asks apt what it would install under the cell's pins; `all` lists every version
the component's source still serves; an exact version must be among them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import shlex
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Literal

import docker
import docker.errors
from pydantic import Field, ValidationError

from . import debs
from . import engine as eng
from .errors import ConfigurationError, EngineError
from .model import (
    COMPONENT_PACKAGES,
    VERSION_LABEL_PACKAGES,
    Cell,
    ComponentChoice,
    Name,
    PackageName,
    Strict,
    Version,
    version_slug,
)
from .progress import say
from .render import (
    CONTEXT,
    base_image_tag,
    packages,
    pins,
    source_steps,
    source_suite,
    write_atomic,
)

APT_TIMEOUT_S = 600
INST_LINE = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")


class LockedCell(Strict):
    id: Name
    packages: dict[PackageName, Version]
    """Exact versions of libvirt-daemon, qemu-system-x86 and python3-libvirt."""


class LockEntry(Strict):
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    """Of the cell's base, sources and selectors: a changed cell no longer matches its entry."""
    unavailable: Annotated[str, Field(max_length=1000)] | None = None
    listed: dict[
        PackageName, dict[Annotated[str, Field(pattern=r"^[a-z0-9./-]+$")], list[Version]]
    ] = {}
    """Every version apt lists for each package, by suite: what `all` and `--check` compare."""
    cells: list[LockedCell] = []


class Lock(Strict):
    format: Literal[1] = 1
    cells: dict[Name, LockEntry] = {}


def lock_path(matrix_path: str | Path) -> Path:
    """matrix.yaml's lock file is matrix.lock.json beside it."""
    return Path(matrix_path).with_suffix(".lock.json")


def read_lock(path: Path) -> Lock:
    """The lock file, or an empty lock when there is none; a malformed one is a clear error."""
    if not path.exists():
        return Lock()
    try:
        data = json.loads(path.read_bytes())
        return Lock.model_validate(data)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigurationError(
                f"{path}: {where}: {first['msg']} (regenerate it with `invoke matrix.resolve`)"
            ) from None
        raise ConfigurationError(f"{path}: not a lock file: {exc}") from None


def write_lock(path: Path, lock: Lock) -> None:
    text = json.dumps(lock.model_dump(exclude_defaults=False), indent=2, sort_keys=True)
    write_atomic(path, text + "\n")


def fingerprint(cell: Cell) -> str:
    data = {
        # Only what is set: a setting added to the models later does not unlock every cell.
        "base": cell.base.model_dump(exclude_defaults=True),
        "sources": [
            [name, source.model_dump(exclude_defaults=True)] for name, source in cell.sources
        ],
        "components": [dataclasses.astuple(c) for c in cell.components],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def apply_lock(cells: Iterable[Cell], lock: Lock, path: Path) -> tuple[Cell, ...]:
    """Cells with their locked versions; an `all` selector becomes one cell per locked version.

    A cell missing from the lock, changed since, or unresolvable is built from its selectors as
    they are (`all` then needs the lock, unless its sources could not be read at all).
    """
    result: list[Cell] = []
    for cell in cells:
        entry = lock.cells.get(cell.spec_id)
        current = entry if entry and entry.fingerprint == fingerprint(cell) else None
        if current is None and any(c.version == "all" for c in cell.components):
            raise ConfigurationError(
                f"{path}: cell {cell.id} selects all versions, which needs the lock: "
                f"run `invoke matrix.resolve --cells {cell.id}`"
            )
        if current is None or not current.cells:
            result.append(cell)
            continue
        for locked in current.cells:
            components = tuple(
                dataclasses.replace(c, version=locked.packages[COMPONENT_PACKAGES[c.component][0]])
                if c.version == "all"
                else c
                for c in cell.components
            )
            result.append(
                dataclasses.replace(
                    cell,
                    id=locked.id,
                    components=components,
                    locked=tuple(sorted(locked.packages.items())),
                )
            )
    ids = [c.id for c in result]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigurationError(f"{path}: cell ids {', '.join(twice)} occur twice; set `id:`")
    return tuple(result)


def uses_loopback(cell: Cell) -> bool:
    """A source served on the host's loopback is reachable from the host's network only."""
    hosts = {urllib.parse.urlsplit(s.uri).hostname for _, s in cell.sources if s.uri}
    return bool(hosts & {"localhost", "127.0.0.1", "::1"}) or any(
        h and h.startswith("127.") for h in hosts
    )


class _Session:
    """A container of the cell's base image with its sources added, for apt to answer in."""

    def __init__(self, engine: docker.DockerClient, cell: Cell):
        self.cell = cell
        self.container = engine.containers.run(
            base_image_tag(cell.base_name),
            ["sleep", "infinity"],
            detach=True,
            init=True,
            labels={eng.LABEL_RUN: f"resolve-{cell.id}", eng.LABEL_CELL: cell.id},
            network_mode="host" if uses_loopback(cell) else None,
            environment={"DEBIAN_FRONTEND": "noninteractive"},
        )
        # A stalled download fails in a minute rather than holding the step to its timeout.
        self.sh(
            'mkdir -p /opt/hvgate && printf \'Acquire::http::Timeout "30";\\n'
            'Acquire::Retries "1";\\n\' > /etc/apt/apt.conf.d/99hvgate-resolve'
        )
        # The context scripts, and any directory of .debs as the build context has it.
        files = eng.files_under(CONTEXT, "bin") + debs.repositories(cell.sources)
        self.container.put_archive("/opt/hvgate", eng.tar_of(files))

    def sh(self, command: str) -> tuple[bool, list[str]]:
        wrapped = f"timeout {APT_TIMEOUT_S} sh -ec {shlex.quote(command)}"
        code, output = self.container.exec_run(["sh", "-c", wrapped])
        assert isinstance(output, bytes)  # not streamed
        lines = output.decode(errors="replace").splitlines()
        if code == 124:
            lines.append(f"E: timed out after {APT_TIMEOUT_S} s")
        return code == 0, lines

    def close(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)


def parse_madison(lines: list[str]) -> dict[str, dict[str, list[str]]]:
    """`apt-cache madison` lines -> {package: {suite: [versions, newest first]}}."""
    listed: dict[str, dict[str, list[str]]] = {}
    for line in lines:
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[2].endswith(" Packages"):
            continue
        package, version, where = parts
        fields = where.split()
        # "URI SUITE/COMPONENT ARCH Packages", or "URI PATH/ Packages" for a flat repository.
        dist = fields[1].rsplit("/", 1)[0] if len(fields) >= 4 else "."
        versions = listed.setdefault(package, {}).setdefault(dist or ".", [])
        if version not in versions:
            versions.append(version)
    return listed


def parse_simulation(lines: list[str]) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in lines if (m := INST_LINE.match(line))}


def _variants(cell: Cell, listed: dict[str, dict[str, list[str]]]) -> list[Cell]:
    """The exact cells a (template) cell stands for; raises ValueError naming what is missing."""
    choices: list[list[ComponentChoice]] = []
    for choice in cell.components:
        package = COMPONENT_PACKAGES[choice.component][0]
        source = dict(cell.sources)[choice.source_name]
        suite = (
            source_suite(source, cell.base, choice.source_name)
            if (source.suite or source.cloud_archive or source.debs)
            else None
        )
        by_suite = listed.get(package, {})
        served = by_suite.get(suite, []) if suite else [v for vs in by_suite.values() for v in vs]
        if choice.version == "all":
            if not served:
                raise ValueError(f"{choice.source_name} lists no version of {package}")
            choices.append([dataclasses.replace(choice, version=v) for v in served])
        elif choice.version == "latest":
            choices.append([choice])
        else:
            if not any(choice.version in vs for vs in by_suite.values()):
                raise ValueError(f"{package} {choice.version} is not served by its sources")
            choices.append([choice])
    variants = []
    for combination in itertools.product(*choices):
        suffix = "".join(
            f"-{c.component}-{version_slug(c.version)}"
            for c, original in zip(combination, cell.components, strict=True)
            if original.version == "all"
        )
        variants.append(dataclasses.replace(cell, id=cell.id + suffix, components=combination))
    return variants


def resolve_cell(engine: docker.DockerClient, cell: Cell) -> LockEntry:
    """Reads the cell's indexes and asks apt what each of its variants would install."""
    from .build import diagnose  # the build's reading of apt errors: one place for both

    digest = fingerprint(cell)
    session = _Session(engine, cell)
    try:
        # apt-get update only warns about a suite it could not fetch; its words explain a
        # failure of the later steps, so they are kept for diagnose.
        seen: list[str] = []
        runs = [step.removeprefix("RUN ") for step in source_steps(cell) if step.startswith("RUN ")]
        for step in [*runs, "apt-get update"]:
            ok, lines = session.sh(step)
            seen += lines
            if not ok:
                return LockEntry(fingerprint=digest, unavailable=diagnose(seen, cell)[1])
        ok, lines = session.sh("apt-cache madison " + " ".join(VERSION_LABEL_PACKAGES))
        listed = parse_madison(lines)
        try:
            variants = _variants(cell, listed)
        except ValueError as exc:
            return LockEntry(fingerprint=digest, listed=listed, unavailable=str(exc))
        locked = []
        for variant in variants:
            commands = " && ".join(" ".join(shlex.quote(p) for p in c) for c in pins(variant))
            ok, lines = session.sh(
                "rm -f /etc/apt/preferences.d/hvgate"
                + (f" && {commands}" if commands else "")
                + " && apt-get install -s --no-install-recommends "
                + " ".join(packages(variant))
            )
            chosen = parse_simulation(lines)
            if not ok or not all(p in chosen for p in VERSION_LABEL_PACKAGES):
                reason = diagnose(seen + lines, variant)[1] if not ok else "apt chose no version"
                return LockEntry(
                    fingerprint=digest,
                    listed=listed,
                    unavailable=reason if variant.id == cell.id else f"{variant.id}: {reason}",
                )
            locked.append(
                LockedCell(id=variant.id, packages={p: chosen[p] for p in VERSION_LABEL_PACKAGES})
            )
        return LockEntry(fingerprint=digest, listed=listed, cells=locked)
    finally:
        session.close()


def resolve(
    engine: docker.DockerClient,
    cells: Iterable[Cell],
    resolve_one: Callable[[docker.DockerClient, Cell], LockEntry] = resolve_cell,
) -> dict[str, LockEntry]:
    entries = {}
    for cell in cells:
        say(cell.id, "reading the apt indexes")
        try:
            entries[cell.id] = resolve_one(engine, cell)
        except docker.errors.ImageNotFound:
            raise EngineError(
                f"{cell.id}: no base image {base_image_tag(cell.base_name)}: "
                "run `invoke matrix.build` first, which bootstraps it"
            ) from None
        entry = entries[cell.id]
        say(
            cell.id,
            f"unavailable: {entry.unavailable}"
            if entry.unavailable
            else "; ".join(
                f"{c.id}: " + ", ".join(f"{p} {v}" for p, v in c.packages.items())
                for c in entry.cells
            ),
        )
    return entries


def changes(old: Lock, new: dict[str, LockEntry]) -> list[str]:
    """What moved since the lock, one line each: for the nightly job to act on."""
    lines = []
    for cell_id, entry in sorted(new.items()):
        before = old.cells.get(cell_id)
        if before is None:
            lines.append(f"{cell_id}: not in the lock")
            continue
        if before.fingerprint != entry.fingerprint:
            lines.append(f"{cell_id}: its matrix.yaml entry changed since the lock")
            continue
        if before.unavailable != entry.unavailable:
            lines.append(
                f"{cell_id}: was {before.unavailable or 'resolved'}, now {entry.unavailable or 'resolved'}"
            )
        old_cells = {c.id: c.packages for c in before.cells}
        new_cells = {c.id: c.packages for c in entry.cells}
        for variant in sorted(set(new_cells) - set(old_cells)):
            lines.append(f"{variant}: new cell (a version the source now lists)")
        for variant in sorted(set(old_cells) & set(new_cells)):
            for package, version in sorted(old_cells[variant].items()):
                now = new_cells[variant].get(package)
                if now != version:
                    lines.append(f"{variant}: {package} {version} -> {now}")
        served = {
            (package, version)
            for package, suites in entry.listed.items()
            for versions in suites.values()
            for version in versions
        }
        for variant, locked in sorted(old_cells.items()):
            for package, version in sorted(locked.items()):
                if entry.listed and (package, version) not in served:
                    lines.append(f"{variant}: locked {package} {version} is no longer served")
        for package, suites in sorted(entry.listed.items()):
            for suite, versions in sorted(suites.items()):
                known = before.listed.get(package, {}).get(suite, [])
                for version in versions:
                    if version not in known:
                        lines.append(f"{cell_id}: {suite} now lists {package} {version}")
    return lines


def merged(old: Lock, new: dict[str, LockEntry], keep: Iterable[str]) -> Lock:
    """The old lock with the newly resolved entries; entries of cells no longer in the matrix go."""
    keep = set(keep)
    cells = {k: v for k, v in old.cells.items() if k in keep}
    cells.update(new)
    return Lock(cells=dict(sorted(cells.items())))
