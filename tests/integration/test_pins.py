"""Pin files from a real run install cleanly: a real Debian 12 backports cell is built (recording
what it took from backports) and smoke-tested, its apt preferences go into a fresh container of the
same base, apt installs the pinned versions, and the pins' check passes."""

import json
import re
import uuid

import pytest

from harness.core.paths import CONTEXT
from harness.engine.bases import base_image_tag
from tests.cli import invoke
from tests.integration.support import tar_of

pytestmark = pytest.mark.integration

# Backports: without its pins apt would install the release's libvirt and QEMU, so the test can fail.
CELL = "debian-12-backports"
BASE = "debian-12"


@pytest.fixture(scope="module")
def results(debian12_run):
    cell = debian12_run.cell(CELL)
    assert cell["status"] == "safe", (debian12_run.done.stderr[-3000:], cell.get("reason"))
    return debian12_run.results_dir, {**debian12_run.data, "cells": [cell]}


@pytest.fixture(scope="module")
def pinned(results):
    results_dir, data = results
    out = results_dir / "pin-files"
    done = invoke("matrix.pin", "--run", data["run_id"], "--out", str(out), results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    return data, out, done


@pytest.fixture(scope="module")
def container(engine):
    """A fresh container of the cell's base image, removed afterwards."""
    box = engine.containers.run(
        base_image_tag(BASE),
        ["sleep", "3600"],
        detach=True,
        init=True,
        labels={"io.hvgate.test": f"pins-{uuid.uuid4().hex[:8]}"},
    )
    try:
        yield box
    finally:
        box.remove(force=True)


def sh(box, script):
    code, output = box.exec_run(
        ["bash", "-ec", script], environment={"DEBIAN_FRONTEND": "noninteractive"}
    )
    return code, output.decode(errors="replace")


def test_pin_files_state_their_evidence(pinned):
    data, out, done = pinned
    (cell,) = data["cells"]
    # The shared run has other cells too: these are this cell's files.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(f"{CELL}.")) == [
        f"{CELL}.check",
        f"{CELL}.json",
        f"{CELL}.pref",
    ]
    runs = sum(s["runs"] for s in cell["scenarios"])
    for name in (f"{CELL}.pref", f"{CELL}.check"):
        text = (out / name).read_text()
        assert f"# Evidence: run {data['run_id']}" in text
        assert (
            f"# Cell {CELL}: safe; {len(cell['scenarios'])} scenarios, {runs} runs, 0 failures"
            in text
        )
        assert "# Needs bookworm-backports in apt's sources" in text
    pins = json.loads((out / f"{CELL}.json").read_text())
    assert pins["suites"] == ["bookworm-backports"]
    for package, version in cell["versions"].items():
        assert pins["packages"][package] == version
    # What the image took from backports, as the build recorded it: QEMU and libvirt at least.
    origins = {o["package"]: o for o in cell["origins"]}
    for package in ("libvirt-daemon", "qemu-system-x86"):
        assert origins[package]["suites"] == ["bookworm-backports"], cell["origins"]
        assert pins["origins"][package] == ["bookworm-backports"]
    assert set(pins["packages"]) >= set(origins)
    printed = [line for line in done.stdout.splitlines() if f"/{CELL}." in line]
    assert printed == [str(out / n) for n in (f"{CELL}.pref", f"{CELL}.check", f"{CELL}.json")]


def test_the_preferences_install_the_pinned_versions_in_a_fresh_container(pinned, container):
    data, out, _ = pinned
    pins = json.loads((out / f"{CELL}.json").read_text())
    preferences = (out / f"{CELL}.pref").read_bytes()
    target = f"00-hvgate-{pins['name']}.pref"
    container.put_archive(
        "/",
        tar_of(
            {
                f"etc/apt/preferences.d/{target}": (preferences, 0o644),
                "tmp/check": ((out / f"{CELL}.check").read_bytes(), 0o755),
                "opt/hvgate/bin/add-apt-source": ((CONTEXT / "add-apt-source").read_bytes(), 0o755),
            }
        ),
    )
    # The suite the cell's source added, from the base image's own mirror, as the image build does.
    for suite in pins["suites"]:
        code, output = sh(
            container, f"/opt/hvgate/bin/add-apt-source {pins['source']} {suite} main ''"
        )
        assert code == 0, output
    packages = " ".join(pins["packages"])
    code, output = sh(container, "apt-get update -q && apt-get -s dist-upgrade")
    assert code == 0, output[-3000:]
    # The pins raise no suite, and the image took none of the base's own packages from
    # backports: a dist-upgrade changes nothing.
    upgraded = dict(re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", output, re.MULTILINE))
    assert upgraded == {}, output[-3000:]
    code, output = sh(
        container, f"apt-get install -y -q --no-install-recommends {packages} && sh /tmp/check"
    )
    assert code == 0, output[-3000:]
    assert f"hvgate-check: {CELL}: " in output
    code, output = sh(container, f"dpkg-query -W -f '${{Package}}\\t${{Version}}\\n' {packages}")
    assert code == 0, output
    installed = dict(line.split("\t") for line in output.splitlines())
    assert installed == pins["packages"]
    (cell,) = data["cells"]
    for package, version in cell["versions"].items():
        assert installed[package] == version  # what the smoke test ran on
    # Packages of the same sources that were not asked for follow their pins too.
    code, output = sh(container, "apt-cache policy libvirt-clients qemu-system-arm")
    candidates = re.findall(r"Candidate: (\S+)", output)
    assert candidates == [
        pins["packages"]["libvirt-daemon"],
        pins["packages"]["qemu-system-x86"],
    ], output


def test_the_run_is_kept_in_the_history(results):
    results_dir, data = results
    lines = [json.loads(line) for line in (results_dir / "history.jsonl").read_text().splitlines()]
    (cell,) = data["cells"]
    # The shared run has other cells too: one line each, this cell's among them.
    assert len({e["cell"] for e in lines}) == len(lines)
    (line,) = [e for e in lines if e["cell"] == CELL]
    assert (line["run_id"], line["status"]) == (data["run_id"], "safe")
    assert line["versions"] == cell["versions"]
    assert cell["history"] == {
        "since": data["run_id"],
        "first_seen": data["run_id"],
        "last_seen": None,
        "previous": None,
        "change": None,
    }
