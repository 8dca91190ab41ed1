"""A ``.gz`` read hung on a dead file system does not keep a stopped shipper's process alive.

The ``.gz`` threads were a ThreadPoolExecutor's, which the interpreter joins at exit whatever
``shutdown(wait=False)`` said: the shipper's checkpoints were saved and its exit status decided,
and its process (its pod) lived on until the read ended or SIGKILL came. They are daemon threads
now (:mod:`shipper.daemon_threads`), as the discovery pass's thread is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The child: a read that hangs far longer than the test waits, given up at the daemon's end.
_HUNG_READ_SCRIPT = """
import asyncio, sys, threading
from shipper import gz_pool

started = threading.Event()

def hung(_):
    started.set()
    threading.Event().wait(120)  # a read of a copy on a dead NFS mount

async def main():
    task = asyncio.ensure_future(gz_pool.run(hung, None))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    gz_pool.shutdown()
    print("stopped", flush=True)

asyncio.run(main())
"""


def test_the_process_ends_with_a_gz_read_hung() -> None:
    root = str(Path(__file__).resolve().parents[2])
    ended = subprocess.run(
        [sys.executable, "-c", _HUNG_READ_SCRIPT],
        env={**os.environ, "PYTHONPATH": root},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,  # (the old code's process lived the read's 120 s)
        check=False,
    )
    assert ended.returncode == 0 and ended.stdout == "stopped\n", ended.stderr
