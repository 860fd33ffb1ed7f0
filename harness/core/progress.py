"""Progress: lines with the elapsed time, the cell or stage they concern, and what happens; and,
while a run's cells are smoke-tested on a terminal, a bar of cells done / total with an estimate
of the time left, the lines then going to the run's log file only."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_START = time.monotonic()
_LOCK = threading.Lock()
# Where lines go besides stderr while a run keeps a log (see `bar`), and whether stderr gets
# them too (not while a bar is drawn there).
_LOG: TextIO | None = None
_QUIET = False


def say(subject: str, message: str) -> None:
    elapsed = time.monotonic() - _START
    line = f"[{elapsed:7.1f}s] {subject:<22} {message}"
    with _LOCK:
        if _LOG is not None:
            _LOG.write(line + "\n")
            _LOG.flush()
        if not _QUIET:
            print(line, file=sys.stderr, flush=True)


class Bar:
    """Cells done of a run, for `advance` as each is judged."""

    def __init__(self, progress: Progress | None, task: TaskID | None):
        self._progress, self._task = progress, task

    def advance(self, cell_id: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=f"last: {cell_id}")


@contextmanager
def bar(total: int, log: Path, terminal: bool | None = None) -> Iterator[Bar]:
    """While the block runs, every progress line also goes to `log`; on a terminal (stderr)
    a bar shows cells done / total and the time left instead of the lines."""
    global _LOG, _QUIET
    console = Console(stderr=True)
    drawn = console.is_terminal if terminal is None else terminal
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as sink:
        with _LOCK:
            _LOG, _QUIET = sink, drawn
        try:
            if not drawn:
                yield Bar(None, None)
                return
            columns = (
                TextColumn("cells"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=console, transient=False) as progress:
                console.print(f"progress lines: {log}", soft_wrap=True, highlight=False)
                yield Bar(progress, progress.add_task("", total=total))
        finally:
            with _LOCK:
                _LOG, _QUIET = None, False
