"""The bisection's search and its candidates, without Docker (each step is stubbed here; the
integration test runs real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import ConfigurationError, UnsafeCells
from harness.tools.bisect import Candidate, Step, bisect


def search(statuses):
    found = [Candidate(str(i), {}, {}) for i in range(len(statuses))]
    tested = []

    def test(index, candidate):
        tested.append(index)
        return Step(candidate, statuses[index], "evidence", Path("/tmp"))

    last_safe, first_failing, steps = bisect(found, test)
    return (
        last_safe and int(last_safe.candidate.label),
        first_failing and int(first_failing.candidate.label),
        tested,
    )


@pytest.mark.parametrize("first_bad", range(1, 9))
def test_the_first_failing_version_is_found_in_few_steps(first_bad):
    statuses = ["safe"] * first_bad + ["broken"] * (9 - first_bad)
    last_safe, first_failing, tested = search(statuses)
    assert (last_safe, first_failing) == (first_bad - 1, first_bad)
    assert tested[:2] == [0, 8]  # the ends first
    assert len(tested) <= 2 + 3  # then halves: log2(9) rounded up


def test_flaky_counts_as_failing():
    assert search(["safe", "safe", "flaky", "broken"])[:2] == (1, 2)


def test_no_transition_is_said_plainly():
    assert search(["safe", "safe", "safe"])[:2] == (2, None)
    assert search(["broken", "broken"])[:2] == (None, 0)


def test_an_undecided_step_stops_the_search():
    with pytest.raises(UnsafeCells, match="cannot decide at 2: inconclusive"):
        search(["safe", "safe", "inconclusive", "broken", "broken"])


def test_one_candidate_is_not_enough():
    with pytest.raises(ConfigurationError, match="at least two"):
        search(["safe"])
