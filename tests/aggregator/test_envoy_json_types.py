"""Envoy JSON access-log values of another JSON type than their column's: converted the same way
by every reader of :mod:`aggregator.envoy_json` (bulk, bulk with numbers unquoted, line by line),
never dropped for their type, and a number rounded only where it is counted."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
#: number keys typed differently: the re-read with numbers unquoted), then a broken line (the
#: per-line read). Alone, a line goes through the first bulk read.
NEIGHBOURS = (
    [],
    [json.dumps({**BASE, "duration": "7"}), json.dumps({**BASE, "duration": 7})],
    ['{"start_time": "broken'],
)


def _rows(values: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The row of ``{**BASE, **values}`` and whether it was counted as rounded, per reader."""
    line = json.dumps({**BASE, **values})
    out = []
    for neighbours in NEIGHBOURS:
        parsed = parse_lines(pa.array([line, *neighbours]))
        assert parsed.rows.to_pylist()[:1] == [0], (line, neighbours)
        row = {name: column[0].as_py() for name, column in parsed.columns.items()}
        out.append((row, 0 in parsed.rounded.to_pylist()))
    return out


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
    (-0.4, None, False),
    (-1, None, False),
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
    _one_row(values)


@pytest.mark.integration
def test_through_the_aggregator_values_are_kept_and_rounding_is_counted(tmp_path: Path) -> None:
    """A real ``logq-aggregator``: a JSON access line's object user agent and fractional
    duration reach the Parquet row as its JSON text and rounded, and the rounding is counted in
    ``logq_aggregator_envoy_numbers_rounded_total`` for its service."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    lines = [
        json.dumps({**BASE, "start_time": now, "duration": 1.5, "user_agent": {"app": "x"}}),
        json.dumps({**BASE, "start_time": now, "duration": "7", "path": ["/a", "/b"]}),
    ]
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    try:
        with agg.connect() as sock:
            events = [(time.time_ns(), record(line, format="envoy")) for line in lines]
            sock.sendall(wire.encode_packed_forward("logq.recipe", events, "c1"))
            assert read_acks(sock, 1) == ["c1"]
        wait_rows(agg.warehouse, "envoy_access", 2, agg)
        series = 'logq_aggregator_envoy_numbers_rounded_total{service="recipe"} 1.0'
        base = metrics_base(agg.log_text())
        wait_until(lambda: series in metrics_text(base), 15, "the rounded count", proc=agg.proc)
    finally:
        assert agg.stop() == 0
    rows = read_table(agg.warehouse, "envoy_access").sort_by("duration_ms").to_pylist()
    assert [(r["duration_ms"], r["user_agent"], r["path"]) for r in rows] == [
        (2, '{"app":"x"}', None),
        (7, None, '["/a","/b"]'),
    ]
