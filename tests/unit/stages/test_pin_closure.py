"""images/context/pin-closure, with apt-get, apt-cache and pin-source replaced by fakes: it pins
the source of each dependency apt cannot satisfy, round after round, and nothing else."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

from harness.core.paths import ROOT

SCRIPT = ROOT / "images" / "context" / "pin-closure"

# apt-get install -s: what it says while a dependency is missing from the pins so far.
FAKE_APT_GET = r"""#!/bin/sh
log="$(dirname "$0")/pins.log"
echo x >> "$(dirname "$0")/rounds.log"
if ! grep -q 'src:seabios' "$log" 2>/dev/null; then
    cat <<'OUT'
Some packages could not be installed.
The following packages have unmet dependencies:
 qemu-system-x86 : Depends: seabios (> 1.16.3-1~) but 1.16.2-1 is to be installed
                   Depends: qemu-system-data (> 1:10.0.2+ds~) but 1:7.2+dfsg-7 is to be installed
E: Unable to correct problems, you have held broken packages.
OUT
    exit 100
fi
if [ -n "${STUCK:-}" ] || ! grep -q 'src:libfoo' "$log"; then
    echo ' libvirt0 : Breaks: libfoo1 (<< 2.0) but 1.0 is to be installed'
    exit 100
fi
echo 'Inst qemu-system-x86 (1:10.0.2+ds-2 Backports [amd64])'
"""
FAKE_APT_CACHE = r"""#!/bin/sh
case $2 in
    qemu-system-data) echo 'Package: qemu-system-data'; echo 'Source: qemu (1:10.0.2+ds-2)' ;;
    libfoo1) echo 'Package: libfoo1'; echo 'Source: libfoo' ;;
    seabios) echo 'Package: seabios' ;;
esac
"""
FAKE_PIN_SOURCE = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/pins.log"
"""


def install(directory: Path) -> Path:
    directory.mkdir()
    shutil.copy(SCRIPT, directory / "pin-closure")
    for name, text in [
        ("apt-get", FAKE_APT_GET),
        ("apt-cache", FAKE_APT_CACHE),
        ("pin-source", FAKE_PIN_SOURCE),
    ]:
        (directory / name).write_text(text)
    for path in directory.iterdir():
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def run(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(directory / "pin-closure"), "trixie", "trixie-backports", "--", "qemu-system-x86"],
        env={**os.environ, "PATH": f"{directory}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_pins_each_needed_source_in_every_extra_suite_until_apt_can_install(tmp_path):
    bin_dir = install(tmp_path / "bin")
    done = run(bin_dir)
    assert done.returncode == 0, done.stderr
    assert (bin_dir / "pins.log").read_text().splitlines() == [
        "src:qemu trixie 990",
        "src:qemu trixie-backports 990",
        "src:seabios trixie 990",
        "src:seabios trixie-backports 990",
        "src:libfoo trixie 990",
        "src:libfoo trixie-backports 990",
    ]
    assert len((bin_dir / "rounds.log").read_text().splitlines()) == 3
    assert "src:seabios" in done.stdout


def test_stops_when_a_round_adds_nothing(tmp_path):
    """What pins cannot fix is left to the install that follows, which fails in apt's words."""
    bin_dir = install(tmp_path / "bin")
    done = run(bin_dir, STUCK="1")
    assert done.returncode == 0, done.stderr
    assert len((bin_dir / "rounds.log").read_text().splitlines()) == 3
    assert len((bin_dir / "pins.log").read_text().splitlines()) == 6


def test_installable_at_once_pins_nothing(tmp_path):
    bin_dir = install(tmp_path / "bin")
    (bin_dir / "pins.log").write_text("src:seabios src:libfoo\n")
    done = run(bin_dir)
    assert done.returncode == 0
    assert (bin_dir / "pins.log").read_text() == "src:seabios src:libfoo\n"
