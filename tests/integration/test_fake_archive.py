"""Version selectors, locking, pinning, `all` and vanished versions against a real apt archive of
our own: a directory with a Packages index served over HTTP on loopback, read by the real apt of
a Debian 12 container. The packages are empty; only their names, versions and sources matter."""

import hashlib
import json
import subprocess
import textwrap

import pytest

from tests.cli import invoke
from tests.integration.support import served

pytestmark = pytest.mark.integration

# Lower than Debian 12's own libvirt (9.0.0) and QEMU (7.2): only the pins make apt take them.
PACKAGES = [
    ("libvirt-daemon", "libvirt", "1.0-1", ""),
    ("libvirt-daemon", "libvirt", "2.0-1", ""),
    ("libvirt-daemon-driver-qemu", "libvirt", "1.0-1", "libvirt-daemon (= 1.0-1)"),
    ("libvirt-daemon-driver-qemu", "libvirt", "2.0-1", "libvirt-daemon (= 2.0-1)"),
    ("python3-libvirt", "libvirt-python", "1.5-1", ""),
    ("qemu-system-x86", "qemu", "1:1.0-1", ""),
    ("qemu-utils", "qemu", "1:1.0-1", ""),
]
VANISHING = "1.0-1"


def build_deb(pool, name, source, version, depends):
    root = pool / f"{name}_{version.replace(':', '%3a')}"
    (root / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nSource: {source}\nVersion: {version}\nArchitecture: amd64\n"
    control += f"Maintainer: hvgate tests <tests@localhost>\nDescription: empty {name} for tests\n"
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN" / "control").write_text(control)
    deb = pool / f"{name}_{version.split(':')[-1]}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return control, deb


def write_index(archive, debs):
    """dists/fake/main/binary-amd64/Packages and an unsigned Release that lists its hash."""
    stanzas = []
    for control, deb in debs:
        data = deb.read_bytes()
        stanzas.append(
            control
            + f"Filename: {deb.relative_to(archive)}\nSize: {len(data)}\n"
            + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    index = archive / "dists" / "fake" / "main" / "binary-amd64"
    index.mkdir(parents=True, exist_ok=True)
    packages = "\n".join(stanzas).encode()
    (index / "Packages").write_bytes(packages)
    release = textwrap.dedent(
        f"""\
        Suite: fake
        Codename: fake
        Architectures: amd64
        Components: main
        SHA256:
         {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages
        """
    )
    (archive / "dists" / "fake" / "Release").write_text(release)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    archive = tmp_path_factory.mktemp("archive")
    pool = archive / "pool"
    pool.mkdir()
    debs = [build_deb(pool, *p) for p in PACKAGES]
    write_index(archive, debs)
    with served(archive) as port:
        yield archive, debs, port


@pytest.fixture(scope="module")
def matrix(archive, tmp_path_factory):
    _, _, port = archive
    path = tmp_path_factory.mktemp("matrix") / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            bases:
              debian-12: {{distro: debian, release: "12", codename: bookworm}}
            sources:
              fake: {{suite: fake, uri: "http://127.0.0.1:{port}/", trusted: true}}
            cells:
              - {{base: debian-12, source: fake, id: fake-latest}}
              - {{base: debian-12, source: fake, id: fake-exact, libvirt: "{VANISHING}"}}
              - {{base: debian-12, source: fake, id: fake-all, libvirt: all}}
            scenarios: [boot]
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def resolved(engine, matrix, results_dir):
    done = invoke("matrix.resolve", "--matrix", str(matrix), results_dir=results_dir, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(matrix.with_suffix(".lock.json").read_text())


def locked(lock, cell_id):
    return {c["id"]: c["packages"] for c in lock["cells"][cell_id]["cells"]}


def test_latest_locks_the_newest_version_of_the_pinned_source(resolved):
    # Debian 12's own 9.0.0 is newer, but the cell's source is pinned above it.
    assert locked(resolved, "fake-latest") == {
        "fake-latest": {
            "libvirt-daemon": "2.0-1",
            "python3-libvirt": "1.5-1",
            "qemu-system-x86": "1:1.0-1",
        }
    }


def test_an_exact_selector_locks_that_version(resolved):
    assert locked(resolved, "fake-exact")["fake-exact"]["libvirt-daemon"] == VANISHING


def test_all_expands_to_one_cell_per_listed_version(resolved, matrix, results_dir):
    cells = locked(resolved, "fake-all")
    assert {k: v["libvirt-daemon"] for k, v in cells.items()} == {
        "fake-all-libvirt-2.0-1": "2.0-1",
        "fake-all-libvirt-1.0-1": "1.0-1",
    }
    done = invoke("matrix.list", "--matrix", str(matrix), "--json", results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    ids = [c["id"] for c in json.loads(done.stdout)]
    assert ids == ["fake-latest", "fake-exact", "fake-all-libvirt-2.0-1", "fake-all-libvirt-1.0-1"]


def test_check_on_an_unchanged_archive_reports_nothing(resolved, matrix, results_dir):
    done = invoke(
        "matrix.resolve", "--matrix", str(matrix), "--check", results_dir=results_dir, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "nothing moved" in done.stdout


def test_the_build_installs_exactly_the_locked_versions(resolved, matrix, results_dir, engine):
    done = invoke(
        "matrix.build",
        "--matrix",
        str(matrix),
        "--cells",
        "fake-latest",
        results_dir=results_dir,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("fake-latest")]
    image = engine.images.get(line.split()[-1])
    assert image.labels["io.hvgate.version.libvirt-daemon"] == "2.0-1"
    assert image.labels["io.hvgate.version.qemu-system-x86"] == "1:1.0-1"
    # The dependency of the same source follows the pin to the same version.
    output = engine.containers.run(
        image.id, ["dpkg-query", "-W", "libvirt-daemon-driver-qemu"], remove=True
    )
    assert output.decode().split() == ["libvirt-daemon-driver-qemu", "2.0-1"]


@pytest.fixture(scope="module")
def vanished(resolved, archive):
    """The archive stops serving one locked version, as archives do."""
    path, debs, _ = archive
    write_index(path, [(c, d) for c, d in debs if f"Version: {VANISHING}\n" not in c])
    return resolved


def test_check_reports_the_vanished_version(vanished, matrix, results_dir):
    done = invoke(
        "matrix.resolve", "--matrix", str(matrix), "--check", results_dir=results_dir, timeout=600
    )
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert "fake-exact: locked libvirt-daemon 1.0-1 is no longer served" in done.stdout
    assert "fake-all-libvirt-1.0-1: locked libvirt-daemon 1.0-1 is no longer served" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_vanished_locked_version_makes_its_cell_unavailable(vanished, matrix, results_dir):
    done = invoke(
        "matrix.run",
        "--matrix",
        str(matrix),
        "--cells",
        "fake-all-libvirt-1.0-1",
        results_dir=results_dir,
        timeout=1200,
    )
    assert "Traceback" not in done.stderr
    (cell,) = json.loads((results_dir / "latest.json").read_text())["cells"]
    assert cell["status"] == "unavailable", cell
    assert "locked version 1.0-1 of libvirt-daemon is no longer served" in cell["reason"]
