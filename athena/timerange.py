"""Time ranges for queries: ``--since``/``--until`` values and the ``dt`` partitions they cover.

Engineers type relative times in an incident (``15m``, ``1h``, ``2d``, ``1w``) and paste ISO-8601
times from dashboards; both become one half-open UTC range ``[since, until)``. The range also names
the hourly ``dt`` partitions a query may touch, which is what makes Athena (and the local engine)
read only the folders in range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Same format as ``athena.schema.DT_FORMAT`` (kept here so the CLI can parse times without
#: importing pyarrow; a test asserts they agree).
DT_FORMAT = "%Y-%m-%d-%H"

#: One amount and its unit; longer spellings first, so that ``30mins`` is not read as ``30m``.
#: Every pattern is ASCII-only: ``\d`` would also take other scripts' digits (``١h``,
#: fullwidth ``１h``), which int() reads as numbers, so a value no one meant to type passed.
_PART = r"(\d+)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|wks?|w)\s*"
#: A duration: one part (``15m``) or several, largest unit first by habit (``1h30m``, ``2d12h``).
_RELATIVE = re.compile(rf"^\s*(?:{_PART})+$", re.IGNORECASE | re.ASCII)
_PARTS = re.compile(_PART, re.IGNORECASE | re.ASCII)
#: The forms a duration takes, for error texts.
DURATION_FORMS = "a number and a unit: 30s, 15m, 1h, 2d, 1w, or several together: 1h30m, 2d12h"
#: Digits of the largest amount read (leading zeros aside): 10**15 s is beyond the year 9999.
_MAX_DIGITS = 15
#: Seconds per unit, keyed by the unit's first letter.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL = re.compile(r"^\s*(?:\d+\s*[smhd]\s*)+$", re.IGNORECASE | re.ASCII)
_INTERVAL_PARTS = re.compile(r"(\d+)\s*([smhd])", re.IGNORECASE | re.ASCII)
#: ``1M`` is a month in Grafana's time picker (and Java's, Elasticsearch's date maths), a minute
#: to a case-blind parser. Refused rather than guessed: a month read as a minute answers another
#: question with no sign of it.
AMBIGUOUS_UNIT = "M is ambiguous: use 30d for a month, 1m or 60s for a minute"


class TimeRangeError(ValueError):
    """A ``--since``/``--until``/``--every`` value could not be understood; says what works."""


def _seconds(value: str, parts: list[tuple[str, str]], what: str, forms: str) -> int:
    """The seconds of ``parts`` (``(amount, unit)`` pairs), each unit said once (``1h2h`` is
    a typo, not 3 hours). A bare upper-case ``M`` (``1M``, ``1h30M``) is refused (see
    :data:`AMBIGUOUS_UNIT`); every other spelling keeps its meaning whatever its case.
    OverflowError for an amount no time range holds (Python refuses to read one of over 4,300
    digits: it would be a ValueError naming ``sys.set_int_max_str_digits``)."""
    units = [unit[0].lower() for _, unit in parts]
    if len(set(units)) < len(units):
        raise TimeRangeError(f"{what}{value.strip()!r} gives a unit twice; use {forms}")
    if any(unit == "M" for _, unit in parts):
        raise TimeRangeError(f"{what}{value.strip()!r}: {AMBIGUOUS_UNIT}")
    if any(len(amount.lstrip("0")) > _MAX_DIGITS for amount, _ in parts):
        raise OverflowError(value)
    return sum(int(amount.lstrip("0") or "0") * _UNITS[unit[0].lower()] for amount, unit in parts)


def parse_duration(value: str) -> timedelta:
    """``15m``/``1h``/``2d``/``1w`` (also ``30s``), or several together (``1h30m``, ``2d12h``),
    as a timedelta."""
    if not _RELATIVE.match(value or ""):
        raise TimeRangeError(f"{value!r} is not a duration; use {DURATION_FORMS}")
    try:
        return timedelta(seconds=_seconds(value, _PARTS.findall(value), "", DURATION_FORMS))
    except OverflowError:
        raise TimeRangeError(
            f"{value!r} is out of range: times must fall in the years 1-9999"
        ) from None


def parse_interval(value: str) -> timedelta:
    """A bucket width for ``--every`` (``30s``, ``1m``, ``5m``, ``1h``, ``1d``, or several
    together: ``1h30m``); must be > 0."""
    forms = "use e.g. 30s, 1m, 5m, 1h, 1d, or several together: 1h30m"
    if not _INTERVAL.match(value or ""):
        if _RELATIVE.match(value or "") and any(u[0] in "wW" for _, u in _PARTS.findall(value)):
            # --since takes 1w; a week interval would start on a Thursday (1970-01-01) in UTC,
            # not on the Monday a reader expects: said, not guessed.
            raise TimeRangeError(
                f"--every {value!r}: weeks are no --every unit; use 7d (intervals of 7 days "
                "start on 7-day boundaries from 1970-01-01, a Thursday, UTC)"
            )
        raise TimeRangeError(f"--every {value!r} is not an interval; {forms}")
    try:
        seconds = _seconds(value, _INTERVAL_PARTS.findall(value), "--every ", forms[4:])
        if seconds <= 0:
            raise TimeRangeError(f"--every {value!r} is not an interval; {forms}")
        return timedelta(seconds=seconds)
    except OverflowError:
        raise TimeRangeError(f"--every {value!r} is out of range; {forms}") from None


def parse_time(value: str, now: datetime) -> datetime:
    """A point in time: ``now``, a duration before ``now``, or ISO-8601 (naive means UTC)."""
    text = (value or "").strip()
    if not text:
        raise TimeRangeError("empty time; use 15m, 1h, 2d, 1w, 1h30m, now or an ISO-8601 time")
    if text.lower() == "now":
        return now
    if _RELATIVE.match(text):
        try:
            return now - parse_duration(text)
        except OverflowError:
            raise TimeRangeError(
                f"{value!r} is out of range: times must fall in the years 1-9999"
            ) from None
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise TimeRangeError(
            f"{value!r} is not a time; use 15m, 1h, 2d, 1w, 1h30m (before now) or ISO-8601 such as "
            "2024-05-01T13:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise TimeRangeError(
            f"{value!r} is out of range: times must fall in the years 1-9999 in UTC"
        ) from None


def as_utc(ts: datetime) -> datetime:
    """A timestamp from either engine as an aware UTC datetime: Athena (pyathena) returns naive
    UTC ones, DuckDB aware ones, and the two cannot be compared or subtracted."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def dt_of(ts: datetime) -> str:
    """The ``dt`` partition value (UTC hour) of a timestamp (naive: taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    # Four year digits always (strftime's %Y gives "1" for year 1 on glibc): parse_dt reads it.
    return f"{ts.year:04d}-{ts:%m-%d-%H}"


#: Where a range with no start begins (``logq sql`` without ``--since``).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ceil_ms(ts: datetime) -> datetime:
    """``ts`` rounded up to the next whole millisecond (unchanged when it is one)."""
    extra = ts.microsecond % 1000
    if not extra:
        return ts
    try:
        return ts + timedelta(microseconds=1000 - extra)
    except OverflowError:
        return ts - timedelta(microseconds=extra)


def _flag_time(flag: str, value: str, now: datetime) -> datetime:
    """:func:`parse_time` of ``flag``'s value, its error naming the flag: with both given,
    ``'10:00' is not a time`` left the user to guess which of --since and --until it was."""
    try:
        return parse_time(value, now)
    except TimeRangeError as exc:
        text = str(exc)
        raise TimeRangeError(
            f"{flag} {text}" if text.startswith(("'", '"')) else f"{flag}: {text}"
        ) from None


def _order_hint(since: str | None, until: str | None) -> str:
    """What to do about a range that ends before it starts. ``--since 1h --until 2h`` reads
    as "from 1 h to 2 h", but both count back from now: the error named the two times and left
    the user to work out which flag takes the larger one."""
    if until is None:
        return "give a --since in the past (15m, 1h, or an earlier ISO time)"
    if since is None:
        return "give a later --until, or a --since before it"
    return (
        "give the earlier time to --since (relative times count back from now: "
        "--since 3h --until 2h is the hour that ended 2 hours ago)"
    )


@dataclass(frozen=True)
class TimeRange:
    """A half-open UTC range ``[since, until)``."""

    since: datetime
    """Inclusive start, aware UTC."""
    until: datetime
    """Exclusive end, aware UTC."""

    @classmethod
    def parse(
        cls,
        since: str | None,
        until: str | None,
        now: datetime | None = None,
        default: str = "1h",
        open_start: bool = False,
    ) -> TimeRange:
        """Build the range from CLI values.

        Without ``since``, the range is ``default`` long and ends at ``until`` (``--until
        2026-11-28T04:00Z`` alone means the hour before 04:00 that day, not the hour before
        now; a bare clock time such as ``04:00`` is no time: it names no day), or starts at
        :data:`EPOCH` with ``open_start`` (``logq sql``: every row). Both ends are rounded up
        to the millisecond, the precision of the stored times, so that a bound between two
        milliseconds neither takes in nor leaves out the row at the earlier one.
        """
        now = (now or datetime.now(UTC)).astimezone(UTC)
        # An empty value given (``--since ""``, a shell variable left unset) is refused by
        # parse_time rather than read as "not given": that would answer another range.
        end = _flag_time("--until", until, now) if until is not None else now
        if since is not None:
            start = _flag_time("--since", since, now)
        elif open_start:
            start = EPOCH
        elif _RELATIVE.match(default):
            start = end - parse_duration(default)
        else:
            start = parse_time(default, now)
        start, end = _ceil_ms(start), _ceil_ms(end)
        if start >= end:
            raise TimeRangeError(
                f"--since ({iso_utc(start)}) must be before --until ({iso_utc(end)}); "
                + _order_hint(since, until)
            )
        return cls(start, end)

    @property
    def dt_from(self) -> str:
        """First ``dt`` partition in range."""
        return dt_of(self.since)

    @property
    def dt_to(self) -> str:
        """Last ``dt`` partition in range (the hour holding the last included millisecond)."""
        return dt_of(self.until - timedelta(milliseconds=1))

    def _hour_span(self) -> tuple[datetime, datetime]:
        """(the start of the first hour, the last included millisecond), UTC."""
        start = self.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return start, (self.until - timedelta(milliseconds=1)).astimezone(UTC)

    def hour_count(self) -> int:
        """How many ``dt`` values the range spans (without listing them: ``--since 0001-01-01``
        spans 18 million)."""
        start, last = self._hour_span()
        if last < start:
            return 0
        return int((last - start) // timedelta(hours=1)) + 1

    def hours(self) -> list[str]:
        """Every ``dt`` value in range, oldest first (see :meth:`hour_count` first). Counted, not
        stepped until past the end: the hour after 9999-12-31T23 is not a ``datetime``."""
        start, _ = self._hour_span()
        return [dt_of(start + timedelta(hours=i)) for i in range(self.hour_count())]

    def contains_dt(self, dt: str) -> bool:
        """Whether partition ``dt`` may hold rows of this range (string order is time order)."""
        return self.dt_from <= dt <= self.dt_to

    def sql_params(self) -> dict[str, str]:
        """The time parameters every canned query takes (SQL timestamp text, UTC)."""
        return {
            "dt_from": self.dt_from,
            "dt_to": self.dt_to,
            "since": sql_timestamp(self.since),
            "until": sql_timestamp(self.until),
        }


def sql_timestamp(ts: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` in UTC: what ``CAST(x AS timestamp)`` reads in both engines."""
    ts = ts.astimezone(UTC)
    return f"{ts.year:04d}-{ts:%m-%d %H:%M:%S}.{ts.microsecond // 1000:03d}"  # as in dt_of


def iso_utc(ts: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (how timestamps print in json/csv)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    return f"{ts.year:04d}-{ts:%m-%dT%H:%M:%S}.{ts.microsecond // 1000:03d}Z"  # as in dt_of
