"""The shared package cache on the real engine: builds fetch through it and the .deb lands in
its volume; a cache that cannot start leaves builds downloading directly."""

from __future__ import annotations

import secrets
import time

import pytest

from harness.engine import client as eng
from harness.engine import package_cache as cache
from harness.engine.image_build import docker_build

pytestmark = pytest.mark.integration

BASE = "hvgate/base:debian-12"


def build_hello(engine, tmp_path, tag, serving):
    """Downloads a small package no cell installs (nothing is installed); the token makes
    every build miss the layer cache."""
    recipe = (
        f"FROM {BASE}\nRUN echo {secrets.token_hex(4)} && apt-get update -q && cd /tmp"
        " && apt-get download -q hello && ls hello_*.deb\n"
    )
    context = eng.tar_of([("Dockerfile", recipe.encode(), 0o644)])
    try:
        return docker_build(
            engine,
            context,
            tag,
            tmp_path / f"{tag.split(':')[1]}.log",
            "test",
            600,
            buildargs=cache.build_args(serving),
        )
    finally:
        for image in engine.images.list(name=tag.split(":")[0]):
            engine.images.remove(image.id, force=True)


def test_builds_download_through_the_cache(engine, debian12_base, tmp_path):
    with cache.serving(engine, BASE, tmp_path) as serving:
        assert serving is not None
        args = cache.build_args(serving)
        assert args.get("http_proxy", "").startswith("http://"), "the cache did not start"
        ok, lines = build_hello(engine, tmp_path, "hvgate/test-package-cache:first", serving)
        assert ok, lines[-5:]
        container = engine.containers.get(cache.NAME)
        found = container.exec_run(["find", cache.MOUNT, "-name", "hello_*.deb"]).output
        assert b"hello_" in found, "the .deb is not in the cache's volume"
    volume = engine.volumes.get(cache.NAME)
    assert volume.attrs["Labels"].get(cache.LABEL_CACHE) == "packages"


def test_a_cache_that_cannot_start_falls_back_to_direct_downloads(
    engine, debian12_base, tmp_path, capsys
):
    started = time.monotonic()
    with cache.serving(engine, "hvgate/base:no-such-base", tmp_path) as serving:
        assert cache.build_args(serving) == {}
        ok, lines = build_hello(engine, tmp_path, "hvgate/test-package-cache:direct", serving)
    assert ok, lines[-5:]
    assert "warning: not used, builds download directly" in capsys.readouterr().err
    assert time.monotonic() - started < 600
