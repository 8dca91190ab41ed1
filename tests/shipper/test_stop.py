"""Stopping the shipper: SIGTERM / Ctrl-C wait for the acks in flight, a second one does not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until


def test_a_second_stop_request_exits_without_waiting_for_acks(tmp_path: Path) -> None:
    """The first SIGTERM/Ctrl-C waits up to --retry-timeout for the in-flight acks; a second
    one exits at once (it was ignored: a shipper whose aggregator never acks kept the terminal
    for the whole --retry-timeout)."""
    docker = tmp_path / "docker"
    make_container(docker, "d" * 64, "app", lines=[f"line {i}" for i in range(10)])
    receiver = Receiver(ack=False)
    extra = ("--poll-interval", "0.05", "--retry-timeout", "600")

    async def go() -> int:
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *extra, docker=docker)))
        run = asyncio.create_task(shipper.run())
        await until(lambda: len(receiver.lines()) == 10)  # sent; never acked
        shipper.request_stop()
        await asyncio.sleep(0.5)
        assert not run.done()  # the first request waits for the acks
        shipper.request_stop()
        return await asyncio.wait_for(run, 60)  # not the 600 s of --retry-timeout

    try:
        assert asyncio.run(go()) == 0
    finally:
        receiver.close()
    saved = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    (entry,) = saved["files"].values()
    assert entry["offset"] == 0  # nothing acked: the next start sends the lines again
