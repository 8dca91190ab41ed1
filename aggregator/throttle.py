"""At most one warning per key every so often: the aggregator's rate-limited WARNINGs.

A counter counts every event; its WARNING says what happened once per key (a service, a table
and service, a client address) every ``seconds``, so a steady fault is visible without flooding
the log. The keys remembered are bounded (:data:`MAX_KEYS`). A full throttle first forgets the
keys whose period is over (they would be due again anyway), oldest first; when none is, a new
key is not named: it is counted, and one line says "N more warnings about <what> not logged"
at most every period (:data:`SUMMARY_SECONDS` for a once-per-key throttle), at the first call
of :meth:`Throttle.due` past it, whatever its key: a count held back is said once the period is
over even when no new key comes after it (said only when the next new key came, the count of a
burst that stopped was never logged). So whatever the number of keys, a period logs at most
about :data:`MAX_KEYS` named lines and one summary. (Clearing the memory when full, as before,
warned again about every key: 12,000 services made 24,000 once-per-service warnings, 15 MB of
log.)
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Hashable

#: Keys remembered at most.
MAX_KEYS = 10_000
#: Seconds between two summaries of the keys not named, for a throttle whose keys are due once
#: (``seconds`` infinite); others summarise once per their own period.
SUMMARY_SECONDS = 600.0


class Throttle:
    """Which keys may be warned about now (:meth:`due`); the keys over :data:`MAX_KEYS` are
    summed up on ``logger`` as "N more warnings about ``what`` not logged"."""

    def __init__(self, seconds: float, *, what: str, logger: logging.Logger) -> None:
        self.seconds = seconds
        self.what = what
        """What the keys are, plural, for the summary (``"services with replaced times"``)."""
        self._log = logger
        self._last: dict[Hashable, float] = {}
        """Key -> when it was last due (``time.time()``), oldest first."""
        self._unnamed = 0
        """Warnings about keys not remembered, held back since the last summary."""
        self._summarised: float | None = None
        """When the last summary was said."""
        self._lock = threading.Lock()  # flush threads and the event loop may share one

    def due(self, key: Hashable, now: float) -> bool:
        """Whether ``key`` was not due in the last ``seconds`` before ``now`` and can be
        remembered; if so, it is remembered as due at ``now``."""
        with self._lock:
            due = self._due(key, now)
            if self._unnamed:
                self._summarise(now)
            return due

    def _due(self, key: Hashable, now: float) -> bool:
        """:meth:`due`, under the lock; a key not remembered for room is counted."""
        last = self._last.get(key)
        if last is not None:
            if now - last < self.seconds:
                return False
            del self._last[key]  # put back last: the dict stays in order of time due
        elif len(self._last) >= MAX_KEYS:
            self._forget_expired(now)
            if len(self._last) >= MAX_KEYS:
                self._unnamed += 1
                return False
        self._last[key] = now
        return True

    def _forget_expired(self, now: float) -> None:
        """Forget the oldest keys whose period is over (each forgotten once: amortised O(1))."""
        expired = []
        for key, last in self._last.items():
            if now - last < self.seconds:
                break
            expired.append(key)
        for key in expired:
            del self._last[key]

    def _summarise(self, now: float) -> None:
        """Say how many keys were not named since the last summary, unless one was said
        within the period."""
        period = self.seconds if math.isfinite(self.seconds) else SUMMARY_SECONDS
        if self._summarised is not None and now - self._summarised < period:
            return
        self._log.warning(
            "%d more warnings about %s not logged: at most %d are named individually at a "
            "time, to keep the log bounded (the metrics count every event; this line sums up "
            "the others at most every %.0f s)",
            self._unnamed,
            self.what,
            MAX_KEYS,
            period,
        )
        self._unnamed = 0
        self._summarised = now
