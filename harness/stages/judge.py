"""Turns build results and smoke reports into verdicts: per scenario (by the sequential test of
harness/core/stats.py over its runs in order), and per cell (the worst of its scenarios)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from ..core.fingerprint import fingerprint, headline
from ..core.model import Cell, Policy, Threshold
from ..core.results import (
    BuildResult,
    CellResult,
    FailureCause,
    Prior,
    ScenarioResult,
    ScenarioRun,
    SmokeReport,
    SmokeRun,
    Status,
    worst,
)
from ..core.stats import Decision, StopRule, wilson_interval

DEFAULT_RULE = StopRule.from_policy(Policy())
# A runner's status for a repetition a scenario could not start in.
NOT_RUN = "not-run"
# An example message is one line; a long one (a command's stderr) is cut here.
MESSAGE_LIMIT = 300


def scenario_status(decision: Decision, errors: int) -> Status:
    """Failures decide; a runner error (the tool's failure) never counts against libvirt or QEMU,
    but leaves a scenario it kept from a decision in `error`, not `inconclusive`."""
    if decision.status in (Status.FLAKY, Status.BROKEN):
        return Status(decision.status)
    if errors:
        return Status.ERROR
    if decision.status == Status.SAFE:
        return Status.SAFE
    return Status.INCONCLUSIVE


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading dotted numbers of an upstream version: '1:7.2+dfsg-7' -> (7, 2)."""
    upstream = version.split(":", 1)[-1]
    match = re.match(r"[0-9]+(?:\.[0-9]+)*", upstream)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def meets(libvirt: str | None, qemu: str | None, threshold: Threshold) -> bool:
    if not libvirt or not qemu:
        return False
    return version_tuple(libvirt) >= version_tuple(threshold.libvirt) and version_tuple(
        qemu
    ) >= version_tuple(threshold.qemu)


def outward(low: float, high: float) -> list[float]:
    """The interval rounded to 4 places away from its inside, so rounding never narrows it."""
    return [math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4]


def judge_scenarios(
    report: SmokeReport, rule: StopRule = DEFAULT_RULE, prior: Prior | None = None
) -> list[ScenarioResult]:
    """Each scenario's verdict: by the sequential test over its runs in order, after the earlier
    runs of the same experiment when there are any (`prior`)."""
    by_name: dict[str, list[ScenarioRun]] = {}
    # Every scenario asked for, in order: one its earlier runs had decided does not run again
    # and is judged on those alone; one the cell's time ran out before is judged on what it has.
    inapplicable = {entry["name"] for entry in report.get("not_applicable") or []}
    for name, decided in (report.get("decisions") or {}).items():
        if decided != "not-applicable" and name not in inapplicable:
            by_name[name] = []
    for run in report.get("runs", []):
        for result in run:
            by_name.setdefault(result["name"], []).append(result)
    verdicts = []
    for name, results in by_name.items():
        # A repetition the scenario could not start in is no run: not an observation, not an
        # error; only counted, with its reason.
        skipped = [r for r in results if r["status"] == NOT_RUN]
        ran = [r for r in results if r["status"] != NOT_RUN]
        observed = [r["status"] == "fail" for r in ran if r["status"] != "error"]
        errors = len(ran) - len(observed)
        failures = sum(observed)
        failed = [r for r in ran if r["status"] != "pass"]
        outcomes = "".join("F" if f else "P" for f in observed)
        earlier = prior.outcomes.get(name, "") if prior else ""
        pooled = [c == "F" for c in earlier + outcomes]
        # The test over the earlier runs and at most max_runs of this one's.
        test = replace(rule, prior_runs=max(rule.prior_runs, len(earlier))) if earlier else rule
        decision = test.walk(pooled)
        status = scenario_status(decision, errors)
        why = test.describe(decision)
        if prior and earlier:
            why += (
                f" (pooled: {len(outcomes)} from this run, {len(earlier)} from "
                f"{prior.runs.get(name, 0)} earlier since {prior.since})"
            )
        if status == Status.ERROR:
            why = f"the runner failed in {errors} of {len(ran)} runs; {why}"
        if skipped:
            why += f"; not run in {len(skipped)} repetition" + ("s" if len(skipped) > 1 else "")
        low, high = wilson_interval(sum(pooled), len(pooled))
        verdicts.append(
            ScenarioResult(
                name=name,
                status=status,
                runs=len(ran),
                failures=failures,
                errors=errors,
                durations_s=[r["duration_s"] for r in ran],
                messages=sorted({r["error"] for r in failed if r["error"]}),
                details=[r.get("details", {}) for r in ran],
                # The logs of the last failure, else of the last run.
                logs=(failed or ran or results)[-1].get("logs", {}) if results else {},
                failure_rate=round(sum(pooled) / len(pooled), 4) if pooled else None,
                interval=outward(low, high) if pooled else None,
                decision=why,
                failures_by_cause=causes(name, failed),
                not_run=len(skipped),
                not_run_reasons=sorted(
                    {headline(r.get("error")) or "no reason given" for r in skipped}
                ),
                outcomes=outcomes,
                pooled={
                    "runs": len(pooled),
                    "failures": sum(pooled),
                    "matrix_runs": (prior.runs.get(name, 0) if prior else 0) + bool(outcomes),
                    "since": prior.since,
                }
                if prior and earlier and prior.since
                else None,
            )
        )
    verdicts += not_applicable(report, set(by_name))
    # In the order the runner was given the scenarios, where it says.
    order = list(report.get("decisions") or {})
    verdicts.sort(key=lambda v: order.index(v.name) if v.name in order else len(order))
    return verdicts


def causes(name: str, failed: list[ScenarioRun]) -> list[FailureCause]:
    """A scenario's failed and errored runs grouped by fingerprint: libvirt/QEMU's first, then
    the most frequent, then in the order they first happened."""
    groups: dict[str, FailureCause] = {}
    for r in failed:
        harness = r["status"] == "error"
        # Reports from before error_class say only which side failed.
        error_class = r.get("error_class") or ("error" if harness else "failure")
        key = fingerprint(name, error_class, r.get("error"))
        if key in groups:
            groups[key] = replace(groups[key], count=groups[key].count + 1)
        else:
            groups[key] = FailureCause(
                fingerprint=key,
                cause="harness" if harness else "libvirt-qemu",
                error_class=error_class,
                message=headline(r.get("error"))[:MESSAGE_LIMIT],
                count=1,
            )
    first = list(groups)
    return sorted(
        groups.values(),
        key=lambda c: (c.cause == "harness", -c.count, first.index(c.fingerprint)),
    )


def first_cause(scenario: ScenarioResult) -> str | None:
    return scenario.failures_by_cause[0].message if scenario.failures_by_cause else None


def not_applicable(report: SmokeReport, ran: set[str]) -> list[ScenarioResult]:
    """The scenarios the cell could not run, with why: no runs, so no failure rate."""
    reasons: dict[str, list[str]] = {}
    for entry in report.get("not_applicable") or []:
        if entry["name"] not in ran:
            reasons.setdefault(entry["name"], []).append(entry["reason"])
    return [
        ScenarioResult(
            name=name,
            status=Status.NOT_APPLICABLE,
            runs=0,
            failures=0,
            decision="not applicable: " + "; ".join(why),
        )
        for name, why in reasons.items()
    ]


def identity(cell: Cell) -> dict[str, Any]:
    """The fields that name a cell in every result."""
    return dict(
        id=cell.id,
        distro=cell.base.distro,
        release=cell.base.release,
        codename=cell.base.codename,
        source=cell.source_name,
        stages_for=dict(cell.sources)[cell.source_name].stages_for,
    )


def not_run(cell: Cell, reason: str) -> CellResult:
    return CellResult(**identity(cell), status=Status.INCONCLUSIVE, reason=reason)


def judge_cell(
    cell: Cell,
    build: BuildResult,
    smoke: SmokeRun | None,
    thresholds: dict[str, Threshold],
    prior: Prior | None = None,
    tested_as: str | None = None,
) -> CellResult:
    """The cell's verdict; `prior`, the earlier runs of its experiment (harness/run/evidence.py),
    pool with this run's, and names the experiment in the result. tested_as: the cell of this
    run whose smoke test (the same experiment) this verdict is judged on."""
    common: dict[str, Any] = dict(
        **identity(cell),
        image=build.image,
        build={
            "status": build.status,
            "seconds": round(build.seconds, 1),
            "log": build.log,
            "size_bytes": build.size_bytes,
            "log_tail": list(build.log_tail),
        },
        versions=dict(build.versions),
        origins=build.origins,
    )
    if not build.ok:
        return CellResult(**common, status=Status.UNAVAILABLE, reason=build.reason)
    if smoke is None:
        return CellResult(
            **common, status=Status.INCONCLUSIVE, reason="not smoke-tested in this run"
        )
    if smoke.report is None:
        return CellResult(**common, status=Status.ERROR, reason=smoke.error)
    report = smoke.report
    libvirt, qemu = report.get("libvirt_version"), report.get("qemu_version")
    facts: dict[str, Any] = dict(
        versions={**build.versions, **report.get("versions", {})},
        libvirt_version=libvirt,
        qemu_version=qemu,
        accel=report.get("accel"),
        accel_reason=report.get("accel_reason"),
        kernel=report.get("kernel"),
        guest_kernel=report.get("guest_kernel"),
        daemon=report.get("daemon"),
        not_exercised=report.get("not_exercised"),
        thresholds={name: meets(libvirt, qemu, t) for name, t in thresholds.items()}
        if libvirt and qemu
        else {},
        log_dir=smoke.log_dir,
        duration_s=report.get("duration_s"),
        evidence=(
            {"key": prior.key, "since": prior.since}
            | ({"tested_as": tested_as} if tested_as else {})
            if prior
            else None
        ),
    )
    common.update(facts)
    if report.get("setup_error"):
        return CellResult(**common, status=Status.ERROR, reason=f"setup: {report['setup_error']}")
    scenarios = judge_scenarios(report, smoke.rule or DEFAULT_RULE, prior)
    status = worst([s.status for s in scenarios])
    # The most frequent cause says what failed (libvirt/QEMU's before the harness's); without
    # one (an undecided clean scenario) the decision. A not-applicable scenario is no failure:
    # it names the cell's reason only when all are.
    failing = [
        f"{s.name}: {first_cause(s) or s.decision}"
        for s in scenarios
        if s.status not in (Status.SAFE, Status.NOT_APPLICABLE) or status == Status.NOT_APPLICABLE
    ]
    if report.get("aborted"):
        # The runner ended the cell early (it could not renew the daemon, or the cell's time ran
        # out): what ran is judged, and the cell says why the rest did not.
        failing.insert(0, f"stopped early: {report['aborted']}")
    return CellResult(
        **common, status=status, reason="; ".join(failing)[:500] or None, scenarios=scenarios
    )
