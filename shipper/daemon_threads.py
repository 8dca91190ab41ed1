"""Worker threads that never keep a stopped shipper's process alive: daemon threads.

A :class:`concurrent.futures.ThreadPoolExecutor`'s threads are joined when the interpreter
exits, whatever ``shutdown(wait=False)`` said: a discovery pass or a ``.gz`` read hung on a
dead file system (a stale NFS mount under a root) kept a stopped shipper's process alive, its
checkpoints saved and its exit status decided, until the call ended or the orchestrator's
SIGKILL came. The works run here only read (list folders, stat and read ``config.v2.json``,
decompress a copy into a temporary file), so nothing is lost when the process ends under one.
With one thread, works run one at a time in the order they were submitted (discovery passes
never overlap); with more, they start in that order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

#: The discovery passes' thread's name (``ps -T``, py-spy, a thread dump).
DISCOVERY_THREAD_NAME = "logq-discovery"


class DaemonThreads:
    """Runs works on ``count`` daemon threads of their own, started at the first
    :meth:`submit` (an executor's ``submit`` and ``shutdown``, without the join at exit)."""

    def __init__(self, name: str = DISCOVERY_THREAD_NAME, count: int = 1) -> None:
        self._name = name
        self._count = count
        self._works: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """``work(*args)`` to run once a thread is free of those submitted before it: its
        future."""
        if self._closed:
            raise RuntimeError(f"the {self._name} threads are shut down")
        future: Future[Any] = Future()
        self._works.put((future, (lambda: work(*args)) if args else work))
        if not self._threads:
            for i in range(self._count):
                name = self._name if self._count == 1 else f"{self._name}_{i}"
                thread = threading.Thread(target=self._run, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        return future

    def queued(self) -> int:
        """Works submitted that no thread has taken yet (approximately, as a queue's size)."""
        return self._works.qsize()

    def shutdown(self, wait: bool = False) -> None:
        """Run nothing more (works not started are cancelled); with ``wait``, until those
        running have returned (tests: else a process may end under them)."""
        self._closed = True
        while True:
            try:
                item = self._works.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._works.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

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
