"""A real headless Chromium (the distro's package) driven by Playwright; outside CI the tests
skip, saying why, when either is missing. No browser is downloaded."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Debian's /usr/bin/chromium is a shell wrapper; Playwright needs the binary itself.
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    configured = os.environ.get("HVGATE_CHROMIUM")
    if configured:
        return configured
    for candidate in CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    return None


def unavailable(problem: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a headless browser: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("no Playwright: pip install -e '.[test]'")
    path = chromium_path()
    if path is None:
        unavailable("no Chromium: apt-get install chromium (or set HVGATE_CHROMIUM)")
    with sync_playwright() as playwright:
        # Chromium's sandbox refuses to start as root (containers, CI).
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = playwright.chromium.launch(executable_path=path, args=args)
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page with every request it made and every script error it raised."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    opened = Tab(context.new_page())
    opened.page.on("request", lambda request: opened.requests.append(request.url))
    opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
