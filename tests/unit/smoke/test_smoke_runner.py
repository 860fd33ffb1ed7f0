"""harness/smoke, the container side, imported here against a stub `libvirt` module."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import random
import signal
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import harness
from harness.core import model
from harness.core.results import parse_report
from harness.core.stats import StopRule
from harness.stages.judge import judge_scenarios

SMOKE_DIR = Path(harness.__file__).resolve().parent / "smoke"


class StubLibvirtError(Exception):
    pass


def stub_libvirt() -> types.ModuleType:
    stub = types.ModuleType("libvirt")
    stub.libvirtError = StubLibvirtError  # type: ignore[attr-defined]
    for number, name in enumerate(
        [
            "VIR_DOMAIN_RUNNING",
            "VIR_DOMAIN_PAUSED",
            "VIR_DOMAIN_SHUTOFF",
            "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
            "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
            "VIR_DOMAIN_AFFECT_LIVE",
            "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED",
            "VIR_DOMAIN_XML_INACTIVE",
            "VIR_DOMAIN_XML_SECURE",
            "VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY",
            "VIR_SECRET_USAGE_TYPE_VOLUME",
            "VIR_ERR_NO_SECRET",
            "VIR_DOMAIN_SHUTDOWN",
            "VIR_DOMAIN_CRASHED",
            "VIR_DOMAIN_SHUTOFF_SHUTDOWN",
            "VIR_DOMAIN_UNDEFINE_NVRAM",
        ],
        start=1,
    ):
        setattr(stub, name, number)
    # Flags that are or'ed together, and the one constant whose value the runner compares.
    stub.VIR_DOMAIN_BLOCK_REBASE_SHALLOW = 1  # type: ignore[attr-defined]
    stub.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT = 2  # type: ignore[attr-defined]
    stub.VIR_DOMAIN_BLOCK_REBASE_COPY = 8  # type: ignore[attr-defined]
    stub.VIR_DOMAIN_JOB_NONE = 0  # type: ignore[attr-defined]
    stub.VIR_DOMAIN_AFFECT_CONFIG = 64  # type: ignore[attr-defined]

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test reached libvirt")

    stub.open = refuse  # type: ignore[attr-defined]
    return stub


@pytest.fixture
def smoke(monkeypatch):
    """Imports harness.smoke.* afresh with `libvirt` stubbed; the real state returns afterwards."""
    monkeypatch.setitem(sys.modules, "libvirt", stub_libvirt())
    for name in [n for n in sys.modules if n == "harness.smoke" or n.startswith("harness.smoke.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(harness, "smoke", None, raising=False)
    alarm = signal.getsignal(signal.SIGALRM)
    modules = types.SimpleNamespace(
        guest=importlib.import_module("harness.smoke.guest"),
        scenarios=importlib.import_module("harness.smoke.scenarios"),
        main=importlib.import_module("harness.smoke.__main__"),
        worker=importlib.import_module("harness.smoke.worker"),
        supervisor=importlib.import_module("harness.smoke.supervisor"),
        evidence=importlib.import_module("harness.smoke.evidence"),
        power=importlib.import_module("harness.smoke.power"),
        daemons=importlib.import_module("harness.smoke.daemons"),
        confinement=importlib.import_module("harness.smoke.confinement"),
        encryption=importlib.import_module("harness.smoke.encryption"),
    )
    yield modules
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, alarm)
    for name in [n for n in sys.modules if n == "harness.smoke" or n.startswith("harness.smoke.")]:
        del sys.modules[name]


def test_the_smoke_modules_use_the_stub(smoke):
    assert smoke.scenarios.libvirt is sys.modules["libvirt"]
    assert smoke.worker.libvirt.libvirtError is StubLibvirtError


def test_scenarios_match_the_model(smoke):
    # The runner's scenarios: its own, then the migrations (harness/smoke/migration.py).
    assert tuple(smoke.main.SCENARIOS) == model.SCENARIOS
    assert all(callable(f) for f in smoke.main.SCENARIOS.values())


def test_list_prints_the_scenarios_in_order(smoke, capsys):
    assert smoke.main.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(model.SCENARIOS)


def test_unknown_scenario_is_refused(smoke, capsys):
    with pytest.raises(SystemExit) as info:
        smoke.main.main(["--scenarios", "boot,bot"])
    assert info.value.code == 2
    assert "unknown scenarios: bot" in capsys.readouterr().err


@pytest.mark.parametrize(("accel", "domain_type"), [("tcg", "qemu"), ("kvm", "kvm")])
def test_domain_xml(smoke, accel, domain_type):
    disk, console = "/var/lib/hvgate/disk.qcow2", "/var/lib/hvgate/console.log"
    text = smoke.guest.domain_xml(accel, disk, console)
    root = ET.fromstring(text)
    assert root.tag == "domain"
    assert root.get("type") == domain_type
    assert root.findtext("name") == smoke.guest.DOMAIN
    assert root.find("features/acpi") is not None  # PCI hot-plug on the pc machine
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == console
    assert serial.find("source").get("append") == "on"  # keeps the console across restores
    disk_node = root.find("devices/disk")
    assert disk_node.find("source").get("file") == disk
    assert disk_node.find("target").get("dev") == "vda"
    assert root.find("os/kernel").text.startswith(smoke.guest.GUEST_DIR)


def test_domain_xml_for_tcg_has_the_expected_text(smoke):
    text = smoke.guest.domain_xml("tcg", "/d.qcow2", "/c.log")
    assert "<domain type='qemu'>" in text
    assert "<acpi/>" in text
    assert "append='on'" in text


def test_disk_xml(smoke):
    node = ET.fromstring(smoke.guest.disk_xml("/x/extra.qcow2", "vdb", fmt="raw"))
    assert node.find("driver").get("type") == "raw"
    assert node.find("target").get("dev") == "vdb"
    assert node.find("target").get("bus") == "virtio"


CONSOLE = (
    b"\x1b[0m\xff garbage from the firmware\r\n"
    b"HVGATE-READY boot=abc disks=vda\r\n"
    b"HVGATE-HEARTBEAT 1 boot=abc\r\n"
    b"HVGATE-HEARTBEAT 2 boot=abc\r\n"
    b"HVGATE-HEARTBEAT 3 boot=abc\r\n"
)


@pytest.fixture
def console_file(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(CONSOLE)
    return path


def test_console_wait_for_ready(smoke, console_file):
    console = smoke.guest.Console(str(console_file))
    match = console.wait_for(smoke.guest.READY_RE, 0, 1.0, "the ready marker")
    assert match.group(1) == "abc"


def test_console_wait_for_looks_after_the_offset(smoke, console_file):
    console = smoke.guest.Console(str(console_file))
    offset = console.size()
    assert offset == len(CONSOLE)
    with console_file.open("ab") as handle:
        handle.write(b"HVGATE-READY boot=def disks=vda,vdb\n")
    assert console.wait_for(smoke.guest.READY_RE, offset, 1.0, "ready").group(1) == "def"


def test_console_wait_for_times_out(smoke, console_file):
    console = smoke.guest.Console(str(console_file))
    started = time.monotonic()
    with pytest.raises(smoke.guest.ScenarioFailure, match="the ready marker did not appear"):
        console.wait_for(smoke.guest.READY_RE, console.size(), 0.2, "the ready marker")
    assert time.monotonic() - started >= 0.2


def test_console_heartbeats(smoke, console_file):
    console = smoke.guest.Console(str(console_file))
    assert console.heartbeats() == [(1, "abc"), (2, "abc"), (3, "abc")]
    offset = CONSOLE.index(b"HVGATE-HEARTBEAT 3")
    assert console.heartbeats(offset) == [(3, "abc")]
    assert console.last_heartbeat() == (3, "abc")
    assert console.wait_heartbeat_after(2, "abc", 0, 1.0) == 3
    with pytest.raises(smoke.guest.ScenarioFailure, match="no heartbeat after #3"):
        console.wait_heartbeat_after(3, "abc", 0, 0.1)
    # A beat of another boot does not count as this boot's.
    with console_file.open("ab") as handle:
        handle.write(b"HVGATE-HEARTBEAT 9 boot=zzz\n")
    with pytest.raises(smoke.guest.ScenarioFailure):
        console.wait_heartbeat_after(3, "abc", 0, 0.1)
    assert console.tail(1) == ["HVGATE-HEARTBEAT 9 boot=zzz"]


def test_console_without_a_file(smoke, tmp_path):
    console = smoke.guest.Console(str(tmp_path / "missing.log"))
    assert console.size() == 0
    assert console.text() == ""
    assert console.heartbeats() == []
    assert console.tail() == []
    with pytest.raises(smoke.guest.ScenarioFailure, match="no heartbeat"):
        console.last_heartbeat()


def test_dotted_version(smoke):
    assert smoke.worker.dotted(9000000) == "9.0.0"
    assert smoke.worker.dotted(10002003) == "10.2.3"


def run_fake_scenario(smoke, monkeypatch, behaviour, timeout=5.0):
    monkeypatch.setitem(smoke.worker.SCENARIOS, "boot", behaviour)
    return smoke.worker.run_scenario("boot", None, "virtqemud", timeout)


def test_run_scenario_pass(smoke, monkeypatch):
    result = run_fake_scenario(smoke, monkeypatch, lambda session: {"boot_s": 1.5})
    assert result["name"] == "boot"
    assert result["status"] == "pass"
    assert result["error"] is None
    assert result["details"] == {"boot_s": 1.5}
    assert result["duration_s"] >= 0
    assert set(result["logs"]) == {"daemon", "qemu", "console"}


@pytest.mark.parametrize(
    ("exception", "status"),
    [
        (lambda: StubLibvirtError("  domain not found\n"), "fail"),
        (lambda: RuntimeError("a bug in the runner"), "error"),
    ],
    ids=["libvirt", "bug"],
)
def test_run_scenario_failures(smoke, monkeypatch, exception, status):
    def scenario(session):
        raise exception()

    result = run_fake_scenario(smoke, monkeypatch, scenario)
    assert result["status"] == status
    assert result["error"]
    if status == "fail":
        assert result["error"] == "domain not found"
    else:
        assert "RuntimeError: a bug in the runner" in result["error"]


def test_run_scenario_scenario_failure(smoke, monkeypatch):
    def scenario(session):
        raise smoke.guest.ScenarioFailure("the guest did not come back")

    result = run_fake_scenario(smoke, monkeypatch, scenario)
    assert (result["status"], result["error"]) == ("fail", "the guest did not come back")


def test_a_daemon_killed_after_its_stop_timeout_leaves_its_threads_as_evidence(smoke, monkeypatch):
    def scenario(session):
        raise smoke.daemons.StopTimeout("libvirtd did not exit", threads=["7/7 libvirtd: x"])

    result = run_fake_scenario(smoke, monkeypatch, scenario)
    assert (result["status"], result["error_class"]) == ("fail", "StopTimeout")
    assert result["logs"]["threads"] == ["7/7 libvirtd: x"]


def test_run_scenario_timeout(smoke, monkeypatch):
    def scenario(session):
        time.sleep(5)

    started = time.monotonic()
    result = run_fake_scenario(smoke, monkeypatch, scenario, timeout=0.2)
    assert time.monotonic() - started < 4
    assert result["status"] == "fail"
    assert "did not finish within" in result["error"]


def test_the_host_reads_every_result_the_runner_prints(smoke, monkeypatch):
    """The runner's results (pass, fail, its own error, not-run) in its report's skeleton, as
    the host parses them (harness.core.results.parse_report) and judges them."""

    def failing(session):
        raise StubLibvirtError("domain not found")

    def buggy(session):
        raise RuntimeError("a bug in the runner")

    runs = [
        [run_fake_scenario(smoke, monkeypatch, lambda session: {"boot_s": 1.0})],
        [run_fake_scenario(smoke, monkeypatch, failing)],
        [run_fake_scenario(smoke, monkeypatch, buggy)],
        [smoke.supervisor.not_run("boot", "the daemon could not be renewed")],
    ]
    report = {
        "format": smoke.main.FORMAT,
        "started": time.time(),
        "kernel": "6.1.0",
        "versions": {},
        "runs": runs,
        "not_applicable": [],
        "setup_error": None,
        "aborted": None,
        "daemon": "virtqemud",
        "decisions": {"boot": None},
        "duration_s": 1.0,
    }
    parsed = parse_report(json.loads(json.dumps(report)))
    (boot,) = judge_scenarios(parsed)
    assert (boot.runs, boot.failures, boot.errors, boot.not_run) == (3, 1, 1, 1)


# --- the wall between the two sides --------------------------------------------------------


def smoke_sources() -> list[Path]:
    return sorted(SMOKE_DIR.glob("*.py"))


@pytest.mark.parametrize("path", smoke_sources(), ids=lambda p: p.name)
def test_smoke_code_is_python_310_stdlib_and_libvirt(path):
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    allowed = set(sys.stdlib_module_names) | {"libvirt"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_host_side_never_imports_the_smoke_runner(root):
    code = (
        "import sys, tasks, harness.run.pipeline, harness.matrix.schema\n"
        "print(sorted(m for m in sys.modules if m.startswith('harness.smoke') or m == 'libvirt'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- repetitions under the host's stop rule ----------------------------------------------------


def test_tracker_decides_as_the_host_does(smoke):
    """The container's copy of the sequential test agrees with harness.stats on every path."""
    generator = random.Random(7)
    for rule in (
        StopRule(0.01, 0.25, 0.95, 1, 30),
        StopRule(0.05, 0.5, 0.8, 3, 12),
        StopRule(0.01, 0.2, 0.99, 5, 5),
    ):
        table = json.loads(json.dumps(rule.to_json()))  # as it crosses the wall
        for rate in (0.0, 0.05, 0.3, 0.5, 0.9, 1.0):
            for _ in range(200):
                failed = [generator.random() < rate for _ in range(rule.max_runs + 5)]
                tracker = smoke.main.Tracker(table)
                for outcome in failed:
                    tracker.add("fail" if outcome else "pass")
                    if tracker.decision:
                        break
                expected = rule.walk(failed)
                assert tracker.decision == expected.status, (rule, failed)
                if expected.status:
                    assert (tracker.runs, tracker.failures) == (expected.runs, expected.failures)


def test_tracker_starts_from_the_earlier_runs_as_the_host_pools_them(smoke):
    """With earlier runs of the experiment the table reaches beyond one night's max_runs; the
    runner's tracker over earlier + new runs agrees with the host's walk over the same."""
    generator = random.Random(11)
    rule = dataclasses.replace(StopRule(0.01, 0.1, 0.97, 1, 8), prior_runs=40)
    table = json.loads(json.dumps(rule.to_json()))
    assert table["max_runs"] == 8 and len(table["accept"]) == 48
    for rate in (0.0, 0.05, 0.1, 0.3):
        for _ in range(100):
            earlier = "".join("F" if generator.random() < rate else "P" for _ in range(40))
            tracker = smoke.main.Tracker(table)
            tracker.replay(earlier)
            new = []
            while tracker.decision is None and len(new) < table["max_runs"]:
                failed = generator.random() < rate
                new.append(failed)
                tracker.add("fail" if failed else "pass")
            expected = rule.walk([c == "F" for c in earlier] + new)
            assert tracker.decision == expected.status, (earlier, new)


def test_a_scenario_decided_by_earlier_runs_does_not_run(smoke):
    rule = dataclasses.replace(StopRule(0.01, 0.25, 0.95, 1, 5), prior_runs=11).to_json()
    trackers = {name: smoke.main.Tracker(rule) for name in ("boot", "reboot")}
    trackers["boot"].replay("P" * 11)
    assert trackers["boot"].decision == "safe"
    runs = []
    smoke.main.repeat(["boot", "reboot"], trackers, 5, lambda n: fake_result(n, "pass"), runs)
    assert {r["name"] for run in runs for r in run} == {"reboot"}
    assert len(runs) == 5  # one night's budget, not the table's length


def fake_result(name, status):
    return {"name": name, "status": status, "error": None, "duration_s": 0.1}


def test_repeat_skips_decided_scenarios(smoke):
    rule = StopRule(0.01, 0.25, 0.95, 1, 30).to_json()
    outcomes = {
        "boot": iter(["pass"] * 30),  # safe after 11
        "reboot": iter(["fail", "pass", "pass"] + ["pass"] * 27),  # flaky after 3
        "teardown": iter(["error"] + ["pass"] * 29),  # the runner failed: not run again
    }
    names = list(outcomes)
    trackers = {name: smoke.main.Tracker(rule) for name in names}
    runs = []
    smoke.main.repeat(names, trackers, 30, lambda n: fake_result(n, next(outcomes[n])), runs)
    assert len(runs) == 11
    assert [r["name"] for r in runs[0]] == ["boot", "reboot", "teardown"]
    assert [r["name"] for r in runs[1]] == ["boot", "reboot"]
    assert [r["name"] for r in runs[3]] == ["boot"]
    assert {n: t.decision for n, t in trackers.items()} == {
        "boot": "safe",
        "reboot": "flaky",
        "teardown": "error",
    }


def test_repeat_without_a_rule_runs_a_fixed_count(smoke):
    trackers = {"boot": smoke.main.Tracker(None)}
    runs = []
    smoke.main.repeat(["boot"], trackers, 4, lambda n: fake_result(n, "fail"), runs)
    assert len(runs) == 4 and trackers["boot"].decision is None


def test_stop_rule_argument_is_json(smoke, capsys):
    with pytest.raises(SystemExit) as info:
        smoke.main.main(["--stop-rule", "{not json"])
    assert info.value.code == 2
    assert "--stop-rule" in capsys.readouterr().err
