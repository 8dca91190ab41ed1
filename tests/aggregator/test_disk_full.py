"""A full buffer disk must not stop the aggregator for good.

Audit: the buffer on a 2 MiB tmpfs filled up while S3 was down; once S3 was back every flush
failed ``[Errno 28]`` writing the spill (parsed rows parked under the buffer dir), also after a
restart, so the segments that filled the disk could never be committed and deleted. Here the
disk is simulated (tests run without root and without a tiny file system): writes to the spill
folder get a byte budget, then ENOSPC.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregator import diskguard as diskguard_mod
from aggregator import flusher as flusher_mod
from aggregator import service as service_mod
from aggregator.buffer import Segment
from aggregator.config import Settings
from aggregator.diskguard import GuardedBuffer
from aggregator.ledger import entry_name
from aggregator.state_files import LAST_SEQ_NAME, NODE_ID_NAME, SEGMENT_SUFFIX, segment_name
from shipper import wire
from tests.aggregator.helpers import http_get, read_table, record
from tests.aggregator.test_flusher import data_files, make_flusher, write_segment

MIB = 1024 * 1024

_REAL_OSFILE = pa.OSFile


class _FullDisk(io.RawIOBase):
    """A file on a disk with ``budget`` bytes left (shared by every file): then ENOSPC."""

    def __init__(self, path: str, budget: list[int]):
        self._out = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._budget = budget

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self._budget[0]:
            self._out.write(view[: self._budget[0]])
            self._budget[0] = 0
            self._out.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(view)
        return self._out.write(view)

    def close(self) -> None:
        self._out.close()
        super().close()


def _disk_with(monkeypatch: pytest.MonkeyPatch, folder: Path, budget: int) -> list[int]:
    """Files opened for writing under ``folder`` share ``budget`` bytes; reads are real."""
    left = [budget]

    def os_file(path: str, mode: str = "r", **kwargs: Any) -> Any:
        if mode.startswith("w") and Path(path).is_relative_to(folder):
            return _FullDisk(path, left)
        return _REAL_OSFILE(path, mode, **kwargs)

    monkeypatch.setattr(pa, "OSFile", os_file)
    return left


@pytest.fixture(autouse=True)
def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flusher_mod, "SLICE_ROWS", 200)
    monkeypatch.setattr(flusher_mod, "ROUTE_ROWS", 70)


@pytest.mark.parametrize("budget", [0, 40_000], ids=["disk-full", "fills-mid-flush"])
def test_a_flush_whose_spill_hits_enospc_commits_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, budget: int
) -> None:
    seg = Segment(9, tmp_path / segment_name(9))
    total = write_segment(seg.path, frames=12, per_frame=50)
    wh_dir = tmp_path / "wh"
    flusher = make_flusher(tmp_path, wh_dir)
    left = _disk_with(monkeypatch, tmp_path / "spill", budget)

    with caplog.at_level(logging.WARNING, logger="logq.aggregator.spill"):
        result = flusher.flush(seg)

    assert result.records == total and result.duplicates == 0
    files = data_files(wh_dir)
    assert sum(pq.read_metadata(p).num_rows for p in files) == total
    messages = [
        m
        for p in files
        if "container_logs" in str(p)
        for m in pq.read_table(p)["message"].to_pylist()
    ]
    assert messages and len(messages) == len(set(messages)), "no row twice"
    assert flusher.offsets.get("src-1") == total
    assert list(wh_dir.rglob(entry_name("node-a", 9))), "ledger entry written"
    assert not (tmp_path / "spill").exists(), "nothing left on the full disk"
    assert left == [0], "the disk filled up during the flush"
    (warning,) = [r for r in caplog.records if "cannot spill" in r.getMessage()]
    text = warning.getMessage()
    assert str(tmp_path / "spill") in text and "--buffer-dir" in text and "memory" in text


def test_a_spill_folder_that_cannot_be_created_holds_the_rows_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk so full that not even the folder fits (mkdir: ENOSPC)."""
    seg = Segment(4, tmp_path / segment_name(4))
    total = write_segment(seg.path, frames=6, per_frame=50)
    flusher = make_flusher(tmp_path, tmp_path / "wh")
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == tmp_path / "spill":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = flusher.flush(seg)
    assert result.records == total
    assert sum(pq.read_metadata(p).num_rows for p in data_files(tmp_path / "wh")) == total


# --- the disk reserve: appends wait before the disk is too full for a flush -------------------


class _Volume:
    """What ``disk_space`` reports for the buffer dir (free: set by the test; a 1 GiB volume)."""

    def __init__(self, free: int):
        self.free = free

    def __call__(self, directory: Path) -> tuple[int, int]:
        return self.free, 1 << 30


def test_the_buffer_counts_as_full_while_its_volume_is_under_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    volume = _Volume(3 * MIB // 2)  # near the reserve: read again at every check
    monkeypatch.setattr(diskguard_mod, "disk_space", volume)
    heard: list[tuple[str | None, int]] = []
    buffer = GuardedBuffer(tmp_path / "buf", 200_000, 1 << 30, lambda r, f: heard.append((r, f)))

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            assert not buffer.full
            volume.free = MIB - 1
            assert buffer.full, "under the reserve (re-read: near it)"
            assert buffer.disk_low is not None and str(tmp_path / "buf") in buffer.disk_low
            waiting = asyncio.ensure_future(buffer.wait_for_space())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            volume.free = 5 * MIB
            buffer.wake_if_space()
            await asyncio.wait_for(waiting, 30)
            assert not buffer.full and buffer.disk_low is None
        finally:
            await buffer.close()

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        asyncio.run(scenario())
    reasons = [r for r, _ in heard]
    assert reasons[0] is None and any(reasons) and reasons[-1] is None
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "--buffer-dir" in warning and "acks are withheld" in warning


def test_disk_reserve_is_one_segment_within_bounds() -> None:
    assert diskguard_mod.disk_reserve_bytes(200_000) == diskguard_mod.DISK_RESERVE_MIN
    assert diskguard_mod.disk_reserve_bytes(16 * MIB) == 16 * MIB
    assert diskguard_mod.disk_reserve_bytes(1 << 30) == diskguard_mod.DISK_RESERVE_MAX
    # a 2 MiB volume keeps most of itself for data (the audit's tmpfs)
    assert diskguard_mod.disk_reserve_bytes(64 * MIB, 2 * MIB) == 256 * 1024


async def _ack(port: int, chunk: str, text: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        entries = [(time.time_ns(), record(text, service="diskfull"))]
        writer.write(wire.encode_packed_forward("logq.diskfull", entries, chunk=chunk))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = await reader.read(4096)
            assert data, "closed without an ack"
            unpacker.feed(data)
            for obj in unpacker:
                return dict(obj)
    finally:
        writer.close()


def test_a_full_volume_withholds_acks_and_fails_healthz_until_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the free space of the buffer volume is what the test says."""
    volume = _Volume(100 * MIB)
    monkeypatch.setattr(diskguard_mod, "disk_space", volume)
    settings = Settings(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
        segment_bytes=200_000,
    )
    agg = service_mod.Aggregator(settings)

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        while agg.metrics_server is None or not agg.port or agg.metrics_server.port == 0:
            await asyncio.sleep(0.05)
        mport = agg.metrics_server.port
        assert await _ack(agg.port, "c1", "before") == {"ack": "c1"}
        assert await http_get(mport, "/healthz") == (200, "ok\n")

        volume.free = MIB // 2  # under the 1 MiB reserve (seen within DISK_RECHECK_SECONDS)
        status, body = 0, ""
        while status != 503:
            status, body = await http_get(mport, "/healthz")
            await asyncio.sleep(0.05)
        assert f"--buffer-dir {tmp_path / 'buf'}" in body and "acks are withheld" in body
        later = asyncio.ensure_future(_ack(agg.port, "c2", "while full"))
        await asyncio.sleep(1.0)
        assert not later.done(), "no ack while the volume is under the reserve"
        _, metrics = await http_get(mport, "/metrics")
        assert "logq_aggregator_buffer_disk_free_bytes 524288.0" in metrics

        volume.free = 100 * MIB  # flushes (or anything) freed space: data flows again
        assert await asyncio.wait_for(later, 60) == {"ack": "c2"}
        assert await http_get(mport, "/healthz") == (200, "ok\n")
        agg.stop()
        assert await asyncio.wait_for(running, 120) == 0

    asyncio.run(asyncio.wait_for(scenario(), 240))
    table = read_table(settings.warehouse, "container_logs")
    assert sorted(table["message"].to_pylist()) == ["before", "while full"]


def test_a_buffer_dir_too_full_to_open_says_which_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: GuardedBuffer, node_id: str | None = None) -> list[Segment]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GuardedBuffer, "open", full)
    buffer_dir = tmp_path / "buf"
    agg = service_mod.Aggregator(
        Settings(warehouse=str(tmp_path / "wh"), buffer_dir=str(buffer_dir))
    )
    with pytest.raises(OSError, match="do not delete them") as caught:
        agg._open_buffer()
    assert caught.value.errno == errno.ENOSPC
    assert f"--buffer-dir {buffer_dir} is full" in str(caught.value)


def test_an_aggregator_restarted_on_a_full_volume_writes_out_its_segments_then_takes_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The buffer volume filled up (a long S3 outage) and the aggregator restarted: the segments
    it left are what fills the volume, and writing them to the warehouse frees it. It used to
    exit 2 at start (no room for its next segment's state file), so they could never go."""
    from aggregator import buffer as buffer_mod

    buffer_dir = tmp_path / "buf"
    buffer_dir.mkdir()
    (buffer_dir / NODE_ID_NAME).write_text("abcdef012345\n")
    (buffer_dir / LAST_SEQ_NAME).write_text("1\n")
    left = write_segment(buffer_dir / segment_name(1), frames=3, per_frame=20)
    volume = _Volume(MIB // 2)
    monkeypatch.setattr(diskguard_mod, "disk_space", volume)
    real_write_atomic = buffer_mod.write_atomic

    def write_atomic(path: Path, data: bytes) -> None:
        if volume.free < MIB:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_atomic(path, data)

    monkeypatch.setattr(buffer_mod, "write_atomic", write_atomic)
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(buffer_dir),
        flush_interval=0.2,
    )
    agg = service_mod.Aggregator(settings)

    def stored() -> int:
        tables = [read_table(settings.warehouse, t) for t in ("container_logs", "envoy_access")]
        return sum(t.num_rows for t in tables)

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        segment = buffer_dir / segment_name(1)
        while segment.exists():  # the previous run's segment goes out although the disk is full
            assert not running.done(), running.result()
            await asyncio.sleep(0.1)
        assert stored() == left
        later = asyncio.ensure_future(_ack(agg.port, "c1", "after the restart"))
        await asyncio.sleep(1.0)
        assert not later.done(), "no ack while the volume is under the reserve"
        volume.free = 100 * MIB  # what the flush freed
        assert await asyncio.wait_for(later, 60) == {"ack": "c1"}
        agg.stop()
        assert await asyncio.wait_for(running, 120) == 0

    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        asyncio.run(asyncio.wait_for(scenario(), 240))
    assert stored() == left + 1
    logs = read_table(settings.warehouse, "container_logs")["message"].to_pylist()
    assert "after the restart" in logs
    assert f"--buffer-dir {buffer_dir} is full" in caplog.text


# --- a full volume when a segment is sealed (the flush loop used to die of it) -------------------


class _StateFiles:
    """The buffer's small state files (``last-seq``, written before each segment opens) hit
    ENOSPC while ``full`` is set: the one write a seal needs on a full volume."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aggregator import buffer as buffer_mod

        self.full = False
        self.refused = 0
        real = buffer_mod.write_atomic

        def write_atomic(path: Path, data: bytes) -> None:
            if self.full:
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real(path, data)

        monkeypatch.setattr(buffer_mod, "write_atomic", write_atomic)


def _frames(segment: Segment) -> list[bytes]:
    from aggregator.buffer import read_frames

    return list(read_frames(segment.path, segment.end))


def test_a_seal_on_a_full_volume_seals_and_opens_the_next_segment_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit: ENOSPC opening the next segment raised out of seal() before the full one was
    sealed, so nothing was flushed again until a restart."""
    from aggregator.buffer import Buffer

    disk = _StateFiles(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(b"one")
            disk.full = True
            with pytest.raises(OSError) as caught:
                await buffer.seal()
            assert caught.value.errno == errno.ENOSPC
            [first] = buffer.sealed()
            assert _frames(first) == [b"one"], "sealed although the next one cannot open"
            with pytest.raises(OSError):  # still full: the next seal tries again and says so
                await buffer.seal()
            with pytest.raises(OSError):  # an append cannot open one either
                buffer.write(b"lost")
            disk.full = False
            await buffer.write(b"two")  # opens the next segment itself
            second = await buffer.seal()
            assert second is not None and second.seq == first.seq + 1
            assert [_frames(s) for s in buffer.sealed()] == [[b"one"], [b"two"]]
        finally:
            await buffer.close()

    asyncio.run(scenario())
    assert disk.refused >= 3


@pytest.mark.parametrize("full", [False, True])
def test_an_append_during_a_seal_lands_in_a_segment_that_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: bool
) -> None:
    """While a seal waits for its fsync, an append goes to the next segment, or (the volume
    full at the seal, room again since) opens one itself; nothing replaces that segment after
    the fsync (its acked frame would sit in an orphaned file, seen only by a restart: the
    tmpfs reproduction lost a batch that way)."""
    from aggregator.buffer import Buffer

    disk = _StateFiles(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(b"before")
            disk.full = full
            sealing = asyncio.ensure_future(buffer.seal())
            await asyncio.sleep(0)  # the seal now waits for its fsync in a worker thread
            assert not sealing.done()
            disk.full = False
            during = buffer.write(b"during")
            if full:
                with pytest.raises(OSError):
                    await sealing
            else:
                await sealing
            await during
            await buffer.seal()
        finally:
            await buffer.close()

    asyncio.run(scenario())
    assert [_frames(s) for s in buffer.sealed()] == [[b"before"], [b"during"]]
    on_disk = sorted(p.name for p in (tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}"))
    assert on_disk == [s.path.name for s in buffer.sealed()], "no orphaned segment file"


def test_a_seal_whose_fsync_fails_still_hands_its_acknowledged_frames_to_the_flusher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync at seal fails (an I/O error): the appends it should have covered fail (their
    clients resend), but the segment's earlier frames were acknowledged and must be flushed;
    it used to be left out of the sealed list, unseen until a restart. Only those: the others
    are resent (tests/aggregator/test_fsync_failure.py)."""
    import os

    from aggregator.buffer import Buffer

    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)
    real_fsync = os.fsync
    failing: list[int] = []

    def fsync(fd: int) -> None:
        if fd in failing:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(b"acked")
            pending = buffer.write(b"not acked")
            failing.append(buffer._fd)
            monkeypatch.setattr(os, "fsync", fsync)
            with pytest.raises(OSError, match="Input/output error"):
                await buffer.seal()
            monkeypatch.setattr(os, "fsync", real_fsync)
            with pytest.raises(OSError, match="Input/output error"):
                await pending
            await buffer.write(b"next")  # the next segment was opened all the same
        finally:
            await buffer.close()

    asyncio.run(scenario())
    assert [_frames(s) for s in buffer.sealed()] == [[b"acked"], [b"next"]]


def test_close_on_a_full_volume_seals_without_opening_another_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit: SIGTERM with the buffer volume full exited 2 with a bare ENOSPC: close() sealed
    through the path that opens the next segment."""
    from aggregator.buffer import Buffer

    disk = _StateFiles(monkeypatch)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        await buffer.write(b"acked")
        disk.full = True
        await buffer.close()

    asyncio.run(scenario())
    [segment] = buffer.sealed()
    assert _frames(segment) == [b"acked"]
    assert sorted(p.name for p in (tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}")) == [
        segment.path.name
    ]
    again = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)  # the lock was released
    assert [s.seq for s in again.open("node-a")] == [segment.seq]
    again.unlock()


async def _wait_for(check: Any, running: asyncio.Future[int], what: str) -> None:
    """Poll ``check`` until true; fail at once if the aggregator stopped meanwhile."""
    deadline = time.monotonic() + 60
    while not check():
        assert not running.done(), f"the aggregator ended while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} after 60 s"
        await asyncio.sleep(0.05)


def test_the_flush_loop_outlives_a_full_volume_at_seal_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Audit (tmpfs filled by dd for 2.5 s): one ENOSPC at seal ended the flush loop for good,
    silently (/healthz 200, storage_errors_total 0). Now it is logged, counted, reported by
    /healthz (after --unhealthy-after, 0 here) and retried; flushing resumes by itself."""
    disk = _StateFiles(monkeypatch)
    settings = Settings(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
        unhealthy_after=0.0,
    )
    agg = service_mod.Aggregator(settings)

    def stored() -> list[str]:
        if not list((tmp_path / "wh" / "container_logs").rglob("*.parquet")):
            return []
        return sorted(read_table(settings.warehouse, "container_logs")["message"].to_pylist())

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port and agg.metrics_server, running, "start")
        assert agg.metrics_server is not None
        mport = agg.metrics_server.port
        disk.full = True
        assert await _ack(agg.port, "c1", "before") == {"ack": "c1"}
        await _wait_for(lambda: stored() == ["before"], running, "flush of the sealed segment")
        status, body = await http_get(mport, "/healthz")
        assert status == 503 and "cannot seal or open its segments" in body, body
        assert agg.metrics.storage_errors._value.get() >= 1
        disk.full = False  # the space comes back: the next seal opens a segment
        await _wait_for(lambda: agg.metrics.buffer_error is None, running, "recovery")
        assert await http_get(mport, "/healthz") == (200, "ok\n")
        assert await _ack(agg.port, "c2", "after") == {"ack": "c2"}
        await _wait_for(lambda: "after" in stored(), running, "a flush after the recovery")
        agg.stop()
        assert await asyncio.wait_for(running, 120) == 0

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        asyncio.run(asyncio.wait_for(scenario(), 240))
    assert stored() == ["after", "before"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all("No space left on device" in r.getMessage() for r in errors)
    assert len(errors) == 1, "one line per failure, not one per interval"
    assert "takes data again" in caplog.text


def test_sigterm_with_the_buffer_volume_full_flushes_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit: exit 2 with a bare "[Errno 28] No space left on device" and no flush."""
    disk = _StateFiles(monkeypatch)
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=300,
    )
    agg = service_mod.Aggregator(settings)

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        assert await _ack(agg.port, "c1", "acked") == {"ack": "c1"}
        disk.full = True
        agg.stop()
        return await asyncio.wait_for(running, 120)

    assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    assert read_table(settings.warehouse, "container_logs")["message"].to_pylist() == ["acked"]
    assert list((tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}")) == []
