"""harness.core.fingerprint: one cause, one fingerprint, whatever numbers and ids its message held."""

from __future__ import annotations

import pytest

from harness.core.fingerprint import fingerprint, headline, normalise


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # Counters, boot ids (hex or decimal) and durations.
        (
            "no heartbeat after #12 of boot 6af79a4a within 30 s",
            "no heartbeat after #3 of boot 1234abcd within 30 s",
        ),
        (
            "no heartbeat after #12 of boot 6af79a4a within 30 s",
            "no heartbeat after #0 of boot 243 within 120 s",
        ),
        # pids, exit codes, decimals, hex addresses, UUIDs.
        ("qemu (pid 4242) exited 1 after 1.5s", "qemu (pid 17) exited 137 after 12.25s"),
        ("bad address 0x7ffe12ab", "bad address 0x1"),
        (
            "domain 123e4567-e89b-12d3-a456-426614174000 not found",
            "domain 6fa459ea-ee8a-3ca4-894e-db77e160355e not found",
        ),
        # The variable parts of paths: temporary names, numbered files and directories.
        (
            "cannot open /tmp/tmpk3j_x9ab/overlay-3.qcow2: No such file",
            "cannot open /tmp/tmp0q1w2e3r/overlay-12.qcow2: No such file",
        ),
        (
            "/var/lib/libvirt/qemu/domain-3-hvgate/monitor.sock: refused",
            "/var/lib/libvirt/qemu/domain-41-hvgate/monitor.sock: refused",
        ),
        # Only the first line names the cause.
        (
            "the domain is paused, expected running\nmore detail 1",
            "the domain is paused, expected running",
        ),
        # A traceback by its exception, not by its same first line.
        (
            "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\nKeyError: 'vdb'",
            "Traceback (most recent call last):\n  File \"a.py\", line 9, in g\nKeyError: 'vdb'",
        ),
    ],
)
def test_one_cause_whatever_its_numbers(one, other):
    assert normalise(one) == normalise(other)
    assert fingerprint("reboot", "ScenarioFailure", one) == fingerprint(
        "reboot", "ScenarioFailure", other
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("the domain is paused, expected running", "the domain is shut off, expected running"),
        ("libvirt still lists vda after detach", "libvirt still lists vdb after detach"),
        (
            "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\nKeyError: 'vdb'",
            "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\nKeyError: 'vdc'",
        ),
        # Digits that belong to a word are part of it.
        ("unsupported format qcow2", "unsupported format qcow3"),
    ],
)
def test_different_causes_differ(one, other):
    assert fingerprint("reboot", "ScenarioFailure", one) != fingerprint(
        "reboot", "ScenarioFailure", other
    )


def test_the_scenario_and_the_class_are_part_of_it():
    message = "no heartbeat after #1 of boot 6af79a4a within 30 s"
    prints = {
        fingerprint("reboot", "ScenarioFailure", message),
        fingerprint("boot", "ScenarioFailure", message),
        fingerprint("reboot", "ScenarioTimeout", message),
    }
    assert len(prints) == 3


def test_the_fingerprint_is_short_stable_hex():
    # sha256 over scenario, class and normalised message, never hash(): the same in every
    # process and every run, so that fingerprints compare across runs and cells.
    assert fingerprint("boot", "libvirtError", "internal error: 42") == "24f14afd75f1"
    assert fingerprint("boot", "failure", None) == fingerprint("boot", "failure", "")


def test_normalised_text():
    assert normalise("no heartbeat after #12 of boot 6af79a4a within 30 s") == (
        "no heartbeat after #<n> of boot <n> within <n> s"
    )
    assert normalise("  x86_64   vda1 qcow2 \n second line") == "x86_64 vda1 qcow2"
    assert headline("\n\n  first \nsecond") == "first"
    assert headline(None) == headline("") == ""
