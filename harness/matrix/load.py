"""Loads matrix.yaml into a validated Matrix, reporting every problem at once with its YAML path."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..core.errors import ConfigurationError
from ..core.model import CLOUD_ARCHIVE_POCKETS, TEMPLATE_RE, Cell, Matrix, expand
from ..core.paths import OVERRIDES, ROOT, TEMPLATES
from ..core.text import Loc, clip, did_you_mean, format_path
from . import debs

MAX_BYTES = 4_000_000
MAX_DEPTH = 32
MAX_NODES = 500_000
MAX_ID = 100


class _Tracker:
    """Follows the YAML events to know each node's path before anything is composed."""

    def __init__(self) -> None:
        # Frames: ["map", key, wants_key, role] and ["seq", index, role].
        self.stack: list[list[Any]] = []

    def loc(self) -> Loc:
        # A sequence is at its last item; a mapping at its last key, unless between entries.
        return tuple(
            frame[1]
            for frame in self.stack
            if (frame[0] == "seq" and frame[1] >= 0)
            or (frame[0] == "map" and frame[1] is not None and not frame[2])
        )

    def start(self, event: yaml.Event) -> Loc:
        """A node starts: returns its path, and enters it when it is a collection."""
        role = "value"
        if self.stack:
            top = self.stack[-1]
            if top[0] == "seq":
                top[1] += 1
            elif top[2]:
                role = "key"
                top[1] = event.value if isinstance(event, yaml.ScalarEvent) else "?"
                top[2] = False
        loc = self.loc()
        if isinstance(event, yaml.MappingStartEvent):
            self.stack.append(["map", None, True, role])
        elif isinstance(event, yaml.SequenceStartEvent):
            self.stack.append(["seq", -1, role])
        else:
            self._done(role)
        return loc

    def end(self) -> None:
        self._done(self.stack.pop()[-1])

    def _done(self, role: str) -> None:
        if self.stack and self.stack[-1][0] == "map" and role == "value":
            self.stack[-1][2] = True


# The tags safe_load can construct (plain YAML: strings, numbers, booleans, lists, mappings...).
KNOWN_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None}
NODE_START = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)
NODE_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _scan(text: str, filename: str) -> None:
    """One pass over the events: syntax errors and deep nesting are reported with the path they
    occur at, before the (recursive) composer sees the document."""
    tracker = _Tracker()
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, NODE_START):
                loc = tracker.start(event)
                if len(tracker.stack) > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else 1
                    raise ConfigurationError(
                        f"{filename}:{line}: {format_path(loc)}: "
                        f"the document is too deeply nested (at most {MAX_DEPTH} levels)"
                    )
            elif isinstance(event, NODE_END):
                tracker.end()
    except yaml.reader.ReaderError as exc:
        # A control character: report it where it is, found in a copy without such characters.
        index = exc.position
        clean = yaml.reader.Reader.NON_PRINTABLE.sub(" ", text)
        raise ConfigurationError(
            f"{filename}:{text.count(chr(10), 0, index) + 1}: "
            f"{format_path(_path_at(clean, index))}: character U+{exc.character:04X} "
            "is not allowed in YAML"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = (exc.problem or str(exc).splitlines()[0]).strip()
        raise ConfigurationError(
            f"{filename}:{line}: {format_path(tracker.loc())}: not valid YAML: {problem}"
        ) from None


def _path_at(text: str, index: int) -> Loc:
    """The path of the node at a character index (for problems found outside the YAML parser)."""
    tracker = _Tracker()
    loc: Loc = ()
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if event.start_mark and event.start_mark.index > index:
                break
            if isinstance(event, NODE_START):
                loc = tracker.start(event)
                end = event.end_mark.index if event.end_mark else index
                if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent) and end >= index:
                    return loc
                if len(tracker.stack) > MAX_DEPTH:
                    break
            elif isinstance(event, NODE_END):
                tracker.end()
                loc = tracker.loc()
    except yaml.YAMLError:
        pass
    return loc


# libyaml, when PyYAML has it: the one parse of a valid document, many times faster.
FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None)


def _fast_compose(text: str) -> yaml.Node | None:
    """The node tree from libyaml's events in one pass, composed here without recursion (so
    that depth is checked as it goes); None when libyaml is not there or the document is not
    plainly valid (too deep, not YAML, an unknown alias, characters YAML forbids): the slow
    parser then says why, with the path."""
    if FAST_LOADER is None or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None
    resolver = yaml.resolver.Resolver()  # SafeLoader's
    anchors: dict[str, yaml.Node] = {}
    stack: list[list[Any]] = []  # [collection node, pending mapping key or None]
    root: yaml.Node | None = None
    documents = 0
    try:
        for event in yaml.parse(text, Loader=FAST_LOADER):
            node: yaml.Node
            # libyaml's marks are of a type of its own, read the same way.
            start: Any = event.start_mark
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    return None  # safe_load refuses a second document
                continue
            if isinstance(event, NODE_END):
                node = stack.pop()[0]
                node.end_mark = event.end_mark
                if not stack:
                    root = node
                continue
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    return None
                node = anchors[event.anchor]
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
                end: Any = event.end_mark
                node = yaml.ScalarNode(tag, event.value, start, end, style=event.style)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                kind = (
                    yaml.SequenceNode
                    if isinstance(event, yaml.SequenceStartEvent)
                    else yaml.MappingNode
                )
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolver.resolve(kind, None, event.implicit)
                node = kind(tag, [], start, None, flow_style=event.flow_style)
            else:
                continue
            anchor = getattr(event, "anchor", None)
            if anchor is not None and not isinstance(event, yaml.AliasEvent):
                anchors[anchor] = node
            if stack:
                parent = stack[-1]
                if isinstance(parent[0], yaml.SequenceNode):
                    parent[0].value.append(node)
                elif parent[1] is None:
                    parent[1] = node
                else:
                    parent[0].value.append((parent[1], node))
                    parent[1] = None
            if isinstance(node, yaml.CollectionNode) and not isinstance(event, yaml.AliasEvent):
                stack.append([node, None])
                if len(stack) > MAX_DEPTH:
                    return None
            elif not stack:
                root = node
    except yaml.YAMLError:
        return None
    return root


def _construct(root: yaml.Node | None, text: str) -> Any:
    """The plain data of a composed document (safe_load's result, without parsing again)."""
    if root is None:
        return None
    try:
        return yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.YAMLError:
        return yaml.safe_load(text)  # raises the same error, with marks the messages use


class _Document:
    """The YAML node tree: line numbers for paths, and checks safe_load does not make."""

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.lines: dict[Loc, int] = {}
        self.problems: list[str] = []
        self.tag_problems: list[str] = []
        self.root = _fast_compose(text)
        if self.root is None:
            # The pure-Python parser knows each problem's path: it reports them.
            _scan(text, filename)
        try:
            if self.root is None:
                self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except RecursionError:
            raise ConfigurationError(
                f"{filename}:1: (top level): the document is too deeply nested "
                f"(at most {MAX_DEPTH} levels)"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigurationError(
                f"{filename}:{line}: (top level): not valid YAML: {problem}"
            ) from None
        self.nodes = 0
        if self.root is not None:
            self._walk(self.root, (), 0, set())

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
        if node.tag not in KNOWN_TAGS:
            # safe_load would refuse it with a traceback-shaped message; say where it is.
            self.tag_problems.append(
                f"{self.filename}:{node.start_mark.line + 1}: {format_path(loc)}: "
                f"YAML tag {node.tag!r} is not allowed"
            )
            return
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
    items = error.errors(include_url=False)
    failed = [tuple(item["loc"]) for item in items]
    for item in items:
        loc: Loc = tuple(item["loc"])
        kind = item["type"]
        if kind == "too_short" and any(f[: len(loc)] == loc and f != loc for f in failed):
            # pydantic counts only the valid items: a list of one bad cell is not "empty".
            continue
        value = item.get("input")
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            hint = did_you_mean(loc[-1], model.model_fields) if model else ""
            message = f"unknown key {loc[-1]!r}{hint}"
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",")]
            hint, head = did_you_mean(value, choices), f"{clip(value)} is not one of "
            # A long list of choices is cut, not the hint after it.
            room = 300 - len(head) - len(hint)
            expected = expected if len(expected) <= room else expected[: room - 4] + " ..."
            message = f"{head}{expected}{hint}"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(item.get("ctx", {}).get("error", item["msg"]))
        else:
            message = (
                f"{item['msg']} (got {clip(value)})"
                if not isinstance(value, dict | list)
                else item["msg"]
            )
        # Validators quote the value: long ones are cut so that a problem stays one short line.
        problems.append((loc, message if len(message) <= 300 else message[:296] + " ..."))
    return problems


def _reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Cross-references pydantic cannot see: cells naming bases and sources that exist."""
    problems: list[tuple[Loc, str]] = []
    bases: dict[str, Any] = data["bases"] if isinstance(data.get("bases"), dict) else {}
    sources: dict[str, Any] = data["sources"] if isinstance(data.get("sources"), dict) else {}
    cells: list[Any] = data["cells"] if isinstance(data.get("cells"), list) else []

    def check(loc: Loc, value: object, known: dict[str, Any], what: str) -> None:
        # Only against a mapping that is there: a malformed one is a problem of its own.
        if not isinstance(data.get(f"{what}s"), dict):
            return
        if isinstance(value, str) and value not in known:
            problems.append((loc, f"unknown {what} {clip(value)}{did_you_mean(value, known)}"))

    guest = data.get("guest")
    if isinstance(guest, dict):
        check(("guest", "base"), guest.get("base"), bases, "base")
    elif guest is None and bases and "debian-12" not in bases:
        problems.append((("guest",), "the guest needs a Debian base: set guest.base"))
    for name, source in sources.items():
        if isinstance(source, dict) and "stages_for" in source:
            check(("sources", name, "stages_for"), source["stages_for"], sources, "source")
            if source["stages_for"] == name:
                problems.append(
                    (("sources", name, "stages_for"), "a source cannot stage for itself")
                )
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
        elif isinstance(base, dict) and isinstance(source, dict) and source.get("cloud_archive"):
            pocket = str(source["cloud_archive"]).removesuffix("-proposed")
            series = CLOUD_ARCHIVE_POCKETS.get(pocket)
            if series and base.get("codename") != series:
                problems.append(
                    (
                        ("cells", index, "source"),
                        f"Cloud Archive pocket {pocket!r} is built for Ubuntu {series}, "
                        f"not {clip(base.get('codename'))}",
                    )
                )
        template = cell.get("template")
        if (
            isinstance(template, str)
            and TEMPLATE_RE.fullmatch(template)
            and not any((d / template).is_file() for d in (OVERRIDES, TEMPLATES))
        ):
            problems.append(
                (
                    ("cells", index, "template"),
                    f"no override template {template!r} in "
                    f"{OVERRIDES.relative_to(ROOT) if OVERRIDES.is_relative_to(ROOT) else OVERRIDES}/",
                )
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
    if doc.tag_problems:
        raise ConfigurationError(doc.tag_problems + doc.problems)
    try:
        data = _construct(doc.root, text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = _path_at(text, mark.index) if mark else ()
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigurationError(f"{filename}:{line}: {format_path(loc)}: {problem}") from None
    if not isinstance(data, dict):
        line = doc.root.start_mark.line + 1 if doc.root is not None else 1
        raise ConfigurationError(
            f"{filename}:{line}: (top level): the matrix must be a mapping with bases, "
            "sources and cells"
        )
    problems = _reference_problems(data)
    matrix = None
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, doc)
    if matrix is not None:
        for name, source in matrix.sources.items():
            if source.debs and (why := debs.problem(source)):
                problems.append((("sources", name, "debs"), why))
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
            if len(cell.id) > MAX_ID:
                # The id is part of an image tag (at most 128 characters with the content hash).
                problems.append(
                    (
                        ("cells", index),
                        f"cell id {clip(cell.id, 40)} is {len(cell.id)} characters long "
                        f"(at most {MAX_ID}); set a shorter `id:`",
                    )
                )
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
        # Say where: the line and path of the bad byte, found in a copy with it replaced.
        lenient = raw.decode("utf-8", errors="replace")
        index = len(raw[: exc.start].decode("utf-8"))
        line = lenient.count("\n", 0, index) + 1
        raise ConfigurationError(
            f"{path}:{line}: {format_path(_path_at(lenient, index))}: not UTF-8 "
            f"(byte {exc.start}: {raw[exc.start]:#04x})"
        ) from None
    return parse(text, str(path))
