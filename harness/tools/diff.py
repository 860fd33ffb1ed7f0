"""`matrix.diff`: two runs compared, one line per cell added or removed, status or version changed;
a run named by its results file, its id under results/runs/, `latest`, or its history lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import ConfigurationError
from ..run.history import change, history_path, read
from ..stages.publish import read_results


def load_run(ref: str, results_dir: Path) -> dict[str, Any]:
    """A run as {run_id, cells: {id: {status, versions}}}, from a results file, a run id kept under
    results/runs/, `latest`, or else the history's lines of that run id."""
    candidates = [Path(ref)]
    if ref == "latest":
        candidates.append(results_dir / "latest.json")
    elif "/" not in ref and ref not in ("", ".", ".."):
        candidates.append(results_dir / "runs" / ref / "results.json")
    for path in candidates:
        if path.is_file():
            return _from_file(path)
    lines = [e for e in read(history_path(results_dir)) if e["run_id"] == ref]
    if lines:
        return {
            "run_id": ref,
            "cells": {e["cell"]: {"status": e["status"], "versions": e["versions"]} for e in lines},
        }
    raise ConfigurationError(
        f"{ref!r}: no such run: not a results file, nor a run id in "
        f"{results_dir / 'runs'} or {history_path(results_dir)}"
    )


def _from_file(path: Path) -> dict[str, Any]:
    data = read_results(path)
    return {
        "run_id": data["run_id"],
        "cells": {
            cell["id"]: {"status": cell["status"], "versions": cell.get("versions") or {}}
            for cell in data["cells"]
        },
    }


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per difference: cells added or removed, status changes, version changes."""
    lines = []
    before, after = old["cells"], new["cells"]
    for cell_id, cell in after.items():
        if cell_id not in before:
            versions = ", ".join(f"{p} {v}" for p, v in sorted(cell["versions"].items()))
            lines.append(
                f"added    {cell_id}: {cell['status']}" + (f" ({versions})" if versions else "")
            )
            continue
        was = before[cell_id]
        if was["status"] != cell["status"]:
            what = change(was["status"], cell["status"])
            lines.append(
                f"status   {cell_id}: {was['status']} -> {cell['status']}"
                + (f" ({what})" if what else "")
            )
        for package in sorted(was["versions"].keys() | cell["versions"].keys()):
            old_version = was["versions"].get(package, "–")
            new_version = cell["versions"].get(package, "–")
            if old_version != new_version:
                lines.append(f"version  {cell_id}: {package} {old_version} -> {new_version}")
    lines += [
        f"removed  {cell_id}: was {before[cell_id]['status']}"
        for cell_id in before
        if cell_id not in after
    ]
    return lines
