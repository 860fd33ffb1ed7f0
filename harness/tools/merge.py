"""Merges the result sets of several runs or shards into one: the same result whatever the order
of the inputs or how often one is given, and refused when two inputs disagree about a cell."""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ConfigurationError
from ..core.results import FORMAT, RunResult
from ..matrix.select import split_patterns
from ..run import history
from ..run.run_lock import acquire
from ..stages.publish import publish, read_results, results_root

# A merged document keeps the runs it was made of here, so that merging it again with one of
# them finds the same runs, the same run id, and so the same document.
PARTS = "merged_runs"
# Computed from the history of the directory a result set is published to, not by the run.
DERIVED = ("history",)


def inputs(specs: str | Sequence[str]) -> list[Path]:
    """The results files that comma-separated paths or (quoted) shell patterns name; a directory
    stands for its latest.json. A file named twice is read once."""
    found: dict[Path, Path] = {}
    for spec in split_patterns(specs):
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise ConfigurationError(f"{spec!r} matches no results file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                path = path / "latest.json"
            found.setdefault(path.resolve(), path)
    if not found:
        raise ConfigurationError("no results files to merge")
    return list(found.values())


def parts_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a document holds: its own, or those of the merge it is."""
    merged = data.get("host", {}).get(PARTS)
    if isinstance(merged, list):
        return merged
    return [{key: data[key] for key in ("run_id", "started", "finished", "host")}]


def comparable(cell: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in cell.items() if key not in DERIVED}


def difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What two results of one cell disagree on, most telling first."""
    versions_a, versions_b = a.get("versions") or {}, b.get("versions") or {}
    for package in sorted(versions_a.keys() | versions_b.keys()):
        if versions_a.get(package) != versions_b.get(package):
            return (
                f"different versions ({package} {versions_a.get(package, '–')} "
                f"vs {versions_b.get(package, '–')})"
            )
    if a["status"] != b["status"]:
        return f"different verdicts ({a['status']} vs {b['status']})"
    scenarios_a = {s["name"]: s["status"] for s in a.get("scenarios", [])}
    scenarios_b = {s["name"]: s["status"] for s in b.get("scenarios", [])}
    for name in sorted(scenarios_a.keys() | scenarios_b.keys()):
        if scenarios_a.get(name) != scenarios_b.get(name):
            return (
                f"different verdicts of {name} ({scenarios_a.get(name, '–')} "
                f"vs {scenarios_b.get(name, '–')})"
            )
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"results of two runs (they differ in {', '.join(fields)})"


def merge(
    documents: Sequence[tuple[str, dict[str, Any]]], order: Sequence[str] = ()
) -> dict[str, Any]:
    """One results document from (name, document) pairs. Cells come in `order` (the matrix's),
    then any others by id. A cell given twice must be given identically."""
    if not documents:
        raise ConfigurationError("no results files to merge")
    cells: dict[str, tuple[str, dict[str, Any]]] = {}
    parts: dict[str, tuple[str, dict[str, Any]]] = {}
    # Sorted by name, so that which input a message names first does not depend on their order.
    for name, data in sorted(documents, key=lambda item: item[0]):
        for part in parts_of(data):
            seen = parts.setdefault(part["run_id"], (name, part))
            if seen[1] != part:
                raise ConfigurationError(
                    f"run {part['run_id']} is recorded differently in {seen[0]} and {name}"
                )
        for cell in data["cells"]:
            cell = {**comparable(cell), "history": {}}
            seen_cell = cells.setdefault(cell["id"], (name, cell))
            if seen_cell[1] != cell:
                raise ConfigurationError(
                    f"cell {cell['id']}: {difference(seen_cell[1], cell)} in {seen_cell[0]} "
                    f"and {name}; a merged result set takes each cell from one run"
                )
    rank = {cell_id: index for index, cell_id in enumerate(order)}
    ordered = sorted(cells, key=lambda cell_id: (rank.get(cell_id, len(rank)), cell_id))
    runs = sorted((part for _, part in parts.values()), key=lambda p: (p["started"], p["run_id"]))
    if len(runs) == 1:
        header = dict(runs[0])
    else:
        header = {
            "run_id": merged_run_id(runs),
            "started": min(p["started"] for p in runs),
            "finished": max(p["finished"] for p in runs),
            "host": {**common(p["host"] for p in runs), PARTS: runs},
        }
    policies = {
        json.dumps(d.get("policy"), sort_keys=True) for _, d in documents if d.get("policy")
    }
    if len(policies) > 1:
        raise ConfigurationError(
            "the inputs were judged by different policies; merge runs of one policy"
        )
    policy = json.loads(policies.pop()) if policies else None
    # read_results has refused any other format.
    return {
        **header,
        "cells": [cells[cell_id][1] for cell_id in ordered],
        "format": FORMAT,
        "policy": policy,
    }


def common(hosts: Any) -> dict[str, Any]:
    """The host facts every run shares (all of them when the shards ran on one machine)."""
    hosts = [{k: v for k, v in host.items() if k != PARTS} for host in hosts]
    return {k: v for k, v in hosts[0].items() if all(h.get(k) == v for h in hosts[1:])}


def merged_run_id(runs: Sequence[dict[str, Any]]) -> str:
    """A run id for the merge of these runs: when the first started, and a digest of their ids."""
    digest = hashlib.sha256("\n".join(sorted(p["run_id"] for p in runs)).encode()).hexdigest()
    try:
        first = datetime.datetime.fromisoformat(min(p["started"] for p in runs))
        stamp = first.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-"
    except ValueError:
        stamp = ""
    return f"{stamp}merge-{digest[:8]}"


def located(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The document with its paths absolute: each input's are relative to its own results
    directory, and publishing makes them relative to the merge's."""
    root = results_root(path)

    def where(value: str | None) -> str | None:
        return str((root / value).resolve()) if value else value

    cells = []
    for cell in data["cells"]:
        cell = {**cell, "log_dir": where(cell.get("log_dir"))}
        if isinstance(cell.get("build"), dict) and cell["build"].get("log"):
            cell["build"] = {**cell["build"], "log": where(cell["build"]["log"])}
        cells.append(cell)
    return {**data, "cells": cells}


def merge_files(
    specs: str | Sequence[str], out_dir: Path, order: Sequence[str] = ()
) -> tuple[RunResult, dict[str, Path]]:
    """Reads every input before writing anything, merges them, and publishes the merge to
    out_dir (its JSON and every format, and its place in out_dir's history)."""
    documents = [(str(path), located(read_results(path), path)) for path in inputs(specs)]
    run = RunResult.from_json(json.loads(json.dumps(merge(documents, order))))
    history.read(history.history_path(out_dir))  # a bad history is refused before any write
    lock = acquire(out_dir, "matrix.merge")  # not while a run writes to the same directory
    try:
        return history.record(
            run,
            lambda result, past: publish(result, out_dir, history=past),
            out_dir,
        )
    finally:
        lock.release()
