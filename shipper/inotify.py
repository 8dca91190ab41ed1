"""Linux inotify: wake discovery when a container, pod or log file appears, and wake an idle
source when its live file changes.

Polling every ``--discover-interval`` stays as the fallback (other systems, watch limits reached,
network filesystems that send no events), so an event only makes discovery *earlier*; a lost event
never loses data. This is what Fluent Bit's tail input does (inotify backend, stat fallback).

:class:`DirectoryWatcher` watches the roots and the folders below them where log files appear.
:class:`FileWatcher` watches the one file each source reads at its end (its live inode), so that
an idle source sleeps until that file is written, renamed, truncated or unlinked instead of
looking at it every ``--poll-interval``; the tailers still keep their own offsets and do all the
reading and rotation handling, an event only says *when* to look.
Uses the C library through ctypes: no dependency, and nothing at all on systems without inotify.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from shipper.listings import Listings, subfolders

log = logging.getLogger("logq.shipper.inotify")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

#: Directory changes that can mean a new or a rotated log file.
DIR_EVENTS = (
    IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
#: Changes of a live log file that its source must look at: appended to or truncated
#: (``IN_MODIFY``), unlinked (``IN_ATTRIB``: its link count dropped), renamed away, deleted.
FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVE_SELF | IN_DELETE_SELF


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


def _inotify(unavailable: str) -> tuple[ctypes.CDLL, int] | None:
    """The C library and a new non-blocking inotify descriptor, or None (``unavailable`` is
    logged when the system has inotify but refuses one: the per-user instance limit)."""
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        log.warning("%s error=%s", unavailable, os.strerror(err))
        return None
    return libc, fd


class _Inotify:
    """One inotify descriptor delivering its events into an event loop (:meth:`_on_readable`)."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin delivering events into ``loop`` (call from inside it)."""
        self._loop = loop
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop what the watches were for (the descriptor is closed)."""

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._forget()


class DirectoryWatcher(_Inotify):
    """Sets :attr:`changed` when any watched directory gains, loses or renames an entry."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        super().__init__(libc, fd)
        self._watched: dict[str, int] = {}
        self._limit_logged = False
        self.changed = asyncio.Event()
        """Set by an event; the waiter clears it before rescanning."""

    @classmethod
    def create(cls) -> DirectoryWatcher | None:
        """A watcher, or None where inotify is not available (discovery then only polls)."""
        made = _inotify("inotify unavailable, polling only")
        return None if made is None else cls(*made)

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

    def _forget(self) -> None:
        self._watched.clear()


NETWORK_FILESYSTEMS = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x5346414F: "afs",
    0x0BD00BD0: "lustre",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x47504653: "gpfs",
}
"""``statfs`` magic numbers of filesystems whose files may be written by another machine:
inotify reports only the writes made through this kernel, so their files are polled."""

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class FileWatcher(_Inotify):
    """One inotify descriptor for the live files of every source: a change sets the
    :class:`asyncio.Event` of each source watching that file.

    Events coalesce into the source's one Event (setting it again costs nothing), so a burst
    of appends wakes a source once. A file is watched through ``/proc/self/fd/N``: the very
    inode the tailer holds open, even if its path was renamed or unlinked meanwhile. Two
    sources on one inode share its watch descriptor (the kernel returns the same one); it is
    removed when the last of them lets go. ``watch`` returning None means: poll this file
    (watch limit reached, a network filesystem, /proc missing) -- never an error.
    """

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        super().__init__(libc, fd)
        self._subscribers: dict[int, set[asyncio.Event]] = {}
        """Watch descriptor -> the Events of the sources following that file."""
        self._remote: dict[int, str | None] = {}
        """Device -> its network filesystem's name, None for a local one (asked once)."""
        self._logged: set[str] = set()
        self.on_refused: Callable[[], None] | None = None
        """Called once per file the kernel refuses a watch (``fs.inotify.max_user_watches``
        reached): a metric. A file offered again after a refusal is not counted again."""
        self._refused: set[tuple[int, int]] = set()
        """(device, inode) of files refused a watch (bounded: cleared past 100,000)."""

    @classmethod
    def create(cls) -> FileWatcher | None:
        """A watcher, or None where inotify is not available (sources then only poll)."""
        if _libc() is None:
            log.info("no inotify on this system: log files are polled every --poll-interval")
            return None
        made = _inotify("inotify unavailable, log files are polled")
        return None if made is None else cls(*made)

    @property
    def watches(self) -> int:
        """Watch descriptors in use (one per watched inode)."""
        return len(self._subscribers)

    def watch(self, file_fd: int, dev: int, wake: asyncio.Event) -> int | None:
        """Set ``wake`` whenever the file open as ``file_fd`` (on device ``dev``) changes.

        Returns the watch descriptor to give back to :meth:`unwatch`, or None when this file
        cannot be watched and must be polled."""
        if self._fd < 0 or self._is_remote(file_fd, dev):
            return None
        wd = self._libc.inotify_add_watch(
            self._fd, f"/proc/self/fd/{file_fd}".encode(), FILE_EVENTS
        )
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                self._count_refused(file_fd, dev)
                self._log_once(
                    "limit",
                    "inotify watch limit reached: log files beyond it are polled every "
                    "--poll-interval. Raise fs.inotify.max_user_watches to have them wait for "
                    "events",
                )
            else:
                self._log_once(
                    f"err{err}",
                    f"cannot watch log files with inotify, polling them error={os.strerror(err)}",
                )
            return None
        self._subscribers.setdefault(wd, set()).add(wake)
        return wd

    def _count_refused(self, file_fd: int, dev: int) -> None:
        try:
            ino = os.fstat(file_fd).st_ino
        except OSError:
            return
        if (dev, ino) in self._refused:
            return
        if len(self._refused) >= 100_000:
            self._refused.clear()
        self._refused.add((dev, ino))
        if self.on_refused is not None:
            self.on_refused()

    def watching(self, wd: int, wake: asyncio.Event) -> bool:
        """Whether ``wake`` still gets the events of ``wd`` (the kernel drops a watch when its
        file is deleted and closed, or its filesystem unmounted)."""
        return wake in self._subscribers.get(wd, ())

    def unwatch(self, wd: int, wake: asyncio.Event) -> None:
        """``wake`` no longer follows ``wd``; the watch goes with its last follower."""
        subs = self._subscribers.get(wd)
        if subs is None:
            return
        subs.discard(wake)
        if not subs:
            del self._subscribers[wd]
            if self._fd >= 0:
                self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if already gone

    def _is_remote(self, file_fd: int, dev: int) -> bool:
        if dev not in self._remote:
            self._remote[dev] = self._fs_name(file_fd)
        name = self._remote[dev]
        if name is not None:
            self._log_once(
                name,
                f"log files on a network filesystem ({name}): inotify does not see writes made "
                "by other machines, so they are polled every --poll-interval",
            )
        return name is not None

    def _fs_name(self, file_fd: int) -> str | None:
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
        if self._libc.fstatfs(file_fd, buf) != 0:
            return None
        # f_type (__fsword_t, a long on every Linux ABI) is the struct's first field.
        magic = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
        return NETWORK_FILESYSTEMS.get(magic)

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message)

    def _on_readable(self) -> None:
        woken: set[asyncio.Event] = set()
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("inotify read failed, log files are polled error=%s", exc)
                woken = {e for subs in self._subscribers.values() for e in subs}
                self.close()
                break
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:  # events were lost: everyone looks
                    woken.update(e for subs in self._subscribers.values() for e in subs)
                    continue
                if mask & IN_IGNORED:  # the watch is gone: its followers poll and watch again
                    woken.update(self._subscribers.pop(wd, ()))
                    continue
                woken.update(self._subscribers.get(wd, ()))
        for event in woken:
            event.set()

    def _forget(self) -> None:
        self._subscribers.clear()


def directories_to_watch(
    docker_root: Path | None,
    cri_root: Path | None,
    globs: list[str],
    listings: Listings | None = None,
) -> list[Path]:
    """The roots and the folders below them where new log files show up, as ``listings``
    keeps them (listed again only when they changed: discovery's
    :attr:`~shipper.discover.Discoverer.listings`, on the same thread)."""
    folders = listings if listings is not None else Listings()
    dirs: list[Path] = []
    if docker_root is not None and docker_root.is_dir():
        dirs.append(docker_root)
        dirs += _subdirs(str(docker_root), folders)
    if cri_root is not None and cri_root.is_dir():
        dirs.append(cri_root)
        for pod in _subdirs(str(cri_root), folders):
            dirs.append(pod)
            dirs += _subdirs(str(pod), folders)
    for pattern in globs:
        static = _static_prefix(pattern)
        if static.is_dir():
            dirs.append(static)
    return dirs


def _subdirs(path: str, listings: Listings) -> list[Path]:
    try:
        entries = listings.get(path, functools.partial(subfolders, path))
    except OSError:
        return []
    return [Path(e.path) for e in entries]


def _static_prefix(pattern: str) -> Path:
    """The longest leading part of a glob without wildcards: ``/var/log/app`` of ``…/app/*.log``."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    prefix = Path(*parts) if parts else Path(".")
    return prefix if prefix.is_dir() or not parts else prefix.parent
