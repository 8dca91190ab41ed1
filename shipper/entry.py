"""The msgpack bytes of a PackedForward body, encoded in one call per batch.

A PackedForward body is a concatenation of ``[EventTime, record]`` entries. Each record holds
four per-line keys (``log``, ``stream``, ``time``, ``offset``) and the keys shared by the whole
source (service, container, host...). Parsers keep lines as columns (:class:`~shipper.lines.
Lines`) with each entry's ``[EventTime,`` head already packed (one ``struct`` call per line, done
in bulk with ``map``); here the columns are interleaved into one flat list -- the entry head, the
map header, the per-line pairs, then the shared pairs pre-encoded once -- and msgspec encodes the
list in a single C call. The flat list's own array header is not part of the body: the caller
gets a view that skips it, so the (large) body is not copied again.

Why this shape: per-line Python work is the shipper's throughput limit. A per-line ``pack`` call
plus slicing and concatenation cost about 1.3 µs a line; slice assignments and one ``encode``
cost about 0.1 µs.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from shipper import wire
from shipper.fsnames import SURROGATE as _SURROGATE

PER_LINE_KEYS = 4
HEAD = struct.Struct(">3sII")
"""``[EventTime,`` of an entry: fixarray(2), fixext8 type 0, seconds, nanoseconds."""
EVENT_TIME = b"\x92\xd7\x00"

_ENCODER = msgspec.msgpack.Encoder()
_ENCODE = _ENCODER.encode
_K_STREAM, _K_TIME, _K_OFFSET = wire.KEY_STREAM, wire.KEY_TIME, wire.KEY_OFFSET
_STRIDE = 10
"""Flat-list items per entry: head, map header + "log", log, "stream", stream, "time", time,
"offset", offset, shared pairs."""

#: Most bytes one record takes in a body besides its shared keys and 4 per character of its
#: ``log``, ``stream`` and ``time`` texts (UTF-8 takes at most 4 bytes per code point; a lone
#: surrogate becomes U+FFFD, 3): the entry head (11), the map header (1: at most 11 pairs), the
#: four per-line keys (4 + 7 + 5 + 7), the three texts' ``str`` headers (5 each) and the offset
#: (9, a uint64).
RECORD_BYTES = HEAD.size + 1 + 23 + 3 * 5 + 9


def record_bound(log: str, stream: str, time: str, per_record: int) -> int:
    """Most bytes a record of these texts takes, ``per_record`` (:data:`RECORD_BYTES` plus the
    shared keys) included."""
    return per_record + 4 * (len(log) + len(stream) + len(time))


#: Event times an EventTime can carry and the aggregator keeps as sent (ns since the epoch):
#: from 1970-01-01T00:00:01Z (its seconds are unsigned, and a time of 0 is replaced on receipt,
#: as Fluentd's in_forward does) up to 2106-02-07T06:28:15.999999999Z (32-bit seconds).
MIN_EVENT_TIME_NS = 1_000_000_000
MAX_EVENT_TIME_NS = 2**32 * 1_000_000_000 - 1


def entry_head(t_ns: int) -> msgspec.Raw:
    """The pre-encoded ``[EventTime,`` start of an entry for a time in ns since the epoch
    (within :data:`MIN_EVENT_TIME_NS` .. :data:`MAX_EVENT_TIME_NS`; parsers stamp lines
    outside with their read time, see :class:`shipper.rfc3339.TimeParser`)."""
    sec, ns = divmod(t_ns, 1_000_000_000)
    return msgspec.Raw(HEAD.pack(EVENT_TIME, sec, ns))


def head_time_ns(head: msgspec.Raw) -> int:
    """The event time (ns) of a head made by :func:`entry_head`."""
    _, sec, ns = HEAD.unpack(bytes(head))
    return sec * 1_000_000_000 + ns


def map_header(n: int) -> bytes:
    """msgpack map header for ``n`` pairs."""
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big")


def pack_shared(shared: dict[str, Any]) -> bytes:
    """The shared keys of a source's records as concatenated msgpack key/value pairs."""
    return b"".join(_ENCODE(k) + _ENCODE(v) for k, v in shared.items())


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 0x10000 else 5


def encode_body(
    heads: list[msgspec.Raw],
    logs: list[str],
    streams: list[str],
    times: list[str],
    offsets: list[int],
    shared: dict[str, Any],
) -> memoryview:
    """The concatenated ``[EventTime, record]`` entries of the given columns.

    Lone surrogates (from JSON ``\\ud800`` escapes) cannot be UTF-8: they become U+FFFD in the
    columns (in place) and the batch is encoded again -- never a crash.
    """
    n = len(heads)
    if n == 0:
        return memoryview(b"")
    k = _STRIDE
    flat: list[Any] = [None] * (n * k)
    flat[0::k] = heads
    flat[1::k] = [msgspec.Raw(map_header(PER_LINE_KEYS + len(shared)) + _ENCODE(wire.KEY_LOG))] * n
    flat[3::k] = [_K_STREAM] * n
    flat[5::k] = [_K_TIME] * n
    flat[7::k] = [_K_OFFSET] * n
    flat[8::k] = offsets
    flat[9::k] = [msgspec.Raw(pack_shared(shared))] * n
    for attempt in (0, 1):
        flat[2::k] = logs
        flat[4::k] = streams
        flat[6::k] = times
        try:
            out = _ENCODE(flat)
            break
        except UnicodeEncodeError:
            if attempt:
                raise
            for column in (logs, streams, times):
                column[:] = [_clean(s) for s in column]
    return memoryview(out)[_array_header_size(len(flat)) :]


def _clean(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value
