"""harness.run.pipeline without Docker, on a fake engine (tests/unit/run/fakes.py): the KVM probe
as a short step before every smoke test, nothing started once an interrupt has begun, latest.*
replaced by complete runs only, --resume, failing builds and a failing engine."""

from __future__ import annotations

import _thread
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from harness.core.errors import EngineError, InputError, Interrupted
from harness.core.options import RunOptions, SmokeJob
from harness.core.results import Found, Status
from harness.engine.client import tar_of
from harness.engine.protocol import Engine
from harness.run import checkpoint, history, pipeline
from harness.run.engines import DockerEngine
from harness.run.fleet import Fleet
from harness.stages import smoke as runner
from tests.unit.conftest import UNIT_MATRIX
from tests.unit.run.fakes import FakeEngine

WAIT = 10.0
LATEST = ("latest.json", "latest.md", "latest.html", "latest.junit.xml")
CELLS = ("debian-12-release", "debian-12-backports", "debian-13-release")


class Fake(FakeEngine):
    """The fake engine of one test, with the test's results directory and the cells it runs."""

    def __init__(self, tmp_path: Path):
        super().__init__("default", tmp_path / "guest.tar")
        self.results = tmp_path / "results"
        self.cells = CELLS


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    # The host's facts: a /dev/kvm, and where the probe's answer is kept.
    monkeypatch.setattr(pipeline, "PROBED_ACCEL", tmp_path / "cache" / "accel-probe.json")
    monkeypatch.setattr(pipeline, "kvm_device_available", lambda: True)
    # The Dockerfiles are rendered under images/cells/ of the checkout: not from a unit test.
    monkeypatch.setattr(pipeline, "render_all", lambda cells: {})
    return Fake(tmp_path)


def options(fake: Fake, **flags: Any) -> RunOptions:
    """`matrix.run` of the three cells (or, with --resume, of the interrupted run's)."""
    selection = {} if flags.get("resume") else {"cells": ",".join(CELLS)}
    return RunOptions(
        results=fake.results,
        **{
            "matrix": str(UNIT_MATRIX),
            "jobs": 1,
            "package_cache": False,
            **selection,
            **flags,
        },
    )


def run(fake: Fake, *engines: Engine, **flags: Any):
    return pipeline.run(options(fake, **flags), Fleet(engines or [fake]))


def latest(results: Path) -> dict[str, bytes]:
    return {name: (results / name).read_bytes() for name in LATEST}


def history_runs(results: Path) -> list[str]:
    return [entry["run_id"] for entry in history.read(history.history_path(results))]


# --- the accel probe ----------------------------------------------------------------------------


def test_the_probe_runs_once_before_any_smoke_test_then_all_start_at_once(fake):
    together = threading.Barrier(3, timeout=WAIT)  # broken if one smoke test waits for another
    fake.during = lambda cell_id, stop: together.wait()
    result, _ = run(fake, jobs=3)
    smokes = [e for e in fake.events if e.startswith(("probe", "smoke"))]
    assert smokes[0].startswith("probe hvgate/cell:") and len(smokes) == 4
    assert sorted(smokes[1:]) == sorted(f"smoke {c}" for c in fake.cells)
    probed = smokes[0].split(":")[1]
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
    run(fake, jobs=3)
    assert not any(e.startswith("probe") for e in fake.events)
    assert {reason for _, _, reason in fake.smoked} == {
        f"{fake.found.reason} (probed earlier since this host booted)"
    }


def test_a_probe_without_a_clear_answer_means_tcg_and_is_not_kept(fake):
    fake.found = Found("tcg", "KVM probe failed (the probe exited 2 ...); using TCG", False)
    run(fake, jobs=2)
    assert [e for e in fake.events if e.startswith("probe")] and len(fake.smoked) == 3
    assert {accel for _, accel, _ in fake.smoked} == {"tcg"}
    assert not pipeline.PROBED_ACCEL.exists()


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_an_accel_asked_for_needs_no_probe(fake, accel):
    run(fake, jobs=2, accel=accel)
    assert {(a, r) for _, a, r in fake.smoked} == {(accel, f"{accel} was asked for")}
    assert not any(e.startswith("probe") for e in fake.events)


# --- interrupts -------------------------------------------------------------------------------


def test_an_interrupt_keeps_the_last_complete_latest_and_resume_replaces_it(fake):
    results = fake.results
    complete, _ = run(fake)
    before = latest(results)
    first, second, third = fake.cells
    fake.unavailable = {first}  # what the interrupted run learns first

    def interrupt(cell_id: str, stop: threading.Event) -> None:
        if cell_id == second:
            raise KeyboardInterrupt  # Ctrl-C during the second cell's smoke test

    fake.during = interrupt
    fake.smoked.clear()
    fake.cleanups = 0
    with pytest.raises(Interrupted, match="--resume` continues run"):
        run(fake)
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
    resumed, paths = run(fake, resume=True)
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
        run(fake, jobs=2)
    assert len(fake.smoked) == 2 and fake.late == []  # the third cell never started
    assert fake.cleanups == 2
    assert not (fake.results / "latest.json").exists()
    assert not history.history_path(fake.results).exists()


def test_an_engine_failure_keeps_the_last_complete_latest(fake):
    results = fake.results
    complete, _ = run(fake)
    before = latest(results)

    def fail(cell_id: str, stop: threading.Event) -> None:
        if cell_id == fake.cells[1]:
            raise docker.errors.APIError("500 Server Error: the engine went away")

    fake.during = fail
    with pytest.raises(EngineError, match="finished cells are kept"):
        run(fake)
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

    job = SmokeJob(
        cell=cells[0],
        image="hvgate/cell:x",
        matrix=matrix,
        run_id="r",
        guest=tmp_path / "guest.tar",
        accel="tcg",
        log_dir=tmp_path / "logs",
        runs=1,
        stop=stop,
    )
    smoke = runner.run_cell(NoEngine(), job)  # type: ignore[arg-type]
    assert smoke.report is None and smoke.error == "interrupted before the smoke test started"


# --- what a run keeps when it is cut short, and what --resume does with it -------------------


def run_dir_cells(results: Path, run_id: str) -> dict[str, str]:
    data = json.loads((results / "runs" / run_id / "results.json").read_text())
    return {c["id"]: c["status"] for c in data["cells"]}


def kept(fake: Fake, cell: str) -> bool:
    """Whether the run kept the cell's verdict on disk, waiting for it a while."""
    deadline = time.monotonic() + WAIT
    while not any(fake.results.glob(f"runs/*/cells/{cell}.json")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def interrupt_at(fake: Fake, cell: str) -> None:
    def during(cell_id: str, stop: threading.Event) -> None:
        if cell_id == cell:
            raise KeyboardInterrupt  # Ctrl-C during this cell's smoke test

    fake.during = during


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_interrupt_keeps_finished_cells_and_never_writes_latest(fake, jobs):
    first, second, third = fake.cells
    if jobs == 2:  # the first cell finishes before the second's smoke test is cut short

        def during(cell_id: str, stop: threading.Event) -> None:
            if cell_id == second:
                assert kept(fake, first)
                raise KeyboardInterrupt

        fake.during = during
    else:
        interrupt_at(fake, second)
    with pytest.raises(Interrupted, match="finished cells are kept"):
        run(fake, jobs=jobs)
    assert not any((fake.results / name).exists() for name in LATEST)
    assert not history.history_path(fake.results).exists()
    cut = checkpoint.latest_unfinished(fake.results)
    assert cut is not None
    statuses = run_dir_cells(fake.results, cut.name)
    assert statuses[first] == "safe"  # finished before the interrupt: kept
    assert statuses[second] == "inconclusive"  # cut short: not a verdict
    assert (cut / "cells" / f"{first}.json").exists()
    assert not (cut / "cells" / f"{second}.json").exists()


def test_resume_skips_finished_cells(fake):
    first, second, third = fake.cells
    interrupt_at(fake, second)
    with pytest.raises(Interrupted):
        run(fake)
    fake.during = lambda cell_id, stop: None
    fake.events.clear()
    fake.smoked.clear()
    resumed, _ = run(fake, resume=True)
    # The finished cell is neither built nor smoke-tested again; its verdict comes back.
    assert f"build {first}" not in fake.events and f"smoke {first}" not in fake.events
    assert [cell for cell, _, _ in fake.smoked] == [second, third]
    assert [c.status for c in resumed.cells] == [Status.SAFE] * 3
    assert json.loads((fake.results / "latest.json").read_text())["run_id"] == resumed.run_id
    assert checkpoint.latest_unfinished(fake.results) is None


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_failing_build_makes_its_cell_unavailable_and_the_others_go_on(fake, jobs):
    first, second, third = fake.cells
    fake.unavailable = {second}
    result, paths = run(fake, jobs=jobs)
    assert [c.status for c in result.cells] == [Status.SAFE, Status.UNAVAILABLE, Status.SAFE]
    assert result.cells[1].reason == "the archive did not answer"
    assert sorted(cell for cell, _, _ in fake.smoked) == [first, third]
    assert json.loads(paths["latest_json"].read_text())["run_id"] == result.run_id


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_engine_raises_engine_error_and_keeps_finished_cells(fake, jobs):
    first, second, third = fake.cells
    build_cell = fake.build_cell

    def failing_build(cell, *args: Any):
        if cell.id != first:  # the engine goes away once the first cell is finished
            assert kept(fake, first)
            raise docker.errors.APIError("500 Server Error: the engine went away")
        return build_cell(cell, *args)

    fake.build_cell = failing_build  # type: ignore[method-assign]
    with pytest.raises(EngineError) as info:
        run(fake, jobs=jobs)
    assert "\n" not in str(info.value) and "the engine went away" in str(info.value)
    assert "finished cells are kept, `--resume` continues" in str(info.value)
    assert not (fake.results / "latest.json").exists()
    cut = checkpoint.latest_unfinished(fake.results)
    assert cut is not None
    statuses = run_dir_cells(fake.results, cut.name)
    assert (statuses[first], statuses[third]) == ("safe", "inconclusive")
    assert (cut / "cells" / f"{first}.json").exists()


# --- the package cache, matrix.build and matrix.test -----------------------------------------


def test_the_package_cache_is_served_around_the_whole_schedule(fake):
    run(fake, jobs=2, package_cache=True, accel="tcg")
    # The guest is built through the cache too; the cache stops once every cell is done.
    assert fake.events[:2] == ["serve", "guest"]
    assert fake.events[-1] == "stop serving"
    assert len(fake.caches) == 3 and all(cache is not None for cache in fake.caches)


@pytest.mark.parametrize("flags", [{"package_cache": False}, {"build": False}])
def test_no_package_cache_without_the_flag_nor_for_matrix_test(fake, flags):
    run(fake, jobs=2, accel="tcg", **flags)
    assert "serve" not in fake.events
    assert all(cache is None for cache in fake.caches)


def test_matrix_test_builds_nothing_and_judges_cells_without_an_image(fake):
    fake.unbuilt = {fake.cells[0]}
    result, _ = run(fake, accel="tcg", build=False)
    assert not any(e.startswith("build") for e in fake.events)
    assert [c.status for c in result.cells] == [Status.UNAVAILABLE, Status.SAFE, Status.SAFE]


def test_matrix_test_on_several_engines_runs_each_cell_where_its_image_is(tmp_path, fake):
    first, second, third = fake.cells
    other = FakeEngine("other", tmp_path / "guest.tar")
    fake.unbuilt = {first, third}
    other.unbuilt = {second, third}
    result, _ = run(fake, fake, other, accel="tcg", build=False, jobs=2)
    assert [cell for cell, _, _ in other.smoked] == [first]
    assert [cell for cell, _, _ in fake.smoked] == [second]
    # On no engine: judged as not built.
    assert [c.status for c in result.cells] == [Status.SAFE, Status.SAFE, Status.UNAVAILABLE]
    assert {c.build.get("engine") for c in result.cells[:2]} == {"default", "other"}


@pytest.mark.parametrize("jobs", [1, 3])
def test_matrix_build_builds_each_cell_once_through_the_package_cache(fake, jobs):
    fake.unavailable = {fake.cells[1]}
    built = pipeline.build(options(fake, jobs=jobs, package_cache=True), Fleet([fake]))
    assert list(built) == list(fake.cells)
    assert [b.status for b in built.values()] == ["cached", "unavailable", "cached"]
    assert sorted(e for e in fake.events if e.startswith("build")) == sorted(
        f"build {c}" for c in fake.cells
    )
    assert fake.events[:2] == ["serve", "guest"] and fake.events[-1] == "stop serving"
    assert not any(e.startswith(("smoke", "probe")) for e in fake.events)


def test_the_engines_follow_the_protocol(fake):
    assert isinstance(fake, Engine)
    assert isinstance(DockerEngine("default", client=object()), Engine)  # type: ignore[arg-type]


def test_a_bad_history_is_refused_before_the_run_does_anything(fake):
    fake.results.mkdir(parents=True)
    (fake.results / "history.jsonl").write_text('{"run_id": "r1", "cell": "x", "status": 5}\n')
    with pytest.raises(InputError, match=r"history.jsonl:1: status: 5 is not a status"):
        run(fake)
    assert fake.events == []
    assert sorted(p.name for p in fake.results.iterdir()) == ["history.jsonl"]


# --- evidence that accumulates ------------------------------------------------------------------


class Recorded(Fake):
    """Builds that record their packages: debian-12-release and debian-12-backports hold the
    same ones (one experiment); each smoke test's prior is kept."""

    PACKAGES = {"debian-12-release": "a" * 64, "debian-12-backports": "a" * 64}

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.guest.write_bytes(tar_of([("guest/vmlinuz", b"the guest", 0o644)]))
        self.priors: dict[str, dict[str, str]] = {}

    def build_cell(self, cell, base_id, log_dir, timeout, cache):
        built = super().build_cell(cell, base_id, log_dir, timeout, cache)
        return dataclasses.replace(built, packages=self.PACKAGES.get(cell.id, "b" * 64))

    def smoke(self, job):
        with self.lock:
            self.priors[job.cell.id] = dict(job.prior)
        return super().smoke(job)


def sequential(tmp_path: Path) -> str:
    """The unit matrix with its policy's sequential test instead of a fixed count of runs."""
    text = UNIT_MATRIX.read_text()
    assert "\n  runs: 1\n" in text
    path = tmp_path / "matrix.yaml"
    path.write_text(text.replace("\n  runs: 1\n", "\n"))
    return str(path)


def test_a_second_run_starts_from_the_first_runs_outcomes_of_the_same_experiment(tmp_path, fake):
    recorded = Recorded(tmp_path)
    matrix = sequential(tmp_path)
    first, _ = run(recorded, recorded, matrix=matrix)
    keys = {c.id: (c.evidence or {}).get("key") for c in first.cells}
    assert keys["debian-12-release"] == keys["debian-12-backports"] != keys["debian-13-release"]
    assert all(p == {} for p in recorded.priors.values())
    # The same experiment twice in one run is smoke-tested once: the second cell is judged on
    # the first's smoke test, and says so.
    assert "debian-12-backports" not in recorded.priors
    cells = {c.id: c for c in first.cells}
    assert (cells["debian-12-backports"].evidence or {})["tested_as"] == "debian-12-release"
    assert "tested_as" not in (cells["debian-12-release"].evidence or {})
    assert cells["debian-12-backports"].status == cells["debian-12-release"].status
    assert cells["debian-12-backports"].scenarios == cells["debian-12-release"].scenarios
    second, _ = run(recorded, recorded, matrix=matrix)
    boot = "PPP"  # each cell's three passing runs (tests/unit/run/fakes.py)
    assert recorded.priors["debian-13-release"]["boot"] == boot
    # The history kept the experiment's outcomes once, not once for each of its cells.
    assert recorded.priors["debian-12-release"]["boot"] == boot
    for cell in second.cells:
        scenario = next(s for s in cell.scenarios if s.name == "boot")
        assert scenario.pooled is not None and scenario.pooled["runs"] == 6, cell.id
        assert scenario.pooled["matrix_runs"] == 2
        assert (cell.evidence or {})["since"] == first.started


def test_a_cell_waiting_for_another_ones_smoke_test_leaves_its_slot_to_the_next_cell(
    tmp_path, fake
):
    """debian-12-release and debian-12-backports are one experiment: with two slots, the one
    that waits for the other's smoke test leaves its slot to debian-13-release, which is
    smoke-tested while that smoke test still runs."""
    recorded = Recorded(tmp_path)
    started = threading.Event()

    def during(cell_id: str, stop: threading.Event) -> None:
        if cell_id == "debian-13-release":
            started.set()
        else:  # the Debian 12 cell that tests the experiment
            started.wait(WAIT)

    recorded.during = during
    result, _ = run(recorded, recorded, matrix=sequential(tmp_path), jobs=2)
    assert started.is_set()
    cells = {c.id: c for c in result.cells}
    assert list(cells) == ["debian-12-release", "debian-12-backports", "debian-13-release"]
    tested_as = {c: (cells[c].evidence or {}).get("tested_as") for c in cells}
    # Whichever claimed the experiment first tested it; the other was judged on its smoke test.
    assert tested_as in (
        {
            "debian-12-release": None,
            "debian-12-backports": "debian-12-release",
            "debian-13-release": None,
        },
        {
            "debian-12-release": "debian-12-backports",
            "debian-12-backports": None,
            "debian-13-release": None,
        },
    )
    assert cells["debian-12-backports"].scenarios == cells["debian-12-release"].scenarios


def test_a_run_timeout_is_shared_among_the_cells_still_to_test(tmp_path, fake):
    timeouts: dict[str, float | None] = {}
    smoke = fake.smoke

    def timed(job: SmokeJob):
        timeouts[job.cell.id] = job.cell_timeout
        return smoke(job)

    fake.smoke = timed  # type: ignore[method-assign]
    run(fake)
    assert set(timeouts.values()) == {None}  # no run_timeout: the runner keeps cell_timeout
    matrix = tmp_path / "matrix.yaml"
    text = UNIT_MATRIX.read_text()
    assert "\n  runs: 1\n" in text
    matrix.write_text(text.replace("\n  runs: 1\n", "\n  runs: 1\n  run_timeout: 600\n"))
    run(fake, matrix=str(matrix))
    # One slot: the first of three cells gets a third of the time less 30 s for what a smoke
    # test takes beyond its share; the fakes take nothing beyond it, so the next gets half of
    # what is left and the last all of it.
    shares = [timeouts[c] for c in CELLS]
    assert shares == [pytest.approx(s, abs=5) for s in (170, 300, 600)], shares


def test_a_smoke_test_under_way_counts_against_the_time_left(tmp_path, fake):
    """Two slots, three cells: the second cell starts while the first still runs, so the time
    left is shared three ways, not two."""
    timeouts: dict[str, float | None] = {}
    second = threading.Event()
    smoke = fake.smoke

    def timed(job: SmokeJob):
        timeouts[job.cell.id] = job.cell_timeout
        if job.cell.id == CELLS[1]:
            second.set()
        return smoke(job)

    fake.smoke = timed  # type: ignore[method-assign]
    fake.during = lambda cell_id, stop: second.wait(WAIT) if cell_id == CELLS[0] else None
    matrix = tmp_path / "matrix.yaml"
    text = UNIT_MATRIX.read_text()
    matrix.write_text(text.replace("\n  runs: 1\n", "\n  runs: 1\n  run_timeout: 600\n"))
    run(fake, matrix=str(matrix), jobs=2)
    assert second.is_set()
    # 600 s x 2 slots / 3 cells, less 30 s for what a smoke test takes beyond its share.
    assert timeouts[CELLS[0]] == pytest.approx(370, abs=5)
    assert timeouts[CELLS[1]] == pytest.approx(370, abs=5)


def test_cells_of_one_experiment_but_another_template_are_tested_apart(tmp_path, fake):
    recorded = Recorded(tmp_path)
    text = Path(sequential(tmp_path)).read_text()
    assert "{base: debian-12, source: backports}" in text
    path = tmp_path / "templated.yaml"
    path.write_text(
        text.replace(
            "{base: debian-12, source: backports}",
            "{base: debian-12, source: backports, template: fault-restart.Dockerfile.j2}",
        )
    )
    first, _ = run(recorded, recorded, matrix=str(path))
    keys = {c.id: (c.evidence or {}).get("key") for c in first.cells}
    # The same packages, but an override adds to the image: another experiment.
    assert keys["debian-12-release"] != keys["debian-12-backports"]
    assert {"debian-12-release", "debian-12-backports"} <= set(recorded.priors)


def test_a_fixed_count_of_runs_is_not_judged_on_earlier_ones(tmp_path, fake):
    recorded = Recorded(tmp_path)
    matrix = sequential(tmp_path)
    run(recorded, recorded, matrix=matrix)
    second, _ = run(recorded, recorded, matrix=matrix, runs=3)
    assert all(p == {} for p in recorded.priors.values())
    assert all(s.pooled is None for c in second.cells for s in c.scenarios)
    assert all(c.evidence for c in second.cells)  # later runs may pool them


def test_a_run_of_one_cell_builds_the_images_its_upgrade_migrations_start_from(tmp_path, fake):
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(
        UNIT_MATRIX.read_text()
        + "migrations:\n  - {from: debian-12-release, to: debian-13-release}\n"
    )
    result, _ = run(fake, matrix=str(matrix), cells="debian-13-release")
    # Built (a nightly job has only its own cell's image), neither tested nor reported.
    assert "build debian-12-release" in fake.events
    assert [cell_id for cell_id, _, _ in fake.smoked] == ["debian-13-release"]
    assert [c.id for c in result.cells] == ["debian-13-release"]
    # matrix.test builds nothing.
    fake.events.clear()
    run(fake, matrix=str(matrix), cells="debian-13-release", build=False)
    assert not [e for e in fake.events if e.startswith("build")]


class Upgrading(Recorded):
    """Recorded, whose smoke tests add the upgrade migrations into the cell, as the smoke stage
    does (harness/stages/peer.py), once each of three repetitions."""

    def smoke(self, job):
        done = super().smoke(job)
        if not any(pair.to == job.cell.id for pair in job.matrix.migrations):
            return done
        report = dict(done.report)
        upgrade = {"name": "upgrade-migration", "status": "pass", "duration_s": 1.0}
        report["runs"] = [*report["runs"], *[[upgrade]] * 3]
        return dataclasses.replace(done, report=report)


def test_a_cell_shares_another_ones_smoke_test_without_its_upgrade_migrations(tmp_path, fake):
    matrix = tmp_path / "matrix.yaml"
    pair = "migrations:\n  - {from: debian-13-release, to: %s}\n"
    recorded = Upgrading(tmp_path)
    # The cell with the upgrade migration is tested; the other, the same image, takes its smoke
    # test without the upgrade runs.
    matrix.write_text(Path(sequential(tmp_path)).read_text() + pair % "debian-12-release")
    result, _ = run(
        recorded, recorded, matrix=str(matrix), cells="debian-12-release,debian-12-backports"
    )
    cells = {c.id: c for c in result.cells}
    assert set(recorded.priors) == {"debian-12-release"}
    names = {c: [s.name for s in cells[c].scenarios] for c in cells}
    assert names["debian-12-release"][-1] == "upgrade-migration"
    assert names["debian-12-backports"] == names["debian-12-release"][:-1]
    assert (cells["debian-12-backports"].evidence or {})["tested_as"] == "debian-12-release"
    # The other way round: a cell with upgrade migrations the tested one has not is tested
    # itself.
    recorded.priors.clear()
    matrix.write_text(Path(sequential(tmp_path)).read_text() + pair % "debian-12-backports")
    result, _ = run(
        recorded, recorded, matrix=str(matrix), cells="debian-12-release,debian-12-backports"
    )
    assert set(recorded.priors) == {"debian-12-release", "debian-12-backports"}
    assert not any((c.evidence or {}).get("tested_as") for c in result.cells)
