"""'Coming to your gate': what a staging pocket holds, beside the verdict of what gates use now."""

from __future__ import annotations

import pytest

from harness.core.errors import UnsafeCells
from harness.core.results import RunResult
from harness.run.pipeline import check_outcome
from harness.stages.formats import coming, html, markdown

QEMU_NOW, QEMU_NEXT = "1:8.2.2+ds-0ubuntu1.18", "1:8.2.2+ds-0ubuntu1.19"


def cell(cell_id, source, status, qemu, stages_for=None, release="24.04"):
    versions = {"libvirt-daemon": "10.0.0-2ubuntu8.19", "qemu-system-x86": qemu} if qemu else {}
    return {
        "id": cell_id,
        "distro": "ubuntu",
        "release": release,
        "codename": "noble",
        "source": source,
        "status": status,
        "versions": versions,
        "stages_for": stages_for,
        "reason": None if qemu else "source unreachable: x",
    }


def run(*cells):
    return {
        "run_id": "r1",
        "started": "2026-11-23T00:00:00+00:00",
        "finished": "2026-11-23T00:10:00+00:00",
        "host": {},
        "cells": list(cells),
        "format": 1,
    }


def test_a_staged_version_is_listed_beside_the_current_verdict():
    data = run(
        cell("u-updates", "updates", "safe", QEMU_NOW),
        cell("u-proposed", "proposed", "safe", QEMU_NEXT, stages_for="updates"),
    )
    (entry,) = coming(data)
    assert entry["moved"] == {"qemu-system-x86": (QEMU_NOW, QEMU_NEXT)}
    assert (entry["status"], entry["target_status"], entry["regression"]) == ("safe", "safe", False)
    text = markdown(data)
    assert text.index("Coming to your gate") < text.index("| cell |")
    assert f"qemu-system-x86 {QEMU_NOW} → {QEMU_NEXT}" in text


def test_a_staged_regression_is_flagged_and_fails_the_run():
    data = run(
        cell("u-updates", "updates", "safe", QEMU_NOW),
        cell("u-proposed", "proposed", "flaky", QEMU_NEXT, stages_for="updates"),
    )
    (entry,) = coming(data)
    assert entry["regression"]
    assert "**REGRESSION** `u-proposed`" in markdown(data)
    assert "<strong>regression</strong>" in html(data)
    with pytest.raises(UnsafeCells, match="coming to your gate, regressions in u-proposed"):
        check_outcome(RunResult.from_json(data))


def test_nothing_staged_means_nothing_listed():
    data = run(
        cell("u-updates", "updates", "safe", QEMU_NOW),
        cell("u-proposed", "proposed", "safe", QEMU_NOW, stages_for="updates"),
    )
    assert coming(data) == []
    assert "Coming to your gate" not in markdown(data)


def test_other_releases_and_missing_targets_are_not_confused():
    data = run(
        cell("jammy-updates", "updates", "broken", QEMU_NOW, release="22.04"),
        cell("u-proposed", "proposed", "safe", QEMU_NEXT, stages_for="updates"),
        cell("u-proposed-down", "proposed", "unavailable", None, stages_for="updates"),
    )
    # Without a cell of the pocket gates use there is nothing to compare with.
    assert coming(data) == []
    data["cells"].insert(0, cell("u-updates", "updates", "safe", QEMU_NOW))
    data["cells"].insert(1, cell("u-mixed", "updates", "broken", QEMU_NEXT))
    entries = {e["cell"]: e for e in coming(data)}
    assert entries["u-proposed"]["target"] == "u-updates"  # the plain cell, not the mixed one
    assert entries["u-proposed-down"]["moved"] == {}
    assert "not read: source unreachable: x" in markdown(data)
