"""Evidence that accumulates: a scenario's runs in images that are the same experiment pool
across runs of the matrix (README, "Verdicts").

An experiment is named by its evidence key: the digest of every package installed in the cell's
image at its version (record-versions), of the runner copied into the container (the scenarios
and the domain definition are part of it), of the guest, and the accelerator. Two cells whose
images hold the same packages share a key, and so their runs. Anything else changing starts a
new key, with no earlier runs. The history keeps each run's outcomes under its key; runs older
than the policy's evidence_days are left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ..core.results import Prior

KEY_LENGTH = 16  # hex digits: 64 bits, far from any collision among a gate's experiments


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(packages: str | None, runner: str, guest: str, accel: str) -> str | None:
    """The experiment's key; None for an image that did not record its packages (built before
    images did), whose runs pool with nothing."""
    if packages is None:
        return None
    parts = f"packages {packages}\nrunner {runner}\nguest {guest}\naccel {accel}\n"
    return digest(parts.encode())[:KEY_LENGTH]


def recorded(cell: dict[str, Any]) -> dict[str, Any] | None:
    """What the history keeps of a cell's result (as the results JSON has it) for later pooling:
    its key and this run's outcomes of each scenario that ran."""
    if not cell.get("evidence"):
        return None
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
