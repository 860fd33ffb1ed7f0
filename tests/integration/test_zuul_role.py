"""The Zuul job's run playbook (playbooks/hvgate-run.yaml, roles/hvgate) run for real by
ansible-playbook on this host (connection local) on one cell: it installs the tool in its own
environment, runs the cell, collects results and logs into the job's output with the table as an
artifact, passes on a finding and fails on bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import cli

pytestmark = pytest.mark.integration

CELL = "debian-12-release"


def playbook(tmp_path, **variables):
    ansible = shutil.which("ansible-playbook")
    assert ansible, "ansible-core is a test dependency"
    extra = {
        "ansible_python_interpreter": sys.executable,
        "hvgate_venv": str(tmp_path / "venv"),
        "hvgate_results_dir": str(tmp_path / "results"),
        "zuul_output_dir": str(tmp_path / "zuul-output"),
        "hvgate_become": False,
        **variables,
    }
    return subprocess.run(
        [
            ansible,
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            json.dumps(extra),
            str(cli.ROOT / "playbooks" / "hvgate-run.yaml"),
        ],
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(cli.ROOT / "roles"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=3600,
    )


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("zuul")
    done = playbook(tmp_path, hvgate_cells=CELL, hvgate_runs=1)
    return tmp_path, done


def test_a_finding_passes_and_the_table_is_an_artifact(output):
    tmp_path, done = output
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    run_log = (tmp_path / "zuul-output" / "logs" / "hvgate" / "hvgate-matrix-run.txt").read_text()
    assert "exit code: 1" in run_log  # one run per scenario: inconclusive, a finding
    table = (tmp_path / "zuul-output" / "artifacts" / "hvgate-latest.md").read_text()
    assert f"| {CELL} | **inconclusive** |" in table
    results = json.loads((tmp_path / "zuul-output" / "logs" / "hvgate" / "latest.json").read_text())
    assert [cell["id"] for cell in results["cells"]] == [CELL]
    run_id = results["run_id"]
    assert (tmp_path / "zuul-output" / "logs" / "hvgate" / "runs" / run_id / "logs").is_dir()
    for name in ("latest.html", "latest.json", "latest.junit.xml"):
        assert (tmp_path / "zuul-output" / "artifacts" / f"hvgate-{name}").is_file()


def test_bad_input_fails_the_job(output):
    tmp_path, _ = output
    done = playbook(tmp_path, hvgate_cells="no-such-cell")
    assert done.returncode != 0
    assert "hvgate matrix.run exited 2 (bad input)" in done.stdout
    run_log = (tmp_path / "zuul-output" / "logs" / "hvgate" / "hvgate-matrix-run.txt").read_text()
    assert "exit code: 2" in run_log and "--cells 'no-such-cell' matches no cell" in run_log
