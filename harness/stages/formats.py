"""Renders a run's results document (its JSON, as a dict) as Markdown, HTML and JUnit XML.

Pure functions of the JSON: nothing here reads the disk or the in-memory result types.
"""

from __future__ import annotations

import io
import math
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from debian.debian_support import Version
from rich.console import Console, Group
from rich.table import Table

from ..core.results import SEVERITY
from ..core.stats import wilson_interval
from ..core.text import one_line

TEMPLATES = Path(__file__).resolve().parent / "templates"

# One mark per status; a status this version does not know is shown by its name.
MARKS = {
    "safe": "✓",
    "flaky": "≈",
    "broken": "✗",
    "error": "!",
    "inconclusive": "?",
    "unavailable": "–",
    "not-applicable": "n/a",
}
# A safe verdict over runs of which some failed: safe by the test, but not clean.
SAFE_FAILED = "safe-failed"
MARKS_SAFE_FAILED = "✓*"
# Background colours of the HTML page (the browser test reads them back from a screenshot).
COLOURS = {
    "safe": "#b7e4c7",
    "flaky": "#ffd166",
    "broken": "#f28482",
    "error": "#c77dff",
    "inconclusive": "#d9d9d9",
    "unavailable": "#a9c6e8",
    "not-applicable": "#f1f1f1",
}
COLOUR_SAFE_FAILED = "#e9f5c4"
ORDER = [str(s) for s in SEVERITY] + ["not-applicable"]
LIBVIRT_PACKAGE = "libvirt-daemon"
QEMU_PACKAGE = "qemu-system-x86"


def rank(status: str | None) -> int:
    """Worst first; statuses this version does not know sort after the known ones."""
    return ORDER.index(status) if status in ORDER else len(ORDER)


def scenario_names(data: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for cell in data["cells"]:
        for scenario in cell.get("scenarios", []):
            if scenario["name"] not in names:
                names.append(scenario["name"])
    return names


def threshold_names(data: dict[str, Any]) -> list[str]:
    named = list(data.get("thresholds") or {})
    found = {t for cell in data["cells"] for t in cell.get("thresholds", {})}
    return named + sorted(found - set(named))


def failed(scenario: dict[str, Any]) -> int:
    """Failed runs and runner errors, of all runs the verdict pooled (this run's with none)."""
    pooled = scenario.get("pooled")
    failures = pooled["failures"] if pooled else scenario.get("failures", 0)
    return int(failures) + int(scenario.get("errors", 0))


def observed(scenario: dict[str, Any]) -> tuple[int, int]:
    """The runs and failures the verdict rests on: pooled with earlier runs of the same
    experiment when it was, else this run's (runner errors left out)."""
    pooled = scenario.get("pooled")
    if pooled:
        return int(pooled["runs"]), int(pooled["failures"])
    runs = int(scenario.get("runs") or 0) - int(scenario.get("errors") or 0)
    return runs, int(scenario.get("failures") or 0)


def pooled_text(scenario: dict[str, Any]) -> str | None:
    """Where a pooled verdict's runs came from, when it pooled."""
    pooled = scenario.get("pooled")
    if not pooled:
        return None
    here = int(scenario.get("runs") or 0) - int(scenario.get("errors") or 0)
    return (
        f"pooled: {pooled['runs']} runs, {pooled['failures']} failed, {here} of them from this"
        f" run, over {pooled['matrix_runs']} runs of the matrix since {pooled['since']}"
    )


def decision_confidence(data: Mapping[str, Any] | None) -> float:
    """The policy's confidence: the sequential test's alpha = beta = 1 - it (0.95 when the
    document does not record its policy, the matrix's default)."""
    policy = (data or {}).get("policy") or {}
    return float(policy.get("confidence") or 0.95)


def decision_interval(
    scenario: dict[str, Any], data: Mapping[str, Any] | None = None
) -> tuple[float, float] | None:
    """The failure rate's interval at the error rates the verdict was decided with: the
    sequential test wrongly accepts p <= p0 or p >= p1 with chance 1 - confidence each, so each
    end of this Wilson interval is a one-sided bound at the policy's confidence (a two-sided
    90% interval at 0.95). None when the verdict computed no failure rate."""
    if scenario.get("failure_rate") is None:
        return None
    runs, failures = observed(scenario)
    if runs <= 0:
        return None
    level = 2 * decision_confidence(data) - 1
    low, high = wilson_interval(failures, runs, level)
    # Rounded outwards, so rounding never narrows it.
    return math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4


def percent(value: float) -> str:
    """A rate as a short percentage: 0.5 digits below 10%, none above."""
    number = value * 100
    if number == 0 or number >= 10 or number == round(number):
        return f"{number:.0f}%"
    return f"{number:.1f}%"


def interval_text(scenario: dict[str, Any], data: Mapping[str, Any] | None = None) -> str | None:
    """The decision's interval of the failure rate (see decision_interval), when known."""
    interval = decision_interval(scenario, data)
    if interval is None:
        return None
    low, high = interval
    return f"{bound(low, up=False)}–{bound(high, up=True)}%"


def bound(value: float, up: bool) -> str:
    """An interval's end as a percentage, rounded away from the inside (never narrower): one
    decimal below 10%, none above."""
    number = value * 100
    places = 1 if 0 < number < 10 else 0
    scaled = number * 10**places
    # Rounding noise (57.50000001) must not push an end out by a whole step.
    rounded = math.ceil(scaled - 1e-6) if up else math.floor(scaled + 1e-6)
    text = f"{rounded / 10**places:.{places}f}"
    return text[:-2] if text.endswith(".0") else text


def interval_legend(data: Mapping[str, Any] | None) -> str:
    level = decision_confidence(data)
    return (
        f"in brackets the failure rate's interval the verdict rests on (each end a one-sided"
        f" {level * 100:.4g}% Wilson bound, the sequential test's error rates)"
    )


def safe_failed(scenario: dict[str, Any] | None) -> bool:
    """A safe verdict over runs of which some failed: not to be read as a clean one."""
    return bool(scenario and scenario.get("status") == "safe" and failed(scenario))


def mark_of(scenario: dict[str, Any]) -> str:
    if safe_failed(scenario):
        return MARKS_SAFE_FAILED
    status = scenario.get("status", "")
    return MARKS.get(status, status)


def scenario_text(scenario: dict[str, Any] | None, data: Mapping[str, Any] | None = None) -> str:
    """A scenario's table cell: its mark (✓* for a safe one with failed runs), its runs or
    failed runs / runs, and the decision's interval when known."""
    if scenario is None:
        return "–"
    runs = observed(scenario)[0] + int(scenario.get("errors") or 0)
    mark = mark_of(scenario)
    text = f"{mark} {failed(scenario)}/{runs}" if failed(scenario) else f"{mark} {runs}"
    if scenario.get("errors"):
        text += f" ({scenario['errors']} err)"
    interval = interval_text(scenario, data)
    return f"{text} [{interval}]" if interval else text


# Who a failed run is counted against (FailureCause.cause in harness/core/results.py).
CAUSES = {"libvirt-qemu": "libvirt/QEMU", "harness": "the harness"}


def example(cause: dict[str, Any]) -> str:
    """A cause's class and example message; a traceback's last line already names its class."""
    name, message = str(cause.get("error_class")), str(cause.get("message") or "")
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


def cause_text(cause: dict[str, Any]) -> str:
    """One failure cause in plain text: 3× libvirt/QEMU [fingerprint] Class: message."""
    who = CAUSES.get(cause.get("cause", ""), str(cause.get("cause")))
    return f"{cause.get('count', 0)}× {who} [{cause.get('fingerprint')}] {example(cause)}"


def not_run_text(scenario: dict[str, Any]) -> str | None:
    """Why a scenario could not start in some repetitions, if it could not."""
    n = int(scenario.get("not_run") or 0)
    if not n:
        return None
    reasons = "; ".join(scenario.get("not_run_reasons") or []) or "no reason given"
    return f"not run in {n} repetition{'' if n == 1 else 's'}: {reasons}"


def failure_summary(cell: dict[str, Any], code: Callable[[object], str] = str) -> str | None:
    """One line per cell: how many failed runs count against libvirt/QEMU and how many were the
    harness's own, with their fingerprints (each through `code`, the format's escape), and the
    repetitions not run; None if none."""
    scenarios = cell.get("scenarios") or []
    counted = {
        "libvirt-qemu": sum(int(s.get("failures") or 0) for s in scenarios),
        "harness": sum(int(s.get("errors") or 0) for s in scenarios),
    }
    not_run = sum(int(s.get("not_run") or 0) for s in scenarios)
    if not any(counted.values()) and not not_run:
        return None
    parts = []
    for kind, n in counted.items():
        # Unique, in order; a document from before fingerprints has none.
        prints = list(
            dict.fromkeys(
                code(c.get("fingerprint"))
                for s in scenarios
                for c in s.get("failures_by_cause") or []
                if c.get("cause") == kind
            )
        )
        named = f" (fingerprint{'s' if len(prints) > 1 else ''} {', '.join(prints)})"
        parts.append(f"{n} from {CAUSES[kind]}" + (named if prints else ""))
    text = "failures: " + ", ".join(parts)
    if not_run:
        text += f"; {not_run} repetition{'' if not_run == 1 else 's'} not run"
    return text


def scenario_title(scenario: dict[str, Any], data: Mapping[str, Any] | None = None) -> str:
    """Everything known about one scenario of one cell, one fact a line (a tooltip, a note)."""
    status = str(scenario.get("status"))
    if safe_failed(scenario):
        status += f", with {failed(scenario)} failed run{'' if failed(scenario) == 1 else 's'}"
    lines = [f"{scenario['name']}: {status}"]
    runs = scenario.get("runs", 0)
    lines.append(
        f"{runs} run{'' if runs == 1 else 's'}, {scenario.get('failures', 0)} failed,"
        f" {scenario.get('errors', 0)} errors"
        + (f", {scenario['not_run']} not run" if scenario.get("not_run") else "")
    )
    durations = scenario.get("durations_s") or []
    if durations:
        lines.append(f"mean {sum(durations) / len(durations):.1f} s, max {max(durations):.1f} s")
    if scenario.get("failure_rate") is not None:
        rate = f"failure rate {percent(scenario['failure_rate'])}"
        interval = interval_text(scenario, data)
        level = decision_confidence(data) * 100
        lines.append(rate + (f", {level:.4g}% one-sided bounds {interval}" if interval else ""))
    if pooled_text(scenario):
        lines.append(str(pooled_text(scenario)))
    if scenario.get("decision"):
        lines.append(str(scenario["decision"]))
    causes = scenario.get("failures_by_cause") or []
    lines.extend(cause_text(c) for c in causes)
    if why := not_run_text(scenario):
        lines.append(why)
    # The full messages too (a traceback's every line), but not again the causes' examples.
    shown = {c.get("message") for c in causes}
    lines.extend(m for m in scenario.get("messages") or [] if m not in shown)
    return "\n".join(lines)


def change(cell: dict[str, Any]) -> str | None:
    """'regression' or 'fix' when the history says the cell's status just changed."""
    return (cell.get("history") or {}).get("change")


def verdict_text(cell: dict[str, Any]) -> str:
    text = f"**{cell['status']}**"
    return f"{text} ({change(cell)})" if change(cell) else text


def base_text(cell: dict[str, Any]) -> str:
    return f"{cell.get('distro', '')} {cell.get('release', '')}".strip()


def threshold_legend(data: dict[str, Any], name: str) -> str:
    versions = (data.get("thresholds") or {}).get(name) or {}
    if versions.get("libvirt") and versions.get("qemu"):
        return f"libvirt ≥ {versions['libvirt']} and QEMU ≥ {versions['qemu']}"
    return f"≥ the matrix's {name} libvirt and QEMU versions"


def threshold_mark(cell: dict[str, Any], name: str) -> str:
    thresholds = cell.get("thresholds", {})
    if name not in thresholds:
        return "–"
    return "≥" if thresholds[name] else "<"


def counts(data: dict[str, Any]) -> list[tuple[str, int]]:
    """How many cells have each status, worst first."""
    counted = Counter(cell["status"] for cell in data["cells"])
    return sorted(counted.items(), key=lambda item: (rank(item[0]), item[0]))


def notes(data: dict[str, Any]) -> list[str]:
    """One line per cell with a reason, and per scenario that is not safe and says why."""
    lines = []
    for cell in data["cells"]:
        if cell.get("reason"):
            lines.append(f"`{cell['id']}` {cell['status']}: {one_line(cell['reason'], None)}")
        if change(cell):
            since = (cell.get("history") or {}).get("previous")
            lines.append(
                f"`{cell['id']}` {change(cell)}: {since or 'no status'} → {cell['status']}"
            )
        for scenario in cell.get("scenarios", []):
            if scenario.get("status") != "safe" and scenario.get("decision"):
                lines.append(
                    f"`{cell['id']}` {scenario['name']}: {one_line(scenario['decision'], None)}"
                )
            elif safe_failed(scenario):
                lines.append(
                    f"`{cell['id']}` {scenario['name']}: safe with {failed(scenario)} failed"
                    f" run{'' if failed(scenario) == 1 else 's'}: {one_line(scenario.get('decision') or '', None)}"
                )
        if summary := failure_summary(cell, code_md):
            lines.append(f"`{cell['id']}` {summary}")
        for scenario in cell.get("scenarios", []):
            for cause in scenario.get("failures_by_cause") or []:
                who = CAUSES.get(cause.get("cause", ""), str(cause.get("cause")))
                lines.append(
                    f"`{cell['id']}` {scenario['name']} {code_md(cause.get('fingerprint'))}:"
                    f" {cause.get('count', 0)}× from {who}, e.g. {code_md(example(cause))}"
                )
            if n := int(scenario.get("not_run") or 0):
                reasons = "; ".join(map(code_md, scenario.get("not_run_reasons") or []))
                lines.append(
                    f"`{cell['id']}` {scenario['name']}: not run in {n}"
                    f" repetition{'' if n == 1 else 's'}: {reasons or 'no reason given'}"
                )
    return lines


def not_exercised(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cells that left out the same parts of libvirt's confinement, grouped: each group's
    cell ids, its entries ({feature, reason}) and whether it is every cell that recorded them."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for cell in data["cells"]:
        entries = cell.get("not_exercised")
        if entries:
            key = tuple((str(e.get("feature")), str(e.get("reason"))) for e in entries)
            groups.setdefault(key, []).append(cell["id"])
    return [
        {
            "cells": cells,
            "every": len(groups) == 1,
            "entries": [{"feature": f, "reason": r} for f, r in key],
        }
        for key, cells in groups.items()
    ]


def not_exercised_lines(data: Mapping[str, Any]) -> list[str]:
    lines = []
    for group in not_exercised(data):
        where = (
            "every cell that recorded it"
            if group["every"]
            else ", ".join(code_md(c) for c in group["cells"])
        )
        features = ", ".join(code_md(e["feature"]) for e in group["entries"])
        lines.append(f"not exercised in {where} (the container's limits): {features}")
    return lines


def coming(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What a staging pocket (-proposed) holds that the pocket gates use does not yet: each such
    cell with the versions that differ, its verdict beside the current one, and whether that is
    a regression (safe now, flaky or broken once it lands)."""
    cells = data["cells"]
    by_pocket: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for c in cells:  # the first cell of a pocket: the plain one, before mixed-source cells
        by_pocket.setdefault((c["distro"], c["release"], c.get("source")), c)
    entries = []
    for cell in cells:
        target = by_pocket.get((cell["distro"], cell["release"], cell.get("stages_for")))
        if not cell.get("stages_for") or target is None:
            continue  # nothing to compare with: the run has no cell of the pocket gates use
        now = (target or {}).get("versions", {})
        moved = {
            package: (now.get(package), version)
            for package, version in sorted(cell.get("versions", {}).items())
            if version != now.get(package)
        }
        if not moved and cell.get("versions"):
            continue  # nothing staged for this pocket
        entries.append(
            {
                "cell": cell["id"],
                "target": target["id"] if target else None,
                "pocket": cell["stages_for"],
                "moved": moved,
                "status": cell["status"],
                "reason": cell.get("reason"),
                "target_status": target["status"] if target else None,
                "regression": bool(
                    target and target["status"] == "safe" and cell["status"] in ("flaky", "broken")
                ),
            }
        )
    return entries


def coming_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for entry in coming(data):
        moved = "; ".join(
            f"{package} {before or 'none'} → {after}"
            for package, (before, after) in entry["moved"].items()
        )
        now = f"now {entry['target_status']} in `{entry['target']}`"
        flag = "**REGRESSION** " if entry["regression"] else ""
        what = moved or f"not read: {one_line(entry['reason'] or 'no versions', None)}"
        lines.append(f"{flag}`{entry['cell']}` ({entry['status']}; {now}): {what}")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The safety table of one run, from its JSON document only."""
    names = scenario_names(data)
    thresholds = threshold_names(data)
    header = ["cell", "verdict", "base", "source", "libvirt", "QEMU", "accel", *names, *thresholds]
    rows = [header, ["---"] * len(header)]
    for cell in data["cells"]:
        by_name = {s["name"]: s for s in cell.get("scenarios", [])}
        versions = cell.get("versions", {})
        rows.append(
            [
                cell["id"],
                verdict_text(cell),
                base_text(cell),
                cell.get("source") or "–",
                versions.get(LIBVIRT_PACKAGE) or "–",
                versions.get(QEMU_PACKAGE) or "–",
                cell.get("accel") or "–",
                *[scenario_text(by_name.get(n), data) for n in names],
                *[threshold_mark(cell, t) for t in thresholds],
            ]
        )
    lines = ["| " + " | ".join(cell_md(v) for v in row) + " |" for row in rows]
    text = f"Run {code_md(data['run_id'])}, {one_line(data['started'], None)} – {one_line(data['finished'], None)}"
    text += f"{provenance(data)}.\n\n"
    text += "Recommended per release (the newest safe versions outside a staging pocket):\n\n"
    text += "\n".join(f"- {recommendation_text(r)}" for r in recommendations(data)) + "\n\n"
    if staged := coming_lines(data):
        text += "Coming to your gate (in a staging pocket, not yet in the one gates use):\n\n"
        text += "\n".join(f"- {line}" for line in staged) + "\n\n"
    text += "\n".join(lines) + "\n"
    if names:
        text += (
            "\nEach scenario: its mark (✓* safe, with failed runs), its runs when none failed,"
            f" else failed runs / runs; {interval_legend(data)}.\n"
        )
    if thresholds:
        text += (
            "\n"
            + ", ".join(f"`{t}`: {threshold_legend(data, t)}" for t in thresholds)
            + " (≥ meets it, < does not).\n"
        )
    if lines := notes(data) + tested_as_lines(data) + not_exercised_lines(data):
        text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    return text


def tested_as_lines(data: dict[str, Any]) -> list[str]:
    """A line for each cell judged on another's smoke test (the same experiment)."""
    lines = []
    for cell in data["cells"]:
        evidence = cell.get("evidence") or {}
        if evidence.get("tested_as"):
            lines.append(
                f"{code_md(cell['id'])}: the same experiment as {code_md(evidence['tested_as'])} "
                f"(evidence key {code_md(evidence.get('key'))}: the same packages, built the "
                "same way), not tested again: judged on its smoke test"
            )
    return lines


def cell_md(value: object) -> str:
    """A Markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(str(value).split()).replace("|", "\\|") if value else "–"


def code_md(value: object) -> str:
    """A Markdown code span of any one-line text: fenced by more backticks than it holds."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    # A span that starts or ends with a backtick needs a space inside its fence.
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def step_summary(data: dict[str, Any]) -> str:
    """The Markdown a CI job shows on its summary page."""
    tally = ", ".join(f"{n} {status}" for status, n in counts(data))
    return f"## hvgate: {tally}\n\n{markdown(data)}\n"


def provenance(data: Mapping[str, Any]) -> str:
    """ ", by hvgate VERSION (COMMIT), policy p0 ... p1 ... at ... confidence", as recorded."""
    text = ""
    if made := data.get("hvgate"):
        commit = made.get("commit")
        if commit:
            dirty = " with changes" if commit.endswith("-dirty") else ""
            commit = f" ({commit[:12]}{dirty})"
        text += f", by hvgate {made.get('version')}{commit or ''}"
    if policy := data.get("policy"):
        text += (
            f", policy p0 {policy.get('safe_failure_rate')}, p1"
            f" {policy.get('unsafe_failure_rate')} at {policy.get('confidence')} confidence"
        )
    return text


# --- what to pin per release -----------------------------------------------------------------


def release_of(cell: Mapping[str, Any]) -> str:
    return f"{cell.get('distro', '')} {cell.get('release', '')}".strip()


def pocket_of(cell: Mapping[str, Any]) -> str:
    """The cell's column in the grid: its id after the base (release, backports,
    release-qemu-backports, ...), else its source."""
    prefix = f"{cell.get('distro')}-{cell.get('release')}-"
    cell_id = str(cell["id"])
    return cell_id[len(prefix) :] if cell_id.startswith(prefix) else str(cell.get("source"))


def version_key(cell: Mapping[str, Any]) -> tuple[Version, Version]:
    versions = cell.get("versions") or {}
    return (
        Version(versions.get(LIBVIRT_PACKAGE) or "0"),
        Version(versions.get(QEMU_PACKAGE) or "0"),
    )


def pin_names(cell: Mapping[str, Any]) -> list[str]:
    """The names `hvgate matrix.pin` may have given the cell's files (base and source, and a
    component from another source, as the cell id says)."""
    base = f"{cell.get('distro')}-{cell.get('release')}"
    plain = base if cell.get("source") == cell.get("release") else f"{base}-{cell.get('source')}"
    return list(dict.fromkeys([str(cell["id"]), plain]))


def recommendations(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per distro release, in the document's order: the safe cell with the newest libvirt and
    QEMU that is not a staging pocket (those are "coming to your gate"), or none; and the other
    safe ones."""
    releases: dict[str, list[dict[str, Any]]] = {}
    for cell in data["cells"]:
        releases.setdefault(release_of(cell), []).append(cell)
    found = []
    for release, cells in releases.items():
        safe = [
            c
            for c in cells
            if c["status"] == "safe" and not c.get("stages_for") and (c.get("versions") or {})
        ]
        ranked = sorted(safe, key=version_key, reverse=True)
        unsafe = [c for c in cells if c["status"] in ("flaky", "broken", "inconclusive", "error")]
        found.append(
            {
                "release": release,
                "cell": ranked[0] if ranked else None,
                "others": ranked[1:],
                "unsafe": unsafe,
                "cells": cells,
            }
        )
    return found


def pin_line(cell: Mapping[str, Any]) -> str:
    versions = cell.get("versions") or {}
    return (
        f"libvirt {versions.get(LIBVIRT_PACKAGE) or '?'} / QEMU {versions.get(QEMU_PACKAGE) or '?'}"
        f" from {pocket_of(cell)}"
    )


def recommendation_text(entry: Mapping[str, Any]) -> str:
    cell = entry["cell"]
    if cell is None:
        statuses = ", ".join(f"{c['id']} {c['status']}" for c in entry["cells"])
        return f"**{entry['release']}**: nothing safe yet ({statuses})"
    text = f"**{entry['release']}**: pin {pin_line(cell)} (`{cell['id']}`)"
    if safe_with_failures := [s["name"] for s in cell.get("scenarios", []) if safe_failed(s)]:
        text += f"; safe with failed runs in {', '.join(safe_with_failures)}"
    if entry["unsafe"]:
        text += "; not: " + ", ".join(f"`{c['id']}` {c['status']}" for c in entry["unsafe"])
    return text


# --- links from a page -----------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Links from a page in `page` to the files of the results directory `root`, whose
    document holds paths relative to it (older documents: absolute ones). A file that is not
    there gets no link: the page never points at nothing."""

    root: Path | None = None
    page: Path | None = None

    def target(self, path: str) -> Path | None:
        target = Path(path)
        if not target.is_absolute():
            if self.root is None:
                return None
            target = self.root / target
        return target

    def href(self, path: str | None, directory: bool = False) -> str | None:
        if not path:
            return None
        target = self.target(path)
        if target is None or not target.exists():
            return None
        if self.page is not None:
            link = urllib.parse.quote(
                Path(os.path.relpath(target.resolve(), self.page.resolve())).as_posix()
            )
        else:
            link = target.resolve().as_uri()
        return link + "/" if directory and not link.endswith("/") else link

    def pins(self, data: Mapping[str, Any], cell: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(file name, link) of the cell's pin files under pins/RUN_ID/, where they are."""
        for name in pin_names(cell):
            found = [
                (f"{name}{suffix}", link)
                for suffix in (".pref", ".check", ".json", ".snapshot.list")
                if (link := self.href(f"pins/{data['run_id']}/{name}{suffix}"))
            ]
            if found:
                return found
        return []


# --- the page's charts -----------------------------------------------------------------------

CHART_WIDTH = 1000
LABEL_WIDTH = 420
ROW = 16
LABEL_CHARS = 62
TICKS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def chart_x(rate: float) -> float:
    """A failure rate's x in the chart: a square-root scale, so 1% and 25% both show."""
    return round(
        LABEL_WIDTH + math.sqrt(max(0.0, min(1.0, rate))) * (CHART_WIDTH - LABEL_WIDTH - 20), 1
    )


def interval_chart(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every scenario's decision interval, a row per cell and distinct outcome (scenarios with
    the same runs and failures share a row, named), against the policy's p0 and p1."""
    rows: list[dict[str, Any]] = []
    for cell in data["cells"]:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for scenario in cell.get("scenarios", []):
            interval = decision_interval(scenario, data)
            if interval is None:
                continue
            key = (
                scenario.get("status"),
                safe_failed(scenario),
                failed(scenario),
                observed(scenario)[0],
                interval,
            )
            groups.setdefault(key, []).append(scenario)
        for (status, is_safe_failed, failures, runs, (low, high)), members in groups.items():
            names = [m["name"] for m in members]
            shown = ", ".join(names) if len(names) <= 2 else f"{len(names)} scenarios"
            label = f"{cell['id']}: {shown}"
            if len(label) > LABEL_CHARS:  # the label column holds this many
                label = label[: LABEL_CHARS - 1] + "…"
            rate = failures / runs if runs else 0.0
            rows.append(
                {
                    "y": len(rows) * ROW + 30,
                    "label": label,
                    "title": f"{cell['id']}: {', '.join(names)}: {failures}/{runs} failed,"
                    f" interval {percent(low)}–{percent(high)}, {status}",
                    "status": SAFE_FAILED if is_safe_failed else status,
                    "x1": chart_x(low),
                    "x2": chart_x(high),
                    "xr": chart_x(rate),
                }
            )
    policy = data.get("policy") or {}
    lines = [
        (name, float(policy[key]), chart_x(float(policy[key])))
        for name, key in (("p0", "safe_failure_rate"), ("p1", "unsafe_failure_rate"))
        if policy.get(key) is not None
    ]
    return {
        "rows": rows,
        "height": len(rows) * ROW + 40,
        "width": CHART_WIDTH,
        "label_width": LABEL_WIDTH,
        "ticks": [(percent(t), chart_x(t)) for t in TICKS],
        "lines": [(name, percent(rate), x) for name, rate, x in lines],
    }


TREND_RUNS = 30  # the newest runs a trend shows


def trends(data: Mapping[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: its statuses over the history's runs (up to TREND_RUNS, oldest first), this
    run's last."""
    past: dict[str, list[dict[str, Any]]] = {}
    for entry in history:
        if entry.get("run_id") != data["run_id"] and isinstance(entry.get("cell"), str):
            past.setdefault(entry["cell"], []).append(entry)
    rows = []
    for cell in data["cells"]:
        entries = sorted(
            past.get(cell["id"], []), key=lambda e: (str(e.get("time")), str(e["run_id"]))
        )
        points = [(str(e["run_id"]), str(e.get("status"))) for e in entries]
        points = [*points, (str(data["run_id"]), str(cell["status"]))][-TREND_RUNS:]
        rows.append(
            {
                "cell": cell["id"],
                "points": [
                    {"x": i * 14, "run": run, "status": status}
                    for i, (run, status) in enumerate(points)
                ],
                "since": (cell.get("history") or {}).get("since"),
            }
        )
    return rows


def grid(data: Mapping[str, Any], names: list[str], links: Links) -> dict[str, Any]:
    """Releases by pockets: each cell's verdict, versions, scenarios and evidence."""
    pockets = list(dict.fromkeys(pocket_of(c) for c in data["cells"]))
    releases: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in data["cells"]:
        releases.setdefault(release_of(cell), {})[pocket_of(cell)] = grid_cell(cell, data, links)
    return {"pockets": pockets, "releases": releases}


def grid_cell(cell: dict[str, Any], data: Mapping[str, Any], links: Links) -> dict[str, Any]:
    versions = cell.get("versions") or {}
    scenarios = [
        {
            "name": s["name"],
            "status": SAFE_FAILED if safe_failed(s) else s.get("status"),
            "text": scenario_text(s, data),
            "title": scenario_title(s, data),
        }
        for s in cell.get("scenarios", [])
    ]
    marked = [s["name"] for s in cell.get("scenarios", []) if safe_failed(s)]
    found = [
        ("smoke logs", links.href(cell.get("log_dir"), directory=True)),
        ("build log", links.href((cell.get("build") or {}).get("log"))),
        # The page's "Why" section has the cells with a reason or failed runs.
        ("why", f"#cell-{cell['id']}" if cell.get("reason") or failure_summary(cell) else None),
    ]
    return {
        "cell": cell,
        "libvirt": versions.get(LIBVIRT_PACKAGE),
        "qemu": versions.get(QEMU_PACKAGE),
        "scenarios": scenarios,
        "links": [(text, link) for text, link in found if link],
        "safe_failed": marked,
        "change": change(cell),
        "failures": failure_summary(cell),
    }


def html(
    data: dict[str, Any],
    links: Links | Path | None = None,
    history: list[dict[str, Any]] | None = None,
) -> str:
    """The results page: one self-contained file (no network): what to pin per release, what
    is coming, the grid of verdicts, the intervals and trends, and the full table.

    `links` says where the page and the results directory are (a Path: both in one);
    `history`, the results directory's history entries, for the trends.
    """
    if not isinstance(links, Links):
        links = Links(links, links)
    names = scenario_names(data)
    thresholds = threshold_names(data)
    rows = [html_row(cell, names, thresholds, links, data) for cell in data["cells"]]
    recommended = [
        {
            **entry,
            "text": pin_line(entry["cell"]) if entry["cell"] else None,
            "pins": links.pins(data, entry["cell"]) if entry["cell"] else [],
            "safe_failed": [s["name"] for s in entry["cell"].get("scenarios", []) if safe_failed(s)]
            if entry["cell"]
            else [],
        }
        for entry in recommendations(data)
    ]
    return (
        environment()
        .get_template("results.html.j2")
        .render(
            data=data,
            provenance=provenance(data),
            names=names,
            thresholds=[(t, threshold_legend(data, t)) for t in thresholds],
            rows=rows,
            recommended=recommended,
            grid=grid(data, names, links),
            chart=interval_chart(data),
            trends=trends(data, history or []),
            coming=coming(data),
            not_exercised=not_exercised(data),
            counts=counts(data),
            colours={**COLOURS, SAFE_FAILED: COLOUR_SAFE_FAILED},
            marks={
                "safe": MARKS["safe"],
                SAFE_FAILED: MARKS_SAFE_FAILED,
                **{k: v for k, v in MARKS.items() if k != "safe"},
            },
            interval_legend=interval_legend(data),
        )
    )


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def html_row(
    cell: dict[str, Any],
    names: list[str],
    thresholds: list[str],
    links: Links,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the page shows of one cell, every optional field looked up with a default."""
    by_name = {s["name"]: s for s in cell.get("scenarios", [])}
    versions = cell.get("versions") or {}
    build = cell.get("build") or {}
    failing = [
        {
            "name": s["name"],
            "status": s.get("status"),
            "title": scenario_title(s, data),
            "logs": [(name, lines) for name, lines in (s.get("logs") or {}).items() if lines],
        }
        for s in cell.get("scenarios", [])
        if s.get("status") != "safe"
    ]
    # The build's own words matter when there is nothing else: no scenario ran.
    build_tail = (
        [ANSI.sub("", line) for line in build.get("log_tail") or []]
        if cell["status"] != "safe" and not cell.get("scenarios")
        else []
    )
    failures = failure_summary(cell)
    return {
        "cell": cell,
        "base": base_text(cell),
        "source": cell.get("source") or "–",
        "libvirt": versions.get(LIBVIRT_PACKAGE),
        "qemu": versions.get(QEMU_PACKAGE),
        "libvirt_version": cell.get("libvirt_version") or "",
        "qemu_version": cell.get("qemu_version") or "",
        "accel": cell.get("accel"),
        "reason": cell.get("reason") or "",
        "rank": rank(cell["status"]),
        "change": change(cell),
        "history": cell.get("history") or {},
        "scenarios": [scenario_cell(n, by_name.get(n), data) for n in names],
        "thresholds": [(t, threshold_mark(cell, t)) for t in thresholds],
        "logs": links.href(cell.get("log_dir"), directory=True),
        "build_log": links.href(build.get("log")),
        "failing": failing,
        "build_tail": build_tail,
        "failures": failures,
        "causes": [
            cause_row(s["name"], c)
            for s in cell.get("scenarios", [])
            for c in s.get("failures_by_cause") or []
        ],
        "not_run": [
            (s["name"], why) for s in cell.get("scenarios", []) if (why := not_run_text(s))
        ],
        "explained": bool(cell.get("reason") or failing or build_tail or change(cell) or failures),
    }


def scenario_cell(
    name: str, result: dict[str, Any] | None, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One scenario's column of a cell's row; a scenario the cell did not run has no result."""
    return {
        "name": name,
        "result": result,
        "status": SAFE_FAILED if safe_failed(result) else (result or {}).get("status"),
        "text": mark_of(result)
        + (
            f" {failed(result)}/{result.get('runs', 0)}"
            if failed(result)
            else f" {result.get('runs', 0)}"
        )
        if result is not None
        else "–",
        "title": scenario_title(result, data) if result is not None else "not run in this cell",
        "rank": rank(result.get("status")) if result is not None else len(ORDER) + 1,
    }


def cause_row(scenario: str, cause: dict[str, Any]) -> dict[str, Any]:
    """One cause of a scenario's failures, as the page lists it."""
    return {
        "scenario": scenario,
        "fingerprint": cause.get("fingerprint"),
        "count": cause.get("count", 0),
        "who": CAUSES.get(cause.get("cause", ""), str(cause.get("cause"))),
        "example": example(cause),
    }


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# Characters XML 1.0 cannot hold (console logs carry terminal escapes).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: object) -> str:
    return NOT_XML.sub("", str(value))


# JUnit: a scenario's status as the element a CI system understands; safe is a pass.
JUNIT_ELEMENTS = {
    "flaky": "failure",
    "broken": "failure",
    "error": "error",
    # Not decided within max_runs: the run's exit code counts it as unsafe, and so does CI.
    "inconclusive": "failure",
    "unavailable": "skipped",
    "not-applicable": "skipped",
}


def junit_counts(
    tally: Mapping[str, int], seconds: float, kinds: tuple[str, ...] = ("skipped",)
) -> dict[str, str]:
    """The count attributes of a <testsuite> (or, without `skipped`, which the schema of
    Jenkins' xunit does not allow there, of <testsuites>)."""
    counts = {k: str(tally[k]) for k in ("tests", "failures", "errors", *kinds)}
    return {**counts, "time": f"{seconds:.3f}"}


def junit(data: dict[str, Any]) -> str:
    """JUnit XML: a test suite per cell, a test case per cell and scenario."""
    names = scenario_names(data) or ["cell"]
    root = ET.Element("testsuites", name="hvgate")
    totals: Counter[str] = Counter()
    for cell in data["cells"]:
        suite = ET.SubElement(root, "testsuite", name=cell["id"], timestamp=str(data["started"]))
        properties = ET.SubElement(suite, "properties")
        facts = {
            "status": cell["status"],
            "base": base_text(cell),
            "source": cell.get("source"),
            "libvirt": (cell.get("versions") or {}).get(LIBVIRT_PACKAGE),
            "qemu": (cell.get("versions") or {}).get(QEMU_PACKAGE),
            "accel": cell.get("accel"),
            "image": cell.get("image"),
            "change": change(cell),
            "failures": failure_summary(cell),
            **{f"threshold.{t}": threshold_mark(cell, t) for t in cell.get("thresholds", {})},
        }
        for key, value in facts.items():
            if value:
                ET.SubElement(properties, "property", name=key, value=xml_text(value))
        by_name = {s["name"]: s for s in cell.get("scenarios", [])}
        tally: Counter[str] = Counter()
        seconds = 0.0
        for name in names:
            scenario = by_name.get(name)
            time = sum(scenario.get("durations_s") or []) if scenario else 0.0
            seconds += time
            case = ET.SubElement(
                suite, "testcase", classname=cell["id"], name=name, time=f"{time:.3f}"
            )
            kind, message, text = junit_outcome(cell, scenario)
            tally["tests"] += 1
            if kind:
                tally[{"failure": "failures", "error": "errors", "skipped": "skipped"}[kind]] += 1
                element = ET.SubElement(case, kind, message=xml_text(message))
                if kind != "skipped":
                    element.set("type", str(scenario["status"] if scenario else cell["status"]))
                if text:
                    element.text = xml_text(text)
            if safe_failed(scenario):
                # Passed, with failed runs: what Surefire calls a flaky test.
                for cause in (scenario or {}).get("failures_by_cause") or []:
                    tag = "flakyError" if cause.get("cause") == "harness" else "flakyFailure"
                    flaky = ET.SubElement(
                        case,
                        tag,
                        type=xml_text(cause.get("error_class") or "failure"),
                        message=xml_text(cause_text(cause)),
                    )
                    flaky.text = xml_text(example(cause))
            if scenario is not None:
                ET.SubElement(case, "system-out").text = xml_text(scenario_title(scenario, data))
        suite.attrib.update(junit_counts(tally, seconds))
        totals.update(tally)
        totals["seconds"] += round(seconds * 1000)
    root.attrib.update(junit_counts(totals, totals["seconds"] / 1000, ()))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def junit_outcome(
    cell: dict[str, Any], scenario: dict[str, Any] | None
) -> tuple[str | None, str, str]:
    """(element or None for a pass, its message, its text) for one cell and scenario."""
    if scenario is None:
        # Not run in this cell: the cell's own status says why (unavailable, error, ...).
        status = cell["status"]
        if status == "safe":
            return "skipped", "not one of this cell's scenarios", ""
        kind = JUNIT_ELEMENTS.get(status, "error")
        if kind == "failure" and status != "inconclusive":
            kind = "error"  # a cell cannot fail a scenario it did not run
        return kind, f"{status}: {cell.get('reason') or 'not run'}", ""
    status = scenario.get("status", "")
    if status == "safe":
        return None, "", ""
    kind = JUNIT_ELEMENTS.get(status, "error")
    title = scenario_title(scenario)
    first = (scenario.get("messages") or [""])[0]
    message = f"{status}: {failed(scenario)} of {scenario.get('runs', 0)} runs failed"
    if status not in JUNIT_ELEMENTS:
        message = f"unknown status {status!r}: {message}"
    if first:
        message += f": {first}"
    logs = scenario.get("logs") or {}
    text = title + "".join(
        f"\n\n--- {name} ---\n" + "\n".join(lines) for name, lines in logs.items() if lines
    )
    return kind, message, text


# --- the terminal ------------------------------------------------------------------------------

TERMINAL_WIDTH = 100
WHY_LIMIT = 150  # a reason longer than this is cut: the files have it whole


def attention(data: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(cell, what, why) for every cell a maintainer should look at, worst first: a regression
    coming to the gate, cells not safe, safe ones with failed runs or a change."""
    found: list[tuple[int, str, str, str]] = []
    for entry in coming(dict(data)):
        if entry["regression"]:
            why = f"now {entry['target_status']} in {entry['target']}"
            found.append((-1, entry["cell"], "coming: regression", why))
    for cell in data["cells"]:
        status, why = cell["status"], cell.get("reason") or ""
        what = f"{status} ({change(cell)})" if change(cell) else status
        if status not in ("safe", "not-applicable"):
            found.append((rank(status), cell["id"], what, why or "no reason recorded"))
        elif flaky := [s for s in cell.get("scenarios", []) if safe_failed(s)]:
            runs = ", ".join(f"{s['name']} {failed(s)}/{s.get('runs', 0)}" for s in flaky)
            found.append(
                (rank(status), cell["id"], f"{MARKS_SAFE_FAILED} {what}", f"failed runs: {runs}")
            )
        elif change(cell):
            found.append((rank(status), cell["id"], what, why))
    found.sort(key=lambda item: item[0])  # stable: the document's order within a status
    return [(cell, what, one_line(why, WHY_LIMIT)) for _, cell, what, why in found]


def summary(data: Mapping[str, Any]) -> Group:
    """The terminal's summary of a run: counts per status, what to pin, the cells that need
    attention and why (files_text says where the files are)."""
    tally = ", ".join(f"{n} {status}" for status, n in counts(dict(data)))
    parts: list[Any] = [
        f"[bold]hvgate[/] run {data['run_id']}: {len(data['cells'])} cells: {tally}",
    ]
    pins = Table(title="what to pin", title_justify="left", expand=False, show_edge=False)
    pins.add_column("release", no_wrap=True)
    pins.add_column("pin (the newest safe versions outside a staging pocket)")
    for entry in recommendations(data):
        cell = entry["cell"]
        pins.add_row(entry["release"], pin_line(cell) if cell else "[bold]nothing safe yet[/]")
    parts.append(pins)
    need = attention(data)
    if need:
        table = Table(title="needs attention", title_justify="left", show_edge=False)
        table.add_column("cell", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("why")
        for cell, what, why in need:
            table.add_row(cell, what, why)
        parts.append(table)
    else:
        parts.append("nothing needs attention: every cell is safe, with no failed run")
    return Group(*parts)


def files_text(files: Mapping[str, object]) -> str:
    """Where the files are, a line each; a path is printed whole, to be copied, however long."""
    return "".join(f"{kind + ':':<9} {path}\n" for kind, path in files.items())


def summary_text(
    data: Mapping[str, Any], files: Mapping[str, object] | None = None, width: int = TERMINAL_WIDTH
) -> str:
    """The summary as plain text `width` columns wide at most."""
    out = io.StringIO()
    console = Console(
        file=out, width=width, color_system=None, force_terminal=False, highlight=False
    )
    console.print(summary(data))
    return out.getvalue() + files_text(files or {})
