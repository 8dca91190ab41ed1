"""Trino's ``timestamp with time zone`` on DuckDB, which has no such type.

On Trino (https://trino.io/docs/current/functions/datetime.html) ``x AT TIME ZONE 'Europe/Berlin'``,
``with_timezone``, ``at_timezone``, ``from_unixtime(x, zone)`` and ``from_iso8601_timestamp`` of a
text with an offset give a *timestamp with time zone*: an instant that carries its zone. It prints
as the instant (logq prints every timestamp as ISO-8601 UTC), and ``hour``, ``day``, ``date_trunc``,
``date_format``, ``CAST(... AS date)`` and their kin read its wall time *in that zone*.

DuckDB's TIMESTAMPTZ is an instant without a zone of its own (its fields follow the session zone,
UTC here), and its ``AT TIME ZONE`` gives the wall time as a zone-less TIMESTAMP, which logq then
printed as if it were UTC: one hour off for Berlin. So locally a zoned value is the instant (a
TIMESTAMPTZ, printed right), and the zone is carried on the parsed tree instead: a function that
reads a zoned value's fields reads ``timezone(zone, instant)``, its wall time in the zone.

The zone is known from the text: the zone argument (a literal or any expression), the offset of a
literal ``from_iso8601_timestamp``, and a column that names a zoned value of an inner query or CTE
(``WITH t AS (SELECT ts AT TIME ZONE 'X' AS local_ts ...) SELECT hour(local_ts) FROM t``), matched
by its name. ``from_iso8601_timestamp`` of a column (its offset differs row by row) stays in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

from athena.queries import QueryError

#: A Trino zone written as an offset from UTC: ``+01:00``, ``-05:00``, ``+0530``.
_OFFSET = re.compile(r"^([+-])(\d{1,2})(?::?(\d{2}))?$")
#: The offset at the end of an ISO-8601 date and time (``Z`` is UTC, which needs nothing; a
#: date alone has none: the ``-11`` of ``2020-05-11`` is its day).
_ISO_OFFSET = re.compile(r"T[0-9:.,]*([+-]\d{2}(?::?\d{2})?)$")
#: Trino functions that give a timestamp with the zone of their second argument.
_ZONE_SETTERS = ("with_timezone", "at_timezone")
#: Trino's text of a ``timestamp(3)``: what ``CAST(x AS varchar)`` gives for the table columns.
TIMESTAMP_TEXT = "%Y-%m-%d %H:%M:%S.%g"


@dataclass(frozen=True)
class Zone:
    """The zone of a Trino ``timestamp with time zone`` expression."""

    duck: Any
    """The zone as DuckDB's ``timezone(zone, ts)`` takes it (an expression)."""
    text: str | None
    """The zone as Trino prints it after the wall time, when the text gives it literally."""


#: Zoned output columns of the statement being transpiled: name -> (the SELECT, its zone).
_ALIASES: ContextVar[dict[str, list[tuple[Any, Zone]]]] = ContextVar("logq_zoned_aliases")


def literal_zone(name: str) -> Zone:
    """A zone written as a literal: an IANA name, or an offset (``-05:00``, which DuckDB spells
    ``GMT-05:00``). A name Trino would refuse is refused here too, with what to write."""
    from sqlglot import exp

    offset = _OFFSET.match(name.strip())
    if offset:
        sign, hours, minutes = offset.groups()
        spelled = f"{sign}{int(hours):02d}:{minutes or '00'}"  # as Trino prints an offset
        return Zone(exp.Literal.string(f"GMT{spelled}"), spelled)
    if name.upper() in ("UTC", "Z", "GMT"):
        return Zone(exp.Literal.string("UTC"), name)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(
            f"unknown time zone {name!r} (Athena refuses it too): write an IANA name such as "
            "'Europe/Berlin' or 'America/New_York', or an offset such as '+01:00'"
        ) from None
    return Zone(exp.Literal.string(name), name)


def _zone_arg(node: Any, adapt: Callable[[Any], Any]) -> Zone:
    """The zone an argument names: literal (checked), or an expression evaluated per row."""
    from sqlglot import exp

    if isinstance(node, exp.Literal) and node.is_string:
        return literal_zone(node.this)
    return Zone(adapt(node), None)


def zone_of(node: Any, adapt: Callable[[Any], Any]) -> Zone | None:
    """The zone of ``node`` (Trino) when it is a timestamp with a zone other than the session's
    (UTC), else None."""
    from sqlglot import exp

    if isinstance(node, exp.Paren):
        return zone_of(node.this, adapt)
    if isinstance(node, exp.AtTimeZone):
        return _zone_arg(node.args["zone"], adapt)
    named = isinstance(node, exp.Anonymous) and node.name.lower() in _ZONE_SETTERS
    if named and len(node.expressions) == 2:
        return _zone_arg(node.expressions[1], adapt)
    if isinstance(node, exp.UnixToTime):
        return _unixtime_zone(node, adapt)
    if isinstance(node, exp.FromISO8601Timestamp):
        text = node.this
        if isinstance(text, exp.Literal) and text.is_string:
            found = _ISO_OFFSET.search(text.this.strip())
            return literal_zone(found.group(1)) if found else None
        return None
    if isinstance(node, exp.TimestampTrunc | exp.DateAdd):
        return zone_of(node.this, adapt)
    if isinstance(node, exp.Column):
        return _alias_zone(node)
    return None


def _unixtime_zone(node: Any, adapt: Callable[[Any], Any]) -> Zone | None:
    """``from_unixtime(x, zone)`` or ``from_unixtime(x, hours, minutes)``: that zone."""

    if node.args.get("zone") is not None:
        return _zone_arg(node.args["zone"], adapt)
    hours, minutes = node.args.get("hours"), node.args.get("minutes")
    if hours is None:
        return None
    h, m = _integer(hours), _integer(minutes) if minutes is not None else 0
    if h is not None and m is not None:
        sign = "-" if h < 0 or m < 0 else "+"
        return literal_zone(f"{sign}{abs(h):02d}:{abs(m):02d}")
    raise QueryError(
        "from_unixtime(x, hours, minutes) with hours or minutes that are not numbers written "
        "in the statement has no local equivalent; write them as numbers, or use --engine athena"
    )


def _integer(node: Any) -> int | None:
    """The value of an integer literal (``5``, ``-5``), else None."""
    from sqlglot import exp

    negative = isinstance(node, exp.Neg)
    literal = node.this if negative else node
    if isinstance(literal, exp.Literal) and not literal.is_string and literal.this.isdigit():
        return -int(literal.this) if negative else int(literal.this)
    return None


def _alias_zone(column: Any) -> Zone | None:
    """The zone of a column that names a zoned output of another SELECT (a CTE or subquery)."""
    from sqlglot import exp

    if column.table and column.table.lower() in ("envoy_access", "container_logs"):
        return None
    found = _ALIASES.get({}).get(column.name.lower(), [])
    # A SELECT sees the outputs of the queries it reads, never its own nor those of the
    # queries around it: ``... AS ts FROM (SELECT ts FROM envoy_access WHERE hour(ts) = 3)``.
    around = set()
    parent = column.parent
    while parent is not None:
        if isinstance(parent, exp.Select):
            around.add(id(parent))
        parent = parent.parent
    zones = [zone for select, zone in found if id(select) not in around]
    return zones[0] if zones else None


@contextmanager
def zoned_aliases(tree: Any, adapt: Callable[[Any], Any]) -> Iterator[None]:
    """While transpiling ``tree``: its SELECTs' zoned outputs, for :func:`zone_of`."""
    token = _ALIASES.set({})
    try:
        _collect_aliases(tree, adapt, _ALIASES.get())
        yield
    finally:
        _ALIASES.reset(token)


def _collect_aliases(
    tree: Any, adapt: Callable[[Any], Any], aliases: dict[str, list[tuple[Any, Zone]]]
) -> None:
    """Note the zoned outputs of every SELECT of ``tree`` in ``aliases``, again until no new
    one appears, so that a chain of CTEs or subqueries passes the zone on."""
    from sqlglot import exp

    selects = list(tree.find_all(exp.Select))
    noted: set[tuple[int, str]] = set()
    for _ in range(len(selects)):
        before = len(noted)
        for select in selects:
            for projection in select.expressions:
                key = (id(select), projection.alias_or_name.lower())
                if not isinstance(projection, exp.Alias) or key in noted:
                    continue
                zone = zone_of(projection.this, adapt)
                if zone is not None and zone.text is not None:  # a per-row zone stays inside
                    aliases.setdefault(key[1], []).append((select, zone))
                    noted.add(key)
        if len(noted) == before:
            break


def instant(node: Any, adapt: Callable[[Any], Any]) -> Any | None:
    """``node`` (a zoned source) as the DuckDB instant, or None when sqlglot's own spelling is
    already the instant (``from_unixtime``, ``from_iso8601_timestamp``) or it is no source.

    ``x AT TIME ZONE z`` and ``at_timezone(x, z)`` keep the instant (a zone-less ``x`` is read
    in the session zone, UTC, as Trino does); ``with_timezone(x, z)`` reads ``x``'s wall time
    in ``z``."""
    from sqlglot import exp

    if isinstance(node, exp.AtTimeZone):
        zone_of(node, adapt)  # checks a literal zone
        return _as(adapt(node.this), "TIMESTAMPTZ")
    if not isinstance(node, exp.Anonymous):
        return None
    name = node.name.lower()
    if name not in _ZONE_SETTERS:
        return None
    if len(node.expressions) != 2:
        raise QueryError(f"{name}() takes two arguments: a timestamp and a time zone")
    zone = zone_of(node, adapt)
    assert zone is not None
    value = adapt(node.expressions[0])
    if name == "at_timezone":
        return _as(value, "TIMESTAMPTZ")
    return _call("timezone", zone.duck, _as(value, "TIMESTAMP"))


@cache
def _field_classes() -> tuple[type, ...]:
    """Trino functions that read a timestamp's wall time: on a zoned value, in its zone
    (``date_trunc`` and ``date_add`` too, whose result keeps the zone)."""
    from sqlglot import exp

    return (
        exp.Hour,
        exp.Minute,
        exp.Second,
        exp.Day,
        exp.DayOfMonth,
        exp.DayOfWeek,
        exp.DayOfWeekIso,
        exp.DayOfYear,
        exp.WeekOfYear,
        exp.Month,
        exp.Quarter,
        exp.Year,
        exp.YearOfWeek,
        exp.TimeToStr,
        exp.LastDay,
        exp.Extract,
        exp.TimestampTrunc,
        exp.DateAdd,
    )


def in_zone(node: Any, adapt: Callable[[Any], Any]) -> Any | None:
    """``node`` evaluated in the zone of its zoned timestamp argument, or None when it reads no
    zoned value (or is not a function that reads a timestamp's wall time)."""
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return _offset_part(node, adapt)
    if not isinstance(node, _field_classes()):
        return None
    key = "expression" if isinstance(node, exp.Extract) else "this"
    arg = node.args.get(key)
    if not isinstance(arg, exp.Expression):
        return None
    zone = zone_of(arg, adapt)
    if zone is None:
        return None
    wall = _call("timezone", zone.duck, adapt(arg))
    out = node.copy()
    for name, value in node.args.items():
        if name != key and isinstance(value, exp.Expression):
            out.set(name, adapt(value))
    out.set(key, wall)
    if isinstance(node, exp.TimestampTrunc | exp.DateAdd):  # still zoned: back to the instant
        return _call("timezone", zone.duck.copy(), out)
    return out


def _offset_part(node: Any, adapt: Callable[[Any], Any]) -> Any | None:
    """``timezone_hour(x)`` / ``timezone_minute(x)`` of a zoned ``x``: its zone's offset then."""
    name = node.name.lower()
    if name not in ("timezone_hour", "timezone_minute") or len(node.expressions) != 1:
        return None
    arg = node.expressions[0]
    zone = zone_of(arg, adapt)
    if zone is None:
        return None
    from sqlglot import exp

    moment = adapt(arg)
    seconds = exp.Paren(
        this=exp.Sub(
            this=_call("epoch", _call("timezone", zone.duck, moment)),
            expression=_call("epoch", moment.copy()),
        )
    )
    if name == "timezone_hour":
        part = exp.Div(this=seconds, expression=exp.Literal.number(3600))
    else:
        part = exp.Div(
            this=exp.Paren(this=exp.Mod(this=seconds, expression=exp.Literal.number(3600))),
            expression=exp.Literal.number(60),
        )
    return _as(_call("trunc", part), "BIGINT")


def cast(node: Any, adapt: Callable[[Any], Any], timestamp_columns: frozenset[str]) -> Any | None:
    """``CAST(x AS date | timestamp | varchar)`` as Trino gives it, or None when DuckDB's cast
    means the same: of a zoned ``x``, its wall time in the zone (varchar: ``2026-11-29
    16:00:00.000 Europe/Berlin``); ``CAST(ts AS varchar)`` of a table's timestamp column (or
    its ``date_trunc``/``date_add``), Trino's ``2026-11-29 15:00:00.000`` (DuckDB printed
    ``2026-11-29 15:00:00+00``)."""
    from sqlglot import exp

    kind = node.to.this
    text = kind in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT, exp.DataType.Type.CHAR)
    if not (text or kind in (exp.DataType.Type.DATE, exp.DataType.Type.TIMESTAMP)):
        return None
    zone = zone_of(node.this, adapt)
    if zone is None and text and isinstance(node.this, exp.FromISO8601Timestamp | exp.UnixToTime):
        zone = literal_zone("UTC")  # in the session zone, UTC: Trino prints '... UTC'
    if zone is None:
        if text and _table_timestamp(node.this, timestamp_columns):
            return _call("strftime", adapt(node.this), exp.Literal.string(TIMESTAMP_TEXT))
        return None
    wall = _call("timezone", zone.duck, adapt(node.this))
    if not text:
        return exp.Cast(this=wall, to=node.to.copy())
    printed = _call("strftime", wall, exp.Literal.string(TIMESTAMP_TEXT))
    name = exp.Literal.string(zone.text) if zone.text is not None else zone.duck.copy()
    return exp.DPipe(
        this=exp.DPipe(this=printed, expression=exp.Literal.string(" ")), expression=name
    )


def _table_timestamp(node: Any, timestamp_columns: frozenset[str]) -> bool:
    """Whether ``node`` is a table's timestamp column (Trino ``timestamp(3)``), or a
    ``date_trunc``/``date_add`` of one, and not a zoned output of another SELECT."""
    from sqlglot import exp

    if isinstance(node, exp.Paren | exp.TimestampTrunc | exp.DateAdd):
        return _table_timestamp(node.this, timestamp_columns)
    return isinstance(node, exp.Column) and node.name.lower() in timestamp_columns


def _as(node: Any, to: str) -> Any:
    from sqlglot import exp

    return exp.Cast(this=node, to=exp.DataType.build(to, dialect="duckdb"))


def _call(name: str, *args: Any) -> Any:
    from sqlglot import exp

    return exp.Anonymous(this=name, expressions=list(args))
