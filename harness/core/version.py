"""Which hvgate wrote a results document: the package's version and the checkout's commit."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from typing import Any

from .paths import ROOT


@functools.cache
def hvgate_version() -> dict[str, Any]:
    """{"version": the installed package's, "commit": the checkout's HEAD (with "-dirty" when
    tracked files differ from it), or None outside a git checkout}."""
    try:
        version = importlib.metadata.version("hvgate")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "commit": _commit()}


def _commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty == 1 else "") if head else None
