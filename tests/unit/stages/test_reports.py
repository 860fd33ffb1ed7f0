"""What the reports tell a gate maintainer: what to pin per release, honest marks for a safe
scenario with failed runs, the interval the verdict rests on, a terminal summary that fits 100
columns, JUnit that a published schema accepts, and results that render the same anywhere."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import xmlschema

from harness.core.fingerprint import fingerprint
from harness.core.model import Policy
from harness.stages import formats
from harness.stages.publish import publish, report
from tests import cli
from tests.results_sample import RUN_ID, document, sample_run, with_optional_fields

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "results" / "latest.json"
# Jenkins' xunit plugin's JUnit schema; its source is named at the top of the file.
JUNIT_XSD = ROOT / "tests" / "schemas" / "junit-10.xsd"
POLICY = Policy().model_dump(mode="json")


def committed() -> dict:
    return json.loads(COMMITTED.read_text())


def with_a_safe_failure(data: dict) -> dict:
    """ubuntu-24.04-release's boot: safe by the test after 1 failed run of 24."""
    data = with_optional_fields(data)
    data["policy"] = POLICY
    cell = next(c for c in data["cells"] if c["id"] == "ubuntu-24.04-release")
    boot = cell["scenarios"][0]
    message = "no heartbeat after #3 within 30 s"
    boot.update(
        runs=24,
        failures=1,
        failure_rate=round(1 / 24, 4),
        durations_s=[1.0] * 24,
        messages=[message],
        decision="SPRT accepted p<=0.01 against p>=0.25 at 0.95 confidence: 1 of 24 runs failed",
        failures_by_cause=[
            {
                "fingerprint": fingerprint("boot", "ScenarioFailure", message),
                "cause": "libvirt-qemu",
                "error_class": "ScenarioFailure",
                "message": message,
                "count": 1,
            }
        ],
    )
    return data


# --- honest marks and intervals ---------------------------------------------------------------


def test_a_safe_scenario_with_failed_runs_is_marked_apart_everywhere(tmp_path):
    data = with_a_safe_failure(document(sample_run()))
    clean = next(c for c in data["cells"] if c["id"] == "ubuntu-24.04-release")["scenarios"][1]
    # Markdown: ✓* and its failed runs, a note saying so; a clean one keeps its plain tick.
    text = formats.markdown(data)
    assert "| ✓* 1/24 [0.9–17%] |" in text
    assert f"| ✓ {clean['runs']} [0–58%] |" in text
    assert "- `ubuntu-24.04-release` boot: safe with 1 failed run: SPRT accepted" in text
    # The page: its own class and colour, in the grid and the table.
    page = formats.html(data, tmp_path)
    assert 'class="scenario status-safe-failed"' in page
    assert 'class="status-safe-failed" title="boot: safe, with 1 failed run' in page
    assert formats.COLOUR_SAFE_FAILED in page
    # The terminal: the cell needs attention, and says why.
    summary = formats.summary_text(data)
    assert "ubuntu-24.04-release" in summary and "failed runs: boot 1/24" in summary
    # JUnit: a pass with a flakyFailure, as Surefire reports a test that passed on a rerun.
    junit = formats.junit(data)
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    schema.validate(junit)
    tree = schema.to_dict(junit)
    suite = next(s for s in tree["testsuite"] if s["@name"] == "ubuntu-24.04-release")
    boot = next(c for c in suite["testcase"] if c["@name"] == "boot")
    assert "failure" not in boot and len(boot["flakyFailure"]) == 1
    assert boot["flakyFailure"][0]["@type"] == "ScenarioFailure"
    assert "1 of 24 runs failed" in boot["system-out"][0]


def test_the_interval_shown_is_at_the_tests_error_rates():
    """The sequential test errs with chance 1 - confidence at each of p0 and p1, so each end of
    the interval shown is a one-sided bound at that confidence: after 11 clean runs (the
    fewest that make a scenario safe) its top is below p1, where the two-sided 95% interval
    the document keeps (26%) is not."""
    data = committed()
    boot = data["cells"][0]["scenarios"][0]
    assert (boot["status"], boot["runs"], boot["failures"]) == ("safe", 11, 0)
    assert boot["interval"][1] > data["policy"]["unsafe_failure_rate"]
    low, high = formats.decision_interval(boot, data)
    assert low == 0.0 and 0.19 < high < data["policy"]["unsafe_failure_rate"]
    assert formats.interval_text(boot, data) == "0–20%"
    # A stricter policy: a wider interval.
    strict = {**data, "policy": {**data["policy"], "confidence": 0.99}}
    assert formats.decision_interval(boot, strict)[1] > high


def test_interval_ends_are_rounded_outwards():
    assert formats.bound(0.57497, up=True) == "58"
    assert formats.bound(0.57497, up=False) == "57"
    assert formats.bound(0.0917, up=False) == "9.1"
    assert formats.bound(0.8026, up=False) == "80"
    assert formats.bound(1.0, up=True) == "100"


# --- what to pin ------------------------------------------------------------------------------


def test_recommendations_of_the_committed_run():
    data = committed()
    found = {r["release"]: r for r in formats.recommendations(data)}
    assert list(found) == list(dict.fromkeys(formats.release_of(c) for c in data["cells"]))
    # The newest safe versions outside a staging pocket.
    assert found["debian 12"]["cell"]["id"] == "debian-12-backports"
    assert found["ubuntu 22.04"]["cell"]["id"] == "ubuntu-22.04-updates"
    assert [c["id"] for c in found["debian 13"]["unsafe"]] == ["debian-13-release-qemu-backports"]
    for entry in found.values():
        assert entry["cell"] is None or not entry["cell"].get("stages_for")


def test_nothing_safe_yet():
    data = document(sample_run())
    found = {r["release"]: r for r in formats.recommendations(data)}
    assert found["debian 12"]["cell"] is None
    assert "**debian 12**: nothing safe yet" in formats.markdown(data)
    assert "nothing safe yet" in formats.summary_text(data)


# --- the terminal -----------------------------------------------------------------------------


def test_the_terminal_summary_of_the_committed_run_fits_100_columns():
    data = committed()
    files = {"results": "results/latest.json", "page": "results/latest.html"}
    text = formats.summary_text(data, files)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    counts = Counter(cell["status"] for cell in data["cells"])
    head = f"hvgate run {data['run_id']}: {len(data['cells'])} cells: "
    assert lines[0].startswith(head)
    assert sorted(lines[0][len(head) :].split(", ")) == sorted(
        f"{n} {s}" for s, n in counts.items()
    )
    # The broken cell first, with why; where the files are.
    attention = [line for line in lines if "│" in line and not line.startswith(" release")]
    cells = [line.split("│")[0].strip() for line in attention if line.split("│")[0].strip()]
    assert "debian-13-release-qemu-backports" in cells
    assert cells.index("debian-13-release-qemu-backports") < cells.index(
        "debian-13-proposed-updates"
    )
    assert "page:     results/latest.html" in lines


@pytest.mark.parametrize("kind", ["json", "markdown", "summary"])
def test_report_prints_the_chosen_format(tmp_path, kind):
    source = tmp_path / "latest.json"
    shutil.copy(COMMITTED, source)
    done = cli.invoke(
        "matrix.report", "--input", str(source), "--format", kind, results_dir=tmp_path
    )
    assert done.returncode == 0, done.stderr
    if kind == "json":
        assert json.loads(done.stdout) == committed()
    elif kind == "markdown":
        assert done.stdout.rstrip("\n") == formats.markdown(committed()).rstrip("\n")
    else:
        assert max(map(len, done.stdout.splitlines())) <= 100
        assert "debian-13-release-qemu-backports" in done.stdout


def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path):
    source = tmp_path / "latest.json"
    shutil.copy(COMMITTED, source)
    done = cli.invoke(
        "matrix.report", "--input", str(source), "--format", "yaml", results_dir=tmp_path
    )
    assert done.returncode == 2
    assert "--format 'yaml': one of summary, markdown, json" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json"]


# --- JUnit against a published schema ---------------------------------------------------------


def test_junit_of_the_committed_run_and_of_every_status_is_valid_xunit_junit():
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    schema.validate(formats.junit(committed()))
    sample = with_a_safe_failure(document(sample_run()))
    schema.validate(formats.junit(sample))
    # The schema does check: what it does not allow fails.
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(formats.junit(sample).replace("<testsuites ", "<testsuites skipped='1' "))


def test_junit_inconclusive_is_a_failure_with_its_evidence():
    data = with_optional_fields(document(sample_run()))
    data["cells"][0]["scenarios"][2]["status"] = "inconclusive"
    tree = xmlschema.XMLSchema(JUNIT_XSD).to_dict(formats.junit(data))
    suite = next(s for s in tree["testsuite"] if s["@name"] == "debian-12-release")
    case = next(c for c in suite["testcase"] if c["@name"] == "pause-resume")
    assert case["failure"][0]["@type"] == "inconclusive"
    assert "pause-resume: inconclusive" in case["system-out"][0]


# --- portable results -------------------------------------------------------------------------


def test_published_results_hold_relative_paths_the_version_and_the_policy(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    results_dir = tmp_path / "results"
    run = sample_run(results_dir)
    paths = publish(run, results_dir)
    text = paths["latest_json"].read_text()
    assert str(tmp_path) not in text
    data = json.loads(text)
    assert data["hvgate"]["version"] and "commit" in data["hvgate"]
    assert data["cells"][0]["log_dir"] == f"runs/{RUN_ID}/logs/debian-12-release"


def test_the_committed_results_are_portable():
    data = committed()
    assert data["policy"]["unsafe_failure_rate"] == 0.25
    for cell in data["cells"]:
        for path in (cell.get("log_dir"), (cell.get("build") or {}).get("log")):
            assert not path or not Path(path).is_absolute(), (cell["id"], path)


def rendered(directory: Path) -> dict[str, bytes]:
    """Pins (as `invoke matrix.pin --input` writes them) and every format, rendered from the
    results file in `directory`."""
    source = directory / "latest.json"
    pins = directory / "pins" / json.loads(source.read_text())["run_id"]
    done = cli.invoke(
        "matrix.pin", "--input", str(source), "--out", str(pins), results_dir=directory
    )
    assert done.returncode == 0, done.stderr
    report(input_path=source)
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "latest.json"
    }


def test_a_results_file_moved_elsewhere_renders_the_same_page_and_pins(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    here, there = tmp_path / "here", tmp_path / "else" / "where" / "deeper"
    here.mkdir()
    shutil.copy(COMMITTED, here / "latest.json")
    first = rendered(here)
    there.parent.mkdir(parents=True)
    shutil.move(here, there)
    for name in first:
        (there / name).unlink()
    again = rendered(there)
    assert sorted(first) == sorted(again)
    assert any(name.endswith(".pref") for name in first) and "latest.html" in first
    for name, content in first.items():
        assert again[name] == content, name
    # The page links the pins it was rendered next to.
    assert b'href="pins/' in first["latest.html"]


def test_what_the_containers_left_out_is_shown_once_for_the_cells_alike():
    data = committed()
    left_out = [
        {"feature": "apparmor", "reason": "QEMU is not <b>confined</b>"},
        {"feature": "cgroups", "reason": "qemu.conf cgroup_controllers = [ ]"},
    ]
    for cell in data["cells"]:
        cell["not_exercised"] = left_out
    markdown = formats.markdown(data)
    line = "not exercised in every cell that recorded it (the container's limits): `apparmor`, `cgroups`"
    assert markdown.count(line) == 1
    page = formats.html(data)
    assert "QEMU is not &lt;b&gt;confined&lt;/b&gt;" in page and "<b>confined" not in page
    # Cells that differ are named.
    data["cells"][0]["not_exercised"] = left_out[1:]
    assert f"not exercised in `{data['cells'][0]['id']}` (the container's limits): `cgroups`" in (
        formats.markdown(data)
    )
    for cell in data["cells"]:
        cell.pop("not_exercised")
    assert "not exercised" not in formats.markdown(data)


def test_a_cell_judged_on_another_cells_smoke_test_says_which(tmp_path):
    data = committed()
    first, second = data["cells"][0], data["cells"][1]
    key = "0123456789abcdef"
    first["evidence"] = {"key": key, "since": None}
    second["evidence"] = {"key": key, "since": None, "tested_as": first["id"]}
    line = (
        f"`{second['id']}`: the same experiment as `{first['id']}` (evidence key `{key}`: the "
        "same packages, built the same way), not tested again: judged on its smoke test"
    )
    assert formats.markdown(data).count(line) == 1
    assert f"`{first['id']}`: the same experiment" not in formats.markdown(data)
    # Read back like any results file; a cell id that is none is refused, naming where.
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(data))
    assert report(input_path=path, output_dir=tmp_path / "out")
    second["evidence"]["tested_as"] = "not a cell id!"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match=r"tested_as"):
        report(input_path=path, output_dir=tmp_path / "out")
