"""harness.publish and harness.results: the run's JSON round-trips, and the table is rendered from it."""

from __future__ import annotations

import json

import pytest

from harness.model import SCENARIOS
from harness.publish import markdown, publish
from harness.results import CellResult, RunResult, ScenarioResult, Status


def scenario(name, status=Status.SAFE, runs=2, failures=0, errors=0, messages=()):
    return ScenarioResult(
        name=name,
        status=status,
        runs=runs,
        failures=failures,
        errors=errors,
        durations_s=[1.0, 3.0][:runs],
        messages=list(messages),
        details=[{"boot_s": 1.5}] * runs,
        logs={"console": ["HVGATE-READY boot=abc"]},
    )


def make_run() -> RunResult:
    safe = CellResult(
        id="debian-12-release",
        distro="debian",
        release="12",
        codename="bookworm",
        source="release",
        status=Status.FLAKY,
        reason="reboot: no heartbeat | after reboot",
        image="hvgate/cell:debian-12-release-0123",
        build={"status": "cached", "seconds": 0.1, "log": None, "log_tail": []},
        versions={"libvirt-daemon": "9.0.0-4+deb12u2", "qemu-system-x86": "1:7.2+dfsg-7"},
        libvirt_version="9.0.0",
        qemu_version="7.2.0",
        accel="tcg",
        thresholds={"min": True, "next-min": False},
        scenarios=[
            scenario(name)
            if name != "reboot"
            else scenario(name, Status.FLAKY, failures=1, messages=["no heartbeat"])
            for name in SCENARIOS
        ],
        log_dir="results/logs/r1/debian-12-release",
        duration_s=61.5,
    )
    unavailable = CellResult(
        id="debian-13-release",
        distro="debian",
        release="13",
        codename="trixie",
        source="release",
        status=Status.UNAVAILABLE,
        reason="source unreachable: Could not resolve 'deb.example'",
        build={"status": "unavailable", "seconds": 3.0, "log": "x.log", "log_tail": ["E: ..."]},
    )
    return RunResult(
        run_id="20240101-000000-abcd",
        started="2024-01-01T00:00:00+00:00",
        finished="2024-01-01T00:10:00+00:00",
        host={"kernel": "6.1.0", "kvm": False},
        cells=[safe, unavailable],
    )


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| "):
            # Split on unescaped pipes only.
            cells = line.replace("\\|", "\0").strip("|").split("|")
            rows.append([cell.strip().replace("\0", "|") for cell in cells])
    return rows


def test_json_round_trip():
    run = make_run()
    assert RunResult.from_json(run.to_json()) == run
    # Through text too, as the files on disk are read back.
    assert RunResult.from_json(json.loads(json.dumps(run.to_json()))) == run


def test_from_json_restores_the_status_enum():
    data = json.loads(json.dumps(make_run().to_json()))
    run = RunResult.from_json(data)
    assert run.cells[0].status is Status.FLAKY
    assert run.cells[0].scenarios[1].status is Status.FLAKY
    assert run.cells[1].status is Status.UNAVAILABLE


def test_markdown_table():
    data = make_run().to_json()
    text = markdown(data)
    rows = table_rows(text)
    header, rule, *cells = rows
    assert header[0] == "cell"
    assert header[-1] == "verdict"
    names = [name for name in header if name in SCENARIOS]
    assert names == list(SCENARIOS)
    assert set(rule) == {"---"}
    assert len(rule) == len(header)
    assert [row[0] for row in cells] == ["debian-12-release", "debian-13-release"]
    for row in cells:
        assert len(row) == len(header)
    first = dict(zip(header, cells[0], strict=True))
    assert first["verdict"] == "**flaky**"
    assert first["libvirt"] == "9.0.0-4+deb12u2"
    assert first["boot"].startswith("✓ 2/2")
    assert first["reboot"].startswith("✗ 1/2")
    assert first["min"] == "≥"
    assert first["next-min"] == "<"
    second = dict(zip(header, cells[1], strict=True))
    assert second["verdict"] == "**unavailable**"
    assert second["boot"] == "–"
    assert "`debian-13-release` unavailable: source unreachable" in text
    assert "20240101-000000-abcd" in text


def test_markdown_escapes_pipes_in_table_cells():
    data = make_run().to_json()
    data["cells"][0]["versions"]["libvirt-daemon"] = "9.0.0|evil"
    text = markdown(data)
    assert "9.0.0\\|evil" in text
    header, *rows = table_rows(text)
    assert all(len(row) == len(header) for row in rows)
    assert dict(zip(header, rows[1], strict=True))["libvirt"] == "9.0.0|evil"


def test_markdown_needs_only_the_json():
    data = make_run().to_json()
    assert markdown(json.loads(json.dumps(data))) == markdown(data)


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


def test_publish_writes_json_and_table(results_dir):
    run = make_run()
    paths = publish(run, results_dir)
    data = json.loads(paths["json"].read_text())
    assert RunResult.from_json(data) == run
    assert paths["markdown"].read_text() == markdown(data)
    assert paths["latest_json"].read_text() == paths["json"].read_text()
    assert paths["latest_markdown"].read_text() == paths["markdown"].read_text()
    assert paths["json"].parent == results_dir / "runs" / run.run_id
    for path in paths.values():
        assert results_dir in path.parents
