"""Compaction judges the ages of objects by the warehouse's clock, not the compactor host's
(aggregator/compaction/store_clock.py, O1s22 finding 3).

The grace (a partition with a file younger than it is not merged) and the staleness of a
merge's intent (an older one is a crashed merge's, dropped) compared the store's dates with
this host's clock. A host whose clock runs ahead of the store's (NTP off, or an S3-compatible
store whose clock is behind) took young objects for old ones by that much: a crashed node's last
objects merged before its heartbeat was stale (its replay writes them again: rows twice), a live
merge's intent dropped (the documented rows-twice limit, without any stall).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import aggregator.compaction.partition as partition_mod
import aggregator.compaction.passes as passes_mod
from aggregator.compaction import store_clock
from aggregator.compaction.passes import compact_warehouse
from aggregator.storage import put_bytes
from athena.schema import partition_path
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import DT, flush_files

#: How far the compactor host's clock runs ahead of the warehouse's in these tests.
AHEAD = timedelta(minutes=40)


class _TimeAhead:
    """``time``, :data:`AHEAD` of the store's clock."""

    @staticmethod
    def time() -> float:
        return time.time() + AHEAD.total_seconds()


class _DatetimeAhead(datetime):
    """``datetime``, whose ``now`` is :data:`AHEAD` of the store's clock."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return datetime.now(tz) + AHEAD


@pytest.fixture
def host_ahead(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The compaction modules read a clock :data:`AHEAD` of the store's (here the test's disk,
    which dates files by the real clock); returns what it reads now."""
    monkeypatch.setattr(store_clock, "time", _TimeAhead)
    monkeypatch.setattr(passes_mod, "datetime", _DatetimeAhead)
    monkeypatch.setattr(partition_mod, "datetime", _DatetimeAhead)
    return datetime.now(UTC) + AHEAD


def test_files_the_store_dated_just_now_are_young_to_a_compactor_whose_clock_runs_ahead(
    tmp_path: Path, host_ahead: datetime
) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=5)  # dated now by the store; their hour is closed
    wh = open_warehouse(uri)
    # 40 minutes old by this host's clock, past the 30-minute grace: by the store's, written
    # just now (a crashed node's last objects, maybe): not merged.
    assert compact_warehouse(wh, now=host_ahead, lookback=None) == 0
    # Once the store's clock says they are past the grace, they are.
    later = host_ahead + timedelta(minutes=31)
    assert compact_warehouse(wh, now=later, lookback=None) == 2 * 4


def test_a_live_merge_s_intent_is_not_taken_for_a_crashed_one_by_a_clock_ahead(
    tmp_path: Path, host_ahead: datetime
) -> None:
    """Another compactor's merge under way (its intent written just now, its output not yet):
    20 minutes old by this host's clock, past the 15 minutes after which an intent counts as a
    crashed merge's; by the store's, fresh. The partition is left to it, the intent stays."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=5)
    wh = open_warehouse(uri)
    folder = wh.path(partition_path("container_logs", "recipe", DT))
    names = sorted(p.name for p in Path(folder).glob("*.parquet"))
    intent = f"{folder}/_compact-live.json"
    body = {"inputs": names, "output": "c-live.parquet", "rows": 4 * 5}
    put_bytes(wh, intent, json.dumps(body).encode())
    # Files 31 minutes old by the store's clock (past the grace), the intent fresh by it.
    now = host_ahead + timedelta(minutes=31)
    past_grace = (datetime.now(UTC) - timedelta(minutes=31)).timestamp()
    for path in Path(uri).rglob("*.parquet"):
        os.utime(path, (past_grace, past_grace))
    assert compact_warehouse(wh, now=now, lookback=None) == 4  # the next hour only
    assert Path(intent).exists(), "the live merge's intent was dropped as a crashed one's"
    assert sorted(p.name for p in Path(folder).glob("*.parquet")) == names


def test_the_store_clock_bounds_hold_the_store_s_offset(tmp_path: Path) -> None:
    """Measured on a disk, whose dates are this host's clock: an offset of about zero."""
    clock = store_clock.measure(open_warehouse(str(tmp_path / "wh"), create=True))
    assert clock.low <= 0.0 <= clock.high


def test_the_bounds_hold_where_a_file_is_dated_by_the_kernel_s_coarse_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux dates a file from its coarse clock (the last timer tick: up to 10 ms behind
    ``time.time()`` at HZ=100, on every write before 6.13's fine-grained stamps): the marker,
    written just after the pass read this host's clock, can be dated before that reading.
    ``high`` must still bound the offset (zero here), as on S3 its whole seconds do."""
    real_put = store_clock.put_bytes

    def put_dated_by_a_tick(wh, path, data):  # type: ignore[no-untyped-def]
        real_put(wh, path, data)
        tick = time.time() - 0.009  # the last tick of a 100 Hz clock, 9 ms ago
        os.utime(path, (tick, tick))

    monkeypatch.setattr(store_clock, "put_bytes", put_dated_by_a_tick)
    clock = store_clock.measure(open_warehouse(str(tmp_path / "wh"), create=True))
    assert clock.low <= 0.0 <= clock.high


def test_a_write_under_way_is_not_taken_for_a_killed_one_by_a_clock_ahead(
    tmp_path: Path, host_ahead: datetime
) -> None:
    """A flush of late rows into a closed hour writes its temporary file (``.<name>.<8
    hex>.tmp``) on the file server just now: 40 minutes old by this host's clock, past the 15
    minutes after which the pass deletes it as a killed write's, under the writer (whose
    rename then fails). By the store's clock it is fresh: it stays. One the store dated 20
    minutes ago is a killed write's: deleted."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=5)
    wh = open_warehouse(uri)
    past_grace = (datetime.now(UTC) - timedelta(minutes=31)).timestamp()
    for path in Path(uri).rglob("*.parquet"):
        os.utime(path, (past_grace, past_grace))
    folder = Path(wh.path(partition_path("container_logs", "recipe", DT)))
    writing = folder / ".late.parquet.0123abcd.tmp"
    writing.write_bytes(b"PAR1")  # dated now by the store
    killed = folder / ".dead.parquet.89abcdef.tmp"
    killed.write_bytes(b"PAR1")
    long_ago = (datetime.now(UTC) - timedelta(minutes=20)).timestamp()
    os.utime(killed, (long_ago, long_ago))
    assert compact_warehouse(wh, now=host_ahead + timedelta(minutes=31), lookback=None) == 2 * 4
    assert writing.exists(), "a write under way was deleted as a killed one's"
    assert not killed.exists()
