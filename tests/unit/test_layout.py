"""The layout of harness/ (ARCHITECTURE.md): imports run one way,
core <- {matrix, engine} <- stages <- run <- tools <- tasks.py, at the top of a module, without
circles; the host never imports the container side (harness/smoke)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "harness"
# Each folder of harness/ and its rank: a module may import its own folder and lower ranks only.
# matrix and engine share a rank, so neither imports the other.
RANKS = {"core": 0, "matrix": 1, "engine": 1, "stages": 2, "run": 3, "tools": 4, "tasks": 5}
ORDER = "core <- {matrix, engine} <- stages <- run <- tools <- tasks.py"


def module_name(relpath: str) -> str:
    """harness/run/fleet.py -> harness.run.fleet; harness/run/__init__.py -> harness.run."""
    parts = list(Path(relpath).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def host_sources() -> list[Path]:
    """Every module of the host side: harness/ without harness/smoke, and tasks.py."""
    paths = [p for p in HARNESS.rglob("*.py") if "smoke" not in p.relative_to(HARNESS).parts[:1]]
    return sorted(paths) + [ROOT / "tasks.py"]


def known_modules() -> set[str]:
    names = {module_name(str(p.relative_to(ROOT))) for p in ROOT.glob("harness/**/*.py")}
    return names | {"tasks"}


def package_names() -> dict[str, set[str]]:
    """The names each package's __init__.py defines, besides its modules."""
    names: dict[str, set[str]] = {}
    for path in ROOT.glob("harness/**/__init__.py"):
        defined = names.setdefault(module_name(str(path.relative_to(ROOT))), set())
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


KNOWN = known_modules()
PACKAGES = package_names()


def folder(module: str) -> str:
    """The layer folder of a module: harness.run.fleet -> run; tasks -> tasks; harness -> ''."""
    parts = module.split(".")
    return "tasks" if module == "tasks" else parts[1] if len(parts) > 1 else ""


def imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, module imported, how) for every import of harness in a module's tree; `how` is
    "top", "function" (inside a function's body) or "dynamic" (importlib.import_module).
    `from X import name` imports X.name when that is a module or no name of X's __init__."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, how) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1])
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    if full in KNOWN or (base in PACKAGES and alias.name not in PACKAGES[base]):
                        found.append((child.lineno, full, how))
                    else:
                        found.append((child.lineno, base, how))
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute | ast.Name)
                and getattr(child.func, "attr", getattr(child.func, "id", "")) == "import_module"
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append((child.lineno, child.args[0].value, "dynamic"))
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, "function" if inner or how == "function" else how)

    visit(tree, "top")
    return [(line, name, how) for line, name, how in found if name.split(".")[0] == "harness"]


def problems(source: str, relpath: str) -> list[str]:
    """Every import of harness in `source` (the text of the file at `relpath`) against the order."""
    module = module_name(relpath)
    own = folder(module)
    tree = ast.parse(source, filename=relpath)
    found = []
    if own not in RANKS and module != "harness":
        found.append(f"{relpath}: not in a folder of harness/ (core, matrix, engine, stages, ...)")
    for line, target, how in imports(tree, module, relpath.endswith("__init__.py")):
        where = f"{relpath}:{line}"
        other = folder(target)
        if how != "top":
            place = "inside a function" if how == "function" else "dynamically"
            found.append(f"{where}: imports {target} {place}; harness is imported at the top")
        if target not in KNOWN:
            found.append(f"{where}: imports {target}, which is no module of harness/")
        elif other == "smoke":
            found.append(f"{where}: imports {target}; the host never imports the container side")
        elif other and other != own and not RANKS.get(other, 99) < RANKS.get(own, -1):
            found.append(f"{where}: {own} imports {target} ({other}), against {ORDER}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph (module -> modules it imports at the top), one path each."""
    found, done, path = [], set(), []

    def walk(node: str) -> None:
        if node in path:
            found.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        path.append(node)
        for target in sorted(graph.get(node, ())):
            walk(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in host_sources():
        relpath = str(path.relative_to(ROOT))
        module = module_name(relpath)
        tree = ast.parse(path.read_text(), filename=relpath)
        found = imports(tree, module, path.name == "__init__.py")
        graph[module] = {target for _, target, how in found if how == "top" and target != module}
    return graph


# --- the tree as it is -------------------------------------------------------------------------


@pytest.mark.parametrize("path", host_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    assert problems(path.read_text(), str(path.relative_to(ROOT))) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_every_folder_of_harness_is_a_package_that_installs():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        module_name(f"{p.parent.relative_to(ROOT)}/__init__.py") for p in HARNESS.rglob("*.py")
    }
    assert folders <= set(packages["packages"])
    assert set(RANKS) - {"tasks"} | {"smoke"} == {f.split(".")[1] for f in folders if "." in f}


def test_tests_and_benchmarks_import_modules_that_exist():
    """A name left over from an older layout could still import from another installed copy."""
    stale = []
    for path in sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        relpath = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), filename=relpath)
        module = module_name(relpath)
        for line, target, _ in imports(tree, module, path.name == "__init__.py"):
            if target not in KNOWN:
                stale.append(f"{relpath}:{line}: {target}")
    assert stale == []


# --- the checks themselves: a wrong import is found ----------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "source", "says"),
    [
        ("harness/core/model.py", "from harness.run import pipeline\n", "core imports"),
        ("harness/core/model.py", "from ..run import pipeline\n", "core imports harness.run."),
        ("harness/matrix/load.py", "from ..engine import client\n", "matrix imports"),
        ("harness/engine/bases.py", "from harness.matrix.load import load\n", "engine imports"),
        ("harness/stages/build.py", "from ..run.fleet import Fleet\n", "stages imports"),
        ("harness/run/pipeline.py", "from harness.tools import pin\n", "run imports"),
        ("harness/stages/render.py", "def f():\n    from ..core import text\n", "function"),
        ("tasks.py", "def f():\n    from harness.tools.pin import pin\n", "function"),
        ("harness/stages/smoke.py", "import harness.smoke.guest\n", "container side"),
        ("harness/core/model.py", "from harness.pipeline import run\n", "no module"),
        ("harness/core/model.py", "from harness import pipeline\n", "no module"),
        (
            "harness/core/text.py",
            "import importlib\nimportlib.import_module('harness.run')\n",
            "dynam",
        ),
        ("harness/pipeline.py", "", "not in a folder"),
    ],
)
def test_a_wrong_way_import_is_reported(relpath, source, says):
    found = problems(source, relpath)
    assert found and says in found[0], found


@pytest.mark.parametrize(
    ("relpath", "source"),
    [
        ("harness/run/pipeline.py", "from ..stages import render\nfrom . import fleet\n"),
        ("harness/tools/pin.py", "from ..core.model import Cell\nfrom ..run import history\n"),
        ("harness/core/stats.py", "if TYPE_CHECKING:\n    from .model import Policy\n"),
        ("harness/stages/render.py", "def f():\n    import json\n"),
        ("tasks.py", "from harness.tools.pin import pin\nfrom harness.run import pipeline\n"),
    ],
)
def test_a_right_way_import_is_not_reported(relpath, source):
    assert problems(source, relpath) == []


def test_a_circle_is_reported():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
