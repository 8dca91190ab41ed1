"""Big PackedForward messages decoded a slice of entries at a time, the event loop free between.

Decoding a message's entries into an Arrow batch runs on the event loop; for a 64 MiB message
(the decompressed limit is four times --max-frame-bytes) it took about a second, during which
every other connection's acks, /metrics and /healthz waited (bench/inflate_stall.py, ``plain``).
A worker thread alone does not help: msgspec, msgpack and Arrow's conversions each hold the GIL
for the whole message (measured: single calls of 150 to 600 ms). So a message whose blob is over
:data:`BIG_BYTES` is cut at its entries' boundaries into slices of about :data:`SLICE_BYTES`
(:func:`decode_steps`), each decoded by :func:`aggregator.decode.decode` as a message of its
own, the caller yielding to the loop between them; the slices' batches are then joined
(:func:`joined`) and framed in the worker thread (:mod:`aggregator.inflate`), where Arrow's
concatenation and IPC writer release the GIL. Smaller messages, what shippers send, keep the
one-step path: slicing gains them nothing.

A Forward-mode message (``[tag, [[time, record], ...], options]``, Fluent Bit's default) of
more than :data:`BIG_ENTRIES` entries, or of more than :data:`BIG_BYTES` bytes on the wire, is
sliced too: msgpack built its entries as its bytes came in (the server's unpacker parses an
unfinished array a read at a time), but turning them into columns took ~0.15 s per 10,000
entries, at once, and framing a message of long lines (2,000 entries of 4 KiB, 64 KiB ones)
held the loop as long as a PackedForward blob of its bytes. Judged by its count alone, such a
message was decoded and framed whole, on the loop. Its entries are Python objects already, so
the slices are cut by count: :data:`SLICE_ENTRIES` entries a slice, fewer when its entries
average more than ``SLICE_BYTES / SLICE_ENTRIES`` bytes (:func:`_slice_entries`: the message's
wire size, which the server knows, over its entry count; a message without one, JSON, has its
entries' text measured). A slice of entries longer than the average is bounded by
``--max-frame-bytes``. Each slice is decoded as a Forward-mode message of its own, which takes
the path its entries call for, as a PackedForward slice does.
Each slice's entries are dropped from the message once decoded (replaced by None: the message
is garbage afterwards), so that they are freed a slice a step: freed at once, 150,000 entries
held the loop ~0.1 to 0.25 s more.

A message is the same decoded in slices as whole:

* its entries are found with msgpack's C ``skip`` (as :func:`aggregator.packed.count_entries`
  finds them), :data:`ENDS_PER_STEP` at a time; a blob that is not whole entries (a truncated
  one, trailing bytes, nesting msgpack refuses) or holds more than ``max_entries`` of them is
  decoded whole, as before, which refuses it with its reason;
* each slice takes the path its entries call for (:mod:`aggregator.packed_scan`, msgspec, the
  general path), which all build the same columns; a ``size`` option is kept, as each slice's
  count, only when it was the message's entry count (a wrong one sent the whole message down
  the general path: its slices go unsized, counted, as a blob without one);
* a slice that refuses (ProtocolError) refuses the message: nothing of it is stored;
* bad entries and replaced times are told once for the message, their counts added up;
* a blob with a ``size`` option is first cut without parsing (:func:`_fast_slices`) and
  read by the fast paths alone, every slice checked to be whole entries;
* a blob over :func:`shipper.wire.message_objects` bytes, which the general path would hold
  to the message's object budget (tiny nested values), is sliced only that way; any other (a
  Fluentd chunk without ``size``, records only the general path reads) is decoded whole, on
  the loop, as before.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from aggregator.decode import (
    ChunkId,
    OnBadEntries,
    OnReplacedTimes,
    chunk_of,
    decode,
    decode_packed,
)
from aggregator.packed import entry_ends_in_steps
from shipper import wire

#: Blob bytes past which a message is decoded in slices (logq-shipper's messages hold 512 KiB
#: of text at most, Fluent Bit's a few MiB; a 4 MiB one stalls the loop ~15 to 60 ms).
BIG_BYTES = 4 * 1024 * 1024
#: Bytes of entries decoded in one step: ~2 to 30 ms on the fast paths (measured), which cost
#: ~10% more CPU so than whole (~25% in 1 MiB slices: each pays its own set-up).
SLICE_BYTES = 2 * 1024 * 1024
#: Entries whose ends are found in one step (~5 ms of msgpack skips for 450-byte entries).
ENDS_PER_STEP = 16_384
#: Entries past which a Forward-mode message is decoded in slices (~4 MiB of 450-byte ones).
BIG_ENTRIES = 8192
#: Entries of a Forward-mode message decoded in one step (~1 MiB of 450-byte ones: ~10 to
#: 30 ms on its fast path, which pays per entry more than the PackedForward ones).
SLICE_ENTRIES = 2048
#: Bytes counted for each field of a measured Forward-mode entry (its key and head), and for a
#: value neither text nor binary (a number, a nested map: a guess).
_FIELD_GUESS = 8
_VALUE_GUESS = 64
_ENTRY_HEAD = b"\x92\xd7\x00"  # fixarray(2), fixext8 of type 0 (EventTime)
_COMPRESSED = ("compressed", b"compressed")

#: What :func:`decode_steps` gives once done: the slices' batches and the message's chunk.
Sliced = tuple[list[pa.RecordBatch], ChunkId | None]


def is_big(obj: Any, size: int | None = None) -> bool:
    """Whether ``obj`` is a PackedForward message (gzip inflated already) whose blob is over
    :data:`BIG_BYTES`, or a Forward-mode one of more than :data:`BIG_ENTRIES` entries or
    :data:`BIG_BYTES` bytes: the messages :func:`decode_steps` decodes in slices. ``size``:
    the message's bytes on the wire, when known (None: its entries' text is measured)."""
    return _blob(obj) is not None or _forward(obj, size) is not None


def message_bytes(obj: Any, size: int | None, max_entries: int) -> int | None:
    """``size``, the message's bytes on the wire, when known; else (JSON) a Forward-mode
    message's entries measured (:func:`_entry_bytes`) once, for the server to pass on to
    :func:`is_big` and :func:`decode_steps` as its size: each measured them again when told
    none (up to four times, the last time all of them, for :func:`_slice_entries`). Measured
    as far as they use it: all of a message they may slice; of one they refuse whole (more
    than ``max_entries`` entries), only what :func:`is_big` reads (up to :data:`BIG_BYTES`,
    none past :data:`BIG_ENTRIES` entries). None for any other message (its size is not
    used)."""
    parts = _forward_parts(obj) if size is None else None
    if parts is None:
        return size
    entries = parts[1]
    if len(entries) <= max_entries:
        return _forward_bytes(entries, None, 1 << 62)
    return None if len(entries) > BIG_ENTRIES else _forward_bytes(entries, None, BIG_BYTES)


def _forward(
    obj: Any, size: int | None = None
) -> tuple[str | bytes, list[Any], dict[Any, Any] | None] | None:
    """(tag, entries, options) of a big Forward-mode message (``size``: see :func:`is_big`),
    else None."""
    parts = _forward_parts(obj)
    if parts is None:
        return None
    entries = parts[1]
    if len(entries) <= BIG_ENTRIES and _forward_bytes(entries, size, BIG_BYTES) <= BIG_BYTES:
        return None
    return parts


def _forward_parts(obj: Any) -> tuple[str | bytes, list[Any], dict[Any, Any] | None] | None:
    """(tag, entries, options) of a Forward-mode message with entries, big or not, else None."""
    if not isinstance(obj, list) or len(obj) not in (2, 3) or not isinstance(obj[0], str | bytes):
        return None
    entries, options = obj[1], obj[2] if len(obj) == 3 else None
    if not isinstance(entries, list) or not entries:
        return None
    if options is not None and not isinstance(options, dict):
        return None
    return obj[0], entries, options


def _forward_bytes(entries: list[Any], size: int | None, enough: int) -> int:
    """The bytes of a Forward-mode message's ``entries``: its wire ``size`` when known (a
    subtraction: the server's unpacker tells where each message ends), else their text
    measured (:func:`_entry_bytes`), the count stopped once past ``enough``."""
    if size is not None:
        return size
    total = 0
    for entry in entries:
        total += _entry_bytes(entry)
        if total > enough:
            break
    return total


def _entry_bytes(entry: Any) -> int:
    """About the wire bytes of a Forward-mode entry: its record's text and binary values
    (nested values guessed at :data:`_VALUE_GUESS`, keys at :data:`_FIELD_GUESS`): what
    decoding and framing it cost. For messages whose wire size is not known (JSON)."""
    record = entry[1] if isinstance(entry, list | tuple) and len(entry) == 2 else None
    if not isinstance(record, dict):
        return _FIELD_GUESS
    return _FIELD_GUESS + sum(
        _FIELD_GUESS + (len(v) if isinstance(v, str | bytes) else _VALUE_GUESS)
        for v in record.values()
    )


def _slice_entries(entries: list[Any], size: int | None) -> int:
    """Entries of a Forward-mode message decoded in one step: :data:`SLICE_ENTRIES`, or as
    many as make :data:`SLICE_BYTES` at the message's average entry size (one at least)."""
    total = _forward_bytes(entries, size, 1 << 62)
    if total <= 0:
        return SLICE_ENTRIES
    return max(1, min(SLICE_ENTRIES, SLICE_BYTES * len(entries) // total))


def _blob(obj: Any) -> tuple[str | bytes, bytes, dict[Any, Any]] | None:
    """(tag, blob, options) of a big PackedForward message, else None."""
    if not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[0], str | bytes):
        return None
    tag, blob, options = obj
    if not isinstance(blob, bytes) or len(blob) <= BIG_BYTES or not isinstance(options, dict):
        return None
    if any(options.get(key) not in (None, "text", b"text") for key in _COMPRESSED):
        return None  # a gzip blob not inflated yet (the server inflates it first), or unknown
    return tag, blob, options


def decode_steps(
    obj: Any,
    max_decompressed: int,
    max_entries: int,
    on_replaced_times: OnReplacedTimes | None = None,
    on_bad_entries: OnBadEntries | None = None,
    size: int | None = None,
) -> Generator[None, None, Sliced]:
    """:func:`aggregator.decode.decode` of a message, a step at a time: the caller lets other
    work run at each ``yield``; the generator returns the batches of the message's slices (one
    when it was decoded whole) and its chunk. ``is_big(obj, size)`` messages are decoded in
    slices (see the module docstring: a Forward-mode one loses its entries meanwhile); raises
    what :func:`decode` raises."""
    found = _blob(obj)
    forward = _forward(obj, size) if found is None else None
    if forward is not None and len(forward[1]) <= max_entries:
        chunk = chunk_of(obj)  # a chunk no ack could echo refuses the message before any work
        pieces = _forward_pieces(*forward, _slice_entries(forward[1], size))
        kept = yield from _decoded(
            pieces, max_decompressed, max_entries, on_replaced_times, on_bad_entries
        )
        return kept, chunk
    if found is None:  # (a Forward-mode message of too many entries: refused with its reason)
        return [decode(obj, max_decompressed, max_entries, on_replaced_times, on_bad_entries)[0]], (
            chunk_of(obj)
        )
    tag, blob, options = found
    chunk = chunk_of(obj)  # a chunk no ack could echo refuses the message before any work
    size = options.get("size")
    if type(size) is int and 0 < size <= max_entries:
        fast = yield from _fast_slices(tag, blob, size)
        if fast is not None:
            return fast, chunk
    if len(blob) > wire.message_objects(max_entries):
        # Whole, the general path would hold this blob to the object budget, which only a
        # whole decode counts: decoded whole, as before.
        yield
        batch, _ = decode(obj, max_decompressed, max_entries, on_replaced_times, on_bad_entries)
        return [batch], chunk
    ends = yield from _entry_ends(blob, max_entries)
    if ends is None:  # decoded whole: refused with its reason, as before
        yield
        batch, _ = decode(obj, max_decompressed, max_entries, on_replaced_times, on_bad_entries)
        return [batch], chunk
    unsized = {k: v for k, v in options.items() if k != "size"}
    keep_size = type(size) is int and size == len(ends)
    pieces = (
        [
            tag,
            blob[ends[first - 1] if first else 0 : ends[last - 1]],
            {**unsized, "size": last - first} if keep_size else unsized,
        ]
        for first, last in _slices(ends)
    )
    batches = yield from _decoded(
        pieces, max_decompressed, max_entries, on_replaced_times, on_bad_entries
    )
    return batches, chunk


def _forward_pieces(
    tag: str | bytes, entries: list[Any], options: dict[Any, Any] | None, step: int
) -> Iterator[list[Any]]:
    """The Forward-mode messages of ``step`` of ``entries`` each; the entries of one are
    dropped from ``entries`` when the next is asked for (it has been decoded)."""
    rest = [] if options is None else [options]
    for first in range(0, len(entries), step):
        piece = entries[first : first + step]
        yield [tag, piece, *rest]
        entries[first : first + len(piece)] = [None] * len(piece)


def _decoded(
    pieces: Iterable[list[Any]],
    max_decompressed: int,
    max_entries: int,
    on_replaced_times: OnReplacedTimes | None,
    on_bad_entries: OnBadEntries | None,
) -> Generator[None, None, list[pa.RecordBatch]]:
    """The batches of a message's slices (``pieces``, each a message of its own), one decoded
    a step; their replaced times and bad entries told once, as the message's."""
    replaced: list[pa.RecordBatch] = []
    example: list[str] = []
    bad: dict[str, int] = {}

    def note_replaced(rows: pa.RecordBatch, sent: str) -> None:
        replaced.append(rows)
        example.append(sent)

    def note_bad(_: str, reasons: dict[str, int]) -> None:
        for reason, count in reasons.items():
            bad[reason] = bad.get(reason, 0) + count

    batches: list[pa.RecordBatch] = []
    for piece in pieces:
        yield
        batches.append(decode(piece, max_decompressed, max_entries, note_replaced, note_bad)[0])
    if replaced and on_replaced_times is not None:
        on_replaced_times(joined(replaced), example[0])
    if bad and on_bad_entries is not None:
        on_bad_entries(batches[0].column("tag")[0].as_py(), bad)
    return batches


def _fast_slices(
    tag: str | bytes, blob: bytes, size: int
) -> Generator[None, None, list[pa.RecordBatch] | None]:
    """The batches of a blob of ``size`` EventTime entries (logq-shipper's, Fluent Bit's
    with ``Send_options``), cut without parsing it: at the first ``[EventTime`` head past each
    :data:`SLICE_BYTES`, each slice holding as many entries as it has such heads, read by the
    fast paths, a slice a step. Each slice must be exactly that many whole entries (they
    check it) and the counts must add up to ``size``, so a cut or a count fooled by those
    bytes inside a value fails, never misreads: None then (and as soon as a slice declines),
    and the caller cuts at parsed entry ends instead. Parsing them costs more than the fast
    paths' whole decode (~0.15 us an entry)."""
    batches: list[pa.RecordBatch] = []
    start = total = 0
    while start < len(blob):
        cut = blob.find(_ENTRY_HEAD, start + SLICE_BYTES)
        piece = blob[start : len(blob) if cut < 0 else cut]
        count = _heads(piece)
        yield
        batch = decode_packed(tag, piece, count) if count else None
        if batch is None or batch.num_rows != count:
            return None
        batches.append(batch)
        start, total = start + len(piece), total + count
    return batches if total == size else None


def _heads(piece: bytes) -> int:
    """How many times :data:`_ENTRY_HEAD` occurs in ``piece``: with numpy, from its rare first
    byte (``bytes.count`` takes ~0.6 ms a MiB, as long as decoding the entries)."""
    data = np.frombuffer(piece, np.uint8)
    at = np.flatnonzero(data[:-2] == _ENTRY_HEAD[0])
    return int(np.count_nonzero((data[at + 1] == _ENTRY_HEAD[1]) & (data[at + 2] == 0)))


def _entry_ends(blob: bytes, max_entries: int) -> Generator[None, None, list[int] | None]:
    """Where each entry of ``blob`` ends, :data:`ENDS_PER_STEP` entries a step; None when the
    blob is not whole entries, or holds more than ``max_entries`` (decoded whole, refused)."""
    ends = yield from entry_ends_in_steps(blob, max_entries, ENDS_PER_STEP)
    if not ends or ends[-1] != len(blob):
        return None
    return ends


def _slices(ends: list[int]) -> list[tuple[int, int]]:
    """(first, last + 1) entry indices of consecutive slices of about :data:`SLICE_BYTES`."""
    out: list[tuple[int, int]] = []
    first, start = 0, 0
    while first < len(ends):
        last = min(bisect.bisect_left(ends, start + SLICE_BYTES, first) + 1, len(ends))
        out.append((first, last))
        first, start = last, ends[last - 1]
    return out


def joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of ``batches`` (their dictionaries unified), which it empties: the slices are
    garbage once joined, so a message is held twice at most. Run in the worker thread: Arrow's
    concatenation of 64 MiB holds the GIL little and the loop for ~0.1 s."""
    if len(batches) == 1:
        return batches.pop()
    batch = pa.concat_batches(batches)
    batches.clear()
    return batch
