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
* EventTime stays as its raw fixext8 bytes and is converted for the whole batch with numpy;
* first of all, the *constant-metadata* decoder: the first entry is read with msgpack, and a
  decoder is built (and cached) whose record type has those metadata values as ``Literal``
  fields. msgspec then checks every record against them without building any per-record value
  (about half the cost of the :class:`msgspec.Raw` fields); a record that differs fails the
  check, and the message is decoded again with the per-record fields.

The array header also makes the decode exact: msgspec reads ``size`` entries and refuses any
byte after them, so a truncated blob or a ``size`` that is not the entry count never passes
here; the caller's general path then refuses the truncated blob and decodes every entry of
the other.

This path is strict on purpose: anything it does not expect (no or a wrong ``size``, integer or
float times, a value of an unexpected type, invalid UTF-8, a record without ``log``) returns
None and the caller takes the general path (:mod:`aggregator.decode`), which accepts the whole
protocol and coerces what it can. Both produce identical batches for identical input.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any, Literal

import msgpack
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


#: The keys of a record that are the same on every line of one source (all of RAW_KEYS but
#: ``stream``): the constant-metadata decoder checks them instead of building them per record.
CONSTANT_KEYS = RAW_KEYS[1:]
#: Constant-metadata decoders kept (one per source a shipper sends from, roughly) ...
_MAX_DECODERS = 1024
#: ... and the longest metadata (in characters) that gets one, so hostile values stay small.
_MAX_METADATA_CHARS = 4096
#: Objects the first entry may build while its metadata is read (a shipper record: ~20).
_MAX_FIRST_ENTRY_OBJECTS = 4096
#: Smaller messages take the per-record path: building a decoder (~0.1 ms) pays off only over
#: many records, and a client sending tiny messages with ever new metadata cannot make every
#: message build one.
CONSTANT_MIN_ENTRIES = 64
_DECODERS: dict[tuple[str | None, ...], msgspec.msgpack.Decoder] = {}


def _sized(blob: bytes, size: object) -> bytes | None:
    """The blob as one msgpack array of ``size`` entries, or None for an impossible size."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= len(blob) // 3:
        return None  # an entry takes >= 3 bytes: a hostile size cannot make a huge list
    return _ARRAY32.pack(0xDD, size) + blob


def decode_entries(blob: bytes, size: object) -> list[_Entry] | None:
    """The entries of a PackedForward blob whose ``size`` option is right, else None."""
    array = _sized(blob, size)
    if array is None:
        return None
    try:
        return _ENTRIES.decode(array)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        return None  # wrong size, unexpected types or bytes: the general path decides


def _first_metadata(blob: bytes) -> tuple[str | None, ...] | None:
    """The :data:`CONSTANT_KEYS` values of the blob's first record (None: absent or nil), or
    None when that entry is not a ``[time, record]`` pair with string or nil values."""
    unpacker = msgpack.Unpacker(
        io.BytesIO(blob),
        raw=False,
        strict_map_key=False,
        max_buffer_size=max(len(blob), 1024),
        **wire.ObjectBudget(_MAX_FIRST_ENTRY_OBJECTS).hooks(),  # a ProtocolError (ValueError)
    )
    try:
        first = next(unpacker, None)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(first, list) or len(first) != 2 or not isinstance(first[1], dict):
        return None
    values = tuple(first[1].get(key) for key in CONSTANT_KEYS)
    if not all(v is None or isinstance(v, str) for v in values):
        return None
    if sum(len(v) for v in values if v is not None) > _MAX_METADATA_CHARS:
        return None
    return values


def _constant_decoder(metadata: tuple[str | None, ...]) -> msgspec.msgpack.Decoder:
    """A decoder of ``[time, record]`` entries whose records all carry exactly ``metadata``."""
    decoder = _DECODERS.get(metadata)
    if decoder is not None:
        return decoder
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (wire.KEY_LOG, str | None, None),
        (wire.KEY_STREAM, Literal["stdout", "stderr"] | None, None),
        (wire.KEY_OFFSET, int | None, None),
    ]
    for key, value in zip(CONSTANT_KEYS, metadata, strict=True):
        # A value is required and must be equal; an absent (or nil) one must stay absent or nil.
        fields.append((key, Literal[value]) if value is not None else (key, None, None))
    record = msgspec.defstruct("_ConstantRecord", fields, kw_only=True)
    entry = msgspec.defstruct(
        "_ConstantEntry", [("time", msgspec.Raw), ("record", record)], array_like=True
    )
    decoder = msgspec.msgpack.Decoder(list[entry])  # type: ignore[valid-type]
    if len(_DECODERS) >= _MAX_DECODERS:
        _DECODERS.pop(next(iter(_DECODERS)), None)  # the oldest
    _DECODERS[metadata] = decoder
    return decoder


def _constant(value: str | None, n: int, dict_type: pa.DataType) -> pa.Array:
    if value is None:
        return pa.nulls(n, dict_type)
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
    )


def constant_columns(blob: bytes, size: object, dict_type: pa.DataType) -> list[pa.Array] | None:
    """:func:`columns` of a blob whose records share their metadata, or None (see module doc)."""
    if not isinstance(size, int) or size < CONSTANT_MIN_ENTRIES:
        return None
    array = _sized(blob, size)
    metadata = _first_metadata(blob) if array is not None else None
    if array is None or metadata is None:
        return None
    try:
        entries = _constant_decoder(metadata).decode(array)
    except (msgspec.MsgspecError, ValueError):
        return None

    def keys(records: list[Any]) -> list[pa.Array]:
        n = len(records)
        streams = [r.stream for r in records]
        same = streams.count(streams[0]) == n
        stream = _constant(streams[0], n, dict_type) if same else pa.array(streams, dict_type)
        return [stream, *(_constant(value, n, dict_type) for value in metadata)]

    return _assemble(entries, keys)


def _times_ns(entries: list[Any]) -> pa.Array | None:
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
        return _constant(_TEXT.decode(first), len(raws), dict_type)
    return pa.array([_TEXT.decode(r) for r in raws], dict_type)


def columns(entries: list[_Entry], dict_type: pa.DataType) -> list[pa.Array] | None:
    """``time_ns``, ``log``, the :data:`RAW_KEYS` columns and ``offset``, or None (general path)."""

    def keys(records: list[Any]) -> list[pa.Array]:
        return [_dict_column([getattr(r, key) for r in records], dict_type) for key in RAW_KEYS]

    return _assemble(entries, keys)


def _assemble(
    entries: list[Any], keys: Callable[[list[Any]], list[pa.Array]]
) -> list[pa.Array] | None:
    """Times, ``log``, the ``keys`` columns of the records and ``offset``; None for what the
    general path must do (integer times, records without ``log``, values of other types)."""
    times = _times_ns(entries)
    if times is None:
        return None
    records = [e.record for e in entries]
    logs = [r.log for r in records]
    if None in logs:
        return None  # records without ``log``: message keys / JSON, done by the general path
    try:
        return [
            times,
            pa.array(logs, pa.string()),
            *keys(records),
            pa.array([r.offset for r in records], pa.int64()),
        ]
    except (msgspec.MsgspecError, ValueError, pa.ArrowException, OverflowError):
        return None
