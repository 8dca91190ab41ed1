"""logq-shipper PackedForward blobs -> Arrow columns, read column-wise from the msgpack bytes.

The receive path's largest cost was msgspec building a struct and a ``str`` per line
(:mod:`.packed`), ~1.3 µs of a ~2 µs decode. But a shipper's entries have one shape:
``[EventTime, {the same keys in the same order}]``, the keys a source shares (service,
container, host, image...) holding the same bytes on every line, and only ``log``, ``stream``,
``offset`` and ``time`` changing. So this module reads the blob with numpy, all entries at once:

* the plan (:func:`_plan`): the first record, read in Python, gives the steps of every record:
  constant bytes (each key, and the shared values), then a ``log`` string, a ``stream``, an
  ``offset`` integer or another string (``time``, skipped);
* every entry start is found by its first bytes (``92 d7 00``: ``[``, fixext8 EventTime, and the
  map header after the time), and the steps are run on all entries together: constant bytes
  checked with one Arrow comparison per step, variable values' lengths read from their headers;
* the ``log`` values are cut out of the blob with one Arrow ``take`` (their one copy), the
  times converted as :mod:`.packed` does.

Exact or nothing: every entry must end where the next one starts and the last at the blob's
end, ``size`` of them, every byte read must be of the kind the plan expects, and every line
valid UTF-8. Anything else (other keys or key order, another value type or encoding, a value
that only looks like an entry start, other clients' metadata, a nil ``log``) returns None and
the caller takes :mod:`.packed`, which yields the same columns for what this accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator import clientmeta, packed
from shipper import wire

_ENTRY_HEAD = b"\x92\xd7\x00"  # fixarray(2), fixext8 of type 0 (EventTime)
_TIME_AT = len(_ENTRY_HEAD)  # the EventTime's 8 bytes: seconds, nanoseconds (big-endian)
_MAP_AT = _TIME_AT + 8  # the record's fixmap header
_NIL, _FIXSTR, _STR8, _STR16, _STR32 = 0xC0, 0xA0, 0xD9, 0xDA, 0xDB
_UINT8, _UINT16, _UINT32, _UINT64 = 0xCC, 0xCD, 0xCE, 0xCF
_STREAMS = (b"\xa6stdout", b"\xa6stderr")
#: Bytes after a header byte that hold the value's length (strings) or the value (unsigned
#: integers, nil: none; a positive fixint is its own value); -1: another type.
_STRING_WIDTH = np.full(256, -1, np.int64)
_STRING_WIDTH[_FIXSTR : _FIXSTR + 32] = 0
_STRING_WIDTH[[_STR8, _STR16, _STR32]] = [1, 2, 4]
_UINT_WIDTH = np.full(256, -1, np.int64)
_UINT_WIDTH[:0x80] = 0
_UINT_WIDTH[[_NIL, _UINT8, _UINT16, _UINT32, _UINT64]] = [0, 1, 2, 4, 8]
#: Keys whose meaning needs the msgspec decoders (a record without ``log``, other clients).
_DECLINED_KEYS = frozenset((*packed.MESSAGE_KEYS, *clientmeta.CLIENT_KEYS))
#: The record keys read per line (any other key's value is a string skipped, as ``time``).
_KINDS = {wire.KEY_LOG: "log", wire.KEY_STREAM: "stream", wire.KEY_OFFSET: "offset"}
#: A blob with more than one ``0x92`` byte in this many is declined before its candidate entry
#: starts are listed: their int64 positions (8 bytes each) then take at most the blob's size.
#: A hostile blob of only ``0x92`` bytes (128 MiB of them gzip to a ~130 KB frame) would make
#: them take 8 times it, GiBs, and seconds of the event loop, for nothing.
_MAX_HEAD_SHARE = 8
#: Blobs of fewer entries are left to :mod:`.packed`: the scan costs ~1 ms a message whatever
#: its size (a few dozen whole-array steps), msgspec ~0.4 ms plus more per line; measured (CPU
#: µs a line, msgspec vs scan): 3.8 vs 9.4 at 128 entries, 2.1 vs 2.8 at 512, 1.9 vs 1.7 at
#: 1,024, 1.5 vs 1.1 at 2,048. A logq-shipper message holds up to ~1,500 Envoy lines (512 KiB),
#: Fluent Bit's up to a 2 MiB chunk.
MIN_ENTRIES = 1024
#: Blobs this long or longer would need 64-bit string offsets: left to msgspec.
_MAX_BLOB = 2**31 - 1


@dataclass(frozen=True)
class _Step:
    """What the next bytes of every record hold: ``const`` (exactly ``data``), ``log`` or
    ``skip`` (a string; ``skip`` may be nil), ``stream`` or ``offset``."""

    kind: str
    data: bytes = b""


@dataclass(frozen=True)
class _Plan:
    """How every record of one blob is laid out, read from its first record."""

    steps: tuple[_Step, ...]
    metadata: tuple[str | None, ...]
    """The :data:`packed.CONSTANT_KEYS` values (None: absent or nil)."""
    map_header: int


def scan_columns(blob: bytes, size: object, dict_type: pa.DataType) -> list[pa.Array] | None:
    """``time_ns``, ``log``, the :data:`packed.RAW_KEYS` columns and ``offset`` of a shipper's
    blob of ``size`` entries (as :func:`packed.constant_columns` makes them), or None."""
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_ENTRIES:
        return None
    if not size * len(_ENTRY_HEAD) <= len(blob) < _MAX_BLOB:
        return None
    plan = _plan(blob)
    if plan is None:
        return None
    pad = max((len(s.data) for s in plan.steps), default=0) + 16
    padded = blob + bytes(pad)  # reads past a (hostile) length land in zeros, not out of bounds
    data = np.frombuffer(padded, np.uint8)
    starts = _entry_starts(data, len(blob), plan.map_header)
    if len(starts) != size:
        return None  # an entry of another shape, or a value that looks like an entry start
    walk = _Walk(data, padded, len(blob), starts + _MAP_AT + 1)
    for step in plan.steps:
        walk.run(step)
    ends = walk.at
    chained = starts[0] == 0 and (ends[:-1] == starts[1:]).all() and ends[-1] == len(blob)
    if not (chained and walk.ok.all()):
        return None
    times = _times_ns(walk.words, starts)
    if times is None or walk.log is None:
        return None
    logs = _logs(blob, *walk.log)
    if logs is None:
        return None
    n = len(starts)
    return [
        times,
        logs,
        _stream(walk.stream, n, dict_type),
        *(packed.constant_column(value, n, dict_type) for value in plan.metadata),
        _offsets(walk.offset, n),
    ]


def _plan(blob: bytes) -> _Plan | None:
    """The steps of every record, from the first one (None: a record this module leaves)."""
    if blob[:_TIME_AT] != _ENTRY_HEAD or len(blob) <= _MAP_AT:
        return None
    header = blob[_MAP_AT]
    if not 0x80 <= header <= 0x8F:
        return None
    at = _MAP_AT + 1
    steps: list[_Step] = []
    constant = bytearray()
    metadata: dict[str, str | None] = {}
    seen: set[str] = set()
    for _ in range(header & 0x0F):
        key = _string(blob, at)
        if key is None or key[1] is None:
            return None
        key_end, name = key
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if text in seen or text in _DECLINED_KEYS:
            return None
        seen.add(text)
        constant += blob[at:key_end]
        value = _string(blob, key_end)
        if text in packed.CONSTANT_KEYS:
            if value is None:
                return None
            try:
                metadata[text] = None if value[1] is None else value[1].decode("utf-8")
            except UnicodeDecodeError:
                return None
            constant += blob[key_end : value[0]]
            at = value[0]
            continue
        steps += [_Step("const", bytes(constant)), _Step(_KINDS.get(text, "skip"))]
        constant = bytearray()
        at = _after(blob, key_end, steps[-1].kind)
        if at is None:
            return None
    steps.append(_Step("const", bytes(constant)))
    if wire.KEY_LOG not in seen:
        return None
    values = tuple(metadata.get(key) for key in packed.CONSTANT_KEYS)
    return _Plan(tuple(s for s in steps if s.kind != "const" or s.data), values, header)


def _string(blob: bytes, at: int) -> tuple[int, bytes | None] | None:
    """(end, bytes) of the msgpack string (or nil: bytes None) at ``at``; None for others."""
    if at >= len(blob):
        return None
    head = blob[at]
    if head == _NIL:
        return at + 1, None
    if head & 0xE0 == _FIXSTR:
        start, length = at + 1, head & 0x1F
    elif head in (_STR8, _STR16, _STR32):
        width = {_STR8: 1, _STR16: 2, _STR32: 4}[head]
        start = at + 1 + width
        length = int.from_bytes(blob[at + 1 : start], "big")
    else:
        return None
    end = start + length
    return (end, blob[start:end]) if end <= len(blob) else None


def _after(blob: bytes, at: int, kind: str) -> int | None:
    """Where the first record's value of a variable step ends (None: not of its kind)."""
    if kind == "offset":
        head = blob[at] if at < len(blob) else -1
        width = {_NIL: 0, _UINT8: 1, _UINT16: 2, _UINT32: 4, _UINT64: 8}.get(head)
        if 0 <= head < 0x80:
            width = 0
        return None if width is None else at + 1 + width
    value = _string(blob, at)
    if value is None or (value[1] is None and kind == "log"):
        return None
    if kind == "stream" and blob[at : value[0]] not in (*_STREAMS, bytes([_NIL])):
        return None
    return value[0]


def _entry_starts(data: np.ndarray, length: int, map_header: int) -> np.ndarray:
    """Positions of the bytes ``92 d7 00 <8 bytes> <map header>`` in ``data[:length]``."""
    heads = data[: max(length - _MAP_AT, 0)] == _ENTRY_HEAD[0]
    if np.count_nonzero(heads) > length // _MAX_HEAD_SHARE:
        return np.empty(0, np.int64)  # mostly 0x92 bytes (hostile): left to msgspec
    found = np.flatnonzero(heads)
    head = (data[found + 1] == _ENTRY_HEAD[1]) & (data[found + 2] == _ENTRY_HEAD[2])
    return found[head & (data[found + _MAP_AT] == map_header)].astype(np.int64)


class _Walk:
    """The steps run on every record at once: ``at`` is each record's position, ``ok`` which
    records have matched so far; the variable values are kept as they are read."""

    def __init__(self, data: np.ndarray, padded: bytes, length: int, at: np.ndarray):
        self.data = data
        self.length = length
        self.at = at
        self.ok = np.ones(len(at), bool)
        self.padded = padded
        self.buffer = pa.py_buffer(padded)
        # 8 bytes from every position (a gather reads a stream's value, a time, at once).
        self.words = np.ndarray((len(padded) - 7,), "<u8", buffer=padded, strides=(1,))
        self.log: tuple[np.ndarray, np.ndarray] | None = None
        self.stream: np.ndarray | None = None
        self.offset: tuple[np.ndarray, np.ndarray] | None = None

    def run(self, step: _Step) -> None:
        if step.kind == "const":
            self._constant(step.data)
        elif step.kind in ("log", "skip"):
            start, length = self._strings(nil=step.kind == "skip")
            if step.kind == "log":
                self.log = (start, length)
        elif step.kind == "stream":
            self._stream()
        else:
            self._offset()
        # A hostile length stays in the padding; past the blob's end, so the chain check fails.
        np.minimum(self.at, self.length + 1, out=self.at)

    def _constant(self, expected: bytes) -> None:
        """Every record holds ``expected`` here: one Arrow comparison of the records' slices
        (no copy; a numpy gather of them costs ~10x more)."""
        end = self.at + len(expected)
        if not (self.at[1:] >= end[:-1]).all():  # overlapping slices: no valid blob has them
            self.ok[:] = False
        else:
            bounds = np.empty(2 * len(end) + 1, np.int64)  # each slice, then the bytes after it
            bounds[0:-1:2], bounds[1::2], bounds[-1] = self.at, end, len(self.padded)
            slices = pa.Array.from_buffers(
                pa.large_binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), self.buffer]
            )
            same = pc.equal(slices, pa.scalar(expected, pa.large_binary()))
            self.ok &= same.to_numpy(zero_copy_only=False)[::2]
        self.at = end

    def _big_endian(self, width: np.ndarray) -> np.ndarray:
        """The ``width`` (0 to 8) bytes after each record's header byte, as a big-endian
        integer: one gather of the 8 bytes after it, shifted."""
        after = self.words[self.at + 1].byteswap()
        shift = (8 * (8 - np.clip(width, 1, 8))).astype(np.uint64)
        return np.where(width > 0, after >> shift, np.uint64(0))

    def _strings(self, nil: bool) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of each record's string here (``nil``: may be nil, length 0)."""
        head = self.data[self.at]
        width = _STRING_WIDTH[head]  # -1: not a string header
        self.ok &= (width >= 0) | ((head == _NIL) if nil else False)
        fix = width == 0
        length = np.where(fix, head & 0x1F, self._big_endian(width)).astype(np.int64)
        length[~fix & (width < 0)] = 0  # nil (or not a string: refused)
        start = self.at + 1 + np.maximum(width, 0)
        self.at = start + length
        return start, length

    def _stream(self) -> None:
        """``stream``: code 0 ``stdout``, 1 ``stderr``, 2 nil."""
        head = self.data[self.at]
        shown = self.words[self.at] & ((1 << 56) - 1)
        out, err = (shown == int.from_bytes(s, "little") for s in _STREAMS)
        nil = head == _NIL
        self.ok &= out | err | nil
        self.stream = np.where(out, 0, np.where(err, 1, 2)).astype(np.int32)
        self.at = self.at + np.where(nil, 1, len(_STREAMS[0]))

    def _offset(self) -> None:
        """``offset``: a non-negative integer (or nil), kept with its nil mask."""
        head = self.data[self.at]
        width = _UINT_WIDTH[head]  # -1: not a non-negative integer or nil
        self.ok &= width >= 0
        value = np.where(head < 0x80, head.astype(np.uint64), self._big_endian(width))
        self.ok &= value < np.uint64(2**63)  # the int64 column; larger: the other paths'
        self.offset = (value.astype(np.int64), head == _NIL)
        self.at = self.at + 1 + np.maximum(width, 0)


def _times_ns(words: np.ndarray, starts: np.ndarray) -> pa.Array | None:
    """The entries' EventTimes as ns (None: one that cannot be kept as sent, see
    :func:`packed.event_times_ns`)."""
    both = words[starts + _TIME_AT].byteswap()  # big-endian: seconds << 32 | nanoseconds
    seconds = (both >> np.uint64(32)).astype(np.int64)
    nanoseconds = (both & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return packed.event_times_ns(seconds, nanoseconds)


def _logs(blob: bytes, start: np.ndarray, length: np.ndarray) -> pa.Array | None:
    """The lines, copied out of the blob once (None: one is not valid UTF-8)."""
    n = len(start)
    bounds = np.empty(2 * n + 1, np.int32)
    bounds[0:-1:2] = start
    bounds[1::2] = start + length
    bounds[-1] = len(blob)
    pieces = pa.StringArray.from_buffers(2 * n, pa.py_buffer(bounds), pa.py_buffer(blob))
    lines = pieces.take(np.arange(0, 2 * n, 2))  # every other piece: lines, not what is between
    try:
        lines.validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    return lines


def _stream(codes: np.ndarray | None, n: int, dict_type: pa.DataType) -> pa.Array:
    """The ``stream`` column as :func:`packed.constant_columns` builds it."""
    if codes is None:
        return packed.constant_column(None, n, dict_type)
    names = ("stdout", "stderr", None)
    if (codes == codes[0]).all():
        return packed.constant_column(names[codes[0]], n, dict_type)
    return pa.array(np.array(names, dtype=object)[codes].tolist(), dict_type)


def _offsets(offset: tuple[np.ndarray, np.ndarray] | None, n: int) -> pa.Array:
    """The ``offset`` column (NULL where nil, or everywhere when records have no ``offset``)."""
    if offset is None:
        return pa.nulls(n, pa.int64())
    values, nil = offset
    return pa.array(values, pa.int64(), mask=nil if nil.any() else None)
