"""Bisection: the first version (or build) at which a scenario goes from safe to failing.

Each step is a one-cell matrix run through the same `matrix.run` a user runs, with its results
kept under results/bisect/ID/STEP/, so every verdict on the way is evidence that can be read
again. The verdict of a step is the scenario's sequential-test verdict under the matrix's policy.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from debian.debian_support import Version

from ..core.errors import ConfigurationError, InputError, UnsafeCells
from ..core.model import COMPONENT_PACKAGES, DEB_VERSION_RE, SCENARIOS, version_slug
from ..core.options import RESULTS_ENV
from ..core.paths import ROOT
from ..core.progress import say
from ..matrix.load import load
from ..matrix.lockfile import lock_path, read_lock
from ..stages.publish import read_results
from ..stages.render import source_suite

FAILING = ("flaky", "broken")


@dataclass(frozen=True)
class Candidate:
    label: str  # a version, or a build directory
    cell: dict[str, Any]  # the matrix.yaml cell that tests it
    sources: dict[str, Any]  # extra sources it needs (a build directory)


@dataclass(frozen=True)
class Step:
    candidate: Candidate
    status: str
    evidence: str
    results: Path


def candidates(
    matrix_path: str,
    base: str,
    component: str,
    versions: str | None,
    builds: str | None,
    scenario: str,
) -> list[Candidate]:
    """What to bisect over, oldest first: the given versions or builds, or every version of the
    component's first package that the base's sources list in the lock."""
    matrix, cells = load(matrix_path)
    if base not in matrix.bases:
        raise ConfigurationError(f"--base {base!r}: not a base of {matrix_path}")
    if scenario not in SCENARIOS:
        raise ConfigurationError(f"--scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if component not in COMPONENT_PACKAGES:
        raise ConfigurationError(f"--component {component!r}: libvirt or qemu")
    package = COMPONENT_PACKAGES[component][0]
    raw = yaml.safe_load(Path(matrix_path).read_text())["cells"]
    specs = {cell.spec_id: raw[i] for i, cell in enumerate(cells)}
    of_base = [c for c in cells if c.base_name == base]
    if not of_base:
        raise ConfigurationError(f"--base {base!r}: no cell of {matrix_path} uses it")
    if builds:
        found = []
        for index, directory in enumerate(p.strip() for p in builds.split(",") if p.strip()):
            path = Path(directory).resolve()
            if not path.is_dir() or not any(path.glob("*.deb")):
                raise ConfigurationError(f"--builds: {directory} is not a directory of .deb files")
            name = f"build{index + 1}"
            cell_spec = {"base": base, "source": name}
            found.append(Candidate(directory, cell_spec, {name: {"debs": str(path)}}))
        return found
    lock = read_lock(lock_path(matrix_path))
    # Where each version is served: a cell of the base whose sources list it.
    served: dict[str, dict[str, Any]] = {}
    for cell in of_base:
        entry = lock.cells.get(cell.spec_id)
        choice = next(c for c in cell.components if c.component == component)
        source = dict(cell.sources)[choice.source_name]
        suite = source_suite(source, cell.base, choice.source_name)
        for listed_suite, listed in (entry.listed.get(package, {}) if entry else {}).items():
            if listed_suite != suite and source.suite is not None:
                continue
            for version in listed:
                served.setdefault(version, specs[cell.spec_id])
    if versions:
        wanted = [v.strip() for v in versions.split(",") if v.strip()]
        for version in wanted:
            if not DEB_VERSION_RE.fullmatch(version):
                raise ConfigurationError(f"--versions: {version!r} is not a Debian version")
        missing = [v for v in wanted if v not in served]
        if missing:
            raise ConfigurationError(
                f"--versions: {', '.join(missing)} not listed for {base} in the lock "
                f"(listed: {', '.join(sorted(served, key=Version)) or 'nothing; run matrix.resolve'})"
            )
    else:
        wanted = sorted(served, key=Version)
    found = []
    for version in wanted:
        spec: dict[str, Any] = {
            k: v for k, v in served[version].items() if k not in ("id", "template")
        }
        given = spec.get(component)
        from_source = given.get("source") if isinstance(given, dict) else None
        spec[component] = {"version": version, **({"source": from_source} if from_source else {})}
        found.append(Candidate(version, spec, {}))
    return found


def step_matrix(matrix_path: str, candidate: Candidate, scenario: str, cell_id: str) -> str:
    """A matrix of one cell, the candidate's, testing one scenario."""
    data = yaml.safe_load(Path(matrix_path).read_text())
    data["sources"] = {**data["sources"], **candidate.sources}
    data["cells"] = [{**candidate.cell, "id": cell_id, "scenarios": [scenario]}]
    data["scenarios"] = [scenario]
    return yaml.safe_dump(data, sort_keys=False)


def run_step(
    matrix_path: str, candidate: Candidate, scenario: str, directory: Path, cell_id: str
) -> Step:
    """One real `matrix.run` of the candidate's cell, its results kept in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    step_path = directory / "matrix.yaml"
    step_path.write_text(step_matrix(matrix_path, candidate, scenario, cell_id))
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "matrix.run", "--matrix", str(step_path)],
        cwd=ROOT,
        env={**os.environ, RESULTS_ENV: str(directory / "results")},
        capture_output=True,
        text=True,
    )
    (directory / "run.log").write_text(done.stdout + done.stderr)
    try:
        data = read_results(directory / "results" / "latest.json")
        (cell,) = data["cells"]
    except (InputError, ValueError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Step(candidate, "error", f"the run failed: {last}", directory)
    found = [s for s in cell.get("scenarios", []) if s["name"] == scenario]
    if not found:
        return Step(candidate, cell["status"], cell.get("reason") or "not run", directory)
    result = found[0]
    interval = result.get("interval")
    evidence = f"{result['failures']}/{result['runs']} runs failed"
    if interval:
        evidence += f", failure rate 95% [{interval[0]:.2f}, {interval[1]:.2f}]"
    versions = cell.get("versions", {})
    if versions:
        evidence += "; " + ", ".join(f"{p} {v}" for p, v in sorted(versions.items()))
    return Step(candidate, result["status"], evidence, directory)


def bisect(
    found: list[Candidate],
    test: Callable[[int, Candidate], Step],
) -> tuple[Step | None, Step | None, list[Step]]:
    """(last safe, first failing, every step): the ends first, then halves between them."""
    steps: list[Step] = []

    def check(index: int) -> Step:
        step = test(index, found[index])
        steps.append(step)
        say("bisect", f"{step.candidate.label}: {step.status} ({step.evidence})")
        if step.status != "safe" and step.status not in FAILING:
            raise UnsafeCells(
                f"cannot decide at {step.candidate.label}: {step.status} ({step.evidence}); "
                f"see {step.results}"
            )
        return step

    if len(found) < 2:
        raise ConfigurationError("bisection needs at least two versions or builds")
    low, high = check(0), check(len(found) - 1)
    if low.status != "safe":
        return None, low, steps
    if high.status == "safe":
        return high, None, steps
    lo, hi = 0, len(found) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        step = check(mid)
        if step.status == "safe":
            lo, low = mid, step
        else:
            hi, high = mid, step
    return low, high, steps


def run(
    matrix_path: str,
    scenario: str,
    base: str,
    component: str = "libvirt",
    versions: str | None = None,
    builds: str | None = None,
    *,
    results_dir: Path,
) -> tuple[Step | None, Step | None, list[Step]]:
    found = candidates(matrix_path, base, component, versions, builds, scenario)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = results_dir / "bisect" / f"{stamp}-{scenario}-{base}"
    say("bisect", f"{len(found)} candidates for {scenario} on {base}: evidence in {root}")

    def test(index: int, candidate: Candidate) -> Step:
        label = version_slug(Path(candidate.label).name)
        cell_id = re.sub(r"[^a-z0-9.-]", "-", f"bisect-{base}-{index + 1}-{label}".lower())[:63]
        return run_step(matrix_path, candidate, scenario, root / f"step-{index + 1}", cell_id)

    return bisect(found, test)
