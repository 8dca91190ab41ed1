"""The Fluentd Forward protocol v1: one codec imported by both the shipper and the aggregator.

Spec: fluentd wiki, "Forward Protocol Specification v1" (see DESIGN.md §5). A message is a msgpack
array whose *second* element tells the mode:

* Message                  ``[tag, time, record, option?]``        time: int, EventTime or nil
* Forward                  ``[tag, [[time, record], ...], option?]``
* PackedForward            ``[tag, <bin/str: concatenated msgpack [time, record]>, option?]``
* CompressedPackedForward  PackedForward with ``option["compressed"] == "gzip"``; the blob may be
                           several concatenated gzip members.

Options: ``size`` (event count), ``chunk`` (base64 of a 128-bit id; the server answers
``{"ack": chunk}`` once the events are durable) and ``compressed``. EventTime is msgpack ext type 0:
4-byte big-endian seconds + 4-byte big-endian nanoseconds. Fluent Bit >= 5.0.5 sends each entry as
``[[EventTime, {metadata}], record]``; both entry shapes are accepted.

The shared-key handshake (HELO / PING / PONG) digests are computed here too, so that both sides
agree byte for byte.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import itertools
import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from shipper.wire_limits import MAX_MESSAGE_ENTRIES as MAX_MESSAGE_ENTRIES  # defined there

EVENT_TIME_EXT = 0
_EVENT_TIME = struct.Struct(">II")
NS_PER_SECOND = 1_000_000_000
#: Largest event time in whole seconds whose nanoseconds fit an int64 (the aggregator's
#: ``time_ns`` column): 2262-04-11.
MAX_TIME_SECONDS = (2**63 - 1) // NS_PER_SECOND


class ProtocolError(ValueError):
    """A peer sent something that is not the Forward protocol; the connection should be closed."""


class BadEntry(ProtocolError):
    """One entry of a well-formed Forward message is not ``[time, record]`` (a record that is
    not a map, a time of no known kind...). Refused like any protocol error by default; a
    receiver that keeps such entries as visible rows instead (``on_bad_entry`` of
    :func:`decode_message`: the other entries of the message must not be lost with it) counts
    them by ``reason``, a short fixed label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: ``reason`` labels of :class:`BadEntry`.
BAD_RECORD, BAD_SHAPE, BAD_TIME = "record_not_map", "entry_not_time_record", "bad_time"


@dataclass(frozen=True, slots=True)
class EventTime:
    """Forward protocol EventTime: seconds and nanoseconds since the epoch (UTC)."""

    seconds: int
    nanoseconds: int = 0

    @classmethod
    def from_ns(cls, ns: int) -> EventTime:
        return cls(ns // 1_000_000_000, ns % 1_000_000_000)

    def to_ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanoseconds

    def to_ext(self) -> msgpack.ExtType:
        return msgpack.ExtType(EVENT_TIME_EXT, _EVENT_TIME.pack(self.seconds, self.nanoseconds))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EVENT_TIME_EXT and len(data) == 8:
        seconds, nanos = _EVENT_TIME.unpack(data)
        return EventTime(seconds, nanos)
    return msgpack.ExtType(code, data)


def _default(obj: Any) -> Any:
    if isinstance(obj, EventTime):
        return obj.to_ext()
    raise TypeError(f"cannot encode {type(obj).__name__} in a Forward message")


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded event: the tag it came under, its time in ns since the epoch, its record."""

    tag: str
    time_ns: int | None
    """None: a time that cannot be kept as sent (:func:`time_to_ns`); the receiver stamps it."""
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded Forward message: its events and options (``chunk`` needs an ack)."""

    tag: str
    events: list[Event]
    options: dict[str, Any]

    @property
    def chunk(self) -> str | None:
        chunk = self.options.get("chunk")
        if isinstance(chunk, bytes):
            return chunk.decode("ascii", "replace")
        return chunk if isinstance(chunk, str) else None


# --- encoding (the shipper side) ---------------------------------------------------------------

#: Largest Forward message a logq-shipper builds, on the wire (gzip-compressed or not), and the
#: smallest ``--max-frame-bytes`` a logq-aggregator takes (its ``MIN_FRAME_BYTES``): every
#: shipper message is accepted by every aggregator. A client resends a refused message as it
#: was, forever, so a message over an aggregator's limit would stop its file for good. Batches
#: close before they pass it, whatever ``--batch-lines`` and ``--batch-bytes`` say
#: (:class:`shipper.batch.WireRoom`).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Most UTF-8 bytes of each text a source's records share (service, container name and id,
#: image, ``format``, host), before the marker of a cut: they come from container metadata no
#: one bounds (``config.v2.json``, labels), and a record that passes a message would be refused
#: and resent forever. Real ones are far shorter: an image reference with a digest takes at most
#: ~460 characters (a 255-character name, a 128-character tag, a 71-character digest), a
#: Kubernetes name 253, an ECS family 255, a host name 253. A service name past 128 characters
#: (``athena.schema.MAX_SERVICE_LEN``) is stored under its first 117 and a hash of the name as
#: received: one cut here always gets the same folder, apart from the other names.
MAX_KEY_BYTES = 4096


def new_chunk_id() -> str:
    """A fresh ``chunk`` option value: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def pack(obj: Any) -> bytes:
    """msgpack-encode with EventTime support and ``bin`` for bytes."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def pack_entries(entries: Iterable[tuple[int, dict[str, Any]]]) -> bytes:
    """Concatenate ``[EventTime, record]`` entries: the body of a PackedForward message."""
    packer = msgpack.Packer(default=_default, use_bin_type=True)
    out = io.BytesIO()
    for time_ns, record in entries:
        out.write(packer.pack([EventTime.from_ns(time_ns), record]))
    return out.getvalue()


def encode_packed_forward(
    tag: str,
    entries: list[tuple[int, dict[str, Any]]],
    chunk: str | None = None,
    compress: bool = False,
) -> bytes:
    """Encode a PackedForward (or CompressedPackedForward) message with ``size`` and ``chunk``."""
    body = pack_entries(entries)
    options: dict[str, Any] = {"size": len(entries)}
    if chunk is not None:
        options["chunk"] = chunk
    if compress:
        body = gzip.compress(body, compresslevel=1)
        options["compressed"] = "gzip"
    return pack([tag, body, options])


def encode_message(
    tag: str, time_ns: int, record: dict[str, Any], options: dict | None = None
) -> bytes:
    """Encode a Message-mode event (what fluent-logger sends)."""
    msg: list[Any] = [tag, EventTime.from_ns(time_ns), record]
    if options:
        msg.append(options)
    return pack(msg)


def encode_forward(
    tag: str, entries: list[tuple[int, dict[str, Any]]], options: dict | None = None
) -> bytes:
    """Encode a Forward-mode message (what Fluent Bit sends by default)."""
    msg: list[Any] = [tag, [[EventTime.from_ns(t), r] for t, r in entries]]
    if options:
        msg.append(options)
    return pack(msg)


# --- decoding (the aggregator side) ------------------------------------------------------------


#: PackedForward blobs are unpacked this many bytes at a time (:func:`unpack_entries`).
_UNPACK_SLICE = 1024 * 1024
#: Array and map elements one message may build: 128 per entry of its entry limit, and
#: MAX_MESSAGE_OBJECTS in all. The entry limit does not reach inside records, and one byte of
#: msgpack can be one Python object of ~60 bytes (an empty map): a 64 KB gzip frame inflating
#: to 64 MiB of them would cost 4.5 GB; at the limit a refused message costs ~600 MB and about
#: two seconds of decoding (bench/hostile.py). Real records build 5 to 50 objects each (a
#: logq-shipper one 20, a Kubernetes-enriched Fluent Bit one ~50); a message of 8 MB or less
#: can never reach the limit (each object takes at least one byte), a real one only with some
#: 100 MB of records.
OBJECTS_PER_ENTRY = 128
MAX_MESSAGE_OBJECTS = 8_000_000


class ObjectPoolFull(ProtocolError):
    """The unfinished messages of all connections hold too many objects together: the
    connection being read is closed, though what it sent may be valid."""


class ObjectBudget:
    """Counts the elements of the arrays and maps msgpack builds for one message, and refuses
    the message (:class:`ProtocolError`) past ``limit``.

    msgpack calls the hooks as each array or map completes, innermost first, so at most one
    container's direct elements are built beyond the limit (``max_array_len`` bounds those).
    The streaming unpacker resumes partly built messages without calling a hook twice.
    """

    __slots__ = ("limit", "pool", "used")

    def __init__(self, limit: int, pool: ObjectBudget | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.pool = pool
        """Shared by every connection's budget: what all unfinished messages hold together
        (a streaming unpacker keeps a half-received message's objects between reads)."""

    def reset(self) -> None:
        """Start counting the next message (and give this one's count back to the pool)."""
        if self.pool is not None:
            self.pool.used -= self.used
        self.used = 0

    def hooks(self) -> dict[str, Any]:
        """:class:`msgpack.Unpacker` options that count what it builds."""
        return {"list_hook": self._array, "object_hook": self._map}

    # Each object is counted once, as an element of the array or map holding it.
    def _array(self, items: Any) -> Any:
        self._count(len(items))
        return items

    def _map(self, items: dict) -> dict:
        self._count(2 * len(items))  # not through count_map: one call less, per map built
        return items

    def count_map(self, pairs: int) -> None:
        """Count a map of ``pairs`` built by other means than :meth:`hooks`' object hook."""
        self._count(2 * pairs)

    def _count(self, n: int) -> None:
        self.used += n
        if self.pool is not None:
            self.pool.used += n
        if self.used > self.limit:
            raise ProtocolError(
                f"message builds more than {self.limit:,} msgpack objects (the per-message "
                f"limit: {OBJECTS_PER_ENTRY} per entry of --max-message-entries, at most "
                f"{MAX_MESSAGE_OBJECTS:,}); send fewer or less deeply nested records per message"
            )
        if self.pool is not None and self.pool.used > self.pool.limit:
            raise ObjectPoolFull(
                f"the messages being received on all connections hold more than "
                f"{self.pool.limit:,} msgpack objects together: this one is closed (its "
                "client resends)"
            )


def message_objects(max_entries: int) -> int:
    """The objects one message of at most ``max_entries`` entries may build."""
    return min(OBJECTS_PER_ENTRY * max_entries, MAX_MESSAGE_OBJECTS)


def message_budget(
    max_entries: int, max_bytes: int, pool: ObjectBudget | None = None
) -> ObjectBudget | None:
    """The object budget of one message of at most ``max_entries`` entries and ``max_bytes``
    bytes, or None when those bytes cannot reach it (every object takes at least one byte) and
    there is no ``pool`` to count for: counting costs ~15% of unpacking rich records."""
    limit = message_objects(max_entries)
    return ObjectBudget(limit, pool) if max_bytes > limit or pool is not None else None


def new_unpacker(
    max_buffer_size: int = 64 * 1024 * 1024,
    max_array_len: int | None = None,
    budget: ObjectBudget | None = None,
    keyed: bool = False,
) -> msgpack.Unpacker:
    """A streaming unpacker for one connection: feed bytes, iterate complete objects.

    ``max_buffer_size`` bounds memory per connection: a frame larger than it raises
    ``msgpack.BufferFull`` when fed, which the server turns into closing that connection.
    ``max_array_len`` (also applied to maps) refuses, from its header alone, an array longer
    than that: a Forward-mode message of millions of tiny entries is not built in memory.
    ``budget`` bounds the objects one message builds (pass it to :func:`iter_messages` too,
    which starts it over for each message). ``keyed``: a map key Python cannot hash is read
    as its text (:func:`map_key_text`) instead of raising :class:`UnhashableKey` (slower:
    for bytes known to hold one).
    """
    limits: dict[str, Any] = {}
    if max_array_len is not None:
        limits = {"max_array_len": max_array_len, "max_map_len": max_array_len}
    hooks = budget.hooks() if budget is not None else {}
    limits.update(_keyed_hooks(hooks, budget) if keyed else hooks)
    return msgpack.Unpacker(
        ext_hook=_ext_hook,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max_buffer_size,
        **limits,
    )


def unpack_entries(blob: bytes, max_entries: int, **options: Any) -> list[Any]:
    """The entries of a PackedForward blob (concatenated msgpack objects), all of them or a
    :class:`ProtocolError`: never a silently shortened list.

    ``options`` are :class:`msgpack.Unpacker` options. The blob is fed a slice at a time and
    at most ``max_entries + 1`` entries are built, so a blob of millions of tiny entries costs
    the memory of ``max_entries`` before it is refused, whatever its size; records full of tiny
    nested values are bounded by :func:`message_budget`. An incomplete last
    entry (a truncated blob) is refused too: msgpack's iteration just stops before it.
    """
    try:
        return _unpack_all(blob, max_entries, options, keyed=False)
    except UnhashableKey:
        # A map (or an array holding one) used as a map key: valid msgpack, and Fluentd takes
        # it (Ruby hashes any key), but no Python dict key. Read the blob again with such keys
        # as text (:func:`map_key_text`): the records around it are kept, and the key lands
        # among the record's other keys. Only such a blob pays for the pairs hook.
        return _unpack_all(blob, max_entries, options, keyed=True)


class UnhashableKey(ProtocolError):
    """msgpack built a map key Python cannot hash: a map, or an array holding one. Valid
    msgpack, and Fluentd forwards such records, so a reader that can reads the bytes again with
    such keys as text (:func:`unpack_entries` a blob; the aggregator's server a streamed
    message, with :func:`new_unpacker`'s ``keyed``); any other refuses the message as a
    ProtocolError."""


def _unpack_all(blob: bytes, max_entries: int, options: dict[str, Any], keyed: bool) -> list[Any]:
    """:func:`unpack_entries` once; ``keyed``: unhashable map keys become text."""
    budget = message_budget(max_entries, len(blob))
    hooks: dict[str, Any] = budget.hooks() if budget is not None else {}
    if keyed:
        hooks = _keyed_hooks(hooks, budget)
    unpacker = msgpack.Unpacker(
        max_buffer_size=len(blob) + 1024,  # grows only as far as one entry needs
        max_array_len=max_entries,
        max_map_len=max_entries,
        **hooks,
        **options,
    )
    view = memoryview(blob)
    entries: list[Any] = []
    try:
        for start in range(0, len(blob), _UNPACK_SLICE):
            unpacker.feed(view[start : start + _UNPACK_SLICE])
            entries.extend(itertools.islice(unpacker, max_entries + 1 - len(entries)))
            check_entries(len(entries), max_entries)
        # Whether the blob ended between two entries: feed one nil. Between entries it comes
        # back as a nil object of its own; inside an unfinished entry it becomes part of that
        # entry, which then stays unfinished or completes as something that is not a nil.
        unpacker.feed(b"\xc0")
        tail = list(unpacker)
    except ProtocolError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        if _over_length_limit(exc):
            raise ProtocolError(f"{exc} (the per-message entry limit)") from exc
        raise ProtocolError(f"bad PackedForward entries: {exc}") from exc
    except TypeError as exc:  # a map (or an array holding one) as a map key
        error = ProtocolError if keyed else UnhashableKey
        raise error(f"bad PackedForward entries: unusable map key ({exc})") from exc
    if len(tail) != 1 or tail[0] is not None:
        raise ProtocolError(
            f"truncated PackedForward entries: the blob ends inside the entry after "
            f"{len(entries)} complete ones"
        )
    return entries


def _keyed_hooks(hooks: dict[str, Any], budget: ObjectBudget | None) -> dict[str, Any]:
    """``hooks`` (:meth:`ObjectBudget.hooks` or none) with maps built by
    :func:`_text_keyed_map` instead of msgpack: slower (a list of pairs, then the map, per
    map), so only for bytes known to hold an unhashable key."""
    keyed = {name: hook for name, hook in hooks.items() if name != "object_hook"}
    keyed["object_pairs_hook"] = _text_keyed_map(budget)
    return keyed


def _text_keyed_map(budget: ObjectBudget | None) -> Callable[[list[tuple[Any, Any]]], dict]:
    """An ``object_pairs_hook`` building maps as msgpack does, an unhashable key as its text,
    counting the objects as :meth:`ObjectBudget.hooks` does: the map's pairs as built, a
    repeated key's once (the last value kept). Counted as sent, a message of repeated keys was
    refused once it was read keyed (it held a map key, or its client was remembered as sending
    them) where the plain unpacker let it through; the pairs list the hook is given is one map's,
    at most ``max_map_len``."""

    def build(pairs: list[tuple[Any, Any]]) -> dict:
        built: dict = {}
        for key, value in pairs:
            try:
                built[key] = value
            except TypeError:
                built[map_key_text(key)] = value
        if budget is not None:
            budget.count_map(len(built))
        return built

    return build


def map_key_text(key: Any) -> str:
    """A map key Python cannot hash as text: JSON where it is JSON (``{"a":1}``), else
    Python's repr (a map holding bytes, or keyed by a tuple)."""
    try:
        try:
            return json.dumps(key, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            return repr(key)
    except RecursionError:  # nested deeper than Python's text makers go
        return f"<{type(key).__name__} nested too deeply>"


def check_entries(count: int, max_entries: int) -> None:
    """Refuse a message of more than ``max_entries`` entries (the per-message entry limit)."""
    if count > max_entries:
        raise ProtocolError(
            f"more than {max_entries} entries in one message (the per-message entry limit): "
            "send smaller chunks"
        )


def _over_length_limit(exc: Exception) -> bool:
    """Whether msgpack refused an array or map longer than ``max_array_len``/``max_map_len``."""
    return isinstance(exc, ValueError) and any(
        f"exceeds {name}" in str(exc) for name in ("max_array_len", "max_map_len")
    )


def time_to_ns(value: Any) -> int | None:
    """An entry's time as ns: EventTime, integer seconds or float seconds; None for a time that
    cannot be kept as sent (see :func:`keepable_seconds`), which the receiver replaces with its
    receive time rather than refuse the message (and lose the good entries beside it).

    Also None for a nil or string time (msgpack str or bin: both are a Ruby String), as
    Fluentd's ``in_forward`` does: it stamps an entry with ``Fluent::EventTime.now`` when
    ``time.nil? || time.to_i == 0`` (Forward mode) or ``time.to_i == 0`` (Message mode), and a
    string that is not a number has ``to_i == 0``. A numeric string it passes on as a string,
    which later stages choke on; logq does not guess its unit (seconds? milliseconds?) and
    stamps it too, counted and logged like the others."""
    if value is None or isinstance(value, str | bytes):
        return None
    if isinstance(value, EventTime):
        if not keepable_seconds(value.seconds) or value.nanoseconds >= NS_PER_SECOND:
            return None
        return value.to_ns()
    if isinstance(value, bool):
        raise BadEntry("event time is a boolean", BAD_TIME)
    if isinstance(value, int):
        return value * NS_PER_SECOND if keepable_seconds(value) else None
    if isinstance(value, float):
        if not (math.isfinite(value) and keepable_seconds(int(value))):
            return None
        ns = _nearest_microsecond(value) * 1_000
        return ns if -(2**63) <= ns < 2**63 else None  # 9223372036.9 s: seconds fit, ns not
    if isinstance(value, msgpack.ExtType):
        if value.code == EVENT_TIME_EXT:  # known type, wrong size (ext hooks take only 8 bytes)
            raise BadEntry(
                f"an EventTime (ext type 0) of {len(value.data)} bytes, not 8 (4 seconds and 4 "
                "nanoseconds)",
                BAD_TIME,
            )
        raise BadEntry(f"unknown ext type {value.code} as event time", BAD_TIME)
    raise BadEntry(
        f"event time must be EventTime or an integer, got {type(value).__name__}", BAD_TIME
    )


def _nearest_microsecond(value: float) -> int:
    """``value`` seconds as the nearest whole microsecond (a tie rounds up), exactly.

    A float holds a time of today to ~0.24 µs, so ``int(value * 1e9)`` cut 1796024238.001
    (Ruby's Time#to_f gives the nearest float, which may lie just below the time) to
    ...238.000999936, .000 once in milliseconds. ``round(value * 1e6)`` rounds twice (the
    product is itself rounded, to 0.25 µs today) and missed the nearest microsecond of about
    one float time of today in eight (0.625 µs off at worst). A float is an exact fraction
    over a power of two: rounding that fraction in integers is exact for every float."""
    num, den = value.as_integer_ratio()
    return (2 * num * 1_000_000 + den) // (2 * den)


def keepable_seconds(seconds: int) -> bool:
    """Whether an event time of ``seconds`` (whole, truncated toward zero) can be kept: not 0
    (Fluentd's in_forward stamps such an event with the time it receives it: a sender without
    a clock), and its nanoseconds fit an int64 (beyond is e.g. milliseconds sent as seconds)."""
    return seconds != 0 and -MAX_TIME_SECONDS <= seconds <= MAX_TIME_SECONDS


def _record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadEntry(f"record must be a map, got {type(value).__name__}", BAD_RECORD)
    return text_keys(value)


def text_keys(value: dict[Any, Any]) -> dict[str, Any]:
    """``value`` with every key as text, as records and option maps are read: a ``bin`` key
    decoded (invalid UTF-8 replaced), any other kind as ``str`` gives it."""
    return {(k if isinstance(k, str) else _as_text(k)): v for k, v in value.items()}


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _entry(tag: str, entry: Any) -> Event:
    if not isinstance(entry, list | tuple) or len(entry) < 2:
        raise BadEntry("entry must be [time, record]", BAD_SHAPE)
    head = entry[0]
    # Fluent Bit >= 5.0.5: [[time, metadata], record]. (An ExtType is a tuple too: another ext
    # type in the time's place is no header, whose first item, its code, would pass for a time.)
    if isinstance(head, list | tuple) and not isinstance(head, msgpack.ExtType):
        if not head:
            raise BadEntry("entry header is empty", BAD_SHAPE)
        head = head[0]
    return Event(tag, time_to_ns(head), _record(entry[1]))


#: Input fed to the decompressor at first for a gzip member after the first, doubled while the
#: member goes on. zlib copies the input left over after a member's end (``unused_data``): fed
#: the whole rest of the blob, a blob of many tiny members was copied once per member, quadratic
#: (32 MB of empty 20-byte members: ~20 minutes of the aggregator's event loop).
_MEMBER_WINDOW = 64
#: Most output of one decompress call (a step of :meth:`GzipMembers.steps`), and most input fed
#: at once: zlib copies the input an output step leaves (``unconsumed_tail``), so input fed
#: whole would be copied once per step.
GUNZIP_STEP = 1024 * 1024


def gunzip_members(blob: bytes, max_bytes: int, max_members: int | None = None) -> bytes:
    """Decompress one or several concatenated gzip members, refusing output over ``max_bytes``
    and more than ``max_members`` members (:class:`GzipMembers`, all its steps at once)."""
    job = GzipMembers(blob, max_bytes, max_members)
    for _ in job.steps():
        pass
    return job.output()


class GzipMembers:
    """One blob of concatenated gzip members, decompressed a step at a time (:meth:`steps`:
    at most :data:`GUNZIP_STEP` bytes of output each), so that a caller can stop between steps
    or go on in another thread. Output over ``max_bytes`` and more than ``max_members`` members
    (a sender writes whole entries in each, so the per-message entry limit bounds them too;
    empty members would cost time for nothing) are refused (:class:`ProtocolError`).

    Linear in the blob's size however many members it holds: a member after the first is fed
    a window that doubles while it goes on (up to :data:`GUNZIP_STEP`), so the leftover input
    zlib copies at each member's end stays small."""

    def __init__(self, blob: bytes, max_bytes: int, max_members: int | None = None) -> None:
        self.blob = blob
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 0
        """Members begun so far."""
        self.total = 0
        """Bytes of output so far."""
        self._parts: list[bytes] = []

    def output(self) -> bytes:
        """The whole output, once :meth:`steps` is over (one part, the usual single member
        of at most one step, is returned without a copy)."""
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def steps(self) -> Iterator[None]:
        """Decompress the blob, yielding after each step and as each member begins."""
        view = memoryview(self.blob)
        pos = 0
        window = min(len(view), GUNZIP_STEP)
        while pos < len(view):
            # Padding zeros after the last member are tolerated (as gzip(1) does).
            if pos and view[pos] == 0 and not bytes(view[pos:]).strip(b"\x00"):
                break
            self.members += 1
            if self.max_members is not None and self.members > self.max_members:
                raise ProtocolError(
                    f"more than {self.max_members} gzip members in one message (the per-message "
                    "entry limit): send fewer, larger members"
                )
            yield
            pos = yield from self._member(view, pos, window)
            window = _MEMBER_WINDOW

    def _member(self, view: memoryview, pos: int, window: int) -> Iterator[None]:
        """Decompress the member at ``pos``, fed ``window`` bytes at a time (doubled after each,
        up to :data:`GUNZIP_STEP`): returns where the next one starts."""
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        full = False  # the last step's output was cut at its limit: zlib may hold more of it
        while not d.eof:
            if full or d.unconsumed_tail:
                piece: bytes | memoryview = d.unconsumed_tail
            elif pos >= len(view):
                raise ProtocolError("truncated gzip payload")
            else:
                piece = view[pos : pos + window]
                pos += len(piece)
                window = min(2 * window, GUNZIP_STEP)
            limit = min(GUNZIP_STEP, self.max_bytes - self.total + 1)
            try:
                part = d.decompress(piece, limit)
            except zlib.error as exc:
                raise ProtocolError(f"bad gzip payload: {exc}") from exc
            self.total += len(part)
            if self.total > self.max_bytes:
                raise ProtocolError(f"decompressed payload exceeds {self.max_bytes} bytes")
            full = len(part) == limit
            if part:
                self._parts.append(part)
            yield
        return pos - len(d.unused_data)


#: What a receiver makes of a bad entry (the entry as unpacked, why it is bad) instead of
#: refusing its whole message: an event of its own (see :func:`decode_message`).
OnBadEntry = Callable[[Any, BadEntry], Event]


def _entry_or(tag: str, entry: Any, on_bad_entry: OnBadEntry | None) -> Event:
    """:func:`_entry`, or ``on_bad_entry``'s event for a bad one (raised when it is None)."""
    try:
        return _entry(tag, entry)
    except BadEntry as exc:
        if on_bad_entry is None:
            raise
        return on_bad_entry(entry, exc)


def _packed_entries(
    tag: str, blob: bytes, max_entries: int, on_bad_entry: OnBadEntry | None = None
) -> list[Event]:
    entries = unpack_entries(
        blob,
        max_entries,
        ext_hook=_ext_hook,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogateescape",
    )
    return [_entry_or(tag, e, on_bad_entry) for e in entries]


def decode_message(
    obj: Any,
    max_decompressed_bytes: int = 256 * 1024 * 1024,
    max_entries: int = MAX_MESSAGE_ENTRIES,
    on_bad_entry: OnBadEntry | None = None,
) -> Message:
    """Turn one unpacked msgpack object into a :class:`Message`, whatever its mode.

    A Forward or PackedForward message must hold at most ``max_entries`` entries. Its ``size``
    option is not checked against them, as in Fluentd: the blob's own length already says
    where it ends, and a truncated blob is refused (:func:`unpack_entries`). A bad entry
    (:class:`BadEntry`; in Message mode, its time and record) refuses the message, unless
    ``on_bad_entry`` makes an event of it. Items of an entry after its record are ignored, as
    Fluentd's in_forward does."""
    if not isinstance(obj, list | tuple) or len(obj) < 2:
        raise ProtocolError(f"expected a Forward message array, got {type(obj).__name__}")
    tag = obj[0]
    if isinstance(tag, bytes):
        tag = tag.decode("utf-8", "replace")
    if not isinstance(tag, str):
        raise ProtocolError("tag must be a string")
    second = obj[1]
    is_time = isinstance(second, EventTime | int | float) and not isinstance(second, bool)
    if is_time or second is None or _is_event_time_ext(second):
        # Message mode: [tag, time, record, option?] (a nil time is stamped, see time_to_ns)
        if len(obj) < 3:
            raise ProtocolError("Message mode needs [tag, time, record]")
        options = _options(obj[3] if len(obj) > 3 else None)
        return Message(tag, [_entry_or(tag, (second, obj[2]), on_bad_entry)], options)
    options = _options(obj[2] if len(obj) > 2 else None)
    if isinstance(second, list | tuple) and not isinstance(second, msgpack.ExtType):
        check_entries(len(second), max_entries)
        return Message(tag, [_entry_or(tag, e, on_bad_entry) for e in second], options)
    if isinstance(second, bytes | str):
        blob = second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
        if options.get("compressed") in ("gzip", b"gzip"):
            blob = gunzip_members(blob, max_decompressed_bytes, max_entries)
        elif options.get("compressed") not in (None, "text", b"text"):
            raise ProtocolError(f"unsupported compression {options.get('compressed')!r}")
        return Message(tag, _packed_entries(tag, blob, max_entries, on_bad_entry), options)
    raise ProtocolError(f"cannot tell the Forward mode from a {type(second).__name__}")


def _is_event_time_ext(value: Any) -> bool:
    """An EventTime ext of the wrong size (a bad time, :func:`time_to_ns`): the time of a
    Message-mode message, whose entry is then bad, not a message of no known mode."""
    return isinstance(value, msgpack.ExtType) and value.code == EVENT_TIME_EXT


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("option must be a map")
    return text_keys(value)


def encode_ack(chunk: str | bytes) -> bytes:
    return pack({"ack": chunk})


def decode_ack(obj: Any) -> str | None:
    """The chunk id of an ack map, or None when ``obj`` is not an ack."""
    if isinstance(obj, dict):
        ack = obj.get("ack")
        if isinstance(ack, bytes):
            return ack.decode("ascii", "replace")
        if isinstance(ack, str):
            return ack
    return None


def iter_messages(unpacker: msgpack.Unpacker, budget: ObjectBudget | None = None) -> Iterator[Any]:
    """Complete objects buffered in ``unpacker``; malformed bytes raise :class:`ProtocolError`.

    A map whose key is a map (or an array holding one) is valid msgpack but no Python dict key
    (msgpack raises TypeError, and the unpacker cannot go on): :class:`UnhashableKey`, which a
    caller that kept the bytes reads again with a ``keyed`` unpacker. ``budget`` (the
    unpacker's, see :func:`new_unpacker`) starts over as each message completes."""
    try:
        for obj in unpacker:
            if budget is not None:
                budget.reset()
            yield obj
    except ProtocolError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        if _over_length_limit(exc):  # new_unpacker's max_array_len
            raise ProtocolError(f"message too large: {exc} (the per-message entry limit)") from exc
        raise ProtocolError(f"malformed msgpack: {exc}") from exc
    except TypeError as exc:
        raise UnhashableKey(f"malformed msgpack: unusable map key ({exc})") from exc


# --- shared-key handshake ----------------------------------------------------------------------


def _hex_sha512(*parts: bytes | str) -> str:
    """Text is hashed as the bytes it came from: a PING field that is not valid UTF-8 was read
    with ``surrogateescape`` (:func:`new_unpacker`) and is encoded back the same way."""
    h = hashlib.sha512()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
    return h.hexdigest()


def same_digest(given: object, expected: str) -> bool:
    """Whether a handshake's hex digest ``given`` (any value a client sent) is ``expected``,
    in constant time. Compared as bytes: :func:`hmac.compare_digest` raises TypeError on text
    that is not ASCII."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def encode_helo(nonce: bytes, auth: bytes = b"", keepalive: bool = True) -> bytes:
    return pack(["HELO", {"nonce": nonce, "auth": auth, "keepalive": keepalive}])


def ping_digest(salt: bytes, client_hostname: str, nonce: bytes, shared_key: str) -> str:
    """PING's shared_key_hexdigest: hex(sha512(salt + client_hostname + nonce + shared_key))."""
    return _hex_sha512(salt, client_hostname, nonce, shared_key)


def pong_digest(salt: bytes, server_hostname: str, nonce: bytes, shared_key: str) -> str:
    """PONG's shared_key_hexdigest: hex(sha512(salt + server_hostname + nonce + shared_key))."""
    return _hex_sha512(salt, server_hostname, nonce, shared_key)


def password_digest(salt: bytes, username: str, password: str) -> str:
    """PING's password digest when user auth is on: hex(sha512(auth_salt + username + password))."""
    return _hex_sha512(salt, username, password)


def encode_ping(
    client_hostname: str,
    salt: bytes,
    nonce: bytes,
    shared_key: str,
    username: str = "",
    password: str = "",
    auth_salt: bytes = b"",
) -> bytes:
    pw = password_digest(auth_salt, username, password) if auth_salt else ""
    digest = ping_digest(salt, client_hostname, nonce, shared_key)
    return pack(["PING", client_hostname, salt, digest, username, pw])


def encode_pong(
    ok: bool, reason: str, server_hostname: str, salt: bytes, nonce: bytes, key: str
) -> bytes:
    digest = pong_digest(salt, server_hostname, nonce, key) if ok else ""
    return pack(["PONG", ok, reason, server_hostname, digest])


# --- the records logq-shipper sends (DESIGN.md §2 "Wire") --------------------------------------

#: The line itself, without its trailing newline (Docker's and CRI's split parts already joined).
KEY_LOG = "log"
#: ``stdout`` or ``stderr``.
KEY_STREAM = "stream"
#: The line's own time as written by the runtime (RFC 3339 with nanoseconds, UTC).
KEY_TIME = "time"
KEY_SERVICE = "service"
KEY_CONTAINER_ID = "container_id"
KEY_CONTAINER_NAME = "container_name"
KEY_HOST = "host"
#: Container image (``envoyproxy/envoy:v1.31``): lets the aggregator recognise Envoy sidecars.
KEY_IMAGE = "image"
#: Optional parse hint from the ``logq.format`` label (``envoy``, ``envoy-json``, ``plain``).
KEY_FORMAT = "format"
#: Stable id of the source file (host + fingerprint of its first bytes), unchanged by rotation.
KEY_SOURCE_ID = "source_id"
#: Byte offset just past this line in its source; strictly increasing per ``source_id``. The
#: aggregator drops a record whose offset is at or below the highest it has stored for the source.
KEY_OFFSET = "offset"
