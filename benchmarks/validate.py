"""How long validation takes on a large matrix: `invoke matrix.list` on a generated matrix of
N cells (default 20,000), and on a one-cell matrix whose lock file lists 3 x N versions of it
(`libvirt: all`; about 10 MB).

    python3 benchmarks/validate.py [--cells 20000]

Prints the seconds of each, and per 1,000 cells; validation should grow linearly with the
matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def matrix(cells: int) -> str:
    """A valid matrix of `cells` cells: 100 bases by 2 sources by enough exact versions."""
    bases = 100
    lines = ["bases:"]
    lines += [
        f"  b{i}: {{distro: debian, release: '12', codename: bookworm}}" for i in range(bases)
    ]
    lines += [
        "sources:",
        "  release: {suite: '{codename}'}",
        "  backports: {suite: '{codename}-backports'}",
        "cells:",
    ]
    for n in range(cells):
        base, source = f"b{n % bases}", ("release", "backports")[(n // bases) % 2]
        lines.append(f"  - {{base: {base}, source: {source}, libvirt: '9.{n // (2 * bases)}.0-1'}}")
    lines.append("guest: {base: b0}")
    return "\n".join(lines) + "\n"


def big_lock(directory: Path, versions: int) -> Path:
    """A matrix of one `libvirt: all` cell, and a lock of that many versions of it."""
    sys.path.insert(0, str(ROOT))
    from harness.matrix.load import load
    from harness.matrix.lockfile import fingerprint

    path = directory / "matrix.yaml"
    path.write_text(matrix(1).replace("libvirt: '9.0.0-1'", "libvirt: all"))
    (cell,) = load(path)[1]
    locked = [
        {
            "id": f"{cell.id}-libvirt-9.{n}.0-1",
            "packages": {
                "libvirt-daemon": f"9.{n}.0-1",
                "python3-libvirt": "9.0.0-1",
                "qemu-system-x86": "1:7.2+dfsg-7",
            },
        }
        for n in range(versions)
    ]
    entry = {"fingerprint": fingerprint(cell), "listed": {}, "cells": locked}
    lock = {"format": 1, "cells": {cell.spec_id: entry}}
    (directory / "matrix.lock.json").write_text(json.dumps(lock))
    return path


def timed(path: Path) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds of `matrix.list` on the matrix, and the cells it listed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "matrix.list", "--json", "--matrix", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, DOCKER_HOST="unix:///nonexistent.sock"),
    )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        sys.exit(f"matrix.list failed: {done.stderr.strip()}")
    return seconds, cpu, len(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp, "small.yaml")
        small.write_text(matrix(10))
        floor, floor_cpu, _ = timed(small)
        path = Path(tmp, "matrix.yaml")
        path.write_text(matrix(args.cells))
        seconds, cpu, listed = timed(path)
        size = path.stat().st_size // 1024
        print(f"matrix.list, {listed} cells ({size} KiB): {seconds:.2f} s ({cpu:.2f} s CPU)")
        print(f"matrix.list, 10 cells (start-up floor): {floor:.2f} s ({floor_cpu:.2f} s CPU)")
        per = (cpu - floor_cpu) / listed * 1000
        print(
            f"validation: {cpu - floor_cpu:.2f} s CPU beyond the floor, {per:.3f} s per 1,000 cells"
        )
        lock_dir = Path(tmp, "lock")
        lock_dir.mkdir()
        lock_matrix = big_lock(lock_dir, 3 * args.cells)
        seconds, cpu, listed = timed(lock_matrix)
        size = (lock_dir / "matrix.lock.json").stat().st_size // 1024
        print(
            f"matrix.list, 1 cell locked as {listed} ({size} KiB lock): {seconds:.2f} s ({cpu:.2f} s CPU)"
        )
        print(f"load average while measured: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
