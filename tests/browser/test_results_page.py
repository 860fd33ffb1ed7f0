"""The results page in a real headless Chromium: opened from disk with no network, sorted and
filtered by clicking and typing, coloured by status (read back from a screenshot), linked to logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from harness.stages.formats import COLOURS, rank
from harness.stages.publish import publish, report
from tests.results_sample import sample_run, with_optional_fields, write_logs

ROOT = Path(__file__).resolve().parents[2]
# The sample's cells in the document's order, and worst first.
ORIGINAL = [
    "debian-12-release",
    "debian-13-release-qemu-backports",
    "ubuntu-24.04-release",
    "debian-13-backports",
    "debian-12-backports",
    "debian-unstable",
]
WORST_FIRST = [
    "debian-12-backports",  # error
    "debian-13-release-qemu-backports",  # broken
    "debian-12-release",  # flaky
    "debian-unstable",  # inconclusive
    "debian-13-backports",  # unavailable
    "ubuntu-24.04-release",  # safe
]


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A run published under a results directory, its logs where the document says."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    results_dir = tmp_path / "results"
    run = sample_run(results_dir)
    write_logs(run)
    publish(run, results_dir)
    # The optional fields other stages add, in the stored document, rendered again.
    latest = results_dir / "latest.json"
    latest.write_text(json.dumps(with_optional_fields(json.loads(latest.read_text()))))
    report(input_path=latest)
    return results_dir


def opened(tab, path: Path):
    tab.page.goto(path.as_uri())
    tab.page.wait_for_selector("#results tbody tr")
    return tab.page


def shown(page) -> list[str]:
    """The ids of the rows the page shows, in order."""
    return page.eval_on_selector_all(
        "#results tbody tr", "rows => rows.filter(r => !r.hidden).map(r => r.id.slice(4))"
    )


def sort_by(page, column: str) -> None:
    page.click(f'#results thead th[data-column="{column}"] button')


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def test_page_opens_from_disk_without_the_network(tab, published):
    page = opened(tab, published / "latest.html")
    assert (
        page.title()
        == f"hvgate: run {json.loads((published / 'latest.json').read_text())['run_id']}"
    )
    assert shown(page) == ORIGINAL
    assert tab.requests and all(url.startswith("file://") for url in tab.requests), tab.requests
    assert tab.errors == []
    assert page.inner_text("#shown") == "6"
    # The optional fields reach the page: a regression badge, an interval in a tooltip.
    verdict = page.locator('[id="row-debian-13-release-qemu-backports"] td.verdict')
    assert verdict.inner_text() == "broken regression"
    reboot = page.locator('[id="row-debian-12-release"] td.scenario').nth(1)
    assert "95% one-sided bounds 12–88%" in reboot.get_attribute("title")


def test_sorting_by_clicking_headers(tab, published):
    page = opened(tab, published / "latest.html")
    sort_by(page, "verdict")
    assert shown(page) == WORST_FIRST
    header = page.locator('#results thead th[data-column="verdict"]')
    assert header.get_attribute("aria-sort") == "ascending"
    sort_by(page, "verdict")
    assert shown(page) == WORST_FIRST[::-1]
    assert header.get_attribute("aria-sort") == "descending"
    # Versions sort by their numbers (9 < 10 < 11), not as text; cells without one first.
    sort_by(page, "libvirt")
    assert shown(page)[3:] == [
        "debian-12-release",
        "ubuntu-24.04-release",
        "debian-13-release-qemu-backports",
    ]
    assert header.get_attribute("aria-sort") is None
    sort_by(page, "cell")
    assert shown(page) == sorted(WORST_FIRST)
    # A scenario column: the failing cells first.
    sort_by(page, "managed-save")
    assert shown(page)[:2] == ["debian-13-release-qemu-backports", "debian-12-release"]
    assert tab.errors == []


def test_filtering_by_text_and_status(tab, published):
    page = opened(tab, published / "latest.html")
    page.fill("#filter", "backports")
    assert shown(page) == [
        "debian-13-release-qemu-backports",
        "debian-13-backports",
        "debian-12-backports",
    ]
    assert page.inner_text("#shown") == "3"
    page.uncheck('#statuses input[value="unavailable"]')
    assert shown(page) == ["debian-13-release-qemu-backports", "debian-12-backports"]
    # Words must all match, tooltips included (the scenario's messages are there).
    page.fill("#filter", "heartbeat debian")
    assert shown(page) == ["debian-12-release"]
    page.fill("#filter", "no-such-thing")
    assert shown(page) == []
    assert page.locator("#no-match").is_visible()
    page.fill("#filter", "")
    assert shown(page) == [c for c in ORIGINAL if c != "debian-13-backports"]
    assert not page.locator("#no-match").is_visible()
    page.uncheck('#statuses input[value="safe"]')
    page.check('#statuses input[value="unavailable"]')
    assert "ubuntu-24.04-release" not in shown(page)
    assert "debian-13-backports" in shown(page)
    assert tab.errors == []


def test_screenshot_shows_each_status_in_its_colour(tab, published, tmp_path):
    page = opened(tab, published / "latest.html")
    shot = tmp_path / "results-page.png"
    page.screenshot(path=str(shot), full_page=True)
    image = Image.open(shot).convert("RGB")
    statuses = {
        "ubuntu-24.04-release": "safe",
        "debian-12-release": "flaky",
        "debian-13-release-qemu-backports": "broken",
        "debian-12-backports": "error",
        "debian-unstable": "inconclusive",
        "debian-13-backports": "unavailable",
    }
    for cell_id, status in statuses.items():
        box = page.locator(f'[id="row-{cell_id}"] td.verdict').bounding_box()
        # A corner inside the padding: background, not text.
        pixel = image.getpixel((int(box["x"] + 3), int(box["y"] + 3)))
        assert pixel == rgb(COLOURS[status]), (cell_id, status, pixel)
    # A scenario cell has its own status's colour: the flaky cell's reboot, the rest safe.
    scenarios = page.locator('[id="row-debian-12-release"] td.scenario')
    for index, status in ((0, "safe"), (1, "flaky")):
        box = scenarios.nth(index).bounding_box()
        assert image.getpixel((int(box["x"] + 3), int(box["y"] + 3))) == rgb(COLOURS[status])
    # The colours differ from each other and from the page.
    assert len({COLOURS[s] for s in statuses.values()} | {"#ffffff"}) == len(statuses) + 1


def test_cells_link_to_their_logs(tab, published):
    page = opened(tab, published / "latest.html")
    page.click('[id="row-debian-12-release"] th a')
    assert page.url.endswith("/logs/debian-12-release/")
    assert "console.log" in page.content()  # the browser's listing of the log directory
    page.go_back()
    page.click('[id="row-debian-13-backports"] td.logs a:text("build")')
    assert "build log of debian-13-backports" in page.inner_text("body")
    # The same from the run's own page, two levels down.
    run_page = next((published / "runs").glob("*/results.html"))
    page = opened(tab, run_page)
    page.click('[id="row-debian-13-release-qemu-backports"] td.logs a:text("smoke")')
    assert page.url.endswith("/logs/debian-13-release-qemu-backports/")
    assert "console.log" in page.content()


def test_verdict_links_to_why(tab, published):
    page = opened(tab, published / "latest.html")
    page.click('[id="row-debian-13-release-qemu-backports"] td.verdict a')
    assert page.url.endswith("#cell-debian-13-release-qemu-backports")
    why = page.locator("#cell-debian-13-release-qemu-backports")
    assert why.is_visible()
    assert "fd: migration to a file is not supported" in why.inner_text()


def test_the_stored_real_run(tab, tmp_path):
    """The page of the committed results/latest.json, a real run of the default matrix."""
    source = ROOT / "results" / "latest.json"
    data = json.loads(source.read_text())
    report(input_path=source, output_dir=tmp_path)
    page = opened(tab, tmp_path / "latest.html")
    assert shown(page) == [c["id"] for c in data["cells"]]
    sort_by(page, "verdict")
    ranks = [
        rank(c["status"]) for c in sorted(data["cells"], key=lambda c: shown(page).index(c["id"]))
    ]
    assert ranks == sorted(ranks)
    statuses = {c["status"] for c in data["cells"]}
    worst = min(statuses, key=rank)
    for status in statuses - {worst}:
        page.uncheck(f'#statuses input[value="{status}"]')
    assert sorted(shown(page)) == sorted(c["id"] for c in data["cells"] if c["status"] == worst)
    assert tab.errors == []
