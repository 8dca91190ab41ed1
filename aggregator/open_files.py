"""The aggregator's open-files limit: raised at start-up, checked, and named when it is reached.

Every Forward connection, metrics connection, buffer segment and Parquet file being written is a
file descriptor. systemd and most container runtimes start services with a soft
``RLIMIT_NOFILE`` of 1024, the default ``--max-connections``: at that limit ``accept()`` fails
with EMFILE, and so do the buffer's writes (acks stop) and the flushes. So, at start-up
(:func:`check_open_files_limit`), the soft limit goes up to the hard one, as every Go program
does since Go 1.19 (and logq-shipper), and a WARNING says so if it is still too low.

When the limit is reached anyway, Python 3.11's asyncio logs every failed ``accept()`` with a
traceback, up to the listen backlog per event loop turn (CPython gh-151615): hundreds of MB of
log a minute. :class:`AcceptErrorFilter` lets one such line through per listener every
:data:`ACCEPT_ERROR_SECONDS`, saying how many it held back and what to do.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import Callable

from aggregator.throttle import Throttle
from shipper.open_files import raise_open_files_limit

log = logging.getLogger("logq.aggregator.open_files")

#: Descriptors the aggregator needs besides its connections: buffer segments and their folder,
#: the flush's Parquet files and S3 sockets, listening sockets, the log, worker threads' files.
RESERVE = 64
#: Seconds between two logged accept errors of one listener.
ACCEPT_ERROR_SECONDS = 10.0
#: How asyncio's exception handler begins the message of a failed ``accept()``
#: (``BaseSelectorEventLoop._accept_connection``).
_ACCEPT_ERROR = "socket.accept() out of system resource"
_LADDR = re.compile(r"laddr=\('?([^',]*)'?, (\d+)")


def soft_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` (None: unlimited, or not a Unix system)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def raise_soft_limit() -> tuple[int | None, int | None]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; returns (before, now) (None:
    unlimited). See :mod:`shipper.open_files`."""
    return raise_open_files_limit(log)


def check_open_files_limit(max_connections: int, metrics_connections: int) -> int | None:
    """Raise the soft limit (:func:`raise_soft_limit`) and WARN when it stays below what
    ``--max-connections`` plus the metrics port plus :data:`RESERVE` need. Returns the limit."""
    _, now = raise_soft_limit()
    needed = max_connections + metrics_connections + RESERVE
    if now is not None and now < needed:
        log.warning(
            "the open files limit (%d, after raising the soft limit to the hard one) is below "
            "what --max-connections %d needs (%d: the connections, %d metrics connections and "
            "%d for the buffer and the flushes): at the limit connections are refused, acks "
            "stop and flushes fail. Raise it (systemd LimitNOFILE=, docker run --ulimit "
            "nofile=N:N, the ECS task's ulimits, /etc/security/limits.conf) to at least %d, or "
            "lower --max-connections to %d",
            now,
            max_connections,
            needed,
            metrics_connections,
            RESERVE,
            needed,
            max(1, now - metrics_connections - RESERVE),
        )
    return now


def fd_limit_hint(exc: BaseException) -> str | None:
    """What to do when ``exc`` is the open-files limit (EMFILE, ENFILE), else None: free space is
    not the answer then, though the error came from writing the buffer."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.EMFILE:
        return (
            f"the process reached its open files limit (EMFILE, {soft_limit() or 'unlimited'}): "
            "raise it (systemd LimitNOFILE=, docker --ulimit nofile=N:N, the ECS task's ulimits) "
            "or lower --max-connections"
        )
    if exc.errno == errno.ENFILE:
        return (
            "the system's open files table is full (ENFILE): raise fs.file-max (sysctl) or stop "
            "the process that holds them"
        )
    return None


class AcceptErrorFilter(logging.Filter):
    """On the ``asyncio`` logger: one failed-``accept()`` line per listener every ``seconds``,
    without the traceback, naming the limit and counting the lines held back since."""

    def __init__(
        self, seconds: float = ACCEPT_ERROR_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.seconds = seconds
        self._clock = clock
        self._lines = Throttle(seconds, what="listeners failing to accept", logger=log)
        """Which listeners may log a line now."""
        self._held: dict[str, int] = {}
        """Listener -> lines held back since then."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(_ACCEPT_ERROR):
            return True
        listener = _listener(record.msg)
        if not self._lines.due(listener, self._clock()):
            self._held[listener] = self._held.get(listener, 0) + 1
            return False
        held = self._held.pop(listener, 0)
        exc = record.exc_info[1] if record.exc_info else None
        hint = (fd_limit_hint(exc) if exc is not None else None) or "see the error"
        record.msg = (
            "cannot accept connections on %s (%s): %s; clients are not served until descriptors "
            "are free (%d more since the last one not logged: one is logged every %g s per "
            "listener)"
        )
        record.args = (listener, exc or "out of system resources", hint, held, self.seconds)
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_accept_errors() -> AcceptErrorFilter:
    """Install :class:`AcceptErrorFilter` on the ``asyncio`` logger (once); returns it."""
    logger = logging.getLogger("asyncio")
    for existing in logger.filters:
        if isinstance(existing, AcceptErrorFilter):
            return existing
    accept_filter = AcceptErrorFilter()
    logger.addFilter(accept_filter)
    return accept_filter


def _listener(message: str) -> str:
    """``host:port`` of the listening socket named in asyncio's message (else the message's
    second line, or ``?``)."""
    match = _LADDR.search(message)
    if match:
        return f"{match.group(1)}:{match.group(2)}"
    lines = message.split("\n", 2)
    return lines[1] if len(lines) > 1 else "?"
