"""What a policy calls a scenario when its runs pool across nights (README, "Verdicts").

Pooled evidence is one sequential test over the runs of all nights in order, each night adding
at most the policy's max_runs: after k nights it is the policy's test cut at k * max_runs runs.
So the operating characteristic after one night, two and a week is computed exactly, from the
real stop rule (StopRule.characteristic), for each true failure rate.

    python3 benchmarks/pooled.py [--p0 P0 --p1 P1 --confidence C --budget N]

The defaults are the policy of the default matrix (matrix.yaml).

Prints, per true failure rate, the chance of each status and the mean runs, after 1 night, 2
and 7 (a week), and how many clean runs make a scenario safe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.core.stats import StopRule  # noqa: E402
from harness.matrix.load import load  # noqa: E402

MATRIX = Path(__file__).resolve().parent.parent / "matrix.yaml"

RATES = (0.0, 0.01, 0.05, 0.10, 0.20, 0.50, 0.90, 1.0)


def table(rule: StopRule, nights: int) -> list[str]:
    cut = StopRule(
        rule.safe_rate, rule.unsafe_rate, rule.confidence, rule.min_runs, nights * rule.max_runs
    )
    rows = [
        f"after {nights} night{'s' if nights > 1 else ''} (at most {cut.max_runs} runs):",
        "| true rate | safe | flaky | broken | inconclusive | flagged | mean runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in RATES:
        c = cut.characteristic(rate)
        flagged = c["flaky"] + c["broken"]
        rows.append(
            f"| {rate:.2f} | {c['safe']:.1%} | {c['flaky']:.1%} | {c['broken']:.1%} |"
            f" {c['inconclusive']:.1%} | {flagged:.1%} | {c['mean_runs']:.1f} |"
        )
    return rows


def main() -> None:
    policy = load(str(MATRIX))[0].policy
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--p0", type=float, default=policy.safe_failure_rate)
    options.add_argument("--p1", type=float, default=policy.unsafe_failure_rate)
    options.add_argument("--confidence", type=float, default=policy.confidence)
    options.add_argument(
        "--budget", type=int, default=policy.max_runs, help="max_runs: runs a night adds"
    )
    args = options.parse_args()
    rule = StopRule(args.p0, args.p1, args.confidence, 1, args.budget)
    clean = StopRule(args.p0, args.p1, args.confidence, 1, 100_000).walk([False] * 100_000).runs
    print(
        f"policy p0 {args.p0}, p1 {args.p1}, confidence {args.confidence}, {args.budget} runs a"
        f" night; a clean scenario is safe after {clean} runs"
    )
    for nights in (1, 2, 7):
        print("\n".join(table(rule, nights)) + "\n")


if __name__ == "__main__":
    main()
