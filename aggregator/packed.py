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

Records of Fluent Bit's kubernetes filter, FireLens and Docker's fluentd driver carry their
metadata under other keys (``kubernetes``, ``source``, ``ecs_task_definition``): the two
decoders above refuse such a record in C, and :func:`client_columns` decodes the message with
those keys as :class:`msgspec.Raw` slices and fills the keys the records lack
(:mod:`.clientmeta`), as the general path does.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Literal

import msgpack
import msgspec
import numpy as np
import pyarrow as pa

from aggregator import clientmeta
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
    # Other clients' metadata (:mod:`.clientmeta`): a record carrying any of it fails here
    # (msgspec checks it in C, nothing is built) and the message takes :func:`client_columns`.
    source: None = None
    kubernetes: None = None
    ecs_task_definition: None = None


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
    if any(first[1].get(key) is not None for key in clientmeta.CLIENT_KEYS):
        return None  # another client's record: :func:`client_columns`
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
        *((key, None, None) for key in clientmeta.CLIENT_KEYS),  # see _Record
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


#: The default of a key a record lacks, told apart from an explicit nil (``_NIL``).
_ABSENT = msgspec.Raw(b"")


class _ClientRecord(msgspec.Struct):
    """A record of another Forward client: the logq keys (absent ones kept as ``_ABSENT``) and
    the metadata :mod:`.clientmeta` maps to them."""

    log: str | None = None
    stream: msgspec.Raw = _ABSENT
    service: msgspec.Raw = _ABSENT
    container_id: msgspec.Raw = _ABSENT
    container_name: msgspec.Raw = _ABSENT
    host: msgspec.Raw = _ABSENT
    image: msgspec.Raw = _ABSENT
    format: msgspec.Raw = _ABSENT
    source_id: msgspec.Raw = _ABSENT
    offset: int | None = None
    source: msgspec.Raw = _ABSENT
    kubernetes: msgspec.Raw = _ABSENT
    ecs_task_definition: msgspec.Raw = _ABSENT


class _ClientEntry(msgspec.Struct, array_like=True):
    time: msgspec.Raw
    record: _ClientRecord


class _Labels(msgspec.Struct, rename={"service": clientmeta.LABEL_SERVICE}):
    service: str | None = None


class _Annotations(msgspec.Struct, rename={"config_hash": clientmeta.ANNOTATION_CONFIG_HASH}):
    config_hash: str | None = None


class _KubeMap(msgspec.Struct):
    """The keys of a Fluent Bit ``kubernetes`` map that logq reads; the rest is skipped unbuilt.
    Any other shape (not a map, a value that is not text) fails: the general path decides."""

    pod_name: str | None = None
    host: str | None = None
    container_name: str | None = None
    docker_id: str | None = None
    container_image: str | None = None
    pod_id: str | None = None
    labels: _Labels | None = None
    annotations: _Annotations | None = None


_CLIENT_ENTRIES = msgspec.msgpack.Decoder(list[_ClientEntry])
_KUBE = msgspec.msgpack.Decoder(_KubeMap)
_FILLABLE = tuple(k for k in RAW_KEYS if k != wire.KEY_FORMAT and k != wire.KEY_SOURCE_ID)


def _kube(raw: msgspec.Raw) -> clientmeta.Kube | None:
    """The :class:`clientmeta.Kube` of a ``kubernetes`` value (None when absent or nil)."""
    m = _KUBE.decode(raw) if raw is not _ABSENT else None
    if m is None:
        return None
    return clientmeta.Kube(
        *(getattr(m, k) or None for k in clientmeta.KUBE_FIELDS),
        label_service=(m.labels.service or None) if m.labels else None,
        config_hash=(m.annotations.config_hash or None) if m.annotations else None,
    )


def _texts(raws: list[msgspec.Raw], decode: Callable[[msgspec.Raw], Any] = _TEXT.decode) -> list:
    """``raws`` decoded (``_ABSENT``: None), once per distinct value: a client's chunk repeats
    a few values (its records come from one container, or a few interleaved: stdout and
    stderr, the pods behind one tag), and equal values decode to the same object."""
    out: list[Any] = []
    prev: msgspec.Raw | None = None
    value: Any = None
    seen: dict[bytes, Any] = {}
    for raw in raws:
        if raw is not prev and raw != prev:
            prev = raw
            if raw is _ABSENT:
                value = None
            else:
                key = bytes(raw)
                value = seen.get(key, seen)
                if value is seen:
                    value = seen[key] = decode(raw)
        out.append(value)
    return out


def _raw_column(raws: list[msgspec.Raw], dict_type: pa.DataType) -> pa.Array:
    """:func:`_dict_column` of raws that may be ``_ABSENT`` (a null)."""
    first = raws[0]
    if raws.count(first) == len(raws):
        return _constant(None if first is _ABSENT else _TEXT.decode(first), len(raws), dict_type)
    return pa.array(_texts(raws), dict_type)


#: Record keys whose values decide :func:`clientmeta.fills` (with which keys are present).
_FILL_INPUTS = (*clientmeta.CLIENT_KEYS, wire.KEY_CONTAINER_NAME, wire.KEY_CONTAINER_ID)


def _fills_of(raws: dict[str, list[msgspec.Raw]], i: int, tag: str) -> dict[str, str]:
    """:func:`clientmeta.fills` of record ``i``."""

    def text(key: str) -> str | None:
        raw = raws[key][i]
        return None if raw is _ABSENT else _TEXT.decode(raw)

    return clientmeta.fills(
        {key for key in _FILLABLE if raws[key][i] is not _ABSENT},
        text(clientmeta.KEY_SOURCE),
        _kube(raws[clientmeta.KEY_KUBERNETES][i]),
        text(clientmeta.KEY_ECS_TASK_DEFINITION),
        text(wire.KEY_CONTAINER_NAME),
        text(wire.KEY_CONTAINER_ID),
        tag,
    )


def _client_keys(records: list[_ClientRecord], dict_type: pa.DataType, tag: str) -> list[pa.Array]:
    """The :data:`RAW_KEYS` columns of other clients' records, their lacking keys filled from
    their metadata by :func:`clientmeta.fills` (as the general path does for dicts).

    A chunk of one container (Fluent Bit tags by log file, FireLens by container) has the same
    metadata and the same keys on every record: its fills are computed once. Otherwise they
    are computed once per distinct combination."""
    n = len(records)
    raws = {k: list(map(attrgetter(k), records)) for k in (*RAW_KEYS, *clientmeta.CLIENT_KEYS)}
    if all(raws[k].count(raws[k][0]) == n for k in _FILL_INPUTS) and all(
        raws[k].count(_ABSENT) in (0, n) for k in _FILLABLE
    ):
        fills = _fills_of(raws, 0, tag)
        return [
            _constant(fills[k], n, dict_type) if k in fills else _raw_column(raws[k], dict_type)
            for k in RAW_KEYS
        ]
    values = {key: _texts(raws[key]) for key in RAW_KEYS}
    sources = _texts(raws[clientmeta.KEY_SOURCE])
    task_definitions = _texts(raws[clientmeta.KEY_ECS_TASK_DEFINITION])
    kubes = _texts(raws[clientmeta.KEY_KUBERNETES], _kube)
    names, ids = values[wire.KEY_CONTAINER_NAME], values[wire.KEY_CONTAINER_ID]
    memo: dict[tuple[Any, ...], dict[str, str]] = {}
    for i in range(n):
        source, kube, task_definition = sources[i], kubes[i], task_definitions[i]
        if source is None and kube is None and task_definition is None:
            continue  # no metadata (or nil): nothing to fill
        present = tuple(raws[key][i] is not _ABSENT for key in _FILLABLE)
        memo_key = (present, source, id(kube), task_definition, names[i], ids[i])
        fills = memo.get(memo_key)
        if fills is None:
            has = {key for key, p in zip(_FILLABLE, present, strict=True) if p}
            fills = clientmeta.fills(has, source, kube, task_definition, names[i], ids[i], tag)
            memo[memo_key] = fills
        for key, value in fills.items():
            values[key][i] = value
    return [pa.array(values[key], dict_type) for key in RAW_KEYS]


def client_columns(
    blob: bytes, size: object, dict_type: pa.DataType, tag: str = ""
) -> list[pa.Array] | None:
    """:func:`columns` for records of Fluent Bit, FireLens or Docker's fluentd driver (see
    :mod:`.clientmeta`), or None for anything the general path must decide."""
    array = _sized(blob, size)
    if array is None:
        return None
    try:
        entries = _CLIENT_ENTRIES.decode(array)
    except (msgspec.MsgspecError, ValueError):
        return None
    return _assemble(entries, lambda records: _client_keys(records, dict_type, tag))


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
