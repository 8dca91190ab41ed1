"""What bounds a stop: the open connections' share of it, the blocking calls under way in
worker threads, and a watchdog.

Flushes, compaction, catalog updates and ledger writes run in worker threads
(``asyncio.to_thread``). Python cannot stop a thread, and a process does not exit while one of
them is still in a call: on a warehouse that accepts connections and never answers, a stop
waited for each request's timeouts, one after the other (71 s for one buffer segment, more with
a compaction pass or a catalog update under way). ``--stop-timeout`` bounds the whole stop: its
steps are cut short within it (:class:`WorkerCalls` says what is still running), and
:class:`StopWatchdog` ends the process when it is spent whatever holds it. Nothing acknowledged
is lost either way: every acknowledged record is fsync'd in the buffer before its ack, and the
buffer is only emptied by a committed flush (as after ``kill -9``: the next start writes it).
The open Forward connections get a share of what is left (:func:`connections_grace`), so that
a client slow to finish leaves the flush most of the budget.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The share of what is left of ``--stop-timeout`` (for the stop's steps) that open Forward
#: connections get to finish what they are sending (:func:`connections_grace`), and its cap.
CONNECTIONS_SHARE = 0.25
CONNECTIONS_MAX_SECONDS = 10.0
#: How often :meth:`WorkerCalls.wait_idle` looks whether the calls under way have returned.
IDLE_POLL_SECONDS = 0.05
#: How long :class:`StopWatchdog` lets its log line take before it exits without it.
SAY_SECONDS = 2.0
#: How long, out of :data:`SAY_SECONDS`, :class:`StopWatchdog` lets its exit status take (a
#: listing of the buffer dir) before it takes 1: the line must be said whatever the disk does.
STATUS_SECONDS = 0.5


def connections_grace(left: float) -> float:
    """Seconds the open Forward connections get at a stop to finish what they are sending
    (:meth:`aggregator.server.ForwardServer.stop`: its drain window, then the messages read
    up to its cut made durable and acknowledged), out of ``left``, the seconds left of
    ``--stop-timeout`` for the stop's steps: a quarter of it, at most
    :data:`CONNECTIONS_MAX_SECONDS`. The rest is for the flush that writes what they sent.
    A fixed 10 s took all of a --stop-timeout under it (the watchdog then exited 1, the buffer
    unwritten, for one connection slow to finish) and more than its share of a short one."""
    return max(0.0, min(CONNECTIONS_MAX_SECONDS, CONNECTIONS_SHARE * left))


class WorkerCalls:
    """The blocking calls running in worker threads, each with what it does: what a stop that
    runs out of time abandons (its log line names them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float, bool]] = {}
        self._ids = itertools.count()

    async def run(
        self, what: str, call: Callable[..., T], *args: Any, wait: bool = True, **kwargs: Any
    ) -> T:
        """``call(*args, **kwargs)`` in a worker thread (``asyncio.to_thread``), counted as
        running until it returns in its thread: a caller cancelled meanwhile (a stop) does not
        end it.
        ``wait``: whether a stop waits for it (:meth:`wait_idle`; a compaction pass ends at
        its next partition) or leaves it at once (a catalog update, rewritten at the next
        start)."""
        key = next(self._ids)
        entry = (what, time.monotonic(), wait)
        began = threading.Event()

        def tracked() -> T:
            with self._lock:
                began.set()
                self._running[key] = entry
            try:
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    self._running.pop(key, None)

        with self._lock:
            self._running[key] = entry
        try:
            return await asyncio.to_thread(tracked)
        finally:
            with self._lock:
                if not began.is_set():  # cancelled (a stop) before a thread took it: never runs
                    self._running.pop(key, None)

    def running(self) -> list[str]:
        """What is running now, oldest first, with how long it has run: ``the flush of
        segment 2 (for 12 s)``."""
        now = time.monotonic()
        with self._lock:
            calls = sorted(self._running.values(), key=lambda c: c[1])
        return [f"{what} (for {now - since:.0f} s)" for what, since, _ in calls]

    async def wait_idle(self, until: float) -> bool:
        """Wait until no call a stop waits for runs, or until ``until`` (monotonic); whether
        none runs."""
        while True:
            with self._lock:
                if not any(wait for _, _, wait in self._running.values()):
                    return True
            if time.monotonic() >= until:
                return False
            await asyncio.sleep(min(IDLE_POLL_SECONDS, max(0.0, until - time.monotonic())))


class StopWatchdog:
    """Ends the process ``seconds`` after :meth:`start` unless :meth:`cancel` comes first: the
    last resort of a stop held by a call that does not return (a daemon thread, so that it
    never holds the exit itself).

    ``status`` decides the exit status from durable state (the service: 0 when the buffer is
    closed and holds no segment left to write, as when the abandoned flush committed just
    before; else 1), then ``say(status)`` logs it and what is abandoned, and ``exit_now(status)``
    ends the process: after ``say`` returns, or after :data:`SAY_SECONDS` if it does not (a log
    write blocked on a full stderr pipe, or on the lock of a handler another thread holds
    there: the exit must not wait for it). A ``status`` that raises or has not answered within
    :data:`STATUS_SECONDS` (a listing of a hung disk) is 1, and ``say(1)`` is not held by it:
    exit 0 promises that the buffer is empty, and exit 1 must still say why."""

    def __init__(
        self,
        seconds: float,
        say: Callable[[int], None],
        exit_now: Callable[[int], object],
        status: Callable[[], int] = lambda: 1,
    ) -> None:
        self.seconds = seconds
        self._say = say
        self._exit_now = exit_now
        self._status = status
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self._timer is not None:
            return
        # A --stop-timeout past what a lock wait takes (1e308: "never") raised OverflowError
        # in the timer's thread, which then never fired: as long as that is as good as never.
        self._timer = threading.Timer(min(self.seconds, threading.TIMEOUT_MAX), self._fire)
        self._timer.daemon = True
        self._timer.name = "stop-watchdog"
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        began = time.monotonic()
        code = self._decide()
        said = threading.Thread(
            target=self._say_safely, args=(code,), name="stop-watchdog-log", daemon=True
        )
        said.start()
        said.join(max(0.0, SAY_SECONDS - (time.monotonic() - began)))
        self._exit_now(code)

    def _decide(self) -> int:
        """``status()`` in a thread of its own, given :data:`STATUS_SECONDS`: 1 if it raises
        or has not answered by then (its answer, read once here, is the one said and exited
        with)."""
        answer: list[int] = []

        def ask() -> None:
            try:
                answer.append(self._status())
            except Exception:  # not known: the buffer may hold data
                logging.getLogger("logq.aggregator").exception("stop watchdog: status unknown")

        asking = threading.Thread(target=ask, name="stop-watchdog-status", daemon=True)
        asking.start()
        asking.join(STATUS_SECONDS)
        return answer[0] if answer else 1

    def _say_safely(self, code: int) -> None:
        try:
            self._say(code)
        except Exception:  # the exit must happen whatever the log did
            logging.getLogger("logq.aggregator").exception("stop watchdog failed")
