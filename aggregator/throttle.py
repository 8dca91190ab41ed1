"""At most one warning per key every so often: the aggregator's rate-limited WARNINGs.

A counter counts every event; its WARNING says what happened once per key (a service, a table
and service) every ``seconds``, so a steady fault is visible without flooding the log. The keys
remembered are bounded: past :data:`MAX_KEYS` the memory is cleared (a burst of repeated
warnings, never a leak).
"""

from __future__ import annotations

from collections.abc import Hashable

#: Keys remembered at most.
MAX_KEYS = 10_000


class Throttle:
    """Which keys may be warned about now (:meth:`due`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[Hashable, float] = {}
        """Key -> when it was last due (``time.time()``)."""

    def due(self, key: Hashable, now: float) -> bool:
        """Whether ``key`` was not due in the last ``seconds`` before ``now``; if so, it is
        remembered as due at ``now``."""
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
        self._last[key] = now
        return True
