"""PackedForward entries from logq-shipper -> Arrow columns with one msgspec call per message.

The hot path of the receive side. A PackedForward blob is ``size`` concatenated msgpack
``[time, record]`` entries; prefixing it with an array32 header (``0xdd`` + ``size``) makes it one
msgpack array that :mod:`msgspec` decodes in a single C call, straight into small structs (no
per-entry dicts, no per-entry Python hook). What makes it fast:

* the record is decoded into :class:`_Record`: only the keys that become columns are read,
  everything else (``time`` string, Fluent Bit metadata…) is skipped without building objects;
* the low-cardinality keys (stream, service, container and host names, image, source id) are
  kept as :class:`msgspec.Raw` slices: a shipper's batch comes from one file, so each of them is
  almost always one value for the whole message and is decoded once (a constant dictionary
  column) instead of once per line;
* EventTime stays as its raw fixext8 bytes and is converted for the whole batch with numpy.

This path is strict on purpose: anything it does not expect (no or a wrong ``size``, integer or
float times, a value of an unexpected type, invalid UTF-8, a record without ``log``) returns
None and the caller takes the general path (:mod:`aggregator.decode`), which accepts the whole
protocol and coerces what it can. Both produce identical batches for identical input.
"""

from __future__ import annotations

import struct

import msgspec
import numpy as np
import pyarrow as pa

from shipper import wire

_NIL = msgspec.Raw(b"\xc0")
_FIXEXT8_EVENT_TIME = (0xD7, wire.EVENT_TIME_EXT)
_ENTRY_BYTES = 10  # fixext8 EventTime: d7 00 + 4 bytes seconds + 4 bytes nanoseconds


class _Record(msgspec.Struct):
    """The keys of a logq-shipper record that the buffer keeps (others are skipped)."""

    log: str | None = None
    stream: msgspec.Raw = _NIL
    service: msgspec.Raw = _NIL
    container_id: msgspec.Raw = _NIL
    container_name: msgspec.Raw = _NIL
    host: msgspec.Raw = _NIL
    image: msgspec.Raw = _NIL
    format: msgspec.Raw = _NIL
    source_id: msgspec.Raw = _NIL
    offset: int | None = None


class _Entry(msgspec.Struct, array_like=True):
    """``[time, record]``; the time kept as its msgpack bytes (converted in bulk)."""

    time: msgspec.Raw
    record: _Record


_ENTRIES = msgspec.msgpack.Decoder(list[_Entry])
_TEXT = msgspec.msgpack.Decoder(str | None)
_ARRAY32 = struct.Struct(">BI")

#: Columns of :data:`aggregator.decode.BUFFER_SCHEMA` after ``log``, in order, as _Record fields.
RAW_KEYS = (
    wire.KEY_STREAM,
    wire.KEY_SERVICE,
    wire.KEY_CONTAINER_ID,
    wire.KEY_CONTAINER_NAME,
    wire.KEY_HOST,
    wire.KEY_IMAGE,
    wire.KEY_FORMAT,
    wire.KEY_SOURCE_ID,
)


def decode_entries(blob: bytes, size: object) -> list[_Entry] | None:
    """The entries of a PackedForward blob whose ``size`` option is right, else None."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= len(blob) // 3:
        return None  # an entry takes >= 3 bytes: a hostile size cannot make a huge list
    try:
        return _ENTRIES.decode(_ARRAY32.pack(0xDD, size) + blob)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        return None  # wrong size, unexpected types or bytes: the general path decides


def _times_ns(entries: list[_Entry]) -> pa.Array | None:
    joined = b"".join([e.time for e in entries])
    if len(joined) != _ENTRY_BYTES * len(entries):
        return None
    raw = np.frombuffer(joined, dtype=np.uint8).reshape(-1, _ENTRY_BYTES)
    if not ((raw[:, 0] == _FIXEXT8_EVENT_TIME[0]) & (raw[:, 1] == _FIXEXT8_EVENT_TIME[1])).all():
        return None
    pairs = raw[:, 2:].copy().view(">u4").astype(np.int64)
    return pa.array(pairs[:, 0] * 1_000_000_000 + pairs[:, 1])


def _dict_column(raws: list[msgspec.Raw], dict_type: pa.DataType) -> pa.Array:
    """A dictionary column from msgpack values; decoded once when they are all the same."""
    first = raws[0]
    if raws.count(first) == len(raws):
        value = _TEXT.decode(first)
        if value is None:
            return pa.nulls(len(raws), dict_type)
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(raws), dtype=np.int32)), pa.array([value], pa.string())
        )
    return pa.array([_TEXT.decode(r) for r in raws], dict_type)


def columns(entries: list[_Entry], dict_type: pa.DataType) -> list[pa.Array] | None:
    """``time_ns``, ``log``, the :data:`RAW_KEYS` columns and ``offset``, or None (general path)."""
    times = _times_ns(entries)
    if times is None:
        return None
    records = [e.record for e in entries]
    logs = [r.log for r in records]
    if None in logs:
        return None  # records without ``log``: message keys / JSON, done by the general path
    try:
        out = [times, pa.array(logs, pa.string())]
        for key in RAW_KEYS:
            out.append(_dict_column([getattr(r, key) for r in records], dict_type))
        out.append(pa.array([r.offset for r in records], pa.int64()))
    except (msgspec.MsgspecError, ValueError, pa.ArrowException, OverflowError):
        return None
    return out
