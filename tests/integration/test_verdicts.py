"""Verdicts end to end: real cells, one of them with a fault injected at random, judged by the
sequential test (no mocks).

tests/integration/data/verdicts.yaml has three Debian 12 cells that run only `boot`: a clean one,
one whose libvirt QEMU hook fails 30% of guest starts at random (19661 of the hook's 65536
draws: p = 0.300003), and one whose hook fails every start. The hook logs each draw, so the
test also checks that the failures counted are exactly the faults injected.

Only the flaky cell's outcome is random, and only `flaky_cell_as_expected` checks it: `flaky`,
decided before max_runs, with 0.3 inside the 99.99% Wilson interval of what it counted. That
fails by chance with probability 0.0475% (1 in 2100): the sequential test calls a 30% scenario
safe (0.0409%) or runs out of runs (0.0014%), decides only at run 60 (0.0003%), or stops where
the interval misses 0.3 (0.0048%). `test_the_chance_of_a_false_alarm_is_as_documented` sums
that exactly over every way the test can end (StopRule.outcomes). Everything else the tests
assert is exact: the counts against the hook's log, the reported 95% interval, the clean and
the always-failing cells.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest

from harness.core.stats import StopRule, wilson_interval
from harness.matrix.load import load
from harness.stages.judge import outward
from tests.cli import ROOT, invoke

pytestmark = pytest.mark.integration

MATRIX = ROOT / "tests" / "integration" / "data" / "verdicts.yaml"
FAULT_RATE = 19661 / 65536  # the hook fails when a 16-bit draw * 100 < 30 * 65536
# The flaky cell's interval check: wide enough that it adds only 0.0048% to the chance.
CHECK_CONFIDENCE = 0.9999
DOCUMENTED_CHANCE_OF_FAILING = 0.000475


@functools.cache
def rule() -> StopRule:
    matrix, _ = load(str(MATRIX))
    return StopRule.from_policy(matrix.policy)


def flaky_cell_as_expected(status: str | None, runs: int, failures: int) -> bool:
    """The one random check: the 30% cell is flaky, decided before max_runs, with the true
    rate inside the CHECK_CONFIDENCE Wilson interval of its counts."""
    low, high = outward(*wilson_interval(failures, runs, CHECK_CONFIDENCE))
    return status == "flaky" and runs < rule().max_runs and low <= FAULT_RATE <= high


def test_the_chance_of_a_false_alarm_is_as_documented():
    outcomes = rule().outcomes(FAULT_RATE)
    assert sum(chance for _, chance in outcomes) == pytest.approx(1.0, abs=1e-12)
    chance_of_failing = sum(
        chance
        for decision, chance in outcomes
        if not flaky_cell_as_expected(decision.status, decision.runs, decision.failures)
    )
    assert chance_of_failing == pytest.approx(DOCUMENTED_CHANCE_OF_FAILING, abs=5e-7)
    assert chance_of_failing < 0.001  # CI must not fail one run in a thousand by chance
    # The parts the docstring names, and the cost the matrix's comment states.
    parts = rule().characteristic(FAULT_RATE)
    assert parts["safe"] == pytest.approx(0.000409, abs=5e-7)
    assert parts["inconclusive"] == pytest.approx(0.000014, abs=5e-7)
    assert parts["mean_runs"] == pytest.approx(8.0, abs=0.05)
    assert rule().walk([False] * 60).runs == rule().walk([True] * 60).runs == 22


@pytest.fixture(scope="module")
def run_result(engine, results_dir):
    started = time.monotonic()
    done = invoke(
        "matrix.run", "--matrix", str(MATRIX), "--accel", "tcg",
        results_dir=results_dir, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert (results_dir / "latest.json").exists(), done.stderr[-3000:]
    data = json.loads((results_dir / "latest.json").read_text())
    for cell in data["cells"]:  # log paths are relative to the results directory
        cell["log_dir"] = str(results_dir / cell["log_dir"])
    # What the run decided, for the log of the test session (pytest -s, or -rA).
    print(f"\nverdicts run: {seconds:.0f} s")
    for cell in data["cells"]:
        for s in cell["scenarios"]:
            print(
                f"  {cell['id']:<16} {cell['status']:<8} {s['name']}: {s['status']}, "
                f"{s['failures']}/{s['runs']} failed, rate {s['failure_rate']}, "
                f"95% interval {s['interval']}; {s['decision']}"
            )
    return done, data


def cell_of(data, cell_id):
    (cell,) = [c for c in data["cells"] if c["id"] == cell_id]
    return cell


def hook_draws(cell) -> list[str]:
    """The hook's log from the cell's logs: one line per guest start, 'NAME pass|fail DRAW'."""
    path = Path(cell["log_dir"]) / "libvirt-hvgate-fault.log"
    return [line.split()[1] for line in path.read_text().splitlines()]


def test_run_exits_one_for_the_unsafe_cells(run_result):
    done, _ = run_result
    assert done.returncode == 1, done.stderr[-3000:]
    unsafe = [line for line in done.stderr.splitlines() if line.startswith("not safe:")]
    assert unsafe and "verdicts-flaky" in unsafe[0] and "verdicts-broken" in unsafe[0]
    assert "verdicts-clean" not in unsafe[0]
    assert "Traceback" not in done.stderr


def test_clean_cell_is_safe_after_the_fewest_runs(run_result):
    _, data = run_result
    cell = cell_of(data, "verdicts-clean")
    (boot,) = cell["scenarios"]
    assert cell["status"] == boot["status"] == "safe", (boot["messages"], boot["logs"])
    # 22 clean runs: the first n with n * ln(0.8/0.99) <= ln(0.01/0.99), and not one more.
    assert (boot["runs"], boot["failures"], boot["errors"]) == (22, 0, 0)
    assert boot["runs"] == rule().walk([False] * 60).runs
    assert boot["failure_rate"] == 0.0
    assert boot["interval"][0] == 0.0 and 0.14 < boot["interval"][1] < 0.15  # 3.84/(22+3.84)
    assert boot["decision"].startswith("SPRT accepted p<=0.01 against p>=0.2 ")
    assert not (Path(cell["log_dir"]) / "libvirt-hvgate-fault.log").exists()


def test_fault_cell_is_flaky_with_the_true_rate_inside_the_interval(run_result):
    _, data = run_result
    cell = cell_of(data, "verdicts-flaky")
    (boot,) = cell["scenarios"]
    # The random part, whose chance of failing the module's docstring gives.
    assert flaky_cell_as_expected(boot["status"], boot["runs"], boot["failures"]), boot
    # The rest is exact: the cell's status is its one scenario's, and says why.
    assert cell["status"] == boot["status"] == "flaky", boot
    assert boot["decision"].startswith("SPRT rejected both")
    # Every failure is an injected fault, and every fault a failure; no run was the runner's.
    draws = hook_draws(cell)
    assert len(draws) == boot["runs"]
    assert draws.count("fail") == boot["failures"] > 0
    assert boot["errors"] == 0
    # It stops exactly where the sequential test over the hook's draws stops.
    assert boot["runs"] == rule().walk(d == "fail" for d in draws).runs
    assert any("hook" in message.lower() for message in boot["messages"]), boot["messages"]
    # What it reports is its counts' rate and 95% Wilson interval, rounded outwards.
    assert boot["failure_rate"] == round(boot["failures"] / boot["runs"], 4)
    assert boot["interval"] == outward(*wilson_interval(boot["failures"], boot["runs"]))


def test_always_failing_cell_is_broken(run_result):
    _, data = run_result
    cell = cell_of(data, "verdicts-broken")
    (boot,) = cell["scenarios"]
    assert cell["status"] == boot["status"] == "broken", boot
    assert (boot["runs"], boot["failures"], boot["errors"]) == (22, 22, 0)
    assert hook_draws(cell) == ["fail"] * 22
    assert boot["decision"].startswith("SPRT accepted p>=0.99 against p<=0.8 ")
    assert boot["interval"][1] == 1.0
    assert cell["reason"].startswith("boot: ")


def test_each_result_records_what_it_ran_on(run_result):
    _, data = run_result
    assert data["run_id"] and data["started"] and data["finished"]
    for cell in data["cells"]:
        assert cell["versions"]["libvirt-daemon"].startswith("9.0.0-")
        assert ":7.2+dfsg" in cell["versions"]["qemu-system-x86"]
        assert cell["versions"]["python3-libvirt"]
        assert cell["accel"] == "tcg" and cell["accel_reason"]
        assert cell["kernel"] and cell["guest_kernel"]
        assert cell["duration_s"] > 0
