"""matrix.lock.json: the exact versions `matrix.resolve` locked for each cell, read strictly,
written atomically, applied to the cells of matrix.yaml, and compared with a new resolution."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..core import readback
from ..core.errors import ConfigurationError, InputError
from ..core.files import write_atomic
from ..core.model import COMPONENT_PACKAGES, Cell, Name, PackageName, Strict, Version
from ..core.text import one_line

# Every version each cell's suites list: far more than the matrix itself, yet bounded.
MAX_LOCK_BYTES = 16 * readback.MIB


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
    hint = "regenerate it with `hvgate matrix.resolve`"
    try:
        data = readback.read_json(path, "lock file", MAX_LOCK_BYTES)
    except InputError as exc:
        raise InputError(f"{one_line(exc)} ({hint})") from None
    return readback.validated(Lock.model_validate, data, path, hint)


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
                f"run `hvgate matrix.resolve --cells {cell.id}`"
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
    counted = Counter(c.id for c in result)
    twice = sorted(i for i, n in counted.items() if n > 1)
    if twice:
        raise ConfigurationError(f"{path}: cell ids {', '.join(twice)} occur twice; set `id:`")
    return tuple(result)


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
