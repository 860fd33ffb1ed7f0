"""Runs the tasks as a user does: `python -m invoke ...` in the checkout, outputs kept elsewhere."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args, results_dir, timeout=120, env=None):
    environ = dict(os.environ, HVGATE_RESULTS=str(results_dir), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
