"""Renders each cell's Dockerfile (a pure function) and writes the files atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jinja2

from ..core.errors import ConfigurationError
from ..core.files import write_atomic
from ..core.model import (
    COMPONENT_PACKAGES,
    DEB_PACKAGE_RE,
    DEB_VERSION_RE,
    NODE_PACKAGES,
    NOT_YET_SPLIT,
    Base,
    Cell,
    Source,
)
from ..core.paths import OVERRIDES, RENDERED, ROOT, TEMPLATES
from ..core.text import shell
from ..engine.bases import base_image_tag
from ..matrix import debs

BASE_TEMPLATE = "base.Dockerfile.j2"

# Source packages whose binaries follow a component's pin, each with the binary whose version
# the lock file records for it.
PINNED_SOURCE_PACKAGES = {
    "libvirt": {"libvirt": "libvirt-daemon", "libvirt-python": "python3-libvirt"},
    "qemu": {"qemu": "qemu-system-x86"},
}


def suite(template: str, base: Base) -> str:
    return template.replace("{codename}", base.codename).replace("{release}", base.release)


def source_suite(source: Source, base: Base, name: str = "") -> str:
    """The suite apt knows a source by; a Cloud Archive pocket is CODENAME-updates/NAME, and a
    directory of .debs is the suite named after its source."""
    if source.debs:
        return name
    if source.cloud_archive:
        name, _, proposed = source.cloud_archive.partition("-")
        return f"{base.codename}-{'proposed' if proposed else 'updates'}/{name}"
    return suite(source.suite or "{codename}", base)


def packages(cell: Cell) -> list[str]:
    """What apt-get install is given: a locked package as NAME=VERSION, so a version the archive
    no longer serves fails the build (and makes the cell unavailable) instead of drifting; then
    what every node has beside them (NODE_PACKAGES), as the release has it."""
    absent = NOT_YET_SPLIT.get((cell.base.distro, cell.base.release), frozenset())
    names = [p for c in cell.components for p in COMPONENT_PACKAGES[c.component] if p not in absent]
    locked = cell.locked_versions
    for name in names:  # every value reaching the Dockerfile has passed a strict grammar
        assert DEB_PACKAGE_RE.fullmatch(name), name
        assert name not in locked or DEB_VERSION_RE.fullmatch(locked[name]), locked[name]
    pinned = [f"{name}={locked[name]}" if name in locked else name for name in names]
    return pinned + [name for name in NODE_PACKAGES if name not in names]


def apt_options(source: Source) -> list[str]:
    """The sources.list options a source asks for."""
    return [
        option
        for option, wanted in (
            ("check-valid-until=no", not source.check_valid_until),
            ("trusted=yes", source.trusted),
        )
        if wanted
    ]


def source_steps(cell: Cell) -> list[str]:
    """Dockerfile instructions that add the cell's extra apt sources, one layer each; the same
    RUN commands set up the container that `matrix.resolve` reads the indexes in."""
    return [step if step.startswith("COPY ") else f"RUN {step}" for step in _source_steps(cell)]


def _source_steps(cell: Cell) -> list[str]:
    steps = []
    public = [source for _, source in cell.sources if source.cloud_archive and not source.uri]
    for index, source in enumerate(public):
        if index == 0:
            # The distro's own tool knows the Cloud Archive; this layer is shared by every pocket.
            steps.append(
                "apt-get update && apt-get install -y --no-install-recommends "
                "software-properties-common && rm -rf /var/lib/apt/lists/*"
            )
        # It installs ubuntu-cloud-keyring from the distro archive, so it needs the package lists.
        steps.append(
            f"apt-get update && add-apt-repository -y -n cloud-archive:{shell(source.cloud_archive)}"
            " && rm -rf /var/lib/apt/lists/*"
        )
    if any(s.cloud_archive and s.uri and not s.trusted for _, s in cell.sources):
        # A mirror is signed with the Cloud Archive's key, which the distro archive ships.
        steps.append(
            "apt-get update && apt-get install -y --no-install-recommends "
            "ubuntu-cloud-keyring && rm -rf /var/lib/apt/lists/*"
        )
    for name, source in cell.sources:
        if source.debs:
            # The repository (the .debs and an index made on the host) is in the build context.
            steps.append(f"COPY debs/{name}/ {debs.IN_IMAGE}/{name}/")
            command = ["/opt/hvgate/bin/add-apt-source", name, name, "main", debs.uri(name)]
            steps.append(" ".join(shell(part) for part in [*command, "trusted=yes"]))
        elif source.cloud_archive and source.uri:
            # A mirror of the Cloud Archive, in place of the public host add-apt-repository names.
            command = [
                "/opt/hvgate/bin/add-apt-source",
                name,
                source_suite(source, cell.base),
                " ".join(source.components),
                source.uri,
                *apt_options(source),
            ]
            steps.append(" ".join(shell(part) for part in command))
        elif source.suite or source.uri:
            command = [
                "/opt/hvgate/bin/add-apt-source",
                name,
                suite(source.suite or "{codename}", cell.base),
                " ".join(source.components),
                source.uri or "",
                *apt_options(source),
            ]
            steps.append(" ".join(shell(part) for part in command))
    return steps


def pins(cell: Cell) -> list[list[str]]:
    """Commands that write apt preferences (they need the suites' Release files, so they run
    after `apt-get update`). Specific stanzas come first: apt uses the first that matches.

    - a component's source packages: 990 in its own source's suite (or 1001 at an exact
      version), 100 in the cell's other suites, so they never drift to another pocket;
    - everything else stays at the distro's priority for each suite (backports and -proposed
      100), except what the packages need: pin-closure pins the source of each dependency apt
      cannot satisfy from the release (qemu from backports needs seabios from backports) at 990
      in the extra suites, so an image takes nothing else from them.

    A locked cell holds each source package at the version the lock file names for it.
    """
    suites = {
        name: source_suite(s, cell.base, name)
        for name, s in cell.sources
        if s.suite or s.cloud_archive or s.debs
    }
    locked = cell.locked_versions
    commands = []
    for choice in cell.components:
        for src, binary in PINNED_SOURCE_PACKAGES[choice.component].items():
            package = f"src:{src}"
            if binary in locked:
                commands.append(["/opt/hvgate/bin/pin-version", package, locked[binary]])
            elif (
                choice.version not in ("latest", "all")
                and binary in COMPONENT_PACKAGES[choice.component][:1]
            ):  # an exact selector names the version of the component's first package
                commands.append(["/opt/hvgate/bin/pin-version", package, choice.version])
            elif choice.source_name in suites:
                commands.append(
                    ["/opt/hvgate/bin/pin-source", package, suites[choice.source_name], "990"]
                )
            for name, other in suites.items():
                if name != choice.source_name:
                    commands.append(["/opt/hvgate/bin/pin-source", package, other, "100"])
    if suites:
        commands.append(["/opt/hvgate/bin/pin-closure", *suites.values(), "--", *packages(cell)])
    return commands


def printable(value: object) -> object:
    """Every value printed into a Dockerfile: a newline would start an instruction of its own.
    core/model.py's grammars refuse such values first; this holds for cells built any other way."""
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigurationError(f"refusing to render {value[:60]!r}: a control character")
    return value


def make_environment(search_path: Iterable[Path] = (OVERRIDES, TEMPLATES)) -> jinja2.Environment:
    """The one Environment: StrictUndefined, and every filter and global registered here."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=printable,
    )
    env.filters.update(shell=shell, suite=suite)
    env.globals.update(pins=pins, packages=packages, source_steps=source_steps)
    return env


ENVIRONMENT = make_environment()


def render(cell: Cell, env: jinja2.Environment = ENVIRONMENT) -> str:
    template_name = cell.template or BASE_TEMPLATE
    try:
        template = env.get_template(template_name)
    except jinja2.TemplateNotFound:
        raise ConfigurationError(
            f"cell {cell.id}: template {template_name!r} not found in {OVERRIDES.relative_to(ROOT)}/"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigurationError(
            f"{exc.filename or template_name}:{exc.lineno}: template error: {exc.message}"
        ) from None
    try:
        return template.render(cell=cell, base=cell.base, base_image=base_image_tag(cell.base_name))
    except jinja2.TemplateError as exc:
        raise ConfigurationError(f"cell {cell.id}: template {template_name}: {exc}") from None


def dockerfile_path(cell: Cell, out_dir: Path = RENDERED) -> Path:
    return out_dir / cell.id / "Dockerfile"


def render_all(cells: Iterable[Cell], out_dir: Path = RENDERED) -> dict[str, str]:
    """Renders every cell first (so a template error writes nothing), then writes them."""
    rendered = {cell.id: render(cell) for cell in cells}
    for cell_id, text in rendered.items():
        write_atomic(out_dir / cell_id / "Dockerfile", text)
    return rendered
