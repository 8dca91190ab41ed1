"""Envoy JSON access logs (``json_format`` and typed JSON) -> ``envoy_access`` columns.

Envoy writes one JSON object per line; with ``json_format`` every value is a string (``"-"`` when
unset), with typed JSON numbers stay numbers and unset values are ``null``. The keys are whatever
the operator configured; the usual names (Envoy's docs, Istio's and Envoy Gateway's defaults) are
recognised, see :data:`ALIASES`, line by line (one batch mixes services and their spellings). A
batch of lines starting with ``{`` is read at once by ``pyarrow.json``; when the batch mixes
shapes the reader cannot unify (``"-"`` here, ``12`` there), it is read again with the number
keys' quoted values unquoted; lines no bulk read takes (``"200.0"`` beside ``200``, a number
past int64 beside a fraction, a broken line) are read with ``json.loads`` one by one, the rest
of their batch in bulk (:mod:`.envoy_json_odd`). A line
without a parsable ``start_time`` or ``response_code`` is not an access line and is left to the
next parser.

A value of another JSON type than its column's is converted, never dropped for it (every reader
gives the same row, :func:`_read_slow` being the reference):

* a string column keeps a number, boolean, object or array as its compact JSON text (``12``,
  ``true``, ``{"a":1}``), as Fluent Bit and Vector coerce one to a string;
* a number column reads a number as its value, in JSON's spelling or as a string (``12``,
  ``"12"``, ``12.0``, ``1e3``); ``"-"``, ``""``, ``null``, booleans, objects, arrays, other text
  and numbers past the column's digits (9 for an int column, 18 for a bigint one) are NULL, as
  the text formats' ``-`` is. Envoy's own numbers are whole
  (``%DURATION%`` is milliseconds, truncated by Envoy); a number with a fraction
  (``"duration": 1.5``, from another program's JSON) is stored rounded to the nearest whole
  number, halves up (``1.5`` -> 2, as Athena's and DuckDB's ``CAST(1.5 AS INTEGER)``), and its
  line counted in
  ``logq_aggregator_envoy_numbers_rounded_total`` (:data:`aggregator.envoy.ROUNDED`): it was
  cut, ``1.9`` stored as 1 and ``"1.9"`` as NULL, uncounted. Not a ``response_code``
  (:data:`WHOLE_ONLY`): a status is a code, not a quantity, and ``200.5`` rounded made a 201
  that was never sent; the line has no status, as a text line with ``200.5`` for
  ``%RESPONSE_CODE%`` has none: unparsed, in ``container_logs``, counted as a parse failure;
* a number is read by its decimal digits, never through a double where a double could change
  it: ``"9007199254740993.0"`` and ``9007199254740993.0`` are 9007199254740993 (past 2^53 a
  double holds every other whole number only, and it was stored as ...992), in every reader
  (:data:`_LONG_DIGITS`), and one past a double's range too (``1e-400`` is a fraction, rounded
  and counted, ``2e308`` a number too large: :data:`_FAR_EXPONENT`);
* a number past its column's digits is NULL, the rest of its line stored, and the line counted
  in ``logq_aggregator_envoy_numbers_too_large_total`` (:data:`aggregator.envoy.TOO_LARGE`): a
  ``bytes_sent`` past int64 was NULL uncounted, and the same line in a text format is unparsed.
  Not a ``response_code``: without a status the line is unparsed, as a text line is;
* a negative number (``-1``, ``"-1"``, ``-0.4``; not ``-0`` nor ``-0.0``: 0) in any number
  column leaves its line unparsed (:data:`NEGATIVE`), in ``container_logs``, counted in
  ``logq_aggregator_envoy_parse_failures_total``, as a text line with ``-5`` for
  ``%BYTES_SENT%`` is: no count, duration or status is below 0, so the line is not Envoy's
  access line as the column reads it (such a value was NULL, its line stored, counted
  nowhere). The too-large counter does not take it: a negative is not past the column's
  digits, and a metric's name, once shipped, is not changed to say so.
"""

from __future__ import annotations

import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from aggregator.envoy import (
    DASH_IS_NULL,
    INT_COLUMNS,
    ROUNDED,
    STRING_COLUMNS,
    TOO_LARGE,
    _dash_to_null,
    start_time_to_timestamp,
)
from aggregator.envoy_json_odd import blamed_rows, conflicting_key, merged
from aggregator.envoy_split import _usual_timestamp
from aggregator.string_bytes import offsets_and_bytes

#: envoy_access column -> JSON keys that hold it, most usual first.
ALIASES: dict[str, tuple[str, ...]] = {
    "start": ("start_time", "START_TIME", "timestamp", "@timestamp"),
    "method": ("method", ":method", "request_method"),
    # Envoy Gateway's default JSON names the path "x-envoy-origin-path" (sic).
    "path": ("path", "x-envoy-original-path", "x-envoy-origin-path", ":path", "request_path"),
    "protocol": ("protocol", "request_protocol"),
    "response_code": ("response_code", "status", "status_code"),
    "response_flags": ("response_flags",),
    "bytes_received": ("bytes_received",),
    "bytes_sent": ("bytes_sent",),
    "duration_ms": ("duration", "duration_ms"),
    "upstream_service_time_ms": ("upstream_service_time", "x-envoy-upstream-service-time"),
    "x_forwarded_for": ("x_forwarded_for", "x-forwarded-for"),
    "user_agent": ("user_agent", "user-agent"),
    "request_id": ("request_id", "x-request-id"),
    "authority": ("authority", ":authority", "host"),
    "upstream_host": ("upstream_host",),
}
_INT_LIMITS = {pa.int32(): 9, pa.int64(): 18}
#: Number columns whose fraction is not rounded away: the line's number is NULL instead (a
#: ``response_code``: NULL makes the line no access line, module docstring).
WHOLE_ONLY = frozenset({"response_code"})
#: 16 digits in a row, or with a dot among them: more than a double is sure to keep. A number
#: of 15 digits or fewer below 2^53 reads as a double whose nearest whole number (halves up) is
#: its own, and whose shortest text (Arrow's, Python's ``repr``) gives those digits back; one of
#: more digits, or past 2^53, may not (``9007199254740993.0`` reads as ...992.0, and
#: ``0.49999999999999999`` as 0.5): those are read by their digits (:func:`_exact`).
_LONG_DIGITS = r"\d(?:\.?\d){15}"
#: Every whole number up to this is a double of its own; past it, every other one only.
_EXACT_DOUBLES = 2.0**53
#: An exponent of 3 digits or more: a number that may be past the doubles (``1e-400`` reads as
#: 0.0, a fraction read as the whole number 0, uncounted; ``2e308`` as ``inf``, no number).
_FAR_EXPONENT = r"[eE][+-]?\d{3}"
#: An unquoted JSON number of :data:`_LONG_DIGITS` or :data:`_FAR_EXPONENT`: where the bulk
#: reader's double may have lost digits (:func:`_read_bulk`). Any key's, in a string too: only
#: a batch with a number key the reader typed double is checked, and a false match only sends
#: its line to :func:`_read_slow`.
_LONG_NUMBER = r"[:,\[]\s*-?(?:" + _LONG_DIGITS + r"|[\d.]+" + _FAR_EXPONENT + ")"
#: A number as JSON spells it, or as :func:`_text` and :func:`_number_text` print one: a number
#: column's text that holds no plain digits but still a number. With its sign: ``-0``,
#: ``"-0"`` and ``-0.0`` are 0, as ``0`` is (a negative number is NULL, :func:`_number`).
_DECIMAL = r"^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$"
#: Texts that hold no number: json_format prints an unset number as ``"-"`` (the re-read of
#: :func:`_numbers_unquoted` makes them null, so every reader must treat them as absent).
UNSET_NUMBERS = pa.array(["-", ""], pa.string())
#: A :data:`_DECIMAL` below 0: a minus, then a digit other than 0 before any exponent (``-0``,
#: ``-0.0`` and ``-0e5`` are 0; ``-1e-400`` is below 0, though a double holds it as -0.0: the
#: bulk reader's double never gives such a number, :data:`_LONG_NUMBER`).
_BELOW_ZERO = r"^-[\d.]*[1-9]"
#: The keys of the number columns.
_NUMBER_NAMES = frozenset(key for column in INT_COLUMNS for key in ALIASES[column])
#: The keys of the string columns (times apart: the reader keeps them strings).
_STRING_KEYS = tuple(key for column in STRING_COLUMNS for key in ALIASES[column])
#: The same as a regex alternation (see :func:`_numbers_unquoted`).
_NUMBER_KEYS = "|".join(
    dict.fromkeys(re.escape(key) for column in INT_COLUMNS for key in ALIASES[column])
)


#: Most ``[`` and ``{`` one line may hold (in strings too) to be read as JSON. An access-log
#: line holds a few; a line nested 40,000 deep (80 KB) overflowed the stack of pyarrow's JSON
#: reader: the aggregator died at the flush (SIGSEGV), and again at every restart, replaying it
#: from the buffer. 10,000 deep took 20 s of a flush. A line over this is no access line: it
#: goes on to the text formats, and to container_logs, counted as unparsed.
MAX_JSON_OPENINGS = 256


def json_attempt(lines: pa.Array) -> tuple[pa.Array, dict[str, pa.Array]]:
    """Parse the lines that look like JSON objects; see the module docstring."""
    looks = _looks_like_json(lines)
    if not pc.any(looks).as_py():
        return looks, {}
    candidates = lines.filter(looks)
    # Brackets and braces counted by RE2: ~0.7 µs a 550-byte line, a third less than numpy's
    # compare-and-reduce over their bytes.
    shallow = pc.less_equal(pc.count_substring_regex(candidates, r"[\[{]"), MAX_JSON_OPENINGS)
    if not pc.all(shallow).as_py():  # too nested to read: left to the text formats
        looks = _spread(looks, shallow)
        candidates = candidates.filter(shallow)
        if not len(candidates):
            return looks, {}
    raw = _read(candidates)
    columns = _typed(raw)
    ok_rows = pc.and_(pc.is_valid(columns["timestamp"]), pc.is_valid(columns["response_code"]))
    ok_rows = pc.and_not(pc.fill_null(ok_rows, False), columns.pop(NEGATIVE))
    mask = _spread(looks, ok_rows)
    return mask, {k: v.filter(ok_rows) for k, v in columns.items()}


def _looks_like_json(lines: pa.Array) -> pa.Array:
    """Which lines start with ``{`` once leading whitespace is trimmed (NULLs: False).

    A line's first byte tells, unless it may begin whitespace (ASCII blanks and controls, any
    non-ASCII byte): only such lines are trimmed (``utf8_ltrim_whitespace``, the rule), which
    spares copying every line of a text access-log batch to look at one byte of each."""
    if not pa.types.is_string(lines.type) or not len(lines):  # (large strings: the rule)
        return pc.fill_null(pc.starts_with(pc.utf8_ltrim_whitespace(lines), "{"), False)
    offsets, data = offsets_and_bytes(lines)
    starts = offsets[:-1]
    filled = offsets[1:] > starts
    first = np.zeros(len(lines), np.uint8)
    first[filled] = data[starts[filled]]
    looks = first == ord("{")
    unsure = filled & ((first <= ord(" ")) | (first > ord("~")))
    if unsure.any():
        rows = np.flatnonzero(unsure)
        trimmed = pc.utf8_ltrim_whitespace(lines.take(pa.array(rows)))
        told = pc.fill_null(pc.starts_with(trimmed, "{"), False)
        looks[rows] = told.to_numpy(zero_copy_only=False)
    if lines.null_count:
        looks &= lines.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(looks)


#: The lines with a negative number in a number column (:func:`_typed`): no access lines, as a
#: text line with ``-5`` for ``%BYTES_SENT%`` is none (module docstring).
NEGATIVE = "_negative_number"


#: Bulk reads :func:`_read` tries before it reads a batch line by line: each after one refusal,
#: of the lines not yet blamed for one, or with the numbers unquoted (one round). A batch of
#: lines odd in as many ways (four keys each typed two ways) is rare, or made so: each refused
#: read cost up to a whole bulk read (~3 µs a line), so such a batch costs what line by line
#: did (~32 µs a line) plus those (~45): bounded, where more rounds would let it cost more.
_ROUNDS = 4


def _read(candidates: pa.Array) -> dict[str, pa.Array]:
    """Column -> string values (None where absent), one per candidate line; a number column of
    typed JSON stays integers (:func:`_as_strings`) unless some lines were read line by line.

    In bulk while the reader takes the batch; when it refuses it, the lines to blame
    (:func:`~aggregator.envoy_json_odd.blamed_rows`) are set apart for :func:`_read_slow` and
    the rest read in bulk again: one number past int64 or one ``"200.0"`` beside typed numbers
    sent the whole batch line by line (~10x the cost of the batch)."""
    odd = np.zeros(len(candidates), bool)
    unquote = False
    for _ in range(_ROUNDS):
        rest = candidates.filter(pa.array(~odd)) if odd.any() else candidates
        lines = _numbers_unquoted(rest) if unquote else rest
        try:
            values, redo = _read_bulk(lines)
        except (pa.ArrowException, ValueError) as error:  # (any error of the reader)
            if not unquote and _quoted_beside_typed(rest, error):
                unquote = True
                continue
            blamed = blamed_rows(lines, error)
            if blamed is None:
                break
            odd[np.flatnonzero(~odd)[blamed]] = True
            continue
        if redo is not None:  # read, but some lines' values are not theirs
            values = {name: column.filter(pa.array(~redo)) for name, column in values.items()}
            odd[np.flatnonzero(~odd)[redo]] = True
        if not odd.any():
            return values
        return merged(odd, _read_slow(candidates.filter(pa.array(odd))), values)
    return _read_slow(candidates)


def _quoted_beside_typed(lines: pa.Array, error: Exception) -> bool:
    """Whether the bulk reader refused ``lines`` for a number key typed as strings in some
    lines and numbers in others, and some of its strings are what :func:`_numbers_unquoted`
    rewrites (else the re-read cannot help: a broken line, a ``"200.0"``). That key's regex
    alone: it stops at the key, where all of them read every line to its end."""
    key = conflicting_key(error)
    if key not in _NUMBER_NAMES:
        return False
    quoted = rf'"{re.escape(key)}"\s*:\s*' + _QUOTED_NUMBER
    return pc.any(pc.match_substring_regex(lines, quoted)).as_py()


def _read_bulk(candidates: pa.Array) -> tuple[dict[str, pa.Array], np.ndarray | None]:
    """:func:`_read` with ``pyarrow.json``: ArrowInvalid when two lines type a key differently.
    With the values, the lines whose values it cannot give back (None: none), to be read by
    :func:`_read_slow` (their values here are not theirs): a number a double may have changed,
    a string column's value the reader typed otherwise (:func:`_unreadable`). (Such a line sent
    its whole batch line by line.)"""
    n = len(candidates)
    # Times stay strings (the reader would otherwise infer timestamps in its own way). Not the
    # string columns' keys: an explicit schema for them cost the reader ~0.4 µs a line more
    # (13%); what it infers there is checked instead (_json_texts).
    times = pa.schema([(k, pa.string()) for k in ALIASES["start"]])
    options = pajson.ParseOptions(explicit_schema=times, newlines_in_values=False)
    table = pajson.read_json(_ndjson(candidates), parse_options=options)
    if table.num_rows != n:
        raise ValueError("row count changed")
    redo = [_unreadable(table[key]) for key in _STRING_KEYS if key in table.column_names]
    doubles = any(
        pa.types.is_floating(field.type) for field in table.schema if field.name in _NUMBER_NAMES
    )
    if doubles:
        # A number key typed double (a fraction, or past int64, in some line) whose digits the
        # double may not hold: 12345678901234567890 became -9223372036854775808 here, and
        # 9007199254740993.0 became ...992.
        redo.append(pc.fill_null(pc.match_substring_regex(candidates, _LONG_NUMBER), False))
    values = {col: _as_strings(table, keys, n, col in INT_COLUMNS) for col, keys in ALIASES.items()}
    odd = [rows.to_numpy(zero_copy_only=False) for rows in redo if rows is not None]
    odd = [rows for rows in odd if rows.any()]
    return values, (np.logical_or.reduce(odd) if odd else None)


def _ndjson(lines: pa.Array) -> pa.Buffer:
    """``lines`` (no NULLs) as newline-delimited JSON: their bytes with a newline after each,
    joined by one Arrow kernel (~0.04 µs a line; numpy's ``insert``, a mask over every byte,
    cost ~0.27, and a Python string per line ~0.8). Invalid UTF-8 is left to the reader, which
    refuses it as ``json.loads`` would."""
    if not len(lines):
        return pa.py_buffer(b"")
    empty = pa.scalar("", lines.type)  # each line, then "" after a newline:
    joined = pc.binary_join_element_wise(lines, empty, pa.scalar("\n", lines.type))
    width = np.int64 if pa.types.is_large_string(joined.type) else np.int32
    ends = np.frombuffer(joined.buffers()[1], width)[
        joined.offset : joined.offset + len(joined) + 1
    ]
    return joined.buffers()[2].slice(int(ends[0]), int(ends[-1] - ends[0]))


#: A number key and its colon (group 1), then a quoted value :func:`_numbers_unquoted` rewrites.
_NUMBER_KEY = rf'("(?:{_NUMBER_KEYS})"\s*:\s*)'
_QUOTED_NUMBER = r'"(?:\d{1,18}|-?)"'


def _numbers_unquoted(lines: pa.Array) -> pa.Array:
    """``lines`` with the number keys' quoted values as JSON numbers (``"12"`` -> ``12``) or null
    (``"-"``, ``""``): ``json_format`` prints strings, typed JSON numbers, and one batch mixes
    services; the bulk reader refuses a key it sees as both, and the per-line fallback costs
    ~10x. (A key inside a string value has its quotes escaped: it does not match.)"""
    digits = pc.replace_substring_regex(lines, _NUMBER_KEY + r'"(\d{1,18})"', r"\1\2")
    return pc.replace_substring_regex(digits, _NUMBER_KEY + r'"-?"', r"\1null")


def _as_strings(table: pa.Table, keys: tuple[str, ...], n: int, number: bool) -> pa.Array:
    """Per line, the first of ``keys`` it holds a value for, as text (a ``number`` column of
    typed JSON as the reader's integers). Per line, not per batch:
    one batch mixes services, whose formats may name a column differently (Istio's ``path``,
    Envoy Gateway's ``x-envoy-origin-path``). For a ``number`` column ``"-"`` and ``""`` hold
    no value (:data:`UNSET_NUMBERS`), as in every reader of this module, so a line's value never
    depends on which reader its batch needed."""
    present = [table[key] for key in keys if key in table.column_names]
    if not number:
        texts = [_json_texts(column) for column in present]
        if not texts:
            return pa.nulls(n, pa.string())
        return texts[0] if len(texts) == 1 else pc.coalesce(*texts)
    # A key the reader typed as objects, arrays or booleans holds no number: left unread.
    # (Read, pyarrow 26's list<null> of a line holding [null, null] is invalid: combining it
    # raised ArrowIndexError, and the batch's JSON lines went unparsed.)
    columns = [column.combine_chunks() for column in present if not _no_number(column.type)]
    types = {column.type for column in columns}
    if len(types) == 1 and pa.types.is_integer(next(iter(types))):
        # Typed JSON: whole numbers stay numbers, range-checked by _typed as their digits are
        # (a key the reader typed otherwise, e.g. double for a number past 2^63: as text).
        return columns[0] if len(columns) == 1 else pc.coalesce(*columns)
    found = [
        pc.if_else(pc.is_in(f, UNSET_NUMBERS), pa.scalar(None, pa.string()), f)
        for f in map(_text, columns)
    ]
    if not found:
        return pa.nulls(n, pa.string())
    return found[0] if len(found) == 1 else pc.coalesce(*found)


def _json_texts(column: pa.ChunkedArray) -> pa.Array:
    """A string column's values as :func:`_json_text` gives them: strings as they are, whole
    numbers as digits, booleans as ``true``/``false``; NULL where :func:`_unreadable`."""
    typ = column.type
    if pa.types.is_string(typ):
        return column.combine_chunks()
    if _readable_text(typ):
        return pc.cast(column.combine_chunks(), pa.string())
    return pa.nulls(len(column), pa.string())


def _readable_text(typ: pa.DataType) -> bool:
    """Whether the bulk reader's values of type ``typ`` give back a string column's text."""
    return (
        pa.types.is_string(typ)
        or pa.types.is_integer(typ)
        or pa.types.is_boolean(typ)
        or pa.types.is_null(typ)
    )


def _unreadable(column: pa.ChunkedArray) -> pa.Array | None:
    """The rows of a string column's key whose text the reader's values cannot give back
    (:func:`_read_slow` reads those lines); None: none. A double's JSON spelling (``12.0``), an
    object's or array's text (the reader merges a batch's objects into one struct), an ISO-8601
    text it typed as a timestamp (printed back otherwise)."""
    if _readable_text(column.type):
        return None
    return pc.is_valid(column.combine_chunks())


def _no_number(typ: pa.DataType) -> bool:
    """Whether a column of the bulk reader's type ``typ`` holds no number: objects, arrays and
    booleans, NULL in a number column as in :func:`_read_slow`."""
    return pa.types.is_nested(typ) or pa.types.is_boolean(typ)


def _text(column: pa.Array) -> pa.Array:
    """A number column of the bulk reader (strings, numbers or nulls: :func:`_no_number`) as
    text: whole numbers as digits, others as Arrow prints a double, its shortest text (``1.5``,
    ``1e+17``: :data:`_DECIMAL`), the digits of the line when they were 15 or fewer (a double
    that may have changed a number sent its line to :func:`_read_slow`, :func:`_read_bulk`)."""
    return pc.cast(column, pa.string())


def _read_slow(candidates: pa.Array) -> dict[str, pa.Array]:
    """:func:`_read` with ``json.loads``, line by line: the reference of every other reader."""
    objects: list[dict[str, Any]] = []
    for line in candidates.to_pylist():
        try:
            obj = json.loads(line, parse_float=_decimal)
        except (TypeError, ValueError):
            obj = {}
        objects.append(obj if isinstance(obj, dict) else {})
    out = {}
    for col, keys in ALIASES.items():
        number = col in INT_COLUMNS
        unset = {None, *UNSET_NUMBERS.to_pylist()} if number else {None}
        values = []
        for obj in objects:
            texts = (_number_text(v) if number else _json_text(v) for v in map(obj.get, keys))
            values.append(next((t for t in texts if t not in unset), None))
        out[col] = pa.array(values, pa.string())
    return out


def _decimal(text: str) -> Decimal | float:
    """A JSON number with a fraction or an exponent as :func:`_read_slow` reads it: its exact
    value (a float lost ``9007199254740993.0``'s last digit); a float for an exponent past what
    :class:`~decimal.Decimal` holds (``1e9999999999999999999``: ``inf``, as the bulk reader)."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return float(text)


def _number_text(value: Any) -> str | None:
    """A JSON value of a number column as text, as :func:`_text` gives it: a number's digits
    (``1.5``, ``1E+17`` for a :func:`_decimal`), a string as is; None for null, objects, arrays,
    booleans and Python's ``NaN`` and ``Infinity`` (no JSON, but ``json.loads`` reads them)."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return str(value)


def _json_text(value: Any) -> str | None:
    """A JSON value of a string column as text: a string as is, anything else as its compact
    JSON (``12``, ``1.5``, ``true``, ``{"a":1}``, ``["x"]``), as Fluent Bit and Vector coerce a
    value to a string; None for null. A number with a fraction or exponent is printed as a
    double is (``1e3``: ``1000.0``), as before :func:`_decimal` read it exactly."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=float)


def _typed(raw: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The ``envoy_access`` columns of :func:`_read`'s values, :data:`ROUNDED`,
    :data:`TOO_LARGE` and :data:`NEGATIVE` (the lines to refuse)."""
    out = {"timestamp": _times(raw["start"])}
    for name in STRING_COLUMNS:
        values = raw[name]
        out[name] = _dash_to_null(values) if name in DASH_IS_NULL else values
    marks: dict[str, pa.Array | None] = {ROUNDED: None, TOO_LARGE: None, NEGATIVE: None}
    for name, typ in INT_COLUMNS.items():
        out[name], cut, large, negative = _number(raw[name], typ)
        if cut is not None and name in WHOLE_ONLY:
            out[name], cut = pc.if_else(cut, pa.scalar(None, typ), out[name]), None
        for key, mark in ((ROUNDED, cut), (TOO_LARGE, large), (NEGATIVE, negative)):
            if mark is not None:
                before = marks[key]
                marks[key] = mark if before is None else pc.or_(before, mark)
    n = len(out["timestamp"])
    for key, mark in marks.items():
        out[key] = pa.array(np.zeros(n, bool)) if mark is None else mark
    return out


def _number(
    values: pa.Array, typ: pa.DataType
) -> tuple[pa.Array, pa.Array | None, pa.Array | None, pa.Array | None]:
    """A number column's values as ``typ`` (module docstring), which were rounded, which were
    past the column's digits and which were negative (None: none; the usual batch, whose
    numbers are all digits that fit, costs one regex as before)."""
    digits = _INT_LIMITS[typ]
    limit = 10**digits
    if pa.types.is_integer(values.type):  # typed JSON: the numbers whose digits would fit
        low, high = (pc.min_max(values)[key].as_py() for key in ("min", "max"))
        if high is None or (low >= 0 and high < limit):
            return pc.cast(values, typ), None, None, None
        fits = pc.and_(pc.greater_equal(values, 0), pc.less(values, limit))
        large = pc.fill_null(pc.greater_equal(values, limit), False)
        negative = pc.fill_null(pc.less(values, 0), False) if low < 0 else None
        kept = pc.cast(pc.if_else(fits, values, pa.scalar(None, values.type)), typ)
        return kept, None, large, negative
    plain = pc.fill_null(pc.match_substring_regex(values, rf"^\d{{1,{digits}}}$"), False)
    whole = pc.cast(pc.if_else(plain, values, pa.scalar(None, pa.string())), typ)
    if pc.all(pc.or_(plain, pc.is_null(values))).as_py():
        return whole, None, None, None
    other = pc.and_(
        pc.invert(plain), pc.fill_null(pc.match_substring_regex(values, _DECIMAL), False)
    )
    if not pc.any(other).as_py():
        return whole, None, None, None
    texts = pc.if_else(other, values, pa.scalar(None, pa.string()))
    negative = pc.fill_null(pc.match_substring_regex(texts, _BELOW_ZERO), False)
    number = pc.cast(texts, pa.float64())
    near = pc.round(number, round_mode="half_up")
    # A negative number is NULL (its line refused: _typed); -0.0 is 0 (IEEE: not below 0).
    positive = pc.fill_null(pc.greater_equal(number, 0), False)
    fits = pc.and_(positive, pc.fill_null(pc.less(near, float(limit)), False))
    kept = pc.cast(pc.if_else(fits, near, pa.scalar(None, pa.float64())), typ)
    cut = pc.fill_null(pc.and_(fits, pc.not_equal(near, number)), False)
    large = pc.and_not(pc.and_(other, positive), fits)
    # Of many digits (16 characters: no regex, the usual fraction is short), or past 2^53 in a
    # bigint column (in an int one it is too large anyway), the double may not be the number:
    # read by its digits (:data:`_LONG_DIGITS`); so may a 0.0 (``1e-400``: below the least
    # double, a fraction). Three reductions decide for the usual batch.
    lengths = pc.binary_length(texts)
    huge = limit > _EXACT_DOUBLES and pc.max(number).as_py() >= _EXACT_DOUBLES
    if huge or pc.max(lengths).as_py() >= 16 or pc.any(pc.equal(number, 0)).as_py():
        doubtful = pc.or_(pc.greater_equal(number, _EXACT_DOUBLES), pc.greater_equal(lengths, 16))
        doubtful = pc.or_(doubtful, pc.equal(number, 0))
        kept, cut, large = _exact(
            texts, pc.fill_null(doubtful, False), kept, cut, large, limit, typ
        )
    return pc.coalesce(whole, kept), cut, large, negative


def _exact(
    texts: pa.Array,
    rows: pa.Array,
    kept: pa.Array,
    cut: pa.Array,
    large: pa.Array,
    limit: int,
    typ: pa.DataType,
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """:func:`_number`'s ``kept``, ``cut`` and ``large`` with the ``rows`` of ``texts`` read by
    their decimal digits, one by one (few: Envoy prints whole numbers, which come here only
    past the column's digits). A text :class:`~decimal.Decimal` cannot hold (an exponent of 19
    digits or more) keeps its double's answer; a negative one is NULL (:data:`_BELOW_ZERO`)."""
    values = kept.to_pylist()
    cuts = cut.to_numpy(zero_copy_only=False).copy()
    larges = large.to_numpy(zero_copy_only=False).copy()
    for row in np.flatnonzero(rows.to_numpy(zero_copy_only=False)):
        try:
            number = Decimal(texts[row].as_py())
        except InvalidOperation:
            continue
        if number < 0:
            values[row], cuts[row], larges[row] = None, False, False
            continue
        near = int(number.to_integral_value(rounding=ROUND_HALF_UP)) if number < limit else limit
        fits = near < limit
        values[row] = near if fits else None
        cuts[row] = fits and near != number
        larges[row] = not fits
    return pa.array(values, typ), pa.array(cuts), pa.array(larges)


#: Envoy's default START_TIME, as nearly every JSON access line spells it.
_MILLIS_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def _times(start: pa.Array) -> pa.Array:
    """The start times as ``timestamp[ms, UTC]`` (NULL where there is none or it is invalid):
    in one ISO-8601 cast when every line spells its time as Envoy does by default, as the text
    formats' split parser does; else (a line without one, another spelling, an invalid date)
    through the general conversion, line by line."""
    usual = len(start) and not start.null_count
    if usual and pc.all(pc.match_substring_regex(start, _MILLIS_Z)).as_py():
        timestamp = _usual_timestamp(start)  # the split parser's cast; None: an invalid date
        if timestamp is not None:
            return timestamp
    parts = pc.extract_regex(
        pc.fill_null(start, ""),
        r"^(?P<s>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<f>\d{1,9}))?(?:Z|[+-]00:?00)$",
    )
    # flatten(), not field(): the fields of a line that did not match must be NULL, not "" (one
    # "" fails Arrow's fast cast of the whole batch).
    seconds, fraction = parts.flatten()
    return start_time_to_timestamp(seconds, fraction)


def _spread(mask: pa.Array, values: pa.Array) -> pa.Array:
    """``values`` (one per True of ``mask``) back at ``mask``'s positions; False elsewhere."""
    positions = pc.subtract(pc.cumulative_sum(pc.cast(mask, pa.int64())), 1)
    index = pc.if_else(mask, positions, pa.scalar(None, pa.int64()))
    return pc.fill_null(pc.take(values, index), False)
