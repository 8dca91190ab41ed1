"""A merge of many inputs that overlap in time, in two steps: at most :data:`FAN_IN` inputs
read at once.

An input being read holds its Parquet reader's decoded column chunks, about its decoded size
whatever the batch (measured: ~0.75 MiB RSS for a flush file of 2,000 Envoy rows, 69 KiB of
Parquet), and :func:`.sorted_rows.sorted_rows` reads every input that overlaps the frontier,
each in batches of its share of the merge's read bytes: a thousand flush files over the same
hour (three aggregators' across late data, many shippers' backfill) held ~750 MiB of readers
and were read ~120 rows a batch (3 minutes for 2 M rows; seconds in a few inputs). Where more
than :data:`FAN_IN` inputs overlap at one instant (their footers' first and last times), just
enough of those are merged first to leave :data:`FAN_IN` open at once in the last step
(:func:`plan_runs`): inputs that overlap only a few others (a mostly sequential hour's flush
files beside its late ones) are read once. Each run (at most :data:`FAN_IN` inputs) is merged
into Parquet in memory (about those inputs' own size, reserved in the pass's memory budget:
:func:`.merge._memory_cost`, :func:`runs_bytes`) and takes its first input's place in the
group; it skips no input that shares a time with a later member, so ties keep group order.
Then the runs and the other inputs are merged (in runs again past about ``FAN_IN ** 2``
inputs that overlap). The rows of the runs are decoded twice, but batches are a
:data:`FAN_IN`-th of the read bytes, and at most :data:`FAN_IN` readers are open at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.compaction.inputs import Input
from aggregator.compaction.sorted_rows import _Source, epoch_ms, first_ts, sorted_rows
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
            last = max(last, epoch_ms(stats.max) + 1)
        else:
            return float(first), last
    return float(first), float("inf")


Span = tuple[float, float]


def _deepest(spans: list[Span]) -> tuple[int, float]:
    """The most ``spans`` that overlap at one instant, and the first such instant."""
    events = [(first, 1) for first, _ in spans] + [(last, -1) for _, last in spans]
    events.sort(key=lambda e: (e[0], -e[1]))  # a span starting where another ends overlaps it
    most = now = 0
    at = float("-inf")
    for time, step in events:
        now += step
        if now > most:
            most, at = now, time
    return most, at


def open_at_once(group: list[Input]) -> int:
    """The most inputs of ``group`` whose spans (their footers' first and last times) overlap
    at one instant: how many a merge would read at once."""
    return _deepest([_span(f.meta) for f in group])[0]


def most_open(group: list[Input], runs: list[list[int]]) -> int:
    """The most inputs of any of ``runs`` (indices into ``group``) open at one instant:
    :func:`open_at_once` of each run, every footer's span worked out once (a merge of 720
    flush files in 12 runs walked each footer 12 times)."""
    spans = [_span(f.meta) for f in group]
    return max((_deepest([spans[i] for i in run])[0] for run in runs), default=0)


def plan_runs(group: list[Input]) -> list[list[int]]:
    """``group``'s indices in runs (one run: merged at once), by first index: the order of the
    next step's inputs. Of several, a run of one input is not merged first, only read in the
    next step; the others are, into one input each (:func:`merge_run`).

    Only where more than :data:`FAN_IN` inputs overlap at one instant (their footers' spans)
    are inputs merged first, and only some of those that overlap there
    (:func:`_overlap_runs`): 360 flush files that follow each other and 100 late ones over
    the hour merge 42 of those first (``bench/compact.py --late 100``), not 403 inputs.
    Where that cannot bring every instant down to :data:`FAN_IN` in one step (ties would
    change order, or over about ``FAN_IN ** 2`` inputs overlap), runs of consecutive inputs
    by count (:func:`_count_runs`)."""
    return plan_spans([_span(f.meta) for f in group])


def plan_spans(spans: list[Span]) -> list[list[int]]:
    """:func:`plan_runs` of inputs of these spans (in group order)."""
    fan_in = max(2, FAN_IN)  # (each round of runs leaves fewer inputs)
    n = len(spans)
    if n <= fan_in or _deepest(spans)[0] <= fan_in:
        return [list(range(n))]
    runs = _overlap_runs(spans, fan_in)
    if runs is None:
        runs = _count_runs(n, fan_in)
    inside = {i for r in runs for i in r}
    return sorted([*runs, *([i] for i in range(n) if i not in inside)], key=lambda r: r[0])


def _count_runs(n: int, fan_in: int) -> list[list[int]]:
    """Runs of consecutive inputs holding as few as leave at most ``fan_in`` for the next step
    (65 inputs: the first 2 merged first, not all 65 decoded twice), or ``fan_in`` each where
    even that cannot (over about ``fan_in ** 2`` inputs: the next step plans runs again)."""
    count = -(-(n - fan_in) // (fan_in - 1))  # runs that each leave fan_in - 1 fewer inputs
    if count > fan_in:
        return [list(range(i, min(i + fan_in, n))) for i in range(0, n, fan_in)]
    merged = n - fan_in + count  # inputs in those runs: count + the rest = fan_in
    runs, start = [], 0
    for k in range(count):
        size = merged // count + (k < merged % count)
        runs.append(list(range(start, start + size)))
        start += size
    return runs


def _overlap_runs(spans: list[Span], fan_in: int) -> list[list[int]] | None:
    """Runs (of at most ``fan_in`` inputs) that bring the most inputs open at one instant down
    to ``fan_in``, of inputs open at the deepest instants only; None if it takes more.

    At the deepest instant left (runs counted as one input over their members' spans), the
    inputs open there not in a run yet are taken in chains in group order (:func:`_chains`),
    and runs of the longest chains merge just enough of them (the widest first) to leave
    ``fan_in`` there; again until no instant has more. The members of a run all span that
    instant, so the run spans no instant that none of them did: no other instant gets
    deeper."""
    n = len(spans)
    taken = [False] * n
    runs: list[list[int]] = []
    while True:
        hulls = [(min(spans[i][0] for i in r), max(spans[i][1] for i in r)) for r in runs]
        depth, at = _deepest(hulls + [spans[i] for i in range(n) if not taken[i]])
        if depth <= fan_in:
            return runs
        open_here = [i for i in range(n) if not taken[i] and spans[i][0] <= at <= spans[i][1]]
        new = _runs_at(spans, open_here, depth - fan_in, fan_in)
        if not new:
            return None
        for run in new:
            runs.append(run)
            for i in run:
                taken[i] = True


def _overlaps(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _chains(spans: list[Span], members: list[int]) -> list[list[int]]:
    """``members`` (ascending) in chains that may be merged into one input each, in part or
    whole: the run takes the place of its first member in the group, ahead of the inputs it
    skips, so none of those may share a time (overlap) with a later member (their tied rows
    would change order)."""
    chains: list[list[int]] = []
    skipped: list[int] = []  # (those of the last chain)
    for m in members:
        if chains:
            between = list(range(chains[-1][-1] + 1, m))
            if not any(_overlaps(spans[j], spans[m]) for j in skipped + between):
                chains[-1].append(m)
                skipped += between
                continue
        chains.append([m])
        skipped = []
    return chains


def _runs_at(spans: list[Span], members: list[int], need: int, fan_in: int) -> list[list[int]]:
    """Runs of ``members`` (all open at one instant) that leave ``need`` fewer inputs there,
    as few inputs in them as can be: from the longest chains, at most ``fan_in`` each,
    preferring the widest inputs (a narrow one adds little elsewhere); [] if they cannot
    (none at all where every input open there is in a run already: runs of a deeper instant
    that all reach this one)."""
    if len(members) < 2:
        return []
    widest = max(spans[i][1] - spans[i][0] for i in members)
    narrow = {i for i in members if spans[i][1] - spans[i][0] < widest / 2}
    pool = [c for c in _chains(spans, members) if len(c) > 1]
    runs: list[list[int]] = []
    while need > 0 and pool:
        pool.sort(key=lambda c: (-len(c), c[0]))
        chain = pool.pop(0)
        size = min(fan_in, need + 1, len(chain))
        # the window of ``size`` with the fewest narrow inputs (the first of those)
        start = min(
            range(len(chain) - size + 1),
            key=lambda k: (sum(i in narrow for i in chain[k : k + size]), k),
        )
        runs.append(chain[start : start + size])
        need -= size - 1
        pool += [c for c in (chain[:start], chain[start + size :]) if len(c) > 1]
    return runs if need <= 0 else []


def runs_bytes(group: list[Input]) -> int:
    """The most bytes of runs that merging ``group`` holds in memory at once (0 for no runs),
    each run taken as its inputs' size: the runs of each round, and past about
    ``FAN_IN ** 2`` inputs those of the next round, each built while its members (runs of
    the round before, dropped once it is built: :func:`.merge._merged_runs`) are held."""
    spans = [_span(f.meta) for f in group]
    sizes = [f.size for f in group]
    in_memory = [False] * len(group)
    most = 0
    runs = plan_spans(spans)
    while len(runs) > 1:
        held = sum(size for size, kept in zip(sizes, in_memory, strict=True) if kept)
        next_spans, next_sizes, next_in_memory = [], [], []
        for run in runs:
            size = sum(sizes[i] for i in run)
            if len(run) > 1:
                most = max(most, held + size)  # its members, and itself as it is built
                held += size - sum(sizes[i] for i in run if in_memory[i])
            next_spans.append((min(spans[i][0] for i in run), max(spans[i][1] for i in run)))
            next_sizes.append(size)
            next_in_memory.append(len(run) > 1 or in_memory[run[0]])
        spans, sizes, in_memory = next_spans, next_sizes, next_in_memory
        runs = plan_spans(spans)
    return most


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
    named = any(s.unsorted or s.named_unsorted for s in sources)  # (its INFO is not repeated)
    return Input(name, name, data.size, meta.num_rows, meta, data, named_unsorted=named)


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
