"""harness.stages.judge: scenario and cell verdicts from build results and smoke reports."""

from __future__ import annotations

import pytest

from harness.core.fingerprint import fingerprint
from harness.core.model import Threshold
from harness.core.results import (
    BuildResult,
    FailureCause,
    Prior,
    RunResult,
    SmokeRun,
    Status,
    worst,
)
from harness.core.stats import Decision, StopRule
from harness.stages.judge import (
    judge_cell,
    judge_scenarios,
    meets,
    not_run,
    scenario_status,
    version_tuple,
)

# alpha = beta = 0.2, p0 = 0.01, p1 = 0.5: a failure adds ln 50 = 3.91, a pass ln(0.5/0.99) =
# -0.68, the band is +-ln 4 = 1.39: 3 passes accept "safe", a failure at run 1 rejects it, and
# the mirrored test on passes the same. Short enough for hand-made reports.
SHORT = StopRule(0.01, 0.5, 0.8, min_runs=1, max_runs=3)


@pytest.mark.parametrize(
    ("decided", "errors", "expected"),
    [
        ("safe", 0, Status.SAFE),
        ("flaky", 0, Status.FLAKY),
        ("broken", 0, Status.BROKEN),
        (None, 0, Status.INCONCLUSIVE),
        # A runner error is the tool's failure, never counted against libvirt or QEMU ...
        (None, 1, Status.ERROR),
        ("safe", 1, Status.ERROR),
        # ... but real failures next to it still decide.
        ("flaky", 1, Status.FLAKY),
        ("broken", 2, Status.BROKEN),
    ],
)
def test_scenario_status(decided, errors, expected):
    assert scenario_status(Decision(decided, 5, 1), errors) is expected


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1:7.2+dfsg-7", (7, 2)),
        ("9.0.0-4+deb12u2", (9, 0, 0)),
        ("10.0.0", (10, 0, 0)),
        ("8.2.2+ds-0ubuntu1.4", (8, 2, 2)),
        ("9.0.0-4~bpo12+1", (9, 0, 0)),
        ("2:8.0.4", (8, 0, 4)),
        ("", ()),
        ("latest", ()),
    ],
)
def test_version_tuple(version, expected):
    assert version_tuple(version) == expected


MIN = Threshold(libvirt="8.0.0", qemu="6.2.0")
NEXT = Threshold(libvirt="10.0.0", qemu="8.2.2")


@pytest.mark.parametrize(
    ("libvirt", "qemu", "threshold", "expected"),
    [
        ("9.0.0", "7.2.0", MIN, True),
        ("8.0.0", "6.2.0", MIN, True),  # equal is enough
        ("7.10.0", "7.2.0", MIN, False),  # compared as numbers, not as strings
        ("9.0.0", "6.1.9", MIN, False),  # both must meet it
        ("10.0.0", "8.2.2", NEXT, True),
        ("9.10.0", "9.0.0", NEXT, False),
        ("11.0.0", "10.0.0", NEXT, True),
        (None, "7.2.0", MIN, False),
        ("9.0.0", None, MIN, False),
        ("", "", MIN, False),
    ],
)
def test_meets(libvirt, qemu, threshold, expected):
    assert meets(libvirt, qemu, threshold) is expected


def result(name, status, error=None, duration=1.0, console=None, error_class=None):
    entry = {
        "name": name,
        "status": status,
        "error": error,
        "duration_s": duration,
        "details": {"run_of": name},
        "logs": {"console": console or [f"{name} {status}"], "daemon": [], "qemu": []},
    }
    # The runner's reports name the error's class; older ones did not.
    return {**entry, "error_class": error_class} if error_class else entry


REPORT = {
    "format": 1,
    "kernel": "6.1.0-host",
    "guest_kernel": "6.1.0-guest",
    "daemon": "virtqemud",
    "libvirt_version": "9.0.0",
    "qemu_version": "7.2.0",
    "accel": "tcg",
    "accel_reason": "no /dev/kvm in the container",
    "not_exercised": [{"feature": "cgroups", "reason": "qemu.conf cgroup_controllers = [ ]"}],
    "versions": {"libvirt-daemon": "9.0.0-4+deb12u2", "qemu-system-x86": "1:7.2+dfsg-7+deb12u6"},
    "setup_error": None,
    "duration_s": 42.0,
    "runs": [
        [
            result("boot", "pass", duration=2.0),
            result("reboot", "fail", "no heartbeat after reboot", console=["first"]),
            result("teardown", "pass"),
        ],
        [
            result("boot", "pass", duration=4.0),
            result("reboot", "pass"),
            result("teardown", "error", "Traceback: KeyError"),
        ],
        [
            result("boot", "pass", duration=3.0),
            result("reboot", "fail", "no heartbeat after reboot", console=["last"]),
            result("teardown", "pass"),
        ],
    ],
}


def test_judge_scenarios():
    verdicts = judge_scenarios(REPORT, SHORT)
    assert [v.name for v in verdicts] == ["boot", "reboot", "teardown"]
    boot, reboot, teardown = verdicts
    assert boot.status is Status.SAFE
    assert (boot.runs, boot.failures, boot.errors) == (3, 0, 0)
    assert boot.durations_s == [2.0, 4.0, 3.0]
    assert boot.messages == []
    assert boot.details == [{"run_of": "boot"}] * 3
    assert boot.logs["console"] == ["boot pass"]  # no failure: the last run's logs

    assert boot.failure_rate == 0.0
    assert boot.interval == [0.0, 0.5615]  # Wilson, 0 of 3
    assert boot.decision.startswith("SPRT accepted p<=0.01 against p>=0.5 at 0.8 confidence")

    # Fail, pass: "safe" rejected at run 1, "broken" at run 2.
    assert reboot.status is Status.FLAKY
    assert (reboot.runs, reboot.failures, reboot.errors) == (3, 2, 0)
    assert reboot.messages == ["no heartbeat after reboot"]  # once, not once per run
    assert reboot.logs["console"] == ["last"]  # the last failure's logs
    assert reboot.failure_rate == 0.6667
    assert reboot.interval == [0.2076, 0.9386]  # Wilson, 2 of 3, rounded outwards

    # Pass, error, pass: two observations decide nothing, and the runner failed once.
    assert teardown.status is Status.ERROR
    assert (teardown.runs, teardown.failures, teardown.errors) == (3, 0, 1)
    assert teardown.messages == ["Traceback: KeyError"]
    assert teardown.failure_rate == 0.0 and teardown.interval == [0.0, 0.6577]
    assert teardown.decision.startswith("the runner failed in 1 of 3 runs; no decision")

    # A report from before error_class and not-run: the status says which side failed.
    assert boot.failures_by_cause == [] and boot.not_run == 0
    (cause,) = reboot.failures_by_cause
    assert (cause.cause, cause.error_class, cause.count) == ("libvirt-qemu", "failure", 2)
    assert cause.message == "no heartbeat after reboot"
    assert cause.fingerprint == fingerprint("reboot", "failure", "no heartbeat after reboot")
    (cause,) = teardown.failures_by_cause
    assert (cause.cause, cause.error_class, cause.count) == ("harness", "error", 1)


def test_a_scenario_that_only_errs_has_no_rate():
    report = {"runs": [[result("boot", "error", "Traceback")]]}
    (boot,) = judge_scenarios(report, SHORT)
    assert boot.status is Status.ERROR
    assert (boot.failure_rate, boot.interval) == (None, None)


def test_not_run_is_no_run_no_failure_and_no_error():
    """A repetition the scenario could not start in is left out of the counts and of the
    sequential test, and only counted with its reason."""
    broken_daemon = "the daemon did not come back after managed-save failed"
    report = {
        "runs": [
            [result("boot", "pass")],
            [result("boot", "pass")],
            [result("boot", "not-run", broken_daemon, duration=0.0, error_class="RunnerError")],
            [result("boot", "not-run", broken_daemon + "\nTraceback ...", duration=0.0)],
        ]
    }
    (boot,) = judge_scenarios(report, SHORT)
    # Two passes decide nothing under SHORT (three do): counted as passes, they would be safe;
    # counted as errors, it would be an error.
    assert boot.status is Status.INCONCLUSIVE
    assert (boot.runs, boot.failures, boot.errors, boot.not_run) == (2, 0, 0, 2)
    assert boot.not_run_reasons == [broken_daemon]
    assert boot.durations_s == [1.0, 1.0] and len(boot.details) == 2
    assert boot.failure_rate == 0.0 and boot.interval == [0.0, 0.6577]  # 0 of 2
    assert boot.failures_by_cause == [] and boot.messages == []
    assert boot.decision == (
        "no decision, stopped before max_runs=3: 0 of 2 runs failed; needs at least 1 more run,"
        " all passing, to be safe; not run in 2 repetitions"
    )
    # The walk sees the observed runs only.
    assert SHORT.walk([False, False]).status is None


def test_a_scenario_that_never_started_has_no_rate():
    report = {"runs": [[result("reboot", "not-run", "the guest is gone")]]}
    (reboot,) = judge_scenarios(report, SHORT)
    assert reboot.status is Status.INCONCLUSIVE
    assert (reboot.runs, reboot.not_run, reboot.failure_rate, reboot.interval) == (0, 1, None, None)
    assert reboot.decision.endswith("not run in 1 repetition")


def test_failures_grouped_by_cause_and_side():
    """Failures against libvirt/QEMU apart from the harness's own errors, each cause once with
    its count, whatever numbers its messages carried."""
    hang = "no heartbeat after #{} of boot {} within 30 s"
    report = {
        "runs": [
            [result("reboot", "fail", hang.format(12, "6af79a4a"), error_class="ScenarioFailure")],
            [
                result(
                    "reboot",
                    "error",
                    "Traceback (most recent call last):\n  x\nKeyError: 'a'",
                    error_class="KeyError",
                )
            ],
            [
                result(
                    "reboot",
                    "fail",
                    "the domain is paused, expected running",
                    error_class="ScenarioFailure",
                )
            ],
            [result("reboot", "fail", hang.format(3, "1234abcd"), error_class="ScenarioFailure")],
            [result("reboot", "pass")],
            [
                result(
                    "reboot",
                    "error",
                    "Traceback (most recent call last):\n  y\nKeyError: 'a'",
                    error_class="KeyError",
                )
            ],
        ]
    }
    rule = StopRule(0.01, 0.5, 0.8, min_runs=1, max_runs=10)
    (reboot,) = judge_scenarios(report, rule)
    assert (reboot.runs, reboot.failures, reboot.errors) == (6, 3, 2)
    assert [(c.cause, c.error_class, c.count, c.message) for c in reboot.failures_by_cause] == [
        # libvirt/QEMU's first, the most frequent first, the first example kept.
        ("libvirt-qemu", "ScenarioFailure", 2, hang.format(12, "6af79a4a")),
        ("libvirt-qemu", "ScenarioFailure", 1, "the domain is paused, expected running"),
        ("harness", "KeyError", 2, "KeyError: 'a'"),
    ]
    first, _, error = reboot.failures_by_cause
    assert first.fingerprint == fingerprint("reboot", "ScenarioFailure", hang.format(1, "243"))
    assert error.fingerprint == fingerprint("reboot", "KeyError", "KeyError: 'a'")
    # Every failed run is in exactly one cause.
    assert sum(c.count for c in reboot.failures_by_cause) == reboot.failures + reboot.errors


def test_causes_survive_the_json_round_trip(cell, thresholds):
    report = {
        **REPORT,
        "runs": [
            [result("boot", "fail", "boom 1", error_class="libvirtError")],
            [result("boot", "not-run", "daemon gone")],
        ],
    }
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report, rule=SHORT), thresholds)
    assert verdict.reason == "boot: boom 1"
    run = RunResult("r", "s", "f", {}, [verdict])
    again = RunResult.from_json(run.to_json())
    assert again == run
    (boot,) = again.cells[0].scenarios
    assert isinstance(boot.failures_by_cause[0], FailureCause)
    assert (boot.not_run, boot.not_run_reasons) == (1, ["daemon gone"])


def test_results_from_before_causes_are_read():
    old = RunResult("r", "s", "f", {}, []).to_json()
    old["cells"] = [
        {
            "id": "c",
            "distro": "debian",
            "release": "12",
            "codename": "bookworm",
            "source": "release",
            "status": "flaky",
            "scenarios": [
                {"name": "boot", "status": "flaky", "runs": 4, "failures": 2, "messages": ["x"]}
            ],
        }
    ]
    (boot,) = RunResult.from_json(old).cells[0].scenarios
    assert (boot.failures_by_cause, boot.not_run, boot.not_run_reasons) == ([], 0, [])


def test_judge_scenarios_with_the_default_policy():
    """p0 0.01 against p1 0.1 at 0.95, at most 16 runs a night: a clean scenario needs 31 runs,
    so one night leaves it inconclusive and the second, pooled with the first, decides it."""
    night = {"runs": [[result("boot", "pass")]] * 16}
    flaky = {"runs": [[result("boot", "fail", "no marker")], [result("boot", "pass")]] * 2}
    short = {"runs": [[result("boot", "pass")]] * 10}
    (boot,) = judge_scenarios(night)
    assert (boot.status, boot.runs, boot.interval) == (Status.INCONCLUSIVE, 16, [0.0, 0.1937])
    assert boot.decision == (
        "no decision within max_runs=16: 0 of 16 runs failed;"
        " needs at least 15 more runs, all passing, to be safe"
    )
    first = Prior("k", "2026-11-27T00:00:00+00:00", {"boot": "P" * 16}, {"boot": 1})
    (boot,) = judge_scenarios({"runs": [[result("boot", "pass")]] * 15}, prior=first)
    assert (boot.status, boot.runs, boot.interval) == (Status.SAFE, 15, [0.0, 0.1103])
    assert boot.decision.startswith(
        "SPRT accepted p<=0.01 against p>=0.1 at 0.95 confidence: 0 of 31 runs failed"
    )
    (boot,) = judge_scenarios(flaky)
    assert (boot.status, boot.failure_rate) == (Status.FLAKY, 0.5)
    assert boot.decision == (
        "SPRT rejected both p<=0.01 and p>=0.99 at 0.95 confidence: 2 of 4 runs failed"
    )
    (boot,) = judge_scenarios(short)
    assert boot.status is Status.INCONCLUSIVE
    assert boot.decision == (
        "no decision, stopped before max_runs=16: 0 of 10 runs failed;"
        " needs at least 21 more runs, all passing, to be safe"
    )


def test_judge_scenarios_of_an_empty_report():
    assert judge_scenarios({"runs": []}) == []
    assert judge_scenarios({}) == []


def test_worst():
    assert worst([Status.SAFE, Status.FLAKY, Status.BROKEN]) is Status.BROKEN
    assert worst([Status.SAFE, Status.ERROR, Status.BROKEN]) is Status.ERROR
    assert worst([Status.SAFE]) is Status.SAFE
    assert worst([]) is Status.INCONCLUSIVE


@pytest.fixture
def cell(cell_by_id):
    return cell_by_id["debian-12-release"]


@pytest.fixture
def thresholds():
    return {"min": MIN, "next-min": NEXT}


BUILT = BuildResult(
    cell_id="debian-12-release",
    status="built",
    image="hvgate/cell:debian-12-release-0123456789abcdef",
    versions={"libvirt-daemon": "9.0.0-4", "python3-libvirt": "9.0.0-1"},
    seconds=12.34,
)


def test_failed_build_is_unavailable_with_its_reason(cell, thresholds):
    build = BuildResult(
        cell_id=cell.id,
        status="failed",
        reason="E: Unable to locate package libvirt-daemon",
        log="/logs/build.log",
        log_tail=("line 1", "line 2"),
    )
    verdict = judge_cell(cell, build, None, thresholds)
    assert verdict.status is Status.UNAVAILABLE
    assert verdict.reason == "E: Unable to locate package libvirt-daemon"
    assert verdict.id == cell.id
    assert (verdict.distro, verdict.release, verdict.codename) == ("debian", "12", "bookworm")
    assert verdict.source == "release"
    assert verdict.build["status"] == "failed"
    assert verdict.build["log_tail"] == ["line 1", "line 2"]
    assert verdict.scenarios == []


def test_failed_smoke_run_is_an_error(cell, thresholds):
    smoke = SmokeRun(cell_id=cell.id, report=None, error="the runner printed no JSON")
    verdict = judge_cell(cell, BUILT, smoke, thresholds)
    assert verdict.status is Status.ERROR
    assert verdict.reason == "the runner printed no JSON"
    assert verdict.image == BUILT.image
    assert verdict.scenarios == []


def test_not_smoke_tested_is_inconclusive(cell, thresholds):
    verdict = judge_cell(cell, BUILT, None, thresholds)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason


def test_setup_error_is_an_error(cell, thresholds):
    report = {**REPORT, "runs": [], "setup_error": "virtqemud did not start"}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report), thresholds)
    assert verdict.status is Status.ERROR
    assert verdict.reason == "setup: virtqemud did not start"


def test_a_cell_the_runner_stopped_early_says_why_and_judges_what_ran(cell, thresholds):
    passing = {"name": "boot", "status": "pass", "error": None, "duration_s": 1.0}
    why = "the cell reached its cell_timeout of 3600 s"
    report = {**REPORT, "runs": [[passing]], "aborted": why, "decisions": {"boot": None}}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report, rule=SHORT), thresholds)
    assert verdict.status is Status.INCONCLUSIVE  # one clean run of three: undecided
    assert verdict.reason.startswith(f"stopped early: {why}; boot: ")


def test_scenarios_the_cells_time_ran_out_before_are_undecided_with_the_runs_they_need(
    cell, thresholds
):
    passing = {"name": "boot", "status": "pass", "error": None, "duration_s": 1.0}
    why = "the cell reached its share of the run's run_timeout of 1 s"
    decisions = {"boot": None, "reboot": None, "teardown": None}
    report = {**REPORT, "runs": [[passing]], "aborted": why, "decisions": decisions}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report), thresholds)
    assert [s.name for s in verdict.scenarios] == ["boot", "reboot", "teardown"]
    boot, reboot, teardown = verdict.scenarios
    assert (boot.status, boot.runs) == (Status.INCONCLUSIVE, 1)
    for scenario in (reboot, teardown):
        assert (scenario.status, scenario.runs, scenario.failure_rate) == (
            Status.INCONCLUSIVE,
            0,
            None,
        )
        assert scenario.decision.endswith("needs at least 31 more runs, all passing, to be safe")
    assert verdict.reason.startswith(f"stopped early: {why}; boot: ")


def test_judge_cell_from_a_report(cell, thresholds):
    smoke = SmokeRun(cell.id, REPORT, log_dir="/logs/x", rule=SHORT)
    verdict = judge_cell(cell, BUILT, smoke, thresholds)
    # The worst scenario decides: the runner error on teardown.
    assert verdict.status is Status.ERROR
    assert [s.name for s in verdict.scenarios] == ["boot", "reboot", "teardown"]
    assert "reboot: no heartbeat after reboot" in verdict.reason
    assert verdict.thresholds == {"min": True, "next-min": False}
    # The runner's dpkg versions win over the build's labels; the others stay.
    assert verdict.versions == {
        "libvirt-daemon": "9.0.0-4+deb12u2",
        "qemu-system-x86": "1:7.2+dfsg-7+deb12u6",
        "python3-libvirt": "9.0.0-1",
    }
    assert (verdict.libvirt_version, verdict.qemu_version) == ("9.0.0", "7.2.0")
    assert (verdict.accel, verdict.daemon, verdict.log_dir) == ("tcg", "virtqemud", "/logs/x")
    assert verdict.not_exercised == REPORT["not_exercised"]
    assert verdict.build["seconds"] == 12.3


def test_all_passing_report_is_safe(cell, thresholds):
    report = {**REPORT, "runs": [[result("boot", "pass"), result("reboot", "pass")]] * 3}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report, rule=SHORT), thresholds)
    assert verdict.status is Status.SAFE
    assert verdict.reason is None


def test_too_few_passing_runs_are_inconclusive_with_the_decision_as_reason(cell, thresholds):
    report = {**REPORT, "runs": [[result("boot", "pass"), result("reboot", "pass")]] * 2}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report, rule=SHORT), thresholds)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == (
        "boot: no decision, stopped before max_runs=3: 0 of 2 runs failed; needs at least 1 more"
        " run, all passing, to be safe; reboot: no decision, stopped before max_runs=3: 0 of 2"
        " runs failed; needs at least 1 more run, all passing, to be safe"
    )


def test_report_without_runs_is_inconclusive(cell, thresholds):
    report = {**REPORT, "runs": []}
    verdict = judge_cell(cell, BUILT, SmokeRun(cell.id, report), thresholds)
    assert verdict.status is Status.INCONCLUSIVE


@pytest.mark.parametrize(
    ("cell_id", "identity"),
    [
        ("ubuntu-24.04-cloud-archive-epoxy", ("ubuntu", "24.04", "noble", "cloud-archive-epoxy")),
        # A mixed-source cell is named by its own source, not its components'.
        ("debian-13-release-qemu-backports", ("debian", "13", "trixie", "release")),
    ],
)
def test_cell_not_run_is_inconclusive_and_named(cell_by_id, cell_id, identity):
    verdict = not_run(cell_by_id[cell_id], "interrupted before it ran")
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == "interrupted before it ran"
    assert verdict.id == cell_id
    assert (verdict.distro, verdict.release, verdict.codename, verdict.source) == identity
    assert (verdict.image, verdict.build, verdict.scenarios) == (None, {}, [])
