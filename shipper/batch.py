"""Turning parsed lines into one Forward PackedForward message.

Lines arrive as columns with each entry's event time already packed; the body is encoded in
one msgspec call per batch, with the keys shared by the whole source (service, container, host,
image, source id) pre-encoded once and repeated in every record (see :mod:`shipper.entry`).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipper import wire
from shipper.entry import RECORD_BYTES, pack_shared
from shipper.lines import Lines

if TYPE_CHECKING:
    from shipper.cursor import Cursor

#: Bytes of a message besides its body and tag: the array header (1), the ``bin`` header (5),
#: the options ``{size, chunk, compressed}`` (58 at most), with room to spare.
ENVELOPE_BYTES = 128
#: What gzip can add to a body that does not compress, at most (zlib's deflateBound: about
#: 0.03 % plus 31 bytes), with room to spare: 4 KiB of 4 MiB.
GZIP_SLACK = wire.MAX_MESSAGE_BYTES >> 10


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


@dataclass(slots=True)
class WireRoom:
    """The room a Forward message being filled has left for its records, in an upper bound of
    their encoded bytes (:meth:`~shipper.lines.Lines.wire_bytes`): the reader takes no line
    past it (:meth:`shipper.tailer.Tailer._fit`), so that no message passes
    :data:`~shipper.wire.MAX_MESSAGE_BYTES`, whatever ``--batch-lines`` and ``--batch-bytes``
    allow. The first record of a message always goes: ``--max-line-bytes`` is bounded so that
    one fits (:data:`shipper.config.MAX_LINE_BYTES`)."""

    left: int
    per_record: Callable[[Cursor], int]
    """Bytes of each record of a file besides 4 per character of its texts: its shared keys
    and :data:`~shipper.entry.RECORD_BYTES`."""


def body_room(tag: str, compress: bool) -> int:
    """The most bytes a message body of ``tag`` may take: :data:`~shipper.wire.MAX_MESSAGE_BYTES`
    less the envelope, and less what gzip may add (``compress``)."""
    envelope = ENVELOPE_BYTES + len(wire.pack(tag)) + (GZIP_SLACK if compress else 0)
    return wire.MAX_MESSAGE_BYTES - envelope


def record_bytes(shared: dict[str, Any]) -> int:
    """:attr:`WireRoom.per_record` of records carrying the ``shared`` keys."""
    return RECORD_BYTES + len(pack_shared(shared))


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
