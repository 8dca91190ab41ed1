"""Arrow values as Python ones, without pyarrow importing pandas for zoned timestamps.

pyarrow gives a zoned timestamp its ``tzinfo`` through pandas, which it imports on first use:
half a second of every ``logq`` command whose answer holds a time. The same instants read as
plain UTC times, then given the zone, are the same values without it.

An interval (``max(timestamp) - min(timestamp)``, ``INTERVAL '2' DAY``) is DuckDB's
month-day-nanosecond value, which pyarrow hands over as a ``MonthDayNano`` tuple: every output
format printed it as that tuple (``[0, 0, 4260000000000]`` in JSON). It reads as Athena prints
its interval types instead (:func:`interval_text`). A map (``histogram(response_code)``) comes
as a list of key-value pairs, which JSON printed as ``[[200, 700], [404, 34]]``: it is a
``dict`` here (:func:`map_value`). Both at any depth: in an array (``array_agg`` of spans), a
row, or a map's keys and values (:func:`_athena_value`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """``column.to_pylist()``; zoned timestamps (s, ms, us) converted here (see the module)."""
    kind = column.type
    if _holds_interval_or_map(kind):
        return [_athena_value(v, kind) for v in column.to_pylist()]
    if not _zoned(kind):
        return column.to_pylist()
    zone = zone_of(kind.tz)
    return [None if t is None else _zoned_time(t, zone) for t in _plain_times(column, kind.unit)]


def _plain_times(column: pa.ChunkedArray | pa.Array, unit: str) -> list[datetime | None]:
    """A zoned timestamp column's times as plain UTC datetimes. Each array is viewed as plain
    times (``Array.view``: the same int64 values, only the type's zone dropped), not cast: a
    cast imports pyarrow.compute, which builds a wrapper for each of its hundreds of functions
    on import (0.05-0.15 s of a ``logq tail``)."""
    import pyarrow as pa

    plain = pa.timestamp(unit)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return [t for chunk in chunks for t in chunk.view(plain).to_pylist()]


def scalar_value(scalar: pa.Scalar) -> Any:
    """``scalar.as_py()``; a zoned timestamp (s, ms, us) converted here (see the module)."""
    import pyarrow as pa

    kind = scalar.type
    if not _zoned(kind):
        return scalar.as_py()
    naive = scalar.cast(pa.timestamp(kind.unit)).as_py()
    return None if naive is None else _zoned_time(naive, zone_of(kind.tz))


#: A fixed-offset Arrow zone, ``+05:30``: ASCII digits only (``str.isdigit`` takes ``٠٥``),
#: nothing after the minutes (``+05:30x`` is no zone).
_FIXED_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")


def zone_of(name: str) -> tzinfo:
    """The ``tzinfo`` of an Arrow time zone: UTC, a fixed offset (``+05:30``) or an IANA name."""
    if name in ("UTC", "utc", "Etc/UTC", "+00:00", "Z"):
        return UTC
    fixed = _FIXED_OFFSET.fullmatch(name)
    if fixed is not None:
        sign, hours, minutes = fixed.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-offset if sign == "-" else offset)
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _zoned(kind: pa.DataType) -> bool:
    """A timestamp type with a zone, in a unit Python's datetime holds (ns keeps pyarrow's own
    rules: pandas' Timestamp, or an error for nanoseconds that do not fit)."""
    import pyarrow as pa

    return pa.types.is_timestamp(kind) and kind.tz is not None and kind.unit != "ns"


def _zoned_time(naive_utc: datetime, zone: tzinfo) -> datetime:
    return naive_utc.replace(tzinfo=UTC).astimezone(zone)


_MS_PER_DAY = 86_400_000


def interval_text(value: Any) -> str:
    """An Arrow month-day-nanosecond interval as Athena (Trino) prints its interval types:
    ``INTERVAL DAY TO SECOND`` as ``1 02:03:04.005`` (milliseconds), ``INTERVAL YEAR TO MONTH``
    as ``1-2`` (years-months), a minus sign before a negative one. DuckDB's intervals may hold
    months and days at once, which no Athena type does: both parts, ``1-2 3 00:00:00.000``."""
    months, days, nanos = value.months, value.days, value.nanoseconds
    # To the nearest millisecond, a half up (toward +infinity), as Trino's timestamp(p) minus
    # timestamp(p) rounds (Timestamps.roundDiv): 1.5 ms is 2 ms, -1.5 ms is -1 ms, -1.6 ms -2.
    millis = (days * _MS_PER_DAY * 1_000_000 + nanos + 500_000) // 1_000_000
    year_month = f"{'-' if months < 0 else ''}{abs(months) // 12}-{abs(months) % 12}"
    if months and not millis:
        return year_month
    sign, rest = ("-" if millis < 0 else ""), abs(millis)
    day, rest = divmod(rest, _MS_PER_DAY)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, ms = divmod(rest, 1_000)
    day_second = f"{sign}{day} {hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}"
    return f"{year_month} {day_second}" if months else day_second


def map_value(pairs: list[tuple[Any, Any]]) -> dict[Any, Any] | list[tuple[Any, Any]]:
    """A map column's value (pyarrow's list of key-value pairs) as a ``dict``, so that JSON
    prints an object (``{"200": 700}``); kept as pairs when a key cannot be a ``dict`` key (a
    list: DuckDB allows it) or two keys read the same (times apart by under a millisecond).
    A key the output formats would print as Python spells it (``str()``) is text here, as JSON
    printed it in the pairs: a time as ISO-8601 UTC (``histogram(date_trunc('hour',
    timestamp))``, not ``2026-11-30 22:00:00+00:00``), a boolean as ``true``, not ``True``."""
    try:
        keyed = {_map_key(key): value for key, value in pairs}
    except TypeError:
        return pairs
    return keyed if len(keyed) == len(pairs) else pairs


class BinaryKey(str):
    """A VARBINARY map key: the text JSON prints (its bytes decoded as UTF-8; a ``str``, so
    keys that read the same still keep :func:`map_value`'s pairs), holding its bytes for csv,
    markdown and the table, which print them in hex as any VARBINARY (``{00 ff=1}``)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> BinaryKey:
        key = super().__new__(cls, raw.decode("utf-8", "replace"))
        key.raw = raw
        return key

    def __reduce__(self) -> tuple[type[BinaryKey], tuple[bytes]]:  # a copy keeps its bytes
        return BinaryKey, (self.raw,)


def _map_key(key: Any) -> Any:
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, datetime):
        from athena.timerange import iso_utc

        return iso_utc(key)
    if isinstance(key, bytes):
        return BinaryKey(key)
    return key


def _holds_interval_or_map(kind: pa.DataType) -> bool:
    """Whether a value of ``kind`` may hold an interval or a map, at any depth."""
    import pyarrow as pa

    if kind == pa.month_day_nano_interval() or pa.types.is_map(kind):
        return True
    if _is_list(kind):
        return _holds_interval_or_map(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_holds_interval_or_map(field.type) for field in kind)
    return False


def _is_list(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
    )


def _athena_value(value: Any, kind: pa.DataType) -> Any:
    """``value`` (pyarrow's Python value of type ``kind``) with its intervals as
    :func:`interval_text` and its maps as :func:`map_value`, however deep: a map in an array
    printed as pairs (``[[[200, 2]]]``) and an interval in a row as a tuple."""
    import pyarrow as pa

    if value is None:
        return None
    if kind == pa.month_day_nano_interval():
        return interval_text(value)
    if pa.types.is_map(kind):
        return map_value(
            [(_athena_value(k, kind.key_type), _athena_value(v, kind.item_type)) for k, v in value]
        )
    if _is_list(kind):
        return [_athena_value(v, kind.value_type) for v in value]
    if pa.types.is_struct(kind):
        types = {field.name: field.type for field in kind}
        return {name: _athena_value(v, types[name]) for name, v in value.items()}
    return value
