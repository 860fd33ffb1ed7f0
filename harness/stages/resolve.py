"""Resolve stage: reads each cell's apt indexes into entries of the lock file (matrix/lockfile.py).

Resolution runs where the build will: in a container of the cell's base image with the cell's
sources added by the same commands its Dockerfile uses, so the apt that answers is the apt that
installs. `latest` asks apt what it would install under the cell's pins; `all` lists every version
the component's source still serves; an exact version must be among them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import shlex
import urllib.parse
from collections.abc import Callable, Iterable

import docker
import docker.errors

from ..core.apt_log import diagnose
from ..core.errors import EngineError
from ..core.model import (
    COMPONENT_PACKAGES,
    VERSION_LABEL_PACKAGES,
    Cell,
    ComponentChoice,
    version_slug,
)
from ..core.paths import CONTEXT
from ..core.progress import say
from ..engine import client as eng
from ..engine.bases import base_image_tag
from ..matrix import debs
from ..matrix.lockfile import LockedCell, LockEntry, fingerprint
from .render import packages, pins, source_steps, source_suite

APT_TIMEOUT_S = 600
INST_LINE = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")


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
                "run `hvgate matrix.build` first, which bootstraps it"
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
