"""harness.core.results: the smoke runner's report, parsed on the host into its typed shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from harness.core.results import ReportError, parse_report


def run(name: str = "boot", status: str = "pass", **more: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "error": None, "duration_s": 1.0, **more}


# What the runner prints today (harness/smoke/__main__.py), every key there.
CURRENT = {
    "format": 1,
    "started": 1764300000.0,
    "kernel": "6.1.0-host",
    "versions": {"libvirt-daemon": "9.0.0-4"},
    "runs": [
        [
            run(error_class=None, details={"boot_s": 2.0}, logs={"console": []}),
            run("reboot", "fail", error="no heartbeat", error_class="ScenarioFailure"),
        ],
        [run(), run("reboot", "not-run", error="the daemon is gone", duration_s=0.0)],
    ],
    "not_applicable": [{"name": "live-migration", "reason": "needs a second host"}],
    "setup_error": None,
    "aborted": None,
    "daemon": "virtqemud",
    "guest_kernel": "6.1.0-guest",
    "libvirt_version": "9.0.0",
    "qemu_version": "7.2.0",
    "accel": "tcg",
    "accel_reason": "no /dev/kvm in the container",
    "decisions": {"boot": "safe", "reboot": None},
    "duration_s": 42.0,
}


def test_the_current_report_is_read_as_it_is():
    data = copy.deepcopy(CURRENT)
    assert parse_report(data) == CURRENT


@pytest.mark.parametrize(
    "report",
    [
        # Only what is always there; every other key is optional.
        {"format": 1, "runs": []},
        # Before error_class, details and logs; before not-run.
        {
            "format": 1,
            "runs": [[{"name": "boot", "status": "fail", "error": "x", "duration_s": 1}]],
        },
        # A setup that failed before any run, from an older runner.
        {"format": 1, "runs": [], "setup_error": "virtqemud did not start", "setup_logs": {}},
        # A not-run repetition needs no duration and no error; None for the optional lists.
        {"format": 1, "runs": [[{"name": "boot", "status": "not-run"}]], "not_applicable": None},
    ],
    ids=["minimal", "before-error-class", "setup-error", "not-run"],
)
def test_older_and_shorter_reports_are_read(report):
    assert parse_report(report) == report


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(format=2), "has format 2; this hvgate reads format 1"),
        (lambda r: r.pop("format"), "has format None; this hvgate reads format 1"),
        (lambda r: r.pop("runs"), "has no list of `runs`"),
        (lambda r: r.update(runs={"boot": []}), "has no list of `runs`"),
        (lambda r: r["runs"].append("boot"), "runs[2]: not a list of scenario results"),
        (lambda r: r["runs"][0].append(7), "runs[0][2]: not an object"),
        (lambda r: r["runs"][1][0].pop("name"), "runs[1][0]: no scenario `name`"),
        (
            lambda r: r["runs"][0][0].update(status="skip"),
            "runs[0][0] (boot): status 'skip' is none of pass, fail, error, not-run",
        ),
        (lambda r: r["runs"][0][0].pop("duration_s"), "runs[0][0] (boot): no `duration_s`"),
        (lambda r: r["runs"][0][1].pop("error"), "runs[0][1] (reboot): no `error`"),
        (
            lambda r: r["not_applicable"].append({"name": "x"}),
            "not_applicable[1]: not a name and a reason",
        ),
        (lambda r: r.update(versions=["9.0.0"]), "versions: not an object"),
    ],
)
def test_a_report_of_another_shape_says_what_is_wrong_in_one_line(change, reason):
    report = copy.deepcopy(CURRENT)
    change(report)
    with pytest.raises(ReportError) as info:
        parse_report(report)
    assert str(info.value) == reason


def test_a_report_that_is_no_object():
    with pytest.raises(ReportError, match="^is not a JSON object but list$"):
        parse_report([CURRENT])
