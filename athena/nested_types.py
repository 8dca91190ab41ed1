"""The leaves of Athena's ARRAY, MAP and ROW values typed as the statement declares them.

Athena sends every value as text, and its result metadata types a nested column only as
``array``, ``map`` or ``row``: not what is inside. pyathena reads that text by guessing:
``[1, 2]`` as JSON (numbers, even for ``ARRAY['1', '2']``), ``{a=1}`` with its values as
text (``{'a': '1'}``, where the local engine says ``{"a": 1}``). The statement itself says
more: sqlglot's type inference, over the tables' columns (:mod:`athena.schema`), gives
``MAP(VARCHAR, INTEGER)`` for ``map(ARRAY['a'], ARRAY[1])``. :func:`typed_value` turns the
leaves pyathena left as text into the numbers and booleans that type declares, and numbers it
guessed for a VARCHAR leaf back into their text, where the text can be told exactly.

What cannot be recovered stays as pyathena gave it: a type sqlglot cannot infer (a function
it does not know), a value pyathena kept as text (nested deeper than it parses), and text that
is ambiguous in Athena's form whatever the type (``ARRAY['a, b']`` and ``ARRAY['a', 'b']``
are both ``[a, b]``). ``CAST(x AS JSON)`` in the statement gives exact JSON on Athena.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

#: Athena result types whose values are nested (:func:`typed_value` is for those only).
NESTED_KINDS = frozenset({"array", "map", "row"})
#: Trino's integers have 19 digits at most (BIGINT); a longer text is not one (and int() of
#: over 4,300 digits raises).
_INTEGER = re.compile(r"-?\d{1,19}", re.ASCII)
_FLOAT = re.compile(r"-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|NaN|Infinity)|-Infinity", re.ASCII)
#: Trino's text of a DECIMAL: read as a Decimal, exact (a float loses digits past 2**53).
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)


def declared_types(sql: str) -> list[Any] | None:
    """The sqlglot types of the result columns of Trino ``sql``, or None when it cannot
    tell (not one SELECT, a parse or analysis error): each column's type may be UNKNOWN."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.annotate_types import annotate_types
    from sqlglot.optimizer.qualify import qualify

    from athena.queries import quiet_sqlglot
    from athena.schema import TABLES

    schema = {name: {c.name: c.athena for c in t.columns} for name, t in TABLES.items()}
    try:
        with quiet_sqlglot():
            tree = sqlglot.parse_one(sql, read="trino")
            tree = qualify(tree, schema=schema, dialect="trino", validate_qualify_columns=False)
            tree = annotate_types(tree, schema=schema, dialect="trino")
    except (SqlglotError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # RecursionError: a deeply nested statement, which Athena has run already
    if not isinstance(tree, exp.Query):
        return None
    return [e.type for e in tree.selects]


def typed_value(value: Any, dtype: Any) -> Any:
    """``value`` (as pyathena read Athena's text) with its leaves as ``dtype`` declares them;
    a part the type does not fit is left as it is."""
    from sqlglot import exp

    if value is None or dtype is None:
        return value
    kind = dtype.this
    if kind == exp.DataType.Type.ARRAY and isinstance(value, list) and dtype.expressions:
        inner = dtype.expressions[0]
        return [typed_value(v, inner) for v in value]
    if kind == exp.DataType.Type.MAP and isinstance(value, dict) and len(dtype.expressions) == 2:
        inner = dtype.expressions[1]
        return {k: typed_value(v, inner) for k, v in value.items()}
    if kind == exp.DataType.Type.STRUCT and isinstance(value, dict):
        fields = [_field_type(f) for f in dtype.expressions]
        if len(fields) != len(value):
            return value
        return {k: typed_value(v, t) for (k, v), t in zip(value.items(), fields, strict=True)}
    return _typed_leaf(value, dtype)


def _field_type(field: Any) -> Any:
    """A ROW field's type: ``ColumnDef(name, type)`` when named, the type itself when not."""
    from sqlglot import exp

    return field.args.get("kind") if isinstance(field, exp.ColumnDef) else field


def _typed_leaf(value: Any, dtype: Any) -> Any:
    """A leaf as its declared type: text read as a number or boolean, a number pyathena
    guessed for text back to its text (an int's text is exact; a float's may not be, so it
    stays)."""
    from sqlglot import exp

    if not isinstance(dtype, exp.DataType):
        return value
    if isinstance(value, str):
        if dtype.is_type(*exp.DataType.INTEGER_TYPES) and _INTEGER.fullmatch(value):
            return int(value)
        if dtype.is_type(*exp.DataType.FLOAT_TYPES) and _FLOAT.fullmatch(value):
            return float(value)
        if dtype.is_type(*exp.DataType.REAL_TYPES) and _DECIMAL.fullmatch(value):
            return Decimal(value)  # as pyathena reads a DECIMAL column: the formats print it
        if dtype.is_type(exp.DataType.Type.BOOLEAN) and value in ("true", "false"):
            return value == "true"
        return value
    if dtype.is_type(*exp.DataType.TEXT_TYPES) and isinstance(value, bool):
        return "true" if value else "false"  # pyathena read a VARCHAR array's text as JSON
    if dtype.is_type(*exp.DataType.TEXT_TYPES) and isinstance(value, int):
        return str(value)
    return value
