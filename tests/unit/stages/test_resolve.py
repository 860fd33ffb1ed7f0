"""The resolve stage without Docker: reading apt's answers into the variants of a cell."""

from __future__ import annotations

import json

import pytest

from harness.stages.render import render
from harness.stages.resolve import _variants, parse_madison, parse_simulation, uses_loopback
from tests.unit.matrix.test_lockfile import cell_with

MADISON = """\
libvirt-daemon | 11.3.0-2~bpo12+1 | http://mirror.invalid/debian bookworm-backports/main amd64 Packages
libvirt-daemon | 9.0.0-4+deb12u2 | http://mirror.invalid/debian bookworm/main amd64 Packages
qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://mirror.invalid/debian bookworm/main amd64 Packages
qemu-system-x86 | 1:7.2+dfsg-7+deb12u15 | http://mirror.invalid/debian-security bookworm-security/main amd64 Packages
python3-libvirt | 9.0.0-1 | http://mirror.invalid/debian bookworm/main amd64 Packages
python3-libvirt | 11.3.0-1~bpo12+1 | http://127.0.0.1:8000/ ./ Packages
W: some warning apt prints
""".splitlines()

SIMULATION = """\
NOTE: This is only a simulation!
Inst libvirt0 (9.0.0-4+deb12u2 Debian:12.12/stable [amd64])
Inst libvirt-daemon (9.0.0-4+deb12u2 Debian:12.12/stable [amd64])
Inst qemu-system-x86 [1:7.2+dfsg-7] (1:7.2+dfsg-7+deb12u18+b3 Debian:12.12/stable [amd64])
Inst python3-libvirt (9.0.0-1 Debian:12.12/stable [amd64])
Conf libvirt0 (9.0.0-4+deb12u2 Debian:12.12/stable [amd64])
""".splitlines()


def test_madison_lines_are_read_by_package_and_suite():
    listed = parse_madison(MADISON)
    assert listed["libvirt-daemon"] == {
        "bookworm-backports": ["11.3.0-2~bpo12+1"],
        "bookworm": ["9.0.0-4+deb12u2"],
    }
    assert listed["qemu-system-x86"]["bookworm-security"] == ["1:7.2+dfsg-7+deb12u15"]
    assert listed["python3-libvirt"]["."] == ["11.3.0-1~bpo12+1"]  # a flat repository
    assert "W: some warning apt prints" not in json.dumps(listed)
    # No host name of an archive is kept: only suites and versions.
    assert "mirror.invalid" not in json.dumps(listed)


def test_cloud_archive_suite_keeps_its_pocket():
    line = "libvirt-daemon | 10.0.0-2ubuntu8~cloud0 | http://x.invalid/ubuntu jammy-updates/caracal/main amd64 Packages"
    assert parse_madison([line]) == {
        "libvirt-daemon": {"jammy-updates/caracal": ["10.0.0-2ubuntu8~cloud0"]}
    }


def test_simulation_gives_the_version_apt_would_install():
    chosen = parse_simulation(SIMULATION)
    assert chosen["libvirt-daemon"] == "9.0.0-4+deb12u2"
    assert chosen["qemu-system-x86"] == "1:7.2+dfsg-7+deb12u18+b3"  # an upgrade line too
    assert "Conf" not in "".join(chosen)


def test_all_selector_gives_one_variant_per_listed_version(cells_of, matrix_text):
    listed = {
        "libvirt-daemon": {"bookworm-backports": ["11.3.0-2~bpo12+1", "10.0.0-4~bpo12+1"]},
        "qemu-system-x86": {"bookworm": ["1:7.2+dfsg-7"]},
    }
    cell = cell_with(cells_of, matrix_text, 1, libvirt="all")
    variants = _variants(cell, listed)
    assert [v.id for v in variants] == [
        "debian-12-backports-libvirt-11.3.0-2_bpo12_1",
        "debian-12-backports-libvirt-10.0.0-4_bpo12_1",
    ]
    assert [v.components[0].version for v in variants] == ["11.3.0-2~bpo12+1", "10.0.0-4~bpo12+1"]
    assert all(v.components[1].version == "latest" for v in variants)


def test_all_selector_with_nothing_listed_says_so(cells_of, matrix_text):
    cell = cell_with(cells_of, matrix_text, 1, libvirt="all")
    with pytest.raises(ValueError, match="backports lists no version of libvirt-daemon"):
        _variants(cell, {"libvirt-daemon": {"bookworm": ["9.0.0-4"]}})


def test_exact_selector_must_be_served(cells_of, matrix_text):
    cell = cell_with(cells_of, matrix_text, 0, libvirt="9.0.0-3")
    with pytest.raises(ValueError, match="libvirt-daemon 9.0.0-3 is not served"):
        _variants(cell, {"libvirt-daemon": {"bookworm": ["9.0.0-4"]}})
    assert len(_variants(cell, {"libvirt-daemon": {"bookworm": ["9.0.0-3"]}})) == 1


def test_loopback_sources_need_the_host_network(cells_of, matrix_text):
    def local(data):
        data["sources"]["local"] = {
            "suite": "fake",
            "uri": "http://127.0.0.1:8000/",
            "trusted": True,
        }
        data["cells"][0]["source"] = "local"

    (cell, *_) = cells_of(matrix_text(local))
    assert uses_loopback(cell)
    assert "add-apt-source local fake main http://127.0.0.1:8000/ trusted=yes" in render(cell)
    assert not uses_loopback(cells_of(matrix_text())[0])
