"""A directory of .debs as a source: copied into the image as a repository of its own, pinned
as its own suite, refused when it is missing or empty."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.matrix.debs import repositories
from harness.stages.render import render


def private_matrix(matrix_text, directory):
    def private(data):
        data["sources"]["private"] = {"debs": str(directory)}
        data["cells"][0]["source"] = "private"

    return matrix_text(private)


def test_a_directory_of_debs_is_copied_in_and_pinned_as_its_own_suite(
    matrix_text, cells_of, tmp_path
):
    if shutil.which("dpkg-deb") is None:
        pytest.fail("this test needs dpkg-deb (Debian's dpkg package)")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: libvirt-daemon\nSource: libvirt\nVersion: 99.0-1\nArchitecture: amd64\n"
        "Maintainer: t <t@localhost>\nDescription: test\n"
    )
    (tmp_path / "debs").mkdir()
    subprocess.run(
        [
            "dpkg-deb",
            "--build",
            str(root),
            str(tmp_path / "debs" / "libvirt-daemon_99.0-1_amd64.deb"),
        ],
        check=True,
        capture_output=True,
    )
    (cell, *_) = cells_of(private_matrix(matrix_text, tmp_path / "debs"))
    dockerfile = render(cell)
    assert "COPY debs/private/ /opt/hvgate/debs/private/" in dockerfile
    assert "add-apt-source private private main file:///opt/hvgate/debs/private trusted=yes" in (
        dockerfile
    )
    assert "pin-source src:libvirt private 990" in dockerfile

    files = {path: content for path, content, _ in repositories(cell.sources)}
    packages = files["debs/private/dists/private/main/binary-amd64/Packages"].decode()
    assert "Package: libvirt-daemon\n" in packages and "Version: 99.0-1\n" in packages
    assert "Filename: pool/libvirt-daemon_99.0-1_amd64.deb\n" in packages
    assert "Suite: private\n" in files["debs/private/dists/private/Release"].decode()


def test_a_missing_or_empty_debs_directory_is_refused(matrix_text, problems_of, tmp_path):
    (problem,) = problems_of(private_matrix(matrix_text, tmp_path / "nowhere"))
    assert "sources.private.debs" in problem and "is not a directory" in problem
    (problem,) = problems_of(private_matrix(matrix_text, tmp_path))
    assert "holds no .deb files" in problem
