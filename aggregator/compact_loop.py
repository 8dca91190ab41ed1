"""An aggregator's background compaction: a pass every ``--compact-interval`` when this node is
the one to compact (:func:`aggregator.ledger.compaction_blocker`), else the hourly ledger expiry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aggregator.config import Settings
from aggregator.ledger import (
    CompactionHold,
    Heartbeat,
    Ledger,
    compaction_blocker,
    read_heartbeats,
    unreadable_documents,
)
from aggregator.metrics import Metrics
from aggregator.stop_budget import WorkerCalls
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator")

#: How often a compaction pass under way reads the heartbeats again (see _hold_checker).
HOLD_RECHECK_SECONDS = 30.0
#: How often an aggregator without ``--compact-interval`` reads the heartbeats for
#: ``logq_aggregator_peers_down`` (one LIST and a GET per aggregator): with compaction left to
#: a CronJob, these gauges are the only place a peer that is down shows before the Job fails.
PEER_CHECK_SECONDS = 300.0


class PeriodicCompaction:
    """The compaction task of one running aggregator (:meth:`forever`), on its warehouse, with
    its settings, metrics and ledger."""

    def __init__(
        self,
        warehouse: Warehouse,
        settings: Settings,
        metrics: Metrics,
        ledger: Ledger,
        calls: WorkerCalls | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.warehouse = warehouse
        self.settings = settings
        self.metrics = metrics
        self.ledger = ledger
        self.calls = calls or WorkerCalls()
        """Where its blocking calls run (the service's: a stop knows what is under way)."""
        self.stopping = stopping
        """Whether the aggregator stops: a pass under way then ends at its next partition."""

    async def forever(self) -> None:
        """Every ``--compact-interval``: a compaction pass, resumed from the last completed one
        (hours a pause outlived are compacted too). Off: only the hourly ledger expiry."""
        interval = self.settings.compact_interval
        if interval <= 0:
            await self._ledger_expiry_loop()
            return
        from aggregator.compaction.passes import CompactionFailed, compact_warehouse

        while True:
            await asyncio.sleep(interval)
            try:
                beats = await self.calls.run(
                    "reading the heartbeats", read_heartbeats, self.warehouse
                )
                self._count_down(beats)
                hold = self._compaction_hold(beats)
                if hold is not None:
                    level = logging.WARNING if hold.peer_down else logging.INFO
                    log.log(level, "compaction skipped: %s", hold.reason)
                    # This node's last pass says nothing of the warehouse any more (another
                    # node compacts, or none may): a failure it saw must not alert for ever.
                    self.metrics.compaction_failed_partitions.set(0)
                    continue
                merged = await self.calls.run(
                    "a compaction pass",
                    compact_warehouse,
                    self.warehouse,
                    self.settings.target_file_bytes,
                    hold=self._hold_checker(),
                    resume=True,
                    flush_interval=self.settings.flush_interval,
                    beats=beats,
                    uploads_aborted=self.metrics.compaction_uploads_aborted.inc,
                )
                self.metrics.compacted_files.inc(merged)
                self.metrics.compaction_failed_partitions.set(0)
            except CompactionFailed as exc:
                self.metrics.compacted_files.inc(exc.merged)
                self.metrics.compaction_failed_partitions.set(len(exc.failed))
                self.metrics.compaction_pass_failures.inc()
                log.warning("%s; it will run again in %.0fs", exc, interval)
            except Exception as exc:
                self.metrics.compaction_pass_failures.inc()
                log.warning("compaction failed (%s); it will run again in %.0fs", exc, interval)

    async def _ledger_expiry_loop(self) -> None:
        """Without compaction nothing else deletes old ledger hours (``_ledger/`` would grow
        by an object per segment per node for ever): expire them hourly, under the rule that
        guards compaction (:func:`aggregator.ledger.expire_unless_held`). The peers that are
        down are counted every :data:`PEER_CHECK_SECONDS` meanwhile."""
        from aggregator.ledger import EXPIRY_INTERVAL_S, expire_unless_held

        expiry_due = time.monotonic() + EXPIRY_INTERVAL_S
        while True:
            await asyncio.sleep(max(0.0, min(PEER_CHECK_SECONDS, expiry_due - time.monotonic())))
            await self._check_peers()
            if time.monotonic() < expiry_due:
                continue
            expiry_due = time.monotonic() + EXPIRY_INTERVAL_S
            try:
                await self.calls.run(
                    "the ledger expiry", expire_unless_held, self.warehouse, self.ledger.node_id
                )
            except Exception as exc:
                log.warning(
                    "ledger expiry failed (%s); it will run again in %.0fs", exc, EXPIRY_INTERVAL_S
                )

    async def _check_peers(self) -> None:
        """``logq_aggregator_peers_down`` from the heartbeats now; a failed read leaves it as
        it was (the next check tries again)."""
        try:
            beats = await self.calls.run("reading the heartbeats", read_heartbeats, self.warehouse)
        except Exception as exc:
            log.warning("cannot read the aggregators' heartbeats (%s); trying again later", exc)
            return
        self._count_down(beats)

    def _count_down(self, beats: list[Heartbeat]) -> None:
        """Set ``logq_aggregator_peers_down`` (the other nodes whose heartbeat is stale) and
        ``logq_aggregator_ledger_unreadable_objects``."""
        now = time.time()
        down = [b for b in beats if b.node != self.ledger.node_id and b.stale(now)]
        self.metrics.peers_down.set(len(down))
        self.metrics.ledger_unreadable.set(len(unreadable_documents(self.warehouse)))

    def _compaction_hold(self, beats: list[Heartbeat] | None = None) -> CompactionHold | None:
        """What stops this node compacting now, from ``beats`` (read from the warehouse if
        not given)."""
        if beats is None:
            beats = read_heartbeats(self.warehouse)
        return compaction_blocker(beats, self.ledger.node_id, time.time())

    def _hold_checker(self) -> Callable[[], str | None]:
        """For a pass under way: the hold, read again at most every HOLD_RECHECK_SECONDS (a peer
        with a smaller id that came up, or one that went down, stops the pass; so do
        heartbeats that cannot be read)."""
        checked = time.monotonic()

        def hold() -> str | None:
            nonlocal checked
            if self.stopping():
                return "the aggregator is stopping"
            if time.monotonic() - checked < HOLD_RECHECK_SECONDS:
                return None
            checked = time.monotonic()
            try:
                found = self._compaction_hold()
            except OSError as exc:  # not knowing who is down is no leave to go on: stop
                return f"the heartbeats could not be read ({exc}); the next pass retries"
            return found.reason if found is not None else None

        return hold
