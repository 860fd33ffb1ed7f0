"""harness.select: shell patterns choose cells by id, the same way for every task."""

from __future__ import annotations

import pytest

from harness.errors import ConfigurationError
from harness.select import select, split_patterns


@pytest.fixture
def cells(unit_matrix):
    return unit_matrix[1]


def ids(cells) -> list[str]:
    return [cell.id for cell in cells]


D12R, D12B, D13R, D13M = (
    "debian-12-release",
    "debian-12-backports",
    "debian-13-release",
    "debian-13-release-qemu-backports",
)
U24R, U24CA, D12P = "ubuntu-24.04-release", "ubuntu-24.04-cloud-archive-epoxy", "debian-12-plain"
ALL = [D12R, D12B, D13R, D13M, U24R, U24CA, D12P]


def test_no_patterns_select_every_cell_in_matrix_order(cells):
    assert ids(cells) == ALL
    assert ids(select(cells)) == ALL
    assert ids(select(cells, "", [])) == ALL


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("debian-12*", None, [D12R, D12B, D12P]),
        ("debian-13-release", None, [D13R]),  # a whole id: not its mixed-source sibling
        ("debian-13-release*", None, [D13R, D13M]),
        (None, "*-backports", [D12R, D13R, U24R, U24CA, D12P]),
        ("debian-12*", "*-backports", [D12R, D12P]),
        ("*-release,*-12-backports", None, [D12R, D12B, D13R, U24R]),
        (" ubuntu-* , debian-12-release ", None, [D12R, U24R, U24CA]),
        (["debian-12-release", "debian-13*"], None, [D12R, D13R, D13M]),
        ("*", "debian-*,*-release", [U24CA]),
        ("*cloud-archive*", None, [U24CA]),
        ("debian-1?-release", None, [D12R, D13R]),
        ("ubuntu-24.04-*", "*-release", [U24CA]),
        ("debian-12-release,debian-12-release", None, [D12R]),
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
    assert problem.endswith("; cells: " + ", ".join(ALL))  # lists the cells there are


def test_prefix_pattern_matching_nothing_suggests_a_prefix(cells):
    with pytest.raises(ConfigurationError) as info:
        select(cells, "ubnutu-24.04*")
    (problem,) = info.value.problems
    assert "did you mean 'ubuntu-24.04*'?" in problem


def test_every_pattern_matching_nothing_is_reported(cells):
    with pytest.raises(ConfigurationError) as info:
        select(cells, "debian-12*,ubuntu-22.04-*,debian-14-release")
    problems = info.value.problems
    assert len(problems) == 2
    assert "'ubuntu-22.04-*'" in problems[0]
    assert "'debian-14-release'" in problems[1]
    assert info.value.exit_code == 2


def test_excluding_everything_is_an_error(cells):
    with pytest.raises(ConfigurationError, match="empty"):
        select(cells, "debian-12*", "*")
