"""Envoy access-log lines -> typed ``envoy_access`` columns, a whole batch at a time.

An Envoy format string (``[%START_TIME%] "%REQ(:METHOD)% …"``) is compiled into an anchored
RE2 pattern with a named group per known operator (:func:`compile_format`). :func:`parse_lines`
runs a list of *attempts* over the batch, each seeing only the lines the previous ones left:

1. JSON access logs (lines starting with ``{``; :mod:`.envoy_json`, read with ``pyarrow.json``);
2. the text formats (the aggregator's: any from ``--envoy-format``, then the default one and
   Istio's, see ``aggregator.service.envoy_formats``), in rounds (:func:`attempts_for`): each
   format's split plan (:mod:`.envoy_split`: the values cut out at the format's quotes and
   spaces and checked by byte classes, :mod:`.envoy_checks`, with the DFA match only for the
   lines those checks cannot vouch for; a fraction of the cost of capturing), each strict
   regex (quoted values without quotes), then each lenient one (quotes allowed inside a quoted
   value, as user agents have, but not the ``" "`` between two quoted fields: a line with more
   quoted fields than a format is no line of it);
3. the same rounds for the built-in formats of other data planes (Emissary-ingress, Kuma,
   Istio 1.3 to 1.7: :data:`LATER_FORMATS`), on the lines all the others left that begin as
   their lines begin (``ACCESS [`` or ``[``, and a time): the others, Envoy's own diagnostics
   first, cost one refused match, not one per attempt.

Everything runs as Arrow kernels (``extract_regex``, ``take``, casts) or numpy over the whole
batch: there is no Python loop per line. Lines no attempt parses are returned as unparsed; the
caller stores them in ``container_logs`` and counts them.

Value rules (DESIGN.md §2/§5): ``-`` becomes NULL for ``upstream_service_time_ms``,
``x_forwarded_for`` and ``upstream_host`` (and for any number); ``response_flags`` keeps ``-``;
the row's ``timestamp`` is ``START_TIME`` (UTC, truncated to milliseconds), printed as Envoy's
default ISO-8601 or in a custom ``%START_TIME(spec)%`` (:mod:`.envoy_time`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.envoy_time import (
    TimeFormat,
    compile_time_format,
    value_pattern,
    with_fraction,
    without_rollover,
)

#: Envoy's default access-log format (its lines unchanged from 1.x to today; recent Envoy sources
#: spell it with the long operator names, see :func:`operator_key`).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'
)

#: Istio's proxy text format: three fields after the flags and six at the end.
ISTIO_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%"
)

#: Emissary-ingress' (formerly Ambassador's) default ``envoy_log_format``: Envoy's default one
#: behind ``ACCESS ``, unchanged from Ambassador 0.x to Emissary 3.x (its listener code).
EMISSARY_FORMAT = "ACCESS " + DEFAULT_FORMAT

#: Kuma's (and Kong Mesh's) default format of HTTP traffic. Kuma puts the values of its own
#: operators (``%KUMA_MESH%``, ``%KUMA_SOURCE_SERVICE%``...) into the format before Envoy
#: sees it, so its lines hold plain values there: each matches as any other unknown operator.
#: (Its TCP format has no response code: those lines stay in ``container_logs``.)
KUMA_FORMAT = (
    '[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
    '"%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" '
    '"%UPSTREAM_HOST%"'
)

#: Istio's proxy text format of Istio 1.3 to 1.7: Mixer's policy status after the flags where
#: later releases print ``%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%``.
ISTIO_MIXER_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%" '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%"
)

log = logging.getLogger("logq.aggregator.envoy")


class FormatError(ValueError):
    """An Envoy format string that cannot be compiled; the message says which part and why."""


_TIME_SECONDS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"

#: A quoted value of the lenient round (:attr:`EnvoyFormat.pattern`): quotes allowed, as user
#: agents hold them (``Mozilla/5.0 "Chrome"``), but not ``" "``, the boundary between two quoted
#: fields. A value running over one reads a line with more quoted fields than its format: Envoy's
#: default line with fields added at its end (a slightly customised format) was stored with the
#: user agent holding ``" "`` and every later column shifted, and a configured format's line
#: could be taken by a built-in format's lenient pattern that way. Which of such a line's fields
#: are the extra ones cannot be told, so no format may read it so: it goes to the next format,
#: else to ``container_logs``, counted as unparsed. (A user agent that holds ``" "`` itself is
#: indistinguishable from that, and is unparsed too.) Runs of quote-free text, each quote run
#: after the first followed by a non-quote, or by a space and a non-quote: one way to read any
#: value, so RE2 captures it faster than ``.*?`` did; greedy, as the strict ``[^"]*`` is.
_ANY_QUOTED = r'(?:[^"]*(?:"+(?:[^" ]| [^"])[^"]*)*(?:"+ ?)?)'

# operator (upper-cased, without %) -> (column, regex of its value)
_INT32 = r"\d{1,9}|-"
_INT64 = r"\d{1,18}|-"
_PATH = r"\S+"
_OPERATORS: dict[str, tuple[str, str]] = {
    "START_TIME": (
        "start",
        rf"(?P<start>{_TIME_SECONDS})(?:\.(?P<start_frac>\d{{1,9}}))?(?:Z|[+-]00:?00)",
    ),
    "REQ(:METHOD)": ("method", r"[^\s\"]+"),
    # Envoy logs a path as received, quotes included (scanners send /?q="or"1"="1): it holds no
    # space, so the space before %PROTOCOL% still ends it.
    "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": ("path", _PATH),
    "REQ(:PATH)": ("path", _PATH),
    # The path without its query string (Envoy 1.16+), as some operators log it.
    "REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)": ("path", _PATH),
    "REQ_WITHOUT_QUERY(:PATH)": ("path", _PATH),
    "PROTOCOL": ("protocol", r"[^\s\"]+"),
    "RESPONSE_CODE": ("response_code", r"\d{1,9}"),
    "RESPONSE_FLAGS": ("response_flags", r"[A-Za-z,_-]+"),
    "FAILURE_REASON": ("response_flags", r"[A-Za-z,_-]+"),  # its name before Envoy 1.3
    "BYTES_RECEIVED": ("bytes_received", _INT64),
    "BYTES_SENT": ("bytes_sent", _INT64),
    "DURATION": ("duration_ms", _INT32),
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": ("upstream_service_time_ms", _INT32),
    "REQ(X-FORWARDED-FOR)": ("x_forwarded_for", r"[^\"]*"),
    "REQ(USER-AGENT)": ("user_agent", _ANY_QUOTED),
    "REQ(X-REQUEST-ID)": ("request_id", r"[^\"]*"),
    "REQ(:AUTHORITY)": ("authority", r"[^\"\s]*"),
    "REQ(HOST)": ("authority", r"[^\"\s]*"),
    "UPSTREAM_HOST": ("upstream_host", r"[^\"\s]*"),
}

STRING_COLUMNS = (
    "method",
    "path",
    "protocol",
    "response_flags",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
)
INT_COLUMNS: dict[str, pa.DataType] = {
    "response_code": pa.int32(),
    "bytes_received": pa.int64(),
    "bytes_sent": pa.int64(),
    "duration_ms": pa.int32(),
    "upstream_service_time_ms": pa.int32(),
}
#: Columns where Envoy's ``-`` (unset) is stored as NULL.
DASH_IS_NULL = frozenset({"upstream_service_time_ms", "x_forwarded_for", "upstream_host"})
#: The key of the JSON attempt's columns that marks its rows with a number stored rounded
#: (:mod:`.envoy_json`): no ``envoy_access`` column; :func:`_run` takes it out into
#: :attr:`ParsedAccess.rounded`.
ROUNDED = "_numbers_rounded"
#: The same for a number past its column's digits, stored NULL (:attr:`ParsedAccess.too_large`).
TOO_LARGE = "_numbers_too_large"
#: The keys of the JSON attempt's row marks, each taken out into :class:`ParsedAccess`.
MARKS = (ROUNDED, TOO_LARGE)
#: Columns an Envoy format must capture to fill a row.
REQUIRED = ("start", "response_code")

_NO_QUOTE = '[^"]*'
#: Bounds of a custom format: Istio's has 25 operators. A pattern of thousands of quoted fields
#: is too big for RE2's DFA, and each line that does not match then costs ~0.5 s.
MAX_FORMAT_CHARS = 8192
MAX_FORMAT_OPERATORS = 128
_TOKEN = re.compile(r"%([A-Z_][A-Z0-9_]*(?:\([^)]*\))?)(?::(\d+))?%")
#: What a format string is read as, left to right: ``%%`` (a literal percent sign) or an
#: operator. Scanning for operators alone read ``%%DURATION%%`` (the text ``%DURATION%``) as
#: the operator ``%DURATION%``.
_SCAN = re.compile(r"%%|" + _TOKEN.pattern)


@dataclass(frozen=True)
class EnvoyFormat:
    """A compiled access-log format: the RE2 pattern and the columns its groups fill."""

    source: str
    pattern: str
    """Anchored RE2 pattern; quoted values may contain quotes (user agents do)."""
    columns: tuple[str, ...]
    strict_pattern: str = ""
    """The same with quoted values free of quotes: ~30% faster, tried first."""
    time_format: TimeFormat | None = None
    """A custom ``%START_TIME(spec)%``; None: Envoy's default ISO-8601 UTC time."""
    operator_patterns: tuple[str, ...] = ()
    """The strict pattern's piece of each operator, in the order of the format: what
    :mod:`.envoy_checks` holds a split line's values to without running the regex."""


def compile_format(fmt: str) -> EnvoyFormat:
    """Compile an Envoy format string to an anchored RE2 pattern with one group per column.

    Operators the table has no column for still match (a quoted one any text, a bare one a
    run of non-blanks) but are not captured. ``%%`` is a literal percent sign.
    """
    fmt = fmt.rstrip("\n")
    found = [m for m in _SCAN.finditer(fmt) if m.group(0) != "%%"]
    operators = len(found)
    if len(fmt) > MAX_FORMAT_CHARS or operators > MAX_FORMAT_OPERATORS:
        raise FormatError(
            f"format of {len(fmt):,} characters and {operators} operators is over the limits "
            f"({MAX_FORMAT_CHARS:,} characters, {MAX_FORMAT_OPERATORS} operators): such a "
            "pattern makes every line slow to parse; log fewer fields"
        )
    parts: list[str] = []
    columns: list[str] = []
    op_patterns: list[str] = []
    time_format: TimeFormat | None = None
    pos = 0
    for m in found:
        literal = fmt[pos : m.start()]
        _check_literal(literal, fmt)
        parts.append(_literal(literal))
        pieces = len(parts)
        op = operator_key(m.group(1))
        quoted = literal.endswith('"')
        if op.startswith("START_TIME(") and op.endswith(")"):
            if "start" in columns:  # matched, not converted: the first one is the row's
                spec = m.group(1)[len("START_TIME(") : -1]
                parts.append(_ANY_QUOTED if quoted else f"(?:{value_pattern(spec)})")
            else:
                try:
                    time_format = compile_time_format(m.group(1)[len("START_TIME(") : -1])
                except ValueError as exc:
                    raise FormatError(f"{exc}; fix the access-log format") from None
                parts.append(f"(?P<start>{time_format.pattern})")
                columns.append("start")
        elif op in _OPERATORS:
            column, value = _OPERATORS[op]
            if column in columns:
                parts.append(f"(?:{re.sub(r'[(][?]P<[a-z_]+>', '(?:', value)})")
            elif value.startswith("(?P<"):
                parts.append(value)
                columns.append(column)
            else:
                parts.append(f"(?P<{column}>{value})")
                columns.append(column)
        else:
            parts.append(_ANY_QUOTED if quoted else r"(?:\S*)")
        op_patterns.append("".join(parts[pieces:]).replace(_ANY_QUOTED, _NO_QUOTE))
        pos = m.end()
    _check_literal(fmt[pos:], fmt)
    parts.append(_literal(fmt[pos:]))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise FormatError(
            f"format {fmt!r} lacks {missing}: an envoy_access row needs %START_TIME% and "
            "%RESPONSE_CODE%"
        )
    lenient = "^" + "".join(parts) + r"\s*$"
    strict = lenient.replace(_ANY_QUOTED, _NO_QUOTE)
    return EnvoyFormat(fmt, lenient, tuple(columns), strict, time_format, tuple(op_patterns))


#: Envoy's long operator names (recent Envoy releases write their own default format with them,
#: as do Cilium's gateway defaults) -> the short names :data:`_OPERATORS` knows: same values.
_LONG_NAMES = (
    ("REQUEST_HEADER(", "REQ("),
    ("RESPONSE_HEADER(", "RESP("),
    ("RESPONSE_TRAILER(", "TRAILER("),
)


def operator_key(name: str) -> str:
    """An operator as :data:`_OPERATORS` names it: upper case, ``%REQUEST_HEADER(X)%`` as
    ``%REQ(X)%`` (and so on): else a format written with the long names would match its lines
    but leave their method, path, user agent... NULL."""
    key = name.upper()
    for long, short in _LONG_NAMES:
        if key.startswith(long):
            return short + key[len(long) :]
    return key


def _literal(text: str) -> str:
    return re.escape(text.replace("%%", "%"))


def _check_literal(text: str, fmt: str) -> None:
    """FormatError for a ``%`` in the literal text between operators that is no ``%%``: an
    operator Envoy refuses too (``%REQ(X-FOO%``, ``%req(:path)%``, a lone ``%``). Taken as
    text, it made a format that no line matched, every line of it unparsed, and no error."""
    rest = text.replace("%%", "")
    if "%" in rest:
        at = rest.index("%")
        raise FormatError(
            f"format {fmt!r}: {rest[at : at + 24]!r} is no operator (operators are upper case, "
            "%NAME% or %NAME(ARG)%, each closed by '%'; write %% for a percent sign); fix the "
            "access-log format"
        )


#: Built-in formats of other Envoy data planes. :func:`attempts_for` tries them only on the lines
#: every other format left, so a line the default, Istio's or a configured format parses is
#: parsed as it was before they were added.
LATER_FORMATS = tuple(compile_format(f) for f in (EMISSARY_FORMAT, KUMA_FORMAT, ISTIO_MIXER_FORMAT))
BUILTIN_FORMATS = (compile_format(DEFAULT_FORMAT), compile_format(ISTIO_FORMAT), *LATER_FORMATS)


def _screen(formats: tuple[EnvoyFormat, ...]) -> str:
    """A pattern that every line of ``formats`` matches: the literal text before their first
    operator, which must be ``%START_TIME%`` (Envoy's default time), and its seconds."""
    heads: list[str] = []
    for fmt in formats:
        first = _TOKEN.search(fmt.source)
        if first is None or first.group(1) != "START_TIME":
            raise FormatError(f"{fmt.source!r} does not begin with text and %START_TIME%")
        heads.append(_literal(fmt.source[: first.start()]))
    return "^(?:" + "|".join(dict.fromkeys(heads)) + ")" + _TIME_SECONDS


_LATER_SCREEN = _screen(LATER_FORMATS)


def start_time_to_timestamp(seconds_text: pa.Array, fraction: pa.Array) -> pa.Array:
    """``2018-04-03T23:06:09`` + ``123`` strings -> timestamp[ms, UTC]; invalid dates -> NULL.

    Invalid includes dates strptime would roll over (``2018-02-30`` is not March 2nd): the
    cast refuses them, and the fallback must too (:func:`without_rollover`)."""
    try:  # Arrow's ISO-8601 cast: 4x faster than strptime, but one invalid date fails it all
        seconds = pc.cast(seconds_text.cast(pa.timestamp("s")), pa.int64())
    except pa.ArrowInvalid:
        parsed = pc.strptime(seconds_text, "%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True)
        day, second = (pc.utf8_slice_codeunits(seconds_text, i, i + 2) for i in (8, 17))
        seconds = without_rollover(pc.cast(parsed, pa.int64()), {"d": day, "S": second})
    return with_fraction(seconds, fraction)


def _dash_to_null(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``values`` with each ``-`` made NULL. Only a validity bitmap is made: the strings stay
    where they are (``if_else`` would copy them all, ~0.03 µs a line a column). Chunked values
    (no caller's today, but as ``if_else`` took them) are done chunk by chunk."""
    if isinstance(values, pa.ChunkedArray):
        return pa.chunked_array([_dash_to_null(chunk) for chunk in values.chunks], values.type)
    dash = pc.fill_null(pc.equal(values, "-"), False)
    if not pc.any(dash).as_py():
        return values
    valid = pc.invert(dash)
    if values.null_count:
        valid = pc.and_(valid, pc.is_valid(values))
    if values.offset or valid.offset or not pa.types.is_string(values.type):
        return pc.if_else(dash, pa.scalar(None, values.type), values)
    return pa.Array.from_buffers(
        values.type, len(values), [valid.buffers()[1], *values.buffers()[1:]]
    )


@dataclass
class ParsedAccess:
    """What :func:`parse_lines` returns: typed columns of the parsed rows and their positions."""

    rows: pa.Array
    """int64 positions (in the input) of the parsed lines, ascending."""
    columns: dict[str, pa.Array]
    """``timestamp`` and every envoy_access column the formats fill, aligned with ``rows``."""
    unparsed: pa.Array
    """int64 positions of the lines no format matched."""
    rounded: pa.Array = dataclasses.field(default_factory=lambda: pa.array([], pa.int64()))
    """int64 positions (in the input, ascending) of the parsed JSON lines with a number that has
    a fraction, stored rounded in its integer column (:mod:`.envoy_json`)."""
    too_large: pa.Array = dataclasses.field(default_factory=lambda: pa.array([], pa.int64()))
    """int64 positions (in the input, ascending) of the parsed JSON lines with a number past its
    column's digits, stored NULL (:mod:`.envoy_json`)."""


def _convert(
    fmt: EnvoyFormat, matched: pa.StructArray, timestamp: pa.Array | None = None
) -> dict[str, pa.Array]:
    """Typed columns of the matched values; ``timestamp``: the rows' times, when the parser
    already has them (else converted from ``start`` and ``start_frac``)."""
    if timestamp is not None:
        out = {"timestamp": timestamp}
    elif fmt.time_format is not None:
        out = {"timestamp": fmt.time_format.to_timestamp(matched.field("start"))}
    else:
        start, frac = matched.field("start"), matched.field("start_frac")
        out = {"timestamp": start_time_to_timestamp(start, frac)}
    n = len(matched)
    for name in STRING_COLUMNS:
        if name in fmt.columns:
            values = matched.field(name)
            out[name] = _dash_to_null(values) if name in DASH_IS_NULL else values
        else:
            out[name] = pa.nulls(n, pa.string())
    for name, typ in INT_COLUMNS.items():
        if name in fmt.columns:
            out[name] = pc.cast(_dash_to_null(matched.field(name)), typ)
        else:
            out[name] = pa.nulls(n, typ)
    return out


Attempt = Callable[[pa.Array], tuple[pa.Array, dict[str, pa.Array]]]
"""A parser: lines -> (mask of the lines it parsed, typed columns of those lines)."""


def format_matches(lines: pa.Array, pattern: str) -> pa.Array:
    """Which ``lines`` (valid UTF-8, no NULLs) a compiled format ``pattern`` matches.

    Matched as bytes: RE2 then runs its DFA over Latin-1, ~20% faster on Envoy lines than over
    UTF-8 (smaller states). Same answers, for every pattern :func:`compile_format` builds:
    their classes and counted repetitions are of ASCII characters (``\\d{1,9}``, ``[A-Za-z]{3}``),
    a class that excludes ASCII characters (``[^"]*``, ``\\S+``) takes a multi-byte character's
    bytes as it took the character, and a literal's UTF-8 bytes match the same bytes.
    """
    as_bytes = pa.large_binary() if pa.types.is_large_string(lines.type) else pa.binary()
    return pc.match_substring_regex(lines.view(as_bytes), pattern)


def text_attempt(fmt: EnvoyFormat, pattern: str) -> Attempt:
    def run(lines: pa.Array) -> tuple[pa.Array, dict[str, pa.Array]]:
        # Matching alone (no captures) first: most lines that reach a later format's regex do
        # not fit it, and capturing costs several times more than refusing.
        ok = pc.fill_null(format_matches(lines, pattern), False)
        if not pc.any(ok).as_py():
            return ok, {}
        return ok, _convert(fmt, pc.extract_regex(lines.filter(ok), pattern))

    return run


def attempts_for(formats: tuple[EnvoyFormat, ...], json_logs: bool = True) -> list[Attempt]:
    """JSON access logs first (they start with ``{``), then the text formats in three rounds,
    each in the order of ``formats`` (configured ones first, README): every format's split
    plan, every strict regex, then every lenient regex. The :data:`LATER_FORMATS` among
    ``formats`` get their three rounds after all that, on the lines the others left (the
    built-in ones: the same text configured keeps its place, :func:`_built_in_later`).

    By rounds, not format by format: a line whose quoted values hold no quote is read by the
    format of its shape, whichever comes first, and a lenient regex only sees the lines no
    format reads strictly. Configured formats come first in the lenient round too: a
    configured line whose user agent holds a quote was read by a built-in format of the same
    shape (its real IP stored as ``x_forwarded_for``...). A lenient value never runs over the
    ``" "`` between two quoted fields (:data:`_ANY_QUOTED`), so a format shorter than a line
    cannot take it with its last values shifted (a user agent holding the request id)."""
    from aggregator.envoy_json import json_attempt

    attempts: list[Attempt] = [json_attempt] if json_logs else []
    attempts += _rounds(tuple(fmt for fmt in formats if not _built_in_later(fmt)))
    later = tuple(fmt for fmt in formats if _built_in_later(fmt))
    if later:
        attempts.append(_screened(_LATER_SCREEN, _rounds(later)))
    return attempts


def _built_in_later(fmt: EnvoyFormat) -> bool:
    """Whether ``fmt`` is one of :data:`LATER_FORMATS` itself, not an equal one: the same text
    given with ``--envoy-format`` (as Emissary's or Kuma's had to be before they were built in)
    keeps its configured place, tried first and in order: moved behind the other formats, it
    would leave a line that another configured format fits too to that one."""
    return any(fmt is built_in for built_in in LATER_FORMATS)


def _screened(screen: str, attempts: list[Attempt]) -> Attempt:
    """``attempts`` run in turn (as :func:`parse_lines` runs them) on only the lines that match
    ``screen``, a pattern every line they can parse matches: one refused match for each other
    line, not one per attempt (Envoy's own diagnostics reach every attempt: nothing parses
    them)."""

    def run(lines: pa.Array) -> tuple[pa.Array, dict[str, pa.Array]]:
        candidates = pc.fill_null(format_matches(lines, screen), False)
        if not pc.any(candidates).as_py():
            return candidates, {}
        parsed = _run(lines.filter(candidates), attempts)
        taken = np.zeros(pc.sum(candidates).as_py(), dtype=bool)
        taken[parsed.rows.to_numpy()] = True
        return pc.fill_null(_scatter(candidates, pa.array(taken)), False), parsed.columns

    return run


def _rounds(formats: tuple[EnvoyFormat, ...]) -> list[Attempt]:
    """The split, strict and lenient rounds of :func:`attempts_for` over ``formats``."""
    from aggregator.envoy_split import split_attempt, split_plan

    plans = (split_plan(fmt) for fmt in formats)
    attempts = [split_attempt(plan) for plan in plans if plan is not None]
    attempts += [text_attempt(fmt, fmt.strict_pattern) for fmt in formats if fmt.strict_pattern]
    attempts += [text_attempt(fmt, fmt.pattern) for fmt in formats]
    return attempts


def parse_lines(
    lines: pa.Array, formats: tuple[EnvoyFormat, ...] = BUILTIN_FORMATS, json_logs: bool = True
) -> ParsedAccess:
    """Parse a batch of lines with each parser in turn (vectorised; see the module docstring).

    Each parser only sees the lines the previous ones left; a line whose ``timestamp`` does not
    convert (e.g. month 13, or year 0) is left for the next parser and in the end returned as
    unparsed.
    """
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    return _run(lines, attempts_for(formats, json_logs))


def _run(lines: pa.Array, attempts: list[Attempt]) -> ParsedAccess:
    """:func:`parse_lines` with the parsers given."""
    remaining = pa.array(np.arange(len(lines), dtype=np.int64))  # pa.array(range): ~0.2 µs a line
    todo = lines
    rows: list[pa.Array] = []
    parts: list[dict[str, pa.Array]] = []
    marked: dict[str, list[pa.Array]] = {key: [] for key in MARKS}
    for attempt in attempts:
        if len(todo) == 0:
            break
        try:
            ok, converted = attempt(todo)
        except (pa.ArrowException, LookupError, ValueError, TypeError) as exc:
            # A parser bug on some input must not fail the segment's flush (it would end in
            # quarantine with every other line of it): those lines go on to the next parsers
            # and, if none takes them, to container_logs, counted as unparsed.
            log.error(
                "an Envoy access-log parser failed on a batch of %d lines (%s: %s); they are "
                "tried with the next formats, else kept as unparsed lines",
                len(todo),
                type(exc).__name__,
                exc,
            )
            continue
        if converted:
            # Only JSON numbers are ever marked (rounded, too large).
            marks = {key: converted.pop(key) for key in MARKS if key in converted}
            good = _fileable(converted["timestamp"])
            if pc.all(good).as_py():
                rows.append(remaining.filter(ok))
                parts.append(converted)
            else:
                rows.append(remaining.filter(ok).filter(good))
                parts.append({k: v.filter(good) for k, v in converted.items()})
                ok = pc.and_(ok, pc.fill_null(_scatter(ok, good), False))
                marks = {key: mark.filter(good) for key, mark in marks.items()}
            for key, mark in marks.items():
                if pc.any(mark).as_py():
                    marked[key].append(rows[-1].filter(mark))
        if pc.any(ok).as_py():  # else no copy: most attempts refuse every line left to them
            todo = todo.filter(pc.invert(ok))
            remaining = remaining.filter(pc.invert(ok))
    # JSON lines, the only ones marked, are the first attempt's: in input order already.
    cut, large = (
        pa.concat_arrays(marked[key]) if marked[key] else pa.array([], pa.int64()) for key in MARKS
    )
    if not parts:
        return ParsedAccess(pa.array([], pa.int64()), {}, remaining)
    if len(parts) == 1:  # rows of one parser are already in input order
        return ParsedAccess(rows[0], parts[0], remaining, cut, large)
    row_index = pa.concat_arrays(rows)
    columns = {k: pa.concat_arrays([p[k] for p in parts]) for k in parts[0]}
    order = pc.sort_indices(row_index)
    return ParsedAccess(
        rows=row_index.take(order),
        columns={k: v.take(order) for k, v in columns.items()},
        unparsed=remaining,
        rounded=cut,
        too_large=large,
    )


#: START_TIMEs a row can have: a ``dt`` partition names years 1 to 9999 (0000-01-01 would stop
#: the flush of its whole segment); a line printed outside them is kept as an unparsed line.
MIN_START_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_START_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _fileable(timestamps: pa.Array) -> pa.Array:
    """True where the time is valid and within MIN_START_MS..MAX_START_MS."""
    ms = pc.cast(timestamps, pa.int64())
    inside = pc.and_(pc.greater_equal(ms, MIN_START_MS), pc.less_equal(ms, MAX_START_MS))
    return pc.fill_null(inside, False)


def _scatter(mask: pa.Array, values: pa.Array) -> pa.Array:
    """Spread ``values`` (one per True of ``mask``) back to ``mask``'s length (NULL elsewhere)."""
    positions = pc.cumulative_sum(pc.cast(mask, pa.int64()))
    index = pc.if_else(mask, pc.subtract(positions, 1), pa.scalar(None, pa.int64()))
    return pc.take(values, index)
