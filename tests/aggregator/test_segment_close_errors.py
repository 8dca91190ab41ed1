"""The group-commit task must outlive an error while it seals a segment aside."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from aggregator.buffer import Buffer
from tests.aggregator.helpers import is_segment
from tests.aggregator.test_torn_write import Disk, _frame, _texts

_REAL_CLOSE = os.close


@pytest.mark.parametrize("how", ["torn-write", "failed-fsync"])
def test_a_close_error_while_sealing_aside_does_not_stop_the_acks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """close(2) may report EIO (NFS/EFS report deferred write errors there; the fd is released
    all the same). Raised out of _cut_back, it ended the group-commit task: no later append
    was ever acknowledged, and (torn write) frames were acked from a segment never sealed."""
    disk = Disk(monkeypatch)
    fail_close: list[int] = []

    def close(fd: int) -> None:
        segment = is_segment(fd)
        _REAL_CLOSE(fd)
        if fail_close and segment:
            fail_close.pop()
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    buffer = Buffer(tmp_path / "buf", 1 << 20, 1 << 30)
    acked: list[str] = []

    async def scenario() -> None:
        buffer.open("node-a")
        buffer.start()
        try:
            await buffer.write(_frame("first"))
            acked.append("first")
            fail_close.append(1)
            if how == "torn-write":
                second = buffer.write(_frame("second"))  # not yet covered by an fsync
                disk.tears, disk.truncates = 1, 2
                with pytest.raises(OSError, match="No space left"):
                    buffer.write(_frame("torn"))
                await second
                acked.append("second")
            else:
                disk.fsyncs, disk.truncates = 1, 1
                with pytest.raises(OSError, match="Input/output error"):
                    await buffer.write(_frame("failed"))
            await asyncio.wait_for(buffer.write(_frame("next")), 5)
            acked.append("next")
        finally:
            await buffer.close()

    asyncio.run(scenario())  # fails now: TimeoutError (the fsync task died), then its OSError
    stored = [t for s in buffer.sealed() for t in _texts(s)]
    assert stored == acked  # every acknowledged frame is sealed for the flusher
