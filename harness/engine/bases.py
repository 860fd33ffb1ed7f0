"""Base images without a registry: a local image, else a pull, else mmdebstrap + `docker import`."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors

from ..core.errors import EngineError
from ..core.model import Base
from ..core.paths import HOST_STATE
from ..core.progress import say
from .client import LABEL_RUN

HOST_UBUNTU_KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
FETCHED_KEYRING = HOST_STATE / "ubuntu-archive-keyring.gpg"
DISTRO_INFO = Path("/usr/share/distro-info")
# A bootstrap takes 15 to 60 s; one stalled on an archive that stopped answering must not hang
# the run.
BOOTSTRAP_TIMEOUT = 1800.0


def base_image_tag(base_name: str) -> str:
    return f"hvgate/base:{base_name}"


def bootstrap_knows(base: Base) -> bool:
    """Whether mmdebstrap can pick this release's mirror by itself (it reads distro-info-data)."""
    if base.distro == "debian":
        return True
    try:
        with open(DISTRO_INFO / "ubuntu.csv") as handle:
            return any(row.get("series") == base.codename for row in csv.DictReader(handle))
    except OSError:
        return False


def bootstrap_command(
    base: Base, target: str, keyring: Path | None = None, mirror: str | None = None
) -> list[str]:
    # Ubuntu marks apt and its keyring "important", not "required": minbase would leave them out.
    command = ["mmdebstrap", "--variant=minbase", "--mode=auto", "--include=apt"]
    if keyring:
        command += [f"--keyring={keyring}", "--include=ubuntu-keyring"]
    if base.components:
        command.append(f"--components={','.join(base.components)}")
    if not base.check_valid_until:
        # Only where matrix.yaml says this release's Release file may be expired (archive snapshots),
        # and per source: the image keeps the option on its own source lines, not as a global default.
        command += [
            '--aptopt=Acquire::Check-Valid-Until "false"',
            "--customize-hook=sed -i 's/^deb /deb [check-valid-until=no] /' \"$1/etc/apt/sources.list\"",
            '--customize-hook=rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap"',
        ]
    command += [base.codename, target]
    if mirror or base.mirror:
        command.append(mirror or base.mirror or "")
    return command


def run_bootstrap(command: list[str], log_path: Path, name: str) -> int:
    """Runs mmdebstrap into its log; on timeout or interrupt its whole process group (apt,
    its downloads) is killed, so nothing goes on writing after the run has ended."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=BOOTSTRAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise EngineError(
                f"base {name}: mmdebstrap did not finish within {BOOTSTRAP_TIMEOUT:.0f} s "
                f"(log: {log_path})"
            ) from None
        except BaseException:
            _kill_group(process)
            raise


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Bases:
    """Obtains each base image once per run, the cheapest way that works."""

    def __init__(self, engine: docker.DockerClient, bases: dict[str, Base], log_dir: Path):
        self.engine = engine
        self.bases = bases
        self.log_dir = log_dir
        self.ids: dict[str, str] = {}

    def ensure(self, name: str) -> str:
        """The image id of hvgate/base:NAME."""
        if name in self.ids:
            return self.ids[name]
        base = self.bases[name]
        tag = base_image_tag(name)
        try:
            self.ids[name] = str(self.engine.images.get(tag).id)
            return self.ids[name]
        except docker.errors.ImageNotFound:
            pass
        try:
            say(name, f"pulling {base.registry_image}")
            image = self.engine.images.pull(base.registry_image)
            image.tag(tag)
            self.ids[name] = str(image.id)
            return self.ids[name]
        except docker.errors.APIError as exc:
            reason = (getattr(exc, "explanation", None) or str(exc)).splitlines()[0][:120]
            say(name, f"no registry image ({reason}); bootstrapping")
        self.ids[name] = self.bootstrap(name, base)
        return self.ids[name]

    def bootstrap(self, name: str, base: Base) -> str:
        if not shutil.which("mmdebstrap"):
            raise EngineError(
                f"base {name}: no local image, no registry, and mmdebstrap is not installed "
                "(apt-get install mmdebstrap)"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"base-{name}.log"
        keyring = self.ubuntu_keyring() if base.distro == "ubuntu" else None
        mirror = (
            None if base.mirror or bootstrap_knows(base) else self.mirror_of_sibling(name, base)
        )
        with tempfile.TemporaryDirectory(prefix="hvgate-base-") as tmp:
            tarball = str(Path(tmp) / f"{name}.tar")
            command = bootstrap_command(base, tarball, keyring, mirror)
            say(name, f"mmdebstrap {base.codename} (log: {log_path})")
            returncode = run_bootstrap(command, log_path, name)
            if returncode != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                hint = ""
                if any("expired" in line or "Valid-Until" in line for line in tail):
                    hint = f" (the archive's Release file has expired: set check_valid_until: false on base {name})"
                raise EngineError(f"base {name}: mmdebstrap failed{hint}: {' | '.join(tail)}")
            say(name, "docker import")
            self.engine.api.import_image_from_file(
                tarball, repository="hvgate/base", tag=name, changes=['CMD ["/bin/bash"]']
            )
        return str(self.engine.images.get(base_image_tag(name)).id)

    def mirror_of_sibling(self, name: str, base: Base) -> str:
        """A release too new for the host's distro-info-data: the mirror a sibling base of the same
        distro uses, read from that image's own apt sources."""
        siblings = [
            n
            for n, b in self.bases.items()
            if b.distro == base.distro and n != name and bootstrap_knows(b)
        ]
        if not siblings:
            raise EngineError(
                f"base {name}: mmdebstrap does not know {base.codename}; set mirror: on the base "
                f"or add a {base.distro} base it knows"
            )
        self.ensure(siblings[0])
        script = "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true"
        output = self.engine.containers.run(
            base_image_tag(siblings[0]),
            ["sh", "-c", script],
            remove=True,
            labels={LABEL_RUN: "mirror"},
        ).decode()
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", output, re.M) or re.search(
            r"^URIs:\s*(\S+)", output, re.M
        )
        if not match:
            raise EngineError(f"base {name}: no mirror in the apt sources of base {siblings[0]}")
        return match.group(1)

    def ubuntu_keyring(self) -> Path:
        """The Ubuntu archive keyring: the host's, or the ubuntu-keyring package of a Debian 13+
        archive, fetched and verified by that base's apt (signature checks are never turned off)."""
        if HOST_UBUNTU_KEYRING.exists():
            return HOST_UBUNTU_KEYRING
        if FETCHED_KEYRING.exists():
            return FETCHED_KEYRING
        numbered = sorted(
            (int(b.release), n)
            for n, b in self.bases.items()
            if b.distro == "debian" and b.release.isdigit() and int(b.release) >= 13
        )
        if not numbered:
            raise EngineError(
                "bootstrapping Ubuntu needs its archive keyring: install ubuntu-keyring on the host, "
                "or add a Debian 13 (or newer) base to matrix.yaml"
            )
        name = numbered[-1][1]
        self.ensure(name)
        say("ubuntu-keyring", f"from the {name} archive")
        script = (
            "set -e; cd /tmp; apt-get update -qq; apt-get download -qq ubuntu-keyring; "
            "dpkg-deb -x ubuntu-keyring_*.deb /tmp/keyring"
        )
        # The file comes out through the archive API: container logs would mangle binary data.
        container = self.engine.containers.create(
            base_image_tag(name), ["sh", "-c", script], labels={LABEL_RUN: "keyring"}
        )
        try:
            container.start()
            status = container.wait(timeout=300).get("StatusCode")
            if status != 0:
                output = container.logs().decode(errors="replace").strip()[-300:]
                raise EngineError(
                    f"could not fetch ubuntu-keyring from the {name} archive: {output}"
                )
            stream, _ = container.get_archive(
                "/tmp/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg"
            )
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile("ubuntu-archive-keyring.gpg")
                data = member.read() if member else b""
        finally:
            container.remove(force=True)
        if not data:
            raise EngineError(f"the {name} archive's ubuntu-keyring holds no archive keyring")
        FETCHED_KEYRING.parent.mkdir(parents=True, exist_ok=True)
        partial = FETCHED_KEYRING.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(FETCHED_KEYRING)
        return FETCHED_KEYRING
