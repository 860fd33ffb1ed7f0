"""Speed figures of hvgate on this machine, each next to its floor or the naive way.

    python3 benchmarks/bench.py [--quick] [--cell debian-12-release] [--jobs N] [--cold]

Per cell (always): the cell's cold build against the floor (mmdebstrap of the same package
set into a tarball), a no-op build, boot to the ready marker under libvirt against a bare
qemu-system-x86_64 boot of the same guest in the same container, one repetition of the
scenario set under TCG, and the naive way (benchmarks/naive.sh). Whole matrix (not with
--quick): a no-op `matrix.build`, warm `matrix.run --runs 1` with --jobs 1 and the default,
with --cold the same from no cell images (it removes the matrix's cell images first), and the
naive way on every cell that built, one after the other.
Then the runs the sequential test needs against a fixed count, and every image's size.
Everything it starts is labelled io.hvgate.run=bench-*, and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import docker.errors  # noqa: E402

from harness.core.model import Cell, Matrix  # noqa: E402
from harness.core.options import SmokeJob, package_cache_wanted  # noqa: E402
from harness.core.stats import StopRule  # noqa: E402
from harness.engine import client as eng  # noqa: E402
from harness.engine import package_cache  # noqa: E402
from harness.engine.bases import base_image_tag  # noqa: E402
from harness.run import pipeline, schedule  # noqa: E402
from harness.stages import smoke as smoke_stage  # noqa: E402
from harness.stages.build import build_guest, cell_context, existing_image  # noqa: E402
from harness.stages.render import packages, render  # noqa: E402

MATRIX = str(ROOT / "matrix.yaml")
TOKEN = secrets.token_hex(3)
LABEL = {eng.LABEL_RUN: f"bench-{TOKEN}"}
LOGS = Path(tempfile.gettempdir()) / f"hvgate-bench-{TOKEN}"
figures: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    figures.append((name, value))
    print(f"  {name:<58} {value}", flush=True)


def section(title: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n== {title} (load average {load})", flush=True)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    value = function()
    return time.monotonic() - started, value


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def mib(size: int | None) -> str:
    return f"{size / 2**20:.0f} MiB" if size else "?"


def invoke(*args: str, results: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The real CLI, as a user runs it, with its own results directory."""
    env = dict(os.environ, HVGATE_RESULTS=str(results))
    command = [sys.executable, "-m", "invoke", *args]
    seconds, done = timed(
        lambda: subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    )
    # The progress lines, for a look at how parallel cells read.
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "progress.log", "a") as log:
        log.write(f"$ invoke {' '.join(args)}\n{done.stderr}")
    return seconds, done


# --- building ------------------------------------------------------------------------------------


def build_uncached(
    engine: docker.DockerClient, context: bytes, tag: str, buildargs: dict[str, str]
) -> float:
    """Seconds of a classic build that reuses no layer (docker build --no-cache)."""
    started = time.monotonic()
    stream = engine.api.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        nocache=True,
        decode=True,
        buildargs=buildargs,
        timeout=3600,
    )
    tail: list[str] = []
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(f"bench build of {tag} failed: {chunk['error']} {tail[-5:]}")
        tail = (tail + (chunk.get("stream") or "").splitlines())[-20:]
    return time.monotonic() - started


def cache_volume(engine: docker.DockerClient) -> str:
    """What the shared package cache holds: every .deb once."""
    script = (
        f"du -sm {package_cache.MOUNT} | cut -f1; find {package_cache.MOUNT} -name '*.deb' | wc -l"
    )
    output = engine.containers.get(package_cache.NAME).exec_run(["sh", "-c", script]).output
    assert isinstance(output, bytes)
    size, debs = output.decode().split()
    return f"{size} MiB, {debs} .debs"


def floor_build(engine: docker.DockerClient, cell: Cell, proxy: str | None) -> tuple[float, int]:
    """mmdebstrap of the base's package set plus the cell's into a tarball: (seconds, bytes).
    The mirrors are the base image's own apt sources."""
    sources = engine.containers.run(
        base_image_tag(cell.base_name),
        ["sh", "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; true"],
        remove=True,
        labels=LABEL,
    ).decode()
    mirrors = [line.strip() for line in sources.splitlines() if line.startswith("deb ")]
    if not mirrors:
        raise RuntimeError(f"no one-line apt sources in {base_image_tag(cell.base_name)}")
    include = ",".join(["apt", *packages(cell)])
    with tempfile.TemporaryDirectory(prefix="hvgate-bench-floor-") as tmp:
        target = Path(tmp) / "floor.tar"
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=auto",
            '--aptopt=APT::Install-Recommends "false"',
            f"--include={include}",
            cell.base.codename,
            str(target),
            *mirrors,
        ]
        env = dict(os.environ)
        env.pop("http_proxy", None)
        if proxy:
            env["http_proxy"] = proxy
        seconds, done = timed(
            lambda: subprocess.run(command, env=env, capture_output=True, text=True)
        )
        if done.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed: {done.stderr.strip()[-500:]}")
        return seconds, target.stat().st_size


def cold_cell(engine: docker.DockerClient, matrix: Matrix, cell: Cell) -> dict[str, float]:
    section(f"cold build of {cell.id} against the floor")
    context = cell_context(cell)
    results: dict[str, float] = {}
    tag = f"hvgate/bench-{TOKEN}:{cell.id}"
    base = base_image_tag(matrix.guest.base)
    with package_cache.serving(engine, base, LOGS) as serving:
        # HVGATE_PACKAGE_CACHE=off: the builds' figure without the cache only.
        proxy = serving.proxy() if package_cache_wanted(False, os.environ) else None
        try:
            results["direct"] = build_uncached(engine, context, tag, {})
            report(
                "image build, packages from the archive (--no-cache)", f"{results['direct']:.1f} s"
            )
            if proxy:
                try:
                    results["cached"] = build_uncached(engine, context, tag, {"http_proxy": proxy})
                    report(
                        "image build, packages from the package cache", f"{results['cached']:.1f} s"
                    )
                except RuntimeError as exc:  # the network failed the cache: say so, go on
                    report("image build, packages from the package cache", f"failed: {exc}"[:200])
            size = engine.images.get(tag).attrs.get("Size")
            report("image size", mib(size))
            if proxy:
                report("package cache volume after it", cache_volume(engine))
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(tag, force=True)
        if not shutil.which("mmdebstrap"):
            report("floor (mmdebstrap)", "skipped: mmdebstrap is not installed")
            return results
        results["floor"], floor_size = floor_build(engine, cell, None)
        report("floor: mmdebstrap into a tarball, from the archive", f"{results['floor']:.1f} s")
        report("floor tarball size", mib(floor_size))
        if proxy:
            try:
                results["floor_cached"], _ = floor_build(engine, cell, proxy)
                report(
                    "floor: mmdebstrap, from the package cache", f"{results['floor_cached']:.1f} s"
                )
            except RuntimeError as exc:
                report("floor: mmdebstrap, from the package cache", f"failed: {exc}"[:200])
    report("cell build / floor, from the archive", ratio(results["direct"], results["floor"]))
    if "cached" in results and "floor_cached" in results:
        report(
            "cell build / floor, from the package cache",
            ratio(results["cached"], results["floor_cached"]),
        )
    return results


# --- booting and smoke tests ---------------------------------------------------------------------

BOOT_SCRIPT = r"""
import json, os, re, subprocess, sys, time
sys.path.insert(0, "/opt/hvgate")
from smoke import daemons, guest

ROUNDS = int(sys.argv[1])

def wait_ready(console, started, process=None, limit=300):
    while time.monotonic() - started < limit:
        try:
            with open(console, "rb") as handle:
                if b"HVGATE-READY" in handle.read():
                    return time.monotonic() - started
        except FileNotFoundError:
            pass
        if process is not None and process.poll() is not None:
            raise SystemExit(f"bare QEMU exited {process.returncode} before the ready marker")
        time.sleep(0.02)
    raise SystemExit(f"no ready marker in {limit} s")

def libvirt_qemu(name):
    # The QEMU libvirt started for the domain: its pid file, else the only QEMU there is.
    for run_dir in ("/run/libvirt/qemu", "/var/run/libvirt/qemu"):
        try:
            with open(f"{run_dir}/{name}.pid") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            continue
    pids = daemons.qemu_pids()
    if len(pids) != 1:
        raise SystemExit(f"cannot tell libvirt's QEMU among {pids}")
    return pids[0]

def bare_argv(pid, console, bare_console):
    # The exact argv libvirt started QEMU with, minus what only works under libvirt: the QMP
    # monitor (its chardev and -mon), -S (libvirt sends `cont`), the fds libvirt passed
    # (-add-fd; /dev/fdset/N paths become the files they were) and the master key secret
    # (a file in the domain's private directory, gone with the domain). Machine, CPU model,
    # devices, smbios, kernel, initrd and command line stay as they are.
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        argv = handle.read().decode().split("\0")[:-1]
    fdsets, out, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-S", "-daemonize"):
            i += 1
            continue
        if arg == "-add-fd":
            # QEMU keeps a dup of the fd, not its number: the serial file libvirt opened is
            # named by the opaque; any other fd set this script cannot replace.
            fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
            if not re.match(r"(serial|console)0-source$", fields.get("opaque", "")):
                raise SystemExit(f"libvirt passed QEMU an fd this script cannot replace: {value}")
            fdsets[fields["set"]] = console
            i += 2
            continue
        if arg == "-mon" or (arg == "-chardev" and "id=charmonitor" in value) or (
            arg == "-object" and "masterKey0" in value
        ):
            i += 2
            continue
        out.append(arg)
        i += 1
    text = re.sub(r"/dev/fdset/(\d+)", lambda m: fdsets[m.group(1)], "\0".join(out))
    text = text.replace(console, bare_console)
    out = text.split("\0")
    passed = [a for a in out if re.search(r'(^|,)fd=\d|"fd":', a)]
    if passed:
        raise SystemExit(f"libvirt passed QEMU fds this script does not replace: {passed}")
    return out

os.makedirs(guest.WORK_DIR, exist_ok=True)
bare, virt, argv = [], [], None
name = daemons.daemon_name()
started = time.monotonic()
conn = daemons.start(name, 60)
daemon_s = time.monotonic() - started
virt_console, bare_console = guest.path("virt.log"), guest.path("bare.log")
for _ in range(ROUNDS):
    base, disk = guest.fresh_disks()
    if os.path.exists(virt_console):
        os.unlink(virt_console)
    dom = conn.defineXML(guest.domain_xml("tcg", disk, virt_console))
    started = time.monotonic()
    dom.create()
    virt.append(wait_ready(virt_console, started))
    if argv is None:
        argv = bare_argv(libvirt_qemu(guest.DOMAIN), virt_console, bare_console)
    dom.destroy()
    dom.undefine()
    # The same guest as plain QEMU: libvirt's own argv for it, in the same container.
    base, disk = guest.fresh_disks()
    if os.path.exists(bare_console):
        os.unlink(bare_console)
    with open(guest.path("bare-qemu.err"), "w") as errors:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors)
        try:
            bare.append(wait_ready(bare_console, started, process))
        except SystemExit as exc:
            with open(guest.path("bare-qemu.err")) as log:
                raise SystemExit(f"{exc}: {log.read()[-400:]}")
        finally:
            process.kill()
            process.wait()
print(json.dumps({"bare": bare, "libvirt": virt, "daemon_s": daemon_s, "argv": argv}))
"""


@contextlib.contextmanager
def cell_container(engine: docker.DockerClient, image: str, guest_tar: Path) -> Iterator[Any]:
    """A container of the cell, as the smoke runner starts it, with the runner and the guest."""
    container = engine.containers.run(
        image, ["sleep", "infinity"], detach=True, init=True, labels=LABEL
    )
    try:
        container.put_archive(smoke_stage.REMOTE, smoke_stage.smoke_tar())
        container.put_archive(smoke_stage.REMOTE, guest_tar.read_bytes())
        yield container
    finally:
        container.remove(force=True, v=True)


def boot(engine: docker.DockerClient, cell: Cell, image: str, guest_tar: Path, rounds: int) -> None:
    section(f"boot to the ready marker in {cell.id}, TCG, median of {rounds}")
    with cell_container(engine, image, guest_tar) as container:
        done = container.exec_run(
            ["python3", "-c", BOOT_SCRIPT, str(rounds)], workdir=smoke_stage.REMOTE, demux=True
        )
    out, err = done.output
    if done.exit_code != 0:
        raise RuntimeError(f"boot benchmark failed: {(err or out or b'').decode()[-500:]}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    LOGS.mkdir(parents=True, exist_ok=True)
    argv_file = LOGS / f"bare-qemu-argv-{cell.id}.txt"
    argv_file.write_text("\n".join(data["argv"]) + "\n")
    bare, virt = statistics.median(data["bare"]), statistics.median(data["libvirt"])
    report(
        "bare QEMU with libvirt's argv, to the ready marker",
        f"{bare:.2f} s  {fmt(data['bare'])}",
    )
    report(
        "libvirt (defineXML + create) to the ready marker", f"{virt:.2f} s  {fmt(data['libvirt'])}"
    )
    report("libvirt / bare (target <= 1.2x)", ratio(virt, bare))
    report("bare QEMU's argv", str(argv_file))
    report("libvirt daemon start, once per container", f"{data['daemon_s']:.2f} s")


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def scenarios(
    engine: docker.DockerClient, matrix: Matrix, cell: Cell, image: str, guest_tar: Path
) -> tuple[float, dict[str, float]]:
    section(f"one repetition of the scenario set in {cell.id}, TCG")
    seconds, smoke = timed(
        lambda: smoke_stage.run_cell(
            engine,
            SmokeJob(
                cell=cell,
                image=image,
                matrix=matrix,
                run_id=f"bench-{TOKEN}",
                guest=guest_tar,
                accel="tcg",
                log_dir=LOGS / cell.id,
                runs=1,
            ),
        )
    )
    if smoke.report is None:
        raise RuntimeError(f"the smoke run failed: {smoke.error}")
    each = {}
    for result in smoke.report["runs"][0] if smoke.report.get("runs") else []:
        each[result["name"]] = result["duration_s"]
        report(f"  {result['name']} ({result['status']})", f"{result['duration_s']:.2f} s")
    report("inside the container (runner's own clock)", f"{smoke.report['duration_s']:.1f} s")
    report("whole repetition, container start to report (target < 20 s)", f"{seconds:.1f} s")
    return seconds, each


NAIVE_SCENARIOS = (
    "boot",
    "reboot",
    "pause-resume",
    "live-snapshot",
    "external-snapshot",
    "managed-save",
    "disk-hotplug",
    "teardown",
)


def naive(engine: docker.DockerClient, cell: Cell, guest_tar: Path) -> dict[str, float]:
    """benchmarks/naive.sh on the cell's rendered Dockerfile, plus virsh for the script."""
    with tempfile.TemporaryDirectory(prefix="hvgate-bench-naive-") as tmp:
        directory = Path(tmp)
        # The rendered Dockerfile and its context; virsh comes from libvirt-clients.
        dockerfile = render(cell) + (
            "RUN apt-get update && apt-get install -y --no-install-recommends libvirt-clients"
            " && rm -rf /var/lib/apt/lists/*\n"
        )
        (directory / "Dockerfile").write_text(dockerfile)
        shutil.copytree(ROOT / "images" / "context", directory / "context")
        tag = f"hvgate/bench-{TOKEN}:naive-{cell.id}"
        try:
            done = subprocess.run(
                [str(ROOT / "benchmarks" / "naive.sh"), str(directory), tag, str(guest_tar)],
                capture_output=True,
                text=True,
                timeout=3600,
            )
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(tag, force=True)
    if done.returncode != 0:
        raise RuntimeError(f"naive.sh failed: {done.stderr.strip()[-600:]}")
    steps = {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines())}
    return steps


def per_cell(engine: docker.DockerClient, matrix: Matrix, cell: Cell, rounds: int) -> None:
    guest_tar = build_guest(engine, matrix, LOGS)
    built = existing_image(engine, cell)
    if not built.ok or built.image is None:
        print(f"building {cell.id} first (`invoke matrix.build --cells {cell.id}`)", flush=True)
        invoke("matrix.build", "--cells", cell.id, results=LOGS / "results")
        built = existing_image(engine, cell)
    assert built.image, f"{cell.id} did not build"
    cold = cold_cell(engine, matrix, cell)

    section(f"no-op build of {cell.id}")
    seconds, done = invoke("matrix.build", "--cells", cell.id, results=LOGS / "results")
    report("`invoke matrix.build` with nothing to build (one cell)", f"{seconds:.2f} s")

    boot(engine, cell, built.image, guest_tar, rounds)
    smoke, each = scenarios(engine, matrix, cell, built.image, guest_tar)

    section(f"the naive way on {cell.id}: docker build --no-cache, then virsh in a script")
    steps = naive(engine, cell, guest_tar)
    report("naive build (docker build --no-cache, no shared cache)", f"{steps['build']:.1f} s")
    report("naive scenarios (virsh, shell polling)", f"{steps['scenarios']:.1f} s")
    # The naive script covers the default scenarios only: hvgate's time for the same ones.
    same = smoke - sum(v for k, v in each.items() if k not in NAIVE_SCENARIOS)
    report("hvgate, the same scenarios (from the repetition above)", f"{same:.1f} s")
    report("naive / hvgate, scenarios", ratio(steps["scenarios"], same))
    smoke = same
    ours_cold = cold.get("cached", cold["direct"]) + smoke
    ours_warm = seconds + smoke
    total = steps["build"] + steps["scenarios"]
    report("hvgate, new cell: build (package cache) + one repetition", f"{ours_cold:.1f} s")
    report("naive / hvgate, new cell", ratio(total, ours_cold))
    report("hvgate, nothing changed: no-op build + one repetition", f"{ours_warm:.1f} s")
    report("naive / hvgate, nothing changed (naive rebuilds)", ratio(total, ours_warm))


# --- the whole matrix ----------------------------------------------------------------------------


def whole_matrix(
    engine: docker.DockerClient,
    matrix: Matrix,
    cells: tuple[Cell, ...],
    jobs: int,
    cold: bool,
    patterns: str | None,
) -> None:
    section(f"the matrix: {len(cells)} cells ({patterns or 'all of the default matrix'})")
    results = LOGS / "matrix-results"
    select = ["--cells", patterns] if patterns else []
    seconds, done = invoke("matrix.build", *select, results=results)
    report("`invoke matrix.build` (first: builds what is missing)", f"{seconds:.1f} s")
    seconds, done = invoke("matrix.build", *select, results=results)
    report("`invoke matrix.build` with nothing to build", f"{seconds:.2f} s (target < 3 s)")
    runs = [("1", "--jobs 1"), (str(jobs), f"--jobs {jobs} (default)")]
    run = ["matrix.run", *select, "--runs", "1", "--accel", "tcg", "--jobs"]
    walls = {}
    if cold:
        for n, what in runs:
            removed = remove_cell_images(engine, cells)
            seconds, done = invoke(*run, n, results=results)
            walls["cold", n] = seconds
            report(
                f"cold `matrix.run --runs 1`, {what} ({removed} images removed)",
                f"{seconds:.0f} s (exit {done.returncode}){smoke_share(results, seconds)}",
            )
    for n, what in runs:
        seconds, done = invoke(*run, n, results=results)
        walls["warm", n] = seconds
        report(
            f"warm `matrix.run --runs 1`, {what}",
            f"{seconds:.0f} s (exit {done.returncode}){smoke_share(results, seconds)}",
        )
    naive_matrix(engine, matrix, cells, walls, str(jobs))


def naive_matrix(
    engine: docker.DockerClient,
    matrix: Matrix,
    cells: tuple[Cell, ...],
    walls: dict[tuple[str, str], float],
    jobs: str,
) -> None:
    """benchmarks/naive.sh on every cell hvgate built, one after the other: the same work the
    obvious way (the naive script runs the 8 default scenarios of hvgate's 11)."""
    built = [c for c in cells if (r := existing_image(engine, c)).ok and r.image]
    section(f"the naive way on the {len(built)} cells hvgate built, one after the other")
    guest_tar = build_guest(engine, matrix, LOGS)
    total, failed = 0.0, []
    for cell in built:
        try:
            steps = naive(engine, cell, guest_tar)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failed.append(f"{cell.id} ({str(exc)[-120:]})")
            continue
        total += steps["build"] + steps["scenarios"]
    report(
        "naive: docker build --no-cache + the virsh script, per cell",
        f"{total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
    )
    for (kind, n), seconds in sorted(walls.items()):
        if n == jobs:
            report(
                f"naive / hvgate, {kind} `matrix.run --runs 1 --jobs {n}`", ratio(total, seconds)
            )


def smoke_share(results: Path, seconds: float) -> str:
    """What the run's cells spent in their smoke tests (inside the containers, summed over
    cells): a warm run should spend its time there, not on Docker."""
    try:
        cells = json.loads((results / "latest.json").read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    tested = [c["duration_s"] for c in cells if c.get("duration_s")]
    smoke = sum(tested)
    return f"; {len(tested)} smoke tests, {smoke:.0f} s summed ({smoke / seconds:.0%} of the wall time)"


def remove_cell_images(engine: docker.DockerClient, cells: tuple[Cell, ...]) -> int:
    """Only with --cold: the matrix's cell images, so that the run builds every cell."""
    removed = 0
    for cell in cells:
        for image in engine.images.list(filters={"label": f"{eng.LABEL_CELL}={cell.id}"}):
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(str(image.id), force=True)
                removed += 1
    return removed


def image_sizes(engine: docker.DockerClient, cells: tuple[Cell, ...]) -> None:
    section("image sizes (BuildResult.size_bytes)")
    for cell_id, result in ((c.id, existing_image(engine, c)) for c in cells):
        report(cell_id, mib(result.size_bytes) if result.ok else "not built")


# --- the sequential test -------------------------------------------------------------------------


def fixed_count(p0: float, p1: float, error: float) -> tuple[int, int]:
    """The fewest runs n (and failure bound k) a fixed-count test needs for the same errors:
    P(more than k failures | p0) <= error and P(at most k failures | p1) <= error."""
    for n in range(1, 1000):
        for k in range(n + 1):
            cdf0 = sum(math.comb(n, i) * p0**i * (1 - p0) ** (n - i) for i in range(k + 1))
            cdf1 = sum(math.comb(n, i) * p1**i * (1 - p1) ** (n - i) for i in range(k + 1))
            if 1 - cdf0 <= error and cdf1 <= error:
                return n, k
    raise ValueError("no fixed count below 1000")


def sequential(matrix: Matrix, trials: int) -> None:
    policy = matrix.policy
    # The test to its decision, over as many nights as it takes (runs pool across nights; a
    # night adds at most max_runs: benchmarks/pooled.py has it night by night).
    rule = StopRule(
        policy.safe_failure_rate,
        policy.unsafe_failure_rate,
        policy.confidence,
        policy.min_runs,
        7 * policy.max_runs,
    )
    n, k = fixed_count(rule.safe_rate, rule.unsafe_rate, 1 - rule.confidence)
    section(
        f"runs to a verdict: SPRT p0={rule.safe_rate} p1={rule.unsafe_rate} at "
        f"{rule.confidence} (simulated, {trials} scenarios each)"
    )
    report("fixed count with the same error bounds", f"{n} runs (flaky above {k} failures)")
    rng = random.Random(1)
    for rate, name in ((0.0, "clean"), (0.2, "20%-flaky")):
        decisions = [
            rule.walk(rng.random() < rate for _ in range(rule.max_runs)) for _ in range(trials)
        ]
        mean = statistics.mean(d.runs for d in decisions)
        calls = {
            s: sum(d.status == s for d in decisions) / trials
            for s in ("safe", "flaky", "broken", None)
        }
        exact = rule.characteristic(rate)["mean_runs"]
        report(
            f"{name} cell: mean runs (exact {exact:.1f})",
            f"{mean:.1f} vs {n} fixed ({ratio(n, mean)} fewer)",
        )
        report(
            f"{name} cell: verdicts",
            ", ".join(f"{s or 'inconclusive'} {share:.1%}" for s, share in calls.items() if share),
        )


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the whole-matrix figures")
    parser.add_argument(
        "--cells", help="shell patterns of the cells of the whole-matrix figures (default: all)"
    )
    parser.add_argument("--matrix-only", action="store_true", help="only the whole-matrix figures")
    parser.add_argument(
        "--cell", default="debian-12-release", help="the cell of the per-cell figures"
    )
    parser.add_argument(
        "--jobs", type=int, default=schedule.default_jobs(), help="the default --jobs"
    )
    parser.add_argument("--rounds", type=int, default=5, help="boots of each kind")
    parser.add_argument("--trials", type=int, default=20000, help="simulated scenarios per rate")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also the whole matrix from no cell images (removes them)",
    )
    args = parser.parse_args(argv)
    matrix, cells = pipeline.selected(MATRIX, None, None)
    chosen = [c for c in cells if c.id == args.cell]
    if not chosen:
        parser.error(f"--cell {args.cell}: not a cell of {MATRIX}")
    cell = chosen[0]
    engine = eng.client()
    started = time.monotonic()
    print(
        f"hvgate benchmark: {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"Docker {engine.version().get('Version')}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    try:
        if not args.matrix_only:
            per_cell(engine, matrix, cell, args.rounds)
        if not args.quick:
            _, matrix_cells = pipeline.selected(MATRIX, args.cells, None)
            whole_matrix(engine, matrix, matrix_cells, args.jobs, args.cold, args.cells)
        image_sizes(engine, cells)
        sequential(matrix, args.trials)
    finally:
        eng.remove_labelled(engine, LABEL[eng.LABEL_RUN])
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
