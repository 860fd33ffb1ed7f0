"""Pin files from a run: for each base and source, the newest versions found safe, held at their
exact versions together with what the tested image took from beyond the release's own suites, as
apt preferences, a POSIX shell check and JSON, each headed by its evidence."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from ..core.errors import ConfigurationError
from ..core.files import write_atomic
from ..core.model import (
    NAME_RE,
    ORIGIN_SUITE_RE,
    Cell,
    Matrix,
)
from ..core.results import Status
from ..core.text import one_line
from ..matrix.load import load as load_matrix
from ..stages.formats import interval_text
from ..stages.publish import stored_results
from ..stages.render import source_suite

FORMAT = 2
HOLD = 1001  # above 1000: apt installs the pinned version even when it is a downgrade
BLOCK = -1  # apt never installs the version
# Installed with a recorded package, built from the same source in the same build: same version.
SAME_BUILD = {"libvirt-daemon-driver-qemu": "libvirt-daemon", "qemu-utils": "qemu-system-x86"}
SOURCE_PACKAGES = {
    "libvirt-daemon": "libvirt",
    "python3-libvirt": "libvirt-python",
    "qemu-system-x86": "qemu",
}
# Which versions count as newer when one base and source has several safe cells.
RANK = ("libvirt-daemon", "qemu-system-x86", "python3-libvirt")
BINNMU_RE = re.compile(r"\+b[0-9]+$")  # a binary-only rebuild: not part of the source version
# Grammars of what the files print beyond what the results file's own are (publish.read_results):
# each value is checked before writing.
# Free text on a comment line (a decision: "SPRT accepted p<=0.01 ..."): one line, no quote, no
# shell expansion, nothing apt or sh would read as more than a comment.
TEXT_RE = re.compile(r"[A-Za-z0-9 .,:<>=%()+_~-]{0,300}")
PATH_RE = re.compile(r"[A-Za-z0-9._+~-]{1,255}")  # the results file's name, as the pins quote it
SNAPSHOT_RE = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[A-Za-z0-9._~%+-]+)*")
# Only where a run recorded no origins: the suites of a release a node has without adding any.
OWN_POCKETS = ("", "-updates", "-security")
TARGET = "/etc/apt/preferences.d/00-hvgate-{name}.pref"


@dataclass(frozen=True)
class Pin:
    name: str  # base and source, e.g. debian-12-backports
    cell: dict[str, Any]
    packages: dict[str, str]  # binary package -> exact version: held at HOLD
    sources: dict[str, str]  # source package -> source version: its other binaries held too
    # Where each package of `packages` beyond the tested ones came from: package -> suites.
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)
    suites: tuple[str, ...] = ()  # the suites beyond the base's own that the pins need
    needs: str = ""  # what apt's sources must have for these pins to install
    derived: str = ""  # why there is no origin record, and why none is needed
    blocked: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> versions
    snapshot: str = ""  # an archive as of the run's date, when configured


@dataclass(frozen=True)
class Plan:
    data: dict[str, Any]
    origin: Path
    pins: list[Pin] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line per cell not pinned, and why
    superseded: list[str] = field(default_factory=list)  # safe cells a newer one of theirs beat


@dataclass(frozen=True)
class Sources:
    """matrix.yaml, where it tells a cell's suites; results hold only its main source's name."""

    matrix: Matrix | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    path: str = "matrix.yaml"

    def where(self, cell: dict[str, Any]) -> tuple[str, tuple[str, ...] | None]:
        """The pin's name (base, source, and any component from another source) and the suites
        beyond the base's codename its packages came from (None: the matrix does not say)."""
        base = f"{cell['distro']}-{cell['release']}"
        parts = [base] if cell["source"] == cell["release"] else [base, cell["source"]]
        found = self.cells.get(cell["id"])
        if found:
            parts += [
                f"{c.component}-{c.source_name}"
                for c in found.components
                if c.source_name != found.source_name
            ]
            base_model, sources = found.base, [s for _, s in found.sources]
        elif self.matrix and cell["source"] in self.matrix.sources:
            bases = [
                b
                for b in self.matrix.bases.values()
                if (b.distro, b.release) == (cell["distro"], cell["release"])
            ]
            if not bases:
                return "-".join(parts), None
            base_model, sources = bases[0], [self.matrix.sources[cell["source"]]]
        else:
            return "-".join(parts), None
        suites = tuple(
            dict.fromkeys(
                source_suite(s, base_model)
                for s in sources
                if (s.suite or s.cloud_archive)
                and source_suite(s, base_model) != base_model.codename
            )
        )
        return "-".join(parts), suites

    @staticmethod
    def read(path: str | None) -> Sources:
        """The matrix at path; without one (none given, or no such file) suites go unnamed."""
        if not path or not Path(path).is_file():
            return Sources(path=path or "matrix.yaml")
        matrix, cells = load_matrix(path)
        return Sources(matrix, {c.id: c for c in cells}, path)


def source_version(version: str) -> str:
    return BINNMU_RE.sub("", version)


def _bad(origin: Path, where: str, what: str, value: object) -> ConfigurationError:
    return ConfigurationError(f"{one_line(origin, None)}: {where}: {value!r} is not {what}")


def pin_of(cell: dict[str, Any], origin: Path, sources: Sources) -> Pin | str:
    """The cell's pin, or why it cannot have one (a line for the refusals)."""
    # Every package, version and suite here passed its grammar when the results were read.
    versions = dict(cell["versions"])
    packages = dict(versions)
    for package, recorded in SAME_BUILD.items():
        if recorded in versions:
            packages[package] = versions[recorded]
    source_packages = {
        SOURCE_PACKAGES[p]: source_version(v) for p, v in versions.items() if p in SOURCE_PACKAGES
    }
    name, matrix_suites = sources.where(cell)
    origins: dict[str, tuple[str, ...]] = {}
    derived = ""
    if cell.get("origins") is not None:
        for i, entry in enumerate(cell["origins"]):
            package, version, suites = entry["package"], entry["version"], entry["suites"]
            if packages.get(package, version) != version:
                raise ConfigurationError(
                    f"{one_line(origin, None)}: cell {cell['id']}: origins[{i}]: {package} "
                    f"{version} differs from the version the cell recorded ({packages[package]})"
                )
            packages[package] = version
            origins[package] = tuple(suites)
        suites_needed = tuple(dict.fromkeys(s for o in origins.values() for s in o))
    else:
        codename = cell.get("codename") or ""
        own = {codename + pocket for pocket in OWN_POCKETS}
        if matrix_suites is None or not set(matrix_suites) <= own:
            extra = ", ".join(matrix_suites or ()) or "suites the matrix does not name"
            return (
                f"refused {one_line(cell['id'], 120)} (safe): the run recorded no package origins (results "
                f"from before hvgate recorded them) and the cell took packages from {extra}: "
                "a fresh run of the cell records what to pin"
            )
        suites_needed = ()
        derived = (
            f"The run recorded no package origins; none are needed: the cell added no suite "
            f"beyond {', '.join(sorted(own))}, so every package of its image came from the "
            "release's own suites."
        )
    needs = (
        f"Needs {', '.join(suites_needed)} in apt's sources, besides the release's own"
        if suites_needed
        else "Needs only the release's own apt sources"
    )
    return Pin(
        name,
        cell,
        dict(sorted(packages.items())),
        source_packages,
        dict(sorted(origins.items())),
        suites_needed,
        needs + ": these files choose versions, they add no archive.",
        derived,
    )


def why_not(cell: dict[str, Any]) -> str:
    failed = [
        f"{s['name']} {s.get('failures', 0) + s.get('errors', 0)}/{s.get('runs', 0)} failed"
        for s in cell.get("scenarios", [])
        if s.get("status") != Status.SAFE
    ]
    why = cell.get("reason") or ", ".join(failed) or "no reason recorded"
    return one_line(why, None)


def _blocked(cells: list[dict[str, Any]], pin: Pin) -> dict[str, tuple[str, ...]]:
    """The source versions a flaky or broken cell of the pin's release had and no safe cell of
    that release had: the ones to block."""
    same = [
        c
        for c in cells
        if (c.get("distro"), c.get("release")) == (pin.cell["distro"], pin.cell["release"])
    ]

    def versions(cell: dict[str, Any]) -> set[tuple[str, str]]:
        found = set()
        for package, version in (cell.get("versions") or {}).items():
            if package in SOURCE_PACKAGES and isinstance(version, str):
                found.add((SOURCE_PACKAGES[package], source_version(version)))
        return found

    safe = set().union(*(versions(c) for c in same if c.get("status") == Status.SAFE))
    bad = set().union(
        *(versions(c) for c in same if c.get("status") in (Status.FLAKY, Status.BROKEN))
    )
    blocked: dict[str, list[str]] = {}
    for source, version in sorted(bad - safe):
        blocked.setdefault(source, []).append(version)
    return {s: tuple(v) for s, v in blocked.items()}


def snapshot_of(url: str, started: str) -> str:
    """The snapshot archive's URL as of the run's start: BASE/YYYYMMDDTHHMMSSZ/."""
    if not SNAPSHOT_RE.fullmatch(url.rstrip("/")):
        raise ConfigurationError(f"--snapshot {url!r}: not an http(s) URL of an archive")
    try:
        when = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"the run's start {started!r} is not a time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{url.rstrip('/')}/{stamp}/"


def plan(
    data: dict[str, Any],
    origin: Path,
    sources: Sources | None = None,
    block: bool = False,
    snapshot: str | None = None,
) -> Plan:
    """Chooses, for each base and source, its newest safe cell; every other cell is refused or
    superseded, one line each."""
    sources = sources or Sources()
    refused: list[str] = []
    groups: dict[str, list[Pin]] = {}
    for cell in data["cells"]:
        if cell.get("status") != Status.SAFE:
            refused.append(
                f"refused {one_line(cell['id'], 120)} ({cell.get('status')}): {why_not(cell)}"
            )
        elif not cell.get("versions"):
            refused.append(
                f"refused {one_line(cell['id'], 120)} (safe): the run recorded no package versions"
            )
        else:
            found = pin_of(cell, origin, sources)
            if isinstance(found, str):
                refused.append(found)
            else:
                groups.setdefault(found.name, []).append(found)
    pins, superseded = [], []
    snapshot_url = snapshot_of(snapshot, str(data.get("started"))) if snapshot else ""
    for name, candidates in groups.items():
        ranked = sorted(
            candidates,
            key=lambda p: tuple(Version(p.cell["versions"].get(k, "0")) for k in RANK),
            reverse=True,
        )
        best = ranked[0]
        blocked = _blocked(data["cells"], best) if block else {}
        pins.append(replace(best, blocked=blocked, snapshot=snapshot_url))
        superseded += [
            f"kept {best.cell['id']} over {p.cell['id']} (older versions, same base and source {name})"
            for p in ranked[1:]
        ]
    return Plan(data, origin, pins, refused, superseded)


# --- checking every value a file prints, right before writing ---------------------------------


def check(plan: Plan, command: str) -> None:
    """Every value the pin files print passes the grammar of what it is; ConfigurationError (one
    line naming the file, the field and the value) on the first that does not."""
    origin = plan.origin

    def need(ok: bool, where: str, what: str, value: object) -> None:
        if not ok:
            raise _bad(origin, where, what, value)

    def text(value: object, where: str, what: str = "one line of printable text") -> None:
        need(isinstance(value, str) and bool(TEXT_RE.fullmatch(value)), where, what, value)

    need(
        bool(PATH_RE.fullmatch(origin.name)), "the results file's name", "a plain name", origin.name
    )
    for pin in plan.pins:
        cell = pin.cell
        at = f"cell {cell.get('id')!r}"
        need(bool(NAME_RE.fullmatch(pin.name)), f"{at}: pin name", "a file name", pin.name)
        # The results file's own grammars hold already (publish.read_results); a decision is
        # free text there, and here it goes into comment lines of apt and shell files.
        for i, s in enumerate(cell.get("scenarios", [])):
            if s.get("decision") is not None:
                text(s["decision"], f"{at}: scenarios[{i}].decision")
        # Suites may come from matrix.yaml (results without origins); versions, sources and
        # the snapshot URL passed their grammars already (read_results, snapshot_of).
        for suite in pin.suites:
            need(bool(ORIGIN_SUITE_RE.fullmatch(suite)), f"{at}: suite", "a suite name", suite)


# --- the files -----------------------------------------------------------------------------------


def _interval(scenario: dict[str, Any], data: dict[str, Any]) -> str:
    """The failure rate's interval the verdict rests on, as the reports show it."""
    text = interval_text(scenario, data)
    return f", failure rate {text}" if text else ""


def evidence(pin: Pin, plan: Plan) -> list[str]:
    """The lines every pin file starts with: where the verdict comes from, and what it rests on."""
    data, cell = plan.data, pin.cell
    scenarios = cell.get("scenarios", [])
    runs = sum(s.get("runs", 0) for s in scenarios)
    failures = sum(s.get("failures", 0) + s.get("errors", 0) for s in scenarios)
    lines = [
        f"Evidence: run {data['run_id']} ({data.get('started')} – {data.get('finished')}), {plan.origin.name}",
        f"Cell {one_line(cell['id'], 120)}: {cell['status']}; {len(scenarios)} scenarios, {runs} runs, "
        f"{failures} failures; accel {cell.get('accel') or '?'}",
    ]
    for s in scenarios:
        line = f"  {s['name']}: {s.get('status')}, {s.get('runs', 0)} runs, {s.get('failures', 0) + s.get('errors', 0)} failures{_interval(s, plan.data)}"
        if s.get("decision"):
            line += f"; {s['decision']}"
        lines.append(line)
    return lines


def header(pin: Pin, plan: Plan, what: str, command: str) -> list[str]:
    cell = pin.cell
    lines = [
        f"{what}: libvirt and QEMU as hvgate found them safe on {cell['distro']} {cell['release']} "
        f"({cell.get('codename')}), source {cell['source']}.",
        f"Generated by `{command}`; do not edit.",
        *evidence(pin, plan),
        pin.needs,
    ]
    if pin.derived:
        lines.append(pin.derived)
    if pin.snapshot:
        lines.append(f"Every pinned version stays available in the snapshot archive {pin.snapshot}")
    return lines


def _pattern(version: str) -> str:
    """apt's /regex/ (POSIX extended) of a source version and its "+bN" binary rebuilds."""
    return "^" + re.sub(r"([.+])", r"\\\1", version) + r"(\+b[0-9]+)?$"


def preferences(pin: Pin, plan: Plan, command: str) -> str:
    lines = [f"# {line}" for line in header(pin, plan, "apt preferences", command)]
    lines.append(
        f"# Install: copy to {TARGET.format(name=pin.name)} (it sorts before other files, and apt "
        "takes the first pin that matches a version)."
    )
    stanzas = []
    for package, version in pin.packages.items():
        why = (
            f"from {', '.join(pin.origins[package]) or 'no suite'} in the tested image"
            if package in pin.origins
            else "tested"
        )
        stanzas.append(
            f"Explanation: {package} {why}\n"
            f"Package: {package}\nPin: version {version}\nPin-Priority: {HOLD}\n"
        )
    for source, version in pin.sources.items():
        # The rest of what these sources build (libvirt-clients, qemu-system, ...) follows, so
        # whatever else a job installs matches; a "+bN" binary rebuild of the version counts.
        stanzas.append(
            f"Explanation: every binary package built from {source} {version}\n"
            f"Package: src:{source}\nPin: version /{_pattern(version)}/\nPin-Priority: {HOLD}\n"
        )
    for source, versions in pin.blocked.items():
        for version in versions:
            stanzas.append(
                f"Explanation: {source} {version} was flaky or broken in run {plan.data['run_id']}\n"
                f"Package: src:{source}\nPin: version /{_pattern(version)}/\nPin-Priority: {BLOCK}\n"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(stanzas)


CHECK_BODY = r"""set -u
status=0
fail() {
    echo "hvgate-check: $*" >&2
    status=1
}
installed() {
    dpkg-query -W -f '${db:Status-Abbrev}|${Version}\n' "$1" 2>/dev/null |
        awk -F'|' '$1 ~ /^ii/ {print $2; exit}'
}
served() {
    apt-cache madison "$1" 2>/dev/null |
        awk -F'|' -v want="$2" '{gsub(/ /, "", $2)} $2 == want {found = 1} END {exit !found}'
}
candidate() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n1
}
count=0
while read -r package version; do
    [ -n "$package" ] || continue
    count=$((count + 1))
    now=$(installed "$package")
    if [ -n "$now" ] && [ "$now" != "$version" ]; then
        fail "mismatch: $package is installed at $now, pinned $version"
    fi
    if ! served "$package" "$version"; then
        fail "not served: $package $version is in none of apt's sources$SNAPSHOT_HINT"
    else
        want=$(candidate "$package")
        [ "$want" = "$version" ] ||
            fail "not effective: apt would install $package ${want:-(none)}, pinned $version (another preference outranks these pins)"
    fi
done <<HVGATE_PACKAGES
$PACKAGES
HVGATE_PACKAGES
installed_sources=$(dpkg-query -W -f '${db:Status-Abbrev}|${binary:Package}|${source:Package}|${source:Version}|${Version}\n' 2>/dev/null |
    awk -F'|' '$1 ~ /^ii/ {print $2, $3, $4, $5}')
while read -r source version rule; do
    [ -n "$source" ] || continue
    while read -r binary from from_version binary_version; do
        [ "$from" = "$source" ] || continue
        if [ "$rule" = hold ] && [ "$from_version" != "$version" ]; then
            fail "mismatch: $binary is installed at $binary_version, built from $source $from_version; pinned $source $version"
        elif [ "$rule" = block ] && [ "$from_version" = "$version" ]; then
            fail "blocked: $binary $binary_version is built from $source $version, which run $RUN found flaky or broken"
        fi
    done <<HVGATE_INSTALLED
$installed_sources
HVGATE_INSTALLED
done <<HVGATE_SOURCES
$SOURCES
HVGATE_SOURCES
if [ "$status" = 0 ]; then
    echo "hvgate-check: $NAME: $count pinned packages, each installed at its pinned version or not installed, and served"
fi
exit "$status"
"""


def check_script(pin: Pin, plan: Plan, command: str) -> str:
    """A POSIX shell script (dpkg-query and apt-cache only) that exits 1 naming every installed
    package off its pin, every pinned version apt can no longer get, every pin another
    preference outranks, and every blocked version installed; 0 when there is none."""
    lines = ["#!/bin/sh", *(f"# {line}" for line in header(pin, plan, "check", command))]
    lines.append("# Run after apt installed libvirt and QEMU: exits 1 naming every mismatch.")
    hint = f" (the snapshot archive {pin.snapshot} keeps it)" if pin.snapshot else ""
    # Every value below passed its grammar (check()); none contains a quote or a newline.
    lines += [
        f"NAME='{pin.name}'",
        f"RUN='{plan.data['run_id']}'",
        f"SNAPSHOT_HINT='{hint}'",
        "PACKAGES='" + "\n".join(f"{p} {v}" for p, v in pin.packages.items()) + "'",
        "SOURCES='"
        + "\n".join(
            [f"{s} {v} hold" for s, v in pin.sources.items()]
            + [f"{s} {v} block" for s, vs in pin.blocked.items() for v in vs]
        )
        + "'",
    ]
    return "\n".join(lines) + "\n" + CHECK_BODY


def snapshot_list(pin: Pin, plan: Plan, command: str) -> str:
    """One-line apt sources of the snapshot archive, for the suites the pinned versions came
    from: the release's and those beyond it."""
    cell = pin.cell
    components = "main" if cell["distro"] == "debian" else "main universe"
    suites = dict.fromkeys([cell["codename"], f"{cell['codename']}-updates", *pin.suites])
    lines = [f"# {line}" for line in header(pin, plan, "apt sources", command)]
    lines += [f"deb [check-valid-until=no] {pin.snapshot} {s} {components}" for s in suites]
    return "\n".join(lines) + "\n"


def as_json(pin: Pin, plan: Plan, command: str) -> str:
    cell, data = pin.cell, plan.data
    document = {
        "format": FORMAT,
        "comment": header(pin, plan, "hvgate pins", command),
        "name": pin.name,
        "base": {k: cell.get(k) for k in ("distro", "release", "codename")},
        "source": cell["source"],
        "suites": list(pin.suites),
        "cell": cell["id"],
        "status": cell["status"],
        "packages": pin.packages,
        "origins": {p: list(s) for p, s in pin.origins.items()},
        "source_packages": pin.sources,
        "blocked": {s: list(v) for s, v in pin.blocked.items()},
        "priority": HOLD,
        "snapshot": pin.snapshot or None,
        "evidence": {
            "run_id": data["run_id"],
            "started": data.get("started"),
            "finished": data.get("finished"),
            "results": plan.origin.name,
            "accel": cell.get("accel"),
            "scenarios": [
                {
                    "name": s["name"],
                    "status": s.get("status"),
                    "runs": s.get("runs", 0),
                    "failures": s.get("failures", 0),
                    "errors": s.get("errors", 0),
                    "interval": s.get("interval"),
                    "decision": s.get("decision"),
                }
                for s in cell.get("scenarios", [])
            ],
        },
    }
    return json.dumps(document, indent=1) + "\n"


def files(plan: Plan, out: Path, command: str) -> dict[Path, str]:
    """Every pin file, rendered after every value passed its grammar; nothing is written until
    all of them are."""
    check(plan, command)
    rendered = {}
    for pin in plan.pins:
        rendered[out / f"{pin.name}.pref"] = preferences(pin, plan, command)
        rendered[out / f"{pin.name}.check"] = check_script(pin, plan, command)
        rendered[out / f"{pin.name}.json"] = as_json(pin, plan, command)
        if pin.snapshot:
            rendered[out / f"{pin.name}.snapshot.list"] = snapshot_list(pin, plan, command)
    return rendered


def pin(
    run_id: str | None,
    input_file: str | None,
    out: str | None,
    matrix: str | None,
    results_dir: Path,
    block: bool = False,
    snapshot: str | None = None,
) -> tuple[Plan, list[Path]]:
    """Reads a run, chooses what to pin, and writes the pin files (to results/pins/RUN_ID/ unless
    told where). Writes nothing when nothing is safe, or when any value fails its grammar."""
    data, origin = stored_results(run_id, input_file, results_dir)
    chosen = plan(data, origin, Sources.read(matrix), block, snapshot)
    command = "hvgate matrix.pin " + (
        # The input's name only: pins made from a copy elsewhere are the same files.
        f"--run {run_id}" if run_id else f"--input {Path(input_file).name}" if input_file else ""
    )
    command += " --block" * block + (f" --snapshot {snapshot}" if snapshot else "")
    directory = Path(out) if out else results_dir / "pins" / data["run_id"]
    rendered = files(chosen, directory, " ".join(command.split()))
    for path, text in rendered.items():
        write_atomic(path, text)
    return chosen, list(rendered)
