"""What a compaction pass left alone, and why: for ``logq-aggregator compact`` to tell its user.

A pass merges only closed hours (:mod:`.listing`): open hours are the normal state of a
warehouse, so the periodic task says nothing of them. A user who runs ``compact`` by hand,
after a backfill or a replay, and reads "compacted 0 files" needs to know why, when the
hours will be merged, and how to merge them now. :class:`PassNotes` collects that during a
pass, only from the listings the pass makes anyway (no request per file; the ended but open
hours of a service whose hours are listed one by one cost one LIST each, for the command only),
and :meth:`PassNotes.lines` says it in a few lines.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow.fs as pafs

from aggregator.compaction.grace import _minutes
from aggregator.compaction.intents import _mtime
from aggregator.compaction.partition import _may_need_work, _visible
from athena.schema import parse_dt

#: Open partitions shown by name; the others are counted.
EXAMPLES = 3


@dataclass(frozen=True)
class OpenPartition:
    """A partition with something to merge that the pass left because it is not closed yet."""

    folder: str
    """Its path in the warehouse (``.../<table>/service=<s>/dt=<hour>``)."""
    hour_end: datetime
    """The end of its hour: it is closed no earlier than this plus the grace."""
    newest: datetime | None
    """The mtime of its newest file: it is closed no earlier than this plus the grace."""
    eligible: datetime
    """When a pass with the same grace merges it (if nothing newer lands meanwhile)."""

    def hour_closed(self, now: datetime, grace: timedelta) -> bool:
        """Its hour ended over ``grace`` ago: only a young file holds it back (a backfill, a
        replay, a late flush: the case a user who runs ``compact`` by hand least expects)."""
        return self.hour_end + grace <= now

    def reason(self, now: datetime, grace: timedelta) -> str:
        """Why it waits (its hour has ended: :meth:`PassNotes.lines` tells no other): the hour
        ended less than the grace ago, or a file is younger than the grace (a backfill, a
        replay, a late flush)."""
        if not self.hour_closed(now, grace):
            return f"its hour ended {_ago(now - self.hour_end)} ago, less than the grace"
        age = now - self.newest if self.newest is not None else timedelta(0)
        if age < timedelta(seconds=1):  # or "ahead": the store's clock runs before ours
            return "a file was written just now"
        return f"a file is younger than the grace (newest {_ago(age)} old)"

    def grace_now(self, now: datetime) -> timedelta:
        """The longest grace that would let a pass merge it now (its hour has ended); never
        below 0, though a file's time (the store's clock, S3's LastModified) may be a moment
        ahead of this machine's."""
        newest = self.newest if self.newest is not None else self.hour_end
        return max(timedelta(0), min(now - self.hour_end, now - newest))


class PassNotes:
    """Filled by one pass (from its listing and merge threads), read by the command after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: datetime | None = None
        self.grace = timedelta(0)
        self.lookback: timedelta | None = None
        self.target_bytes = 0
        self.open: list[OpenPartition] = []
        self.older_hours = 0
        """Hour partitions that ended before the pass's lookback window: not looked at."""
        self.services = 0
        """Service folders the pass looked at (none: ``--service`` names no folder)."""
        self.foreign: list[str] = []
        """Files left out of the merges: their column types are not the table's (another
        tool wrote them); each is named in an ERROR too, with what to do."""

    def begin(
        self, now: datetime, grace: timedelta, lookback: timedelta | None, target_bytes: int
    ) -> None:
        """The pass's clock, effective grace, lookback and file size, once they are known."""
        self.now, self.grace, self.lookback = now, grace, lookback
        self.target_bytes = target_bytes

    def add_services(self, count: int) -> None:
        with self._lock:
            self.services += count

    def add_older(self, count: int) -> None:
        with self._lock:
            self.older_hours += count

    def foreign_file(self, path: str) -> None:
        """``path`` was left out of its partition's merge (:mod:`athena.foreign`)."""
        with self._lock:
            self.foreign.append(path)

    def hour_open(self, folder: str, infos: list[pafs.FileInfo]) -> None:
        """``folder``'s hour has ended, but not plus the grace: noted if it has anything to
        merge."""
        if _may_need_work(infos, self.target_bytes):
            self._note(folder, infos)

    def young(self, folder: str, infos: list[pafs.FileInfo]) -> None:
        """``folder`` (with something to merge) holds a file younger than the grace."""
        self._note(folder, infos)

    def _note(self, folder: str, infos: list[pafs.FileInfo]) -> None:
        try:
            start = parse_dt(folder.rstrip("/").rsplit("/", 1)[-1].removeprefix("dt="))
        except ValueError:
            return
        end = start + timedelta(hours=1)
        times = [_mtime(i) for i in infos if _visible(i) and i.mtime is not None]
        newest = max(times, default=None)
        eligible = max(end, newest or end) + self.grace
        with self._lock:
            self.open.append(OpenPartition(folder, end, newest, eligible))

    def lines(
        self, safe_grace: timedelta, service: str | None = None, lookback_given: bool = False
    ) -> list[str]:
        """What to tell the user, a few lines at most (none when the pass skipped nothing
        worth a word). ``safe_grace``: the shortest grace allowed without ``--force``. The
        partitions noted are of hours that have ended (the listing does not note the running
        one: no news, every run would repeat it). The hours before a lookback the user did not
        give are no news either: the default one starts before the last completed pass, which
        looked at them (``lookback_given``: ``--lookback-hours`` was)."""
        if self.now is None:
            return []
        out: list[str] = []
        if service is not None and self.services == 0:
            out.append(
                f"no folder service={service} in the tables looked at: nothing to compact; "
                "check --service (the name as in the warehouse's service= folders)"
            )
        if self.open:
            out.extend(self._open_lines(safe_grace))
        if self.foreign:
            out.append(self._foreign_line())
        if self.older_hours and self.lookback is not None and lookback_given:
            out.append(
                f"{_count(self.older_hours, 'hour partition')} that ended before "
                f"{_when(self.now - self.lookback)} (the lookback) "
                f"{'was' if self.older_hours == 1 else 'were'} not looked at; "
                "--all (or a longer --lookback-hours) covers them"
            )
        return out

    def _foreign_line(self) -> str:
        """The files another tool wrote, left in place: the ERRORs above name each and what
        to do; this line, after the count of files merged, is the one a user reads."""
        paths = sorted(self.foreign)
        shown = ", ".join(paths[:EXAMPLES])
        if len(paths) > EXAMPLES:
            shown += f" and {len(paths) - EXAMPLES} more"
        one = len(paths) == 1
        return (
            f"{_count(len(paths), 'Parquet file')} that logq did not write (columns the table's "
            f"types cannot hold) {'was' if one else 'were'} left in place, out of the merges: "
            f"{shown}; move {'it' if one else 'them'} out of the table's folder or rewrite "
            f"{'it' if one else 'them'} with the table's types (`logq ddl` shows them)"
        )

    def _open_lines(self, safe_grace: timedelta) -> list[str]:
        assert self.now is not None
        now, grace = self.now, self.grace
        # Closed hours held back by a young file first, then hours within the grace.
        parts = sorted(
            self.open, key=lambda p: (not p.hour_closed(now, grace), p.eligible, p.folder)
        )
        young = sum(1 for p in parts if p.hour_closed(now, grace))
        latest = max(p.eligible for p in parts)
        out = [
            f"{_count(len(parts), 'partition')} with files to merge "
            f"{'is' if len(parts) == 1 else 'are'} not closed yet (the grace is "
            f"{_minutes(grace)} minutes; {young} held back by a file younger than it, "
            f"{len(parts) - young} by their hour), all eligible by {_when(latest)}:"
        ]
        for part in parts[:EXAMPLES]:
            out.append(
                f"  {_short(part.folder)}: {part.reason(now, grace)}; "
                f"eligible from {_when(part.eligible)}"
            )
        if len(parts) > EXAMPLES:
            out.append(f"  and {len(parts) - EXAMPLES} more")
        out.append(_hint(parts, now, safe_grace))
        return out


def _hint(parts: list[OpenPartition], now: datetime, safe_grace: timedelta) -> str:
    """How to merge the open partitions (their hours have ended) now: the grace that closes
    them all, and ``--force`` when that grace is below the safe one."""
    minutes = math.floor(min(p.grace_now(now) for p in parts).total_seconds() / 60)
    hint = f"  to merge them now: --grace-minutes {minutes}"
    if timedelta(minutes=minutes) < safe_grace:
        hint += (
            f" --force (below the safe grace of {_minutes(safe_grace)} minutes, a crashed "
            "aggregator's replay could store some rows twice)"
        )
    return hint


def _short(folder: str) -> str:
    """``<table>/service=<s>/dt=<hour>``: the partition as the user knows it."""
    return "/".join(folder.rstrip("/").split("/")[-3:])


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(span: timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n:,} {noun}s"
