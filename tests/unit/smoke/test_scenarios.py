"""What each scenario needs of a cell, the not-applicable status from the runner to the verdict,
and the new scenarios' own logic against fake libvirt objects (the real ones run in
tests/integration/test_scenarios.py)."""

from __future__ import annotations

import threading
import time

import pytest

from harness.core.errors import UnsafeCells
from harness.core.results import BuildResult, CellResult, RunResult, SmokeRun, Status, worst
from harness.core.stats import StopRule
from harness.run.pipeline import check_outcome
from harness.stages.judge import judge_cell, judge_scenarios
from tests.unit.smoke import test_smoke_runner

smoke = test_smoke_runner.smoke  # the fixture: harness.smoke imported against a stub libvirt

SHORT = StopRule(0.01, 0.5, 0.8, min_runs=1, max_runs=3)  # 3 clean runs are safe
FACTS = {"libvirt": "9.0.0", "qemu": "7.2.0", "accel": "tcg", "hosts": 1}


# --- requirements, container side ------------------------------------------------------------


def test_every_scenario_of_the_runner_declares_its_needs(smoke):
    assert set(smoke.scenarios.REQUIREMENTS) == set(smoke.main.SCENARIOS)
    for needs in smoke.scenarios.REQUIREMENTS.values():
        # A version without a reason would leave a reader of the report guessing.
        assert bool(needs.why) == bool(needs.libvirt or needs.qemu)


def test_the_default_cells_meet_the_new_scenarios_needs(smoke):
    needs = smoke.scenarios.REQUIREMENTS
    for name in ("snapshot-during-restart", "managed-save-during-restart", "detach-under-load"):
        assert smoke.scenarios.unmet(needs[name], FACTS) is None, name


@pytest.mark.parametrize(
    ("needs", "facts", "expected"),
    [
        ({}, {}, None),
        ({"libvirt": "5.10.0"}, {"libvirt": "10.0.0"}, None),  # numbers, not strings
        (
            {"libvirt": "5.10.0"},
            {"libvirt": "5.9.0"},
            "needs libvirt >= 5.10.0 (the cell has 5.9.0)",
        ),
        ({"qemu": "4.2.0"}, {}, "needs QEMU >= 4.2.0 (the cell has an unknown version)"),
        ({"kvm": True}, {"accel": "kvm"}, None),
        ({"kvm": True}, {"accel": "tcg"}, "needs KVM (the guest runs under tcg)"),
        ({"hosts": 2}, {"hosts": 1}, "needs 2 hosts (the run has 1)"),
        ({"hosts": 2}, {"hosts": 2}, None),
        (
            {"libvirt": "6.0.0", "kvm": True, "why": "for a reason"},
            {"libvirt": "5.0.0", "accel": "tcg"},
            "needs libvirt >= 6.0.0 (the cell has 5.0.0), KVM (the guest runs under tcg): "
            "for a reason",
        ),
    ],
)
def test_unmet(smoke, needs, facts, expected):
    assert smoke.scenarios.unmet(smoke.scenarios.Needs(**needs), facts) == expected


def test_not_applicable_lists_the_scenarios_a_cell_cannot_run(smoke):
    old = {**FACTS, "libvirt": "5.6.0"}
    names = ["boot", "snapshot-during-restart", "detach-under-load", "live-migration"]
    entries = smoke.main.not_applicable(names, old)
    assert [e["name"] for e in entries] == ["snapshot-during-restart", "live-migration"]
    assert entries[0]["reason"].startswith("needs libvirt >= 5.10.0 (the cell has 5.6.0): ")
    assert entries[1]["reason"] == "needs 2 hosts (the run has 1)"
    assert smoke.main.not_applicable(names[:3], FACTS) == []
    # A scenario without an entry (added elsewhere, not yet declared) runs anywhere.
    assert smoke.main.not_applicable(["no-such-scenario"], {}) == []


def test_a_not_applicable_scenario_is_never_run(smoke):
    rule = StopRule(0.01, 0.25, 0.95, 1, 30).to_json()
    trackers = {name: smoke.main.Tracker(rule) for name in ("boot", "detach-under-load")}
    trackers["detach-under-load"].decision = "not-applicable"
    ran = []

    def run_one(name):
        ran.append(name)
        return {"name": name, "status": "pass", "error": None, "duration_s": 0.1}

    runs = []
    smoke.main.repeat(list(trackers), trackers, 30, run_one, runs)
    assert set(ran) == {"boot"} and len(ran) == 11


# --- the new scenarios against fakes ---------------------------------------------------------


def test_disk_xml_with_serial_and_alias(smoke):
    text = smoke.guest.disk_xml("/x/load.qcow2", "vdb", serial="hvgate-write", alias="ua-a")
    assert "<serial>hvgate-write</serial>" in text
    assert "<alias name='ua-a'/>" in text
    assert "<serial>" not in smoke.guest.disk_xml("/x/d.qcow2", "vdb")


class FakeConn:
    def __init__(self):
        self.dom = None
        self.callbacks = {}

    def isAlive(self):
        return 1

    def lookupByName(self, name):
        return self.dom

    def domainEventRegisterAny(self, dom, event, callback, opaque):
        self.callbacks[len(self.callbacks) + 1] = callback
        return len(self.callbacks)

    def domainEventDeregisterAny(self, callback_id):
        del self.callbacks[callback_id]


class FakeDomain:
    """A running guest whose console gets what the guest's /init would print."""

    def __init__(self, conn, console, unplugs=True):
        self.conn, self.console, self.unplugs = conn, console, unplugs
        self.attached = False

    def print(self, *lines):
        with open(self.console, "a") as handle:
            handle.write("".join(f"{line}\n" for line in lines))

    def isActive(self):
        return True

    def attachDeviceFlags(self, xml, flags):
        assert "<serial>hvgate-write</serial>" in xml
        self.attached = True
        self.print("HVGATE-DISK-ADDED vdb", "HVGATE-DISK-WRITES vdb 1", "HVGATE-DISK-WRITES vdb 17")

    def detachDeviceFlags(self, xml, flags):
        if not self.unplugs:
            return  # the guest never lets go: no event
        self.attached = False
        self.print("HVGATE-DISK-WRITER-STOPPED vdb 23", "HVGATE-DISK-REMOVED vdb")
        for callback in list(self.conn.callbacks.values()):
            callback(self.conn, self, "ua-hvgate-load", None)

    def XMLDesc(self, flags):
        return "<domain><disk file='load.qcow2'/></domain>" if self.attached else "<domain/>"


@pytest.fixture
def session(smoke, tmp_path, monkeypatch):
    monkeypatch.setattr(smoke.scenarios, "path", lambda *names: str(tmp_path.joinpath(*names)))
    commands = []
    monkeypatch.setattr(smoke.scenarios, "run", lambda argv, **kw: commands.append(argv) or "")
    conn = FakeConn()
    session = smoke.scenarios.Session(conn, "tcg", 5.0, job_timeout=1.0)
    conn.dom = FakeDomain(conn, session.console.filename)
    session.boot_id = "abc"
    session.wait_alive = lambda timeout=15.0: 1
    session.commands = commands
    return session


def test_detach_under_load(smoke, session):
    details = smoke.scenarios.detach_under_load(session)
    assert details["writes"] == 23
    assert details["detach_s"] >= 0
    assert session.conn.callbacks == {}  # deregistered
    assert any(argv[:2] == ["qemu-img", "check"] for argv in session.commands)
    assert session.boot_id == "abc"


def test_detach_under_load_without_the_event_names_its_timeout(smoke, session):
    session.conn.dom.unplugs = False
    started = time.monotonic()
    with pytest.raises(smoke.guest.ScenarioFailure) as info:
        smoke.scenarios.detach_under_load(session)
    assert time.monotonic() - started >= 1.0
    assert "no device-removed event for vdb within 1 s" in str(info.value)
    assert session.conn.callbacks == {}


class CopyDomain:
    def __init__(self, infos):
        self.infos = list(infos)

    def blockJobInfo(self, disk, flags):
        return self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]


def test_wait_copying_returns_the_progress_of_a_running_copy(smoke):
    dom = CopyDomain([{"cur": 0, "end": 9}, {"cur": 4, "end": 9}])
    assert smoke.scenarios._wait_copying(dom, 1.0) == {"cur": 4, "end": 9}


@pytest.mark.parametrize(
    ("infos", "message"),
    [
        ([{"cur": 9, "end": 9}], "the speed limit did not hold"),
        ([{"cur": 0, "end": 9}, {}], "the block copy ended before it reported progress"),
        ([{"cur": 0, "end": 9}], "the block copy copied nothing within 0 s"),
    ],
)
def test_wait_copying_fails_when_there_is_no_running_copy_to_restart_under(smoke, infos, message):
    with pytest.raises(smoke.guest.ScenarioFailure, match=message):
        smoke.scenarios._wait_copying(CopyDomain(infos), 0.2)


class SavingDomain:
    """Paused (for the save) from `paused_after` seconds on; never, if None."""

    def __init__(self, libvirt, paused_after):
        self.libvirt = libvirt
        self.started = time.monotonic()
        self.paused_after = paused_after

    def state(self):
        elapsed = time.monotonic() - self.started
        if self.paused_after is not None and elapsed >= self.paused_after:
            return [self.libvirt.VIR_DOMAIN_PAUSED, 0]
        return [self.libvirt.VIR_DOMAIN_RUNNING, 0]


def test_wait_saving_sees_the_guest_paused_while_the_call_runs(smoke):
    call = threading.Thread(target=time.sleep, args=(2.0,), daemon=True)
    call.start()
    seen = smoke.scenarios._wait_saving(SavingDomain(smoke.scenarios.libvirt, 0.1), call, 5.0)
    assert 0.1 <= seen < 1.5


def test_wait_saving_gives_up_when_the_call_is_over_first(smoke):
    call = threading.Thread(target=time.sleep, args=(0.1,), daemon=True)
    call.start()
    assert (
        smoke.scenarios._wait_saving(SavingDomain(smoke.scenarios.libvirt, None), call, 5.0) is None
    )


def test_after_a_failure_the_worker_hands_the_next_scenario_a_fresh_guest(smoke):
    calls = []

    class Dom:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

        def isActive(self):
            return True

        def destroy(self):
            calls.append(f"destroy {self._name}")

        def undefineFlags(self, flags):
            calls.append(f"undefine {self._name}")

    class Conn:
        def getLibVersion(self):
            calls.append("getLibVersion")
            return 9000000

        def listAllDomains(self, flags):
            return [Dom("hvgate-guest"), Dom("hvgate-guest-busy-1")]

    class Session:
        boot_id = "abc"
        conn = Conn()

        def reconnect(self):
            calls.append("reconnect")

        def destroy(self):
            calls.append("destroy")

        def replace_guest(self):
            self.boot_id = None

    worker = smoke.worker.Worker("libvirtd", 120.0, None)
    worker.session = Session()
    assert worker.handle({"op": "recover"}) == {}
    assert worker.session.boot_id is None
    # The guests a busy-node run left beside the first go too; the first is the session's.
    assert calls == [
        "reconnect",
        "destroy hvgate-guest-busy-1",
        "undefine hvgate-guest-busy-1",
        "destroy",
        "getLibVersion",
    ]


def test_a_worker_request_that_fails_answers_with_the_error(smoke):
    worker = smoke.worker.Worker("libvirtd", 120.0, None)

    class Session:
        def reconnect(self):
            raise smoke.guest.ScenarioFailure("libvirtd did not accept a connection")

    worker.session = Session()
    assert worker.handle({"op": "recover"}) == {
        "error": "libvirtd did not accept a connection",
        "error_class": "ScenarioFailure",
    }
    worker.session = None  # a bug: no session
    answer = worker.handle({"op": "recover"})
    assert answer["bug"] and answer["error_class"] == "AttributeError"


# --- the verdict, host side ------------------------------------------------------------------


def passing(name):
    return {"name": name, "status": "pass", "error": None, "duration_s": 1.0, "details": {}}


def report(names, not_applicable, runs=3):
    inapplicable = {entry["name"] for entry in not_applicable}
    return {
        "format": 1,
        "libvirt_version": "5.6.0",
        "qemu_version": "4.1.0",
        "accel": "tcg",
        "setup_error": None,
        "versions": {},
        "runs": [[passing(n) for n in names]] * runs,
        "not_applicable": not_applicable,
        # As the runner has it: every scenario it was given, in order.
        "decisions": {
            n: "not-applicable" if n in inapplicable else None
            for n in ("boot", "snapshot-during-restart", "detach-under-load", *names)
            if n in names or n in inapplicable
        },
    }


WHY = "needs libvirt >= 5.10.0 (the cell has 5.6.0): -blockdev"


def test_not_applicable_scenarios_have_no_runs_and_say_why():
    data = report(
        ["boot", "detach-under-load"], [{"name": "snapshot-during-restart", "reason": WHY}]
    )
    verdicts = judge_scenarios(data, SHORT)
    # In the order the runner was given them.
    assert [v.name for v in verdicts] == ["boot", "snapshot-during-restart", "detach-under-load"]
    na = verdicts[1]
    assert na.status is Status.NOT_APPLICABLE
    assert (na.runs, na.failures, na.errors) == (0, 0, 0)
    assert na.failure_rate is None and na.interval is None and na.messages == []
    assert na.decision == f"not applicable: {WHY}"


def test_reasons_of_one_scenario_are_joined_and_runs_win():
    entries = [
        {"name": "upgrade-migration", "reason": "from a: not built"},
        {"name": "upgrade-migration", "reason": "from b: not built"},
        {"name": "boot", "reason": "ignored: it ran"},
    ]
    verdicts = {v.name: v for v in judge_scenarios(report(["boot"], entries), SHORT)}
    assert verdicts["boot"].status is Status.SAFE
    assert verdicts["upgrade-migration"].decision == (
        "not applicable: from a: not built; from b: not built"
    )


def test_not_applicable_never_makes_a_cell_worse():
    assert worst([Status.SAFE, Status.NOT_APPLICABLE]) is Status.SAFE
    assert worst([Status.FLAKY, Status.NOT_APPLICABLE]) is Status.FLAKY
    assert worst([Status.NOT_APPLICABLE]) is Status.NOT_APPLICABLE


@pytest.fixture
def cell(cell_by_id):
    return cell_by_id["debian-12-release"]


BUILT = BuildResult("debian-12-release", "built", "hvgate/cell:x", {}, seconds=1.0)


def test_a_cell_with_a_not_applicable_scenario_is_safe_without_a_reason(cell):
    data = report(
        ["boot", "detach-under-load"], [{"name": "snapshot-during-restart", "reason": WHY}]
    )
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, data, rule=SHORT), {})
    assert verdict.status is Status.SAFE
    assert verdict.reason is None
    assert Status.NOT_APPLICABLE in [s.status for s in verdict.scenarios]


def test_a_cell_of_only_not_applicable_scenarios_says_why(cell):
    data = report([], [{"name": "snapshot-during-restart", "reason": WHY}], runs=0)
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, data, rule=SHORT), {})
    assert verdict.status is Status.NOT_APPLICABLE
    assert verdict.reason == f"snapshot-during-restart: not applicable: {WHY}"


def test_a_failing_cell_names_its_failures_only(cell):
    data = report(["boot"], [{"name": "snapshot-during-restart", "reason": WHY}])
    data["runs"] = [[{**passing("boot"), "status": "fail", "error": "no heartbeat"}]] * 3
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, data, rule=SHORT), {})
    assert verdict.status is Status.BROKEN
    assert verdict.reason == "boot: no heartbeat"


def run_of(*statuses):
    cells = [
        CellResult(f"c{i}", "debian", "12", "bookworm", "release", status)
        for i, status in enumerate(statuses)
    ]
    return RunResult("r", "s", "f", {}, cells)


def test_not_applicable_is_not_a_failure_of_the_run():
    check_outcome(run_of(Status.SAFE, Status.NOT_APPLICABLE))  # exit 0: raises nothing
    with pytest.raises(UnsafeCells):
        check_outcome(run_of(Status.NOT_APPLICABLE, Status.FLAKY))


def test_not_applicable_survives_the_json_document():
    data = report(["boot"], [{"name": "detach-under-load", "reason": "needs KVM"}])
    scenarios = judge_scenarios(data, SHORT)
    cell = CellResult("c", "debian", "12", "bookworm", "release", Status.SAFE, scenarios=scenarios)
    again = RunResult.from_json(RunResult("r", "s", "f", {}, [cell]).to_json())
    (na,) = [s for s in again.cells[0].scenarios if s.name == "detach-under-load"]
    assert na.status is Status.NOT_APPLICABLE and na.decision == "not applicable: needs KVM"
