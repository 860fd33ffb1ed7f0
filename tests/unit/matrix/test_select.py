"""harness.matrix.select: shell patterns choose cells by id, the same way for every task."""

from __future__ import annotations

import json

import pytest

from harness.core.errors import ConfigurationError
from harness.matrix.select import parse_shard, select, shard, split_patterns
from tests import cli


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


# --- --shard K/N ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_cells(root):
    """The cells of the repository's matrix.yaml, as every task selects them."""
    from harness.run.pipeline import selected

    return selected(str(root / "matrix.yaml"), None, None)[1]


def test_shards_of_the_default_matrix_are_even_disjoint_and_complete(default_cells):
    everything = ids(default_cells)
    assert len(everything) >= 16
    for n in range(1, len(everything) + 1):
        parts = [ids(shard(default_cells, f"{k}/{n}")) for k in range(1, n + 1)]
        assert [i for part in parts for i in part] == everything  # each cell once, in order
        sizes = {len(part) for part in parts}
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1, (n, sizes)


def test_three_shards_of_the_default_matrix(default_cells):
    everything = ids(default_cells)
    parts = [ids(shard(default_cells, f"{k}/3")) for k in (1, 2, 3)]
    size, extra = divmod(len(everything), 3)
    assert [len(p) for p in parts] == [size + (k < extra) for k in range(3)]  # 16: 6, 5, 5
    assert parts[0] == everything[: len(parts[0])]
    assert parts[2] == everything[-len(parts[2]) :]


def test_shards_are_the_same_in_every_process(default_cells, monkeypatch, tmp_path):
    """`matrix.list --json --shard` in CI jobs: no per-process hashing decides a shard."""
    outputs = []
    for seed in ("1", "2"):
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        done = cli.invoke("matrix.list", "--json", "--shard", " 2 / 3", results_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append([cell["id"] for cell in json.loads(done.stdout)])
    assert outputs[0] == outputs[1] == ids(shard(default_cells, "2/3"))


def test_a_bad_shard_flag_exits_2_in_one_line(tmp_path):
    done = cli.invoke("matrix.list", "--shard", "4/3", results_dir=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: --shard '4/3': use K/N with whole numbers 1 <= K <= N, e.g. --shard 2/3"
    ]


def test_a_shard_of_a_selection(cells):
    chosen = select(cells, "debian-*")
    assert ids(shard(chosen, "1/2")) == [D12R, D12B, D13R]
    assert ids(shard(chosen, "2/2")) == [D13M, D12P]
    assert ids(shard(chosen, "1/1")) == ids(chosen)
    assert shard(chosen, None) == chosen


@pytest.mark.parametrize("value", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", "1/2/3", "", "1.0/2"])
def test_bad_shard_values(cells, value):
    if value == "":
        assert shard(cells, value) == tuple(cells)  # no --shard
        return
    with pytest.raises(ConfigurationError) as info:
        shard(cells, value)
    assert info.value.exit_code == 2
    (line,) = str(info.value).splitlines()
    assert line == f"--shard {value!r}: use K/N with whole numbers 1 <= K <= N, e.g. --shard 2/3"
    with pytest.raises(ConfigurationError):
        parse_shard(value)


def test_more_shards_than_cells(cells):
    with pytest.raises(ConfigurationError, match=r"--shard 1/8: the selection has 7 cell\(s\)"):
        shard(cells, "1/8")
