"""What a folder held at the last discovery pass, listed again only when the folder changed.

A discovery pass lists every pod folder and every container folder under ``--cri-root`` (and
the inotify watch list lists them once more): 300 idle pods were about 1,500 system calls and
20 ms of Python a pass, every second without inotify. Adding, removing or renaming an entry
changes a folder's modification time, so a folder whose inode and times are those of the last
listing holds the same names: one ``stat`` instead of the listing (Vector's file source and
Fluent Bit's tail list on every scan; a folder's times are what ``find -newer`` trusts).

Two cases the times alone do not tell:

* a file system with coarse times (whole seconds: ext3, some NFS servers) leaves them unchanged
  by an entry added within the second the folder was listed: a listing made while the folder's
  last change was less than :data:`RECENT_NS` old is not trusted -- the folder is listed again
  at the next pass, however late it comes (a listing made at its second and a pass 5 s later
  missed a container's ``1.log`` made in that second, for good) --, and only a listing made
  once its times were older than that is kept;
* a folder replaced by another (removed and made again, or renamed over) may be given the
  times of the first (``touch -r``, ``cp -a``, ``rsync -t``): its inode differs, or, if the
  freed inode was reused, its change time (which no program can set back) does.

Used on the discovery thread only (no lock); each pass keeps only the folders it looked at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

RECENT_NS = 2_000_000_000
"""A folder changed less than this before a pass (by the wall clock) is listed again, and that
listing is not kept for the next pass: its times may not move for an entry added in the same
second (coarse time stamps)."""


class Listings:
    """The last listing of each folder looked at, by path, with the version it was made at."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[int, int, int, int], object, bool]] = {}
        """By path: the folder's version at the stat before its listing, the listing, and
        whether it may be trusted while that version holds (its times were not
        :func:`recent` at that stat)."""
        self._used: set[str] = set()
        self._volatile: set[str] = set()
        self._checked: set[str] = set()
        """Folders found unchanged (and not recent) since the last :meth:`begin_pass`: not
        looked at again until the next (the watch list, made right after a pass). Forgotten
        at the start of a pass, not at its end: the watch list's looks, kept for the next
        pass, had it use the listings made before the event that brought it (a new pod or
        container found a pass late, at the recheck 0.5 s later or the rescan 10 s later)."""

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, path: str, listing: Callable[[], _T]) -> _T:
        """``listing()`` of the folder ``path``, or the one kept from an earlier pass when the
        folder has not changed since (looked at once a pass: a change after that look is the
        next pass's, which an inotify event on the folder brings). A listing that raises is
        not kept (nor is one made of a folder that cannot be looked at: ``listing`` says
        why)."""
        kept = self._kept.get(path)
        if kept is not None and path in self._checked:
            return kept[1]  # type: ignore[return-value]
        try:
            st = os.stat(path)
        except OSError:
            self._kept.pop(path, None)
            return listing()
        version = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        self._used.add(path)
        settled = not recent(st)
        if kept is not None and kept[0] == version and kept[2] and settled:
            self._checked.add(path)
            return kept[1]  # type: ignore[return-value]
        # After the stat: a change meanwhile moves the times past version -- unless they are
        # coarse and it comes within their tick, which an untrusted listing leaves to the next.
        found = listing()
        if path in self._volatile:
            self._volatile.discard(path)
        else:
            self._kept[path] = (version, found, settled)
        return found

    def forget(self, path: str) -> None:
        """The listing of ``path`` being made is not to be kept: it depends on more than the
        folder (a link, whose target may come and go)."""
        self._kept.pop(path, None)
        self._volatile.add(path)

    def begin_pass(self) -> None:
        """A discovery pass starts: every folder is looked at again."""
        self._checked.clear()

    def end_pass(self) -> None:
        """Keep only the folders looked at since the last call (removed ones go)."""
        for path in self._kept.keys() - self._used:
            del self._kept[path]
        self._used.clear()
        self._volatile.clear()


def recent(st: os.stat_result) -> bool:
    """Whether the folder changed within :data:`RECENT_NS` of now (or in the future: another
    machine's clock, on a network file system)."""
    return lately(st.st_mtime_ns, st.st_ctime_ns)


def lately(*times_ns: int) -> bool:
    """Whether the latest of these file times is within :data:`RECENT_NS` of now, or in the
    future: a change within their tick may not have moved them yet, if they are coarse (also
    the idle sweep's rule, :func:`shipper.idle_sweep.telling`)."""
    return time.time_ns() - max(times_ns) < RECENT_NS


def subfolders(path: str) -> list[os.DirEntry[str]]:
    """Sub-folders of ``path``, by name (``os.scandir``: no stat per entry): the listing
    discovery and the inotify watch list both keep for a folder under the CRI root."""
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
