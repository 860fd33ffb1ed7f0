"""Chooses which cells run: the same shell-style patterns for every task and for CI."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import TypeVar

from ..core.errors import ConfigurationError
from ..core.model import Cell
from ..core.text import did_you_mean

T = TypeVar("T")
SHARD = re.compile(r" *([0-9]+) */ *([0-9]+) *")


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


def parse_shard(value: str) -> tuple[int, int]:
    """(K, N) of a `--shard K/N` value: the K-th (1-based) of N shards."""
    match = SHARD.fullmatch(str(value))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConfigurationError(
            f"--shard {value!r}: use K/N with whole numbers 1 <= K <= N, e.g. --shard 2/3"
        )
    return int(match.group(1)), int(match.group(2))


def shard(items: Sequence[T], value: str | None) -> tuple[T, ...]:
    """The K-th of N contiguous slices of the selection, their sizes differing by at most one.

    Contiguous rather than round-robin: neighbours in the matrix share a base image, so a shard
    needs fewer bases. The same selection and K/N always give the same cells."""
    if value is None or value == "":
        return tuple(items)
    k, n = parse_shard(value)
    if n > len(items):
        raise ConfigurationError(
            f"--shard {value}: the selection has {len(items)} cell(s), fewer than {n} shards"
        )
    size, extra = divmod(len(items), n)
    start = (k - 1) * size + min(k - 1, extra)
    return tuple(items[start : start + size + (1 if k <= extra else 0)])
