"""A Cloud Archive cell through a mirror: an archive of our own on loopback laid out like the
Cloud Archive (dists/noble-updates/epoxy/, its Release fields), holding Ubuntu 24.04's own
libvirt and QEMU packages repacked with dpkg-deb as ~cloud0 versions (unsigned, so the source
says `trusted: true`), is resolved, locked,
built, smoke-tested, judged and pinned like any source. The same pocket from the public host
stays unavailable here, with the reason."""

import hashlib
import io
import json
import re
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

from harness.core.model import Base
from tests.cli import invoke
from tests.integration.support import base_on_engine, served

pytestmark = pytest.mark.integration

SUFFIX = "~cloud0"
# Every binary of these sources that the cell installs is repacked, so their exact
# dependencies on each other hold at the new versions.
SOURCES = {"libvirt", "qemu", "libvirt-python"}
PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu python3-libvirt qemu-system-x86 qemu-utils"
# What the cell installs, from the release's own archive (the base image's sources: no host
# named here); the binaries of SOURCES unpacked there, by the release's own dpkg (its .debs are
# compressed with zstd, which an older host's dpkg cannot read).
DOWNLOAD = f"""
apt-get update -q
apt-get install -y -q --download-only --no-install-recommends {PACKAGES} >/dev/null
mkdir /unpacked
for deb in /var/cache/apt/archives/*.deb; do
    source=$(dpkg-deb -f "$deb" Source | cut -d' ' -f1)
    [ -n "$source" ] || source=$(dpkg-deb -f "$deb" Package)
    case " {" ".join(sorted(SOURCES))} " in
        *" $source "*) dpkg-deb -R "$deb" "/unpacked/$(basename "$deb" .deb)" ;;
    esac
done
"""
POCKET = Path("dists") / "noble-updates" / "epoxy"


def repack(trees: list[Path], pool: Path) -> list[tuple[str, Path]]:
    """The unpacked binaries of SOURCES with SUFFIX on their versions and on the versions they
    require of each other, built again: (control, .deb) each."""
    controls = {tree: (tree / "DEBIAN" / "control").read_text() for tree in trees}
    versions = {re.search(r"(?m)^Version: (.*)$", c).group(1) for c in controls.values()}
    relation = re.compile(r"\((=|>=|<=|>>|<<) (" + "|".join(map(re.escape, versions)) + r")\)")
    repacked = []
    for tree, control in controls.items():
        control = relation.sub(rf"(\1 \2{SUFFIX})", control)
        control = re.sub(r"(?m)^Version: (.*)$", rf"Version: \1{SUFFIX}", control)
        (tree / "DEBIAN" / "control").write_text(control)
        name, arch = tree.name.rsplit("_", 1)
        out = pool / f"{name}{SUFFIX}_{arch}.deb"
        subprocess.run(
            ["dpkg-deb", "-Zgzip", "-z1", "-b", str(tree), str(out)],
            check=True,
            capture_output=True,
        )
        repacked.append((control, out))
    return repacked


def write_pocket(archive: Path, debs: list[tuple[str, Path]]) -> None:
    """dists/noble-updates/epoxy/ with the Cloud Archive's Release fields, unsigned."""
    stanzas = []
    for control, deb in debs:
        data = deb.read_bytes()
        stanzas.append(
            control.rstrip("\n")
            + f"\nFilename: {deb.relative_to(archive)}\nSize: {len(data)}\n"
            + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    index = archive / POCKET / "main" / "binary-amd64"
    index.mkdir(parents=True)
    packages = "\n".join(stanzas).encode()
    (index / "Packages").write_bytes(packages)
    (archive / POCKET / "Release").write_text(
        "Origin: Canonical\nLabel: Ubuntu Cloud Archive\nSuite: noble-updates\n"
        "Codename: epoxy\nArchitectures: amd64\nComponents: main\n"
        "Description: Ubuntu Cloud Archive, a mirror of our own\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
    )


@pytest.fixture(scope="module")
def ubuntu_base(engine, tmp_path_factory):
    noble = Base(distro="ubuntu", release="24.04", codename="noble")
    return base_on_engine(engine, "ubuntu-24.04", noble, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def archive(engine, ubuntu_base, tmp_path_factory):
    container = engine.containers.run(
        ubuntu_base, ["sh", "-ec", DOWNLOAD], detach=True, labels={"io.hvgate.run": "test-uca"}
    )
    try:
        assert container.wait(timeout=1800)["StatusCode"] == 0, container.logs()[-3000:]
        stream, _ = container.get_archive("/unpacked")
        data = io.BytesIO(b"".join(stream))
    finally:
        container.remove(force=True)
    work = tmp_path_factory.mktemp("work")
    with tarfile.open(fileobj=data) as tar:
        tar.extractall(work, filter="fully_trusted")  # the release's own packages, as unpacked
    root = tmp_path_factory.mktemp("cloud-archive")
    pool = root / "ubuntu" / "pool" / "main"
    pool.mkdir(parents=True)
    trees = sorted(p for p in (work / "unpacked").iterdir() if p.is_dir())
    write_pocket(root / "ubuntu", repack(trees, pool))
    with served(root) as port:
        yield root, port


@pytest.fixture(scope="module")
def matrix(archive, tmp_path_factory):
    _, port = archive
    path = tmp_path_factory.mktemp("matrix") / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            bases:
              ubuntu-24.04: {{distro: ubuntu, release: "24.04", codename: noble}}
              debian-12: {{distro: debian, release: "12", codename: bookworm}}
            sources:
              cloud-archive-epoxy:
                cloud_archive: epoxy
                uri: "http://127.0.0.1:{port}/ubuntu"
                trusted: true
              public-epoxy: {{cloud_archive: epoxy}}
            cells:
              - {{base: ubuntu-24.04, source: cloud-archive-epoxy, id: mirror-epoxy}}
              - {{base: ubuntu-24.04, source: public-epoxy, id: public-epoxy}}
            scenarios: [boot]
            policy: {{unsafe_failure_rate: 0.5, confidence: 0.8, max_runs: 8}}
            accel: tcg
            guest: {{base: debian-12}}
            """
        )
    )
    return path


def test_the_archive_is_laid_out_like_the_cloud_archive(archive):
    root, _ = archive
    release = (root / "ubuntu" / POCKET / "Release").read_text()
    for field in ("Label: Ubuntu Cloud Archive", "Suite: noble-updates", "Codename: epoxy"):
        assert field in release.splitlines()
    debs = sorted(p.name for p in (root / "ubuntu" / "pool" / "main").glob("*.deb"))
    assert any(name.startswith("libvirt-daemon_") and SUFFIX in name for name in debs), debs


@pytest.fixture(scope="module")
def resolved(engine, matrix, results_dir):
    done = invoke("matrix.resolve", "--matrix", str(matrix), results_dir=results_dir, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done, json.loads(matrix.with_suffix(".lock.json").read_text())


def test_the_mirror_cell_locks_the_cloud_versions(resolved):
    done, lock = resolved
    assert "Traceback" not in done.stderr
    (cell,) = lock["cells"]["mirror-epoxy"]["cells"]
    for package in ("libvirt-daemon", "python3-libvirt", "qemu-system-x86"):
        assert cell["packages"][package].endswith(SUFFIX), cell


def test_the_public_pocket_stays_unavailable_with_the_reason(resolved, matrix, results_dir):
    done, lock = resolved
    reason = lock["cells"]["public-epoxy"].get("unavailable")
    assert reason, (lock["cells"]["public-epoxy"], done.stderr[-2000:])
    print(f"public-epoxy: unavailable: {reason}")


@pytest.fixture(scope="module")
def ran(resolved, matrix, results_dir):
    done = invoke("matrix.run", "--matrix", str(matrix), results_dir=results_dir, timeout=3600)
    assert "Traceback" not in done.stderr
    return done, json.loads((results_dir / "latest.json").read_text())


def test_the_mirror_cell_builds_and_passes_its_smoke_test(ran):
    done, data = ran
    cells = {cell["id"]: cell for cell in data["cells"]}
    mirror = cells["mirror-epoxy"]
    assert mirror["status"] == "safe", (mirror, done.stderr[-3000:])
    assert mirror["versions"]["libvirt-daemon"].endswith(SUFFIX)
    assert cells["public-epoxy"]["status"] == "unavailable"
    assert cells["public-epoxy"]["reason"], cells["public-epoxy"]


def test_the_mirror_cell_is_pinned(ran, matrix, results_dir, tmp_path):
    _, data = ran
    done = invoke(
        "matrix.pin", "--matrix", str(matrix), "--out", str(tmp_path), results_dir=results_dir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = "\n".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert data["cells"][0]["versions"]["libvirt-daemon"] in text
    assert "noble-updates/epoxy" in text
