"""harness.tools.pin: each base and source's newest safe versions as apt preferences, a shell
check and JSON; everything else refused, one line each; tampered results refused whole."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
from debian.deb822 import Deb822

from harness.core.errors import ConfigurationError
from harness.core.results import CellResult, RunResult, ScenarioResult, Status
from harness.stages.publish import publish
from harness.tools import pin as pins
from tests import cli

BOOKWORM = {"distro": "debian", "release": "12", "codename": "bookworm"}
TRIXIE = {"distro": "debian", "release": "13", "codename": "trixie"}
VERSIONS = {
    "libvirt-daemon": "9.0.0-4+deb12u2",
    "python3-libvirt": "9.0.0-1+b1",
    "qemu-system-x86": "1:7.2+dfsg-7+deb12u18+b3",
}


def scenario(name, status="safe", runs=12, failures=0, interval=None, decision=None):
    return ScenarioResult(
        name=name,
        status=Status(status),
        runs=runs,
        failures=failures,
        interval=interval,
        # A judged scenario has both, as the judge writes them.
        failure_rate=None if interval is None else failures / runs,
        decision=decision,
    )


def cell(cell_id, status="safe", versions=None, base=None, source="release", **extra):
    extra.setdefault("origins", [])
    return CellResult(
        id=cell_id,
        **(base or BOOKWORM),
        source=source,
        status=Status(status),
        versions=VERSIONS if versions is None else versions,
        scenarios=[
            scenario(
                "boot", interval=[0.0, 0.2425], decision="SPRT accepted p<=0.05 after 12 runs"
            ),
            scenario("managed-save", runs=3, failures=0),
        ],
        accel="tcg",
        **extra,
    )


def document(*cells):
    return RunResult(
        "20261123T203057Z-f701",
        "2026-11-23T20:30:57+00:00",
        "2026-11-23T20:44:56+00:00",
        {},
        list(cells),
    ).to_json()


@pytest.fixture
def sources(unit_matrix_path):
    return pins.Sources.read(str(unit_matrix_path))


def plan_of(*cells, sources=None):
    return pins.plan(document(*cells), Path("results.json"), sources)


# --- what is pinned, and what is refused --------------------------------------------------------


def test_only_safe_cells_with_versions_are_pinned(sources):
    plan = plan_of(
        cell("debian-12-release"),
        cell(
            "debian-13-release-qemu-backports",
            status="broken",
            base=TRIXIE,
            reason="managed-save: internal error:\n unable to execute QEMU command",
        ),
        cell(
            "ubuntu-24.04-cloud-archive-epoxy",
            status="unavailable",
            versions={},
            reason="source unreachable",
        ),
        cell("debian-13-release", status="flaky", base=TRIXIE),
        cell("debian-12-backports", versions={}, source="backports"),
        sources=sources,
    )
    assert [p.cell["id"] for p in plan.pins] == ["debian-12-release"]
    assert plan.refused == [
        "refused debian-13-release-qemu-backports (broken): managed-save: internal error: unable to execute QEMU command",
        "refused ubuntu-24.04-cloud-archive-epoxy (unavailable): source unreachable",
        "refused debian-13-release (flaky): no reason recorded",
        "refused debian-12-backports (safe): the run recorded no package versions",
    ]


def test_a_refusal_without_a_reason_names_the_failing_scenarios():
    flaky = cell("x", status="flaky")
    flaky = dataclasses.replace(flaky, scenarios=[scenario("reboot", "flaky", runs=10, failures=3)])
    assert plan_of(flaky).refused == ["refused x (flaky): reboot 3/10 failed"]


def test_the_newest_safe_versions_of_a_base_and_source_win(sources):
    older = {**VERSIONS, "libvirt-daemon": "9.0.0-4+deb12u1"}
    # An epoch outranks any upstream version; "~" sorts before the release it precedes.
    plan = plan_of(
        cell("debian-12-release-libvirt-9.0.0-4_deb12u1", versions=older),
        cell("debian-12-release"),
        cell(
            "debian-12-release-broken-newer",
            status="broken",
            versions={**VERSIONS, "libvirt-daemon": "9.0.0-5"},
        ),
        sources=sources,
    )
    assert [(p.name, p.cell["id"]) for p in plan.pins] == [
        ("debian-12-release", "debian-12-release")
    ]
    assert plan.superseded == [
        "kept debian-12-release over debian-12-release-libvirt-9.0.0-4_deb12u1 "
        "(older versions, same base and source debian-12-release)"
    ]
    assert len(plan.refused) == 1


@pytest.mark.parametrize(
    ("newer", "older"),
    [("1:7.2", "9.9"), ("11.3.0-2", "11.3.0-2~bpo12+1"), ("9.0.0-4+deb12u10", "9.0.0-4+deb12u9")],
)
def test_versions_compare_as_dpkg_does(newer, older):
    plan = plan_of(
        cell("old", versions={**VERSIONS, "libvirt-daemon": older}),
        cell("new", versions={**VERSIONS, "libvirt-daemon": newer}),
    )
    assert [p.cell["id"] for p in plan.pins] == ["new"]


BACKPORTS_ORIGINS = [
    {"package": "libvirt-daemon", "version": "9.0.0-4+deb12u2", "suites": ["bookworm-backports"]},
    {"package": "seabios", "version": "1.16.3-2~bpo12+1", "suites": ["bookworm-backports"]},
]


def test_a_mixed_source_cell_is_pinned_apart_from_its_main_source(sources):
    plan = plan_of(
        cell("debian-13-release", base=TRIXIE),
        cell(
            "debian-13-release-qemu-backports",
            base=TRIXIE,
            origins=[
                {"package": "qemu-utils", "version": "1:10.0", "suites": ["trixie-backports"]}
            ],
            versions={**VERSIONS, "qemu-system-x86": "1:10.0"},
        ),
        sources=sources,
    )
    by_name = {p.name: p for p in plan.pins}
    assert sorted(by_name) == ["debian-13-release", "debian-13-release-qemu-backports"]
    assert by_name["debian-13-release"].suites == ()
    assert by_name["debian-13-release-qemu-backports"].suites == ("trixie-backports",)


def test_the_matrix_names_each_cells_pin(sources):
    assert sources.where(asdict(cell("debian-12-backports", source="backports"))) == (
        "debian-12-backports",
        ("bookworm-backports",),
    )
    # A cell the matrix no longer has: its source still names the suite.
    assert sources.where(asdict(cell("gone-cell", source="backports")))[1] == (
        "bookworm-backports",
    )
    assert sources.where(asdict(cell("x", source="elsewhere"))) == ("debian-12-elsewhere", None)
    assert pins.Sources.read(None).where(asdict(cell("x", source="backports")))[1] is None


def test_the_pins_name_what_the_image_took_from_beyond_the_release(sources):
    plan = plan_of(
        cell("debian-12-backports", source="backports", origins=BACKPORTS_ORIGINS),
        sources=sources,
    )
    (pin,) = plan.pins
    assert pin.packages["seabios"] == "1.16.3-2~bpo12+1"
    assert pin.origins == {
        "libvirt-daemon": ("bookworm-backports",),
        "seabios": ("bookworm-backports",),
    }
    assert pin.suites == ("bookworm-backports",)
    assert pin.needs.startswith("Needs bookworm-backports in apt's sources")


def test_a_record_that_disagrees_with_the_cells_versions_is_refused(sources):
    bad = [{"package": "libvirt-daemon", "version": "9.9", "suites": ["bookworm-backports"]}]
    with pytest.raises(ConfigurationError, match="libvirt-daemon 9.9 differs from the version"):
        plan_of(cell("debian-12-backports", source="backports", origins=bad), sources=sources)


# Results from before images recorded origins: a cell that added no suite beyond the release's
# own needs none; any other is refused, saying a fresh run records them.


def test_without_origins_a_cell_of_the_releases_own_suites_is_pinned(sources):
    plan = plan_of(cell("debian-12-release", origins=None), sources=sources)
    (pin,) = plan.pins
    assert pin.origins == {} and pin.suites == ()
    assert pin.derived.startswith("The run recorded no package origins; none are needed")
    assert "bookworm, bookworm-security, bookworm-updates" in pin.derived


def test_without_origins_a_cell_of_other_suites_is_refused(sources):
    plan = plan_of(
        cell("debian-12-backports", source="backports", origins=None),
        cell("debian-12-x", source="elsewhere", origins=None),
        sources=sources,
    )
    assert plan.pins == []
    assert plan.refused == [
        "refused debian-12-backports (safe): the run recorded no package origins (results from "
        "before hvgate recorded them) and the cell took packages from bookworm-backports: a "
        "fresh run of the cell records what to pin",
        "refused debian-12-x (safe): the run recorded no package origins (results from before "
        "hvgate recorded them) and the cell took packages from suites the matrix does not "
        "name: a fresh run of the cell records what to pin",
    ]


# --- the files ----------------------------------------------------------------------------------


def stanzas(text):
    return [dict(p) for p in Deb822.iter_paragraphs(text.splitlines()) if p]


def test_preferences_pin_every_installed_package_exactly(sources):
    plan = plan_of(cell("debian-12-backports", source="backports"), sources=sources)
    text = pins.preferences(plan.pins[0], plan, "hvgate matrix.pin")
    exact = {
        s["Package"]: s["Pin"] for s in stanzas(text) if not s["Package"].startswith(("src:", "*"))
    }
    assert exact == {
        "libvirt-daemon": "version 9.0.0-4+deb12u2",
        "libvirt-daemon-driver-qemu": "version 9.0.0-4+deb12u2",
        "python3-libvirt": "version 9.0.0-1+b1",
        "qemu-system-x86": "version 1:7.2+dfsg-7+deb12u18+b3",
        "qemu-utils": "version 1:7.2+dfsg-7+deb12u18+b3",
    }
    assert {s["Pin-Priority"] for s in stanzas(text) if s["Package"] != "*"} == {"1001"}


def test_preferences_hold_the_rest_of_each_source_at_its_version(sources):
    plan = plan_of(cell("debian-12-release"), sources=sources)
    text = pins.preferences(plan.pins[0], plan, "hvgate matrix.pin")
    by_source = {s["Package"]: s["Pin"] for s in stanzas(text) if s["Package"].startswith("src:")}
    assert sorted(by_source) == ["src:libvirt", "src:libvirt-python", "src:qemu"]
    # apt's /regex/ is POSIX extended; this one means the same in Python's re.
    pattern = by_source["src:qemu"].removeprefix("version /").removesuffix("/")
    matches = re.compile(pattern).search
    assert matches("1:7.2+dfsg-7+deb12u18") and matches("1:7.2+dfsg-7+deb12u18+b3")
    assert not matches("1:7.2+dfsg-7+deb12u180") and not matches("1:7.2+dfsg-7+deb12u18+b3~1")
    assert not matches("1:7.2xdfsg-7+deb12u18")
    python = by_source["src:libvirt-python"]
    assert python == r"version /^9\.0\.0-1(\+b[0-9]+)?$/"  # the source version: "+b1" dropped


def test_preferences_never_raise_a_suite(sources):
    plan = plan_of(
        cell("debian-12-backports", source="backports", origins=BACKPORTS_ORIGINS),
        sources=sources,
    )
    text = pins.preferences(plan.pins[0], plan, "hvgate matrix.pin")
    assert not [s for s in stanzas(text) if s["Package"] == "*" or "release" in s["Pin"]]
    assert {s["Pin-Priority"] for s in stanzas(text)} == {"1001"}
    assert {s["Package"] for s in stanzas(text) if not s["Package"].startswith("src:")} == {
        "libvirt-daemon",
        "libvirt-daemon-driver-qemu",
        "python3-libvirt",
        "qemu-system-x86",
        "qemu-utils",
        "seabios",
    }
    explained = {s["Package"]: s["Explanation"] for s in stanzas(text)}
    assert explained["seabios"] == "seabios from bookworm-backports in the tested image"
    assert explained["qemu-utils"] == "qemu-utils tested"


def test_block_pins_the_versions_only_flaky_or_broken_cells_had(sources):
    broken_qemu = {**VERSIONS, "qemu-system-x86": "1:8.0+dfsg-1"}
    cells = (
        cell("debian-12-release"),
        cell("debian-12-release-qemu-new", status="broken", versions=broken_qemu),
        cell("debian-13-release", status="flaky", base=TRIXIE, versions={"libvirt-daemon": "11.0"}),
    )
    assert plan_of(*cells, sources=sources).pins[0].blocked == {}
    plan = pins.plan(document(*cells), Path("r.json"), sources, block=True)
    (pin,) = plan.pins
    # libvirt 9.0.0-4+deb12u2 was in the broken cell too, but also in a safe one; trixie's is
    # another release's.
    assert pin.blocked == {"qemu": ("1:8.0+dfsg-1",)}
    text = pins.preferences(pin, plan, "hvgate matrix.pin --block")
    (block,) = [s for s in stanzas(text) if s["Pin-Priority"] == "-1"]
    assert block["Package"] == "src:qemu"
    assert block["Pin"] == r"version /^1:8\.0\+dfsg-1(\+b[0-9]+)?$/"


def test_every_file_states_its_evidence(sources):
    plan = plan_of(cell("debian-12-release"), sources=sources)
    pin = plan.pins[0]
    for text in (
        pins.preferences(pin, plan, "hvgate matrix.pin --run R"),
        pins.check_script(pin, plan, "hvgate matrix.pin --run R"),
        "\n".join(json.loads(pins.as_json(pin, plan, "hvgate matrix.pin --run R"))["comment"]),
    ):
        assert "Generated by `hvgate matrix.pin --run R`" in text
        assert "Evidence: run 20261123T203057Z-f701" in text
        assert "Cell debian-12-release: safe; 2 scenarios, 15 runs, 0 failures; accel tcg" in text
        assert (
            "boot: safe, 12 runs, 0 failures, failure rate 0–19%; "
            "SPRT accepted p<=0.05 after 12 runs" in text
        )
        assert "managed-save: safe, 3 runs, 0 failures\n" in text + "\n"
        assert "Needs only the release's own apt sources" in text


def test_json(sources):
    plan = plan_of(
        cell("debian-12-backports", source="backports", origins=BACKPORTS_ORIGINS),
        sources=sources,
    )
    data = json.loads(pins.as_json(plan.pins[0], plan, "hvgate matrix.pin"))
    assert data["name"] == "debian-12-backports"
    assert data["base"] == BOOKWORM and data["source"] == "backports"
    assert data["suites"] == ["bookworm-backports"]
    assert data["origins"]["seabios"] == ["bookworm-backports"]
    assert data["packages"]["qemu-utils"] == VERSIONS["qemu-system-x86"]
    assert data["source_packages"] == {
        "libvirt": "9.0.0-4+deb12u2",
        "libvirt-python": "9.0.0-1",
        "qemu": "1:7.2+dfsg-7+deb12u18",
    }
    assert data["evidence"]["run_id"] == "20261123T203057Z-f701"
    boot = data["evidence"]["scenarios"][0]
    assert (boot["runs"], boot["failures"], boot["interval"]) == (12, 0, [0.0, 0.2425])


CHECK_FAKES = {
    # dpkg-query -W -f FORMAT [PACKAGE]: the lines of $FAKE/installed (PACKAGE SOURCE
    # SOURCE_VERSION VERSION), in the format the script asks for.
    "dpkg-query": r"""#!/bin/sh
format=$3 package=${4:-}
while read -r name source source_version version; do
    [ -z "$package" ] || [ "$package" = "$name" ] || continue
    case $format in
        *source*) echo "ii |$name|$source|$source_version|$version" ;;
        *) echo "ii |$version" ;;
    esac
done < "$FAKE/installed"
""",
    # apt-cache madison|policy PACKAGE: from $FAKE/served (PACKAGE VERSION) and
    # $FAKE/candidates (PACKAGE VERSION).
    "apt-cache": r"""#!/bin/sh
if [ "$1" = madison ]; then
    awk -v p="$2" '$1 == p {print p " | " $2 " | somewhere"}' "$FAKE/served"
else
    awk -v p="$2" '$1 == p {print p ":"; print "  Candidate: " $2}' "$FAKE/candidates"
fi
""",
}


def run_check(tmp_path, text, installed="", served=None, candidates=None):
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    for name, body in CHECK_FAKES.items():
        (fake / name).write_text(body)
        (fake / name).chmod(0o755)
    (fake / "installed").write_text(installed)
    (fake / "served").write_text(served or "")
    (fake / "candidates").write_text(candidates if candidates is not None else served or "")
    (tmp_path / "check").write_text(text)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE": str(fake)}
    return subprocess.run(
        ["sh", str(tmp_path / "check")], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def check_text(sources):
    plan = pins.plan(
        document(
            cell("debian-12-release"),
            cell("bad", status="broken", versions={**VERSIONS, "libvirt-daemon": "9.0.0-9"}),
        ),
        Path("r.json"),
        sources,
        block=True,
    )
    return plan.pins[0], pins.check_script(plan.pins[0], plan, "hvgate matrix.pin")


def served_lines(pin):
    return "".join(f"{p} {v}\n" for p, v in pin.packages.items())


def test_the_check_passes_when_every_pin_holds(tmp_path, check_text):
    pin, text = check_text
    installed = "libvirt-clients libvirt 9.0.0-4+deb12u2 9.0.0-4+deb12u2\n"
    installed += "qemu-utils qemu 1:7.2+dfsg-7+deb12u18 1:7.2+dfsg-7+deb12u18+b3\n"
    done = run_check(tmp_path, text, installed, served_lines(pin))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hvgate-check: debian-12-release: 5 pinned packages")


def test_the_check_names_every_mismatch(tmp_path, check_text):
    pin, text = check_text
    installed = (
        # Off its exact pin.
        "qemu-utils qemu 1:7.2+dfsg-7+deb12u19 1:7.2+dfsg-7+deb12u19\n"
        # Not pinned itself, but built from a held source at another version.
        "libvirt-clients libvirt 9.0.0-4+deb12u3 9.0.0-4+deb12u3\n"
        # A version the run found broken.
        "libvirt0 libvirt 9.0.0-9 9.0.0-9\n"
    )
    served = served_lines(pin).replace("python3-libvirt 9.0.0-1+b1\n", "")
    candidates = served.replace("qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3", "qemu-system-x86 1:8.0")
    done = run_check(tmp_path, text, installed, served, candidates)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "hvgate-check: not served: python3-libvirt 9.0.0-1+b1 is in none of apt's sources",
        "hvgate-check: not effective: apt would install qemu-system-x86 1:8.0, pinned "
        "1:7.2+dfsg-7+deb12u18+b3 (another preference outranks these pins)",
        "hvgate-check: mismatch: qemu-utils is installed at 1:7.2+dfsg-7+deb12u19, pinned "
        "1:7.2+dfsg-7+deb12u18+b3",
        "hvgate-check: mismatch: libvirt-clients is installed at 9.0.0-4+deb12u3, built from "
        "libvirt 9.0.0-4+deb12u3; pinned libvirt 9.0.0-4+deb12u2",
        "hvgate-check: mismatch: libvirt0 is installed at 9.0.0-9, built from libvirt 9.0.0-9; "
        "pinned libvirt 9.0.0-4+deb12u2",
        "hvgate-check: mismatch: qemu-utils is installed at 1:7.2+dfsg-7+deb12u19, built from "
        "qemu 1:7.2+dfsg-7+deb12u19; pinned qemu 1:7.2+dfsg-7+deb12u18",
        "hvgate-check: blocked: libvirt0 9.0.0-9 is built from libvirt 9.0.0-9, which run "
        "20261123T203057Z-f701 found flaky or broken",
    ]


def test_the_check_is_posix_shell(tmp_path, check_text):
    _, text = check_text
    (tmp_path / "check").write_text(text)
    for shell in ("sh", "dash", "bash"):
        path = shutil.which(shell)
        if path:
            done = subprocess.run([path, "-n", str(tmp_path / "check")], capture_output=True)
            assert done.returncode == 0, (shell, done.stderr)


def test_snapshot(sources):
    plan = pins.plan(
        document(cell("debian-12-backports", source="backports", origins=BACKPORTS_ORIGINS)),
        Path("r.json"),
        sources,
        snapshot="http://snapshot.example/archive/debian/",
    )
    (pin,) = plan.pins
    assert pin.snapshot == "http://snapshot.example/archive/debian/20261123T203057Z/"
    text = pins.snapshot_list(pin, plan, "hvgate matrix.pin")
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        f"deb [check-valid-until=no] {pin.snapshot} {suite} main"
        for suite in ("bookworm", "bookworm-updates", "bookworm-backports")
    ]
    assert f"the snapshot archive {pin.snapshot} keeps it" in pins.check_script(pin, plan, "c")
    for bad in ("ftp://x/", "http://x/a b", "http://x/$(id)", "http://x/\n"):
        with pytest.raises(ConfigurationError, match="--snapshot"):
            pins.plan(document(cell("debian-12-release")), Path("r"), sources, snapshot=bad)


# --- pin(): reading and writing -----------------------------------------------------------------


@pytest.fixture
def results(tmp_path):
    results = tmp_path / "results"
    publish(
        RunResult.from_json(document(cell("debian-12-release"), cell("bad", status="broken"))),
        results,
    )
    return results


def test_pin_writes_three_files_per_pin_under_the_run(results, unit_matrix_path):
    plan, paths = pins.pin(None, None, None, str(unit_matrix_path), results)
    out = results / "pins" / "20261123T203057Z-f701"
    assert paths == [
        out / "debian-12-release.pref",
        out / "debian-12-release.check",
        out / "debian-12-release.json",
    ]
    assert all(p.is_file() for p in paths)
    assert plan.refused == ["refused bad (broken): no reason recorded"]
    # --run and --input read the same run.
    again, _ = pins.pin("20261123T203057Z-f701", None, str(results / "elsewhere"), None, results)
    assert (results / "elsewhere" / "debian-12-release.pref").is_file()
    assert [p.cell["id"] for p in again.pins] == ["debian-12-release"]


def test_pin_writes_nothing_when_nothing_is_safe(tmp_path):
    results = tmp_path / "results"
    publish(RunResult.from_json(document(cell("bad", status="broken"))), results)
    plan, paths = pins.pin(None, None, None, None, results)
    assert plan.pins == [] and paths == []
    assert not (results / "pins").exists()


@pytest.mark.parametrize(
    ("run_id", "input_name", "content", "says"),
    [
        ("nope", None, None, "--run nope: no "),
        ("../x", None, None, "--run '../x': not a run id"),
        ("a", "in.json", None, "--run and --input: give one of them"),
        (None, "in.json", "{oops", "in.json:1: not JSON"),
        (None, "in.json", '{"run_id": "r", "cells": []}', "results format None"),
        (
            None,
            "in.json",
            '{"format": 1, "run_id": "r", "started": "", "finished": "", "host": {}, '
            '"cells": [{"id": "x"}]}',
            "cells[0].distro: Field required",
        ),
        (None, "missing.json", None, "missing.json: no such results file"),
    ],
)
def test_pin_refuses_bad_input_in_one_line(tmp_path, run_id, input_name, content, says):
    if content is not None:
        (tmp_path / input_name).write_text(content)
    input_file = str(tmp_path / input_name) if input_name else None
    with pytest.raises(ConfigurationError) as info:
        pins.pin(run_id, input_file, str(tmp_path / "out"), None, tmp_path)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_pin_refuses_a_version_that_could_break_out_of_its_file(tmp_path):
    bad = {**VERSIONS, "libvirt-daemon": "9.0\nPackage: *"}
    path = tmp_path / "in.json"
    path.write_text(json.dumps(document(cell("x", versions=bad))))
    with pytest.raises(
        ConfigurationError,
        match="cells\\[0\\].versions.libvirt-daemon: '9.0\\\\nPackage: \\*' is not a Debian version",
    ):
        pins.pin(None, str(path), str(tmp_path / "out"), None, tmp_path)
    assert not (tmp_path / "out").exists()


def test_pin_task(results, unit_matrix_path):
    done = cli.invoke("matrix.pin", "--matrix", str(unit_matrix_path), results_dir=results)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "refused bad (broken): no reason recorded"
    assert lines[1].endswith("pins/20261123T203057Z-f701/debian-12-release.pref")


def test_pin_task_exits_1_when_nothing_could_be_pinned(tmp_path, unit_matrix_path):
    results = tmp_path / "results"
    publish(RunResult.from_json(document(cell("bad", status="broken"))), results)
    done = cli.invoke("matrix.pin", "--matrix", str(unit_matrix_path), results_dir=results)
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["refused bad (broken): no reason recorded"]
    assert done.stderr.strip() == "nothing to pin: no cell of run 20261123T203057Z-f701 is safe"


def test_pin_task_with_an_unknown_run_exits_2(tmp_path):
    done = cli.invoke("matrix.pin", "--run", "nope", results_dir=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --run nope: no ")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_line_break_in_the_input_path_is_refused_in_one_line(tmp_path):
    # The file's name is quoted in each file's evidence lines: a line break there is refused.
    path = tmp_path / "a\nPackage: FORGED\nPin: version 0\n.json"
    path.write_text(json.dumps(document(cell("x"))))
    with pytest.raises(ConfigurationError) as info:
        pins.pin(None, str(path), str(tmp_path / "out"), None, tmp_path)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


# --- tampered results: refused in one line, exit 2, nothing written ------------------------------

PAYLOADS = [
    "x\nPackage: *\nPin-Priority: 1001",
    "../../etc/apt/preferences.d/x",
    "$(touch /tmp/hvgate-pwned)",
    "`id`",
    "a'; id; '",
    "a\u2028b",
]
FIELDS = {
    "run_id": lambda d, v: d.update(run_id=v),
    "started": lambda d, v: d.update(started=v),
    "finished": lambda d, v: d.update(finished=v),
    "id": lambda d, v: d["cells"][0].update(id=v),
    "distro": lambda d, v: d["cells"][0].update(distro=v),
    "release": lambda d, v: d["cells"][0].update(release=v),
    "codename": lambda d, v: d["cells"][0].update(codename=v),
    "source": lambda d, v: d["cells"][0].update(source=v),
    "accel": lambda d, v: d["cells"][0].update(accel=v),
    "scenario name": lambda d, v: d["cells"][0]["scenarios"][0].update(name=v),
    "decision": lambda d, v: d["cells"][0]["scenarios"][0].update(decision=v),
    "version": lambda d, v: d["cells"][0]["versions"].update({"libvirt-daemon": v}),
    "package": lambda d, v: d["cells"][0]["versions"].update({v: "1.0"}),
    "origin package": lambda d, v: d["cells"][0]["origins"][1].update(package=v),
    "origin version": lambda d, v: d["cells"][0]["origins"][1].update(version=v),
    "origin suite": lambda d, v: d["cells"][0]["origins"][1].update(suites=[v]),
    "blocked version": lambda d, v: d["cells"][1]["versions"].update({"qemu-system-x86": v}),
}


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
@pytest.mark.parametrize("field", FIELDS)
def test_a_tampered_field_is_refused_and_nothing_written(
    tmp_path, unit_matrix_path, field, payload
):
    data = document(
        cell("debian-12-backports", source="backports", origins=BACKPORTS_ORIGINS),
        cell("debian-12-broken", status="broken", source="backports"),
    )
    FIELDS[field](data, payload)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError) as info:
        pins.pin(None, str(path), str(out), str(unit_matrix_path), tmp_path, block=True)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert not out.exists() and not (tmp_path / "pins").exists()


def test_a_tampered_results_file_exits_2_through_the_task(tmp_path):
    data = document(cell("debian-12-release"))
    data["cells"][0]["scenarios"][0]["decision"] = "ok\nPackage: *\nPin-Priority: 1001"
    path = tmp_path / "in.json"
    path.write_text(json.dumps(data))
    done = cli.invoke(
        "matrix.pin", "--input", str(path), "--out", str(tmp_path / "out"), results_dir=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "scenarios[0].decision" in done.stderr
    assert not (tmp_path / "out").exists()


# --- the committed run's pin files ----------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "golden" / "pins"


def test_the_committed_runs_pins_match_golden(tmp_path, request, root):
    out = tmp_path / "pins"
    plan, paths = pins.pin(None, None, str(out), str(root / "matrix.yaml"), root / "results")
    published = root / "results" / "pins" / plan.data["run_id"]
    if request.config.getoption("--regenerate"):
        for directory in (GOLDEN, published):
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(out, directory)
    for directory in (GOLDEN, published):
        assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in paths)
        for path in paths:
            expected = (directory / path.name).read_text()
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(True),
                    path.read_text().splitlines(True),
                    str(directory / path.name),
                    "hvgate matrix.pin",
                )
            )
            assert not diff, f"pin file differs (pytest --regenerate to accept):\n{diff}"
