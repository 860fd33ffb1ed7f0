"""A real run's outputs: every format is written, agrees with the JSON, links to logs that exist,
and `matrix.report` renders the same files again from the stored JSON."""

import json
import re
import urllib.parse

import junitparser
import pytest

from tests.cli import invoke

pytestmark = pytest.mark.integration

CELL = "debian-12-release"
FORMATS = (".md", ".html", ".junit.xml")


@pytest.fixture(scope="module")
def outputs(debian12_run):
    return debian12_run.results_dir, debian12_run.done, debian12_run.summary


def test_every_format_is_written(outputs):
    results_dir, done, summary = outputs
    data = json.loads((results_dir / "latest.json").read_text())
    run_dir = results_dir / "runs" / data["run_id"]
    for suffix in FORMATS:
        assert (results_dir / f"latest{suffix}").is_file()
        assert (run_dir / f"results{suffix}").is_file()
    assert f"page:     {results_dir / 'latest.html'}" in done.stdout.splitlines()
    (cell,) = [c for c in data["cells"] if c["id"] == CELL]
    assert f"| {CELL} | **{cell['status']}** |" in summary.read_text()


def test_junit_agrees_with_the_json(outputs):
    results_dir, _, _ = outputs
    data = json.loads((results_dir / "latest.json").read_text())
    (cell,) = [c for c in data["cells"] if c["id"] == CELL]
    xml = junitparser.JUnitXml.fromfile(str(results_dir / "latest.junit.xml"))
    assert sorted(suite.name for suite in xml) == sorted(c["id"] for c in data["cells"])
    (suite,) = [suite for suite in xml if suite.name == CELL]
    outcomes = {case.name: bool(case.result) for case in suite}
    assert outcomes == {s["name"]: s["status"] != "safe" for s in cell["scenarios"]}


def test_page_links_to_logs_that_exist(outputs):
    results_dir, _, _ = outputs
    data = json.loads((results_dir / "latest.json").read_text())
    for page in (
        results_dir / "latest.html",
        results_dir / "runs" / data["run_id"] / "results.html",
    ):
        links = [
            urllib.parse.unquote(href) for href in re.findall(r'href="([^"#]+)"', page.read_text())
        ]
        assert len(links) >= 2, links  # the smoke logs and the build log
        for link in links:
            assert (page.parent / link).exists(), (page, link)
        log_dir = page.parent / links[0]
        assert any(log_dir.rglob("*.log")), log_dir


def test_report_renders_the_same_files_again(outputs, monkeypatch):
    results_dir, _, _ = outputs
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    written = {s: (results_dir / f"latest{s}").read_text() for s in FORMATS}
    for suffix in FORMATS:
        (results_dir / f"latest{suffix}").unlink()
    done = invoke("matrix.report", results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    for suffix in FORMATS:
        assert (results_dir / f"latest{suffix}").read_text() == written[suffix], suffix
