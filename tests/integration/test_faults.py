"""Faults while a real run is in progress: the libvirt daemon, QEMU or the whole cell container
killed from the host, an archive that cannot be reached, a Docker engine that is not there.
Each is recorded in the results JSON with its reason, and the other cells run on."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli import invoke
from tests.integration.live import (
    CELLS,
    SCENARIOS,
    LiveRun,
    kill_in,
    leftovers,
    small_matrix,
    wait_for_container,
)

pytestmark = pytest.mark.integration

FAULTY, HEALTHY = CELLS  # the fault is injected in the first; the second must not notice
# Under load a TCG boot can take a minute; the whole run is bounded anyway by the tool's timeouts.
RUN_TIMEOUT = 1800


def run_with_fault(engine, tmp_path, inject, extra_cells=()):
    """Runs the two cells (and any extra ones), calls inject(container) once the faulty cell's
    guest has booted, and returns (exit code, results JSON by cell id, the run's output)."""
    matrix = small_matrix(tmp_path)
    if extra_cells:
        data = yaml.safe_load(matrix.read_text())
        data["sources"].update({name: source for name, (_, source) in extra_cells.items()})
        data["cells"][:0] = [cell for cell, _ in extra_cells.values()]
        matrix.write_text(yaml.safe_dump(data, sort_keys=False))
    results = tmp_path / "results"
    live = LiveRun("matrix.run", "--matrix", str(matrix), "--accel", "tcg", results_dir=results)
    try:
        run_id = live.run_id()
        container = wait_for_container(engine, live, run_id, FAULTY, timeout=RUN_TIMEOUT)
        live.wait_for(rf"{FAULTY}\s.*\bboot: pass", timeout=600)
        what = inject(container)
        code = live.finish(timeout=RUN_TIMEOUT)
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
            live.finish(timeout=60)
    data = json.loads((results / "runs" / run_id / "results.json").read_text())
    for cell in data["cells"]:  # what the results say, for the log of the test run
        print(f"{cell['id']}: {cell['status']}: {cell['reason']}")
    assert leftovers(engine, run_id) == [], "the run left containers behind"
    return code, {cell["id"]: cell for cell in data["cells"]}, live.output() + f"\ninjected: {what}"


def assert_ran_to_the_end(cell, output):
    """The cell was smoke-tested in full and judged: the run went on past the other's fault.
    (Its verdict itself is the cell's own; a loaded host can make a TCG guest miss a heartbeat.)"""
    assert cell["status"] in ("safe", "flaky", "broken"), (cell["status"], cell["reason"], output)
    assert [s["name"] for s in cell["scenarios"]] == SCENARIOS, output
    assert all(s["runs"] >= 1 for s in cell["scenarios"])
    assert cell["libvirt_version"] and cell["qemu_version"]


def failed_scenarios(cell):
    return {s["name"]: s for s in cell["scenarios"] if s["status"] != "safe"}


def test_libvirt_daemon_killed_mid_scenario(engine, tmp_path):
    # Debian 12's libvirt runs the monolithic daemon.
    code, cells, output = run_with_fault(engine, tmp_path, lambda c: kill_in(c, "libvirtd"))
    cell = cells[FAULTY]
    # A daemon that dies is a failure of the cell's libvirt as far as the run can tell.
    assert cell["status"] in ("broken", "flaky"), (cell["status"], cell["reason"], output)
    failed = failed_scenarios(cell)
    assert failed and "boot" not in failed, output
    assert cell["reason"] and all(s["messages"] for s in failed.values())
    assert_ran_to_the_end(cells[HEALTHY], output)
    assert code == 1, output  # unsafe cells


def test_qemu_killed_mid_scenario(engine, tmp_path):
    code, cells, output = run_with_fault(engine, tmp_path, lambda c: kill_in(c, "qemu-system-x86"))
    cell = cells[FAULTY]
    assert cell["status"] in ("broken", "flaky"), (cell["status"], cell["reason"], output)
    failed = failed_scenarios(cell)
    assert failed and "boot" not in failed, output
    # The next scenario boots a fresh guest: one killed QEMU does not fail the rest.
    assert "teardown" not in failed, (failed, output)
    assert_ran_to_the_end(cells[HEALTHY], output)
    assert code == 1, output


UNREACHABLE = {
    # A private archive nobody answers for (the discard port on loopback): apt cannot fetch it.
    "unreachable": (
        {"base": "debian-12", "source": "unreachable", "id": "faults-unreachable-archive"},
        {"uri": "http://127.0.0.1:9/private", "suite": "private", "components": ["main"]},
    )
}


def test_cell_container_killed_and_an_archive_unreachable(engine, tmp_path):
    code, cells, output = run_with_fault(
        engine, tmp_path, lambda c: c.kill() or c.name, extra_cells=UNREACHABLE
    )
    cell = cells[FAULTY]
    assert cell["status"] == "error", (cell["status"], cell["reason"], output)
    assert "container stopped" in cell["reason"] and "137" in cell["reason"], cell["reason"]
    unreachable = cells["faults-unreachable-archive"]
    assert unreachable["status"] == "unavailable", unreachable
    assert unreachable["reason"].startswith("source unreachable"), unreachable["reason"]
    assert unreachable["build"]["log_tail"], "the build's last lines are kept"
    assert_ran_to_the_end(cells[HEALTHY], output)
    assert code == 3, output  # a cell in error: the tool failed there, not libvirt


def test_an_engine_that_is_not_there_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    results = tmp_path / "results"
    done = invoke("matrix.run", "--cells", FAULTY, results_dir=results, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"error: cannot reach the Docker engine at unix://{tmp_path}/docker.sock"
    )
    assert not results.exists()
