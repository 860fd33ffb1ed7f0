"""Every default cell's rendered Dockerfile, with the committed lock applied, matches its golden
file (pytest --regenerate updates them)."""

import difflib

import pytest

from harness.core.paths import ROOT
from harness.run.pipeline import selected
from harness.stages.render import render

GOLDEN = ROOT / "tests" / "golden"
_, CELLS = selected(str(ROOT / "matrix.yaml"), None, None)


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_rendered_dockerfile_matches_golden(cell, request):
    golden = GOLDEN / f"{cell.id}.Dockerfile"
    text = render(cell)
    if request.config.getoption("--regenerate"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    expected = golden.read_text() if golden.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(True), text.splitlines(True), str(golden), f"render({cell.id})"
        )
    )
    assert not diff, f"rendered Dockerfile differs (pytest --regenerate to accept):\n{diff}"


def test_no_stale_golden_files():
    names = {f"{c.id}.Dockerfile" for c in CELLS}
    stale = sorted(p.name for p in GOLDEN.glob("*.Dockerfile") if p.name not in names)
    assert not stale, f"golden files without a cell: {stale}"
