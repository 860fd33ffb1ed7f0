"""The committed matrix.schema.json is the one the models generate."""

from harness.matrix.schema import SCHEMA_PATH, schema_text


def test_committed_schema_is_current():
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "run `hvgate matrix.schema` and commit the result"
    )
