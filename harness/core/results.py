"""The one Status enum, the result types every output format is rendered from (via their JSON),
and what the build and smoke stages hand to judge: the smoke runner's report, parsed on the host
into its typed shape (SmokeReport) and checked there."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

# typing's own on Python 3.11+; pydantic reads TypedDicts from here before 3.12.
from typing_extensions import NotRequired, Required, TypedDict

from .stats import StopRule

FORMAT = 1


# A status is its own string in JSON, f-strings and comparisons (what enum.StrEnum, from Python
# 3.11, does). No docstring: the results schema would carry it.
class Status(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)

    # The first three are decisions of the sequential test in harness/core/stats.py.
    SAFE = "safe"  # the failure rate is at most the policy's safe rate
    FLAKY = "flaky"  # it fails sometimes: neither safe nor broken
    BROKEN = "broken"  # it (almost) never passes
    INCONCLUSIVE = "inconclusive"  # no decision within max_runs, or not run to the end
    UNAVAILABLE = "unavailable"  # cannot be built or reached here; says why
    ERROR = "error"  # the tool itself failed; never counted against libvirt or QEMU
    # A scenario the cell cannot run (too old a libvirt, no KVM, ...); says why. Not a failure:
    # a cell of only such scenarios has this status, and one with others their worst.
    NOT_APPLICABLE = "not-applicable"


# Worst first: a cell's status is the worst of its scenarios'.
SEVERITY = [
    Status.ERROR,
    Status.BROKEN,
    Status.FLAKY,
    Status.INCONCLUSIVE,
    Status.UNAVAILABLE,
    Status.SAFE,
    Status.NOT_APPLICABLE,
]


def worst(statuses: list[Status]) -> Status:
    return min(statuses, key=SEVERITY.index) if statuses else Status.INCONCLUSIVE


@dataclass(frozen=True)
class BuildResult:
    cell_id: str
    status: str  # built | cached | failed | unavailable
    image: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str | None = None
    log: str | None = None
    log_tail: tuple[str, ...] = ()
    size_bytes: int | None = None
    # Each installed package whose version no suite of the base serves: {package, version,
    # suites}; None when the image did not record them.
    origins: list[dict[str, Any]] | None = None
    # The digest of every installed package at its version; None for an image built before
    # images recorded it (its runs then pool with nothing).
    packages: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached")


# --- the smoke runner's report (harness/smoke/__main__.py prints it) ------------------------------

REPORT_FORMAT = 1  # the runner's FORMAT
# One scenario in one repetition: passed, failed (libvirt, QEMU or the guest), the runner's own
# error, or not run (an earlier failure broke what it needs).
RUN_STATUSES = ("pass", "fail", "error", "not-run")


class ScenarioRun(TypedDict):
    """One scenario's result in one repetition of the runner (harness/smoke/supervisor.py)."""

    name: str
    status: str  # one of RUN_STATUSES
    # Needed where the judge reads them: duration_s of a run that ran, error of a failed one.
    error: NotRequired[str | None]
    duration_s: NotRequired[float]
    # Reports from before error_class say only which side failed, by the status.
    error_class: NotRequired[str | None]
    details: NotRequired[dict[str, Any]]
    logs: NotRequired[dict[str, Any]]


class NotApplicable(TypedDict):
    name: str
    reason: str


class NotExercised(TypedDict):
    """A part of libvirt's confinement of QEMU the cell leaves out (AppArmor, cgroups, ...), as
    the runner found it there (harness/smoke/confinement.py)."""

    feature: str
    reason: str


class SmokeReport(TypedDict, total=False):
    """The runner's one JSON document. `format` and `runs` are always there; the rest is
    optional, as older runners (or a setup that failed early) leave it out."""

    format: Required[int]
    runs: Required[list[list[ScenarioRun]]]
    started: float
    kernel: str
    guest_kernel: str
    daemon: str
    versions: dict[str, str]
    libvirt_version: str | None
    qemu_version: str | None
    accel: str | None
    accel_reason: str | None
    not_exercised: list[NotExercised] | None
    not_applicable: list[NotApplicable] | None
    setup_error: str | None
    setup_logs: dict[str, Any]
    aborted: str | None  # why the runner ended the cell early
    decisions: dict[str, str | None] | None  # per scenario, in the order it was given them
    duration_s: float


class ReportError(ValueError):
    """A report of another format or shape; its text, one line, says what is wrong and reads
    after "the smoke runner's report"."""


def parse_report(data: object) -> SmokeReport:
    """The runner's decoded JSON as a SmokeReport, checked: its format, and every key the judge
    reads without a default. ReportError names the first thing that is wrong."""
    if not isinstance(data, dict):
        raise ReportError(f"is not a JSON object but {type(data).__name__}")
    if data.get("format") != REPORT_FORMAT:
        raise ReportError(
            f"has format {data.get('format')!r}; this hvgate reads format {REPORT_FORMAT}"
        )
    if not isinstance(data.get("runs"), list):
        raise ReportError("has no list of `runs`")
    for i, repetition in enumerate(data["runs"]):
        if not isinstance(repetition, list):
            raise ReportError(f"runs[{i}]: not a list of scenario results")
        for j, result in enumerate(repetition):
            _check_run(result, f"runs[{i}][{j}]")
    for k, entry in enumerate(data.get("not_applicable") or []):
        if not (isinstance(entry, dict) and {"name", "reason"} <= entry.keys()):
            raise ReportError(f"not_applicable[{k}]: not a name and a reason")
    for k, entry in enumerate(data.get("not_exercised") or []):
        if not (
            isinstance(entry, dict)
            and set(entry) == {"feature", "reason"}
            and all(isinstance(v, str) for v in entry.values())
        ):
            raise ReportError(f"not_exercised[{k}]: not a feature and a reason")
    for key in ("versions", "decisions", "setup_logs"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ReportError(f"{key}: not an object")
    return data  # type: ignore[return-value]  # checked above


def _check_run(result: object, where: str) -> None:
    if not isinstance(result, dict):
        raise ReportError(f"{where}: not an object")
    if not isinstance(result.get("name"), str):
        raise ReportError(f"{where}: no scenario `name`")
    where = f"{where} ({result['name']})"
    status = result.get("status")
    if status not in RUN_STATUSES:
        raise ReportError(f"{where}: status {status!r} is none of {', '.join(RUN_STATUSES)}")
    if status != "not-run" and not isinstance(result.get("duration_s"), int | float):
        raise ReportError(f"{where}: no `duration_s`")
    if status in ("fail", "error") and "error" not in result:
        raise ReportError(f"{where}: no `error`")


@dataclass(frozen=True)
class SmokeRun:
    cell_id: str
    report: SmokeReport | None  # the runner's report, parsed, or None when the tool failed
    error: str | None = None
    log_dir: str | None = None
    rule: StopRule | None = None  # the sequential test the runner was given


@dataclass(frozen=True)
class FailureCause:
    """The failed runs of one scenario that share a fingerprint (harness/fingerprint.py)."""

    fingerprint: str
    # "libvirt-qemu": libvirt, QEMU or the guest misbehaved (a `fail`);
    # "harness": the runner itself failed (an `error`), never counted against them.
    cause: Literal["libvirt-qemu", "harness"]
    # ScenarioFailure, libvirtError, KeyError, ...; "failure" or "error" when the report did
    # not name it (a report from before error_class).
    error_class: str
    message: str  # one of these runs' messages: its first line (a traceback's last)
    count: int


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    status: Status
    runs: int
    failures: int
    errors: int = 0
    durations_s: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    failure_rate: float | None = None  # failures / runs, runner errors left out
    interval: list[float] | None = None  # 95% Wilson interval [low, high] of the failure rate
    decision: str | None = None  # one line: why this status
    # The failed and errored runs grouped by cause: libvirt/QEMU's first, the most frequent first.
    failures_by_cause: list[FailureCause] = field(default_factory=list)
    # Repetitions the scenario could not start in (an earlier failure broke the daemon or
    # guest): no run, no failure, no error; left out of runs and of the sequential test.
    not_run: int = 0
    not_run_reasons: list[str] = field(default_factory=list)
    # This run's outcomes in order, one letter each: P passed, F failed (errors and not-run
    # repetitions left out); the history keeps them, and later runs of the same experiment pool
    # them.
    outcomes: str = ""
    # With earlier runs of the same experiment (the cell's evidence key): {runs, failures} of all
    # of them with this run, {matrix_runs} they came from with this one, and {since}, when the
    # oldest started. status, failure_rate, interval and decision are then of the pooled runs;
    # runs, failures and durations_s stay this run's.
    pooled: dict[str, Any] | None = None


@dataclass(frozen=True)
class CellResult:
    id: str
    distro: str
    release: str
    codename: str
    source: str
    status: Status
    reason: str | None = None
    image: str | None = None
    build: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    libvirt_version: str | None = None
    qemu_version: str | None = None
    accel: str | None = None
    accel_reason: str | None = None
    kernel: str | None = None
    guest_kernel: str | None = None
    daemon: str | None = None
    thresholds: dict[str, bool] = field(default_factory=dict)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    # Stored relative to the results directory (the one holding latest.json and runs/); older
    # documents hold absolute paths, which readers still follow.
    log_dir: str | None = None
    duration_s: float | None = None
    # since, first_seen, last_seen (run ids), previous (status), change: regression | fix | None
    history: dict[str, Any] = field(default_factory=dict)
    # The source whose pocket this cell's versions reach next (a -proposed cell: "updates").
    stages_for: str | None = None
    # The image's installed packages whose versions no suite of the base serves, each
    # {package, version, suites}: what pins must name beyond the release. None: not recorded
    # (results from before hvgate recorded them, or an override template without the step).
    origins: list[dict[str, Any]] | None = None
    # {key, since}: the key names the experiment (every installed package at its version, the
    # runner, the guest, the accelerator); its earlier runs since `since` pool with this one.
    evidence: dict[str, Any] | None = None
    # What of libvirt's confinement of QEMU the cell's container left out, each {feature, reason}
    # as the runner found it there (AppArmor, SELinux, DAC, cgroups, namespaces, ...). None: not
    # recorded (results from before hvgate recorded it, or no report).
    not_exercised: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Prior:
    """What earlier runs of the same experiment (a cell image with the same evidence key) saw."""

    key: str
    since: str | None = None  # when the oldest of them started (ISO 8601); None: there is none
    outcomes: dict[str, str] = field(default_factory=dict)  # scenario -> "PF...", oldest first
    runs: dict[str, int] = field(default_factory=dict)  # scenario -> matrix runs it comes from


@dataclass(frozen=True)
class RunResult:
    run_id: str
    started: str
    finished: str
    host: dict[str, Any]
    cells: list[CellResult]
    format: int = FORMAT
    # What wrote the document: {"version": ..., "commit": ... or None} (publish fills it in).
    hvgate: dict[str, Any] | None = None
    # The matrix's policy the verdicts were judged by (with --runs as `runs`), as matrix.yaml has it.
    policy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> RunResult:
        cells = []
        for cell in data["cells"]:
            scenarios = [
                ScenarioResult(
                    **{
                        **s,
                        "status": Status(s["status"]),
                        "failures_by_cause": [
                            FailureCause(**c) for c in s.get("failures_by_cause", [])
                        ],
                    }
                )
                for s in cell.get("scenarios", [])
            ]
            cells.append(
                CellResult(**{**cell, "status": Status(cell["status"]), "scenarios": scenarios})
            )
        return RunResult(**{**data, "cells": cells})


class Found(NamedTuple):
    """What the KVM probe found (harness/run/probe.py): the accel of the run's cells, and why."""

    accel: str  # "kvm" or "tcg"
    reason: str
    # A finding about this host (kept until it reboots), not a failure of the tool or a cut.
    lasting: bool
