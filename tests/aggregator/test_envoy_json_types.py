"""Envoy JSON access-log values of another JSON type than their column's: converted the same way
by every reader of :mod:`aggregator.envoy_json` (bulk, bulk with numbers unquoted, line by line),
never dropped for their type, and a number rounded only where it is counted."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aggregator import envoy_json
from aggregator.batch import records_table, route
from aggregator.decode import records_batch, to_ipc
from aggregator.envoy import ParsedAccess, parse_lines
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.support.metrics import metrics_base, metrics_text
from tests.support.procs import wait_until

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns
BASE = {"start_time": "2026-11-28T14:00:00.000Z", "response_code": 200}
#: Neighbours that make a batch take each reader: a json_format line beside a typed one (their
#: number keys typed differently: the re-read with numbers unquoted); a number past int64, then
#: a ``"200.0"`` beside typed numbers, then a broken line (a batch split: the odd lines read line
#: by line, the rest in bulk; the line under test, first, on either side as its value makes it).
#: Alone, a line goes through the first bulk read; :func:`_parsed` also reads every batch line
#: by line.
NEIGHBOURS = (
    [],
    [json.dumps({**BASE, "duration": "7"}), json.dumps({**BASE, "duration": 7})],
    [json.dumps({**BASE, "duration": 7}), json.dumps({**BASE, "bytes_sent": 2**64})],
    [json.dumps({**BASE, "duration": "7"}), json.dumps({**BASE, "response_code": "200.0"})],
    [json.dumps({**BASE, "duration": 7}), '{"start_time": "broken'],
)
#: How many ways :func:`_parsed` reads a line.
READS = len(NEIGHBOURS) + 1


def _parsed(line: str) -> list[ParsedAccess]:
    """``line`` first in a batch with each of :data:`NEIGHBOURS`, and read line by line (the
    reference: ``json.loads``) beside the first ones."""
    out = [parse_lines(pa.array([line, *neighbours])) for neighbours in NEIGHBOURS]
    with mock.patch.object(envoy_json, "_read_bulk", side_effect=ValueError("line by line")):
        out.append(parse_lines(pa.array([line, *NEIGHBOURS[1]])))
    return out


def _rows(values: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The row of ``{**BASE, **values}`` and whether it was counted as rounded, per reader."""
    return [(row, rounded) for row, rounded, _ in _line_rows(json.dumps({**BASE, **values}))]


def _line_rows(line: str) -> list[tuple[dict[str, Any], bool, bool]]:
    """The row of ``line``, whether it was counted as rounded and as too large, per reader."""
    out = []
    for parsed in _parsed(line):
        assert parsed.rows.to_pylist()[:1] == [0], line
        row = {name: column[0].as_py() for name, column in parsed.columns.items()}
        out.append((row, 0 in parsed.rounded.to_pylist(), 0 in parsed.too_large.to_pylist()))
    return out


def _with_raw(key: str, number: str) -> str:
    """A line of :data:`BASE` and ``key`` holding ``number``, JSON text as is (``json.dumps``
    prints a float's shortest digits, never ``9007199254740993.0``)."""
    base = {name: value for name, value in BASE.items() if name != key}
    return json.dumps(base)[:-1] + f', "{key}": {number}}}'


def _one_row(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """:func:`_rows`, checked to be one row whatever the reader."""
    rows = _rows(values)
    assert all(row == rows[0] for row in rows), rows
    return rows[0]


#: (column, JSON key, value, what the column stores).
STRING_CASES: list[tuple[str, str, object, str]] = [
    ("user_agent", "user_agent", {"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
    ("user_agent", "user_agent", {"é": "ü"}, '{"é":"ü"}'),
    ("path", "path", ["x", 2], '["x",2]'),
    ("protocol", "protocol", True, "true"),
    ("authority", "authority", False, "false"),
    ("request_id", "request_id", 12, "12"),
    ("request_id", "request_id", 1.5, "1.5"),
    ("request_id", "request_id", 12.0, "12.0"),
    ("upstream_host", "upstream_host", {}, "{}"),
    # The bulk reader typed an ISO-8601 text as a timestamp, and printed it back otherwise.
    ("request_id", "x-request-id", "2026-11-28T14:00:00Z", "2026-11-28T14:00:00Z"),
]


def test_a_string_column_keeps_any_json_value_as_its_json_text() -> None:
    """An object, array, boolean or number where a string belongs was stored as NULL (a float
    cut to its whole part): it is kept as its compact JSON text, as Fluent Bit and Vector coerce
    a value to a string."""
    wrong = []
    for column, key, value, stored in STRING_CASES:
        row, rounded = _one_row({key: value})
        if (row[column], rounded) != (stored, False):
            wrong.append((key, value, row[column], rounded))
    assert wrong == []


#: (the value of ``duration``, its ``duration_ms``, whether the line is counted as rounded).
NUMBER_CASES: list[tuple[object, int | None, bool]] = [
    (12, 12, False),
    ("12", 12, False),
    (12.0, 12, False),
    ("12.0", 12, False),
    (1e3, 1000, False),
    ("1E3", 1000, False),
    (1.5, 2, True),
    (2.5, 3, True),
    (1.4, 1, True),
    (1.9, 2, True),
    ("1.5", 2, True),
    (0.4, 0, True),
    (999999999.4, 999999999, True),
    (999999999.5, None, False),  # rounds past 9 digits
    (-0.0, 0, False),
    ("-0", 0, False),
    ("-", None, False),
    ("", None, False),
    (None, None, False),
    ("12 ms", None, False),
    (True, None, False),
    ({"ms": 12}, None, False),
    ([12], None, False),
    # pyarrow's reader makes an invalid array of it: the batch's JSON lines were all unparsed.
    ([None, None], None, False),
    (1e400, None, False),  # Python's json writes Infinity
]


def test_a_number_column_reads_numbers_in_any_spelling() -> None:
    """Whole numbers in JSON's spellings are stored exactly; one with a fraction was cut (1.9
    as 1) or, quoted, stored as NULL: it is rounded to the nearest, halves up, and counted."""
    wrong = []
    for value, stored, rounded in NUMBER_CASES:
        row, counted = _one_row({"duration": value})
        if (row["duration_ms"], counted) != (stored, rounded):
            wrong.append((value, row["duration_ms"], counted))
    assert wrong == []


def test_a_response_code_spelled_as_a_float_still_makes_an_access_line() -> None:
    """``"200.0"`` left the line without a response code: not an access line, unparsed."""
    for code in (200.0, "200.0", "2e2"):
        row, rounded = _one_row({"response_code": code})
        assert row["response_code"] == 200 and not rounded


def test_a_response_code_with_a_fraction_makes_no_access_line() -> None:
    """``200.5`` was stored as 201, a status never sent: the line has no status, as a text
    line with ``200.5`` for ``%RESPONSE_CODE%`` has none (both unparsed, in container_logs)."""
    text = '[2026-11-28T14:00:00.000Z] "GET / HTTP/1.1" 200.5 - 0 0 1 - "-" "-" "-" "-" "-"'
    lines = [_with_raw("response_code", code) for code in ("200.5", '"200.5"', "404.4", "1.5")]
    for line in [*lines, text]:
        for parsed in _parsed(line):
            assert parsed.unparsed.to_pylist()[:1] == [0], line
            assert 0 not in parsed.rounded.to_pylist()


#: (JSON text of ``bytes_sent``, what it stores, whether the line is counted as rounded, and
#: as too large). A double holds every whole number to 2^53, every other one past it.
EXACT_CASES: list[tuple[str, int | None, bool, bool]] = [
    ('"9007199254740993.0"', 9007199254740993, False, False),
    ("9007199254740993.0", 9007199254740993, False, False),
    ("9.007199254740993e15", 9007199254740993, False, False),
    ('"9007199254740992.6"', 9007199254740993, True, False),
    ("9007199254740992.6", 9007199254740993, True, False),
    ('"4503599627370495.4"', 4503599627370495, True, False),
    ("0.49999999999999999", 0, True, False),
    ('"999999999999999999.4"', 999999999999999999, True, False),
    ("999999999999999999", 999999999999999999, False, False),
    ("999999999999999999.5", None, False, True),
    ("1000000000000000000", None, False, True),
    ("9223372036854775807", None, False, True),
    ('"99999999999999999999"', None, False, True),
    ("99999999999999999999", None, False, True),
    ("18446744073709551616.0", None, False, True),
    ("1e400", None, False, True),
    ('"1e400"', None, False, True),
    ("1e9999999999999999999999", None, False, False),  # no number Python's Decimal holds
]


def test_numbers_are_read_by_their_digits_and_past_their_column_counted() -> None:
    """Quoted or not, a number was read through a double: past 2^53 its last digits changed
    (``9007199254740993.0`` stored as ...992), and below, a number of many digits could round
    the wrong way; one past the column's digits was NULL uncounted."""
    wrong = []
    for number, stored, rounded, large in EXACT_CASES:
        rows = _line_rows(_with_raw("bytes_sent", number))
        assert all(row == rows[0] for row in rows), rows
        row, counted, too_large = rows[0]
        if (row["bytes_sent"], counted, too_large) != (stored, rounded, large):
            wrong.append((number, row["bytes_sent"], counted, too_large))
    assert wrong == []


def test_an_int_column_counts_a_number_past_its_nine_digits() -> None:
    for number in ("1234567890", '"1234567890"', "1234567890.0", "999999999.5"):
        rows = _line_rows(_with_raw("duration", number))
        assert [(row["duration_ms"], large) for row, _, large in rows] == [(None, True)] * READS


def test_rounded_lines_are_given_by_their_positions_in_the_batch() -> None:
    """Lines of other formats and unparsed ones around them do not shift the positions."""
    lines = [
        "not an access line",
        json.dumps({**BASE, "duration": 1.5}),
        "[2026-11-28T14:00:00.000Z] nope",
        json.dumps({**BASE, "bytes_sent": 12.0}),
        json.dumps({**BASE, "bytes_sent": 12.5, "upstream_service_time": 0.5}),
    ]
    parsed: ParsedAccess = parse_lines(pa.array(lines))
    assert parsed.rows.to_pylist() == [1, 3, 4]
    assert parsed.rounded.to_pylist() == [1, 4]
    assert parsed.columns["bytes_sent"].to_pylist() == [None, 12, 13]
    assert parsed.columns["upstream_service_time_ms"].to_pylist() == [None, None, 1]


def test_route_counts_the_rounded_lines_per_service() -> None:
    def event(service: str, duration: object) -> tuple[str, int, dict]:
        line = json.dumps({**BASE, "duration": duration})
        return (f"logq.{service}", T0, record(line, service=service, format="envoy"))

    events = [event("cart", 1.5), event("recipe", 7), event("cart", 2.5), event("cart", 3)]
    table = records_table([to_ipc(records_batch(t, pa.array([n]), [r])) for t, n, r in events])
    routed = route(table)
    assert routed.numbers_rounded == {"cart": 2}
    assert routed.tables["envoy_access"].column("duration_ms").to_pylist() == [2, 7, 3, 3]


def test_route_counts_the_lines_with_a_number_too_large_per_service() -> None:
    """The line is kept, its other values stored; the number past int64 is NULL, counted."""

    def event(service: str, sent: str) -> tuple[str, int, dict]:
        line = _with_raw("bytes_sent", sent)[:-1] + ', "path": "/a"}'
        return (f"logq.{service}", T0, record(line, service=service, format="envoy"))

    sent = ["1", "99999999999999999999", "2", '"18446744073709551616"', "1e19"]
    services = ["cart", "cart", "recipe", "recipe", "cart"]
    events = [event(service, number) for service, number in zip(services, sent, strict=True)]
    table = records_table([to_ipc(records_batch(t, pa.array([n]), [r])) for t, n, r in events])
    routed = route(table)
    assert routed.numbers_too_large == {"cart": 2, "recipe": 1}
    access = routed.tables["envoy_access"]
    assert access.column("bytes_sent").to_pylist() == [1, None, 2, None, None]
    assert access.column("path").to_pylist() == ["/a"] * 5
    assert "container_logs" not in routed.tables


#: Negative numbers in a number column, in JSON's spellings: no count, duration or status is
#: below 0, and a text format's ``%BYTES_SENT%`` of ``-5`` leaves its line unparsed.
NEGATIVE_NUMBERS = ["-1", '"-1"', "-0.4", "-1e400", '"-1.5"', "-99999999999999999999", "-1e-400"]


def test_a_negative_number_leaves_its_line_unparsed_as_in_the_text_formats() -> None:
    """A negative number was NULL, its line stored and counted nowhere; the same value in a
    text line (``-5`` for ``%BYTES_RECEIVED%``) leaves it unparsed, in container_logs, counted
    in the parse failures: a JSON line now too, in every reader. ``-0`` and ``-0.0`` are 0."""
    text = '[2026-11-28T14:00:00.000Z] "GET / HTTP/1.1" 200 - -5 0 1 - "-" "-" "-" "-" "-"'
    assert parse_lines(pa.array([text])).unparsed.to_pylist() == [0]
    for key in ("duration", "bytes_received", "bytes_sent", "upstream_service_time"):
        for number in NEGATIVE_NUMBERS:
            for parsed in _parsed(_with_raw(key, number)):
                assert parsed.unparsed.to_pylist()[:1] == [0], (key, number)
                assert 0 not in parsed.rounded.to_pylist() + parsed.too_large.to_pylist()
        for zero in ("-0", "-0.0", '"-0"'):
            assert [row[0] for row in _line_rows(_with_raw(key, zero))] == [
                _line_rows(_with_raw(key, "0"))[0][0]
            ] * READS


def test_route_counts_a_line_with_a_negative_number_as_a_parse_failure() -> None:
    def event(service: str, received: str) -> tuple[str, int, dict]:
        line = _with_raw("bytes_received", received)
        return (f"logq.{service}", T0, record(line, service=service, format="envoy"))

    events = [event("cart", "3"), event("cart", "-3"), event("recipe", '"-1"')]
    table = records_table([to_ipc(records_batch(t, pa.array([n]), [r])) for t, n, r in events])
    routed = route(table)
    assert routed.parse_failures == {"cart": 1, "recipe": 1}
    assert routed.tables["envoy_access"].column("bytes_received").to_pylist() == [3]
    assert routed.tables["container_logs"].num_rows == 2
    assert routed.numbers_too_large == {}


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["-", "", "12", "1.5", "1e3", "2026-11-28T14:00:00Z"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
_KEYS = ("user_agent", "path", "protocol", "duration", "bytes_sent", "upstream_service_time")


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4))
def test_any_json_values_read_alike_in_every_reader(values: dict[str, Any]) -> None:
    """One row, or none (a negative number) in every reader."""
    rows = []
    for parsed in _parsed(json.dumps({**BASE, **values})):
        if parsed.rows.to_pylist()[:1] == [0]:
            rows.append({name: column[0].as_py() for name, column in parsed.columns.items()})
        else:
            rows.append(None)
    assert all(row == rows[0] for row in rows), rows


#: JSON numbers without a sign, of up to 40 digits and an exponent (``12.5e-3``).
_NUMBER_TEXTS = st.builds(
    "".join,
    st.tuples(
        st.integers(0, 10**20).map(str),
        st.just("") | st.text("0123456789", min_size=1, max_size=20).map(lambda t: "." + t),
        st.just("") | st.integers(-25, 25).map(lambda e: f"e{e}"),
    ),
)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["duration", "bytes_sent"]), _NUMBER_TEXTS, st.booleans())
def test_any_number_is_stored_as_its_digits_round_in_every_reader(
    key: str, number: str, quoted: bool
) -> None:
    """Whatever its spelling, a number is stored as its exact value rounded half up, or NULL
    past its column's digits (9, 18), the line counted as rounded or too large."""
    column, digits = {"duration": ("duration_ms", 9), "bytes_sent": ("bytes_sent", 18)}[key]
    exact = Decimal(number)
    near = int(exact.to_integral_value(rounding=ROUND_HALF_UP))
    fits = near < 10**digits
    expected = (near if fits else None, fits and near != exact, not fits)
    line = _with_raw(key, f'"{number}"' if quoted else number)
    assert [(row[column], rounded, large) for row, rounded, large in _line_rows(line)] == [
        expected
    ] * READS


#: JSON numbers in every spelling JSON has: a sign, ``e`` or ``E`` with or without its own sign,
#: exponents past a double's range (``1e400``, ``1e-400``), ``-0``, ints past int64.
_SPELLED_NUMBERS = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["", "-"]),
        st.integers(0, 10**25).map(str),
        st.just("") | st.text("0123456789", min_size=1, max_size=20).map(lambda t: "." + t),
        st.just("")
        | st.builds(
            "{}{}{}".format,
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 30) | st.sampled_from([308, 309, 323, 324, 330, 400]),
        ),
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["duration", "bytes_sent", "response_code"]), _SPELLED_NUMBERS, st.booleans()
)
@example("duration", "-0.0", False)  # 0, as 0.0 and -0 are
@example("duration", "-1e-400", False)  # negative: no row, though its double is -0.0
@example("duration", "-0", True)
@example("duration", "1e-400", False)  # 0, uncounted: a double's 0.0
@example("response_code", "1E-400", True)  # status 0, where 1E-7 is no access line
@example("bytes_sent", "2e308", False)  # NULL uncounted in bulk, counted line by line
def test_any_spelling_of_a_number_is_one_row_in_every_reader(
    key: str, number: str, quoted: bool
) -> None:
    """The row of a number is its value's, whatever JSON's spelling, quoted or not: a negative
    one no access line (unparsed, as in the text formats), a zero (``-0``, ``0e-400``) 0, a
    fraction below a double's least (``1e-400``) rounded as any other, and a ``response_code``
    with a fraction no access line."""
    column, digits = {
        "duration": ("duration_ms", 9),
        "bytes_sent": ("bytes_sent", 18),
        "response_code": ("response_code", 9),
    }[key]
    exact = Decimal(number)
    near = int(exact.to_integral_value(rounding=ROUND_HALF_UP))
    if exact < 0:
        expected = []  # no access line: unparsed, as in the text formats
    else:
        fits = near < 10**digits
        expected = [(near if fits else None, fits and near != exact, not fits)]
    if key == "response_code" and expected:
        expected = [] if expected[0][0] is None or expected[0][1] else [(near, False, False)]
    line = _with_raw(key, f'"{number}"' if quoted else number)
    for parsed in _parsed(line):
        found = [
            (parsed.columns[column][0].as_py(), 0 in parsed.rounded.to_pylist(),
             0 in parsed.too_large.to_pylist())
        ] if parsed.rows.to_pylist()[:1] == [0] else []  # fmt: skip
        assert found == expected, line


@pytest.mark.integration
def test_through_the_aggregator_values_are_kept_and_rounding_is_counted(tmp_path: Path) -> None:
    """A real ``logq-aggregator``: a JSON access line's object user agent and fractional
    duration reach the Parquet row as its JSON text and rounded, and the rounding is counted in
    ``logq_aggregator_envoy_numbers_rounded_total`` for its service; a ``bytes_sent`` past int64
    is NULL in its row, counted in ``logq_aggregator_envoy_numbers_too_large_total``."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    lines = [
        json.dumps({**BASE, "start_time": now, "duration": 1.5, "user_agent": {"app": "x"}}),
        json.dumps({**BASE, "start_time": now, "duration": "7", "path": ["/a", "/b"]}),
        json.dumps({**BASE, "start_time": now, "duration": 9, "bytes_sent": 2**64}),
    ]
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    try:
        with agg.connect() as sock:
            events = [(time.time_ns(), record(line, format="envoy")) for line in lines]
            sock.sendall(wire.encode_packed_forward("logq.recipe", events, "c1"))
            assert read_acks(sock, 1) == ["c1"]
        wait_rows(agg.warehouse, "envoy_access", 3, agg)
        base = metrics_base(agg.log_text())
        for series in (
            'logq_aggregator_envoy_numbers_rounded_total{service="recipe"} 1.0',
            'logq_aggregator_envoy_numbers_too_large_total{service="recipe"} 1.0',
        ):
            wait_until(lambda: series in metrics_text(base), 15, series, proc=agg.proc)  # noqa: B023
    finally:
        assert agg.stop() == 0
    rows = read_table(agg.warehouse, "envoy_access").sort_by("duration_ms").to_pylist()
    assert [(r["duration_ms"], r["user_agent"], r["path"], r["bytes_sent"]) for r in rows] == [
        (2, '{"app":"x"}', None, None),
        (7, None, '["/a","/b"]', None),
        (9, None, None, None),
    ]
