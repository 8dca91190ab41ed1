"""One compaction pass over a warehouse: its closed partitions, several merged at once.

Throughput: on S3 every request waits tens of milliseconds, so a pass works on many at once.
Services are listed ``LIST_THREADS`` at a time, their hours ``PARTITION_LIST_THREADS`` at a
time, and partitions merged ``MERGE_PARTITIONS`` at a time; each merge reads ``READ_THREADS``
inputs at a time and deletes them in one request per 1,000. Each input is fetched once: a small
one (a flush file) is read whole with its footer (on S3 in one GET, through boto3: pyarrow sends
a HEAD first), a larger one has its footer read once and its rows read once when merged. A
merge's other deletes (its intent; a rolled-back output) are one DELETE each on S3 (pyarrow's
are a HEAD, the DELETE and a PUT recreating the folder marker). The merges running at once
hold no more decoded bytes than ``MERGE_MEMORY_BYTES`` (each merge holds at most
``MERGE_BYTES``, whatever its group: :mod:`.merge`; more for the runs of a group whose inputs
overlap in time more than :data:`.runs.FAN_IN`, which it reserves too; on S3 its output's
multipart upload buffer too, beside which the budget holds four of those): a merge waits for
room before it writes its intent. ``hold`` is asked before each partition, for one with
something to merge once a merge slot is free, right before it starts: once it says stop, the
merges under way finish and no other starts.

A partition with no intent and fewer than two small files there (the usual state of a compacted
hour) is left at that: no other request. Any other is listed again, fresh, and that listing serves
the young-file check, the intents and the choice of files; only the intent check of step 1
(:mod:`.attempt`) lists again, just before a merge. A file that lands in a compacted hour after it
was listed is merged by the next pass. Hours compacted by an earlier pass are listed again all the
same: late data can land in any hour, and only a listing shows it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pyarrow.fs as pafs

from aggregator.compaction import store_clock
from aggregator.compaction.grace import DEFAULT_GRACE, effective_grace
from aggregator.compaction.intents import (
    PartitionBusy,
    _is_intent,
    _mtime,
    finish_intents,
)
from aggregator.compaction.last_pass import _record_pass, resume_lookback
from aggregator.compaction.listing import DEFAULT_LOOKBACK, _closed_partitions_listed
from aggregator.compaction.merge import MERGE_MEMORY_BYTES, _MemoryBudget, _merge_budget
from aggregator.compaction.notes import PassNotes
from aggregator.compaction.partition import (
    _may_need_work,
    _visible,
    compact_partition,
    stale_intents_before,
    sweep_state_temporaries,
)
from aggregator.compaction.uploads import abort_stale_uploads
from aggregator.ledger import Heartbeat, expire_ledger
from aggregator.storage import StorageError, list_folder, retry_multipart
from athena.schema import Table
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
#: Partitions merged at once (each reads :data:`.inputs.READ_THREADS` inputs at a time and deletes
#: them in one request per 1,000 on S3). Their memory is bounded by :data:`MERGE_MEMORY_BYTES`.
MERGE_PARTITIONS = 4


class CompactionFailed(StorageError):
    """Some partitions of a pass could not be compacted; the others were (``merged`` files)."""

    def __init__(self, failed: list[str], merged: int) -> None:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        what = "1 partition" if len(failed) == 1 else f"{len(failed)} partitions"
        super().__init__(f"{what} could not be compacted (see the log): {shown}")
        self.failed = failed
        self.merged = merged


def compact_warehouse(
    wh: Warehouse,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
    hold: Callable[[], str | None] | None = None,
    resume: bool = False,
    flush_interval: float = 0.0,
    safe: bool = True,
    beats: list[Heartbeat] | None = None,
    notes: PassNotes | None = None,
    uploads_aborted: Callable[[int], None] | None = None,
) -> int:
    """Compact every closed partition; return the number of input files merged.

    ``grace`` is raised to :func:`.grace.safe_grace` (``flush_interval``: the caller's own
    ``--flush-interval``, if it is an aggregator) unless ``safe`` is off (``compact --force``).
    ``beats``: the heartbeats, when the caller has just read them to decide whether to compact
    at all (one LIST and a GET per aggregator fewer), else they are read here.

    ``hold`` is asked before each partition: a reason to stop the pass (another aggregator now
    leads compaction, or one went down), or None to go on.

    ``resume``: look back from ``lookback`` before the last completed pass
    (:func:`.last_pass.last_pass`) rather than from ``now``, so that hours a pause outlived are
    compacted too (at most :data:`.last_pass.MAX_RESUME_LOOKBACK`). A pass over the whole warehouse
    (no ``tables``/``service``) with ``resume`` or no ``lookback`` records itself when it completes;
    one that failed in a partition or was stopped does not.

    ``notes``: filled with what the pass left alone and why (partitions with files to merge
    that are not closed yet, hours before the lookback, files another tool wrote), for
    ``compact`` to tell its user; the periodic task passes none (open hours are its normal
    state, and its passes make no request for them; a foreign file is an ERROR in its log).

    Also deletes offset-ledger hours past their retention (ledger.py): housekeeping that, like
    compaction, must run on one instance per warehouse. And what killed writes left, once
    older than the stale-intent cutoff by the store's clock: on S3 the incomplete multipart
    uploads of merge outputs (:mod:`.uploads`; how many, to ``uploads_aborted``), on a local
    disk the ``.tmp`` files in ``_compaction/``, ``_ddl/`` and the ledger's heartbeat and
    replay-mark folders (:func:`.partition.sweep_state_temporaries`; those of partitions are
    swept with them).
    """
    now = now or datetime.now(UTC)
    grace = effective_grace(wh, grace, flush_interval, enforce=safe, beats=beats)
    if resume and lookback is not None:
        lookback = resume_lookback(wh, now, lookback)
    if notes is not None:
        notes.begin(now, grace, lookback, target_bytes)
    expire_ledger(wh, now)
    clock = store_clock.measure(wh)  # file and intent ages by the store's clock, not this host's
    retry_multipart(wh)  # (boto3 answered again, e.g. that GET: merges abort cleanly again)
    stale_before = stale_intents_before(clock)
    sweep_state_temporaries(wh, stale_before)
    aborted = abort_stale_uploads(wh, stale_before)
    if aborted and uploads_aborted is not None:
        uploads_aborted(aborted)
    merged = 0
    failed: list[str] = []
    stopped = False
    walked = 0
    budget = _merge_budget(wh, MERGE_MEMORY_BYTES)
    merging = threading.Semaphore(MERGE_PARTITIONS)
    started: list[tuple[str, Future[int]]] = []
    partitions = _closed_partitions_listed(wh, now, grace, lookback, tables, service, notes)
    with ThreadPoolExecutor(MERGE_PARTITIONS, "compact") as pool, contextlib.closing(partitions):
        for spec, folder, infos in partitions:
            walked += 1
            # A compacted partition (the usual state) needs no request beyond its service's
            # LIST. Any other waits for a free merge slot first, so that ``hold`` is asked
            # right before its merge starts, as when partitions were merged one by one.
            work = _may_need_work(infos, target_bytes)
            if work:
                merging.acquire()  # released by _pass_partition, or below
            try:
                reason = hold() if hold is not None else None
                if reason is not None:  # the merges under way finish; no other starts
                    stopped = True
                    log.info("compaction pass stopped before %s: %s", folder, reason)
                    break
                if work:
                    future = pool.submit(
                        _pass_partition,
                        wh,
                        spec,
                        folder,
                        target_bytes,
                        clock.young_after(now, grace),
                        budget,
                        notes,
                        clock,
                    )
                    future.add_done_callback(lambda _: merging.release())
                    started.append((folder, future))
                    work = False  # the slot is the worker's now
            finally:
                if work:
                    merging.release()
    for folder, future in started:  # all done: the pool has shut down
        exc = future.exception()
        if exc is None:
            merged += future.result()
        else:  # one bad partition must not stop the others' compaction
            log.error(
                "compaction of %s failed: %s; no row is lost: a later pass retries", folder, exc
            )
            failed.append(folder)
    # A pass that walked every partition counts as completed even if some failed: one partition
    # that always fails (a damaged file) must not hold the record back, or every later pass
    # would look back further, up to 30 days of listings, to fail on it again. Its hours stay
    # in reach for 48 hours, as before. Only a pass where everything failed (the warehouse
    # refused: an outage) does not count.
    whole = tables is None and service is None and (resume or lookback is None)
    if whole and not stopped and (not failed or len(failed) < walked):
        _record_pass(wh, now)
    if failed:
        raise CompactionFailed(failed, merged)
    return merged


def _pass_partition(
    wh: Warehouse,
    spec: Table,
    folder: str,
    target_bytes: int,
    cutoff: datetime,
    budget: _MemoryBudget,
    notes: PassNotes | None = None,
    clock: store_clock.StoreClock | None = None,
) -> int:
    """One partition of a pass (in a worker thread): list it, then merge unless a file is
    younger than ``cutoff`` (told to ``notes``). The listing is its own, fresh (its service's
    may be minutes old by now): the young-file check and the choice of files rest on it.
    ``clock``: the store's, by which intents are judged stale (None: this host's)."""
    infos = list_folder(wh, folder)  # the one listing: young files, intents, merge
    stale_before = stale_intents_before(clock)
    if _has_young_files(infos, cutoff):
        if notes is not None:
            notes.young(folder, infos)
        _finish_early(wh, folder, infos, stale_before)
        return 0
    return compact_partition(wh, spec, folder, target_bytes, infos, budget, stale_before, notes)


def _finish_early(
    wh: Warehouse, folder: str, infos: list[pafs.FileInfo], stale_before: datetime
) -> None:
    """Finish the merges left in a partition that is not to be merged yet (a file younger than
    the grace: a late flush, or the merged output of a pass that just failed to delete its
    inputs, which is young itself). Deleting a complete output's inputs is safe whatever the
    ages (:func:`finish_intents`), and Athena counts those rows twice until it is done: were
    it left to a pass after the grace, a failed delete would double them for 30+ minutes."""
    intents = [i for i in infos if _is_intent(i)]
    if not intents:
        return
    with contextlib.suppress(PartitionBusy):  # a merge under way: the pass after it finishes
        finish_intents(wh, folder, stale_before, intents)


def _has_young_files(infos: list[pafs.FileInfo], cutoff: datetime) -> bool:
    """A file written after ``cutoff`` means a flush (late data, replay) may still be landing."""
    return any(_visible(i) and i.mtime is not None and _mtime(i) > cutoff for i in infos)
