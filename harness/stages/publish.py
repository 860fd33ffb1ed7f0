"""Writes a run's results under results/: the JSON document and every format rendered from it
(Markdown, HTML, JUnit XML, the CI step summary); reads stored documents back for `matrix.report`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from ..core import readback
from ..core.errors import ConfigurationError, InputError
from ..core.files import write_atomic
from ..core.paths import ROOT
from ..core.results import FORMAT, RunResult
from ..core.text import clip
from ..core.version import hvgate_version
from .formats import Links, html, junit, markdown, step_summary

__all__ = ["markdown", "publish", "read_results", "report"]

RESULTS_SCHEMA_PATH = ROOT / "results.schema.json"
ADAPTER = pydantic.TypeAdapter(RunResult)
# A results document of 20,000 cells with their logs stays well below this.
MAX_RESULTS_BYTES = 256 * readback.MIB

# Each format's file name after the document's stem: latest.json -> latest.md, latest.html, ...
SUFFIXES = {"markdown": ".md", "html": ".html", "junit": ".junit.xml"}


def formats(
    data: dict[str, Any],
    directory: Path,
    stem: str,
    root: Path | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, tuple[Path, str]]:
    """Every format of one document, rendered before anything is written. `root` is the results
    directory its paths are relative to (default: `directory`); `history`, the entries of its
    history.jsonl, for the page's trend."""
    texts = {
        "markdown": markdown(data),
        "html": html(data, Links(root or directory, directory), history or []),
        "junit": junit(data),
    }
    return {kind: (directory / f"{stem}{SUFFIXES[kind]}", text) for kind, text in texts.items()}


def results_root(path: Path) -> Path:
    """The results directory a stored document's paths are relative to: the one above runs/ for
    runs/RUN_ID/results.json, else the document's own directory."""
    parent = path.parent
    if parent.parent.name == "runs" and path.name == "results.json":
        return parent.parent.parent
    return parent


def relative_to(path: str | None, root: Path) -> str | None:
    """A path as this process sees it (absolute, or relative to the working directory), made
    relative to the results directory, so that a copied or published tree keeps its links."""
    if not path:
        return path
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def portable(data: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """The document with every file path it holds relative to `results_dir`."""
    cells = []
    for cell in data["cells"]:
        cell = {**cell, "log_dir": relative_to(cell.get("log_dir"), results_dir)}
        if isinstance(cell.get("build"), dict) and cell["build"].get("log"):
            cell["build"] = {**cell["build"], "log": relative_to(cell["build"]["log"], results_dir)}
        cells.append(cell)
    return {**data, "cells": cells}


def document(run: RunResult, results_dir: Path) -> str:
    """The results JSON as written: portable paths, and which hvgate wrote it."""
    data = portable(run.to_json(), results_dir)
    data["hvgate"] = data.get("hvgate") or hvgate_version()
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def publish(
    run: RunResult,
    results_dir: Path,
    latest: bool = True,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Writes the run's JSON and its formats under runs/RUN_ID/ and, unless told not to (a run
    cut short: its partial table must not replace the last complete one), as latest.*.

    The run's paths are as this process sees them; the JSON holds them relative to
    `results_dir`. `history`: the directory's history entries, for the page's trend."""
    text = document(run, results_dir)
    data = json.loads(text)  # the formats see exactly what the file holds
    run_dir = results_dir / "runs" / run.run_id
    outputs = {"json": (run_dir / "results.json", text)}
    outputs.update(formats(data, run_dir, "results", results_dir, history))
    if latest:
        outputs["latest_json"] = (results_dir / "latest.json", text)
        latest_formats = formats(data, results_dir, "latest", results_dir, history)
        outputs.update({f"latest_{k}": v for k, v in latest_formats.items()})
    for path, content in outputs.values():
        write_atomic(path, content)
    append_step_summary(data)
    return {kind: path for kind, (path, _) in outputs.items()}


def report(
    run_id: str | None = None,
    input_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    results_dir: Path | None = None,
    history: Callable[[Path], list[dict[str, Any]]] | None = None,
) -> dict[str, Path]:
    """Renders every format again from a stored document, next to it (or in output_dir).

    Nothing runs; the document itself is not rewritten. `results_dir` is needed without
    `input_path`; `history` reads the history entries of a results directory.
    """
    data, path = stored_results(run_id, input_path, results_dir)
    directory = Path(output_dir) if output_dir else path.parent
    root = results_root(path)
    outputs = formats(
        data,
        directory,
        path.stem if path.suffix == ".json" else path.name,
        root,
        history(root) if history else None,
    )
    for target, content in outputs.values():
        write_atomic(target, content)
    append_step_summary(data)
    return {kind: target for kind, (target, _) in outputs.items()}


def stored_results(
    run_id: str | None, input_path: str | Path | None, results_dir: Path | None
) -> tuple[dict[str, Any], Path]:
    """A stored run's document and its path: --run RUN_ID, --input FILE, else latest.json."""
    if run_id and input_path:
        raise ConfigurationError("--run and --input: give one of them")
    if input_path:
        return read_results(Path(input_path)), Path(input_path)
    if results_dir is None:
        raise TypeError("stored_results: a results directory is needed without an input path")
    if run_id:
        if not readback.RUN_ID_RE.fullmatch(run_id):
            raise ConfigurationError(f"--run {clip(run_id)}: not a run id (see results/runs/)")
        path = results_dir / "runs" / run_id / "results.json"
        if not path.is_file():
            raise ConfigurationError(f"--run {run_id}: no results at {path}")
    else:
        path = results_dir / "latest.json"
    return read_results(path), path


def read_results(path: Path) -> dict[str, Any]:
    """A stored results document, checked against this version's format, its types and the
    grammars of its values; InputError (one line naming the file and the field) when it is not
    one."""
    data = readback.read_json(path, "results file", MAX_RESULTS_BYTES)
    if not isinstance(data, dict) or "cells" not in data:
        raise InputError(f"{path}: not an hvgate results document (no `cells`)")
    if data.get("format") != FORMAT:
        raise InputError(
            f"{path}: results format {clip(data.get('format'), 20)}; this hvgate reads format "
            f"{FORMAT}"
        )
    readback.validated(ADAPTER.validate_python, data, path)
    readback.check_results(data, path)
    return data


def append_step_summary(data: dict[str, Any]) -> None:
    """GitHub Actions shows what a step appends to $GITHUB_STEP_SUMMARY on the run's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as summary:
            summary.write(step_summary(data))


def results_schema_text() -> str:
    """The JSON Schema of the results document, generated from the result types."""
    schema = ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hvgate results document"
    schema["description"] = (
        f"A run's results (results/latest.json), format {FORMAT}. "
        "Readers refuse a document of another format."
    )
    schema["properties"]["format"] = {"const": FORMAT, "title": "Format", "type": "integer"}
    schema["required"] = sorted({*schema.get("required", []), "format"})
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_results_schema(check: bool = False) -> bool:
    """Returns whether the committed schema differs from the result types (and writes it
    unless check)."""
    text = results_schema_text()
    current = RESULTS_SCHEMA_PATH.read_text() if RESULTS_SCHEMA_PATH.exists() else ""
    if check:
        return current != text
    return write_atomic(RESULTS_SCHEMA_PATH, text)
