"""Fixtures of the unit tests: the default matrix as data and cells, and YAML text built from edits of it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import ConfigurationError
from harness.load import parse
from harness.model import Cell, Matrix

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MATRIX = ROOT / "matrix.yaml"

Edit = Callable[[dict[str, Any]], object]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_MATRIX.read_text())


@pytest.fixture(scope="session")
def default_matrix() -> tuple[Matrix, tuple[Cell, ...]]:
    return parse(DEFAULT_MATRIX.read_text(), "matrix.yaml")


@pytest.fixture
def matrix_text(default_data: dict[str, Any]) -> Callable[..., str]:
    """YAML text of the default matrix after each edit (a function changing the data in place).

    Built from the data rather than by string replacement, so the tests do not depend on how
    matrix.yaml is laid out; each test finds its lines in the text it built.
    """

    def build(*edits: Edit) -> str:
        data = copy.deepcopy(default_data)
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
