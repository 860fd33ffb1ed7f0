"""The shared package cache (stubbed engine): lazy start, fallback, leases, build args, and
remembered 'unavailable' outcomes. tests/integration/test_package_cache.py uses the real one."""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from harness.core.errors import EngineError
from harness.core.model import Cell
from harness.core.options import CACHE_ENV, package_cache_wanted
from harness.engine import package_cache as cache
from harness.stages import build

PROXY = "http://192.0.2.7:3142"


class StubContainer:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self, timeout: int) -> None:
        self.stopped += 1

    def remove(self, force: bool) -> None:
        pass


class StubContainers:
    def __init__(self) -> None:
        self.container = StubContainer()

    def get(self, name: str) -> StubContainer:
        assert name == cache.NAME
        return self.container


class StubClient:
    """An engine's cache container and the users' leases running on it."""

    def __init__(self) -> None:
        self.containers = StubContainers()
        self.leases: set[str] = set()


class StubLease:
    def __init__(self, client: StubClient, name: str) -> None:
        self.client, self.name = client, name
        client.leases.add(name)

    def release(self) -> None:
        self.client.leases.discard(self.name)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "UNAVAILABLE", tmp_path / "unavailable")
    # The engine's leases and state mutex, as the stub engine keeps them.
    monkeypatch.setattr(
        cache.lease, "alive", lambda client, label: dict.fromkeys(client.leases, "packages")
    )
    monkeypatch.setattr(cache.lease, "mutex", lambda *args: contextlib.nullcontext())


def test_switched_off_by_flag_or_environment() -> None:
    assert package_cache_wanted(False, {})
    assert not package_cache_wanted(True, {})  # --no-cache
    for value in ("off", "0", "no", "False"):
        assert not package_cache_wanted(False, {CACHE_ENV: value})
    assert package_cache_wanted(False, {CACHE_ENV: "on"})
    # Without a cache (a run hands None to its builds), a build downloads directly.
    assert cache.build_args(None) == {}


def test_started_once_on_the_first_build_and_sent_as_a_build_arg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts: list[int] = []

    def start(self: cache.PackageCache) -> str:
        starts.append(1)
        return PROXY

    monkeypatch.setattr(cache.PackageCache, "_start", start)
    monkeypatch.setattr(cache.PackageCache, "_leave", lambda self: None)
    client = StubClient()
    with cache.serving(client, "hvgate/base:debian-12", Path("/tmp")) as serving:  # type: ignore[arg-type]
        assert starts == []  # a run with nothing to build never starts it
        threads = [threading.Thread(target=cache.build_args, args=(serving,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.build_args(serving) == {"http_proxy": PROXY}
    assert starts == [1]
    # Closed at the end of the run: a build still going on downloads directly.
    assert cache.build_args(serving) == {}


def test_a_cache_that_fails_to_start_is_a_warning_and_builds_go_direct(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def start(self: cache.PackageCache) -> str:
        raise EngineError("its image did not build: E: Unable to locate package apt-cacher-ng")

    monkeypatch.setattr(cache.PackageCache, "_start", start)
    client = StubClient()
    with cache.serving(client, "hvgate/base:debian-12", Path("/tmp")) as serving:  # type: ignore[arg-type]
        assert cache.build_args(serving) == {}
        assert cache.build_args(serving) == {}  # asked once only
    err = capsys.readouterr().err
    assert err.count("warning: not used, builds download directly") == 1
    assert "Unable to locate package apt-cacher-ng" in err


def test_a_closed_cache_remembers_nothing_and_sends_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build still going on when its run's cache closed (an interrupt) downloads directly,
    and an archive it then finds unreachable is not remembered for the next runs."""
    monkeypatch.setattr(cache.PackageCache, "_start", lambda self: PROXY)
    monkeypatch.setattr(cache.PackageCache, "_leave", lambda self: None)
    with cache.serving(StubClient(), "base", Path("/tmp")) as serving:  # type: ignore[arg-type]
        serving.remember("hvgate/cell:a-1", "source unreachable", None, ("E: x",))
        assert serving.remembered("hvgate/cell:a-1") is not None
    serving.remember("hvgate/cell:b-2", "source unreachable", None, ())
    assert not (cache.UNAVAILABLE / "hvgate_cell_b-2.json").exists()
    assert serving.remembered("hvgate/cell:a-1") is None
    assert serving.build_args() == {}


def lease(pc: cache.PackageCache) -> None:
    """What _start does about leases, without an engine."""
    pc._lease = StubLease(pc.client, f"user-{id(pc)}")  # type: ignore[assignment, arg-type]


def test_the_last_run_to_leave_stops_the_container() -> None:
    client = StubClient()
    first = cache.PackageCache(client, "base", Path("/tmp"))  # type: ignore[arg-type]
    second = cache.PackageCache(client, "base", Path("/tmp"))  # type: ignore[arg-type]
    lease(first)
    lease(second)
    assert not first._alone()
    first.close()
    assert client.containers.container.stopped == 0  # the second still builds through it
    assert second._alone()
    second.close()
    assert client.containers.container.stopped == 1
    second.close()  # twice is harmless
    assert client.containers.container.stopped == 1


def test_leases_are_per_engine() -> None:
    one, other = StubClient(), StubClient()
    a = cache.PackageCache(one, "base", Path("/tmp"))  # type: ignore[arg-type]
    b = cache.PackageCache(other, "base", Path("/tmp"))  # type: ignore[arg-type]
    lease(a)
    lease(b)
    a.close()
    assert one.containers.container.stopped == 1
    b.close()
    assert other.containers.container.stopped == 1


UNREACHABLE = [
    "Err:1 http://archive.invalid/debian x InRelease",
    "  503  Host not found [IP: 192.0.2.7 3142]",
]
DPKG_FAILED = ["E: Sub-process /usr/bin/dpkg returned an error code (1)"]


class BuildEngine:
    """An engine whose cell image is missing and whose build fails at once, recording the call."""

    def __init__(self, log: list[str] = UNREACHABLE) -> None:
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Images:
            def get(self, tag: str) -> Any:
                raise docker.errors.ImageNotFound(tag)

        class Api:
            def build(self, **kwargs: Any) -> Any:
                outer.calls.append(kwargs)
                lines = [{"stream": line + "\n"} for line in log]
                return iter([*lines, {"error": "The command returned a non-zero code: 100"}])

        self.images = Images()
        self.api = Api()


def dockerfile_of(call: dict[str, Any]) -> str:
    with tarfile.open(fileobj=io.BytesIO(call["fileobj"].getvalue())) as tar:
        member = tar.extractfile("Dockerfile")
        assert member is not None
        return member.read().decode()


def test_builds_reach_the_cache_by_build_arg_only(
    monkeypatch: pytest.MonkeyPatch, cell_by_id: dict[str, Cell], tmp_path: Path
) -> None:
    monkeypatch.setattr(cache.PackageCache, "proxy", lambda self: PROXY)
    monkeypatch.setattr(cache.PackageCache, "close", lambda self: None)
    cell = cell_by_id["debian-12-release"]
    engine = BuildEngine()
    direct = build.build_cell(engine, cell, "sha256:base", tmp_path, 60)  # type: ignore[arg-type]
    with cache.serving(engine, "base", tmp_path) as serving:  # type: ignore[arg-type]
        proxied = build.build_cell(engine, cell, "sha256:base", tmp_path, 60, serving)  # type: ignore[arg-type]
    # Unreachable through the cache: the archive is asked directly before the cell is unavailable.
    without, through, retried = engine.calls
    assert without["buildargs"] == retried["buildargs"] == {}
    assert through["buildargs"] == {"http_proxy": PROXY}
    # The same Dockerfile and context, so the same content hash and image tag.
    assert dockerfile_of(without) == dockerfile_of(through)
    assert PROXY not in dockerfile_of(through)
    # The build's temporary tag ends in a token of its own; the content hash before it is shared.
    assert through["tag"].rsplit("-", 1)[0] == without["tag"].rsplit("-", 1)[0]
    assert through["tag"] != without["tag"]
    # The proxy's answer for a host that does not resolve reads as apt's own.
    assert (
        direct.reason
        == proxied.reason
        == "source unreachable: Could not resolve the archive's host"
    )


def test_an_unavailable_outcome_is_remembered_for_a_while(
    monkeypatch: pytest.MonkeyPatch, cell_by_id: dict[str, Cell], tmp_path: Path
) -> None:
    monkeypatch.setattr(cache.PackageCache, "proxy", lambda self: PROXY)
    monkeypatch.setattr(cache.PackageCache, "close", lambda self: None)
    cell = cell_by_id["debian-12-release"]
    engine = BuildEngine()
    with cache.serving(engine, "base", tmp_path) as serving:  # type: ignore[arg-type]
        first = build.build_cell(engine, cell, "sha256:base", tmp_path, 60, serving)  # type: ignore[arg-type]
        again = build.build_cell(engine, cell, "sha256:base", tmp_path, 60, serving)  # type: ignore[arg-type]
        other_base = build.build_cell(engine, cell, "sha256:new", tmp_path, 60, serving)  # type: ignore[arg-type]
    # Each build: through the cache, then directly. The same content was not built again; a
    # new base was.
    assert len(engine.calls) == 4
    assert first.status == again.status == other_base.status == "unavailable"
    assert again.reason == first.reason
    assert again.log_tail == first.log_tail
    # Without the cache (--no-cache), and once RETRY_AFTER has passed, the archive is asked again.
    build.build_cell(engine, cell, "sha256:base", tmp_path, 60)  # type: ignore[arg-type]
    assert len(engine.calls) == 5
    later = cache.time.time() + cache.RETRY_AFTER + 1
    monkeypatch.setattr(cache.time, "time", lambda: later)
    with cache.serving(engine, "base", tmp_path) as serving:  # type: ignore[arg-type]
        build.build_cell(engine, cell, "sha256:base", tmp_path, 60, serving)  # type: ignore[arg-type]
    assert len(engine.calls) == 7


def test_a_build_that_fails_for_another_reason_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, cell_by_id: dict[str, Cell], tmp_path: Path
) -> None:
    monkeypatch.setattr(cache.PackageCache, "proxy", lambda self: PROXY)
    monkeypatch.setattr(cache.PackageCache, "close", lambda self: None)
    engine = BuildEngine(DPKG_FAILED)
    with cache.serving(engine, "base", tmp_path) as serving:  # type: ignore[arg-type]
        result = build.build_cell(
            engine, cell_by_id["debian-12-release"], "b", tmp_path, 60, serving
        )  # type: ignore[arg-type]
    assert result.status == "failed"
    assert [call["buildargs"] for call in engine.calls] == [{"http_proxy": PROXY}]
    assert not list(cache.UNAVAILABLE.glob("*.json"))  # only 'unavailable' is remembered


def test_loopback_sources_bypass_the_cache(
    monkeypatch: pytest.MonkeyPatch, cell_by_id: dict[str, Cell], tmp_path: Path
) -> None:
    monkeypatch.setattr(cache.PackageCache, "proxy", lambda self: PROXY)
    monkeypatch.setattr(cache.PackageCache, "close", lambda self: None)
    monkeypatch.setattr(build, "uses_loopback", lambda cell: True)
    engine = BuildEngine()
    with cache.serving(engine, "base", tmp_path) as serving:  # type: ignore[arg-type]
        build.build_cell(engine, cell_by_id["debian-12-release"], "b", tmp_path, 60, serving)  # type: ignore[arg-type]
    assert engine.calls[0]["buildargs"] == {}
    assert engine.calls[0]["network_mode"] == "host"
