"""The process's budget of open log files, shared by the tailers of all its sources.

Every log file a tailer holds open (live files, and rotated files pinned while a source is
behind) costs a descriptor, and a host can have more container logs than the open-files limit
allows. Log files may use the soft ``RLIMIT_NOFILE`` less a reserve (see :func:`pin_budget`),
so sockets to the aggregators, the checkpoint save and the metrics server always find a
descriptor. A source that finds the budget spent waits for room (see :func:`wait_for_room`):
one warning while waiting lasts, and idle sources close their live files for it (see
:meth:`shipper.opening.Opening._park`).

The state is per process: :class:`shipper.cursor.Cursor` counts itself in and out.
"""

from __future__ import annotations

import logging
import resource
import time

log = logging.getLogger("logq.shipper.tailer")
"""The tailer's logger: these are its messages, and the split into modules changed none."""

FD_RESERVE_FRACTION = 0.1
"""Share of the soft ``RLIMIT_NOFILE`` kept free of log files for sockets, the registry and
new sources' live files: pinning rotated files stops at the rest (see :func:`pin_budget`)."""
FD_RESERVE_MIN = 64
WAITING_LOG_SECONDS = 60.0
"""While sources wait for descriptors, the warning comes again at most this often, when their
number changed."""

_open_files = 0
"""Log files held open by all tailers of this process (the pin budget counts them)."""
_budget_cache: tuple[float, int] = (float("-inf"), 0)
"""(When it was read, monotonic; the budget.) Never read at first: with 0.0 there, a shipper
started less than 5 s after boot (the clock's zero) had a budget of 0 and no room to open any
log file, every source "waiting for descriptors", until the clock passed 5 s."""
_waiting: set[str] = set()
"""Source keys waiting for room in the descriptor budget (:func:`pin_budget`) to open a file:
live files count against it too, so the reserve stays free for sockets and checkpoints."""
_waiting_logged_at: float | None = None
_waiting_logged_count = 0


def count_open() -> None:
    """A log file was opened (and is held by a cursor)."""
    global _open_files
    _open_files += 1


def count_closed() -> None:
    """A log file counted by :func:`count_open` was closed."""
    global _open_files
    _open_files -= 1


def open_files() -> int:
    """Log files currently open in this process."""
    return _open_files


def pin_budget() -> int:
    """How many log files the process may hold open before pinning more rotated files stops:
    the soft ``RLIMIT_NOFILE`` less a reserve. Re-read every few seconds (the daemon may raise
    the soft limit at start-up)."""
    global _budget_cache
    now = time.monotonic()
    if now - _budget_cache[0] < 5.0:
        return _budget_cache[1]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    budget = max(soft - max(FD_RESERVE_MIN, int(soft * FD_RESERVE_FRACTION)), 1)
    _budget_cache = (now, budget)
    return budget


def room() -> bool:
    """Whether the process may open one more log file within its budget."""
    return _open_files < pin_budget()


def waiting_sources() -> int:
    """Sources that wait for a file descriptor (the process is at its budget)."""
    return len(_waiting)


def is_waiting(key: str) -> bool:
    """Whether the source ``key`` waits for a file descriptor."""
    return key in _waiting


def wait_for_room(key: str) -> None:
    """Note that ``key`` waits for a descriptor; warn when waiting starts (and every few
    minutes while it lasts), not once per source and attempt."""
    global _waiting_logged_at, _waiting_logged_count
    _waiting.add(key)
    now = time.monotonic()
    if _waiting_logged_at is None or (
        now - _waiting_logged_at >= WAITING_LOG_SECONDS and len(_waiting) != _waiting_logged_count
    ):
        _waiting_logged_at = now
        _waiting_logged_count = len(_waiting)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "log sources wait for a file descriptor: the process holds its budget of %d log "
            "files (the open-files limit %d less a reserve for sockets and checkpoints); each "
            "is opened when another source ends or goes idle. Raise the open-files limit "
            "(LimitNOFILE= in the unit, ulimit -n) waiting_sources=%d open_log_files=%d",
            pin_budget(),
            soft,
            len(_waiting),
            _open_files,
        )


def stop_waiting(key: str) -> None:
    """``key`` opened its file (or ended): it waits no more."""
    global _waiting_logged_at
    if key in _waiting:
        _waiting.discard(key)
        if not _waiting and _waiting_logged_at is not None:
            _waiting_logged_at = None
            log.info("no source waits for a file descriptor any more")
