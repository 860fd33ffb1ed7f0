"""Every run kept as one line per cell in results/history.jsonl; from it, each cell's history in a
run (since when its status holds, regression or fix)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import readback
from ..core.errors import InputError
from ..core.progress import say
from ..core.results import RunResult, Status
from ..core.text import one_line
from ..stages.publish import read_results
from . import evidence
from .checkpoint import FINISHED

HISTORY = "history.jsonl"
# Years of nightly runs of a large matrix.
MAX_HISTORY_BYTES = 256 * readback.MIB
# The statuses that judge libvirt and QEMU; the others say nothing about them, so a regression
# or a fix is found against the last of these, not against an interrupted or unreachable run.
VERDICTS = (Status.SAFE, Status.FLAKY, Status.BROKEN)


def history_path(results_dir: Path) -> Path:
    return results_dir / HISTORY


def lines_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The history lines of one run's JSON: run id, time, cell id, status, versions, and what
    later runs of the same experiment pool (harness/run/evidence.py)."""
    lines = []
    for cell in data["cells"]:
        line = {
            "run_id": data["run_id"],
            "time": data["started"],
            "cell": cell["id"],
            "status": cell["status"],
            "versions": cell.get("versions") or {},
        }
        kept = evidence.recorded(cell)
        if kept:
            line["evidence"] = kept
        lines.append(line)
    return lines


def read(path: Path) -> list[dict[str, Any]]:
    """Every kept line, oldest first, each checked (InputError names the file, line and field).
    A torn last line (a crash mid-write: no newline at its end) is skipped, not fatal."""
    if not path.exists():
        return []
    text = readback.read_text(path, "history", MAX_HISTORY_BYTES)
    entries = []
    numbered = list(readback.lines(text))
    for number, line in numbered:
        try:
            entry = readback.parse_json(line)
        except ValueError as exc:
            if number == numbered[-1][0] and not text.endswith("\n"):
                say("history", f"{path}:{number}: skipped a torn last line")
                continue
            raise InputError(f"{path}:{number}: not a history line: {exc}") from None
        readback.check_history_line(entry, f"{path}:{number}")
        entries.append({"time": "", "versions": {}, **entry})
    return entries


def append(path: Path, data: dict[str, Any]) -> None:
    """Appends a run's lines in one write to a file opened for appending, then fsyncs: a reader
    or a concurrent run sees whole lines, and a crash loses at most the last, torn, line."""
    payload = "".join(
        json.dumps(line, separators=(",", ":"), sort_keys=True) + "\n" for line in lines_of(data)
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:  # a regular file takes it whole; the loop only guards a short write
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def backfill(results_dir: Path) -> None:
    """Starts a missing history from the runs already kept under results/runs/, oldest first:
    those that finished (a run cut short is kept in the history once --resume finishes it)."""
    path = history_path(results_dir)
    if path.exists():
        return
    runs = []
    for results in (results_dir / "runs").glob("*/results.json"):
        if not finished(results.parent):
            continue
        try:
            data = read_results(results)
        except InputError as exc:
            say("history", f"left out of the history: {one_line(exc)}")
            continue
        runs.append((data["started"], data["run_id"], data))
    for _, _, data in sorted(runs, key=lambda run: (run[0], run[1])):
        append(path, data)


def finished(run_dir: Path) -> bool:
    """Whether a kept run ran to its end: its run.json says so, or it has none (a merge)."""
    try:
        state = json.loads((run_dir / "run.json").read_text()).get("state")
    except FileNotFoundError:
        return True
    except (OSError, ValueError, AttributeError):
        return False
    return bool(state == FINISHED)


def change(before: str | None, now: str) -> str | None:
    """ "regression" (safe before, flaky or broken now), "fix" (the other way round), or None."""
    if before == Status.SAFE and now in (Status.FLAKY, Status.BROKEN):
        return "regression"
    if before in (Status.FLAKY, Status.BROKEN) and now == Status.SAFE:
        return "fix"
    return None


def cell_history(status: str, run_id: str, past: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's `history` in a run, from its earlier lines (oldest first, this run excluded)."""
    since = run_id
    for entry in reversed(past):
        if entry["status"] != status:
            break
        since = entry["run_id"]
    verdicts = [e["status"] for e in past if e["status"] in VERDICTS]
    return {
        "since": since,
        "first_seen": past[0]["run_id"] if past else run_id,
        # The run before this one that had the cell, and its status there.
        "last_seen": past[-1]["run_id"] if past else None,
        "previous": past[-1]["status"] if past else None,
        "change": change(verdicts[-1] if verdicts else None, status),
    }


def annotate(run: RunResult, entries: list[dict[str, Any]]) -> RunResult:
    """The run with each cell's `history` computed from the kept lines of earlier runs."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if entry["run_id"] != run.run_id:
            by_cell.setdefault(entry["cell"], []).append(entry)
    cells = [
        dataclasses.replace(
            cell, history=cell_history(cell.status, run.run_id, by_cell.get(cell.id, []))
        )
        for cell in run.cells
    ]
    return dataclasses.replace(run, cells=cells)


def record(
    run: RunResult,
    publish: Callable[[RunResult, list[dict[str, Any]]], dict[str, Path]],
    results_dir: Path,
    keep: bool = True,
) -> tuple[RunResult, dict[str, Path]]:
    """Annotates the run from the history, publishes it (given the history's entries, for the
    page's trend), then appends it to the history (after publishing, so a run whose results
    could not be written is not counted). With keep=False
    (a run cut short, which --resume continues under the same id) nothing is appended: the run
    enters the history once, when it has finished."""
    backfill(results_dir)
    path = history_path(results_dir)
    past = read(path)
    annotated = annotate(run, past)
    paths = publish(annotated, past)
    if keep:
        append(path, annotated.to_json())
        paths["history"] = path
    return annotated, paths
