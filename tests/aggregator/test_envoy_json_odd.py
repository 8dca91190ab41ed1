"""One odd Envoy JSON line in a batch (a number past int64, a ``"200.0"`` beside typed numbers, a
broken line...) is read line by line alone, the rest of its batch in bulk: every row as the
line-by-line reader gives it, in the batch's order (:mod:`aggregator.envoy_json_odd`)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import envoy_json
from aggregator.envoy import ParsedAccess, parse_lines

BASE = {
    "start_time": "2026-11-28T14:00:00.000Z",
    "response_code": 200,
    "duration": 5,
    "bytes_sent": 10,
    "path": "/a",
    "upstream_cluster": "outbound|80||svc",
}
#: json_format's spelling of a line: every value a string.
STRINGS = {key: str(value) for key, value in BASE.items()}
LONG_RAW = '{"start_time": "2026-11-28T14:00:00.000Z", "response_code": 200, "duration": '

#: Name -> a line that made the bulk reader refuse a batch of typed lines (:data:`BASE`).
ODD_LINES = {
    "bytes_sent past int64": json.dumps({**BASE, "bytes_sent": 2**64}),
    "a quoted fraction": json.dumps({**BASE, "response_code": "200.0"}),
    "a broken line": '{"start_time": "2026-11-28T14:00:00.000Z", "response_code": 2',
    "an unread key typed otherwise": json.dumps({**BASE, "upstream_cluster": 5}),
    "an object for a string": json.dumps({**BASE, "path": {"a": 1}}),
    "a number past a double": LONG_RAW + "1e400}",
    "a newline in the line": json.dumps(BASE) + "\n" + json.dumps(BASE),
    "a time for a string": json.dumps({**BASE, "request_id": "2026-11-28T14:00:00Z"}),
}


def _typed(count: int) -> list[str]:
    return [json.dumps({**BASE, "duration": i, "path": f"/p{i}"}) for i in range(count)]


def _every_way(lines: list[str]) -> tuple[tuple[Any, ...], list[int]]:
    """The rows of ``lines`` and the sizes of the batches read line by line."""
    calls: list[int] = []
    slow = envoy_json._read_slow

    def counted(candidates: pa.Array) -> dict[str, pa.Array]:
        calls.append(len(candidates))
        return slow(candidates)

    with mock.patch.object(envoy_json, "_read_slow", counted):
        return _snapshot(parse_lines(pa.array(lines))), calls


def _line_by_line(lines: list[str]) -> tuple[Any, ...]:
    """The rows of ``lines`` with every JSON line read by ``json.loads``: the reference."""
    with mock.patch.object(envoy_json, "_read_bulk", side_effect=ValueError("line by line")):
        return _snapshot(parse_lines(pa.array(lines)))


def _snapshot(parsed: ParsedAccess) -> tuple[Any, ...]:
    columns = {name: values.to_pylist() for name, values in parsed.columns.items()}
    return (
        parsed.rows.to_pylist(),
        columns,
        parsed.unparsed.to_pylist(),
        parsed.rounded.to_pylist(),
        parsed.too_large.to_pylist(),
    )


@pytest.mark.parametrize("name", sorted(ODD_LINES))
def test_one_odd_line_is_read_line_by_line_alone(name: str) -> None:
    """The whole batch of 41 lines was read by ``json.loads`` for the one line (~10x the
    cost); now that line alone, the rows the same, in order."""
    lines = _typed(40)
    lines.insert(17, ODD_LINES[name])
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [1]
    assert rows == _line_by_line(lines)
    paths = dict(zip(rows[0], rows[1]["path"], strict=True))
    assert [paths[row] for row in range(41) if row != 17] == [f"/p{i}" for i in range(40)]


def test_a_quoted_fraction_beside_json_format_and_typed_lines() -> None:
    """Strings beside typed numbers are read in bulk with the numbers unquoted; one
    ``"200.0"`` (which no unquoting makes a number) among them is read alone."""
    lines = [json.dumps(STRINGS), *_typed(20), json.dumps(STRINGS)]
    lines.insert(5, ODD_LINES["a quoted fraction"])
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [1]
    assert rows == _line_by_line(lines)
    assert rows[1]["response_code"] == [200] * 23


def test_a_long_number_beside_a_fraction_is_read_alone() -> None:
    """A fraction types ``bytes_sent`` double in the bulk reader; a number of 16 digits beside
    it may not be its double (``9007199254740993.0``): that line is read by its digits alone."""
    sent = LONG_RAW + '7, "bytes_sent": '
    lines = [*_typed(10), sent + "1.5}", sent + "9007199254740993.0}"]
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [1]
    assert rows == _line_by_line(lines)
    assert rows[1]["bytes_sent"][-2:] == [2, 9007199254740993]


def test_odd_lines_of_several_kinds_in_one_batch() -> None:
    """A broken line, a newline, and three keys typed otherwise: four bulk reads, the five odd
    lines alone line by line."""
    kinds = ["a quoted fraction", "an object for a string", "a broken line"]
    kinds += ["a newline in the line", "an unread key typed otherwise"]
    lines = _typed(30)
    for offset, kind in enumerate(kinds):
        lines.insert(3 * offset + 1, ODD_LINES[kind])
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [5]
    assert rows == _line_by_line(lines)


def test_every_kind_of_odd_line_in_one_batch() -> None:
    """Four keys typed otherwise (``response_code``, ``upstream_cluster``, ``path``) or past a
    double: a refusal per bulk read, as many as :data:`~aggregator.envoy_json._ROUNDS`; line
    by line, the same rows."""
    lines = _typed(30)
    for offset, odd in enumerate(ODD_LINES.values()):
        lines.insert(3 * offset + 1, odd)
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [len(lines)]
    assert rows == _line_by_line(lines)


def test_a_batch_odd_in_more_ways_than_the_rounds_is_read_line_by_line() -> None:
    """Six keys each typed otherwise by one line: a refusal per bulk read, more than
    :data:`~aggregator.envoy_json._ROUNDS`; the batch is read line by line, as before."""
    extra = {f"k{key}": "text" for key in range(6)}
    lines = [json.dumps({**BASE, **extra}) for _ in range(20)]
    for key in range(6):
        lines[3 * key] = json.dumps({**BASE, **extra, f"k{key}": key})
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [len(lines)]
    assert rows == _line_by_line(lines)


def test_a_batch_of_odd_lines_alone_is_read_line_by_line() -> None:
    lines = [ODD_LINES["a broken line"], ODD_LINES["a broken line"]]
    rows, slow_reads = _every_way(lines)
    assert slow_reads == [2]
    assert rows == _line_by_line(lines)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["-", "", "12", "1.5", "200.0", "2026-11-28T14:00:00Z"]),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=2),
    st.dictionaries(st.text(max_size=2), _SCALARS, max_size=2),
)
_KEYS = ("path", "duration", "bytes_sent", "response_code", "upstream_cluster", "user_agent")
#: A line: typed, json_format's, or with random values (most lines of a batch are typed).
_LINES = st.one_of(
    st.integers(0, 10**6).map(lambda i: json.dumps({**BASE, "duration": i})),
    st.integers(0, 10**6).map(lambda i: json.dumps({**STRINGS, "duration": str(i)})),
    st.sampled_from(sorted(ODD_LINES.values())),
    st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=3).map(
        lambda values: json.dumps({**BASE, **values})
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_LINES, min_size=1, max_size=30))
def test_any_mixed_batch_reads_as_line_by_line(lines: list[str]) -> None:
    """Whatever a batch mixes, split or not, each row is the line-by-line reader's."""
    rows, _ = _every_way(lines)
    assert rows == _line_by_line(lines)
