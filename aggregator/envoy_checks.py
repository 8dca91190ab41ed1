"""A split Envoy line's pieces held to its format's strict pattern by byte classes, in numpy.

The split parser (:mod:`.envoy_split`) cuts a line at its format's quotes and spaces. It used to
run the format's strict regex over every line first: RE2's DFA costs ~2 ns a byte, the dearest
kernel of a flush, and a third of an Envoy line is free text (user agent, request id) that the
regex only reads to find the next quote. The pieces the cut gives concatenate, with the quotes
and spaces they were cut at, to the line; so a line whose every piece matches its own part of
the strict pattern matches the whole pattern. Here each piece is checked without a regex:
literal text byte for byte, each operator's value by the bytes its pattern allows (digits, no
blanks, flag letters) and its length. Free text between quotes matches ``[^"]*`` as cut.

The checks are *sufficient*, not exact (:func:`kind_of` knows a handful of value patterns, and
the time only in Envoy's usual spelling): a line they pass matches the strict pattern; any other
line is matched with the regex as before. So the split parser takes the same lines with the
same values, and the regex runs only on the unusual ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from aggregator.string_bytes import offsets_and_bytes

#: Bytes a check reads at a time (each of its temporaries is about this big): a check of a whole
#: column or segment at once (a ``- 9``, a mask or two of all its bytes) would add that much to
#: the flush's peak memory, ~60 MiB on 300k Istio lines. Smaller than the cut's own scan
#: (``envoy_split._SCAN_BYTES``): the cut's pieces are held while the checks run.
_SCAN_BYTES = 1 << 20


def _other_blank(body: np.ndarray) -> np.ndarray:
    """Tab, newline, ``\\v``, form feed and carriage return: the blanks but the space."""
    return (body - 9) < 5  # uint8: below 9 wraps around


def _blank(body: np.ndarray) -> np.ndarray:
    """RE2's ``\\s`` (tab, newline, form feed, carriage return, space), and ``\\v``, which
    ``\\s`` does not hold: a value with one is left to the regex (sufficient checks need not
    be exact)."""
    return _other_blank(body) | (body == ord(" "))


def _dash(body: np.ndarray) -> np.ndarray:
    return body == ord("-")


def _blank_or_quote(body: np.ndarray) -> np.ndarray:
    return _blank(body) | (body == ord('"'))


def _not_digit(body: np.ndarray) -> np.ndarray:
    return (body - ord("0")) > 9


def _not_digit_or_dash(body: np.ndarray) -> np.ndarray:
    return _not_digit(body) & (body != ord("-"))


def _not_flag(body: np.ndarray) -> np.ndarray:
    """Bytes other than ``[A-Za-z,_-]`` (``| 32`` makes an upper-case letter lower-case, and
    only those)."""
    letter = ((body | 32) - ord("a")) < 26
    return ~letter & (body != ord(",")) & (body != ord("_")) & (body != ord("-"))


#: Which bytes of a value's text (a uint8 array) its pattern does not allow.
Bad = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Kind:
    """What a value pattern accepts, as checks that imply it."""

    bad: Bad | None
    """The bytes the value may not hold; None: any (a quote-free value, as cut)."""
    shortest: int = 0
    longest: int | None = None
    dash: bool = False
    """``-`` alone is a value too (Envoy's unset number)."""
    usual_time: bool = False
    """Envoy's default START_TIME: accepted only as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    blanks_only: bool = False
    """Only blanks and quotes are refused: in a token of a line cut at quotes and spaces,
    only a tab, a newline... can be there, which :func:`no_other_blanks` finds for every
    token of a segment at once (no copy of the token's bytes)."""

    @property
    def trivial(self) -> bool:
        """Whether any value passes (a quote-free value: the cut made it so)."""
        return self.bad is None and not self.usual_time and not self.shortest


_ANY = Kind(None)

#: Value patterns of :data:`aggregator.envoy._OPERATORS` (named groups made plain, see
#: :func:`kind_of`), and of operators logq has no column for, as compile_format writes them.
KINDS: dict[str, Kind] = {
    r"(?:[^\s\"]+)": Kind(_blank_or_quote, 1, blanks_only=True),
    r"(?:\S+)": Kind(_blank, 1, blanks_only=True),
    r"(?:\S*)": Kind(_blank, blanks_only=True),
    r"(?:[^\"\s]*)": Kind(_blank_or_quote, blanks_only=True),
    r"(?:\d{1,9})": Kind(_not_digit, 1, 9),
    r"(?:\d{1,9}|-)": Kind(_not_digit_or_dash, 1, 9, dash=True),
    r"(?:\d{1,18}|-)": Kind(_not_digit_or_dash, 1, 18, dash=True),
    r"(?:[A-Za-z,_-]+)": Kind(_not_flag, 1),
    r"(?:[^\"]*)": _ANY,
    r'(?:[^"]*)': _ANY,
    r'[^"]*': _ANY,
    r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?:\d{1,9}))?(?:Z|[+-]00:?00)": Kind(
        None, usual_time=True
    ),
}


def kind_of(pattern: str) -> Kind | None:
    """The checks of an operator's strict pattern piece, or None when none are known."""
    return KINDS.get(re.sub(r"\(\?P<[a-z_]+>", "(?:", pattern))


#: ``YYYY-MM-DDTHH:MM:SS.mmmZ``: ``d`` a digit, anything else itself.
_USUAL_TIME = b"dddd-dd-ddTdd:dd:dd.dddZ"
_IS_DIGIT = np.frombuffer(_USUAL_TIME, np.uint8) == ord("d")
#: Per character of the time: subtracted from it (``0`` or the literal), it must be below the
#: limit (10 for a digit, 1 for the literal itself); uint8, so anything below wraps around.
_TIME_BASE = np.where(_IS_DIGIT, ord("0"), np.frombuffer(_USUAL_TIME, np.uint8)).astype(np.uint8)
_TIME_LIMIT = np.where(_IS_DIGIT, 10, 1).astype(np.uint8)
_ALL_TRUE = np.frombuffer(b"\x01" * 8, np.uint64)[0]


def value_ok(values: pa.Array, kind: Kind) -> np.ndarray:
    """Which of ``values`` (strings, no NULLs) ``kind``'s checks accept."""
    offsets, data = offsets_and_bytes(values)
    lengths = np.diff(offsets)
    ok = lengths >= kind.shortest
    if kind.longest is not None:
        ok &= lengths <= kind.longest
    if kind.usual_time:
        return ok & _usual_times(offsets, data, lengths)
    if kind.bad is not None:
        for rows in _rows_holding(offsets, data, kind.bad):  # the usual: none, no per-value work
            ok[rows] = False
        if kind.dash:  # "-" only alone: "-5" and "--" are no numbers
            for rows in _rows_holding(offsets, data, _dash):
                ok[rows[lengths[rows] != 1]] = False
    return ok


def no_other_blanks(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Which strings (``offsets``) hold no blank but spaces: no tab, newline, ``\\v``, form
    feed or carriage return."""
    ok = np.ones(len(offsets) - 1, bool)
    for rows in _rows_holding(offsets, data, _other_blank):
        ok[rows] = False
    return ok


def _rows_holding(offsets: np.ndarray, data: np.ndarray, bad: Bad) -> Iterator[np.ndarray]:
    """The strings (``offsets``, rows from 0) that hold a byte ``bad`` refuses, a few rows at a
    time (a row may come twice), from a scan of :data:`_SCAN_BYTES` at a time: ``bad`` of a
    whole column or segment at once (a ``- 9``, a mask or more of all its bytes) would add that
    much to the flush's peak memory, ~60 MiB on 300k Istio lines."""
    start, stop = int(offsets[0]), int(offsets[-1])
    for at in range(start, stop, _SCAN_BYTES):
        found = np.flatnonzero(bad(data[at : min(at + _SCAN_BYTES, stop)]))
        if len(found):
            yield _rows(found + at, offsets)


def _usual_times(offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Which values are ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (another spelling: False), a block of
    rows at a time (:func:`_blocks`)."""
    width = len(_USUAL_TIME)
    ok = lengths == width
    if ok.all():  # the usual batch: the values side by side, one row each
        text = data[offsets[0] : offsets[-1]].reshape(-1, width)
        for block in _blocks(len(ok), width):
            ok[block] = _times_ok(text[block])
        return ok
    rows = np.flatnonzero(ok)
    for block in _blocks(len(rows), width):
        ok[rows[block]] = _times_ok(data[offsets[rows[block], None] + np.arange(width)])
    return ok


def _times_ok(text: np.ndarray) -> np.ndarray:
    """Which rows of ``text`` (uint8, one time a row) are in the usual spelling."""
    fine = np.ascontiguousarray((text - _TIME_BASE) < _TIME_LIMIT).view(np.uint64)  # 3 a row
    return (fine[:, 0] & fine[:, 1] & fine[:, 2]) == _ALL_TRUE


def _blocks(rows: int, row_bytes: int) -> Iterator[slice]:
    """Slices of ``rows`` rows whose byte-wide temporaries (``row_bytes`` a row, int64
    indexes included) take about :data:`_SCAN_BYTES`: not the whole batch's at once."""
    step = max(1, _SCAN_BYTES // (8 * row_bytes))
    return (slice(at, at + step) for at in range(0, rows, step))


def bytes_are(
    data: np.ndarray, positions: list[np.ndarray], expected: bytes, inside: bool
) -> np.ndarray:
    """Which strings hold ``expected[i]`` at ``positions[i]`` (one position per string each).
    ``inside``: every position is within its string (else they are clipped to the data: a
    string too short for its literal must be refused by its length).

    One gather a block of strings (:func:`_blocks`), position by position within each string:
    the lines' bytes are read in order, as a stream, not one pass over all the lines per
    literal byte (each a cache miss a line).
    """
    if not positions:
        return np.ones(0, bool)
    if not len(data):
        return np.zeros(len(positions[0]), bool)
    want = np.frombuffer(expected, np.uint8)
    ok = np.empty(len(positions[0]), bool)
    for block in _blocks(len(ok), len(positions)):
        at = np.stack([p[block] for p in positions], axis=1)
        if not inside:
            at = np.clip(at, 0, len(data) - 1)
        ok[block] = (data[at] == want).all(axis=1)
    return ok


def _rows(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The string each byte position (within the strings' bounds) belongs to."""
    return np.searchsorted(offsets, positions, side="right") - 1
