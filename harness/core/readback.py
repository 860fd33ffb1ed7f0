"""Files the tool reads back (results, history, lock, a run's checkpoint) are input too: read with
a size limit as strict JSON (UTF-8, no duplicate keys, no NaN, bounded nesting), and every value
that becomes a path, a shell word, an apt file, Markdown or HTML held to a grammar. Problems are
InputError: one line naming the file and the field."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from .errors import InputError
from .model import (
    CODENAME_RE,
    DEB_PACKAGE_RE,
    DEB_VERSION_RE,
    IMAGE_REF_RE,
    NAME_RE,
    ORIGIN_SUITE_RE,
)
from .results import CellResult, FailureCause, RunResult, ScenarioResult, Status
from .text import clip, format_path, one_line

T = TypeVar("T")


def validated(validate: Callable[[Any], T], data: Any, path: Path | str, hint: str = "") -> T:
    """The document through a pydantic validator (a model's or a TypeAdapter's); InputError, one
    line naming the file and the first field that fails, otherwise."""
    try:
        return validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        advice = f" ({hint})" if hint else ""
        where = format_path(tuple(errors[0]["loc"]))
        raise InputError(
            f"{path}: {where}: {one_line(errors[0]['msg'], 200)}{more}{advice}"
        ) from None


MIB = 1 << 20
MAX_DEPTH = 32
# Grammars of identifiers: a run id names a directory, a cell id an image tag and file names.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CELL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RELEASE_RE = re.compile(r"[0-9a-z][0-9a-z.]{0,31}")
WORD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+~:-]{0,127}")
# ISO 8601 as the tool writes it; loose, as it only reaches text.
TIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:.+_-]{0,63}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{6,64}")
EVIDENCE_KEY_RE = re.compile(r"[0-9a-f]{16,64}")
# A scenario's outcomes in order: P passed, F failed.
OUTCOMES_RE = re.compile(r"[PF]{0,100000}")
# Characters that end or break a line somewhere, or rewrite a terminal: C0 and C1 controls
# (a tab aside) and Unicode line separators.
LINE_BREAKING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Free text (a reason, a runner's message) may span lines; no other control character.
TEXT_BREAKING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
MAX_LINE = 4000
MAX_TEXT = 100_000


class _Bad(Exception):
    """A value that breaks its grammar: where (a JSON path) and why."""

    def __init__(self, where: str, why: str):
        super().__init__(f"{where}: {why}" if where else why)


# --- strict JSON ----------------------------------------------------------------------------------


class _Duplicate(ValueError):
    pass


class NotJson(ValueError):
    """parse_json's refusal; `line` is where, when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(f"duplicate key {clip(key, 40)}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str) -> Any:
    """JSON as the tool writes it: no duplicate keys, NaN or Infinity, at most MAX_DEPTH levels.
    Raises NotJson, one line."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise NotJson(f"not JSON: {exc.msg}", exc.lineno) from None
    except _Duplicate as exc:
        raise NotJson(f"not JSON as hvgate writes it: {exc}") from None
    except ValueError as exc:
        raise NotJson(f"not JSON: {exc}") from None
    except RecursionError:
        raise NotJson(f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    if depth(data) > MAX_DEPTH:
        raise NotJson(f"nested too deeply (at most {MAX_DEPTH} levels)")
    return data


def depth(data: Any) -> int:
    """How deeply lists and objects nest (without recursion: the input may be hostile)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, level + 1) for item in items)
    return deepest


def read_text(path: Path, what: str, limit: int) -> str:
    """A file's UTF-8 text, refused when it is larger than `limit` bytes."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > limit:
        raise InputError(f"{path}: larger than {limit} bytes, not a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 (byte {exc.start}: {raw[exc.start]:#04x}), not a {what}"
        ) from None


def read_json(path: Path, what: str, limit: int) -> Any:
    """A file of strict JSON (see parse_json); InputError naming the file otherwise."""
    text = read_text(path, what, limit)
    try:
        return parse_json(text)
    except NotJson as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise InputError(f"{where}: {exc}") from None


# --- grammars -------------------------------------------------------------------------------------


def _where(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _match(pattern: re.Pattern[str], what: str) -> Callable[[Any, str], None]:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _Bad(where, f"{clip(value, 50)} is not a {what}")

    return check


def _optional(check: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    def optional(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)

    return optional


def line(value: Any, where: str) -> None:
    """One line of text: it stays one line (and one Markdown table cell) wherever it is printed."""
    if value is None or isinstance(value, bool | int | float):
        return
    if not isinstance(value, str):
        raise _Bad(where, "not a string")
    if len(value) > MAX_LINE:
        raise _Bad(where, f"longer than {MAX_LINE} characters")
    if found := LINE_BREAKING.search(value):
        raise _Bad(where, f"holds the control character U+{ord(found.group()):04X}")


def text(value: Any, where: str) -> None:
    """Free text (a reason, a message): lines, but no other control character."""
    if value is None:
        return
    if not isinstance(value, str):
        raise _Bad(where, "not a string")
    if len(value) > MAX_TEXT:
        raise _Bad(where, f"longer than {MAX_TEXT} characters")
    if found := TEXT_BREAKING.search(value):
        raise _Bad(where, f"holds the control character U+{ord(found.group()):04X}")


def anything(value: Any, where: str) -> None:
    """Logs and the runner's details: shown escaped, kept as they are."""


run_id = _match(RUN_ID_RE, "run id (letters, digits, '.', '_' and '-')")
cell_id = _match(CELL_ID_RE, "cell id (letters, digits, '.', '_' and '-')")
name = _match(NAME_RE, "name (lower-case letters, digits, . and -)")
word = _match(WORD_RE, "word (letters, digits and . _ + ~ : -)")
time = _match(TIME_RE, "time (ISO 8601, e.g. 2026-11-28T09:23:43+00:00)")
package = _match(DEB_PACKAGE_RE, "Debian package name")
version = _match(DEB_VERSION_RE, "Debian version")
suite = _match(ORIGIN_SUITE_RE, "suite name")
fingerprint = _match(FINGERPRINT_RE, "fingerprint (hex digits)")
status = _match(re.compile("|".join(re.escape(s) for s in Status)), "status")


def _mapping(
    value: Any, where: str, fields: dict[str, Callable[[Any, str], None]], strict: bool = True
) -> None:
    if not isinstance(value, dict):
        raise _Bad(where, "not an object")
    for key, item in value.items():
        check = fields.get(key)
        if check is None:
            if strict:
                raise _Bad(_where(where, key), "unknown key")
            line(key, _where(where, "(key)"))
            _scalars(item, _where(where, key))
            continue
        check(item, _where(where, key))


def _dict_of(
    keys: Callable[[Any, str], None], values: Callable[[Any, str], None]
) -> Callable[[Any, str], None]:
    def check(value: Any, where: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise _Bad(where, "not an object")
        for key, item in value.items():
            keys(key, _where(where, "(key)"))
            values(item, _where(where, key))

    return check


def _list_of(item: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    def check(value: Any, where: str) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise _Bad(where, "not a list")
        for index, entry in enumerate(value):
            item(entry, _where(where, index))

    return check


def _fields(
    cls: type, **checks: Callable[[Any, str], None]
) -> dict[str, Callable[[Any, str], None]]:
    """Every field of a result type, each with its check; a field without one (numbers, or a
    field added later) holds one-line text wherever it holds text."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(checks) - known
    assert not unknown, unknown
    return {key: checks.get(key, _scalars) for key in known}


def _scalars(value: Any, where: str) -> None:
    """Numbers, and one-line text in any nesting of lists and objects (keys too)."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, list):
            stack.extend((entry, _where(at, index)) for index, entry in enumerate(item))
        elif isinstance(item, dict):
            for key, entry in item.items():
                line(key, _where(at, "(key)"))
                stack.append((entry, _where(at, key)))
        else:
            line(item, at)


def _cause(value: Any, where: str) -> None:
    _mapping(
        value,
        where,
        _fields(
            FailureCause,
            fingerprint=fingerprint,
            cause=word,
            error_class=word,
            message=line,
        ),
    )


def _scenario(value: Any, where: str) -> None:
    _mapping(
        value,
        where,
        _fields(
            ScenarioResult,
            name=name,
            status=status,
            messages=anything,  # shown escaped (HTML, JUnit), never in Markdown
            details=anything,
            logs=_dict_of(line, anything),
            failures_by_cause=_list_of(_cause),
            not_run_reasons=_list_of(text),
            outcomes=_match(OUTCOMES_RE, "outcomes (P and F)"),
            pooled=_optional(lambda v, w: _mapping(v, w, POOLED_FIELDS)),
        ),
    )


def _origin(value: Any, where: str) -> None:
    """A package the image took from beyond its release: each field goes into apt files."""
    _mapping(value, where, {"package": package, "version": version, "suites": _list_of(suite)})
    missing = sorted({"package", "version", "suites"} - set(value))
    if missing:
        raise _Bad(_where(where, missing[0]), "required key is missing")


def _not_exercised(value: Any, where: str) -> None:
    """A part of libvirt's confinement the cell left out: a name and one line of why."""
    _mapping(value, where, {"feature": name, "reason": line})
    missing = sorted({"feature", "reason"} - set(value))
    if missing:
        raise _Bad(_where(where, missing[0]), "required key is missing")


def _build(value: Any, where: str) -> None:
    _mapping(
        value,
        where,
        {
            "log": _optional(line),
            "log_tail": anything,
            "reason": text,
            "status": word,
            "origins": _optional(_list_of(_origin)),
        },
        strict=False,
    )


def _count(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Bad(where, "not a count (a whole number, 0 or more)")


POOLED_FIELDS = {"runs": _count, "failures": _count, "matrix_runs": _count, "since": time}
EVIDENCE_FIELDS = {
    "key": _match(EVIDENCE_KEY_RE, "evidence key"),
    "since": _optional(time),
    "tested_as": _optional(cell_id),
}

HISTORY_FIELDS = {
    "since": _optional(run_id),
    "first_seen": _optional(run_id),
    "last_seen": _optional(run_id),
    "previous": _optional(status),
    "change": _optional(_match(re.compile("regression|fix"), "change (regression or fix)")),
}


def _cell(value: Any, where: str) -> None:
    _mapping(
        value,
        where,
        _fields(
            CellResult,
            id=cell_id,
            distro=name,
            release=_match(RELEASE_RE, "release"),
            codename=_match(CODENAME_RE, "codename"),
            source=name,
            status=status,
            reason=text,
            image=_optional(_match(IMAGE_REF_RE, "image")),
            build=_build,
            accel=_optional(word),
            versions=_dict_of(package, version),
            thresholds=_dict_of(name, anything),
            scenarios=_list_of(_scenario),
            log_dir=_optional(line),
            history=lambda v, w: _mapping(v, w, HISTORY_FIELDS),
            stages_for=_optional(name),
            origins=_optional(_list_of(_origin)),
            evidence=_optional(lambda v, w: _mapping(v, w, EVIDENCE_FIELDS)),
            not_exercised=_optional(_list_of(_not_exercised)),
        ),
    )


def _host(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _Bad(where, "not an object")
    for key, item in value.items():
        word(key, _where(where, "(key)"))
        if key == "merged_runs":
            _list_of(_part)(item, _where(where, key))
        else:
            _scalars(item, _where(where, key))


def _part(value: Any, where: str) -> None:
    _mapping(value, where, {"run_id": run_id, "started": time, "finished": time, "host": _host})


def _thresholds(value: Any, where: str) -> None:
    _dict_of(name, _dict_of(word, version))(value, where)


RESULTS_FIELDS = {
    **_fields(
        RunResult,
        run_id=run_id,
        started=time,
        finished=time,
        host=_host,
        cells=_list_of(_cell),
    ),
    "thresholds": _thresholds,
}


def _checked(check: Callable[[], None], path: Path | str) -> None:
    try:
        check()
    except _Bad as exc:
        raise InputError(f"{path}: {exc}") from None


def check_results(data: dict[str, Any], path: Path | str) -> None:
    """The grammars of a results document whose shape its types have checked."""
    _checked(lambda: _mapping(data, "", RESULTS_FIELDS), path)
    ids = [cell["id"] for cell in data["cells"]]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"{path}: cells: cell {twice[0]} is there twice")


def check_cell(data: dict[str, Any], path: Path | str) -> None:
    """The grammars of one cell's result (a run's checkpoint keeps them one by one)."""
    _checked(lambda: _cell(data, "result"), path)


def check_history_line(entry: Any, where: str) -> None:
    """One line of history.jsonl: run id, time, cell, status, versions, and the evidence key
    with each scenario's outcomes."""
    fields = {
        "run_id": run_id,
        "time": time,
        "cell": cell_id,
        "status": status,
        "versions": _dict_of(package, version),
        "evidence": lambda v, w: _mapping(
            v,
            w,
            {
                "key": _match(EVIDENCE_KEY_RE, "evidence key"),
                "outcomes": _dict_of(name, _match(OUTCOMES_RE, "outcomes (P and F)")),
            },
        ),
    }
    _checked(lambda: _mapping(entry, "", fields), where)
    missing = sorted({"run_id", "cell", "status"} - set(entry))
    if missing:
        raise InputError(f"{where}: {missing[0]}: required key is missing")


def lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, split on newlines only (not on Unicode line separators)."""
    for number, content in enumerate(text.split("\n"), 1):
        if content.strip():
            yield number, content
