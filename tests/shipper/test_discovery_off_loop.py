"""Discovery passes run off the event loop: a slow pass does not stop reading and acks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.discover import Scan
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

#: How long the slow pass waits for the line written meanwhile to arrive (at once when the
#: loop runs during the pass; never when the pass holds it).
WAIT_SECONDS = 3.0


def test_a_slow_discovery_pass_does_not_hold_up_shipping(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A pass that takes long (a slow or hung file system under a root, thousands of
    ``config.v2.json`` parsed at a deploy) ran on the event loop: no line was read, sent or
    acknowledged until it ended. Now a line written during such a pass arrives during it."""
    log = tmp_path / "logs" / "app" / "app.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\n")
    # A wildcard in a folder part: inotify cannot cover it, so passes run every 100 ms.
    glob = str(tmp_path / "logs" / "*" / "app.log")
    args = ("--path", glob, "--poll-interval", "0.05", "--discover-interval", "0.1")
    cfg = load_config(shipper_args(tmp_path, receiver, *args))
    arrived: list[bool] = []

    async def go() -> None:
        shipper = Shipper(cfg)
        real_scan = shipper.discoverer.scan
        loop_thread = threading.current_thread()

        def slow_scan() -> Scan:
            scan = real_scan()
            if receiver.lines() == ["one"] and not arrived:
                with log.open("a") as f:
                    f.write("two\n")
                arrived.append(_wait(lambda: "two" in receiver.lines(), WAIT_SECONDS))
                arrived.append(threading.current_thread() is not loop_thread)
            return scan

        shipper.discoverer.scan = slow_scan  # type: ignore[method-assign]
        run = asyncio.create_task(shipper.run())
        await until(lambda: bool(arrived), timeout=30)
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert arrived == [True, True]  # during the pass, which ran on another thread
    assert receiver.lines() == ["one", "two"]


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    """Block this thread until ``check()`` holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
