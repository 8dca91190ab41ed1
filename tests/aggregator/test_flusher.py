"""One segment -> one object per partition: slices parsed apart, written together, exactly once."""

from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aggregator import flusher as flusher_mod
from aggregator import spill as spill_mod
from aggregator import writer as writer_mod
from aggregator.buffer import Segment
from aggregator.decode import records_batch, to_ipc
from aggregator.dedup import OFFSETS_NAME, OffsetState
from aggregator.envoy import BUILTIN_FORMATS
from aggregator.flusher import Flusher
from aggregator.frames import encode_frame
from aggregator.ledger import Committed, Ledger, entry_name
from aggregator.spill import Spill
from aggregator.state_files import segment_name
from aggregator.storage import StorageError
from athena.warehouse import open_warehouse
from shipper import wire
from tests.aggregator.helpers import ENVOY_IMAGE, envoy_line, record
from tests.support.parquet import assert_fastparquet_reads

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns
SERVICES = ["recipe", "cart", "search"]


def write_segment(path: Path, frames: int, per_frame: int, source: str = "src-1") -> int:
    """A segment of Envoy and app lines for three services, times going back and forth
    (as several shippers' batches interleave). Returns the record count."""
    n = 0
    with path.open("wb") as out:
        for f in range(frames):
            records, times = [], []
            for i in range(per_frame):
                svc = SERVICES[(f + i) % len(SERVICES)]
                second = (f * 7 + i * 13) % 50  # not monotonic across frames
                if i % 4 == 0:
                    rec = record(f"app line {n}", svc, **{wire.KEY_IMAGE: "app:1"})
                else:
                    when = f"2026-11-28T10:00:{second:02d}.{n % 1000:03d}Z"
                    rec = record(
                        envoy_line(when=when, rid=f"req-{n}"), svc, **{wire.KEY_IMAGE: ENVOY_IMAGE}
                    )
                rec[wire.KEY_SOURCE_ID] = source
                rec[wire.KEY_OFFSET] = n + 1
                records.append(rec)
                times.append(T0 + second * 10**9)
                n += 1
            batch = records_batch(f"logq.{SERVICES[0]}", pa.array(times, pa.int64()), records)
            out.write(encode_frame(to_ipc(batch)))
    return n


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if "_ledger" not in p.parts)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in data_files(root)
    }


def make_flusher(tmp: Path, wh_dir: Path, ledger: bool = True) -> Flusher:
    wh = open_warehouse(str(wh_dir), create=True)
    offsets = OffsetState(tmp / OFFSETS_NAME).load()
    return Flusher(
        wh,
        offsets,
        "node-a",
        BUILTIN_FORMATS,
        tmp / "spill",
        Ledger(wh, "node-a") if ledger else None,
    )


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flusher_mod, "SLICE_ROWS", 200)
    monkeypatch.setattr(flusher_mod, "ROUTE_ROWS", 70)


@pytest.mark.usefixtures("small_slices")
def test_a_segment_of_many_slices_writes_one_sorted_object_per_partition(tmp_path: Path) -> None:
    seg = Segment(7, tmp_path / segment_name(7))
    total = write_segment(seg.path, frames=30, per_frame=40)  # 1,200 records = 6 slices
    wh_dir = tmp_path / "wh"
    result = make_flusher(tmp_path, wh_dir).flush(seg)

    assert result.records == total and result.duplicates == 0
    files = data_files(wh_dir)
    # 3 services x 2 tables, one hour: six objects, not six per slice
    assert len(files) == 6 == len(result.files)
    assert {p.name for p in files} == {"node-a-0000000000000007-0000.parquet"}
    rows = 0
    for path in files:
        table = pq.read_table(path)
        ts = table["timestamp"]
        assert pc.all(pc.less_equal(ts[:-1], ts[1:])).as_py(), f"{path} not sorted by time"
        assert assert_fastparquet_reads(path) == table.num_rows
        rows += table.num_rows
    assert rows == total
    assert not (tmp_path / "spill").exists(), "the spill folder is emptied after the flush"
    ledger = list((wh_dir / "_ledger").rglob(entry_name("node-a", 7)))
    assert len(ledger) == 1 and assert_fastparquet_reads(ledger[0]) == total


@pytest.mark.usefixtures("small_slices")
def test_a_replayed_segment_rewrites_the_same_keys_byte_for_byte(tmp_path: Path) -> None:
    seg = Segment(3, tmp_path / segment_name(3))
    write_segment(seg.path, frames=12, per_frame=50)
    first, second = tmp_path / "one", tmp_path / "two"
    (first / "state").mkdir(parents=True)
    (second / "state").mkdir(parents=True)
    make_flusher(first / "state", first / "wh").flush(seg)
    make_flusher(second / "state", second / "wh").flush(seg)  # fresh offsets: a crash replay
    assert digest(first / "wh") == digest(second / "wh") != {}


@pytest.mark.usefixtures("small_slices")
def test_a_big_partition_is_cut_into_objects_of_part_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill_mod, "PART_ROWS", 150)
    monkeypatch.setattr(writer_mod, "WRITE_ROWS", 200)
    seg = Segment(1, tmp_path / segment_name(1))
    total = write_segment(seg.path, frames=20, per_frame=60)
    wh_dir = tmp_path / "wh"
    result = make_flusher(tmp_path, wh_dir).flush(seg)
    by_partition: dict[Path, list[int]] = {}
    for path in data_files(wh_dir):
        by_partition.setdefault(path.parent, []).append(pq.read_metadata(path).num_rows)
    assert sum(sum(v) for v in by_partition.values()) == total == result.records
    assert all(max(v) <= 150 for v in by_partition.values())
    assert any(len(v) > 1 for v in by_partition.values())
    names = {p.name for p in data_files(wh_dir)}
    assert "node-a-0000000000000001-0001.parquet" in names


@pytest.mark.usefixtures("small_slices")
def test_a_failed_write_keeps_the_offsets_and_the_retry_writes_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = Segment(2, tmp_path / segment_name(2))
    total = write_segment(seg.path, frames=10, per_frame=50)
    wh_dir = tmp_path / "wh"
    flusher = make_flusher(tmp_path, wh_dir)
    real_put = writer_mod.put_table
    calls = {"n": 0}

    def failing_put(wh, path, table):  # the fourth object hits an S3 outage
        calls["n"] += 1
        if calls["n"] == 4:
            raise StorageError("simulated outage")
        real_put(wh, path, table)

    monkeypatch.setattr(writer_mod, "put_table", failing_put)
    with pytest.raises(StorageError, match="simulated outage"):
        flusher.flush(seg)
    assert flusher.offsets.get("src-1") is None, "nothing committed, nothing marked"
    assert not list(wh_dir.rglob(entry_name("node-a", 2))), "no ledger entry before the data"
    monkeypatch.setattr(writer_mod, "put_table", real_put)
    result = flusher.flush(seg)
    assert result.duplicates == 0 and result.records == total
    assert sum(pq.read_metadata(p).num_rows for p in data_files(wh_dir)) == total
    assert flusher.offsets.get("src-1") == total
    # and the segment flushed again (the caller died before deleting it) adds nothing
    again = flusher.flush(seg)
    assert again.duplicates == total
    assert sum(pq.read_metadata(p).num_rows for p in data_files(wh_dir)) == total


def test_a_failed_write_leaves_no_deleted_spill_file_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spilled rows are views of the spill files' pages: while any view lives, a file deleted
    by close() keeps its disk space. A failed write must hand them back once its error is
    dropped (the service retries after a backoff, writing a fresh spill), not whenever
    Python's cycle collector runs: the error's traceback must not sit in a reference cycle
    with the rows (it did through ``write_objects``'s list of failures). The collector is off
    here so that only reference counting frees them."""
    seg = Segment(2, tmp_path / segment_name(2))
    write_segment(seg.path, frames=10, per_frame=50)
    flusher = make_flusher(tmp_path, tmp_path / "wh")

    def failing_put(wh, path, table):  # an S3 outage
        raise StorageError("simulated outage")

    monkeypatch.setattr(writer_mod, "put_table", failing_put)
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _attempt in range(2):
            try:
                flusher.flush(seg)
            except StorageError:
                pass
            else:
                pytest.fail("the write did not fail")
            assert not (tmp_path / "spill").exists()
            # (an I/O thread of Arrow's IPC reader may hold the file a moment longer: a 5 s
            # bound, where a reference cycle would hold it until the collector runs)
            assert _unmapped_soon(tmp_path / "spill")
    finally:
        if collecting:
            gc.enable()


def test_spill_keeps_arrival_order_and_unifies_dictionaries(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "spill")
    dt0 = pa.scalar(T0 // 10**6, pa.timestamp("ms"))
    for part, (names, times) in enumerate([(["b", "a", "b"], [3, 1, 2]), (["a", "c"], [0, 5])]):
        table = pa.table(
            {
                "timestamp": pa.array([dt0.value + t for t in times], pa.timestamp("ms")),
                "service": pc.dictionary_encode(pa.array(names)),
                "image": pc.dictionary_encode(pa.array([f"img{part}-{i}" for i in times])),
            }
        )
        spill.add("container_logs", table)
    objects = list(spill.objects())
    assert [(o.service, o.part) for o in objects] == [("a", 0), ("b", 0), ("c", 0)]
    a = objects[0].rows
    assert a["image"].to_pylist() == ["img0-1", "img1-0"]  # arrival order, sorted at write
    first = a["image"].chunks[0].dictionary
    assert all(chunk.dictionary.equals(first) for chunk in a["image"].chunks)  # unified
    spill.close()
    assert not (tmp_path / "spill").exists()


def test_spilled_rows_are_read_back_as_views_of_the_file(tmp_path: Path) -> None:
    """The objects' rows are the spill file's pages (memory-mapped), not a copy in Arrow's
    memory; they stay readable after close() deletes the files (close runs in a ``finally``:
    nothing should reach the rows then, but a view must never point at freed memory), and
    the file is unmapped with the last of them (the process maps the objects being written,
    not a whole segment's spill)."""
    n = 40_000
    names = ["recipe", "cart"] * (n // 2)
    messages = [f"line {i} " + "x" * 60 for i in range(n)]
    table = pa.table(
        {
            "timestamp": pa.array([T0 // 10**6 + i for i in range(n)], pa.timestamp("ms")),
            "service": pc.dictionary_encode(pa.array(names)),
            "message": pa.array(messages),
        }
    )
    folder = tmp_path / "spill"
    spill = Spill(folder)
    spill.add("container_logs", table)
    for obj in spill.objects():  # as write_objects takes them: one after another
        assert obj.rows.num_rows == n // 2
        assert str(folder) in Path("/proc/self/maps").read_text()
    del obj
    assert _unmapped_soon(folder)  # the spill is still open
    before = pa.total_allocated_bytes()
    objects = list(spill.objects())
    assert pa.total_allocated_bytes() - before < table.nbytes // 20
    assert str(folder) in Path("/proc/self/maps").read_text()
    spill.close()
    assert not folder.exists()
    assert [o.service for o in objects] == ["cart", "recipe"]
    for obj in objects:
        expected = [m for m, name in zip(messages, names, strict=True) if name == obj.service]
        assert obj.rows["message"].to_pylist() == expected
    del objects, obj
    assert _unmapped_soon(folder)


def _unmapped_soon(folder: Path) -> bool:
    """Whether no page of ``folder``'s files is mapped within 5 s. Arrow's IPC reader runs
    on its I/O threads, and a task there can hold the mapped file a moment after the read
    returned: on a loaded machine (CI) the last reference went a little after the rows."""
    deadline = time.monotonic() + 5
    while str(folder) in Path("/proc/self/maps").read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("pieces", [[[1, 2], [3, 5]], [[4, 6], [1, 5]], [[2], [], [2, 3]]])
def test_objects_are_written_sorted_by_time_whatever_the_order_of_pieces(
    tmp_path: Path, pieces: list[list[int]]
) -> None:
    wh = open_warehouse(str(tmp_path), create=True)
    base = T0 // 10**6
    batches = [
        pa.record_batch(
            {
                "timestamp": pa.array([base + t for t in times], pa.timestamp("ms")),
                "message": pa.array([f"piece{i}-{t}" for t in times], pa.string()),
            }
        )
        for i, times in enumerate(pieces)
    ]
    obj = writer_mod.PartitionObject(
        "container_logs", "svc", "2026-11-28-10", 0, pa.Table.from_batches(batches)
    )
    (written,) = writer_mod.write_objects(wh, [obj], lambda part: f"x-{part}.parquet")
    got = pq.read_table(written.path)
    want = sorted((t, f"piece{i}-{t}") for i, times in enumerate(pieces) for t in times)
    assert list(
        zip(got["timestamp"].cast(pa.int64()).to_pylist(), got["message"].to_pylist(), strict=True)
    ) == [(base + t, m) for t, m in want]


@pytest.mark.usefixtures("small_slices")
def test_a_replay_that_writes_fewer_objects_deletes_the_crashed_attempts_extra_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash between the data objects and the ledger entry, then a replay that drops the
    rows a peer committed (here: every row of one service): the objects the crashed attempt
    wrote for that service must go, or its rows would be stored twice."""
    frames, per_frame = 6, 50
    seg = Segment(3, tmp_path / segment_name(3))
    total = write_segment(seg.path, frames=frames, per_frame=per_frame)
    wh_dir = tmp_path / "wh"
    flusher = make_flusher(tmp_path, wh_dir)

    def crash(*_args: object) -> None:
        raise StorageError("killed before the ledger entry")

    monkeypatch.setattr(flusher.ledger, "record", crash)
    with pytest.raises(StorageError):
        flusher.flush(seg)
    assert any("service=cart" in str(p) for p in data_files(wh_dir))
    assert list((tmp_path / "flushing").glob("*.json")), "the attempt noted its keys first"
    monkeypatch.undo()

    cart = [
        f * per_frame + i + 1  # the offsets of the cart rows (see write_segment)
        for f in range(frames)
        for i in range(per_frame)
        if SERVICES[(f + i) % len(SERVICES)] == "cart"
    ]
    peer = pa.table({"source_id": ["src-1"] * len(cart), "offset": pa.array(cart, pa.int64())})
    result = flusher.flush(seg, Committed(peer))
    assert result.duplicates == len(cart)
    files = data_files(wh_dir)
    assert not [p for p in files if "service=cart" in str(p)], "the stale cart objects are gone"
    assert sum(pq.read_metadata(p).num_rows for p in files) == total - len(cart)
    assert not list((tmp_path / "flushing").glob("*.json"))


@pytest.mark.usefixtures("small_slices")
def test_a_replay_without_a_note_removes_this_segments_objects_it_does_not_write(
    tmp_path: Path,
) -> None:
    """A segment that crashed mid-flush under a version that wrote one object per slice (and
    no notes): its extra slice objects are found by listing and deleted by the replay."""
    seg = Segment(4, tmp_path / segment_name(4))
    total = write_segment(seg.path, frames=6, per_frame=50)
    wh_dir = tmp_path / "wh"
    make_flusher(tmp_path / "old", wh_dir).flush(seg)  # objects ...-0000 per partition
    first = data_files(wh_dir)
    for path in first:  # what the older version's later slices left
        (path.parent / path.name.replace("-0000.parquet", "-0003.parquet")).write_bytes(
            path.read_bytes()
        )
    other = first[0].parent / "node-b-0000000000000004-0000.parquet"  # another node's: kept
    other.write_bytes(first[0].read_bytes())
    for ledger_file in wh_dir.rglob(entry_name("node-a", 4)):
        ledger_file.unlink()  # the old version crashed before its ledger entry

    result = make_flusher(tmp_path, wh_dir).flush(
        seg,
        Committed(
            pa.table({"source_id": pa.array([], pa.string()), "offset": pa.array([], pa.int64())})
        ),
    )
    assert result.records == total and result.duplicates == 0
    files = data_files(wh_dir)
    assert sorted(files) == sorted([*first, other]), "the planned objects stay, -0003 are gone"
    assert sum(pq.read_metadata(p).num_rows for p in files if p != other) == total


@pytest.mark.usefixtures("small_slices")
def test_a_note_of_another_warehouse_deletes_nothing_outside_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt at warehouse A fails after writing some objects; the segment is then drained
    into warehouse B (``drain --warehouse B``, or a restart with another ``--warehouse``). The
    note's keys are paths of A: B's flush must not delete them (on S3 they were relative paths,
    which a local warehouse read as folders under the current directory)."""
    seg = Segment(5, tmp_path / segment_name(5))
    total = write_segment(seg.path, frames=6, per_frame=50)
    first = make_flusher(tmp_path, tmp_path / "wh-a")

    def crash(*_args: object) -> None:
        raise StorageError("S3 refused the ledger entry")

    monkeypatch.setattr(first.ledger, "record", crash)
    with pytest.raises(StorageError):
        first.flush(seg)
    monkeypatch.undo()
    in_a = digest(tmp_path / "wh-a")
    assert in_a

    result = make_flusher(tmp_path, tmp_path / "wh-b").flush(seg)
    assert result.records == total
    assert digest(tmp_path / "wh-a") == in_a, "warehouse A's objects are not touched"
    assert sum(pq.read_metadata(p).num_rows for p in data_files(tmp_path / "wh-b")) == total
    assert not list((tmp_path / "flushing").glob("*.json"))


def test_a_retry_after_the_offsets_save_failed_only_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segment is committed (objects, ledger entry) and its marks raised, then saving the
    marks fails (a full buffer disk). The retry must not flush again: with the marks raised it
    would drop every row as resent and replace the ledger entry, which peers read to skip
    lines they replay, with an empty one."""
    seg = Segment(6, tmp_path / segment_name(6))
    total = write_segment(seg.path, frames=3, per_frame=50)
    wh_dir = tmp_path / "wh"
    flusher = make_flusher(tmp_path, wh_dir)
    save = OffsetState.save

    def disk_full(self: OffsetState) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OffsetState, "save", disk_full)
    with pytest.raises(OSError):
        flusher.flush(seg)
    monkeypatch.setattr(OffsetState, "save", save)
    ledger = [p for p in wh_dir.rglob(f"*{entry_name('node-a', 6)}*") if p.is_file()]
    assert len(ledger) == 1 and pq.read_metadata(ledger[0]).num_rows == total

    result = flusher.flush(seg)
    assert pq.read_metadata(ledger[0]).num_rows == total, "the ledger entry keeps its lines"
    assert result.records == total and result.duplicates == 0 and len(result.files) == 6
    assert sum(pq.read_metadata(p).num_rows for p in data_files(wh_dir)) == total
    reloaded = OffsetState(tmp_path / OFFSETS_NAME).load()
    assert not reloaded.keep_mask(pa.array(["src-1"]), pa.array([total], pa.int64()))[0].as_py()


_DECODE_SLICES = """
import os
import sys
from pathlib import Path

from aggregator.buffer import read_frames
from aggregator.flusher import SLICE_ROWS, _slices
from bench.procfs import status_kib

path = Path(sys.argv[1])
frames = list(read_frames(path, path.stat().st_size))  # the segment's bytes, read once
Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from here
before = status_kib(os.getpid(), "VmRSS")
rows = sum(t.num_rows for t in _slices(iter(frames), SLICE_ROWS))
print(rows, (status_kib(os.getpid(), "VmHWM") - before) // 1024)
"""


def test_a_slice_of_many_one_line_frames_takes_memory_for_its_rows(tmp_path: Path) -> None:
    """A slice is cut by rows, and quiet sources send one-line messages: decoded together,
    12,000 one-line frames (one slice) took ~27 KB each (their schemas, dictionaries and
    arrays), ~320 MiB for a table of 3 MiB. Decoded a few hundred at a time they take what
    their rows take. (Run in a fresh process: its peak RSS is the measure.)

    5,000 frames are enough to tell the two apart, at half the CPU of 12,000 (writing the
    segment is most of it): decoded together they grow RSS by ~136 MiB, a few hundred at a
    time by ~15 MiB (as for 12,000: what stays is one group's decoding and the allocator's)."""
    seg = tmp_path / segment_name(1)
    assert write_segment(seg, frames=5_000, per_frame=1) == 5_000
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_SLICES, str(seg)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rows, grown_mib = int(out[0]), int(out[1])
    assert rows == 5_000
    assert grown_mib < 50, f"decoding one slice of 5,000 frames grew RSS by {grown_mib} MiB"
