"""Forward messages -> Arrow record batches, fast: the aggregator's receive hot path.

:func:`shipper.wire.decode_message` builds one Python object per event, which costs more than
everything else on the path. Here a message's entries are unpacked by msgpack's C code, checked
for shape in bulk (``map``/``set`` over the entry list, no per-entry Python function), and turned
into Arrow columns straight away: times with numpy from the EventTime ext bytes, the wire keys
with one list comprehension per key. PackedForward blobs, with or without a ``size`` option,
first try :mod:`.packed_scan` (a logq-shipper blob read column-wise from its bytes, with numpy),
then :mod:`.packed` (msgspec). Anything unusual (float times, values of the wrong type,
invalid UTF-8) falls back to the general path, :func:`shipper.wire.decode_message` plus
per-record coercion, which accepts the same protocol; a message neither path accepts raises
:class:`shipper.wire.ProtocolError`. The coercion replaces invalid UTF-8 as Fluent Bit and Vector
do (:func:`_lossy_text`), gives a service name that is not UTF-8 a folder of its own
(:func:`_coerce_service`, :func:`_tag_service`), ignores metadata that is not text
(:func:`_coerce_text`: a ``service`` of ``42`` then takes the tag's), keeps only ``stdout``
and ``stderr`` as a stream, in any case (:func:`aggregator.clientmeta.stream_of`), and reads
keys sent as ``bin`` as keys (:func:`records_batch`).

Garbage collection: decoding allocates millions of small dicts and strings; CPython's default
collector thresholds make it rescan them over and over (measured: ~2x the decode time). The
service raises the thresholds at start (:func:`tune_gc`).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import operator
import re
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack
import numpy as np
import pyarrow as pa

from aggregator import clientmeta, packed, packed_scan, small_frames, source_ids
from aggregator.flag_values import BUFFER_COMPRESSIONS
from aggregator.stored_names import stored_service
from aggregator.tags import tag_service
from aggregator.throttle import Throttle
from shipper import wire
from shipper.discover import names_service

log = logging.getLogger("logq.aggregator.decode")

#: Keys of the records kept as columns (besides ``log``); low-cardinality ones dictionary-coded.
#: (One list, declared where the fast path fills them, so both paths build the same columns.)
DICT_KEYS = packed.RAW_KEYS
DICT_STRING = pa.dictionary(pa.int32(), pa.string())
#: The schema of every batch in the buffer.
BUFFER_SCHEMA = pa.schema(
    [
        pa.field("tag", DICT_STRING),
        pa.field("time_ns", pa.int64()),
        pa.field(wire.KEY_LOG, pa.string()),
        *[pa.field(k, DICT_STRING) for k in DICT_KEYS],
        pa.field(wire.KEY_OFFSET, pa.int64()),
    ]
)
#: Keys other clients use for the line when there is no ``log`` (Fluent Bit, fluent-logger).
MESSAGE_KEYS = packed.MESSAGE_KEYS


#: Keys every logq-shipper record carries (``format`` is optional, looked up separately).
_SHIPPER_KEY_NAMES = (
    wire.KEY_LOG,
    wire.KEY_STREAM,
    wire.KEY_SERVICE,
    wire.KEY_CONTAINER_ID,
    wire.KEY_CONTAINER_NAME,
    wire.KEY_HOST,
    wire.KEY_IMAGE,
    wire.KEY_SOURCE_ID,
    wire.KEY_OFFSET,
)
_SHIPPER_KEYS = operator.itemgetter(*_SHIPPER_KEY_NAMES)


def tune_gc() -> None:
    """Fewer, larger young-generation collections (see the module docstring)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


_EVENT_TIME = struct.Struct(">II")


class RawEventTime(bytes):
    """An EventTime as its 8 ext bytes (4 seconds, 4 nanoseconds, big-endian), converted in
    bulk by :func:`_times_ns`. Its own type, so that an 8-byte msgpack ``bin`` in the time's
    place (plain ``bytes``: a string time, stamped with the receive time, see
    :func:`shipper.wire.time_to_ns`) is never read as one."""

    __slots__ = ()

    def event_time(self) -> wire.EventTime:
        seconds, nanoseconds = _EVENT_TIME.unpack(self)
        return wire.EventTime(seconds, nanoseconds)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == wire.EVENT_TIME_EXT and len(data) == 8:
        return RawEventTime(data)
    return msgpack.ExtType(code, data)


#: Lone surrogates that are no byte escaped by msgpack's ``surrogateescape`` (U+DC80..U+DCFF):
#: JSON-mode ``\ud800`` escapes, which stand for no byte.
_UNESCAPED_SURROGATES = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _lossy_text(value: str) -> str:
    """``value`` as valid text, its invalid UTF-8 replaced as Fluent Bit and Vector replace it
    (Rust's ``from_utf8_lossy``): one U+FFFD per invalid sequence, every other byte kept.

    msgpack hands a ``str`` holding invalid UTF-8 over with each bad byte escaped as a lone
    surrogate (``surrogateescape``): encoded back, they are the bytes as sent, which Python's
    ``replace`` decoding then replaces per sequence, as it does for a ``bin`` value. (Replacing
    the surrogates themselves gave a ``?`` per byte, the same as a real question mark.) Other
    lone surrogates (JSON ``\\ud800``) stand for no byte: one U+FFFD each."""
    if _encodable(value):
        return value
    sent = _UNESCAPED_SURROGATES.sub("\ufffd", value).encode("utf-8", "surrogateescape")
    return sent.decode("utf-8", "replace")


def _encodable(value: str) -> bool:
    """Whether ``value`` is valid text (no lone surrogate), at no cost for ASCII (most values:
    ``isascii`` is O(1) in CPython)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str:
    if isinstance(value, str):
        return _lossy_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _invalid_as_sent(value: str | bytes) -> str | None:
    """A text value that is not valid UTF-8 as a ``str`` holding its bytes as sent (bad bytes
    as ``surrogateescape`` surrogates, as msgpack hands them over); None for valid text."""
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("utf-8", "surrogateescape")
        return None
    return None if _encodable(value) else value


def _coerce_service(value: Any) -> str | None:
    """:func:`_coerce_text` of a ``service`` value; one that is not valid UTF-8 becomes its
    partition value at once (:func:`athena.schema.sanitize_service`, which hashes its bytes as
    sent): the buffer holds only valid text, and two names replaced to the same text would
    land in one folder."""
    if isinstance(value, str | bytes) and type(value) is not RawEventTime:
        sent = _invalid_as_sent(value)
        if sent is not None:
            return stored_service(sent)
    return _coerce_text(value)


def _coerce_text(value: Any) -> str | None:
    """A metadata value (``host``, ``image``...) as text; None for one that is not text
    (``42``, ``true``, ``{"name": "orders"}``): it is ignored, as if absent (a ``service``
    then takes the tag's), where JSON-coding it made a junk partition of each such value."""
    if isinstance(value, str | bytes) and type(value) is not RawEventTime:
        return _text(value)
    return None


def _jsonable(value: Any) -> Any:
    if type(value) is RawEventTime:  # an EventTime in a record, as Forward mode stores it
        return value.event_time().to_ns()
    if isinstance(value, dict):
        return {_text(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | bytes):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or Infinity
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, wire.EventTime):
        return value.to_ns()
    return str(value)


class _BinKeyed(Exception):
    """Records with keys that came as ``bin`` (see :func:`records_batch`)."""


def message_of(record: dict[str, Any]) -> str:
    """The line of a record that has no ``log``: a usual message key, else the record as JSON.

    Raises :class:`_BinKeyed` rather than store a record whose keys came as ``bin`` as JSON:
    its ``b"log"`` is its line (looked for here, where the JSON costs far more, so that the
    usual records pay nothing for it)."""
    for key in MESSAGE_KEYS:
        text = _coerce_str(record.get(key))
        if text is not None:
            return text
    if bytes in set(map(type, record)):
        raise _BinKeyed
    return json.dumps(_jsonable(record), ensure_ascii=False, sort_keys=True)


def _coerce_str(value: Any) -> str | None:
    """Text as it came; any other value as JSON (``true``, ``1.5``, ``{"k": 1}``), never as
    Python's ``repr`` (``True``, ``{'k': 1}``)."""
    if value is None:
        return None
    if isinstance(value, str | bytes) and type(value) is not RawEventTime:
        return _text(value)
    return json.dumps(_jsonable(value), ensure_ascii=False)


_foreign_source_ids = Throttle(math.inf, what="source_id types", logger=log)
"""Types of ``source_id`` values that are not text, each said once per process."""


def _source_id(value: Any) -> str | None:
    """A ``source_id`` as the offset dedup keys it (:mod:`aggregator.dedup`): text only (a
    long one is shortened after every path, :mod:`aggregator.source_ids`).

    logq-shipper always sends text (``host:inode:fingerprint``). A value of another type (``5``,
    ``b"5"``, ``5.0``) is another client's own field that happens to have that name, not such
    an id: coerced to text, ``5`` and ``"5"`` shared one high-water mark and a record of one
    could be dropped as a resend of the other, a silent loss. So it is no id: the record is
    kept as records without ``source_id`` are (a resent message is still recognised by its
    chunk id), and a WARNING says so once per type. The record keeps the field as sent where
    it is stored whole (a record without ``log`` is stored as JSON)."""
    if value is None:
        return None
    if type(value) is str:
        return _text(value)
    kind = type(value).__name__
    if _foreign_source_ids.due(kind, time.time()):
        log.warning(
            "records with a source_id that is not text (%s, e.g. %.40r): not a logq-shipper "
            "source id, so they are stored without the offset dedup (as records without "
            "source_id are; resent messages are still dropped by their chunk id). Said once "
            "per type; if that client means to be deduplicated by offset, send source_id as "
            "text",
            kind,
            value,
        )
    return None


def _all_text(values: Any) -> bool:
    """Whether every value is text or None (no ``source_id`` of another type): one C pass."""
    return set(map(type, values)) <= {str, type(None)}


#: How the general path coerces each :data:`DICT_KEYS` column (``source_id``: text only, the
#: shipper's own key; see :func:`_source_id`).
_COERCE: dict[str, Callable[[Any], str | None]] = {
    **{key: _coerce_text for key in DICT_KEYS},
    wire.KEY_SERVICE: _coerce_service,
    wire.KEY_STREAM: clientmeta.stream_of,
    wire.KEY_SOURCE_ID: _source_id,
}
#: The values of a ``stream`` column that need no coercion.
_STREAM_VALUES = frozenset((*clientmeta.STREAMS, None))


def _coerce_offset(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


#: Largest event time in whole seconds whose nanoseconds fit the int64 ``time_ns`` column.
MAX_TIME_SECONDS = wire.MAX_TIME_SECONDS
_NS = wire.NS_PER_SECOND
_SECONDS = operator.attrgetter("seconds")
_NANOSECONDS = operator.attrgetter("nanoseconds")

#: Called with the rows of one message whose time could not be kept as sent (nil, a string, 0,
#: NaN, infinite, beyond the int64 ``time_ns`` column, EventTime nanoseconds over 999,999,999)
#: and were stamped with the receive time instead, and the first such time as sent.
OnReplacedTimes = Callable[[pa.RecordBatch, str], None]


#: Called with a message's tag and the count of its bad entries per reason (see
#: :class:`shipper.wire.BadEntry`), each stored as a row of its own (:func:`bad_entry_line`).
OnBadEntries = Callable[[str, dict[str, int]], None]

#: Marker at the start of the line of a bad entry's row: what to search ``container_logs`` for.
BAD_ENTRY_MARKER = "[logq: bad Forward entry"
#: Characters of a bad entry's JSON kept in its row (a hostile entry can be megabytes).
BAD_ENTRY_CHARS = 4096
#: Longest ``chunk`` option accepted: it is echoed in the ack, and real clients send a 16-byte
#: id in base64 (24 characters).
MAX_CHUNK_CHARS = 1024
#: A message's ``chunk`` id as the client sent it: msgpack ``str``, or ``bin`` (bytes), which the
#: ack echoes as ``bin`` (as Fluentd's in_forward echoes it).
ChunkId = str | bytes


class _Times(NamedTuple):
    """Event times of a message's entries (ns), with those that could not be kept as sent."""

    ns: pa.Array
    replaced: list[int]
    """Rows stamped with the receive time (see :data:`OnReplacedTimes`)."""
    example: str = ""
    """The first replaced time as it was sent, for the warning."""
    bad: dict[str, int] | None = None
    """Bad entries stored as rows of their own, per reason (:func:`bad_entry_line`)."""


def _times_ns(times: list[Any]) -> _Times:
    """The entries' times as ns: in bulk (numpy) when all are EventTimes or all integers that
    can be kept as sent (the usual cases), else one by one (:func:`_stamped`)."""
    kinds = set(map(type, times))
    if kinds == {RawEventTime}:  # PackedForward through _unpack_entries
        pairs = np.frombuffer(b"".join(times), dtype=">u4").reshape(-1, 2).astype(np.int64)
        seconds, nanoseconds = pairs[:, 0], pairs[:, 1]
    elif kinds == {wire.EventTime}:  # Forward mode (Fluent Bit's default)
        seconds = np.fromiter(map(_SECONDS, times), np.int64, len(times))
        nanoseconds = np.fromiter(map(_NANOSECONDS, times), np.int64, len(times))
    elif (
        kinds == {int}
        and 0 not in times
        and max(times) <= MAX_TIME_SECONDS  # beyond, numpy would wrap around silently
        and min(times) >= -MAX_TIME_SECONDS
    ):
        return _Times(pa.array(np.asarray(times, dtype=np.int64) * _NS), [])
    else:
        return _stamped(times)
    if ((seconds == 0) | (nanoseconds >= _NS)).any():  # EventTimes that cannot be kept
        return _stamped(times)
    return _Times(pa.array(seconds * _NS + nanoseconds), [])


def _stamped(times: list[Any]) -> _Times:
    """Times one by one; those that cannot be kept as sent get the receive time (as Fluentd's
    in_forward does for time 0) rather than refuse the message: the good entries beside them
    would be lost, and every resend refused the same way."""
    out: list[int] = []
    replaced: list[int] = []
    now = time.time_ns()
    for i, t in enumerate(times):
        if type(t) is RawEventTime:  # a plain ``bytes`` is a bin: stamped (time_to_ns)
            t = t.event_time()
        ns = wire.time_to_ns(t)
        if ns is None:
            replaced.append(i)
            ns = now
        out.append(ns)
    example = _as_sent(times[replaced[0]]) if replaced else ""
    return _Times(pa.array(out, pa.int64()), replaced, example)


def _as_sent(value: Any) -> str:
    """A time as the client sent it, for a log line (EventTime as ``EventTime(s, ns)``; plain
    bytes are a ``bin`` value)."""
    if type(value) is RawEventTime:
        value = value.event_time()
    if isinstance(value, wire.EventTime):
        return f"EventTime({value.seconds}, {value.nanoseconds})"
    return repr(value)


def _tag_array(tag: str, n: int) -> pa.Array:
    return packed.constant_column(_text(tag), n, DICT_STRING)


def records_batch(tag: str, times_ns: pa.Array, records: list[dict[str, Any]]) -> pa.RecordBatch:
    """Columns of :data:`BUFFER_SCHEMA` from decoded records (fast path, then coercion).

    Records that lack a key logq-shipper always sends get it from other clients' metadata
    (:mod:`.clientmeta`); a shipper's records take the one C-level pass only. Records with
    keys that came as ``bin`` (told by :func:`_has_bin_keys` once a record lacks a shipper's
    key, or by :func:`message_of`) are read again with their keys as text
    (:func:`_text_keyed`).
    """
    try:
        return _records_batch(tag, times_ns, records)
    except _BinKeyed:
        return _records_batch(tag, times_ns, _text_keyed(records))


def _records_batch(tag: str, times_ns: pa.Array, records: list[dict[str, Any]]) -> pa.RecordBatch:
    n = len(records)
    try:  # every logq-shipper record has these keys: one C-level pass, then transpose
        values = list(zip(*map(_SHIPPER_KEYS, records), strict=True))
        filled: dict[str, dict[int, str]] = {}
    except KeyError:
        if _has_bin_keys(records):
            raise _BinKeyed from None
        values = [[r.get(k) for r in records] for k in _SHIPPER_KEY_NAMES]
        by_name = dict(zip(_SHIPPER_KEY_NAMES, values, strict=True))
        filled = clientmeta.record_fills(records, tag, by_name)
    try:
        by_key = dict(zip(_SHIPPER_KEY_NAMES, values, strict=True)) if n else {}
        logs = by_key.get(wire.KEY_LOG, [])
        if None in logs:
            logs = [message_of(r) if v is None else v for v, r in zip(logs, records, strict=True)]
        columns = [pa.array(logs, pa.string())]
        for key in DICT_KEYS:
            column = by_key[key] if key in by_key else [r.get(key) for r in records]
            column = _filled(column, filled.get(key))
            if key == wire.KEY_STREAM and not _STREAM_VALUES.issuperset(column):
                raise ValueError("a stream to coerce")  # ``STDERR``, ``console``: below
            if key == wire.KEY_SOURCE_ID and not _all_text(column):
                raise ValueError("a source_id that is not text")  # Arrow takes b"5" as "5"
            columns.append(pa.array(column, DICT_STRING))
        columns.append(pa.array(by_key.get(wire.KEY_OFFSET, []), pa.int64()))
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError):
        logs = [_coerce_str(r.get(wire.KEY_LOG)) for r in records]
        logs = [message_of(r) if v is None else v for v, r in zip(logs, records, strict=True)]
        columns = [pa.array([_text(v) for v in logs], pa.string())]
        for key in DICT_KEYS:
            column = _filled([r.get(key) for r in records], filled.get(key))
            coerce = _COERCE[key]
            columns.append(pa.array([coerce(v) for v in column], DICT_STRING))
        columns.append(
            pa.array([_coerce_offset(r.get(wire.KEY_OFFSET)) for r in records], pa.int64())
        )
    return pa.RecordBatch.from_arrays(
        [_tag_array(tag, n), times_ns, *columns], schema=BUFFER_SCHEMA
    )


def _has_bin_keys(records: list[dict[Any, Any]]) -> bool:
    """Whether any record has a key sent as ``bin``. Checked once a record lacks a key every
    logq-shipper record has, not only when a record lacks ``log``: ``{"log": ..., b"service":
    ...}`` must take its service from ``b"service"``, as the general path
    (:func:`shipper.wire.decode_message`) reads it, or the folder of the same record would
    depend on the path its message takes (a float time or a bad entry elsewhere in the message
    sends it down the general path). One C-level pass over the distinct keys."""
    return bytes in set(map(type, set().union(*records)))


def _text_keyed(records: list[dict[Any, Any]]) -> list[dict[Any, Any]]:
    """``records`` with their ``bin`` keys read as text, as the general path reads them
    (:func:`shipper.wire.decode_message`): ``{b"log": ...}`` from a client that sends its keys
    as ``bin`` is a ``log``, not a record whose line is itself as JSON; likewise ``stream``,
    ``service`` and every other key read."""
    return [
        {(k.decode("utf-8", "replace") if type(k) is bytes else k): v for k, v in r.items()}
        for r in records
    ]


def _filled(column: Any, fills: dict[int, str] | None) -> Any:
    """``column`` with the values at ``fills``' indices replaced (itself when there are none)."""
    if not fills:
        return column
    column = list(column)
    for i, value in fills.items():
        column[i] = value
    return column


def _fast_entries(tag: str, entries: list[Any]) -> tuple[pa.RecordBatch, _Times] | None:
    """The batch of well-formed ``[time, record]`` entries, or None to take the general path."""
    if set(map(type, entries)) - {list, tuple}:
        return None
    if min(map(len, entries), default=2) < 2:
        return None
    records = [e[1] for e in entries]
    if set(map(type, records)) - {dict}:
        return None
    times = [e[0] for e in entries]
    kinds = set(map(type, times))
    if kinds & {list, tuple}:  # Fluent Bit's [[time, metadata], record]
        if min(len(t) for t in times if type(t) in (list, tuple)) < 1:
            return None
        times = [t[0] if type(t) in (list, tuple) else t for t in times]  # metadata: unused
        kinds = set(map(type, times))
    if kinds - {RawEventTime, bytes, int, wire.EventTime}:
        return None
    try:
        times_ns = _times_ns(times)
    except (wire.ProtocolError, ValueError, OverflowError):
        return None
    return records_batch(tag, times_ns.ns, records), times_ns


def _packed(tag: str, blob: bytes, size: object) -> pa.RecordBatch | None:
    """The batch of a PackedForward blob read by :mod:`.packed_scan` (a logq-shipper's), else
    by msgspec (:mod:`.packed`), or None."""
    cols = packed_scan.scan_columns(blob, size, DICT_STRING)
    if cols is None:
        cols = packed.constant_columns(blob, size, DICT_STRING)
    if cols is None:
        entries = packed.decode_entries(blob, size)
        if entries is not None:
            cols = packed.columns(entries, DICT_STRING)
        else:  # e.g. other clients' metadata (``kubernetes``, ``source``...), or a bad blob
            cols = packed.client_columns(blob, size, DICT_STRING, tag)
    if cols is None:
        return None
    times, logs, *rest = cols
    return pa.RecordBatch.from_arrays(
        [_tag_array(tag, len(times)), times, logs, *rest], schema=BUFFER_SCHEMA
    )


def _counted(tag: str, blob: bytes, max_entries: int) -> pa.RecordBatch | None:
    """:func:`_packed` of a blob without a ``size`` option, its entries counted first; None
    when the general path must decide (which then accepts or refuses as it always has)."""
    size = packed.count_entries(blob, max_entries)
    if size is None:
        return None
    try:
        return _packed(tag, blob, size)
    except RecursionError:
        # msgspec's limit on nesting is lower than msgpack's: a value nested ~1,000 deep that
        # msgpack builds (and the record's line does not need) is the general path's to take.
        return None


def bad_entry_line(entry: Any, exc: wire.BadEntry) -> str:
    """The line stored for a bad entry: the marker, why, and the entry as JSON (its first
    :data:`BAD_ENTRY_CHARS` characters), so that it is found, understood and fixed at the
    sender, while the good entries of its message are stored and acked as usual."""
    text = json.dumps(_jsonable(entry), ensure_ascii=False, default=str)
    if len(text) > BAD_ENTRY_CHARS:
        text = f"{text[:BAD_ENTRY_CHARS]}... (cut: {len(text) - BAD_ENTRY_CHARS} more characters)"
    return f"{BAD_ENTRY_MARKER}: {exc}] {text}"


def _general(obj: Any, max_decompressed: int, max_entries: int) -> tuple[pa.RecordBatch, _Times]:
    bad: dict[str, int] = {}
    received = time.time_ns()

    def on_bad_entry(entry: Any, exc: wire.BadEntry) -> wire.Event:
        bad[exc.reason] = bad.get(exc.reason, 0) + 1
        return wire.Event("", received, {wire.KEY_LOG: bad_entry_line(entry, exc)})

    try:
        msg = wire.decode_message(obj, max_decompressed, max_entries, on_bad_entry)
    except wire.ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # Hostile values the general decoder does not name: a map or an array as a map key
        # inside PackedForward entries... (NaN or infinite float times are stamped, below.)
        raise wire.ProtocolError(f"bad Forward message: {exc}") from exc
    times = [e.time_ns for e in msg.events]
    replaced = [i for i, t in enumerate(times) if t is None]
    example = ""
    if replaced:
        now = time.time_ns()
        times = [now if t is None else t for t in times]
        example = _as_sent(_sent_time(obj, replaced[0]))
    stamped = _Times(pa.array(times, pa.int64()), replaced, example, bad or None)
    return records_batch(msg.tag, stamped.ns, [e.record for e in msg.events]), stamped


class _InBlob:
    def __repr__(self) -> str:
        return "a time inside a PackedForward blob"


_IN_BLOB = _InBlob()


def _sent_time(obj: Any, index: int) -> Any:
    """The time of entry ``index`` as sent in Message or Forward mode (for the warning); the
    PackedForward blob is not unpacked again."""
    second = obj[1]
    if not isinstance(second, list | tuple):
        return second if index == 0 and not isinstance(second, bytes | str) else _IN_BLOB
    head = second[index][0]
    return head[0] if isinstance(head, list | tuple) else head


def _unpack_entries(blob: bytes, max_entries: int = wire.MAX_MESSAGE_ENTRIES) -> list[Any]:
    """All the entries of a PackedForward blob (a truncated one or too many of them: refused)."""
    return wire.unpack_entries(
        blob,
        max_entries,
        raw=False,
        use_list=False,  # tuples are cheaper to build; entries are only read
        ext_hook=_ext_hook,
        strict_map_key=False,
        unicode_errors="surrogateescape",
    )


def decode(
    obj: Any,
    max_decompressed: int,
    max_entries: int = wire.MAX_MESSAGE_ENTRIES,
    on_replaced_times: OnReplacedTimes | None = None,
    on_bad_entries: OnBadEntries | None = None,
) -> tuple[pa.RecordBatch, ChunkId | None]:
    """One unpacked Forward message -> (its events as a buffer batch, its ``chunk`` or None).

    Whatever is wrong with the message raises :class:`shipper.wire.ProtocolError`, before
    anything of it is stored: more than ``max_entries`` entries, a truncated PackedForward
    blob, records nested too deeply to convert. A ``size`` option that is not the entry count
    is ignored, as Fluentd does (every entry is decoded). An event time that cannot be kept as
    sent does not refuse the message: the event gets the receive time, and
    ``on_replaced_times`` hears of it (see :data:`OnReplacedTimes`). Nor does a bad entry (a
    record that is not a map, an entry that is not ``[time, record]``, a time of no known
    kind): it becomes a row of its own stamped with the receive time, its line
    :func:`bad_entry_line`, and ``on_bad_entries`` hears of it (:data:`OnBadEntries`). Only the
    general path builds such rows: the fast paths decline a message with a bad entry, so the
    check costs them nothing.
    """
    try:
        batch, chunk, times = _decode(obj, max_decompressed, max_entries)
    except RecursionError:
        # A record nested ~1000 deep is valid msgpack (and JSON) but overflows the recursive
        # conversion to JSON text: the message is refused like any other malformed one.
        raise wire.ProtocolError("a record nested too deeply to decode") from None
    batch = source_ids.bounded(batch)  # here, after every path: the same ids whichever ran
    service = _tag_service(obj[0])  # obj is a list with a tag: _decode refused others
    if service is not None:
        batch = _with_service(batch, service)
    if times is not None and times.replaced and on_replaced_times is not None:
        on_replaced_times(batch.take(pa.array(times.replaced, pa.int32())), times.example)
    if times is not None and times.bad and on_bad_entries is not None:
        on_bad_entries(batch.column("tag")[0].as_py(), times.bad)
    return batch, chunk


def decode_packed(tag: str | bytes, blob: bytes, size: int) -> pa.RecordBatch | None:
    """The batch of a PackedForward ``blob`` of ``size`` entries read by the fast paths alone
    (:mod:`.packed_scan`, msgspec), as :func:`decode` makes it; None when they decline (the
    general path, and its object budget, would decide). For :mod:`aggregator.big_messages`."""
    text = tag if isinstance(tag, str) else tag.decode("utf-8", "replace")
    try:
        batch = _packed(text, blob, size)
    except RecursionError:
        return None
    if batch is None:
        return None
    batch = source_ids.bounded(batch)
    service = _tag_service(tag)
    return batch if service is None else _with_service(batch, service)


def _tag_service(tag: str | bytes) -> str | None:
    """The service of a tag that is not valid UTF-8 (the partition value of what it names,
    :func:`aggregator.tags.tag_service`, hashed over its bytes as sent: see
    :func:`_coerce_service`), else None: the usual case, where the tag's text in the buffer
    decides the service at flush (:func:`aggregator.batch.service_column`)."""
    sent = _invalid_as_sent(tag)
    return None if sent is None else stored_service(tag_service(sent))


def _with_service(batch: pa.RecordBatch, service: str) -> pa.RecordBatch:
    """``batch`` with ``service`` in the rows without one (NULL, empty or blank: those that
    take the tag's, :func:`shipper.discover.names_service`)."""
    index = batch.schema.get_field_index(wire.KEY_SERVICE)
    values = [v if names_service(v) else service for v in batch.column(index).to_pylist()]
    return batch.set_column(index, wire.KEY_SERVICE, pa.array(values, DICT_STRING))


def _decode(
    obj: Any, max_decompressed: int, max_entries: int
) -> tuple[pa.RecordBatch, ChunkId | None, _Times | None]:
    if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[0], str | bytes):
        batch, times = _general(obj, max_decompressed, max_entries)  # the precise ProtocolError
        return batch, None, times
    tag = obj[0] if isinstance(obj[0], str) else obj[0].decode("utf-8", "replace")
    second = obj[1]
    options = _options_of(obj)
    chunk = _chunk(options)
    batch: pa.RecordBatch | None = None
    decoded: tuple[pa.RecordBatch, _Times] | None = None
    if isinstance(second, bytes | str) and (options is None or isinstance(options, dict)):
        compressed = (options or {}).get("compressed")
        if compressed is None or compressed in ("text", b"text", "gzip", b"gzip"):
            blob = (
                second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
            )
            if compressed in ("gzip", b"gzip"):
                blob = wire.gunzip_members(blob, max_decompressed, max_entries)
            # The msgspec path reads exactly ``size`` entries and nothing after them (a wrong
            # size declines it); _unpack_entries reads them all and refuses a truncated blob,
            # or one of more than ``max_entries`` (a size over it skips the msgspec path).
            # It also declines times that cannot be kept as sent: the paths below stamp them.
            size = (options or {}).get("size")
            if size is None or isinstance(size, bool) or not isinstance(size, int):
                # No usable size (Fluent Bit without Send_options, Fluentd, fluent-logger):
                # counted, when the general path would accept the whole blob (see
                # packed.count_entries), so both paths refuse the same blobs.
                batch = _counted(tag, blob, max_entries)
            elif not size > max_entries:
                batch = _packed(tag, blob, size)
            if batch is None:
                decoded = _fast_entries(tag, _unpack_entries(blob, max_entries))
    elif isinstance(second, list) and (options is None or isinstance(options, dict)):
        wire.check_entries(len(second), max_entries)
        decoded = _fast_entries(tag, second)
    if batch is not None:
        return batch, chunk, None
    if decoded is None:
        decoded = _general(obj, max_decompressed, max_entries)
    return decoded[0], chunk, decoded[1]


def _options_of(obj: list[Any]) -> Any:
    """The option map of a Forward message array (None when absent): ``[tag, time, record,
    option]`` in Message mode, ``[tag, entries, option]`` otherwise. Keys sent as msgpack
    ``bin`` are read as text, as the general decoder (:func:`shipper.wire.decode`) and
    Fluentd's in_forward read them: ``{b"chunk": ...}`` asked for an ack that never came, so
    its client resent the message, stored once more each time."""
    at = 3 if len(obj) > 1 and _is_time(obj[1]) else 2
    options = obj[at] if len(obj) > at else None
    if isinstance(options, dict) and not all(type(key) is str for key in options):
        return wire.text_keys(options)
    return options


#: Fluent Bit's ``fluent_signal`` option: what a message holds (``FLB_INPUT_CHUNK_TYPE_*`` of its
#: flb_input_chunk.h). Its forward output sends whatever its ``Match`` catches, metrics and traces
#: of other inputs too, as ``[tag, <cmetrics / ctraces msgpack>, {"fluent_signal": 1, ...}]``.
FLUENT_SIGNALS = {0: "logs", 1: "metrics", 2: "traces", 3: "blobs", 4: "profiles"}


def other_signal(obj: Any) -> int | None:
    """The ``fluent_signal`` of a message that holds no log events (metrics, traces...), else
    None (logs, or no such option: every other client). Its payload is no ``[time, record]``
    entries: decoded as such, it became a "bad entry" row of junk per message."""
    if not isinstance(obj, list) or len(obj) < 2:
        return None
    options = _options_of(obj)
    signal = options.get("fluent_signal") if isinstance(options, dict) else None
    if isinstance(signal, bool) or not isinstance(signal, int) or signal == 0:
        return None
    return signal


def chunk_of(obj: list[Any]) -> ChunkId | None:
    """The ``chunk`` id of a Forward message, to ack it (None: no ack wanted); ProtocolError for
    one that no ack could echo (see :func:`_chunk`)."""
    return _chunk(_options_of(obj))


def has_chunk(obj: list[Any]) -> bool:
    """Whether a Forward message asks for an ack (has a ``chunk`` option)."""
    options = _options_of(obj)
    return isinstance(options, dict) and options.get("chunk") is not None


def _is_time(value: Any) -> bool:
    """Whether ``value``, second in a message, makes it Message mode (nil: a time the receiver
    stamps, as Fluentd's in_forward does; see :func:`shipper.wire.time_to_ns`)."""
    if value is None:
        return True
    if isinstance(value, msgpack.ExtType):  # an EventTime of the wrong size: a bad entry
        return value.code == wire.EVENT_TIME_EXT
    return isinstance(value, wire.EventTime | int | float) and not isinstance(value, bool)


def _chunk(options: Any) -> ChunkId | None:
    if not isinstance(options, dict):
        return None
    chunk = options.get("chunk")
    if isinstance(chunk, bytes | str) and len(chunk) > MAX_CHUNK_CHARS:
        # Echoed whole in the ack: a 10 MB id would be, too (once per resend).
        raise wire.ProtocolError(
            f"the chunk option is {len(chunk):,} characters long, over {MAX_CHUNK_CHARS} "
            "(Fluentd, Fluent Bit and logq-shipper send a 16-byte id in base64)"
        )
    if isinstance(chunk, bytes):  # echoed as sent: read as text, two ids could become one
        return chunk
    if chunk is None:  # no ack wanted (Fluentd's in_forward treats nil as absent too)
        return None
    if not isinstance(chunk, str):
        # The spec makes ``chunk`` a string (base64 of a 128-bit id) and every Fluentd, Fluent
        # Bit and fluent-logger sends one. Fluentd's in_forward would echo any value, but
        # storing such a message and then acking it with a map or an array (which may not even
        # encode back: too deep, not JSON in JSON mode) is no safer than refusing it up front,
        # and storing it without an ack makes the client resend it: duplicates. So the message
        # is refused before anything of it is stored, and the log says why.
        raise wire.ProtocolError(
            f"the chunk option must be a string (base64 id), got {type(chunk).__name__}"
        )
    try:  # invalid UTF-8 arrives as lone surrogates (surrogateescape): no ack could echo it
        chunk.encode("utf-8")
    except UnicodeEncodeError:
        raise wire.ProtocolError("the chunk option is not valid UTF-8") from None
    return chunk


_ROWS = struct.Struct(">I")

_IPC_OPTIONS = {
    name: pa.ipc.IpcWriteOptions(compression=None if name == "none" else name, use_threads=False)
    for name in BUFFER_COMPRESSIONS
}
#: Buffer frames are decompressed in the reading thread. With Arrow's thread pool (its default)
#: each compressed column buffer of a frame became a task handed to another thread and waited
#: for: measured on the bench's lz4 frames of 5,000 Envoy lines, 0.24 µs of CPU a line against
#: 0.08 in the reading thread (the frames are small; the handoffs cost more than the work).
_IPC_READ = pa.ipc.IpcReadOptions(use_threads=False)


def to_ipc(
    batch: pa.RecordBatch, compression: str = "none", metadata: dict[bytes, bytes] | None = None
) -> bytes:
    """The payload of one buffer frame: the row count (u32) and the batch as an Arrow IPC
    stream, optionally compressed (the count lets the flusher slice a segment without decoding).
    ``metadata``: custom metadata of the record batch (a message's chunk key, see
    :func:`aggregator.chunks.frame_payload`); readers that do not ask for it get the same table."""
    sink = pa.BufferOutputStream()
    sink.write(_ROWS.pack(batch.num_rows))  # first: the payload is then copied once, not twice
    with pa.ipc.new_stream(sink, BUFFER_SCHEMA, options=_IPC_OPTIONS[compression]) as writer:
        writer.write_batch(batch, custom_metadata=metadata)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> pa.Table:
    """The table of one buffer frame of either kind: an IPC stream (:func:`to_ipc`) or a small
    frame (:mod:`aggregator.small_frames`)."""
    if small_frames.is_small(payload):
        return small_frames.run_table([payload], BUFFER_SCHEMA)
    return pa.ipc.open_stream(pa.py_buffer(payload)[_ROWS.size :], options=_IPC_READ).read_all()


def ipc_rows(payload: bytes) -> int:
    """Rows in one buffer frame (from its header)."""
    return int(_ROWS.unpack_from(payload)[0])
