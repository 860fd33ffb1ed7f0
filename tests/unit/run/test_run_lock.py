"""harness.run.run_lock: one run per results directory, whoever holds it named, and released
with its process however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from harness.core.errors import Busy
from harness.run.run_lock import acquire


def test_a_second_run_is_refused_with_who_holds_the_lock(tmp_path):
    held = acquire(tmp_path, "matrix.run")
    held.note(run_id="20261123T120000Z-aaaa")
    with pytest.raises(Busy) as info:
        acquire(tmp_path, "matrix.test")
    assert info.value.exit_code == 3
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "run 20261123T120000Z-aaaa" in message
    assert "HVGATE_RESULTS" in message and "\n" not in message
    held.release()
    acquire(tmp_path, "matrix.test").release()  # free again


def test_the_lock_dies_with_its_process(tmp_path):
    # SIGKILL gives no chance to clean up: the kernel drops the lock with the process.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from pathlib import Path
                from harness.run.run_lock import acquire
                held = acquire(Path({str(tmp_path)!r}), "matrix.run")
                print("held", flush=True)
                time.sleep(60)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    with holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with pytest.raises(Busy, match=f"pid {holder.pid}"):
                acquire(tmp_path, "matrix.run")
        finally:
            holder.send_signal(signal.SIGKILL)
    assert holder.returncode == -signal.SIGKILL
    acquire(tmp_path, "matrix.run").release()
