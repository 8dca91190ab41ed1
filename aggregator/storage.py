"""Putting whole Parquet objects into the warehouse, local or S3, so readers never see half a file.

Readers take every ``*.parquet`` whose name does not start with ``_`` or ``.`` (the layout rule in
DESIGN.md), so a local write goes to ``.<name>.tmp`` in the same folder, is fsync'd, renamed into
place, and the folder fsync'd: after :func:`put_table` returns the object survives a power cut,
which is what lets the buffer delete its segment. On S3 an object becomes visible only when its
upload completes, so it is written under its final key directly; a retried upload of the same
key replaces it whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.durable import atomic_file, write_atomic
from athena.warehouse import Warehouse, list_entries, s3_client, s3_small_client

log = logging.getLogger("logq.aggregator.storage")

#: Rows per row group: large enough for Athena's scans, small enough to bound writer memory.
ROW_GROUP_ROWS = 1_000_000


class StorageError(OSError):
    """The warehouse refused a write or a listing; the flush is retried with backoff."""


class UnreadableObject(StorageError):
    """One object the warehouse answers for with a refusal that lasts (:func:`read_small`):
    access denied (a bucket policy, a KMS key this role may not use) or archived by a
    lifecycle rule (``InvalidObjectState``). Retrying will not help: a person must delete the
    object, restore it or grant access. ``path`` is the object, ``code`` the S3 error code."""

    def __init__(self, message: str, path: str, code: str) -> None:
        super().__init__(message)
        self.path = path
        self.code = code


#: Columns whose values are (nearly) unique per row: a dictionary only costs time there.
NO_DICTIONARY = frozenset({"request_id"})
#: A plain string column is dictionary-encoded only when at most this share of a sample of its
#: values are distinct: paths, agents, flags and methods repeat; log messages and client
#: addresses mostly do not, and a dictionary of them is larger than their PLAIN pages (measured:
#: 150,000 distinct log lines, 757 KB with a whole dictionary against 454 KB PLAIN).
DICTIONARY_DISTINCT_SHARE = 0.5
#: Values sampled (evenly spaced) to tell the two apart: a hash of every value would cost the
#: ingest path about as much as writing it.
DICTIONARY_SAMPLE_ROWS = 1024
#: A column chunk's dictionary page may grow this large: Parquet writers switch a chunk whose
#: dictionary outgrows their limit (pyarrow: 1 MiB) to PLAIN in mid-chunk, and fastparquet
#: (2026.9) reads the string values after that switch as nulls (150,000 distinct messages in one
#: flushed object: 122,832 came back null). With this limit no chunk switches: a chunk's
#: dictionary holds at most its own decoded bytes, far below it (a flushed object: at most
#: ``spill.PART_ROWS`` rows of a buffer segment; a merge's row group: ``ROW_GROUP_BYTES``),
#: and a string column of more decoded bytes than this (a ``--segment-bytes`` of gigabytes of
#: long lines) is PLAIN whatever its sample says. Well below 500 MB: Trino (Athena's engine)
#: refuses a page larger than that (``parquet.max-page-read-size``), dictionary pages too.
DICTIONARY_PAGE_LIMIT = 256 * 1024 * 1024
#: DELTA_BINARY_PACKED only for values whose deltas spread over fewer bits than this:
#: fastparquet (2026.9) decodes miniblocks of 29 bits or more to wrong values (measured: 28 read
#: back right, 29 to 40 wrong) and crashed on 63.
DELTA_MAX_BITS = 28
#: An integer column with at most this many distinct values in the table written (status codes,
#: durations, small sizes) is dictionary-encoded; one with more (response sizes) is PLAIN.
INT_DICTIONARY_MAX = 8192
#: A dictionary column is cut to the values its rows use (:func:`_used_values_only`) only when
#: its dictionary holds more than one byte per this many rows of the object. Below that, the
#: unused values add at most a quarter of a byte a row per column before zstd (a stored row
#: takes ~30), and finding them costs more, ~6 ns a row per column: the usual flush (a few
#: services, objects of thousands of rows using 1 of 8 container ids) paid +0.02 µs a line of
#: the aggregator's ~2.2 µs of CPU (``bench/ingest.py --stages``) to save ~400 bytes a column
#: per object. The bytes left stay linear in the rows, never services x partitions.
CUT_ROWS_PER_DICTIONARY_BYTE = 4


def write_options(table: pa.Table) -> dict:
    """Parquet writer settings for ``table`` (flushes and compaction alike).

    zstd level 1: measured on Envoy and application logs, smaller than levels 3 to 15 (those
    spend bits on short matches inside random ids) and faster. Dictionary encoding for string
    columns (paths, flags, agents repeat a lot) but ``request_id`` and those whose values are
    mostly distinct (:func:`_mostly_distinct`: messages), and never a switch to PLAIN inside a
    column chunk (:data:`DICTIONARY_PAGE_LIMIT`); DELTA_BINARY_PACKED for
    timestamps (sorted times become tiny deltas); integers as a dictionary when they have few
    distinct values, else DELTA_BINARY_PACKED when mostly ascending (offsets), else PLAIN (zstd
    beats DELTA's bit-packing on random-looking sizes). DELTA only where fastparquet decodes it
    (:func:`_delta_fits`: no nulls, narrow deltas), else PLAIN.
    Measured on the ingest bench's Envoy rows: 29.2 bytes a row against 30.5 with DELTA for
    every integer. Only encodings that Athena, DuckDB and fastparquet all read (fastparquet
    lacks the byte-array DELTA encodings and BYTE_STREAM_SPLIT).
    """
    dictionary, encoding, statistics = [], {}, []
    for f in table.schema:
        value_type = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if pa.types.is_timestamp(value_type) or pa.types.is_integer(value_type):
            statistics.append(f.name)
        if pa.types.is_timestamp(value_type):
            encoding[f.name] = _delta_unless_null(table[f.name], "DELTA_BINARY_PACKED")
        elif pa.types.is_integer(value_type):
            int_encoding = _int_encoding(table[f.name])
            if int_encoding is None:
                dictionary.append(f.name)
            else:
                encoding[f.name] = _delta_unless_null(table[f.name], int_encoding)
        elif (
            f.name not in NO_DICTIONARY
            and table[f.name].nbytes < DICTIONARY_PAGE_LIMIT
            and (pa.types.is_dictionary(f.type) or not _mostly_distinct(table[f.name]))
        ):
            dictionary.append(f.name)
    return {
        "compression": "zstd",
        "compression_level": 1,
        "use_dictionary": dictionary,
        "dictionary_pagesize_limit": DICTIONARY_PAGE_LIMIT,
        "column_encoding": encoding,
        # Min/max where they can skip row groups (times, codes, sizes); on strings (random ids,
        # paths, agents) they never do and cost a fifth of the write.
        "write_statistics": statistics,
        "coerce_timestamps": "ms",
        "allow_truncated_timestamps": True,
        "row_group_size": ROW_GROUP_ROWS,
        # No Arrow schema in the footer: dictionary-encoded string columns read back as plain
        # strings, the same in every file whatever the writer's in-memory encoding was.
        "store_schema": False,
    }


def _delta_unless_null(values: pa.ChunkedArray, chosen: str) -> str:
    """``chosen``, but PLAIN instead of DELTA_BINARY_PACKED where fastparquet (2026.9) would
    misread it (:func:`_delta_fits`)."""
    if chosen == "DELTA_BINARY_PACKED" and not _delta_fits(values):
        return "PLAIN"
    return chosen


def _delta_fits(values: pa.ChunkedArray) -> bool:
    """Whether fastparquet reads ``values`` back from DELTA_BINARY_PACKED pages: no nulls (it
    writes past the end of its buffer decoding a page of nulls only: a heap corruption that
    crashed the reading process later), and deltas spread over less than
    2**:data:`DELTA_MAX_BITS` (wider miniblocks decode to wrong values). Event times of one
    hour, sorted, spread over 22 bits at most; a ledger's offsets jump between sources' files
    by gigabytes, and are PLAIN then."""
    if values.null_count:
        return False
    flat = values.combine_chunks()  # (the integer choice combined them already)
    if len(flat) < 2:
        return True
    if pa.types.is_timestamp(flat.type):
        flat = flat.view(pa.int64())
    try:
        deltas = pc.subtract_checked(flat[1:], flat[:-1])
    except pa.ArrowInvalid:  # a delta outside the type: far too wide anyway
        return False
    bounds = pc.min_max(deltas)
    return bounds["max"].as_py() - bounds["min"].as_py() < 1 << DELTA_MAX_BITS


def _mostly_distinct(values: pa.ChunkedArray) -> bool:
    """Whether over :data:`DICTIONARY_DISTINCT_SHARE` of a sample of ``values`` (up to
    :data:`DICTIONARY_SAMPLE_ROWS`, evenly spaced) are distinct, nulls aside."""
    sample = _sample(values, DICTIONARY_SAMPLE_ROWS)
    present = len(sample) - sample.null_count
    return present > 0 and pc.count_distinct(sample).as_py() > DICTIONARY_DISTINCT_SHARE * present


def _sample(values: pa.ChunkedArray, rows: int) -> pa.ChunkedArray:
    """Up to ``rows`` of ``values``, evenly spaced (every ``len // rows``-th from the first),
    taken chunk by chunk: a take from a chunked array concatenates its chunks first, a copy of
    the whole column (a flushed object's spilled pieces: 82 MB of messages for 200,000 rows,
    and ~5 ms) for 1,024 values."""
    step = max(1, len(values) // rows)
    positions = np.arange(0, len(values), step)[:rows]
    if not len(positions):
        return pa.chunked_array([], values.type)
    starts = np.cumsum([0, *(len(chunk) for chunk in values.chunks)])
    chunk_of = np.searchsorted(starts, positions, side="right") - 1  # empty chunks: none
    found, first = np.unique(chunk_of, return_index=True)
    parts = [
        values.chunk(int(k)).take(pa.array(at - starts[k]))
        for k, at in zip(found, np.split(positions, first[1:]), strict=True)
    ]
    return pa.chunked_array(parts, values.type)


def _int_encoding(values: pa.ChunkedArray) -> str | None:
    """None (a dictionary) for few distinct values; DELTA_BINARY_PACKED for mostly ascending
    ones (the ledger's offsets); PLAIN for the rest.

    Values within a range of :data:`INT_DICTIONARY_MAX` (codes, durations) cannot have more
    distinct ones: a min/max scan tells, where counting them hashes every value."""
    bounds = pc.min_max(values)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or high - low < INT_DICTIONARY_MAX:  # None: no values, none distinct
        return None
    if not _more_distinct_than(values, INT_DICTIONARY_MAX, low, high):
        return None
    # Each value against the one before (null if either is): a compare kernel; the difference
    # (``pc.pairwise_diff``) cost ~5 times as much, and could wrap around.
    flat = values.combine_chunks()
    ascending = pc.sum(pc.greater_equal(flat[1:], flat[:-1])).as_py() or 0
    return "DELTA_BINARY_PACKED" if ascending >= 0.9 * (len(values) - 1) else "PLAIN"


#: An integer column whose values span at most this many possible values per row has its
#: distinct values counted in a bitmap of that span (:func:`_distinct_count`).
BITMAP_SPAN_PER_ROW = 16
#: Rows of an integer column counted first (:func:`_more_distinct_than`).
DISTINCT_HEAD_ROWS = 4 * INT_DICTIONARY_MAX


def _more_distinct_than(values: pa.ChunkedArray, limit: int, low: int, high: int) -> bool:
    """Whether ``values`` (integers from ``low`` to ``high``) hold more than ``limit`` distinct
    non-null values, exactly.

    Its first :data:`DISTINCT_HEAD_ROWS` rows are counted first: a part never holds more
    distinct values than the whole, so more than ``limit`` there settles it, as it does for a
    ledger object's offsets (a row per line of the segment, nearly all distinct) and for
    random-looking sizes, in ~1 ms whatever the rows. Counting every value of a wide span
    hashed them all: ~47 ns a row (7.7 ms for 166,000 random sizes), more in the aggregator,
    whose pages freed after each flush fault in again (``aggregator/memory.py``); the
    ledger's offsets of a 1M-line ingest bench took ~5% of the aggregator's CPU there."""
    if len(values) > DISTINCT_HEAD_ROWS:
        head = values.slice(0, DISTINCT_HEAD_ROWS)
        bounds = pc.min_max(head)
        head_low, head_high = bounds["min"].as_py(), bounds["max"].as_py()
        if head_low is not None and _distinct_count(head, head_low, head_high) > limit:
            return True
    return _distinct_count(values, low, high) > limit


def _distinct_count(values: pa.ChunkedArray, low: int, high: int) -> int:
    """How many distinct non-null values ``values`` (integers from ``low`` to ``high``) hold,
    exactly: the encoding chosen must be the same for a retried flush, which overwrites the
    object under the same key.

    Values spread over at most :data:`BITMAP_SPAN_PER_ROW` possible ones a row (response
    sizes, durations) are marked in a bitmap of their span: ~2 ns a value. Others are hashed
    once by ``pc.unique`` (~40 ns). ``pc.count_distinct`` hashed every chunk into a table of
    its own, then merged the tables into another: ~60 ns a value with mimalloc, ~120 to ~190
    with the system pool the aggregator runs (fresh tables, page faults); on the ingest
    bench's rows (one such column, ``bytes_sent``) that was ~370 of the ~6,000 instructions
    a row that spilling and writing cost."""
    valid = values.drop_null() if values.null_count else values
    span = high - low + 1
    if span > BITMAP_SPAN_PER_ROW * len(valid):
        return len(pc.unique(valid))
    numbers = valid.to_numpy()
    if numbers.dtype.itemsize < 8:  # a narrow type could wrap around in ``numbers - low``
        numbers = numbers.astype(np.int64)
    seen = np.zeros(span, dtype=np.bool_)
    seen[numbers - low] = True
    return int(np.count_nonzero(seen))


def put_table(wh: Warehouse, path: str, table: pa.Table) -> None:
    """Write ``table`` as one Parquet object at ``path`` (inside ``wh.fs``), atomically."""
    table = _used_values_only(_one_dictionary_per_column(table))
    try:
        if isinstance(wh.fs, pafs.LocalFileSystem):
            _put_local(Path(path), table)
        else:
            _put_remote(wh, path, table)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"writing {path} to {wh.uri} failed: {exc}") from exc


def _put_remote(wh: Warehouse, path: str, table: pa.Table) -> None:
    """Encode ``table`` in memory, then upload it: an object store shows it whole or not at all.

    Encoded straight into the upload stream, an error in mid-encoding (or a signal that raised
    there) closed the stream on its way out, which completes the upload: what was encoded so far
    became the object, a valid Parquet file with part of the rows (the writer's footer is
    written on close too), visible to readers until a retry overwrote it. pyarrow's streams have
    no abort. A flushed object is a few MiB (a tenth of the rows' raw size), held once more
    while it uploads."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **write_options(table))
    body = sink.getvalue()
    with wh.fs.open_output_stream(path) as out:
        out.write(body)


def _one_dictionary_per_column(table: pa.Table) -> pa.Table:
    """``table`` with the chunks of each dictionary column sharing one dictionary.

    Arrow's Parquet writer switches a column chunk to PLAIN in mid-chunk when the dictionary
    changes from one Arrow chunk to the next, the switch that fastparquet reads as nulls (see
    :data:`DICTIONARY_PAGE_LIMIT`): a ledger entry's ``source_id`` is one dictionary per slice
    of its segment, and every ``source_id`` after the first slice came back null. A flushed
    object's spilled pieces are unified already: their dictionaries (hosts, containers) are
    only compared."""
    for f in table.schema:
        if pa.types.is_dictionary(f.type):
            chunks = table[f.name].chunks
            if any(not c.dictionary.equals(chunks[0].dictionary) for c in chunks[1:]):
                return table.unify_dictionaries()
    return table


def _used_values_only(table: pa.Table) -> pa.Table:
    """``table`` with each dictionary column's dictionary cut to the values its rows use.

    Arrow's Parquet writer stores an Arrow dictionary as it is, unused values too, and a
    partition's rows are a slice of the whole segment's table (:func:`.writer.partitions`),
    whose dictionaries hold every host, container and image of the segment. So every object
    carried every other service's names: measured with 1,000 services sending, a 6-row object
    took 25 KB (its ``container_id`` dictionary 136 KB before zstd), the flush compressed
    ~190 KB of dictionaries per object and wrote 2,000 of them (the work growing with the
    square of the services), and Athena reads each dictionary page whole. A dictionary small
    against the object's rows is left whole (:data:`CUT_ROWS_PER_DICTIONARY_BYTE`). Expects one
    dictionary per column (:func:`_one_dictionary_per_column`)."""
    for i, f in enumerate(table.schema):
        if not pa.types.is_dictionary(f.type) or not table.column(i).num_chunks:
            continue
        column = table.column(i)
        dictionary = column.chunk(0).dictionary
        if dictionary.nbytes * CUT_ROWS_PER_DICTIONARY_BYTE <= len(column):
            continue
        # The work follows the object's rows, not the segment's dictionary: a hash of the
        # indices used, not a pass over every value of the dictionary.
        used = pc.unique(pa.chunked_array([c.indices for c in column.chunks])).drop_null()
        if len(used) == len(dictionary):
            continue
        kept = dictionary.take(used)
        chunks = [
            pa.DictionaryArray.from_arrays(
                pc.index_in(c.indices, value_set=used).cast(f.type.index_type),
                kept,
                ordered=f.type.ordered,
            )
            for c in column.chunks
        ]
        table = table.set_column(i, f, pa.chunked_array(chunks, f.type))
    return table


def _put_local(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        pq.write_table(table, fh, **write_options(table))


def put_bytes(wh: Warehouse, path: str, data: bytes) -> None:
    """Write a small whole object (a state file) at ``path``, atomically as :func:`put_table`."""
    try:
        if isinstance(wh.fs, pafs.LocalFileSystem):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(path), data)
        else:
            with wh.fs.open_output_stream(path) as out:
                out.write(data)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"writing {path} to {wh.uri} failed: {exc}") from exc


def delete_object(wh: Warehouse, path: str) -> None:
    """Delete one object; one that is already gone is fine.

    On S3, one DeleteObject request (boto3). pyarrow's ``delete_file`` sends three: a HEAD
    (is it a file?), the DELETE, and a PUT of an empty ``folder/`` marker so that the folder
    still lists once empty. Nothing here needs that marker (a folder is listed with
    ``allow_not_found``, an emptied partition is no partition), and every merge deletes its
    intent: at 1,000 partition-hours an hour, 3,000 requests an hour become 1,000 (the PUTs
    are the ones S3 bills). If boto3's request fails, pyarrow's delete decides, as before.
    """
    if _deleted_with_boto3(wh, path):
        return
    try:
        wh.fs.delete_file(path)
    except FileNotFoundError:
        pass
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"deleting {path} in {wh.uri} failed: {exc}") from exc


#: The S3 settings for which a boto3 GET or DELETE failed and pyarrow's requests were used
#: instead (logged once per settings: a TLS setting only pyarrow's client has fails them all).
_FELL_BACK: set[Any] = set()
#: Those of :data:`_FELL_BACK` for which the last boto3 request that failed got no answer from
#: S3 at all (a TLS setting only pyarrow's client has, a network error); an S3 error answer (a
#: 500, a refusal) shows that boto3 reaches the store. A merge there writes through pyarrow's
#: stream, not a multipart upload that would fail the same way
#: (:func:`.compaction.merge._atomic_output`), until a boto3 request is answered again and
#: a compaction pass starts (:func:`retry_multipart`).
_UNANSWERED: set[Any] = set()


def _boto3_failed(wh: Warehouse, what: str, exc: Exception) -> None:
    """Log that a boto3 request failed and pyarrow's are used instead: a WARNING the first time
    for these settings (every request then costs pyarrow's two or three), DEBUG after that."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        _boto3_answered(wh)  # (an error answer: boto3 reaches the store)
    level = logging.DEBUG if wh.s3 in _FELL_BACK else logging.WARNING
    _FELL_BACK.add(wh.s3)
    if not isinstance(exc, ClientError):
        _UNANSWERED.add(wh.s3)
        _ANSWERED_AGAIN.discard(wh.s3)  # (an answer before this one does not count)
    log.log(level, "%s in %s through boto3 failed (%s): pyarrow sends it", what, wh.uri, exc)


def _boto3_answered(wh: Warehouse) -> None:
    """A boto3 request got the store's answer (a success, or an error answer such as a 404):
    settings in :data:`_UNANSWERED` are noted in :data:`_ANSWERED_AGAIN`, for the next
    compaction pass to move its merges back to multipart uploads (:func:`retry_multipart`)."""
    if wh.s3 in _UNANSWERED:
        _ANSWERED_AGAIN.add(wh.s3)


#: Those of :data:`_UNANSWERED` whose boto3 requests got an answer again since the last one
#: that got none (a network blip is over).
_ANSWERED_AGAIN: set[Any] = set()


def retry_multipart(wh: Warehouse) -> None:
    """Called by a compaction pass before its first merge (after the GET of its clock marker:
    :func:`.compaction.store_clock.measure`): settings whose boto3 requests got an answer again
    since one got none leave :data:`_UNANSWERED`, so this pass's merges write multipart uploads
    again (:func:`.compaction.merge._multipart`). A network blip thus moves merges to pyarrow's
    stream (which cannot abort) until the next pass, not for the rest of the process; settings
    whose boto3 requests never get an answer (a TLS setting only pyarrow's client has) stay.
    Only here, between passes: a merge's memory reservation and its output agree on which
    writer it uses. The next failure after this is a WARNING again."""
    if wh.s3 not in _ANSWERED_AGAIN:
        return
    _ANSWERED_AGAIN.discard(wh.s3)
    _UNANSWERED.discard(wh.s3)
    _FELL_BACK.discard(wh.s3)
    log.info("boto3 reaches %s again: compaction merges write multipart uploads again", wh.uri)


def _with_boto3(wh: Warehouse) -> bool:
    """Whether ``wh`` is an S3 warehouse :func:`open_warehouse` built, whose settings also build
    the boto3 client (elsewhere: a local disk, or a filesystem built by someone else)."""
    return wh.s3 is not None and isinstance(wh.fs, pafs.S3FileSystem)


def _error_code(exc: Any) -> str:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``, ...); "" for
    any other error."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _deleted_with_boto3(wh: Warehouse, path: str) -> bool:
    """:func:`delete_object` on S3 in one DeleteObject (S3 answers a missing key with a
    success; a store answering NoSuchKey is taken at its word: gone). False where pyarrow
    must delete instead: a local disk, a filesystem :func:`open_warehouse` did not build, or
    a request that failed (a TLS setting only pyarrow's client has, a network error)."""
    if not _with_boto3(wh):
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = path.partition("/")
    try:
        s3_client(wh.s3).delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in _GONE:
            _boto3_answered(wh)
            return True
        _boto3_failed(wh, f"deleting {path}", exc)
        return False
    except BotoCoreError as exc:
        _boto3_failed(wh, f"deleting {path}", exc)
        return False
    _boto3_answered(wh)
    return True


def fetch_object(wh: Warehouse, path: str) -> pa.Buffer | None:
    """All the bytes of the object at ``path`` in one request; None where this cannot be done
    (a local disk, a filesystem :func:`open_warehouse` did not build, or boto3's request
    failed other than for a missing key): read it through pyarrow, whose errors then decide.

    On S3, one GetObject (boto3). pyarrow sends two for a whole small file: a HEAD for its
    size, then the GET, even when the size is known from a listing (its Python API opens files
    by name only: ``Fragment.open`` too drops the size it was given; measured on pyarrow 26).
    For compaction's flush files that halves the GETs: 1.1 M a peak hour, not 2.2 M.

    Raises FileNotFoundError when the object is gone, as pyarrow does.
    """
    if not _with_boto3(wh):
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = path.partition("/")
    try:
        answer = s3_client(wh.s3).get_object(Bucket=bucket, Key=key)
        with contextlib.closing(answer["Body"]) as body:
            data = pa.py_buffer(body.read())
        _boto3_answered(wh)
        return data
    except ClientError as exc:
        if _error_code(exc) in _GONE | {"404"}:
            _boto3_answered(wh)
            raise FileNotFoundError(f"{path} is no longer in {wh.uri}") from exc
        _boto3_failed(wh, f"reading {path}", exc)
    except BotoCoreError as exc:
        _boto3_failed(wh, f"reading {path}", exc)
    return None


@dataclass(frozen=True)
class SmallObject:
    """A small document read whole (:func:`read_small`), with the times that date it by the
    warehouse's own clock: its age then needs no other host's clock (ledger.py)."""

    data: bytes
    written: float
    """When the warehouse says it was written, by its clock (S3 ``Last-Modified``, a file's
    mtime)."""
    store_now: float
    """The warehouse's clock when it was read (S3's ``Date`` header; this host's clock for a
    local file or where no such header is at hand)."""
    seen: float
    """This host's clock (``time.time()``) when it was read."""
    resolution: float
    """How coarse ``written`` and ``store_now`` are: 1 s for S3's HTTP dates, 0 for a file."""

    @property
    def age(self) -> float:
        """Seconds since it was written, by the warehouse's clock alone."""
        return max(0.0, self.store_now - self.written)


def read_small(wh: Warehouse, path: str) -> SmallObject | None:
    """The object at ``path`` as one version, whole; None when there is none.

    pyarrow reads an S3 object in two requests (a HEAD for its size, then a ranged GET): one
    rewritten in between reads torn, cut at the old size or padded out. On S3 this is one
    GetObject (boto3), which returns one version; a local file is read through one open
    descriptor (written by rename, it is never torn). Where boto3's request cannot be used
    (:func:`fetch_object`) pyarrow reads it, torn reads included: the caller retries a
    document that does not parse. Raises :class:`StorageError` when the warehouse cannot be
    read (a 503, a network error, a timeout): never taken for "no such object" here; its
    :class:`UnreadableObject` when this object is refused for good (403, archived)."""
    try:
        if isinstance(wh.fs, pafs.LocalFileSystem):
            return _read_small_file(Path(path))
        if _with_boto3(wh):
            found = _get_small_with_boto3(wh, path)
            if found is not False:
                return found
        return _read_small_pyarrow(wh, path)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"reading {path} from {wh.uri} failed: {exc}") from exc


def _read_small_file(path: Path) -> SmallObject:
    try:
        fh = path.open("rb")
    except PermissionError as exc:  # another uid's file, mode 0600: as an S3 AccessDenied
        raise UnreadableObject(f"cannot read {path}: {exc}", str(path), "AccessDenied") from exc
    with fh:
        written = os.fstat(fh.fileno()).st_mtime  # the same file as the bytes read
        data = fh.read()
    now = time.time()
    return SmallObject(data, written, now, now, 0.0)


def _get_small_with_boto3(wh: Warehouse, path: str) -> SmallObject | Literal[False] | None:
    """:func:`read_small` in one GetObject; False where pyarrow must read instead (a request
    that failed other than for a missing key, logged as :func:`fetch_object` does).

    Sent by :func:`athena.warehouse.s3_small_client` (a short read timeout). An answer that
    pyarrow's requests would get too is not asked again through them: a server error (503
    SlowDown), a server that took the request and did not answer in time (ReadTimeoutError:
    pyarrow's three tries added ~11 s to a hung endpoint's ~15), or a lasting refusal of
    this object (:class:`UnreadableObject`)."""
    from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

    bucket, _, key = path.partition("/")
    try:
        answer = s3_small_client(wh.s3).get_object(Bucket=bucket, Key=key)
        seen = time.time()
        with contextlib.closing(answer["Body"]) as body:
            data = body.read()
    except ClientError as exc:
        _boto3_answered(wh)  # (an answer, whatever it says: boto3 reaches the store)
        code = _error_code(exc)
        if code in _GONE | {"404"}:
            return None
        if code in _REFUSED_FOR_GOOD or code.startswith("KMS."):
            raise UnreadableObject(
                f"{wh.uri} refuses to read {path} ({code}): {exc}", path, code
            ) from exc
        if _server_error(exc):  # S3 answered (503 SlowDown): pyarrow's requests would too
            raise StorageError(f"reading {path} from {wh.uri} failed: {exc}") from exc
        _boto3_failed(wh, f"reading {path}", exc)
        return False
    except ReadTimeoutError as exc:
        raise StorageError(f"reading {path} from {wh.uri} timed out: {exc}") from exc
    except BotoCoreError as exc:
        _boto3_failed(wh, f"reading {path}", exc)
        return False
    _boto3_answered(wh)
    written = answer["LastModified"].timestamp()
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        store_now = parsedate_to_datetime(date).timestamp() if date else seen
    except (TypeError, ValueError):
        store_now = seen
    return SmallObject(data, written, store_now, seen, 1.0)


#: S3 error codes of a GET refused for this object until a person acts (:class:`UnreadableObject`;
#: also every ``KMS.*`` code). Not the ones that fail every request alike (a wrong key, a clock
#: off: ``InvalidAccessKeyId``, ``RequestTimeTooSkewed``): the listing before the read fails then.
_REFUSED_FOR_GOOD = frozenset({"AccessDenied", "InvalidObjectState", "AllAccessDisabled"})


def _server_error(exc: Any) -> bool:
    """Whether a botocore ``ClientError`` is the server's 5xx answer (after boto3's retries)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return isinstance(status, int) and status >= 500


def _read_small_pyarrow(wh: Warehouse, path: str) -> SmallObject:
    """:func:`read_small` through pyarrow (a HEAD, then a GET): the object's mtime is taken
    from the HEAD, and the warehouse's clock is taken to be this host's (no header at hand)."""
    info = wh.fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    with wh.fs.open_input_stream(path) as fh:
        data = fh.read()
    seen = time.time()
    written = info.mtime.timestamp() if info.mtime is not None else seen
    return SmallObject(data, written, seen, seen, 1.0)


#: Single-object deletes in flight at once on S3 (a filesystem other than the one
#: :func:`open_warehouse` builds, which :func:`delete_objects` deletes from in batches).
DELETE_PARALLEL = 16
#: Keys in one S3 DeleteObjects request: the API's limit.
DELETE_BATCH = 1000


def delete_objects(wh: Warehouse, paths: list[str]) -> None:
    """Delete ``paths`` (gone already is fine). Every delete is tried; if any failed, a
    :class:`StorageError` naming the first is raised after them.

    On S3, one DeleteObjects request per 1,000 keys (boto3: pyarrow has no batch delete for
    chosen keys, only ``delete_dir_contents``, which would also take files landing in the
    folder meanwhile): a merge of 360 flush files costs 1 request, not 360, and readers see
    its rows twice for one round trip. A key the server refuses is reported in the answer
    (its ``Errors``), not as a failed request: it fails the call like a failed single delete.
    Elsewhere (a local disk, or a filesystem :func:`open_warehouse` did not build) one request
    per path, :data:`DELETE_PARALLEL` at a time on S3.
    """
    if _with_boto3(wh) and len(paths) > 1 and wh.s3 not in _NO_BATCH_DELETE:
        _delete_batched(wh, s3_client(wh.s3), paths)
        return
    _delete_one_by_one(wh, paths)


def _delete_one_by_one(wh: Warehouse, paths: list[str]) -> None:
    """:func:`delete_objects` a request per path (:data:`DELETE_PARALLEL` at a time on S3)."""
    if isinstance(wh.fs, pafs.LocalFileSystem) or len(paths) < 2:
        for path in paths:
            delete_object(wh, path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(DELETE_PARALLEL, len(paths))) as pool:
        futures = [pool.submit(delete_object, wh, path) for path in paths]
    errors = [exc for f in futures if (exc := f.exception()) is not None]
    if errors:
        raise errors[0]


def _delete_batched(wh: Warehouse, client: Any, paths: list[str]) -> None:
    """:func:`delete_objects` on S3: the batches of each bucket one after another (a merge's
    inputs are one partition's: one bucket, and rarely more than one batch)."""
    keys: dict[str, list[str]] = {}
    for path in dict.fromkeys(paths):  # the same key twice in one request is refused
        bucket, _, key = path.partition("/")
        keys.setdefault(bucket, []).append(key)
    refused: list[str] = []
    failed: StorageError | None = None
    for bucket, names in keys.items():
        for start in range(0, len(names), DELETE_BATCH):
            try:
                refused += _delete_batch(wh, client, bucket, names[start : start + DELETE_BATCH])
            except StorageError as exc:
                failed = failed or exc
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise StorageError(
            f"S3 refused to delete {len(refused)} of {len(paths)} objects in {wh.uri}: "
            f"{refused[0]}{more}"
        )
    if failed is not None:
        raise failed


#: Error codes that mean the key is gone already (S3 itself reports a missing key as deleted,
#: in DeleteObject and DeleteObjects alike; some S3-compatible servers answer NoSuchKey).
_GONE = frozenset({"NoSuchKey"})


#: Error codes of S3-compatible stores that do not take DeleteObjects as boto3 sends it (some
#: want a Content-MD5 header, some have no multi-object delete): deleted one by one from then on.
_BATCH_UNSUPPORTED = frozenset(
    {
        "MissingContentMD5",
        "InvalidRequest",
        "NotImplemented",
        "MethodNotAllowed",
        "MalformedXML",
        "InvalidDigest",
        "BadDigest",
    }
)
#: The S3 settings whose store refused a DeleteObjects request for one of those reasons.
_NO_BATCH_DELETE: set[Any] = set()


def _delete_batch(wh: Warehouse, client: Any, bucket: str, keys: list[str]) -> list[str]:
    """One DeleteObjects request (quiet: the answer lists only the keys that failed); return
    ``<bucket>/<key> (<code>: <message>)`` for each key the server refused.

    A request refused whole by a store without DeleteObjects or that wants what boto3 does not
    send, or failed on TLS (a certificate setting only pyarrow's client has), falls back to one
    delete per key (:func:`delete_object`: boto3's DeleteObject, else pyarrow's), so a merge's
    inputs never stay beside its output for want of a batch request; a store that refuses the
    request itself is not asked again."""
    from botocore.exceptions import BotoCoreError, ClientError, SSLError

    try:
        answer = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
    except (BotoCoreError, ClientError) as exc:
        code = _error_code(exc) if isinstance(exc, ClientError) else ""
        if code in _BATCH_UNSUPPORTED:
            if wh.s3 not in _NO_BATCH_DELETE:
                _NO_BATCH_DELETE.add(wh.s3)
                log.warning(
                    "%s refuses DeleteObjects (%s): compaction deletes its inputs one request each",
                    wh.uri,
                    exc,
                )
        elif not isinstance(exc, SSLError):
            # Throttling (SlowDown), a server error, the network: a thousand single deletes
            # would fare no better. The merge's intent stays; the next pass deletes them.
            raise StorageError(
                f"deleting {len(keys)} objects ({bucket}/{keys[0]}...) in {wh.uri} failed: {exc}"
            ) from exc
        _delete_one_by_one(wh, [f"{bucket}/{k}" for k in keys])
        return []
    return [
        f"{bucket}/{e.get('Key')} ({e.get('Code')}: {e.get('Message')})"
        for e in answer.get("Errors", [])
        if e.get("Code") not in _GONE
    ]


def list_folder(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
    """Everything directly in ``folder`` (nothing if it does not exist)."""
    selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
    try:
        return list_entries(wh.fs, selector)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"listing {folder} in {wh.uri} failed: {exc}") from exc


def list_tree_after(wh: Warehouse, folder: str, after: str) -> list[pafs.FileInfo] | None:
    """The objects under ``folder``, at any depth, whose path below it sorts after ``after``
    (``dt=2026-11-27-10`` skips every hour before it: the hour folders sort by time; whether
    that hour's own objects are listed depends on the server: S3's keys sort after their
    prefix, SeaweedFS skips the folder named), with their sizes and times; None where this
    cannot be done in one go (a local disk, or a filesystem :func:`open_warehouse` did not
    build): list otherwise.

    On S3, ListObjectsV2 with ``StartAfter`` (boto3: pyarrow's selector has no such option),
    one request per 1,000 objects listed: a service's last hours cost a request or two
    whatever the length of its history. Folder markers (keys ending in ``/``) are left out.
    """
    if not _with_boto3(wh) or wh.s3 in _NO_START_AFTER:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = folder.strip("/").partition("/")
    prefix = f"{prefix}/" if prefix else ""
    infos: list[pafs.FileInfo] = []
    try:
        pages = s3_client(wh.s3).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, StartAfter=prefix + after):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                infos.append(
                    pafs.FileInfo(
                        f"{bucket}/{obj['Key']}",
                        pafs.FileType.File,
                        size=obj["Size"],
                        mtime=obj["LastModified"],
                    )
                )
    except (BotoCoreError, ClientError) as exc:
        # A store without StartAfter (S3 directory buckets), a TLS setting only pyarrow's client
        # has, an outage: pyarrow's listing decides (and raises what it cannot list). A store
        # that refuses the request is not asked again; each cause is logged once.
        code = _error_code(exc) if isinstance(exc, ClientError) else ""
        if code in _LISTING_UNSUPPORTED:
            _NO_START_AFTER.add(wh.s3)
        cause = (wh.s3, code or type(exc).__name__)
        if cause not in _LISTING_FAILURES:
            _LISTING_FAILURES.add(cause)
            log.warning(
                "listing %s in %s from %s failed (%s): compaction lists hour by hour",
                folder,
                wh.uri,
                after,
                exc,
            )
        return None
    return infos


#: Error codes of stores that do not take ListObjectsV2 with ``StartAfter``.
_LISTING_UNSUPPORTED = frozenset(
    {"InvalidArgument", "InvalidRequest", "NotImplemented", "MethodNotAllowed"}
)
#: The S3 settings whose store refused it: listed hour by hour from then on.
_NO_START_AFTER: set[Any] = set()
#: (settings, error code or exception name) already logged by :func:`list_tree_after`.
_LISTING_FAILURES: set[tuple[Any, str]] = set()


def list_parquet(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
    """The visible Parquet files directly in ``folder`` (hidden ``.``/``_`` names skipped)."""
    infos = list_folder(wh, folder)
    return sorted(
        (i for i in infos if i.type == pafs.FileType.File and is_visible_parquet(i.base_name)),
        key=lambda i: i.base_name,
    )


def is_visible_parquet(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))
