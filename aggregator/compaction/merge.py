"""Writing a merge's output, in bounded memory.

The rows come from :func:`.sorted_rows.sorted_rows` (a k-way merge of the inputs, each read a
batch at a time) and are written in row groups of at most :data:`ROW_GROUP_BYTES` decoded bytes
(and ``ROW_GROUP_ROWS`` rows), so one merge holds about :data:`MERGE_BYTES` of decoded rows
whatever the size of its group and however well its files compress. Before: a group whose
footers summed up to 256 MiB (Parquet's uncompressed sizes, which count a dictionary-encoded
string as its index) was read whole and sorted in memory, and one of 124 MiB of Envoy flush
files decoded to 1.4 GiB, sorted into a copy as large: 2.8 GiB of RSS for one partition-hour.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator import storage
from aggregator.compaction import encodings
from aggregator.compaction.inputs import WHOLE_READ_BYTES, Input, _batches, _Fetcher
from aggregator.compaction.runs import merge_run, most_open, plan_runs, runs_bytes
from aggregator.compaction.sorted_rows import _Source, first_ts, sorted_rows
from aggregator.durable import atomic_file
from aggregator.multipart import MultipartUpload, buffer_bytes
from aggregator.storage import ROW_GROUP_ROWS, _with_boto3
from athena.schema import Table
from athena.warehouse import Warehouse, s3_client

#: Decoded bytes of input rows that one merge reads ahead of its output (the heads of
#: :func:`.sorted_rows.sorted_rows`): shared by the inputs open at once (their footers' spans
#: overlap), each read in batches of its share.
READ_BYTES = 32 * 1024 * 1024
#: The merge emits a piece of rows (sorted together) every ``READ_BYTES // PIECES_PER_READ``
#: bytes read (:func:`.sorted_rows.sorted_rows`): the heads hold that much more at most.
PIECES_PER_READ = 8
#: Decoded bytes of one output row group (Envoy rows: ~170,000 rows, ~5 MiB of Parquet);
#: at most ``ROW_GROUP_ROWS`` rows (container_logs' short lines reach that first).
ROW_GROUP_BYTES = 48 * 1024 * 1024
#: What one merge holds in decoded rows at most, whatever its group (measured: Arrow's peak was
#: about twice each, the row group filled beside the one being encoded, the batches beside
#: their sorted copy).
MERGE_BYTES = 2 * (READ_BYTES + ROW_GROUP_BYTES)
#: Merges that the memory budget is sized for (``passes.MERGE_PARTITIONS``).
MERGES_AT_ONCE = 4
#: Decoded bytes that the merges running at once may hold (:class:`_MemoryBudget`): four
#: merges (``MERGE_PARTITIONS``). On S3 the budget also holds their outputs' upload buffers
#: (:func:`_merge_budget`).
MERGE_MEMORY_BYTES = MERGES_AT_ONCE * MERGE_BYTES
#: A merge fetches small inputs (flush files) at most this many (compressed) bytes ahead.
FETCH_AHEAD_BYTES = 32 * 1024 * 1024
#: A batch holds at most this many rows (fewer when its share of READ_BYTES says so).
BATCH_ROWS = 65_536


@contextlib.contextmanager
def _atomic_output(
    wh: Warehouse, path: str
) -> Iterator[IO[bytes] | pa.NativeFile | MultipartUpload]:
    """A stream whose content appears at ``path`` whole, or not at all.

    On S3 (boto3's client at hand: :func:`.storage._with_boto3`) a multipart upload completed
    only when the ``with`` body succeeds, aborted otherwise (:mod:`aggregator.multipart`):
    the footer that ``_merge``'s ``writer.close()`` writes on the way out of a failed merge goes
    to an upload that is then aborted, so no short file is ever visible. A filesystem built
    elsewhere keeps pyarrow's stream, which cannot abort: its ``with`` publishes what was
    written (the attempt's rollback deletes it); so does an S3 warehouse whose last failed
    boto3 request got no answer (:data:`.storage._UNANSWERED`: a setting only pyarrow's client
    has, a network blip), until a pass starts once boto3 is answered again
    (:func:`.storage.retry_multipart`); an error answer, a 500 after retries, keeps the
    multipart upload."""
    if _multipart(wh):
        bucket, _, key = path.partition("/")
        upload = MultipartUpload(s3_client(wh.s3), bucket, key)
        try:
            yield upload
        except BaseException:
            upload.abort()
            raise
        upload.complete()
        return
    if not isinstance(wh.fs, pafs.LocalFileSystem):
        with wh.fs.open_output_stream(path) as out:
            yield out
        return
    with atomic_file(Path(path)) as fh:
        yield fh


def _merge(
    wh: Warehouse,
    spec: Table,
    group: list[Input],
    output: str,
    progress: Callable[[], None] = lambda: None,
) -> int:
    """Write ``group``'s rows to ``output``, sorted by ``timestamp``; return how many.
    ``progress`` runs before each input is read (it keeps the intent fresh, and raises to
    stop)."""
    group = [_with_footer(wh, f) for f in group]
    votes = encodings.dictionary_votes(f.meta for f in group)  # (before runs replace them)
    rows = 0
    with contextlib.ExitStack() as closing, _atomic_output(wh, output) as out:
        piece_bytes = max(1, READ_BYTES // PIECES_PER_READ)
        runs = plan_runs(group)
        sources = _sources(wh, spec, group, progress, closing, runs)
        while len(runs) > 1:  # many inputs overlap: merged in runs first (:mod:`.runs`)
            group = _merged_runs(group, runs, sources, piece_bytes)
            runs = plan_runs(group)
            sources = _sources(wh, spec, group, progress, closing, runs)
        pieces = sorted_rows(sources, piece_bytes)
        writer: pq.ParquetWriter | None = None
        try:
            for row_group in _row_groups(pieces, spec):
                if writer is None:  # settings for every row group: see .encodings
                    options = _writer_options(row_group, votes)
                    writer = pq.ParquetWriter(out, row_group.schema, **options)
                writer.write_table(row_group, row_group_size=max(1, row_group.num_rows))
                rows += row_group.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _merged_runs(
    group: list[Input], runs: list[list[int]], sources: list[_Source], piece_bytes: int
) -> list[Input]:
    """The next step's inputs: each run of ``group`` merged into one (:func:`.runs.merge_run`),
    a run of one input as it is. ``group`` and ``sources`` are emptied, and each run's members
    dropped once it is merged: past about ``FAN_IN ** 2`` inputs a second round merges the
    first one's runs (in memory) again, and held all of them until its last run was built
    (:func:`.runs.runs_bytes` counts a run's members beside it, not the runs merged before)."""
    members: list[Input | None] = list(group)
    readers: list[_Source | None] = list(sources)
    group.clear()
    sources.clear()
    merged: list[Input] = []
    for run in runs:
        first, last = members[run[0]], members[run[-1]]
        assert first is not None and last is not None
        if len(run) == 1:  # (one input: read in the next step only)
            merged.append(first)
            continue
        name = f"{first.name}..{last.name}"
        taken = [r for r in (readers[i] for i in run) if r is not None]
        for i in run:
            members[i] = readers[i] = None
        del first, last
        output = merge_run(name, taken, piece_bytes)
        del taken
        if output is not None:
            merged.append(output)
    return merged


def _sources(
    wh: Warehouse,
    spec: Table,
    group: list[Input],
    progress: Callable[[], None],
    closing: contextlib.ExitStack,
    runs: list[list[int]],
) -> list[_Source]:
    """The group's inputs as sources of :func:`.sorted_rows.sorted_rows`, in group order (ties
    keep it), to be merged in ``runs`` (:func:`.runs.plan_runs`); small ones fetched ahead in
    the order the merge reaches them (run by run, by first timestamp). Each is read in batches
    of :data:`READ_BYTES` shared by the most inputs of a run open at once (their footers'
    spans), not by all of them: 360 flush files one after another were read ~200 rows a
    batch, and a mostly sequential group with late files as many, ten times the steps."""
    firsts = {f.path: first_ts(f.meta) for f in group}
    merged = runs if len(runs) == 1 else [r for r in runs if len(r) > 1]  # (see _merge)
    reached = [i for r in merged for i in sorted(r, key=lambda i: (firsts[group[i].path], i))]
    small = [group[i] for i in reached if group[i].data is None]
    small = [f for f in small if f.size <= WHOLE_READ_BYTES]
    fetcher = _Fetcher(wh, small, progress, FETCH_AHEAD_BYTES)
    closing.callback(fetcher.close)
    share = READ_BYTES // max(1, most_open(group, runs))

    def opener(f: Input) -> Callable[[], Iterator[pa.Table]]:
        def batches() -> Iterator[pa.Table]:
            if f.data is not None or f.size > WHOLE_READ_BYTES:
                progress()  # (a small one's fetch runs it)
            yield from _batches(wh, spec, f, fetcher.get, share, closing, BATCH_ROWS)

        return batches

    return [_Source(f.path, firsts[f.path], opener(f), f.named_unsorted) for f in group]


def _row_groups(pieces: Iterator[pa.Table], spec: Table) -> Iterator[pa.Table]:
    """``pieces`` regrouped into row groups of about :data:`ROW_GROUP_BYTES` decoded bytes
    (a piece more at most) and at most ``ROW_GROUP_ROWS`` rows; one empty one for no rows (the
    output is then a valid file of no rows, as :func:`.attempt._complete` expects)."""
    pending: list[pa.Table] = []
    rows = size = 0
    written = False
    for piece in pieces:
        pending.append(piece)
        rows += piece.num_rows
        size += piece.nbytes
        while rows >= ROW_GROUP_ROWS or (size >= ROW_GROUP_BYTES and rows):
            table = pa.concat_tables(pending)
            cut = min(rows, ROW_GROUP_ROWS)
            yield table.slice(0, cut)
            written = True
            rest = table.slice(cut)
            pending, rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
            size = rest.nbytes if rows else 0
            del table, rest
    if rows:
        yield pa.concat_tables(pending)
    elif not written:
        yield spec.arrow_schema().empty_table()


def _with_footer(wh: Warehouse, f: Input) -> Input:
    """``f`` with its footer (read now if :func:`.inputs._readable` did not keep it)."""
    if f.meta is not None:
        return f
    meta = pq.read_metadata(f.path, filesystem=wh.fs)
    return Input(f.path, f.name, f.size, f.rows, meta, f.data)


def _memory_cost(group: list[Input], wh: Warehouse | None = None) -> int:
    """What merging ``group`` holds in decoded rows, for :class:`_MemoryBudget` (the inputs'
    fetched bytes are bounded apart: ``PREFETCH_BYTES`` per partition, and
    :data:`FETCH_AHEAD_BYTES` per merge), and in the runs it keeps in memory when more than
    :data:`.runs.FAN_IN` of its inputs overlap: at most :func:`.runs.runs_bytes`; on S3
    (``wh``'s output a multipart upload) plus the upload's buffer: :func:`_upload_bytes`."""
    return MERGE_BYTES + runs_bytes(group) + _upload_bytes(wh)


def _multipart(wh: Warehouse) -> bool:
    """Whether a merge's output in ``wh`` is a :class:`.multipart.MultipartUpload` (see
    :func:`_atomic_output`)."""
    return _with_boto3(wh) and wh.s3 not in storage._UNANSWERED


def _upload_bytes(wh: Warehouse | None) -> int:
    """Bytes of its output that a merge holds while uploading it: the multipart upload's parts
    on S3 (:func:`.multipart.buffer_bytes`, 48 MiB); none on a local disk (written as it comes)
    or through pyarrow's stream (its own buffers, which the budget never counted)."""
    return buffer_bytes() if wh is not None and _multipart(wh) else 0


def _merge_budget(wh: Warehouse, decoded: int | None = None) -> _MemoryBudget:
    """The budget of the merges running at once in ``wh``: ``decoded`` bytes of rows
    (:data:`MERGE_MEMORY_BYTES`), and on S3 their ``MERGES_AT_ONCE`` upload buffers beside
    (which each merge charges: four merges still run at once)."""
    rows = MERGE_MEMORY_BYTES if decoded is None else decoded
    return _MemoryBudget(rows + MERGES_AT_ONCE * _upload_bytes(wh))


def _writer_options(table: pa.Table, votes: encodings.Votes | None = None) -> dict:
    """The writer settings of a merge whose first row group is ``table``, its string and
    integer columns dictionary-encoded or not as the inputs' ``votes`` decide
    (:func:`.encodings.writer_options`)."""
    return encodings.writer_options(table, votes or {})


class _MemoryBudget:
    """Bytes that the merges running at once may hold (:func:`_memory_cost`): a merge waits
    until its cost fits beside the others'; one costlier than the whole budget waits until it
    runs alone. A merge reserves before it writes its intent (a wait is no stall of a merge
    under way) and holds one reservation at a time, so waiting cannot deadlock."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        cost = min(max(0, cost), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + cost <= self.total)
            self.used += cost
        try:
            yield
        finally:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()
