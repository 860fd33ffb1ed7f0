"""Pieces several integration tests share: a directory served on loopback (an archive of the
test's own), files put into a container as a tar, a base image on the engine, and a run of a
test matrix."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from harness.core.model import Base
from harness.core.paths import ROOT
from harness.engine.bases import Bases, base_image_tag
from tests.cli import invoke


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def served(directory: Path) -> Iterator[int]:
    """The directory over HTTP on 127.0.0.1 while the block runs; yields the port."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of path -> (content, mode), for a container's put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def base_on_engine(engine, name: str, base: Base, logs: Path) -> str:
    """The base image's tag, bootstrapped if this engine has none yet."""
    Bases(engine, {name: base}, logs).ensure(name)
    return base_image_tag(name)


BACKTEST = ROOT / "matrix-backtest.yaml"


def backtest_cell(
    work: Path, cell: str, scenarios: list[str], runs: int, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """One cell of the committed backtest matrix, cut down to `scenarios`, run `runs` times
    under TCG with the committed lock (the scenarios are no part of a cell's fingerprint, so its
    image is the matrix's own): the CLI's outcome and the cell's result."""
    data = yaml.safe_load(BACKTEST.read_text())
    data["scenarios"] = scenarios
    matrix = work / "backtest.yaml"
    matrix.write_text(yaml.safe_dump(data))
    shutil.copy(BACKTEST.with_suffix(".lock.json"), work / "backtest.lock.json")
    results = work / "results"
    done = invoke(
        "matrix.run", "--matrix", str(matrix), "--cells", cell, "--runs", str(runs),
        "--accel", "tcg", "--jobs", "1", results_dir=results, timeout=timeout,
    )  # fmt: skip
    (result,) = json.loads((results / "latest.json").read_text())["cells"]
    return done, result


def run_matrix(
    matrix: Path, results_dir: Path, *flags: str, label: str, timeout: float = 3600
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`hvgate matrix.run --matrix MATRIX FLAGS...` into results_dir: the CLI's outcome and the
    results document, each cell's log_dir made absolute (the file holds it relative to the
    results directory). The time and every scenario's outcome go to the test session's log."""
    started = time.monotonic()
    done = invoke(
        "matrix.run", "--matrix", str(matrix), *flags, results_dir=results_dir, timeout=timeout
    )
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    print(f"\n{label} run: {seconds:.0f} s")
    for cell in data["cells"]:
        cell["log_dir"] = str(results_dir / cell["log_dir"])
        for s in cell["scenarios"]:
            print(
                f"  {cell['id']:<18} {s['name']:<16} {s['status']:<8} "
                f"{s['failures']}/{s['runs']} failed, {s['errors']} errors, "
                f"durations {s['durations_s']}, details {s['details']}"
            )
            for message in s["messages"]:
                print(f"    {message}")
    return done, data
