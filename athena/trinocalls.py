"""More Trino calls whose DuckDB namesake answers otherwise, rewritten on the parsed tree.

Companion of :mod:`athena.trinofuncs` (same contract: each rewrite takes the sqlglot node and
``adapt``, which adapts its arguments, and returns the DuckDB tree). Each answer below is
Trino's documented one (its "Functions and operators" pages) or its code's, where DuckDB gave
another without a word:

* ``json_extract_scalar(json, path)`` / ``json_extract(json, path)``: NULL for text that is not
  JSON (Trino's ``JsonExtract`` returns NULL on a parse error): DuckDB failed the whole query,
  so ``json_extract_scalar(message, '$.level')`` over ``container_logs``, where most lines are
  plain text, answered nothing. ``json_extract_scalar`` of an object or array is NULL ("the
  value referenced by json_path must be a scalar"): DuckDB gave its JSON text.
* ``split(s, delimiter, limit)``: at most ``limit`` fields, the last holding the rest of the
  text; sqlglot dropped the limit (``split('a,b,c', ',', 2)`` gave three fields, not
  ``['a', 'b,c']``).
* ``substr(s, start[, length])``: Trino's is empty for a start of 0, a length below 1 and a
  negative start before the beginning of the text; DuckDB counts a start of 0 as the position
  before the first character (``substr(path, 0, 5)`` gave 4 characters, Trino ''), a negative
  length as characters before the start, and clamps a start before the beginning.
* ``ts AT TIME ZONE zone``: Trino reads a TIMESTAMP without a zone in the session's zone (UTC
  on Athena) and shows that instant in ``zone``; DuckDB reads it as a wall time *in* ``zone``,
  shifting the other way (``TIMESTAMP '2024-03-10 22:00' AT TIME ZONE 'America/New_York'``
  was 02:00 the next day, Trino 18:00). Cast to a TIMESTAMP WITH TIME ZONE first (UTC, the
  session zone), both engines show the same wall time in ``zone``. But Trino's answer is a
  TIMESTAMP WITH TIME ZONE in ``zone`` ("sets the time zone of a timestamp": the same
  instant), DuckDB's that wall time *without* a zone, which ``hour()``, ``date_trunc`` and
  ``date_format`` read as Trino's read the zoned value, and which printed as if UTC (New
  York's 22:00 as ``22:00Z``, 5 hours off) and compared so (``WHERE ts AT TIME ZONE z >
  TIMESTAMP '...'``, which Trino compares as instants, the TIMESTAMP read in UTC). Where the
  statement shows such a value (:func:`athena.trinotypes.zone_given`), a column of the answer
  is its instant (:func:`zoned_instant`; the output prints it in UTC, as every time), so is
  an operand of a comparison or ``IN`` (:func:`zoned_comparison`), and ``CAST(... AS
  varchar)`` prints it as Trino, with the zone's name (``2026-12-05 22:00:01.954
  America/New_York``, three fraction digits whatever the precision, the zone as written).
  A ``CASE`` or ``coalesce`` of such values in one zone is the instant of the value it picks
  (:func:`_branch_instants`), ``date_diff`` with one counts as Trino's (:func:`date_diff`),
  ``from_iso8601_timestamp`` of a literal with an offset is a value in that offset
  (:func:`from_iso8601_timestamp`), and an offset zone (``'+02:00'``) is given to DuckDB as
  ``GMT+02:00`` (:func:`duckdb_zone`). Left: a value read through a subquery's ``*`` (not
  shown) or a ``CASE`` of values in different zones prints the wall time, and what is made
  of a wall time in the hour a zone repeats prints as the later instant
  (:func:`zoned_instant`).
* ``CAST(double AS integer)`` (and the other integer types): Trino rounds half away from zero
  (``MathFunctions.round``: ``CAST(2.5e0 AS integer)`` is 3), DuckDB half to even (2), so
  ``CAST(avg(duration_ms) AS bigint)`` differed on every .5. Rounded with DuckDB's ``round``
  (half away from zero) first. REAL is left: Trino rounds it with Java's ``Math.round``
  (half up, -2.5 to -2), as DuckDB's even rounding happens to on negative ties only.
* ``CAST(ts AS varchar)`` of the tables' ``timestamp``: Athena's column is a ``timestamp(3)``
  and prints ``2024-03-10 22:00:03.719`` (always 3 digits); locally it is a TIMESTAMP WITH
  TIME ZONE (UTC) and printed ``2024-03-10 22:00:03.719+00``. A TIMESTAMP WITH TIME ZONE cast
  to text prints as Athena prints the column. Trino's own zoned values print with their zone
  there (``2024-03-10 22:00:03.719 UTC``): locally they and the column are one type, so those
  the statement shows (``now()``, ``current_timestamp``, ``from_unixtime(x)``, and
  ``date_trunc``, ``date_add`` or an interval added to one: :func:`athena.trinotypes.is_zoned`)
  print so, and other values as the column. ``localtimestamp`` and ``date_parse``'s answer
  (:func:`athena.trinotypes.is_parsed`), ``timestamp(3)`` values without a zone, print with
  three fraction digits (DuckDB wrote six, or none for a whole second).
* ``CAST(double AS varchar)`` (and REAL) is Java's ``Double.toString``: ``1.0E7`` from 1e7 up
  and ``1.5E-5`` under 1e-3, ``NaN``, ``Infinity``; DuckDB wrote ``10000000.0``, ``1.5e-05``,
  ``nan``, ``inf`` (:data:`athena.trinofuncs.JAVA_NUMBER_TEXT`, which ``format``'s ``%s``
  prints too). Ad-hoc statements only, as the other casts.
* ``regexp_extract(s, pattern, group)`` is NULL when the group took no part in the match
  (``JoniRegexpFunctions``); DuckDB gave ''.
* ``array[i]`` fails outside the array (``ArraySubscriptOperator``: "Array subscript must be
  less than or equal to array length", "... is negative", "SQL array indices start at 1"),
  where DuckDB gave NULL or counted a negative index from the end; ``element_at`` stays NULL
  outside, and fails for 0 as Trino's does.
* ``map[key]`` fails for a key the map lacks (``MapSubscriptOperator``: "Key not present in
  map: b"), where DuckDB gave NULL; ``element_at`` stays NULL. Only where the statement shows
  the map (:func:`athena.trinotypes.is_map`).
* ``row[i]`` is the ROW's ``i``-th field (from 1, a constant: Trino's "Structural" types
  page); DuckDB reads no field by position of the ROWs sqlglot writes, which have names.
  Where the statement shows the ROW (:func:`athena.trinotypes.is_row`); elsewhere the
  local engine says what to write (:data:`athena.engines.local.ROW_POSITION_TEXT`).
* ``date_parse(text, format)`` reads Trino's specifiers (the ``date_format`` ones: ``%f``
  1 to 9 digits cut to milliseconds, an unknown letter is that letter), a year the text lacks
  is 2000 with a month or day in the format, else 1970, ``%y``'s ``69`` is 2069, a month's
  name (``%b``, ``%M``) is short or full, and a day of the week (``%a``, ``%W``: short or full
  name) moves the date within its ISO week, as Joda reads them; DuckDB's ``strptime`` took
  1900 (without 29 February) and 1969, one length of month name per specifier, ignored the
  day of the week, and refused ``%q`` and ``%v``. Those Trino refuses are refused, and
  ``%v``/``%x`` too, and a day of the week without a month and day.
* ``date_format(ts, format)``: ``%v`` is the ISO week and ``%x`` its year (DuckDB refused
  ``%v``), a letter Trino does not know is that letter, and ``%D %U %u %V %w %X``, which Trino
  refuses, are refused (sqlglot made ``%u`` DuckDB's Monday-based week).
* ``a / b`` of a DOUBLE or REAL by zero is Infinity or NaN, as in Trino, where the statement
  shows the DOUBLE, a column's definition included (:func:`divide` says why only there);
  DuckDB failed. A decimal literal divided by a literal (or a literal by one) is Trino's
  DECIMAL, rounded half away from zero at the larger scale (``1.0 / 4`` is 0.3; DuckDB's
  quotient of decimals is the DOUBLE 0.25), computed exactly (:func:`_decimal_quotient`);
  a division with a column of DECIMALs (``duration_ms / 1000.0``) is still DuckDB's DOUBLE.
  Ad-hoc statements only.
* ``upper(s)`` leaves ``ß`` as it is, as Trino's (character by character, Java's
  ``Character.toUpperCase``); DuckDB wrote ``ẞ``. Other letters follow DuckDB's Unicode tables,
  which may differ from Java's for rare scripts. Ad-hoc statements only.
* ``EXTRACT(DOW FROM ts)``: Trino's field is ``day_of_week()``, 1 (Monday) to 7 (Sunday);
  DuckDB's ``dow`` is 0 for Sunday. ``DAY_OF_WEEK``, ``YEAR_OF_WEEK``/``YOW`` and
  ``DAY_OF_MONTH``, Trino's other names, were refused by DuckDB ("extract specifier not
  recognized"): each becomes DuckDB's field of the same meaning.
* ``url_encode(s)`` is Java's ``URLEncoder`` (a space is ``+``, ``*`` stays, ``~`` is
  ``%7E``) and ``url_decode(s)`` its ``URLDecoder`` (``+`` is a space); DuckDB's follow
  RFC 3986 (``%20``, ``%2A``, ``~``; ``+`` kept), so a query string's ``q=a+b`` decoded to
  ``a+b`` (also in the advice given for ``url_extract_parameter``).
* ``regexp_*`` patterns are Java's: a named group ``(?<name>x)`` is RE2's ``(?P<name>x)``, and
  a lookaround or atomic group, which RE2 lacks, is refused with what to do (DuckDB's "invalid
  perl operator: (?<" named no way out).
* ``approx_percentile(x, w, p)`` with a weight is refused: there is no weighted quantile in
  DuckDB, and sqlglot's spelling dropped the weight (``quantile_disc(x, p)``), an unweighted
  answer.

Rewrites that would change the canned queries' SQL (the casts, ``/`` and ``upper``) apply to
``logq sql`` only; the canned queries are written for both engines. Functions DuckDB lacks
altogether (``json_size``, ``any_match``, ``regexp_position``) are in :mod:`athena.trinomissing`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, NamedTuple

from athena.queries import QueryError
from athena.trinofuncs import JAVA_NUMBER_TEXT, duckdb_zone, from_template
from athena.trinotypes import (
    is_floating,
    is_map,
    is_parsed,
    is_row,
    is_zoned,
    iso_text_zone,
    zone_given,
)

#: DuckDB's names of the integer types a CAST may target (as ``DataType.this`` names them).
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INT", "BIGINT"})
#: DuckDB's names of the text types a CAST may target.
_TEXT_TYPES = frozenset({"VARCHAR", "TEXT", "CHAR", "NCHAR", "NVARCHAR"})

#: ``json_extract`` / ``json_extract_scalar``: NULL unless the text is JSON (and, for the
#: scalar one, the value at the path is neither an object nor an array).
_JSON_VALID = "CASE WHEN json_valid(__json__) THEN __call__ END"
_JSON_SCALAR = (
    "CASE WHEN json_valid(__json__) AND json_type(__json__, __path__) NOT IN ('OBJECT', 'ARRAY') "
    "THEN __call__ END"
)

#: Trino's ``split(s, d, limit)`` over DuckDB's ``string_split``: the fields past ``limit - 1``
#: joined back with the delimiter (which is what they were split from).
_SPLIT_LIMIT = """
CASE
  WHEN __s__ IS NULL OR __d__ IS NULL OR __limit__ IS NULL THEN NULL
  WHEN __limit__ < 1 THEN error('split: limit must be positive')
  WHEN len(string_split(__s__, __d__)) <= __limit__ THEN string_split(__s__, __d__)
  ELSE list_concat(
    list_slice(string_split(__s__, __d__), 1, __limit__ - 1),
    [array_to_string(list_slice(string_split(__s__, __d__), __limit__, -1), __d__)])
END
"""

#: Trino's ``substr`` (``StringFunctions.substr``): '' for a start of 0, a length below 1 or a
#: start before the beginning; a NULL argument still gives NULL (``__empty__``).
_SUBSTR = """
CASE
  WHEN __start__ = 0 OR (__start__ < 0 AND __start__ + length(__s__) < 0)__short__
  THEN __empty__
  ELSE __call__
END
"""

#: What ``CAST(x AS double-to-integer type)`` means on Trino (see the module docs).
_ROUNDED_CAST = "CASE WHEN typeof(__x__) = 'DOUBLE' THEN __rounded__ ELSE __call__ END"
#: The text of the tables' timestamp as Athena prints its ``timestamp(3)``. DuckDB binds
#: both branches whatever the type: the value reaches ``strftime`` through its text, which
#: casts back to a TIMESTAMP WITH TIME ZONE (``strftime`` of an integer would not bind).
_TIMESTAMP_TEXT = (
    "CASE WHEN typeof(__x__) = 'TIMESTAMP WITH TIME ZONE' "
    "THEN strftime(CAST(CAST(__x__ AS VARCHAR) AS TIMESTAMPTZ), '%Y-%m-%d %H:%M:%S.%g') "
    "WHEN typeof(__x__) IN ('DOUBLE', 'FLOAT') THEN __java__ "
    "ELSE __call__ END"
)

#: The text of Trino's own TIMESTAMP WITH TIME ZONE values (``now()``, ``from_unixtime``: a
#: ``timestamp(3) with time zone`` in the session's zone, UTC on Athena), as Trino casts one
#: to text: three fraction digits and the zone's name (``SqlTimestampWithTimeZone``).
_ZONED_TEXT = "strftime(__x__, '%Y-%m-%d %H:%M:%S.%g') || ' UTC'"
#: The text of a value of ``x AT TIME ZONE zone`` (locally the zone's wall time, without a
#: zone): as Trino prints a TIMESTAMP WITH TIME ZONE in a named zone,
#: ``2026-12-05 22:00:01.954 America/New_York``.
_AT_ZONE_TEXT = "strftime(__x__, '%Y-%m-%d %H:%M:%S.%g') || ' ' || __zone__"
#: The text of ``localtimestamp`` and ``date_parse``: a ``timestamp(3)`` in Trino, always three
#: fraction digits (DuckDB wrote six, or none for a whole second).
_LOCAL_TEXT = "strftime(__x__, '%Y-%m-%d %H:%M:%S.%g')"


def json_extract(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.JSONExtract or exp.JSONExtractScalar) with Trino's NULLs (module docs)."""
    from sqlglot import exp

    call = node.copy()
    call.set("this", adapt(node.this))
    call.set("expression", adapt(node.expression))
    scalar = isinstance(node, exp.JSONExtractScalar)
    return from_template(
        _JSON_SCALAR if scalar else _JSON_VALID,
        json=call.this,
        path=_path_text(call.expression),
        call=call,
    )


def _path_text(path: Any) -> Any:
    """A JSON path argument as DuckDB's functions take it: sqlglot's JSONPath as its text."""
    from sqlglot import exp

    if isinstance(path, exp.JSONPath):
        return exp.Literal.string(path.sql(dialect="duckdb").strip("'").replace("''", "'"))
    return path


def split(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Split): with a limit, Trino's meaning of it (module docs)."""
    limit = node.args.get("limit")
    call = node.copy()
    call.set("this", adapt(node.this))
    call.set("expression", adapt(node.expression))
    if limit is None:
        return call
    limit = adapt(limit)
    if limit.is_int and limit.to_py() < 1:
        raise QueryError(f"split: limit {limit.to_py()} is below 1, which Athena refuses")
    return from_template(_SPLIT_LIMIT, s=call.this, d=call.expression, limit=limit)


def substr(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Substring) with Trino's meaning (module docs). A literal start of 1 or
    more with no length, or a literal length of 1 or more, means the same on both engines and
    is left as it is."""
    from sqlglot import exp

    call = node.copy()
    for key, value in node.args.items():
        if isinstance(value, exp.Expression):
            call.set(key, adapt(value))
    start, length = call.args.get("start"), call.args.get("length")
    if start is None:
        return call
    plain_start = start.is_int and start.to_py() >= 1
    plain_length = length is None or (length.is_int and length.to_py() >= 1)
    if plain_start and plain_length:
        return call
    zero = exp.Literal.number(0)
    empty = exp.Substring(
        this=call.this.copy(),
        start=exp.Literal.number(1),
        length=zero if length is None else exp.Mul(this=length.copy(), expression=zero),
    )
    template = _SUBSTR.replace("__short__", "" if length is None else " OR __length__ < 1")
    return from_template(template, s=call.this, start=start, length=length, empty=empty, call=call)


def at_time_zone(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.AtTimeZone) with its value cast to a TIMESTAMP WITH TIME ZONE first, so a
    value without a zone is read in UTC, the session zone (module docs), and a value already
    in a zone (:func:`athena.trinotypes.zone_given`) is its instant (:func:`zoned_instant`):
    its wall time read as UTC put ``from_iso8601_timestamp('...10:00+02:00') AT TIME ZONE
    'UTC'`` at 10:00 UTC, Trino 08:00."""
    from sqlglot import exp

    inner = zone_given(node.this)  # a value of AT TIME ZONE or an offset ISO text: its instant
    value = adapt(node.this) if inner is None else zoned_instant(node.this, inner, adapt)
    value = exp.Cast(this=value, to=exp.DataType.build("TIMESTAMPTZ"))
    return exp.AtTimeZone(this=value, zone=duckdb_zone(adapt(node.args["zone"])))


def from_iso8601_timestamp(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.FromISO8601Timestamp): of a literal text with an offset other than zero,
    Trino's answer is in that offset's zone (:func:`athena.trinotypes.iso_text_zone`), which
    the local engine holds as every zoned value of the statement, that zone's wall time
    (``2026-12-06T10:00:00+02:00`` is 10:00, which ``hour()`` reads as Trino's does; printed,
    compared or cast to text as a value of ``AT TIME ZONE '+02:00'``). Any other call is
    left to sqlglot's cast to a TIMESTAMP WITH TIME ZONE (the instant, in UTC). A literal is
    given in upper case: Joda reads ``t`` and ``z`` as ``T`` and ``Z``, DuckDB refused them."""
    from sqlglot import exp

    call = node.copy()
    call.set("this", adapt(node.this))
    if isinstance(node.this, exp.Literal) and node.this.is_string:
        call.set("this", exp.Literal.string(node.this.this.upper()))
    zone = iso_text_zone(node)
    if zone in (None, "UTC"):
        return call
    return exp.AtTimeZone(this=call, zone=duckdb_zone(exp.Literal.string(zone)))


def printed_projection(node: Any) -> bool:
    """Whether ``node`` is a column of the statement's answer: an expression (aliased or not)
    of the outermost SELECT's list, or of a branch of an outermost UNION, INTERSECT or
    EXCEPT. Not one of a derived table or a ``WITH`` query, whose values the statement uses
    rather than prints."""
    from sqlglot import exp

    parent = node.parent
    if isinstance(parent, exp.Alias):
        node, parent = parent, parent.parent
    if not isinstance(parent, exp.Select) or node.arg_key != "expressions":
        return False
    outer = parent.parent
    while isinstance(outer, exp.SetOperation | exp.Subquery):
        if isinstance(outer, exp.Subquery) and not (
            outer.parent is None or isinstance(outer.parent, exp.SetOperation)
        ):
            return False  # a derived table, or a subquery in an expression
        outer = outer.parent
    return outer is None


#: The instant of ``x AT TIME ZONE zone`` where the statement allows it (:func:`zoned_instant`):
#: ``x`` as a TIMESTAMP WITH TIME ZONE, the zone's wall time still computed so that a zone
#: DuckDB does not know fails the statement, as on Athena.
_EXACT_INSTANT = "CASE WHEN (__x__ AT TIME ZONE __zone__) IS NULL THEN NULL ELSE __x__ END"


def zoned_instant(node: Any, zone: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node``, a value of ``AT TIME ZONE zone`` (:func:`athena.trinotypes.zone_given`), as
    the instant it is in Trino, a TIMESTAMP WITH TIME ZONE (printed in UTC, as every time is).

    ``x AT TIME ZONE zone`` itself is ``x`` read as UTC (:data:`_EXACT_INSTANT`), unless the
    SELECT holding it groups its rows, where its GROUP BY may name that very expression and
    only what is made of it may be printed; a ``coalesce`` or CASE of such values is the
    instant of each (:func:`_branch_instants`), on the same condition; that, and any other
    value (``date_trunc`` of one, a column of a derived table defined by one), is the local
    engine's wall time in ``zone`` read back in ``zone`` (DuckDB's ``AT TIME ZONE`` of a
    TIMESTAMP without a zone), which is the instant but in the hour a zone repeats when its
    clocks go back: a wall time there reads as the later of its two instants (01:30 in New
    York on the first Sunday of November prints as 06:30Z, also for what was 05:30Z). The
    value is adapted below a parenthesis, so that it is not taken for a printed column again
    (:func:`printed_projection`)."""
    from sqlglot import exp

    bare = node
    while isinstance(bare, exp.Paren):
        bare = bare.this
    select = node.find_ancestor(exp.Select)
    grouped = select is not None and select.args.get("group") is not None
    in_where = isinstance(node.find_ancestor(exp.Where, exp.Select), exp.Where)
    if isinstance(bare, exp.Coalesce | exp.Case) and (in_where or not grouped):
        return _branch_instants(bare, adapt)
    if isinstance(bare, exp.AtTimeZone) and (in_where or not grouped):
        value = exp.Cast(this=adapt(bare.this), to=exp.DataType.build("TIMESTAMPTZ"))
        return from_template(_EXACT_INSTANT, x=value, zone=duckdb_zone(adapt(zone)))
    inner = exp.Paren(this=node.copy())
    inner.parent = node.parent
    return exp.AtTimeZone(this=adapt(inner), zone=duckdb_zone(adapt(zone)))


def _branch_instants(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (a ``coalesce`` or CASE whose values are zoned, :func:`athena.trinotypes.
    zone_given`) with each value its instant (:func:`zoned_instant`), its conditions adapted:
    Trino's answer is the instant of the value it picks. Locally the value picked was the
    zone's wall time, printed as if UTC (New York's 05:00 as ``05:00Z``, 5 hours off)."""
    from sqlglot import exp

    def instant(value: Any) -> Any:
        zone = zone_given(value)
        return adapt(value) if zone is None else zoned_instant(value, zone, adapt)

    call = node.copy()
    if isinstance(node, exp.Coalesce):
        call.set("this", instant(node.this))
        call.set("expressions", [instant(v) for v in node.expressions])
        return call
    if node.args.get("this") is not None:
        call.set("this", adapt(node.this))
    for branch, original in zip(
        call.args.get("ifs") or [], node.args.get("ifs") or [], strict=True
    ):
        branch.set("this", adapt(original.this))
        branch.set("true", instant(original.args["true"]))
    if node.args.get("default") is not None:
        call.set("default", instant(node.args["default"]))
    return call


#: The operators whose two sides Trino reads as instants when one is a TIMESTAMP WITH TIME ZONE.
_INSTANT_OPERATORS = frozenset({"EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ"})


def zoned_comparison(node: Any, adapt: Callable[[Any], Any]) -> Any | None:
    """``node`` (a comparison, BETWEEN or IN) with each operand that is a value of ``AT TIME
    ZONE`` compared as its instant (:func:`zoned_instant`), as Trino compares a TIMESTAMP WITH
    TIME ZONE (with another, or with a TIMESTAMP read in the session zone, UTC on Athena);
    None when no operand is one. Locally the operand was the zone's wall time, compared with
    the other side as if it were UTC: 5 hours off for New York. So too the other readers of
    the instant: ``greatest``/``least``, ``IS DISTINCT FROM``, ``to_unixtime`` and the
    difference of two times (``from_iso8601_timestamp('...10:00+02:00')``, held as +02:00's
    wall time, was 2 hours late in each)."""
    from sqlglot import exp

    from athena.trinotypes import zone_given

    def instant(operand: Any) -> Any:
        zone = zone_given(operand)
        return adapt(operand) if zone is None else zoned_instant(operand, zone, adapt)

    if isinstance(node, exp.In):
        # x IN (a, b) is x = a OR x = b: each side compared as its instant. Before, a zoned
        # value's wall time was looked up in a list of UTC times (none of 22:05Z's rows was
        # IN (TIMESTAMP '... 22:05:00') in New York).
        listed = node.args.get("expressions") or []
        if all(zone_given(x) is None for x in (node.this, *listed)):
            return None
        call = node.copy()
        call.set("this", instant(node.this))
        call.set("expressions", [instant(x) for x in listed])
        if node.args.get("query") is not None:
            call.set("query", adapt(node.args["query"]))
        return call
    if isinstance(node, exp.Greatest | exp.Least):
        values = [node.this, *(node.expressions or [])]
        if all(zone_given(v) is None for v in values):
            return None
        call = node.copy()
        call.set("this", instant(node.this))
        call.set("expressions", [instant(v) for v in node.expressions or []])
        return call
    if isinstance(node, exp.Between):
        keys: tuple[str, ...] = ("this", "low", "high")
    elif type(node).__name__ in _INSTANT_OPERATORS:
        keys = ("this", "expression")
    elif isinstance(node, exp.Sub) and not any(
        isinstance(side, exp.Interval) for side in (node.this, node.expression)
    ):
        keys = ("this", "expression")  # the interval between two instants
    elif isinstance(node, exp.TimeToUnix):
        keys = ("this",)
    else:
        return None
    if all(zone_given(node.args.get(key)) is None for key in keys):
        return None
    call = node.copy()
    for key in keys:
        call.set(key, instant(node.args.get(key)))
    return call


#: The units ``date_diff`` counts between instants whatever the zone (Joda's zoned time fields
#: shift both ends by one offset); the others count on the clock of the first value's zone.
_TIME_UNITS = frozenset({"millisecond", "second", "minute", "hour"})


def date_diff(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.DateDiff with a unit, Trino's ``date_diff(unit, a, b)``) as DuckDB's
    ``date_sub(unit, a, b)``, which counts whole units as Trino does (DuckDB's ``date_diff``
    counts boundaries crossed).

    With a value of ``AT TIME ZONE`` on either side (:func:`athena.trinotypes.zone_given`),
    Trino's is the TIMESTAMP WITH TIME ZONE one (``timestamptz.DateDiff``): a TIMESTAMP on the
    other side is read in the session zone (UTC), hours and smaller count between the two
    instants, and days and larger on the clock of the first value's zone (Joda's zoned
    fields). Locally the zoned side was the zone's wall time, counted against UTC's:
    ``date_diff('hour', ts, ts AT TIME ZONE 'America/New_York')`` was -5 in winter, Athena 0."""
    from sqlglot import exp

    unit = node.args["unit"].name.lower()
    first, second = node.expression, node.this
    zones = (zone_given(first), zone_given(second))
    if zones == (None, None):
        return exp.Anonymous(
            this="date_sub", expressions=[exp.Literal.string(unit), adapt(first), adapt(second)]
        )

    def instant(value: Any, zone: Any) -> Any:
        if zone is not None:
            return zoned_instant(value, zone, adapt)
        return exp.Cast(this=adapt(value), to=exp.DataType.build("TIMESTAMPTZ"))

    ends = [instant(first, zones[0]), instant(second, zones[1])]
    if unit not in _TIME_UNITS:
        clock = duckdb_zone(adapt(zones[0])) if zones[0] is not None else None
        clock = clock if clock is not None else exp.Literal.string("UTC")
        ends = [exp.AtTimeZone(this=end, zone=clock.copy()) for end in ends]
    return exp.Anonymous(this="date_sub", expressions=[exp.Literal.string(unit), *ends])


def cast(node: Any, adapt: Callable[[Any], Any]) -> Any | None:
    """``node`` (exp.Cast, exp.TryCast) with Trino's meaning where DuckDB's differs (module
    docs: a DOUBLE to an integer, a TIMESTAMP WITH TIME ZONE to text), else None."""
    from sqlglot import exp

    to = node.args.get("to")
    kind = to.this.name if isinstance(to, exp.DataType) else ""
    if kind not in _INTEGER_TYPES and kind not in _TEXT_TYPES:
        return None
    call = node.copy()
    call.set("this", adapt(node.this))
    value = call.this
    if kind in _TEXT_TYPES:
        if is_zoned(node.this):
            return from_template(_ZONED_TEXT, x=value)
        zone = zone_given(node.this)
        if zone is not None:
            return from_template(_AT_ZONE_TEXT, x=value, zone=adapt(zone))
        if isinstance(node.this, exp.Localtimestamp) or is_parsed(node.this):
            return from_template(_LOCAL_TEXT, x=value)
        java = from_template(JAVA_NUMBER_TEXT, x=value)
        return from_template(_TIMESTAMP_TEXT, x=value, call=call, java=java)
    rounded = call.copy()
    rounded.set(
        "this",
        exp.Round(this=exp.Cast(this=value.copy(), to=exp.DataType.build("DOUBLE"))),
    )
    return from_template(_ROUNDED_CAST, x=value, rounded=rounded, call=call)


#: Trino's EXTRACT fields DuckDB names otherwise (Trino's ``ExtractField``), by DuckDB's name.
_EXTRACT_FIELDS = {
    "DOW": "ISODOW",
    "DAYOFWEEK": "ISODOW",
    "DAY_OF_WEEK": "ISODOW",
    "YOW": "ISOYEAR",
    "YEAR_OF_WEEK": "ISOYEAR",
    "DAY_OF_MONTH": "DAY",
    "DAY_OF_YEAR": "DOY",
}


def extract(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Extract) with Trino's field as DuckDB names it (module docs)."""
    from sqlglot import exp

    field = node.this
    name = field.name.upper() if isinstance(field, exp.Var | exp.Identifier) else ""
    call = node.copy()
    call.set("expression", adapt(node.expression))
    if name in _EXTRACT_FIELDS:
        call.set("this", exp.var(_EXTRACT_FIELDS[name]))
    return call


#: Java's ``URLEncoder`` over DuckDB's RFC 3986 ``url_encode``: in its output ``%20`` can only
#: be a space and ``%2A`` a star (a ``%`` of the text is ``%25``).
_URL_ENCODE = "replace(replace(replace(url_encode(__s__), '%20', '+'), '%2A', '*'), '~', '%7E')"


def url_coding(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``url_encode(s)`` / ``url_decode(s)`` (exp.Anonymous) as Java codes them (module
    docs); a call with another number of arguments is left to DuckDB's error."""
    from sqlglot import exp

    args = [adapt(a) for a in node.expressions]
    if len(args) != 1:
        return exp.Anonymous(this=node.name, expressions=args)
    if node.name.lower() == "url_encode":
        return from_template(_URL_ENCODE, s=args[0])
    plus = exp.Anonymous(
        this="replace", expressions=[args[0], exp.Literal.string("+"), exp.Literal.string(" ")]
    )
    return exp.Anonymous(this="url_decode", expressions=[plus])


def weighted_percentile(node: Any) -> QueryError | None:
    """The refusal of ``approx_percentile(x, w, p)`` (exp.ApproxQuantile with a weight), or
    None for the unweighted call."""
    if node.args.get("weight") is None:
        return None
    return QueryError(
        "approx_percentile(x, w, p) with a weight has no local equivalent (DuckDB has no "
        "weighted quantile, and the unweighted one answers otherwise); drop the weight, or "
        "run the statement with --engine athena"
    )


#: The calls whose ``expression`` is a Java regex (Trino's ``regexp_*``), by sqlglot class name
#: (none of those classes has subclasses: the name is the class).
REGEX_CALLS = frozenset(
    {
        "RegexpLike",
        "RegexpExtract",
        "RegexpExtractAll",
        "RegexpReplace",
        "RegexpSplit",
        "RegexpCount",
    }
)
#: Java constructs RE2 (DuckDB) lacks, after ``(``: what each is, for the refusal.
_LOOKAROUND = {"?=": "a lookahead", "?!": "a negative lookahead", "?<=": "a lookbehind",
               "?<!": "a negative lookbehind", "?>": "an atomic group"}  # fmt: skip


def java_regex(node: Any) -> Any:
    """``node`` (one of :data:`REGEX_CALLS`) with its literal pattern in RE2's spelling: Java's
    named group ``(?<name>...)`` is RE2's ``(?P<name>...)``; a lookaround or atomic group,
    which RE2 does not have, is refused with what to do (DuckDB said "invalid perl operator:
    (?<"). A pattern that is not a literal is left to DuckDB."""
    pattern = node.args.get("expression")
    spelled = re2_pattern(pattern, node.sql_name().lower())
    if spelled is pattern:
        return node
    call = node.copy()
    call.set("expression", spelled)
    return call


def re2_pattern(pattern: Any, function: str) -> Any:
    """``pattern`` (the pattern argument of ``function``) in RE2's spelling when it is a
    literal (:func:`_re2_spelling`), else itself: one left as it was is the very node."""
    from sqlglot import exp

    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        return pattern
    spelled = _re2_spelling(pattern.this, function)
    return pattern if spelled == pattern.this else exp.Literal.string(spelled)


def _re2_spelling(pattern: str, function: str) -> str:
    """``pattern`` (Java) with its named groups spelled for RE2; QueryError for a lookaround.
    Escapes (``\\(``), ``\\Q...\\E`` quotes and character classes (``[(]``) hold no group."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("\\Q", i):
            end = pattern.find("\\E", i + 2)
            end = len(pattern) if end < 0 else end + 2
        elif char == "\\":
            end = i + 2
        elif in_class:
            in_class = char != "]"
            end = i + 1
        elif char == "[":  # a "]" first in a class ("[]a]", "[^]a]") is one of its characters
            in_class = True
            end = i + 1 + pattern.startswith("^", i + 1)
            end += pattern.startswith("]", end)
        elif char == "(" and pattern.startswith("?", i + 1):
            for opener, what in _LOOKAROUND.items():
                if pattern.startswith(opener, i + 1):
                    raise QueryError(
                        f"{function}: the pattern holds {what} (({opener}...), which the local "
                        "engine's regular expressions (RE2) do not have; match more and keep "
                        "the part you want with a group (regexp_extract(s, pattern, 1)), or "
                        "run the statement with --engine athena"
                    )
            if pattern.startswith("?<", i + 1):  # a named group: (?<name>...)
                out.append("(?P<")
                i += 3
                continue
            end = i + 1
        else:
            end = i + 1
        out.append(pattern[i:end])
        i = end
    return "".join(out)


#: Trino's ``regexp_extract(s, pattern, group)`` when the match leaves ``group`` unset (an
#: optional group, or the other side of an alternation): NULL (``beg == -1`` in its
#: ``JoniRegexpFunctions``); DuckDB's ``regexp_extract`` gives ''. Its ``regexp_extract_all``
#: gives NULL there, as Trino's does, and its first element is the first match: asked only for
#: an empty group, the rare case, so the common one costs one extraction as before.
_REGEXP_EXTRACT = """
CASE WHEN regexp_matches(__s__, __p__) THEN
  CASE WHEN __call__ <> '' THEN __call__
  ELSE list_extract(regexp_extract_all(__s__, __p__, __g__), 1) END
END
"""


def regexp_extract(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.RegexpExtract) with Trino's NULLs: when the pattern does not match (DuckDB
    gives ''), and when the group asked for took no part in the match (:data:`_REGEXP_EXTRACT`)."""
    from sqlglot import exp

    call = node.copy()
    for key, value in node.args.items():
        if isinstance(value, exp.Expression):
            call.set(key, adapt(value))
    group = call.args.get("group")
    if group is None or (group.is_int and group.to_py() == 0):  # the whole match: always set
        matches = exp.Anonymous(
            this="regexp_matches", expressions=[call.this.copy(), call.expression.copy()]
        )
        return exp.Case(ifs=[exp.If(this=matches, true=call)])
    return from_template(_REGEXP_EXTRACT, s=call.this, p=call.expression, g=group, call=call)


#: Trino's ``array[i]`` (``ArraySubscriptOperator``) fails for an index outside the array, where
#: DuckDB's is NULL (and counts a negative one from the end); ``element_at`` is NULL outside but
#: fails too for 0. Maps, rows and what else DuckDB subscripts are left to it: the type is known
#: only when the statement runs, and ``typeof`` of a constant type folds away before any row.
_SUBSCRIPT = """
CASE
  WHEN typeof(__x__) NOT LIKE '%]' OR typeof(__x__) LIKE 'MAP(%' THEN __call__
  WHEN TRY_CAST(__i__ AS BIGINT) = 0 THEN error('SQL array indices start at 1')__strict__
  ELSE __call__
END
"""
_STRICT_SUBSCRIPT = """
  WHEN TRY_CAST(__i__ AS BIGINT) < 0 THEN error('Array subscript is negative: ' || __i__)
  WHEN TRY_CAST(__i__ AS BIGINT) > cardinality(__x__) THEN error(
    'Array subscript must be less than or equal to array length: ' || __i__ || ' > '
    || cardinality(__x__) || ' (element_at(array, index) is NULL past the end)')"""


def subscript(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Bracket: ``x[i]``, or ``element_at(x, i)`` when ``safe``) failing where
    Trino's fails (:data:`_SUBSCRIPT`, and :data:`_MAP_SUBSCRIPT` for a map the statement
    shows), and a ROW's field by position (:func:`_row_field`). Another text index (a map's
    key) or a slice is left as it is."""
    from sqlglot import exp
    from sqlglot.expressions.builders import apply_index_offset

    call = node.copy()
    call.set("this", adapt(node.this))
    call.set("expressions", [adapt(e) for e in node.expressions])
    if len(call.expressions) != 1 or isinstance(call.expressions[0], exp.Slice):
        return call
    # The index as DuckDB's SQL will read it (sqlglot keeps a literal index into an array it
    # knows 0-based, and adds the offset back when it writes DuckDB's 1-based one).
    offset = 1 - (call.args.get("offset") or 0)
    (index,) = apply_index_offset(
        call.this, [e.copy() for e in call.expressions], offset, dialect="duckdb"
    )
    if is_row(node.this) and not call.args.get("safe"):
        return _row_field(node.this, call.this, index)
    if is_map(node.this):
        if call.args.get("safe"):  # element_at(map, key): NULL for a missing key, as Trino's
            return call
        return from_template(_MAP_SUBSCRIPT, m=call.this, k=index, call=call)
    if isinstance(call.expressions[0], exp.Literal) and call.expressions[0].is_string:
        return call
    strict = "" if call.args.get("safe") else _STRICT_SUBSCRIPT
    return from_template(_SUBSCRIPT.replace("__strict__", strict), x=call.this, i=index, call=call)


#: Trino's ``map[key]`` (``MapSubscriptOperator``) fails for a key the map lacks, naming it
#: (the key cast to text); DuckDB's is NULL. A NULL map or key is NULL on both; ``element_at``
#: is NULL for a missing key on both, which the message says, as the array's does (Trino's
#: words alone left a query over rows that lack a key with no way on). Only for a map the
#: statement shows (:func:`athena.trinotypes.is_map`): on another type ``map_contains`` would
#: not bind.
_MAP_SUBSCRIPT = """
CASE
  WHEN NOT map_contains(__m__, __k__)
  THEN error('Key not present in map: ' || CAST(__k__ AS VARCHAR)
    || ' (element_at(map, key) is NULL for a missing key)')
  ELSE __call__
END
"""


def _row_field(trino_row: Any, row: Any, index: Any) -> Any:
    """``row[i]``: the ``i``-th field (from 1) of a ROW the statement shows (``trino_row``,
    unadapted; ``row`` adapted), as Trino reads it (its "Structural" types page: "accessed by
    position with the subscript operator ([]); the position starts at 1 and must be a
    constant"). DuckDB's ``[i]`` reads only a ROW without field names (its ``ROW(...)`` is
    written with names, ``CAST(... AS ROW(x int))`` has them), failing "struct_extract with
    an integer key can only be used on unnamed structs"; its ``struct_extract_at`` reads
    either kind."""
    from sqlglot import exp

    if not index.is_int:
        raise QueryError(
            "a ROW's field is read by a constant position (r[1], from 1), as Athena requires; "
            "read it by name (r.x), or cast the row to ROW(x type, ...) to name its fields"
        )
    position = index.to_py()
    fields = _row_fields(trino_row)
    if position < 1 or (fields is not None and position > fields):
        has = "" if fields is None else f", and this ROW has {fields} fields"
        raise QueryError(
            f"a ROW's field position is {position}: positions start at 1{has} (Athena "
            "refuses the statement too)"
        )
    return exp.Anonymous(this="struct_extract_at", expressions=[row, index])


def _row_fields(row: Any) -> int | None:
    """How many fields ``row`` (unadapted, :func:`athena.trinotypes.is_row`) has, when a
    constructor or a CAST shows them, else None."""
    from sqlglot import exp

    while isinstance(row, exp.Paren):
        row = row.this
    if isinstance(row, exp.Struct):
        return len(row.expressions)
    to = row.args.get("to") if isinstance(row, exp.Cast) else None
    return len(to.expressions) if isinstance(to, exp.DataType) and to.expressions else None


#: Trino's ``date_format`` specifiers (MySQL's, ``DateTimeFunctions.createDateTimeFormatter``)
#: in DuckDB's ``strftime`` spelling. sqlglot maps them one by one, but left ``%v`` (the ISO
#: week, which DuckDB calls ``%V``) for DuckDB to refuse, and gave DuckDB a meaning for those
#: Trino refuses (``%u`` became DuckDB's Monday-based week ``%W``).
_DATE_FORMAT = {
    "a": "%a", "b": "%b", "c": "%-m", "d": "%d", "e": "%-d", "f": "%f", "H": "%H", "h": "%I",
    "I": "%I", "i": "%M", "j": "%j", "k": "%-H", "l": "%-I", "M": "%B", "m": "%m", "p": "%p",
    "r": "%I:%M:%S %p", "S": "%S", "s": "%S", "T": "%H:%M:%S", "v": "%V", "x": "%G", "W": "%A",
    "Y": "%Y", "y": "%y", "%": "%%",
}  # fmt: skip
#: The specifiers Trino refuses ("%u not supported in date format string"), with what to use.
_DATE_FORMAT_REFUSED = {
    "D": "day_of_month(ts) for the day",
    "U": "%v for the ISO week (Monday first)",
    "u": "%v for the ISO week (Monday first)",
    "V": "%v for the ISO week (Monday first)",
    "w": "day_of_week(ts) for the day of the week (1 for Monday to 7)",
    "X": "%x for the ISO week's year",
}


def date_format(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.TimeToStr, Trino's ``date_format(ts, format)``) as ``strftime`` with each
    of Trino's specifiers spelled as DuckDB's (:data:`_DATE_FORMAT`); any other letter after a
    ``%`` is that letter, as in Trino, and those Trino refuses are refused with what to use. A
    format that is not a literal is left to sqlglot's mapping."""
    from sqlglot import exp

    call, parts = _format_parts(
        node, adapt, "date_format", lambda c: f"use {_DATE_FORMAT_REFUSED[c]}"
    )
    if parts is None:
        return call
    out = [_DATE_FORMAT.get(char, char) if specifier else char for specifier, char in parts]
    return exp.Anonymous(this="strftime", expressions=[call.this, exp.Literal.string("".join(out))])


def _trino_spelling(python: str) -> str:
    """A format as sqlglot holds it after reading Trino's (Python's ``strftime`` specifiers:
    Trino's ``%i`` is ``%M``, its ``%M`` is ``%B``) spelled back as Trino's, one specifier at a
    time. sqlglot's own ``format_time`` over ``Trino.INVERSE_TIME_MAPPING`` reads it through a
    trie that also holds ``%H:%M:%S`` (Trino's ``%T``): a format with ``%H:%M`` not followed by
    ``:%S`` came back as it was, ``%M`` then read as Trino's month name, so
    ``date_format(ts, '%H:%i')`` printed ``03:December``."""
    from sqlglot.dialects.trino import Trino

    single = {k: v for k, v in Trino.INVERSE_TIME_MAPPING.items() if re.fullmatch(r"%-?.", k)}
    return re.sub(r"%-?.", lambda m: single.get(m.group(0), m.group(0)), python, flags=re.S)


#: What ``date_parse`` says to do about a specifier Trino refuses.
_DATE_PARSE_INSTEAD = (
    "take that part of the text out first (regexp_replace), or match it with literal characters"
)


def _format_parts(
    node: Any, adapt: Callable[[Any], Any], function: str, instead: Callable[[str], str]
) -> tuple[Any, list[tuple[bool, str]] | None]:
    """``node`` (``date_format``'s exp.TimeToStr, ``date_parse``'s exp.StrToTime) copied with
    its value adapted, and its format as Trino spells it, in parts: ``(True, letter)`` for a
    ``%`` specifier, ``(False, text)`` for a literal character, ``%`` escaped as DuckDB reads
    it; None when the format is not a literal (left to sqlglot's mapping). A specifier Trino
    refuses (:data:`_DATE_FORMAT_REFUSED`) is refused, saying ``function`` and what to do
    (``instead`` of the letter)."""
    from sqlglot import exp

    call = node.copy()
    call.set("this", adapt(node.this))
    fmt = call.args.get("format")
    if not (isinstance(fmt, exp.Literal) and fmt.is_string):
        return call, None
    trino = _trino_spelling(fmt.this)
    parts: list[tuple[bool, str]] = []
    escaped = False
    for char in trino:
        if not escaped:
            escaped = char == "%"
            if not escaped:
                parts.append((False, char.replace("%", "%%")))
            continue
        escaped = False
        if char in _DATE_FORMAT_REFUSED:
            raise QueryError(
                f"{function}(): %{char} is not supported in Athena's date format strings "
                f"(Trino refuses %D %U %u %V %w %X); {instead(char)}"
            )
        parts.append((True, char))
    return call, parts


#: Trino's ``date_parse`` specifiers (the formatter ``date_format`` prints with, read back) in
#: DuckDB's ``strptime`` spelling. sqlglot's own mapping left ``%f`` as DuckDB's microseconds
#: (1 to 6 digits; Trino reads 1 to 9), and ``%v`` and an unknown letter (``%q``) for DuckDB
#: to refuse, and gave DuckDB a meaning for those Trino refuses (``%u`` a week from Monday).
_DATE_PARSE = {
    "a": "%a", "b": "%b", "c": "%-m", "d": "%d", "e": "%-d", "f": "%n", "H": "%H", "h": "%I",
    "I": "%I", "i": "%M", "j": "%j", "k": "%-H", "l": "%-I", "M": "%B", "m": "%m", "p": "%p",
    "r": "%I:%M:%S %p", "S": "%S", "s": "%S", "T": "%H:%M:%S", "W": "%A", "Y": "%Y", "y": "%y",
    "%": "%%",
}  # fmt: skip
#: The year Trino's ``date_parse`` gives a text without one (Joda's ``computeMillis``): its
#: formatter's default year, 2000, when the largest field the format reads is a month or a
#: day (``DateTimeFormatter.iDefaultYear``), else the epoch's; DuckDB's is 1900, which has no
#: 29 February. The specifiers of such a field, by Trino's letter:
_DATE_FIELDS = frozenset("abcdejMmW")
#: ``%y``: Trino reads two digits as 1970 to 2069 (Joda's ``appendTwoDigitYear(2020)``),
#: DuckDB as 1969 to 2068, so ``69`` alone differs (2069, not 1969).
_DATE_PARSE_TWO_DIGITS = (
    "CASE WHEN year(__r__) = 1969 THEN __r__ + INTERVAL 100 YEAR ELSE __r__ END"
)
#: ``%f``: Trino's answer is a ``timestamp(3)``, the fraction cut to milliseconds; DuckDB's
#: ``%n`` (up to 9 digits, as Trino reads) gives nanoseconds.
_DATE_PARSE_MILLIS = "CAST(date_trunc('millisecond', __r__) AS TIMESTAMP)"
#: A day of the week read by Joda (``%a``, ``%W``) is set after the day of the month
#: (``computeMillis`` sets the fields from the largest range down): the date moves within its
#: ISO week, Monday to Sunday, to that day (``__d__``, 1 for Monday).
_DATE_PARSE_WEEKDAY = (
    "list_extract(list_transform([__r__], v -> v + to_days(__d__ - isodow(v))), 1)"
)
#: The English names Joda reads for ``%a`` and ``%W`` alike (``TextField.parseInto``: short or
#: full, as written, lower or upper case), Monday first; longer names are tried first, as
#: Joda matches the longest.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def date_parse(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.StrToTime, Trino's ``date_parse(text, format)``) as ``strptime`` with each
    of Trino's specifiers spelled as DuckDB's (:data:`_DATE_PARSE`), any other letter after a
    ``%`` read as that letter, as in Trino; those Trino refuses (as ``date_format`` does) are
    refused, and ``%v``/``%x`` (an ISO week and its year, which DuckDB reads otherwise: the
    week's Monday, Joda its Thursday) too, with what to do. A year the text lacks is Joda's
    (:data:`_DATE_FIELDS`), and a day of the week moves the date as Joda's does
    (:func:`_weekday_parse`), with a month and day; without them it is refused. A format
    that is not a literal is left to sqlglot's mapping."""
    from sqlglot import exp

    call, parts = _format_parts(node, adapt, "date_parse", lambda _: _DATE_PARSE_INSTEAD)
    if parts is None:
        return call
    out: list[tuple[bool, str]] = []  # (literal, DuckDB's spelling)
    used: set[str] = set()
    for specifier, char in parts:
        if not specifier:
            out.append((True, char))
            continue
        if char in "vx":
            raise QueryError(
                f"date_parse(): %{char} (an ISO week or its year) is read otherwise by the local "
                "engine (the week's Monday; Athena's Joda gives its Thursday); parse the date "
                "itself, or run the statement with --engine athena"
            )
        if char in "aW" and used & {"a", "W"}:
            raise QueryError(
                "date_parse(): the format reads the day of the week twice (%a and %W); keep one"
            )
        used.add(char)
        out.append((char not in _DATE_PARSE, _DATE_PARSE.get(char, char)))
    text = call.this
    if not used & {"Y", "y"}:  # the year Joda gives, written before the text
        year = "2000" if used & _DATE_FIELDS else "1970"
        text = exp.DPipe(this=exp.Literal.string(f"{year} "), expression=text, safe=True)
        out.insert(0, (False, "%Y "))

    def parsed(function: str, value: Any, spelled: list[tuple[bool, str]]) -> Any:
        fmt = exp.Literal.string("".join(part for _, part in spelled))
        answer: Any = exp.Anonymous(this=function, expressions=[value, fmt])
        if "f" in used:
            answer = from_template(_DATE_PARSE_MILLIS, r=answer)
        if "y" in used and "Y" not in used:
            answer = from_template(_DATE_PARSE_TWO_DIGITS, r=answer)
        return answer

    plain = parsed("strptime", text, out)
    if not used & {"a", "W"}:
        spellings = _month_names(out)
        if len(spellings) == 1:
            return plain
        tries = [parsed("try_strptime", text.copy(), spelled) for spelled in spellings]
        return exp.Coalesce(this=tries[0], expressions=[*tries[1:], plain])
    if not (used & {"d", "e"} and used & {"b", "c", "M", "m"}) and "j" not in used:
        raise QueryError(
            "date_parse(): a day of the week (%a, %W) without the date's month and day (%m and "
            "%d, or %j) is one Athena's Joda sets twice, moving the date by a week or a year "
            "in ways the local engine does not follow; parse the date with its month and day, "
            "or run the statement with --engine athena"
        )
    return _weekday_parse(text, out, parsed, plain)


def _weekday_parse(
    text: Any,
    out: list[tuple[bool, str]],
    parsed: Callable[[str, Any, list[tuple[bool, str]]], Any],
    plain: Any,
) -> Any:
    """``date_parse`` of a format with a day of the week and a whole date (``out``: its one
    weekday specifier among literals and DuckDB's specifiers), as Joda reads it: its second
    pass over the fields sets the date again before the weekday, so the weekday moves the
    date once (:data:`_DATE_PARSE_WEEKDAY`; without a month and day the second pass moves it
    again, a year on for ``'Tue'`` alone, which :func:`date_parse` refuses). The text, in
    lower case, is read with each name in turn (:data:`_WEEKDAYS`) in the specifier's place,
    the literals in lower case too (Joda matches them regardless of case, as DuckDB's
    specifiers do), and the date is moved to the day named by the first that fits. ``plain``
    (DuckDB's own reading, the weekday ignored) comes last: when no name fits, its error is
    the statement's (DuckDB's ``coalesce`` reads an argument only for the rows the ones before
    left NULL). Lower case lets a name in mixed case through (``mOnday``), which Joda refuses.
    Locally the weekday was read and ignored, and a full name under ``%a`` refused."""
    from sqlglot import exp

    at = next(i for i, (literal, part) in enumerate(out) if part in ("%a", "%A") and not literal)
    lower = exp.Lower(this=text.copy())
    names = sorted(
        ((d, name) for d, full in enumerate(_WEEKDAYS, 1) for name in (full, full[:3])),
        key=lambda dn: -len(dn[1]),
    )
    tries = []
    for day, name in names:
        for spelled in _month_names(out):
            spelled = [(True, p.lower()) if literal else (False, p) for literal, p in spelled]
            spelled[at] = (True, name.lower())
            read = parsed("try_strptime", lower.copy(), spelled)
            tries.append(from_template(_DATE_PARSE_WEEKDAY, r=read, d=exp.Literal.number(day)))
    return exp.Coalesce(this=tries[0], expressions=[*tries[1:], plain])


def _month_names(out: list[tuple[bool, str]]) -> list[list[tuple[bool, str]]]:
    """``out`` (a ``date_parse`` format in DuckDB's spelling) with each month name specifier
    (``%b``, ``%B``) read as a full name and as a short one, full first: Joda's month text
    (Trino's ``%b`` and ``%M`` alike) takes either, the longest first (``TextField``), where
    DuckDB's ``%b`` took ``Dec`` alone and ``%B`` ``December`` alone. Every combination, so one
    list without such a specifier."""
    at = [i for i, (literal, part) in enumerate(out) if not literal and part in ("%b", "%B")]
    spellings = []
    for names in itertools.product(("%B", "%b"), repeat=len(at)):
        spelled = list(out)
        for i, name in zip(at, names, strict=True):
            spelled[i] = (False, name)
        spellings.append(spelled)
    return spellings


def divide(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Div) as IEEE's division when the statement shows a side is a DOUBLE or
    REAL (:func:`athena.trinotypes.is_floating`): ``1e0 / 0`` is Infinity and ``0e0 / 0``
    NaN, as in Trino.

    The local engine sets ``integer_division`` so that an integer divided by an integer
    truncates as in Trino; that makes every ``/`` DuckDB's ``//``, which fails on a zero
    whatever the type. ``"/"(a, b)`` is DuckDB's ``/`` called by name, which the setting does
    not touch. The operands' types are known only when DuckDB binds the statement, and no one
    expression can take DuckDB's ``/`` for floats and ``//`` for integers (a CASE over ``typeof``
    makes both answers DOUBLE: ``7 / 2`` was ``3.0``), so the statement must show the DOUBLE:
    a column counts when its definition in a derived table, ``WITH`` query or ``VALUES`` list
    shows it, or the warehouse schema types it so (none of the tables' columns is a DOUBLE
    today: their numbers are integers, whose division by zero Athena refuses too), and
    ``avg`` of an integer is one, as Trino's. A division whose DOUBLE the statement does not
    show (a parameter) still fails on a zero, saying how to write it."""
    from sqlglot import exp

    exact = _decimal_quotient(node)
    if exact is not None:
        return exact
    floating = is_floating(node.this) or is_floating(node.expression)
    call = node.copy()
    call.set("this", adapt(node.this))
    call.set("expression", adapt(node.expression))
    if not floating:
        return call
    return exp.Anonymous(
        this=exp.to_identifier("/", quoted=True), expressions=[call.this, call.expression]
    )


#: Trino's largest DECIMAL precision (DuckDB's too).
_DECIMAL_DIGITS = 38
#: The largest INTEGER and BIGINT: the types Trino gives an integer literal (a DECIMAL(10,0) or
#: DECIMAL(19,0) beside a DECIMAL).
_INTEGER_MAX, _BIGINT_MAX = 2**31 - 1, 2**63 - 1


def _decimal_quotient(node: Any) -> Any | None:
    """``a / b`` (exp.Div) of two numeric literals, one a decimal (``1.0``), as Trino computes
    it (``DecimalOperators``: both sides DECIMAL, the result's scale the larger of theirs, its
    precision ``min(38, a_precision + b_scale + max(b_scale - a_scale, 0))``, rounded half away
    from zero): ``1.0 / 4`` is 0.3, where DuckDB's quotient of decimals is the DOUBLE 0.25.
    Computed here, exactly, as a DECIMAL constant. None for any other division (a column's
    DECIMAL is not typed from the statement), a zero divisor (DuckDB's error stands) or a
    quotient Trino's precision cannot hold (Athena fails with "Decimal overflow")."""
    from sqlglot import exp

    left, right = _decimal_literal(node.this), _decimal_literal(node.expression)
    if left is None or right is None or not (left.decimal or right.decimal) or right.value == 0:
        return None
    (a, a_precision, a_scale, _), (b, _, b_scale, _) = left, right
    scale = max(a_scale, b_scale)
    precision = min(_DECIMAL_DIGITS, a_precision + b_scale + max(b_scale - a_scale, 0))
    with localcontext() as context:
        context.prec = 4 * _DECIMAL_DIGITS  # the widest quotient: 10**76, 38 more digits
        quotient = (a / b).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    if len(quotient.as_tuple().digits) > precision:
        return None
    # DuckDB writes a DECIMAL(p, p) without its leading 0 ('-.5'), Trino with it: one more
    # digit of precision, the same value.
    held = min(_DECIMAL_DIGITS, precision + 1) if precision == scale else precision
    return exp.Cast(
        this=exp.Literal.string(str(quotient)),
        to=exp.DataType.build(f"DECIMAL({held}, {scale})"),
    )


class _Literal(NamedTuple):
    """A numeric literal as Trino types it beside a DECIMAL."""

    value: Decimal
    precision: int
    scale: int
    decimal: bool
    """Whether the literal is itself a DECIMAL (``1.0``, ``1.``), not an integer."""


def _decimal_literal(node: Any) -> _Literal | None:
    """The numeric literal ``node`` (in parentheses, negated or not) as Trino types it beside
    a DECIMAL: ``1.0`` is DECIMAL(2,1) (its digits, leading zeros aside), an integer the
    DECIMAL of its INTEGER or BIGINT; None for anything else (an exponent makes a DOUBLE)."""
    from sqlglot import exp

    sign = 1
    while isinstance(node, exp.Paren | exp.Neg):
        sign = -sign if isinstance(node, exp.Neg) else sign
        node = node.this
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    whole, point, fraction = node.this.partition(".")
    if not (whole + fraction).isdigit() or not (whole.isascii() and fraction.isascii()):
        return None
    if not point:
        value = int(whole)
        if value > _BIGINT_MAX:
            return None
        return _Literal(Decimal(sign * value), 10 if value <= _INTEGER_MAX else 19, 0, False)
    digits = len(whole.lstrip("0")) + len(fraction)
    value = sign * Decimal(f"{whole or 0}.{fraction}")
    return _Literal(value, max(digits, 1), len(fraction), True)


#: Trino's ``upper`` maps each character alone (airlift's ``SliceUtf8.toUpperCase``, Java's
#: ``Character.toUpperCase``), which leaves ``ß`` as it is (its capital is two letters, ``SS``,
#: which only Java's ``String.toUpperCase`` writes); DuckDB's gives the capital ``ẞ``. The text
#: is upper-cased between its ``ß`` (the value computed once, through the lambda).
_UPPER = """
list_extract(list_transform([__s__], v -> CASE WHEN contains(v, 'ß')
  THEN array_to_string(list_transform(string_split(v, 'ß'), p -> upper(p)), 'ß')
  ELSE upper(v) END), 1)
"""


def upper(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Upper) keeping ``ß`` as Trino keeps it (:data:`_UPPER`)."""
    return from_template(_UPPER, s=adapt(node.this))
