"""Renders a run's results document (its JSON, as a dict) as Markdown, HTML and JUnit XML.

Pure functions of the JSON: nothing here reads the disk or the in-memory result types.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from ..core.results import SEVERITY

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
    return int(scenario.get("failures", 0)) + int(scenario.get("errors", 0))


def interval_text(scenario: dict[str, Any]) -> str | None:
    """The failure rate's 95% interval as percentages, when the verdict computed one."""
    interval = scenario.get("interval")
    if not interval or len(interval) != 2:
        return None
    low, high = interval
    return f"{low * 100:.0f}–{high * 100:.0f}%"


def scenario_text(scenario: dict[str, Any] | None) -> str:
    """A scenario's table cell: its mark, its runs or failed runs / runs, and the failure
    rate's interval when known."""
    if scenario is None:
        return "–"
    status, runs = scenario.get("status", ""), scenario.get("runs", 0)
    mark = MARKS.get(status, status)
    if failed(scenario):
        text = f"{mark} {failed(scenario)}/{runs} failed"
    else:
        text = f"{mark} {runs} run" + ("" if runs == 1 else "s")
    if scenario.get("errors"):
        text += f" ({scenario['errors']} errors)"
    interval = interval_text(scenario)
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


def scenario_title(scenario: dict[str, Any]) -> str:
    """Everything known about one scenario of one cell, one fact a line (a tooltip, a note)."""
    lines = [f"{scenario['name']}: {scenario.get('status')}"]
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
        rate = f"failure rate {scenario['failure_rate'] * 100:.0f}%"
        interval = interval_text(scenario)
        lines.append(rate + (f", 95% interval {interval}" if interval else ""))
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
            lines.append(f"`{cell['id']}` {cell['status']}: {flat(cell['reason'])}")
        if change(cell):
            since = (cell.get("history") or {}).get("previous")
            lines.append(
                f"`{cell['id']}` {change(cell)}: {since or 'no status'} → {cell['status']}"
            )
        for scenario in cell.get("scenarios", []):
            if scenario.get("status") != "safe" and scenario.get("decision"):
                lines.append(f"`{cell['id']}` {scenario['name']}: {flat(scenario['decision'])}")
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
        what = moved or f"not read: {flat(entry['reason'] or 'no versions')}"
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
                *[scenario_text(by_name.get(n)) for n in names],
                *[threshold_mark(cell, t) for t in thresholds],
            ]
        )
    lines = ["| " + " | ".join(cell_md(v) for v in row) + " |" for row in rows]
    text = f"Run {code_md(data['run_id'])}, {flat(data['started'])} – {flat(data['finished'])}.\n\n"
    if staged := coming_lines(data):
        text += "Coming to your gate (in a staging pocket, not yet in the one gates use):\n\n"
        text += "\n".join(f"- {line}" for line in staged) + "\n\n"
    text += "\n".join(lines) + "\n"
    if names:
        text += (
            "\nEach scenario: its runs when none failed, else failed runs / runs; in brackets the"
            " failure rate's 95% interval when known.\n"
        )
    if thresholds:
        text += (
            "\n"
            + ", ".join(f"`{t}`: {threshold_legend(data, t)}" for t in thresholds)
            + " (≥ meets it, < does not).\n"
        )
    if lines := notes(data):
        text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    return text


def flat(value: object) -> str:
    """Text on one line: a line break in a value never starts a Markdown heading or row."""
    return " ".join(str(value).split())


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


def href(path: str | None, base: Path | None, directory: bool = False) -> str | None:
    """A link to a log from the page written in `base`: relative, so a copied results tree and
    file:// both work."""
    if not path:
        return None
    target = Path(path)
    if target.is_absolute() and base is not None:
        target = Path(os.path.relpath(target, base.resolve()))
    link = target.as_uri() if target.is_absolute() else urllib.parse.quote(target.as_posix())
    return link + "/" if directory and not link.endswith("/") else link


def html(data: dict[str, Any], base: Path | None = None) -> str:
    """The results page: one self-contained file (no network), sortable and filterable.

    `base` is the directory the page is written to; links to logs are relative to it.
    """
    names = scenario_names(data)
    thresholds = threshold_names(data)
    rows = [html_row(cell, names, thresholds, base) for cell in data["cells"]]
    return (
        environment()
        .get_template("results.html.j2")
        .render(
            data=data,
            names=names,
            thresholds=[(t, threshold_legend(data, t)) for t in thresholds],
            rows=rows,
            coming=coming(data),
            counts=counts(data),
            colours=COLOURS,
            marks=MARKS,
        )
    )


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def html_row(
    cell: dict[str, Any], names: list[str], thresholds: list[str], base: Path | None
) -> dict[str, Any]:
    """What the page shows of one cell, every optional field looked up with a default."""
    by_name = {s["name"]: s for s in cell.get("scenarios", [])}
    versions = cell.get("versions") or {}
    build = cell.get("build") or {}
    failing = [
        {
            "name": s["name"],
            "status": s.get("status"),
            "title": scenario_title(s),
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
        "scenarios": [scenario_cell(n, by_name.get(n)) for n in names],
        "thresholds": [(t, threshold_mark(cell, t)) for t in thresholds],
        "logs": href(cell.get("log_dir"), base, directory=True),
        "build_log": href(build.get("log"), base),
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


def scenario_cell(name: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """One scenario's column of a cell's row; a scenario the cell did not run has no result."""
    return {
        "name": name,
        "result": result,
        "text": scenario_text(result),
        "title": scenario_title(result) if result is not None else "not run in this cell",
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
    "inconclusive": "skipped",
    "unavailable": "skipped",
    "not-applicable": "skipped",
}


def junit_counts(tally: Mapping[str, int], seconds: float) -> dict[str, str]:
    """The count attributes of a <testsuite> or <testsuites>."""
    counts = {k: str(tally[k]) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "time": f"{seconds:.3f}"}


def junit(data: dict[str, Any]) -> str:
    """JUnit XML: a test suite per cell, a test case per cell and scenario."""
    names = scenario_names(data) or ["cell"]
    root = ET.Element("testsuites", name="hvgate", timestamp=str(data.get("started", "")))
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
        suite.attrib.update(junit_counts(tally, seconds))
        totals.update(tally)
        totals["seconds"] += round(seconds * 1000)
    root.attrib.update(junit_counts(totals, totals["seconds"] / 1000))
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
        if kind == "failure":  # a cell cannot fail a scenario it did not run
            kind = "error"
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
