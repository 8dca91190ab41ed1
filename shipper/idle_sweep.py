"""Idle sources asleep until their file changes: one look at all their files at a time.

An idle source whose live file is watched sleeps until an event says the file changed (see
:meth:`shipper.source.SourceRunner._idle`), at most
:data:`~shipper.source.IDLE_CEILING_SECONDS`, for the event that never comes (a write through
``mmap``, a watch the kernel dropped); one whose file is not watched (no inotify, the watch
limit reached, a network filesystem) looked at it every ``--poll-interval``. Each source used
to wake at its ceiling (or interval) and take a whole turn of its read loop to find nothing:
window room reserved and given back, a read at the end of the file, a look at its path, its
size and first line -- 300 idle pods, 150 turns a second, were about two thirds of the idle
shipper's CPU (bench/idle.py --pods); polled, 1,200 turns a second, about 5 % of a core.

Here one timer looks at every sleeping source's file at the same period (one sweep for the
watched files, one for the polled), as Fluent Bit's tail input does next to its inotify
backend (its progress check: an ``fstat`` of each file, only those with something new are
read): an ``fstat`` of the descriptor the source reads and a ``stat`` of its path. A source is
woken only when either differs from what it saw before its last read -- its size or times
changed (written, truncated, unlinked: the link count is in the change time), or its path
names another file (renamed away) or none --, or when the look fails, or when its times are
whole seconds of the last 2 s (:func:`telling`: a coarse file system's). The bounds are
unchanged (one period); what an unchanged file costs is two system calls a period instead of
a turn.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipper import fd_budget
from shipper.listings import lately


def stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What a write, a truncation or an unlink changes in a file's ``stat``: its size, its
    modification and its change time (which a new link count moves too)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def telling(seen: tuple[int, int, int]) -> bool:
    """Whether a file's :func:`stamp` moves at every change made after it was taken. Not when
    its times are whole seconds (a coarse file system's: ext3, some NFS servers) and of the
    last :data:`~shipper.listings.RECENT_NS`: truncated and written again to the same size
    within that second, the file keeps its stamp (Tailer._rewritten does not trust such
    times either). Its source is then woken at the next look, whose turn compares the
    content, until a turn finds the stamp old enough: a same-size rewrite in the second of a
    line read was never looked for again, its lines left until the file's next change."""
    _, mtime_ns, ctime_ns = seen
    return mtime_ns % 1_000_000_000 != 0 or not lately(mtime_ns, ctime_ns)


@dataclass(frozen=True)
class Sleeper:
    """One idle source's file as the source last saw it."""

    fd: int
    """The descriptor the source reads the file from."""
    seen: tuple[int, int, int]
    """:func:`stamp` of the file before the read that found nothing new."""
    path: Path
    """The path the source follows."""
    named: tuple[int, int]
    """(device, inode) the path named then: the file open as :attr:`fd`."""
    unchanged: Callable[[float], None]
    """Told the wall-clock time when a look found nothing changed (what a turn that found
    nothing noted: :meth:`~shipper.checkpoint.Registry.note_followed`)."""
    until: float = math.inf
    """Woken anyway at the first look past this (monotonic): a file the watcher refused is
    offered to it again then; a file whose :attr:`seen` is not :func:`telling`, at once."""


class IdleSweep:
    """Wakes the sleeping sources whose file changed, on the event loop, every period: the
    shortest one a sleeper asked for (a source rotating fast asks for less); no timer while
    none sleeps."""

    def __init__(self) -> None:
        self._sleepers: dict[asyncio.Event, tuple[Sleeper, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._sleepers)

    def sleep(self, wake: asyncio.Event, sleeper: Sleeper, period: float) -> None:
        """``wake`` is set at the first look that finds ``sleeper``'s file changed, taken at
        most ``period`` seconds from now."""
        self._sleepers[wake] = sleeper, period
        # Sooner than the look planned, or not at all: armed again a shorter period from now
        # (a source rotating fast joining), the look the others wait for came that late.
        timer = self._timer
        if timer is None or asyncio.get_running_loop().time() + period < timer.when():
            if timer is not None:
                timer.cancel()
            self._arm(period)

    def woke(self, wake: asyncio.Event) -> None:
        """The source of ``wake`` is awake (an event, a stop...): it is looked at no more."""
        self._sleepers.pop(wake, None)
        if not self._sleepers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sleepers.clear()

    def _arm(self, period: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        # Sources waiting for a descriptor: the idle ones close theirs (Tailer.poll parks them).
        everyone = fd_budget.waiting_sources() > 0
        now, clock = time.time(), time.monotonic()
        for wake, (sleeper, _) in list(self._sleepers.items()):
            if everyone or clock >= sleeper.until or changed(sleeper):
                wake.set()
                del self._sleepers[wake]
            else:
                sleeper.unchanged(now)
        if self._sleepers:
            self._arm(min(period for _, period in self._sleepers.values()))


def changed(sleeper: Sleeper) -> bool:
    """Whether the file of ``sleeper`` (or what its path names) is not as it was seen; True
    when it cannot be looked at: the source's own turn then finds out what happened."""
    try:
        if stamp(os.fstat(sleeper.fd)) != sleeper.seen:
            return True
        st = os.stat(sleeper.path)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != sleeper.named
