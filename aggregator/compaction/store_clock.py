"""The warehouse's clock, measured: the one that dates its objects (S3's ``Last-Modified``, a
file's mtime set by its file server), which a pass compares with ages.

Two of a pass's decisions rest on how old an object is: a partition with a file younger than
the grace is not merged (its flush may still be landing, or be a crashed node's last objects,
which its replay would write again: rows twice, :mod:`.grace`), and a merge's intent older than
``INTENT_STALE_AFTER`` is taken for a crashed merge and dropped (a live one's: rows twice, the
limit in :mod:`.intents`). Compared with this host's clock, a host whose clock runs ahead of
the store's (NTP off, an S3-compatible store minutes behind) made young objects look old by
that much. So each pass writes a marker and reads back the date the warehouse gave it: the
store's "now", and the ages are taken on the store's clock alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aggregator.storage import StorageError, put_bytes, read_small
from athena.warehouse import Warehouse

#: ``<warehouse>/_compaction/clock.json``: rewritten by every pass (of any compactor).
MARKER = "clock.json"
STATE_DIR = "_compaction"
#: How far a file's mtime can trail this host's ``time.time()`` on a disk that dates files by
#: this host's clock: Linux stamps files from its coarse clock (the last timer tick, up to
#: 10 ms behind at HZ=100; kernels before 6.13 do so for every write), so a file written just
#: after ``before`` can be dated before it. S3's whole seconds cover it already.
FILE_DATE_LAG = 0.02


@dataclass(frozen=True)
class StoreClock:
    """How many seconds the warehouse's clock runs ahead of this host's (negative: behind),
    as bounds: its dates are whole seconds on S3, and a write takes a round trip."""

    low: float
    high: float

    def young_after(self, now: datetime, grace: timedelta) -> datetime:
        """Objects the store dated after this are younger than ``grace`` at ``now`` (this
        host's clock, as the pass reads it): taken from the latest the store's clock can read
        then, so that more objects count as young (nothing merged early)."""
        return now + timedelta(seconds=self.high) - grace

    def old_before(self, age: timedelta) -> datetime:
        """Objects the store dated before this are older than ``age`` now: taken from the
        earliest the store's clock can read now, so that fewer objects count as old (no live
        merge's intent taken for a crashed one's)."""
        return datetime.fromtimestamp(time.time() + self.low, UTC) - age


def measure(wh: Warehouse) -> StoreClock:
    """Write the marker, read back its date: the version read was dated by the store after
    this write began (read-after-write) and before the read's answer, whoever wrote it (a
    compactor that rewrote it in between), give or take its dates' resolution. Raises
    :class:`StorageError` when the warehouse cannot be written or read: the pass then fails,
    and the next one tries again."""
    path = wh.path(STATE_DIR, MARKER)
    before = time.time()
    put_bytes(wh, path, (json.dumps({"written": before}) + "\n").encode("utf-8"))
    found = read_small(wh, path)
    after = time.time()
    if found is None:
        raise StorageError(f"{path} in {wh.uri} was not there right after it was written")
    return StoreClock(
        low=found.written - after,
        high=found.written + max(found.resolution, FILE_DATE_LAG) - before,
    )
