"""The vectorised Envoy access-log parser: default/Istio/custom formats and the awkward fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.envoy import (
    BUILTIN_FORMATS,
    DEFAULT_FORMAT,
    FormatError,
    compile_format,
    parse_lines,
)
from aggregator.envoy_json import _looks_like_json, _ndjson
from tests.aggregator.helpers import envoy_line


def parse_one(line: str) -> dict:
    parsed = parse_lines(pa.array([line]))
    assert parsed.rows.to_pylist() == [0], f"did not parse: {line}"
    return {k: v[0].as_py() for k, v in parsed.columns.items()}


def test_default_format_typed_values() -> None:
    row = parse_one(envoy_line(code=503, flags="UF,URX", rx=17, tx=91, duration=3002, ust="3001"))
    assert row["timestamp"] == datetime(2026, 11, 28, 14, 0, 0, 123000, tzinfo=UTC)
    assert row["method"] == "GET"
    assert row["path"] == "/api/items?id=5&sort=asc"
    assert row["protocol"] == "HTTP/1.1"
    assert row["response_code"] == 503
    assert row["response_flags"] == "UF,URX"
    assert (row["bytes_received"], row["bytes_sent"]) == (17, 91)
    assert row["duration_ms"] == 3002
    assert row["upstream_service_time_ms"] == 3001
    assert row["authority"] == "shop.internal"
    assert row["upstream_host"] == "10.0.3.7:8080"


def test_dash_fields_become_null_but_flags_keep_dash() -> None:
    row = parse_one(envoy_line(code=0, flags="-", ust="-", xff="-", upstream="-"))
    assert row["upstream_service_time_ms"] is None
    assert row["x_forwarded_for"] is None
    assert row["upstream_host"] is None
    assert row["response_flags"] == "-"
    assert row["response_code"] == 0


def test_ipv6_upstream_and_forwarded_for_list() -> None:
    row = parse_one(envoy_line(upstream="[2001:db8::7]:8443", xff="203.0.113.9, 2001:db8::1"))
    assert row["upstream_host"] == "[2001:db8::7]:8443"
    assert row["x_forwarded_for"] == "203.0.113.9, 2001:db8::1"


def test_quotes_inside_user_agent() -> None:
    ua = 'Mozilla/5.0 (X11) "quoted" thing" x'
    row = parse_one(envoy_line(ua=ua))
    assert row["user_agent"] == ua
    assert row["request_id"] == "6f1c1b9a-1d2e-4f00-9c6a-0d1e2f3a4b5c"


def test_query_strings_with_odd_characters() -> None:
    path = "/search?q=a%20b&tags[]=x&redirect=https://e.example/?a=1#frag"
    assert parse_one(envoy_line(path=path))["path"] == path


def test_nanosecond_and_second_precision_start_time() -> None:
    row = parse_one(envoy_line(when="2026-11-28T14:00:00.123456789Z"))
    assert row["timestamp"] == datetime(2026, 11, 28, 14, 0, 0, 123000, tzinfo=UTC)
    row = parse_one(envoy_line(when="2026-11-28T14:00:05Z"))
    assert row["timestamp"] == datetime(2026, 11, 28, 14, 0, 5, tzinfo=UTC)


def test_non_access_lines_are_unparsed_not_dropped() -> None:
    lines = pa.array(
        [
            "[2026-11-28 14:00:00.000][1][info][main] starting main dispatch loop",
            envoy_line(),
            "",
            None,
            envoy_line(when="2026-13-40T14:00:00.000Z"),  # not a date
            envoy_line(code=200)[:-20],  # truncated line
            envoy_line(tx=10**20),  # does not fit bigint
        ]
    )
    parsed = parse_lines(lines)
    assert parsed.rows.to_pylist() == [1]
    assert parsed.unparsed.to_pylist() == [0, 2, 3, 4, 5, 6]


def test_istio_format_parses() -> None:
    line = (
        '[2026-11-28T14:00:00.000Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 '
        '4 3 "-" "curl/8.1" "rid-1" "httpbin:8000" "10.244.0.7:80" '
        "outbound|8000||httpbin.default.svc.cluster.local 10.244.0.5:46374 10.96.19.20:8000 "
        "10.244.0.5:52350 - default"
    )
    row = parse_one(line)
    assert (row["response_code"], row["bytes_sent"], row["upstream_host"]) == (
        418,
        135,
        "10.244.0.7:80",
    )


def test_custom_format_compiles_to_parser() -> None:
    fmt = compile_format(
        "%START_TIME% %REQ(:AUTHORITY)% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
        '%DURATION%ms flags=%RESPONSE_FLAGS% ua="%REQ(USER-AGENT)%" up=%UPSTREAM_HOST% 100%%'
    )
    line = (
        '2026-11-28T14:00:00.250Z api.internal POST /v1/x 201 37ms flags=- ua="Go-http-client/1.1" '
        "up=10.1.1.1:9000 100%"
    )
    parsed = parse_lines(pa.array([line, envoy_line()]), (*BUILTIN_FORMATS, fmt))
    assert parsed.rows.to_pylist() == [0, 1]
    assert parsed.columns["authority"][0].as_py() == "api.internal"
    assert parsed.columns["duration_ms"][0].as_py() == 37
    assert parsed.columns["bytes_sent"][0].as_py() is None  # not in that format
    assert parsed.columns["bytes_sent"][1].as_py() == 512


def test_format_without_required_fields_is_refused() -> None:
    with pytest.raises(FormatError, match="START_TIME"):
        compile_format('"%REQ(:METHOD)% %REQ(:PATH)%" %RESPONSE_CODE%')
    with pytest.raises(FormatError, match="directive %Q is not supported"):
        compile_format("%START_TIME(%Q)% %RESPONSE_CODE%")
    with pytest.raises(FormatError, match="needs a year"):
        compile_format("%START_TIME(%H:%M:%S)% %RESPONSE_CODE%")
    # These compiled, then failed every flush of a segment holding a matching line (KeyError),
    # which ended in quarantine with every other line of the segment.
    with pytest.raises(FormatError, match="over the limits"):
        compile_format("[%START_TIME%] %RESPONSE_CODE% " + '"%REQ(X)%" ' * 200)
    compile_format("[%START_TIME%] %RESPONSE_CODE% " + '"%REQ(X)%" ' * 100)  # within them
    for spec in ("%s%s", "%3f.%s", "%s.%3f %s"):
        with pytest.raises(FormatError, match="%s must appear once, before any fraction"):
            compile_format(f"[%START_TIME({spec})%] %RESPONSE_CODE%")


def test_a_parser_that_fails_leaves_its_lines_unparsed_not_the_flush_failed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: a bug in one format's conversion (here: forced) keeps the batch going;
    the default format still parses its lines and the rest are unparsed (container_logs)."""
    from aggregator import envoy_time

    custom = compile_format("[%START_TIME(%s.%3f)%] %RESPONSE_CODE%")

    def broken(self: object, text: pa.Array) -> pa.Array:
        raise KeyError("a")

    monkeypatch.setattr(envoy_time.TimeFormat, "to_timestamp", broken)
    lines = ["[1795874585.250] 503", envoy_line(code=502), "plain text"]
    parsed = parse_lines(pa.array(lines), (*BUILTIN_FORMATS, custom), json_logs=False)
    assert parsed.rows.to_pylist() == [1]
    assert parsed.columns["response_code"].to_pylist() == [502]
    assert parsed.unparsed.to_pylist() == [0, 2]
    assert "an Envoy access-log parser failed on a batch of 2 lines (KeyError" in caplog.text


@pytest.mark.parametrize(
    ("time_spec", "printed", "expected"),
    [
        ("%Y/%m/%dT%H:%M:%S%z", "2026/11/28T14:03:05+0100", "2026-11-28T13:03:05.000"),
        ("%d/%b/%Y:%H:%M:%S %z", "28/Nov/2026:14:03:05 -0000", "2026-11-28T14:03:05.000"),
        ("%Y-%m-%dT%H:%M:%S.%6fZ", "2026-11-28T14:03:05.123456Z", "2026-11-28T14:03:05.123"),
        ("%F %T.%3f", "2026-11-28 14:03:05.007", "2026-11-28T14:03:05.007"),
        ("%s.%3f", "1795874585.250", "2026-11-28T14:03:05.250"),
        ("%s", "1795874585", "2026-11-28T14:03:05.000"),
    ],
)
def test_custom_start_time_formats(time_spec: str, printed: str, expected: str) -> None:
    fmt = compile_format(f'[%START_TIME({time_spec})%] "%REQ(:PATH)%" %RESPONSE_CODE% %DURATION%')
    lines = [f'[{printed}] "/cart?id=1" 503 42', "not an access line", f'[{printed}x] "/" 200 1']
    parsed = parse_lines(pa.array(lines), (fmt,), json_logs=False)
    assert parsed.rows.to_pylist() == [0]
    assert parsed.unparsed.to_pylist() == [1, 2]
    when = parsed.columns["timestamp"][0].as_py()
    assert when.isoformat(timespec="milliseconds") == expected + "+00:00"
    assert parsed.columns["path"].to_pylist() == ["/cart?id=1"]
    assert parsed.columns["response_code"].to_pylist() == [503]


def test_a_second_start_time_printed_with_a_space_matches() -> None:
    """A format may print the start time twice (Envoy's time and the common log format's):
    the second was compiled as one run of non-blanks, so a spec with a space made a format
    that no line matched, every line unparsed. The first gives the row's time."""
    fmt = compile_format(
        "[%START_TIME%] %RESPONSE_CODE% %START_TIME(%d/%b/%Y:%H:%M:%S %z)% %DURATION%"
    )
    line = "[2026-11-28T14:00:00.123Z] 503 28/Nov/2026:15:00:00 +0100 7"
    parsed = parse_lines(pa.array([line, line.replace(" +0100", "+0100")]), (fmt,))
    assert parsed.rows.to_pylist() == [0]
    when = parsed.columns["timestamp"][0].as_py()
    assert when.isoformat(timespec="milliseconds") == "2026-11-28T14:00:00.123+00:00"
    assert parsed.columns["duration_ms"].to_pylist() == [7]
    both = compile_format("%START_TIME(%F %T)% %START_TIME(%b %d %T)% %RESPONSE_CODE%")
    parsed = parse_lines(pa.array(["2026-11-28 14:03:05 Nov 28 14:03:05 200"]), (both,))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["response_code"].to_pylist() == [200]


@pytest.mark.parametrize(
    ("spec", "printed", "expected"),
    [
        ("%Y-%m-%dT%H:%M:%S %%T", "2026-11-28T14:03:05 %T", "2026-11-28T14:03:05"),
        ("%F %%F", "2026-11-28 %F", "2026-11-28T00:00:00"),
        ("%s %%s", "1795874585 %s", "2026-11-28T14:03:05"),
    ],
)
def test_a_doubled_percent_in_a_start_time_is_text(spec: str, printed: str, expected: str) -> None:
    """``%%`` is a percent sign in a time spec as in strftime: ``%%T`` prints ``%T``, not a
    time (it was expanded to ``%%H:%M:%S``, so no line matched), ``%%s`` is no second epoch
    time (the format was refused) and ``%%Y`` no year."""
    fmt = compile_format(f"[%START_TIME({spec})%] %RESPONSE_CODE%")
    parsed = parse_lines(pa.array([f"[{printed}] 503"]), (fmt,), json_logs=False)
    assert parsed.unparsed.to_pylist() == []
    when = parsed.columns["timestamp"][0].as_py()
    assert when.isoformat(timespec="seconds") == expected + "+00:00"
    with pytest.raises(FormatError, match="needs a year"):
        compile_format("[%START_TIME(%%Y %H:%M)%] %RESPONSE_CODE%")


def test_default_format_constant_matches_the_documented_one() -> None:
    assert DEFAULT_FORMAT.startswith('[%START_TIME%] "%REQ(:METHOD)% ')
    assert DEFAULT_FORMAT.endswith('"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"')


def test_large_batch_keeps_order() -> None:
    lines = [envoy_line(duration=i) if i % 3 else f"app line {i}" for i in range(3000)]
    parsed = parse_lines(pa.array(lines))
    rows = parsed.rows.to_pylist()
    assert rows == [i for i in range(3000) if i % 3]
    assert parsed.columns["duration_ms"].to_pylist() == rows
    assert parsed.unparsed.to_pylist() == [i for i in range(3000) if i % 3 == 0]


JSON_STRINGS = (
    '{"start_time":"2026-11-28T14:00:00.250Z","method":"GET","path":"/a?x=1","protocol":"HTTP/2",'
    '"response_code":"503","response_flags":"UF,URX","bytes_received":"0","bytes_sent":"91",'
    '"duration":"30","upstream_service_time":"-","x_forwarded_for":"-","user_agent":"a \\"b\\" c",'
    '"request_id":"r-1","authority":"svc","upstream_host":"-"}'
)
JSON_TYPED = (
    '{"start_time":"2026-11-28T14:00:01.000Z","method":"POST","path":"/b","protocol":"HTTP/1.1",'
    '"response_code":200,"response_flags":"-","bytes_received":12,"bytes_sent":3400,'
    '"duration":7,"upstream_service_time":5,"x_forwarded_for":null,"user_agent":"curl/8",'
    '"request_id":"r-2","authority":"svc","upstream_host":"[2001:db8::2]:80"}'
)


def test_json_access_logs_string_and_typed() -> None:
    for batch in ([JSON_STRINGS], [JSON_TYPED], [JSON_STRINGS, JSON_TYPED]):
        parsed = parse_lines(pa.array(batch))
        assert parsed.unparsed.to_pylist() == []
        rows = {
            r: {k: v[i].as_py() for k, v in parsed.columns.items()}
            for i, r in enumerate(parsed.columns["request_id"].to_pylist())
        }
        if "r-1" in rows:
            one = rows["r-1"]
            assert one["response_code"] == 503 and one["response_flags"] == "UF,URX"
            assert one["upstream_service_time_ms"] is None and one["upstream_host"] is None
            assert one["user_agent"] == 'a "b" c' and one["path"] == "/a?x=1"
            assert one["timestamp"] == datetime(2026, 11, 28, 14, 0, 0, 250000, tzinfo=UTC)
        if "r-2" in rows:
            two = rows["r-2"]
            assert (two["response_code"], two["bytes_sent"], two["duration_ms"]) == (200, 3400, 7)
            assert two["x_forwarded_for"] is None
            assert two["upstream_host"] == "[2001:db8::2]:80"


def test_json_lines_that_are_not_access_logs_stay_unparsed() -> None:
    lines = pa.array(
        [
            '{"level":"info","msg":"envoy started"}',
            "{not json",
            JSON_TYPED,
            envoy_line(),
        ]
    )
    parsed = parse_lines(lines)
    assert parsed.rows.to_pylist() == [2, 3]
    assert parsed.unparsed.to_pylist() == [0, 1]


def test_a_json_line_nested_too_deeply_is_unparsed_not_a_crash() -> None:
    """A line of 40,000 nested arrays (80 KB) overflowed the stack of pyarrow's JSON reader:
    the aggregator died at the flush (SIGSEGV), and at every restart again, replaying it from
    its buffer. Run in a child process, so that the old crash fails this test, not the run.
    Lines at the limit still read; one over it is left to the text formats (unparsed)."""
    import subprocess
    import sys

    child = """
import pyarrow as pa
from aggregator.envoy import parse_lines
from aggregator.envoy_json import MAX_JSON_OPENINGS
from tests.aggregator.test_envoy import JSON_TYPED
nest = lambda n: '[' * n + ']' * n
deep = '{"a":' + nest(40000) + '}'
own = JSON_TYPED.count('{') + JSON_TYPED.count('[')  # a '[' in a string value counts too
near = JSON_TYPED[:-1] + ', "x": ' + nest(MAX_JSON_OPENINGS - own) + '}'
over = JSON_TYPED[:-1] + ', "x": ' + nest(MAX_JSON_OPENINGS - own + 1) + '}'
parsed = parse_lines(pa.array([JSON_TYPED, deep, near, over]))
print(parsed.rows.to_pylist(), parsed.unparsed.to_pylist())
"""
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split("\n")[0] == "[0, 2] [1, 3]"


#: Characters a JSON line may start with: Unicode blanks (what ``utf8_ltrim_whitespace``
#: trims), ASCII controls, other non-ASCII text and printable ASCII around ``{``.
_LEADING = st.sampled_from(
    [
        *(" ", "\t", "\n", "\v", "\f", "\r", "\x1c", "\x1f", "\x7f", "\x85", "\xa0"),
        *("\u2003", "\u3000", "\u200b", "\ufeff", "é", "😀", "{", "[", "x", "}", "~", "!", "\x00"),
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.just(""), st.text(_LEADING, max_size=4).map(lambda t: t + "{}"))
    )
)
def test_json_lines_are_told_as_trimming_would_tell(lines: list[str | None]) -> None:
    """Lines are told JSON by their first byte where it decides, else by trimming them: the
    same answer as trimming every line (sliced batches included)."""
    batch = pa.array(["x", *lines], pa.string())[1:]
    trimmed = pc.starts_with(pc.utf8_ltrim_whitespace(batch), "{")
    assert _looks_like_json(batch).to_pylist() == pc.fill_null(trimmed, False).to_pylist()


_PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='"')
_token = st.text(_PRINTABLE, min_size=1, max_size=30)


@st.composite
def access_line(draw: st.DrawFn) -> tuple[str, dict]:
    ua = draw(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).filter(
            lambda u: '" "' not in u and not u.endswith('"') and not u.startswith('"')
        )
    )
    expected = {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"])),
        "path": "/" + draw(_token),
        "response_code": draw(st.integers(0, 599)),
        "response_flags": draw(st.sampled_from(["-", "UF,URX", "UH", "DC", "UT", "NR"])),
        "bytes_received": draw(st.integers(0, 10**12)),
        "bytes_sent": draw(st.integers(0, 10**12)),
        "duration_ms": draw(st.integers(0, 10**6)),
        "upstream_service_time_ms": draw(st.one_of(st.none(), st.integers(0, 10**6))),
        "x_forwarded_for": draw(st.one_of(st.none(), st.just("10.0.0.1, 2001:db8::1"))),
        "user_agent": ua,
        "request_id": draw(st.uuids()).hex,
        "authority": draw(_token),
        "upstream_host": draw(st.one_of(st.none(), st.just("[2001:db8::9]:443"), _token)),
    }
    millis = draw(st.integers(0, 999))
    line = envoy_line(
        when=f"2026-11-28T14:00:00.{millis:03d}Z",
        method=expected["method"],
        path=expected["path"],
        code=expected["response_code"],
        flags=expected["response_flags"],
        rx=expected["bytes_received"],
        tx=expected["bytes_sent"],
        duration=expected["duration_ms"],
        ust="-"
        if expected["upstream_service_time_ms"] is None
        else str(expected["upstream_service_time_ms"]),
        xff=expected["x_forwarded_for"] or "-",
        ua=ua,
        rid=expected["request_id"],
        authority=expected["authority"],
        upstream=expected["upstream_host"] or "-",
    )
    if expected["upstream_host"] == "-":
        expected["upstream_host"] = None
    expected["timestamp"] = datetime(2026, 11, 28, 14, 0, 0, millis * 1000, tzinfo=UTC)
    return line, expected


@settings(max_examples=60, deadline=None)
@given(st.lists(access_line(), min_size=1, max_size=8))
def test_any_default_format_line_round_trips(batch: list[tuple[str, dict]]) -> None:
    parsed = parse_lines(pa.array([line for line, _ in batch]))
    assert parsed.unparsed.to_pylist() == []
    for i, (_, expected) in enumerate(batch):
        got = {k: parsed.columns[k][i].as_py() for k in expected}
        assert got == expected


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2026-11-28T14:03:05.123Z", "2026-11-28T14:03:05.123"),
        ("2026-11-28T14:03:05Z", "2026-11-28T14:03:05.000"),
        ("2026-11-28T14:03:05.5Z", "2026-11-28T14:03:05.500"),
        ("2026-11-28T14:03:05.123456789Z", "2026-11-28T14:03:05.123"),
        ("2026-11-28T14:03:05+0000", "2026-11-28T14:03:05.000"),
        ("2026-11-28T14:03:05.25+00:00", "2026-11-28T14:03:05.250"),
    ],
)
def test_default_start_time_fractions_alone_and_mixed(printed: str, expected: str) -> None:
    """Envoy's usual ``.mmmZ`` takes a short cut; every other spelling, alone or mixed in one
    batch with the usual one, is read the same as before."""
    usual = envoy_line(when="2026-11-28T14:00:00.001Z")
    for lines in ([envoy_line(when=printed)], [usual, envoy_line(when=printed)]):
        parsed = parse_lines(pa.array(lines))
        assert parsed.rows.to_pylist() == list(range(len(lines)))
        when = parsed.columns["timestamp"][len(lines) - 1].as_py()
        assert when.isoformat(timespec="milliseconds") == expected + "+00:00"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(), max_size=8), st.integers(0, 3), st.booleans())
def test_json_lines_reach_the_reader_byte_for_byte(texts: list[str], cut: int, large: bool) -> None:
    """The reader gets every line's bytes and a newline after each, from any slice of a batch
    (its offsets start past 0), empty lines, non-ASCII and newlines inside a line included."""
    array = pa.array(["x", *texts, "y"], pa.large_string() if large else pa.string())
    lines = array.slice(1 + min(cut, len(texts)), len(texts) - min(cut, len(texts)))
    expected = "".join(f"{text}\n" for text in texts[min(cut, len(texts)) :]).encode()
    assert _ndjson(lines).to_pybytes() == expected


def test_json_lines_of_a_sliced_batch_parse_as_the_whole() -> None:
    batch = pa.array([JSON_TYPED, JSON_STRINGS, JSON_TYPED.replace('"r-2"', '"r-3"')])
    parsed = parse_lines(batch.slice(1))
    assert parsed.columns["request_id"].to_pylist() == ["r-1", "r-3"]
    assert parsed.columns["response_code"].to_pylist() == [503, 200]


#: Numbers of typed JSON a column can hold as int64. (One past them makes pyarrow's reader type
#: the whole column double, exact only to 2^53: see the test after the next.)
_NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 10**9 - 1, 10**9, 2**31, 2**53 + 1, 10**18 - 1, 10**18, 2**63 - 1, -1]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_NUMBERS, _NUMBERS, _NUMBERS), min_size=1, max_size=5))
def test_typed_json_numbers_read_as_their_digits_would(numbers: list[tuple[int, int, int]]) -> None:
    """A number column of typed JSON is range-checked as a number: a value is kept exactly
    when its digits would be as json_format's text (9 digits for an int column, 18 for a bigint
    one; a negative one leaves its line unparsed), so a line's values never depend on which
    spelling its Envoy used."""

    def line(code: object, sent: object, duration: object, i: int) -> str:
        return (
            f'{{"start_time":"2026-11-28T14:00:0{i}.000Z","method":"GET","path":"/",'
            f'"protocol":"HTTP/1.1","response_code":{code},"bytes_sent":{sent},'
            f'"duration":{duration},"request_id":"r-{i}"}}'
        )

    # A line needs its code, and no negative number.
    ok = [(c, s, d) for c, s, d in numbers if 0 <= c < 10**9 and s >= 0 and d >= 0]
    typed = parse_lines(pa.array([line(*n, i) for i, n in enumerate(numbers)]))
    text = parse_lines(pa.array([line(*(f'"{v}"' for v in n), i) for i, n in enumerate(numbers)]))
    for parsed in (typed, text):
        assert parsed.columns["response_code"].to_pylist() == [c for c, _, _ in ok]
        assert parsed.columns["bytes_sent"].to_pylist() == [
            s if s < 10**18 else None for _, s, _ in ok
        ]
        assert parsed.columns["duration_ms"].to_pylist() == [
            d if d < 10**9 else None for _, _, d in ok
        ]


def test_one_number_column_under_two_keys_of_two_types() -> None:
    """``duration`` read as int64 and ``duration_ms`` as double (pyarrow's JSON reader types a
    number past 2^63 so) in one batch: the column still holds each line's value, the one past
    2^63 as NULL (no 18 digits), as json_format's text of it would be."""
    lines = [
        '{"start_time":"2026-11-28T14:00:00.000Z","response_code":200,"duration":7}',
        '{"start_time":"2026-11-28T14:00:01.000Z","response_code":200,"duration_ms":9}',
        f'{{"start_time":"2026-11-28T14:00:02.000Z","response_code":200,"duration_ms":{2**63}}}',
    ]
    parsed = parse_lines(pa.array(lines))
    assert parsed.rows.to_pylist() == [0, 1, 2]
    assert parsed.columns["duration_ms"].to_pylist() == [7, 9, None]


def test_json_start_times_convert_alike_in_every_spelling() -> None:
    """A batch of Envoy's usual start times (one cast) gives the times the general conversion
    gives when one line of another spelling joins it; an invalid date among usual ones is
    NULL (its line unparsed), not a failed batch."""

    def line(when: str, i: int) -> str:
        return f'{{"start_time":"{when}","response_code":200,"request_id":"r-{i}"}}'

    usual = [line(f"2026-11-28T14:00:0{i}.{i}25Z", i) for i in range(3)]
    alone = parse_lines(pa.array(usual)).columns["timestamp"].to_pylist()
    mixed = parse_lines(pa.array([*usual, line("2026-11-28T14:00:09+00:00", 3)]))
    assert alone == mixed.columns["timestamp"].to_pylist()[:3]
    assert alone[1] == datetime(2026, 11, 28, 14, 0, 1, 125000, tzinfo=UTC)
    bad = parse_lines(pa.array([*usual, line("2026-02-30T14:00:00.000Z", 3)]))
    assert bad.rows.to_pylist() == [0, 1, 2] and bad.unparsed.to_pylist() == [3]
    assert bad.columns["timestamp"].to_pylist() == alone


@pytest.mark.parametrize(
    "bad", ["%REQ(", "%REQ(X-FOO%", "%", "%req(:path)%", "%REQ(A)(B)%", "50% %DURATION%"]
)
def test_a_percent_that_starts_no_operator_is_refused(bad: str) -> None:
    """Envoy refuses these; logq took the rest as literal text: a format no line matched,
    every line unparsed, and no error at start."""
    with pytest.raises(FormatError, match=r"is no operator .*write %% for a percent sign"):
        compile_format(f"[%START_TIME%] %RESPONSE_CODE% {bad}")


def test_a_doubled_percent_is_text_even_before_an_operator_name() -> None:
    """``%%DURATION%%`` is the text ``%DURATION%``: it was compiled as the operator."""
    fmt = compile_format("[%START_TIME%] %RESPONSE_CODE% %%DURATION%% %DURATION% 100%%")
    line = "[2026-11-28T14:00:00.000Z] 200 %DURATION% 15 100%"
    parsed = parse_lines(pa.array([line]), (fmt,))
    assert parsed.rows.to_pylist() == [0]
    assert parsed.columns["duration_ms"].to_pylist() == [15]


def test_a_typed_json_number_past_2_63_in_a_text_column_keeps_its_digits() -> None:
    """The bulk reader types such a key double; cast to int64 unchecked, 12345678901234567890
    was stored as -9223372036854775808 (and exactly when the batch was read line by line)."""
    big = JSON_TYPED.replace('"request_id":"r-2"', '"request_id":12345678901234567890')
    assert big != JSON_TYPED
    for batch in ([big], [big, JSON_TYPED]):
        parsed = parse_lines(pa.array(batch))
        assert parsed.columns["request_id"][0].as_py() == "12345678901234567890"
