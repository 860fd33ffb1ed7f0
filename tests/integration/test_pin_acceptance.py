"""The committed run's pins, installed as a gate would: for each base of the default matrix with a
pinned cell, one fresh container of the base with the cell's sources. The pins change nothing a
dist-upgrade would do, make apt pick exactly the tested versions of devstack's package set, and
their check passes; with a pinned version gone from apt's sources (an archive of our own) the
check fails naming it. The devstack plugin is run as devstack runs plugins."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from harness.core.paths import CONTEXT, ROOT
from harness.matrix.load import load
from harness.tools.pin import pin, source_version
from tests.integration.support import base_on_engine, tar_of

pytestmark = pytest.mark.integration

DEVSTACK_SET = "libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils python3-libvirt"
MATRIX, _ = load(str(ROOT / "matrix.yaml"))
COMMITTED = json.loads((ROOT / "results" / "latest.json").read_text())
# The bases of the default matrix with a safe cell in the committed run: each must have pins.
SAFE_BASES = sorted(
    name
    for name, b in MATRIX.bases.items()
    if any(
        (c["distro"], c["release"], c["status"]) == (b.distro, b.release, "safe")
        for c in COMMITTED["cells"]
    )
)


@pytest.fixture(scope="module")
def pins(tmp_path_factory):
    """The committed run's pin files, by base: {base name: [pin JSON, ...]}."""
    out = tmp_path_factory.mktemp("pins")
    plan, _ = pin(None, None, str(out), str(ROOT / "matrix.yaml"), ROOT / "results")
    by_base: dict[str, list[dict]] = {}
    for p in plan.pins:
        document = json.loads((out / f"{p.name}.json").read_text())
        (base,) = [
            name
            for name, b in MATRIX.bases.items()
            if (b.distro, b.release) == (p.cell["distro"], p.cell["release"])
        ]
        by_base.setdefault(base, []).append(document)
    return out, by_base


def sh(box, script: str) -> tuple[int, str]:
    code, output = box.exec_run(
        ["bash", "-c", script], environment={"DEBIAN_FRONTEND": "noninteractive"}, demux=False
    )
    return code, output.decode(errors="replace")


def fresh(engine, tmp_path_factory, base: str):
    return engine.containers.run(
        base_on_engine(engine, base, MATRIX.bases[base], tmp_path_factory.mktemp("logs")),
        ["sleep", "3600"],
        detach=True,
        init=True,
        labels={"io.hvgate.test": f"pin-acceptance-{uuid.uuid4().hex[:8]}"},
    )


def installs(output: str) -> dict[str, str]:
    """Package -> version of each `Inst` line of apt-get -s."""
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ", output, re.MULTILINE)
    }


# Every Packages index apt has, less one package version, as a flat archive of our own.
ARCHIVE = r"""#!/bin/sh
set -e
mkdir -p /srv/hvgate-archive
for f in /var/lib/apt/lists/*_Packages*; do
    case $f in *.gz) zcat "$f" ;; *.lz4) lz4cat "$f" ;; *) cat "$f" ;; esac
    echo
done | awk -v p="$1" -v v="$2" 'BEGIN {RS = ""; ORS = "\n\n"}
    !(index("\n" $0 "\n", "\nPackage: " p "\n") && index("\n" $0 "\n", "\nVersion: " v "\n"))' \
    > /srv/hvgate-archive/Packages
mkdir -p /root/sources-kept
mv /etc/apt/sources.list.d/* /root/sources-kept/ 2>/dev/null || true
[ ! -f /etc/apt/sources.list ] || mv /etc/apt/sources.list /root/sources-kept/sources.list.orig
echo 'deb [trusted=yes] file:/srv/hvgate-archive ./' > /etc/apt/sources.list
apt-get update -q
"""


def test_every_base_with_a_safe_cell_has_pins(pins):
    assert SAFE_BASES and sorted(pins[1]) == SAFE_BASES


@pytest.mark.parametrize("base", SAFE_BASES)
def test_pins_of_each_base_install_exactly_what_was_tested(engine, tmp_path_factory, pins, base):
    out, by_base = pins
    box = fresh(engine, tmp_path_factory, base)
    try:
        files = {
            "opt/hvgate/bin/add-apt-source": ((CONTEXT / "add-apt-source").read_bytes(), 0o755),
            "opt/hvgate/bin/archive-without": (ARCHIVE.encode(), 0o755),
        }
        for document in by_base[base]:
            for suffix in (".pref", ".check"):
                name = document["name"] + suffix
                files[f"srv/pins/{name}"] = ((out / name).read_bytes(), 0o644)
        box.put_archive("/", tar_of(files))
        code, output = sh(box, "apt-get update -q")
        assert code == 0, output[-3000:]
        for document in by_base[base]:
            check_one(box, document)
        check_gone(box, by_base[base][0])
    finally:
        box.remove(force=True)


def check_one(box, document: dict) -> None:
    name = document["name"]
    # The cell's suites beyond the release's own, from the base's mirror, as the image build does.
    for suite in document["suites"]:
        code, output = sh(
            box,
            f"/opt/hvgate/bin/add-apt-source {document['source']} {suite} main '' && apt-get update -q",
        )
        assert code == 0, output[-3000:]
    code, before = sh(box, "apt-get -s -q dist-upgrade")
    assert code == 0, before[-3000:]
    target = f"/etc/apt/preferences.d/00-hvgate-{name}.pref"
    code, output = sh(box, f"cp /srv/pins/{name}.pref {target}")
    assert code == 0, output
    code, after = sh(box, "apt-get -s -q dist-upgrade")
    assert code == 0, after[-3000:]
    # On a current base a dist-upgrade does nothing, and with the pins still nothing: the images
    # take from an extra suite only what their packages need, none of the base's own packages.
    assert installs(before) == {}, (name, before[-3000:])
    assert installs(after) == {}, (name, after[-3000:])
    code, output = sh(box, f"apt-get -s -q install --no-install-recommends {DEVSTACK_SET}")
    assert code == 0, (name, output[-3000:])
    chosen = installs(output)
    for package, version in document["packages"].items():
        if package in chosen:
            assert chosen[package] == version, (name, package, output[-3000:])
    for package in ("libvirt-daemon", "qemu-system-x86", "python3-libvirt"):
        assert chosen[package] == document["packages"][package], (name, package)
    # What devstack installs beyond the image's packages follows the tested source versions.
    for package, source in (("libvirt-clients", "libvirt"), ("libvirt-daemon-system", "libvirt")):
        assert source_version(chosen[package]) == document["source_packages"][source], name
    code, output = sh(box, f"sh /srv/pins/{name}.check")
    assert code == 0, (name, output)
    assert f"hvgate-check: {name}: " in output
    sh(box, f"rm -f {target}")


def check_gone(box, document: dict) -> None:
    """One pinned version missing from every source apt has: the check names it."""
    name, gone = document["name"], "qemu-system-x86"
    version = document["packages"][gone]
    code, output = sh(box, f"cp /srv/pins/{name}.pref /etc/apt/preferences.d/00-hvgate-{name}.pref")
    assert code == 0, output
    code, output = sh(box, f"/opt/hvgate/bin/archive-without {gone} '{version}'")
    assert code == 0, output[-3000:]
    code, output = sh(box, f"apt-cache madison {gone} qemu-utils")
    served = [line.split("|")[1].strip() for line in output.splitlines() if line.startswith(gone)]
    # The archive serves the rest (qemu-utils of the same build), not that version.
    assert version not in served and "hvgate-archive ./ Packages" in output, output
    code, output = sh(box, f"sh /srv/pins/{name}.check")
    assert code == 1, output
    # The rest still holds: only what is missing is named.
    assert output.strip().splitlines() == [
        f"hvgate-check: not served: {gone} {version} is in none of apt's sources"
    ], output


# --- the devstack plugin, run as stack.sh, unstack.sh and clean.sh run it ----------------------

# devstack's functions the plugin calls, stubbed; the phases in stack.sh's order, with what
# devstack's install_libvirt does between pre-install and install (here: one small package of the
# set, really installed, and on Debian 12 devstack's own backports pin).
STACK = r"""
set -o errexit -o nounset
TOP_DIR=/opt/devstack
function die { local line=$1; shift; echo "die at $line: $*" >&2; exit 1; }
function define_plugin { :; }
function sudo { "$@"; }
export -f sudo
HVGATE_PINS=/srv/pins
{localrc}
source /opt/hvgate/devstack/settings
source /opt/hvgate/devstack/plugin.sh stack pre-install
if grep -q bookworm /etc/os-release; then
    sed -n 's/^deb \([^ ]*\) bookworm main$/deb \1 bookworm-backports main/p' /etc/apt/sources.list \
        > /etc/apt/sources.list.d/bookworm-backports.list
    printf 'Package: qemu* libvirt* ovmf* seabios* opensbi\nPin: release n=bookworm-backports\nPin-Priority: 990\n' \
        > /etc/apt/preferences.d/99-nova-backports
fi
apt-get update -q >/dev/null
{install}
source /opt/hvgate/devstack/plugin.sh stack install
for phase in post-config extra test-config; do
    source /opt/hvgate/devstack/plugin.sh stack $phase
done
source /opt/hvgate/devstack/plugin.sh unstack
echo "pins: $(ls /etc/apt/preferences.d/ | grep hvgate)"
dpkg-query -W -f '${Version}\n' qemu-utils
source /opt/hvgate/devstack/plugin.sh clean
echo "after clean: $(ls /etc/apt/preferences.d/ | grep -c hvgate)"
"""


INSTALL = "apt-get install -y -q --no-install-recommends qemu-utils >/dev/null"
# The newest version any source has, whatever the pins say.
NEWEST = (
    "apt-get install -y -q --no-install-recommends --allow-downgrades qemu-utils=$(apt-cache "
    "madison qemu-utils | awk -F'|' 'NR == 1 {gsub(/ /, \"\", $2); print $2}') >/dev/null"
)


def devstack(
    box, out: Path, localrc: str = "", tamper: str = "", install: str = INSTALL
) -> tuple[int, str]:
    files = {}
    for path in (ROOT / "devstack").iterdir():
        files[f"opt/hvgate/devstack/{path.name}"] = (path.read_bytes(), 0o644)
    for path in out.iterdir():
        data = path.read_bytes()
        if tamper and path.suffix == ".pref":
            data += tamper.encode()
        files[f"srv/pins/{path.name}"] = (data, 0o644)
    box.put_archive("/", tar_of(files))
    return sh(box, STACK.replace("{localrc}", localrc).replace("{install}", install))


@pytest.fixture(scope="module")
def ubuntu(engine, tmp_path_factory):
    box = fresh(engine, tmp_path_factory, "ubuntu-24.04")
    yield box
    box.remove(force=True)


def test_the_devstack_plugin_installs_and_verifies_the_pins(ubuntu, pins):
    out, by_base = pins
    (document,) = [d for d in by_base["ubuntu-24.04"] if d["name"] == "ubuntu-24.04-updates"]
    code, output = devstack(ubuntu, out)
    assert code == 0, output[-3000:]
    assert "hvgate: installed the ubuntu-24.04-updates pins" in output
    assert "hvgate-check: ubuntu-24.04-updates: " in output
    assert "pins: 00-hvgate-ubuntu-24.04-updates.pref" in output
    assert document["packages"]["qemu-utils"] in output.splitlines()
    assert "after clean: 0" in output


def test_the_devstack_plugin_fails_the_stack_on_a_mismatch(ubuntu, pins):
    out, _ = pins
    # devstack (here: a job) installs qemu-utils at another version than the pins name.
    code, output = devstack(ubuntu, out, "HVGATE_PINS_POCKET=release", install=NEWEST)
    assert code == 1, output[-3000:]
    assert re.search(r"hvgate-check: mismatch: qemu-utils is installed at \S+, pinned ", output)
    assert "die at " in output and "are not the ones the ubuntu-24.04-release pins name" in output


def test_the_devstack_plugin_refuses_pins_that_raise_a_suite(ubuntu, pins):
    out, _ = pins
    tamper = "\nPackage: *\nPin: release a=noble-proposed\nPin-Priority: 1001\n"
    code, output = devstack(ubuntu, out, tamper=tamper)
    assert code == 1 and "has a line these pins never have: " in output, output[-3000:]
    assert "Package: *" in output


def test_on_debian_12_the_plugin_keeps_devstacks_backports_pin(engine, tmp_path_factory, pins):
    out, _ = pins
    box = fresh(engine, tmp_path_factory, "debian-12")
    try:
        # Release pins would hold QEMU below devstack's backports pin: refused unless asked for.
        code, output = devstack(box, out, "HVGATE_PINS_POCKET=release")
        assert code == 1 and "its 990 pin" in output, output[-3000:]
        code, output = devstack(
            box, out, "HVGATE_PINS_POCKET=release\nHVGATE_PINS_OVER_DEVSTACK_BACKPORTS=True"
        )
        assert code == 0, output[-3000:]
        assert "hvgate-check: debian-12-release: " in output
        # The default there: the backports pins, beside devstack's own backports pin.
        code, output = devstack(box, out)
        assert code == 0, output[-3000:]
        assert "hvgate-check: debian-12-backports: " in output, output[-3000:]
    finally:
        box.remove(force=True)
