"""A merge's rows in ``timestamp`` order, in bounded memory: a k-way merge of its inputs.

Every input is sorted by ``timestamp`` (a flush file, :func:`aggregator.writer.write_objects`;
an earlier merge's output). Each is read a batch at a time, and only its current batch is held
(its *head*). Each input has a *bound*: none of its rows not read yet is older (the first
timestamp in its footer before it is opened, then the last one read; none once it is read to
the end). The smallest bound is the *frontier*: every row older than it has been read, so the
heads' rows before it may be emitted (stable-sorted together, heads in group order; they go out
every few MiB read, :func:`sorted_rows`), and each step the input whose bound is the frontier
reads its next batch. All rows of one time are read before any of them goes out, so the output
is exactly what sorting the concatenated inputs (in group order) by ``timestamp`` gives, ties
included, with no input read whole: what :func:`.merge._merge` once did in memory, where a
group of 124 MiB of Parquet decoded to 1.4 GiB of Arrow and its sort copied all of it again.

An input that is not sorted after all (a file from elsewhere) loses no row and doubles none:
each batch of it is sorted when read (and into its head), and rows older than the frontier are
emitted with the next piece, so the output is sorted in runs there (an INFO names the file).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

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
    """One input of the merge: its head (rows read, not emitted yet, sorted) and its bound."""

    def __init__(
        self,
        name: str,
        first_ts: int,
        batches: Callable[[], Iterator[pa.Table]],
        named_unsorted: bool = False,
    ):
        self.name = name
        #: An unsorted input already named by an INFO (a run of one): not named again.
        self.named_unsorted = named_unsorted
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

    @property
    def opened(self) -> bool:
        return self._batches is not None

    @property
    def oldest(self) -> int:
        """The head's oldest row (ms; the head must hold rows)."""
        return int(self._ts[0])

    def read_next(self) -> int:
        """Append the input's next batch to the head (the input opened on first use); return
        its decoded bytes."""
        if self._batches is None:
            self._batches = self._open()
        batch = next(self._batches, None)
        if batch is None:
            self.bound = _END
            return 0
        ts = _times(batch)
        if len(ts) == 0:
            return 0
        if not bool((ts[1:] >= ts[:-1]).all()):
            batch = batch.sort_by("timestamp")  # stable, as the sort of the whole group was
            ts = _times(batch)
            self.unsorted = True
        if ts[0] < self.bound:  # older than promised: rows before the frontier went out
            self.unsorted = True
        if self.head is None:
            self.head, self._ts = batch, ts
        elif ts[0] >= self._ts[-1]:
            self.head = pa.concat_tables([self.head, batch])
            self._ts = np.concatenate([self._ts, ts])
        else:  # (an unsorted input) the head stays sorted, so take_before takes a prefix
            both = np.concatenate([self._ts, ts])
            order = np.argsort(both, kind="stable")
            self.head, self._ts = pa.concat_tables([self.head, batch]).take(order), both[order]
        self.bound = int(ts[-1])
        return batch.nbytes

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


#: Decoded bytes read between two pieces by default (at most: a piece also goes out before an
#: input is opened), so that a piece is large however many inputs overlap (:func:`sorted_rows`;
#: a merge passes its own, :data:`.merge.PIECES_PER_READ`).
PIECE_BYTES = 4 * 1024 * 1024


class _Heads:
    """The sources holding a head, by their head's oldest row: a piece takes from those whose
    oldest row is before the frontier, and touches no other."""

    def __init__(self, sources: list[_Source]) -> None:
        self._sources = sources
        self._heap: list[tuple[int, int]] = []

    def add(self, i: int) -> None:
        """Source ``i``'s head has rows and may have a new oldest one."""
        heapq.heappush(self._heap, (self._sources[i].oldest, i))

    def take_before(self, frontier: float) -> pa.Table | None:
        """The heads' rows older than ``frontier``, removed from them, in ``timestamp`` order
        (ties in group order), or None."""
        taken: dict[int, tuple[pa.Table, np.ndarray]] = {}
        while self._heap and self._heap[0][0] < frontier:
            oldest, i = heapq.heappop(self._heap)
            s = self._sources[i]
            if i in taken or s.head is None or s.oldest != oldest:
                continue  # an entry left behind by a later one of the same source
            ts = s._ts
            piece = s.take_before(frontier)
            if piece is not None:
                taken[i] = (piece, ts[: piece.num_rows])
            if s.head is not None:
                self.add(i)
        if not taken:
            return None
        if len(taken) == 1:
            return next(iter(taken.values()))[0]
        order = sorted(taken)  # group order: a stable sort keeps it for ties
        table = pa.concat_tables([taken[i][0] for i in order])
        ts = np.concatenate([taken[i][1] for i in order])
        return table.take(np.argsort(ts, kind="stable"))


def sorted_rows(sources: list[_Source], piece_bytes: int = PIECE_BYTES) -> Iterator[pa.Table]:
    """The rows of ``sources`` (in group order) as pieces in ``timestamp`` order (module
    docstring). Holds a head per input that the frontier has reached, nothing else.

    The bounds are kept in a heap, so a step reads the inputs whose bound is the frontier and
    touches no other; the rows before the frontier go out as one piece once ``piece_bytes``
    were read since the last one, before an input is opened (inputs that follow each other in
    time are held one at a time) and at the end. With a thousand inputs over the same hour
    the frontier moves by a fraction of a second a step: a piece per step was a few rows from
    as many inputs, concatenated and sorted, and every live input was looked at each step.
    (So many inputs are merged in runs first: :mod:`.runs`.)"""
    bounds = [(s.bound, i) for i, s in enumerate(sources) if s.bound != _END]
    heapq.heapify(bounds)
    heads = _Heads(sources)
    for i, s in enumerate(sources):
        if s.head is not None:
            heads.add(i)
    read = 0
    while bounds:
        frontier, i = bounds[0]
        s = sources[i]
        if read >= piece_bytes or (not s.opened and read):
            if (piece := heads.take_before(frontier)) is not None:
                yield piece
            del piece
            read = 0
        heapq.heappop(bounds)
        oldest = s.oldest if s.head is not None else None
        read += s.read_next()
        if s.head is not None and s.oldest != oldest:  # (a new head, or an unsorted batch)
            heads.add(i)
        if s.bound != _END:
            heapq.heappush(bounds, (s.bound, i))
    if (piece := heads.take_before(_END)) is not None:
        yield piece
    for s in sources:
        if s.unsorted and not s.named_unsorted:
            log.info("%s is not sorted by time: the merged file is sorted in runs there", s.name)


def epoch_ms(value: datetime) -> float:
    """``value`` of a footer's ``timestamp`` statistics as ms since the epoch. A column without
    a time zone gives naive datetimes, which ``datetime.timestamp`` would read as this host's
    local time: the merge reads those times as UTC (Arrow's cast), so must the bounds, or on a
    host west of UTC a file's bound came out hours late and the merged file out of order."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp() * 1000


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
            return int(epoch_ms(stats.min)) - 1
    return lowest
