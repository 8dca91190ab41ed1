"""The Fluentd Forward protocol v1: one codec imported by both the shipper and the aggregator.

Spec: fluentd wiki, "Forward Protocol Specification v1" (see DESIGN.md §5). A message is a msgpack
array whose *second* element tells the mode:

* Message                  ``[tag, time, record, option?]``        time is an int or EventTime
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
import io
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

EVENT_TIME_EXT = 0
_EVENT_TIME = struct.Struct(">II")


class ProtocolError(ValueError):
    """A peer sent something that is not the Forward protocol; the connection should be closed."""


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
    time_ns: int
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


def new_unpacker(max_buffer_size: int = 64 * 1024 * 1024) -> msgpack.Unpacker:
    """A streaming unpacker for one connection: feed bytes, iterate complete objects.

    ``max_buffer_size`` bounds memory per connection: a frame larger than it raises
    ``msgpack.BufferFull`` when fed, which the server turns into closing that connection.
    """
    return msgpack.Unpacker(
        ext_hook=_ext_hook,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max_buffer_size,
    )


def time_to_ns(value: Any) -> int:
    """An entry's time as ns: EventTime, integer seconds or float seconds."""
    if isinstance(value, EventTime):
        return value.to_ns()
    if isinstance(value, bool):
        raise ProtocolError("event time is a boolean")
    if isinstance(value, int):
        return value * 1_000_000_000
    if isinstance(value, float):
        return int(value * 1_000_000_000)
    if isinstance(value, msgpack.ExtType):
        raise ProtocolError(f"unknown ext type {value.code} as event time")
    raise ProtocolError(f"event time must be EventTime or an integer, got {type(value).__name__}")


def _record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"record must be a map, got {type(value).__name__}")
    return {(k if isinstance(k, str) else _as_text(k)): v for k, v in value.items()}


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _entry(tag: str, entry: Any) -> Event:
    if not isinstance(entry, list | tuple) or len(entry) < 2:
        raise ProtocolError("entry must be [time, record]")
    head = entry[0]
    if isinstance(head, list | tuple):  # Fluent Bit >= 5.0.5: [[time, metadata], record]
        if not head:
            raise ProtocolError("entry header is empty")
        head = head[0]
    return Event(tag, time_to_ns(head), _record(entry[1]))


def gunzip_members(blob: bytes, max_bytes: int) -> bytes:
    """Decompress one or several concatenated gzip members, refusing output over ``max_bytes``."""
    out = bytearray()
    data = blob
    while data:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(data, max_bytes - len(out) + 1)
        except zlib.error as exc:
            raise ProtocolError(f"bad gzip payload: {exc}") from exc
        if len(out) > max_bytes or d.unconsumed_tail:
            raise ProtocolError(f"decompressed payload exceeds {max_bytes} bytes")
        if not d.eof:
            raise ProtocolError("truncated gzip payload")
        data = d.unused_data
        # Padding zeros after the last member are tolerated (as gzip(1) does).
        if data and not data.strip(b"\x00"):
            break
    return bytes(out)


def _packed_entries(tag: str, blob: bytes) -> list[Event]:
    unpacker = msgpack.Unpacker(
        ext_hook=_ext_hook, raw=False, strict_map_key=False, unicode_errors="surrogateescape"
    )
    unpacker.feed(blob)
    try:
        return [_entry(tag, e) for e in unpacker]
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"bad PackedForward entries: {exc}") from exc


def decode_message(obj: Any, max_decompressed_bytes: int = 256 * 1024 * 1024) -> Message:
    """Turn one unpacked msgpack object into a :class:`Message`, whatever its mode."""
    if not isinstance(obj, list | tuple) or len(obj) < 2:
        raise ProtocolError(f"expected a Forward message array, got {type(obj).__name__}")
    tag = obj[0]
    if isinstance(tag, bytes):
        tag = tag.decode("utf-8", "replace")
    if not isinstance(tag, str):
        raise ProtocolError("tag must be a string")
    second = obj[1]
    if isinstance(second, EventTime | int | float) and not isinstance(second, bool):
        # Message mode: [tag, time, record, option?]
        if len(obj) < 3:
            raise ProtocolError("Message mode needs [tag, time, record]")
        options = _options(obj[3] if len(obj) > 3 else None)
        return Message(tag, [Event(tag, time_to_ns(second), _record(obj[2]))], options)
    options = _options(obj[2] if len(obj) > 2 else None)
    if isinstance(second, list | tuple):
        return Message(tag, [_entry(tag, e) for e in second], options)
    if isinstance(second, bytes | str):
        blob = second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
        if options.get("compressed") in ("gzip", b"gzip"):
            blob = gunzip_members(blob, max_decompressed_bytes)
        elif options.get("compressed") not in (None, "text", b"text"):
            raise ProtocolError(f"unsupported compression {options.get('compressed')!r}")
        return Message(tag, _packed_entries(tag, blob), options)
    raise ProtocolError(f"cannot tell the Forward mode from a {type(second).__name__}")


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("option must be a map")
    return {_as_text(k): v for k, v in value.items()}


def encode_ack(chunk: str) -> bytes:
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


def iter_messages(unpacker: msgpack.Unpacker) -> Iterator[Any]:
    """Complete objects buffered in ``unpacker``; malformed bytes raise :class:`ProtocolError`.

    A map whose key is an array or a map is valid msgpack but no Python dict key (msgpack raises
    TypeError): also a ProtocolError, not an unexpected error."""
    try:
        yield from unpacker
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from exc
    except TypeError as exc:
        raise ProtocolError(f"malformed msgpack: unusable map key ({exc})") from exc


# --- shared-key handshake ----------------------------------------------------------------------


def _hex_sha512(*parts: bytes | str) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
    return h.hexdigest()


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
