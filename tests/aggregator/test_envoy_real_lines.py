"""Envoy access lines as current Envoy, Istio and Envoy Gateway print them (and Emissary-ingress,
Kuma and Istio 1.3-1.7 with their default formats), and the formats their documentation gives:
every column lands where it belongs."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from aggregator import envoy_json
from aggregator.config import Settings
from aggregator.envoy import (
    BUILTIN_FORMATS,
    DEFAULT_FORMAT,
    EMISSARY_FORMAT,
    ISTIO_FORMAT,
    ISTIO_MIXER_FORMAT,
    KUMA_FORMAT,
    LATER_FORMATS,
    compile_format,
    parse_lines,
)
from aggregator.envoy_split import split_attempt, split_plan
from aggregator.service import envoy_formats
from tests.aggregator.helpers import AGENT, OTHER_PLANES, envoy_line

#: Envoy's default format as its source writes it now (long operator names), plus one field, so
#: that its lines are not the builtin default's and the custom format must read them.
LONG_NAMES_FORMAT = (
    '[%START_TIME%] "%REQUEST_HEADER(:METHOD)% %REQUEST_HEADER(X-ENVOY-ORIGINAL-PATH?:PATH)% '
    '%PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESPONSE_HEADER(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQUEST_HEADER(X-FORWARDED-FOR)%" '
    '"%REQUEST_HEADER(USER-AGENT)%" "%REQUEST_HEADER(X-REQUEST-ID)%" '
    '"%REQUEST_HEADER(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER%'
)


def test_long_operator_names_fill_the_same_columns_as_the_short_ones() -> None:
    fmt = compile_format(LONG_NAMES_FORMAT)
    assert split_plan(fmt) is not None  # the fast parser still takes such a format
    line = envoy_line(method="POST", path="/v1/x", ust="7", xff="10.1.1.1", ua="grpc-go/1.6")
    parsed = parse_lines(pa.array([line + " backend", line]), (*BUILTIN_FORMATS, fmt))
    assert parsed.unparsed.to_pylist() == []
    for i in (0, 1):
        row = {k: v[i].as_py() for k, v in parsed.columns.items()}
        assert (row["method"], row["path"], row["upstream_service_time_ms"]) == ("POST", "/v1/x", 7)
        assert (row["x_forwarded_for"], row["user_agent"]) == ("10.1.1.1", "grpc-go/1.6")
        assert (row["request_id"], row["authority"]) == (
            "6f1c1b9a-1d2e-4f00-9c6a-0d1e2f3a4b5c",
            "shop.internal",
        )


#: A line of Envoy Gateway's default JSON access log (typed values; its path key is
#: "x-envoy-origin-path"), as its documentation shows one.
ENVOY_GATEWAY = {
    ":authority": "backend:3000",
    "bytes_received": 0,
    "bytes_sent": 466,
    "connection_termination_details": None,
    "duration": 1,
    "method": "GET",
    "protocol": "HTTP/1.1",
    "response_code": 200,
    "response_code_details": "via_upstream",
    "response_flags": "-",
    "route_name": "httproute/envoy-gateway-system/backend/rule/0/match/0/backend",
    "start_time": "2025-04-09T11:44:45.639Z",
    "upstream_host": "10.244.0.13:3000",
    "user-agent": "curl/7.88.1",
    "x-envoy-origin-path": "/gateway?x=1",
    "x-envoy-upstream-service-time": "3",
    "x-forwarded-for": "10.244.0.12",
    "x-request-id": "ab1e4da7-5f1d-45ea-bb4a-fa1ccd03b82b",
}
#: Istio's JSON encoding of the same request (snake_case keys).
ISTIO = {
    "start_time": "2025-04-09T11:44:46.000Z",
    "method": "PUT",
    "path": "/istio",
    "protocol": "HTTP/2",
    "response_code": 201,
    "response_flags": "-",
    "bytes_received": 10,
    "bytes_sent": 0,
    "duration": 4,
    "upstream_service_time": "2",
    "x_forwarded_for": None,
    "user_agent": "istio-ua",
    "request_id": "r-istio",
    "authority": "svc:80",
    "upstream_host": "10.0.0.9:80",
}
EXPECTED = {
    "/gateway?x=1": ("curl/7.88.1", "backend:3000", "ab1e4da7-5f1d-45ea-bb4a-fa1ccd03b82b", 3),
    "/istio": ("istio-ua", "svc:80", "r-istio", 2),
}


def _by_path(lines: list[str]) -> dict[str | None, tuple]:
    parsed = parse_lines(pa.array(lines))
    assert parsed.unparsed.to_pylist() == []
    cols = parsed.columns
    return {
        cols["path"][i].as_py(): (
            cols["user_agent"][i].as_py(),
            cols["authority"][i].as_py(),
            cols["request_id"][i].as_py(),
            cols["upstream_service_time_ms"][i].as_py(),
        )
        for i in range(len(lines))
    }


def test_envoy_gateway_json_keeps_its_path() -> None:
    by_path = _by_path([json.dumps(ENVOY_GATEWAY)])
    assert by_path == {"/gateway?x=1": EXPECTED["/gateway?x=1"]}


def test_one_batch_of_json_lines_with_different_key_names_keeps_each_lines_values() -> None:
    """A buffer segment mixes services: Istio's and Envoy Gateway's lines share a batch, in
    the bulk JSON reader and in its per-line fallback (a key typed differently forces it)."""
    gateway, istio = json.dumps(ENVOY_GATEWAY), json.dumps(ISTIO)
    odd = json.dumps({**ISTIO, "path": "/odd", "protocol": 2})  # 2 beside "HTTP/2": mixed types
    assert _by_path([gateway, istio]) == EXPECTED
    assert _by_path([istio, gateway]) == EXPECTED
    assert _by_path([istio, gateway, odd]) == {**EXPECTED, "/odd": EXPECTED["/istio"]}


def test_quotes_in_the_path_are_kept_not_the_line_left_unparsed() -> None:
    """Envoy logs the path as received, quotes unescaped (envoyproxy/envoy#4191): scanners and
    injection probes send them, the very requests one looks for in access logs."""
    probe = '/search?q="or"1"="1'
    istio = (
        f'[2026-11-28T14:00:00.000Z] "GET {probe} HTTP/1.1" 403 - rbac_access_denied - "-" 0 19 '
        '0 - "-" "sqlmap/1.7" "rid-1" "shop:80" "-" inbound|80|| - 10.0.0.1:80 10.0.0.2:3 - -'
    )
    lines = [envoy_line(), envoy_line(path=probe, code=404), istio, envoy_line(path='/a"')]
    parsed = parse_lines(pa.array(lines))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["path"].to_pylist() == ["/api/items?id=5&sort=asc", probe, probe, '/a"']
    assert parsed.columns["response_code"].to_pylist() == [200, 404, 403, 200]
    assert parsed.columns["user_agent"].to_pylist()[1:3] == ["curl/8.5.0", "sqlmap/1.7"]


def test_the_start_time_example_of_envoys_documentation_reads_its_lines() -> None:
    """``%START_TIME(%Y/%m/%dT%H:%M:%S%z %s)%`` is Envoy's own example (docs since 1.7): the
    aggregator refused to start with it; the epoch seconds give the time."""
    fmt = compile_format("[%START_TIME(%Y/%m/%dT%H:%M:%S%z %s)%] %RESPONSE_CODE% %DURATION%")
    lines = ["[2026/11/28T14:03:05+0000 1795874585] 503 7", "[2026/11/28T14:03:05+0000] 503 7"]
    parsed = parse_lines(pa.array(lines), (fmt,), json_logs=False)
    assert parsed.rows.to_pylist() == [0]
    assert parsed.unparsed.to_pylist() == [1]
    assert parsed.columns["timestamp"][0].as_py().isoformat() == "2026-11-28T14:03:05+00:00"
    assert parsed.columns["duration_ms"].to_pylist() == [7]


def test_numbers_as_strings_beside_numbers_are_read_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``json_format`` prints ``"503"`` and ``"-"``, typed JSON ``503`` and ``null``: one batch of
    both (two services) is still read by ``pyarrow.json``, not line by line (~10x the cost)."""

    def line_by_line(candidates: pa.Array) -> dict[str, pa.Array]:
        raise AssertionError("read line by line")

    monkeypatch.setattr(envoy_json, "_read_slow", line_by_line)
    strings = {**ISTIO, "response_code": "503", "duration": "-", "bytes_sent": "91"}
    strings["upstream_service_time"] = "-"
    parsed = parse_lines(pa.array([json.dumps(ENVOY_GATEWAY), json.dumps(strings)]))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["path"].to_pylist() == ["/gateway?x=1", "/istio"]
    assert parsed.columns["response_code"].to_pylist() == [200, 503]
    assert parsed.columns["duration_ms"].to_pylist() == [1, None]
    assert parsed.columns["bytes_sent"].to_pylist() == [466, 91]
    assert parsed.columns["upstream_service_time_ms"].to_pylist() == [3, None]


def test_a_configured_format_wins_over_a_built_in_one_of_the_same_shape() -> None:
    """Envoy's default format with ``X-Real-IP`` where ``X-Forwarded-For`` was and
    ``%RESPONSE_DURATION%`` for ``%DURATION%``: its lines fit the built-in format too, which
    would store the real IP as ``x_forwarded_for`` and the response duration as the request's.
    The configured format must take them: configured formats are tried first (without one, the
    built-in format takes the same lines)."""
    custom = DEFAULT_FORMAT.replace("%REQ(X-FORWARDED-FOR)%", "%REQ(X-REAL-IP)%").replace(
        "%DURATION%", "%RESPONSE_DURATION%"
    )
    formats = envoy_formats(Settings(envoy_formats=[custom]))
    default = envoy_line(xff="10.9.8.7", duration=12)
    parsed = parse_lines(pa.array([default, default]), formats)
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["x_forwarded_for"].to_pylist() == [None, None]
    assert parsed.columns["duration_ms"].to_pylist() == [None, None]
    assert parsed.columns["response_code"].to_pylist() == [200, 200]
    plain = parse_lines(pa.array([default]), envoy_formats(Settings()))
    assert plain.columns["x_forwarded_for"].to_pylist() == ["10.9.8.7"]
    assert plain.columns["duration_ms"].to_pylist() == [12]


def test_a_configured_format_shorter_than_the_default_leaves_default_lines_alone() -> None:
    """A service logs Envoy's default format less its last field; every other service keeps the
    default. The default lines fit the shorter format only by letting its quoted user agent run
    over the next field's quotes, which shifts request id, authority and upstream host one
    column left: they must stay the built-in format's lines, as they were before 5cb6338."""
    shorter = DEFAULT_FORMAT.replace(' "%UPSTREAM_HOST%"', "")
    formats = envoy_formats(Settings(envoy_formats=[shorter]))
    default = envoy_line(ua="curl/8.5.0", rid="rid-1", authority="shop:80", upstream="10.0.0.9:80")
    own = default.rsplit(' "', 1)[0]  # the shorter format's own line
    parsed = parse_lines(pa.array([default, own]), formats)
    assert parsed.unparsed.to_pylist() == []
    cols = parsed.columns
    assert cols["user_agent"].to_pylist() == ["curl/8.5.0", "curl/8.5.0"]
    assert cols["request_id"].to_pylist() == ["rid-1", "rid-1"]
    assert cols["authority"].to_pylist() == ["shop:80", "shop:80"]
    assert cols["upstream_host"].to_pylist() == ["10.0.0.9:80", None]


def test_a_line_with_more_quoted_fields_than_its_format_is_unparsed() -> None:
    """Envoy's default line with quoted fields added at its end, as a slightly customised
    format prints it (one no ``--envoy-format`` gives): the default format's lenient pattern
    read it with the user agent holding ``" "`` and every later column shifted (the upstream
    cluster stored as the authority). Which fields are the extra ones cannot be told, so the
    line is unparsed (kept in container_logs, counted); a user agent holding stray quotes still
    parses, its values where they were printed."""
    line = envoy_line(ua='Mozilla/5.0 "Chrome"', rid="rid-1", upstream="10.0.0.9:80")
    lines = [
        line + ' "outbound|80||shop.default" "x"',
        envoy_line(rid="rid-2") + ' "outbound|80||shop.default"',
        line,
        envoy_line(ua='a"b "c', rid="rid-4"),
    ]
    for formats in (BUILTIN_FORMATS, envoy_formats(Settings())):
        parsed = parse_lines(pa.array(lines), formats)
        assert parsed.unparsed.to_pylist() == [0, 1]
        cols = parsed.columns
        assert cols["user_agent"].to_pylist() == ['Mozilla/5.0 "Chrome"', 'a"b "c']
        assert cols["request_id"].to_pylist() == ["rid-1", "rid-4"]
        assert cols["authority"].to_pylist() == ["shop.internal"] * 2
        assert cols["upstream_host"].to_pylist() == ["10.0.0.9:80", "10.0.3.7:8080"]
    # Given as a format, the same lines are its own.
    longer = DEFAULT_FORMAT + ' "%UPSTREAM_CLUSTER%" "%REQ(X-TRACE)%"'
    parsed = parse_lines(pa.array(lines[:1]), envoy_formats(Settings(envoy_formats=[longer])))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["request_id"].to_pylist() == ["rid-1"]
    assert parsed.columns["upstream_host"].to_pylist() == ["10.0.0.9:80"]


def test_a_configured_format_wins_when_its_user_agent_holds_a_quote() -> None:
    """A configured format of the default's shape (``X-Real-IP`` and the response duration where
    the default logs ``X-Forwarded-For`` and the request's) takes its lines whose user agent
    holds a quote too: the default format's lenient pattern, tried first, took them (the real
    IP stored as ``x_forwarded_for``), though configured formats win over the built-in ones
    (README). A format shorter than the default still leaves the default's lines alone."""
    custom = DEFAULT_FORMAT.replace("%REQ(X-FORWARDED-FOR)%", "%REQ(X-REAL-IP)%").replace(
        "%DURATION%", "%RESPONSE_DURATION%"
    )
    shorter = DEFAULT_FORMAT.replace(' "%UPSTREAM_HOST%"', "")
    formats = envoy_formats(Settings(envoy_formats=[custom, shorter]))
    quoted = envoy_line(xff="10.9.8.7", duration=12, ua='Mozilla/5.0 "Chrome" x', rid="rid-1")
    plain = envoy_line(xff="10.9.8.7", duration=12, rid="rid-2")
    parsed = parse_lines(pa.array([quoted, plain]), formats)
    assert parsed.unparsed.to_pylist() == []
    cols = parsed.columns
    assert cols["x_forwarded_for"].to_pylist() == [None, None]
    assert cols["duration_ms"].to_pylist() == [None, None]
    assert cols["user_agent"].to_pylist() == ['Mozilla/5.0 "Chrome" x', "curl/8.5.0"]
    assert cols["request_id"].to_pylist() == ["rid-1", "rid-2"]
    # Without the custom format, the shorter one (now tried before the built-ins in every
    # round) must not take the default's line by running its user agent over the request id.
    parsed = parse_lines(pa.array([quoted]), envoy_formats(Settings(envoy_formats=[shorter])))
    assert parsed.columns["user_agent"].to_pylist() == ['Mozilla/5.0 "Chrome" x']
    assert parsed.columns["request_id"].to_pylist() == ["rid-1"]
    assert parsed.columns["upstream_host"].to_pylist() == ["10.0.3.7:8080"]
    assert parsed.columns["x_forwarded_for"].to_pylist() == ["10.9.8.7"]


def test_a_json_line_reads_the_same_whatever_its_batch() -> None:
    """A line's values must not depend on its neighbours: alone (first bulk read), beside
    json_format and typed lines (the re-read with numbers unquoted) and beside a broken line
    (per-line fallback), ``{"duration": "-", "duration_ms": 7}`` gives one duration."""
    line = json.dumps({**ISTIO, "duration": "-", "duration_ms": 7})
    typed = json.dumps(ENVOY_GATEWAY)
    strings = json.dumps({**ISTIO, "path": "/s", "bytes_sent": "91"})
    durations = set()
    for batch in ([line], [line, typed, strings], [line, '{"start_time": "broken']):
        parsed = parse_lines(pa.array(batch))
        assert parsed.rows.to_pylist()[0] == 0
        durations.add(parsed.columns["duration_ms"][0].as_py())
    assert len(durations) == 1, durations


def test_a_path_logged_without_its_query_fills_path() -> None:
    """``%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%`` (Envoy 1.16+) in place of the usual
    path operator: the format's lines fill ``path`` (it was NULL), through the split parser."""
    custom = DEFAULT_FORMAT.replace(
        "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%"
    )
    fmt = compile_format(custom)
    assert split_plan(fmt) is not None
    parsed = parse_lines(pa.array([envoy_line(path="/api/items")]), (fmt,))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["path"].to_pylist() == ["/api/items"]


def test_a_broken_line_without_quoted_numbers_skips_the_second_bulk_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second bulk read (numbers unquoted) helps only a batch holding quoted numbers; a
    broken line beside typed ones goes straight to the per-line read (R1: 27-31 -> 38 µs a
    line when both bulk reads ran), with the same values."""
    calls: list[int] = []
    unquote = envoy_json._numbers_unquoted
    monkeypatch.setattr(
        envoy_json, "_numbers_unquoted", lambda lines: calls.append(len(lines)) or unquote(lines)
    )
    typed = json.dumps({**ENVOY_GATEWAY, "x-envoy-upstream-service-time": 3})  # no quoted number
    parsed = parse_lines(pa.array([typed, '{"start_time": "broken', typed]))
    assert calls == []
    assert parsed.rows.to_pylist() == [0, 2] and parsed.unparsed.to_pylist() == [1]
    strings = json.dumps({**ISTIO, "bytes_sent": "91"})
    parse_lines(pa.array([typed, strings]))
    assert calls == [2]  # quoted numbers beside typed ones: the re-read is what helps


def _row(line: str) -> dict[str, object]:
    parsed = parse_lines(pa.array([line]))
    assert parsed.unparsed.to_pylist() == [], line
    return {name: values[0].as_py() for name, values in parsed.columns.items()}


@pytest.mark.parametrize("plane", sorted(OTHER_PLANES))
def test_lines_of_other_data_planes_default_formats_fill_their_columns(plane: str) -> None:
    """Emissary-ingress, Kuma (its ``%KUMA_*%`` values substituted into the format, so plain
    text in the lines) and Istio 1.3-1.7 (Mixer's status after the flags) print their default
    formats; without a ``--envoy-format`` their lines were parse failures."""
    row = _row(OTHER_PLANES[plane])
    assert row["timestamp"].isoformat() == "2026-11-28T14:00:00.123000+00:00"
    assert (row["method"], row["path"], row["protocol"]) == (
        "GET",
        "/api/items?id=5&q=a%20b",
        "HTTP/1.1",
    )
    assert (row["response_code"], row["response_flags"]) == (503, "UF,URX")
    assert (row["bytes_received"], row["bytes_sent"], row["duration_ms"]) == (17, 91, 3002)
    assert row["upstream_service_time_ms"] is None
    assert (row["x_forwarded_for"], row["user_agent"]) == (None, AGENT)
    assert row["request_id"] == f"rid-{plane[0]}"
    assert (row["authority"], row["upstream_host"]) == ("shop.example.com", "[2001:db8::7]:8080")


def test_the_other_data_planes_formats_are_their_sources_ones() -> None:
    """Each is the format its project's source gives (see the constants' comments): Emissary's
    is Envoy's default behind ``ACCESS ``; Istio's of 1.3-1.7 has Mixer's status where later
    ones have two details; Kuma's has its own operators around Envoy's default fields."""
    assert EMISSARY_FORMAT == "ACCESS " + DEFAULT_FORMAT
    details = "%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    mixer = ISTIO_FORMAT.replace(details, '"%DYNAMIC_METADATA(istio.mixer:status)%" ')
    assert mixer == ISTIO_MIXER_FORMAT
    assert KUMA_FORMAT.startswith('[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% ')
    assert KUMA_FORMAT.endswith('"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" "%UPSTREAM_HOST%"')
    assert {f.source for f in LATER_FORMATS} == {EMISSARY_FORMAT, KUMA_FORMAT, ISTIO_MIXER_FORMAT}
    assert set(LATER_FORMATS) <= set(BUILTIN_FORMATS)


def test_lines_of_other_data_planes_take_the_split_parser() -> None:
    """Their lines without quotes inside a value are cut by each format's split plan, not
    captured by a regex: a fraction of the cost."""
    plain = {name: line.replace(AGENT, "curl/8.5.0") for name, line in OTHER_PLANES.items()}
    for fmt, name in zip(LATER_FORMATS, ("emissary", "kuma", "istio 1.7"), strict=True):
        plan = split_plan(fmt)
        assert plan is not None, fmt.source
        ok, columns = split_attempt(plan)(pa.array([plain[name], OTHER_PLANES[name]]))
        assert ok.to_pylist() == [True, False], name  # quotes in the agent: the regexes' line
        assert columns["upstream_host"].to_pylist() == ["[2001:db8::7]:8080"]


def test_emissarys_prefix_is_not_taken_by_the_default_format() -> None:
    """``ACCESS [...] "GET ...`` holds a whole default-format line after its prefix: the default
    format (anchored at the line's start) must leave it to Emissary's, not read it from the
    middle or store it with shifted values."""
    line = OTHER_PLANES["emissary"]
    alone = parse_lines(pa.array([line]), (compile_format(DEFAULT_FORMAT),))
    assert alone.unparsed.to_pylist() == [0]
    assert _row(line)["request_id"] == "rid-e"


def test_kumas_tcp_lines_stay_container_logs() -> None:
    """Kuma's TCP format has no response code, so no envoy_access row: its lines stay
    unparsed (stored in container_logs), not taken by a lenient regex of another format."""
    tcp = (
        "[2026-11-28T14:00:00.123Z] - default 10.244.0.12(frontend_kuma-demo_svc_8080)->"
        "10.244.0.15:6379(redis_kuma-demo_svc_6379) took 1234ms, sent 100 bytes, received: "
        "200 bytes"
    )
    assert parse_lines(pa.array([tcp])).unparsed.to_pylist() == [0]


def test_a_configured_format_wins_over_a_later_built_in_one_of_the_same_shape() -> None:
    """A configured format of Kuma's shape that reads its fields otherwise (the request id where
    Kuma logs the trace id) takes Kuma's lines, in the split round and the lenient one (quotes
    in the user agent): configured formats are tried first and the other data planes' built-in
    formats last (README, ``--envoy-format``), so adding those did not take lines from a
    format a user configured for them."""
    custom = KUMA_FORMAT.replace(
        '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%"',
        '"%REQ(X-REQUEST-ID)%" "%REQ(X-B3-TRACEID)%"',
    )
    quoted = OTHER_PLANES["kuma"].replace(f'"{AGENT}" "-" "rid-k"', f'"{AGENT}" "tr-1" "rid-k"')
    lines = pa.array([quoted.replace('"Chrome"', "Chrome"), quoted])
    parsed = parse_lines(lines, envoy_formats(Settings(envoy_formats=[custom])))
    assert parsed.unparsed.to_pylist() == []
    assert parsed.columns["request_id"].to_pylist() == ["tr-1", "tr-1"]
    built_in = parse_lines(lines, envoy_formats(Settings()))
    assert built_in.columns["request_id"].to_pylist() == ["rid-k", "rid-k"]


def test_a_configured_format_that_is_now_built_in_keeps_its_place() -> None:
    """Emissary's format given with ``--envoy-format`` (as it had to be before it was built in)
    beside a shorter one for another Emissary: configured formats are tried first, in order, so
    Emissary's takes its lines, as before. Had it moved behind them with the built-in copy, the
    shorter format's lenient regex would take its lines with the user agent running over the
    request id and every later value one column off."""
    shorter = EMISSARY_FORMAT.replace(' "%UPSTREAM_HOST%"', "")
    formats = envoy_formats(Settings(envoy_formats=[EMISSARY_FORMAT, shorter]))
    line = OTHER_PLANES["emissary"]
    parsed = parse_lines(pa.array([line.replace('"Chrome"', "Chrome"), line]), formats)
    assert parsed.unparsed.to_pylist() == []
    cols = parsed.columns
    assert cols["user_agent"].to_pylist() == [AGENT.replace('"Chrome"', "Chrome"), AGENT]
    assert cols["request_id"].to_pylist() == ["rid-e", "rid-e"]
    assert cols["upstream_host"].to_pylist() == ["[2001:db8::7]:8080"] * 2
