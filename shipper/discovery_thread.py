"""The one thread where the daemon's discovery passes run, a daemon thread.

A :class:`concurrent.futures.ThreadPoolExecutor`'s threads are joined when the interpreter
exits, whatever ``shutdown(wait=False)`` said: a pass hung on a dead file system (a stale NFS
mount under a root) kept a stopped shipper's process alive, its checkpoints saved and its exit
status decided, until the pass ended or the orchestrator's SIGKILL came. A pass only reads
(lists folders, stats and reads ``config.v2.json``), so nothing is lost when the process ends
under it. Works are run one at a time, in the order they were submitted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

#: What the thread is named (``ps -T``, py-spy, a thread dump).
THREAD_NAME = "logq-discovery"


class DiscoveryThread:
    """Runs works on one daemon thread of its own, started at the first :meth:`submit`."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self._name = name
        self._works: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Callable[[], Any]) -> Future[Any]:
        """``work()`` to run once those submitted before it are done: its future."""
        if self._closed:
            raise RuntimeError("the discovery thread is shut down")
        future: Future[Any] = Future()
        self._works.put((future, work))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Run nothing more (works not started are cancelled); with ``wait``, until the one
        running has returned (tests: else a process may end under it)."""
        self._closed = True
        while True:
            try:
                item = self._works.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        self._works.put(None)
        if wait and self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._works.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work()
            except BaseException as exc:  # handed to the waiter, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, work, item  # (not held while the thread waits for the next)
