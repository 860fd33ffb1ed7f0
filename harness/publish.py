"""Writes a run's results under results/: the JSON document, and the Markdown table rendered from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .render import write_atomic
from .results import RunResult

ROOT = Path(__file__).resolve().parent.parent
# HVGATE_RESULTS moves the outputs elsewhere (tests, CI shards).
RESULTS = Path(os.environ.get("HVGATE_RESULTS") or ROOT / "results")


def scenario_cell(scenario: dict[str, Any] | None) -> str:
    if scenario is None:
        return "–"
    runs, failures = scenario["runs"], scenario["failures"] + scenario.get("errors", 0)
    mean = (
        sum(scenario["durations_s"]) / len(scenario["durations_s"])
        if scenario["durations_s"]
        else 0
    )
    mark = "✓" if scenario["status"] == "safe" else "✗"
    return f"{mark} {runs - failures}/{runs} {mean:.1f}s"


def markdown(data: dict[str, Any]) -> str:
    """The safety table of one run, from its JSON document only."""
    names: list[str] = []
    for cell in data["cells"]:
        for scenario in cell.get("scenarios", []):
            if scenario["name"] not in names:
                names.append(scenario["name"])
    threshold_names = sorted({t for cell in data["cells"] for t in cell.get("thresholds", {})})
    header = ["cell", "libvirt", "QEMU", "accel", *names, *threshold_names, "verdict"]
    rows = [header, ["---"] * len(header)]
    for cell in data["cells"]:
        by_name = {s["name"]: s for s in cell.get("scenarios", [])}
        versions = cell.get("versions", {})
        rows.append(
            [
                cell["id"],
                versions.get("libvirt-daemon") or "–",
                versions.get("qemu-system-x86") or "–",
                cell.get("accel") or "–",
                *[scenario_cell(by_name.get(n)) for n in names],
                *[
                    ("≥" if cell["thresholds"][t] else "<")
                    if t in cell.get("thresholds", {})
                    else "–"
                    for t in threshold_names
                ],
                f"**{cell['status']}**",
            ]
        )
    lines = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    notes = [
        f"- `{cell['id']}` {cell['status']}: {cell['reason']}"
        for cell in data["cells"]
        if cell.get("reason")
    ]
    text = (
        f"Run `{data['run_id']}`, {data['started']} – {data['finished']}.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    if threshold_names:
        text += (
            "\n"
            + ", ".join(
                f"`{t}`: ≥ the matrix's {t} libvirt and QEMU versions" for t in threshold_names
            )
            + ".\n"
        )
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text


def publish(run: RunResult, results_dir: Path = RESULTS) -> dict[str, Path]:
    data = run.to_json()
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    run_dir = results_dir / "runs" / run.run_id
    paths = {
        "json": run_dir / "results.json",
        "markdown": run_dir / "results.md",
        "latest_json": results_dir / "latest.json",
        "latest_markdown": results_dir / "latest.md",
    }
    table = markdown(json.loads(text))
    write_atomic(paths["json"], text)
    write_atomic(paths["markdown"], table)
    write_atomic(paths["latest_json"], text)
    write_atomic(paths["latest_markdown"], table)
    return paths
