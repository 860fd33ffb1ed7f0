"""The Zuul jobs (.zuul.yaml, playbooks/, roles/hvgate): the file against Zuul's job schema (the
one zuul-lint ships), every job's parent and playbook there, a variant per cell of matrix.yaml,
the role's variables documented, and the playbooks through `ansible-playbook --syntax-check`.
tests/integration/test_zuul_role.py runs the role for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests import cli

ZUUL = cli.ROOT / ".zuul.yaml"
ROLE = cli.ROOT / "roles" / "hvgate"


@pytest.fixture(scope="module")
def config() -> list[dict]:
    return yaml.safe_load(ZUUL.read_text())


def jobs(config) -> dict[str, dict]:
    return {item["job"]["name"]: item["job"] for item in config if "job" in item}


def zuul_schema() -> dict:
    spec = importlib.util.find_spec("zuul_lint")
    assert spec and spec.submodule_search_locations, "zuul-lint is a test dependency"
    path = Path(next(iter(spec.submodule_search_locations))) / "zuul-schema.json"
    return json.loads(path.read_text())


def test_the_file_is_valid_for_zuuls_schema(config):
    jsonschema.validate(config, zuul_schema())


def test_the_schema_catches_a_mistake(config):
    broken = [dict(item) for item in config]
    broken[0] = {"job": {**broken[0]["job"], "post_run": "playbooks/hvgate-post.yaml"}}
    with pytest.raises(jsonschema.ValidationError, match="post_run"):
        jsonschema.validate(broken, zuul_schema())


def test_every_parent_and_playbook_is_there(config):
    defined = jobs(config)
    for name, job in defined.items():
        assert job.get("parent") in (None, *defined), f"{name}: unknown parent"
        for phase in ("pre-run", "run", "post-run"):
            for playbook in [job[phase]] if isinstance(job.get(phase), str) else job.get(phase, []):
                assert (cli.ROOT / playbook).is_file(), f"{name}: {phase} {playbook}"
        for node in (job.get("nodeset") or {}).get("nodes", []):
            assert set(node) == {"name", "label"}, name
    (project,) = [item["project"] for item in config if "project" in item]
    for pipeline in project.values():
        for job in pipeline["jobs"]:
            assert job in defined, job
    assert "hvgate-matrix" in project["periodic"]["jobs"]


def test_a_variant_per_cell(config, tmp_path):
    done = cli.invoke("matrix.list", "--json", results_dir=tmp_path)
    cells = [cell["id"] for cell in json.loads(done.stdout)]
    variants = {
        name.removeprefix("hvgate-cell-"): job["vars"]["hvgate_cells"]
        for name, job in jobs(config).items()
        if name.startswith("hvgate-cell-")
    }
    assert variants == {cell: cell for cell in cells}
    assert all(jobs(config)[f"hvgate-cell-{c}"]["parent"] == "hvgate-cell" for c in cells)


def test_every_role_variable_is_documented():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yaml").read_text())
    used = set()
    for path in (ROLE / "tasks").glob("*.yaml"):
        used |= set(re.findall(r"\b(hvgate_[a-z_]+)\b", path.read_text()))
    registered = {"hvgate_run", "hvgate_latest", "hvgate_results", "hvgate_regressions"}
    registered |= {"hvgate_docker_socket"}
    assert used - registered <= set(defaults), used - registered - set(defaults)
    readme = (ROLE / "README.md").read_text()
    for name in defaults:
        assert f"`{name}`" in readme, name
    assert "roles/hvgate/README.md" in (cli.ROOT / "README.md").read_text()


def test_the_playbooks_pass_ansibles_syntax_check(tmp_path):
    playbook = shutil.which("ansible-playbook")
    assert playbook, "ansible-core is a test dependency"
    for path in sorted((cli.ROOT / "playbooks").glob("*.yaml")):
        done = subprocess.run(
            [playbook, "--syntax-check", "-i", "localhost,", str(path)],
            env={**os.environ, "ANSIBLE_ROLES_PATH": str(cli.ROOT / "roles")},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("code", "change", "fails", "message"),
    [
        (0, None, False, None),
        (1, "fix", False, None),  # a finding alone: the table shows it
        (1, "regression", True, "regressions: c1"),
        (2, None, True, "exited 2 (bad input)"),
        (3, None, True, "exited 3 (the tool failed)"),
        (130, None, True, "exited 130 (interrupted)"),
    ],
)
def test_the_role_fails_on_a_tool_failure_or_a_regression(tmp_path, code, change, fails, message):
    """The role's verdict (tasks/judge.yaml) run by ansible-playbook on a run's exit code and
    results as the run step leaves them."""
    results = tmp_path / "results"
    results.mkdir()
    cells = [{"id": "c1", "status": "flaky", "history": {"change": change} if change else None}]
    (results / "latest.json").write_text(json.dumps({"cells": cells}))
    variables = {
        "hvgate_run": {"rc": code, "stderr_lines": ["error: something"]},
        "hvgate_latest": {"stat": {"exists": True}},
        "hvgate_results_dir": str(results),
        "hvgate_become": False,
        "ansible_python_interpreter": sys.executable,
    }
    playbook = tmp_path / "judge.yaml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "ansible.builtin.include_role": {
                                "name": "hvgate",
                                "tasks_from": "judge.yaml",
                            }
                        }
                    ],
                }
            ]
        )
    )
    done = subprocess.run(
        [
            shutil.which("ansible-playbook") or "ansible-playbook",
            "-i",
            "localhost,",
            "-e",
            json.dumps(variables),
            str(playbook),
        ],
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(cli.ROOT / "roles"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert (done.returncode != 0) == fails, done.stdout[-3000:]
    if message:
        assert message in done.stdout
