"""A ``--state-dir`` that cannot be written (full disk, read-only mount).

What a Fluent Bit user expects: delivery goes on (at-least-once: lines re-read after a restart
keep their source ids, and the aggregator's per-source offsets drop the ones it stored), but
loudly -- a counter, ``/healthz`` 503 naming the cause, one error line -- and the exit says in
one line that the last checkpoints could not be saved, with status 1.

Before the fix: every source waited for a checkpoint write that never came (shipping stopped
after the first batch), ``/healthz`` said 200, SIGTERM waited the whole ``--retry-timeout`` and
exited 1 with a raw ENOSPC traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.config import load_config
from shipper.daemon import Shipper, main
from shipper.errors import ShipperError
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args

LINES = [f"line-{i}" for i in range(20)]


def _args(tmp_path: Path, receiver: Receiver) -> list[str]:
    (tmp_path / "plain").mkdir(exist_ok=True)
    log = tmp_path / "plain" / "app.log"
    log.write_text("".join(f"{x}\n" for x in LINES))
    return shipper_args(
        tmp_path, receiver, "--path", str(log),
        *("--batch-lines", "2", "--poll-interval", "0.05", "--retry-timeout", "30"),
    )  # fmt: skip


def _full_disk(self: Registry, data: bytes) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_shipping_goes_on_loudly_while_checkpoints_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    cfg = load_config(_args(tmp_path, receiver))
    real_write = Registry.write
    monkeypatch.setattr(Registry, "write", _full_disk)

    async def go() -> None:
        shipper = Shipper(cfg)
        assert shipper.metrics.checkpoint_failures._value.get() == 0  # exists from the start
        run = asyncio.create_task(shipper.run())
        # 10 batches of 2 lines: each waited for a checkpoint write before the fix.
        while len(receiver.records) < len(LINES):
            await asyncio.sleep(0.05)
        assert shipper.metrics.checkpoint_failures._value.get() >= 1
        status, reason = shipper.metrics.health()
        assert status == 503 and "cannot write checkpoints" in reason
        assert "No space left on device" in reason and str(tmp_path / "state") in reason
        # The disk has room again: the next write works and health is back.
        monkeypatch.setattr(Registry, "write", real_write)
        while shipper.metrics.health()[0] != 200:
            await asyncio.sleep(0.05)
        shipper.request_stop()
        assert await run == 0

    try:
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()
    assert receiver.lines() == LINES
    errors = [r for r in caplog.records if "cannot write checkpoints" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR  # not one per retry
    assert "checkpoints written again" in caplog.text
    assert (tmp_path / "state" / "checkpoints.json").exists()


def test_exit_with_unsaved_checkpoints_is_one_line_and_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--once`` finishes its deliveries (no wait for a write that cannot happen) and exits 1
    with one line; the re-sent lines of the next run are dropped by the receiver's dedup."""
    receiver = Receiver()
    try:
        args = [*_args(tmp_path, receiver), "--once"]
        monkeypatch.setattr(Registry, "write", _full_disk)
        assert main(args) == 1
        err = capsys.readouterr().err
        (line,) = [x for x in err.splitlines() if x.startswith("logq-shipper:")]
        assert "cannot save checkpoints" in line and "at exit" in line
        assert "No space left on device" in line and "Traceback" not in err
        assert receiver.lines() == LINES
        # Next start with a working disk: everything is read again, nothing stored twice.
        monkeypatch.undo()
        assert main(args) == 0
        assert receiver.lines() == LINES and receiver.duplicates == len(LINES)
    finally:
        receiver.close()


def test_sigterm_does_not_wait_for_a_write_that_cannot_happen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Follow mode: a stop request ends at once (not after ``--retry-timeout`` = 30 s) with
    the one-line error."""
    receiver = Receiver()
    cfg = load_config(_args(tmp_path, receiver))
    monkeypatch.setattr(Registry, "write", _full_disk)

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        while len(receiver.records) < len(LINES):
            await asyncio.sleep(0.05)
        shipper.request_stop()
        # Far below --retry-timeout: nothing is left waiting for a checkpoint.
        with pytest.raises(ShipperError, match=r"cannot save checkpoints .* at exit"):
            await asyncio.wait_for(run, 10)

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()
