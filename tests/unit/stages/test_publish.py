"""harness.stages.publish, harness.stages.formats and harness.core.results: the run's JSON round-trips, every format
is rendered from it alone, and `matrix.report` renders them again from a stored document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import junitparser
import pytest

from harness.core.errors import ConfigurationError
from harness.core.fingerprint import fingerprint
from harness.core.model import SCENARIOS
from harness.core.results import FORMAT, RunResult, Status
from harness.core.version import hvgate_version
from harness.stages import formats
from harness.stages.publish import (
    RESULTS_SCHEMA_PATH,
    portable,
    publish,
    read_results,
    report,
    results_schema_text,
)
from tests import cli
from tests.results_sample import RUN_ID, document, sample_run, with_optional_fields, write_logs

ROOT = Path(__file__).resolve().parents[3]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| "):
            # Split on unescaped pipes only.
            cells = line.replace("\\|", "\0").strip("|").split("|")
            rows.append([cell.strip().replace("\0", "|") for cell in cells])
    return rows


def table(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    header, rule, *rows = table_rows(text)
    assert set(rule) == {"---"} and len(rule) == len(header)
    for row in rows:
        assert len(row) == len(header), row
    return header, {row[0]: dict(zip(header, row, strict=True)) for row in rows}


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


@pytest.fixture
def data():
    return document(sample_run())


# --- the JSON document ------------------------------------------------------------------------


def test_json_round_trip():
    run = sample_run()
    assert RunResult.from_json(run.to_json()) == run
    # Through text too, as the files on disk are read back.
    assert RunResult.from_json(json.loads(json.dumps(run.to_json()))) == run


def test_from_json_restores_the_status_enum(data):
    run = RunResult.from_json(data)
    assert run.cells[0].status is Status.FLAKY
    assert run.cells[0].scenarios[1].status is Status.FLAKY
    assert run.cells[3].status is Status.UNAVAILABLE


def test_the_document_says_its_format(data):
    assert data["format"] == FORMAT


def test_committed_results_schema_is_current():
    assert RESULTS_SCHEMA_PATH.read_text() == results_schema_text(), (
        "run `hvgate matrix.schema` and commit results.schema.json"
    )


def test_documents_validate_against_the_committed_schema(data):
    schema = json.loads(RESULTS_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    # The stored document of a real run too.
    jsonschema.validate(json.loads((ROOT / "results" / "latest.json").read_text()), schema)
    for wrong in ({**data, "format": FORMAT + 1}, {k: v for k, v in data.items() if k != "format"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    bad = json.loads(json.dumps(data))
    bad["cells"][0]["status"] = "fine"
    with pytest.raises(jsonschema.ValidationError, match="fine"):
        jsonschema.validate(bad, schema)


# --- Markdown ---------------------------------------------------------------------------------


def test_markdown_table(data):
    text = formats.markdown(data)
    header, rows = table(text)
    assert header[:7] == ["cell", "verdict", "base", "source", "libvirt", "QEMU", "accel"]
    assert [n for n in header if n in SCENARIOS] == list(SCENARIOS)
    assert header[-2:] == ["min", "next-min"]
    assert list(rows) == [c["id"] for c in data["cells"]]
    flaky = rows["debian-12-release"]
    assert flaky["verdict"] == "**flaky**"
    assert flaky["base"] == "debian 12"
    assert flaky["source"] == "release"
    assert flaky["libvirt"] == "9.0.0-1"
    assert flaky["QEMU"] == "1:7.2.0+dfsg-1"
    assert flaky["accel"] == "tcg"
    assert flaky["boot"] == "✓ 2"
    assert flaky["reboot"] == "≈ 1/2"
    assert (flaky["min"], flaky["next-min"]) == ("≥", "<")
    assert rows["debian-13-release-qemu-backports"]["managed-save"] == "✗ 2/2"
    unavailable = rows["debian-13-backports"]
    assert unavailable["verdict"] == "**unavailable**"
    assert unavailable["boot"] == unavailable["libvirt"] == unavailable["min"] == "–"
    assert "- `debian-13-backports` unavailable: source unreachable" in text
    assert RUN_ID in text
    assert "`min`: ≥ the matrix's min libvirt and QEMU versions" in text


def test_markdown_shows_the_optional_fields_when_present(data):
    plain = formats.markdown(data)
    text = formats.markdown(with_optional_fields(data))
    _, rows = table(text)
    # The interval the decision rests on: each end a one-sided 95% bound (a 90% interval).
    assert rows["debian-12-release"]["reboot"] == "≈ 1/2 [12–88%]"
    assert rows["debian-12-release"]["boot"] == "✓ 2 [0–58%]"
    assert rows["debian-13-release-qemu-backports"]["verdict"] == "**broken** (regression)"
    assert rows["ubuntu-24.04-release"]["verdict"] == "**safe** (fix)"
    assert rows["debian-12-release"]["verdict"] == "**flaky**"  # change None: nothing to say
    assert "- `debian-13-release-qemu-backports` regression: safe → broken" in text
    assert "- `debian-12-release` reboot: flaky after 2 runs" in text
    # Decisions of safe scenarios stay in the JSON and the page, not in the table's notes.
    assert "boot: safe after" not in text
    assert "%]" not in plain and "(regression)" not in plain


def test_markdown_shows_threshold_versions_when_the_document_has_them(data):
    data["thresholds"] = {"min": {"libvirt": "8.0.0", "qemu": "6.2.0"}}
    text = formats.markdown(data)
    assert "`min`: libvirt ≥ 8.0.0 and QEMU ≥ 6.2.0" in text
    assert "`next-min`: ≥ the matrix's next-min" in text


def test_markdown_escapes_pipes_and_line_breaks(data):
    data["cells"][0]["versions"]["libvirt-daemon"] = "9.0.0|evil\nline"
    header, rows = table(formats.markdown(data))
    assert rows["debian-12-release"]["libvirt"] == "9.0.0|evil line"


def test_markdown_needs_only_the_json(data):
    assert formats.markdown(json.loads(json.dumps(data))) == formats.markdown(data)


def test_every_renderer_takes_statuses_it_does_not_know(data, tmp_path):
    data = with_optional_fields(data)
    data["cells"][0]["status"] = "quarantined"
    data["cells"][0]["scenarios"][0]["status"] = "not-applicable"
    data["cells"][0]["scenarios"][2]["status"] = "wobbly"
    _, rows = table(formats.markdown(data))
    assert rows["debian-12-release"]["verdict"] == "**quarantined**"
    assert rows["debian-12-release"]["boot"].startswith("n/a ")
    assert rows["debian-12-release"]["pause-resume"].startswith("wobbly ")
    page = formats.html(data, tmp_path)
    assert 'data-status="quarantined"' in page
    cases = {c.name: c for c in junit_cases(formats.junit(data))["debian-12-release"]}
    assert isinstance(cases["boot"].result[0], junitparser.Skipped)
    assert isinstance(cases["pause-resume"].result[0], junitparser.Error)
    assert "unknown status 'wobbly'" in cases["pause-resume"].result[0].message


# --- JUnit XML --------------------------------------------------------------------------------


def junit_cases(text: str) -> dict[str, list[junitparser.TestCase]]:
    xml = junitparser.JUnitXml.fromstring(text)
    return {suite.name: list(suite) for suite in xml}


def outcome(case: junitparser.TestCase) -> str:
    return type(case.result[0]).__name__.lower() if case.result else "pass"


def test_junit_one_case_per_cell_and_scenario(data):
    text = formats.junit(data)
    cases = junit_cases(text)
    assert list(cases) == [c["id"] for c in data["cells"]]
    for suite in cases.values():
        assert [c.name for c in suite] == list(SCENARIOS)
    by = {cell: {c.name: outcome(c) for c in suite} for cell, suite in cases.items()}
    assert by["ubuntu-24.04-release"] == dict.fromkeys(SCENARIOS, "pass")
    assert by["debian-12-release"]["reboot"] == "failure"
    assert by["debian-12-release"]["boot"] == "pass"
    assert by["debian-13-release-qemu-backports"]["managed-save"] == "failure"
    assert set(by["debian-13-backports"].values()) == {"skipped"}  # unavailable
    # Inconclusive fails the run (exit 1), and so fails in CI.
    assert set(by["debian-unstable"].values()) == {"failure"}
    assert set(by["debian-12-backports"].values()) == {"error"}  # the tool failed
    xml = junitparser.JUnitXml.fromstring(text)
    n = len(SCENARIOS)  # six cells, each with every scenario
    suites = list(xml)
    assert xml.tests == 6 * n
    assert (xml.failures, xml.errors) == (2 + n, n)
    assert sum(s.skipped for s in suites) == n
    flaky = {c.name: c for c in cases["debian-12-release"]}["reboot"]
    assert flaky.result[0].type == "flaky"
    assert flaky.result[0].message == "flaky: 1 of 2 runs failed: no heartbeat"
    assert "HVGATE-READY" in flaky.result[0].text  # the logs kept in the JSON
    assert flaky.classname == "debian-12-release"
    assert flaky.time == pytest.approx(4.0)
    skipped = {c.name: c for c in cases["debian-13-backports"]}["boot"]
    assert "source unreachable" in skipped.result[0].message


def test_junit_is_valid_xml_whatever_the_logs_hold(data):
    data["cells"][0]["scenarios"][1]["logs"]["console"].append("bell\x07 nul\x00 esc\x1b[0m")
    text = formats.junit(data)
    assert "\x1b" not in text and "\x07" not in text
    flaky = {c.name: c for c in junit_cases(text)["debian-12-release"]}["reboot"]
    assert "bell nul esc[0m" in flaky.result[0].text


def test_junit_properties_carry_versions_and_change(data):
    xml = junitparser.JUnitXml.fromstring(formats.junit(with_optional_fields(data)))
    suite = next(s for s in xml if s.name == "debian-13-release-qemu-backports")
    props = {p.name: p.value for p in suite.properties()}
    assert props["libvirt"] == "11.3.0-1"
    assert props["status"] == "broken"
    assert props["change"] == "regression"
    assert props["threshold.next-min"] == "≥"


def test_junit_for_a_run_where_nothing_ran(data):
    data["cells"] = [c for c in data["cells"] if not c["scenarios"]]
    cases = junit_cases(formats.junit(data))
    assert {cell: [c.name for c in suite] for cell, suite in cases.items()} == {
        "debian-13-backports": ["cell"],
        "debian-12-backports": ["cell"],
        "debian-unstable": ["cell"],
    }


# --- HTML (the browser tests are in tests/browser) --------------------------------------------


def test_html_is_self_contained_and_escaped(data, tmp_path):
    data["cells"][0]["reason"] = "<script>alert(1)</script>"
    page = formats.html(data, tmp_path)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert page.count('<tr id="row-') == len(data["cells"])


def test_html_links_logs_relative_to_the_page(tmp_path):
    results_dir = tmp_path / "results"
    run = sample_run(results_dir)
    write_logs(run)
    # As stored: relative to the results directory.
    data = portable(document(run), results_dir)
    assert data["cells"][0]["log_dir"] == f"runs/{RUN_ID}/logs/debian-12-release"
    latest = formats.html(data, results_dir)
    assert f'href="runs/{RUN_ID}/logs/debian-12-release/"' in latest
    assert 'href="logs/debian-13-backports/build.log"' in latest
    in_run = formats.html(data, formats.Links(results_dir, results_dir / "runs" / RUN_ID))
    assert 'href="logs/debian-12-release/"' in in_run
    assert 'href="../../logs/debian-13-backports/build.log"' in in_run
    # An older document's absolute paths still lead there.
    assert f'href="runs/{RUN_ID}/logs/debian-12-release/"' in formats.html(
        document(run), results_dir
    )


def test_html_links_nothing_that_is_not_there(tmp_path):
    results_dir = tmp_path / "results"
    data = portable(document(sample_run(results_dir)), results_dir)
    page = formats.html(data, results_dir)
    assert "logs/" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S).split("<script>")[0]
    assert "not pinned yet: <code>hvgate matrix.pin --run" in page
    pins = results_dir / "pins" / RUN_ID
    pins.mkdir(parents=True)
    (pins / "ubuntu-24.04-release.pref").write_text("")
    page = formats.html(data, results_dir)
    assert f'<a href="pins/{RUN_ID}/ubuntu-24.04-release.pref">' in page


def test_html_shows_the_optional_fields(data, tmp_path):
    page = formats.html(with_optional_fields(data), tmp_path)
    assert '<span class="change change-regression">regression</span>' in page
    assert "95% one-sided bounds 12–88%" in page
    assert "managed-save: broken" in page and "broken after 2 runs" in page
    assert f"regression: safe in the previous run, broken now, since run <code>{RUN_ID}" in page
    assert "fix: broken in the previous run, safe now." in page


# --- where failures come from ---------------------------------------------------------------

EVIL = "boom `x` | y <script>alert(1)</script> *z*"


def with_causes(data):
    """The flaky cell's reboot with a harness error, a message that needs escaping in every
    format, and repetitions it could not start in."""
    cell = data["cells"][0]
    reboot = next(s for s in cell["scenarios"] if s["name"] == "reboot")
    reboot["errors"] = 1
    reboot["failures_by_cause"].append(
        {
            "fingerprint": fingerprint("reboot", "KeyError", EVIL),
            "cause": "harness",
            "error_class": "KeyError",
            "message": EVIL,
            "count": 1,
        }
    )
    reboot["messages"].append("Traceback (most recent call last):\n  x\n" + EVIL)
    reboot["not_run"] = 2
    reboot["not_run_reasons"] = ["the daemon did not come back | <b>"]
    return data


def test_markdown_says_which_failures_are_libvirt_qemu_and_which_the_harness(data):
    plain = formats.markdown(data)
    text = formats.markdown(with_causes(data))
    # The table is as wide as before: the split is in the notes below it.
    assert table(text)[0] == table(plain)[0]
    libvirt = fingerprint("reboot", "ScenarioFailure", "no heartbeat")
    harness = fingerprint("reboot", "KeyError", EVIL)
    assert (
        f"- `debian-12-release` failures: 1 from libvirt/QEMU (fingerprint `{libvirt}`),"
        f" 1 from the harness (fingerprint `{harness}`); 2 repetitions not run\n"
    ) in text
    assert (
        f"- `debian-12-release` reboot `{libvirt}`: 1× from libvirt/QEMU,"
        " e.g. `ScenarioFailure: no heartbeat`\n"
    ) in text
    # A code span fenced by more backticks than the message holds: nothing in it is Markdown.
    assert (
        f"- `debian-12-release` reboot `{harness}`: 1× from the harness,"
        f" e.g. ``KeyError: {EVIL}``\n"
    ) in text
    assert (
        "- `debian-12-release` reboot: not run in 2 repetitions:"
        " `the daemon did not come back | <b>`\n"
    ) in text
    # A safe cell says nothing.
    assert "`ubuntu-24.04-release` failures" not in text


def test_a_traceback_is_not_named_twice():
    cause = {"error_class": "KeyError", "message": "KeyError: 'vda'"}
    assert formats.example(cause) == "KeyError: 'vda'"
    assert formats.example({**cause, "message": "no 'vda'"}) == "KeyError: no 'vda'"


def test_code_spans_hold_any_text():
    assert formats.code_md("a") == "`a`"
    assert formats.code_md("a ``b`` c") == "```a ``b`` c```"
    assert formats.code_md("`a`") == "`` `a` ``"
    assert formats.code_md("a\nb  c") == "`a b c`"


def test_html_says_which_failures_are_libvirt_qemu_and_which_the_harness(data, tmp_path):
    page = formats.html(with_causes(data), tmp_path)
    harness = fingerprint("reboot", "KeyError", EVIL)
    assert '<p class="failures">failures: 1 from libvirt/QEMU (fingerprint ' in page
    assert f"1 from the harness (fingerprint {harness}); 2 repetitions not run</p>" in page
    assert f"<li>reboot <code>{harness}</code>: 1× from the harness, e.g. <code>KeyError:" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "the daemon did not come back | &lt;b&gt;" in page
    # The scenario's note: each cause, then the full traceback.
    assert f"1× the harness [{harness}] KeyError: boom" in page
    assert "Traceback (most recent call last):" in page
    # A safe cell with a failure is explained too.
    data = document(sample_run())
    safe = data["cells"][2]
    safe["scenarios"][0]["failures"] = 1
    assert 'href="#cell-ubuntu-24.04-release"' in formats.html(data, tmp_path)


def test_junit_says_which_failures_are_libvirt_qemu_and_which_the_harness(data):
    text = formats.junit(with_causes(data))
    xml = junitparser.JUnitXml.fromstring(text)
    suite = next(s for s in xml if s.name == "debian-12-release")
    props = {p.name: p.value for p in suite.properties()}
    assert props["failures"].startswith("failures: 1 from libvirt/QEMU (fingerprint ")
    assert props["failures"].endswith(
        "1 from the harness (fingerprint "
        f"{fingerprint('reboot', 'KeyError', EVIL)}); 2 repetitions not run"
    )
    reboot = {c.name: c for c in suite}["reboot"]
    assert "1× the harness [" in reboot.result[0].text
    assert "not run in 2 repetitions: the daemon did not come back" in reboot.result[0].text
    safe = next(s for s in xml if s.name == "ubuntu-24.04-release")
    assert "failures" not in {p.name for p in safe.properties()}


def test_documents_from_before_causes_render(data, tmp_path):
    """Without failures_by_cause and not_run, the split is still there, from the counts."""
    for c in data["cells"]:
        for s in c.get("scenarios", []):
            for key in ("failures_by_cause", "not_run", "not_run_reasons"):
                del s[key]
    text = formats.markdown(data)
    assert "- `debian-12-release` failures: 1 from libvirt/QEMU, 0 from the harness\n" in text
    assert "failures: 2 from libvirt/QEMU, 0 from the harness" in formats.junit(data)
    assert "failures: 1 from libvirt/QEMU, 0 from the harness" in formats.html(data, tmp_path)
    assert RunResult.from_json(data).cells[0].scenarios[1].failures_by_cause == []


def test_the_committed_results_render(tmp_path, monkeypatch):
    """results/latest.json, whatever run wrote it, is read and rendered as it is."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    latest = ROOT / "results" / "latest.json"
    run = RunResult.from_json(read_results(latest))
    text = report(input_path=latest, output_dir=tmp_path)["markdown"].read_text()
    for cell in run.cells:
        failures = sum(s.failures for s in cell.scenarios)
        if failures:
            assert f"- `{cell.id}` failures: {failures} from libvirt/QEMU" in text


# --- writing and reading results/ -------------------------------------------------------------

KINDS = ("json", "markdown", "html", "junit")


def test_publish_writes_every_format(results_dir, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    run = sample_run(results_dir)
    paths = publish(run, results_dir)
    assert set(paths) == {*KINDS, *(f"latest_{k}" for k in KINDS)}
    run_dir = results_dir / "runs" / run.run_id
    assert [p.name for k, p in paths.items() if not k.startswith("latest")] == [
        "results.json",
        "results.md",
        "results.html",
        "results.junit.xml",
    ]
    assert all(p.parent == run_dir for k, p in paths.items() if not k.startswith("latest"))
    assert paths["latest_html"] == results_dir / "latest.html"
    data = json.loads(paths["json"].read_text())
    # Paths relative to the results directory, and which hvgate wrote it.
    assert data["hvgate"] == hvgate_version() and data["hvgate"]["version"]
    assert data["cells"][0]["log_dir"] == f"runs/{RUN_ID}/logs/debian-12-release"
    assert data["cells"][3]["build"]["log"] == "logs/debian-13-backports/build.log"
    assert RunResult.from_json(data) == RunResult.from_json(
        {**portable(document(run), results_dir), "hvgate": hvgate_version()}
    )
    assert paths["markdown"].read_text() == formats.markdown(data)
    assert paths["junit"].read_text() == formats.junit(data)
    assert paths["html"].read_text() == formats.html(data, formats.Links(results_dir, run_dir))
    assert paths["latest_html"].read_text() == formats.html(data, results_dir)
    for kind in ("json", "markdown", "junit"):
        assert paths[f"latest_{kind}"].read_text() == paths[kind].read_text()
    assert sorted(p.name for p in results_dir.iterdir() if p.is_file()) == [
        "latest.html",
        "latest.json",
        "latest.junit.xml",
        "latest.md",
    ]


def test_step_summary_is_appended_when_ci_asks(results_dir, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    publish(sample_run(results_dir), results_dir)
    text = summary.read_text()
    assert text.startswith("earlier step\n## hvgate: 1 error, 1 broken, 1 flaky, 1 inconclusive")
    assert "| debian-12-release | **flaky** |" in text
    report(input_path=results_dir / "latest.json")
    assert summary.read_text().count("## hvgate:") == 2


def test_report_renders_the_same_files_again(results_dir, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    paths = publish(sample_run(results_dir), results_dir)
    written = {k: p.read_text() for k, p in paths.items()}
    for path in paths.values():
        if path.suffix != ".json":
            path.unlink()
    again = report(results_dir=results_dir)
    assert again == {k: paths[f"latest_{k}"] for k in ("markdown", "html", "junit")}
    again = report(run_id=RUN_ID, results_dir=results_dir)
    assert again == {k: paths[k] for k in ("markdown", "html", "junit")}
    for kind, path in paths.items():
        assert path.read_text() == written[kind], kind


def test_report_from_an_input_file_to_an_output_dir(results_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    source = tmp_path / "in" / "nightly.json"
    source.parent.mkdir()
    source.write_text(json.dumps(with_optional_fields(document(sample_run()))))
    paths = report(input_path=source, output_dir=tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == [
        "nightly.html",
        "nightly.junit.xml",
        "nightly.md",
    ]
    assert "(regression)" in paths["markdown"].read_text()
    assert not (tmp_path / "out" / "nightly.json").exists()


def bad_documents(data):
    yield "not JSON", "{\n  oops", r"nightly\.json:2: not JSON: Expecting property name"
    yield "a list", "[]", "not an hvgate results document"
    yield "an older format", json.dumps({**data, "format": 0}), "results format 0; this hvgate"
    no_format = {k: v for k, v in data.items() if k != "format"}
    yield "no format", json.dumps(no_format), "results format None"
    wrong = json.loads(json.dumps(data))
    wrong["cells"][1]["scenarios"][5]["runs"] = "many"
    yield "a wrong type", json.dumps(wrong), r"cells\[1\]\.scenarios\[5\]\.runs: Input should be"
    wrong = json.loads(json.dumps(data))
    del wrong["cells"][0]["id"], wrong["run_id"]
    yield "missing fields", json.dumps(wrong), r"run_id: Field required \(and 1 more\)"


def test_read_results_refuses_what_is_not_a_results_document(data, tmp_path):
    path = tmp_path / "nightly.json"
    for what, text, message in bad_documents(data):
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=message) as info:
            read_results(path)
        assert info.value.exit_code == 2, what
        assert len(str(info.value).splitlines()) == 1, what
        assert str(info.value).startswith(f"{path}"), what
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        read_results(path)


def test_report_refuses_bad_arguments(results_dir):
    with pytest.raises(ConfigurationError, match="--run and --input: give one"):
        report(run_id=RUN_ID, input_path="x.json", results_dir=results_dir)
    with pytest.raises(ConfigurationError, match=r"--run nope: no results at .*runs/nope"):
        report(run_id="nope", results_dir=results_dir)
    with pytest.raises(ConfigurationError, match="not a run id"):
        report(run_id="../../etc", results_dir=results_dir)
    with pytest.raises(ConfigurationError, match="latest.json: no such results file"):
        report(results_dir=results_dir)


# --- the task, as a user runs it --------------------------------------------------------------


def test_report_task_regenerates_from_stored_results(results_dir):
    publish(sample_run(results_dir), results_dir)
    (results_dir / "latest.html").unlink()
    done = cli.invoke("matrix.report", results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(results_dir / f"latest{s}") for s in (".md", ".html", ".junit.xml")
    ]
    assert (results_dir / "latest.html").read_text().startswith("<!DOCTYPE html>")
    done = cli.invoke("matrix.report", "--run", RUN_ID, results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    assert str(results_dir / "runs" / RUN_ID / "results.html") in done.stdout


def test_report_task_one_line_and_exit_2_on_a_bad_file(results_dir, tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"run_id": "x", "cells": [], "format": 0}))
    done = cli.invoke("matrix.report", "--input", str(bad), results_dir=results_dir)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}: results format 0; this hvgate reads format 1"
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    done = cli.invoke("matrix.report", "--run", "nope", results_dir=results_dir)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
