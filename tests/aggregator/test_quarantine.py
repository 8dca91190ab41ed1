"""A segment whose flush fails with a data error is set aside, and the buffer flows again.

An S3 outage (OSError) is retried for as long as it lasts; a data error repeats on every try, so
after QUARANTINE_AFTER tries the segment moves to ``<buffer-dir>/quarantine/`` (what Fluentd
does with an unrecoverable chunk: its backup directory). Nothing is lost: that folder is a buffer
dir of its own, written out with ``logq-aggregator drain`` once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aggregator import buffer as buffer_mod
from aggregator import flusher as flusher_mod
from aggregator import writer as writer_mod
from aggregator.buffer import end_marker
from aggregator.config import Settings
from aggregator.service import QUARANTINE_AFTER, Aggregator
from aggregator.state_files import segment_name
from tests.aggregator.helpers import parquet_files, read_table
from tests.aggregator.test_flusher import write_segment
from tests.support.procs import console_script

POISONED = "-0000000000000002-"  # object keys of segment 2


async def flush_buffer(agg: Aggregator) -> bool:
    """Open the aggregator's buffer (its segments are replayed) and flush every segment."""
    agg._open_buffer()
    try:
        return await agg._flush_sealed()
    finally:
        await agg.buffer.close()


def test_a_segment_failing_with_a_data_error_is_set_aside_then_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    rows = {
        seq: write_segment(buffer_dir / segment_name(seq), 2, 30, source=f"src-{seq}")
        for seq in (1, 2, 3)
    }
    real_put = writer_mod.put_table
    puts: list[str] = []

    def put(wh, path, table):  # segment 2: its first object lands, then the bug strikes
        puts.append(path)
        if POISONED in path and sum(POISONED in p for p in puts) > 1:
            raise ValueError("simulated encoder bug")
        real_put(wh, path, table)

    monkeypatch.setattr(writer_mod, "put_table", put)
    agg = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(buffer_dir)))
    assert asyncio.run(asyncio.wait_for(flush_buffer(agg), 60))  # the 3 segments are replayed
    monkeypatch.undo()

    quarantined = buffer_dir / "quarantine" / segment_name(2)
    assert quarantined.exists() and not (buffer_dir / segment_name(2)).exists()
    assert agg.metrics.quarantined._value.get() == 1
    assert not [p for p in parquet_files(warehouse) if POISONED in p], "its partial write undone"
    assert (
        read_table(warehouse, "envoy_access").num_rows
        + read_table(warehouse, "container_logs").num_rows
        == rows[1] + rows[3]
    )

    drain = [str(console_script("logq-aggregator")), "drain", "--buffer-dir"]
    done = subprocess.run(  # the bug is fixed: write the set-aside segment out
        [*drain, str(quarantined.parent), "--warehouse", warehouse],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    envoy, logs = read_table(warehouse, "envoy_access"), read_table(warehouse, "container_logs")
    assert envoy.num_rows + logs.num_rows == sum(rows.values()), "every line once"
    drained = [p for p in parquet_files(warehouse) if "-quarantine-" in p and "_ledger" not in p]
    assert sum(pq.read_metadata(p).num_rows for p in drained) == rows[2]


def test_errors_that_change_from_try_to_try_are_retried_not_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the same data error, again and again, sets a segment aside: a flaky one is retried."""
    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    rows = write_segment(buffer_dir / segment_name(1), 2, 30)
    real_route = flusher_mod.route
    calls = 0

    def route(*args, **kw):  # one call per try here (one slice); three different failures
        nonlocal calls
        calls += 1
        if calls <= QUARANTINE_AFTER:
            raise ValueError(f"flaky failure {calls}")
        return real_route(*args, **kw)

    monkeypatch.setattr(flusher_mod, "route", route)
    agg = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(buffer_dir)))
    assert asyncio.run(asyncio.wait_for(flush_buffer(agg), 60))
    assert calls == QUARANTINE_AFTER + 1
    assert not (buffer_dir / "quarantine").exists()
    assert agg.metrics.quarantined._value.get() == 0
    total = read_table(warehouse, "envoy_access").num_rows
    assert total + read_table(warehouse, "container_logs").num_rows == rows


def test_a_drain_that_sets_a_segment_aside_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A runbook or cron job must see that a drain left data behind (it said "drained")."""
    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    for seq in (1, 2):
        write_segment(buffer_dir / segment_name(seq), 2, 30, source=f"src-{seq}")
    real_put = writer_mod.put_table

    def put(wh, path, table):
        if POISONED in path:
            raise ValueError("simulated encoder bug")
        real_put(wh, path, table)

    monkeypatch.setattr(writer_mod, "put_table", put)
    agg = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(buffer_dir)))
    assert asyncio.run(asyncio.wait_for(agg.drain(), 120)) == 1
    assert "drain: 1 segments failed with a data error and were moved to" in caplog.text
    assert "drained " not in caplog.text
    assert agg.buffer.quarantined() == 1


def test_a_segment_whose_marker_cannot_be_set_aside_stays_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Segment 2 ends with a frame a failed fsync left unacknowledged (``<seq>.acked``). The
    first move to quarantine/ cannot write that marker: it used to log that and move the
    segment anyway, and the drain then wrote out the unacknowledged frame (whose client had
    resent it: stored twice). Now the segment stays, the next try sets it aside whole, the
    segment behind it flows, and the drain writes its acknowledged frames only."""
    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    rows = {
        seq: write_segment(buffer_dir / segment_name(seq), 1, 30, source=f"src-{seq}")
        for seq in (1, 2, 3)
    }
    poisoned = buffer_dir / segment_name(2)
    acked_end = poisoned.stat().st_size
    write_segment(tmp_path / "unacked.seg", 1, 30, source="unacked")
    with poisoned.open("ab") as out:  # the frame after the acknowledged ones
        out.write((tmp_path / "unacked.seg").read_bytes())
    end_marker(poisoned).write_text(f"{acked_end}\n")
    real_put, real_write_atomic = writer_mod.put_table, buffer_mod.write_atomic
    refused: list[Path] = []

    def put(wh, path, table):
        if POISONED in path:
            raise ValueError("simulated encoder bug")
        real_put(wh, path, table)

    def write_atomic(path: Path, data: bytes) -> None:
        if path.parent.name == "quarantine" and path.suffix == ".acked" and not refused:
            refused.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_atomic(path, data)

    monkeypatch.setattr(writer_mod, "put_table", put)
    monkeypatch.setattr(buffer_mod, "write_atomic", write_atomic)
    agg = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(buffer_dir)))
    abandoned: list[int] = []
    real_open = agg._open_buffer

    def open_buffer() -> None:  # count the clean-ups of failed flushes (the flusher is new)
        real_open()
        assert agg.flusher is not None
        real_abandon = agg.flusher.abandon
        agg.flusher.abandon = lambda seq: abandoned.append(seq) or real_abandon(seq)

    agg._open_buffer = open_buffer  # type: ignore[method-assign]
    assert asyncio.run(asyncio.wait_for(flush_buffer(agg), 60))
    monkeypatch.undo()

    assert refused, "the first move was refused"
    assert abandoned == [2], "a move that could not happen cleaned up nothing (R4)"
    quarantined = buffer_dir / "quarantine" / poisoned.name
    assert end_marker(quarantined).read_text() == f"{acked_end}\n"
    assert "could not be moved to" in caplog.text and "it stays in the buffer" in caplog.text
    assert not poisoned.exists() and not end_marker(poisoned).exists()
    assert agg.metrics.quarantined._value.get() == 1

    def written() -> int:
        return sum(read_table(warehouse, t).num_rows for t in ("envoy_access", "container_logs"))

    assert written() == rows[1] + rows[3]

    drain = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(quarantined.parent)))
    assert asyncio.run(asyncio.wait_for(drain.drain(), 120)) == 0
    assert written() == sum(rows.values()), "the unacknowledged frame is not written"
