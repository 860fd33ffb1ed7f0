"""A bad matrix.yaml stops every task before any work: one line per problem, exit 2, nothing built."""

import pytest
import yaml

from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration


def bad_matrix():
    data = yaml.safe_load((ROOT / "matrix.yaml").read_text())
    data["cells"][0]["base"] = "debain-13"  # unknown base
    data["cells"][1]["libvirt"] = "9.0; rm -rf /"  # malformed version
    data["policy"]["runs"] = "many"  # wrong type
    data["policy"]["colour"] = "blue"  # unknown key
    return yaml.safe_dump(data, sort_keys=False)


def test_bad_matrix_builds_nothing(engine, tmp_path):
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(bad_matrix())
    images_before = {i.id for i in engine.images.list(all=True)}
    containers_before = {c.id for c in engine.containers.list(all=True)}
    done = invoke("matrix.run", "--matrix", str(matrix), results_dir=tmp_path / "results")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    problems = [line for line in done.stderr.splitlines() if "matrix.yaml:" in line]
    assert len(problems) == 4, done.stderr
    assert any("cells[0].base" in p and "did you mean 'debian-13'" in p for p in problems)
    assert any("policy.runs" in p for p in problems)
    assert any("policy.colour" in p and "unknown key" in p for p in problems)
    assert any("cells[1].libvirt.version" in p and "rm -rf" in p for p in problems)
    assert {i.id for i in engine.images.list(all=True)} == images_before
    assert {c.id for c in engine.containers.list(all=True)} == containers_before
    assert not (tmp_path / "results").exists()
