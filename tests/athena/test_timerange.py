"""Time ranges: relative and ISO-8601 values, and the dt partitions they cover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from athena import schema
from athena.timerange import (
    DT_FORMAT,
    TimeRange,
    TimeRangeError,
    iso_utc,
    parse_duration,
    parse_interval,
    parse_time,
    sql_timestamp,
)

NOW = datetime(2026, 11, 28, 0, 20, 5, 123000, tzinfo=UTC)


def test_dt_format_agrees_with_schema() -> None:
    assert DT_FORMAT == schema.DT_FORMAT


@pytest.mark.parametrize(
    ("text", "delta"),
    [("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("2d", timedelta(days=2)),
     ("1w", timedelta(weeks=1)), ("30s", timedelta(seconds=30)), ("3 hours", timedelta(hours=3))],
)  # fmt: skip
def test_relative(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta
    assert parse_time(text, NOW) == NOW - delta


@pytest.mark.parametrize("text", ["1M", "15M", " 2 M "])
def test_upper_case_m_is_refused_as_ambiguous(text: str) -> None:
    """``1M`` is a month in Grafana: read as a minute it silently answered another question."""
    for parse in (parse_duration, lambda v: parse_time(v, NOW)):
        with pytest.raises(TimeRangeError, match="M is ambiguous: use 30d for a month, 1m"):
            parse(text)
    with pytest.raises(TimeRangeError, match=r"--every .*M is ambiguous"):
        parse_interval(text)


@pytest.mark.parametrize(
    ("text", "delta"),
    [("1m", timedelta(minutes=1)), ("15MIN", timedelta(minutes=15)),
     ("2Mins", timedelta(minutes=2)), ("1H", timedelta(hours=1)), ("2D", timedelta(days=2)),
     ("1W", timedelta(weeks=1))],
)  # fmt: skip
def test_other_cases_of_units_keep_their_meaning(text: str, delta: timedelta) -> None:
    assert parse_time(text, NOW) == NOW - delta


def test_iso_forms() -> None:
    assert parse_time("2026-11-27T23:00:00Z", NOW) == datetime(2026, 11, 27, 23, tzinfo=UTC)
    assert parse_time("2026-11-27T23:00:00", NOW) == datetime(2026, 11, 27, 23, tzinfo=UTC)
    assert parse_time("2026-11-28T01:00:00+02:00", NOW) == datetime(2026, 11, 27, 23, tzinfo=UTC)
    assert parse_time("2026-11-27", NOW) == datetime(2026, 11, 27, tzinfo=UTC)
    assert parse_time("now", NOW) == NOW


@pytest.mark.parametrize("bad", ["", "yesterday", "1y", "-1h", "2026-13-01", "1h; DROP"])
def test_bad_values(bad: str) -> None:
    with pytest.raises(TimeRangeError):
        parse_time(bad, NOW)


def test_range_across_day_boundary() -> None:
    r = TimeRange.parse("1h", None, now=NOW)
    assert r.since == NOW - timedelta(hours=1)
    assert r.hours() == ["2026-11-27-23", "2026-11-28-00"]
    assert (r.dt_from, r.dt_to) == ("2026-11-27-23", "2026-11-28-00")
    assert r.contains_dt("2026-11-27-23") and not r.contains_dt("2026-11-27-22")
    assert not r.contains_dt("2026-11-28-01")


def test_until_on_hour_boundary_is_exclusive() -> None:
    r = TimeRange.parse("2026-11-27T22:00:00Z", "2026-11-28T00:00:00Z", now=NOW)
    assert r.hours() == ["2026-11-27-22", "2026-11-27-23"]
    assert r.sql_params() == {
        "dt_from": "2026-11-27-22",
        "dt_to": "2026-11-27-23",
        "since": "2026-11-27 22:00:00.000",
        "until": "2026-11-28 00:00:00.000",
    }


def test_default_and_order() -> None:
    assert TimeRange.parse(None, None, now=NOW, default="1d").since == NOW - timedelta(days=1)
    with pytest.raises(TimeRangeError, match="must be before") as reversed_:
        TimeRange.parse("1h", "2h", now=NOW)
    # What to do, not only what is wrong: both count back from now.
    assert "give the earlier time to --since (relative times count back from now" in str(
        reversed_.value
    )
    with pytest.raises(TimeRangeError, match="give a --since in the past"):
        TimeRange.parse("2030-01-01", None, now=NOW)


def test_until_alone_ends_the_default_span_there() -> None:
    """``--until 2026-11-27T04:00:00Z`` alone: the default span before 04:00 (not before now),
    or every row before it for ``logq sql`` (``open_start``)."""
    until = "2026-11-27T04:00:00Z"
    r = TimeRange.parse(None, until, now=NOW, default="1h")
    assert (r.since, r.until) == (datetime(2026, 11, 27, 3, tzinfo=UTC), parse_time(until, NOW))
    open_ended = TimeRange.parse(None, until, now=NOW, open_start=True)
    assert open_ended.since == datetime(1970, 1, 1, tzinfo=UTC)
    assert open_ended.until == parse_time(until, NOW)


def test_the_until_example_of_the_parse_docstring_is_taken_as_it_says() -> None:
    """The docstring promised ``--until 04:00`` alone, a bare clock time, which is refused
    (it names no day): its example is now a time logq takes, with the meaning it gives."""
    import re

    doc = TimeRange.parse.__doc__ or ""
    example = re.search(r"``--until\s+(\S+)``\s+alone means the hour before (\d\d:\d\d)", doc)
    assert example, doc
    r = TimeRange.parse(None, example.group(1), now=NOW, default="1h")
    assert r.until.strftime("%H:%M") == example.group(2)
    assert r.until - r.since == timedelta(hours=1)
    with pytest.raises(TimeRangeError, match="is not a time"):
        TimeRange.parse(None, "04:00", now=NOW)


def test_bounds_between_milliseconds_round_up_to_the_next_one() -> None:
    """Rows are stored to the millisecond: [.0005, ...) starts at .001, [..., .0005) ends
    after the row at .000."""
    r = TimeRange.parse("2026-11-27T00:00:00Z", "2026-11-27T00:00:00.0005Z", now=NOW)
    assert r.until == datetime(2026, 11, 27, 0, 0, 0, 1000, tzinfo=UTC)
    assert r.sql_params()["until"] == "2026-11-27 00:00:00.001"
    r = TimeRange.parse("2026-11-26T23:59:59.9995Z", "2026-11-27T00:00:01Z", now=NOW)
    assert r.since == datetime(2026, 11, 27, tzinfo=UTC)
    assert r.dt_from == "2026-11-27-00"
    with pytest.raises(TimeRangeError, match=r"\(2026-11-27T00:00:00\.002Z\) must be before"):
        TimeRange.parse("2026-11-27T00:00:00.0011Z", "2026-11-27T00:00:00.002Z", now=NOW)


def test_interval() -> None:
    assert parse_interval("1m") == timedelta(minutes=1)
    assert parse_interval("5m") == timedelta(minutes=5)
    for bad in ("0m", "1w", "m", "1.5m"):
        with pytest.raises(TimeRangeError):
            parse_interval(bad)


def test_formatting() -> None:
    assert sql_timestamp(NOW) == "2026-11-28 00:20:05.123"
    assert iso_utc(NOW) == "2026-11-28T00:20:05.123Z"
    assert iso_utc(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000Z"


def test_formatting_keeps_four_year_digits() -> None:
    """ISO-8601 (and Athena's timestamp text) have four; glibc's ``%Y`` gives ``1`` for year
    1, which `--since 0001-01-01` put in its notes and the SQL."""
    early = datetime(1, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)
    assert iso_utc(early) == "0001-01-01T00:00:00.005Z"
    assert sql_timestamp(early) == "0001-01-01 00:00:00.005"
    assert iso_utc(datetime(999, 12, 31, 23, 59, 59)) == "0999-12-31T23:59:59.000Z"


def test_the_last_hours_of_the_calendar_are_listed() -> None:
    """The hour after 9999-12-31T23 is no datetime: listing up to it must not step past it
    (every canned query over such a range was an OverflowError traceback)."""
    span = TimeRange.parse("9999-12-31T22:00:00Z", "9999-12-31T23:59:59.999Z", now=NOW)
    assert span.hours() == ["9999-12-31-22", "9999-12-31-23"]
    assert TimeRange.parse("1h", None, now=NOW).hours() == ["2026-11-27-23", "2026-11-28-00"]


@pytest.mark.parametrize("since", ["99999999999w", "9" * 30 + "h"])
def test_times_beyond_the_calendar_are_time_range_errors(since: str) -> None:
    """Not an OverflowError traceback: a TimeRangeError (a ValueError) that says why."""
    with pytest.raises(TimeRangeError, match="out of range"):
        TimeRange.parse(since, None, now=NOW)


def test_intervals_beyond_the_calendar_are_time_range_errors() -> None:
    with pytest.raises(TimeRangeError, match="out of range"):
        parse_interval("99999999999d")


@pytest.mark.parametrize(
    ("text", "delta"),
    [("1h30m", timedelta(hours=1, minutes=30)), ("2d12h", timedelta(days=2, hours=12)),
     ("1w2d", timedelta(days=9)), ("1h 30min", timedelta(hours=1, minutes=30)),
     ("1m30s", timedelta(seconds=90)), ("2hours15mins", timedelta(hours=2, minutes=15))],
)  # fmt: skip
def test_compound_durations(text: str, delta: timedelta) -> None:
    """Several units together, wherever one unit is accepted: --since/--until and --every."""
    assert parse_duration(text) == delta
    assert parse_time(text, NOW) == NOW - delta
    if text.isalnum() and "w" not in text and "hours" not in text:
        assert parse_interval(text) == delta


@pytest.mark.parametrize("text", ["1h1h", "1h30M", "1h30", "h30m", "1h-30m", "99999999999w1d"])
def test_compound_durations_refused(text: str) -> None:
    """A unit given twice, an ambiguous M, a number without a unit, or out of range: refused,
    with the accepted forms (or the range) in the message."""
    with pytest.raises(TimeRangeError, match=r"1h30m|ambiguous|years 1-9999"):
        parse_duration(text)


def test_duration_error_lists_compound_form() -> None:
    with pytest.raises(TimeRangeError, match=r"30s, 15m, 1h, 2d, 1w, or several together: 1h30m"):
        parse_duration("soon")


@pytest.mark.parametrize("text", ["1" * 5000 + "s", "1h" + "9" * 4400 + "m"])
def test_durations_of_thousands_of_digits_are_out_of_range(text: str) -> None:
    """Python reads no integer of over 4,300 digits (a ValueError telling the user to call
    sys.set_int_max_str_digits): the amount is out of range, as a shorter huge one is; and
    leading zeros are no digits of the amount."""
    with pytest.raises(TimeRangeError, match="years 1-9999"):
        parse_duration(text)
    with pytest.raises(TimeRangeError, match="out of range"):
        parse_interval(text)
    ninety = "0" * 5000 + "90s"
    assert parse_duration(ninety) == parse_interval(ninety) == timedelta(seconds=90)


def test_every_unit_twice_lists_the_forms_every_takes() -> None:
    """--every takes no weeks: its error does not offer 1w."""
    with pytest.raises(TimeRangeError, match=r"unit twice; use e\.g\. 30s, 1m") as refused:
        parse_interval("1h2h")
    assert "1w" not in str(refused.value)


@pytest.mark.parametrize("text", ["١h", "１h", "1h３0m", "٣٠s", "1ſ", "𝟏h"])
def test_durations_take_ascii_digits_and_units_only(text: str) -> None:
    """``\\d`` (and a case-blind ``s``) also match other scripts' digits and ``ſ``, which
    int() read as numbers: a value no one typed on purpose passed as a range."""
    with pytest.raises(TimeRangeError, match="is not a duration"):
        parse_duration(text)
    with pytest.raises(TimeRangeError, match="is not a time"):
        parse_time(text, NOW)
    with pytest.raises(TimeRangeError, match="is not an interval"):
        parse_interval(text)


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_since_or_until_is_refused_not_taken_for_the_default(empty: str) -> None:
    with pytest.raises(TimeRangeError, match="empty time"):
        TimeRange.parse(empty, None, now=NOW)
    with pytest.raises(TimeRangeError, match="empty time"):
        TimeRange.parse("1h", empty, now=NOW)


@pytest.mark.parametrize(
    ("since", "until", "flag"),
    [("1h", "10:00", "--until"), ("10:00", "now", "--since"), ("1h1h", None, "--since"),
     ("1M", None, "--since"), ("1h", "2M", "--until")],
)  # fmt: skip
def test_a_value_that_is_no_time_names_its_flag(since: str, until: str | None, flag: str) -> None:
    """With --since and --until both given, "'10:00' is not a time" did not say which."""
    with pytest.raises(TimeRangeError) as refused:
        TimeRange.parse(since, until, now=NOW)
    bad = until if flag == "--until" else since
    assert str(refused.value).startswith(f"{flag} {bad!r}")


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_times_whose_offset_leaves_the_years_1_9999_are_out_of_range(text: str) -> None:
    """In range as written, out of it in UTC: an OverflowError traceback from every command."""
    with pytest.raises(TimeRangeError, match="out of range: times must fall in the years 1-9999"):
        parse_time(text, NOW)
    assert parse_time("0001-01-01T01:00:00+01:00", NOW) == datetime(1, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["1w", "2weeks", "1w2d"])
def test_every_in_weeks_says_to_use_days(text: str) -> None:
    """``--since 1w`` is taken; ``--every 1w`` said only "not an interval"."""
    with pytest.raises(TimeRangeError, match=r"weeks are no --every unit; use 7d .*Thursday"):
        parse_interval(text)
    assert parse_interval("7d") == timedelta(days=7)
