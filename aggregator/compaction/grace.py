"""The compaction grace: how long after its end an hour counts as closed.

The grace is never shorter than :func:`safe_grace`: the time after which a crashed aggregator's
heartbeat counts as stale (10 of its flush intervals plus a minute, ledger.py) plus a margin.
Until then nobody knows it crashed, compaction is not held, and a merge could take the objects
of the segment it was flushing when it died; its replay would write them again (duplicate
rows). With the grace above that point, its last objects are too young to merge until its
heartbeat is stale, and from then on compaction waits for its restart or drain. The floor
follows the largest ``flush_interval`` in the heartbeats (``--flush-interval 300``: 56 minutes).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from aggregator.ledger import Heartbeat, read_heartbeats, stale_after
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

DEFAULT_GRACE = timedelta(minutes=30)
#: Added to the staleness point of the slowest-flushing node (see :func:`safe_grace`): file
#: mtimes come from the store's clock, heartbeat times from each node's.
SAFE_GRACE_MARGIN = timedelta(minutes=5)


def safe_grace(beats: list[Heartbeat], flush_interval: float = 0.0) -> timedelta:
    """The shortest grace that cannot merge a crashed node's last objects before its heartbeat
    counts as stale (see the module docstring): the staleness point of the node that flushes
    least often (``flush_interval``: this node's own, its heartbeat may not be written yet),
    plus :data:`SAFE_GRACE_MARGIN`. Zero when no node has a heartbeat and none is given."""
    after = [b.stale_after for b in beats]
    if flush_interval > 0:
        after.append(stale_after(flush_interval))
    if not after:
        return timedelta(0)
    return timedelta(seconds=max(after)) + SAFE_GRACE_MARGIN


def effective_grace(
    wh: Warehouse,
    grace: timedelta,
    flush_interval: float = 0.0,
    *,
    enforce: bool = True,
    beats: list[Heartbeat] | None = None,
) -> timedelta:
    """``grace``, raised to :func:`safe_grace` of the heartbeats in ``wh`` (logged when it
    is), unless ``enforce`` is off (``compact --force``: logged as a warning). ``beats``: the
    heartbeats if the caller has just read them (for its hold check), else they are read."""
    floor = safe_grace(read_heartbeats(wh) if beats is None else beats, flush_interval)
    if grace >= floor:
        return grace
    if not enforce:
        log.warning(
            "compaction grace of %s minutes is below the safe %s (--force): objects of a "
            "segment that a crashed aggregator replays may be merged, and its rows stored twice",
            _minutes(grace),
            _minutes(floor),
        )
        return grace
    log.info(
        "compaction grace raised from %s to %s minutes: a crashed aggregator counts as down "
        "only 10 of its flush intervals plus a minute after its last heartbeat (%s minutes for "
        "the slowest-flushing one here, plus %s of margin); until then the objects of the "
        "segment it was flushing must not be merged, or its replay stores their rows twice",
        _minutes(grace),
        _minutes(floor),
        _minutes(floor - SAFE_GRACE_MARGIN),
        _minutes(SAFE_GRACE_MARGIN),
    )
    return floor


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.3g}"
