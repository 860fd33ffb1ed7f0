"""harness.matrix.lockfile: the lock file read strictly and written stably, applied to the cells,
and compared with a new resolution."""

from __future__ import annotations

import pytest

from harness.core.apt_log import diagnose
from harness.core.errors import ConfigurationError
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

LOCKED = {"libvirt-daemon": "9.0.0-4+deb12u2", "qemu-system-x86": "1:7.2+dfsg-7+deb12u18+b3"}
LOCKED["python3-libvirt"] = "9.0.0-1"


def cell_with(cells_of, matrix_text, index, **changes_):
    text = matrix_text(lambda d: d["cells"][index].update(changes_))
    return cells_of(text)[index]


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
        (b"{", "not JSON"),
        (b"\xff\xfe", "not a lock file"),
        (b'{"format": 2}', "format"),
        (b'{"format": 1, "cells": {"x": {"fingerprint": "nothex"}}}', "cells.x.fingerprint"),
        (
            b'{"format": 1, "cells": {"x": {"fingerprint": "0123456789abcdef", "cells": '
            b'[{"id": "x", "packages": {"libvirt-daemon": "1.0; rm -rf /"}}]}}}',
            "cells.x.cells[0].packages.libvirt-daemon",
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


def test_a_vanished_locked_version_is_named_in_the_build_failure(cell_by_id, tmp_path):
    cell = cell_by_id["debian-12-release"]
    (locked,) = apply_lock([cell], Lock(cells={cell.id: entry_for(cell)}), tmp_path)
    log = ["E: Version '9.0.0-4+deb12u2' for 'libvirt-daemon' was not found"]
    status, reason = diagnose(log, locked)
    assert status == "unavailable"
    assert reason.startswith("locked version 9.0.0-4+deb12u2 of libvirt-daemon is no longer served")
    # Without the lock it is just a missing package.
    assert diagnose(log, cell)[1].startswith("package not in the source")
