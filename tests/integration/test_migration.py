"""Live migration end to end: real Debian 12 and 13 cells, two containers each, real libvirt and
QEMU (no mocks), and an upgrade migration from Debian 12 into Debian 13.

tests/integration/data/migration.yaml runs only `live-migration`; its policy decides `safe` after
two clean runs, so each migration repeats under the stop rule. Its bases and source are the
default matrix's, and the repository's lock is put beside it, so the images `invoke matrix.build
--cells debian-12-release,debian-13-release` made are used (`matrix.run` builds them otherwise).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "integration" / "data" / "migration.yaml"
CELLS = ("debian-12-release", "debian-13-release")
VERSIONS = {"debian-12-release": "9.0.0", "debian-13-release": "11.3.0"}


@pytest.fixture(scope="module")
def run_result(engine, tmp_path_factory):
    where = tmp_path_factory.mktemp("migration")
    matrix = where / "migration.yaml"
    shutil.copy(DATA, matrix)
    shutil.copy(ROOT / "matrix.lock.json", where / "migration.lock.json")
    results_dir = where / "results"
    started = time.monotonic()
    done = invoke(
        "matrix.run", "--matrix", str(matrix), "--cells", ",".join(CELLS), "--accel", "tcg",
        results_dir=results_dir, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    # The figures, for the log of the test session (pytest -s, or -rA).
    print(f"matrix.run took {seconds:.0f} s")
    for cell in data["cells"]:
        for scenario in cell["scenarios"]:
            for details in scenario["details"]:
                for kind in ("shared", "block"):
                    figures = details.get(kind, {})
                    print(
                        f"{cell['id']} {scenario['name']} {kind}: call {figures.get('call_s')} s,"
                        f" QEMU {figures.get('transfer_s')} s,"
                        f" before QEMU {figures.get('before_transfer_s')} s"
                    )
    return done, data, results_dir


def by_id(data):
    return {cell["id"]: cell for cell in data["cells"]}


def scenario(cell, name):
    (found,) = [s for s in cell["scenarios"] if s["name"] == name]
    return found


def test_the_run_passes(run_result):
    done, data, _ = run_result
    assert done.returncode == 0, done.stderr[-3000:]
    # A not-applicable scenario (the unbuilt pair) does not make a cell less than safe.
    assert {c["id"]: c["status"] for c in data["cells"]} == dict.fromkeys(CELLS, "safe")


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_heartbeat_goes_on_at_the_destination(run_result, cell_id):
    _, data, _ = run_result
    cell = by_id(data)[cell_id]
    migration = scenario(cell, "live-migration")
    assert migration["status"] == "safe", (migration["messages"], migration["logs"])
    # Repeated by the stop rule: the test matrix's policy needs two clean runs.
    assert migration["runs"] == 2 and migration["failures"] == 0
    for details in migration["details"]:
        assert details["destination"]["libvirt_version"] == VERSIONS[cell_id]
        for kind in ("shared", "block"):
            figures = details[kind]
            # A beat of the same boot after the source's QEMU was gone: the destination's.
            assert figures["beat_after"] > figures["beat_before"] >= 1
            assert 0 < figures["transfer_s"] <= figures["call_s"]
            assert figures["memory_processed_bytes"] > 0


@pytest.mark.parametrize("cell_id", CELLS)
def test_the_destinations_qemu_took_the_guest_in(run_result, cell_id):
    _, data, results_dir = run_result
    log_dir = results_dir / "runs" / data["run_id"] / "logs" / cell_id / "destination"
    qemu_log = (log_dir / "libvirt-qemu-hvgate-guest.log").read_text()
    assert "-incoming" in qemu_log


def test_an_upgrade_migration_goes_from_debian_12_into_debian_13(run_result):
    _, data, _ = run_result
    upgrade = scenario(by_id(data)["debian-13-release"], "upgrade-migration")
    assert upgrade["status"] == "safe", (upgrade["messages"], upgrade["logs"])
    assert upgrade["runs"] == 2
    for details in upgrade["details"]:
        assert details["from"] == "debian-12-release"
        assert details["libvirt_version"] == VERSIONS["debian-12-release"]
        assert details["destination"]["libvirt_version"] == VERSIONS["debian-13-release"]
        for kind in ("shared", "block"):
            assert details[kind]["beat_after"] > details[kind]["beat_before"]


def test_a_pair_from_an_unbuilt_cell_is_not_applicable(run_result):
    done, data, _ = run_result
    upgrade = scenario(by_id(data)["debian-12-release"], "upgrade-migration")
    assert upgrade["status"] == "not-applicable" and upgrade["runs"] == 0
    # The run tried to build it, since the pair needs it: its suite is served nowhere.
    assert "migration-never-built is unavailable: suite not served" in done.stderr
    reason = "from migration-never-built: its image is not built"
    assert reason in upgrade["decision"]
    assert f"upgrade-migration not applicable: {reason}" in done.stderr


def test_nothing_of_the_run_is_left(run_result, engine):
    _, data, _ = run_result
    label = {"label": f"io.hvgate.run={data['run_id']}"}
    assert engine.containers.list(all=True, filters=label) == []
    assert engine.networks.list(filters=label) == []
    assert engine.volumes.list(filters=label) == []
