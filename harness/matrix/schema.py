"""The JSON Schema of matrix.yaml, generated from the models and committed for editors."""

from __future__ import annotations

import json

from ..core.files import write_atomic
from ..core.model import Matrix
from ..core.paths import ROOT

SCHEMA_PATH = ROOT / "matrix.schema.json"


def schema_text() -> str:
    schema = Matrix.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hvgate matrix.yaml"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schema(check: bool = False) -> bool:
    """Returns whether the committed schema differs from the models (and writes it unless check)."""
    text = schema_text()
    current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
    if check:
        return current != text
    return write_atomic(SCHEMA_PATH, text)
