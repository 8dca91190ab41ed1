"""A merge's rows in ``timestamp`` order, in bounded memory: a k-way merge of its inputs.

Every input is sorted by ``timestamp`` (a flush file, :func:`aggregator.writer.write_objects`;
an earlier merge's output). Each is read a batch at a time, and only its current batch is held
(its *head*). Each input has a *bound*: none of its rows not read yet is older (the first
timestamp in its footer before it is opened, then the last one read; none once it is read to
the end). The smallest bound is the *frontier*: every row older than it has been read, so the
heads' rows before it are emitted (stable-sorted together, heads in group order), then each
input whose bound is the frontier reads its next batch. The bounds only grow, so the output is
exactly what sorting the concatenated inputs (in group order) by ``timestamp`` gives, ties
included, with no input read whole: what :func:`.merge._merge` once did in memory, where a
group of 124 MiB of Parquet decoded to 1.4 GiB of Arrow and its sort copied all of it again.

An input that is not sorted after all (a file from elsewhere) loses no row and doubles none:
each batch of it is sorted when read, and rows older than the frontier are emitted with the
next step, so the output is sorted in runs there (an INFO names the file).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger("logq.aggregator.compaction")

#: Sorts after every timestamp (a null one counts as this late, as ``sort_by`` puts it last).
_LAST = np.iinfo(np.int64).max
#: The bound of an input read to the end: after every row, null ones included.
_END = float("inf")


def _times(table: pa.Table) -> np.ndarray:
    """The ``timestamp`` column as int64 milliseconds (nulls as :data:`_LAST`)."""
    ms = pc.cast(table["timestamp"], pa.int64()).combine_chunks()
    return pc.fill_null(ms, _LAST).to_numpy(zero_copy_only=False)


class _Source:
    """One input of the merge: its head (rows read, not emitted yet) and its bound."""

    def __init__(self, name: str, first_ts: int, batches: Callable[[], Iterator[pa.Table]]):
        self.name = name
        #: No row of this input that is not read yet is older than this (ms, or :data:`_END`).
        self.bound: float = first_ts
        self._open = batches
        self._batches: Iterator[pa.Table] | None = None
        self.head: pa.Table | None = None
        self._ts = np.empty(0, dtype=np.int64)
        self.unsorted = False

    @property
    def live(self) -> bool:
        return self.bound != _END or self.head is not None

    def read_next(self) -> None:
        """Append the input's next batch to the head (the input opened on first use)."""
        if self._batches is None:
            self._batches = self._open()
        batch = next(self._batches, None)
        if batch is None:
            self.bound = _END
            return
        ts = _times(batch)
        if len(ts) == 0:
            return
        if not bool((ts[1:] >= ts[:-1]).all()):
            batch = batch.sort_by("timestamp")  # stable, as the sort of the whole group was
            ts = _times(batch)
            self.unsorted = True
        if ts[0] < self.bound:  # older than promised: rows before the frontier went out
            self.unsorted = True
        self.head = batch if self.head is None else pa.concat_tables([self.head, batch])
        self._ts = ts if len(self._ts) == 0 else np.concatenate([self._ts, ts])
        self.bound = int(ts[-1])

    def take_before(self, frontier: float) -> pa.Table | None:
        """Remove and return the head's rows older than ``frontier`` (all at :data:`_END`)."""
        if self.head is None or self._ts[0] >= frontier:
            return None
        n = len(self._ts) if frontier == _END else int(np.searchsorted(self._ts, frontier))
        if n == 0:
            return None
        taken = self.head.slice(0, n)
        if n == len(self._ts):
            self.head, self._ts = None, np.empty(0, dtype=np.int64)
        else:
            self.head, self._ts = self.head.slice(n), self._ts[n:]
        return taken


def sorted_rows(sources: list[_Source]) -> Iterator[pa.Table]:
    """The rows of ``sources`` (in group order) as pieces in ``timestamp`` order (module
    docstring). Holds a head per input that the frontier has reached, nothing else."""
    live = [s for s in sources if s.live]
    while live:
        frontier = min(s.bound for s in live)
        pieces = [p for s in live if (p := s.take_before(frontier)) is not None]
        if len(pieces) == 1:
            yield pieces[0]
        elif pieces:
            yield pa.concat_tables(pieces).sort_by("timestamp")
        del pieces
        for s in live:
            if s.bound == frontier and frontier != _END:
                s.read_next()
        live = [s for s in live if s.live]
    for s in sources:
        if s.unsorted:
            log.info("%s is not sorted by time: the merged file is sorted in runs there", s.name)


def first_ts(meta: pq.FileMetaData | None) -> int:
    """A lower bound of the file's first ``timestamp`` (ms) from its footer's statistics, or
    the smallest int64 where it has none (such an input is read at once)."""
    lowest = int(np.iinfo(np.int64).min)
    if meta is None or meta.num_row_groups == 0:
        return lowest
    with contextlib.suppress(KeyError, AttributeError, TypeError, ValueError, OverflowError):
        index = meta.schema.names.index("timestamp")
        stats = meta.row_group(0).column(index).statistics
        if stats is not None and stats.has_min_max:
            # The float seconds may round either way: a millisecond less is still a bound.
            return int(stats.min.timestamp() * 1000) - 1
    return lowest
