"""Text for messages and commands: one-line reasons, "did you mean", YAML paths, shell words."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable

Loc = tuple[str | int, ...]


def one_line(value: object, limit: int | None = 300) -> str:
    """A message (often an exception's) on one line, whitespace collapsed, cut at `limit`."""
    return " ".join(str(value).split())[:limit]


def clip(value: object, width: int = 60) -> str:
    """repr() of a value, shortened: a message stays one readable line whatever the value."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(loc: Loc) -> str:
    """A YAML location as a path: cells[3].libvirt.source."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def shell(value: object) -> str:
    """One word of a shell command line, quoted."""
    return shlex.quote(str(value))
