"""One run per results directory at a time: an fcntl lock on results/.lock, held by the run's
process and released by the kernel when that process ends, however it ends (even SIGKILL)."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import IO

from ..core.errors import Busy
from ..core.text import one_line

LOCK_NAME = ".lock"


class RunLock:
    """The lock of one results directory; `release()` (or the process's end) lets the next run in."""

    def __init__(self, handle: IO[str], path: Path):
        self.handle: IO[str] | None = handle
        self.path = path
        self.facts: dict[str, object] = {}

    def note(self, **facts: object) -> None:
        """Tells a second run who holds the lock (pid, task, run id, since when)."""
        if self.handle is None:
            return
        self.facts.update(facts)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(self.facts) + "\n")
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the lock
            self.handle = None


def acquire(results_dir: Path, task: str) -> RunLock:
    """Takes the results directory's lock without waiting; Busy (exit 3) when another run has it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_NAME
    # Opened for appending so that a run that is refused does not truncate the holder's note.
    handle = open(path, "a+")  # noqa: SIM115 - held for the run, closed by release()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        raise Busy(
            f"{results_dir} is in use by another run{holder}; wait for it to finish, or point "
            "HVGATE_RESULTS at another directory"
        ) from None
    lock = RunLock(handle, path)
    lock.note(
        pid=os.getpid(),
        task=task,
        since=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        argv=sys.argv[1:],
    )
    return lock


def _holder(text: str) -> str:
    try:
        facts = json.loads(text)
        run = f" run {facts['run_id']}," if facts.get("run_id") else ""
        # Another process wrote it: it stays one line of the message, however it was written.
        return " " + one_line(f"({facts['task']},{run} pid {facts['pid']}, since {facts['since']})")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
