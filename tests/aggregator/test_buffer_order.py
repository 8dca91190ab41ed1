"""test_buffer_faults' random failures, also checking order (sealed list by seq,
each writer's acknowledged frames in the order it wrote them), with pipelined writers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aggregator.buffer import Buffer, read_frames
from tests.aggregator.test_buffer_faults import _key, run_random

SEEDS = int(os.environ.get("LOGQ_FAULT_SEEDS", "12"))


@pytest.mark.parametrize("seed", range(SEEDS))
@pytest.mark.parametrize("pipeline", [1, 4])
def test_random_failures_keep_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, pipeline: int
) -> None:
    run = run_random(tmp_path / "buf", monkeypatch, seed, pipeline)
    buffer, acked = run.buffer, run.acked
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
