"""The matrix as frozen, typed data: what matrix.yaml may say, and the cells it expands to."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .text import did_you_mean

# Strict grammars for every value that can reach a Dockerfile or a command line.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
DEB_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit.
DEB_VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)*$")
CODENAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
# A suite may name the base's codename and release; no other braces (nothing for Jinja2 to see).
SUITE_RE = re.compile(
    r"^(?:[a-z0-9]|\{codename\}|\{release\})(?:[a-z0-9./-]|\{codename\}|\{release\})*$"
)
# A suite as sources.list names it, once the placeholders are filled (a Cloud Archive pocket has a
# slash: jammy-updates/caracal).
ORIGIN_SUITE_RE = re.compile(r"^[a-z0-9][a-z0-9.+~_-]*(?:/[a-z0-9][a-z0-9.+~_-]*)*$")
URI_RE = re.compile(r"^(?:https?|file)://[A-Za-z0-9._~:/@%+-]+$")
# user:password@ in the authority: it would be written into a Dockerfile, an image layer, a
# command line and logs, which every user of the engine can read.
CREDENTIALS_RE = re.compile(r"^[a-z]+://[^/]*@")
# Ubuntu Cloud Archive pockets and the Ubuntu series each is built for.
CLOUD_ARCHIVE_POCKETS = {
    **dict.fromkeys(("rocky", "stein", "train", "ussuri"), "bionic"),
    **dict.fromkeys(("victoria", "wallaby", "xena", "yoga"), "focal"),
    **dict.fromkeys(("zed", "antelope", "bobcat", "caracal"), "jammy"),
    **dict.fromkeys(("dalmatian", "epoxy", "flamingo", "gazpacho"), "noble"),
}
IMAGE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")


def _matches(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return check


Name = Annotated[
    str, AfterValidator(_matches(NAME_RE, "name (lower-case letters, digits, . and -)"))
]
PackageName = Annotated[str, AfterValidator(_matches(DEB_PACKAGE_RE, "Debian package name"))]
TEMPLATE_RE = re.compile(r"^[A-Za-z0-9_.-]+\.j2$")  # a cell's template, a file name
Codename = Annotated[str, AfterValidator(_matches(CODENAME_RE, "release codename"))]
Suite = Annotated[str, AfterValidator(_matches(SUITE_RE, "suite (e.g. '{codename}-backports')"))]


def _uri(value: str) -> str:
    if CREDENTIALS_RE.match(value):
        # The value is not repeated: it holds a secret.
        raise ValueError(
            "a URI with credentials (user:password@) is not accepted: they would be written "
            "into a Dockerfile, an image and logs; serve the archive without them"
        )
    return _matches(URI_RE, "http(s):// or file:// URI")(value)


def _cloud_archive(value: str) -> str:
    pocket = value.removesuffix("-proposed")
    if pocket not in CLOUD_ARCHIVE_POCKETS:
        raise ValueError(
            f"unknown Cloud Archive pocket {value!r}{did_you_mean(pocket, CLOUD_ARCHIVE_POCKETS)}"
            f"; known: {', '.join(CLOUD_ARCHIVE_POCKETS)}"
        )
    return value


Uri = Annotated[str, AfterValidator(_uri)]
ImageRef = Annotated[str, AfterValidator(_matches(IMAGE_REF_RE, "image reference"))]


def _version_selector(value: str) -> str:
    if value in ("latest", "all") or DEB_VERSION_RE.fullmatch(value):
        return value
    raise ValueError(
        f"{value!r} is not a version selector: use 'latest', 'all' or an exact Debian version "
        "such as '9.0.0-4+deb12u2'"
    )


VersionSelector = Annotated[str, AfterValidator(_version_selector)]
# The scenarios the smoke runner knows, in the order they run.
Scenario = Literal[
    "boot",
    "reboot",
    "pause-resume",
    "live-snapshot",
    "snapshot-during-restart",
    "external-snapshot",
    "managed-save",
    "managed-save-during-restart",
    "disk-hotplug",
    "detach-under-load",
    "encrypted-volume",
    "encrypted-image",
    "hard-reboot",
    "power-off-on",
    "rescue-unrescue",
    "image-ops",
    "cold-snapshot",
    "volume-extend",
    "root-resize",
    "detach",
    "busy-node",
    "teardown",
    "live-migration",
]
SCENARIOS: tuple[str, ...] = typing.get_args(Scenario)
# Scenarios that need a second host of the cell: the smoke stage starts one (harness/stages/peer.py).
PEER_SCENARIOS: tuple[str, ...] = ("live-migration",)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Strict):
    """A distro release that cells are built on."""

    distro: Literal["debian", "ubuntu"]
    release: Annotated[str, Field(pattern=r"^[0-9a-z][0-9a-z.]*$")]
    codename: Codename
    image: ImageRef | None = None
    """Registry image to pull when there is no local one (default: distro:codename)."""
    mirror: Uri | None = None
    """Archive to bootstrap from when nothing can be pulled (default: the bootstrap tool's)."""
    components: tuple[Name, ...] | None = None
    """Archive components to bootstrap with (default: the bootstrap tool's, main)."""
    check_valid_until: bool = True
    """False lets apt accept this release's expired Release file (archive snapshots)."""

    @property
    def registry_image(self) -> str:
        return self.image or f"{self.distro}:{self.codename}"


class Source(Strict):
    """Where packages come from: the base's own apt sources, or one more suite of its archive."""

    description: str = ""
    suite: Suite | None = None
    """None: the base image's own apt sources as they are; else a suite template."""
    components: tuple[Name, ...] = ("main",)
    uri: Uri | None = None
    """None: the mirror the base image's own apt sources use. With cloud_archive: a mirror of
    the Cloud Archive (its dists/CODENAME-updates/POCKET/ layout) in place of the public host."""
    check_valid_until: bool = True
    trusted: bool = False
    """True accepts an unsigned archive (a local build of one's own); never for a distro archive."""
    stages_for: Name | None = None
    """The source whose pocket this one's versions reach next (-proposed stages for -updates):
    the report lists what is coming, beside the verdict of what gates use now."""
    cloud_archive: (
        Annotated[str, Field(pattern=r"^[a-z]+(?:-proposed)?$"), AfterValidator(_cloud_archive)]
        | None
    ) = None
    """An Ubuntu Cloud Archive pocket, added by the distro's own `add-apt-repository cloud-archive:NAME`."""
    debs: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./+~-]+$")] | None = None
    """A directory of .deb files (a private or candidate build), relative to the repository
    root or absolute; the image gets it as an apt repository of its own."""

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if self.debs and (self.suite or self.uri or self.cloud_archive):
            raise ValueError("a debs source takes no suite, uri or cloud_archive")
        if self.cloud_archive and self.suite:
            raise ValueError("a cloud_archive source takes no suite (uri: its mirror)")
        if self.uri and not (self.suite or self.cloud_archive):
            raise ValueError("a source with a uri needs a suite (or cloud_archive)")
        return self


class PackageChoice(Strict):
    """Which version of a component (libvirt or QEMU) a cell installs, and from which source."""

    version: VersionSelector = "latest"
    source: Name | None = None


class CellSpec(Strict):
    base: Name
    source: Name = "release"
    libvirt: PackageChoice = PackageChoice()
    qemu: PackageChoice = PackageChoice()
    id: Name | None = None
    template: Annotated[str, Field(pattern=TEMPLATE_RE.pattern)] | None = None
    scenarios: tuple[Scenario, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_versions(cls, data: Any) -> Any:
        # `libvirt: latest` is short for `libvirt: {version: latest}`.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("libvirt", "qemu"):
                if isinstance(data.get(key), str):
                    data[key] = {"version": data[key]}
        return data


class Policy(Strict):
    """How often each scenario runs and when its evidence suffices (README, "Verdicts")."""

    safe_failure_rate: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    """A failure rate up to this counts as safe (the sequential test's p0)."""
    unsafe_failure_rate: Annotated[float, Field(gt=0, le=0.5)] = 0.1
    """A failure rate from this on must not pass as safe (p1); 1 minus it must not pass as broken."""
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    """1 minus the chance of each wrong call at those rates (the test's alpha = beta)."""
    min_runs: Annotated[int, Field(ge=1, le=1000)] = 1
    max_runs: Annotated[int, Field(ge=1, le=1000)] = 16
    """Runs one run of the matrix adds to a scenario; with no decision by then (over the pooled
    runs) the scenario is inconclusive."""
    runs: Annotated[int, Field(ge=1, le=1000)] | None = None
    """A fixed count instead of min_runs and max_runs: each scenario runs exactly this often."""
    boot_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    scenario_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    """A scenario that has not finished by then fails, whatever it was waiting on."""
    cell_timeout: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    """A cell's smoke test starts no scenario after this; the runs it has are judged."""
    run_timeout: Annotated[float, Field(gt=0, le=604800)] | None = None
    """No smoke test of a run starts a scenario after this many seconds from the run's start:
    each cell's smoke test gets its share of the time left (the time left x the run's slots /
    the cells still to test, at most cell_timeout). What ran is judged; what did not pools with
    the next run. None: no limit."""
    build_timeout: Annotated[float, Field(gt=0, le=36000)] = 1800.0
    evidence_days: Annotated[int, Field(ge=0, le=3650)] = 30
    """Runs of the same experiment (the cell's evidence key) this recent pool with a new one's;
    0: every run is judged on its own."""

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.safe_failure_rate >= self.unsafe_failure_rate:
            raise ValueError("safe_failure_rate must be below unsafe_failure_rate")
        if self.runs is not None and {"min_runs", "max_runs"} & self.model_fields_set:
            raise ValueError("runs is a fixed count: give it or min_runs/max_runs, not both")
        if self.min_runs > self.max_runs:
            raise ValueError("min_runs must not exceed max_runs")
        return self


def _version(value: str) -> str:
    if DEB_VERSION_RE.fullmatch(value):
        return value
    raise ValueError(f"{value!r} is not a version such as '8.0.0'")


Version = Annotated[str, AfterValidator(_version)]


class Threshold(Strict):
    libvirt: Version
    qemu: Version


class Guest(Strict):
    base: Name = "debian-12"
    """The base whose archive provides the guest kernel and busybox."""


class Migration(Strict):
    """An upgrade migration: a guest running in cell `from` migrates live into cell `to`."""

    from_: Name = Field(alias="from")
    """The cell with the older libvirt and QEMU, where the guest starts."""
    to: Name
    """The cell with the newer ones; the result is its scenario `upgrade-migration`."""


class Matrix(Strict):
    bases: dict[Name, Base]
    sources: dict[Name, Source]
    cells: Annotated[tuple[CellSpec, ...], Field(min_length=1)]
    scenarios: tuple[Scenario, ...] = SCENARIOS  # type: ignore[assignment]
    policy: Policy = Policy()
    thresholds: dict[Name, Threshold] = {}
    guest: Guest = Guest()
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    migrations: tuple[Migration, ...] = ()
    """Upgrade migrations between cells (matrix.run builds a `from` image it does not test)."""

    @field_validator("migrations")
    @classmethod
    def _known_cells(
        cls, pairs: tuple[Migration, ...], info: ValidationInfo
    ) -> tuple[Migration, ...]:
        specs = info.data.get("cells") or ()
        ids = {spec.id or default_cell_id(spec) for spec in specs}
        for index, pair in enumerate(pairs):
            for key, value in (("from", pair.from_), ("to", pair.to)):
                if specs and value not in ids:
                    hint = did_you_mean(value, ids)
                    raise ValueError(f"[{index}].{key}: unknown cell {value!r}{hint}")
            if pair.from_ == pair.to:
                raise ValueError(f"[{index}]: a cell cannot migrate into itself")
        return pairs


# Packages installed for each component; the first one names the component's version.
COMPONENT_PACKAGES: dict[str, tuple[str, ...]] = {
    "libvirt": ("libvirt-daemon", "libvirt-daemon-driver-qemu", "python3-libvirt"),
    "qemu": ("qemu-system-x86", "qemu-utils"),
}
# What every compute node has beside them, from the release: libvirt-daemon-system depends on
# iptables (or firewalld). Without it, the nwfilter driver's start-up `iptables -w --version`
# fails to exec, and the forked child's error path (gettext, not safe after fork) can deadlock on
# glibc's locale lock if the nodedev thread holds it: the daemon never finishes starting and a
# connection never opens, about once in 500 starts. No real node meets that path.
NODE_PACKAGES = ("iptables",)
VERSION_LABEL_PACKAGES = ("libvirt-daemon", "qemu-system-x86", "python3-libvirt")
# Of COMPONENT_PACKAGES, those a release does not have because another still holds their files:
# Ubuntu 18.04's libvirt-daemon has the QEMU driver, a package of its own from 20.04 on.
NOT_YET_SPLIT: dict[tuple[str, str], frozenset[str]] = {
    ("ubuntu", "18.04"): frozenset({"libvirt-daemon-driver-qemu"}),
}


@dataclass(frozen=True)
class ComponentChoice:
    component: str
    version: str
    source_name: str


@dataclass(frozen=True)
class Cell:
    """One buildable, testable combination; `id` names its image, logs, golden file and row."""

    id: str
    base_name: str
    base: Base
    source_name: str
    sources: tuple[tuple[str, Source], ...]
    components: tuple[ComponentChoice, ...]
    scenarios: tuple[str, ...]
    template: str | None = None
    spec_id: str = ""
    """The id of the matrix.yaml cell this one comes from (several, for an `all` selector)."""
    locked: tuple[tuple[str, str], ...] = ()
    """(package, exact version) from the lock file; empty when the cell is not locked."""

    @property
    def locked_versions(self) -> dict[str, str]:
        return dict(self.locked)


def default_cell_id(spec: CellSpec) -> str:
    parts = [spec.base, spec.source]
    for component in ("libvirt", "qemu"):
        choice: PackageChoice = getattr(spec, component)
        if choice.source and choice.source != spec.source:
            parts.append(f"{component}-{choice.source}")
        if choice.version not in ("latest", "all"):
            parts.append(f"{component}-{version_slug(choice.version)}")
    return "-".join(parts)


def version_slug(version: str) -> str:
    """A Debian version as it may appear in a cell id (and so in an image tag)."""
    return version.replace(":", "_").replace("+", "_").replace("~", "_")


def expand(matrix: Matrix) -> tuple[Cell, ...]:
    """Turns validated cell specs into cells. References were checked by `load`."""
    cells = []
    for spec in matrix.cells:
        components = tuple(
            ComponentChoice(
                name, getattr(spec, name).version, getattr(spec, name).source or spec.source
            )
            for name in ("libvirt", "qemu")
        )
        source_names = [spec.source] + [c.source_name for c in components]
        ordered = tuple(dict.fromkeys(source_names))
        cell_id = spec.id or default_cell_id(spec)
        cells.append(
            Cell(
                id=cell_id,
                spec_id=cell_id,
                base_name=spec.base,
                base=matrix.bases[spec.base],
                source_name=spec.source,
                sources=tuple((name, matrix.sources[name]) for name in ordered),
                components=components,
                scenarios=spec.scenarios or matrix.scenarios,
                template=spec.template,
            )
        )
    return tuple(cells)
