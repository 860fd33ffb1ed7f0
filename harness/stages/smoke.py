"""Smoke stage, host side: runs harness/smoke inside a cell container and returns its JSON report,
parsed into its typed shape (harness.core.results.SmokeReport) or, when it has another, the
cell's error.

The container is default and unprivileged (see README, "Container privileges"); it gets
/dev/kvm only when KVM may be used, and an init process so QEMU's exits are reaped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from ..core.model import PEER_SCENARIOS, Cell, Policy
from ..core.options import SmokeJob
from ..core.progress import say
from ..core.results import ReportError, SmokeReport, SmokeRun, parse_report
from ..core.stats import StopRule
from ..core.text import one_line
from ..engine import client as eng
from .peer import NO_PEER, Peer, PeerFailure, pairs_into, start_peer, upgrades

SMOKE_DIR = Path(__file__).resolve().parents[1] / "smoke"
REMOTE = "/opt/hvgate"
# The engine refused (API errors) or went away (the connection failed): the cell is in error.
ENGINE_FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException)


def smoke_tar() -> bytes:
    return eng.tar_of(eng.files_under(SMOKE_DIR, "smoke"))


def kvm_device_available() -> bool:
    return os.path.exists("/dev/kvm")


def copy_runner(container: Any, guest: Path) -> None:
    """The smoke runner and the guest, into a cell's container."""
    for tar in (smoke_tar(), guest.read_bytes()):
        container.put_archive(REMOTE, tar)


@contextlib.contextmanager
def killed_after(container: Any, seconds: float) -> Iterator[threading.Event]:
    """Kills the container once `seconds` have passed; yields the event that says it did."""
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(*ENGINE_FAILURES):
            container.kill()

    watchdog = threading.Timer(seconds, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield timed_out
    finally:
        watchdog.cancel()


def run_cell(engine: docker.DockerClient, job: SmokeJob) -> SmokeRun:
    """`job.runs` fixes the count of runs (see StopRule.from_policy); else the policy's test
    decides. Upgrade migrations into the cell (`migrations:` of the matrix) follow its own
    scenarios, in containers of their own; a share of the run's time (`job.cell_timeout`) is
    split between them by what their runs cost. Once `job.stop` is set (an interrupt), no
    container is started."""
    own, each_pair = split_share(job)
    smoke = _run_container(engine, dataclasses.replace(job, cell_timeout=own))

    def older(source: Cell, source_image: str) -> tuple[SmokeReport | None, str | None]:
        # The older cell's container is the source; a container of this cell the destination.
        assert smoke.report is not None
        source_job = dataclasses.replace(
            job,
            cell=source,
            image=source_image,
            accel=smoke.report.get("accel") or job.accel,
            accel_reason=smoke.report.get("accel_reason"),
            log_dir=job.log_dir / f"upgrade-from-{source.id}",
            cell_timeout=each_pair,
        )
        done = _run_container(
            engine,
            source_job,
            scenarios=list(PEER_SCENARIOS),
            peer_image=job.image,
            name=f"{source.id}-to-{job.cell.id}",
        )
        return done.report, done.error

    report = upgrades(smoke.report, engine, job.matrix, job.cell, older, job.images)
    return dataclasses.replace(smoke, report=report)


# What one run of an upgrade migration costs against one of another scenario: 8.3 s against
# 1.4 s on average here (benchmarks/throughput.py), in a container pair of its own.
UPGRADE_WEIGHT = 6


def split_share(job: SmokeJob) -> tuple[float | None, float | None]:
    """(the cell's own smoke test's time, each upgrade migration's) out of the cell's share of
    the run's run_timeout, by what their runs cost; (None, None) without a share."""
    if job.cell_timeout is None:
        return None, None
    pairs = len(pairs_into(job.matrix, job.cell.id))
    own = len([s for s in job.matrix.scenarios if s in job.cell.scenarios])
    total = own + UPGRADE_WEIGHT * pairs
    if not pairs or not total:
        return job.cell_timeout, None
    return (
        round(max(job.cell_timeout * own / total, 1.0), 1),
        round(max(job.cell_timeout * UPGRADE_WEIGHT / total, 1.0), 1),
    )


def _run_container(
    engine: docker.DockerClient,
    job: SmokeJob,
    scenarios: list[str] | None = None,
    peer_image: str | None = None,
    name: str | None = None,
) -> SmokeRun:
    """One smoke runner in a container of `job.image` (and, for migrations, a destination
    container of `peer_image`, by default the same); none once `job.stop` is set."""
    cell = job.cell
    rule = StopRule.from_policy(job.matrix.policy, job.runs)
    if job.prior and job.runs is None:  # a fixed count of runs is an experiment of its own
        rule = dataclasses.replace(rule, prior_runs=max(len(v) for v in job.prior.values()))
    if job.stop is not None and job.stop.is_set():
        # The interrupt's cleanup may already have run: a container started now would outlive it.
        return SmokeRun(cell.id, None, "interrupted before the smoke test started", rule=rule)
    use_kvm_device = job.accel in ("auto", "kvm") and kvm_device_available()
    devices = ["/dev/kvm:/dev/kvm:rwm"] if use_kvm_device else []
    scenarios = scenarios or [s for s in job.matrix.scenarios if s in cell.scenarios]
    label = name or cell.id  # of the progress lines
    name = f"hvgate-{job.run_id}-{label}"
    peer = NO_PEER
    try:
        files = [smoke_tar(), job.guest.read_bytes()]  # also the peer's
        peer = start_peer(
            engine, scenarios, job.run_id, name, label, peer_image or job.image, devices, files
        )
        container = engine.containers.run(
            job.image,
            ["sleep", "infinity"],
            detach=True,
            init=True,
            name=name,
            labels={eng.LABEL_RUN: job.run_id, eng.LABEL_CELL: cell.id},
            devices=devices,
            **peer.source_options(),
        )
    except PeerFailure as exc:
        return SmokeRun(cell.id, None, one_line(exc), rule=rule)
    except ENGINE_FAILURES as exc:
        peer.close()
        return SmokeRun(
            cell.id, None, f"the cell container did not start: {one_line(exc)}", rule=rule
        )
    try:
        copy_runner(container, job.guest)
        command = _command(job, scenarios, rule)
        return _watched(engine, container, job, rule, command, peer, label)
    except ENGINE_FAILURES as exc:
        return SmokeRun(cell.id, None, f"the Docker engine failed: {one_line(exc)}", rule=rule)
    finally:
        if peer.container is not None:
            with contextlib.suppress(*ENGINE_FAILURES):
                _copy_logs(peer.container, job.log_dir / "destination")
        with contextlib.suppress(*ENGINE_FAILURES):
            container.remove(force=True, v=True)
        peer.close()


def _bound(policy: Policy) -> float:
    """Seconds the host waits for the runner. The runner starts no scenario past cell_timeout
    and ends each within scenario_timeout (killing what hangs); this bound only catches the
    runner itself failing to stop."""
    return policy.cell_timeout + policy.scenario_timeout + 2 * policy.boot_timeout + 120


def _command(job: SmokeJob, scenarios: list[str], rule: StopRule) -> list[str]:
    policy = job.matrix.policy
    command = [
        "python3",
        "-m",
        "smoke",
        "--scenarios",
        ",".join(scenarios),
        "--accel",
        job.accel,
        # The host's sequential test as a table: the runner cannot import harness.core.stats.
        "--stop-rule",
        json.dumps(rule.to_json(), separators=(",", ":")),
        "--boot-timeout",
        str(policy.boot_timeout),
        "--scenario-timeout",
        str(policy.scenario_timeout),
        "--cell-timeout",
        str(policy.cell_timeout if job.cell_timeout is None else job.cell_timeout),
    ]
    if job.cell_timeout is not None and job.cell_timeout < policy.cell_timeout:
        command += ["--time-reason", "its share of the run's run_timeout"]
    if job.accel_reason:
        command += ["--accel-reason", job.accel_reason]
    if rule.prior_runs:
        command += ["--prior", json.dumps(dict(job.prior), separators=(",", ":"))]
    return command


def _watched(
    engine: docker.DockerClient,
    container: Any,
    job: SmokeJob,
    rule: StopRule,
    command: list[str],
    peer: Peer,
    label: str,
) -> SmokeRun:
    """Runs the runner in the container under a watchdog that kills the container at the bound;
    its report, parsed, or why there is none."""
    cell_id = job.cell.id
    overall = _bound(job.matrix.policy)
    with killed_after(container, overall) as timed_out:
        exec_id = engine.api.exec_create(
            container.id, command, workdir=REMOTE, environment=peer.environment()
        )["Id"]
        stdout, pending = _stream(engine, exec_id, label)
        exit_code = engine.api.exec_inspect(exec_id).get("ExitCode")
    if timed_out.is_set():
        return SmokeRun(
            cell_id, None, f"the smoke run did not finish within {overall:.0f} s", rule=rule
        )
    _copy_logs(container, job.log_dir)
    try:
        data = json.loads(stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (stdout + pending).decode(errors="replace").strip().splitlines()[-5:]
        why = _no_report(container, exit_code)
        return SmokeRun(cell_id, None, f"{why}: {' | '.join(tail)}" if tail else why, rule=rule)
    try:
        report = parse_report(data)
    except ReportError as exc:
        return SmokeRun(cell_id, None, f"the smoke runner's report {exc}", rule=rule)
    return SmokeRun(cell_id, report, log_dir=str(job.log_dir), rule=rule)


def _stream(engine: docker.DockerClient, exec_id: str, label: str) -> tuple[bytes, bytes]:
    """The runner's stdout, and what is left of its stderr after its progress lines were shown."""
    stdout = b""
    pending = b""
    for out, err in engine.api.exec_start(exec_id, stream=True, demux=True):
        if out:
            stdout += out
        if err:
            pending += err
            *done, pending = pending.split(b"\n")
            for line in done:
                text = line.decode(errors="replace")
                if text and not text.startswith("libvirt: "):
                    say(label, text)
    return stdout, pending


def _no_report(container: Any, exit_code: int | None) -> str:
    """Why the runner left no report: its container stopped (killed, out of memory), or it ended."""
    try:
        container.reload()
        state = container.attrs.get("State", {})
    except ENGINE_FAILURES:
        return "the cell container vanished before the smoke runner reported"
    if not state.get("Running", True):
        oom = ", out of memory" if state.get("OOMKilled") else ""
        return (
            f"the cell container stopped (exit code {state.get('ExitCode')}{oom}) "
            "before the smoke runner reported"
        )
    return f"the smoke runner exited {exit_code} without a report"


def _copy_logs(container: Any, log_dir: Path) -> None:
    """Keeps the daemon, QEMU and console logs of the cell next to its results, with the
    consoles of the migration scenarios' guest (in the volume the two containers share)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for remote in (
        "/var/log/libvirt",
        "/var/lib/hvgate/console.log",
        "/var/lib/hvgate/shared/migration-console-shared.log",
        "/var/lib/hvgate/shared/migration-console-block.log",
    ):
        try:
            stream, _ = container.get_archive(remote)
        except docker.errors.NotFound:
            continue
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    (log_dir / member.name.replace("/", "-")).write_bytes(source.read())
