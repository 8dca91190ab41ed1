"""Files finished moments ago leave ``checkpoints.json`` by themselves.

A file read to its end and acknowledged is kept for a moment under ``finished`` (see
:meth:`shipper.checkpoint.Registry.finish`); a save prunes it once it is old enough. On a quiet
host no later ack came to save again, so the entries of containers long gone stayed in the
file (~500 bytes each: 95 KB after 200 containers were removed). The daemon now saves once
more when they are due to leave.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from shipper import checkpoint
from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

pytestmark = pytest.mark.integration


def _saved(state: Path) -> dict[str, object]:
    try:
        return json.loads((state / "checkpoints.json").read_bytes())
    except FileNotFoundError:
        return {}


async def _gone_container(tmp_path: Path, receiver: Receiver, docker: Path, folder: Path) -> None:
    args = ("--poll-interval", "0.05", "--discover-interval", "0.1")
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *args, docker=docker)))
    run = asyncio.create_task(shipper.run())
    state = tmp_path / "state"
    try:
        await until(lambda: receiver.lines() == ["one", "two"])
        shutil.rmtree(folder)  # the container is removed, its log with it
        await until(lambda: "finished" in _saved(state))
        await until(lambda: _saved(state).get("finished") is None, timeout=5.0)
        assert _saved(state)["files"] == {}
    finally:
        shipper.request_stop()
        assert await run == 0


def test_a_gone_container_s_finished_file_leaves_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "FINISHED_SAVE_SECONDS", 0.3)
    docker = tmp_path / "docker"
    log = make_container(docker, "d" * 64, "app", lines=["one", "two"])
    receiver = Receiver()
    try:
        asyncio.run(_gone_container(tmp_path, receiver, docker, log.parent))
    finally:
        receiver.close()
