"""One real cell, end to end: the Debian 12 image is built and every scenario runs in it (no mocks)."""

import pytest

from harness.core.paths import ROOT
from harness.matrix.load import load
from tests.cli import invoke

pytestmark = pytest.mark.integration

CELL = "debian-12-release"
# The default matrix's scenarios, in its order (a scenario may also be opt-in, as live-migration).
SCENARIOS = list(load(ROOT / "matrix.yaml")[0].scenarios)


@pytest.fixture(scope="module")
def run_result(debian12_run):
    data = debian12_run.data
    return debian12_run.done, {**data, "cells": [debian12_run.cell(CELL)]}


def test_run_exits_zero_and_prints_a_summary(run_result):
    done, data = run_result
    assert done.returncode == 0, done.stderr[-3000:]
    summary, files = done.stdout.split("\nresults:  ")
    assert summary.startswith("hvgate run ") and "debian 12" in summary
    assert max(len(line) for line in summary.splitlines()) <= 100
    assert files.splitlines()[0].endswith("/latest.json")
    assert any(c["id"] == CELL for c in data["cells"])


def test_every_scenario_passes_with_a_duration(run_result):
    _, data = run_result
    (cell,) = data["cells"]
    assert cell["id"] == CELL
    by_name = {s["name"]: s for s in cell["scenarios"]}
    assert list(by_name) == SCENARIOS
    for name, scenario in by_name.items():
        assert scenario["status"] == "safe", (name, scenario["messages"], scenario["logs"])
        assert scenario["runs"] >= 1 and scenario["failures"] == 0
        assert all(d > 0 for d in scenario["durations_s"])
    assert cell["status"] == "safe"


def test_versions_are_read_from_the_image(run_result, engine):
    _, data = run_result
    (cell,) = data["cells"]
    assert cell["libvirt_version"] == "9.0.0"
    assert cell["qemu_version"].startswith("7.2.")
    assert cell["versions"]["libvirt-daemon"].startswith("9.0.0-")
    assert ":7.2+dfsg" in cell["versions"]["qemu-system-x86"]
    labels = engine.images.get(cell["image"]).labels
    assert labels["io.hvgate.version.libvirt-daemon"] == cell["versions"]["libvirt-daemon"]
    assert labels["io.hvgate.version.qemu-system-x86"] == cell["versions"]["qemu-system-x86"]
    assert labels["io.hvgate.version.python3-libvirt"] == cell["versions"]["python3-libvirt"]


def test_accel_is_recorded(run_result):
    _, data = run_result
    (cell,) = data["cells"]
    assert cell["accel"] in ("kvm", "tcg")
    assert cell["accel_reason"]


def test_no_containers_are_left_behind(run_result, engine):
    _, data = run_result
    label = f"io.hvgate.run={data['run_id']}"
    assert engine.containers.list(all=True, filters={"label": label}) == []


def test_second_build_rebuilds_nothing(run_result, engine, debian12_run):
    results_dir = debian12_run.results_dir
    _, data = run_result
    image_id = engine.images.get(data["cells"][0]["image"]).id
    done = invoke("matrix.build", "--cells", CELL, results_dir=results_dir, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{CELL}" in done.stdout and "cached" in done.stdout
    assert "building" not in done.stderr
    assert engine.images.get(data["cells"][0]["image"]).id == image_id


TWINS = """\
bases:
  debian-12: {distro: debian, release: "12", codename: bookworm}
sources:
  release: {suite: "{codename}"}
cells:
  - {base: debian-12, id: twin-a}
  - {base: debian-12, id: twin-b}
guest: {base: debian-12}
"""


def test_a_cell_built_wholly_from_the_layer_cache_is_labelled_with_its_versions(
    engine, debian12_base, tmp_path
):
    """Two cells with the same recipe: the second build's every step is cached, so it prints
    no versions; they are read from the image instead."""
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(TWINS)
    done = invoke(
        "matrix.build", "--matrix", str(matrix), "--jobs", "1",
        results_dir=tmp_path / "results", timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        for cell in ("twin-a", "twin-b"):
            labels = engine.images.get(f"hvgate/cell:{cell}").labels
            assert labels["io.hvgate.version.libvirt-daemon"].startswith("9.0.0-"), labels
    finally:
        for cell in ("twin-a", "twin-b"):
            for image in engine.images.list(filters={"label": f"io.hvgate.cell={cell}"}):
                engine.images.remove(image.id, force=True)


def test_what_the_container_left_out_is_recorded(run_result):
    _, data = run_result
    (cell,) = data["cells"]
    features = [entry["feature"] for entry in cell["not_exercised"]]
    assert {"apparmor", "selinux", "dac", "cgroups", "namespaces"} <= set(features), features
