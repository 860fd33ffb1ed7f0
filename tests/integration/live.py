"""A real `invoke matrix.*` run in the background, for tests that act while it runs: its progress
lines as they come, its run id, its containers (found by the run's io.hvgate.run label only)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from harness.core.model import CellSpec, default_cell_id
from tests.cli import ROOT

CELLS = ["debian-12-release", "debian-13-release"]
# Enough scenarios to kill something in the middle of, few enough to be quick under TCG.
SCENARIOS = ["boot", "pause-resume", "managed-save", "teardown"]


# The statistics are not under test here: one run decides (a pass is safe, a failure broken).
ONE_RUN_DECIDES = {
    "safe_failure_rate": 0.01,
    "unsafe_failure_rate": 0.5,
    "confidence": 0.6,
    "min_runs": 1,
    "max_runs": 2,
}


def small_matrix(
    directory: Path,
    cells: list[str] | tuple[str, ...] = CELLS,
    policy: dict[str, Any] | None = None,
    scenarios: list[str] | None = SCENARIOS,
) -> Path:
    """matrix.yaml cut down to some cells and `scenarios` (None: the matrix's own), with its lock
    file beside it: the cells render as in the repository's matrix, so their built images are
    reused. `policy` overrides ONE_RUN_DECIDES."""
    data = yaml.safe_load((ROOT / "matrix.yaml").read_text())
    data["cells"] = [c for c in data["cells"] if (c.get("id") or _default_id(c)) in cells]
    if scenarios is not None:
        data["scenarios"] = scenarios
    data.pop("migrations", None)  # between cells of the whole matrix; not under test here
    timeouts = {k: v for k, v in data.get("policy", {}).items() if k.endswith("_timeout")}
    data["policy"] = {**timeouts, **ONE_RUN_DECIDES, **(policy or {})}
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lock = ROOT / "matrix.lock.json"
    if lock.exists():
        (directory / "matrix.lock.json").write_text(lock.read_text())
    return path


def _default_id(cell: dict) -> str:
    return default_cell_id(CellSpec.model_validate(cell))


class LiveRun:
    def __init__(
        self,
        *args: str,
        results_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ):
        self.lines: list[str] = []
        self.stdout = ""
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=cwd,  # its tasks.py and harness/ are that checkout's
            env=dict(os.environ, HVGATE_RESULTS=str(results_dir), **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A test suite started in the background inherits SIGINT ignored; the run under
            # test must take Ctrl-C as a user's terminal sends it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first progress line matching `pattern`; fails with the output so far when the run
        ends or the time is up first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._threads[0].is_alive():
                    raise AssertionError(f"the run ended before {pattern!r}:\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()}")
                self._changed.wait(min(left, 1.0))

    def run_id(self, timeout: float = 600) -> str:
        return self.wait_for(r"\brun\s+(\S+): \d+ cells", timeout).group(1)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"the run did not end within {timeout} s:\n{self.output()}"
            ) from None
        for thread in self._threads:
            thread.join(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return code

    def output(self) -> str:
        return "\n".join(self.lines[-60:])


def containers_of(engine, run_id: str, cell: str | None = None) -> list:
    """This run's containers, and only them: others' runs share the engine."""
    labels = [f"io.hvgate.run={run_id}"] + ([f"io.hvgate.cell={cell}"] if cell else [])
    return engine.containers.list(all=True, filters={"label": labels})


def leftovers(engine, run_id: str) -> list[str]:
    selector = {"label": f"io.hvgate.run={run_id}"}
    return (
        [f"container {c.name}" for c in engine.containers.list(all=True, filters=selector)]
        + [f"network {n.name}" for n in engine.networks.list(filters=selector)]
        + [f"volume {v.name}" for v in engine.volumes.list(filters=selector)]
    )


def wait_for_container(engine, live: LiveRun, run_id: str, cell: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.proc.poll() is not None:
            raise AssertionError(f"the run ended before {cell}'s container ran:\n{live.output()}")
        running = [c for c in containers_of(engine, run_id, cell) if c.status == "running"]
        if running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no running container of {cell} in run {run_id} within {timeout} s")


def kill_in(container, process: str) -> str:
    """SIGKILLs the processes named `process` (their comm) inside the container, as a crash would."""
    script = (
        'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = "$0" ] '
        '&& kill -9 "${p#/proc/}" && echo "${p#/proc/}"; done'
    )
    result = container.exec_run(["sh", "-c", script, process])
    killed = result.output.decode().split()
    assert killed, f"no {process} process in {container.name}"
    return " ".join(killed)
