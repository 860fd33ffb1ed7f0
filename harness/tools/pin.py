"""Pin files from a run: for each base and source, the newest versions found safe, as an apt
preferences file, a devstack local.conf fragment and JSON, each headed by its evidence."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from ..core.errors import ConfigurationError
from ..core.files import write_atomic
from ..core.model import DEB_PACKAGE_RE, DEB_VERSION_RE, Cell, Matrix
from ..core.results import Status
from ..core.text import one_line
from ..matrix.load import load as load_matrix
from ..stages.publish import stored_results
from ..stages.render import source_suite

FORMAT = 1
PRIORITY = 1001  # above 1000: apt installs the pinned version even when it is a downgrade
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
CELL_KEYS = {"id", "distro", "release", "source", "status"}
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # it names a directory


@dataclass(frozen=True)
class Pin:
    name: str  # base and source, e.g. debian-12-backports
    cell: dict[str, Any]
    packages: dict[str, str]  # binary package -> exact version
    sources: dict[str, str]  # source package -> source version
    suites: tuple[str, ...] = ()  # the cell's suites beyond the base release's, when known
    needs: str = ""  # what apt's sources must have for these pins to install


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

    def where(self, cell: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
        """The pin's name (base, source, and any component from another source), the suites
        the packages came from, and what apt's sources need."""
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
                return "-".join(parts), (), self._unknown(cell)
            base_model, sources = bases[0], [self.matrix.sources[cell["source"]]]
        else:
            return "-".join(parts), (), self._unknown(cell)
        suites = tuple(
            dict.fromkeys(
                source_suite(s, base_model)
                for s in sources
                if (s.suite or s.cloud_archive)
                and source_suite(s, base_model) != base_model.codename
            )
        )
        needs = (
            f"Needs {', '.join(suites)} in apt's sources, besides the base's own"
            if suites
            else "Needs only the base's own apt sources"
        )
        return (
            "-".join(parts),
            suites,
            needs + ": these files choose versions, they add no archive.",
        )

    def _unknown(self, cell: dict[str, Any]) -> str:
        return (
            f"Needs the suite of the cell's '{cell['source']}' source in apt's sources "
            f"({self.path} does not name it): these files choose versions, they add no archive."
        )

    @staticmethod
    def read(path: str | None) -> Sources:
        """The matrix at path; without one (none given, or no such file) suites go unnamed."""
        if not path or not Path(path).is_file():
            return Sources(path=path or "matrix.yaml")
        matrix, cells = load_matrix(path)
        return Sources(matrix, {c.id: c for c in cells}, path)


def source_version(version: str) -> str:
    return BINNMU_RE.sub("", version)


def pin_of(cell: dict[str, Any], origin: Path, sources: Sources) -> Pin:
    versions = dict(cell["versions"])
    for package, version in versions.items():
        # These strings go into apt and shell files: refuse anything but Debian's grammar.
        if not DEB_PACKAGE_RE.fullmatch(package) or not DEB_VERSION_RE.fullmatch(version):
            raise ConfigurationError(
                f"{origin}: cell {cell['id']}: {package!r} {version!r} is not a Debian package and version"
            )
    packages = dict(versions)
    for package, recorded in SAME_BUILD.items():
        if recorded in versions:
            packages[package] = versions[recorded]
    source_packages = {
        SOURCE_PACKAGES[p]: source_version(v) for p, v in versions.items() if p in SOURCE_PACKAGES
    }
    name, suites, needs = sources.where(cell)
    return Pin(name, cell, dict(sorted(packages.items())), source_packages, suites, needs)


def why_not(cell: dict[str, Any]) -> str:
    failed = [
        f"{s['name']} {s.get('failures', 0) + s.get('errors', 0)}/{s.get('runs', 0)} failed"
        for s in cell.get("scenarios", [])
        if s.get("status") != Status.SAFE
    ]
    why = cell.get("reason") or ", ".join(failed) or "no reason recorded"
    return one_line(why, None)


def plan(data: dict[str, Any], origin: Path, sources: Sources | None = None) -> Plan:
    """Chooses, for each base and source, its newest safe cell; every other cell is refused or
    superseded, one line each."""
    sources = sources or Sources()
    refused: list[str] = []
    groups: dict[str, list[Pin]] = {}
    for cell in data["cells"]:
        if cell.get("status") != Status.SAFE:
            refused.append(f"refused {cell['id']} ({cell.get('status')}): {why_not(cell)}")
        elif not cell.get("versions"):
            refused.append(f"refused {cell['id']} (safe): the run recorded no package versions")
        else:
            found = pin_of(cell, origin, sources)
            groups.setdefault(found.name, []).append(found)
    pins, superseded = [], []
    for name, candidates in groups.items():
        ranked = sorted(
            candidates,
            key=lambda p: tuple(Version(p.cell["versions"].get(k, "0")) for k in RANK),
            reverse=True,
        )
        pins.append(ranked[0])
        superseded += [
            f"kept {ranked[0].cell['id']} over {p.cell['id']} (older versions, same base and source {name})"
            for p in ranked[1:]
        ]
    return Plan(data, origin, pins, refused, superseded)


def _interval(scenario: dict[str, Any]) -> str:
    interval = scenario.get("interval")
    if not interval or len(interval) != 2:
        return ""
    return f", failure rate 95% interval {interval[0] * 100:.1f}–{interval[1] * 100:.1f}%"


def evidence(pin: Pin, plan: Plan) -> list[str]:
    """The lines every pin file starts with: where the verdict comes from, and what it rests on."""
    data, cell = plan.data, pin.cell
    scenarios = cell.get("scenarios", [])
    runs = sum(s.get("runs", 0) for s in scenarios)
    failures = sum(s.get("failures", 0) + s.get("errors", 0) for s in scenarios)
    lines = [
        f"Evidence: run {data['run_id']} ({data.get('started')} – {data.get('finished')}), {plan.origin.name}",
        f"Cell {cell['id']}: {cell['status']}; {len(scenarios)} scenarios, {runs} runs, "
        f"{failures} failures; accel {cell.get('accel') or '?'}",
    ]
    for s in scenarios:
        line = f"  {s['name']}: {s.get('status')}, {s.get('runs', 0)} runs, {s.get('failures', 0) + s.get('errors', 0)} failures{_interval(s)}"
        if s.get("decision"):
            line += f"; {s['decision']}"
        lines.append(line)
    return lines


# A line break inside a comment line would start a line apt or the shell reads.
BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def header(pin: Pin, plan: Plan, what: str, command: str) -> list[str]:
    """The comment lines every pin file starts with, each one line whatever it quotes (a path
    given on the command line)."""
    return [BREAKS.sub(" ", line) for line in _header(pin, plan, what, command)]


def _header(pin: Pin, plan: Plan, what: str, command: str) -> list[str]:
    cell = pin.cell
    return [
        f"{what}: libvirt and QEMU as hvgate found them safe on {cell['distro']} {cell['release']} "
        f"({cell.get('codename')}), source {cell['source']}.",
        f"Generated by `{command}`; do not edit.",
        *evidence(pin, plan),
        pin.needs,
    ]


def preferences(pin: Pin, plan: Plan, command: str) -> str:
    lines = [f"# {line}" for line in header(pin, plan, "apt preferences", command)]
    lines.append("# Install: copy to /etc/apt/preferences.d/, then apt-get update.")
    stanzas = [
        f"Package: {package}\nPin: version {version}\nPin-Priority: {PRIORITY}\n"
        for package, version in pin.packages.items()
    ]
    for source, version in pin.sources.items():
        # The rest of what these sources build (libvirt-clients, qemu-system, ...) follows, so
        # whatever else a job installs matches; a "+bN" binary rebuild of the version counts.
        pattern = "^" + re.sub(r"([.+])", r"\\\1", version) + r"(\+b[0-9]+)?$"
        stanzas.append(
            f"Explanation: every binary package built from {source} {version}\n"
            f"Package: src:{source}\nPin: version /{pattern}/\nPin-Priority: {PRIORITY}\n"
        )
    for suite in pin.suites:
        # As in the image the verdict is about: what these packages depend on may come from the
        # cell's other suites at the default priority, newest first (QEMU from backports needs
        # SeaBIOS from backports). A Debian suite is known by its Codename, Ubuntu's by its Suite.
        for field_name in ("n", "a"):
            stanzas.append(
                f"Explanation: dependencies may come from {suite} too, as in the tested image\n"
                f"Package: *\nPin: release {field_name}={suite}\nPin-Priority: 500\n"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(stanzas)


def local_conf(pin: Pin, plan: Plan, command: str) -> str:
    target = f"/etc/apt/preferences.d/hvgate-{pin.name}"
    lines = [f"# {line}" for line in header(pin, plan, "devstack local.conf fragment", command)]
    lines += [
        "#",
        "# devstack has no setting that chooses libvirt or QEMU package versions: install_libvirt",
        "# (lib/nova_plugins/functions-libvirt) runs apt-get install for qemu-system, libvirt-clients,",
        "# libvirt-daemon-system, libvirt-dev and python3-libvirt, and apt obeys its preferences. The",
        "# localrc section is sourced (by stackrc) before stack.sh installs any package, so the lines",
        f"# below write the apt preferences to {target} first, and again only when",
        "# they changed. Merge them into the [[local|localrc]] section of your local.conf.",
        "[[local|localrc]]",
        "hvgate_pins() {",
        "    cat <<'HVGATE_PINS'",
        preferences(pin, plan, command).rstrip("\n"),
        "HVGATE_PINS",
        "}",
        f"if ! hvgate_pins | cmp -s - {target}; then",
        f"    hvgate_pins | sudo tee {target} >/dev/null",
        "fi",
    ]
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
        "source_packages": pin.sources,
        "priority": PRIORITY,
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
    """Every pin file, rendered; nothing is written until all of them are."""
    rendered = {}
    for pin in plan.pins:
        rendered[out / f"{pin.name}.pref"] = preferences(pin, plan, command)
        rendered[out / f"{pin.name}.local.conf"] = local_conf(pin, plan, command)
        rendered[out / f"{pin.name}.json"] = as_json(pin, plan, command)
    return rendered


def pin(
    run_id: str | None,
    input_file: str | None,
    out: str | None,
    matrix: str | None,
    results_dir: Path,
) -> tuple[Plan, list[Path]]:
    """Reads a run, chooses what to pin, and writes the pin files (to results/pins/RUN_ID/ unless
    told where). Writes nothing when nothing is safe."""
    data, origin = stored_results(run_id, input_file, results_dir)
    chosen = plan(data, origin, Sources.read(matrix))
    command = "invoke matrix.pin " + (
        # The input's name only: pins made from a copy elsewhere are the same files.
        f"--run {run_id}" if run_id else f"--input {Path(input_file).name}" if input_file else ""
    )
    directory = Path(out) if out else results_dir / "pins" / data["run_id"]
    rendered = files(chosen, directory, command.strip())
    for path, text in rendered.items():
        write_atomic(path, text)
    return chosen, list(rendered)
