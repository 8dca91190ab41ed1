"""A buffer write that fails mid-frame (a full volume, an I/O error) and whose clean-up cut fails.

Review R1: the partial frame stayed in the segment while the buffer did not count it; later
frames were appended after it, the reader (which skips a damaged frame by scanning for the next
good one) lost the acknowledged frame after it, and a later failed fsync cut the segment at an
offset that ignored it. Now that segment is sealed at the end of its last whole frame (cut
there, or marked with ``<seq>.acked``) and the next append goes to a new segment.

Failures are injected by replacing ``os.write``, ``os.ftruncate`` and ``os.fsync`` with ones
that fail when the test says so; everything else (files, fsyncs, the reader) is real.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aggregator.buffer import Buffer, Segment, end_marker, read_frames
from aggregator.state_files import SEGMENT_SUFFIX
from tests.aggregator.helpers import REAL_FSYNC, REAL_FTRUNCATE, REAL_WRITE, is_segment


class Disk:
    """Failures to inject into segment files: ``tears`` writes that put 10 bytes of their frame
    in the file and then fail, ``truncates`` ftruncates and ``fsyncs`` fsyncs that fail (EIO),
    each counted down. With ``gate`` set, the next segment fsync waits for it first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tears = self.truncates = self.fsyncs = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "ftruncate", self.ftruncate)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.tears and is_segment(fd):
            self.tears -= 1
            REAL_WRITE(fd, bytes(data)[:10])  # part of the frame reaches the file...
            raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk fills
        return REAL_WRITE(fd, data)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncates and is_segment(fd):
            self.truncates -= 1
            raise OSError(errno.EIO, "Input/output error")
        REAL_FTRUNCATE(fd, length)

    def fsync(self, fd: int) -> None:
        if is_segment(fd):
            if self.gate is not None:
                gate, self.gate = self.gate, None
                self.entered.set()
                assert gate.wait(30), "the test never opened the gate"
            if self.fsyncs:
                self.fsyncs -= 1
                raise OSError(errno.EIO, "Input/output error")
        REAL_FSYNC(fd)


def _frame(text: str) -> bytes:
    return text.encode().ljust(100, b".")


def _texts(segment: Segment) -> list[str]:
    return [p.rstrip(b".").decode() for p in read_frames(segment.path, segment.end)]


def _run(directory: Path, steps: Callable[[Buffer], Awaitable[None]]) -> Buffer:
    """A buffer in ``directory``, opened and started, put through ``steps``, then closed."""
    buffer = Buffer(directory, 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await steps(buffer)
        finally:
            await buffer.close()

    asyncio.run(scenario())
    return buffer


def _replayed(directory: Path) -> list[list[str]]:
    """The segments a restart finds, as their frames' texts."""
    again = Buffer(directory, 1 << 20, 1 << 30)
    try:
        return [_texts(s) for s in again.open("node-a")]
    finally:
        again.unlock()


@pytest.mark.parametrize("cut", [True, False], ids=["cut-at-seal", "cut-fails-marked"])
def test_acked_frame_survives_torn_write_then_failed_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool
) -> None:
    """R1's case: a torn write whose cut fails, an acknowledged append, a failed fsync. The
    acknowledged frames are all stored (after a restart too), the failed ones are not."""
    disk = Disk(monkeypatch)

    async def steps(buffer: Buffer) -> None:
        await buffer.write(_frame("first"))
        disk.tears, disk.truncates = 1, 1 if cut else 2  # and the cut at its seal
        with pytest.raises(OSError, match="No space left"):
            buffer.write(_frame("torn"))
        await buffer.write(_frame("acked"))  # in a new segment: acknowledged
        disk.fsyncs = 1
        with pytest.raises(OSError, match="Input/output error"):
            await buffer.write(_frame("failed"))

    buffer = _run(tmp_path / "buf", steps)
    torn, second = buffer.sealed()
    assert [_texts(torn), _texts(second)] == [["first"], ["acked"]]
    assert second.seq == torn.seq + 1
    if cut:
        assert torn.end is None and not end_marker(torn.path).exists()
    else:  # the partial frame is still in the file, after the recorded end
        assert torn.path.stat().st_size == torn.end + 10
        assert end_marker(torn.path).read_text() == f"{torn.end}\n"
    assert _replayed(tmp_path / "buf") == [["first"], ["acked"]]


@pytest.mark.parametrize("fsync_ok", [True, False], ids=["fsync-ok", "fsync-fails"])
def test_a_torn_write_during_a_group_fsync_settles_that_fsync_on_its_own_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_ok: bool
) -> None:
    """The segment is set aside while an fsync of it runs: that fsync's append is acknowledged
    if it succeeds and fails if not, and the new segment's appends are not confused with it."""
    disk = Disk(monkeypatch)

    async def steps(buffer: Buffer) -> None:
        await buffer.write(_frame("acked"))
        gate = disk.gate = threading.Event()
        disk.fsyncs = 0 if fsync_ok else 1
        pending = buffer.write(_frame("pending"))
        assert await asyncio.to_thread(disk.entered.wait, 30)
        disk.tears = disk.truncates = 1
        with pytest.raises(OSError, match="No space left"):
            buffer.write(_frame("torn"))
        after = buffer.write(_frame("after"))  # to the new segment
        gate.set()
        if fsync_ok:
            await pending
        else:
            with pytest.raises(OSError, match="Input/output error"):
                await pending
        await after
        assert buffer.recent_chunks() == []

    buffer = _run(tmp_path / "buf", steps)
    stored = [_texts(s) for s in buffer.sealed()]
    first = ["acked", "pending"] if fsync_ok else ["acked"]
    assert stored == [first, ["after"]]
    assert _replayed(tmp_path / "buf") == [first, ["after"]]


def test_a_torn_first_write_of_a_segment_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)

    async def steps(buffer: Buffer) -> None:
        disk.tears, disk.truncates = 1, 2  # the write's cut and the one at its seal
        with pytest.raises(OSError, match="No space left"):
            buffer.write(_frame("torn"))
        await buffer.write(_frame("next"))

    buffer = _run(tmp_path / "buf", steps)
    [segment] = buffer.sealed()
    assert _texts(segment) == ["next"]
    assert sorted(p.name for p in (tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}")) == [
        segment.path.name
    ]
    assert list((tmp_path / "buf").glob("*.acked")) == []


def test_a_torn_write_whose_cut_works_keeps_appending_to_its_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual case: the partial frame is cut off and the segment goes on."""
    disk = Disk(monkeypatch)

    async def steps(buffer: Buffer) -> None:
        await buffer.write(_frame("first"))
        disk.tears = 1
        with pytest.raises(OSError, match="No space left"):
            buffer.write(_frame("torn"))
        await buffer.write(_frame("second"))

    buffer = _run(tmp_path / "buf", steps)
    [segment] = buffer.sealed()
    assert _texts(segment) == ["first", "second"] and segment.end is None
