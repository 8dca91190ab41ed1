"""Resent chunks: a message whose ``chunk`` id was buffered a moment ago is acked, not stored.

A client that asks for acks resends a message whose ack did not reach it (the connection broke,
the ack timed out). logq shippers' records carry a source id and offset, and the flusher drops
those it has (:mod:`aggregator.dedup`); records of other Forward clients carry neither. But
their ``chunk`` id is the same on every resend: Fluent Bit's is the hex of the first 16 bytes of
the SHA-512 of the message's entries, Fluentd's the unique id of its buffer chunk. So the
server remembers the chunk ids it buffered recently and answers a resend with an ack once the
first copy is durable, storing nothing -- what Fluentd's own ``in_forward`` does not do.

A resend is recognised by its chunk id together with the client's address, the tag, the row
count and the first and last event times (:func:`chunk_key`): a client that numbers its chunks
(1, 2, ...) and starts again after a restart sends new data under an old id, and two Fluent Bit
replicas that log the same line in the same millisecond send the same entries, so the same
hash: neither must be taken for a resend. Keys are 16-byte digests, whatever the client puts in
its ``chunk``.

Memory holds the last :data:`DEFAULT_LIMIT` keys (about 155 bytes each: 15 MB), minutes of
traffic from hundreds of clients; older ones are forgotten, so a resend later than that is
stored again, as is one sent to another aggregator.

Across a restart. The classic lost ack is the aggregator's own death (kill -9, OOM, a host
reboot) between the fsync of a message and its ack: the client resends to the restarted
aggregator. So the key is also on disk, where the records are:

* in the buffer frame itself (:func:`frame_payload`): the Arrow IPC record batch carries it as
  custom metadata (``logq.chunk``), a small frame (:mod:`aggregator.small_frames`) as its first
  field, written and fsync'd with the records, atomically with them (one checksummed frame).
  Readers that do not look for it (from_ipc, an older logq) get the same table from an IPC
  frame (an older logq cannot read small frames: see that module on downgrades), and segments
  of versions without keys replay here, only without keys. At start the segments left by the
  previous run are read for their keys (:func:`frame_chunk`);
* in ``<buffer-dir>/chunks.journal`` (:class:`FlushedChunks`) once the segment is flushed and
  deleted: its keys are appended and fsync'd before the segment goes, and kept for
  :data:`RESEND_WINDOW_SECONDS` (and at most :data:`DEFAULT_LIMIT` keys): a crash a few seconds
  after a flush does not forget the messages that flush took out of the buffer.

So after a restart a resend is recognised if its first copy is still in the buffer (any age) or
was flushed less than ten minutes before (and is among the last 100,000 such keys). A message
whose frame was torn by the crash was never acked nor kept: its resend is stored, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from aggregator import small_frames
from aggregator.decode import to_ipc
from aggregator.durable import atomic_file
from aggregator.frames import Scan, encode_frame, scan_frames
from shipper.wire import KEY_LOG

log = logging.getLogger("logq.aggregator.chunks")

#: Chunk ids remembered: at one message a second from each of 500 clients, 200 s of traffic.
DEFAULT_LIMIT = 100_000
#: How long the keys of a flushed segment are kept on disk for a restart. A client resends
#: after its ack timeout (Fluentd: 190 s by default; Fluent Bit: when the connection breaks)
#: plus its retry backoff and the restart: seconds to a few minutes.
RESEND_WINDOW_SECONDS = 600.0
#: File of the keys of recently flushed segments, in the buffer dir.
JOURNAL_NAME = "chunks.journal"
#: Custom metadata key of the record batch of a buffer frame that holds a message with a chunk.
CHUNK_METADATA = b"logq.chunk"
KEY_BYTES = 16

#: Chunk ids that name no data: Fluent Bit's forward output in Message mode (a ``Tag`` built
#: from record fields) with ``Require_ack_response`` hashes zero bytes for every message (its
#: ``record_size`` stays 0 since it reads records with the log event decoder), so each message
#: it sends carries this id, the first 16 bytes of SHA-512("") in hex. Taken for resends, its
#: lines of one tag and time (a ``Time_Key`` of second precision) were acked and dropped.
ANONYMOUS_CHUNKS = frozenset({hashlib.sha512(b"").hexdigest()[:32]})

_ROWS = struct.Struct(">I")  # the row count that starts every buffer frame (decode.to_ipc)
_WHEN = struct.Struct(">d")
_FRAME_OVERHEAD = len(encode_frame(_WHEN.pack(0.0)))  # a journal frame without its keys


def chunk_key(
    chunk: str | bytes, tag: str | bytes, batch: pa.RecordBatch, client: str, by_text: bool = False
) -> bytes:
    """What identifies a message for resends: the sending host (``client``, without the port:
    a resend comes on a new connection), its ``tag`` and ``chunk`` id as sent, row count, first
    and last event time. The same for a resend of the same entries; different for new data
    under a reused id or the same entries from another host or tag. A 16-byte digest: a
    client's ``chunk`` may be any size.

    The tag and id are taken as sent, not as stored: tags ``team.\\xff`` and ``team.\\xfe``
    (invalid UTF-8) are both stored as ``team.\\ufffd``, and were taken for one tag, the second
    message for a resend of the first (acked, not stored).

    ``by_text``: some event times of the message were replaced by the receive time (they could
    not be kept as sent), which a resend would not repeat: the first and last lines stand in
    for the first and last times. So two sends of the same lines under the same content-hash
    chunk id (Fluent Bit's ids are hashes) by a client without a clock count as one: the
    price of not storing its resends twice."""
    column = batch.column(KEY_LOG if by_text else "time_ns")
    first, last = column[0].as_py(), column[-1].as_py()
    if by_text:
        first, last = f"text:{first}", f"text:{last}"
    # Bytes read as the same text as before for valid UTF-8 (keys on disk from an earlier run
    # still match); each invalid byte becomes a surrogate of its own (surrogateescape).
    tag, chunk = _as_sent(tag), _as_sent(chunk)
    text = "\x00".join(map(str, (client, tag, chunk, batch.num_rows, first, last)))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _as_sent(value: str | bytes) -> str:
    """A tag or chunk id as text that tells apart every byte string (see :func:`chunk_key`)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def names_data(chunk: str | bytes | None) -> bool:
    """Whether a ``chunk`` id tells one message from another, so that a second message under it
    may be a resend: not one of :data:`ANONYMOUS_CHUNKS`, whose messages are always stored (at
    least once, as Fluentd's ``in_forward`` stores every message). Asked only of a message
    whose key was seen already (``ForwardServer._store_one``), so that it costs nothing per
    new chunk: the messages of an anonymous id are keyed and remembered like any others."""
    return chunk not in ANONYMOUS_CHUNKS


class RecentChunks:
    """Chunk ids of messages appended to the buffer recently, with their pending writes."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._ids: OrderedDict[bytes, asyncio.Future[None] | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def earlier(self, chunk: bytes) -> tuple[bool, asyncio.Future[None] | None]:
        """Whether ``chunk`` was buffered already, and the write of that copy while it is not
        durable yet (None once it is). A copy whose write failed was never acked: forgotten,
        so that the resend is stored."""
        if chunk not in self._ids:
            return False, None
        write = self._ids[chunk]
        if write is not None and write.done():
            if write.cancelled() or write.exception() is not None:
                del self._ids[chunk]
                return False, None
            self._ids[chunk] = write = None
        return True, write

    def add(self, chunk: bytes, write: asyncio.Future[None] | None) -> None:
        """``chunk``'s records were appended to the buffer; ``write`` completes when they are
        durable."""
        self._ids[chunk] = write
        self._ids.move_to_end(chunk)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        if write is not None:
            write.add_done_callback(lambda done: self._settled(chunk, done))

    def _settled(self, chunk: bytes, write: asyncio.Future[None]) -> None:
        """The write of ``chunk``'s records ended: durable (kept, without the future) or failed
        (forgotten: it was not acked, and its resend must be stored)."""
        if self._ids.get(chunk) is not write:
            return
        if write.cancelled() or write.exception() is not None:
            del self._ids[chunk]
        else:
            self._ids[chunk] = None

    def restore(self, keys: Iterable[bytes]) -> None:
        """Remember ``keys`` (oldest first) of messages durable before a restart."""
        for key in keys:
            self.add(key, None)


def frame_payload(batch: pa.RecordBatch, compression: str, key: bytes | None) -> bytes:
    """The buffer frame of a message: :func:`aggregator.decode.to_ipc`'s, with the message's
    chunk ``key`` (if it has one) as custom metadata of its record batch, so that the key is
    durable exactly when the records are. ``from_ipc`` reads the same table from both.
    A message of few rows is a small frame (:mod:`aggregator.small_frames`) carrying the key."""
    small = small_frames.encode(batch, key)
    if small is not None:
        return small
    metadata = None if key is None else {CHUNK_METADATA: key.hex().encode("ascii")}
    return to_ipc(batch, compression, metadata)


def frame_chunk(payload: bytes) -> bytes | None:
    """The chunk key a buffer frame carries (:func:`frame_payload`); None for a message without
    ``chunk``, a frame written by an older version, or one that does not decode (the flusher
    reports those).

    Read from the record batch's message header alone: its custom metadata is a flatbuffer
    key-value of two length-prefixed strings, and the body (the records, compressed with
    ``--buffer-compression``) is neither decompressed nor decoded. A restart reads every
    frame of the buffer before it listens: decoding them took minutes for a large zstd
    buffer of small messages (26 s per million lines of 20-line frames), reading headers
    takes microseconds a frame. The records' bytes are never searched: a log line cannot
    forge a key."""
    if small_frames.is_small(payload):
        return small_frames.chunk_of(payload)
    if CHUNK_METADATA not in payload:  # a quick scan spares the frames without a key
        return None
    try:
        reader = pa.BufferReader(pa.py_buffer(payload)[_ROWS.size :])
        while (message := pa.ipc.read_message(reader)).type != "record batch":
            pass  # the schema and dictionary messages that come first
        header = message.metadata.to_pybytes()
    except (pa.ArrowException, OSError, ValueError, EOFError):
        return None
    if _KEY_NAME not in header:
        return None
    found = _KEY_VALUE.findall(header)
    return bytes.fromhex(found[0].decode("ascii")) if len(found) == 1 else None


#: The flatbuffer strings of the key-value :func:`frame_payload` writes: a little-endian u32
#: length, the bytes, a NUL.
_KEY_NAME = struct.pack("<I", len(CHUNK_METADATA)) + CHUNK_METADATA + b"\x00"
_KEY_VALUE = re.compile(re.escape(struct.pack("<I", 2 * KEY_BYTES)) + rb"([0-9a-f]{32})\x00")


def frame_chunks(payloads: Iterable[bytes]) -> list[bytes]:
    """The chunk keys of a segment's frames, in order."""
    return [key for payload in payloads if (key := frame_chunk(payload)) is not None]


class FlushedChunks:
    """``<buffer-dir>/chunks.journal``: the chunk keys of segments flushed recently.

    A segment leaves the buffer once its rows are committed; a crash right after that must not
    forget its keys, or a client whose ack the crash cut off resends and the rows are stored
    twice. Each flushed (or quarantined) segment appends one frame (:mod:`aggregator.frames`:
    ``[when: f64][key]*``), fsync'd before the segment is deleted. Frames older than
    ``window`` seconds, and keys beyond the newest ``limit``, are dropped: at start, and
    whenever dropped frames make up more than half the file (rewritten whole, atomically).
    So the file holds at most about ``limit`` keys (1.6 MB) plus as much again.
    """

    def __init__(
        self, path: Path, window: float = RESEND_WINDOW_SECONDS, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.path = path
        self.window = window
        self.limit = limit
        self._entries: deque[tuple[float, bytes]] = deque()
        """Live frames: (when, keys concatenated), oldest first."""
        self._keys = 0
        self._file_bytes = 0
        self._loaded = False
        self._scan = Scan()

    def load(self, now: float | None = None) -> list[bytes]:
        """The live keys, oldest first; rewrites the file without the dead ones (and without a
        torn tail a crash may have left)."""
        now = time.time() if now is None else now
        self._entries.clear()
        self._keys = 0
        for when, keys in self._read():
            self._entries.append((when, keys))
            self._keys += len(keys) // KEY_BYTES
        self._expire(now)
        self._loaded = True
        try:
            self._rewrite()
        except OSError as exc:  # a full disk: keep the file, minus a torn tail appends would hide
            log.warning("could not rewrite %s (%s); appending to it as it is", self.path, exc)
            with contextlib.suppress(OSError):
                os.truncate(self.path, self._scan.end)
            self._file_bytes = self._scan.end
        return list(self.keys())

    def keys(self) -> Iterator[bytes]:
        for _, keys in self._entries:
            for at in range(0, len(keys), KEY_BYTES):
                yield keys[at : at + KEY_BYTES]

    def add(self, keys: list[bytes], now: float | None = None) -> None:
        """Append the keys of one segment leaving the buffer, durably (fsync'd)."""
        if not keys:
            return
        now = time.time() if now is None else now
        if not self._loaded:
            self.load(now)
        blob = b"".join(keys)
        frame = encode_frame(_WHEN.pack(now) + blob)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # no partial frame: it would hide later ones
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._file_bytes = size + len(frame)
        self._entries.append((now, blob))
        self._keys += len(keys)
        self._expire(now)
        if self._file_bytes > 2 * self._live_bytes() + (1 << 20):
            self._rewrite()

    def _live_bytes(self) -> int:
        """Bytes the live frames take in the file."""
        return len(self._entries) * _FRAME_OVERHEAD + self._keys * KEY_BYTES

    def _expire(self, now: float) -> None:
        while self._entries and (
            self._entries[0][0] < now - self.window or self._keys > self.limit
        ):
            when, keys = self._entries[0]
            count = len(keys) // KEY_BYTES
            if when >= now - self.window and self._keys - count < self.limit:
                # Only part of this frame is over the limit: keep its newest keys.
                keep = self.limit - (self._keys - count)
                self._entries[0] = (when, keys[-keep * KEY_BYTES :])
                self._keys = self.limit
                break
            self._entries.popleft()
            self._keys -= count

    def _read(self) -> Iterator[tuple[float, bytes]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size

            def damaged(pos: int, length: int) -> None:
                log.error(
                    "%s: the frame at offset %d (%d bytes) fails its checksum (disk damage); "
                    "resends of the chunks it held would be stored again",
                    self.path,
                    pos,
                    length,
                )

            self._scan = Scan()
            for payload in scan_frames(fh, size, self._scan, damaged):
                if len(payload) < _WHEN.size or (len(payload) - _WHEN.size) % KEY_BYTES:
                    log.error(
                        "%s: a frame of %d bytes is not a journal frame", self.path, len(payload)
                    )
                    continue
                yield _WHEN.unpack_from(payload)[0], payload[_WHEN.size :]

    def _rewrite(self) -> None:
        """Replace the file with the live frames (atomically: a crash keeps one or the other)."""
        if not self._entries:
            if self._file_bytes or self.path.exists():
                self.path.unlink(missing_ok=True)
            self._file_bytes = 0
            return
        with atomic_file(self.path) as fh:
            for when, keys in self._entries:
                fh.write(encode_frame(_WHEN.pack(when) + keys))
        self._file_bytes = self._live_bytes()
