"""The bad input corpus (tests/corpus/): each file is refused through the real CLI with one line
naming the file, line and YAML path, exit code 2, no traceback, and nothing rendered or written.

The CLI runs with DOCKER_HOST pointing at a socket that does not exist: a task that reached for
the engine (to build or run anything) would exit 3, so exit code 2 also shows nothing was built.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from harness.core.apt_log import diagnose
from harness.core.errors import ConfigurationError
from harness.core.model import Base, Source
from harness.core.paths import RENDERED
from harness.matrix.load import load
from harness.stages.render import render
from tests.cli import invoke

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MATRIX_CASES = sorted((CORPUS / "matrix").glob("*.yaml"))
# The corpus skeleton's base is corpus-debian-12: a cell rendered by mistake lands here.
LEAKED = "corpus-*"


def expected_path(case: Path) -> str:
    first = case.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{case.name} does not start with '# expect: PATH'"
    return first.removeprefix("# expect: ")


def problem_pattern(case: Path) -> re.Pattern[str]:
    """FILE:LINE: PATH: message, where PATH is the expected one or lies under it."""
    path = re.escape(expected_path(case))
    return re.compile(rf"{re.escape(str(case))}:[0-9]+: {path}(?:[.\[][^ ]*)?: \S")


def test_the_corpus_covers_every_kind_of_defect():
    names = {case.stem.split("-")[0] for case in MATRIX_CASES}
    assert len(MATRIX_CASES) >= 30
    assert {"type", "unknown", "duplicate", "empty", "inject", "yaml", "encoding"} <= names


def test_the_skeleton_is_valid():
    _, cells = load(CORPUS / "valid" / "matrix.yaml")
    assert [cell.id for cell in cells] == ["corpus-debian-12-release"]


@pytest.mark.parametrize("case", MATRIX_CASES, ids=lambda case: case.stem)
def test_load_reports_one_problem_at_its_path(case):
    with pytest.raises(ConfigurationError) as info:
        load(case)
    assert info.value.exit_code == 2
    (problem,) = info.value.problems
    assert problem_pattern(case).match(problem), problem
    assert "\n" not in problem and len(problem) < 400


@pytest.mark.parametrize("case", MATRIX_CASES, ids=lambda case: case.stem)
def test_cli_refuses_with_one_line_and_exit_code_2(case, tmp_path, monkeypatch):
    # matrix.run: the whole pipeline, which renders, builds and writes results when let through.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    results = tmp_path / "results"
    done = invoke("matrix.run", "--matrix", str(case), results_dir=results, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert problem_pattern(case).match(line.removeprefix("error: ")), line
    assert not results.exists(), "results were written for a refused matrix"
    assert not list(RENDERED.glob(LEAKED)), "a cell of the corpus was rendered"


# --- values that get past the loader by other means still never reach a Dockerfile raw ----------

PAYLOADS = ["$(reboot)", "`id`", "1.0; rm -rf /", "1.0' && reboot '", "{{ cell.id }}", "{% raw %}"]


@pytest.fixture
def cell(cell_by_id):
    return cell_by_id["debian-13-release-qemu-backports"]


def with_version(cell, version):
    components = tuple(dataclasses.replace(c, version=version) for c in cell.components)
    return dataclasses.replace(cell, components=components)


def outside_comments_and_quotes(text: str) -> str:
    """The Dockerfile without comment lines and single-quoted shell words."""
    code = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return re.sub(r"'[^']*'", "''", code.replace("'\"'\"'", ""))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_unchecked_version_is_quoted_or_refused(cell, payload):
    # A cell built without the loader (model_construct skips the grammars): the template must
    # still quote every value it puts on a command line.
    try:
        text = render(with_version(cell, payload))
    except (ConfigurationError, AssertionError):
        return
    assert payload not in outside_comments_and_quotes(text), text


@pytest.mark.parametrize("payload", ["9.0\nRUN reboot", "9.0\rRUN reboot", "9.0\x00"])
def test_a_control_character_never_reaches_a_dockerfile(cell, payload):
    with pytest.raises(ConfigurationError, match="control character"):
        render(with_version(cell, payload))


def test_an_unchecked_codename_with_a_newline_is_refused(cell):
    base = Base.model_construct(**{**dict(cell.base), "codename": "trixie\nRUN reboot"})
    with pytest.raises(ConfigurationError, match="control character"):
        render(dataclasses.replace(cell, base=base))


def test_an_unchecked_suite_is_quoted(cell):
    source = Source.model_construct(**{**dict(cell.sources[1][1]), "suite": "x; reboot #"})
    text = render(dataclasses.replace(cell, sources=(cell.sources[0], ("backports", source))))
    assert "x; reboot #" not in outside_comments_and_quotes(text)


# --- build logs: failures that are not libvirt's or QEMU's are told apart -----------------------

BUILD_LOGS = CORPUS / "build-logs"


@pytest.mark.parametrize(
    ("log", "status", "reason"),
    [
        ("archive-unreachable.log", "unavailable", "source unreachable: "),
        ("disk-full-apt.log", "failed", "the build ran out of disk space: "),
        ("disk-full-dpkg.log", "failed", "the build ran out of disk space: "),
        (
            "option-conflicts-with-base.log",
            "failed",
            "add-apt-source: source 'release': bookworm is in the base image's apt sources "
            "without check-valid-until=no",
        ),
    ],
)
def test_a_real_build_log_is_diagnosed(cell, log, status, reason):
    lines = (BUILD_LOGS / log).read_text().splitlines()
    got_status, got_reason = diagnose(lines, cell)
    assert (got_status, got_reason[: len(reason)]) == (status, reason), got_reason
    assert ".invalid" not in got_reason  # archive host names stay in the build log
    assert "\n" not in got_reason and "\x1b" not in got_reason


def test_a_download_cut_short_by_a_full_disk_is_not_blamed_on_the_archive(cell):
    lines = (BUILD_LOGS / "disk-full-dpkg.log").read_text().splitlines() + [
        "E: Failed to fetch http://archive.mirror.invalid/debian/pool/main/q/qemu/qemu-utils.deb  "
        "Write error - write (28: No space left on device)"
    ]
    status, reason = diagnose(lines, cell)
    assert status == "failed" and reason.startswith("the build ran out of disk space")


@pytest.mark.parametrize(
    "case", [c for c in MATRIX_CASES if c.stem.startswith("credentials-")], ids=lambda c: c.stem
)
def test_credentials_in_a_uri_are_refused_without_being_repeated(case):
    with pytest.raises(ConfigurationError) as info:
        load(case)
    assert "credentials" in str(info.value)
    assert "s3cret" not in str(info.value) and "builder" not in str(info.value)
