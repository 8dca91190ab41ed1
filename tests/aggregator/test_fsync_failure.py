"""A failed fsync of a buffer segment: its unacknowledged frames are never flushed from it.

Audit: when the group fsync (or the fsync at seal) failed, the appends it covered were not acked
(right: their clients resend them), but their frames stayed in the segment, later appends
followed them and a later fsync covered them all, so the flusher wrote them too. Fluent Bit's
and Fluentd's records carry no source offset the flusher could drop the resent copy by: every
line of those messages was stored twice. Now the segment is cut back to its last good fsync and
sealed; when even the cut fails, the good length is kept with the segment and beside it
(``<seq>.acked``) for a restart.

Failures are injected as in test_disk_full.py: ``os.fsync`` is replaced by one that fails on
buffer segments when the test says so; everything else is real.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import service as service_mod
from aggregator.buffer import Buffer, Segment, end_marker, read_frames
from aggregator.chunks import frame_payload
from aggregator.config import Settings
from aggregator.decode import records_batch
from aggregator.state_files import SEGMENT_SUFFIX, segment_name
from shipper import wire
from tests.aggregator.helpers import REAL_FSYNC, REAL_FTRUNCATE, is_segment, read_table, record


class FailingDisk:
    """``os.fsync`` that fails (EIO) the next ``fail`` fsyncs of a buffer segment once armed,
    and ``os.ftruncate`` the next ``truncates``; with ``gate`` set, a failing fsync first waits
    for it (the test appends meanwhile)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fail = 0
        self.failed = 0
        self.truncates = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        monkeypatch.setattr(os, "fsync", self)
        monkeypatch.setattr(os, "ftruncate", self.ftruncate)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncates and is_segment(fd):
            self.truncates -= 1
            raise OSError(errno.EIO, "Input/output error")
        REAL_FTRUNCATE(fd, length)

    def arm(self, cut: bool) -> None:
        """Fail the next fsync of a segment, and if not ``cut``, the cut that follows it."""
        self.fail = 1
        self.truncates = 0 if cut else 1

    def __call__(self, fd: int) -> None:
        if self.fail and is_segment(fd):
            self.fail -= 1
            self.failed += 1
            self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(30), "the test never opened the gate"
                self.gate = None
            raise OSError(errno.EIO, "Input/output error")
        REAL_FSYNC(fd)


#: Chunk keys (16 bytes, as chunks.chunk_key makes them).
ACKED, FAILED, DURING = (name.ljust(16, b"-") for name in (b"acked", b"failed", b"during"))


def _payload(text: str, key: bytes | None = None) -> bytes:
    """A buffer frame's payload as the server writes it: one record, and its message's chunk
    key (the server passes it to ``Buffer.write`` too)."""
    batch = records_batch("fsync.test", pa.array([time.time_ns()], pa.int64()), [record(text)])
    return frame_payload(batch, "none", key)


def _lines(segment: Segment) -> list[str]:
    from aggregator.decode import from_ipc

    return [
        line
        for payload in read_frames(segment.path, segment.end)
        for line in from_ipc(payload)[wire.KEY_LOG].to_pylist()
    ]


@pytest.mark.parametrize("cut", [True, False], ids=["cut-back", "cut-fails-marked"])
def test_frames_of_a_failed_group_fsync_are_not_flushed_nor_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool
) -> None:
    """The appends of the failed fsync and one written while it ran fail; the segment keeps
    only the acknowledged frame (and its chunk key); the next append goes to a new segment.
    When the cut fails too, readers stop at the recorded end, also after a restart."""
    fsync = FailingDisk(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(_payload("acked", ACKED), chunk=ACKED)
            fsync.arm(cut)
            fsync.gate = threading.Event()
            covered = buffer.write(_payload("failed", FAILED), chunk=FAILED)
            assert await asyncio.to_thread(fsync.entered.wait, 30)
            during = buffer.write(_payload("during", DURING), chunk=DURING)  # while it runs
            fsync.gate.set()
            for write in (covered, during):
                with pytest.raises(OSError, match="Input/output error"):
                    await write
            [sealed] = buffer.sealed()
            assert _lines(sealed) == ["acked"]
            assert (sealed.end is None) == cut
            assert buffer.recent_chunks() == [ACKED], "a resend of the others is stored"
            await buffer.write(_payload("resent", FAILED), chunk=FAILED)
        finally:
            await buffer.close()

    asyncio.run(scenario())
    first, second = buffer.sealed()
    assert [_lines(first), _lines(second)] == [["acked"], ["resent"]]
    assert second.seq == first.seq + 1
    if cut:
        assert first.path.stat().st_size == first.size and not end_marker(first.path).exists()
    else:
        assert first.path.stat().st_size > first.end  # the unacknowledged frames are there...
        assert end_marker(first.path).read_text() == f"{first.end}\n"
    stale = tmp_path / "buf" / f"{99:016d}.acked"  # a crash between a segment's and its unlink
    stale.write_text("10\n")
    again = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)  # ...and a restart does not read them
    replay = again.open("node-a")
    assert not stale.exists()
    assert [_lines(s) for s in replay] == [["acked"], ["resent"]]
    assert again.recent_chunks() == [ACKED, FAILED]
    for segment in replay:
        again.delete(segment)
    assert list((tmp_path / "buf").glob("*.acked")) == [], "the marker leaves with its segment"
    again.unlock()


@pytest.mark.parametrize("marker", [b"abc\n", b"\xff\n", "\u00b2\n".encode(), b""])
def test_a_corrupt_end_marker_names_itself_and_what_to_do(tmp_path: Path, marker: bytes) -> None:
    """A marker that holds no byte count (a bad sector, a stray edit) stops the start with the
    file's name and the choice to make; a byte that is not ASCII said only "'ascii' codec can't
    decode byte 0xff" (no file, nothing to do). The segment stays, untouched."""
    folder = tmp_path / "buf"
    buffer = Buffer(folder, 1 << 20, 1 << 30)
    buffer.open("node-a")
    buffer.unlock()
    segment = folder / segment_name(1)
    segment.write_bytes(b"frames")
    end_marker(segment).write_bytes(marker)
    again = Buffer(folder, 1 << 20, 1 << 30)
    with pytest.raises(OSError, match="does not hold a byte count; restore it or") as caught:
        again.open("node-a")
    again.unlock()
    assert str(end_marker(segment)) in str(caught.value)
    assert segment.read_bytes() == b"frames"


def test_a_failed_fsync_with_nothing_acknowledged_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = FailingDisk(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            fsync.fail = 1
            with pytest.raises(OSError, match="Input/output error"):
                await buffer.write(_payload("failed"))
            assert buffer.sealed() == []
            await buffer.write(_payload("next"))
        finally:
            await buffer.close()

    asyncio.run(scenario())
    [segment] = buffer.sealed()
    assert _lines(segment) == ["next"]
    assert sorted(p.name for p in (tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}")) == [
        segment.path.name
    ]


@pytest.mark.parametrize("cut", [True, False], ids=["cut-back", "cut-fails-marked"])
def test_a_seal_whose_fsync_fails_flushes_only_the_acknowledged_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool
) -> None:
    """The fsync at seal fails: the appends it covered fail, and the segment handed to the
    flusher holds the frames acknowledged before (it used to hold them all)."""
    fsync = FailingDisk(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(_payload("acked"))
            pending = buffer.write(_payload("not acked"))
            fsync.arm(cut)
            with pytest.raises(OSError, match="Input/output error"):
                await buffer.seal()  # before the group fsync of "not acked" ran
            with pytest.raises(OSError, match="Input/output error"):
                await pending
            await buffer.write(_payload("next"))
        finally:
            await buffer.close()

    asyncio.run(scenario())
    assert [_lines(s) for s in buffer.sealed()] == [["acked"], ["next"]]


# --- through the server: a client that resends what is not acked ------------------------------


async def _send_until_acked(port: int, chunk: str, message: bytes) -> int:
    """Send ``message`` and wait for its ack; on a connection closed without it, send it again
    on a new one (Fluent Bit, Fluentd). Returns the number of sends."""
    for sends in range(1, 6):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(message)
            await writer.drain()
            unpacker = msgpack.Unpacker(raw=False)
            while data := await reader.read(4096):
                unpacker.feed(data)
                acks = [wire.decode_ack(obj) for obj in unpacker]
                if chunk in acks:
                    return sends
        except ConnectionError:
            pass
        finally:
            writer.close()
    raise AssertionError(f"{chunk} never acked")


def _message(i: int) -> tuple[str, bytes]:
    """Message ``i``: three Fluent Bit-like records (no source id, no offset), with a chunk."""
    chunk = f"chunk-{i}"
    entries = [(time.time_ns(), record(f"m{i} line {n}", service="fsyncfail")) for n in range(3)]
    return chunk, wire.encode_forward("fsync.test", entries, {"chunk": chunk})


@pytest.mark.parametrize(
    ("fails", "truncates"),
    [(1, 0), (2, 0), (1, 1)],
    ids=["cut-back", "cut-unsynced-marked", "cut-refused-marked"],
)
def test_a_client_resending_after_a_failed_fsync_gets_every_line_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: int, truncates: int
) -> None:
    """Fluent Bit-like records (no source offset): the message whose fsync failed is resent
    and stored once; the cut that follows the failure works, or its fsync or itself fails."""
    fsync = FailingDisk(monkeypatch)
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=300,  # one flush, at the stop: no seal in between
    )
    agg = service_mod.Aggregator(settings)
    sends: list[int] = []

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        while not agg.port:
            assert not running.done(), running.result()
            await asyncio.sleep(0.02)
        for i in range(8):
            if i == 4:  # the group fsync of message 4 fails
                fsync.fail, fsync.truncates = fails, truncates
            sends.append(await _send_until_acked(agg.port, *_message(i)))
        agg.stop()
        return await asyncio.wait_for(running, 120)

    assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    assert fsync.failed == fails and sends[4] == 2, sends  # message 4 was resent once
    lines: Any = read_table(settings.warehouse, "container_logs")["message"].to_pylist()
    twice = [line for line, n in collections.Counter(lines).items() if n > 1]
    assert twice == [], "stored twice"
    assert sorted(lines) == sorted(f"m{i} line {n}" for i in range(8) for n in range(3))
