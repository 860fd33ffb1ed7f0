"""harness.core.stats: Wilson intervals against published values, SPRT boundaries worked out by hand."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from harness.core.model import Policy
from harness.core.stats import Decision, Sprt, StopRule, wilson_interval

# --- Wilson score interval ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "runs", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison
        # of seven methods", Statistics in Medicine 17:857-872, Table II, method 3 (score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(failures, runs, low, high):
    got = wilson_interval(failures, runs)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_by_hand():
    # 1 of 2, z = 1.959964: centre (0.5 + z²/4) / (1 + z²/2) = 0.5 by symmetry,
    # half = z * sqrt(0.25/2 + z²/16) / (1 + z²/2) = 1.959964 * 0.6264 / 2.920729 = 0.4203
    low, high = wilson_interval(1, 2)
    assert (low, high) == pytest.approx((0.0945, 0.9055), abs=5e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing observed: anything goes
    assert wilson_interval(0, 11)[0] == 0.0  # exactly, not a rounding residue
    assert wilson_interval(11, 11)[1] == 1.0
    # Failures and passes are symmetric.
    low, high = wilson_interval(3, 10)
    assert wilson_interval(7, 10) == pytest.approx((1 - high, 1 - low))
    # A higher confidence widens it; more runs at the same rate narrow it.
    assert wilson_interval(3, 10, 0.99)[0] < low and wilson_interval(3, 10, 0.99)[1] > high
    narrower = wilson_interval(30, 100)
    assert narrower[0] > low and narrower[1] < high


# --- Wald's SPRT ----------------------------------------------------------------------------

# p0 = 0.01 against p1 = 0.25, alpha = beta = 0.05, the default policy's test, by hand:
#   boundaries ln(0.05/0.95) = -2.944439 and ln(0.95/0.05) = +2.944439
#   a failure adds ln(0.25/0.01) = 3.218876, a pass ln(0.75/0.99) = -0.277632
# Accept after n runs with k failures when k*3.496508 <= -2.944439 + 0.277632*n:
#   n=10: -0.168 -> no k; n=11: 0.109/3.4965 = 0.03 -> k=0; n=24: 3.719/3.4965 = 1.06 -> k<=1.
# Reject when k*3.496508 >= 2.944439 + 0.277632*n:
#   n=1: 3.222/3.4965 = 0.92 -> k>=1; n=2: 3.4997/3.4965 = 1.0009 -> k>=2;
#   n=14: 6.831/3.4965 = 1.954 -> k>=2; n=15: 7.109/3.4965 = 2.033 -> k>=3.
DEFAULT = Sprt(p0=0.01, p1=0.25, alpha=0.05, beta=0.05)


def test_sprt_constants_by_hand():
    assert DEFAULT.lower == pytest.approx(-2.944439, abs=1e-6)
    assert DEFAULT.upper == pytest.approx(2.944439, abs=1e-6)
    assert DEFAULT.fail_step == pytest.approx(3.218876, abs=1e-6)
    assert DEFAULT.pass_step == pytest.approx(-0.277632, abs=1e-6)
    assert DEFAULT.llr(11, 0) == pytest.approx(-3.053949, abs=1e-6)


@pytest.mark.parametrize(
    ("runs", "accept", "reject"),
    [
        (1, -1, 1),
        (2, -1, 2),
        (10, -1, 2),
        (11, 0, 2),
        (14, 0, 2),
        (15, 0, 3),
        (23, 0, 3),
        (24, 1, 3),
    ],
)
def test_sprt_boundaries_by_hand(runs, accept, reject):
    assert DEFAULT.accept_at_most(runs) == accept
    assert DEFAULT.reject_at_least(runs) == reject


@pytest.mark.parametrize(
    ("p0", "p1", "alpha"), [(0.01, 0.25, 0.05), (0.05, 0.5, 0.01), (0.001, 0.1, 0.1)]
)
def test_sprt_boundaries_agree_with_the_ratio(p0, p1, alpha):
    test = Sprt(p0, p1, alpha, alpha)
    for n in range(1, 60):
        accept, reject = test.accept_at_most(n), test.reject_at_least(n)
        for k in range(n + 1):
            assert (k <= accept) == (test.llr(n, k) <= test.lower + 1e-9), (n, k)
            assert (k >= reject) == (test.llr(n, k) >= test.upper - 1e-9), (n, k)


@pytest.mark.parametrize(("p0", "p1", "confidence"), [(0.01, 0.25, 0.95), (0.01, 0.2, 0.99)])
def test_clean_runs_needed_match_the_closed_form(p0, p1, confidence):
    # With no failure the ratio falls by ln((1-p1)/(1-p0)) per run: n >= ln(beta/(1-alpha)) / that.
    error = 1 - confidence
    needed = math.ceil(math.log(error / (1 - error)) / math.log((1 - p1) / (1 - p0)))
    rule = StopRule(p0, p1, confidence, 1, 100)
    clean, failing = rule.walk([False] * 100), rule.walk([True] * 100)
    assert (clean.status, clean.runs) == ("safe", needed)
    # The mirrored test needs as many failures in a row for "broken".
    assert (failing.status, failing.runs) == ("broken", needed)


# --- the stop rule --------------------------------------------------------------------------

RULE = StopRule(0.01, 0.25, 0.95, min_runs=1, max_runs=30)


def test_walk_flaky_as_soon_as_both_tests_reject():
    # Run 1 fails: 1 >= reject(1) = 1 rejects "safe". Runs 2 and 3 pass: 2 passes >= reject(3)
    # = 2 rejects "broken"; both rejected: flaky after 3 runs.
    decision = RULE.walk([True, False, False, True, True])
    assert (decision.status, decision.runs, decision.failures) == ("flaky", 3, 1)


def test_walk_keeps_each_tests_first_decision():
    # The same counts in another order: after pass, fail (n=2, k=1) nothing has crossed
    # (reject(2) = 2), and at n=3 only "broken" is rejected, so the walk goes on.
    assert RULE.walk([False, True, False]).status is None
    # One failure early rejects "safe" for good: eleven passes later it is flaky, not safe.
    assert RULE.walk([True] + [False] * 11).status == "flaky"
    # A failure after the rate had nearly proved safe: 1 failure in 24 runs accepts.
    assert RULE.walk([False] * 3 + [True] + [False] * 30) == RULE.walk(
        [False] * 3 + [True] + [False] * 20
    )
    assert RULE.walk([False] * 3 + [True] + [False] * 20).status == "safe"
    assert RULE.walk([False] * 3 + [True] + [False] * 20).runs == 24


def test_walk_stops_at_max_runs():
    rule = StopRule(0.01, 0.25, 0.95, min_runs=1, max_runs=5)
    decision = rule.walk([False] * 20)
    assert (decision.status, decision.runs) == (None, 5)
    assert rule.describe(decision) == (
        "no decision within max_runs=5: 0 of 5 runs failed;"
        " needs at least 6 more runs, all passing, to be safe"
    )
    assert rule.describe(rule.walk([False] * 2)).startswith("no decision, stopped before")


def test_a_scenario_failing_every_run_is_told_not_safe_before_it_is_broken():
    # The default policy (p0 0.01, p1 0.1) mirrors its 31 clean runs to safe on the passes:
    # broken needs 31 failing runs. Until then the scenario is undecided, but its failures have
    # already ruled out safe, and the line says so, and what would make it broken.
    rule = StopRule(0.01, 0.1, 0.95, min_runs=1, max_runs=16, prior_runs=10)
    decision = rule.walk([True] * 20)
    assert (decision.status, decision.failures_test) == (None, "reject")
    assert rule.clean_runs_to_safe(decision) is None
    assert rule.failing_runs_to_broken(decision) == 11
    assert rule.describe(decision) == (
        "no decision yet: 20 of 20 runs failed, too many to be safe (SPRT rejected p<=0.01);"
        " needs at least 11 more runs, all failing, to be broken"
    )
    # The next night adds up to 16 runs to the 20: 11 failing ones make it broken.
    following = StopRule(0.01, 0.1, 0.95, min_runs=1, max_runs=16, prior_runs=20)
    assert following.walk([True] * 36) == Decision("broken", 31, 31)
    assert following.failing_runs_to_broken(following.walk([True] * 36)) is None
    # A clean scenario's line is unchanged.
    assert rule.describe(rule.walk([False] * 20)) == (
        "no decision yet: 0 of 20 runs failed; needs at least 11 more runs, all passing, to be safe"
    )


def test_no_decision_before_min_runs():
    rule = StopRule(0.01, 0.25, 0.95, min_runs=4, max_runs=30)
    assert rule.table()[:3] == [(-1, 2), (-1, 3), (-1, 4)]
    # Failing run 1 rejects "safe" when the tests look from run 1 on (flaky after 3 runs); from
    # run 4 on, 1 failure in 4 runs is inside the band, and 1 in 24 accepts "safe".
    runs = [True] + [False] * 29
    assert (RULE.walk(runs).status, RULE.walk(runs).runs) == ("flaky", 3)
    assert (rule.walk(runs).status, rule.walk(runs).runs) == ("safe", 24)


def test_from_policy_and_a_fixed_count():
    policy = Policy()
    rule = StopRule.from_policy(policy)
    assert (rule.safe_rate, rule.unsafe_rate, rule.confidence) == (0.01, 0.1, 0.95)
    assert (rule.min_runs, rule.max_runs) == (1, 16)
    fixed = StopRule.from_policy(policy, runs=3)
    assert (fixed.min_runs, fixed.max_runs) == (3, 3)
    assert StopRule.from_policy(Policy(runs=12)).max_runs == 12
    # A fixed count is judged at its last run only.
    assert fixed.walk([True, False, False]).status is None
    assert StopRule.from_policy(policy, runs=31).walk([False] * 31).status == "safe"


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 0.25, 0.95, 1, 3),
        (0.3, 0.25, 0.95, 1, 3),
        (0.01, 0.6, 0.95, 1, 3),
        (0.01, 0.25, 1.0, 1, 3),
        (0.01, 0.25, 0.95, 4, 3),
    ],
)
def test_stop_rule_refuses_nonsense(args):
    with pytest.raises(ValueError):
        StopRule(*args)


def test_describe():
    assert RULE.describe(RULE.walk([False] * 11)) == (
        "SPRT accepted p<=0.01 against p>=0.25 at 0.95 confidence: 0 of 11 runs failed"
    )
    assert RULE.describe(RULE.walk([True] * 11)) == (
        "SPRT accepted p>=0.99 against p<=0.75 at 0.95 confidence: 11 of 11 runs failed"
    )
    assert RULE.describe(RULE.walk([True, False, False])) == (
        "SPRT rejected both p<=0.01 and p>=0.99 at 0.95 confidence: 1 of 3 runs failed"
    )


def test_to_json_is_the_table():
    data = RULE.to_json()
    assert data["accept"][:12] == [-1] * 10 + [0, 0]
    assert data["reject"][:3] == [1, 2, 2]
    assert len(data["accept"]) == len(data["reject"]) == 30


# --- operating characteristic ----------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_outcomes_add_up_to_one(rate):
    assert sum(chance for _, chance in RULE.outcomes(rate)) == pytest.approx(1.0)


def test_error_rates_are_within_walds_bounds():
    # Wald: P(not accepting H0 | p0) <= alpha / (1 - beta), P(accepting H0 | p1) <= beta / (1 - alpha).
    bound = 0.05 / 0.95
    at_p0 = RULE.characteristic(0.01)
    assert at_p0["flaky"] + at_p0["broken"] <= bound
    assert RULE.characteristic(0.25)["safe"] <= bound
    assert RULE.characteristic(0.75)["broken"] <= bound
    assert RULE.characteristic(0.0) == {
        "safe": 1.0,
        "flaky": 0.0,
        "broken": 0.0,
        "inconclusive": 0.0,
        "mean_runs": 11.0,
    }
    assert RULE.characteristic(1.0)["broken"] == 1.0


def test_outcomes_agree_with_simulated_walks():
    generator = random.Random(20261123)
    rate, trials = 0.3, 4000
    counts = {"safe": 0, "flaky": 0, "broken": 0, "inconclusive": 0}
    for _ in range(trials):
        decision = RULE.walk(generator.random() < rate for _ in range(RULE.max_runs))
        counts[decision.status or "inconclusive"] += 1
    expected = RULE.characteristic(rate)
    for status, count in counts.items():
        # Four standard errors: this seeded draw is fixed, the margin guards a changed generator.
        margin = 4 * math.sqrt(expected[status] * (1 - expected[status]) / trials) + 1e-9
        assert abs(count / trials - expected[status]) <= margin, status


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ({"safe_failure_rate": 0.3}, "safe_failure_rate must be below unsafe_failure_rate"),
        ({"runs": 3, "max_runs": 5}, "runs is a fixed count"),
        ({"min_runs": 6, "max_runs": 5}, "min_runs must not exceed max_runs"),
        ({"unsafe_failure_rate": 0.6}, "less than or equal to 0.5"),
        ({"confidence": 1}, "less than 1"),
    ],
)
def test_policy_refuses_a_test_that_cannot_work(policy, problem):
    with pytest.raises(ValidationError, match=problem):
        Policy(**policy)
