"""The input files of a merge: their footers read first (small files whole), small ones fetched
:data:`READ_THREADS` at a time (see "Throughput" in :mod:`.passes`), their rows decoded a batch
at a time (see :mod:`.sorted_rows`)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.storage import fetch_object
from athena.foreign import ForeignFile, footer_mismatch, text_as_binary, uncastable, utf8_mismatch
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
    #: A run of a merge (:func:`.runs.merge_run`) of an input not sorted by time, already named
    #: in an INFO: the run is not sorted either, and is not named again.
    named_unsorted: bool = field(default=False, compare=False, repr=False)
    #: Its footer declares a column with another type than the table, or its statistics show
    #: values beyond the table's type (a file another tool wrote): left out of every merge
    #: (:func:`_read_footer`).
    foreign: ForeignFile | None = field(default=None, compare=False, repr=False)


#: How the error of a file whose values failed the merge's cast ends: it is raised, and the
#: partition's merge fails (the pass goes on with the others).
CAST_FAILED = "; its partition is not compacted until then"


def _conform_input(f: Input, table: pa.Table, spec: Table) -> pa.Table:
    """:func:`_conform` of rows of ``f``, a value that does not convert (one its footer's
    statistics could not tell, :func:`athena.foreign.range_mismatch`: a row group without them)
    raised naming the file, not only its partition as pyarrow's words did."""
    try:
        return _conform(table, spec)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(uncastable(f.path, str(exc)).advice(CAST_FAILED)) from exc


def _conform(table: pa.Table, spec: Table) -> pa.Table:
    """Columns in schema order with schema types (older files may lack newer columns). A
    table already so (every flush file of this release) is returned as it is: the casts and
    the rebuilt table cost more than decoding a 10-row flush file."""
    schema = spec.arrow_schema()
    if table.schema.equals(schema, check_metadata=True):
        return table
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(_cast(table[f.name], f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


#: Timestamp units, coarsest first, and the ``floor_temporal`` unit of each.
_UNITS = {"s": "second", "ms": "millisecond", "us": "microsecond", "ns": "nanosecond"}


def _cast(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """``column`` as ``to``. Times finer than ``to``'s unit (``timestamp[us]`` or ``[ns]``, as
    pandas and Spark write them, against the table's milliseconds) are floored to it first:
    the safe cast refused sub-millisecond values (``would lose data``), and that partition's
    merge failed at every pass. Such a file is no foreign one (:func:`athena.foreign.same_kind`:
    ``logq`` reads it; it shows times in milliseconds, the table's unit), and the floor keeps
    each row in its hour and on the same side of any millisecond bound (``--since``,
    ``--until``) it was on; rounding could carry ``HH:59:59.9995`` into the next hour. Floored
    without the column's time zone (the same instants: a cast between time zones keeps the
    values), as ``floor_temporal`` in a zone with summer time raises on the hour that
    repeats."""
    if (
        pa.types.is_timestamp(to)
        and pa.types.is_timestamp(column.type)
        and list(_UNITS).index(column.type.unit) > list(_UNITS).index(to.unit)
    ):
        utc = column.cast(pa.timestamp(column.type.unit))
        column = pc.floor_temporal(utc, unit=_UNITS[to.unit])
    return column.cast(to)


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


class _Fetcher:
    """The bytes of a merge's small inputs, fetched :data:`READ_THREADS` at a time in the order
    the merge will want them and at most ``window`` (compressed) bytes ahead of it: on S3 each
    is a request of tens of milliseconds, which a merge of a thousand flush files cannot wait
    for one by one. Only fetched bytes are held here; decoding is the merge's, a batch at a time.

    ``progress`` runs in the caller's thread before each input is fetched, so an exception it
    raises stops the fetches (those under way finish; the others are not started)."""

    def __init__(
        self,
        wh: Warehouse,
        order: list[Input],
        progress: Callable[[], None],
        window: int,
    ) -> None:
        self.wh, self.progress, self.window = wh, progress, window
        self._queue: deque[Input] = deque(order)
        self._pending: dict[str, Future[pa.Buffer]] = {}
        self._sizes: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="compact-read")

    def get(self, f: Input) -> pa.Buffer:
        """``f``'s bytes (fetched now if it was not under way); more fetches start behind it."""
        if f.path not in self._pending:
            with contextlib.suppress(ValueError):
                self._queue.remove(f)
            self._submit(f)
        self._top_up()
        future = self._pending.pop(f.path)
        self._sizes.pop(f.path)
        data = future.result()
        self._top_up()
        return data

    def _top_up(self) -> None:
        while self._queue and len(self._pending) < READ_THREADS:
            if self._pending and sum(self._sizes.values()) + self._queue[0].size > self.window:
                return
            self._submit(self._queue.popleft())

    def _submit(self, f: Input) -> None:
        self.progress()
        self._pending[f.path] = self._pool.submit(_fetch_whole, self.wh, f.path)
        self._sizes[f.path] = f.size

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)


class _RowSize:
    """Decoded bytes per row of one input, to size its batches to a share of bytes.

    Measured on the rows read (the largest so far, and not less than a footer says): a footer's
    uncompressed size counts a dictionary-encoded string as its index, so Envoy rows decode to
    5.6 times its figure and a repeated long line to hundreds of times. One per input, not one
    per merge: a merge-wide largest figure let one file of multi-MB lines shrink every other
    input's batches to a row each (a 124 MiB partition-hour then took hours, not a minute), and
    sized a file's first batch from another file's narrow rows (a flush file of a long line
    repeated 60,000 times was decoded whole, ~1 GiB, in one batch)."""

    def __init__(self, share: int, most_rows: int) -> None:
        self.share, self.most_rows = share, most_rows
        self.measured = 0.0

    def observe(self, table: pa.Table) -> None:
        if table.num_rows:
            self.measured = max(self.measured, table.nbytes / table.num_rows)

    def batch_rows(self, row_group: pq.RowGroupMetaData) -> int:
        footer = row_group.total_byte_size / max(1, row_group.num_rows)
        return max(1, min(self.most_rows, int(self.share // max(1.0, self.measured, footer))))


#: Rows decoded to measure an input's row size before its first batch is sized (:class:`_RowSize`).
PROBE_ROWS = 64


def _batches(
    wh: Warehouse,
    spec: Table,
    f: Input,
    fetch: Callable[[Input], pa.Buffer],
    share: int,
    closing: contextlib.ExitStack,
    most_rows: int,
) -> Iterator[pa.Table]:
    """``f``'s rows in batches of about ``share`` decoded bytes (at most ``most_rows`` rows,
    sized by its own :class:`_RowSize`), in file order, conformed to ``spec``: never a whole
    file or row group decoded at once (a 59 MiB flush file decodes to ~600 MiB of Arrow). A
    small input is decoded from its bytes (kept from its footer read, or ``fetch``); a larger
    one is read through pyarrow a row group at a time (the row group's compressed column chunks
    fetched at once, in as few requests as can be), the file closed by ``closing``. The input's
    first row group with rows is measured on its first rows first; when those are all its rows
    and its batch would hold them all, they are that batch, not decoded again.

    An input up to :data:`WHOLE_READ_BYTES` is decoded on the merge's thread
    (``use_threads=False``): handing its few column chunks to Arrow's thread pool and waiting
    for them cost more than decoding them (a 10-row flush file: 2-3 ms of wall and ~1 ms of
    CPU a file with the pool and the second decode, ~0.5 ms and ~0.25 ms without, measured on
    the shared 2-core machine). Either way the same rows in the same batches."""
    sizes = _RowSize(share, most_rows)
    threads = f.size > WHOLE_READ_BYTES  # (a merge's run in memory may be larger)
    if f.data is not None or not threads:
        data = f.data if f.data is not None else fetch(f)
        parquet = pq.ParquetFile(pa.BufferReader(data), metadata=f.meta)
    else:
        fh = closing.enter_context(_open(wh, f.path))
        parquet = pq.ParquetFile(fh, metadata=f.meta, pre_buffer=True)
    meta = parquet.metadata
    for i in range(meta.num_row_groups):
        row_group = meta.row_group(i)
        probe: pa.Table | None = None
        if not sizes.measured:
            read = parquet.iter_batches(PROBE_ROWS, row_groups=[i], use_threads=threads)
            if (first := next(read, None)) is not None:
                probe = _conform_input(f, pa.Table.from_batches([first]), spec)
                sizes.observe(probe)
            del first  # (the probe's rows: held no longer than the probe)
        size = sizes.batch_rows(row_group)
        if probe is not None and probe.num_rows == row_group.num_rows <= size:
            yield probe  # (the one batch the read below would decode again)
            continue
        del probe
        read = parquet.iter_batches(size, row_groups=[i], use_threads=threads)
        for batch in read:
            table = _conform_input(f, pa.Table.from_batches([batch]), spec)
            sizes.observe(table)
            yield table


def _readable(wh: Warehouse, infos: list[pafs.FileInfo], spec: Table | None = None) -> list[Input]:
    """The files whose Parquet footer reads, by name; any other is left where it is, with an
    ERROR naming it (a truncated upload, a stray file: Athena fails on it too). With ``spec``,
    each footer is also checked against the table's types (:attr:`Input.foreign`).

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
        results = list(
            pool.map(lambda a: _read_footer(wh, *a, spec), zip(ordered, whole, strict=True))
        )
    return [f for f in results if f is not None]


def _read_footer(
    wh: Warehouse, info: pafs.FileInfo, whole: bool, spec: Table | None = None
) -> Input | None:
    """``info``'s footer (and, if ``whole``, all its bytes), or None with an ERROR.

    With ``spec``, the footer is checked against the table's types as ``logq`` checks it
    (:func:`athena.foreign.footer_mismatch`), here where it is read anyway: a file another tool
    wrote (``timestamp`` as epoch integers or text, ``response_code`` as text, or as int64
    beyond the table's int by its statistics) is marked
    :attr:`Input.foreign`. Merging it would cast it: epoch integers were taken for
    milliseconds and ISO text parsed into times (conversions Athena never makes: it refuses the
    file), and a value that does not convert failed the whole partition's merge, every pass.
    Text stored as raw bytes (Parquet BINARY, as Spark and Hive write it) is no other type: it
    is merged as strings, unless it holds bytes that are not UTF-8 (:func:`_not_utf8`)."""
    try:
        data: pa.Buffer | None = None
        if whole:
            data = _fetch_whole(wh, info.path)
            meta = pq.read_metadata(pa.BufferReader(data))
        else:
            with _open(wh, info.path) as fh:
                meta = pq.read_metadata(fh)
        foreign = None
        if spec is not None:
            foreign = footer_mismatch(spec.name, info.path, meta) or _not_utf8(
                wh, spec, info.path, meta, data
            )
    except (pa.ArrowException, OSError) as exc:
        log.error(
            "not compacting %s: it is not a readable Parquet file (%s); queries of its "
            "partition fail on it too: move it out of the warehouse",
            info.path,
            exc,
        )
        return None
    size = len(data) if data is not None else info.size or 0
    if foreign is not None:  # never merged: its bytes are not kept
        data = None
    return Input(info.path, info.base_name, size, meta.num_rows, meta, data, foreign=foreign)


def _not_utf8(
    wh: Warehouse, spec: Table, path: str, meta: pq.FileMetaData, data: pa.Buffer | None
) -> ForeignFile | None:
    """The error for an input whose text columns stored as raw bytes hold bytes that are not
    UTF-8 (:func:`athena.foreign.utf8_mismatch`: only those columns are read, only in such a
    file), else None. Checked before any merge: the merge's cast (to strings, which hold only
    UTF-8) would fail on them, and the partition's merge with it at every pass; the file is
    left out instead, as a file of other types is."""
    if not text_as_binary(spec.name, meta.schema.to_arrow_schema()):
        return None
    with contextlib.ExitStack() as closing:
        source = (
            pa.BufferReader(data) if data is not None else closing.enter_context(_open(wh, path))
        )
        return utf8_mismatch(spec.name, path, pq.ParquetFile(source, metadata=meta))
