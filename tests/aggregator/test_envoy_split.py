"""The split parser (aggregator/envoy_split.py) is a shortcut: for any batch of lines, Envoy's
formats parse to exactly what the regex parsers alone give, line for line and value for value."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import envoy, envoy_split
from aggregator.envoy import (
    BUILTIN_FORMATS,
    DEFAULT_FORMAT,
    ISTIO_FORMAT,
    LATER_FORMATS,
    EnvoyFormat,
    ParsedAccess,
    compile_format,
    format_matches,
    parse_lines,
)
from aggregator.envoy import log as envoy_log
from tests.aggregator.helpers import OTHER_PLANES, envoy_line

#: A custom format with non-ASCII literals around its values (cut by bytes, not characters),
#: single-operator segments with literals (``«%PROTOCOL%»``) and a literal-only quoted segment.
CUSTOM = compile_format(
    '[%START_TIME%] «%PROTOCOL%» "é=%REQ(:METHOD)%" %RESPONSE_CODE%ms "%REQ(USER-AGENT)%" '
    '"x" up=%UPSTREAM_HOST%'
)
FORMATS = (*BUILTIN_FORMATS, CUSTOM)


def _parse(lines: list[str | None], split: bool) -> ParsedAccess:
    """The lines parsed with the split parser, or with the regexes only."""
    failures: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = failures.append  # type: ignore[method-assign]
    with pytest.MonkeyPatch.context() as patch:
        if not split:
            patch.setattr(envoy_split, "split_plan", lambda fmt: None)
        envoy_log.addHandler(handler)
        try:
            parsed = parse_lines(pa.array(lines, pa.string()), FORMATS)
        finally:
            envoy_log.removeHandler(handler)
    # A parser that raises leaves its lines to the next ones (the same result, but slower).
    assert not failures, failures[0].getMessage()
    return parsed


def _assert_same(lines: list[str | None]) -> ParsedAccess:
    """The split parser's result, once checked to be the regexes'."""
    fast, regex = _parse(lines, split=True), _parse(lines, split=False)
    assert fast.rows.to_pylist() == regex.rows.to_pylist()
    assert fast.unparsed.to_pylist() == regex.unparsed.to_pylist()
    assert fast.columns.keys() == regex.columns.keys()
    for name, values in regex.columns.items():
        assert fast.columns[name].to_pylist() == values.to_pylist(), name
    return fast


#: Short values of characters that matter to the parsers: delimiters, blanks, multi-byte UTF-8.
_TEXT = st.text("aZ09/-_.:,[]\"'\\%é€😀\t ", min_size=0, max_size=12)
_TIMES = st.sampled_from(
    [
        "2026-11-28T14:00:00.123Z",
        "2026-11-28T14:00:00Z",
        "2026-11-28T14:00:00.5Z",
        "2026-11-28T14:00:00.123456789Z",
        "2026-11-28T14:00:00+00:00",
        "2026-13-28T14:00:00.123Z",  # not a date
        "0000-01-01T00:00:00.000Z",  # before any partition
        "1969-12-31T23:59:59.999Z",
    ]
)


# The strategies the composite ones below draw from are built once, here: built in the
# composites, each draw built and validated them anew, nearly half of the module's CPU. The
# examples are the same (a strategy's draws depend on its structure, not on the object).
_WORD = st.one_of(_TEXT, st.sampled_from(["GET", "/api/x?y=1", "-", "200", "10.0.0.1:80"]))
_NUMBER = st.one_of(st.integers(0, 10**19).map(str), st.just("-"), _TEXT)
_FLAGS = st.one_of(st.sampled_from(["-", "UF,URX", "UH"]), _TEXT)
_USER_AGENT = st.one_of(_TEXT, st.just("Mozilla/5.0 (X11; Linux) é"))
_DEFAULT_END = st.sampled_from(["", " ", "\t", " \n", "x"])


@st.composite
def default_line(draw: st.DrawFn) -> str:
    """A default-format line whose values may break the format (quotes, spaces, tabs...)."""
    return envoy_line(
        when=draw(_TIMES),
        method=draw(_WORD),
        path=draw(_WORD),
        code=draw(_NUMBER),  # type: ignore[arg-type]
        flags=draw(_FLAGS),
        rx=draw(_NUMBER),  # type: ignore[arg-type]
        tx=draw(_NUMBER),  # type: ignore[arg-type]
        duration=draw(_NUMBER),  # type: ignore[arg-type]
        ust=draw(_NUMBER),
        xff=draw(_WORD),
        ua=draw(_USER_AGENT),
        rid=draw(_WORD),
        authority=draw(_WORD),
        upstream=draw(_WORD),
    ) + draw(_DEFAULT_END)


def _usual_or_text(*usual: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(usual), _TEXT)


_CUSTOM_VALUES = {
    "protocol": _usual_or_text("HTTP/1.1", "é»"),
    "method": _usual_or_text("GET", "PÖST"),
    "code": _usual_or_text("503", "0"),
    "agent": _usual_or_text("curl/8 (x)", ""),
    "upstream": _usual_or_text("10.0.0.1:80", "-"),
}
_CUSTOM_END = st.sampled_from(["", " ", "\t\n"])


@st.composite
def custom_line(draw: st.DrawFn) -> str:
    def value(name: str) -> str:
        return draw(_CUSTOM_VALUES[name])

    return (
        f'[{draw(_TIMES)}] «{value("protocol")}» "é={value("method")}" '
        f'{value("code")}ms "{value("agent")}" "x" up={value("upstream")}'
        + draw(_CUSTOM_END)  # after a value: trimmed off
    )


CUSTOM_LINE = '[2026-11-28T14:00:00.123Z] «HTTP/1.1» "é=GET" 503ms "curl/8 (x)" "x" up=10.0.0.1:80'
ISTIO_LINE = (
    '[2026-11-28T14:00:00.000Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 '
    '4 3 "-" "curl/8.1" "rid-1" "httpbin:8000" "10.244.0.7:80" '
    "outbound|8000||httpbin.default.svc.cluster.local 10.244.0.5:46374 10.96.19.20:8000 "
    "10.244.0.5:52350 - default"
)
#: Istio's line with a quote in an unquoted value (a route name): it matches the format, but
#: the split parser cannot cut it at its quotes and leaves it to the regexes.
ISTIO_QUOTED = ISTIO_LINE.replace(" default", ' de"fault')
#: Lines of the other data planes' built-in formats (Emissary, Kuma, Istio 1.3-1.7), with quotes
#: in their user agents (the regexes' lines) and without (the split parser's).
OTHER_LINES = [
    variant
    for line in OTHER_PLANES.values()
    for variant in (line, line.replace('"Chrome"', "Chrome"))
]


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            default_line(),
            custom_line(),
            st.sampled_from([envoy_line(), ISTIO_LINE, ISTIO_QUOTED, "", None, "{}"]),
            st.sampled_from(OTHER_LINES),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_split_parser_gives_what_the_regexes_give(lines: list[str | None]) -> None:
    _assert_same(lines)


def test_the_usual_lines_take_the_split_parser() -> None:
    """The shortcut is taken (the property above would hold without it too): every built-in
    format and the custom one have a plan."""
    plans = [envoy_split.split_plan(fmt) for fmt in FORMATS]
    assert all(plans)
    custom = plans[-1]
    assert custom is not None
    fields = {f.column: f for f in custom.fields}
    # «%PROTOCOL%» is one segment-less token whose literals are 2 UTF-8 bytes each.
    assert (fields["protocol"].prefix, fields["protocol"].suffix) == (2, 2)
    assert (fields["method"].token, fields["method"].prefix) == (None, 3)  # "é=" in bytes


@pytest.mark.parametrize(
    "lines",
    [
        [envoy_line(ua='a "quoted" agent'), envoy_line()],  # more quotes: the regexes take it
        [envoy_line(path="/a\tb"), envoy_line(method="G E T")],  # no match at all
        [envoy_line() + "  ", envoy_line(when="2026-11-28T14:00:00Z")],  # mixed spellings
        [envoy_line(when="2026-02-30T14:00:00.000Z"), envoy_line()],  # one invalid date
        [ISTIO_LINE, envoy_line(), "plain"],
        [ISTIO_QUOTED, ISTIO_LINE, envoy_line()],
        # Blanks RE2's \s does not hold end the last unquoted value, after trailing blanks too.
        [CUSTOM_LINE + "\v", CUSTOM_LINE + "\u3000 ", CUSTOM_LINE + "\x1c\t", CUSTOM_LINE],
    ],
)
def test_awkward_batches_parse_the_same(lines: list[str | None]) -> None:
    _assert_same(lines)


def test_a_format_of_one_value_between_literals_parses() -> None:
    fmt: EnvoyFormat = compile_format("<%START_TIME%> code=%RESPONSE_CODE%;")
    lines = ["<2026-11-28T14:00:00.250Z> code=503;", "<2026-11-28T14:00:00.250Z> code=5 03;"]
    parsed = parse_lines(pa.array(lines), (fmt,), json_logs=False)
    assert parsed.rows.to_pylist() == [0]
    assert parsed.columns["response_code"].to_pylist() == [503]
    assert parsed.columns["timestamp"][0].as_py().isoformat() == "2026-11-28T14:00:00.250000+00:00"


def test_cut_at_tells_the_strings_that_hold_the_delimiter_as_often_as_asked() -> None:
    strings = pa.array(['"', "ab", 'x"y', 'é"€'])
    fit, pieces = envoy_split._cut_at(strings, ord('"'), 2)
    assert fit.tolist() == [True, False, True, True]
    assert pieces is None  # the caller keeps the fitting ones and cuts again
    fit, pieces = envoy_split._cut_at(strings.filter(pa.array(fit)), ord('"'), 2)
    assert fit.all() and pieces is not None
    assert pieces.part(0).to_pylist() == ["", "x", "é"]
    assert pieces.part(1).to_pylist() == ["", "y", "€"]
    # As many delimiters in all as asked, but not one per string: told apart all the same.
    fit, pieces = envoy_split._cut_at(pa.array(['"a"', "b"]), ord('"'), 2)
    assert fit.tolist() == [False, False] and pieces is None


def test_values_stay_aligned_with_the_lines_that_fit_the_plan() -> None:
    """Lines with the format's quotes but a space too many, next to lines with a quote too many:
    the values returned are those of exactly the lines marked as fitting, in order (the parsers
    only hand over lines the format's pattern matched, so this guards the cut on its own)."""
    plan = envoy_split.split_plan(BUILTIN_FORMATS[0])
    assert plan is not None
    line = envoy_line(rid="rid-0")
    lines = [
        line,
        line.replace('"GET ', '"GET  ', 1),  # an extra space in the method/path/protocol part
        line.replace('"rid-0"', '"rid"-1"', 1),  # an extra quote
        envoy_line(rid="rid-3"),
    ]
    assert '"GET ' in line
    fit, values, sure = envoy_split._values(pa.array(lines, pa.string()), plan)
    assert fit.tolist() == [True, False, False, True]
    assert values["request_id"].to_pylist() == ["rid-0", "rid-3"]
    assert all(len(v) == 2 for v in values.values())
    assert sure.tolist() == [True, True]  # the checks vouch for both: no regex needed


#: A path as Envoy logs it: any non-blank text, quotes included (scanners send them).
_QUOTED_PATH = st.text("a/?=&\"'\\%é", min_size=1, max_size=10)
#: A user agent with quotes, but not the ``" "`` between two quoted fields: a line whose user
#: agent holds one is also the format's line with a field added at its end (``"" ""`` is an
#: empty user agent and request id as well), and is left unparsed
#: (test_a_line_with_more_quoted_fields_than_its_format_is_unparsed).
_AGENT = st.text("a \"'-()é", max_size=10).filter(lambda agent: '" "' not in agent)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_QUOTED_PATH, _AGENT), min_size=1, max_size=6), st.booleans())
def test_quotes_in_paths_shift_no_other_value(requests: list[tuple[str, str]], istio: bool) -> None:
    """A path holds no blank but may hold quotes (``\\S+``): whatever quotes a path and a user
    agent hold, the split parser and the regexes agree, and protocol, user agent and request id
    are read where they were printed, not a field off."""
    lines = [
        ISTIO_LINE.replace("/status/418", path, 1).replace('"curl/8.1"', f'"{agent}"', 1)
        if istio
        else envoy_line(path=path, ua=agent, rid=f"rid-{i}")
        for i, (path, agent) in enumerate(requests)
    ]
    parsed = _assert_same(lines)
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["path"].to_pylist() == [path for path, _ in requests]
    assert parsed.columns["user_agent"].to_pylist() == [agent for _, agent in requests]
    assert set(parsed.columns["protocol"].to_pylist()) == {"HTTP/1.1"}
    if not istio:
        assert parsed.columns["request_id"].to_pylist() == [f"rid-{i}" for i in range(len(lines))]


#: A custom time and non-ASCII literals: every kind of piece compile_format builds a pattern of.
TIMED = compile_format(
    '%START_TIME(%d/%b/%Y:%H:%M:%S.%3f %z)% ü "%REQ(:METHOD)% %X%" %RESPONSE_CODE%'
)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            default_line(),
            custom_line(),
            _TEXT.map(lambda v: f'28/Nov/2026:14:00:00.123 +0000 ü "{v} {v}" 5'),
            st.sampled_from([ISTIO_LINE, ISTIO_QUOTED, "é", ""]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_patterns_match_bytes_as_they_match_characters(lines: list[str]) -> None:
    """The formats' patterns run over the lines' bytes (a faster DFA): they must accept exactly
    the lines they accept as UTF-8 text, multi-byte characters in values and literals included."""
    text = pa.array(lines, pa.string())
    for fmt in (*FORMATS, TIMED):
        for pattern in (fmt.pattern, fmt.strict_pattern):
            as_text = pc.match_substring_regex(text, pattern)
            assert format_matches(text, pattern).to_pylist() == as_text.to_pylist(), pattern


def test_a_pattern_counting_characters_would_tell_bytes_apart() -> None:
    """What the property above guards against: a count of any characters differs over bytes."""
    text = pa.array(["é"])
    assert pc.match_substring_regex(text, "^.$").to_pylist() == [True]
    assert format_matches(text, "^.$").to_pylist() == [False]


_USUAL_LINES = [envoy_line(), envoy_line(xff="10.0.0.1", ua="Mozilla/5.0 (X11) é"), ISTIO_LINE]
_TO_MUTATE = st.one_of(st.sampled_from(_USUAL_LINES + OTHER_LINES), default_line(), custom_line())
_EDITS = st.integers(1, 3)
_INSERTED = st.text('" \t\né-x', min_size=1, max_size=2)


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    """A line of one of the formats with a few characters that matter inserted or deleted
    anywhere: in a free-text value, a literal between quoted values, a number, the end...
    (Not blanks that RE2's ``\\s`` does not know: before a last unquoted value's trailing
    whitespace, the split parser trims them off that value and the regexes do not.)"""
    line = draw(_TO_MUTATE)
    for _ in range(draw(_EDITS)):
        at = draw(st.sampled_from(range(len(line) + 1)))  # (integers favour the ends)
        if draw(st.booleans()):
            line = line[:at] + draw(_INSERTED) + line[at:]
        else:
            line = line[:at] + line[at + 1 :]
    return line


#: Values without a quote: a line of them has the default format's quotes, whatever blanks
#: (which only the free-text values may hold) they put where.
_UNQUOTED = st.text("a09/-:,é😀\t\v\n\x1c\u3000 ", min_size=1, max_size=6)


_QUOTED = {"method": "GET", "path": "/a", "flags": "-", "xff": "-", "ua": "curl/8"}
_QUOTED |= {"rid": "r-1", "authority": "a.internal", "upstream": "10.0.0.1:80"}
_ODD = st.sets(st.sampled_from(sorted(_QUOTED)), max_size=2)
_QUOTED_END = st.sampled_from(["", " ", "\t\n", "\v", "x"])


@st.composite
def quoted_line(draw: st.DrawFn) -> str:
    """A default-format line of quote-free values, a few of them odd (blanks anywhere)."""
    odd = draw(_ODD)
    values = {name: draw(_UNQUOTED) if name in odd else value for name, value in _QUOTED.items()}
    return envoy_line(**values) + draw(_QUOTED_END)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated_line(), quoted_line()), min_size=1, max_size=12))
def test_mutated_lines_parse_as_the_regexes_parse_them(lines: list[str]) -> None:
    """Lines a character or two off their format (a quote, a blank, a tab where none goes):
    the split parser takes exactly those the regexes take, with the same values."""
    _assert_same(lines)


#: The built-in formats before those of the other data planes were added.
EARLIER = (compile_format(DEFAULT_FORMAT), compile_format(ISTIO_FORMAT))


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            default_line(),
            mutated_line(),
            quoted_line(),
            st.sampled_from([ISTIO_LINE, ISTIO_QUOTED, *OTHER_LINES]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_lines_the_earlier_formats_parse_are_parsed_as_before(lines: list[str]) -> None:
    """The other data planes' formats only see the lines the default and Istio's formats left:
    every line those parse keeps its values (a new format taking one first would give it other
    columns), and the lines they leave are the only ones that can change."""
    before = parse_lines(pa.array(lines, pa.string()), EARLIER)
    now = parse_lines(pa.array(lines, pa.string()), BUILTIN_FORMATS)
    rows = now.rows.to_pylist()
    assert set(before.rows.to_pylist()) <= set(rows)
    assert set(now.unparsed.to_pylist()) <= set(before.unparsed.to_pylist())
    kept = pa.array([rows.index(r) for r in before.rows.to_pylist()], pa.int64())
    for name, values in before.columns.items():
        assert now.columns[name].take(kept).to_pylist() == values.to_pylist(), name


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated_line(), st.sampled_from(OTHER_LINES)), min_size=1, max_size=12))
def test_every_line_a_later_format_matches_passes_its_screen(lines: list[str]) -> None:
    """The later built-in formats only see the lines that match their screen: it must let
    through every line any of their patterns matches, or those lines would go unparsed."""
    text = pa.array(lines, pa.string())
    screened = format_matches(text, envoy._LATER_SCREEN).to_pylist()
    for fmt in LATER_FORMATS:
        for pattern in (fmt.pattern, fmt.strict_pattern):
            matched = format_matches(text, pattern).to_pylist()
            assert all(s for s, m in zip(screened, matched, strict=True) if m), fmt.source


def test_lines_no_format_parses_cost_the_later_formats_one_match() -> None:
    """Envoy's own diagnostics (stderr) reach every parser: the later formats' patterns run
    only on the lines that begin as theirs do, here the one Kuma line among them."""
    diagnostics = [
        f"[2026-11-28 14:00:0{i}.123][14][warning][config] [source/server/server.cc:12{i}] x"
        for i in range(5)
    ]
    kuma = OTHER_PLANES["kuma"]
    later = {p for fmt in LATER_FORMATS for p in (fmt.pattern, fmt.strict_pattern)}
    seen: list[int] = []

    def counting(lines: pa.Array, pattern: str) -> pa.Array:
        if pattern in later:
            seen.append(len(lines))
        return format_matches(lines, pattern)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envoy, "format_matches", counting)
        patch.setattr(envoy_split, "format_matches", counting)
        parsed = parse_lines(pa.array([*diagnostics, kuma]))
    assert parsed.rows.to_pylist() == [5]
    assert parsed.unparsed.to_pylist() == [0, 1, 2, 3, 4]
    assert parsed.columns["request_id"].to_pylist() == ["rid-k"]
    assert seen and set(seen) == {1}


def test_the_formats_plans_scan_a_batch_for_quotes_once() -> None:
    """Istio's lines meet the default format's plan first, which takes none of them: the Istio
    plan is handed the same batch and reuses its quotes instead of scanning every byte again.
    Another batch (here the same lines in a new array) is scanned anew."""
    scans: list[int] = []
    real = envoy_split._positions

    def counting(data: np.ndarray, byte: int, start: int, stop: int) -> np.ndarray:
        if byte == ord('"'):
            scans.append(stop - start)
        return real(data, byte, start, stop)

    lines = [ISTIO_LINE] * 3
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envoy_split, "_positions", counting)
        first = parse_lines(pa.array(lines), BUILTIN_FORMATS, json_logs=False)
        assert len(scans) == 1
        again = parse_lines(pa.array(lines), BUILTIN_FORMATS, json_logs=False)
    assert len(scans) == 2
    assert first.rows.to_pylist() == again.rows.to_pylist() == [0, 1, 2]
    assert first.columns["request_id"].to_pylist() == again.columns["request_id"].to_pylist()
    assert {k: v.to_pylist() for k, v in first.columns.items()} == {
        k: v.to_pylist() for k, v in envoy.parse_lines(pa.array(lines)).columns.items()
    }


def test_remembered_quotes_are_never_another_batchs() -> None:
    """The quotes remembered belong to one array object: a batch of the same length with its
    quotes elsewhere is cut at its own, and a dropped batch's quotes are let go."""
    one = pa.array(['a"b', 'c"d'])
    fit, pieces = envoy_split._cut_at(one, ord('"'), 2)
    assert fit.all() and pieces is not None and pieces.part(1).to_pylist() == ["b", "d"]
    other = pa.array(['"ab', 'cd"'])
    fit, pieces = envoy_split._cut_at(other, ord('"'), 2)
    assert fit.all() and pieces is not None
    assert pieces.part(0).to_pylist() == ["", "cd"] and pieces.part(1).to_pylist() == ["ab", ""]
    del other, pieces
    assert envoy_split._last_quotes is None
