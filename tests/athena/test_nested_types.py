"""athena.nested_types: Athena's nested values typed from the statement, never made wrong."""

from __future__ import annotations

from decimal import Decimal

from athena.nested_types import declared_types, typed_value
from cli.output import json_ready


def _only_type(sql: str):
    types = declared_types(sql)
    assert types is not None and len(types) == 1, types
    return types[0]


def test_a_decimal_leaf_is_read_exactly() -> None:
    """A DECIMAL(38, s) value has more digits than a float holds: read as a float, the map's
    12345678901234567890123456789 came out as 1.2345678901234568e+28. Read as a Decimal, the
    JSON is the exact number, as for a DECIMAL column (pyathena gives a Decimal there)."""
    dtype = _only_type(
        "SELECT map(ARRAY['a', 'b'], ARRAY[CAST(1 AS decimal(38, 0)), CAST(2 AS decimal(38, 0))])"
    )
    value = typed_value({"a": "12345678901234567890123456789", "b": "-7"}, dtype)
    assert value == {"a": Decimal("12345678901234567890123456789"), "b": Decimal(-7)}
    assert json_ready(value) == {"a": 12345678901234567890123456789, "b": -7}
    fraction = _only_type("SELECT ROW(CAST(1 AS decimal(38, 2)), 1.5E0)")
    assert typed_value({"field0": "12.50", "field1": "1.5"}, fraction) == {
        "field0": Decimal("12.50"),
        "field1": 1.5,
    }


def test_text_that_is_no_integer_of_trino_stays_text() -> None:
    """An INTEGER leaf's text has 19 digits at most; a longer run of digits (where sqlglot's
    type would be wrong) stays as it came, rather than turning into a number or failing."""
    dtype = _only_type("SELECT map(ARRAY['a'], ARRAY[CAST(1 AS bigint)])")
    digits = "9" * 5000
    assert typed_value({"a": digits, "b": "-9223372036854775808"}, dtype) == {
        "a": digits,
        "b": -9223372036854775808,
    }


def test_a_statement_too_deep_for_sqlglot_leaves_the_values_as_read() -> None:
    """sqlglot's analysis of a deeply nested statement ends in RecursionError; Athena ran the
    statement already, so its rows must come out (untyped), not a traceback."""
    assert declared_types("SELECT " + "ARRAY[" * 400 + "1" + "]" * 400) is None
