"""Turning parsed lines into one Forward PackedForward message.

Lines arrive as columns with each entry's event time already packed; the body is encoded in
one msgspec call per batch, with the keys shared by the whole source (service, container, host,
image, source id) pre-encoded once and repeated in every record (see :mod:`shipper.entry`).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

from shipper import wire
from shipper.lines import Lines


@dataclass(slots=True)
class Batch:
    """One Forward message of one file, ready to send, and what acking it commits."""

    tag: str
    payload: bytes
    chunk: str
    lines: int
    nbytes: int
    resume: int
    last_offset: int
    cursor: Any = None
    """The :class:`~shipper.cursor.Cursor` whose checkpoint the ack advances."""
    nread: int = 0
    """File bytes consumed by this batch (lines, split parts, skipped bytes)."""
    save_first: bool = False
    """The checkpoints must be written before this batch is sent (see
    :attr:`shipper.cursor.Chunk.save_first`)."""
    first_offset: int = 0
    """The record offset of its first line (0 without lines); with :attr:`last_offset`, what
    a restart sends where these lines went (see :class:`shipper.sender.Placements`)."""


def record_constants(
    service: str,
    container_id: str,
    container_name: str,
    host: str,
    image: str,
    source_id: str,
    format_hint: str | None,
) -> dict[str, Any]:
    """The keys every record of one source carries (their count must match the parser's)."""
    rec: dict[str, Any] = {
        wire.KEY_SERVICE: service,
        wire.KEY_CONTAINER_ID: container_id,
        wire.KEY_CONTAINER_NAME: container_name,
        wire.KEY_HOST: host,
        wire.KEY_IMAGE: image,
        wire.KEY_SOURCE_ID: source_id,
    }
    if format_hint:
        rec[wire.KEY_FORMAT] = format_hint
    return rec


def pack_entries(lines: Lines, shared: dict[str, Any]) -> bytes:
    """The concatenated ``[EventTime, record]`` entries of a PackedForward body."""
    return bytes(lines.encode(shared))


def encode_message(
    tag: str, body: bytes | memoryview, count: int, chunk: str, compress: bool
) -> bytes:
    """``[tag, body, {size, chunk[, compressed]}]`` as Forward PackedForward.

    The array and ``bin`` headers are written by hand so that the (large) body is copied once,
    into the message, instead of once more by the msgpack packer.
    """
    options: dict[str, Any] = {"size": count, "chunk": chunk}
    if compress:
        body = gzip.compress(body, compresslevel=1)
        options["compressed"] = "gzip"
    return b"".join((b"\x93", wire.pack(tag), _bin_header(len(body)), body, wire.pack(options)))


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")
