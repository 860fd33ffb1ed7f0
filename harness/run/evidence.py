"""Evidence that accumulates: a scenario's runs in images that are the same experiment pool
across runs of the matrix (README, "Verdicts").

An experiment is named by its evidence key: the digest of every package installed in the cell's
image at its version (record-versions), of what the image is built from beyond its packages (the
cell's template, which an override may give extra files or settings, and the scripts that
configure libvirt in it), of the runner copied into the container (the scenarios and the domain
definition are part of it), of the guest, and the accelerator. Two cells whose images hold the
same packages, built the same way, share a key, and so their runs: within one run, the second
is not tested again but judged on the first's smoke test (its result names that cell in
evidence.tested_as). Anything else changing starts a new key, with no earlier runs. The history
keeps each run's outcomes under its key, once; runs older than the policy's evidence_days are
left out.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ..core.model import Cell
from ..core.paths import CONTEXT, OVERRIDES, TEMPLATES
from ..core.results import Prior

KEY_LENGTH = 16  # hex digits: 64 bits, far from any collision among a gate's experiments


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_digest(tar: bytes) -> str:
    """The digest of a tar's files, names and contents only: the guest's tar as the engine
    exported it carries the time each file was built, which must not make a rebuilt guest (a
    fresh CI runner's) a new experiment."""
    parts = hashlib.sha256()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name):
            handle = archive.extractfile(member)
            content = handle.read() if handle else b""
            parts.update(f"{member.name}\0{len(content)}\0".encode() + content)
    return parts.hexdigest()


def definition(cell: Cell) -> str:
    """The digest of what the cell's image is built from beyond its packages and sources: its
    template (an override's, else the base one) and the build context's scripts."""
    template = OVERRIDES / cell.template if cell.template else TEMPLATES / "base.Dockerfile.j2"
    files = [TEMPLATES / "base.Dockerfile.j2", template, *sorted(CONTEXT.iterdir())]
    parts = b"".join(f"{f.name}\0".encode() + f.read_bytes() + b"\0" for f in files)
    return digest(parts)


def key(packages: str | None, runner: str, guest: str, accel: str, image: str = "") -> str | None:
    """The experiment's key; None for an image that did not record its packages (built before
    images did), whose runs pool with nothing. image: definition()'s digest."""
    if packages is None:
        return None
    parts = f"packages {packages}\nimage {image}\nrunner {runner}\nguest {guest}\naccel {accel}\n"
    return digest(parts.encode())[:KEY_LENGTH]


def recorded(cell: dict[str, Any]) -> dict[str, Any] | None:
    """What the history keeps of a cell's result (as the results JSON has it) for later pooling:
    its key and this run's outcomes of each scenario that ran."""
    if not cell.get("evidence") or cell["evidence"].get("tested_as"):
        return None  # a cell judged on another's smoke test: that one's entry has the outcomes
    outcomes = {s["name"]: s["outcomes"] for s in cell.get("scenarios") or [] if s.get("outcomes")}
    return {"key": cell["evidence"]["key"], "outcomes": outcomes}


def _started(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def prior(
    entries: Iterable[dict[str, Any]], key_: str, run_id: str, now: datetime, days: int
) -> Prior:
    """The earlier runs of the experiment `key_` in the history (not run `run_id`'s own, which a
    resumed run has not kept yet anyway), started within `days` of `now`, oldest first."""
    if days <= 0:
        return Prior(key_)
    oldest = now - timedelta(days=days)
    kept = []
    for entry in entries:
        evidence = entry.get("evidence")
        if not evidence or evidence.get("key") != key_ or entry.get("run_id") == run_id:
            continue
        started = _started(entry.get("time"))
        if started is None or started.tzinfo is None or not oldest <= started <= now:
            continue
        kept.append((started, entry["run_id"], evidence["outcomes"]))
    kept.sort(key=lambda item: (item[0], item[1]))
    outcomes: dict[str, str] = {}
    runs: dict[str, set[str]] = {}
    # One matrix run can hold the experiment twice (two cells with the same packages): it
    # counts once among the matrix runs, with the runs of both.
    for _, run, by_scenario in kept:
        for scenario, seen in by_scenario.items():
            outcomes[scenario] = outcomes.get(scenario, "") + seen
            runs.setdefault(scenario, set()).add(run)
    since = kept[0][0].isoformat() if kept else None
    return Prior(key_, since, outcomes, {name: len(ids) for name, ids in runs.items()})
