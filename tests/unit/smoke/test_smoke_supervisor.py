"""The runner's own reliability: the console read a byte at a time, the supervisor's bounds on the
worker, hung and dead workers turned into results, renewal, not-run and the cell's end (against
fakes; the real daemon hang is tests/integration/test_hang.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

BOOTS = ["0f4c2a11-7d3e-4b8a-9c55-2e1f0a9b3c7d", "b2eb51e7-1c2d-4e5f-8a9b-0c1d2e3f4a5b"]


def console_bytes() -> bytes:
    lines = [b"[    0.000000] Linux version 6.1.0 (quiet)"]
    for boot in BOOTS:
        lines.append(f"HVGATE-READY boot={boot} disks=vda".encode())
        lines += [f"HVGATE-HEARTBEAT {n} boot={boot}".encode() for n in range(1, 13)]
        lines.append(b"HVGATE-DISK-ADDED vdb")
    return b"\r\n".join(lines) + b"\r\n"


def test_the_console_never_yields_a_partial_boot_id_or_beat(smoke, tmp_path):
    """The file grows a byte at a time, as QEMU's serial port writes it: at every size, each
    boot id read is whole and each beat is one the guest really printed."""
    data = console_bytes()
    real_beats = {(n, boot) for boot in BOOTS for n in range(1, 13)}
    path = tmp_path / "console.log"
    console = smoke.guest.Console(str(path))
    with path.open("wb", buffering=0) as handle:
        for size in range(len(data) + 1):
            handle.write(data[size : size + 1])
            for offset in (0, size // 2, max(0, size - 40)):
                text = console.text(offset)
                for match in smoke.guest.READY_RE.finditer(text):
                    assert match.group(1) in BOOTS, (size, offset, match.group(0))
                assert set(console.heartbeats(offset)) <= real_beats, (size, offset)
    assert console.wait_for(smoke.guest.READY_RE, 0, 0.1, "ready").group(1) == BOOTS[0]
    assert console.last_heartbeat() == (12, BOOTS[1])


def test_a_marker_counts_only_once_its_line_is_complete(smoke, tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"HVGATE-READY boot=782")
    console = smoke.guest.Console(str(path))
    with pytest.raises(smoke.guest.ScenarioFailure, match="did not appear"):
        console.wait_for(smoke.guest.READY_RE, 0, 0.1, "the ready marker")
    with path.open("ab") as handle:
        handle.write(b"c3d-aa disks=vda\r\nHVGATE-HEARTBEAT 1 boot=782c3d-aa\r\nHVGATE-HEARTBEAT 2")
    assert console.wait_for(smoke.guest.READY_RE, 0, 0.1, "ready").group(1) == "782c3d-aa"
    assert console.heartbeats() == [(1, "782c3d-aa")]
    assert console.tail(1) == ["HVGATE-HEARTBEAT 2"]  # evidence shows what is there


# --- what a hung worker was waiting on ---------------------------------------------------------


def test_blocked_call_from_a_real_faulthandler_dump(smoke, tmp_path):
    """A process blocked in a function of a module named libvirt, dumped by faulthandler exactly
    as the worker's watchdog does, is read as that libvirt call at the scenario's line."""
    (tmp_path / "smoke").mkdir()
    (tmp_path / "libvirt.py").write_text("import time\ndef create():\n    time.sleep(30)\n")
    (tmp_path / "smoke" / "__init__.py").write_text("")
    (tmp_path / "smoke" / "scenarios.py").write_text(
        "import libvirt\ndef managed_save():\n    libvirt.create()\n"
    )
    stack = tmp_path / "stack.txt"
    (tmp_path / "smoke" / "worker.py").write_text(
        textwrap.dedent(
            f"""
            import faulthandler, threading, time
            from . import scenarios
            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
            handle = open({str(stack)!r}, "w")
            faulthandler.dump_traceback_later(0.3, file=handle)
            scenarios.managed_save()
            """
        )
    )
    process = subprocess.Popen([sys.executable, "-m", "smoke.worker"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while "scenarios.py" not in (stack.read_text() if stack.exists() else ""):
            assert time.monotonic() < deadline, "faulthandler wrote no stack"
            time.sleep(0.05)
        # The dump is written thread by thread: read it once it has stopped growing.
        seen = ""
        while (text := stack.read_text()) != seen:
            assert time.monotonic() < deadline, "faulthandler did not finish its dump"
            seen = text
            time.sleep(0.3)
    finally:
        process.kill()
        process.wait()
    lines = stack.read_text().splitlines()
    assert smoke.evidence.blocked_call(lines) == (
        "libvirt",
        "the libvirt call create at scenarios.py:3",
    )


def test_a_daemons_children_are_found_by_their_parent(smoke):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in smoke.daemons.children([os.getpid()])
        assert child.pid not in smoke.daemons.children([child.pid])
    finally:
        child.kill()
        child.wait()


def test_blocked_call_elsewhere_is_the_runners(smoke):
    lines = [
        "Thread 0x00007f0000000001 (most recent call first):",
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait',
        '  File "/opt/hvgate/smoke/scenarios.py", line 77 in detach_under_load',
        '  File "/opt/hvgate/smoke/worker.py", line 60 in run_scenario',
    ]
    assert smoke.evidence.blocked_call(lines) == (
        "runner",
        "the runner's detach_under_load at scenarios.py:77",
    )
    assert smoke.evidence.blocked_call([]) is None


# --- process states from /proc ----------------------------------------------------------------


def test_a_stopped_daemon_is_described_as_stopped_and_killed(smoke, tmp_path):
    fake = tmp_path / "hvgate-stuckd"
    shutil.copy(shutil.which("sleep"), fake)
    process = subprocess.Popen([str(fake), "60"])
    try:
        os.kill(process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while smoke.daemons.state(process.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert smoke.daemons.describe("hvgate-stuckd") == f"hvgate-stuckd {process.pid} is stopped"
        (thread,) = smoke.daemons.threads(process.pid)
        assert thread.startswith(f"{process.pid}/{process.pid} hvgate-stuckd: stopped in ")
        smoke.daemons.kill([process.pid])
        assert process.wait(timeout=5) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
    assert smoke.daemons.describe("hvgate-stuckd") == "hvgate-stuckd is not running"


def test_a_running_process_is_described_by_where_its_threads_wait(smoke, tmp_path):
    fake = tmp_path / "hvgate-busyd"
    shutil.copy(shutil.which("sleep"), fake)
    process = subprocess.Popen([str(fake), "60"])
    try:
        deadline = time.monotonic() + 5
        while not smoke.daemons.pidof("hvgate-busyd"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        line = smoke.daemons.describe("hvgate-busyd")
        assert line.startswith(f"hvgate-busyd {process.pid} is ")
        assert ", 1 threads, 1 waiting in " in line, line
    finally:
        process.kill()
        process.wait()
    own = smoke.daemons.threads(os.getpid())
    assert own and all(entry.startswith(f"{os.getpid()}/") for entry in own)


# --- the worker process and its bounds ---------------------------------------------------------


def test_a_worker_that_does_not_answer_is_hung_within_its_bound(smoke):
    argv = [sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"]
    worker = smoke.supervisor.WorkerProcess(argv)
    started = time.monotonic()
    with pytest.raises(smoke.supervisor.WorkerLost) as lost:
        worker.ask({"op": "scenario"}, 0.5)
    assert lost.value.hung and 0.5 <= time.monotonic() - started < 3
    worker.kill()
    assert worker.proc.returncode == -signal.SIGKILL


def test_a_worker_that_ends_is_lost_with_how(smoke):
    worker = smoke.supervisor.WorkerProcess([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(smoke.supervisor.WorkerLost, match="exit code 3") as lost:
        worker.ask({"op": "connect"}, 10)
    assert not lost.value.hung
    worker.kill()


def test_a_worker_answers_line_by_line(smoke):
    code = "import sys\nfor line in sys.stdin:\n    print('{\"echo\": ' + line.strip() + '}', flush=True)"
    worker = smoke.supervisor.WorkerProcess([sys.executable, "-c", code])
    try:
        assert worker.ask({"op": "a"}, 10) == {"echo": {"op": "a"}}
        assert worker.ask({"op": "b"}, 10) == {"echo": {"op": "b"}}
    finally:
        worker.kill()


# --- the supervisor against a fake worker -------------------------------------------------------


class FakeWorker:
    """Answers from a script shared by every worker the supervisor starts: a dict is an answer,
    "hang" and "die" lose the worker."""

    script: list = []
    lost: type = Exception
    started = 0
    asked: list = []

    def __init__(self, argv):
        FakeWorker.started += 1
        self.pid = 4242

    def ask(self, request, timeout):
        FakeWorker.asked.append(request["op"])
        if request["op"] in ("connect", "accel"):
            return {
                "libvirt_version": "9.0.0",
                "qemu_version": "7.2.0",
                "accel": "tcg",
                "reason": "r",
            }
        step = FakeWorker.script.pop(0)
        if step == "hang":
            raise FakeWorker.lost("no answer within 30 s", hung=True)
        if step == "die":
            raise FakeWorker.lost("the worker ended (killed by SIGSEGV)", hung=False)
        return step

    def kill(self):
        pass


@pytest.fixture
def supervised(smoke, monkeypatch):
    FakeWorker.lost = smoke.supervisor.WorkerLost
    FakeWorker.script, FakeWorker.started, FakeWorker.asked = [], 0, []
    monkeypatch.setattr(smoke.supervisor, "WorkerProcess", FakeWorker)
    killed = []
    renew_failures = []

    def launch(name, timeout=30.0):
        if renew_failures:
            raise smoke.guest.ScenarioFailure(renew_failures.pop(0))

    monkeypatch.setattr(smoke.daemons, "launch", launch)
    monkeypatch.setattr(smoke.daemons, "kill", killed.extend)
    monkeypatch.setattr(smoke.daemons, "pidof", lambda name: [36])
    monkeypatch.setattr(smoke.daemons, "qemu_pids", lambda: [99])
    monkeypatch.setattr(smoke.daemons, "children", lambda pids: [37] if pids == [36] else [])
    monkeypatch.setattr(smoke.daemons, "describe", lambda name: f"{name} 36 is stopped")
    stack = [
        "Thread 0x1 (most recent call first):",
        '  File "/usr/lib/python3/dist-packages/libvirt.py", line 1 in create',
        '  File "/opt/hvgate/smoke/scenarios.py", line 412 in managed_save',
        '  File "/opt/hvgate/smoke/worker.py", line 60 in run_scenario',
    ]
    monkeypatch.setattr(
        smoke.evidence,
        "hang",
        lambda daemon, pid: {"threads": ["36/36 libvirtd: stopped"], "stack": stack},
    )
    monkeypatch.setattr(smoke.evidence, "log_tails", lambda daemon: {"daemon": []})
    supervisor = smoke.supervisor.Supervisor("libvirtd", 120.0)
    supervisor.start("tcg")
    return supervisor, killed, renew_failures


def result(status, error=None):
    return {"name": "x", "status": status, "error": error, "duration_s": 0.1}


def test_a_hung_libvirt_call_is_that_scenarios_failure_and_the_next_runs_renewed(smoke, supervised):
    supervisor, killed, _ = supervised
    FakeWorker.script = ["hang", result("pass")]
    hung = supervisor.scenario("managed-save", 20)
    assert hung["status"] == "fail" and hung["error_class"] == "ScenarioHang"
    assert hung["error"] == (
        "the libvirt call create at scenarios.py:412 did not return within 20 s; "
        "libvirtd 36 is stopped"
    )
    assert hung["logs"]["threads"] == ["36/36 libvirtd: stopped"]
    # The daemon, a helper it forked (stuck before it executed its program) and QEMU, after the
    # evidence was taken.
    assert killed == [36, 37, 99]
    assert supervisor.scenario("pause-resume", 20)["status"] == "pass"
    assert FakeWorker.started == 2  # a new worker on a new daemon
    assert FakeWorker.asked[-3:] == ["connect", "accel", "scenario"]


def test_a_dead_worker_is_the_runners_error_not_a_failure(smoke, supervised):
    supervisor, _, _ = supervised
    FakeWorker.script = ["die"]
    died = supervisor.scenario("boot", 20)
    assert (died["status"], died["error_class"]) == ("error", "WorkerDied")
    assert "killed by SIGSEGV" in died["error"]


def test_after_a_failure_the_worker_recovers_before_the_next_scenario(smoke, supervised):
    supervisor, killed, _ = supervised
    FakeWorker.script = [result("fail", "the domain is paused"), {}, result("pass")]
    assert supervisor.scenario("pause-resume", 20)["status"] == "fail"
    assert FakeWorker.asked[-2:] == ["scenario", "recover"]
    assert supervisor.scenario("live-snapshot", 20)["status"] == "pass"
    assert FakeWorker.started == 1 and not killed


def test_a_failed_recovery_renews_everything(smoke, supervised):
    supervisor, killed, _ = supervised
    FakeWorker.script = [result("fail", "x"), {"error": "the daemon is gone"}, result("pass")]
    supervisor.scenario("snapshot-during-restart", 20)
    assert killed == [36, 37, 99]
    assert supervisor.scenario("external-snapshot", 20)["status"] == "pass"
    assert FakeWorker.started == 2


def test_what_cannot_be_renewed_is_not_run_and_twice_ends_the_cell(smoke, supervised):
    supervisor, _, renew_failures = supervised
    renew_failures += ["libvirtd -d did not return within 30 s"] * 2
    FakeWorker.script = ["hang"]
    assert supervisor.scenario("managed-save", 20)["status"] == "fail"
    skipped = supervisor.scenario("pause-resume", 20)
    assert skipped["status"] == "not-run"
    assert skipped["error"] == (
        "the daemon and guest could not be renewed: libvirtd -d did not return within 30 s"
    )
    assert supervisor.scenario("teardown", 20)["status"] == "not-run"  # not tried again
    assert supervisor.aborted is None
    supervisor.next_round()
    assert supervisor.scenario("boot", 20)["status"] == "not-run"
    assert supervisor.aborted and "(2 times)" in supervisor.aborted


def test_not_run_is_no_run_and_a_stop_ends_the_repetitions(smoke):
    rule = None
    trackers = {name: smoke.main.Tracker(rule) for name in ("boot", "reboot")}
    runs = []
    statuses = iter(["fail", "not-run", "pass", "pass"])
    calls = []

    def run_one(name):
        calls.append(name)
        return {"name": name, "status": next(statuses), "error": None, "duration_s": 0.1}

    stop_after = iter([None, None, None, "the cell reached its cell_timeout of 1 s"])
    why = smoke.main.repeat(
        ["boot", "reboot"], trackers, 5, run_one, runs, lambda: next(stop_after), lambda: None
    )
    assert why == "the cell reached its cell_timeout of 1 s"
    assert calls == ["boot", "reboot", "boot"]
    assert trackers["reboot"].runs == 0 and trackers["boot"].runs == 2
    assert [[r["status"] for r in rnd] for rnd in runs] == [["fail", "not-run"], ["pass"]]


# --- stopping the daemon as systemd does ---------------------------------------------------------


def _fake_daemon(tmp_path, name, ignore_term):
    """A process named `name` (a copy of sleep) that ignores SIGTERM if asked to, reaped in the
    background as the container's init would reap it."""
    fake = tmp_path / name
    shutil.copy(shutil.which("sleep"), fake)

    def keep_term_ignored() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else signal.SIG_DFL)

    process = subprocess.Popen([str(fake), "60"], preexec_fn=keep_term_ignored)
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def test_a_daemon_that_ends_on_sigterm_is_stopped_without_sigkill(smoke, tmp_path):
    process = _fake_daemon(tmp_path, "hvgate-termd", ignore_term=False)
    try:
        assert smoke.daemons.stop("hvgate-termd", timeout=5) is None
        assert process.wait(timeout=5) == -signal.SIGTERM
    finally:
        process.kill()


def test_a_daemon_that_outlives_the_stop_timeout_is_killed_as_systemd_kills_it(smoke, tmp_path):
    process = _fake_daemon(tmp_path, "hvgate-hungd", ignore_term=True)
    try:
        started = time.monotonic()
        summary, threads = smoke.daemons.stop("hvgate-hungd", timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert summary.startswith(f"hvgate-hungd {process.pid} is "), summary
        assert threads == [
            f"{process.pid}/{process.pid} hvgate-hungd: sleeping in "
            + threads[0].rsplit(" in ", 1)[1]
        ]
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert not smoke.daemons.pidof("hvgate-hungd")
    finally:
        process.kill()


def test_the_restart_reports_the_stop_timeout_with_the_new_connection(smoke, monkeypatch):
    started = []
    waited = ("libvirtd 7 is sleeping", ["7/7 libvirtd: sleeping in futex_wait_queue"])
    monkeypatch.setattr(smoke.daemons, "stop", lambda name, timeout: waited)
    monkeypatch.setattr(smoke.daemons, "start", lambda name, timeout: started.append(name) or "c")
    with pytest.raises(smoke.daemons.StopTimeout) as caught:
        smoke.daemons.restart("libvirtd", stop_timeout=90.0)
    assert started == ["libvirtd"]  # started again before the failure is told
    assert caught.value.conn == "c" and caught.value.threads == waited[1]
    message = str(caught.value)
    assert message.startswith("libvirtd did not exit within 90 s of SIGTERM")
    assert "killed with SIGKILL after" in message and "libvirtd 7 is sleeping" in message
    # A failure of libvirt's, not the runner's.
    assert isinstance(caught.value, smoke.guest.ScenarioFailure)


def test_a_session_goes_on_with_the_restarted_daemon_after_a_stop_timeout(smoke, monkeypatch):
    closed = []

    class Conn:
        def close(self):
            closed.append(self)

    old, new = Conn(), Conn()

    def restart(name, timeout):
        raise smoke.daemons.StopTimeout("libvirtd did not exit", new)

    monkeypatch.setattr(smoke.daemons, "restart", restart)
    session = smoke.scenarios.Session(old, "tcg", 5.0, daemon="libvirtd")
    with pytest.raises(smoke.daemons.StopTimeout):
        session.restart_daemon()
    assert session.conn is new and closed == [old]
