"""Progress lines on stderr: elapsed time, the cell or stage they concern, and what happens."""

from __future__ import annotations

import sys
import threading
import time

_START = time.monotonic()
_LOCK = threading.Lock()


def say(subject: str, message: str) -> None:
    elapsed = time.monotonic() - _START
    with _LOCK:
        print(f"[{elapsed:7.1f}s] {subject:<22} {message}", file=sys.stderr, flush=True)
