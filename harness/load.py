"""Loads matrix.yaml into a validated Matrix, reporting every problem at once with its YAML path."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigurationError
from .model import Cell, Matrix, expand

MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 100_000

Loc = tuple[str | int, ...]


def format_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def did_you_mean(value: object, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Document:
    """The YAML node tree: line numbers for paths, and checks safe_load does not make."""

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.lines: dict[Loc, int] = {}
        self.problems: list[str] = []
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except RecursionError:
            raise ConfigurationError(
                f"{filename}: the document is too deeply nested (at most {MAX_DEPTH} levels)"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{filename}:{mark.line + 1}" if mark else filename
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigurationError(f"{where}: not valid YAML: {problem}") from None
        self.nodes = 0
        if root is not None:
            self._walk(root, (), 0, set())

    def _walk(
        self, node: yaml.Node, loc: Loc, depth: int, active: set[int], line: int | None = None
    ) -> None:
        self.nodes += 1
        # A mapping value is reported at its key's line, where a user looks for it.
        self.lines.setdefault(loc, line or node.start_mark.line + 1)
        if depth > MAX_DEPTH or self.nodes > MAX_NODES or id(node) in active:
            # Deep nesting, alias bombs and recursive aliases are refused before they are expanded.
            raise ConfigurationError(
                f"{self.filename}:{node.start_mark.line + 1}: {format_path(loc)}: "
                f"the document is too deeply nested or too large (at most {MAX_DEPTH} levels, "
                f"{MAX_NODES} values)"
            )
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag != "tag:yaml.org,2002:str"
                ):
                    raise ConfigurationError(
                        f"{self.filename}:{key_node.start_mark.line + 1}: {format_path(loc)}: "
                        "keys must be plain strings"
                    )
                key = key_node.value
                if key in seen:
                    self.problems.append(
                        f"{self.filename}:{key_node.start_mark.line + 1}: {format_path(loc + (key,))}: "
                        f"duplicate key (first at line {seen[key]})"
                    )
                seen[key] = key_node.start_mark.line + 1
                self._walk(
                    value_node, loc + (key,), depth + 1, active, key_node.start_mark.line + 1
                )
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, loc + (index,), depth + 1, active)

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return f"{self.filename}:{self.lines[loc[:end]]}"
        return self.filename


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class that holds the mapping at `loc`, for 'did you mean' on unknown keys."""
    annotation: Any = Matrix
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        else:
            # dict[K, V] -> V; tuple[T, ...] and list[T] -> T
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            origin = typing.get_origin(annotation)
            annotation = (args[-1] if origin is dict else args[0]) if args else None
    annotation = _unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _unwrap(annotation: Any) -> Any:
    """Strips Optional and Annotated down to the model or container type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            return annotation


def _pydantic_problems(error: ValidationError, doc: _Document) -> list[tuple[Loc, str]]:
    problems = []
    for item in error.errors(include_url=False):
        loc: Loc = tuple(item["loc"])
        kind = item["type"]
        value = item.get("input")
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            hint = did_you_mean(loc[-1], model.model_fields) if model else ""
            message = f"unknown key {loc[-1]!r}{hint}"
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",")]
            message = f"{value!r} is not one of {expected}{did_you_mean(value, choices)}"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(item.get("ctx", {}).get("error", item["msg"]))
        else:
            message = (
                f"{item['msg']} (got {value!r})"
                if not isinstance(value, dict | list)
                else item["msg"]
            )
        problems.append((loc, message))
    return problems


def _reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Cross-references pydantic cannot see: cells naming bases and sources that exist."""
    problems: list[tuple[Loc, str]] = []
    bases: dict[str, Any] = data["bases"] if isinstance(data.get("bases"), dict) else {}
    sources: dict[str, Any] = data["sources"] if isinstance(data.get("sources"), dict) else {}
    cells: list[Any] = data["cells"] if isinstance(data.get("cells"), list) else []

    def check(loc: Loc, value: object, known: dict[str, Any], what: str) -> None:
        if isinstance(value, str) and value not in known:
            problems.append((loc, f"unknown {what} {value!r}{did_you_mean(value, known)}"))

    guest = data.get("guest")
    if isinstance(guest, dict):
        check(("guest", "base"), guest.get("base"), bases, "base")
    elif guest is None and bases and "debian-12" not in bases:
        problems.append((("guest",), "the guest needs a Debian base: set guest.base"))
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            continue
        check(("cells", index, "base"), cell.get("base"), bases, "base")
        base = bases.get(str(cell.get("base")))
        source = sources.get(str(cell.get("source", "release")))
        if (
            isinstance(base, dict)
            and isinstance(source, dict)
            and source.get("cloud_archive")
            and base.get("distro") != "ubuntu"
        ):
            problems.append(
                (("cells", index, "source"), "a cloud_archive source needs an ubuntu base")
            )
        check(("cells", index, "source"), cell.get("source", "release"), sources, "source")
        for component in ("libvirt", "qemu"):
            choice = cell.get(component)
            if isinstance(choice, dict):
                check(
                    ("cells", index, component, "source"), choice.get("source"), sources, "source"
                )
    return problems


def parse(text: str, filename: str = "matrix.yaml") -> tuple[Matrix, tuple[Cell, ...]]:
    doc = _Document(text, filename)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{filename}: the matrix must be a mapping with bases, sources and cells"
        )
    problems = _reference_problems(data)
    matrix = None
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, doc)
    cells: tuple[Cell, ...] = ()
    if matrix is not None and not problems:
        cells = expand(matrix)
        seen: dict[str, int] = {}
        for index, cell in enumerate(cells):
            if cell.id in seen:
                problems.append(
                    (
                        ("cells", index),
                        f"duplicate cell id {cell.id!r} (also cells[{seen[cell.id]}]); set `id:`",
                    )
                )
            seen.setdefault(cell.id, index)
    messages = doc.problems + [
        f"{doc.where(loc)}: {format_path(loc)}: {message}" for loc, message in problems
    ]
    if messages:
        raise ConfigurationError(sorted(set(messages), key=_line_order))
    assert matrix is not None
    return matrix, cells


def _line_order(message: str) -> tuple[int, str]:
    head = message.split(":", 2)
    return (int(head[1]) if len(head) > 1 and head[1].isdigit() else 0, message)


def load(path: str | Path) -> tuple[Matrix, tuple[Cell, ...]]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigurationError(f"{path}: larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path}: not UTF-8 (byte {exc.start})") from None
    return parse(text, str(path))
