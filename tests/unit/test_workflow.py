"""The nightly GitHub workflow: actionlint accepts it (shell steps through shellcheck), every
`hvgate` command it runs is a task of the collection, with flags that task has, and its steps act
on the exit codes: a finding does not fail a cell job, a crash does."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from invoke.exceptions import ParseError
from invoke.parser import Parser

from tests import cli

WORKFLOW = cli.ROOT / ".github" / "workflows" / "nightly.yml"
# A command: at the start of a line, after `$(`, `&&`, `||` or `;` (not inside a message).
INVOKE = re.compile(r"(?:^|\$\(|&&|\|\||;)\s*hvgate\s+(matrix\.[^\n|;&)]*)", re.MULTILINE)


@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def scripts(workflow):
    """(job, step name, script) of every `run:` step."""
    return [
        (job_name, step.get("name") or step["run"].splitlines()[0], step["run"])
        for job_name, job in workflow["jobs"].items()
        for step in job["steps"]
        if "run" in step
    ]


@pytest.fixture(scope="module")
def commands(scripts):
    """(job, argv) of every `hvgate matrix.TASK ...` the workflow runs."""
    return [
        (job, shlex.split(match.group(1)))
        for job, _, script in scripts
        for match in INVOKE.finditer(script)
    ]


def test_actionlint_accepts_the_workflow():
    actionlint = shutil.which("actionlint")
    assert actionlint, "actionlint is a test dependency: scripts/install --test"
    assert shutil.which("shellcheck"), "shellcheck is a test dependency: scripts/install --test"
    done = subprocess.run(
        [actionlint, "-verbose", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cli.ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Rule "shellcheck" was disabled' not in done.stderr  # the run: scripts were checked


def test_actionlint_finds_a_mistake(tmp_path):
    """The check can fail: a job matrix read from an output the first job does not have."""
    broken = WORKFLOW.read_text().replace("needs.plan.outputs.cells", "needs.plan.outputs.cels")
    path = tmp_path / "nightly.yml"
    path.write_text(broken)
    done = subprocess.run(
        [shutil.which("actionlint") or "actionlint", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert 'property "cels" is not defined' in done.stdout


def test_every_invoke_command_is_a_task_with_its_flags(commands):
    import tasks

    parser = Parser(contexts=tasks.namespace.to_contexts())
    names = {f"matrix.{name}" for name in tasks.matrix_tasks.task_names}
    called = []
    for job, argv in commands:
        assert argv[0] in names, f"{job}: `hvgate {argv[0]}` is not a task"
        parser.parse_argv(argv)  # ParseError for a flag the task does not have
        called.append(argv[0])
    assert set(called) >= {
        "matrix.resolve",
        "matrix.list",
        "matrix.run",
        "matrix.merge",
        "matrix.report",
        "matrix.pin",
    }


def test_a_task_or_flag_that_does_not_exist_is_caught():
    import tasks

    parser = Parser(contexts=tasks.namespace.to_contexts())
    with pytest.raises(ParseError):
        parser.parse_argv(["matrix.run", "--cell", "x"])
    with pytest.raises(ParseError):
        parser.parse_argv(["matrix.publish"])


def test_triggers(workflow):
    # PyYAML reads the key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert triggers["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"]  # every night
    assert "workflow_dispatch" in triggers


def test_the_cells_become_the_job_matrix(workflow, tmp_path):
    plan, cell = workflow["jobs"]["plan"], workflow["jobs"]["cell"]
    list_step = next(s for s in plan["steps"] if s.get("id") == "list")
    assert "hvgate matrix.list --json" in list_step["run"]
    assert plan["outputs"]["cells"] == "${{ steps.list.outputs.cells }}"
    assert cell["needs"] == "plan"
    assert cell["strategy"]["matrix"]["cell"] == "${{ fromJSON(needs.plan.outputs.cells) }}"
    assert cell["strategy"]["fail-fast"] is False
    assert cell["env"]["CELL"] == "${{ matrix.cell.id }}"
    # What `matrix.list --json` prints has that id.
    done = cli.invoke("matrix.list", "--json", results_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all("id" in entry for entry in json.loads(done.stdout))


def test_each_cell_job_runs_its_cell_and_uploads_its_results(workflow):
    cell = workflow["jobs"]["cell"]
    runs = " ".join(s["run"] for s in cell["steps"] if "run" in s)
    assert 'hvgate matrix.run --cells "$CELL"' in runs
    upload = next(
        s for s in cell["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")
    )
    assert upload["with"]["path"].split() == ["cell-results/", "!cell-results/history.jsonl"]
    assert cell["env"]["HVGATE_RESULTS"].endswith("/cell-results")  # what the run writes
    assert upload["if"] == "${{ !cancelled() }}"  # unsafe cells' results are uploaded too


def test_each_cell_job_starts_from_the_evidence_of_earlier_nightlies(workflow):
    """The history the last job keeps in the cache is restored where the cell's run reads it
    ($HVGATE_RESULTS/history.jsonl), before the run."""
    cell, publish = workflow["jobs"]["cell"], workflow["jobs"]["publish"]
    steps = cell["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    restore = steps[uses.index("actions/cache/restore")]
    run = next(i for i, s in enumerate(steps) if "hvgate matrix.run" in s.get("run", ""))
    assert uses.index("actions/cache/restore") < run
    assert restore["with"]["path"] == "cell-results/history.jsonl"
    saved = next(s for s in publish["steps"] if s.get("uses", "").startswith("actions/cache/save"))
    assert restore["with"]["restore-keys"] == "hvgate-history-"
    assert saved["with"]["key"].startswith("hvgate-history-")


def test_the_last_job_merges_publishes_and_fails_loudly(workflow):
    publish = workflow["jobs"]["publish"]
    assert set(publish["needs"]) == {"plan", "cell"}
    assert "!cancelled()" in publish["if"]  # runs when some cell jobs failed
    steps = publish["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert uses.index("actions/download-artifact") < uses.index("actions/deploy-pages")
    download = steps[uses.index("actions/download-artifact")]["with"]
    assert download["pattern"] == "results-*"
    # Back where the cell jobs wrote them ($HVGATE_RESULTS there), and read from there.
    assert download["path"] == "cell-results" and download["merge-multiple"] is True
    assert "hvgate matrix.merge 'cell-results/runs/*/results.json'" in " ".join(
        s.get("run", "") for s in steps
    )
    runs = [s.get("run", "") for s in steps]
    order = [
        next(i for i, r in enumerate(runs) if f"hvgate matrix.{t}" in r)
        for t in ("merge", "pin", "report")  # the page links the pins: pinned first
    ]
    assert order == sorted(order)
    assert publish["permissions"]["pages"] == "write"
    assert publish["permissions"]["id-token"] == "write"
    last = steps[-1]
    assert uses.index("actions/deploy-pages") < len(steps) - 1  # the page first, then the verdict
    assert '"regression"' in last["run"] and "exit" in last["run"]


# --- the steps act on the exit codes ------------------------------------------------------------


def step(workflow, job, test):
    return next(s for s in workflow["jobs"][job]["steps"] if test(s))


def run_step(script, tmp_path, code, env=None):
    """The step's script as GitHub runs it (bash -eo pipefail) with `hvgate` exiting `code`:
    (bash's exit code, the outputs it set)."""
    output = tmp_path / f"output-{code}"
    output.write_text("")
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", f"hvgate() {{ return {code}; }}\n{script}"],
        env={"PATH": "/usr/bin:/bin", "GITHUB_OUTPUT": str(output), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = output.read_text().splitlines()
    return done.returncode, dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.parametrize(
    ("code", "fails"), [(0, False), (1, False), (2, True), (3, True), (130, True)]
)
def test_a_cell_job_fails_on_a_crash_not_on_a_finding(workflow, tmp_path, code, fails):
    script = step(workflow, "cell", lambda s: "matrix.run" in s.get("run", ""))["run"]
    assert (run_step(script, tmp_path, code)[0] != 0) == fails


@pytest.mark.parametrize(
    ("code", "fails", "moved"),
    [(0, False, "false"), (1, False, "true"), (2, True, "false"), (3, True, "false")],
)
def test_the_plan_tells_a_moved_archive_from_a_failure(workflow, tmp_path, code, fails, moved):
    script = step(workflow, "plan", lambda s: s.get("id") == "lock")["run"]
    returncode, outputs = run_step(script, tmp_path, code, {"CELLS": "", "EXCLUDE": ""})
    assert (returncode != 0) == fails
    assert outputs["moved"] == moved
    assert workflow["jobs"]["plan"]["outputs"]["moved"] == "${{ steps.lock.outputs.moved }}"


@pytest.mark.parametrize(("code", "annotation"), [(0, None), (1, "no safe cell"), (3, "exit 3")])
def test_the_last_job_tells_nothing_to_pin_from_a_failure(workflow, tmp_path, code, annotation):
    pin = step(workflow, "publish", lambda s: s.get("id") == "pin")["run"]
    returncode, outputs = run_step(pin, tmp_path, code)
    assert returncode == 0  # the page is deployed first; the last step judges
    assert outputs["code"] == str(code)
    last = workflow["jobs"]["publish"]["steps"][-1]["run"]
    verdict = last[last.index('if [ "$CELL_JOBS"') :]
    done = subprocess.run(
        ["bash", "-c", "status=0\n" + verdict],
        env={
            "PATH": "/usr/bin:/bin",
            "CELL_JOBS": "success",
            "PIN": outputs["code"],
            "MOVED": "false",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    if annotation is None:
        assert done.returncode == 0 and "::error" not in done.stdout
    else:
        assert done.returncode == 1 and annotation in done.stdout
