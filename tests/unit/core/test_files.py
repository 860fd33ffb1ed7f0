"""harness.core.files: a write is atomic, and a failed one leaves the old file and no temporary."""

from __future__ import annotations

import os

import pytest

from harness.core import files
from harness.core.files import write_atomic


def test_write_atomic(tmp_path):
    path = tmp_path / "cells" / "x" / "Dockerfile"
    assert write_atomic(path, "FROM a\n") is True
    assert path.read_text() == "FROM a\n"
    stat = path.stat()
    assert write_atomic(path, "FROM a\n") is False
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert path.stat().st_ino == stat.st_ino
    assert write_atomic(path, "FROM b\n") is True
    assert path.read_text() == "FROM b\n"
    assert os.listdir(path.parent) == ["Dockerfile"]


def test_write_atomic_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "Dockerfile"
    path.write_text("old\n")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["Dockerfile"]
