"""The split parser's checks (aggregator/envoy_checks.py) stand in for the strict regex: every
line they vouch for is a line the regex matches, and the usual lines need no regex at all."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import envoy, envoy_checks, envoy_split
from aggregator.envoy import _TOKEN, _literal, format_matches, parse_lines
from aggregator.envoy_checks import KINDS, bytes_are, kind_of, no_other_blanks, value_ok
from aggregator.string_bytes import offsets_and_bytes
from tests.aggregator.helpers import OTHER_PLANES, envoy_line
from tests.aggregator.test_envoy_split import (
    FORMATS,
    ISTIO_LINE,
    TIMED,
    custom_line,
    default_line,
    mutated_line,
    quoted_line,
)

#: Lines that break parsers, each a value at a time: ``-`` fields, an IPv6 upstream, quotes in
#: the user agent, blanks the regex's ``\s`` does or does not hold, other time spellings...
TRICKY = [
    envoy_line(),
    envoy_line(xff="-", ust="-", upstream="-", authority="-", flags="-"),
    envoy_line(upstream="[2001:db8::7]:8080", xff="2001:db8::1, 10.0.0.1"),
    envoy_line(ua='Mozilla/5.0 "Chrome" é'),
    envoy_line(ua="", rid="", xff=""),
    envoy_line(code=0, flags="DC", rx=0, tx=0, duration=0),
    envoy_line(method="G\vET"),  # \v: no blank to RE2's \s, so the regex matches
    envoy_line(path="/a\vb", upstream="10.0.0.1:80\v"),
    envoy_line(method="G\tET"),
    envoy_line(authority="a b"),
    envoy_line(ust="-5"),
    envoy_line(ust="--"),
    envoy_line(ust="1234567890"),  # ten digits: over \d{1,9}
    envoy_line(ust="1a", tx="5x"),  # type: ignore[arg-type]
    envoy_line(flags="UF,URX"),
    envoy_line(flags="U1"),
    envoy_line(when="2026-11-28T14:00:00Z"),
    envoy_line(when="2026-11-28T14:00:00.5+00:00"),
    envoy_line(when="2026-11-28 14:00:00.123Z"),
    envoy_line(when="2026-11-28T14:00:00.12xZ"),
    envoy_line() + " \t",
    envoy_line() + "\v",
    envoy_line().replace('" "', '"  "', 1),
    envoy_line().replace('" "', '"x"', 1),
    envoy_line().replace("[", "(", 1),
    "x" + envoy_line(),
    "",
    ISTIO_LINE,
    ISTIO_LINE.replace(" default", " de\tfault"),  # a tab in a value logq does not store
    ISTIO_LINE.replace(" default", " de\vfault"),
    ISTIO_LINE.replace("outbound|", "out\rbound|"),
    *OTHER_PLANES.values(),
]


def _vouched_lines_match(lines: list[str]) -> None:
    """For every format with a plan: each line its checks vouch for matches its strict regex."""
    text = pa.array(lines, pa.string())
    for fmt in (*FORMATS, TIMED):
        plan = envoy_split.split_plan(fmt)
        if plan is None:
            continue
        fit, _, sure = envoy_split._values(envoy_split._rstripped(text), plan)
        vouched = [i for i, s in zip(fit.nonzero()[0], sure, strict=True) if s]
        matched = format_matches(text, fmt.strict_pattern).to_pylist()
        assert all(matched[i] for i in vouched), (fmt.source, [lines[i] for i in vouched])


def test_tricky_lines_are_vouched_for_only_when_the_regex_matches() -> None:
    _vouched_lines_match(TRICKY)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(mutated_line(), quoted_line(), default_line(), custom_line()),
        min_size=1,
        max_size=12,
    )
)
def test_checks_vouch_only_for_lines_the_regex_matches(lines: list[str]) -> None:
    _vouched_lines_match(lines)


@pytest.mark.parametrize("lines", [TRICKY, TRICKY[::-1], [None, *TRICKY[:5], None]])
def test_tricky_lines_parse_as_the_regexes_parse_them(lines: list[str | None]) -> None:
    """Line for line and value for value, what the regexes alone give (split plans off)."""
    fast = parse_lines(pa.array(lines, pa.string()), FORMATS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envoy_split, "split_plan", lambda fmt: None)
        regex = parse_lines(pa.array(lines, pa.string()), FORMATS)
    assert fast.rows.to_pylist() == regex.rows.to_pylist()
    assert fast.unparsed.to_pylist() == regex.unparsed.to_pylist()
    for name, values in regex.columns.items():
        assert fast.columns[name].to_pylist() == values.to_pylist(), name


def test_usual_lines_need_no_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the checks: a batch of the usual lines of Envoy's default and Istio's
    formats is parsed without matching any line against a regex."""
    lines = [envoy_line(rid=f"r-{i}", ua=f"ua {i}") for i in range(50)] + [ISTIO_LINE] * 3

    def refuse(*args: object) -> None:
        raise AssertionError("a regex ran")

    monkeypatch.setattr(envoy_split, "format_matches", refuse)
    monkeypatch.setattr(envoy, "format_matches", refuse)
    parsed = parse_lines(pa.array(lines), FORMATS[:2])
    assert parsed.rows.to_pylist() == list(range(len(lines)))
    assert parsed.columns["request_id"].to_pylist()[:2] == ["r-0", "r-1"]


def test_an_unusual_line_is_matched_by_the_regex_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line the checks cannot vouch for (``\\v`` in the method) is matched by the regex, and
    only that line: it is parsed as the regex reads it."""
    lines = [envoy_line(), envoy_line(method="G\vET"), envoy_line(rid="last")]
    seen: list[list[str]] = []
    matches = envoy_split.format_matches

    def counted(values: pa.Array, pattern: str) -> pa.Array:
        seen.append(values.to_pylist())
        return matches(values, pattern)

    monkeypatch.setattr(envoy_split, "format_matches", counted)
    parsed = parse_lines(pa.array(lines), FORMATS[:1], json_logs=False)
    assert seen == [[lines[1]]]
    assert parsed.rows.to_pylist() == [0, 1, 2]
    assert parsed.columns["method"].to_pylist() == ["GET", "G\vET", "GET"]


def test_the_operator_pieces_rebuild_the_strict_pattern() -> None:
    """compile_format's operator pieces are the strict pattern's, in order: with the format's
    literals between them they give the pattern back (so the checks see what the regex holds
    each value to)."""
    for fmt in (*FORMATS, TIMED):
        literals = _TOKEN.split(fmt.source)[::3]  # split keeps the operator's two groups
        rebuilt = "".join(
            _literal(text) + piece
            for text, piece in zip(literals, [*fmt.operator_patterns, ""], strict=True)
        )
        assert "^" + rebuilt + r"\s*$" == fmt.strict_pattern


def test_every_value_pattern_of_the_built_in_formats_has_checks() -> None:
    for fmt in FORMATS:
        plan = envoy_split.split_plan(fmt)
        assert plan is not None and plan.pieces is not None, fmt.source
    assert kind_of(TIMED.operator_patterns[0]) is None  # a custom time: the regex's


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"(?:\d{1,9}|-)", ["-", "0", "123456789"], ["", "--", "-1", "1-", "1234567890", "1a"]),
        (r"(?:\d{1,18}|-)", ["-", "1" * 18], ["1" * 19, "+1", " 1"]),
        (r"(?:\d{1,9})", ["7"], ["-", ""]),
        (r"(?:[A-Za-z,_-]+)", ["UF,URX", "-", "a_b"], ["", "U1", "é", "U@", "U["]),
        (r"(?:[^\s\"]+)", ["GET", "é"], ["", "G T", "G\tT", 'G"', "G\vT"]),
        (r"(?:[^\"\s]*)", ["", "[::1]:80"], ["a\nb", "a\rb", "a\fb"]),
        (r"(?:\S*)", ["", "a\x1cb", "a\u3000b"], ["a b"]),
        (
            r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?:\d{1,9}))?(?:Z|[+-]00:?00)",
            ["2026-11-28T14:00:00.123Z", "0000-00-00T99:99:99.999Z"],  # the regex's digits
            [
                "2026-11-28T14:00:00Z",  # other spellings: left to the regex
                "2026-11-28T14:00:00.123+00:00",
                "2026-11-28 14:00:00.123Z",
                "/026-11-28T14:00:00.123Z",  # the bytes either side of the digits
                "2026-11-28T14:00:00.12:Z",
                "2026-11-28T14:00:00.123z",
            ],
        ),
    ],
)
def test_value_checks_refuse_what_their_pattern_refuses(
    pattern: str, good: list[str], bad: list[str]
) -> None:
    kind = KINDS[pattern]
    assert value_ok(pa.array(good + bad), kind).tolist() == [True] * len(good) + [False] * len(bad)


@pytest.mark.parametrize("offset", [0, 1])
def test_dashes_become_nulls_without_a_copy_of_the_values(offset: int) -> None:
    values = pa.array(["x", "12", "-", None, "-", "7", "--"]).slice(offset)
    nulled = envoy._dash_to_null(values)
    nulled.validate(full=True)
    assert nulled.to_pylist() == [v if v != "-" else None for v in values.to_pylist()]
    assert pc.cast(envoy._dash_to_null(pa.array(["5", "-"])), pa.int32()).to_pylist() == [5, None]


def test_chunked_dashes_become_nulls_chunk_by_chunk() -> None:
    """A ChunkedArray (``pc.if_else`` took one) gives a ChunkedArray, not an AttributeError
    that no attempt catches: the whole flush would fail."""
    values = pa.chunked_array([["-", "a"], [], ["b", "-", None, "--"]])
    nulled = envoy._dash_to_null(values)
    assert isinstance(nulled, pa.ChunkedArray) and nulled.num_chunks == 3
    nulled.validate(full=True)
    assert nulled.to_pylist() == [None, "a", "b", None, None, "--"]
    numbers = envoy._dash_to_null(pa.chunked_array([["5", "-"]]))
    assert pc.cast(numbers, pa.int32()).to_pylist() == [5, None]


def _verdicts(lines: list[str]) -> list[tuple[list[bool], list[bool]]]:
    """Per format with a plan: which lines fit it, and which of those its checks vouch for."""
    text = envoy_split._rstripped(pa.array(lines, pa.string()))
    verdicts = []
    for fmt in (*FORMATS, TIMED):
        plan = envoy_split.split_plan(fmt)
        if plan is not None:
            fit, _, sure = envoy_split._values(text, plan)
            verdicts.append((fit.tolist(), sure.tolist()))
    return verdicts


@pytest.mark.parametrize("scan", [1, 7, 100])
def test_checks_read_a_few_bytes_at_a_time_as_they_read_the_whole(
    monkeypatch: pytest.MonkeyPatch, scan: int
) -> None:
    """The checks scan a column a few bytes (and the times and literals a few rows) at a time:
    a refused byte, a ``-`` or a literal in any scan, or across two, refuses the same lines."""
    lines = [line for line in TRICKY * 3 if line]
    whole = _verdicts(lines)
    monkeypatch.setattr(envoy_checks, "_SCAN_BYTES", scan)
    assert _verdicts(lines) == whole
    _vouched_lines_match(lines)


def _peak(check: Callable[[], object]) -> int:
    """Peak bytes Python (numpy included) allocated while ``check`` ran."""
    tracemalloc.start()
    try:
        check()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checks_of_a_big_batch_hold_a_few_scans_of_temporaries() -> None:
    """A check of a whole column at once made a ``- 9`` and masks of all its bytes: on 300k
    Istio lines numpy's peak rose from 96 to 157 MiB. Scanned a few MiB at a time, the peak is
    the per-row results and a few scans, whatever the batch's bytes."""
    paths = pa.array(
        [f"/api/v1/items/{i:06d}/" + "x" * 200 + "\t" * (i == 7) for i in range(80_000)]
    )
    size = offsets_and_bytes(paths)[1].nbytes  # ~17 MiB
    kind = KINDS[r"(?:[^\s\"]+)"]
    assert value_ok(paths, kind).sum() == len(paths) - 1
    assert _peak(lambda: value_ok(paths, kind)) < size // 4
    offsets, data = offsets_and_bytes(paths)
    assert np.flatnonzero(~no_other_blanks(offsets, data)).tolist() == [7]
    assert _peak(lambda: no_other_blanks(offsets, data)) < size // 4

    times = pa.array(["2026-11-28T14:00:00.123Z"] * 700_000)  # ~16 MiB, 24 bytes a row
    size = offsets_and_bytes(times)[1].nbytes
    usual_time = kind_of(FORMATS[0].operator_patterns[0])
    assert usual_time is not None and usual_time.usual_time
    assert _peak(lambda: value_ok(times, usual_time)) < size // 2  # per row: lengths, results
    offsets, data = offsets_and_bytes(times)
    positions = [offsets[:-1] + i for i in range(6)]  # as many int32 as the times' bytes
    assert bytes_are(data, positions, b"2026-1", True).all()
    assert _peak(lambda: bytes_are(data, positions, b"2026-1", True)) < size // 4
