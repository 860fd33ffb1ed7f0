"""harness.run.pipeline.run without Docker: the KVM probe as a short step before every smoke test,
nothing started once an interrupt has begun, and latest.* replaced by complete runs only."""

from __future__ import annotations

import _thread
import json
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from harness.core.errors import EngineError, Interrupted
from harness.core.results import BuildResult, CellResult, SmokeRun, Status
from harness.run import checkpoint, history, pipeline
from harness.run.fleet import Engine, Fleet
from harness.run.probe import Found
from harness.stages import smoke as runner
from harness.stages.judge import identity

WAIT = 10.0
LATEST = ("latest.json", "latest.md", "latest.html", "latest.junit.xml")


class Fake:
    """The engine's side of a run, as the pipeline sees it: builds, the probe, smoke tests."""

    def __init__(self, tmp_path: Path, cells: tuple[Any, ...]):
        self.cells = cells
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.smoked: list[tuple[str, str, str | None]] = []  # cell, accel, reason
        self.cleanups = 0
        self.late: list[str] = []  # smoke tests started after the stop
        self.unavailable: set[str] = set()  # cells whose build finds no archive
        self.found = Found("kvm", "a KVM guest reached the ready marker in 1.0 s", True)
        # What a cell's smoke test does besides returning a report: (cell id, stop) -> None.
        self.during: Callable[[str, threading.Event], None] = lambda cell_id, stop: None
        self.guest = tmp_path / "guest.tar"

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def probe(self, client, image, guest_tar, policy, run_id, log_dir, stop=None) -> Found:
        self.note(f"probe {image}")
        return self.found

    def run_cell(self, client, cell, image, matrix, run_id, guest, accel, *rest, stop=None):
        reason = rest[-1]  # after the log directory and the runs
        assert stop is not None
        if stop.is_set():  # an assertion here would be lost in a worker thread
            self.late.append(cell.id)
        self.note(f"smoke {cell.id}")
        with self.lock:
            self.smoked.append((cell.id, accel, reason))
        self.during(cell.id, stop)
        return SmokeRun(cell.id, {"accel": accel, "accel_reason": reason})

    def build(self, cell) -> BuildResult:
        if cell.id in self.unavailable:
            return BuildResult(cell.id, "unavailable", reason="the archive did not answer")
        return BuildResult(cell.id, "cached", image=f"hvgate/cell:{cell.id}")

    def cleanup(self, client, run_id: str) -> None:
        with self.lock:
            self.cleanups += 1


def judge(cell, build: BuildResult, smoke: SmokeRun | None, thresholds) -> CellResult:
    """Safe when smoke-tested (the judge has tests of its own)."""
    if smoke is None:
        return CellResult(**identity(cell), status=Status.UNAVAILABLE, reason=build.reason)
    report = smoke.report or {}
    return CellResult(
        **identity(cell),
        status=Status.SAFE,
        accel=report.get("accel"),
        accel_reason=report.get("accel_reason"),
    )


@pytest.fixture
def fake(tmp_path, monkeypatch, unit_matrix) -> Fake:
    matrix, cells = unit_matrix
    chosen = cells[:3]
    results = tmp_path / "results"
    fake = Fake(tmp_path, chosen)
    fleet = Fleet([Engine("default", client=object())])  # type: ignore[arg-type]
    monkeypatch.setattr(fleet, "guest", lambda engine, matrix, log_dir: fake.guest)
    monkeypatch.setattr(fleet, "build", lambda engine, matrix, cell, log_dir: fake.build(cell))
    monkeypatch.setattr(pipeline, "Fleet", SimpleNamespace(of=lambda engines=None: fleet))
    monkeypatch.setattr(pipeline, "RESULTS", results)
    monkeypatch.setattr(pipeline, "LOGS", results / "logs")
    monkeypatch.setattr(pipeline, "PROBED_ACCEL", tmp_path / "cache" / "accel-probe.json")
    monkeypatch.setattr(pipeline, "selected", lambda *args, **kwargs: (matrix, chosen))
    monkeypatch.setattr(pipeline, "render_all", lambda cells: {})
    monkeypatch.setattr(pipeline, "kvm_device_available", lambda: True)
    monkeypatch.setattr(pipeline, "probe_accel", fake.probe)
    monkeypatch.setattr(pipeline, "run_cell", fake.run_cell)
    monkeypatch.setattr(pipeline, "judge_cell", judge)
    monkeypatch.setattr(pipeline.eng, "cleanup", fake.cleanup)
    return fake


def run(jobs: int = 1, resume: bool = False, accel: str | None = None):
    return pipeline.run(
        "matrix.yaml", None, None, accel, resume=resume, jobs=jobs, package_cache=False
    )


def latest(results: Path) -> dict[str, bytes]:
    return {name: (results / name).read_bytes() for name in LATEST}


def history_runs(results: Path) -> list[str]:
    return [entry["run_id"] for entry in history.read(history.history_path(results))]


# --- the accel probe ----------------------------------------------------------------------------


def test_the_probe_runs_once_before_any_smoke_test_then_all_start_at_once(fake):
    together = threading.Barrier(3, timeout=WAIT)  # broken if one smoke test waits for another
    fake.during = lambda cell_id, stop: together.wait()
    result, _ = run(jobs=3)
    assert fake.events[0].startswith("probe hvgate/cell:") and len(fake.events) == 4
    assert sorted(fake.events[1:]) == sorted(f"smoke {c.id}" for c in fake.cells)
    probed = fake.events[0].split(":")[1]
    for _, accel, reason in fake.smoked:
        assert accel == "kvm"
        assert reason == f"{fake.found.reason} (probed with {probed}'s image)"
    assert {c.accel for c in result.cells} == {"kvm"}
    # Kept for the host's boot: the next run probes nothing.
    cached = json.loads(pipeline.PROBED_ACCEL.read_text())
    assert cached == {
        "boot_id": pipeline.host_boot_id(),
        "accel": "kvm",
        "reason": fake.found.reason,
    }
    fake.events.clear()
    fake.smoked.clear()
    run(jobs=3)
    assert not any(e.startswith("probe") for e in fake.events)
    assert {reason for _, _, reason in fake.smoked} == {
        f"{fake.found.reason} (probed earlier since this host booted)"
    }


def test_a_probe_without_a_clear_answer_means_tcg_and_is_not_kept(fake):
    fake.found = Found("tcg", "KVM probe failed (the probe exited 2 ...); using TCG", False)
    run(jobs=2)
    assert [e for e in fake.events if e.startswith("probe")] and len(fake.smoked) == 3
    assert {accel for _, accel, _ in fake.smoked} == {"tcg"}
    assert not pipeline.PROBED_ACCEL.exists()


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_an_accel_asked_for_needs_no_probe(fake, accel):
    run(jobs=2, accel=accel)
    assert {(a, r) for _, a, r in fake.smoked} == {(accel, f"{accel} was asked for")}
    assert not any(e.startswith("probe") for e in fake.events)


# --- interrupts -------------------------------------------------------------------------------


def test_an_interrupt_keeps_the_last_complete_latest_and_resume_replaces_it(fake):
    results = pipeline.RESULTS
    complete, _ = run()
    before = latest(results)
    first, second, third = (c.id for c in fake.cells)
    fake.unavailable = {first}  # what the interrupted run learns first

    def interrupt(cell_id: str, stop: threading.Event) -> None:
        if cell_id == second:
            raise KeyboardInterrupt  # Ctrl-C during the second cell's smoke test

    fake.during = interrupt
    fake.smoked.clear()
    fake.cleanups = 0
    with pytest.raises(Interrupted, match="--resume` continues run"):
        run()
    assert [cell for cell, _, _ in fake.smoked] == [second]  # the third never started
    assert fake.late == []
    assert fake.cleanups == 2  # once at once, once after the workers ended
    assert latest(results) == before  # the partial table replaced nothing
    assert history_runs(results) == [complete.run_id] * 3
    cut_dir = checkpoint.latest_unfinished(results)
    assert cut_dir is not None and checkpoint.INTERRUPTED in (cut_dir / "run.json").read_text()
    cut = cut_dir.name
    kept = json.loads((results / "runs" / cut / "results.json").read_text())
    assert [c["status"] for c in kept["cells"]] == ["unavailable", "inconclusive", "inconclusive"]
    assert kept["cells"][2]["reason"] == "interrupted before it ran"

    # --resume finishes the same run, and then it is the latest and in the history, once.
    fake.during = lambda cell_id, stop: None
    fake.smoked.clear()
    fake.unavailable = set()  # kept from the interrupted run: not asked again
    resumed, paths = run(resume=True)
    assert resumed.run_id == cut
    assert [cell for cell, _, _ in fake.smoked] == [second, third]
    assert json.loads((results / "latest.json").read_text())["run_id"] == cut
    assert [c.status for c in resumed.cells] == [Status.UNAVAILABLE, Status.SAFE, Status.SAFE]
    assert history_runs(results) == [complete.run_id] * 3 + [cut] * 3
    assert paths["history"] == history.history_path(results)


def test_an_interrupt_with_workers_starts_nothing_after_it(fake):
    """--jobs 2, three cells: Ctrl-C while two are smoke-tested and the third waits for a slot."""
    both = threading.Barrier(2, timeout=WAIT)
    started = threading.Event()

    def during(cell_id: str, stop: threading.Event) -> None:
        both.wait()
        if not started.is_set():
            started.set()
            _thread.interrupt_main()
        assert stop.wait(WAIT)  # the container runs until the cleanup removes it

    fake.during = during
    with pytest.raises(Interrupted):
        run(jobs=2)
    assert len(fake.smoked) == 2 and fake.late == []  # the third cell never started
    assert fake.cleanups == 2
    assert not (pipeline.RESULTS / "latest.json").exists()
    assert not history.history_path(pipeline.RESULTS).exists()


def test_an_engine_failure_keeps_the_last_complete_latest(fake):
    results = pipeline.RESULTS
    complete, _ = run()
    before = latest(results)

    def fail(cell_id: str, stop: threading.Event) -> None:
        if cell_id == fake.cells[1].id:
            raise docker.errors.APIError("500 Server Error: the engine went away")

    fake.during = fail
    with pytest.raises(EngineError, match="finished cells are kept"):
        run()
    assert latest(results) == before
    assert history_runs(results) == [complete.run_id] * 3
    assert checkpoint.latest_unfinished(results) is not None  # for --resume


def test_the_runner_starts_no_container_once_stopped(unit_matrix, tmp_path):
    matrix, cells = unit_matrix
    stop = threading.Event()
    stop.set()

    class NoEngine:
        def __getattr__(self, name: str) -> Any:
            pytest.fail(f"the engine was asked for {name} after the stop")

    smoke = runner.run_cell(
        NoEngine(),  # type: ignore[arg-type]
        cells[0],
        "hvgate/cell:x",
        matrix,
        "r",
        tmp_path / "guest.tar",
        "tcg",
        tmp_path / "logs",
        1,
        stop=stop,
    )
    assert smoke.report is None and smoke.error == "interrupted before the smoke test started"
