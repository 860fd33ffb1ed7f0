"""A run's progress on disk, so that no finished cell is lost: each cell's result is written
(atomically) as it finishes, and `--resume` continues an interrupted run from them.

Under results/runs/RUN_ID/: `run.json` (the run's options and state: running, interrupted or
finished) and `cells/ID.json` (one finished cell's result and the fingerprint of what it tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core import readback
from ..core.errors import ConfigurationError, InputError
from ..core.files import write_atomic
from ..core.model import Cell, Matrix
from ..core.options import RESELECTING, RunOptions
from ..core.progress import say
from ..core.results import CellResult, RunResult
from ..core.text import one_line
from ..stages.render import render
from .run_lock import RunLock, acquire

RUNNING, INTERRUPTED, FINISHED = "running", "interrupted", "finished"
MAX_STATE_BYTES = readback.MIB
MAX_CELL_BYTES = 64 * readback.MIB
OneLine = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")]


class RunState(BaseModel):
    """run.json: what --resume takes the run's matrix, selection and options from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: Annotated[str, Field(pattern=rf"^{readback.RUN_ID_RE.pattern}$")]
    started: Annotated[str, Field(pattern=rf"^{readback.TIME_RE.pattern}$")]
    state: Literal["running", "interrupted", "finished"]
    matrix: OneLine
    cells: OneLine | None = None
    exclude: OneLine | None = None
    accel: Literal["auto", "kvm", "tcg"] | None = None
    runs: Annotated[int, Field(ge=1, le=1000)] | None = None
    shard: Annotated[str, Field(pattern=r"^ *[0-9]+ */ *[0-9]+ *$")] | None = None
    selected: list[Annotated[str, Field(pattern=rf"^{readback.CELL_ID_RE.pattern}$")]] = []


def read_state(run_dir: Path) -> RunState:
    """A run's run.json, checked; InputError naming the file and the field otherwise."""
    path = run_dir / "run.json"
    data = readback.read_json(path, "run state", MAX_STATE_BYTES)
    return readback.validated(RunState.model_validate, data, path)


# What write_atomic leaves behind when its process is killed between write and rename.
STALE_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}$")


def resumed(opts: RunOptions) -> RunOptions:
    """The options to run with: the given ones, or with --resume those of the newest unfinished
    run under results/runs/ (the only flag that may come with --resume is --matrix, unchanged)."""
    if not opts.resume:
        return opts
    run_dir = latest_unfinished(opts.results)
    if run_dir is None:
        raise ConfigurationError(
            f"--resume: no interrupted run under {opts.results / 'runs'} to continue"
        )
    stored = read_state(run_dir)
    extra = [f"--{name}" for name in RESELECTING if getattr(opts, name) is not None]
    if extra:
        raise ConfigurationError(
            f"--resume continues run {run_dir.name} with its own selection; "
            f"leave out {', '.join(extra)}"
        )
    return dataclasses.replace(
        opts,
        matrix=stored.matrix,
        cells=stored.cells,
        exclude=stored.exclude,
        accel=stored.accel,
        runs=stored.runs,
        shard=stored.shard,
        resumed=run_dir.name,
    )


def latest_unfinished(results_dir: Path) -> Path | None:
    """The newest run (run ids sort by time) whose state is not finished."""
    for run_json in sorted((results_dir / "runs").glob("*/run.json"), reverse=True):
        if not readback.RUN_ID_RE.fullmatch(run_json.parent.name):
            continue
        if read_state(run_json.parent).state != FINISHED:
            return run_json.parent
    return None


def fingerprint(cell: Cell, matrix: Matrix, opts: RunOptions) -> str:
    """What a cell's result depends on: its Dockerfile, scenarios, policy, accel and runs. A
    finished cell is reused by --resume only while this is unchanged."""
    facts = [render(cell), list(cell.scenarios), matrix.policy.model_dump(), opts.accel, opts.runs]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def cell_from_json(data: dict[str, Any]) -> CellResult:
    # RunResult.from_json knows how a cell's JSON maps back to its types.
    run = {"run_id": "", "started": "", "finished": "", "host": {}, "cells": [data]}
    return RunResult.from_json(run).cells[0]


@dataclass
class Progress:
    """The run's lock and its on-disk state; `keep` writes each cell as it finishes."""

    run_dir: Path
    run_id: str
    started: str
    lock: RunLock
    fingerprints: dict[str, str]
    finished: dict[str, CellResult] = field(default_factory=dict)

    def keep(self, result: CellResult) -> None:
        record = {
            "fingerprint": self.fingerprints.get(result.id),
            "result": dataclasses.asdict(result),
        }
        write_atomic(self.run_dir / "cells" / f"{result.id}.json", json.dumps(record, indent=1))

    def close(self, state: str) -> None:
        """Records how the run ended (after its results are published) and lets the next run in."""
        _set_state(self.run_dir, state)
        self.lock.release()


def start(
    opts: RunOptions, matrix: Matrix, chosen: tuple[Cell, ...], run_id: str, started: str
) -> Progress:
    """Takes the lock, then starts the run's state, or reads a resumed run's finished cells."""
    results_dir = opts.results
    lock = acquire(results_dir, opts.task)
    _sweep(results_dir)
    fingerprints = {cell.id: fingerprint(cell, matrix, opts) for cell in chosen}
    finished: dict[str, CellResult] = {}
    if opts.resumed:
        run_id = opts.resumed
        run_dir = opts.run_dir(run_id)
        try:
            stored = read_state(run_dir)
        except InputError:
            lock.release()
            raise
        if stored.state == FINISHED:
            lock.release()
            raise ConfigurationError(f"--resume: run {run_id} finished meanwhile")
        started = stored.started
        _sweep(run_dir)
        _sweep(run_dir / "cells")
        for cell in chosen:
            found = _finished_cell(run_dir, cell.id, fingerprints[cell.id])
            if found is not None:
                finished[cell.id] = found
        say(
            "run",
            f"resuming {run_id}: {len(finished)} of {len(chosen)} cells finished, "
            f"{len(chosen) - len(finished)} to go",
        )
    run_dir = opts.run_dir(run_id)
    state = {
        "run_id": run_id,
        "started": started,
        "state": RUNNING,
        **opts.stored(),
        "matrix": str(Path(opts.matrix).resolve()),
        "selected": [cell.id for cell in chosen],
    }
    write_atomic(run_dir / "run.json", json.dumps(state, indent=1) + "\n")
    lock.note(run_id=run_id)
    return Progress(run_dir, run_id, started, lock, fingerprints, finished)


def _finished_cell(run_dir: Path, cell_id: str, expected: str) -> CellResult | None:
    path = run_dir / "cells" / f"{cell_id}.json"
    if not path.exists():
        return None
    try:
        record = readback.read_json(path, "cell result", MAX_CELL_BYTES)
        if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
            raise InputError(f"{path}: result: not an object")
        readback.check_cell(record["result"], path)
        result = cell_from_json(record["result"])
        if result.id != cell_id:
            raise InputError(f"{path}: result.id: {result.id} is not the file's cell")
    except InputError as exc:
        say(cell_id, f"{one_line(exc)}; running the cell again")
        return None
    except (ValueError, KeyError, TypeError) as exc:
        say(cell_id, f"{path}: unreadable ({one_line(exc, 200)}); running the cell again")
        return None
    if record.get("fingerprint") != expected:
        say(cell_id, "changed since the interrupted run (Dockerfile, scenarios or policy); again")
        return None
    return result


def _set_state(run_dir: Path, state: str) -> None:
    path = run_dir / "run.json"
    data = read_state(run_dir).model_dump()
    data["state"] = state
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def _sweep(directory: Path) -> None:
    """Removes temporary files a killed run left (the lock is held: no writer is running)."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.is_file() and STALE_TEMPORARY.match(path.name) and path.name != ".lock":
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while an interrupted run cleans up and writes what it finished."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
