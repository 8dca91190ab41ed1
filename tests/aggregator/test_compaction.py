"""Compaction merges a closed hour's small files without losing or duplicating a row."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.attempt as attempt_mod
import aggregator.compaction.command as command_mod
import aggregator.compaction.grace as grace_mod
import aggregator.compaction.listing as listing_mod
import aggregator.compaction.passes as passes_mod
from aggregator.batch import records_table, route
from aggregator.compaction.arguments import DEFERRED_TOO_LONG_EXIT
from aggregator.compaction.command import compact_main
from aggregator.compaction.intents import finish_intents
from aggregator.compaction.partition import compact_partition
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from aggregator.decode import records_batch, to_ipc
from aggregator.ledger import (
    STALE_GRACE_S,
    CompactionHold,
    Heartbeat,
    Ledger,
    compaction_blocker,
    read_heartbeats,
)
from aggregator.storage import StorageError
from aggregator.writer import object_name, write_partitions
from athena.schema import CONTAINER_LOGS, partition_path
from athena.warehouse import open_warehouse
from tests.aggregator.helpers import backdate, parquet_files, read_table, record, start_aggregator
from tests.support.listing import without_override
from tests.support.parquet import assert_fastparquet_reads
from tests.support.procs import console_script, wait_until

#: A closed hour within the periodic pass's 48-hour lookback whenever the tests run (a fixed date
#: fell out of it two days later, and the service's periodic compaction left it alone).
HOUR = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
DT = HOUR.strftime("%Y-%m-%d-%H")
NEXT_DT = (HOUR + timedelta(hours=1)).strftime("%Y-%m-%d-%H")
LATER = datetime.now(UTC) + timedelta(days=1)


def flush_files(wh_uri: str, files: int, rows_per_file: int, service: str = "recipe") -> None:
    """Simulate ``files`` flushes into one closed hour (and one row in the next hour each)."""
    wh = open_warehouse(wh_uri, create=True)
    for seq in range(files):
        events = []
        for i in range(rows_per_file):
            t = HOUR + timedelta(seconds=(i * 37 + seq * 11) % 3600)
            events.append((int(t.timestamp() * 1e9), record(f"f{seq}-r{i}", service=service)))
        nxt = HOUR + timedelta(hours=1, seconds=seq)
        events.append((int(nxt.timestamp() * 1e9), record(f"next-{seq}", service=service)))
        batch = records_batch("logq.x", pa.array([t for t, _ in events]), [r for _, r in events])
        routed = route(records_table([to_ipc(batch)]))
        write_partitions(
            wh, "container_logs", routed.tables["container_logs"], object_name("n", seq)
        )


def test_compaction_keeps_rows_exact_and_sorted(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=12, rows_per_file=50)
    before = sorted(read_table(uri, "container_logs")["message"].to_pylist())
    wh = open_warehouse(uri)
    merged = compact_warehouse(wh, target_bytes=64 * 1024 * 1024, now=LATER, lookback=None)
    assert merged == 24  # both hours are closed by LATER
    after = read_table(uri, "container_logs")
    assert sorted(after["message"].to_pylist()) == before
    files = parquet_files(uri, "container_logs")
    assert len(files) == 2
    assert all(Path(f).name.startswith("c-") for f in files)
    closed = next(f for f in files if f"dt={DT}" in f)
    ts = pq.read_table(closed)["timestamp"].to_pylist()
    assert ts == sorted(ts) and len(ts) == 600
    assert assert_fastparquet_reads(closed) == 600
    assert pq.read_schema(closed) == CONTAINER_LOGS.arrow_schema()
    # Nothing left behind in the tables: no intents, no temp files.
    tables = [p for p in (tmp_path / "wh").iterdir() if not p.name.startswith("_")]
    leftovers = [p.name for t in tables for p in t.rglob("*") if p.name.startswith((".", "_"))]
    assert leftovers == []
    # A second pass has nothing to do.
    assert compact_warehouse(wh, now=LATER, lookback=None) == 0


def test_a_stray_file_is_left_alone_and_the_rest_compacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``.parquet`` that is not Parquet (a stray upload, a truncated copy) stays where it is,
    named in an ERROR; the files around it and the other partitions are compacted."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=20, service="aaa")
    flush_files(uri, files=3, rows_per_file=20, service="zzz")
    wh = open_warehouse(uri)
    folder = Path(wh.path(partition_path("container_logs", "aaa", DT)))
    (folder / "junk.parquet").write_bytes(b"junk\n")
    (folder / "empty.parquet").write_bytes(b"")
    assert compact_warehouse(wh, now=LATER, lookback=None) == 12
    assert sorted(p.name for p in folder.glob("*.parquet") if not p.name.startswith("c-")) == [
        "empty.parquet",
        "junk.parquet",
    ]
    assert "junk.parquet: it is not a readable Parquet file" in caplog.text
    assert "empty.parquet: it is not a readable Parquet file" in caplog.text


def test_temporaries_of_killed_writes_are_swept_only_when_old(tmp_path: Path) -> None:
    """``kill -9`` during a local write leaves ``.<name>.<hex>.tmp`` (atomic_file's cleanup
    never ran): compaction removes those older than the intent staleness, nothing else."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=2, rows_per_file=10)
    wh = open_warehouse(uri)
    folder = Path(wh.path(partition_path("container_logs", "recipe", DT)))
    old, fresh = folder / ".c-x.parquet.0a1b2c3d.tmp", folder / ".c-y.parquet.4e5f6a7b.tmp"
    keep = folder / ".notes.tmp"  # not atomic_file's pattern
    for path in (old, fresh, keep):
        path.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(keep, (an_hour_ago, an_hour_ago))
    compact_partition(wh, CONTAINER_LOGS, str(folder), 128 << 20)
    assert not old.exists() and fresh.exists() and keep.exists()
    assert read_table(uri, "container_logs").num_rows == 22  # 2 x (10 + 1 in the next hour)


def test_a_partition_that_fails_does_not_stop_the_pass(tmp_path: Path) -> None:
    """A file whose footer reads but whose pages are damaged fails its partition's merge: that
    partition keeps its files, and every other partition of the pass is still compacted."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=200, service="aaa")
    flush_files(uri, files=3, rows_per_file=200, service="zzz")
    wh = open_warehouse(uri)
    folder = Path(wh.path(partition_path("container_logs", "aaa", DT)))
    damaged = sorted(folder.glob("*.parquet"))[0]
    data = bytearray(damaged.read_bytes())
    data[4:400] = b"\xff" * 396  # the first data pages, after the "PAR1" magic
    damaged.write_bytes(bytes(data))
    before = sorted(p.name for p in folder.glob("*.parquet"))
    with pytest.raises(CompactionFailed) as failed:
        compact_warehouse(wh, now=LATER, lookback=None)
    assert failed.value.failed == [str(folder)]
    assert failed.value.merged == 9  # aaa's next hour and both of zzz's hours
    assert sorted(p.name for p in folder.glob("*.parquet")) == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(("_", "."))] == []
    zzz = Path(wh.path(partition_path("container_logs", "zzz", DT)))
    assert [p.name[:2] for p in zzz.glob("*.parquet")] == ["c-"]
    assert compact_main(["--warehouse", uri, "--all", "--grace-minutes", "0"]) == 1


def test_open_hours_and_young_files_are_left_alone(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=5)
    wh = open_warehouse(uri)
    # "now" inside the next hour: only dt=…-10 is closed, and its files are young -> skipped.
    now = HOUR + timedelta(hours=1, minutes=45)
    assert compact_warehouse(wh, now=now, lookback=None) == 0
    assert len(parquet_files(uri)) == 6


def test_small_target_makes_several_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=10, rows_per_file=400)
    wh = open_warehouse(uri)
    folder = wh.path(partition_path("container_logs", "recipe", DT))
    sizes = [p.stat().st_size for p in Path(folder).glob("*.parquet")]
    compact_partition(wh, CONTAINER_LOGS, folder, target_bytes=int(max(sizes) * 3.5))
    assert 2 <= len(list(Path(folder).glob("*.parquet"))) < 10
    assert read_table(uri, "container_logs").num_rows == 10 * 401


def test_interrupted_merge_is_finished_or_rolled_back(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=10)
    wh = open_warehouse(uri)
    folder = Path(wh.path(partition_path("container_logs", "recipe", DT)))
    inputs = sorted(p.name for p in folder.glob("*.parquet"))
    merged = pa.concat_tables([pq.read_table(folder / n) for n in inputs])
    # Crash after the output was written, before the inputs were deleted: finish the deletes.
    pq.write_table(merged, folder / "c-done.parquet")
    intent = {"inputs": inputs[:2], "output": "c-done.parquet", "rows": merged.num_rows}
    (folder / "_compact-done.json").write_text(json.dumps(intent))
    # Crash with a short output: roll back (drop it, keep the inputs).
    pq.write_table(merged.slice(0, 3), folder / "c-short.parquet")
    intent = {"inputs": inputs[2:], "output": "c-short.parquet", "rows": merged.num_rows}
    (folder / "_compact-short.json").write_text(json.dumps(intent))
    assert finish_intents(wh, str(folder)) == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(["c-done.parquet", *inputs[2:]])


@pytest.mark.s3
@pytest.mark.integration
def test_compact_command_on_s3(
    tmp_path: Path, s3_warehouse: str, subprocess_env: dict[str, str], s3_env: dict[str, str]
) -> None:
    flush_files(s3_warehouse, files=5, rows_per_file=20, service="../Search Ü")
    before = read_table(s3_warehouse, "container_logs")
    proc = subprocess.run(
        [
            str(console_script("logq-aggregator")),
            "compact",
            "--warehouse",
            s3_warehouse,
            "--all",
            "--grace-minutes",
            "0",
        ],
        env={**subprocess_env, **s3_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "compacted 10 files" in proc.stderr
    after = read_table(s3_warehouse, "container_logs")
    assert sorted(after["message"].to_pylist()) == sorted(before["message"].to_pylist())
    assert set(after["service"].to_pylist()) == {"search_u"}
    assert len(parquet_files(s3_warehouse)) == 2


def test_fresh_intent_of_another_compactor_is_respected(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=5)
    wh = open_warehouse(uri)
    folder = Path(wh.path(partition_path("container_logs", "recipe", DT)))
    intent = {"inputs": ["x.parquet"], "output": "c-x.parquet", "rows": 1}
    (folder / "_compact-x.json").write_text(json.dumps(intent))
    assert compact_partition(wh, CONTAINER_LOGS, str(folder), 1 << 30) == 0
    assert len(list(folder.glob("*.parquet"))) == 3
    assert (folder / "_compact-x.json").exists()


def closed_hours_flushed_long_ago(tmp_path: Path) -> str:
    """A warehouse with 6 flushes into two hours, its files 3 hours old (both hours closed)."""
    uri = str(tmp_path / "warehouse")
    flush_files(uri, files=6, rows_per_file=10)
    old = time.time() - 3 * 3600
    for p in (tmp_path / "warehouse").rglob("*.parquet"):
        os.utime(p, (old, old))
    return uri


def test_periodic_compaction_in_the_service(tmp_path: Path) -> None:
    uri = closed_hours_flushed_long_ago(tmp_path)
    agg = start_aggregator(tmp_path, warehouse=uri, extra=["--compact-interval", "0.5"])
    try:
        wait_until(lambda: len(parquet_files(uri)) == 2, 30, "periodic compaction", proc=agg.proc)
    finally:
        assert agg.stop() == 0
    assert read_table(uri, "container_logs").num_rows == 6 * 11


def test_partitions_that_fail_to_compact_are_a_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """DeleteObject refused (a bucket policy): every merge of the pass fails after writing its
    output, which Athena then reads beside the inputs (rows twice). Only a WARNING said so; the
    failed partitions are now a gauge and the failed passes a counter, and the gauge goes back
    to 0 once a pass gets through."""
    import asyncio

    from aggregator.compact_loop import PeriodicCompaction
    from aggregator.config import Settings
    from aggregator.metrics import Metrics

    uri = closed_hours_flushed_long_ago(tmp_path)
    wh = open_warehouse(uri)
    metrics = Metrics()
    loop = PeriodicCompaction(
        wh, Settings(compact_interval=0.05), metrics, Ledger(wh, "node-a", compacts=True)
    )

    def sample(name: str) -> float:
        value = metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    def refused(wh: object, paths: list[str]) -> None:
        raise StorageError("DeleteObjects failed (AccessDenied)")

    async def until(condition: Callable[[], bool]) -> None:
        task = asyncio.create_task(loop.forever())
        try:
            async with asyncio.timeout(30):
                while not condition():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()

    with monkeypatch.context() as patch:
        patch.setattr(attempt_mod, "delete_objects", refused)
        asyncio.run(until(lambda: sample("logq_aggregator_compaction_pass_failures_total") > 0))
    assert sample("logq_aggregator_compaction_failed_partitions") == 2  # both hours
    asyncio.run(until(lambda: sample("logq_aggregator_compaction_failed_partitions") == 0))
    assert len(parquet_files(uri)) == 2
    assert read_table(uri, "container_logs").num_rows == 6 * 11
    # A failure seen by a node that then stops compacting (a peer with a smaller id came up:
    # R2) is not left standing, where `max(...) > 0 for 2h` would alert for ever.
    metrics.compaction_failed_partitions.set(2)
    Ledger(wh, "node-0", compacts=True).heartbeat(time.time(), 1.0)
    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        asyncio.run(until(lambda: "compaction skipped" in caplog.text))
    assert sample("logq_aggregator_compaction_failed_partitions") == 0


@pytest.mark.parametrize("compact_interval", [0.0, 0.05], ids=["cronjob", "periodic"])
def test_a_peer_down_is_a_gauge_on_every_aggregator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compact_interval: float
) -> None:
    """A scaled-in aggregator whose shutdown flush did not finish holds compaction back until
    it is drained. With compaction left to a CronJob the aggregators never compact, and
    nothing they served showed it: each now counts the peers down, whether it compacts or
    only expires the ledger, and the count goes back to 0 once the peer is drained."""
    import asyncio

    import aggregator.compact_loop as loop_mod
    from aggregator.compact_loop import PeriodicCompaction
    from aggregator.config import Settings
    from aggregator.metrics import Metrics

    monkeypatch.setattr(loop_mod, "PEER_CHECK_SECONDS", 0.05)
    uri = str(tmp_path / "wh")
    flush_files(uri, files=2, rows_per_file=5)
    dead = crashed_node(uri)
    wh = open_warehouse(uri)
    metrics = Metrics()
    me = Ledger(wh, "node-live", compacts=compact_interval > 0)
    me.heartbeat(time.time(), 10.0)
    loop = PeriodicCompaction(wh, Settings(compact_interval=compact_interval), metrics, me)

    def down() -> float | None:
        return metrics.registry.get_sample_value("logq_aggregator_peers_down")

    async def until(condition: Callable[[], bool]) -> None:
        task = asyncio.create_task(loop.forever())
        try:
            async with asyncio.timeout(30):
                while not condition():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()

    assert down() == 0
    asyncio.run(until(lambda: down() == 1))
    assert len(parquet_files(uri)) == 4, "nothing merged while it is down"
    dead.forget()  # drained
    asyncio.run(until(lambda: down() == 0))


def test_only_the_smallest_live_node_compacts_and_none_while_one_is_down() -> None:
    now = 1_800_000_000.0

    def beat(node: str, age: float) -> Heartbeat:
        return Heartbeat(node, now - age, now - age, flush_interval=10.0, compacts=True)

    live = [beat("node-b", 5), beat("node-a", 5), beat("node-c", 5)]
    assert compaction_blocker(live, "node-a", now) is None
    assert compaction_blocker(live, "node-c", now) == CompactionHold(
        "aggregator node-a compacts (the live one with the smallest node id)", peer_down=False
    )
    assert compaction_blocker([], "node-c", now) is None  # alone (or before any heartbeat)
    assert compaction_blocker(live, None, now) is None  # the compact command: nobody is down
    # node-a was killed: its heartbeat stays and goes stale; nobody merges until it is back
    dead = [beat("node-a", 10 * 10 + STALE_GRACE_S + 1), beat("node-b", 5), beat("node-c", 5)]
    for node in ("node-b", "node-c", None):
        hold = compaction_blocker(dead, node, now)
        assert hold is not None and hold.peer_down
        assert hold.reason.startswith("aggregator node-a stopped without")
        assert "logq-aggregator drain" in hold.reason


def test_only_nodes_that_compact_are_elected_to(tmp_path: Path) -> None:
    """The heartbeat says whether a node has --compact-interval: a node with it is not held
    back by a smaller id that never compacts (nothing would ever be merged)."""
    now = time.time()
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    Ledger(wh, "node-a", compacts=False).heartbeat(now, 10.0)
    Ledger(wh, "node-b", compacts=True).heartbeat(now, 10.0)
    Ledger(wh, "node-c", compacts=True).heartbeat(now, 10.0)
    beats = read_heartbeats(wh)
    assert {b.node: b.compacts for b in beats} == {"node-a": False, "node-b": True, "node-c": True}
    assert compaction_blocker(beats, "node-b", now) is None
    assert compaction_blocker(beats, "node-c", now) == CompactionHold(
        "aggregator node-b compacts (the live one with the smallest node id)", peer_down=False
    )
    # A heartbeat of an older version, without the field, is not waited for (that node,
    # by its own rule, defers to the smallest live id: waiting for it would stall both); one
    # with a value that is not a boolean is ignored (logged), like any unreadable one.
    nodes = tmp_path / "wh" / "_ledger" / "_nodes"
    old = json.loads((nodes / "node-a.json").read_text())
    del old["compacts"]
    (nodes / "node-a.json").write_text(json.dumps(old))
    (nodes / "node-0.json").write_text(json.dumps({**old, "node": "node-0", "compacts": "no"}))
    beats = read_heartbeats(wh)
    assert {b.node: b.compacts for b in beats} == {"node-a": None, "node-b": True, "node-c": True}
    assert compaction_blocker(beats, "node-b", now) is None
    # Nor for the ledger's expiry: with no node saying it compacts, the smallest live id
    # expires, be it the old node (it expires hourly by its own rule) or this one.
    only_old = [b for b in beats if b.node == "node-a"]
    assert compaction_blocker(only_old, "node-0", now, compacts=False) is None
    hold = compaction_blocker(only_old, "node-b", now, compacts=False)
    assert hold is not None and "node-a expires the ledger" in hold.reason


def crashed_node(uri: str) -> Ledger:
    """A node whose last heartbeat is an hour old: it died then, its buffer not written out."""
    wh = open_warehouse(uri)
    dead = Ledger(wh, "node-dead")
    dead.heartbeat(time.time() - 3600, flush_interval=10.0)
    beat_file = Path(wh.path("_ledger", "_nodes", "node-dead.json"))
    doc = json.loads(beat_file.read_text())
    beat_file.write_text(json.dumps({**doc, "updated": doc["updated"] - 3600}))
    backdate(beat_file, doc["updated"] - 3600)
    return dead


def test_compact_command_defers_while_an_aggregator_is_down_undrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=5)
    dead = crashed_node(uri)
    args = ["--warehouse", uri, "--all", "--grace-minutes", "0"]

    assert compact_main(args) == 0
    err = capsys.readouterr().err
    assert "deferred: aggregator node-dead stopped without writing out its buffer" in err
    assert len(parquet_files(uri)) == 8, "nothing merged"

    dead.forget()  # what `logq-aggregator drain` does once its buffer is written out
    assert compact_main(args) == 0
    assert "compacted 8 files" in capsys.readouterr().err
    assert len(parquet_files(uri)) == 2


def test_compact_command_deferred_past_the_bound_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scaled-in aggregator whose shutdown flush did not finish holds compaction back until a
    drain: after --max-deferral-hours each cron run fails (exit 3), so that the CronJob's
    failed-job alert fires, instead of every run "succeeding" without compacting."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=2, rows_per_file=5)
    crashed_node(uri)  # its heartbeat went stale about an hour ago
    args = ["--warehouse", uri, "--all", "--grace-minutes", "0"]

    assert compact_main([*args, "--max-deferral-hours", "1.5"]) == 0  # a restart may end it
    assert "deferred: aggregator node-dead" in capsys.readouterr().err

    assert compact_main([*args, "--max-deferral-hours", "0.5"]) == 3
    err = capsys.readouterr().err
    assert re.search(
        r"deferred for 5\d min, longer than --max-deferral-hours 0.5: aggregator node-dead", err
    )
    assert "run `logq-aggregator drain --buffer-dir DIR` on its buffer" in err
    assert len(parquet_files(uri)) == 4, "nothing merged"
    assert compact_main([*args, "--max-deferral-hours", "0.5", "--force"]) == 0
    assert len(parquet_files(uri)) == 2


def test_compact_command_force_merges_anyway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=5)
    crashed_node(uri)
    assert compact_main(["--warehouse", uri, "--all", "--grace-minutes", "0", "--force"]) == 0
    assert "compacted 6 files" in capsys.readouterr().err
    assert read_table(uri, "container_logs").num_rows == 3 * 6


def test_service_leaves_compaction_to_the_smallest_live_node(tmp_path: Path) -> None:
    uri = closed_hours_flushed_long_ago(tmp_path)
    first = Ledger(open_warehouse(uri), "aaa-first")
    first.heartbeat(time.time(), flush_interval=60.0)  # a live peer that sorts first
    # A live peer sorting before both, without --compact-interval: it is never waited for.
    Ledger(open_warehouse(uri), "aaa-0", compacts=False).heartbeat(time.time(), 60.0)
    agg = start_aggregator(
        tmp_path, warehouse=uri, extra=["--compact-interval", "0.5", "--node-id", "zzz-second"]
    )
    try:
        wait_until(
            lambda: "aggregator aaa-first compacts" in agg.log_text(), 30, "skip", proc=agg.proc
        )
        assert len(parquet_files(uri)) == 12
        first.forget()  # it stopped cleanly: this one takes over
        wait_until(lambda: len(parquet_files(uri)) == 2, 30, "take over", proc=agg.proc)
        own = {b.node: b.compacts for b in read_heartbeats(open_warehouse(uri))}
        assert own == {"aaa-0": False, "zzz-second": True}
    finally:
        assert agg.stop() == 0
    assert read_table(uri, "container_logs").num_rows == 6 * 11


def test_a_pass_stops_when_it_no_longer_may_compact(tmp_path: Path) -> None:
    """A peer with a smaller id came up during the pass: the partitions not yet merged stay."""
    uri = str(tmp_path / "wh")
    for service in ("aaa", "bbb", "ccc"):
        flush_files(uri, files=3, rows_per_file=5, service=service)
    wh = open_warehouse(uri)
    asked: list[int] = []

    def hold() -> str | None:
        asked.append(1)
        return None if len(asked) <= 2 else "aggregator node-0 compacts"

    merged = compact_warehouse(wh, now=LATER, lookback=None, hold=hold)
    assert merged == 2 * 3, "the first two partitions (aaa's two hours) only"
    assert len(asked) == 3
    folders = {Path(f).parent.parent.name for f in parquet_files(uri) if Path(f).name[:2] != "c-"}
    assert folders == {"service=bbb", "service=ccc"}
    assert read_table(uri, "container_logs").num_rows == 3 * 3 * 6


def test_compact_of_a_warehouse_it_may_not_read_says_what_to_do(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A warehouse folder denied to compact's user said "listing .../_ledger/_nodes in ...
    failed: [Errno 13] Failed getting information for path ...": now the folder, the user and
    what to do, in ``logq``'s words (:func:`athena.warehouse.check_folder`); exit 1."""
    warehouse = tmp_path / "wh"
    (warehouse / "_ledger").mkdir(parents=True)
    warehouse.chmod(0)
    try:
        done = subprocess.run(
            [
                *without_override(),
                str(console_script("logq-aggregator")),
                *("compact", "--warehouse", str(warehouse)),
            ],
            capture_output=True,
            text=True,
            env=subprocess_env,
            timeout=120,
        )
    finally:
        warehouse.chmod(0o755)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"logq-aggregator compact: the warehouse {warehouse} cannot be read by this user (uid "
        f"{os.geteuid()}, gid {os.getegid()}): permission denied; check the permissions"
    ), done.stderr
    assert done.stderr.endswith("or run as the user that owns it\n"), done.stderr


def test_compact_refuses_a_missing_warehouse_and_odd_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a cron job's --warehouse must fail (it printed "compacted 0 files", exit 0)."""
    assert compact_main(["--warehouse", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == (
        f"logq-aggregator compact: the warehouse {tmp_path / 'nope'} does not exist; "
        "check --warehouse\n"
    )
    (tmp_path / "a-file").write_text("x")
    assert compact_main(["--warehouse", str(tmp_path / "a-file")]) == 1
    said = capsys.readouterr().err  # it said "does not exist" of the file
    assert f"the warehouse {tmp_path / 'a-file'} is a file, not a directory" in said, said
    os.mkfifo(tmp_path / "a-pipe")  # neither file nor folder: pyarrow's FileType.Unknown
    assert compact_main(["--warehouse", str(tmp_path / "a-pipe")]) == 1
    said = capsys.readouterr().err
    assert f"the warehouse {tmp_path / 'a-pipe'} is not a directory" in said, said
    for flag, value in (("--grace-minutes", "nan"), ("--lookback-hours", "1e30")):
        with pytest.raises(SystemExit) as usage:
            compact_main(["--warehouse", str(tmp_path), flag, value])
        assert usage.value.code == 2
        assert f"{flag} must be a number from 0 to" in capsys.readouterr().err
    assert compact_main(["--warehouse", str(tmp_path)]) == 0  # an empty warehouse is fine


def test_compact_help_names_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """A cron job's author reads --help to tell a failed pass (1) from a bad flag or --config
    (2) and a deferral that needs a drain (3); the help once named none of them."""
    with pytest.raises(SystemExit) as done:
        compact_main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done" in text
    assert "1 a pass that failed or a warehouse that does not exist" in text
    assert "2 a usage error (a bad flag, --config or --warehouse)" in text
    assert f"{DEFERRED_TOO_LONG_EXIT} deferred for longer than --max-deferral-hours" in text


# --- the grace never undercuts a crashed peer's staleness -------------------------------------


def files_aged(uri: str, tmp_path: Path, age: timedelta, now: datetime) -> None:
    """Flushes into HOUR (and the next hour), every file ``age`` old at ``now``."""
    flush_files(uri, files=4, rows_per_file=5)
    at = (now - age).timestamp()
    for path in (tmp_path / "wh").rglob("*.parquet"):
        os.utime(path, (at, at))


@pytest.mark.parametrize(("flush_interval", "merged"), [(300.0, 0), (10.0, 4)])
def test_grace_waits_until_a_crashed_peer_counts_as_stale(
    tmp_path: Path, flush_interval: float, merged: int
) -> None:
    """A peer flushing every 300 s counts as down 51 minutes after its last heartbeat: a
    partition closed 35 minutes ago (past the 30-minute default grace) may hold objects of the
    segment it was flushing when it crashed, so it is not merged yet; its replay would write
    them again. With a peer flushing every 10 s (stale after 160 s) it is."""
    uri = str(tmp_path / "wh")
    now = HOUR + timedelta(hours=1, minutes=35)
    files_aged(uri, tmp_path, timedelta(minutes=34), now)
    wh = open_warehouse(uri)
    Ledger(wh, "peer").heartbeat(time.time(), flush_interval=flush_interval)
    assert compact_warehouse(wh, now=now, lookback=None) == merged
    assert read_table(uri, "container_logs").num_rows == 4 * 6


def test_the_next_pass_finishes_a_failed_delete_though_the_output_is_young(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass whose input deletes failed leaves its merged outputs beside their inputs (Athena
    counts those rows twice): the very next pass deletes the inputs, though each output is
    younger than the grace (which holds a merge, not the end of one)."""
    uri = str(tmp_path / "wh")
    files_aged(uri, tmp_path, timedelta(hours=2), datetime.now(UTC))
    wh = open_warehouse(uri)
    before = service_rows(uri)

    def refused(wh: object, paths: list[str]) -> None:
        raise StorageError("DeleteObjects failed (503 SlowDown)")

    with monkeypatch.context() as patch, pytest.raises(CompactionFailed):
        patch.setattr(attempt_mod, "delete_objects", refused)
        compact_warehouse(wh, lookback=None)
    assert service_rows(uri) == before + before  # both hours: every row twice
    assert compact_warehouse(wh, lookback=None) == 0  # finished, nothing merged
    assert service_rows(uri) == before
    left = [p.name for p in (tmp_path / "wh" / "container_logs").rglob("*")]
    assert not [n for n in left if n.startswith("_")], left
    assert len([n for n in left if n.startswith("c-")]) == 2


def test_service_own_flush_interval_raises_the_grace(tmp_path: Path) -> None:
    """The service passes its own --flush-interval (its heartbeat may not be written yet)."""
    uri = str(tmp_path / "wh")
    now = HOUR + timedelta(hours=1, minutes=35)
    files_aged(uri, tmp_path, timedelta(minutes=34), now)
    wh = open_warehouse(uri)
    assert compact_warehouse(wh, now=now, lookback=None, flush_interval=300.0) == 0
    assert compact_warehouse(wh, now=now, lookback=None, flush_interval=10.0) == 4


def test_a_pass_reads_the_heartbeats_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold check and the grace floor share one read of the heartbeats (one LIST and a
    GET per aggregator): heartbeats handed in decide the grace, nothing is read again."""
    uri = str(tmp_path / "wh")
    now = HOUR + timedelta(hours=1, minutes=35)
    files_aged(uri, tmp_path, timedelta(minutes=34), now)
    wh = open_warehouse(uri)
    Ledger(wh, "peer").heartbeat(time.time(), flush_interval=300.0)
    beats = read_heartbeats(wh)
    reads: list[str] = []
    real = grace_mod.read_heartbeats
    for mod in (grace_mod, command_mod):  # the grace floor's read, and compact_main's own
        monkeypatch.setattr(mod, "read_heartbeats", lambda w: reads.append("x") or real(w))
    assert compact_warehouse(wh, now=now, lookback=None, beats=beats) == 0  # peer's floor held
    assert reads == []
    assert compact_main(["--warehouse", uri, "--all"]) == 0
    assert reads == ["x"]


def test_compact_command_raises_a_short_grace_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--grace-minutes 0`` is honoured only down to the safe minimum (logged), and
    ``--force`` with it goes below (with a warning); ``--force`` alone does not."""
    uri = str(tmp_path / "wh")
    files_aged(uri, tmp_path, timedelta(minutes=35), datetime.now(UTC))
    wh = open_warehouse(uri)
    Ledger(wh, "peer").heartbeat(time.time(), flush_interval=300.0)
    args = ["--warehouse", uri, "--all", "--grace-minutes", "0"]
    assert compact_main(args) == 0
    err = capsys.readouterr().err
    assert "compaction grace raised from 0 to 56 minutes" in err
    assert "compacted 0 files" in err
    assert len(parquet_files(uri)) == 8
    # --force alone (a crashed peer not back yet) keeps the floor for the live ones.
    assert compact_main(["--warehouse", uri, "--all", "--force"]) == 0
    assert "compacted 0 files" in capsys.readouterr().err
    assert len(parquet_files(uri)) == 8
    assert compact_main([*args, "--force"]) == 0
    err = capsys.readouterr().err
    assert "is below the safe" in err
    assert "compacted 8 files" in err
    assert len(parquet_files(uri)) == 2
    assert read_table(uri, "container_logs").num_rows == 4 * 6


# --- several partitions at once -------------------------------------------------------------------


def service_rows(uri: str) -> Counter[tuple[str, str]]:
    """Every visible row as (service, message): an exact multiset."""
    table = read_table(uri, "container_logs")
    return Counter(zip(table["service"].to_pylist(), table["message"].to_pylist(), strict=True))


def folder_of(uri: str, service: str, dt: str = DT) -> Path:
    return Path(open_warehouse(uri).path(partition_path("container_logs", service, dt)))


def patch_merge(monkeypatch: pytest.MonkeyPatch, around: object) -> None:
    """Run ``around(output, merge)`` instead of each merge (``merge()`` does the real one)."""
    real = attempt_mod._merge

    def merge(*args: object, **kwargs: object) -> int:
        return around(str(args[3]), lambda: real(*args, **kwargs))  # type: ignore[operator]

    monkeypatch.setattr(attempt_mod, "_merge", merge)


@pytest.mark.s3
@pytest.mark.integration
def test_several_partitions_are_merged_at_once_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass merges partitions concurrently (the first two merges meet at a barrier, which a
    pass merging one partition after the other would break) and keeps every row exactly once."""
    services = [f"svc{i}" for i in range(5)]
    for service in services:
        flush_files(s3_warehouse, files=4, rows_per_file=30, service=service)
    before = service_rows(s3_warehouse)
    meet = threading.Barrier(2, timeout=120)
    lock = threading.Lock()
    calls: list[str] = []

    def around(output: str, merge: Callable[[], int]) -> int:
        with lock:
            calls.append(output)
            first_two = len(calls) <= 2
        if first_two:
            meet.wait()
        return merge()

    patch_merge(monkeypatch, around)
    wh = open_warehouse(s3_warehouse)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 5 * 2 * 4
    assert len(calls) == 10
    assert service_rows(s3_warehouse) == before
    files = parquet_files(s3_warehouse, "container_logs")
    assert len(files) == 10 and all(f.rsplit("/", 1)[1].startswith("c-") for f in files)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 0


@pytest.mark.s3
@pytest.mark.integration
def test_hours_are_listed_one_by_one_or_the_folder_whole_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 too: the service folder's hour folders are listed (prefixes), then only the hour
    within the lookback (never the folder whole: list_tree fails here); a later pass over
    every hour lists the young folder whole and merges the other hour."""
    flush_files(s3_warehouse, files=4, rows_per_file=10, service="svc")
    before = service_rows(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    folder = wh.path(partition_path("container_logs", "svc", DT))
    next_folder = wh.path(partition_path("container_logs", "svc", NEXT_DT))

    def files_in(path: str) -> int:
        return len([f for f in parquet_files(s3_warehouse, "container_logs") if f.startswith(path)])

    def whole(*_: object) -> None:
        raise AssertionError("a service folder was listed whole")

    with monkeypatch.context() as patch:
        patch.setattr(listing_mod, "RECURSIVE_MAX_HOURS", 1)
        patch.setattr(listing_mod, "list_tree", whole)
        lookback = LATER - (HOUR + timedelta(minutes=90))  # NEXT_DT's hour, not DT's
        assert compact_warehouse(wh, now=LATER, lookback=lookback) == 4
    assert files_in(folder + "/") == 4  # outside the lookback: untouched
    assert files_in(next_folder + "/") == 1
    assert compact_warehouse(wh, now=LATER, lookback=None) == 4  # listed whole: 2 hours
    assert files_in(folder + "/") == 1
    assert service_rows(s3_warehouse) == before


def test_a_partition_failing_beside_others_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that fails while another partition's runs (they meet first) keeps its own files
    and leaves nothing behind; the partitions merged beside it are complete; the pass names it."""
    uri = str(tmp_path / "wh")
    for service in ("aaa", "bad", "zzz"):
        flush_files(uri, files=3, rows_per_file=20, service=service)
    bad = folder_of(uri, "bad")
    bad_files = sorted(p.name for p in bad.iterdir())
    before = service_rows(uri)
    meet = threading.Barrier(2, timeout=120)

    def around(output: str, merge: Callable[[], int]) -> int:
        if output.startswith(f"{bad}/"):
            meet.wait()
            raise OSError("injected failure in one of the merges under way")
        if output.startswith(str(folder_of(uri, "aaa", NEXT_DT))):
            meet.wait()  # aaa's second partition runs beside bad's first
        return merge()

    patch_merge(monkeypatch, around)
    with pytest.raises(CompactionFailed) as failed:
        compact_warehouse(open_warehouse(uri), now=LATER, lookback=None)
    assert failed.value.failed == [str(bad)]
    assert failed.value.merged == 5 * 3
    assert sorted(p.name for p in bad.iterdir()) == bad_files  # no intent, no output left
    assert service_rows(uri) == before
    merged = [Path(f) for f in parquet_files(uri, "container_logs") if Path(f).parent != bad]
    assert len(merged) == 5 and all(p.name.startswith("c-") for p in merged)


def test_a_stopped_pass_lets_the_merge_under_way_finish_and_starts_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hold`` says stop while the first partition's merge is still running: that merge
    completes (its rows stay exact) and no other partition is started."""
    uri = str(tmp_path / "wh")
    for service in ("aaa", "bbb"):
        flush_files(uri, files=3, rows_per_file=5, service=service)
    before = service_rows(uri)
    stopped = threading.Event()
    started: list[str] = []

    def around(output: str, merge: Callable[[], int]) -> int:
        started.append(output)
        assert stopped.wait(120)  # still merging when the pass is told to stop
        return merge()

    asked: list[int] = []

    def hold() -> str | None:
        asked.append(1)
        if len(asked) == 1:
            return None
        stopped.set()
        return "aggregator node-0 compacts"

    patch_merge(monkeypatch, around)
    merged = compact_warehouse(open_warehouse(uri), now=LATER, lookback=None, hold=hold)
    assert merged == 3 and len(asked) == 2
    assert [Path(o).parent for o in started] == [folder_of(uri, "aaa")]
    assert service_rows(uri) == before
    assert [Path(f).name[:2] for f in parquet_files(uri) if "service=aaa" in f].count("c-") == 1
    assert len(parquet_files(uri)) == 1 + 3 * 3


def test_merges_at_once_stay_within_the_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget smaller than any group, merges run one at a time (each alone) and still
    all complete: the budget bounds memory, it never blocks a merge for good."""
    uri = str(tmp_path / "wh")
    for service in ("aaa", "bbb", "ccc"):
        flush_files(uri, files=3, rows_per_file=20, service=service)
    before = service_rows(uri)
    monkeypatch.setattr(passes_mod, "MERGE_MEMORY_BYTES", 1)
    lock = threading.Lock()
    running: list[int] = [0, 0]  # now, most at once

    def around(output: str, merge: Callable[[], int]) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            time.sleep(0.05)  # room for another merge to start, were it allowed to
            return merge()
        finally:
            with lock:
                running[0] -= 1

    patch_merge(monkeypatch, around)
    assert compact_warehouse(open_warehouse(uri), now=LATER, lookback=None) == 3 * 2 * 3
    assert running[1] == 1
    assert service_rows(uri) == before


def test_hold_is_asked_when_a_merge_slot_is_free_right_before_the_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one merge at a time, the pass asks ``hold`` about the next partition only once the
    merge before it has ended (not when it was listed, minutes earlier): told to stop then, it
    starts nothing more, as when partitions were merged one by one."""
    uri = str(tmp_path / "wh")
    for service in ("aaa", "bbb"):
        flush_files(uri, files=3, rows_per_file=5, service=service)
    before = service_rows(uri)
    monkeypatch.setattr(passes_mod, "MERGE_PARTITIONS", 1)
    events: list[str] = []

    def around(output: str, merge: Callable[[], int]) -> int:
        events.append("merge " + Path(output).parent.parent.name)
        try:
            return merge()
        finally:
            events.append("merged")

    def hold() -> str | None:
        events.append("hold")
        return None if events.count("hold") <= 1 else "aggregator node-0 compacts"

    patch_merge(monkeypatch, around)
    merged = compact_warehouse(open_warehouse(uri), now=LATER, lookback=None, hold=hold)
    assert events == ["hold", "merge service=aaa", "merged", "hold"]
    assert merged == 3
    assert service_rows(uri) == before
    assert len(parquet_files(uri)) == 1 + 3 * 3
