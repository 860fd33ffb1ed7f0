"""harness.run.fleet without Docker: which engines, how cells are spread over them, one accel probe."""

from __future__ import annotations

import _thread
import threading
import time

import docker.errors
import pytest

from harness.core.errors import ConfigurationError, EngineError
from harness.core.options import ENGINES_ENV
from harness.run import fleet as f


class Client:
    """Stands in for docker.DockerClient where the fleet calls it."""

    def __init__(self, name="vm", root="/var/lib/docker"):
        self.facts = {"ID": "KEY", "Name": name, "DockerRootDir": root}

    def info(self):
        return self.facts


def engines(*names):
    return [f.DockerEngine(name, Client(root=f"/data/{name}")) for name in names]


# --- which engines ----------------------------------------------------------------------------


def test_addresses_from_the_flag_or_the_environment():
    environ = {ENGINES_ENV: "unix:///b.sock"}
    flag = " unix:///a.sock, ssh://ci@host ,tcp://10.0.0.2:2375,default"
    assert f.addresses(flag, environ) == [
        "unix:///a.sock",
        "ssh://ci@host",
        "tcp://10.0.0.2:2375",
        "default",
    ]
    assert f.addresses(None, environ) == ["unix:///b.sock"]
    assert f.addresses(None, {}) == []


def test_bad_addresses_are_reported_together():
    with pytest.raises(ConfigurationError) as info:
        f.addresses("http://x:2375,no such,defualt,unix:///a,unix:///a", {})
    assert info.value.exit_code == 2
    assert info.value.problems == [
        "--engines 'http://x:2375': use a unix://, tcp:// or ssh:// URL, or a Docker context's name",
        "--engines 'no such': not an engine URL nor a Docker context's name",
        "--engines 'defualt': no such Docker context (did you mean 'default'?); contexts: default",
        "--engines: unix:///a given more than once",
    ]
    with pytest.raises(ConfigurationError, match=r"^HVGATE_ENGINES 'ftp://x': "):
        f.addresses(None, {ENGINES_ENV: "ftp://x"})


def test_an_unreachable_engine_is_named(monkeypatch):
    calls = []

    def client(**kwargs):
        calls.append(kwargs)
        raise docker.errors.DockerException("Error while fetching server API version: refused")

    monkeypatch.setattr(f.docker, "DockerClient", client)
    with pytest.raises(EngineError) as info:
        f.connect("ssh://ci@build-host")
    assert info.value.exit_code == 3
    assert str(info.value) == (
        "cannot reach the Docker engine ssh://ci@build-host: "
        "Error while fetching server API version: refused"
    )
    assert calls[0]["base_url"] == "ssh://ci@build-host"
    assert calls[0]["use_ssh_client"] is True  # the ssh command: ~/.ssh/config applies
    assert calls[0]["timeout"] >= 60


def test_one_engine_named_twice_is_refused(monkeypatch):
    same = Client()
    monkeypatch.setattr(f, "connect", lambda address: same)
    with pytest.raises(
        ConfigurationError, match="default and unix:///var/run/docker.sock are the same"
    ):
        f.Fleet.of(["default", "unix:///var/run/docker.sock"])


def test_engines_on_one_host_share_a_key_but_not_a_data_root(monkeypatch):
    clients = {"unix:///a": Client(root="/a"), "unix:///b": Client(root="/b")}
    monkeypatch.setattr(f, "connect", clients.__getitem__)
    fleet = f.Fleet.of(["unix:///a", "unix:///b"])
    assert [e.name for e in fleet.engines] == ["unix:///a", "unix:///b"]
    assert fleet.several
    assert fleet.where(fleet.engines[1]) == " on unix:///b"


# --- spreading cells --------------------------------------------------------------------------


def test_one_engine_works_in_the_callers_thread_in_order():
    fleet = f.Fleet(engines("only"))
    seen = []

    def work(engine, item):
        seen.append((engine.name, item, threading.current_thread() is threading.main_thread()))

    assert fleet.spread(["a", "b", "c"], work) == []
    assert seen == [("only", x, True) for x in "abc"]
    assert fleet.where(fleet.engines[0]) == ""


def test_every_engine_gets_a_cell_and_the_free_one_takes_the_next():
    fleet = f.Fleet(engines("slow", "fast"))
    done: dict[str, list[str]] = {"slow": [], "fast": []}
    prepared = []

    def work(engine, item):
        time.sleep(0.3 if engine.name == "slow" else 0.01)
        done[engine.name].append(item)

    left = fleet.spread(list("abcdef"), work, prepare=lambda e: prepared.append(e.name))
    assert left == []
    assert done["slow"] == ["a"]  # its first item, in turn
    assert done["fast"] == list("bcdef")  # then whichever is free takes the next
    assert sorted(prepared) == ["fast", "slow"]  # each engine once, before its first cell


def test_an_engine_without_cells_is_not_prepared():
    fleet = f.Fleet(engines("a", "b", "c"))
    prepared = []
    fleet.spread(["x"], lambda e, i: None, prepare=lambda e: prepared.append(e.name))
    assert prepared == ["a"]


def test_cells_go_only_where_they_can_run():
    fleet = f.Fleet(engines("a", "b"))
    where = {}

    def work(engine, item):
        where[item] = engine.name

    images = {"a": {"1", "3"}, "b": {"2", "3"}}
    left = fleet.spread(["1", "2", "3", "4"], work, can_take=lambda e, i: i in images[e.name])
    assert where["1"] == "a" and where["2"] == "b" and where["3"] in ("a", "b")
    assert left == ["4"]  # on no engine


def test_a_failure_stops_the_others_and_is_raised_here():
    fleet = f.Fleet(engines("a", "b"))
    started = []

    def work(engine, item):
        started.append(item)
        if engine.name == "a":
            raise RuntimeError(f"engine a failed on {item}")
        time.sleep(0.2)

    with pytest.raises(RuntimeError, match="engine a failed on 1"):
        fleet.spread([str(i) for i in range(1, 20)], work)
    assert len(started) <= 3  # no engine took many more after the failure


# --- one accel probe for all engines ----------------------------------------------------------


def test_the_first_cell_probes_and_the_others_wait_for_its_answer():
    probes = []

    def probe():
        probes.append(threading.current_thread().name)
        time.sleep(0.1)  # the others arrive meanwhile
        return "tcg", "KVM probe failed (timed out); using TCG"

    choice = f.AccelChoice("auto", None)
    used = []
    threads = [
        threading.Thread(target=lambda: used.append(choice.decide(probe)), name=f"c{i}")
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(probes) == 1
    assert used == [("tcg", "KVM probe failed (timed out); using TCG")] * 4


def test_a_decided_accel_needs_no_probe():
    choice = f.AccelChoice("kvm", "kvm was asked for")
    assert choice.decide(lambda: pytest.fail("probed")) == ("kvm", "kvm was asked for")


def test_a_probe_that_raised_is_tried_again_by_the_next_cell():
    choice = f.AccelChoice("auto", None)

    def broken():
        raise RuntimeError("the engine went away")

    with pytest.raises(RuntimeError):
        choice.decide(broken)
    assert choice.decide(lambda: ("kvm", "booted")) == ("kvm", "booted")


# --- stopping ---------------------------------------------------------------------------------


def test_an_interrupt_sets_stop_and_leaves_the_threads_to_the_cleanup():
    stop = f.Stop()
    woken = []
    release = threading.Event()

    def worker():
        _thread.interrupt_main()  # Ctrl-C, as the main thread waits for its workers
        release.wait(10)

    with pytest.raises(KeyboardInterrupt):
        f.run_threads(
            [threading.Thread(target=worker, daemon=True)], stop, wake=lambda: woken.append(1)
        )
    assert stop.is_set() and woken == [1]
    assert not stop.join(0.1)  # still busy: the cleanup removes its container, then waits
    release.set()
    assert stop.join(10)


def test_a_stopped_fleet_takes_no_more_cells():
    fleet = f.Fleet(engines("a", "b"))
    stop = f.Stop()
    stop.set()
    prepared, done = [], []
    left = fleet.spread(list("xyz"), lambda e, i: done.append(i), prepared.append, stop=stop)
    assert (prepared, done) == ([], [])
    assert sorted(left) == list("xyz")
