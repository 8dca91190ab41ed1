"""RFC 3339 times, as container runtimes write them, to and from ns since the epoch."""

from __future__ import annotations

import re
import time
from calendar import timegm
from datetime import datetime

from shipper.entry import MAX_EVENT_TIME_NS, MIN_EVENT_TIME_NS

#: ``YYYY-MM-DDTHH:MM:SS`` in ASCII digits. :func:`time.strptime` alone also takes other
#: Unicode digits (Arabic-Indic, fullwidth...), space-padded and one-digit fields.
_HEAD = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


class TimeParser:
    """RFC 3339 text -> ns since the epoch, with the whole-second part cached.

    Lines of one second share their prefix, so a dict lookup replaces a datetime parse for
    almost every line. Non-UTC offsets (containerd writes local time) take the slow path.
    Only times an EventTime can carry (:data:`MIN_EVENT_TIME_NS` .. :data:`MAX_EVENT_TIME_NS`)
    are ever cached or returned: the parsers' fast paths read the cache directly.
    """

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def to_ns(self, text: str) -> int | None:
        """ns since the epoch; None when ``text`` is not RFC 3339 or is a time an EventTime
        cannot carry (before 1970, from 2106-02-07): the caller stamps the read time."""
        if len(text) >= 20 and text[-1] == "Z" and text[10] == "T":
            head = text[:19]
            sec = self._cache.get(head)
            if sec is None:
                sec = self._seconds(head)
            # Cached seconds are in range, and so is any fraction added to them.
            if sec is not None:
                if text[19] == ".":
                    frac = text[20:-1]
                    if frac.isdigit() and frac.isascii():
                        return sec * 1_000_000_000 + int(frac[:9].ljust(9, "0"))
                elif len(text) == 20:
                    return sec * 1_000_000_000
        ns = self._slow(text)
        return ns if ns is not None and MIN_EVENT_TIME_NS <= ns <= MAX_EVENT_TIME_NS else None

    def seconds(self, head: str) -> int:
        """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (UTC), cached; ValueError if malformed or
        outside what an EventTime carries."""
        sec = self._cache.get(head)
        if sec is None:
            if _HEAD.fullmatch(head) is None:
                raise ValueError(f"{head!r} is not YYYY-MM-DDTHH:MM:SS in ASCII digits")
            sec = timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
            self._remember(head, sec)
        return sec

    def _remember(self, head: str, sec: int) -> None:
        """Cache ``sec``; ValueError (nothing cached) when an EventTime cannot carry it."""
        if not MIN_EVENT_TIME_NS <= sec * 1_000_000_000 <= MAX_EVENT_TIME_NS - 999_999_999:
            raise ValueError(f"{head} is outside the EventTime range")
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[head] = sec

    def _seconds(self, head: str) -> int | None:
        """Epoch seconds of ``head`` (cached), or None: :meth:`to_ns` takes the slow path."""
        try:
            return self.seconds(head)
        except ValueError:
            return None

    def _slow(self, text: str) -> int | None:
        """Any RFC 3339 form (offsets, up to 9 fraction digits); None if unparseable. A
        fraction is one or more ASCII digits: ``int()`` alone took ``-5`` (0.05 s before the
        second), ``1_2`` (``.012``), ``+5``, a leading space, other Unicode digits, and ignored what
        followed the ninth digit."""
        t = text.strip()
        frac_ns = 0
        try:
            main, tz = t, ""
            if t.endswith(("Z", "z")):
                main, tz = t[:-1], "+00:00"
            elif len(t) > 6 and t[-6] in "+-" and t[-3] == ":":
                main, tz = t[:-6], t[-6:]
            if "." in main:
                main, frac = main.split(".", 1)
                if not (frac.isdigit() and frac.isascii()):
                    return None
                frac_ns = int(frac[:9].ljust(9, "0"))
            dt = datetime.fromisoformat(main.replace("t", "T") + tz)
            if dt.tzinfo is None:
                raise ValueError("no time zone")
            return int(dt.timestamp()) * 1_000_000_000 + frac_ns
        except (ValueError, OverflowError):
            return None


def now_rfc3339(ns: int | None = None) -> str:
    """The current time as RFC 3339 UTC with nanoseconds (the form Docker writes)."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
