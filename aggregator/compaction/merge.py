"""Writing a merge's output, in bounded memory.

Memory stays bounded: a group small enough (uncompressed) is loaded, sorted by ``timestamp``
and written; a larger one is streamed file by file, in order of each file's first timestamp, as
sorted runs.
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

from aggregator.compaction.inputs import Input, _read_inputs
from aggregator.durable import atomic_file
from aggregator.storage import ROW_GROUP_ROWS, write_options
from athena.schema import Table
from athena.warehouse import Warehouse

#: Groups up to this many uncompressed bytes are sorted in memory; larger ones are streamed.
SORT_IN_MEMORY_BYTES = 256 * 1024 * 1024
#: Decoded bytes (Parquet's uncompressed size) that the merges running at once may hold: no
#: more than the one largest group sorted in memory needs alone, so running several merges at
#: once never needs more memory than before (a group this large or larger runs alone).
MERGE_MEMORY_BYTES = SORT_IN_MEMORY_BYTES
#: What a streamed group (too large to sort in memory) is counted for: its pieces and read-ahead.
STREAM_MEMORY_BYTES = SORT_IN_MEMORY_BYTES // 2
#: A streamed merge reads ahead at most this many (compressed) bytes of input.
STREAM_READAHEAD_BYTES = 32 * 1024 * 1024


@contextlib.contextmanager
def _atomic_output(wh: Warehouse, path: str) -> Iterator[IO[bytes] | pa.NativeFile]:
    """A stream whose content appears at ``path`` whole, or not at all."""
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
    """Write ``group``'s rows to ``output``; return how many. ``progress`` runs before each
    input is read (it keeps the intent fresh, and raises to stop)."""
    group = [_with_footer(wh, f) for f in group]
    if _raw_bytes(group) <= SORT_IN_MEMORY_BYTES:
        tables = list(_read_inputs(wh, spec, group, progress, window=None))
        pieces: Iterator[pa.Table] = iter([pa.concat_tables(tables).sort_by("timestamp")])
        del tables
    else:
        pieces = _in_time_order(wh, spec, group, progress)
    rows = 0
    with _atomic_output(wh, output) as out:
        writer: pq.ParquetWriter | None = None
        try:
            for piece in pieces:
                if writer is None:  # the encodings are chosen from the first piece's values
                    writer = pq.ParquetWriter(out, piece.schema, **_writer_options(piece))
                writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
                rows += piece.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _with_footer(wh: Warehouse, f: Input) -> Input:
    """``f`` with its footer (read now if :func:`.inputs._readable` did not keep it)."""
    if f.meta is not None:
        return f
    meta = pq.read_metadata(f.path, filesystem=wh.fs)
    return Input(f.path, f.name, f.size, f.rows, meta, f.data)


def _raw_bytes(group: list[Input]) -> int:
    """The group's uncompressed size, from the footers (what sorting it in memory costs)."""
    total = 0
    for f in group:
        meta = f.meta
        if meta is None:  # not read yet: count it as the largest that could be
            return SORT_IN_MEMORY_BYTES + 1
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def _memory_cost(group: list[Input]) -> int:
    """What merging ``group`` holds in memory, for :class:`_MemoryBudget`."""
    raw = _raw_bytes(group)
    kept = sum(f.size for f in group if f.data is not None)
    return kept + (raw if raw <= SORT_IN_MEMORY_BYTES else STREAM_MEMORY_BYTES)


def _in_time_order(
    wh: Warehouse, spec: Table, group: list[Input], progress: Callable[[], None]
) -> Iterator[pa.Table]:
    """The group's files one after another, by their first timestamp, in row-group-sized
    pieces (for groups too large to sort in memory)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    ordered = sorted(group, key=_first_ts)
    for table in _read_inputs(wh, spec, ordered, progress, window=STREAM_READAHEAD_BYTES):
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows >= ROW_GROUP_ROWS:
            yield pa.concat_tables(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _writer_options(table: pa.Table) -> dict:
    opts = write_options(table)
    opts.pop("row_group_size", None)
    return opts


def _first_ts(f: Input) -> int:
    meta = f.meta
    if meta is None or meta.num_row_groups == 0:
        return 0
    stats = meta.row_group(0).column(0).statistics
    return int(stats.min.timestamp() * 1000) if stats is not None and stats.has_min_max else 0


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
