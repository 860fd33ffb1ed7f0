"""The busy-node scenario (harness/smoke/busy.py) for real, and able to fail: it runs twice in
two Debian 12 cells (tests/integration/data/busy.yaml).

- busy-clean: three guests boot at once on one daemon, then a live snapshot, a managed save and
  restore and a disk hot-plug run at once, one on each: every run passes, and the extra guests
  are gone afterwards (teardown, which finds any domain left, passes too).
- busy-start-fault: a libvirt QEMU hook fails every second guest start. A run starts at least
  two guests one after the other (its fresh first guest, or the two extra ones at once, and the
  restore of the managed save), so every run meets a refused start: each fails, as `fail`
  (libvirt's refusal, naming the hook), never `error`.
"""

from __future__ import annotations

import pytest

from tests.cli import ROOT
from tests.integration.support import run_matrix

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "busy.yaml"
RUNS = 2


@pytest.fixture(scope="module")
def cells(engine, results_dir):
    flags = ("--accel", "tcg", "--runs", str(RUNS), "--jobs", "1")
    _, data = run_matrix(MATRIX, results_dir, *flags, label="busy-node")
    return {c["id"]: {s["name"]: s for s in c["scenarios"]} for c in data["cells"]}


def test_three_guests_at_once_pass_every_run(cells):
    busy = cells["busy-clean"]["busy-node"]
    assert (busy["runs"], busy["failures"], busy["errors"]) == (RUNS, 0, 0), busy["messages"]
    for details in busy["details"]:
        assert details["guests"] == 3
        assert 0 < details["operations_s"] < details["boot_s"] + 60
    teardown = cells["busy-clean"]["teardown"]
    assert (teardown["failures"], teardown["errors"]) == (0, 0), teardown["messages"]


def test_a_refused_start_fails_every_run_against_libvirt(cells):
    busy = cells["busy-start-fault"]["busy-node"]
    assert (busy["runs"], busy["failures"], busy["errors"]) == (RUNS, RUNS, 0), busy["messages"]
    assert all("hook" in m.lower() for m in busy["messages"]), busy["messages"]
