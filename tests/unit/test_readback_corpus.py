"""The corpus of tampered files the tool reads back (tests/corpus/results, history, lock): each is
fed to a task that reads it, through the real CLI, and refused with exit code 2 and one line
naming the file and the field; no traceback, nothing written anywhere, nothing of it on stdout.

The CLI runs are many, so they run side by side once (a module fixture), and each case's test
checks its own outcome.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from harness.core.errors import InputError
from harness.core.paths import RENDERED
from harness.matrix.lockfile import MAX_LOCK_BYTES, read_lock
from harness.run.history import MAX_HISTORY_BYTES
from harness.run.history import read as read_history
from harness.stages.publish import MAX_RESULTS_BYTES, read_results, report
from harness.tools.diff import load_run
from harness.tools.merge import merge_files
from harness.tools.pin import pin
from tests.cli import invoke

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
VALID = CORPUS / "valid"
EXPECT: dict[str, str] = json.loads((CORPUS / "readback.json").read_text())
# Too large to keep in the repository: made (sparse) when the test runs.
HUGE = {
    "results/huge.json": MAX_RESULTS_BYTES,
    "history/huge.jsonl": MAX_HISTORY_BYTES,
    "lock/huge.lock.json": MAX_LOCK_BYTES,
}
CASES = sorted(EXPECT) + sorted(HUGE)
RESULT_TASKS = ("matrix.report", "matrix.pin", "matrix.merge", "matrix.diff")
MARKER = "FORGED"  # every injected payload carries it


def case_file(case: str, tmp: Path) -> Path:
    if case in HUGE:
        path = tmp / "huge" / Path(case).name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.truncate(HUGE[case] + 1)
        return path
    return CORPUS / case


def expected(case: str) -> str:
    return "larger than" if case in HUGE else EXPECT[case]


def command(case: str, index: int, work: Path, source: Path) -> tuple[list[str], Path]:
    """The task that reads this kind of file, and the results directory it runs with."""
    kind = case.split("/")[0]
    results = work / "results"
    out = work / "out"
    if kind == "results":
        task = RESULT_TASKS[index % len(RESULT_TASKS)]
        valid = str(VALID / "results.json")
        args = {
            "matrix.report": ["--input", str(source), "--out", str(out)],
            "matrix.pin": ["--input", str(source), "--out", str(out)],
            # The good file first: every input is read before anything is written.
            "matrix.merge": [f"{valid},{source}", "--out", str(out)],
            "matrix.diff": [valid, str(source)],
        }[task]
        return [task, *args], results
    if kind == "history":
        results.mkdir(parents=True)
        shutil.copy(source, results / "history.jsonl")
        if index % 2:
            return ["matrix.merge", str(VALID / "results.json"), "--out", str(results)], results
        # Run ids that only the history knows.
        return ["matrix.diff", "20261128T092343Z-c0c0", "20261129T092343Z-c0c1"], results
    matrix_dir = work / "matrix"
    matrix_dir.mkdir(parents=True)
    shutil.copy(VALID / "matrix.yaml", matrix_dir / "matrix.yaml")
    shutil.copy(source, matrix_dir / "matrix.lock.json")
    return ["matrix.list", "--matrix", str(matrix_dir / "matrix.yaml")], results


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root and a digest of its content (sizes of large files)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found[str(path)] = (
                f"size {stat.st_size}"
                if stat.st_size > 1 << 20
                else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return found


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Each case through its task: (source, before, after, completed process, summary file)."""
    base = tmp_path_factory.mktemp("readback")

    def one(item: tuple[int, str]) -> tuple[str, tuple]:
        index, case = item
        work = base / f"case{index}"
        work.mkdir()
        source = case_file(case, work)
        args, results = command(case, index, work / "run", source)
        summary = work / "run" / "step-summary.md"
        before = snapshot(work)
        done = invoke(
            *args,
            results_dir=results,
            timeout=120,
            env={
                "GITHUB_STEP_SUMMARY": str(summary),
                "DOCKER_HOST": f"unix://{work}/no-engine.sock",
            },
        )
        return case, (source, before, snapshot(work), done, args)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, enumerate(CASES)))


def test_the_corpus_covers_every_kind_of_file_and_defect():
    kinds = {case.split("/")[0] for case in CASES}
    assert kinds == {"results", "history", "lock"}
    assert len(CASES) >= 30
    defects = {Path(case).name.split("-")[0].split(".")[0] for case in CASES}
    assert {"inject", "type", "json", "encoding", "huge", "unknown"} <= defects


def test_the_valid_files_are_read():
    assert read_results(VALID / "results.json")["cells"]
    assert len(read_history(VALID / "history.jsonl")) == 2
    read_lock(VALID / "matrix.lock.json")


@pytest.mark.parametrize("case", CASES)
def test_the_task_refuses_it_in_one_line_and_writes_nothing(case, outcomes):
    source, before, after, done, args = outcomes[case]
    output = done.stdout + done.stderr
    assert done.returncode == 2, (args, output)
    assert "Traceback" not in output
    assert done.stdout == ""
    assert MARKER not in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ")
    named = "history.jsonl" if case.startswith("history/") else str(source)
    if case.startswith("lock/"):
        named = "matrix.lock.json"
    assert named in line, line
    assert expected(case) in line, line
    assert before == after, "the task wrote or changed files"
    assert not Path("/tmp", MARKER).exists()
    assert not list(RENDERED.glob("corpus-*"))


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("results/")])
def test_every_reader_of_results_refuses_it(case, tmp_path):
    source = case_file(case, tmp_path)
    out = tmp_path / "out"
    valid = str(VALID / "results.json")
    for attempt in (
        lambda: report(input_path=source, output_dir=out),
        lambda: pin(None, str(source), str(out), None, tmp_path),
        lambda: merge_files([valid, str(source)], out),
        lambda: load_run(str(source), tmp_path),
    ):
        with pytest.raises(InputError) as info:
            attempt()
        assert info.value.exit_code == 2
        assert "\n" not in str(info.value) and expected(case) in str(info.value)
    assert not out.exists()
