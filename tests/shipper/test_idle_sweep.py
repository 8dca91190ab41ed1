"""The looks at the files of sleeping sources (shipper/idle_sweep.py), without a shipper."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shipper.idle_sweep import IdleSweep, Sleeper, stamp


def sleeper(path: Path, fd: int) -> Sleeper:
    st = os.fstat(fd)
    return Sleeper(fd, stamp(st), path, (st.st_dev, st.st_ino), lambda at: None)


def test_a_sleeper_with_a_shorter_period_does_not_put_off_the_look_due(tmp_path: Path) -> None:
    """A source asking for looks every 0.05 s (rotating fast) joins the sweep just before the
    look the others wait for (every 0.25 s): that look stays where it was, not 0.05 s past
    it -- every file is looked at within its period."""
    path = tmp_path / "a.log"
    path.write_bytes(b"x\n")

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        sweep = IdleSweep()
        fd = os.open(path, os.O_RDONLY)
        try:
            sweep.sleep(asyncio.Event(), sleeper(path, fd), 0.25)
            assert sweep._timer is not None
            due = sweep._timer.when()
            while loop.time() < due - 0.02:
                await asyncio.sleep(0.01)
            sweep.sleep(asyncio.Event(), sleeper(path, fd), 0.05)
            assert sweep._timer is not None
            return due, sweep._timer.when()
        finally:
            sweep.close()
            os.close(fd)

    due, next_look = asyncio.run(scenario())
    assert next_look <= due
