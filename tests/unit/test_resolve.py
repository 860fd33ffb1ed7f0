"""The resolve stage without Docker: reading apt's answers, the lock file, and applying it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness.core.errors import ConfigurationError
from harness.matrix.debs import repositories
from harness.matrix.lockfile import (
    Lock,
    LockedCell,
    LockEntry,
    apply_lock,
    changes,
    fingerprint,
    merged,
    read_lock,
    write_lock,
)
from harness.stages.render import render
from harness.stages.resolve import _variants, parse_madison, parse_simulation, uses_loopback

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


def cell_with(cells_of, matrix_text, index, **changes_):
    text = matrix_text(lambda d: d["cells"][index].update(changes_))
    return cells_of(text)[index]


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


LOCKED = {"libvirt-daemon": "9.0.0-4+deb12u2", "qemu-system-x86": "1:7.2+dfsg-7+deb12u18+b3"}
LOCKED["python3-libvirt"] = "9.0.0-1"


def entry_for(cell, packages=LOCKED, listed=None, cell_ids=None):
    return LockEntry(
        fingerprint=fingerprint(cell),
        listed=listed or {p: {"bookworm": [v]} for p, v in packages.items()},
        cells=[LockedCell(id=i, packages=packages) for i in (cell_ids or [cell.id])],
    )


def test_a_locked_cell_installs_and_pins_exactly_the_locked_versions(cell_by_id, tmp_path):
    cell = cell_by_id["debian-12-release"]
    (locked,) = apply_lock([cell], Lock(cells={cell.id: entry_for(cell)}), tmp_path)
    dockerfile = render(locked)
    assert "libvirt-daemon=9.0.0-4+deb12u2" in dockerfile
    assert "qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3" in dockerfile
    assert "python3-libvirt=9.0.0-1" in dockerfile
    assert "pin-version src:libvirt 9.0.0-4+deb12u2" in dockerfile
    assert "pin-version src:libvirt-python 9.0.0-1" in dockerfile
    assert "pin-version src:qemu 1:7.2+dfsg-7+deb12u18+b3" in dockerfile
    # The unlocked rendering differs, so a re-locked cell is rebuilt.
    assert render(cell) != dockerfile


def test_a_cell_changed_since_the_lock_is_not_locked(cell_by_id, cells_of, matrix_text, tmp_path):
    cell = cell_by_id["debian-12-release"]
    changed = cell_with(cells_of, matrix_text, 0, libvirt={"source": "backports"})
    # An entry under the changed cell's id, resolved for what the cell was before.
    lock = Lock(cells={changed.spec_id: entry_for(cell)})
    (result,) = apply_lock([changed], lock, tmp_path)
    assert result.locked == ()


def test_all_expands_from_the_lock_and_needs_it(cells_of, matrix_text, tmp_path):
    cell = cell_with(cells_of, matrix_text, 1, libvirt="all")
    with pytest.raises(ConfigurationError, match="matrix.resolve --cells debian-12-backports"):
        apply_lock([cell], Lock(), tmp_path / "matrix.lock.json")
    ids = ["debian-12-backports-libvirt-1", "debian-12-backports-libvirt-2"]
    entry = LockEntry(
        fingerprint=fingerprint(cell),
        cells=[
            LockedCell(id=ids[0], packages={**LOCKED, "libvirt-daemon": "1"}),
            LockedCell(id=ids[1], packages={**LOCKED, "libvirt-daemon": "2"}),
        ],
    )
    expanded = apply_lock([cell], Lock(cells={cell.id: entry}), tmp_path)
    assert [c.id for c in expanded] == ids
    assert [c.components[0].version for c in expanded] == ["1", "2"]
    assert all(c.spec_id == "debian-12-backports" for c in expanded)


def test_ids_that_collide_after_expansion_are_refused(cell_by_id, tmp_path):
    a, b = cell_by_id["debian-12-release"], cell_by_id["debian-12-backports"]
    lock = Lock(cells={a.id: entry_for(a), b.id: entry_for(b, cell_ids=[a.id])})
    with pytest.raises(ConfigurationError, match="debian-12-release occur twice"):
        apply_lock([a, b], lock, tmp_path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{", "not a lock file"),
        (b"\xff\xfe", "not a lock file"),
        (b'{"format": 2}', "format"),
        (b'{"format": 1, "cells": {"x": {"fingerprint": "nothex"}}}', "cells.x.fingerprint"),
        (
            b'{"format": 1, "cells": {"x": {"fingerprint": "0123456789abcdef", "cells": '
            b'[{"id": "x", "packages": {"libvirt-daemon": "1.0; rm -rf /"}}]}}}',
            "cells.x.cells.0.packages.libvirt-daemon",
        ),
        (
            b'{"format": 1, "cells": {"x": {"fingerprint": "0123456789abcdef", "cells": '
            b'[{"id": "x", "packages": {"libvirt-daemon": "{{ 7*7 }}"}}]}}}',
            "not a version",
        ),
    ],
)
def test_a_malformed_lock_file_is_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "matrix.lock.json"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError) as info:
        read_lock(path)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith(str(path)) and "\n" not in message
    assert expected in message


def test_lock_round_trips_and_is_stable(cell_by_id, tmp_path):
    cell = cell_by_id["debian-12-release"]
    lock = Lock(cells={cell.id: entry_for(cell)})
    path = tmp_path / "matrix.lock.json"
    write_lock(path, lock)
    text = path.read_text()
    assert read_lock(path) == lock
    write_lock(path, read_lock(path))
    assert path.read_text() == text


def test_check_reports_nothing_when_nothing_moved(cell_by_id):
    cell = cell_by_id["debian-12-release"]
    lock = Lock(cells={cell.id: entry_for(cell)})
    assert changes(lock, {cell.id: entry_for(cell)}) == []


def test_check_reports_new_versions_and_vanished_ones(cell_by_id):
    cell = cell_by_id["debian-12-release"]
    lock = Lock(cells={cell.id: entry_for(cell)})
    moved = {**LOCKED, "libvirt-daemon": "9.0.0-4+deb12u3"}
    now = entry_for(cell, packages=moved)
    assert changes(lock, {cell.id: now}) == [
        "debian-12-release: libvirt-daemon 9.0.0-4+deb12u2 -> 9.0.0-4+deb12u3",
        "debian-12-release: locked libvirt-daemon 9.0.0-4+deb12u2 is no longer served",
        "debian-12-release: bookworm now lists libvirt-daemon 9.0.0-4+deb12u3",
    ]


def test_check_reports_unreachable_sources_only_when_that_changes(cell_by_id):
    cell = cell_by_id["ubuntu-24.04-cloud-archive-epoxy"]
    down = LockEntry(fingerprint=fingerprint(cell), unavailable="source unreachable: x")
    assert changes(Lock(cells={cell.id: down}), {cell.id: down}) == []
    up = entry_for(cell)
    assert changes(Lock(cells={cell.id: down}), {cell.id: up})[0] == (
        f"{cell.id}: was source unreachable: x, now resolved"
    )


def test_merge_keeps_unselected_cells_and_drops_removed_ones(cell_by_id):
    a, b = cell_by_id["debian-12-release"], cell_by_id["debian-13-release"]
    old = Lock(cells={a.id: entry_for(a), b.id: entry_for(b), "gone": entry_for(a)})
    new = merged(
        old, {a.id: entry_for(a, packages={**LOCKED, "python3-libvirt": "9.0.0-2"})}, [a.id, b.id]
    )
    assert sorted(new.cells) == [a.id, b.id]
    assert new.cells[a.id].cells[0].packages["python3-libvirt"] == "9.0.0-2"


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


def test_a_vanished_locked_version_is_named_in_the_build_failure(cell_by_id, tmp_path):
    from harness.core.apt_log import diagnose

    cell = cell_by_id["debian-12-release"]
    (locked,) = apply_lock([cell], Lock(cells={cell.id: entry_for(cell)}), tmp_path)
    log = ["E: Version '9.0.0-4+deb12u2' for 'libvirt-daemon' was not found"]
    status, reason = diagnose(log, locked)
    assert status == "unavailable"
    assert reason.startswith("locked version 9.0.0-4+deb12u2 of libvirt-daemon is no longer served")
    # Without the lock it is just a missing package.
    assert diagnose(log, cell)[1].startswith("package not in the source")


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
