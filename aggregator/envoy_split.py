"""A faster parser for simple Envoy formats: split on quotes and spaces instead of capturing.

RE2 spends most of its time filling capture groups: with fifteen of them a batch costs ~3 µs a
line, while checking that a line *matches* (a DFA, no captures) costs ~0.5 µs. For a format whose
values sit between fixed delimiters, like the default one, the values can then be cut out at
those delimiters. A plan is compiled from the format string:

* the format split on ``"`` gives segments; a line that matched the format's strict pattern (no
  quote inside a quoted value) splits into the same number of parts;
* a segment that is exactly one operator (``"%REQ(USER-AGENT)%"``) is that value whole, spaces
  and all; a segment of one operator whose value cannot contain a space between literals
  (``[%START_TIME%] ``) is that value with the literals cut off (the pattern matched, so they are
  there, byte for byte); any other segment is split on single spaces, each token holding at most
  one operator whose value cannot contain a space (a literal prefix/suffix is cut off too).
* literals are cut by bytes (``binary_slice``), not by code points: they are known text, and
  the values between them may hold any UTF-8.
* Envoy's usual ``START_TIME`` (``2018-04-03T23:06:09.123Z`` on every line) is cast to a
  timestamp whole, in one kernel; other spellings take the general conversion.

The cutting itself (:func:`_cut_at`) finds the delimiters with numpy over the batch's bytes and
describes the parts as new offsets into the *same* bytes: nothing is copied until a value is
taken into its column. (``split_pattern`` builds every part with Arrow's builders, ~2x the
cost of the whole cut, then ``take`` copies each value once more.) A batch's quotes are found
once for all the formats' plans (:data:`_last_quotes`): Istio's lines go through the default
format's plan first, which takes none of them.

Which lines the plan takes is what the format's strict regex says, but the regex runs only on
the lines that :func:`_checked` cannot vouch for: the values' bytes checked by class in numpy
(:mod:`.envoy_checks`; ~0.3 µs a line less than the DFA over every byte of every line).

Formats that do not fit (two operators in one token, ``%%``, a free-text operator inside a
multi-token quoted segment) get no plan and use the regex only. Lines the plan does not take
(quotes in a user agent…) are left to the regex attempts that follow.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.envoy import (
    _OPERATORS,
    _TOKEN,
    Attempt,
    EnvoyFormat,
    _convert,
    format_matches,
    operator_key,
)
from aggregator.envoy_checks import Kind, bytes_are, kind_of, no_other_blanks, value_ok
from aggregator.string_bytes import offsets_and_bytes
from athena.schema import TIMESTAMP

#: Operators whose value may hold spaces: only usable as a whole quoted segment.
_FREE_TEXT = frozenset({"REQ(X-FORWARDED-FOR)", "REQ(USER-AGENT)", "REQ(X-REQUEST-ID)"})
#: Operator value patterns that never contain a space (safe to cut out of a space-split token).
_NO_SPACE = frozenset(_OPERATORS) - _FREE_TEXT


@dataclass(frozen=True)
class Field:
    column: str
    segment: int
    token: int | None
    """Index after splitting the segment on spaces; None: the segment is the value."""
    prefix: int
    """UTF-8 bytes of literal text before the value (in its token, or its segment)."""
    suffix: int
    """UTF-8 bytes of literal text after it."""


@dataclass(frozen=True)
class Piece:
    """A segment (``token`` None) or a token of a split line, as :func:`_checked` checks it."""

    segment: int
    token: int | None
    prefix: bytes
    """Literal text before the value; without a value (``kind`` None), the piece's text."""
    suffix: bytes
    kind: Kind | None
    """What the value's pattern accepts (:mod:`.envoy_checks`); None: a literal piece."""
    column: str | None
    """The plan's column holding this piece's value, if any (else it is cut to be checked)."""


@dataclass(frozen=True)
class SplitPlan:
    fmt: EnvoyFormat
    segments: int
    tokens: dict[int, int]
    """Token count of every segment that is split on spaces."""
    fields: tuple[Field, ...]
    pieces: tuple[Piece, ...] | None = None
    """Every piece of a line with what its part of the strict pattern accepts; None when some
    operator's pattern has no known checks (then the regex checks every line)."""


@functools.cache  # a flush parses batch after batch with the same formats
def split_plan(fmt: EnvoyFormat) -> SplitPlan | None:
    """The plan for ``fmt``, or None when the format needs the regex (see module docstring)."""
    if "%%" in fmt.source or not fmt.strict_pattern or fmt.time_format is not None:
        return None
    segments = fmt.source.split('"')
    fields: list[Field] = []
    tokens: dict[int, int] = {}
    seen: set[str] = set()
    pieces: list[tuple[str, int, int | None, str | None]] = []  # (text, segment, token, column)
    for i, seg in enumerate(segments):
        ops = list(_TOKEN.finditer(seg))
        if not ops:
            pieces.append((seg, i, None, None))
            continue
        if len(ops) == 1 and (
            ops[0].span() == (0, len(seg)) or operator_key(ops[0].group(1)) in _NO_SPACE
        ):  # the value whole, or between literals that a cut removes
            m = ops[0]
            where = Field("", i, None, *_literals(seg, m))
            pieces.append((seg, i, None, _add(fields, seen, operator_key(m.group(1)), where)))
            continue
        parts = seg.split(" ")
        tokens[i] = len(parts)
        for j, token in enumerate(parts):
            found = list(_TOKEN.finditer(token))
            if len(found) > 1:
                return None
            if not found:
                pieces.append((token, i, j, None))
                continue
            op = operator_key(found[0].group(1))
            if op in _OPERATORS and op not in _NO_SPACE:
                return None  # a value that may hold spaces, inside a space-split segment
            if op not in _OPERATORS and i % 2 == 1:
                return None  # unknown quoted operator: free text
            where = Field("", i, j, *_literals(token, found[0]))
            pieces.append((token, i, j, _add(fields, seen, op, where)))
    checks = _checks(fmt, pieces)
    return SplitPlan(fmt, len(segments), tokens, tuple(fields), checks)


def _checks(
    fmt: EnvoyFormat, pieces: list[tuple[str, int, int | None, str | None]]
) -> tuple[Piece, ...] | None:
    """The :class:`Piece` checks of a plan's pieces (text, segment, token, column), each
    operator with its strict pattern piece; None when an operator's pattern has no known
    checks, or the pieces do not hold the format's operators in order (one whose name holds a
    quote or a space is cut apart by the split)."""
    ops = [m.group(0) for text, *_ in pieces for m in _TOKEN.finditer(text)]
    in_format = [m.group(0) for m in _TOKEN.finditer(fmt.source)]
    if ops != in_format or len(ops) != len(fmt.operator_patterns):
        return None
    checks: list[Piece] = []
    patterns = iter(fmt.operator_patterns)
    for text, segment, token, column in pieces:
        op = _TOKEN.search(text)
        if op is None:
            checks.append(Piece(segment, token, text.encode(), b"", None, None))
            continue
        kind = kind_of(next(patterns))
        if kind is None:
            return None
        prefix, suffix = text[: op.start()].encode(), text[op.end() :].encode()
        checks.append(Piece(segment, token, prefix, suffix, kind, column))
    return tuple(checks)


def _literals(text: str, op: re.Match[str]) -> tuple[int, int]:
    """UTF-8 bytes of ``text`` before and after the operator ``op``."""
    return len(text[: op.start()].encode()), len(text[op.end() :].encode())


def _add(fields: list[Field], seen: set[str], op: str, where: Field) -> str | None:
    """Add the field of ``op`` at ``where`` unless its column has one; the column if added."""
    if op not in _OPERATORS:
        return None
    column = _OPERATORS[op][0]
    if column in seen:
        return None
    seen.add(column)
    fields.append(Field(column, where.segment, where.token, where.prefix, where.suffix))
    return column


def _cut(values: pa.Array, prefix: int, suffix: int) -> pa.Array:
    """``values`` less ``prefix`` bytes at the start and ``suffix`` at the end: literal text,
    so the rest stays valid UTF-8 (and ~2x faster than cutting by code points)."""
    if not prefix and not suffix:
        return values
    # (stop=None fails in pyarrow 26: "Negative buffer resize")
    return _slice(values, prefix, -suffix if suffix else 2**31 - 1)


def split_attempt(plan: SplitPlan) -> Attempt:
    """The lines that fit ``plan`` and match its format's strict pattern, and their values.

    Lines are cut first; the regex runs only on those that fit but whose pieces the plan's
    checks do not vouch for (:mod:`.envoy_checks`): the same lines, and the same values, as
    matching every line with the regex and cutting those it matched."""

    def run(lines: pa.Array) -> tuple[pa.Array, dict[str, pa.Array]]:
        if lines.null_count:  # a NULL is no line: never cut
            valid = pc.is_valid(lines)
            ok, columns = run(lines.filter(valid))
            return _spread(valid, ok), columns
        fit, values = _matched(lines, plan)
        ok = pa.array(fit)
        if not fit.any():
            return ok, {}
        start = values.pop("start")
        timestamp = _usual_timestamp(start)
        if timestamp is None:  # e.g. "…:09Z", "…:09.5Z", "…:09+00:00": cut at a non-digit
            values["start"] = _slice(start, 0, 19)  # the pattern matched: ASCII up to here
            values["start_frac"] = pc.replace_substring_regex(
                _slice(start, 20, 23), "[^0-9].*$", ""
            )
        struct = pa.StructArray.from_arrays(list(values.values()), names=list(values))
        return ok, _convert(plan.fmt, struct, timestamp)

    return run


_QUOTE, _SPACE = ord('"'), ord(" ")


def _matched(lines: pa.Array, plan: SplitPlan) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Which ``lines`` (no NULLs) fit the plan and match its format's strict pattern, and the
    plan's values of those lines. The pattern runs only on the lines that fit but that the
    plan's checks do not vouch for (an unusual time, a ``\\v``...)."""
    fit, values, sure = _values(_rstripped(lines), plan)
    if sure.all():
        return fit, values
    fitting = np.flatnonzero(fit)
    unsure = fitting[~sure]
    # The pattern allows trailing blanks (``\s*$``): it reads the lines as they came.
    matched = format_matches(lines.take(pa.array(unsure)), plan.fmt.strict_pattern)
    matched = pc.fill_null(matched, False).to_numpy(zero_copy_only=False)
    if matched.all():
        return fit, values
    fit[unsure[~matched]] = False
    keep = sure.copy()
    keep[~sure] = matched
    mask = pa.array(keep)
    return fit, {name: column.filter(mask) for name, column in values.items()}


def _values(lines: pa.Array, plan: SplitPlan) -> tuple[np.ndarray, dict[str, pa.Array], np.ndarray]:
    """Which lines fit the plan (as many quotes, and spaces in each split segment), the plan's
    values of those lines, and which of those its checks vouch for (:func:`_checked`)."""
    fit, quoted = _cut_at(lines, _QUOTE, plan.segments)
    tokens: dict[int, _Pieces] = {}
    if quoted is not None:
        for segment, count in plan.tokens.items():
            segment_fit, split = _cut_at(quoted.part(segment), _SPACE, count)
            fit &= segment_fit
            if split is not None:
                tokens[segment] = split
    if quoted is None or not fit.all():  # decided line by line: the values of those that fit
        kept = np.flatnonzero(fit)
        kept_fit, values, sure = _values(lines.take(pa.array(kept)), plan)
        fit[kept[~kept_fit]] = False  # right quotes, wrong spaces: found only on the kept lines
        return fit, values, sure
    values = {}
    for f in plan.fields:
        pieces, index = (quoted, f.segment) if f.token is None else (tokens[f.segment], f.token)
        values[f.column] = _cut(pieces.part(index), f.prefix, f.suffix)
    return fit, values, _checked(plan, quoted, tokens, values)


def _checked(
    plan: SplitPlan, quoted: _Pieces, tokens: dict[int, _Pieces], values: dict[str, pa.Array]
) -> np.ndarray:
    """Which lines (all fitting the plan) the plan's pieces vouch for: each literal piece is
    its text, and each value sits between its literals and passes its pattern's checks. Such a
    line matches the format's strict pattern (:mod:`.envoy_checks`); False leaves the line to
    the pattern itself."""
    n = len(quoted.pieces) // (2 * quoted.parts - 1)
    if plan.pieces is None:
        return np.zeros(n, bool)
    ok = np.ones(n, bool)
    literals: dict[int, tuple[_Pieces, list[np.ndarray], bytearray]] = {}
    blank_checked: set[int] = set()  # segments whose tokens are checked for blanks at once
    for piece in plan.pieces:
        cut = quoted if piece.token is None else tokens[piece.segment]
        index = piece.segment if piece.token is None else piece.token
        starts, ends, _ = cut.bounds(index)
        if piece.kind is None:  # the literal alone
            ok &= ends - starts == len(piece.prefix)
        elif piece.prefix or piece.suffix:
            ok &= ends - starts >= len(piece.prefix) + len(piece.suffix)
        _, positions, expected = literals.setdefault(id(cut), (cut, [], bytearray()))
        positions += [starts + i for i in range(len(piece.prefix))]
        positions += [ends - len(piece.suffix) + i for i in range(len(piece.suffix))]
        expected += piece.prefix + piece.suffix
        if piece.kind is None or piece.kind.trivial:
            continue
        value = values.get(piece.column or "")
        if value is None and piece.token is not None and piece.kind.blanks_only:
            # No column to check (an operator logq does not store): the token's length here,
            # its bytes with the whole segment's below, instead of a copy of each token.
            ok &= ends - starts >= piece.kind.shortest + len(piece.prefix) + len(piece.suffix)
            blank_checked.add(piece.segment)
            continue
        if value is None:
            value = _cut(cut.part(index), len(piece.prefix), len(piece.suffix))
        ok &= value_ok(value, piece.kind)
    for segment in blank_checked:
        ok &= tokens[segment].no_other_blanks()
    inside = bool(ok.all())  # every piece as long as its literals: no position outside it
    for cut, positions, expected in literals.values():
        if positions:
            data = offsets_and_bytes(cut.pieces)[1]
            ok &= bytes_are(data, positions, bytes(expected), inside)
    return ok


@dataclass(frozen=True)
class _Pieces:
    """Strings cut at a delimiter, without a byte copied: for each string in turn, ``pieces``
    holds its ``parts`` parts with a one-byte delimiter between each two (offsets into the
    strings' own data buffer)."""

    pieces: pa.StringArray
    parts: int

    def part(self, index: int) -> pa.Array:
        """Part ``index`` of every string, as a compact column (the one copy of its bytes)."""
        every = np.arange(2 * index, len(self.pieces), 2 * self.parts - 1, dtype=np.int32)
        return pc.take(self.pieces, pa.array(every), boundscheck=False)  # in bounds: built so

    def no_other_blanks(self) -> np.ndarray:
        """Which strings hold no blank but the delimiter (:func:`no_other_blanks`)."""
        offsets, data = offsets_and_bytes(self.pieces)
        return no_other_blanks(offsets[:: 2 * self.parts - 1], data)  # each string's start

    def bounds(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where part ``index`` of every string starts and ends in the bytes (also returned):
        for checks that need no copy."""
        offsets, data = offsets_and_bytes(self.pieces)
        step = 2 * self.parts - 1
        n = len(self.pieces) // step
        return offsets[2 * index : -1 : step][:n], offsets[2 * index + 1 :: step][:n], data


def _cut_at(strings: pa.Array, byte: int, parts: int) -> tuple[np.ndarray, _Pieces | None]:
    """Which of ``strings`` (no NULLs) hold ``byte`` exactly ``parts - 1`` times; and their
    :class:`_Pieces` when all of them do (None otherwise: the caller keeps those that do)."""
    n = len(strings)
    if not n:
        return np.ones(0, bool), _Pieces(strings, parts)
    offsets, data = offsets_and_bytes(strings)
    at = _scanned(strings, byte, data, offsets)
    if not _each_holds(at, offsets, parts - 1):
        return np.diff(np.searchsorted(at, offsets)) == parts - 1, None
    value_offsets = np.empty(n * (2 * parts - 1) + 1, np.int32)
    bounds = value_offsets[:-1].reshape(n, 2 * parts - 1)  # per string: start, d, d + 1, d'...
    bounds[:, 0] = offsets[:-1]
    bounds[:, 1::2] = at.reshape(n, parts - 1)
    bounds[:, 2::2] = bounds[:, 1::2] + 1
    value_offsets[-1] = offsets[-1]
    pieces = pa.StringArray.from_buffers(
        n * (2 * parts - 1), pa.py_buffer(value_offsets), strings.buffers()[2]
    )
    return np.ones(n, bool), _Pieces(pieces, parts)


#: The batch :func:`_cut_at` last scanned for quotes, and where they are in it (dropped with
#: the batch): the next format's plan is handed the same lines when the plan before it took
#: none (Istio's lines meet the default format's plan first), and scans them only once.
_last_quotes: tuple[weakref.ref[pa.Array], np.ndarray] | None = None


def _scanned(strings: pa.Array, byte: int, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`_positions` of ``byte`` in ``strings``; the quotes of the last batch scanned
    for quotes are remembered (:data:`_last_quotes`)."""
    global _last_quotes
    if byte != _QUOTE:
        return _positions(data, byte, int(offsets[0]), int(offsets[-1]))
    last = _last_quotes
    if last is not None and last[0]() is strings:
        return last[1]
    at = _positions(data, byte, int(offsets[0]), int(offsets[-1]))
    at.flags.writeable = False  # shared by the plans that scan this batch
    _last_quotes = (weakref.ref(strings, _forget_quotes), at)
    return at


def _forget_quotes(dead: weakref.ref[pa.Array]) -> None:
    """Drop the remembered quotes once their batch is gone."""
    global _last_quotes
    last = _last_quotes
    if last is not None and last[0] is dead:
        _last_quotes = None


#: Bytes compared at once by :func:`_positions` (its boolean mask is this big, not the batch).
_SCAN_BYTES = 1 << 22


def _positions(data: np.ndarray, byte: int, start: int, stop: int) -> np.ndarray:
    """Where ``byte`` is in ``data[start:stop]`` (int32 positions in ``data``), a few MiB at a
    time: a mask of the whole batch's bytes would add that much to the flush's peak memory."""
    found = [
        np.flatnonzero(data[at : min(at + _SCAN_BYTES, stop)] == byte).astype(np.int32) + at
        for at in range(start, stop, _SCAN_BYTES)
    ]
    return np.concatenate(found) if found else np.zeros(0, np.int32)


def _each_holds(at: np.ndarray, offsets: np.ndarray, count: int) -> bool:
    """Whether each string (``offsets``) holds exactly ``count`` of the sorted positions ``at``:
    ``count`` per string in all, and each string's group of them within its bounds."""
    n = len(offsets) - 1
    if len(at) != n * count:
        return False
    if not count:
        return True
    groups = at.reshape(n, count)
    return bool((groups[:, 0] >= offsets[:-1]).all() and (groups[:, -1] < offsets[1:]).all())


#: What a format's ``\s*$`` lets a line end with: RE2's ``\s`` (no ``\v``, no Unicode blanks).
_TRAILING = " \t\n\f\r"
_WHITESPACE = np.frombuffer(_TRAILING.encode(), dtype=np.uint8)


def _all_millis_z(start: pa.Array) -> bool:
    """Every time is Envoy's default ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (24 characters ending in Z;
    the format's pattern already matched, so characters 20-22 are the milliseconds)."""
    lengths = pc.binary_length(start)
    return bool(pc.all(pc.equal(lengths, 24)).as_py() and pc.all(pc.ends_with(start, "Z")).as_py())


def _usual_timestamp(start: pa.Array) -> pa.Array | None:
    """The times as ``timestamp[ms, UTC]`` when every one is Envoy's default spelling, in one
    ISO-8601 cast; None otherwise, and when any date is invalid (month 13...): the general
    conversion then tells the valid rows from the others, as it always has."""
    if not len(start) or not _all_millis_z(start):
        return None
    try:
        return start.cast(TIMESTAMP)
    except pa.ArrowInvalid:
        return None


def _slice(values: pa.Array, start: int, stop: int) -> pa.Array:
    """Bytes ``start:stop`` of ``values``: valid UTF-8 only when those bounds fall between
    characters (ASCII values, or literal text cut off: :func:`_cut`)."""
    return pc.binary_slice(values.view(pa.binary()), start, stop).view(pa.string())


def _rstripped(lines: pa.Array) -> pa.Array:
    """``lines`` without the trailing blanks a format's pattern allows (RE2's ``\\s``: a ``\\v``
    or an ideographic space there belongs to the last value, as the regexes read it); no copy
    when no line ends with one."""
    offsets, data = offsets_and_bytes(lines)
    ends = offsets[1:][offsets[1:] > offsets[:-1]] - 1
    if not len(ends) or not np.isin(data[ends], _WHITESPACE).any():
        return lines
    return pc.utf8_rtrim(lines, characters=_TRAILING)


def _spread(mask: pa.Array, values: pa.Array) -> pa.Array:
    positions = pc.subtract(pc.cumulative_sum(pc.cast(mask, pa.int64())), 1)
    index = pc.if_else(mask, positions, pa.scalar(None, pa.int64()))
    return pc.fill_null(pc.take(values, index), False)
