"""When a scenario has run often enough, and what its failure rate is: Wald's sequential
probability ratio test (SPRT) decides, a 95% Wilson score interval reports the rate.

Each run of a scenario is a Bernoulli trial that fails with an unknown rate p. Two SPRTs watch
the same runs, both with the policy's rates p0 < p1 <= 0.5 and alpha = beta = 1 - confidence:

- on failures: H0 p <= p0 ("safe") against H1 p >= p1. Each failure adds ln(p1/p0) to the log
  likelihood ratio, each pass ln((1-p1)/(1-p0)); it accepts H0 once the ratio is <= ln(beta/(1-alpha))
  and rejects it once it is >= ln((1-beta)/alpha).
- mirrored on passes: H0 p >= 1-p0 ("broken") against H1 p <= 1-p1, the same test with passes
  and failures swapped.

A test decides once, the first time its ratio leaves the band, and keeps that decision (Wald's
error bounds hold for the first crossing only). The scenario is `safe` as soon as the first test
accepts, `broken` as soon as the second accepts, `flaky` once both have rejected, and
`inconclusive` if max_runs is reached before any of these. No test decides before min_runs.

Both tests compare the log likelihood ratio, which is linear in the failure count k after n runs,
with constants, so each reduces to two integers per n: the largest k that accepts the first test
and the smallest k that rejects it (the mirrored test uses the same two on n - k). That table is
the stop rule the container runner gets as JSON: it cannot import this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Policy

SAFE, FLAKY, BROKEN = "safe", "flaky", "broken"
# Ties of the ratio with a boundary count as crossing it; this absorbs rounding only.
EPSILON = 1e-9


def wilson_interval(failures: int, runs: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927; Newcombe 1998, method 3) of a failure rate."""
    if runs <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = failures / runs
    denominator = 1 + z * z / runs
    centre = (rate + z * z / (2 * runs)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / runs + z * z / (4 * runs * runs)) / denominator
    # At 0 or n failures one end is exactly 0 or 1; the formula only gets there up to rounding.
    low = 0.0 if failures == 0 else max(0.0, centre - half)
    high = 1.0 if failures == runs else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Sprt:
    """Wald's SPRT of H0 p = p0 against H1 p = p1 (p0 < p1) on a count of failures."""

    p0: float
    p1: float
    alpha: float
    beta: float

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def fail_step(self) -> float:
        return math.log(self.p1 / self.p0)

    @property
    def pass_step(self) -> float:
        return math.log((1 - self.p1) / (1 - self.p0))

    def llr(self, runs: int, failures: int) -> float:
        return failures * self.fail_step + (runs - failures) * self.pass_step

    def accept_at_most(self, runs: int) -> int:
        """The largest failure count after `runs` runs that accepts H0; -1 if none does."""
        # llr = k * (fail_step - pass_step) + runs * pass_step <= lower
        bound = (self.lower - runs * self.pass_step) / (self.fail_step - self.pass_step)
        return max(-1, min(runs, math.floor(bound + EPSILON)))

    def reject_at_least(self, runs: int) -> int:
        """The smallest failure count after `runs` runs that rejects H0; runs + 1 if none does."""
        bound = (self.upper - runs * self.pass_step) / (self.fail_step - self.pass_step)
        return min(runs + 1, max(0, math.ceil(bound - EPSILON)))


@dataclass(frozen=True)
class Decision:
    status: str | None  # safe, flaky, broken; None: no decision yet
    runs: int
    failures: int
    # The test on failures, when it has decided: "accept" (safe) or "reject" (never safe now).
    failures_test: str | None = None


@dataclass(frozen=True)
class StopRule:
    """The policy's sequential test, with its table of failure counts per run count."""

    safe_rate: float
    unsafe_rate: float
    confidence: float
    min_runs: int
    max_runs: int
    # Runs of the same experiment from earlier runs of the matrix that the test starts from (the
    # most any scenario has): the table reaches max_runs beyond them, max_runs stays what one
    # run may add.
    prior_runs: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.safe_rate < self.unsafe_rate <= 0.5:
            raise ValueError("the rates must satisfy 0 < safe_rate < unsafe_rate <= 0.5")
        if not 0.5 <= self.confidence < 1:
            raise ValueError("confidence must be at least 0.5 and below 1")
        if not 1 <= self.min_runs <= self.max_runs:
            raise ValueError("runs must satisfy 1 <= min_runs <= max_runs")
        if self.prior_runs < 0:
            raise ValueError("prior_runs must not be negative")

    @classmethod
    def from_policy(cls, policy: Policy, runs: int | None = None) -> StopRule:
        """The policy's rule; `runs` (the CLI's --runs, else the policy's) fixes the count:
        every scenario runs exactly that often and is judged at its last run."""
        fixed = runs or policy.runs
        return cls(
            safe_rate=policy.safe_failure_rate,
            unsafe_rate=policy.unsafe_failure_rate,
            confidence=policy.confidence,
            min_runs=fixed or policy.min_runs,
            max_runs=fixed or policy.max_runs,
        )

    @property
    def limit(self) -> int:
        """The most runs the test ever looks at: the earlier ones and this run's."""
        return self.max_runs + self.prior_runs

    @property
    def sprt(self) -> Sprt:
        error = 1 - self.confidence
        return Sprt(self.safe_rate, self.unsafe_rate, error, error)

    def table(self) -> list[tuple[int, int]]:
        """Per run count n = 1..max_runs: (accept at most, reject at least) failures."""
        test = self.sprt
        return [
            (test.accept_at_most(n), test.reject_at_least(n))
            if n >= self.min_runs
            else (-1, n + 1)  # no decision before min_runs
            for n in range(1, self.limit + 1)
        ]

    def to_json(self) -> dict[str, object]:
        """What the container runner needs to stop: the table, and the policy for its report."""
        table = self.table()
        return {
            "safe_rate": self.safe_rate,
            "unsafe_rate": self.unsafe_rate,
            "confidence": self.confidence,
            "min_runs": self.min_runs,
            "max_runs": self.max_runs,
            "prior_runs": self.prior_runs,
            "accept": [a for a, _ in table],
            "reject": [r for _, r in table],
        }

    def walk(self, failed: Iterable[bool]) -> Decision:
        """The decision over a scenario's runs in order (True: that run failed)."""
        table = self.table()
        failures_test: str | None = None  # "accept" (safe) or "reject"
        passes_test: str | None = None  # "accept" (broken) or "reject"
        runs = failures = 0
        for outcome in failed:
            if runs == self.limit:
                break
            runs += 1
            failures += bool(outcome)
            accept, reject = table[runs - 1]
            failures_test = failures_test or _crossed(failures, accept, reject)
            passes_test = passes_test or _crossed(runs - failures, accept, reject)
            status = _status(failures_test, passes_test)
            if status:
                return Decision(status, runs, failures)
        return Decision(None, runs, failures, failures_test)

    def describe(self, decision: Decision) -> str:
        """One line: why the scenario got its status."""
        p0, p1 = _rate(self.safe_rate), _rate(self.unsafe_rate)
        q0, q1 = _rate(1 - self.safe_rate), _rate(1 - self.unsafe_rate)
        counts = f"{decision.failures} of {decision.runs} runs failed"
        level = f"at {_rate(self.confidence)} confidence"
        if decision.status == SAFE:
            return f"SPRT accepted p<={p0} against p>={p1} {level}: {counts}"
        if decision.status == BROKEN:
            return f"SPRT accepted p>={q0} against p<={q1} {level}: {counts}"
        if decision.status == FLAKY:
            return f"SPRT rejected both p<={p0} and p>={q0} {level}: {counts}"
        if decision.failures_test == "reject":
            # Failing too often to be safe already: what is open is flaky or broken.
            counts += f", too many to be safe (SPRT rejected p<={p0})"
            more, to_be = self.failing_runs_to_broken(decision), "all failing, to be broken"
        else:
            more, to_be = self.clean_runs_to_safe(decision), "all passing, to be safe"
        plural = "s" if more != 1 else ""
        needs = f"; needs at least {more} more run{plural}, {to_be}" if more else ""
        if self.prior_runs:
            return f"no decision yet: {counts}{needs}"
        if decision.runs >= self.max_runs:
            return f"no decision within max_runs={self.max_runs}: {counts}{needs}"
        return f"no decision, stopped before max_runs={self.max_runs}: {counts}{needs}"

    def clean_runs_to_safe(self, decision: Decision, most: int = 100_000) -> int | None:
        """How many more runs, none failing, would make an undecided scenario safe (the fewest
        it needs); None when it has decided, or no count up to `most` would."""
        if decision.status is not None or decision.failures_test == "reject":
            return None
        return self._runs_to_accept(decision, decision.failures, most)

    def failing_runs_to_broken(self, decision: Decision, most: int = 100_000) -> int | None:
        """How many more runs, all failing, would make an undecided scenario broken (the test
        on passes is the test on failures mirrored); None when it has decided, or none would."""
        if decision.status is not None:
            return None
        return self._runs_to_accept(decision, decision.runs - decision.failures, most)

    def _runs_to_accept(self, decision: Decision, count: int, most: int) -> int | None:
        """The fewest more runs, none adding to `count`, after which the test accepts on it."""
        test = self.sprt
        start = max(decision.runs + 1, self.min_runs)
        for runs in range(start, decision.runs + most + 1):
            if count <= test.accept_at_most(runs):
                return runs - decision.runs
        return None

    def outcomes(self, rate: float) -> list[tuple[Decision, float]]:
        """Every way the test can end when the true failure rate is `rate`, with its probability."""
        table = self.table()
        # (failures, failures test, passes test) -> probability, over the undecided paths.
        paths: dict[tuple[int, str | None, str | None], float] = {(0, None, None): 1.0}
        ends: list[tuple[Decision, float]] = []
        for runs in range(1, self.max_runs + 1):
            accept, reject = table[runs - 1]
            following: dict[tuple[int, str | None, str | None], float] = {}
            for (failures, f_test, p_test), chance in paths.items():
                for failed, weight in ((True, rate), (False, 1 - rate)):
                    if weight == 0:
                        continue
                    k = failures + failed
                    f_next = f_test or _crossed(k, accept, reject)
                    p_next = p_test or _crossed(runs - k, accept, reject)
                    status = _status(f_next, p_next)
                    if status:
                        ends.append((Decision(status, runs, k), chance * weight))
                    else:
                        key = (k, f_next, p_next)
                        following[key] = following.get(key, 0.0) + chance * weight
            paths = following
        ends += [(Decision(None, self.max_runs, k), chance) for (k, _, _), chance in paths.items()]
        return ends

    def characteristic(self, rate: float) -> dict[str, float]:
        """The chance of each status when the true failure rate is `rate`, and the mean runs."""
        summary = {SAFE: 0.0, FLAKY: 0.0, BROKEN: 0.0, "inconclusive": 0.0, "mean_runs": 0.0}
        for decision, chance in self.outcomes(rate):
            summary[decision.status or "inconclusive"] += chance
            summary["mean_runs"] += chance * decision.runs
        return summary


def _crossed(count: int, accept: int, reject: int) -> str | None:
    if count <= accept:
        return "accept"
    if count >= reject:
        return "reject"
    return None


def _status(failures_test: str | None, passes_test: str | None) -> str | None:
    if failures_test == "accept":
        return SAFE
    if passes_test == "accept":
        return BROKEN
    if failures_test == "reject" and passes_test == "reject":
        return FLAKY
    return None


def _rate(value: float) -> str:
    return f"{value:.4g}"
