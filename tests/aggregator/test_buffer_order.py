"""test_buffer_faults' random failures, also checking order (sealed list by seq,
each writer's acknowledged frames in the order it wrote them), with pipelined writers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from aggregator.buffer import Buffer, read_frames
from tests.aggregator.test_buffer_faults import RandomDisk, _key

SEEDS = int(os.environ.get("LOGQ_FAULT_SEEDS", "12"))


@pytest.mark.parametrize("seed", range(SEEDS))
@pytest.mark.parametrize("pipeline", [1, 4])
def test_random_failures_keep_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, pipeline: int
) -> None:
    disk = RandomDisk(seed)
    buffer = Buffer(tmp_path / "buf", 4096, 1 << 30)
    acked: list[bytes] = []

    async def writer(w: int) -> None:
        for i in range(0, 60, pipeline):
            futs = []
            for j in range(i, i + pipeline):
                payload = f"w{w}-{j:03d}".encode().ljust(40, b".")
                with contextlib.suppress(OSError):  # a torn write: not acknowledged
                    futs.append((payload, buffer.write(payload, chunk=_key(payload))))
            for payload, fut in futs:
                try:
                    await fut
                    acked.append(payload)
                except OSError:
                    pass
            if disk.writers.random() < 0.3:
                await asyncio.sleep(0)

    async def sealer() -> None:
        for _ in range(40):
            await asyncio.sleep(0)
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
    seqs = [s.seq for s in buffer.sealed()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    stored = [p for s in buffer.sealed() for p in read_frames(s.path, s.end)]
    assert sorted(stored) == sorted(acked)
    for w in range(6):
        mine = [p for p in stored if p.startswith(f"w{w}-".encode())]
        assert mine == sorted(mine), (w, mine)
    assert sorted(buffer.recent_chunks()) == sorted(map(_key, acked))
    buffer.unlock()
    again = Buffer(tmp_path / "buf", 4096, 1 << 30)
    replay = again.open("node-a")
    assert [s.seq for s in replay] == seqs
    assert [p for s in replay for p in read_frames(s.path, s.end)] == stored
    again.unlock()
