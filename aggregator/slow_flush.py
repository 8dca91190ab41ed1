"""What to say when a flush takes longer than the flush interval.

Flushes run one after another, so a flush that outlasts ``--flush-interval`` delays every
client's data behind it: the next seal waits, and data acked meanwhile reaches the warehouse
late. The usual cause is the number of partitions one segment touches (one object per table,
service and hour): a client resending a long backlog, or a source whose clock spreads its rows
over many hours, or a flood of service names. The duration histogram
(``logq_aggregator_flush_duration_seconds``) shows that a flush was slow; this WARNING says what
it wrote, so the operator can tell a passing backlog from a steady fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aggregator.writer import WrittenFile
from athena.named import counted

#: Services a slow-flush warning names (those with the most objects); the others are counted.
NAMED_SERVICES = 3
#: Seconds between two slow-flush warnings (a steady fault says so every few minutes).
WARNING_SECONDS = 300.0


def slow_flush_text(
    segment: int, seconds: float, interval: float, files: Iterable[WrittenFile]
) -> str | None:
    """The WARNING for a flush of ``seconds`` that wrote ``files``, or None when it took no
    longer than ``interval`` (``--flush-interval``)."""
    if seconds <= interval:
        return None
    written = list(files)
    per_service = Counter(f.service for f in written)
    hours = {f.dt for f in written}
    most = [f"{name} ({count})" for name, count in per_service.most_common()]
    spread = (
        f"{_many(len(written), 'object')} for {_many(len(per_service), 'service')} over "
        f"{_many(len(hours), 'hour')}"
        + (f"; most objects: {counted(most, at_most=NAMED_SERVICES)}" if written else "")
    )
    return (
        f"the flush of segment {segment} took {seconds:.2f}s, longer than --flush-interval "
        f"({interval:g}s): data received since waits for it. It wrote {spread}. Each table, "
        "service and hour is one object per flush: a client resending a long backlog passes; "
        "if this repeats, look for sources stamping rows over many hours (clocks) or sending "
        "many service names, or raise --flush-interval so each flush has the time it needs"
    )


def _many(count: int, thing: str) -> str:
    """``1 hour``, ``2 hours``, ``1,200 objects``."""
    return f"{count:,} {thing}" if count == 1 else f"{count:,} {thing}s"
