"""A flush that fails part-way is retried without writing again what it already committed.

The objects a failed attempt committed may be merged by compaction before the retry; writing
them again next to the merged file would store their rows twice (audit: 250 rows, 150 distinct).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregator import flusher as flusher_mod
from aggregator import writer as writer_mod
from aggregator.buffer import Segment
from aggregator.ledger import Committed
from aggregator.state_files import segment_name
from aggregator.storage import StorageError
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.aggregator.test_flusher import data_files, make_flusher, write_segment
from tests.support.procs import console_script, wait_until


@pytest.fixture(autouse=True)
def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several slices per segment, as in test_flusher."""
    monkeypatch.setattr(flusher_mod, "SLICE_ROWS", 200)
    monkeypatch.setattr(flusher_mod, "ROUTE_ROWS", 70)


_REAL_PUT = writer_mod.put_table


def _fail_for(monkeypatch: pytest.MonkeyPatch, service: str) -> list[str]:
    """Make every write into ``service``'s partitions fail; returns the paths written."""
    puts: list[str] = []

    def put(wh, path, table):  # type: ignore[no-untyped-def]
        if f"service={service}/" in path:
            raise StorageError(f"simulated: {service} refused")
        puts.append(path)
        _REAL_PUT(wh, path, table)

    monkeypatch.setattr(writer_mod, "put_table", put)
    return puts


def _compact(paths: list[Path]) -> None:
    """What compaction does to a partition's objects: merged into a file of another name."""
    for path in paths:
        path.rename(path.with_name(f"compacted-{path.name}"))


def _rows(wh_dir: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in data_files(wh_dir))


def test_a_retry_does_not_rewrite_objects_compacted_since_the_failed_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = Segment(5, tmp_path / segment_name(5))
    total = write_segment(seg.path, frames=8, per_frame=50)
    wh_dir = tmp_path / "wh"
    flusher = make_flusher(tmp_path, wh_dir)

    first = _fail_for(monkeypatch, "search")
    with pytest.raises(StorageError, match="search refused"):
        flusher.flush(seg)
    assert first, "the other partitions were committed before the failure"
    committed = data_files(wh_dir)
    assert committed and not [p for p in committed if "service=search" in str(p)]
    _compact(committed)

    retry = _fail_for(monkeypatch, "nothing")
    result = flusher.flush(seg)
    assert all("service=search/" in path for path in retry), retry  # only what failed
    assert _rows(wh_dir) == total == result.records
    assert sum(f.rows for f in result.files) == total  # metrics count the kept objects too
    assert flusher.offsets.get("src-1") == total
    assert not list((tmp_path / "flushing").glob("*.json"))


def test_a_restart_after_a_failed_attempt_does_not_rewrite_its_objects_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed keys are noted with the segment's flush state when an attempt fails: a
    new process (fresh memory, a replay) keeps them too."""
    seg = Segment(6, tmp_path / segment_name(6))
    total = write_segment(seg.path, frames=8, per_frame=50)
    wh_dir = tmp_path / "wh"
    _fail_for(monkeypatch, "cart")
    with pytest.raises(StorageError):
        make_flusher(tmp_path, wh_dir).flush(seg)
    (note,) = (tmp_path / "flushing").glob("*.json")
    assert json.loads(note.read_text())["committed"], "committed keys noted for a restart"
    _compact(data_files(wh_dir))

    retry = _fail_for(monkeypatch, "nothing")
    nobody = Committed(
        pa.table({"source_id": pa.array([], pa.string()), "offset": pa.array([], pa.int64())})
    )
    result = make_flusher(tmp_path, wh_dir).flush(seg, nobody)  # a new process replays
    assert all("service=cart/" in path for path in retry), retry
    assert _rows(wh_dir) == total == result.records


def test_a_replay_that_drops_rows_rewrites_the_objects_that_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept only with the same rows: when a replay drops rows a peer committed, the objects of
    that partition are written again (without them), not kept with the peer's rows."""
    seg = Segment(8, tmp_path / segment_name(8))
    total = write_segment(seg.path, frames=4, per_frame=30)
    wh_dir = tmp_path / "wh"
    _fail_for(monkeypatch, "search")
    with pytest.raises(StorageError):
        make_flusher(tmp_path, wh_dir).flush(seg)
    peer = Committed(pa.table({"source_id": ["src-1"] * 3, "offset": pa.array([1, 2, 3])}))
    retry = _fail_for(monkeypatch, "nothing")
    result = make_flusher(tmp_path, wh_dir).flush(seg, peer)
    assert result.duplicates == 3
    assert _rows(wh_dir) == total - 3
    assert any("service=search/" not in path for path in retry), "changed objects rewritten"


@pytest.mark.integration
def test_the_audit_case_partial_flush_compacted_then_retried_stores_each_row_once(
    tmp_path: Path,
) -> None:
    """As processes: 50 aaa rows flushed; a file blocks the zzz partition; 100 aaa + 1 zzz rows
    are sent (aaa written, zzz fails); compaction merges aaa; the blocker goes; the retry must
    not write the aaa object again (it did: 250 rows, 150 distinct)."""
    warehouse = tmp_path / "warehouse"
    agg = start_aggregator(tmp_path, warehouse=str(warehouse))
    old_ns = (int(time.time()) - 3 * 3600) * 10**9  # a closed hour: compaction merges it
    try:
        with agg.connect() as sock:
            first = [(old_ns, record(f"aaa first {i}", service="aaa")) for i in range(50)]
            sock.sendall(wire.encode_packed_forward("logq.aaa", first, chunk="c1"))
            assert read_acks(sock, 1) == ["c1"]
        wait_rows(str(warehouse), "container_logs", 50, agg, timeout=60)
        blocker = warehouse / "container_logs" / "service=zzz"
        blocker.write_text("a file where the partition folder goes: its writes fail")
        with agg.connect() as sock:
            second = [(old_ns, record(f"aaa second {i}", service="aaa")) for i in range(100)]
            second.append((old_ns, record("zzz", service="zzz")))
            sock.sendall(wire.encode_packed_forward("logq.aaa", second, chunk="c2"))
            assert read_acks(sock, 1) == ["c2"]
        wait_until(
            lambda: "flush of segment" in agg.log_text() and "failed" in agg.log_text(),
            60,
            "a failed flush",
            proc=agg.proc,
        )
        compact = subprocess.run(
            [
                str(console_script("logq-aggregator")),
                "compact",
                "--warehouse",
                str(warehouse),
                "--grace-minutes",
                "0",
                "--all",
                # The running aggregator's files are seconds old: under the safe grace, which
                # would raise 0 to minutes (compaction.safe_grace) and merge nothing.
                "--force",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert compact.returncode == 0, compact.stderr
        assert "compacted 0 files" not in compact.stderr, "the aaa hour must be merged"
        aaa = read_table(str(warehouse), "container_logs")
        assert aaa.num_rows == 150, "the failed attempt committed the aaa object"
        blocker.unlink()
        wait_rows(str(warehouse), "container_logs", 151, agg, timeout=120)
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    messages = read_table(str(warehouse), "container_logs")["message"].to_pylist()
    assert len(messages) == 151 == len(set(messages)), "every row once"
    assert "keeping 1 objects an earlier attempt committed" in agg.log_text()
