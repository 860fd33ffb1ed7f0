"""harness.select: shell patterns choose cells by id, the same way for every task."""

from __future__ import annotations

import pytest

from harness.errors import ConfigurationError
from harness.select import select, split_patterns


@pytest.fixture
def cells(matrix_text, cells_of):
    def edit(data):
        data["cells"].append({"base": "debian-13", "source": "backports"})

    return cells_of(matrix_text(edit))


def ids(cells) -> list[str]:
    return [cell.id for cell in cells]


ALL = ["debian-12-release", "debian-12-backports", "debian-13-release", "debian-13-backports"]


def test_no_patterns_select_every_cell_in_matrix_order(cells):
    assert ids(cells) == ALL
    assert ids(select(cells)) == ALL
    assert ids(select(cells, "", [])) == ALL


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("debian-12*", None, ["debian-12-release", "debian-12-backports"]),
        ("debian-13-release", None, ["debian-13-release"]),
        (None, "*-backports", ["debian-12-release", "debian-13-release"]),
        ("debian-12*", "*-backports", ["debian-12-release"]),
        ("*-release,*-12-backports", None, ALL[:3]),
        (" debian-13* , debian-12-release ", None, ["debian-12-release", *ALL[2:]]),
        (["debian-12-release", "debian-13*"], None, ["debian-12-release", *ALL[2:]]),
        ("*", "debian-12*,*-13-release", ["debian-13-backports"]),
        ("debian-1?-release", None, ["debian-12-release", "debian-13-release"]),
        ("debian-12-release,debian-12-release", None, ["debian-12-release"]),
    ],
)
def test_include_and_exclude(cells, include, exclude, expected):
    assert ids(select(cells, include, exclude)) == expected


def test_patterns_are_case_sensitive(cells):
    with pytest.raises(ConfigurationError):
        select(cells, "DEBIAN-*")


def test_split_patterns():
    assert split_patterns(None) == []
    assert split_patterns("a, b,,c ") == ["a", "b", "c"]
    assert split_patterns(["a,b", "c"]) == ["a", "b", "c"]


def test_pattern_matching_nothing_suggests_a_cell(cells):
    with pytest.raises(ConfigurationError) as info:
        select(cells, "debian-12-relase")
    (problem,) = info.value.problems
    assert "'debian-12-relase' matches no cell" in problem
    assert "did you mean 'debian-12-release'?" in problem
    assert "debian-13-backports" in problem  # lists the cells there are


def test_every_pattern_matching_nothing_is_reported(cells):
    with pytest.raises(ConfigurationError) as info:
        select(cells, "debian-12*,ubuntu-*,debian-14-release")
    problems = info.value.problems
    assert len(problems) == 2
    assert "'ubuntu-*'" in problems[0]
    assert "'debian-14-release'" in problems[1]
    assert info.value.exit_code == 2


def test_excluding_everything_is_an_error(cells):
    with pytest.raises(ConfigurationError, match="empty"):
        select(cells, "debian-12*", "*")
