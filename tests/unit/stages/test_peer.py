"""Migrations without Docker: the `migrations:` pairs of the matrix, the destination container
harness/stages/peer.py starts (against a stub engine), the runner's hook, and the container side's
pure parts (against a stub `libvirt`)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import docker.errors
import pytest

import harness
from harness.core.errors import ConfigurationError
from harness.core.model import PEER_SCENARIOS, SCENARIOS, Cell, Matrix, Migration
from harness.core.options import SmokeJob
from harness.matrix.load import parse
from harness.stages import peer as migrate
from harness.stages import smoke as runner

PAIR = {"from": "debian-12-release", "to": "debian-13-release"}


def with_pairs(*pairs: dict[str, str]):
    def edit(data: dict[str, Any]) -> None:
        data["migrations"] = list(pairs)

    return edit


# --- the matrix ---------------------------------------------------------------------------


def test_live_migration_is_a_scenario_that_needs_a_second_host():
    assert "live-migration" in SCENARIOS
    assert PEER_SCENARIOS == ("live-migration",)
    assert migrate.needs_peer(["boot", "live-migration"])
    assert not migrate.needs_peer(["boot", "teardown"])


def test_pairs_are_read(matrix_text):
    matrix, _ = parse(matrix_text(with_pairs(PAIR)))
    assert [(m.from_, m.to) for m in matrix.migrations] == [
        ("debian-12-release", "debian-13-release")
    ]


def test_no_pairs_by_default(matrix_text):
    matrix, _ = parse(matrix_text())
    assert matrix.migrations == ()


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            {"from": "debian-12-release", "to": "debian-13-relase"},
            "migrations: [0].to: unknown cell 'debian-13-relase' (did you mean 'debian-13-release'?)",
        ),
        (
            {"from": "debian-12-release", "to": "debian-12-release"},
            "migrations: [0]: a cell cannot migrate into itself",
        ),
        ({"from": "debian-12-release"}, "migrations[0].to: required key is missing"),
        (
            {"from": "debian-12-release", "to": "debian-13-release", "too": "x"},
            "migrations[0].too: unknown key 'too'",
        ),
    ],
)
def test_bad_pairs_are_one_line_each(matrix_text, pair, message):
    with pytest.raises(ConfigurationError) as info:
        parse(matrix_text(with_pairs(pair)))
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


# --- the destination, against a stub engine ------------------------------------------------


class Recorder:
    """A stand-in for the Docker SDK objects: records calls, answers what the code reads."""

    def __init__(self, serve_output: bytes = b'{"daemon": "libvirtd"}', serve_code: int = 0):
        self.calls: list[tuple[str, Any]] = []
        self.serve_output = serve_output
        self.serve_code = serve_code
        self.networks = types.SimpleNamespace(create=self._network_create, get=self._network_get)
        self.volumes = types.SimpleNamespace(create=self._volume_create, get=self._volume_get)
        self.containers = types.SimpleNamespace(run=self._run)
        self.images = types.SimpleNamespace(get=self._image_get)
        self.built: set[str] = set()
        self.api = types.SimpleNamespace(
            create_endpoint_config=lambda **kw: {"Aliases": kw["aliases"]},
            exec_create=self._exec_create,
            exec_start=self._exec_start,
            exec_inspect=lambda exec_id: {"ExitCode": 0},
        )
        self.report = {"format": 1, "runs": [], "setup_error": None}

    def _network_create(self, name, **kwargs):
        self.calls.append(("network.create", (name, kwargs)))

    def _network_get(self, name):
        return types.SimpleNamespace(remove=lambda: self.calls.append(("network.remove", name)))

    def _volume_create(self, name, **kwargs):
        self.calls.append(("volume.create", (name, kwargs)))

    def _volume_get(self, name):
        return types.SimpleNamespace(
            remove=lambda force: self.calls.append(("volume.remove", name))
        )

    def _image_get(self, tag):
        if tag not in self.built:
            raise docker.errors.ImageNotFound(tag)
        return object()

    def _run(self, image, command, **kwargs):
        self.calls.append(("container.run", (image, kwargs)))
        return FakeContainer(self, kwargs["name"], kwargs.get("network"))

    def _exec_create(self, container_id, command, **kwargs):
        self.calls.append(("exec_create", (container_id, command, kwargs)))
        return {"Id": "exec"}

    def _exec_start(self, exec_id, stream, demux):
        yield (json.dumps(self.report).encode() + b"\n", None)

    def named(self, what: str) -> list[Any]:
        return [args for call, args in self.calls if call == what]


class FakeContainer:
    def __init__(self, engine: Recorder, name: str, network: str | None):
        self.engine, self.name, self.id = engine, name, name
        self.attrs = {"NetworkSettings": {"Networks": {network: {"IPAddress": "172.30.0.3"}}}}

    def put_archive(self, path, data):
        self.engine.calls.append(("put_archive", (self.name, path, data)))

    def exec_run(self, command, workdir):
        self.engine.calls.append(("exec_run", (self.name, command)))
        return self.engine.serve_code, self.engine.serve_output

    def reload(self):
        pass

    def get_archive(self, path):
        raise docker.errors.NotFound(path)

    def remove(self, force, v):
        self.engine.calls.append(("container.remove", self.name))


def test_no_peer_when_no_scenario_needs_one():
    engine = Recorder()
    peer = migrate.start_peer(engine, ["boot"], "run1", "hvgate-run1-c", "c", "img", [], [b"t"])
    assert peer is migrate.NO_PEER
    assert engine.calls == []
    assert peer.source_options() == {} and peer.environment() == {}


def test_the_destination_is_private_labelled_and_serving():
    engine = Recorder()
    peer = migrate.start_peer(
        engine, ["live-migration"], "run1", "hvgate-run1-c", "c", "img", ["/dev/kvm"], [b"a", b"b"]
    )
    labels = {"io.hvgate.run": "run1", "io.hvgate.cell": "c"}
    ((network, network_args),) = engine.named("network.create")
    assert network == "hvgate-run1-c-migration"
    assert network_args == {"driver": "bridge", "internal": True, "labels": labels}
    assert engine.named("volume.create") == [("hvgate-run1-c-shared", {"labels": labels})]
    ((image, run_args),) = engine.named("container.run")
    assert image == "img"
    assert run_args["labels"] == labels and run_args["devices"] == ["/dev/kvm"]
    assert run_args["hostname"] == migrate.DESTINATION_HOST
    assert run_args["networking_config"] == {network: {"Aliases": [migrate.DESTINATION_HOST]}}
    assert run_args["volumes"] == {
        "hvgate-run1-c-shared": {"bind": migrate.SHARED_DIR, "mode": "rw"}
    }
    assert [args[2] for args in engine.named("put_archive")] == [b"a", b"b"]
    assert engine.named("exec_run") == [
        ("hvgate-run1-c-destination", ["python3", "-m", "smoke.migration", "serve"])
    ]
    # The source joins the same network and volume; the runner gets an address, not a name.
    options = peer.source_options()
    assert options["network"] == network and options["hostname"] == migrate.SOURCE_HOST
    assert options["volumes"] == run_args["volumes"]
    assert peer.environment() == {migrate.PEER_ENV: "172.30.0.3"}


def test_a_destination_that_does_not_serve_is_removed_and_named():
    engine = Recorder(serve_output=b'{"error": "libvirtd did not accept a TCP connection"}\n')
    engine.serve_code = 1
    with pytest.raises(migrate.PeerFailure, match="did not accept a TCP connection"):
        migrate.start_peer(engine, ["live-migration"], "r", "hvgate-r-c", "c", "img", [], [])
    assert engine.named("container.remove") == ["hvgate-r-c-destination"]
    assert engine.named("network.remove") == ["hvgate-r-c-migration"]
    assert engine.named("volume.remove") == ["hvgate-r-c-shared"]


def test_a_destination_without_json_says_what_it_printed():
    engine = Recorder(serve_output=b"Traceback ...\nNameError: boom\n", serve_code=1)
    with pytest.raises(migrate.PeerFailure, match="exited 1: .*NameError: boom"):
        migrate.start_peer(engine, ["live-migration"], "r", "hvgate-r-c", "c", "img", [], [])


# --- the runner's hook ---------------------------------------------------------------------


def job(cell: Cell, image: str, matrix: Matrix, guest: Path, log_dir: Path) -> SmokeJob:
    """One smoke test of run "r" under TCG, one run."""
    return SmokeJob(
        cell=cell,
        image=image,
        matrix=matrix,
        run_id="r",
        guest=guest,
        accel="tcg",
        log_dir=log_dir,
        runs=1,
    )


def smoke_args(unit_matrix, tmp_path: Path, cell_id: str, scenarios: tuple[str, ...]):
    matrix, cells = unit_matrix
    matrix = matrix.model_copy(update={"scenarios": scenarios})
    (cell,) = [dataclasses.replace(c, scenarios=scenarios) for c in cells if c.id == cell_id]
    guest = tmp_path / "guest.tar"
    guest.write_bytes(b"guest")
    return cell, matrix, guest


def test_the_runner_starts_the_destination_and_cleans_up_after_the_source(
    unit_matrix, tmp_path, monkeypatch
):
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    engine = Recorder()
    cell, matrix, guest = smoke_args(
        unit_matrix, tmp_path, "debian-12-release", ("boot", "live-migration")
    )
    smoke = runner.run_cell(engine, job(cell, "img", matrix, guest, tmp_path / "logs"))
    assert smoke.error is None and smoke.report is not None
    source, destination = "hvgate-r-debian-12-release", "hvgate-r-debian-12-release-destination"
    runs = engine.named("container.run")
    assert [args["name"] for _, args in runs] == [destination, source]
    assert runs[1][1]["network"] == "hvgate-r-debian-12-release-migration"
    ((_, command, exec_args),) = engine.named("exec_create")
    assert command[command.index("--scenarios") + 1] == "boot,live-migration"
    assert exec_args["environment"] == {migrate.PEER_ENV: "172.30.0.3"}
    order = [c for c, _ in engine.calls if c.endswith(".remove")]
    assert order == ["container.remove", "container.remove", "network.remove", "volume.remove"]
    assert engine.named("container.remove") == [source, destination]


def test_the_runner_starts_no_destination_without_a_migration(unit_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    engine = Recorder()
    cell, matrix, guest = smoke_args(unit_matrix, tmp_path, "debian-12-release", ("boot",))
    runner.run_cell(engine, job(cell, "img", matrix, guest, tmp_path / "logs"))
    assert [args["name"] for _, args in engine.named("container.run")] == [
        "hvgate-r-debian-12-release"
    ]
    assert "network" not in engine.named("container.run")[0][1]
    assert engine.named("network.create") == []
    ((_, _, exec_args),) = engine.named("exec_create")
    assert exec_args["environment"] == {}


def test_a_failed_destination_is_the_cells_error(unit_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    engine = Recorder(serve_output=b'{"error": "libvirtd did not start"}', serve_code=1)
    cell, matrix, guest = smoke_args(
        unit_matrix, tmp_path, "debian-12-release", ("live-migration",)
    )
    smoke = runner.run_cell(engine, job(cell, "img", matrix, guest, tmp_path / "logs"))
    assert smoke.report is None
    assert smoke.error == "the migration destination did not start: libvirtd did not start"
    assert engine.named("exec_create") == []  # the source never started


def passing_run(name: str = "live-migration") -> dict[str, Any]:
    return {"name": name, "status": "pass", "error": None, "duration_s": 20.0, "details": {}}


def test_an_upgrade_pair_runs_the_older_cell_against_this_one(unit_matrix, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "smoke_tar", lambda: b"smoke")
    engine = Recorder()
    engine.built.add("hvgate/cell:debian-12-release")
    engine.report = {
        "format": 1,
        "runs": [[passing_run()]],
        "setup_error": None,
        "accel": "tcg",
        "libvirt_version": "9.0.0",
        "qemu_version": "7.2.0",
    }
    matrix, cells = unit_matrix
    matrix = matrix.model_copy(
        update={
            "scenarios": ("live-migration",),
            "migrations": (Migration.model_validate(PAIR),),
        }
    )
    (cell,) = [
        dataclasses.replace(c, scenarios=("live-migration",))
        for c in cells
        if c.id == "debian-13-release"
    ]
    guest = tmp_path / "guest.tar"
    guest.write_bytes(b"guest")
    smoke = runner.run_cell(engine, job(cell, "img13", matrix, guest, tmp_path / "l"))
    runs = engine.named("container.run")
    # Its own migration first (both containers of this cell), then the older cell's source
    # against a destination of this cell's image.
    assert [(image, args["name"]) for image, args in runs] == [
        ("img13", "hvgate-r-debian-13-release-destination"),
        ("img13", "hvgate-r-debian-13-release"),
        ("img13", "hvgate-r-debian-12-release-to-debian-13-release-destination"),
        ("hvgate/cell:debian-12-release", "hvgate-r-debian-12-release-to-debian-13-release"),
    ]
    assert smoke.report is not None
    names = [[r["name"] for r in run] for run in smoke.report["runs"]]
    assert names == [["live-migration"], ["upgrade-migration"]]
    details = smoke.report["runs"][1][0]["details"]
    assert details == {
        "from": "debian-12-release",
        "libvirt_version": "9.0.0",
        "qemu_version": "7.2.0",
    }


# --- upgrade pairs, judged from the runs -------------------------------------------------


def test_an_unbuilt_older_cell_is_not_applicable_and_says_why(unit_matrix):
    matrix, cells = unit_matrix
    matrix = matrix.model_copy(update={"migrations": (Migration.model_validate(PAIR),)})
    (cell,) = [c for c in cells if c.id == "debian-13-release"]
    report: dict[str, Any] = {"runs": []}

    def never(source, image):
        raise AssertionError("an unbuilt cell was run")

    assert migrate.upgrades(report, Recorder(), matrix, cell, never) is report
    assert report["runs"] == []
    assert report["not_applicable"] == [
        {
            "name": "upgrade-migration",
            "reason": "from debian-12-release: its image is not built "
            "(`hvgate matrix.build --cells debian-12-release`)",
        }
    ]


def test_an_older_cell_that_cannot_migrate_makes_the_pair_not_applicable(unit_matrix):
    matrix, cells = unit_matrix
    matrix = matrix.model_copy(update={"migrations": (Migration.model_validate(PAIR),)})
    (cell,) = [c for c in cells if c.id == "debian-13-release"]
    engine = Recorder()
    engine.built.add("hvgate/cell:debian-12-release")
    source = {"runs": [], "not_applicable": [{"name": "live-migration", "reason": "needs 2"}]}
    seen = []

    def run(older, image):
        seen.append((older.id, image))
        return source, None

    report = migrate.upgrades({"runs": []}, engine, matrix, cell, run)
    assert seen == [("debian-12-release", "hvgate/cell:debian-12-release")]
    assert report == {
        "runs": [],
        "not_applicable": [
            {"name": "upgrade-migration", "reason": "from debian-12-release: needs 2"}
        ],
    }


def test_a_failed_older_container_is_one_runner_error():
    pair = Migration.model_validate(PAIR)
    (run,) = migrate.upgrade_runs(pair, None, "the cell container did not start: boom")
    assert run[0]["status"] == "error" and run[0]["name"] == "upgrade-migration"
    assert run[0]["error"] == "from debian-12-release: the cell container did not start: boom"
    (run,) = migrate.upgrade_runs(pair, {"runs": [], "setup_error": "libvirtd died"}, None)
    assert run[0]["error"] == "from debian-12-release: libvirtd died"


def test_upgrade_runs_keep_their_failures():
    failed = {**passing_run(), "status": "fail", "error": "block migration: refused"}
    runs = migrate.upgrade_runs(
        Migration.model_validate(PAIR), {"runs": [[passing_run()], [failed]]}, None
    )
    assert [[r["status"] for r in run] for run in runs] == [["pass"], ["fail"]]
    assert runs[1][0]["error"] == "block migration: refused"


# --- the container side, against a stub libvirt --------------------------------------------


@pytest.fixture
def migration(monkeypatch):
    stub = types.ModuleType("libvirt")

    class StubError(Exception):
        pass

    stub.libvirtError = StubError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "libvirt", stub)
    for name in [n for n in sys.modules if n == "harness.smoke" or n.startswith("harness.smoke.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(harness, "smoke", None, raising=False)
    return importlib.import_module("harness.smoke.migration")


def test_both_sides_use_the_same_names(migration):
    assert migration.PEER_ENV == migrate.PEER_ENV
    assert migration.SHARED_DIR == migrate.SHARED_DIR


def test_daemon_settings_replace_their_keys_and_keep_the_rest(migration, tmp_path):
    conf = tmp_path / "libvirtd.conf"
    conf.write_text("# a comment\nlisten_tcp = 0\nmax_clients = 5\n")
    migration._configure(str(conf), {"listen_tcp": "1", "auth_tcp": '"none"'})
    assert conf.read_text() == '# a comment\nmax_clients = 5\nlisten_tcp = 1\nauth_tcp = "none"\n'


def test_uris_take_an_address(migration):
    assert migration.daemon_uri("172.30.0.3") == "qemu+tcp://172.30.0.3/system"
    assert migration.daemon_uri("fd00::3") == "qemu+tcp://[fd00::3]/system"


def test_without_a_destination_it_is_a_runner_error(migration, monkeypatch):
    monkeypatch.delenv(migration.PEER_ENV, raising=False)
    with pytest.raises(RuntimeError, match="needs a second host"):
        migration.live_migration(object())


def test_the_call_is_split_at_the_start_of_the_transfer(migration):
    watch = migration.JobWatch(object(), 120)
    watch.started, watch.transfer_started, watch.ended = 100.0, 141.0, 141.3
    assert watch.figures() == {"call_s": 41.3, "transfer_s": 0.3, "before_transfer_s": 41.0}


def test_the_older_image_is_the_runs_own_before_the_shared_tag():
    class Images:
        def __init__(self, present):
            self.present = present

        def get(self, tag):
            if tag not in self.present:
                raise docker.errors.ImageNotFound(tag)

    class Engine:
        def __init__(self, *present):
            self.images = Images(present)

    mine = "hvgate/cell:debian-12-release-0123456789abcdef"
    shared = "hvgate/cell:debian-12-release"
    # Another checkout may have moved the shared tag to an image of its own.
    assert (
        migrate.cell_image(Engine(mine, shared), "debian-12-release", {"debian-12-release": mine})
        == mine
    )
    # Built on another engine of the run: this engine's newest image of the cell, if any.
    assert (
        migrate.cell_image(Engine(shared), "debian-12-release", {"debian-12-release": mine})
        == shared
    )
    assert migrate.cell_image(Engine(), "debian-12-release", {"debian-12-release": mine}) is None
