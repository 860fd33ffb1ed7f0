"""The page as a gate maintainer reads it, in a real headless Chromium 1400 px wide: what to pin,
the grid and the charts without horizontal scrolling (checked from the page's layout, and kept
as a screenshot), and every link of the page of a real run leading to a file."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from harness.stages.publish import report
from harness.tools.pin import pin

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "latest.json"
WIDTH = 1400
# Where the screenshots are kept for a person (or CI's artifact upload) to look at.
ARTIFACTS = Path(os.environ.get("HVGATE_TEST_ARTIFACTS") or ROOT / "test-artifacts")


@pytest.fixture
def narrow(browser):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page, errors
    context.close()


@pytest.fixture
def real_run(tmp_path):
    """The committed real run, with its pins, rendered in a results directory of its own."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(COMMITTED, results / "latest.json")
    run_id = json.loads(COMMITTED.read_text())["run_id"]
    pin(None, str(results / "latest.json"), str(results / "pins" / run_id), "matrix.yaml", results)
    report(input_path=results / "latest.json")
    return results


def boxes_fit(page, selector: str) -> None:
    """The element is there, laid out within the viewport's width, and scrolls nothing."""
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not laid out"
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, (selector, box)
    scroll, client = page.eval_on_selector(selector, "e => [e.scrollWidth, e.clientWidth]")
    assert scroll <= client, (selector, scroll, client)


def test_recommendation_grid_and_charts_fit_1400_px(narrow, real_run):
    page, errors = narrow
    page.goto((real_run / "latest.html").as_uri())
    width, client = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width <= client == WIDTH
    for selector in ("#recommendation table", "#grid table", "#intervals", "#trend", "#results"):
        boxes_fit(page, selector)
    # What to pin comes first, a line per release, linking its pin files.
    sections = page.eval_on_selector_all("body > section", "s => s.map(e => e.id)")
    assert sections[:3] == ["recommendation", "coming", "grid"]
    debian12 = page.locator('[id="pin-debian-12"]')
    assert "pin libvirt 11.3.0-2~bpo12+1" in debian12.inner_text()
    # Each line links the pin files the run has (a cell pins once its run recorded its origins).
    links = page.locator('#recommendation a[href$=".pref"]')
    assert links.count() >= 1 and links.first.is_visible()
    # Every release of the run has its line; the grid a cell per cell of the run.
    data = json.loads(COMMITTED.read_text())
    assert page.locator("#recommendation tbody tr").count() == len(
        {(c["distro"], c["release"]) for c in data["cells"]}
    )
    assert page.locator("#grid td[data-status]").count() == len(data["cells"])
    # A grid cell opens to its scenarios and evidence, and still fits.
    cell = page.locator('[id="grid-debian-13-release-qemu-backports"]')
    cell.locator("summary").click()
    assert "managed-save: ✗ 11/11" in cell.inner_text()
    boxes_fit(page, "#grid table")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    # The chart: an interval per row, the thresholds drawn.
    assert page.locator("#intervals line.range").count() >= len(data["cells"]) - 7
    assert page.locator("#intervals line.threshold").count() == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "results-page-1400.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_every_link_of_the_real_runs_page_resolves(narrow, real_run):
    page, errors = narrow
    page.goto((real_run / "latest.html").as_uri())
    links = page.eval_on_selector_all("a[href]", "a => a.map(e => e.getAttribute('href'))")
    assert any(link.startswith("pins/") for link in links)
    ids = set(page.eval_on_selector_all("[id]", "e => e.map(x => x.id)"))
    for link in links:
        if link.startswith("#"):
            assert link[1:] in ids, link
            continue
        parsed = urllib.parse.urlparse(link)
        assert not parsed.scheme and not parsed.netloc, link  # nothing off the page's tree
        target = real_run / urllib.parse.unquote(parsed.path)
        assert target.exists(), link
    assert errors == []
