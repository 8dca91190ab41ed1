"""A file opened but never acknowledged, then ``kill -9``, then deleted or compressed while down.

Its checkpoint entry (offset 0) used to reach the disk only with its first acknowledgement (or a
clean stop): killed before that, the next start did not know the file had existed, and when the
runtime had rotated it away and deleted it (Docker ``max-file``) or compressed it meanwhile, its
lines were lost without a count, a WARNING or a metric. The daemon now saves the registry soon
after a file is opened (:attr:`shipper.checkpoint.Registry.on_new`), so the start knows it:
deleted, it is counted (``deleted_unread``); compressed, it is read from its ``.gz`` copy from
its checkpoint (offset 0) on, and nothing is lost (see :mod:`shipper.held_gz`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import pytest

from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import rotate_docker

pytestmark = pytest.mark.integration

EXTRA = ("--poll-interval", "0.05", "--retry-timeout", "5")
SAVE_TIMEOUT = 5.0
"""Seconds the first run waits for the opened file's entry on disk (it comes at once with the
fix; without it the wait fails)."""


def _files_on_disk(state: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads((state / "checkpoints.json").read_bytes())["files"]
    except FileNotFoundError:
        return {}


def _no_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "lock"]


async def _run_unacked(tmp_path: Path, receiver: Receiver, docker: Path) -> None:
    """The first run: reads and sends the file, no ack comes; once the file's entry is on disk,
    what a ``kill -9`` leaves is copied to ``crashed``."""
    state = tmp_path / "state"
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *EXTRA, docker=docker)))
    run = asyncio.create_task(shipper.run())
    try:
        await until(lambda: receiver.lines() == ["one", "two"])
        await until(lambda: len(_files_on_disk(state)) == 1, timeout=SAVE_TIMEOUT)
        shutil.copytree(state, tmp_path / "crashed", ignore=_no_lock)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        shipper.registry.close()


async def _restart(tmp_path: Path, receiver: Receiver, docker: Path) -> float:
    """The start after the crash, on the crashed state; ``files_lost_total{deleted_unread}``
    once the new live file is shipped."""
    args = shipper_args(tmp_path, receiver, *EXTRA, docker=docker)
    args[args.index(str(tmp_path / "state"))] = str(tmp_path / "crashed")
    shipper = Shipper(load_config(args))
    run = asyncio.create_task(shipper.run())
    await until(lambda: "three" in receiver.lines())
    lost = shipper.metrics.registry.get_sample_value(
        "logq_shipper_files_lost_total", {"service": "app", "reason": "deleted_unread"}
    )
    shipper.request_stop()
    assert await run == 0
    return lost or 0.0


@pytest.mark.parametrize("compress", [False, True], ids=["deleted", "compressed"])
def test_a_file_opened_and_never_acked_then_gone_while_down_is_counted_or_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, compress: bool
) -> None:
    """Deleted: counted once, with a WARNING. Compressed: its lines, never acknowledged, are
    read again from the ``.gz`` (before, counted lost like a deleted file: the copy was read
    again only for a split line or ``--multiline`` record open at its end)."""
    docker = tmp_path / "docker"
    log = make_container(docker, "c" * 64, "app", lines=["one", "two"])
    receiver = Receiver(ack=False)
    try:
        asyncio.run(_run_unacked(tmp_path, receiver, docker))
        # While the shipper is down the runtime rotates: the file read and never acknowledged
        # is compressed (a .gz of a file not read to its end), or rotated once more and
        # deleted by max-file=2.
        for n in range(1 if compress else 2):
            rotate_docker(log, max_file=2, compress=compress)
            log.write_bytes(docker_line(f"next {n}", 10 + n))
        with open(log, "ab") as f:
            f.write(docker_line("three", 20))
        receiver.ack = True
        with caplog.at_level(logging.WARNING, logger="logq.shipper.tailer"):
            lost = asyncio.run(_restart(tmp_path, receiver, docker))
    finally:
        lines = receiver.lines()
        receiver.close()
    warned = [
        r.getMessage() for r in caplog.records if "lines after offset 0 are lost" in r.getMessage()
    ]
    if compress:
        assert lost == 0.0
        assert warned == []
        # Sent by the first run, never acknowledged, and again from the copy before the new
        # file (the aggregator drops what it stored twice).
        assert lines[lines.index("next 0") - 2 :] == ["one", "two", "next 0", "three"]
        return
    assert lost == 1.0
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
