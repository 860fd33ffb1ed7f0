"""Fixtures of the unit tests: the unit tests' own matrix (data/matrix.yaml) as data and cells,
and YAML text built from edits of it. The repository's matrix.yaml is not read here: it changes
as the project adds cells, and the golden tests cover it."""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core.errors import ConfigurationError
from harness.core.model import Cell, Matrix
from harness.matrix.load import parse

ROOT = Path(__file__).resolve().parents[2]
UNIT_MATRIX = Path(__file__).resolve().parent / "data" / "matrix.yaml"

Edit = Callable[[dict[str, Any]], object]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Each test starts with Python's own Ctrl-C handler, whatever ran before it in the process
    (a run shielded from Ctrl-C, a child's setup): the interrupt tests send one to themselves,
    which does nothing where SIGINT is ignored. The handler is put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tasks(monkeypatch, root):
    """The tasks module; `reported` installs a SIGTERM handler, which is put back afterwards."""
    monkeypatch.syspath_prepend(str(root))
    previous = signal.getsignal(signal.SIGTERM)
    import tasks as module

    yield module
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def unit_matrix_path() -> Path:
    """tests/unit/data/matrix.yaml, the matrix every unit test reads."""
    return UNIT_MATRIX


@pytest.fixture(scope="session")
def unit_data() -> dict[str, Any]:
    return yaml.safe_load(UNIT_MATRIX.read_text())


@pytest.fixture(scope="session")
def unit_matrix() -> tuple[Matrix, tuple[Cell, ...]]:
    return parse(UNIT_MATRIX.read_text(), "matrix.yaml")


@pytest.fixture(scope="session")
def cell_by_id(unit_matrix: tuple[Matrix, tuple[Cell, ...]]) -> dict[str, Cell]:
    return {cell.id: cell for cell in unit_matrix[1]}


@pytest.fixture
def matrix_text(unit_data: dict[str, Any]) -> Callable[..., str]:
    """YAML text of the unit matrix after each edit (a function changing the data in place).

    Built from the data rather than by string replacement, so the tests do not depend on how
    matrix.yaml is laid out; each test finds its lines in the text it built.
    """

    def build(*edits: Edit) -> str:
        data = copy.deepcopy(unit_data)
        for edit in edits:
            edit(data)
        return yaml.safe_dump(data, sort_keys=False, width=1000)

    return build


@pytest.fixture
def problems_of() -> Callable[..., list[str]]:
    """The problems `parse` reports for a text; fails the test when it accepts the text."""

    def run(text: str, filename: str = "matrix.yaml") -> list[str]:
        with pytest.raises(ConfigurationError) as info:
            parse(text, filename)
        assert info.value.exit_code == 2
        return info.value.problems

    return run


@pytest.fixture
def cells_of() -> Callable[..., tuple[Cell, ...]]:
    def run(text: str) -> tuple[Cell, ...]:
        return parse(text, "matrix.yaml")[1]

    return run
