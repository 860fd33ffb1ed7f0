"""Bisection over a set of builds where one step breaks: three directories of Debian 12
backports .debs, the second and third with a libvirt-daemon-driver-qemu repacked to carry a QEMU
hook that fails every guest start (a fault of our own). `matrix.bisect` must name the second."""

import shutil
import subprocess
import textwrap

import pytest

from tests.cli import invoke

pytestmark = pytest.mark.integration

HOOK = """#!/bin/sh
# hvgate test fault: every guest start fails, as a broken libvirt build would.
[ "$2" = prepare ] && [ "$3" = begin ] && exit 1
exit 0
"""


def repack_with_fault(deb, out_dir):
    """The same package with the failing hook added, under a version of its own."""
    work = out_dir / "repack"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    hooks = work / "etc" / "libvirt" / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "qemu").write_text(HOOK)
    (hooks / "qemu").chmod(0o755)
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(work), str(deb)], check=True)
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def builds(backports_debs, tmp_path_factory):
    directories = []
    for index in range(3):
        directory = tmp_path_factory.mktemp(f"build{index + 1}")
        for deb in backports_debs.glob("*.deb"):
            shutil.copy(deb, directory / deb.name)
        if index >= 1:
            (driver,) = directory.glob("libvirt-daemon-driver-qemu_*.deb")
            repack_with_fault(driver, directory)
        directories.append(directory)
    return directories


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    path = tmp_path_factory.mktemp("matrix") / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            bases:
              debian-12: {distro: debian, release: "12", codename: bookworm}
            sources:
              release: {suite: "{codename}"}
            cells:
              - {base: debian-12}
            scenarios: [boot]
            # Tells "works" from "broken" only, and quickly: a build that mostly boots is safe
            # (one stray failure under load does not make it flaky; two do), one that never does,
            # broken.
            policy: {safe_failure_rate: 0.05, unsafe_failure_rate: 0.5, confidence: 0.99}
            accel: tcg
            """
        )
    )
    return path


def test_bisect_finds_the_first_broken_build(engine, builds, matrix, results_dir):
    done = invoke(
        "matrix.bisect",
        "--matrix",
        str(matrix),
        "--scenario",
        "boot",
        "--base",
        "debian-12",
        "--builds",
        ",".join(str(b) for b in builds),
        results_dir=results_dir,
        timeout=3000,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == f"first failing: {builds[1]} (last safe: {builds[0]})", done.stdout
    # The evidence of each step: both ends, then the middle; runs and failures of each.
    steps = {line.split(":")[0]: line for line in lines[:-1]}
    assert steps[str(builds[0])].startswith(f"{builds[0]}: safe (")
    assert steps[str(builds[2])].startswith(f"{builds[2]}: broken (")
    assert steps[str(builds[1])].startswith(f"{builds[1]}: broken (")
    assert (results_dir / "bisect").is_dir()
