"""libvirt 6.0 (Ubuntu 20.04) does not exit on SIGTERM while a managed save runs: its shutdown
stops the event loop and then waits for the RPC worker, whose save waits for QEMU's migration
event, which only that loop would read. The runner stops the daemon as systemd does: after the
unit's stop timeout (90 s) it kills it, starts it again, and fails the scenario as libvirt's,
with the time it took; the next run goes on with the restarted daemon. When SIGTERM lands before
the save's next monitor command, the daemon does exit, and the restarted one leaves the guest
paused, neither saved nor resumed: libvirt's failure too. Three runs of the one scenario keep it
cheap."""

import re

import pytest

from tests.integration.support import backtest_cell

pytestmark = pytest.mark.integration

CELL = "ubuntu-20.04-release"
SCENARIO = "managed-save-during-restart"
RUNS = 3
PAUSED = "the domain is paused after the managed save"
STOPPED = re.compile(
    r"libvirtd did not exit within 90 s of SIGTERM \(systemd's stop timeout for it\): killed "
    r"with SIGKILL after (\d+\.\d) s and started again, as systemd does; when killed, libvirtd "
    r"\d+ is sleeping, \d+ threads"
)


@pytest.fixture(scope="module")
def focal(engine, tmp_path_factory):
    work = tmp_path_factory.mktemp("stop-timeout")
    return backtest_cell(work, CELL, [SCENARIO], RUNS, 3000)


def test_a_daemon_that_outlives_sigterm_is_libvirts_failure_and_the_runs_go_on(focal):
    done, cell = focal
    assert "Traceback" not in done.stderr
    (scenario,) = cell["scenarios"]
    # Every run ran, none the runner's failure: a daemon killed as systemd kills it was started
    # again each time. Which of libvirt's two failures each run meets is libvirt's timing (the
    # stop timeout was seen in 6 of 8 runs, the paused guest in the rest); the unit tests of
    # harness/smoke/daemons.py drive the kill itself with a process that ignores SIGTERM.
    assert scenario["runs"] == RUNS and scenario["errors"] == 0, scenario["messages"]
    for message in scenario["messages"]:
        found = STOPPED.match(message)
        assert found or message == PAUSED, message
        assert not found or float(found.group(1)) >= 90.0  # killed after the timeout, not before
    if scenario["failures"]:
        assert {c["cause"] for c in scenario["failures_by_cause"]} == {"libvirt-qemu"}


def test_the_cell_records_what_its_container_left_out(focal):
    _, cell = focal
    features = [entry["feature"] for entry in cell["not_exercised"]]
    assert features == [
        "apparmor",
        "selinux",
        "dac",
        "remember-owner",
        "cgroups",
        "namespaces",
        "machined",
    ]
    assert all(entry["reason"] for entry in cell["not_exercised"])
