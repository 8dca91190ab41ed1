"""A source that fails gives back every byte of ``--max-inflight-bytes`` it held.

One broken file must not stop the others: the daemon logs "source failed, will retry in N
s" and starts it again. Its reader and sender were cancelled with bytes counted in the
window: the batch in the queue, the batch the reader was handing over, the room reserved for
its next read. Before, those stayed counted for good, up to three batches a failure, so a file
failing at every scan filled the window and every source stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from shipper import daemon
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.source import SourceRunner
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

LINES = 400
BATCH = 2048


def test_a_failed_source_gives_its_window_bytes_back_and_its_restart_ships_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [f"line-{i:04d} " + "x" * 100 for i in range(LINES)]
    root = tmp_path / "containers"
    make_container(root, "f" * 64, "app", lines=texts)
    receiver = Receiver()
    args = ("--batch-bytes", str(BATCH), "--poll-interval", "0.02", "--discover-interval", "0.2")
    cfg = load_config(shipper_args(tmp_path, receiver, *args, docker=root))
    real = SourceRunner._deliver
    failures: list[int] = []
    held_at_failure: list[int] = []

    async def deliver(self: SourceRunner, batch):  # type: ignore[no-untyped-def]
        if len(failures) < 3 and receiver.lines():
            # A failure once batches went out, with the next ones read: the reader holds the
            # queue's batch and the one it hands over (the queue is full), or the room
            # reserved for its next read.
            await until(self.queue.full, timeout=10)
            await asyncio.sleep(0.1)  # the reader reserves room for its next read, or waits
            failures.append(batch.lines)  # with the batch it read (the queue is full)
            held_at_failure.append(self.shipper.window.used - batch.nbytes)  # beside this one
            raise RuntimeError("a broken file")
        return await real(self, batch)

    monkeypatch.setattr(SourceRunner, "_deliver", deliver)
    # A failed source's retry backs off up to the full-scan delay: keep it short.
    monkeypatch.setattr(daemon, "FULL_SCAN_SECONDS", 0.3)

    async def go() -> int:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        try:
            await until(lambda: len(set(receiver.lines())) == LINES, timeout=60)
            with contextlib.suppress(TimeoutError):  # (the source's last acks land)
                await until(lambda: shipper.window.used == 0, timeout=5)
            return shipper.window.used
        finally:
            shipper.request_stop()
            await run

    used = asyncio.run(asyncio.wait_for(go(), 120))
    assert len(failures) == 3, failures
    assert min(held_at_failure) > BATCH  # each failure: more than the queued batch counted
    assert used == 0, f"{used} bytes still counted with every line acknowledged"
    assert sorted(set(receiver.lines())) == sorted(texts)
    assert caplog.text.count("source failed, will retry in 0.3 s") == 3
