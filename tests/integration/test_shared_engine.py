"""Two runs from two checkouts on one engine at once, and `matrix.clean` from a third checkout
meanwhile: each run gets the verdict it gets alone, and clean removes nothing of theirs (but
does remove what a run that is no longer alive left)."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker.errors

from harness.engine.lease import live_runs
from tests.cli import ROOT
from tests.integration.live import LiveRun, containers_of, leftovers, small_matrix

CELL = "debian-12-release"
# What a checkout is, without its history, results and caches.
NOT_COPIED = shutil.ignore_patterns(
    ".git", "results", ".cache", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"
)


def checkout(directory: Path) -> Path:
    shutil.copytree(ROOT, directory, ignore=NOT_COPIED)
    small_matrix(directory)  # replaces its matrix.yaml (with the lock beside it)
    return directory


def start(directory: Path) -> LiveRun:
    return LiveRun(
        "matrix.run",
        "--cells",
        CELL,
        "--accel",
        "tcg",
        "--jobs",
        "1",
        results_dir=directory / "results",
        cwd=directory,
    )


def wait_running(engine, run: LiveRun, run_id: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not [c for c in containers_of(engine, run_id) if c.status == "running"]:
        assert run.proc.poll() is None, f"the run ended before its smoke test:\n{run.output()}"
        assert time.monotonic() < deadline, f"no container of run {run_id}:\n{run.output()}"
        time.sleep(0.5)


def verdicts(directory: Path) -> dict[str, tuple[str, int, int, int]]:
    data = json.loads((directory / "results" / "latest.json").read_text())
    (cell,) = data["cells"]
    assert cell["id"] == CELL
    return {
        s["name"]: (s["status"], s["runs"], s["failures"], s["errors"]) for s in cell["scenarios"]
    }


def test_two_checkouts_share_an_engine_and_clean_keeps_their_runs(engine, debian12_base, tmp_path):
    first, second = checkout(tmp_path / "first"), checkout(tmp_path / "second")
    # What a run killed outright leaves: a labelled container and no lease.
    dead_run = f"test-dead-{secrets.token_hex(4)}"
    dead = engine.containers.create(debian12_base, ["true"], labels={"io.hvgate.run": dead_run})
    runs = [start(first), start(second)]
    try:
        ids = [run.run_id() for run in runs]
        for run, run_id in zip(runs, ids, strict=True):
            wait_running(engine, run, run_id)
        # The third checkout: this one. Only these runs' objects are its business here (other
        # runs of other checkouts may share this engine, and are not this test's).
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "matrix.clean",
                "--run-ids",
                ",".join([*ids, dead_run]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert f"removed container {dead.name} (run {dead_run})" in lines, done.stdout
        for run_id in ids:
            assert any(line.endswith(f": run {run_id} is alive") for line in lines), done.stdout
            assert not any(f"(run {run_id})" in line for line in lines), done.stdout
        codes = [run.finish(timeout=1800) for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
        with contextlib.suppress(docker.errors.NotFound):
            dead.remove(force=True)
    outputs = "\n\n".join(run.output() for run in runs)
    # One clean run decides with this matrix's policy: each scenario safe, as alone.
    assert codes == [0, 0], outputs
    alone = {
        name: ("safe", 1, 0, 0) for name in ("boot", "pause-resume", "managed-save", "teardown")
    }
    assert verdicts(first) == alone, outputs
    assert verdicts(second) == alone, outputs
    for run_id in ids:
        assert leftovers(engine, run_id) == []
    assert leftovers(engine, dead_run) == []


HOLD = """
import sys, time
from harness.engine import lease
import docker
lease.run_lease(docker.from_env(), sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""


def test_a_lease_ends_with_its_holder_however_it_ends(engine, debian12_base):
    run_id = f"test-lease-{secrets.token_hex(4)}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, run_id, debian12_base],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert run_id in live_runs(engine)
        holder.kill()  # SIGKILL: nothing of the holder runs any more
        holder.wait()
        deadline = time.monotonic() + 30
        while run_id in live_runs(engine):
            assert time.monotonic() < deadline, "the lease outlived its holder"
            time.sleep(0.2)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
