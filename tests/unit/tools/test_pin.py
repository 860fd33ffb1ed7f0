"""harness.tools.pin: each base and source's newest safe versions as apt preferences, a devstack
local.conf fragment and JSON; everything else refused, one line each."""

from __future__ import annotations

import dataclasses
import json
import re
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
        decision=decision,
    )


def cell(cell_id, status="safe", versions=None, base=None, source="release", **extra):
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


def test_a_mixed_source_cell_is_pinned_apart_from_its_main_source(sources):
    plan = plan_of(
        cell("debian-13-release", base=TRIXIE),
        cell("debian-13-release-qemu-backports", base=TRIXIE),
        sources=sources,
    )
    by_name = {p.name: p for p in plan.pins}
    assert sorted(by_name) == ["debian-13-release", "debian-13-release-qemu-backports"]
    assert by_name["debian-13-release"].suites == ()
    assert by_name["debian-13-release-qemu-backports"].suites == ("trixie-backports",)


def test_suites_come_from_the_matrix(sources):
    name, suites, needs = sources.where(asdict(cell("debian-12-backports", source="backports")))
    assert (name, suites) == ("debian-12-backports", ("bookworm-backports",))
    assert needs.startswith("Needs bookworm-backports in apt's sources")
    # A cell the matrix no longer has: its source still names the suite.
    name, suites, _ = sources.where(asdict(cell("gone-cell", source="backports")))
    assert (name, suites) == ("debian-12-backports", ("bookworm-backports",))
    name, suites, needs = sources.where(asdict(cell("x", source="elsewhere")))
    assert (name, suites) == ("debian-12-elsewhere", ())
    assert "does not name it" in needs
    # Without a matrix the suite goes unnamed, and the header says so.
    assert pins.Sources.read(None).where(asdict(cell("x", source="backports")))[1] == ()


# --- the files ----------------------------------------------------------------------------------


def stanzas(text):
    return [dict(p) for p in Deb822.iter_paragraphs(text.splitlines()) if p]


def test_preferences_pin_every_installed_package_exactly(sources):
    plan = plan_of(cell("debian-12-backports", source="backports"), sources=sources)
    text = pins.preferences(plan.pins[0], plan, "invoke matrix.pin")
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
    text = pins.preferences(plan.pins[0], plan, "invoke matrix.pin")
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


def test_preferences_let_dependencies_come_from_the_cells_other_suites(sources):
    plan = plan_of(cell("debian-12-backports", source="backports"), sources=sources)
    text = pins.preferences(plan.pins[0], plan, "invoke matrix.pin")
    general = [(s["Pin"], s["Pin-Priority"]) for s in stanzas(text) if s["Package"] == "*"]
    assert general == [
        ("release n=bookworm-backports", "500"),
        ("release a=bookworm-backports", "500"),
    ]
    release = plan_of(cell("debian-12-release"), sources=sources)
    text = pins.preferences(release.pins[0], release, "invoke matrix.pin")
    assert not [s for s in stanzas(text) if s["Package"] == "*"]


def test_every_file_states_its_evidence(sources):
    plan = plan_of(cell("debian-12-release"), sources=sources)
    pin = plan.pins[0]
    for text in (
        pins.preferences(pin, plan, "invoke matrix.pin --run R"),
        pins.local_conf(pin, plan, "invoke matrix.pin --run R"),
        "\n".join(json.loads(pins.as_json(pin, plan, "invoke matrix.pin --run R"))["comment"]),
    ):
        assert "Generated by `invoke matrix.pin --run R`" in text
        assert "Evidence: run 20261123T203057Z-f701" in text
        assert "Cell debian-12-release: safe; 2 scenarios, 15 runs, 0 failures; accel tcg" in text
        assert (
            "boot: safe, 12 runs, 0 failures, failure rate 95% interval 0.0–24.2%; "
            "SPRT accepted p<=0.05 after 12 runs" in text
        )
        assert "managed-save: safe, 3 runs, 0 failures\n" in text + "\n"
        assert "Needs only the base's own apt sources" in text


def test_json(sources):
    plan = plan_of(cell("debian-12-backports", source="backports"), sources=sources)
    data = json.loads(pins.as_json(plan.pins[0], plan, "invoke matrix.pin"))
    assert data["name"] == "debian-12-backports"
    assert data["base"] == BOOKWORM and data["source"] == "backports"
    assert data["suites"] == ["bookworm-backports"]
    assert data["packages"]["qemu-utils"] == VERSIONS["qemu-system-x86"]
    assert data["source_packages"] == {
        "libvirt": "9.0.0-4+deb12u2",
        "libvirt-python": "9.0.0-1",
        "qemu": "1:7.2+dfsg-7+deb12u18",
    }
    assert data["evidence"]["run_id"] == "20261123T203057Z-f701"
    boot = data["evidence"]["scenarios"][0]
    assert (boot["runs"], boot["failures"], boot["interval"]) == (12, 0, [0.0, 0.2425])


def localrc(text):
    """The [[local|localrc]] section, as devstack extracts it from local.conf."""
    lines, inside = [], False
    for line in text.splitlines():
        if re.match(r"^\[\[.+\|.*\]\]", line):
            inside = line == "[[local|localrc]]"
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_local_conf_writes_the_preferences_once(sources, tmp_path):
    plan = plan_of(cell("debian-12-backports", source="backports"), sources=sources)
    pin = plan.pins[0]
    text = pins.local_conf(pin, plan, "invoke matrix.pin")
    section = localrc(text)
    assert "/etc/apt/preferences.d/hvgate-debian-12-backports" in section
    # Run it as stackrc would, with the target moved here and sudo recorded, twice.
    script = tmp_path / "localrc"
    script.write_text(section.replace("/etc/apt/preferences.d/hvgate-", f"{tmp_path}/hvgate-"))
    shim = f'sudo() {{ echo sudo >> {tmp_path}/calls; "$@"; }}; set -eu; . {script}; . {script}'
    subprocess.run(["bash", "-c", shim], check=True)
    written = (tmp_path / "hvgate-debian-12-backports").read_text()
    assert written == pins.preferences(pin, plan, "invoke matrix.pin")
    assert (tmp_path / "calls").read_text() == "sudo\n"  # the second time, nothing changed


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
        out / "debian-12-release.local.conf",
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


def test_a_line_break_in_the_input_path_stays_in_its_comment(tmp_path):
    # The path is the user's, not the file's: it is quoted in each file's evidence lines.
    folder = tmp_path / "a\nPackage: FORGED\nPin: version 0\n"
    folder.mkdir()
    path = folder / "in.json"
    path.write_text(json.dumps(document(cell("x"))))
    _, written = pins.pin(None, str(path), str(tmp_path / "out"), None, tmp_path)
    for target in written:
        forged = [line for line in target.read_text().splitlines() if "FORGED" in line]
        assert forged and all(line.startswith(("#", ' "comment"', '  "')) for line in forged)
