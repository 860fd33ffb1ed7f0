"""Chooses which cells run: the same shell-style patterns for every task and for CI."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from .errors import ConfigurationError
from .load import did_you_mean
from .model import Cell


def split_patterns(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def select(
    cells: Sequence[Cell],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> tuple[Cell, ...]:
    """Cells whose id matches any include pattern (all when none) and no exclude pattern."""
    includes, excludes = split_patterns(include), split_patterns(exclude)
    ids = [c.id for c in cells]
    problems = [
        f"--cells {pattern!r} matches no cell{suggest(pattern, ids)}; cells: {', '.join(ids)}"
        for pattern in includes
        if not fnmatch.filter(ids, pattern)
    ]
    if problems:
        raise ConfigurationError(problems)
    chosen = tuple(
        c
        for c in cells
        if (not includes or any(fnmatch.fnmatchcase(c.id, p) for p in includes))
        and not any(fnmatch.fnmatchcase(c.id, p) for p in excludes)
    )
    if not chosen:
        raise ConfigurationError("the cell selection is empty after --exclude")
    return chosen


def suggest(pattern: str, ids: list[str]) -> str:
    """'did you mean' for a pattern: a trailing-star pattern is compared with id prefixes."""
    if pattern.endswith("*") and "*" not in pattern[:-1]:
        stem = pattern[:-1]
        close = did_you_mean(stem, sorted({i[: len(stem)] for i in ids}))
        return close.replace("'?)", "*'?)")
    return did_you_mean(pattern, ids)
