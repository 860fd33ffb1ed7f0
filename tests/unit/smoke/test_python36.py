"""The smoke runner runs on Ubuntu 18.04's Python 3.6. ruff checks its syntax against 3.7 (the
oldest target it knows); this walks every module for what 3.7 and later added to the language
and the standard library. tests/integration/test_backtest.py compiles and runs it on a real 3.6."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[3] / "harness" / "smoke"

# Modules the standard library gained in 3.7 or later.
NEW_MODULES = {
    "dataclasses",
    "contextvars",
    "importlib.resources",
    "importlib.metadata",
    "zoneinfo",
    "graphlib",
    "tomllib",
}
# module.function (or .attribute) added in 3.7 or later.
NEW_ATTRIBUTES = {
    ("asyncio", "run"),
    ("asyncio", "create_task"),
    ("asyncio", "get_running_loop"),
    ("contextlib", "nullcontext"),
    ("contextlib", "asynccontextmanager"),
    ("functools", "cache"),
    ("functools", "cached_property"),
    ("math", "isqrt"),
    ("math", "prod"),
    ("math", "dist"),
    ("os", "waitstatus_to_exitcode"),
    ("os", "pidfd_open"),
    ("shlex", "join"),
    ("signal", "raise_signal"),
    ("signal", "strsignal"),
    ("signal", "valid_signals"),
    ("subprocess", "CREATE_NO_WINDOW"),
    ("sys", "breakpointhook"),
    ("time", "monotonic_ns"),
    ("time", "time_ns"),
    ("time", "perf_counter_ns"),
    ("time", "process_time_ns"),
    ("datetime", "fromisoformat"),
    ("typing", "Literal"),
    ("typing", "Protocol"),
    ("typing", "TypedDict"),
    ("typing", "Final"),
}
# Methods of built-in types added in 3.7 or later (any object's: a false alarm is cheap).
NEW_METHODS = {"removeprefix", "removesuffix", "isascii", "fromisoformat", "is_relative_to"}
# subprocess keywords of 3.7.
NEW_KEYWORDS = {"capture_output", "text"}
NEW_BUILTINS = {"breakpoint", "aiter", "anext"}


def modules() -> list[Path]:
    return sorted(SMOKE.glob("*.py"))


def problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom):
            if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
                found.append(f"{line}: from __future__ import annotations (3.7)")
            imported = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            found += [f"{line}: imports {m} (3.7+)" for m in sorted(imported & NEW_MODULES)]
            found += [
                f"{line}: {node.module}.{a.name} (3.7+)"
                for a in node.names
                if (node.module, a.name) in NEW_ATTRIBUTES
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{line}: imports {a.name} (3.7+)" for a in node.names if a.name in NEW_MODULES
            ]
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in NEW_ATTRIBUTES:
                found.append(f"{line}: {node.value.id}.{node.attr} (3.7+)")
            elif node.attr in NEW_METHODS:
                found.append(f"{line}: .{node.attr}() (3.7+)")
        elif isinstance(node, ast.Call):
            found += [
                f"{line}: {k.arg}= (3.7's subprocess keyword)"
                for k in node.keywords
                if k.arg in NEW_KEYWORDS
            ]
            if isinstance(node.func, ast.Name) and node.func.id in NEW_BUILTINS:
                found.append(f"{line}: {node.func.id}() (3.7+)")
        elif isinstance(node, ast.NamedExpr):
            found.append(f"{line}: := (3.8)")
        elif isinstance(node, ast.arguments) and node.posonlyargs:
            found.append(f"{line}: positional-only parameters (3.8)")
        elif isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None:
            found += runtime_generics(node.annotation, line)
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            found += runtime_generics(node.returns, line)
    return found


def runtime_generics(annotation: ast.expr, line: int) -> list[str]:
    """Annotations are evaluated on 3.6: list[int] (3.9) and X | None (3.10) fail there."""
    found = []
    for node in ast.walk(annotation):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            found.append(f"{line}: X | Y in an annotation (3.10)")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"list", "dict", "tuple", "set", "frozenset", "type"}
        ):
            found.append(f"{line}: {node.value.id}[...] in an annotation (3.9)")
    return found


def test_the_runner_has_modules():
    assert {p.name for p in modules()} >= {"__main__.py", "worker.py", "scenarios.py"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_no_module_uses_what_python_3_6_lacks(path):
    # feature_version: the parser refuses syntax newer than 3.7's (3.6 is below what it knows).
    tree = ast.parse(path.read_text(), str(path), feature_version=(3, 7))
    assert problems(tree) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from __future__ import annotations", "from __future__ import annotations"),
        ("from dataclasses import dataclass", "imports dataclasses"),
        ("import contextvars", "imports contextvars"),
        ("import subprocess\nsubprocess.run(['true'], capture_output=True)", "capture_output="),
        ("import subprocess\nsubprocess.run(['true'], text=True)", "text="),
        ("import asyncio\nasyncio.run(main())", "asyncio.run"),
        ("import time\ntime.monotonic_ns()", "time.monotonic_ns"),
        ("from contextlib import nullcontext", "contextlib.nullcontext"),
        ("'abc'.removeprefix('a')", ".removeprefix()"),
        ("if (n := 1):\n    pass", ":= (3.8)"),
        ("def f(a, /):\n    pass", "positional-only"),
        ("def f(a: list[int]):\n    pass", "list[...]"),
        ("def f() -> int | None:\n    pass", "X | Y"),
        ("x: dict[str, int] = {}", "dict[...]"),
        ("breakpoint()", "breakpoint()"),
    ],
)
def test_each_check_can_fail(source, expected):
    found = problems(ast.parse(source))
    assert any(expected in problem for problem in found), found


def test_what_python_3_6_has_passes():
    source = (
        "import subprocess, typing\n"
        "subprocess.run(['true'], stdout=subprocess.PIPE, encoding='utf-8')\n"
        "class Needs(typing.NamedTuple):\n    libvirt: str = ''\n"
        "x = f'{1!r:>4}'\n"
        "def f(a: 'list[int]') -> 'int | None':\n    return {**{}, 'a': [*()]}\n"
    )
    assert problems(ast.parse(source)) == []
