"""Long ``source_id`` values are kept under a fixed-length id: what one costs the dedup is bounded.

The offset dedup (:mod:`aggregator.dedup`) remembers every ``source_id`` for 14 days, in memory
and in ``offsets.json``, and the buffer and the ledger carry it with every row. logq-shipper's
ids are ``host:inode:fingerprint@birth+epoch`` (:func:`shipper.opening.source_id`): under 100
bytes on a usual host, ~330 with the longest DNS name. A client that sent 20,000 distinct 10 KB
ids in 20 messages took an aggregator to 1.28 GB, and its ``offsets.json`` to 170 MB.

So an id longer than :data:`MAX_SOURCE_ID_BYTES` (UTF-8) is replaced, as it is decoded, by its
first :data:`KEPT_CHARS` characters, ``...sha256=`` and the SHA-256 of the whole id (138 bytes for
an ASCII id, 330 at most). Why not treat such an id as absent (no offset dedup for its records)?
The shipper accepts a ``--hostname`` of up to 4 KiB (:data:`shipper.wire.MAX_KEY_BYTES`): a long
id can be a real shipper's, whose resends must still be dropped. The replacement keeps that
working (the same id always gives the same replacement, and two ids never share one but by a
SHA-256 collision), keeps the id readable in the log and ``offsets.json``, and loses no record:
only the id is shortened, never the line or the other fields. Every decode path gets the same
result, because the replacement is made once on the batch each path built (:func:`bounded`), on
its dictionary of ids: a few distinct values a message, so the usual message costs one size check
(~1 us).

Records with a long id are counted (:data:`LONG`, ``logq_aggregator_long_source_ids_total``) and
a WARNING says so at most every :data:`WARN_EVERY_SECONDS`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc

from aggregator.throttle import Throttle
from shipper import wire

log = logging.getLogger("logq.aggregator.decode")

#: Longest ``source_id`` kept as sent, in UTF-8 bytes (logq-shipper's: ~330 at most with any
#: DNS host name, under 100 on a usual host).
MAX_SOURCE_ID_BYTES = 512
#: Characters of a long id kept before its hash (so the log and ``offsets.json`` still say whose).
KEPT_CHARS = 64
#: Seconds between two WARNINGs about long ids.
WARN_EVERY_SECONDS = 600.0


class Counted:
    """A count that threads add to (decoding runs in worker threads too)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


#: Records whose ``source_id`` was replaced, since the process started (all aggregators of the
#: process: decoding is module-level).
LONG = Counted()
_warnings = Throttle(WARN_EVERY_SECONDS, what="long source_id warnings", logger=log)


def shortened(source_id: str) -> str:
    """The fixed-length id that stands for a ``source_id`` over :data:`MAX_SOURCE_ID_BYTES`."""
    digest = hashlib.sha256(source_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{source_id[:KEPT_CHARS]}...sha256={digest}"


def bounded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` (of the buffer schema) with each ``source_id`` over :data:`MAX_SOURCE_ID_BYTES`
    replaced by :func:`shortened` (itself, not copied, when none is: the usual case)."""
    index = batch.schema.get_field_index(wire.KEY_SOURCE_ID)
    column = batch.column(index)
    dictionary = column.dictionary
    if dictionary.get_total_buffer_size() <= MAX_SOURCE_ID_BYTES:
        return batch  # no value can be longer than all its buffers: the usual message's check
    too_long = pc.greater(pc.binary_length(dictionary), MAX_SOURCE_ID_BYTES)
    if not pc.any(too_long).as_py():
        return batch
    values = dictionary.to_pylist()
    long_at = [i for i, flag in enumerate(too_long.to_pylist()) if flag]
    example = values[long_at[0]]
    for i in long_at:
        values[i] = shortened(values[i])
    rows = pc.sum(pc.is_in(column.indices, pa.array(long_at, column.indices.type))).as_py() or 0
    LONG.add(rows)
    _warn(rows, example)
    replaced = pa.DictionaryArray.from_arrays(column.indices, pa.array(values, pa.string()))
    return batch.set_column(index, batch.schema.field(index), replaced)


def _warn(rows: int, example: str) -> None:
    if not _warnings.due("long", time.time()):
        return
    log.warning(
        "records with a source_id over %d bytes (%d bytes, starting %.80r): logq-shipper's are "
        "host:inode:fingerprint, far shorter. They are stored, their source_id replaced by its "
        "first %d characters and its SHA-256 (%s), which bounds what the offset dedup "
        "remembers and still drops their resends. If a client puts something else in "
        "source_id, have it send its own field name (said at most every %.0f s; "
        "logq_aggregator_long_source_ids_total counts the records) records=%d",
        MAX_SOURCE_ID_BYTES,
        len(example.encode("utf-8", "surrogatepass")),
        example,
        KEPT_CHARS,
        shortened(example)[KEPT_CHARS:],
        WARN_EVERY_SECONDS,
        rows,
    )
