"""A small results document with one cell of every status, for the renderer and page tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from harness.core.fingerprint import fingerprint
from harness.core.model import SCENARIOS
from harness.core.results import CellResult, FailureCause, RunResult, ScenarioResult, Status

RUN_ID = "20240101T000000Z-abcd"


def scenario(name, status=Status.SAFE, runs=2, failures=0, errors=0, messages=()):
    # The sample's failures share one message, one cause, as the judge would group them.
    causes = (
        [
            FailureCause(
                fingerprint(name, "ScenarioFailure", messages[0]),
                "libvirt-qemu",
                "ScenarioFailure",
                messages[0],
                failures,
            )
        ]
        if failures and messages
        else []
    )
    return ScenarioResult(
        name=name,
        status=status,
        runs=runs,
        failures=failures,
        errors=errors,
        durations_s=[1.0, 3.0, 2.0][:runs],
        messages=list(messages),
        details=[{"boot_s": 1.5}] * runs,
        logs={"console": ["HVGATE-READY boot=abc", "\x1b[0mHVGATE-BEAT 1"]},
        failures_by_cause=causes,
    )


def cell(cell_id, status, *, distro="debian", release="12", source="release", **fields):
    codename = {"12": "bookworm", "13": "trixie", "24.04": "noble"}.get(release, "sid")
    return CellResult(
        id=cell_id,
        distro=distro,
        release=release,
        codename=codename,
        source=source,
        status=status,
        **fields,
    )


def smoked(libvirt, qemu, log_dir, thresholds, scenarios):
    """The fields of a cell that was built and smoke-tested."""
    return dict(
        image="hvgate/cell:x-0123",
        build={"status": "cached", "seconds": 0.1, "log": None, "log_tail": []},
        versions={"libvirt-daemon": f"{libvirt}-1", "qemu-system-x86": f"1:{qemu}+dfsg-1"},
        libvirt_version=libvirt,
        qemu_version=qemu,
        accel="tcg",
        thresholds=thresholds,
        scenarios=scenarios,
        log_dir=log_dir,
        duration_s=61.5,
    )


def sample_run(results_dir: Path | str = "/results") -> RunResult:
    """Six cells, one per status; logs under results_dir as a real run keeps them."""
    logs = Path(results_dir) / "runs" / RUN_ID / "logs"
    flaky = cell(
        "debian-12-release",
        Status.FLAKY,
        reason="reboot: no heartbeat | after reboot",
        **smoked(
            "9.0.0",
            "7.2.0",
            str(logs / "debian-12-release"),
            {"min": True, "next-min": False},
            [
                scenario(n, Status.FLAKY, failures=1, messages=["no heartbeat"])
                if n == "reboot"
                else scenario(n)
                for n in SCENARIOS
            ],
        ),
    )
    broken = cell(
        "debian-13-release-qemu-backports",
        Status.BROKEN,
        release="13",
        reason="managed-save: fd: migration to a file is not supported",
        **smoked(
            "11.3.0",
            "11.1.3",
            str(logs / "debian-13-release-qemu-backports"),
            {"min": True, "next-min": True},
            [
                scenario(
                    n,
                    Status.BROKEN,
                    failures=2,
                    messages=["fd: migration to a file is not supported"],
                )
                if n == "managed-save"
                else scenario(n)
                for n in SCENARIOS
            ],
        ),
    )
    safe = cell(
        "ubuntu-24.04-release",
        Status.SAFE,
        distro="ubuntu",
        release="24.04",
        **smoked(
            "10.0.0",
            "8.2.2",
            str(logs / "ubuntu-24.04-release"),
            {"min": True, "next-min": True},
            [scenario(n) for n in SCENARIOS],
        ),
    )
    unavailable = cell(
        "debian-13-backports",
        Status.UNAVAILABLE,
        release="13",
        source="backports",
        reason="source unreachable: Could not resolve the archive's host",
        build={
            "status": "unavailable",
            "seconds": 3.0,
            "log": str(Path(results_dir) / "logs" / "debian-13-backports" / "build.log"),
            "log_tail": ["\x1b[91mE: Could not resolve the archive's host\x1b[0m"],
        },
    )
    error = cell(
        "debian-12-backports",
        Status.ERROR,
        source="backports",
        reason="the Docker engine failed: 500 Server Error",
        **{
            **smoked("9.0.0", "7.2.0", None, {}, []),
            "versions": {},
            "libvirt_version": None,
            "qemu_version": None,
        },
    )
    inconclusive = cell(
        "debian-unstable", Status.INCONCLUSIVE, release="unstable", reason="not run"
    )
    return RunResult(
        run_id=RUN_ID,
        started="2024-01-01T00:00:00+00:00",
        finished="2024-01-01T00:10:00+00:00",
        host={"kernel": "6.1.0", "machine": "x86_64", "cpus": 2},
        cells=[flaky, broken, safe, unavailable, error, inconclusive],
    )


def with_optional_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The document with the fields that verdicts and history add: interval, decision, change."""
    data = copy.deepcopy(data)
    for c in data["cells"]:
        for s in c.get("scenarios", []):
            rate = s["failures"] / s["runs"] if s["runs"] else None
            s["failure_rate"] = rate
            s["interval"] = [0.0, 0.66] if not s["failures"] else [0.09, 0.91]
            s["decision"] = f"{s['status']} after {s['runs']} runs"
    by_id = {c["id"]: c for c in data["cells"]}
    by_id["debian-13-release-qemu-backports"]["history"] = {
        "since": RUN_ID,
        "previous": "safe",
        "change": "regression",
    }
    by_id["ubuntu-24.04-release"]["history"] = {"previous": "broken", "change": "fix"}
    by_id["debian-12-release"]["history"] = {"previous": "flaky", "change": None}
    return data


def write_logs(run: RunResult) -> None:
    """Creates the log files the document names, as a run leaves them."""
    for c in run.cells:
        if c.log_dir:
            Path(c.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(c.log_dir) / "console.log").write_text(f"HVGATE-READY {c.id}\n")
        if c.build.get("log"):
            Path(c.build["log"]).parent.mkdir(parents=True, exist_ok=True)
            Path(c.build["log"]).write_text(f"build log of {c.id}\n")


def document(run: RunResult) -> dict[str, Any]:
    """The run's JSON as the file holds it."""
    return json.loads(json.dumps(run.to_json()))
