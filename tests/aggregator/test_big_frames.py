"""A big buffer frame (a big message's, aggregator/big_messages.py) is checksummed and written in
a worker thread (aggregator/buffer.py, ``WORKER_WRITE_BYTES``): the event loop runs meanwhile,
the frames appended meanwhile are written after it in order, each is acknowledged only once an
fsync covers it, and a seal or a failed write keeps every frame where it belongs.

The threshold is lowered so that a few KiB are a big frame; the big frame's write is held in the
worker (``os.write`` waits for the test) so that the test acts while it is under way."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aggregator import buffer as buffer_module
from aggregator.buffer import Buffer, read_frames
from tests.aggregator.helpers import REAL_FSYNC, REAL_WRITE, is_segment
from tests.aggregator.test_inflight import _run, _until

BIG = b"B" * 5000


class HeldWrites:
    """``os.write`` that holds the writes of big payload bytes to a segment until ``release``
    is set (or fails them with ENOSPC once ``fail`` is set), and notes which thread wrote
    what; ``os.fsync`` of a segment held until ``synced`` is set (and then failed with EIO
    once ``fail_fsync`` is set)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.synced = threading.Event()
        self.synced.set()
        self.fail = False
        self.fail_fsync = False
        self.threads: list[tuple[int, bool]] = []  # (bytes, on the main thread)
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if is_segment(fd):
            self.threads.append((len(data), threading.current_thread() is threading.main_thread()))
            if len(data) >= len(BIG):
                self.entered.set()
                assert self.release.wait(30), "the test never released the write"
                if self.fail:
                    REAL_WRITE(fd, bytes(data)[:100])  # part of the frame, then the disk is full
                    raise OSError(errno.ENOSPC, "No space left on device")
        return REAL_WRITE(fd, data)

    def fsync(self, fd: int) -> None:
        if is_segment(fd):
            assert self.synced.wait(30), "the test never released the fsync"
            if self.fail_fsync:
                self.fail_fsync = False
                raise OSError(errno.EIO, "Input/output error")
        REAL_FSYNC(fd)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldWrites]:
    monkeypatch.setattr(buffer_module, "WORKER_WRITE_BYTES", 1000)
    writes = HeldWrites(monkeypatch)
    yield writes
    writes.release.set()
    writes.synced.set()


@contextlib.asynccontextmanager
async def _started(tmp_path: Path) -> AsyncIterator[Buffer]:
    """A started buffer in ``tmp_path``, closed afterwards."""
    buffer = Buffer(tmp_path / "buf", 1 << 30, 1 << 30)
    buffer.open("node-a")
    buffer.start()
    try:
        yield buffer
    finally:
        await buffer.close()


def _stored(buffer: Buffer) -> list[bytes]:
    return [p for s in buffer.sealed() for p in read_frames(s.path, s.end)]


def test_a_big_frame_is_written_off_the_loop_and_later_frames_wait_behind_it(
    tmp_path: Path, held: HeldWrites
) -> None:
    async def scenario() -> None:
        async with _started(tmp_path) as buffer:
            first = buffer.write(b"small-1", chunk=b"k1")
            big = buffer.write(BIG, chunk=b"kb")
            await _until(held.entered.is_set)  # the loop runs while the big frame is written
            after = [buffer.write(b"small-2", chunk=b"k2"), buffer.write(b"small-3")]
            await first  # an fsync runs beside the big write: the frames before it are acked
            for _ in range(20):
                await asyncio.sleep(0)
            assert not big.done() and not any(f.done() for f in after)
            assert buffer.total_bytes >= len(BIG)  # counted while queued (backpressure)
            held.release.set()
            await asyncio.gather(big, *after)
            segment = await buffer.seal()
            assert segment is not None
            assert list(read_frames(segment.path)) == [b"small-1", BIG, b"small-2", b"small-3"]
            assert buffer.recent_chunks() == [b"k1", b"kb", b"k2"]

    _run(scenario())
    big_writes = [on_main for size, on_main in held.threads if size >= len(BIG)]
    small_writes = [on_main for size, on_main in held.threads if size < 100]
    assert big_writes == [False]  # the big frame's payload: in the worker
    assert small_writes and all(small_writes[:1])  # the first small frame: on the loop


def test_a_big_frame_is_acknowledged_only_once_an_fsync_covers_it(
    tmp_path: Path, held: HeldWrites
) -> None:
    async def scenario() -> None:
        async with _started(tmp_path) as buffer:
            held.synced.clear()
            held.release.set()
            big = buffer.write(BIG)
            await _until(lambda: buffer.active_bytes > len(BIG))  # written, not fsync'd
            for _ in range(20):
                await asyncio.sleep(0)
            assert not big.done()
            held.synced.set()
            await big

    _run(scenario())


def test_a_seal_waits_for_the_big_frame_written_in_the_worker(
    tmp_path: Path, held: HeldWrites
) -> None:
    """The seal must not close the segment's file under the worker's write: the big frame lands
    in the segment sealed, whole, and is acknowledged with it."""

    async def scenario() -> None:
        async with _started(tmp_path) as buffer:
            big = buffer.write(BIG)
            await _until(held.entered.is_set)
            seal = asyncio.create_task(buffer.seal())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not seal.done()
            held.release.set()
            segment = await seal
            await big
            assert segment is not None and list(read_frames(segment.path)) == [BIG]
            later = buffer.write(b"small")  # in the next segment
            await later
            await buffer.seal()
            assert _stored(buffer) == [BIG, b"small"]

    _run(scenario())


def test_a_failed_big_write_fails_only_its_frame(tmp_path: Path, held: HeldWrites) -> None:
    """ENOSPC in the middle of the big frame: its future fails (its client resends it), its
    partial frame is cut off, and the frames queued behind it are written and acknowledged."""

    async def scenario() -> None:
        async with _started(tmp_path) as buffer:
            before = buffer.write(b"small-1")
            big = buffer.write(BIG, chunk=b"kb")
            await _until(held.entered.is_set)
            after = buffer.write(b"small-2", chunk=b"k2")
            held.fail = True
            held.release.set()
            with pytest.raises(OSError, match="No space"):
                await big
            await asyncio.gather(before, after)
            await buffer.seal()
            assert _stored(buffer) == [b"small-1", b"small-2"]
            assert buffer.recent_chunks() == [b"k2"]
            assert buffer.total_bytes == sum(s.size for s in buffer.sealed())

    _run(scenario())


def test_a_failed_fsync_during_a_big_write_fails_it_and_the_frames_around_it(
    tmp_path: Path, held: HeldWrites
) -> None:
    """An fsync fails while the big frame is written in the worker: the segment is cut back to
    its last good fsync only once that write ends (never under it), and every append not
    covered by a good fsync fails with the fsync's error: the frame before the big one, the
    big one and the one queued behind it. Nothing of them is flushed; the next append goes to
    a new segment."""

    async def scenario() -> None:
        async with _started(tmp_path) as buffer:
            held.synced.clear()
            first = buffer.write(b"small-1", chunk=b"k1")  # its fsync is held, then fails
            big = buffer.write(BIG, chunk=b"kb")
            await _until(held.entered.is_set)
            after = buffer.write(b"small-2", chunk=b"k2")
            held.fail_fsync = True
            held.synced.set()
            for _ in range(20):
                await asyncio.sleep(0)
            assert not first.done()  # not failed (and resent) while its segment may change
            held.release.set()
            for fut in (first, big, after):
                with pytest.raises(OSError, match="Input/output error"):
                    await fut
            await buffer.write(b"later", chunk=b"k3")
            await buffer.seal()
            assert _stored(buffer) == [b"later"]
            assert buffer.recent_chunks() == [b"k3"]

    _run(scenario())
