"""A merge of many inputs that overlap in time, in two steps: at most :data:`FAN_IN` inputs
read at once.

An input being read holds its Parquet reader's decoded column chunks, about its decoded size
whatever the batch (measured: ~0.75 MiB RSS for a flush file of 2,000 Envoy rows, 69 KiB of
Parquet), and :func:`.sorted_rows.sorted_rows` reads every input that overlaps the frontier,
each in batches of its share of the merge's read bytes: a thousand flush files over the same
hour (three aggregators' across late data, many shippers' backfill) held ~750 MiB of readers
and were read ~120 rows a batch (3 minutes for 2 M rows; seconds in a few inputs). Such a
group has just enough of its inputs merged first to leave :data:`FAN_IN` for the last step
(:func:`plan_runs`), in runs of at most :data:`FAN_IN` consecutive inputs (in group order, so
ties keep it), each into Parquet in memory (about those inputs' own size, reserved in the
pass's memory budget: :func:`.merge._memory_cost`); then the runs and the other inputs are
merged (in runs again past about ``FAN_IN ** 2`` inputs). The rows of the runs are decoded
twice, but batches are a :data:`FAN_IN`-th of the read bytes, and at most :data:`FAN_IN`
readers are open at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.compaction.inputs import Input
from aggregator.compaction.sorted_rows import _Source, first_ts, sorted_rows
from aggregator.storage import write_options

#: At most this many inputs of a merge are read at once (a group whose footers say more
#: overlap is merged in runs first).
FAN_IN = 64
#: Decoded bytes of a run's row groups: what reading a run holds beside its batch.
RUN_ROW_GROUP_BYTES = 4 * 1024 * 1024


def _span(meta: pq.FileMetaData | None) -> tuple[float, float]:
    """The input's first and last ``timestamp`` (ms) from its footer's statistics; all time
    where it has none."""
    first = first_ts(meta)
    if meta is None or meta.num_row_groups == 0 or first == np.iinfo(np.int64).min:
        return float("-inf"), float("inf")
    last = float("-inf")
    with contextlib.suppress(KeyError, AttributeError, TypeError, ValueError, OverflowError):
        index = meta.schema.names.index("timestamp")
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(index).statistics
            if stats is None or not stats.has_min_max or stats.null_count:
                break  # (null times sort last)
            last = max(last, stats.max.timestamp() * 1000 + 1)
        else:
            return float(first), last
    return float(first), float("inf")


def open_at_once(group: list[Input]) -> int:
    """The most inputs of ``group`` whose spans (their footers' first and last times) overlap
    at one instant: how many a merge would read at once."""
    events = []
    for f in group:
        first, last = _span(f.meta)
        events += [(first, 1), (last, -1)]
    events.sort(key=lambda e: (e[0], -e[1]))  # a span starting where another ends overlaps it
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def plan_runs(group: list[Input]) -> list[list[int]]:
    """``group``'s indices in runs of consecutive inputs (one run: merged at once). Of several,
    a run of one input is not merged first, only read in the next step; the others are, and
    hold as few inputs as leave at most :data:`FAN_IN` for the next step (65 inputs: the first
    2 merged first, not all 65 decoded twice), or :data:`FAN_IN` each where even that cannot
    (over about ``FAN_IN ** 2`` inputs: the next step plans runs again)."""
    fan_in = max(2, FAN_IN)  # (each round of runs leaves fewer inputs)
    n = len(group)
    if open_at_once(group) <= fan_in or n <= fan_in:
        return [list(range(n))]
    count = -(-(n - fan_in) // (fan_in - 1))  # runs that each leave fan_in - 1 fewer inputs
    if count > fan_in:
        return [list(range(i, min(i + fan_in, n))) for i in range(0, n, fan_in)]
    merged = n - fan_in + count  # inputs in those runs: count + the rest = fan_in
    runs, start = [], 0
    for k in range(count):
        size = merged // count + (k < merged % count)
        runs.append(list(range(start, start + size)))
        start += size
    return runs + [[i] for i in range(start, n)]


def merge_run(name: str, sources: list[_Source], piece_bytes: int) -> Input | None:
    """The rows of ``sources`` in ``timestamp`` order as Parquet in memory: an input of the
    merge's second step, named ``name`` (None for no rows)."""
    sink = pa.BufferOutputStream()
    writer: pq.ParquetWriter | None = None
    for table in _regrouped(sorted_rows(sources, piece_bytes)):
        if writer is None:
            options = write_options(table)
            options.pop("row_group_size", None)
            writer = pq.ParquetWriter(sink, table.schema, **options)
        writer.write_table(table, row_group_size=max(1, table.num_rows))
    if writer is None:
        return None
    writer.close()
    data = sink.getvalue()
    meta = pq.read_metadata(pa.BufferReader(data))
    return Input(name, name, data.size, meta.num_rows, meta, data)


def _regrouped(pieces: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``pieces`` as tables of about :data:`RUN_ROW_GROUP_BYTES` decoded bytes."""
    pending: list[pa.Table] = []
    size = 0
    for piece in pieces:
        pending.append(piece)
        size += piece.nbytes
        if size >= RUN_ROW_GROUP_BYTES:
            yield pa.concat_tables(pending)
            pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending)
