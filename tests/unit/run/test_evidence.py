"""harness.run.evidence and the pooled judgement: runs of the same experiment (evidence key)
pool across runs of the matrix; anything else changing starts afresh; old runs expire."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from datetime import datetime, timedelta, timezone

import pytest

from harness.core import readback
from harness.core.errors import InputError
from harness.core.paths import ROOT
from harness.core.results import Prior, RunResult, SmokeRun, Status
from harness.core.stats import StopRule
from harness.matrix.load import load
from harness.run import evidence, history
from harness.stages.judge import judge_cell, judge_scenarios
from tests.unit.stages.test_judge import BUILT, REPORT, result

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
# The default policy's rates, with a night's budget of 5 runs: 0 failures need 11 runs.
RULE = StopRule(0.01, 0.25, 0.95, min_runs=1, max_runs=5)
PACKAGES = "a" * 64


def entry(run_id, days_ago, key, outcomes, cell="debian-12-release"):
    return {
        "run_id": run_id,
        "time": (NOW - timedelta(days=days_ago)).isoformat(),
        "cell": cell,
        "status": "inconclusive",
        "versions": {},
        "evidence": {"key": key, "outcomes": outcomes},
    }


def test_the_key_changes_with_each_part_and_needs_the_packages():
    base = evidence.key(PACKAGES, "r" * 64, "g" * 64, "tcg")
    assert base is not None and len(base) == 16
    assert base == evidence.key(PACKAGES, "r" * 64, "g" * 64, "tcg")
    changed = [
        evidence.key("b" * 64, "r" * 64, "g" * 64, "tcg"),
        evidence.key(PACKAGES, "s" * 64, "g" * 64, "tcg"),
        evidence.key(PACKAGES, "r" * 64, "h" * 64, "tcg"),
        evidence.key(PACKAGES, "r" * 64, "g" * 64, "kvm"),
    ]
    assert base not in changed and len(set(changed)) == 4
    assert evidence.key(None, "r" * 64, "g" * 64, "tcg") is None


def test_the_guest_is_named_by_its_files_not_by_when_they_were_built():
    def tar(files: dict[str, bytes], mtime: int) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(content), mtime
                archive.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    files = {"guest/vmlinuz": b"kernel", "guest/initramfs.img": b"initramfs"}
    built = evidence.content_digest(tar(files, 1_700_000_000))
    assert evidence.content_digest(tar(dict(reversed(files.items())), 1_800_000_000)) == built
    changed = {**files, "guest/vmlinuz": b"another kernel"}
    assert evidence.content_digest(tar(changed, 1_700_000_000)) != built
    renamed = {"guest/bzImage": b"kernel", "guest/initramfs.img": b"initramfs"}
    assert evidence.content_digest(tar(renamed, 1_700_000_000)) != built


def test_prior_pools_the_same_key_oldest_first_and_leaves_out_the_rest():
    entries = [
        entry("r3", 1, "k1", {"boot": "PF"}),
        entry("r1", 3, "k1", {"boot": "PPP", "reboot": "P"}),
        entry("r2", 2, "k2", {"boot": "FFFF"}),  # another experiment
        entry("r0", 40, "k1", {"boot": "FFFF"}),  # expired (30 days)
        entry("now", 0, "k1", {"boot": "FFFF"}),  # the run itself (resumed)
        entry("r4", 2, "k1", {"boot": "P"}, cell="debian-12-updates"),  # same images
        {**entry("r5", 1, "k1", {}), "evidence": None},
    ]
    entries[-1].pop("evidence")
    prior = evidence.prior(entries, "k1", "now", NOW, 30)
    assert prior.outcomes == {"boot": "PPPPPF", "reboot": "P"}
    assert prior.runs == {"boot": 3, "reboot": 1}
    assert prior.since == (NOW - timedelta(days=3)).isoformat()
    assert evidence.prior(entries, "k1", "now", NOW, 0) == Prior("k1")
    assert evidence.prior(entries, "k9", "now", NOW, 30) == Prior("k9")


def test_the_history_keeps_each_cells_key_and_outcomes(tmp_path):
    clean = {**REPORT, "runs": [[result("boot", "pass")], [result("boot", "fail")]]}
    cell = judge_cell(
        _cell(),
        BUILT,
        SmokeRun("debian-12-release", clean, rule=RULE),
        {},
        Prior("0123456789abcdef"),
    )
    run = RunResult("r1", NOW.isoformat(), NOW.isoformat(), {}, [cell])
    (line,) = history.lines_of(json.loads(json.dumps(run.to_json())))
    assert line["evidence"] == {"key": "0123456789abcdef", "outcomes": {"boot": "PF"}}
    readback.check_history_line(line, "history.jsonl:1")
    for bad in (
        {"key": "x", "outcomes": {}},
        {"key": "0123456789abcdef", "outcomes": {"boot": "PX"}},
    ):
        with pytest.raises(InputError, match="evidence"):
            readback.check_history_line({**line, "evidence": bad}, "history.jsonl:1")


def test_pooled_runs_decide_what_one_nights_runs_cannot():
    night = {**REPORT, "runs": [[result("boot", "pass")]] * 5}
    (alone,) = judge_scenarios(night, RULE)
    assert alone.status is Status.INCONCLUSIVE
    assert "needs at least 6 more runs" in (alone.decision or "")
    prior = Prior("k1", "2026-11-27T00:00:00+00:00", {"boot": "PPPPPP"}, {"boot": 2})
    (pooled,) = judge_scenarios(night, dataclasses.replace(RULE, prior_runs=6), prior)
    assert pooled.status is Status.SAFE
    assert (pooled.runs, pooled.failures, pooled.outcomes) == (5, 0, "PPPPP")
    assert pooled.pooled == {
        "runs": 11,
        "failures": 0,
        "matrix_runs": 3,
        "since": "2026-11-27T00:00:00+00:00",
    }
    assert "5 from this run, 6 from 2 earlier" in (pooled.decision or "")


def test_a_flake_too_rare_for_one_night_is_caught_by_the_pooled_runs():
    """Each night alone: 1 failure in 5 decides nothing; three nights pooled reject 'safe'."""
    night = {**REPORT, "runs": [[result("boot", s)] for s in ("pass",) * 4 + ("fail",)]}
    (alone,) = judge_scenarios(night, RULE)
    assert alone.status is Status.INCONCLUSIVE
    prior = Prior("k1", "2026-11-26T00:00:00+00:00", {"boot": "PPPPF" * 2}, {"boot": 2})
    (pooled,) = judge_scenarios(night, dataclasses.replace(RULE, prior_runs=10), prior)
    assert (pooled.pooled or {})["failures"] == 3
    assert pooled.status is Status.FLAKY
    assert pooled.interval is not None and pooled.interval[0] <= 0.2 <= pooled.interval[1]


def test_a_scenario_its_earlier_runs_decided_is_judged_on_them_without_running():
    report = {**REPORT, "runs": [], "decisions": {"boot": "safe"}}
    prior = Prior("k1", "2026-11-27T00:00:00+00:00", {"boot": "P" * 11}, {"boot": 2})
    (boot,) = judge_scenarios(report, dataclasses.replace(RULE, prior_runs=11), prior)
    assert (boot.status, boot.runs, boot.outcomes, boot.logs) == (Status.SAFE, 0, "", {})
    assert (boot.pooled or {})["runs"] == 11


def test_the_cell_names_its_experiment():
    report = {**REPORT, "runs": [[result("boot", "pass")]] * 3}
    prior = Prior("0123456789abcdef", "2026-11-27T00:00:00+00:00")
    cell = judge_cell(_cell(), BUILT, SmokeRun("debian-12-release", report, rule=RULE), {}, prior)
    assert cell.evidence == {"key": "0123456789abcdef", "since": "2026-11-27T00:00:00+00:00"}
    no_prior = judge_cell(_cell(), BUILT, SmokeRun("debian-12-release", report, rule=RULE), {})
    assert no_prior.evidence is None and no_prior.scenarios[0].pooled is None


def _cell():
    _, cells = load(ROOT / "matrix.yaml")
    return next(c for c in cells if c.id == "debian-12-release")
