"""Arrow values as Python ones, without pyarrow importing pandas for zoned timestamps.

pyarrow gives a zoned timestamp its ``tzinfo`` through pandas, which it imports on first use:
half a second of every ``logq`` command whose answer holds a time. The same instants read as
plain UTC times, then given the zone, are the same values without it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """``column.to_pylist()``; zoned timestamps (s, ms, us) converted here (see the module)."""
    import pyarrow as pa

    kind = column.type
    if not _zoned(kind):
        return column.to_pylist()
    zone = zone_of(kind.tz)
    naive = column.cast(pa.timestamp(kind.unit)).to_pylist()
    return [None if t is None else _zoned_time(t, zone) for t in naive]


def scalar_value(scalar: pa.Scalar) -> Any:
    """``scalar.as_py()``; a zoned timestamp (s, ms, us) converted here (see the module)."""
    import pyarrow as pa

    kind = scalar.type
    if not _zoned(kind):
        return scalar.as_py()
    naive = scalar.cast(pa.timestamp(kind.unit)).as_py()
    return None if naive is None else _zoned_time(naive, zone_of(kind.tz))


def zone_of(name: str) -> tzinfo:
    """The ``tzinfo`` of an Arrow time zone: UTC, a fixed offset (``+05:30``) or an IANA name."""
    if name in ("UTC", "utc", "Etc/UTC", "+00:00", "Z"):
        return UTC
    sign, hours, minutes = name[:1], name[1:3], name[4:6]
    if sign in "+-" and hours.isdigit() and minutes.isdigit() and name[3:4] == ":":
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
