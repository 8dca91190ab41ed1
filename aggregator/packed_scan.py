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
_STREAM_NAMES = ("stdout", "stderr", None)  # by code (see _Walk._stream)
#: Per msgpack header byte, read as tables (one gather for all records): the bytes a string
#: header takes (0: not a string; ``log`` may not be nil, a skipped string may), and how its
#: length is cut from the header's 8 bytes as a big-endian number (a shift, then a mask).
_LOG_HEADER = np.zeros(256, np.int64)
_LOG_HEADER[_FIXSTR : _FIXSTR + 32] = 1
_LOG_HEADER[[_STR8, _STR16, _STR32]] = [2, 3, 5]
_SKIP_HEADER = _LOG_HEADER.copy()
_SKIP_HEADER[_NIL] = 1
_LENGTH_SHIFT = np.zeros(256, np.uint64)
_LENGTH_MASK = np.zeros(256, np.uint64)  # 0: no length (nil, or not a string)
_LENGTH_SHIFT[_FIXSTR : _FIXSTR + 32], _LENGTH_MASK[_FIXSTR : _FIXSTR + 32] = 56, 0x1F
_LENGTH_SHIFT[[_STR8, _STR16, _STR32]] = [48, 40, 24]
_LENGTH_MASK[[_STR8, _STR16, _STR32]] = [0xFF, 0xFFFF, 0xFFFFFFFF]
#: Likewise for an unsigned integer: its bytes (0: another type; a positive fixint is its own
#: value), and how it is cut from them (a uint64's 8 bytes are read after the header).
_UINT_SIZE = np.zeros(256, np.int64)
_UINT_SIZE[:0x80] = 1
_UINT_SIZE[[_NIL, _UINT8, _UINT16, _UINT32, _UINT64]] = [1, 2, 3, 5, 9]
_UINT_SHIFT = np.zeros(256, np.uint64)
_UINT_MASK = np.zeros(256, np.uint64)  # 0: none here (nil, a uint64, not an integer)
_UINT_SHIFT[:0x80], _UINT_MASK[:0x80] = 56, 0x7F
_UINT_SHIFT[[_UINT8, _UINT16, _UINT32]] = [48, 40, 24]
_UINT_MASK[[_UINT8, _UINT16, _UINT32]] = [0xFF, 0xFFFF, 0xFFFFFFFF]
#: Zero bytes after the blob: reads at most a byte past the blob's end stay in them, and
#: the entry start search reads whole 64-byte blocks.
_PAD = 64
#: Keys whose meaning needs the msgspec decoders (a record without ``log``, other clients).
_DECLINED_KEYS = frozenset((*packed.MESSAGE_KEYS, *clientmeta.CLIENT_KEYS))
#: The record keys read per line (any other key's value is a string skipped, as ``time``).
_KINDS = {wire.KEY_LOG: "log", wire.KEY_STREAM: "stream", wire.KEY_OFFSET: "offset"}
#: A blob with more than one ``0x92`` byte in this many bytes is declined before its
#: candidate entry starts are listed: their int64 positions (8 bytes each) then take at most
#: the blob's size. A hostile blob of only ``0x92`` bytes (128 MiB of them gzip to a ~130 KB
#: frame) would make them take 8 times it, GiBs, and seconds of the event loop, for nothing.
_MAX_HEAD_SHARE = 8
#: Likewise, more than one 8-byte word holding a ``0x92`` byte in this many bytes: the words'
#: positions and lanes (see :func:`_entry_starts`) then take at most half the blob's size. A
#: shipper's entry is far longer (its keys alone take more), so real blobs have a few in
#: hundreds of bytes, even of lines in scripts whose UTF-8 holds ``0x92`` bytes.
_MAX_HEAD_WORD_SHARE = 32
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
    padded = blob + bytes(_PAD)  # reads past a (hostile) length land in zeros, not out of bounds
    data = np.frombuffer(padded, np.uint8)
    starts = _entry_starts(data, len(blob), plan.map_header)
    if len(starts) != size:
        return None  # an entry of another shape, or a value that looks like an entry start
    walk = _Walk(data, padded, len(blob), starts)
    if not all(walk.run(step) for step in plan.steps):
        return None
    ends = walk.at
    if not (starts[0] == 0 and (ends[:-1] == starts[1:]).all() and ends[-1] == len(blob)):
        return None  # entries that do not follow each other: not the entries found
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
    """Positions of the bytes ``92 d7 00 <8 bytes> <map header>`` in ``data[:length]``.

    The ``0x92`` bytes are few (one an entry, and some in values), and numpy's nonzero costs
    ~3 instructions an element: over the blob's byte mask, ~1,500 a line. So they are listed
    from coarse to fine: the 64-byte blocks that hold one (from the mask's words, viewed as
    8-byte words again), then the 8-byte words in those, then the bytes in those."""
    limit = max(length - _MAP_AT, 0)  # an entry starting later has no room for its map header
    heads = data[: -(-limit // 64) * 64] == _ENTRY_HEAD[0]  # whole blocks (see _PAD)
    heads[limit:] = False
    words = heads.view(np.uint64) != 0
    blocks = np.flatnonzero(words.view(np.uint64) != 0)
    word_lanes = _lanes(words, blocks)
    if np.count_nonzero(word_lanes) > length // _MAX_HEAD_WORD_SHARE:
        return np.empty(0, np.int64)  # 0x92 bytes all over (hostile): left to msgspec
    hit = _positions(blocks, word_lanes)
    lanes = _lanes(heads, hit)
    if np.count_nonzero(lanes) > length // _MAX_HEAD_SHARE:
        return np.empty(0, np.int64)
    found = _positions(hit, lanes)
    head = (data[found + 1] == _ENTRY_HEAD[1]) & (data[found + 2] == _ENTRY_HEAD[2])
    return found[head & (data[found + _MAP_AT] == map_header)]


def _lanes(mask: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The elements of ``mask``'s 8-element groups ``groups`` (a copy, one row a group)."""
    return mask.reshape(-1, 8).take(groups, axis=0)  # (10x faster than fancy indexing)


def _positions(groups: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """The positions in the mask of the true elements of its ``lanes`` (see :func:`_lanes`)."""
    at = np.flatnonzero(lanes)
    return groups[at >> 3] * 8 + (at & 7)


class _Walk:
    """The steps run on every record at once: ``at`` is each record's position. A step returns
    False as soon as one record does not match it (the blob is then left to msgspec); the
    variable values are kept as they are read."""

    def __init__(self, data: np.ndarray, padded: bytes, length: int, starts: np.ndarray):
        self.data = data
        self.padded = padded
        self.buffer = pa.py_buffer(padded)
        # 8 bytes from every position (a gather reads a header and what follows it at once).
        self.words = np.ndarray((len(padded) - 7,), "<u8", buffer=padded, strides=(1,))
        # Positions are kept at most one byte past the next entry's start (the last entry's:
        # past the blob's end): reads stay in bounds, positions in order, and a record cut
        # back there has passed its end, so the chain check refuses it.
        self.limit = np.empty_like(starts)
        self.limit[:-1], self.limit[-1] = starts[1:] + 1, length + 1
        self.at = np.minimum(starts + _MAP_AT + 1, self.limit)
        self.log: tuple[np.ndarray, np.ndarray] | None = None
        self.stream: np.ndarray | None = None
        self.offset: tuple[np.ndarray, np.ndarray] | None = None

    def run(self, step: _Step) -> bool:
        """Whether every record matches ``step`` (each then moves past it)."""
        if step.kind == "const":
            ok = self._constant(step.data)
        elif step.kind == "log":
            ok, self.log = self._strings(_LOG_HEADER)
        elif step.kind == "skip":
            ok, _ = self._strings(_SKIP_HEADER)
        elif step.kind == "stream":
            ok = self._stream()
        else:
            ok = self._offset()
        np.minimum(self.at, self.limit, out=self.at)
        return ok

    def _constant(self, expected: bytes) -> bool:
        """Every record holds ``expected`` here. Up to 8 bytes (a key), compared in one gather
        of 8 bytes a record; longer (the shared keys and values), with one Arrow
        ``starts_with`` over the bytes from each record's position to the next one's
        (positions are in order: no copy, one ``memcmp`` a record; each Arrow call costs
        ~0.1 ms whatever its size, so it is kept for what numpy cannot do in one gather)."""
        if len(expected) <= 8:
            shown = self.words[self.at] & ((1 << 8 * len(expected)) - 1)
            ok = bool((shown == int.from_bytes(expected, "little")).all())
        else:
            bounds = np.empty(len(self.at) + 1, np.int64)  # (np.append: 5x the calls' cost)
            bounds[:-1], bounds[-1] = self.at, len(self.padded)
            slices = pa.Array.from_buffers(
                pa.large_binary(), len(self.at), [None, pa.py_buffer(bounds), self.buffer]
            )
            ok = pc.starts_with(slices, pattern=expected).false_count == 0
        self.at = self.at + len(expected)
        return ok

    def _heads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each record's next 8 bytes (one gather), their first byte (the msgpack header, a
        view), and the 8 bytes as a big-endian number (the header in its top byte)."""
        words = self.words[self.at]
        return words, words.view(np.uint8)[::8], words.byteswap()  # little-endian: low first

    def _strings(self, header: np.ndarray) -> tuple[bool, tuple[np.ndarray, np.ndarray]]:
        """Whether each record holds a string of the ``header`` table's here, and (start,
        length) of each (a nil's: length 0)."""
        _, head, big = self._heads()
        size = header.take(head)  # 0: not such a header (``take``: 2x faster than [])
        length = _cut(big, head, _LENGTH_SHIFT, _LENGTH_MASK).view(np.int64)
        start = self.at + size
        self.at = start + length
        return bool(size.all()), (start, length)

    def _stream(self) -> bool:
        """``stream``: code 0 ``stdout``, 1 ``stderr``, 2 nil."""
        words, head, _ = self._heads()
        shown = words & ((1 << 56) - 1)
        out, err = (shown == int.from_bytes(s, "little") for s in _STREAMS)
        nil = head == _NIL
        self.stream = err.view(np.int8) + 2 * nil.view(np.int8)
        self.at = self.at + np.where(nil, 1, len(_STREAMS[0]))
        return bool((out | err | nil).all())

    def _offset(self) -> bool:
        """``offset``: a non-negative integer (or nil), kept with its nil mask."""
        _, head, big = self._heads()
        size = _UINT_SIZE.take(head)  # 0: not a non-negative integer or nil
        value = _cut(big, head, _UINT_SHIFT, _UINT_MASK)
        wide = head == _UINT64  # its 8 bytes are not all in the header's 8
        if wide.any():
            value = np.where(wide, self.words[self.at + 1].byteswap(), value)
        self.offset = (value.view(np.int64), head == _NIL)
        self.at = self.at + size
        # Over 2**63 - 1: not for the int64 column (the other paths' to decide).
        return bool(size.all() and (value < np.uint64(2**63)).all())


def _cut(big: np.ndarray, head: np.ndarray, shift: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The value of each header (a string's length, an integer) from its 8 bytes as a
    big-endian number (``big``), as the tables say per header byte: shifted, then masked."""
    return (big >> shift.take(head)) & mask.take(head)


def _times_ns(words: np.ndarray, starts: np.ndarray) -> pa.Array | None:
    """The entries' EventTimes as ns (None: one that cannot be kept as sent, see
    :func:`packed.event_times_ns`)."""
    both = words[starts + _TIME_AT].byteswap()  # big-endian: seconds << 32 | nanoseconds
    seconds = (both >> np.uint64(32)).view(np.int64)  # (32-bit halves: no cast needed)
    nanoseconds = (both & np.uint64(0xFFFFFFFF)).view(np.int64)
    return packed.event_times_ns(seconds, nanoseconds)


def _logs(blob: bytes, start: np.ndarray, length: np.ndarray) -> pa.Array | None:
    """The lines, copied out of the blob once (None: one is not valid UTF-8)."""
    n = len(start)
    bounds = np.empty(2 * n + 1, np.int32)
    bounds[0:-1:2] = start
    bounds[1::2] = start + length
    bounds[-1] = len(blob)
    pieces = pa.StringArray.from_buffers(2 * n, pa.py_buffer(bounds), pa.py_buffer(blob))
    # Every other piece: the lines, not what is between them (indices in bounds by design).
    lines = pc.take(pieces, np.arange(0, 2 * n, 2), boundscheck=False)
    if _ascii(lines, int(length.sum())):
        return lines  # ASCII is UTF-8
    try:
        lines.validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    return lines


def _ascii(lines: pa.Array, size: int) -> bool:
    """Whether the ``size`` bytes of ``lines`` are all ASCII: numpy's ``max`` reads them at
    ~0.06 instructions a byte, Arrow's UTF-8 validation at ~0.7 (most log lines are ASCII)."""
    if not size:
        return True
    data = np.frombuffer(lines.buffers()[2], np.uint8, count=size)
    return bool(data.max() < 0x80)


def _stream(codes: np.ndarray | None, n: int, dict_type: pa.DataType) -> pa.Array:
    """The ``stream`` column as :func:`packed.constant_columns` builds it: its dictionary holds
    the streams in the order they first appear (Arrow's ``dictionary_encode`` of the codes,
    NULL for nil), not a Python string a row hashed into one."""
    if codes is None:
        return packed.constant_column(None, n, dict_type)
    if (codes == codes[0]).all():
        return packed.constant_column(_STREAM_NAMES[codes[0]], n, dict_type)
    encoded = pc.dictionary_encode(pa.array(codes, mask=codes == 2))
    names = pa.array([_STREAM_NAMES[code] for code in encoded.dictionary.to_pylist()])
    return pa.DictionaryArray.from_arrays(encoded.indices, names)


def _offsets(offset: tuple[np.ndarray, np.ndarray] | None, n: int) -> pa.Array:
    """The ``offset`` column (NULL where nil, or everywhere when records have no ``offset``)."""
    if offset is None:
        return pa.nulls(n, pa.int64())
    values, nil = offset
    return pa.array(values, pa.int64(), mask=nil if nil.any() else None)
