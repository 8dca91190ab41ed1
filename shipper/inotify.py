"""Linux inotify for discovery: wake up as soon as a container, pod or log file appears.

Polling every ``--discover-interval`` stays as the fallback (other systems, watch limits reached,
network filesystems that send no events), so an event only makes discovery *earlier*; a lost event
never loses data. This is what Fluent Bit's tail input does (inotify backend, stat fallback).

Only directories are watched — the roots and the folders below them where log files appear —
never the files themselves: appends are followed by the tailers, which keep their own offsets.
Uses the C library through ctypes: no dependency, and nothing at all on systems without inotify.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("logq.shipper.inotify")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

#: Directory changes that can mean a new or a rotated log file.
DIR_EVENTS = (
    IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1  # noqa: B018 - probe: missing on non-Linux systems
    except (OSError, AttributeError):
        return None
    return libc


class DirectoryWatcher:
    """Sets :attr:`changed` when any watched directory gains, loses or renames an entry."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._watched: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit_logged = False
        self.changed = asyncio.Event()
        """Set by an event; the waiter clears it before rescanning."""

    @classmethod
    def create(cls) -> DirectoryWatcher | None:
        """A watcher, or None where inotify is not available (discovery then only polls)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            log.warning("inotify unavailable, polling only error=%s", os.strerror(err))
            return None
        return cls(libc, fd)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin delivering events into ``loop`` (call from inside it)."""
        self._loop = loop
        loop.add_reader(self._fd, self._on_readable)

    @property
    def watched(self) -> set[str]:
        return set(self._watched)

    def watch(self, directory: str | Path) -> bool:
        """Watch one directory; False when it is missing or the watch limit is reached."""
        path = str(directory)
        if path in self._watched:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), DIR_EVENTS)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC and not self._limit_logged:
                self._limit_logged = True
                log.warning(
                    "inotify watch limit reached; new files there are found by polling. "
                    "Raise fs.inotify.max_user_watches to get events for all directories"
                )
            return False
        self._watched[path] = wd
        return True

    def watch_all(self, directories: list[Path]) -> None:
        """Watch these directories and forget the ones no longer listed (removed containers)."""
        wanted = {str(d) for d in directories}
        for path in list(self._watched):
            if path not in wanted:
                wd = self._watched.pop(path)
                self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if already gone
        for directory in directories:
            self.watch(directory)

    def _on_readable(self) -> None:
        # Drain everything: the content does not matter, only that something changed.
        while True:
            try:
                if not os.read(self._fd, 64 * 1024):
                    break
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("inotify read failed, polling only error=%s", exc)
                self.close()
                break
        self.changed.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a change or ``timeout`` seconds; True when a change woke us."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._watched.clear()


def directories_to_watch(
    docker_root: Path | None, cri_root: Path | None, globs: list[str]
) -> list[Path]:
    """The roots and the folders below them where new log files show up."""
    dirs: list[Path] = []
    if docker_root is not None and docker_root.is_dir():
        dirs.append(docker_root)
        dirs += _subdirs(docker_root)
    if cri_root is not None and cri_root.is_dir():
        dirs.append(cri_root)
        for pod in _subdirs(cri_root):
            dirs.append(pod)
            dirs += _subdirs(pod)
    for pattern in globs:
        static = _static_prefix(pattern)
        if static.is_dir():
            dirs.append(static)
    return dirs


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _static_prefix(pattern: str) -> Path:
    """The longest leading part of a glob without wildcards: ``/var/log/app`` of ``…/app/*.log``."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    prefix = Path(*parts) if parts else Path(".")
    return prefix if prefix.is_dir() or not parts else prefix.parent
