"""Host-side faults without Docker: a build whose engine connection times out or drops ends as
a failed build that names its timeout, not as a traceback."""

from __future__ import annotations

import requests
import urllib3

from harness.engine.image_build import docker_build


class SilentEngine:
    """An engine whose build stream stops with `error` after some output (the SDK's shape)."""

    def __init__(self, error: Exception):
        self.api = self
        self.error = error

    def build(self, **kwargs):
        def stream():
            yield {"stream": "Step 1/2 : FROM hvgate/base:debian-12\n"}
            raise self.error

        return stream()


def test_a_build_silent_past_its_timeout_names_the_timeout(tmp_path):
    timeout = urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out. (read timeout=1800)")
    ok, lines = docker_build(SilentEngine(timeout), b"", "t", tmp_path / "build.log", "cell", 1800)
    assert not ok
    assert lines[-1] == "ERROR: the build did not finish within 1800 s (silent that long)"
    assert "within 1800 s" in (tmp_path / "build.log").read_text()


def test_an_engine_gone_during_a_build_says_so(tmp_path):
    gone = requests.exceptions.ConnectionError("Connection aborted: connection reset by peer")
    ok, lines = docker_build(SilentEngine(gone), b"", "t", tmp_path / "build.log", "cell", 60)
    assert not ok
    assert lines[-1].startswith("ERROR: the Docker engine failed during the build: Connection")
