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

from aggregator import flusher as flusher_mod
from aggregator import service as service_mod
from aggregator.buffer import Segment
from aggregator.config import Settings
from aggregator.ledger import entry_name
from aggregator.service import GuardedBuffer
from shipper import wire
from tests.aggregator.helpers import read_table, record
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
    seg = Segment(9, tmp_path / "0000000000000009.seg")
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
    seg = Segment(4, tmp_path / "0000000000000004.seg")
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
    monkeypatch.setattr(service_mod, "disk_space", volume)
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
    assert service_mod.disk_reserve_bytes(200_000) == service_mod.DISK_RESERVE_MIN
    assert service_mod.disk_reserve_bytes(16 * MIB) == 16 * MIB
    assert service_mod.disk_reserve_bytes(1 << 30) == service_mod.DISK_RESERVE_MAX
    # a 2 MiB volume keeps most of itself for data (the audit's tmpfs)
    assert service_mod.disk_reserve_bytes(64 * MIB, 2 * MIB) == 256 * 1024


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


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_a_full_volume_withholds_acks_and_fails_healthz_until_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the free space of the buffer volume is what the test says."""
    volume = _Volume(100 * MIB)
    monkeypatch.setattr(service_mod, "disk_space", volume)
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
        assert await _get(mport, "/healthz") == (200, "ok\n")

        volume.free = MIB // 2  # under the 1 MiB reserve (seen within DISK_RECHECK_SECONDS)
        status, body = 0, ""
        while status != 503:
            status, body = await _get(mport, "/healthz")
            await asyncio.sleep(0.05)
        assert f"--buffer-dir {tmp_path / 'buf'}" in body and "acks are withheld" in body
        later = asyncio.ensure_future(_ack(agg.port, "c2", "while full"))
        await asyncio.sleep(1.0)
        assert not later.done(), "no ack while the volume is under the reserve"
        assert (
            "logq_aggregator_buffer_disk_free_bytes 524288.0" in (await _get(mport, "/metrics"))[1]
        )

        volume.free = 100 * MIB  # flushes (or anything) freed space: data flows again
        assert await asyncio.wait_for(later, 60) == {"ack": "c2"}
        assert await _get(mport, "/healthz") == (200, "ok\n")
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
    (buffer_dir / "node-id").write_text("abcdef012345\n")
    (buffer_dir / "last-seq").write_text("1\n")
    left = write_segment(buffer_dir / f"{1:016d}.seg", frames=3, per_frame=20)
    volume = _Volume(MIB // 2)
    monkeypatch.setattr(service_mod, "disk_space", volume)
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
        segment = buffer_dir / f"{1:016d}.seg"
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
