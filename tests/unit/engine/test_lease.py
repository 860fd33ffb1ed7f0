"""`matrix.clean`'s choice (stubbed engine): what runs that hold a lease have is kept, with why;
the rest goes; --all takes everything. tests/integration/test_shared_engine.py uses the real one."""

from __future__ import annotations

from typing import Any

from harness.engine import lease


class Thing:
    def __init__(self, kind: str, name: str, labels: dict[str, str], running: bool = True):
        self.kind, self.name, self.labels = kind, name, labels
        self.attrs = {"Labels": labels}
        self.status = "running" if running else "exited"
        self.removed = False

    def remove(self, **kwargs: Any) -> None:
        self.removed = True


class Collection:
    def __init__(self, things: list[Thing]):
        self.things = things

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Thing]:
        key, _, value = (filters or {})["label"].partition("=")
        found = [t for t in self.things if key in t.labels and value in ("", t.labels[key])]
        if (filters or {}).get("status") == "running":
            found = [t for t in found if t.status == "running"]
        return [t for t in found if not t.removed]

    def get(self, name: str) -> Thing:
        return next(t for t in self.things if t.name == name)


class Engine:
    def __init__(self, things: list[Thing]):
        self.containers = Collection([t for t in things if t.kind == "container"])
        self.networks = Collection([t for t in things if t.kind == "network"])
        self.volumes = Collection([t for t in things if t.kind == "volume"])


RUN = "io.hvgate.run"


def engine() -> tuple[Engine, dict[str, Thing]]:
    things = [
        Thing("container", "alive-smoke", {RUN: "r-alive"}),
        Thing("network", "alive-net", {RUN: "r-alive"}),
        Thing("container", "dead-smoke", {RUN: "r-dead"}, running=False),
        Thing("volume", "dead-vol", {RUN: "r-dead"}),
        Thing("container", "hvgate-package-cache", {RUN: "package-cache"}),
        Thing("container", "resolving", {RUN: "resolve-debian-12-release"}),
        Thing("container", "lease-alive", {lease.LABEL_LEASE: "r-alive"}),
        Thing("container", "lease-resolve", {lease.LABEL_LEASE: "resolve-*"}),
        Thing("container", "lease-gone", {lease.LABEL_LEASE: "r-dead"}, running=False),
        Thing("container", "cache-user", {lease.LABEL_CACHE_USER: "packages"}),
    ]
    return Engine(things), {t.name: t for t in things}


def test_clean_keeps_what_live_runs_hold_and_says_why():
    client, things = engine()
    removed, kept = lease.clean(client)  # type: ignore[arg-type]
    assert removed == [
        "removed container dead-smoke (run r-dead)",
        "removed volume dead-vol (run r-dead)",
    ]
    assert sorted(kept) == [
        "kept container alive-smoke: run r-alive is alive",
        "kept container hvgate-package-cache: the package cache is in use by 1 live run(s)",
        "kept container resolving: run resolve-* is alive",
        "kept network alive-net: run r-alive is alive",
    ]
    assert not things["lease-alive"].removed


def test_clean_of_some_runs_only_touches_theirs():
    client, things = engine()
    removed, kept = lease.clean(client, ["r-alive"])  # type: ignore[arg-type]
    assert removed == [] and len(kept) == 2
    assert not things["dead-smoke"].removed


def test_clean_all_removes_live_runs_objects_and_leases():
    client, things = engine()
    removed, kept = lease.clean(client, everything=True)  # type: ignore[arg-type]
    assert kept == []
    assert all(
        things[name].removed
        for name in (
            "alive-smoke",
            "alive-net",
            "hvgate-package-cache",
            "lease-alive",
            "cache-user",
        )
    )


def test_without_a_cache_user_the_cache_goes():
    client, things = engine()
    things["cache-user"].status = "exited"
    lease.clean(client)  # type: ignore[arg-type]
    assert things["hvgate-package-cache"].removed
