"""Impossible dates in Envoy access lines are invalid times, never another instant.

``pc.strptime`` rolls them over (2018-02-30 becomes 2018-03-02); a line printed with one must be
treated as every other invalid time is (month 13...): not parsed, kept in ``container_logs``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from aggregator.envoy import compile_format, parse_lines
from tests.aggregator.helpers import envoy_line

#: (printed, what strptime alone made of it)
IMPOSSIBLE = [
    ("2018-02-30T10:00:00.123Z", "2018-03-02"),
    ("2018-04-31T10:00:00.123Z", "2018-05-01"),
    ("2019-02-29T10:00:00.123Z", "2019-03-01"),
    ("2018-12-31T23:59:60.123Z", "2019-01-01"),
    ("2018-02-30T10:00:00Z", "2018-03-02"),  # no fraction: the regex path, not the split one
]


@pytest.mark.parametrize(("printed", "rolled"), IMPOSSIBLE)
def test_impossible_default_start_time_is_unparsed(printed: str, rolled: str) -> None:
    """Alone (every line fails Arrow's cast) and beside valid lines, in either order."""
    good = envoy_line(when="2024-02-29T10:00:00.500Z")  # a real leap day stays a row
    for lines, bad_at in (([envoy_line(when=printed)], 0), ([good, envoy_line(when=printed)], 1)):
        parsed = parse_lines(pa.array(lines))
        assert parsed.unparsed.to_pylist() == [bad_at], f"{printed} was read as {rolled}"
        times = parsed.columns.get("timestamp", pa.array([])).to_pylist()
        assert times == [datetime(2024, 2, 29, 10, 0, 0, 500000, tzinfo=UTC)] * (len(lines) - 1)


def test_impossible_start_time_in_json_access_logs_is_unparsed() -> None:
    line = '{{"start_time":"{}","response_code":200,"method":"GET","path":"/"}}'
    lines = [line.format("2018-02-30T10:00:00.000Z"), line.format("2018-02-28T10:00:00.000Z")]
    parsed = parse_lines(pa.array(lines))
    assert parsed.rows.to_pylist() == [1]
    assert parsed.unparsed.to_pylist() == [0]
    assert parsed.columns["timestamp"].to_pylist() == [datetime(2018, 2, 28, 10, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("spec", "valid", "impossible"),
    [
        ("%F %T.%3f", "2024-02-29 10:00:00.125", ["2018-02-30 10:00:00.125"]),
        ("%y-%m-%d %T", "00-02-29 10:00:00", ["18-02-29 10:00:00"]),
        ("%Y %j %T", "2020 366 10:00:00", ["2018 366 10:00:00"]),
        (
            "%Y/%m/%dT%H:%M:%S%z",
            "2018/02/28T23:30:00-0100",  # an offset may move the day: that is no roll-over
            ["2018/02/30T10:00:00+0000", "2018/06/30T23:59:60+0000"],
        ),
        (
            "%d/%b/%Y:%H:%M:%S %z",
            "29/feb/2024:10:00:00 +0000",
            ["30/Feb/2018:10:00:00 +0000", "31/APR/2018:10:00:00 Z"],
        ),
    ],
)
def test_impossible_custom_start_times_are_unparsed(
    spec: str, valid: str, impossible: list[str]
) -> None:
    fmt = compile_format(f"[%START_TIME({spec})%] %RESPONSE_CODE%")
    lines = [f"[{valid}] 200", *(f"[{text}] 503" for text in impossible)]
    parsed = parse_lines(pa.array(lines), (fmt,), json_logs=False)
    assert parsed.rows.to_pylist() == [0]
    assert parsed.unparsed.to_pylist() == list(range(1, len(lines)))
    when = parsed.columns["timestamp"][0].as_py()
    expected = {
        "%F %T.%3f": datetime(2024, 2, 29, 10, 0, 0, 125000, tzinfo=UTC),
        "%y-%m-%d %T": datetime(2000, 2, 29, 10, tzinfo=UTC),
        "%Y %j %T": datetime(2020, 12, 31, 10, tzinfo=UTC),
        "%Y/%m/%dT%H:%M:%S%z": datetime(2018, 3, 1, 0, 30, tzinfo=UTC),
        "%d/%b/%Y:%H:%M:%S %z": datetime(2024, 2, 29, 10, tzinfo=UTC),
    }[spec]
    assert when == expected


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2018/03/01T00:30:00+0100", datetime(2018, 2, 28, 23, 30, tzinfo=UTC)),
        ("2018/03/01T00:30:00+01:00", datetime(2018, 2, 28, 23, 30, tzinfo=UTC)),
        ("2018/02/28T23:30:00-05:30", datetime(2018, 3, 1, 5, 0, tzinfo=UTC)),
        ("2018/12/31T23:59:59Z", datetime(2018, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_offsets_that_move_the_day_are_no_roll_over(printed: str, expected: datetime) -> None:
    """The check compares the printed fields with the wall-clock time, offset included."""
    fmt = compile_format("[%START_TIME(%Y/%m/%dT%H:%M:%S%z)%] %RESPONSE_CODE%")
    parsed = parse_lines(pa.array([f"[{printed}] 200"]), (fmt,), json_logs=False)
    assert parsed.columns["timestamp"].to_pylist() == [expected]
