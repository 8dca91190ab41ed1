"""The write-ahead buffer (segments, torn tails, group commit) and the per-source dedup marks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.buffer import Buffer, read_frames
from aggregator.dedup import OFFSETS_NAME, OffsetState
from aggregator.frames import encode_frame
from aggregator.state_files import NODE_ID_NAME, segment_name
from tests.aggregator.test_stop_drain import HeldFsync


def run(coro):
    return asyncio.run(coro)


def test_append_seal_reopen_replays_in_order(tmp_path: Path) -> None:
    async def first_run() -> None:
        buf = Buffer(tmp_path, segment_bytes=1 << 20, limit_bytes=1 << 30)
        assert buf.open() == []
        buf.start()
        await asyncio.gather(*(buf.append(f"m{i}".encode()) for i in range(100)))
        sealed = await buf.seal()
        assert sealed is not None and sealed.seq == 1
        await buf.append(b"after-seal")
        # no close(): the process "dies" here with segment 2 unsealed (the kernel drops its lock)
        buf.unlock()

    run(first_run())
    node = (tmp_path / NODE_ID_NAME).read_text().strip()
    buf = Buffer(tmp_path, 1 << 20, 1 << 30)
    replay = buf.open()
    assert buf.node_id == node
    assert [s.seq for s in replay] == [1, 2]
    assert list(read_frames(replay[0].path)) == [f"m{i}".encode() for i in range(100)]
    assert list(read_frames(replay[1].path)) == [b"after-seal"]
    with pytest.raises(OSError, match="in use by another logq-aggregator"):
        Buffer(tmp_path, 1 << 20, 1 << 30).open()


def test_torn_tail_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seg = tmp_path / segment_name(1)
    good = encode_frame(b"acked")
    seg.write_bytes(good + encode_frame(b"torn-frame")[:-3])
    assert list(read_frames(seg)) == [b"acked"]
    corrupt = bytearray(good + encode_frame(b"flipped"))
    corrupt[-1] ^= 0xFF
    seg.write_bytes(bytes(corrupt))
    assert list(read_frames(seg)) == [b"acked"]
    assert "torn or corrupt" in caplog.text


def test_a_damaged_frame_inside_a_segment_loses_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk damage in an acknowledged frame: the frames after it are still replayed."""
    seg = tmp_path / segment_name(1)
    frames = [encode_frame(f"frame-{i}".encode() * 50) for i in range(5)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 20] ^= 0x01  # one bit in frame 1's payload
    seg.write_bytes(bytes(data))
    assert list(read_frames(seg)) == [f"frame-{i}".encode() * 50 for i in (0, 2, 3, 4)]
    assert "the frame at offset 358 (358 bytes) fails its checksum" in caplog.text
    # The first and the last frames damaged: the last one reads as a torn tail.
    data[len(frames[0]) + 20] ^= 0x01
    data[20] ^= 0x01
    data[-1] ^= 0x01
    seg.write_bytes(bytes(data))
    assert list(read_frames(seg)) == [f"frame-{i}".encode() * 50 for i in (1, 2, 3)]
    assert "the end of the segment" in caplog.text


def test_full_buffer_blocks_until_a_segment_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        buf = Buffer(tmp_path, segment_bytes=1 << 20, limit_bytes=1000)
        buf.open()
        buf.start()
        await buf.append(b"x" * 1200)
        assert buf.full
        sealed = await buf.seal()
        waiter = asyncio.create_task(buf.wait_for_space())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert sealed is not None
        buf.delete(sealed)
        await asyncio.wait_for(waiter, 1)
        assert buf.total_bytes == 0
        await buf.close()

    run(scenario())


def test_a_segment_being_sealed_still_counts_in_the_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a seal's fsync runs (held here: a slow disk), the segment's bytes still count:
    the buffer stays full. They used to leave the count before the fsync and come back after
    it, so connections read past --buffer-limit-bytes for every seal's fsync."""
    disk = HeldFsync(monkeypatch)

    async def scenario() -> None:
        buf = Buffer(tmp_path, segment_bytes=1 << 20, limit_bytes=1000)
        buf.open()
        buf.start()
        await buf.append(b"x" * 1200)
        before = buf.total_bytes
        disk.armed = True
        seal = asyncio.ensure_future(buf.seal())
        try:
            assert await asyncio.to_thread(disk.entered.wait, 30), "no fsync of the seal"
            assert (buf.total_bytes, buf.full) == (before, True)
        finally:
            disk.release.set()
        assert await seal is not None
        assert (buf.total_bytes, buf.full) == (before, True)
        await buf.close()

    run(scenario())


def test_dedup_keeps_new_offsets_and_first_occurrences(tmp_path: Path) -> None:
    state = OffsetState(tmp_path / OFFSETS_NAME)
    sources = pa.array(["a", "a", "a", "b", None, "a", "b", "c"])
    offsets = pa.array([10, 20, 20, 5, 1, 30, None, 7], pa.int64())
    keep = state.keep_mask(sources, offsets).to_pylist()
    assert keep == [True, True, False, True, True, True, True, True]
    state.advance(sources.filter(pa.array(keep)), offsets.filter(pa.array(keep)))
    state.save()
    again = OffsetState(tmp_path / OFFSETS_NAME).load()
    assert (again.get("a"), again.get("b"), again.get("c")) == (30, 5, 7)
    resend = again.keep_mask(pa.array(["a", "a", "b", None]), pa.array([20, 40, 5, 1], pa.int64()))
    assert resend.to_pylist() == [False, True, False, True]


def test_sequence_numbers_are_never_reused(tmp_path: Path) -> None:
    """Object keys derive from segment numbers: after a clean stop (no segment left) the next
    run must not start again at 1, or it would overwrite committed objects."""

    async def one_run() -> int:
        buf = Buffer(tmp_path, 1 << 20, 1 << 30)
        for seg in buf.open():
            buf.delete(seg)
        buf.start()
        await buf.append(b"x")
        sealed = await buf.seal()
        assert sealed is not None
        buf.delete(sealed)  # flushed
        await buf.close()
        return sealed.seq

    seqs = [run(one_run()) for _ in range(3)]
    assert seqs == sorted(set(seqs)), seqs


def test_dedup_matches_the_rule_on_random_batches(tmp_path: Path) -> None:
    """Rising offsets (the usual batch) and shuffled ones with repeats give the rule's answer:
    keep a keyed row when its offset is above its source's mark and it is the first
    occurrence of its (source, offset)."""
    import random

    rng = random.Random(4)
    state = OffsetState(tmp_path / OFFSETS_NAME)
    state.advance(pa.array(["a", "b"]), pa.array([50, 10], pa.int64()))
    for shuffled in (False, True, True):
        rows = [(rng.choice(["a", "b", "c", None]), off) for off in range(0, 200, 3)]
        rows += [(rng.choice(["a", "b"]), None)]
        if shuffled:
            rows += rng.sample(rows, 20)
            rng.shuffle(rows)
        sources = pa.array([s for s, _ in rows], pa.string())
        offsets = pa.array([o for _, o in rows], pa.int64())
        seen: set[tuple[str, int]] = set()
        expected = []
        for s, o in rows:
            if s is None or o is None:
                expected.append(True)
                continue
            mark = state.get(s)
            expected.append((mark is None or o > mark) and (s, o) not in seen)
            seen.add((s, o))
        assert state.keep_mask(sources, offsets).to_pylist() == expected
