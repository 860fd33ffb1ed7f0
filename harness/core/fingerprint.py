"""A failure's fingerprint: one cause recognisable across cells and runs, whatever numbers,
ids, durations or temporary paths its message carried. Pure: standard library only."""

from __future__ import annotations

import hashlib
import re

# In order: the longer patterns first, so a UUID is not taken for five hex ids.
_PATTERNS = [
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", re.IGNORECASE), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<n>"),
    # Python's temporary names (tmpk3j_x9ab): random letters and digits together.
    (re.compile(r"\btmp[a-z0-9_]{6,}", re.IGNORECASE), "tmp<id>"),
    # Hex ids with a digit (boot 6af79a4a, a container id); numeric ones are the next rule's,
    # and get the same placeholder: a boot id may be either.
    (re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]*[0-9][0-9a-f]*\b", re.IGNORECASE), "<n>"),
    # Numbers, decimals and versions not glued to a word before them, so qcow2, x86 and
    # vda1 stay: counts, pids, exit codes, durations (30 s, 1.5s), #12.
    (re.compile(r"(?<![a-z0-9_])[0-9]+(?:\.[0-9]+)*", re.IGNORECASE), "<n>"),
]


def headline(message: str | None) -> str:
    """The line that names a failure: the first non-blank one, or for a Python traceback its
    last (the exception; its first line is the same for every traceback)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]


def normalise(message: str | None) -> str:
    """The headline with its variable parts replaced by placeholders, whitespace collapsed."""
    text = headline(message)
    for pattern, placeholder in _PATTERNS:
        text = pattern.sub(placeholder, text)
    return " ".join(text.split())


def fingerprint(scenario: str, error_class: str, message: str | None) -> str:
    """12 hex digits of sha256 over the scenario, the error class and the normalised message."""
    key = "\0".join((scenario, error_class, normalise(message)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
