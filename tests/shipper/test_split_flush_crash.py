"""A split line flushed as it is, its ack lost, then a crash: nothing is stored twice.

The shipper ships the parts of a split line whose next part does not come (Fluent Bit's
``Docker_Mode_Flush``). If the aggregator stored them but its ack never came back, a restart
reads the parts again from the checkpoint -- and by then the next part may be there. Joined
with it, the parts were stored a second time inside a longer line. The place of the cut is now
on disk before the parts are sent, and the restart cuts there again.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until


def test_a_crash_after_a_flushed_split_line_lost_its_ack_stores_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.3)
    docker = tmp_path / "docker"
    log = make_container(docker, "c" * 64, "app", lines=["before"])
    with open(log, "ab") as f:
        f.write(docker_line("X-part ", 1, nl=False))  # a 16 KiB part; the rest comes late
    receiver = Receiver()
    extra = ("--poll-interval", "0.05", "--retry-timeout", "5")

    async def first_run() -> dict:
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *extra, docker=docker)))
        run = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines() == ["before"])
        receiver.ack = False  # the aggregator stores what comes next; its ack is lost
        await until(lambda: receiver.lines() == ["before", "X-part "])
        # What a kill -9 at this instant leaves on disk.
        on_disk = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
        shutil.copytree(tmp_path / "state", tmp_path / "crashed", ignore=_no_lock)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        shipper.registry.close()
        return on_disk

    async def second_run() -> None:
        args = shipper_args(tmp_path, receiver, *extra, docker=docker)
        args[args.index(str(tmp_path / "state"))] = str(tmp_path / "crashed")
        shipper = Shipper(load_config(args))
        run = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines()[-1:] == ["after"])
        shipper.request_stop()
        assert await run == 0

    try:
        on_disk = asyncio.run(first_run())
        (entry,) = on_disk["files"].values()
        assert entry["cuts"]  # the cut was durable before the parts were sent
        with open(log, "ab") as f:
            f.write(docker_line("X-rest", 2) + docker_line("after", 3))
        receiver.ack = True
        asyncio.run(second_run())
    finally:
        receiver.close()
    assert receiver.lines() == ["before", "X-part ", "X-rest", "after"]
    assert receiver.duplicates >= 1  # the parts came again, under the offset they had


def _no_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "lock"]
