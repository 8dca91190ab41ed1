"""Small buffer frames (aggregator/small_frames.py): a message of few rows costs a few hundred
bytes of buffer, not ~4 KB, and a flush gets from them the very table (and writes the very
objects) that Arrow IPC frames of the same messages give; segments of IPC frames written
before small frames existed replay and flush unchanged."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from pathlib import Path

import msgpack
import pyarrow as pa
import pytest

from aggregator import batch as batch_mod
from aggregator import flusher as flusher_mod
from aggregator import small_frames
from aggregator.batch import records_table
from aggregator.buffer import Buffer, Segment, read_frames
from aggregator.chunks import frame_chunk, frame_payload
from aggregator.config import Settings
from aggregator.decode import BUFFER_SCHEMA, DICT_STRING, from_ipc, ipc_rows, records_batch, to_ipc
from aggregator.frames import encode_frame
from aggregator.service import Aggregator
from aggregator.state_files import SEGMENT_SUFFIX, segment_name
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.aggregator.test_flusher import digest, make_flusher
from tests.aggregator.test_quarantine import flush_buffer

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns
LINE = '10.0.0.7 - - [28/Nov/2026:10:00:00 +0000] "GET /api/v1/items/42 HTTP/1.1" 200 512 "-"'


def shipper_batch(rows: int, first: int = 0, source: str = "src-1") -> pa.RecordBatch:
    """A logq-shipper message of ``rows`` lines with offsets ``first + 1`` onward."""
    records = [
        record(
            f"{LINE} {first + i}",
            ("recipe", "cart")[(first + i) % 2],
            **{
                wire.KEY_SOURCE_ID: source,
                wire.KEY_OFFSET: first + i + 1,
                wire.KEY_IMAGE: "registry.example/recipe:1.2.3",
                wire.KEY_CONTAINER_ID: "c0ffee" * 10,
            },
        )
        for i in range(rows)
    ]
    times = pa.array([T0 + (first + i) * 10**9 for i in range(rows)], pa.int64())
    return records_batch("logq.recipe", times, records)


def odd_batches() -> list[pa.RecordBatch]:
    """Batches whose columns a compact encoding could get wrong: NULL metadata (an empty
    dictionary), a dictionary with a value no row uses and values out of order of appearance,
    one with a value twice, NULL offsets and lines, non-ASCII text, an empty batch, another
    tag."""
    other = {"tag": "app.other", "time_ns": T0, "log": "ünïcödé ✓", "stream": "stderr"}
    plain = pa.RecordBatch.from_pylist(
        [other, {"tag": "app.other", "time_ns": T0 + 1, "log": None, "offset": None}],
        schema=BUFFER_SCHEMA,
    )
    dictionary = pa.DictionaryArray.from_arrays(
        pa.array([1, None, 0], pa.int32()), pa.array(["b", "a", "unused"])
    )
    columns = [
        pa.array(["t", "t", "t"], DICT_STRING),
        pa.array([T0, T0 + 2, T0 + 1], pa.int64()),
        pa.array(["x", "y", "z"]),
        pa.nulls(3, DICT_STRING),  # stream: no dictionary at all
        *[dictionary] * (len(BUFFER_SCHEMA) - 5),
        pa.array([7, None, 9], pa.int64()),
    ]
    crafted = pa.RecordBatch.from_arrays(columns, schema=BUFFER_SCHEMA)
    twice = pa.DictionaryArray.from_arrays(pa.array([0, 1, 1], pa.int32()), pa.array(["a", "a"]))
    doubled = crafted.set_column(4, BUFFER_SCHEMA.field(4), twice)  # kept as is when alone
    return [plain, crafted, doubled, pa.RecordBatch.from_pylist([], schema=BUFFER_SCHEMA)]


@pytest.mark.parametrize("rows", [1, 2, 4, small_frames.MAX_ROWS])
def test_a_small_message_takes_a_few_hundred_bytes_of_buffer(rows: int) -> None:
    """An IPC frame held its schema and nine dictionaries whatever its rows: 3.9 KB for one
    line of a logq-shipper message (the documented 260 B a line only held for big messages)."""
    batch = shipper_batch(rows)
    payload = frame_payload(batch, "none", bytes(16))
    assert len(encode_frame(payload)) <= 250 + 150 * rows
    assert small_frames.is_small(payload)
    assert ipc_rows(payload) == rows
    assert frame_chunk(payload) == bytes(16)
    assert frame_chunk(frame_payload(batch, "none", None)) is None


def test_a_big_message_stays_an_ipc_frame_with_its_compression() -> None:
    batch = shipper_batch(small_frames.MAX_ROWS + 1)
    payload = frame_payload(batch, "zstd", bytes(16))
    assert not small_frames.is_small(payload)
    assert payload == to_ipc(batch, "zstd", {b"logq.chunk": bytes(16).hex().encode()})


def test_a_log_line_forges_no_chunk_key_in_a_small_frame() -> None:
    forged = shipper_batch(2).set_column(
        2, wire.KEY_LOG, pa.array(["logq.chunk" + "f" * 32, bytes(16).hex()])
    )
    assert frame_chunk(frame_payload(forged, "none", None)) is None
    assert frame_chunk(b"\x00\x00\x00\x01" + small_frames.MAGIC + b"\xc1 garbage") is None


@pytest.mark.parametrize("at_once", [256, 3])
def test_small_frames_give_the_table_ipc_frames_give(
    monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    """Small and IPC frames in any mix (runs of small frames cut by IPC ones, and by the
    decoding groups of ``FRAMES_AT_ONCE``) read as the same table, dictionaries included, as
    IPC frames alone; so do single frames (``from_ipc``)."""
    monkeypatch.setattr(batch_mod, "FRAMES_AT_ONCE", at_once)
    batches = [shipper_batch(n, first=10 * i) for i, n in enumerate([1, 2, 3, 40, 1, 17, 5, 1])]
    batches[3:3] = odd_batches()
    ipc = [to_ipc(b) for b in batches]
    small = [small_frames.encode(b, None) for b in batches]
    mixed = [
        s if s is not None and i % 3 else p for i, (s, p) in enumerate(zip(small, ipc, strict=True))
    ]
    assert sum(map(small_frames.is_small, mixed)) >= 5
    expected = records_table(ipc)
    assert records_table(mixed).equals(expected, check_metadata=True)
    assert records_table([s or p for s, p in zip(small, ipc, strict=True)]).equals(expected)
    for payload, b in zip(mixed, batches, strict=True):
        assert from_ipc(payload).equals(pa.Table.from_batches([b]), check_metadata=True)


@pytest.mark.parametrize("slice_rows", [100_000, 5])
def test_a_segment_mixing_old_and_small_frames_flushes_the_same_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_rows: int
) -> None:
    """A segment of an upgraded node: IPC frames written before the upgrade, then small and big
    frames, and a resent message (same source and offsets, dropped by the dedup). It flushes
    to exactly the rows sent, once each, and to the same objects byte for byte as the same
    messages in IPC frames only; also cut into slices of a few rows and decoding groups of
    three frames (runs of small frames split across them)."""
    if slice_rows < 100_000:
        monkeypatch.setattr(flusher_mod, "SLICE_ROWS", slice_rows)
        monkeypatch.setattr(flusher_mod, "FRAMES_AT_ONCE", 3)
        monkeypatch.setattr(batch_mod, "FRAMES_AT_ONCE", 3)
    sizes = [3, 1, 30, 2, 1, 1, 17, 4, 1, 2]
    batches, first = [], 0
    for n in sizes:
        batches.append(shipper_batch(n, first=first))
        first += n
    batches.append(shipper_batch(2, first=5))  # a resend of offsets 6 and 7
    old = [to_ipc(b) for b in batches]
    new = old[:3] + [frame_payload(b, "none", None) for b in batches[3:]]
    assert sum(map(small_frames.is_small, new)) == 7
    results = {}
    for name, payloads in (("old", old), ("new", new)):
        seg = Segment(5, tmp_path / name / segment_name(5))
        (tmp_path / name / "state").mkdir(parents=True)
        seg.path.write_bytes(b"".join(map(encode_frame, payloads)))
        assert list(read_frames(seg.path, seg.end)) == payloads
        result = make_flusher(tmp_path / name / "state", tmp_path / name / "wh").flush(seg)
        results[name] = (result.records, result.duplicates, digest(tmp_path / name / "wh"))
    assert results["new"] == results["old"]
    assert results["new"][:2] == (sum(sizes) + 2, 2) and results["new"][2]  # 2 dropped


def test_the_replay_reads_the_sources_of_big_frames_a_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's reconciliation (``Flusher.sources``) reads the segments a flush's slice of
    records at a time, as it read them one frame at a time before small frames: not
    ``FRAMES_AT_ONCE`` frames whatever their size (256 of Fluentd's 8 MB messages: gigabytes,
    at the restart after a crash)."""
    monkeypatch.setattr(flusher_mod, "SLICE_ROWS", 1_000)
    frames = [to_ipc(shipper_batch(1_000, 1_000 * i, f"src-{i}")) for i in range(40)]
    seg = Segment(1, tmp_path / segment_name(1))
    seg.path.write_bytes(b"".join(map(encode_frame, frames)))
    flusher = make_flusher(tmp_path, tmp_path / "wh")
    tracemalloc.start()
    try:
        assert flusher.sources([seg]) == {f"src-{i}" for i in range(40)}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(frames[0]), (peak, len(frames[0]))  # a few frames, not all 40


def test_frames_whose_columns_do_not_match_their_rows_fail_as_a_run_too() -> None:
    """A run of small frames is decoded as one: a frame one line short and the next one long
    (damaged before its checksum, or another version's) must fail as each fails alone, not
    shift a line into its neighbour's row (source, offset, time)."""
    first, second = (small_frames.encode(shipper_batch(2, 2 * i), None) for i in range(2))
    assert first is not None and second is not None
    columns = msgpack.unpackb(first[8:]), msgpack.unpackb(second[8:])
    columns[0][3].append(columns[1][3].pop(0))  # the log column: 3 values, then 1
    shifted = [f[:8] + msgpack.packb(c) for f, c in zip((first, second), columns, strict=True)]
    for payload in shifted:
        with pytest.raises(ValueError):  # alone: its arrays' lengths differ
            from_ipc(payload)
    with pytest.raises(ValueError, match="small buffer frame of 2 rows"):
        records_table(shifted)
    wide = first[:8] + msgpack.packb([*msgpack.unpackb(first[8:]), [None, None]])
    with pytest.raises(ValueError, match="holds 13 columns"):
        records_table([wide])


def test_a_damaged_small_frame_is_reported_or_set_aside_and_its_neighbours_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replayed segments of small frames: in segment 2 a frame that passes its checksum but
    does not decode (a mapping, not columns), in segment 3 one the disk damaged (its checksum
    fails). The restart's key scan reads past both; segment 2 alone is set aside (the replay's
    reading of every segment's sources must not fail segment 1's flush for it); segment 3
    loses the damaged frame only, with an ERROR. Every other line is flushed once."""
    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    sent: dict[int, list[list[str]]] = {}
    for seq in (1, 2, 3):
        batches = [shipper_batch(2, 100 * seq + 2 * i, f"src-{seq}") for i in range(3)]
        payloads = [frame_payload(b, "none", bytes([seq, i]) * 8) for i, b in enumerate(batches)]
        if seq == 2:
            payloads[1] = payloads[1][:8] + msgpack.packb({"not": "columns"})
        frames = [encode_frame(p) for p in payloads]
        if seq == 3:
            frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
        (buffer_dir / segment_name(seq)).write_bytes(b"".join(frames))
        sent[seq] = [b[wire.KEY_LOG].to_pylist() for b in batches]

    async def restart_key_scan() -> list[bytes]:
        buffer = Buffer(buffer_dir, 1 << 20, 1 << 30)
        buffer.open()
        buffer.start()
        try:
            return buffer.recent_chunks()
        finally:
            await buffer.close()

    keys = asyncio.run(restart_key_scan())
    assert bytes([2, 1]) * 8 not in keys and len(keys) == 7  # all but the two damaged frames
    agg = Aggregator(Settings(warehouse=warehouse, buffer_dir=str(buffer_dir)))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(asyncio.wait_for(flush_buffer(agg), 60))
    assert (buffer_dir / "quarantine" / segment_name(2)).exists()
    assert agg.metrics.quarantined._value.get() == 1
    assert f"{segment_name(3)}: the frame at offset" in caplog.text
    flushed = read_table(warehouse, "container_logs")["message"].to_pylist()
    expected = [
        line for seq, i in [(1, 0), (1, 1), (1, 2), (3, 0), (3, 2)] for line in sent[seq][i]
    ]
    assert sorted(flushed) == sorted(expected)


@pytest.mark.integration
def test_a_kill_9_replays_old_and_small_frames_and_dedups_their_resends(
    tmp_path: Path,
) -> None:
    """A node upgraded with an unflushed segment of IPC frames takes small messages, is killed
    (kill -9) before any flush, restarts, and gets every message again (its clients never saw
    the acks): the warehouse holds each line once, old and new."""
    from aggregator.buffer import Buffer

    now = time.time_ns()

    def message(first: int, rows: int, chunk: bool) -> bytes:
        """Resends of a message with a chunk are told by its id (acked, not stored again); of
        one without, by their source and offsets (stored, then dropped at the flush)."""
        entries = [
            (now + first + i, record(f"line-{first + i}", **_from(first + i))) for i in range(rows)
        ]
        options = {"chunk": f"c{first}"} if chunk else {}
        return wire.pack(["logq.recipe", wire.pack_entries(entries), options])

    old = records_batch(
        "logq.recipe",
        pa.array([now - 5, now - 4], pa.int64()),
        [record(f"old-{i}", **_from(i, "src-old")) for i in range(2)],
    )

    async def write_old_segment() -> None:
        buffer = Buffer(tmp_path / "agg-buffer", 1 << 20, 1 << 30)
        buffer.open()
        buffer.start()
        await buffer.append(to_ipc(old))  # what the previous version wrote
        await buffer.close()

    asyncio.run(write_old_segment())
    sizes = [(0, 1), (1, 2), (3, 1), (4, 40), (44, 3)]
    messages = [message(first, rows, i % 2 == 0) for i, (first, rows) in enumerate(sizes)]
    agg = start_aggregator(tmp_path, extra=["--flush-interval", "3600"])
    try:
        with agg.connect() as sock:
            for m in messages:
                sock.sendall(m)
            assert read_acks(sock, 3) == ["c0", "c3", "c44"]
        segments = list(agg.buffer_dir.glob(f"*{SEGMENT_SUFFIX}"))
        payloads = [p for s in segments for p in read_frames(s, s.stat().st_size)]
        assert sum(map(small_frames.is_small, payloads)) == 4
        agg.kill9()
        agg = start_aggregator(tmp_path, extra=["--flush-interval", "0.5"])
        with agg.connect() as sock:  # every message again: their acks were lost
            for m in messages:
                sock.sendall(m)
            assert read_acks(sock, 3) == ["c0", "c3", "c44"]
        wait_rows(agg.warehouse, "container_logs", 49, agg, timeout=120)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    expected = ["old-0", "old-1"] + [f"line-{i}" for i in range(47)]
    assert sorted(table["message"].to_pylist()) == sorted(expected)
    assert "42 duplicates dropped" in agg.log_text()  # the resent messages without a chunk
    assert "Traceback" not in agg.log_text()


def _from(offset: int, source: str = "src-kill") -> dict[str, object]:
    return {wire.KEY_SOURCE_ID: source, wire.KEY_OFFSET: offset + 1}
