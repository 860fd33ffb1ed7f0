"""The bootstrap's process handling: its exit code passes through, a stalled one is stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.core.errors import EngineError
from harness.core.model import Base
from harness.engine import bases


def test_the_exit_code_and_output_reach_the_caller(tmp_path: Path) -> None:
    log = tmp_path / "base.log"
    assert bases.run_bootstrap(["sh", "-c", "echo fetched; exit 3"], log, "debian-12") == 3
    assert log.read_text() == "fetched\n"


def test_a_stalled_bootstrap_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bases, "BOOTSTRAP_TIMEOUT", 0.5)
    log, pid_file = tmp_path / "base.log", tmp_path / "child.pid"
    # A child of its own, like apt under mmdebstrap: it must go too.
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    with pytest.raises(EngineError, match=r"base debian-12: mmdebstrap did not finish within 0 s"):
        bases.run_bootstrap(["sh", "-c", script], log, "debian-12")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # A killed child of a killed shell is reaped by init; until then it is a zombie.
        if Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the bootstrap's child {child} still runs")


def test_a_bootstrap_takes_the_bases_components() -> None:
    bionic = Base(
        distro="ubuntu", release="18.04", codename="bionic", components=("main", "universe")
    )
    command = bases.bootstrap_command(bionic, "/tmp/out.tar")
    assert "--components=main,universe" in command
    assert command[-2:] == ["bionic", "/tmp/out.tar"]
    plain = bases.bootstrap_command(Base(distro="ubuntu", release="20.04", codename="focal"), "x")
    assert not any(word.startswith("--components") for word in plain)
