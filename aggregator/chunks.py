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
stored again, as is one sent to another aggregator or arriving after a restart (see
docs/operations.md).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

import pyarrow as pa

#: Chunk ids remembered: at one message a second from each of 500 clients, 200 s of traffic.
DEFAULT_LIMIT = 100_000


def chunk_key(chunk: str, batch: pa.RecordBatch, client: str) -> bytes:
    """What identifies a message for resends: the sending host (``client``, without the port:
    a resend comes on a new connection), its tag, ``chunk`` id, row count, first and last event
    time. The same for a resend of the same entries; different for new data under a reused id
    or the same entries from another host or tag. A 16-byte digest: a client's ``chunk`` may be
    any size."""
    times = batch.column("time_ns")
    tag = batch.column("tag")[0].as_py()
    text = "\x00".join(
        map(str, (client, tag, chunk, batch.num_rows, times[0].as_py(), times[-1].as_py()))
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
