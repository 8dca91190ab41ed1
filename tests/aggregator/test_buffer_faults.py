"""Random disk failures under concurrent appends and seals (review R1's stress test): writes
that fail mid-frame, fsyncs and ftruncates that fail. Every acknowledged frame is readable
exactly once (and after a restart), no failed one is, and the chunk ids kept are exactly those
of the acknowledged frames.

Seeded: each failure kind draws from its own ``random.Random``, so a seed replays the same
failures (the counts of acknowledged, failed and torn appends were equal run after run)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aggregator.buffer import Buffer, read_frames
from tests.aggregator.helpers import REAL_FSYNC, REAL_FTRUNCATE, REAL_WRITE, is_segment


class RandomDisk:
    """Segment files whose writes tear (part of the frame, then ENOSPC), fsyncs and ftruncates
    fail (EIO) at random, once :meth:`arm` is called."""

    def __init__(self, seed: int) -> None:
        self.tears, self.fsyncs, self.truncates, self.writers = (
            random.Random(f"{seed}-{kind}") for kind in ("tear", "fsync", "truncate", "writer")
        )
        self.armed = False

    def arm(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = True
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "ftruncate", self.ftruncate)

    def disarm(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        monkeypatch.undo()

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.armed and is_segment(fd) and self.tears.random() < 0.08:
            REAL_WRITE(fd, bytes(data)[: self.tears.randrange(1, len(data))])
            raise OSError(errno.ENOSPC, "No space left on device")
        return REAL_WRITE(fd, data)

    def fsync(self, fd: int) -> None:
        if self.armed and is_segment(fd) and self.fsyncs.random() < 0.25:
            raise OSError(errno.EIO, "Input/output error")
        REAL_FSYNC(fd)

    def ftruncate(self, fd: int, n: int) -> None:
        if self.armed and is_segment(fd) and self.truncates.random() < 0.3:
            raise OSError(errno.EIO, "Input/output error")
        REAL_FTRUNCATE(fd, n)


def _key(payload: bytes) -> bytes:
    return payload[:16].ljust(16, b"-")


@dataclass
class Run:
    """What a random run did: the buffer after it (closed), and its appends by outcome."""

    buffer: Buffer
    acked: list[bytes] = field(default_factory=list)
    failed: list[bytes] = field(default_factory=list)
    torn: list[bytes] = field(default_factory=list)


def run_random(path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, pipeline: int = 1) -> Run:
    """Six writers append 60 frames each, ``pipeline`` at a time before awaiting them, while a
    sealer seals 40 times, on a disk that fails at random (:class:`RandomDisk`)."""
    disk = RandomDisk(seed)
    run = Run(Buffer(path, 4096, 1 << 30))
    buffer = run.buffer

    async def writer(w: int) -> None:
        for i in range(0, 60, pipeline):
            futs = []
            for j in range(i, i + pipeline):
                payload = f"w{w}-{j:03d}".encode().ljust(40, b".")
                try:
                    futs.append((payload, buffer.write(payload, chunk=_key(payload))))
                except OSError:  # a torn write: refused at once
                    run.torn.append(payload)
            for payload, fut in futs:
                try:
                    await fut
                    run.acked.append(payload)
                except OSError:
                    run.failed.append(payload)
            if disk.writers.random() < 0.3:
                await asyncio.sleep(0)

    async def sealer() -> None:
        for _ in range(40):
            await asyncio.sleep(0)  # a yield: seals interleave with appends and group fsyncs
            with contextlib.suppress(OSError):
                await buffer.seal()

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        disk.arm(monkeypatch)
        try:
            await asyncio.gather(*(writer(w) for w in range(6)), sealer())
        finally:
            disk.disarm(monkeypatch)
            await buffer.close()

    asyncio.run(scenario())
    return run


@pytest.mark.parametrize("seed", range(12))
def test_random_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    run = run_random(tmp_path / "buf", monkeypatch, seed)
    buffer, acked, failed, torn = run.buffer, run.acked, run.failed, run.torn
    assert failed and acked and torn, "every kind of failure was injected"
    stored = [p for s in buffer.sealed() for p in read_frames(s.path, s.end)]
    assert sorted(stored) == sorted(acked), (len(stored), len(acked), len(failed), len(torn))
    assert sorted(buffer.recent_chunks()) == sorted(map(_key, acked))
    buffer.unlock()
    again = Buffer(tmp_path / "buf", 4096, 1 << 30)
    replay = again.open("node-a")
    assert sorted(p for s in replay for p in read_frames(s.path, s.end)) == sorted(acked)
    again.unlock()
