"""The encrypted-disk scenarios on the real Ubuntu 24.04 release cell (no mocks), with the planted
fault that shows each can fail: the runner's test-only switch (FAULT_ENV) gives every second
libvirt secret a value other than the image's passphrase, so QEMU cannot unlock the image when
libvirt hot-plugs it. Two runs of each scenario: the first must pass (the guest reads back what
the host wrote through the LUKS layer), the second must be a `fail` with QEMU's refusal, never a
runner `error`.

Ubuntu 24.04's QEMU 8.2.2, not Debian 12's 7.2.22: the latter's `qemu-img` fails some LUKS
creations by itself ("Unable to get accurate CPU usage", its PBKDF benchmark on a fast machine),
which the scenarios report as the failures they are, but which would blur the planted fault.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from harness.core.results import Status
from harness.engine import client as eng
from harness.matrix.load import load
from harness.stages.build import build_guest
from harness.stages.judge import judge_scenarios
from harness.stages.peer import cell_image
from harness.stages.smoke import REMOTE, smoke_tar
from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

MATRIX = ROOT / "matrix.yaml"
CELL = "ubuntu-24.04-release"
NAMES = ("encrypted-volume", "encrypted-image")
FAULT_ENV = "HVGATE_FAULT_WRONG_PASSPHRASE"  # harness/smoke/encryption.py


@pytest.fixture(scope="module")
def report(engine, results_dir, tmp_path_factory):
    if cell_image(engine, CELL) is None:
        done = invoke(
            "matrix.build", "--matrix", str(MATRIX), "--cells", CELL,
            results_dir=results_dir, timeout=1800,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    matrix, _ = load(str(MATRIX))
    guest = build_guest(engine, matrix, tmp_path_factory.mktemp("guest"))
    container = engine.containers.run(
        f"hvgate/cell:{CELL}",
        ["sleep", "infinity"],
        detach=True,
        init=True,
        labels={eng.LABEL_RUN: f"test-encryption-{os.getpid()}"},
    )
    started = time.monotonic()
    try:
        container.put_archive(REMOTE, smoke_tar())
        container.put_archive(REMOTE, guest.read_bytes())
        command = ["python3", "-m", "smoke", "--scenarios", ",".join(NAMES), "--accel", "tcg"]
        code, (out, err) = container.exec_run(
            [*command, "--runs", "2", "--scenario-timeout", "600", "--boot-timeout", "300"],
            workdir=REMOTE,
            demux=True,
            environment={FAULT_ENV: "2"},
        )
    finally:
        container.remove(force=True, v=True)
    assert code == 0, (err or b"").decode(errors="replace")[-3000:]
    data = json.loads(out.decode().strip().splitlines()[-1])
    print(f"\n{CELL}: {time.monotonic() - started:.0f} s in all")
    for run in data["runs"]:
        for result in run:
            print(
                f"  {result['name']:<18} {result['status']:<5} {result['duration_s']:>6.1f} s "
                f"{json.dumps(result['details'])} {(result['error'] or '').splitlines()[:1]}"
            )
    return data


def results_of(report, name):
    return [r for run in report["runs"] for r in run if r["name"] == name]


def test_the_cell_runs_both_scenarios(report):
    assert report["setup_error"] is None
    assert report["not_applicable"] == []


@pytest.mark.parametrize("name", NAMES)
def test_the_first_run_passes_and_the_planted_fault_fails_the_second(report, name):
    first, second = results_of(report, name)
    assert first["status"] == "pass", first["error"]
    assert first["details"]["guest_disk"].startswith("vd")
    assert first["details"]["attach_s"] > 0 and first["details"]["detach_s"] > 0
    # The wrong passphrase is libvirt's and QEMU's failure to open the image: `fail`.
    assert second["status"] == "fail", second["error"]
    assert second["error_class"] == "libvirtError", second["error"]
    assert "keyslot" in second["error"] or "passphrase" in second["error"], second["error"]


def test_the_volume_is_cinders_luks(report):
    (first, _) = results_of(report, "encrypted-volume")
    assert first["details"]["payload_offset"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_the_verdict_counts_the_fault_as_a_failure(report, name):
    verdict = {v.name: v for v in judge_scenarios(report)}[name]
    assert (verdict.runs, verdict.failures, verdict.errors) == (2, 1, 0)
    assert verdict.status != Status.ERROR
