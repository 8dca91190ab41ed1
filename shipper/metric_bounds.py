"""How both daemons bound what their metrics hold: one policy each, shared.

**Connections to a ``--metrics-listen`` port** (:class:`MetricsSlots`). At most
:data:`MAX_METRICS_CONNECTIONS` are served at once: each holds a thread and a descriptor in the
shipper (its descriptors come out of the reserve kept for the aggregator sockets and checkpoint
saves, :mod:`shipper.fd_budget`), a rendered page until its client reads it in the aggregator;
without a bound, a client opening connections faster than they time out (a scanner, a flood)
took thousands, and 15 scrapers that never read held 600 MB. Past the bound a newcomer takes
the slot of the connection that has waited longest for its request, if that is
:data:`SILENT_EVICT_SECONDS` or more, else the newcomer is closed unanswered: a scraper or a
probe sends its request as soon as it connects, so connections that send nothing (a port
scanner, a broken probe, a slowloris) cannot lock scrapes and ``/healthz`` probes out until
their request timeout (a liveness probe failing meanwhile restarts a healthy daemon). The
shipper serves on threads, the aggregator on its event loop: the slots only keep the books
(under a lock, for the threads), and each server closes the connection it is told to close,
counted in its ``..._metrics_connections_refused_total``.

**Series of services** (:class:`IdleNames`). Services come and go (renames, retired services,
Docker's generated names, one-off jobs, a Docker fluentd driver that tags every container with
its id): a service's own series are removed once it has not been seen for
:data:`SERVICE_SERIES_IDLE_SECONDS` (the shipper: no source of it followed; the aggregator: no
rows), or ``/metrics`` and Prometheus would grow with every service ever seen. One that comes
back starts again at 0 (``increase()`` takes resets).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

#: Connections of a metrics port served at once (a scraper or two and health checks are the
#: normal load).
MAX_METRICS_CONNECTIONS = 16
#: How long a connection may wait for its request before a newcomer over the limit may take
#: its slot.
SILENT_EVICT_SECONDS = 1.0

#: A service's own series (the aggregator's: rows, parse failures, rows outside the projection;
#: the shipper's: lines, bytes, losses) go after this long without it (:class:`IdleNames`).
SERVICE_SERIES_IDLE_SECONDS = 24 * 3600.0
#: How often (seconds) idle services are looked for.
SWEEP_SECONDS = 60.0

Connection = TypeVar("Connection", bound=Hashable)


class MetricsSlots(Generic[Connection]):
    """The :data:`MAX_METRICS_CONNECTIONS` slots of one metrics server, and which of their
    connections still wait for their request (the ones a newcomer may take the slot of).
    Both limits are read at each admission (tests lower them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._silent: dict[Connection, float] = {}
        """Connections with no request yet, oldest first, and when each was admitted."""

    def admit(self, conn: Connection) -> Connection | None:
        """Give ``conn`` a slot; returns the connection to close unanswered (and count as
        refused), if any: None when a slot was free; the one silent the longest, for
        :data:`SILENT_EVICT_SECONDS` or more, whose slot ``conn`` took; else ``conn`` itself,
        which has no slot."""
        with self._lock:
            victim: Connection | None = None
            if len(self._open) >= MAX_METRICS_CONNECTIONS:
                oldest = next(iter(self._silent.items()), None)
                if oldest is None or time.monotonic() - oldest[1] < SILENT_EVICT_SECONDS:
                    return conn
                victim = oldest[0]
                self._release(victim)
            self._open.add(conn)
            self._silent[conn] = time.monotonic()
            return victim

    def answering(self, conn: Connection) -> bool:
        """``conn``'s request has come: its slot is no longer for a newcomer to take. False if
        it was taken already (``conn`` is being closed: answer nothing)."""
        with self._lock:
            self._silent.pop(conn, None)
            return conn in self._open

    def holds(self, conn: Connection) -> bool:
        """Whether ``conn`` still has its slot (not given to a newcomer)."""
        with self._lock:
            return conn in self._open

    def release(self, conn: Connection) -> None:
        """``conn`` is done (or closed): its slot is free."""
        with self._lock:
            self._release(conn)

    def __len__(self) -> int:
        """Connections holding a slot."""
        with self._lock:
            return len(self._open)

    def _release(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._silent.pop(conn, None)


class IdleNames:
    """When each name (a service with series) was last seen, and the ones not seen for
    ``idle_after`` seconds, looked for at most every ``every`` seconds (a look goes over every
    name): the series a daemon then removes. Times are the caller's clock (monotonic)."""

    def __init__(self, idle_after: float, every: float) -> None:
        self.idle_after = idle_after
        self.every = every
        self._seen: dict[str, float] = {}
        self._looked_at: float | None = None
        """When idle names were last looked for (the time of the first call before that)."""

    def __contains__(self, name: object) -> bool:
        return name in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, name: str, now: float) -> None:
        self._seen[name] = now

    def idle(self, now: float) -> list[str]:
        """The names not seen for :attr:`idle_after` seconds, forgotten here (seen again, they
        are new); none until :attr:`every` seconds have passed since the last look (or the
        first call)."""
        if self._looked_at is None:
            self._looked_at = now
        if now - self._looked_at < self.every:
            return []
        self._looked_at = now
        idle = [name for name, last in self._seen.items() if now - last >= self.idle_after]
        for name in idle:
            del self._seen[name]
        return idle
