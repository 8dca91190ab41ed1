"""The input files of a merge: their footers read first (small files whole), their rows read
:data:`READ_THREADS` at a time (see "Throughput" in :mod:`.passes`)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.storage import fetch_object
from athena.schema import Table
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

#: Input files of one merge read at once (footers first, then the rows).
READ_THREADS = 8
#: Inputs up to this size are read whole with their footer (on S3 one GET, see
#: :func:`_fetch_whole`; the footer read would fetch the last 64 KiB anyway), so a flush file
#: is fetched once, not once per step.
WHOLE_READ_BYTES = 1024 * 1024
#: At most this many bytes of whole inputs are kept per partition between its footer reads and
#: its merges (the rest are read again when merged).
PREFETCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Input:
    path: str
    name: str
    size: int
    rows: int
    #: The footer, as read by :func:`_readable` (None: read it again).
    meta: pq.FileMetaData | None = field(default=None, compare=False, repr=False)
    #: The whole file, for small ones (None: read it when merged).
    data: pa.Buffer | None = field(default=None, compare=False, repr=False)


def _conform(table: pa.Table, spec: Table) -> pa.Table:
    """Columns in schema order with schema types (older files may lack newer columns)."""
    schema = spec.arrow_schema()
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _read_input(wh: Warehouse, spec: Table, f: Input) -> pa.Table:
    """One input's rows, from the bytes :func:`_readable` kept or with one more read (the
    footer is not read again): a small one whole (on S3 one GET), a larger one through
    pyarrow, its columns in one go."""
    data = f.data
    if data is None and f.size <= WHOLE_READ_BYTES:
        data = fetch_object(wh, f.path)
    if data is not None:
        return _conform(pq.ParquetFile(pa.BufferReader(data), metadata=f.meta).read(), spec)
    with _open(wh, f.path) as fh:
        table = pq.ParquetFile(fh, metadata=f.meta, pre_buffer=True).read()
    return _conform(table, spec)


def _open(wh: Warehouse, path: str) -> pa.NativeFile:
    """``path`` for reading through pyarrow. On S3 that is a HEAD (for the size) before the
    reads: pyarrow's Python API opens a file by name only, even ``Fragment.open`` given the
    size (measured on pyarrow 26), so small inputs are fetched with :func:`_fetch_whole`."""
    return wh.fs.open_input_file(path)


def _fetch_whole(wh: Warehouse, path: str) -> pa.Buffer:
    """All of ``path``'s bytes: on S3 in one GET (:func:`fetch_object`, where pyarrow sends a
    HEAD and a GET), elsewhere through pyarrow. Either way FileNotFoundError for a file gone,
    another OSError for a failed read, as :func:`_read_footer` and the merge expect."""
    data = fetch_object(wh, path)
    if data is not None:
        return data
    with _open(wh, path) as fh:
        return fh.read_buffer()


def _read_inputs(
    wh: Warehouse,
    spec: Table,
    files: list[Input],
    progress: Callable[[], None],
    window: int | None,
) -> Iterator[pa.Table]:
    """The rows of ``files``, in their order, read :data:`READ_THREADS` at a time and at most
    ``window`` compressed bytes ahead of the consumer (None: no limit). ``progress`` runs in
    the caller's thread before each input is started, so an exception it raises stops the
    reads (those under way finish; the others are not started)."""
    if not files:
        return
    pending: deque[tuple[Input, Future[pa.Table]]] = deque()
    ahead = 0
    index = 0
    pool = ThreadPoolExecutor(min(READ_THREADS, len(files)), thread_name_prefix="compact-read")
    try:
        while index < len(files) or pending:
            while index < len(files) and (
                not pending
                or (
                    len(pending) < READ_THREADS
                    and (window is None or ahead + files[index].size <= window)
                )
            ):
                f = files[index]
                index += 1
                progress()
                pending.append((f, pool.submit(_read_input, wh, spec, f)))
                ahead += f.size
            f, future = pending.popleft()
            ahead -= f.size
            yield future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _readable(wh: Warehouse, infos: list[pafs.FileInfo]) -> list[Input]:
    """The files whose Parquet footer reads, by name; any other is left where it is, with an
    ERROR naming it (a truncated upload, a stray file: Athena fails on it too).

    Read :data:`READ_THREADS` at a time; files up to :data:`WHOLE_READ_BYTES` are read whole
    (their first :data:`PREFETCH_BYTES`), so that their merge needs no other request."""
    ordered = sorted(infos, key=lambda i: i.base_name)
    whole: list[bool] = []
    kept = 0
    for info in ordered:
        size = info.size or 0
        take = size <= WHOLE_READ_BYTES and kept + size <= PREFETCH_BYTES
        kept += size if take else 0
        whole.append(take)
    if not ordered:
        return []
    with ThreadPoolExecutor(min(READ_THREADS, len(ordered)), "compact-footer") as pool:
        results = list(pool.map(lambda a: _read_footer(wh, *a), zip(ordered, whole, strict=True)))
    return [f for f in results if f is not None]


def _read_footer(wh: Warehouse, info: pafs.FileInfo, whole: bool) -> Input | None:
    """``info``'s footer (and, if ``whole``, all its bytes), or None with an ERROR."""
    try:
        data: pa.Buffer | None = None
        if whole:
            data = _fetch_whole(wh, info.path)
            meta = pq.read_metadata(pa.BufferReader(data))
        else:
            with _open(wh, info.path) as fh:
                meta = pq.read_metadata(fh)
    except (pa.ArrowException, OSError) as exc:
        log.error(
            "not compacting %s: it is not a readable Parquet file (%s); queries of its "
            "partition fail on it too: move it out of the warehouse",
            info.path,
            exc,
        )
        return None
    size = len(data) if data is not None else info.size or 0
    return Input(info.path, info.base_name, size, meta.num_rows, meta, data)
