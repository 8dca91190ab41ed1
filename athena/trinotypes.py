"""What a statement shows of a value's Trino type, for the rewrites of :mod:`athena.trinocalls`.

DuckDB learns the types when it binds the statement, after sqlglot wrote it; and it binds every
branch of a CASE whatever the type, so one expression cannot pick DuckDB's ``/`` for a DOUBLE
and its ``//`` for an integer, nor ``m[k]`` for a map and ``struct_extract_at`` for a row. The
rewrites that depend on a type therefore read it off the Trino tree, where the statement shows
it: a literal, a CAST, a constructor (``MAP(...)``, ``ROW(...)``), a function whose answer has
one type, or a column whose definition shows one:

* a column of the warehouse tables has its Athena type in :mod:`athena.schema`;
* a column of a derived table, a ``WITH`` query or a ``VALUES`` list with named columns stands
  for the expressions that define it (:func:`definitions`): ``x`` in
  ``SELECT x / 0 FROM (SELECT avg(duration_ms) AS x FROM envoy_access)`` is that ``avg``.

What the statement does not show (a parameter, a column of a subquery with ``*``) is unknown,
and the rewrites leave it to DuckDB's own meaning.
"""

from __future__ import annotations

import re
from typing import Any

#: Nested definitions followed at most (a column of a derived table of a derived table ...).
_MAX_DEPTH = 8

#: Trino's functions whose answer is a DOUBLE whatever their arguments, by sqlglot class name
#: (``Rand`` only without an argument: ``random(n)`` is an integer).
DOUBLE_CALLS = frozenset(
    {
        "Sqrt", "Cbrt", "Ln", "Log", "Exp", "Pow", "Degrees", "Radians", "Sin", "Cos", "Tan",
        "Asin", "Acos", "Atan", "Atan2", "Sinh", "Cosh", "Tanh", "Pi", "Rand", "Stddev",
        "StddevPop", "StddevSamp", "Variance", "VariancePop", "Corr", "CovarPop", "CovarSamp",
        "TimeToUnix",
    }
)  # fmt: skip
#: The aggregates whose answer has their argument's type (``sum`` of a DOUBLE is a DOUBLE).
_SAME_TYPE_AGGREGATES = frozenset({"Sum", "Min", "Max", "AnyValue", "ArbitraryValue"})
#: The floating-point types a CAST may name (as ``DataType.this`` names them).
FLOAT_TYPES = frozenset({"DOUBLE", "FLOAT"})
#: The integer types a CAST may name.
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INT", "BIGINT"})
#: The Athena (Hive DDL) types of :mod:`athena.schema` that are a DOUBLE or REAL in Trino.
_ATHENA_FLOATS = frozenset({"double", "float", "real"})
#: Those that are integers.
_ATHENA_INTEGERS = frozenset({"tinyint", "smallint", "int", "integer", "bigint"})
#: Trino functions answering a map, as sqlglot leaves them (exp.Anonymous), by lower-case name.
_MAP_FUNCTIONS = frozenset(
    {"map_concat", "map_filter", "transform_keys", "transform_values", "map_zip_with",
     "histogram", "multimap_agg"}
)  # fmt: skip


def is_floating(node: Any, depth: int = 0) -> bool:
    """Whether Trino types ``node`` (an unadapted operand) DOUBLE or REAL, as far as the
    statement shows: a literal with an exponent (``1e0``; ``1.5`` is a DECIMAL), a CAST to
    one, a function that always answers one (:data:`DOUBLE_CALLS`), ``avg`` of an integer or
    of a DOUBLE (Trino's ``avg(integer)`` is a DOUBLE), ``sum``/``min``/``max`` of a DOUBLE, a
    column so defined or so typed in the warehouse schema, or arithmetic, a CASE or
    ``coalesce`` with such a value in it (Trino's common type of a DOUBLE and a number is
    DOUBLE)."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    deeper = depth + 1
    if isinstance(node, exp.Literal):
        return not node.is_string and "e" in node.this.lower()
    if isinstance(node, exp.Cast | exp.TryCast):
        return _cast_kind(node) in FLOAT_TYPES
    if type(node).__name__ in DOUBLE_CALLS:
        return not (isinstance(node, exp.Rand) and node.args.get("this") is not None)
    if isinstance(node, exp.Avg):
        return is_floating(node.this, deeper) or is_integral(node.this, deeper)
    if type(node).__name__ in _SAME_TYPE_AGGREGATES:
        return is_floating(node.this, deeper)
    if isinstance(node, exp.Paren | exp.Neg):
        return is_floating(node.this, deeper)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.Mod):
        return is_floating(node.this, deeper) or is_floating(node.expression, deeper)
    if isinstance(node, exp.Coalesce | exp.Nullif):
        args = [node.this, *node.expressions]
        return any(is_floating(a, deeper) for a in args if a is not None)
    if isinstance(node, exp.Case):
        branches = [i.args.get("true") for i in node.args.get("ifs") or []]
        branches.append(node.args.get("default"))
        return any(is_floating(b, deeper) for b in branches if b is not None)
    if isinstance(node, exp.Column):
        if table_type(node) in _ATHENA_FLOATS:
            return True
        return any(is_floating(d, deeper) for d in definitions(node, deeper))
    return False


def is_integral(node: Any, depth: int = 0) -> bool:
    """Whether Trino types ``node`` an integer, as far as the statement shows: an integer
    literal, a CAST to an integer type, ``count``, a column of the warehouse's integer columns
    or one so defined, or arithmetic of such values (``+ - * %``; Trino's ``/`` of integers
    is an integer too)."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    deeper = depth + 1
    if isinstance(node, exp.Literal):
        return node.is_int
    if isinstance(node, exp.Cast | exp.TryCast):
        return _cast_kind(node) in _INTEGER_TYPES
    if isinstance(node, exp.Count):
        return True
    if isinstance(node, exp.Paren | exp.Neg):
        return is_integral(node.this, deeper)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.Mod):
        return is_integral(node.this, deeper) and is_integral(node.expression, deeper)
    if isinstance(node, exp.Column):
        if table_type(node) in _ATHENA_INTEGERS:
            return True
        found = definitions(node, deeper)
        return bool(found) and all(is_integral(d, deeper) for d in found)
    return False


def is_map(node: Any, depth: int = 0) -> bool:
    """Whether ``node`` is visibly a MAP: ``MAP(keys, values)``, ``map_from_entries``, a CAST to
    a map, a Trino function answering one (:data:`_MAP_FUNCTIONS`), or a column so defined or
    so typed in the warehouse schema."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    if isinstance(node, exp.Map | exp.VarMap | exp.MapFromEntries):
        return True
    if isinstance(node, exp.Cast | exp.TryCast):
        return _cast_kind(node) == "MAP"
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() in _MAP_FUNCTIONS
    if isinstance(node, exp.Paren):
        return is_map(node.this, depth + 1)
    if isinstance(node, exp.Column):
        if (table_type(node) or "").startswith("map<"):
            return True
        found = definitions(node, depth + 1)
        return bool(found) and all(is_map(d, depth + 1) for d in found)
    return False


def is_row(node: Any, depth: int = 0) -> bool:
    """Whether ``node`` is visibly a ROW: ``ROW(...)``, a CAST to a row type, or a column so
    defined or so typed in the warehouse schema."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    if isinstance(node, exp.Struct):
        return True
    if isinstance(node, exp.Cast | exp.TryCast):
        return _cast_kind(node) == "STRUCT"
    if isinstance(node, exp.Paren):
        return is_row(node.this, depth + 1)
    if isinstance(node, exp.Column):
        if (table_type(node) or "").startswith("struct<"):
            return True
        found = definitions(node, depth + 1)
        return bool(found) and all(is_row(d, depth + 1) for d in found)
    return False


def is_zoned(node: Any, depth: int = 0) -> bool:
    """Whether ``node`` is visibly one of Trino's own TIMESTAMP WITH TIME ZONE values in the
    session's zone (UTC on Athena): ``now()``/``current_timestamp``, ``from_unixtime(x)``, or
    ``date_trunc``, ``date_add`` or an interval added to or taken from one (each keeps the
    type), and ``from_iso8601_timestamp`` of a literal text in UTC (``Z``, a zero offset or
    none: :func:`iso_text_zone`). Not the tables' ``timestamp``, a plain ``timestamp(3)`` on
    Athena, which the local engine reads as a TIMESTAMP WITH TIME ZONE too (see
    :mod:`athena.trinocalls`)."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    deeper = depth + 1
    if isinstance(node, exp.CurrentTimestamp):
        return True
    if isinstance(node, exp.FromISO8601Timestamp):
        return iso_text_zone(node) == "UTC"
    if isinstance(node, exp.UnixToTime):  # from_unixtime(x, zone) is in that zone
        return not any(node.args.get(k) is not None for k in ("zone", "hours", "minutes"))
    if isinstance(node, exp.TimestampTrunc | exp.DateAdd | exp.Paren):
        return is_zoned(node.this, deeper)
    if isinstance(node, exp.Add | exp.Sub):
        sides = (node.this, node.expression)
        intervals = [isinstance(s, exp.Interval) for s in sides]
        return any(intervals) and any(is_zoned(s, deeper) for s in sides)
    if isinstance(node, exp.Column):
        found = definitions(node, deeper)
        return bool(found) and all(is_zoned(d, deeper) for d in found)
    return False


def is_parsed(node: Any, depth: int = 0) -> bool:
    """Whether ``node`` is visibly Trino's ``date_parse`` answer, a ``timestamp(3)`` without a
    zone (``DateTimeFunctions.dateParse``), or ``date_trunc``, ``date_add`` or an interval
    added to or taken from one (each keeps the type), or a column so defined: its text has
    three fraction digits (``2026-12-06 10:00:00.000``), where DuckDB's TIMESTAMP printed
    none for a whole second."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return False
    deeper = depth + 1
    if isinstance(node, exp.StrToTime):
        return True
    if isinstance(node, exp.TimestampTrunc | exp.DateAdd | exp.Paren):
        return is_parsed(node.this, deeper)
    if isinstance(node, exp.Add | exp.Sub):
        sides = (node.this, node.expression)
        intervals = [isinstance(s, exp.Interval) for s in sides]
        return any(intervals) and any(is_parsed(s, deeper) for s in sides)
    if isinstance(node, exp.Column):
        found = definitions(node, deeper)
        return bool(found) and all(is_parsed(d, deeper) for d in found)
    return False


def zone_given(node: Any, depth: int = 0) -> Any | None:
    """The zone of ``node`` when it is visibly a value of ``x AT TIME ZONE zone`` (a Trino
    TIMESTAMP WITH TIME ZONE in ``zone``, which the local engine holds as the zone's wall time
    without a zone: see :mod:`athena.trinocalls`): the operator itself, or ``date_trunc``,
    ``date_add``, an interval added to or taken from one, or ``min``, ``max`` or
    ``arbitrary`` of one (each keeps the type and the zone), a ``coalesce`` or CASE whose
    every value is one in the same zone (or NULL), ``from_iso8601_timestamp`` of a literal
    text with an offset other than zero (in that offset's zone, :func:`iso_text_zone`), or a
    column so defined. Else None. The zone is the operator's own expression; through a column,
    a ``coalesce`` or a CASE it must be one string literal (the same in every definition or
    value), which means the same outside the query that defines the column."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return None
    deeper = depth + 1
    if isinstance(node, exp.AtTimeZone):
        return node.args.get("zone")
    if isinstance(node, exp.FromISO8601Timestamp):
        zone = iso_text_zone(node)
        return exp.Literal.string(zone) if zone not in (None, "UTC") else None
    if isinstance(node, exp.TimestampTrunc | exp.DateAdd | exp.Paren):
        return zone_given(node.this, deeper)
    if isinstance(node, exp.Coalesce | exp.Case):
        return _same_zone([v for v in _branch_values(node) if not isinstance(v, exp.Null)], deeper)
    if type(node).__name__ in _SAME_TYPE_AGGREGATES - {"Sum"}:
        return zone_given(node.this, deeper)
    if isinstance(node, exp.Add | exp.Sub):
        sides = (node.this, node.expression)
        if not any(isinstance(s, exp.Interval) for s in sides):
            return None
        zones = [zone_given(s, deeper) for s in sides if not isinstance(s, exp.Interval)]
        return zones[0] if zones else None
    if isinstance(node, exp.Column):
        return _same_zone(definitions(node, deeper), deeper)
    return None


def _same_zone(values: list[Any], depth: int) -> Any | None:
    """The zone of ``values`` (:func:`zone_given`) when each is a value of ``AT TIME ZONE``
    with the same zone, one string literal; else None (no value, another value among them,
    or zones the statement does not spell out alike)."""
    from sqlglot import exp

    zones = [zone_given(v, depth) for v in values]
    texts = {z.this for z in zones if isinstance(z, exp.Literal) and z.is_string}
    if zones and len(texts) == 1 and all(isinstance(z, exp.Literal) for z in zones):
        return zones[0]
    return None


def _branch_values(node: Any) -> list[Any]:
    """The values ``node`` (a ``coalesce`` or a CASE) may answer: its arguments, or each
    ``THEN`` and the ``ELSE`` (a CASE without one may answer NULL, as an ``ELSE NULL``)."""
    from sqlglot import exp

    if isinstance(node, exp.Coalesce):
        return [node.this, *node.expressions]
    values = [i.args.get("true") for i in node.args.get("ifs") or []]
    default = node.args.get("default")
    return [*values, default if default is not None else exp.Null()]


#: The UTC offset ending an ISO 8601 time as Trino's ``from_iso8601_timestamp`` reads it
#: (Joda's ``ISODateTimeFormat.dateTimeParser``: ``Z``, ``+HH``, ``+HH:MM`` or ``+HHMM``).
_ISO_OFFSET = re.compile(r"(?:[Zz]|([+-])(\d\d)(?::?(\d\d))?)$")


def iso_text_zone(node: Any) -> str | None:
    """The zone of Trino's answer to ``from_iso8601_timestamp(text)`` (``node``) when ``text``
    is a literal: the text's own offset (``+02:00``, as Trino names a zone of a fixed offset),
    ``UTC`` for ``Z``, a zero offset or none (the session zone, UTC on Athena); None when
    the text is not a literal or its offset is not one of those spellings. Trino keeps the
    offset (``DateTimeFunctions.fromISO8601Timestamp``: ``withOffsetParsed``), so ``hour()``
    of ``2026-12-06T10:00:00+02:00`` is 10 and its text ends ``+02:00``."""
    from sqlglot import exp

    text = node.this
    if not (isinstance(text, exp.Literal) and text.is_string):
        return None
    date_time = re.split(r"[Tt]", text.this.strip(), maxsplit=1)  # Joda's letters: any case
    if len(date_time) < 2 or not re.search(r"[Zz+-]", date_time[1]):
        return "UTC"
    time = date_time[1]
    found = _ISO_OFFSET.search(time)
    if found is None or found.start() == 0:
        return None
    sign, hours, minutes = found.groups()
    if sign is None or int(hours) * 60 + int(minutes or 0) == 0:
        return "UTC"
    return f"{sign}{hours}:{minutes or '00'}"


def _cast_kind(node: Any) -> str:
    """The type a CAST names, as ``DataType.this`` names it ('' for another target)."""
    from sqlglot import exp

    to = node.args.get("to")
    return to.this.name if isinstance(to, exp.DataType) else ""


def definitions(column: Any, depth: int = 0) -> list[Any]:
    """The expressions ``column`` stands for when it is a column of a derived table, a ``WITH``
    query (each branch of a UNION, by position) or a ``VALUES`` list with named columns (each
    row's value), found from the nearest SELECT holding it; [] when the statement does not
    show them."""
    from sqlglot import exp

    if depth > _MAX_DEPTH:
        return []
    name, qualifier = column.name, column.table
    for source in _sources(column):
        alias = source.alias_or_name
        if qualifier and qualifier != alias:
            continue
        query = source.this if isinstance(source, exp.Subquery) else None
        if isinstance(source, exp.Values):
            found = _values_column(source, source.args.get("alias"), name)
        elif isinstance(query, exp.Values):  # (VALUES ...) AS t(a, b)
            found = _values_column(query, source.args.get("alias"), name)
        elif isinstance(source, exp.Table):
            cte = _cte(column, source.name) if not source.args.get("db") else None
            found = _projections(cte.this, name, _renamed(cte)) if cte is not None else []
        else:
            found = _projections(query, name, _renamed(source)) if query is not None else []
        if found:
            return found
    return []


def table_type(column: Any) -> str | None:
    """The Athena type (:mod:`athena.schema`, lower case) of ``column`` when it is a column of a
    warehouse table read in its SELECT (by name, or by the table's alias), else None."""
    from sqlglot import exp

    from athena.schema import TABLES

    name, qualifier = column.name.lower(), column.table
    for source in _sources(column):
        if not isinstance(source, exp.Table) or source.name.lower() not in TABLES:
            continue
        if not source.args.get("db") and _cte(column, source.name) is not None:
            continue  # a WITH query named as the table hides it
        if qualifier and qualifier != source.alias_or_name:
            continue
        for col in TABLES[source.name.lower()].columns:
            if col.name == name:
                return col.athena.lower()
    return None


def _sources(column: Any) -> list[Any]:
    """The FROM and JOIN sources of the nearest SELECT holding ``column`` (a derived table or
    VALUES list as its Subquery/Values node, a table or WITH query as its Table node)."""
    from sqlglot import exp

    select = column.find_ancestor(exp.Select)
    if select is None:
        return []
    found = []
    first = select.args.get("from_") or select.args.get("from")
    if isinstance(first, exp.From):
        found.append(first.this)
    found += [j.this for j in select.args.get("joins") or []]
    return found


def _cte(node: Any, name: str) -> Any | None:
    """The WITH query named ``name`` visible from ``node`` (the nearest one first)."""
    from sqlglot import exp

    parent = node.parent
    while parent is not None:
        with_ = parent.args.get("with_") or parent.args.get("with")
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                if cte.alias_or_name == name:
                    return cte
        parent = parent.parent
    return None


def _projections(query: Any, name: str, renamed: list[str] | None = None) -> list[Any]:
    """The expressions ``query`` (a SELECT, or a set operation's branches) names ``name``, or
    those at its position in ``renamed`` (the column names of ``t(a, b) AS (...)``, which
    name the query's columns by position, whatever it names them). A set operation's columns
    are named by its first branch and each branch gives its value at the same position,
    whatever that branch names it (Trino's UNION, INTERSECT and EXCEPT): ``n`` of ``SELECT 7
    AS n, 1e0 AS f UNION ALL SELECT 3 AS f, 0e0 AS n`` is 7 and 3, and reading the later
    branches by name (or ``y`` of ``t(x, y) AS (SELECT 1e0 AS y, 7 AS x)`` by the query's
    names) took it for a DOUBLE. [] when a ``*`` or a VALUES branch hides the position."""
    from sqlglot import exp

    branches = _branches(query)
    first = branches[0]
    if not isinstance(first, exp.Select):
        return []
    names = renamed or [None if p.is_star else p.alias_or_name for p in first.expressions]
    at = names.index(name) if name in names else None
    if at is None:
        return []
    by_position = renamed is not None or len(branches) > 1
    found = []
    for branch in branches:
        if not isinstance(branch, exp.Select) or len(branch.expressions) <= at:
            return []
        if by_position and any(p.is_star for p in branch.expressions[: at + 1]):
            return []
        projection = branch.expressions[at]
        found.append(projection.this if isinstance(projection, exp.Alias) else projection)
    return found


def _renamed(source: Any) -> list[str] | None:
    """The column names a derived table's or ``WITH`` query's alias gives (``t(a, b)``), if
    any."""
    alias = source.args.get("alias")
    columns = alias.columns if alias is not None else []
    return [c.name for c in columns] if columns else None


def _branches(query: Any) -> list[Any]:
    """The branches of a set operation, left to right (``query`` itself when it is not one),
    those in parentheses unwrapped."""
    from sqlglot import exp

    while isinstance(query, exp.Subquery | exp.Paren):
        query = query.this
    if isinstance(query, exp.SetOperation):
        return _branches(query.this) + _branches(query.expression)
    return [query]


def _values_column(values: Any, alias: Any, name: str) -> list[Any]:
    """Each row's value of the column ``name`` of ``values`` named by ``alias`` (``t(a, b)``)."""
    from sqlglot import exp

    names = [c.name for c in alias.columns] if alias is not None else []
    if name not in names:
        return []
    at = names.index(name)
    rows = [row.expressions if isinstance(row, exp.Tuple) else [row] for row in values.expressions]
    return [row[at] for row in rows if at < len(row)]
