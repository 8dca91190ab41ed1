"""Calls counted while they run, to show that work is done a few at once, and at most how
many, without timing anything: the tests of S3 reads and listings worked on concurrently
(the stale note's footers, ``logq services`` and its ``--dry-run``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds the first call waits for a second one to start (never that long when they overlap).
OVERLAP_WAIT = 10


class Flights:
    """``real`` wrapped to count its calls: ``calls`` in all, ``now`` in flight, ``most`` in
    flight at once, the ``threads`` they ran in (idents) and their ``firsts`` arguments.

    ``first_waits``: the first call waits (up to :data:`OVERLAP_WAIT` s) for a second one to
    start before it runs, which calls made one after the other never do; ``overlapped`` then
    says whether one did, so overlap is shown, not timed. ``hold``: seconds each call is held
    before it runs, so that calls of a pool overlap it and its bound is reached (no assertion
    is made on the time)."""

    def __init__(
        self, real: Callable[..., Any], first_waits: bool = False, hold: float = 0.0
    ) -> None:
        self.real, self.first_waits, self.hold = real, first_waits, hold
        self.calls = self.now = self.most = 0
        self.overlapped: list[bool] = []  # what the first call's wait for a second one gave
        self.threads: set[int] = set()
        self.firsts: list[Any] = []  # each call's first argument (a footer read: its path)
        self._lock, self._second = threading.Lock(), threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())
            self.firsts.append(args[0] if args else None)
            first = self.calls == 1
            if not first:
                self._second.set()
        try:
            if first and self.first_waits:
                self.overlapped.append(self._second.wait(OVERLAP_WAIT))
            if self.hold:
                time.sleep(self.hold)
            return self.real(*args, **kwargs)
        finally:
            with self._lock:
                self.now -= 1
