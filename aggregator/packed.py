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
* EventTime stays as its raw fixext8 bytes and is converted for the whole batch with numpy
  (integer times and Fluent Bit's ``[[time, metadata], record]`` headers, their metadata
  skipped unbuilt, one entry at a time);
* first of all, the *constant-metadata* decoder: the first entry is read with msgpack, and a
  decoder is built (and cached) whose record type has those metadata values as ``Literal``
  fields. msgspec then checks every record against them without building any per-record value
  (about half the cost of the :class:`msgspec.Raw` fields); a record that differs fails the
  check, and the message is decoded again with the per-record fields.

The array header also makes the decode exact: msgspec reads ``size`` entries and refuses any
byte after them, so a truncated blob or a ``size`` that is not the entry count never passes
here; the caller's general path then refuses the truncated blob and decodes every entry of
the other.

A blob without a ``size`` option (Fluent Bit without ``Send_options``, Fluentd, fluent-logger)
has its entries counted first (:func:`count_entries`, in C, nothing built), but only when the
general path would accept every byte of it: skipping values unbuilt must not make this path
accept a blob that the general path refuses (past its object budget, its entry limit, msgpack's
nesting limit...). The general path then refuses it as before, with its reason.

A logq-shipper blob of :data:`CONSTANT_MIN_ENTRIES` or more entries is first read by
:mod:`.packed_scan` (column-wise, from its bytes, no per-line object); what that declines
comes here.

This path is strict on purpose: anything it does not expect (a wrong ``size``, float times, a
value of an unexpected type, a ``stream`` other than ``stdout``/``stderr``, invalid UTF-8, a
record without ``log``) returns None and the caller takes the general path
(:mod:`aggregator.decode`), which accepts the whole protocol and coerces what it can. Both
produce identical batches for identical input.

Records of Fluent Bit's kubernetes filter, FireLens and Docker's fluentd driver carry their
metadata under other keys (``kubernetes``, ``source``, ``ecs_task_definition``): the two
decoders above refuse such a record in C, and :func:`client_columns` decodes the message with
those keys as :class:`msgspec.Raw` slices and fills the keys the records lack
(:mod:`.clientmeta`), as the general path does.
"""

from __future__ import annotations

import functools
import io
import itertools
import struct
from collections.abc import Callable, Generator
from operator import attrgetter, itemgetter
from typing import Any, Literal

import msgpack
import msgspec
import numpy as np
import pyarrow as pa

from aggregator import clientmeta
from shipper import wire

_NIL = msgspec.Raw(b"\xc0")
#: The default of a key a record lacks, told apart from an explicit nil (``_NIL``).
_ABSENT = msgspec.Raw(b"")
#: Keys other clients use for the line when there is no ``log`` (Fluent Bit, fluent-logger),
#: in the order the general path looks them up (:func:`aggregator.decode.message_of`).
MESSAGE_KEYS = ("message", "msg", "MESSAGE")
_FIXEXT8_EVENT_TIME = (0xD7, wire.EVENT_TIME_EXT)
_ENTRY_BYTES = 10  # fixext8 EventTime: d7 00 + 4 bytes seconds + 4 bytes nanoseconds


class _Record(msgspec.Struct, gc=False):
    """The keys of a logq-shipper record that the buffer keeps (others are skipped).

    ``gc=False`` here and on every struct decoded per record: they hold only text, numbers and
    other such structs (no reference cycle), and the collector then never tracks or scans the
    hundreds of thousands a segment decodes."""

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
    # The line of a record without ``log`` (:func:`_lines`): kept unbuilt until needed.
    message: msgspec.Raw = _ABSENT
    msg: msgspec.Raw = _ABSENT
    MESSAGE: msgspec.Raw = _ABSENT
    # Other clients' metadata (:mod:`.clientmeta`): a record carrying any of it fails here
    # (msgspec checks it in C, nothing is built) and the message takes :func:`client_columns`.
    source: None = None
    kubernetes: None = None
    ecs_task_definition: None = None


class _Entry(msgspec.Struct, array_like=True, gc=False):
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


def count_entries(blob: bytes, max_entries: int) -> int | None:
    """The number of entries of a blob sent without a (usable) ``size`` option, so that the
    msgspec decoders can read it; None when the general path must decide.

    The msgspec decoders skip the values they do not keep without building them, so by
    themselves they would accept hostile records that the general path
    (:func:`shipper.wire.unpack_entries`, which builds every value) refuses. A count is given
    only when the general path would build every entry of the blob without refusing any, so
    both paths accept the same blobs and the general path keeps giving its reasons:

    * the object budget (:func:`shipper.wire.message_budget`) cannot be reached: every object
      takes a byte, so a blob of at most :func:`shipper.wire.message_objects` bytes never
      reaches it (a longer one is left to the general path, which counts);
    * the blob is whole entries, at most ``max_entries`` of them, none nested deeper than
      msgpack's stack or holding a byte msgpack refuses: msgpack's C ``skip`` walks it
      without building anything (it stops where the general path would stop too);
    * no array or map is longer than ``max_entries`` and no ext is a malformed msgpack
      Timestamp (two refusals ``skip`` does not check): the few entries whose bytes could
      hold one (see :func:`_suspect_entries`) are built as the general path builds them.

    Not checked: a map or an array holding a map used as a map key. Python cannot hash it:
    the general path reads it as its text (:func:`shipper.wire.map_key_text`), the msgspec
    path skips the value it keys, unbuilt, as it does for a blob with a ``size`` option; both
    store the same rows (as Fluentd, in Ruby, accepts such records).
    """
    if not blob or max_entries < _MIN_COUNTED_LIMIT:
        return None
    if len(blob) > wire.message_objects(max_entries):
        return None
    ends = _entry_ends(blob, max_entries)
    if not ends or ends[-1] != len(blob):
        return None  # a truncated last entry or trailing bytes: refused by the general path
    spots = _spots(blob, max_entries)
    if spots is None:
        return None
    if spots:
        try:
            wire.unpack_entries(
                _suspect_entries(blob, ends, spots),
                max_entries,
                raw=False,
                use_list=False,  # as aggregator.decode unpacks them: arrays as map keys hash
                strict_map_key=False,
                unicode_errors="surrogateescape",
            )
        except wire.ProtocolError:
            return None
    return len(ends)


#: Below this entry limit a fixarray or fixmap (up to 15 items) could exceed it: not counted.
_MIN_COUNTED_LIMIT = 16
_ARRAY16, _ARRAY32_HEADER, _MAP16, _MAP32 = 0xDC, 0xDD, 0xDE, 0xDF
_TIMESTAMP_EXT = 0xFF  # ext type -1
_STOP = object()


def _entry_ends(blob: bytes, max_entries: int) -> list[int] | None:
    """Where each complete entry at the start of the blob ends, or None when the general path
    would refuse the blob whatever follows: more than ``max_entries`` entries, nesting deeper
    than msgpack's stack, a byte that is no msgpack type."""
    steps = entry_ends_in_steps(blob, max_entries, max_entries + 1)  # one step
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def entry_ends_in_steps(
    blob: bytes, max_entries: int, per_step: int
) -> Generator[None, None, list[int] | None]:
    """:func:`_entry_ends`, ``per_step`` entries a step: :mod:`aggregator.big_messages` lets
    the event loop run at each ``yield`` while it finds a big message's entries."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(blob) + 1024)
    unpacker.feed(blob)
    ends: list[int] = []
    while len(ends) <= max_entries:
        before = len(ends)
        skips = itertools.islice(iter(unpacker.skip, _STOP), per_step)
        try:  # a C loop: msgpack's skip() then tell(), appended as they come
            ends.extend(map(itemgetter(1), zip(skips, iter(unpacker.tell, _STOP), strict=False)))
        except msgpack.OutOfData:
            break  # the end of the blob, or a truncated entry: told by the last end
        except (msgpack.UnpackException, ValueError):  # StackError, FormatError
            return None
        if len(ends) - before < per_step:
            break
        yield
    return ends if len(ends) <= max_entries else None


#: Most header-like bytes :func:`_spots` looks at per KiB of blob before it leaves the blob to
#: the general path (real records: a few per 100 entries, mostly in EventTimes).
_MAX_SPOTS_PER_KIB = 16


def _spots(blob: bytes, max_entries: int) -> list[int] | None:
    """Where the blob's bytes may hold an array or map longer than ``max_entries`` (an
    array16/32 or map16/32 header announcing more) or an ext of type -1 (a msgpack Timestamp,
    which msgpack refuses unless well-formed): the header byte of each. None when there are too
    many such bytes to look at each (binary data, a hostile blob): the general path decides.

    Found from the bytes alone (``bytes.find`` runs at memory speed), without parsing, so most
    are bytes inside strings, integers or EventTimes that only look like such a header."""
    size = len(blob)
    budget = _MAX_SPOTS_PER_KIB * (size // 1024 + 1)
    widths = {_ARRAY32_HEADER: 4, _MAP32: 4}
    if max_entries < 0xFFFF:
        widths |= {_ARRAY16: 2, _MAP16: 2}
    spots: list[int] = []
    for byte in (*widths, _TIMESTAMP_EXT):
        needle = bytes((byte,))
        find = blob.find
        at = find(needle)
        while at >= 0:
            budget -= 1
            if budget < 0:
                return None
            if byte == _TIMESTAMP_EXT:
                if _after_ext_header(blob, at):
                    spots.append(at)
            else:
                width = widths[byte]
                if (
                    at + width >= size
                    or int.from_bytes(blob[at + 1 : at + 1 + width], "big") > max_entries
                ):
                    spots.append(at)
            at = find(needle, at + 1)
    return spots


def _after_ext_header(blob: bytes, at: int) -> bool:
    """Whether ``blob[at]`` may be the type byte of an ext: right after fixext 1..16
    (d4..d8), or after ext 8/16/32 (c7, c8, c9) and their 1, 2 or 4 length bytes."""
    return (
        (at >= 1 and 0xD4 <= blob[at - 1] <= 0xD8)
        or (at >= 2 and blob[at - 2] == 0xC7)
        or (at >= 3 and blob[at - 3] == 0xC8)
        or (at >= 5 and blob[at - 5] == 0xC9)
    )


def _suspect_entries(blob: bytes, ends: list[int], spots: list[int]) -> bytes:
    """The entries holding a spot (:func:`_spots`), concatenated. A spot inside an entry's
    EventTime (the 8 bytes after its ``[`` and ``d7 00``, or after ``[[`` and ``d7 00`` in
    Fluent Bit's ``[[time, metadata], record]``) is no header: most spots are there, and are
    dropped."""
    stops = np.asarray(ends, dtype=np.int64)
    starts = np.concatenate(([0], stops[:-1]))
    where = np.asarray(spots, dtype=np.int64)
    index = np.searchsorted(stops, where, side="right")
    first = starts[index]
    offset = where - first
    data = np.frombuffer(blob, dtype=np.uint8)
    last = len(data) - 1

    def at(k: int) -> np.ndarray:
        return data[np.minimum(first + k, last)]

    head, time_type = (at(0) == 0x92), _FIXEXT8_EVENT_TIME
    plain = head & (at(1) == time_type[0]) & (at(2) == time_type[1]) & (offset >= 3)
    headed = head & (at(1) == 0x92) & (at(2) == time_type[0]) & (at(3) == time_type[1])
    in_time = (plain & (offset <= 10)) | (headed & (offset >= 4) & (offset <= 11))
    kept = np.unique(index[~in_time]).tolist()
    return b"".join(blob[int(starts[i]) : ends[i]] for i in kept)


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
        *((key, msgspec.Raw, _ABSENT) for key in MESSAGE_KEYS),
        *((key, None, None) for key in clientmeta.CLIENT_KEYS),  # see _Record
    ]
    for key, value in zip(CONSTANT_KEYS, metadata, strict=True):
        # A value is required and must be equal; an absent (or nil) one must stay absent or nil.
        fields.append((key, Literal[value]) if value is not None else (key, None, None))
    record = msgspec.defstruct("_ConstantRecord", fields, kw_only=True, gc=False)
    entry = msgspec.defstruct(
        "_ConstantEntry", [("time", msgspec.Raw), ("record", record)], array_like=True, gc=False
    )
    decoder = msgspec.msgpack.Decoder(list[entry])  # type: ignore[valid-type]
    if len(_DECODERS) >= _MAX_DECODERS:
        _DECODERS.pop(next(iter(_DECODERS)), None)  # the oldest
    _DECODERS[metadata] = decoder
    return decoder


def constant_column(value: str | None, n: int, dict_type: pa.DataType) -> pa.Array:
    """``n`` rows of one value (None: NULL) as a dictionary column of ``dict_type``.

    A source sends many messages of the same size (a busy one: its sender's largest) with the
    same metadata, so short values' columns are kept (Arrow arrays are immutable): a message's
    eight (its tag and metadata keys) then cost a lookup each, not ~40,000 instructions.
    NULL columns are not kept: their buffers are ``n`` rows long each (not shared zeros), so
    1,024 kept ones of messages of many sizes (up to 500,000 entries) would hold GiBs."""
    if value is None:
        return pa.nulls(n, dict_type)
    if len(value) > _MAX_KEPT_CHARS:
        return _new_constant_column(value, n, dict_type)
    return _kept_constant_column(value, n, dict_type)


#: Constant columns kept, and the longest value kept (together at most ~4 MiB of values).
_KEPT_COLUMNS = 1024
_MAX_KEPT_CHARS = 1024


def _new_constant_column(value: str, n: int, dict_type: pa.DataType) -> pa.Array:
    """``n`` rows of ``value``: int32 zeros (shared, see :func:`_zeros`) indexing a one-string
    dictionary (``dict_type`` is only the NULL column's, as before)."""
    return pa.DictionaryArray.from_arrays(
        _zeros(1 << max(n - 1, 0).bit_length()).slice(0, n),
        pa.array([value], pa.string()),
        safe=False,  # zeros index the one value
    )


_kept_constant_column = functools.lru_cache(maxsize=_KEPT_COLUMNS)(_new_constant_column)


@functools.lru_cache(maxsize=8)
def _zeros(length: int) -> pa.Array:
    """``length`` int32 zeros, shared by the constant columns' indices (a power of two: few
    lengths, a few MiB together at most, are kept)."""
    return pa.array(np.zeros(length, np.int32))


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
        stream = constant_column(streams[0], n, dict_type) if same else pa.array(streams, dict_type)
        return [stream, *(constant_column(value, n, dict_type) for value in metadata)]

    return _assemble(entries, keys)


def _times_ns(entries: list[Any]) -> pa.Array | None:
    """The entries' times as ns, or None for what the general path must decide.

    The usual case, every time an EventTime, is converted in bulk with numpy; integer times
    and Fluent Bit's ``[time, metadata]`` headers (their metadata skipped unbuilt) one entry
    at a time (:func:`_time_ns`)."""
    raws = [e.time for e in entries]
    joined = b"".join(raws)
    if len(joined) == _ENTRY_BYTES * len(entries):
        # Each time starts where the one before ends, so when every 10-byte row starts with
        # the fixext8 EventTime header, every time is one (a fixext8 is exactly 10 bytes).
        raw = np.frombuffer(joined, dtype=np.uint8).reshape(-1, _ENTRY_BYTES)
        if ((raw[:, 0] == _FIXEXT8_EVENT_TIME[0]) & (raw[:, 1] == _FIXEXT8_EVENT_TIME[1])).all():
            pairs = raw[:, 2:].copy().view(">u4").astype(np.int64)
            return event_times_ns(pairs[:, 0], pairs[:, 1])
    out = [_time_ns(r) for r in raws]
    return None if None in out else pa.array(out, pa.int64())


def event_times_ns(seconds: np.ndarray, nanoseconds: np.ndarray) -> pa.Array | None:
    """EventTimes' two halves (int64) as ns, or None when one cannot be kept as sent (second
    0, nanoseconds of a second or more): the general path stamps those."""
    if ((seconds == 0) | (nanoseconds >= _NS)).any():
        return None
    return pa.array(seconds * _NS + nanoseconds)


#: Largest event time in whole seconds whose nanoseconds fit the int64 ``time_ns`` column.
MAX_TIME_SECONDS = wire.MAX_TIME_SECONDS
_NS = wire.NS_PER_SECOND
_TIME_VALUE = msgspec.msgpack.Decoder(int | msgspec.msgpack.Ext)
_TIME_HEAD = msgspec.msgpack.Decoder(tuple[msgspec.Raw, ...])
_EVENT_TIME = struct.Struct(">II")


def _time_ns(raw: msgspec.Raw) -> int | None:
    """One entry's time as ns: an EventTime or integer seconds, alone or first in a Fluent Bit
    ``[time, metadata]`` header; None for anything else (float times, an empty header, other
    ext types, a time that cannot be kept as sent: the other paths decide or stamp them)."""
    try:
        value = _TIME_VALUE.decode(raw)
    except msgspec.ValidationError:
        try:
            head = _TIME_HEAD.decode(raw)
            value = _TIME_VALUE.decode(head[0]) if head else None
        except (msgspec.MsgspecError, ValueError):
            return None
    except (msgspec.MsgspecError, ValueError):
        return None
    if isinstance(value, int):
        return value * _NS if wire.keepable_seconds(value) else None
    if (
        isinstance(value, msgspec.msgpack.Ext)
        and value.code == wire.EVENT_TIME_EXT
        and len(value.data) == _EVENT_TIME.size
    ):
        seconds, nanoseconds = _EVENT_TIME.unpack(value.data)
        if seconds and nanoseconds < _NS:
            return int(seconds * _NS + nanoseconds)
    return None


def _dict_column(raws: list[msgspec.Raw], dict_type: pa.DataType, stream: bool = False) -> pa.Array:
    """A dictionary column from msgpack values; decoded once when they are all the same.
    ``stream``: the values must be streams (:func:`_checked_streams`, else ValueError)."""
    first = raws[0]
    if raws.count(first) == len(raws):
        value = _TEXT.decode(first)
        if stream:
            _checked_streams([value])
        return constant_column(value, len(raws), dict_type)
    values = [_TEXT.decode(r) for r in raws]
    return pa.array(_checked_streams(values) if stream else values, dict_type)


def columns(entries: list[_Entry], dict_type: pa.DataType) -> list[pa.Array] | None:
    """``time_ns``, ``log``, the :data:`RAW_KEYS` columns and ``offset``, or None (general path)."""

    def keys(records: list[Any]) -> list[pa.Array]:
        return [
            _dict_column([getattr(r, key) for r in records], dict_type, key == wire.KEY_STREAM)
            for key in RAW_KEYS
        ]

    return _assemble(entries, keys)


#: The values a ``stream`` column holds (NULL: none given).
_STREAM_VALUES = frozenset((*clientmeta.STREAMS, None))


def _checked_streams(values: list[str | None]) -> list[str | None]:
    """``values`` of a ``stream`` column, when they are only ``stdout``, ``stderr`` or None;
    else ValueError: another value (``STDERR``, ``console``) is the general path's to coerce
    (:func:`aggregator.clientmeta.stream_of`). Checked on the decoded values (one set
    look-up for a constant column), before any Arrow array is built."""
    if not _STREAM_VALUES.issuperset(values):
        raise ValueError("a stream that is not stdout or stderr")
    return values


class _ClientRecord(msgspec.Struct, gc=False):
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
    message: msgspec.Raw = _ABSENT
    msg: msgspec.Raw = _ABSENT
    MESSAGE: msgspec.Raw = _ABSENT
    source: msgspec.Raw = _ABSENT
    kubernetes: msgspec.Raw = _ABSENT
    ecs_task_definition: msgspec.Raw = _ABSENT


class _ClientEntry(msgspec.Struct, array_like=True, gc=False):
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
    namespace_name: str | None = None
    labels: _Labels | None = None
    annotations: _Annotations | None = None


_CLIENT_ENTRIES = msgspec.msgpack.Decoder(list[_ClientEntry])
_KUBE = msgspec.msgpack.Decoder(_KubeMap)
_FILLABLE = clientmeta.FILLABLE_KEYS  # the metadata of RAW_KEYS (not format, source_id)


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


def _raw_column(raws: list[msgspec.Raw], dict_type: pa.DataType, stream: bool = False) -> pa.Array:
    """:func:`_dict_column` of raws that may be ``_ABSENT`` (a null)."""
    first = raws[0]
    if raws.count(first) == len(raws):
        value = None if first is _ABSENT else _TEXT.decode(first)
        if stream:
            _checked_streams([value])
        return constant_column(value, len(raws), dict_type)
    values = _texts(raws)
    return pa.array(_checked_streams(values) if stream else values, dict_type)


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
            constant_column(fills[k], n, dict_type)  # a filled stream is one (stream_of)
            if k in fills
            else _raw_column(raws[k], dict_type, k == wire.KEY_STREAM)
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
    _checked_streams(values[wire.KEY_STREAM])
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


def _lines(records: list[Any], logs: list[str | None]) -> list[str] | None:
    """``logs`` with the line of each record without ``log``: its first message key (see
    :data:`MESSAGE_KEYS`) that is not nil, when that is text; else None (the general path
    then writes other values, or the whole record, as JSON)."""
    out: list[str] = []
    for record, log in zip(records, logs, strict=True):
        if log is None:
            for key in MESSAGE_KEYS:
                raw = getattr(record, key)
                if raw is _ABSENT:
                    continue
                try:
                    log = _TEXT.decode(raw)
                except (msgspec.MsgspecError, ValueError):  # not text, or invalid UTF-8
                    return None
                if log is not None:
                    break
            else:
                return None
        out.append(log)
    return out


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
        lines = _lines(records, logs)
        if lines is None:
            return None  # a record whose line is itself as JSON: done by the general path
        logs = lines
    try:
        return [
            times,
            pa.array(logs, pa.string()),
            *keys(records),
            pa.array([r.offset for r in records], pa.int64()),
        ]
    except (msgspec.MsgspecError, ValueError, pa.ArrowException, OverflowError):
        return None
