"""Two aggregators, one warehouse: a batch fsync'd by A whose ack was lost goes to B as well.

The offset ledger (aggregator/ledger.py) must keep such a batch from being stored twice when A's
buffer is written out later, whether A is drained after dying for good or restarts while B
still holds the resent batch unflushed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.ledger import LEDGER_DIR, NODES_DIR, Ledger, expire_ledger
from aggregator.state_files import NODE_ID_NAME, SEGMENT_SUFFIX
from athena.warehouse import open_warehouse
from shipper import wire
from tests.aggregator.helpers import backdate, read_acks, read_table, record, start_aggregator
from tests.support.procs import console_script

NOW_NS = time.time_ns()


def _send(agg, chunk: str, offsets: range, when_ns: int = NOW_NS) -> None:
    entries = [
        (when_ns, record(f"line {o}", service="billing", source_id="host-a/c1", offset=o))
        for o in offsets
    ]
    with agg.connect() as sock:
        sock.sendall(wire.encode_packed_forward("logq.billing", entries, chunk=chunk))
        assert read_acks(sock, 1) == [chunk]


def _drain(buffer_dir: Path, warehouse: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(console_script("logq-aggregator")),
            "drain",
            "--buffer-dir",
            str(buffer_dir),
            "--warehouse",
            warehouse,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _messages(warehouse: str) -> list[str]:
    return sorted(read_table(warehouse, "container_logs")["message"].to_pylist())


def _expected(*ranges: range) -> list[str]:
    return sorted(f"line {o}" for r in ranges for o in r)


@pytest.mark.integration
def test_drain_of_a_dead_aggregator_skips_what_its_peer_committed(tmp_path: Path) -> None:
    warehouse = str(tmp_path / "warehouse")
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "300"], name="a")
    try:
        _send(a, "c1", range(1, 51))
        _send(a, "c2", range(51, 101))  # fsync'd by A; say its ack never reached the shipper
        assert a.kill9() == -signal.SIGKILL
    finally:
        a.stop()
    b = start_aggregator(tmp_path, warehouse, name="b")
    try:
        _send(b, "c2-again", range(51, 101))  # the shipper fails over and resends c2
        _send(b, "c3", range(101, 151))
        assert b.stop() == 0, b.log_text()
    finally:
        b.stop()
    assert _messages(warehouse) == _expected(range(51, 151))

    drain = _drain(a.buffer_dir, warehouse)
    assert drain.returncode == 0, drain.stderr
    assert "drained" in drain.stderr
    assert _messages(warehouse) == _expected(range(1, 151))  # c1 once, c2 once
    assert list(a.buffer_dir.glob(f"*{SEGMENT_SUFFIX}")) == []
    node_a = (a.buffer_dir / NODE_ID_NAME).read_text().strip()
    assert not (Path(warehouse) / LEDGER_DIR / NODES_DIR / f"{node_a}.json").exists()


@pytest.mark.integration
def test_restart_waits_for_a_live_peer_before_replaying(tmp_path: Path) -> None:
    """A restarts at once while B still holds the resent batch unflushed: A's replay waits for
    B's flush (B's heartbeat), then skips the batch."""
    warehouse = str(tmp_path / "warehouse")
    b = start_aggregator(tmp_path, warehouse, ["--flush-interval", "4"], name="b")
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "300"], name="a")
    try:
        _send(a, "c1", range(1, 51))
        _send(a, "c2", range(51, 101))
        assert a.kill9() == -signal.SIGKILL
        _send(b, "c2-again", range(51, 101))
        a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "0.5"], name="a")
        _send(a, "c3", range(101, 151))  # new lines are acked while the replay waits
        assert a.stop() == 0, a.log_text()
        assert b.stop() == 0, b.log_text()
    finally:
        a.stop()
        b.stop()
    assert _messages(warehouse) == _expected(range(1, 151))
    assert "lines among them are skipped" in a.log_text()


@pytest.mark.integration
def test_replay_of_a_committed_segment_after_compaction_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    """A crash after a segment's objects and ledger entries were written but before the segment
    was deleted, then compaction merged the hour: the replay must skip the segment, not rewrite
    objects that no longer exist under their names."""
    warehouse = str(tmp_path / "warehouse")
    two_hours_ago = NOW_NS - 2 * 3600 * 10**9  # a closed hour: compaction may merge it
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "300"], name="a")
    try:
        _send(a, "c1", range(1, 51), two_hours_ago)
        assert a.stop() == 0, a.log_text()  # object 1
        a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "300"], name="a")
        _send(a, "c2", range(51, 101), two_hours_ago)
        assert a.kill9() == -signal.SIGKILL
    finally:
        a.stop()
    backup = tmp_path / "backup"
    shutil.copytree(a.buffer_dir, backup, ignore=shutil.ignore_patterns("lock"))
    assert _drain(a.buffer_dir, warehouse).returncode == 0  # object 2, segment deleted
    assert _messages(warehouse) == _expected(range(1, 101))
    # Put the buffer back as it was before the segment's deletion (the crash), and compact.
    shutil.rmtree(a.buffer_dir)
    shutil.copytree(backup, a.buffer_dir)
    script = str(console_script("logq-aggregator"))
    compact = subprocess.run(
        [script, "compact", "--warehouse", warehouse, "--all", "--grace-minutes", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compact.returncode == 0, compact.stderr
    assert "compacted 2 files" in compact.stderr
    drain = _drain(a.buffer_dir, warehouse)
    assert drain.returncode == 0, drain.stderr
    assert _messages(warehouse) == _expected(range(1, 101))


@pytest.mark.integration
def test_a_peer_without_heartbeat_is_not_waited_for(tmp_path: Path) -> None:
    """A single aggregator (or peers long gone) replays at once: nobody is waited for."""
    warehouse = str(tmp_path / "warehouse")
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "300"], name="a")
    try:
        _send(a, "c1", range(1, 21))
        assert a.kill9() == -signal.SIGKILL
    finally:
        a.stop()
    beat = Path(warehouse) / LEDGER_DIR / NODES_DIR / "gone-peer.json"
    beat.parent.mkdir(parents=True, exist_ok=True)
    doc = {"node": "gone-peer", "committed_through": 0, "updated": time.time() - 3600}
    beat.write_text(json.dumps({**doc, "flush_interval": 1.0}))
    backdate(beat, doc["updated"])
    started = time.monotonic()
    a = start_aggregator(tmp_path, warehouse, name="a")
    try:
        assert a.stop() == 0, a.log_text()
    finally:
        a.stop()
    assert _messages(warehouse) == _expected(range(1, 21))
    assert time.monotonic() - started < 50, "the replay waited for a stale peer"
    assert "have not committed" not in a.log_text()


def test_ledger_reads_only_other_nodes_and_the_asked_sources(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    mine, peer = Ledger(wh, "node-a"), Ledger(wh, "node-b")
    src = pa.array(["s1", "s1", "s2", None], pa.string())
    off = pa.array([10, 20, 10, 5], pa.int64())
    mine.record("node-a-0000000000000001-0000.parquet", src, off)
    peer.record("node-b-0000000000000001-0000.parquet", src, off)
    peer.record("node-b-0000000000000002-0000.parquet", pa.array(["s3"]), pa.array([1]))

    seen = mine.committed_elsewhere(time.time() - 60, {"s1", "s9"})
    assert seen.pairs == 2  # node-b's s1 pairs only: not our own, not s2/s3, no null source
    mask = seen.seen(pa.array(["s1", "s1", "s1", "s2", None]), pa.array([10, 20, 30, 10, 1]))
    assert mask.to_pylist() == [True, True, False, False, False]
    assert mine.committed_elsewhere(time.time(), set()).pairs == 0


def test_expire_ledger_drops_only_old_hours(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    Ledger(wh, "n").record("n-0000000000000001-0000.parquet", pa.array(["s"]), pa.array([1]))
    old = Path(wh.path(LEDGER_DIR, "written=2020-01-01-00"))
    old.mkdir(parents=True)
    (old / "n-0000000000000000-0000.parquet").write_bytes(b"")
    now = datetime.now(UTC)
    assert expire_ledger(wh, now) == 1
    assert not old.exists()
    assert expire_ledger(wh, now + timedelta(days=1)) == 0  # today's hour is kept


def test_drain_refuses_a_directory_that_is_not_a_buffer(tmp_path: Path) -> None:
    done = _drain(tmp_path / "typo", str(tmp_path / "warehouse"))
    assert done.returncode == 2
    assert "is not a logq-aggregator buffer directory" in done.stderr
    assert not (tmp_path / "typo").exists()  # nothing created by a typo
