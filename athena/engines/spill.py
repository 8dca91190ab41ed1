"""The local engine's spill folder: one per ``logq`` process, and none left by a dead one.

DuckDB spills a query larger than memory to ``$TMPDIR/logq-duckdb-<pid>-<random>`` (see
:func:`spill_directory`). A ``logq`` that exits removes its folder; one killed with SIGKILL or by
the OOM killer cannot, and its folder (gigabytes, after a large spill) stayed until someone
deleted it. The pid alone cannot tell a dead owner: a ``/tmp`` shared by containers holds the
folders of other pid namespaces, where the same number is another, live process.

So a live ``logq`` holds an exclusive ``flock`` on :data:`LOCK_NAME` in its folder for its whole
life, and the kernel lets go of it however the process ends. Before its first local query, each
``logq`` tries the lock of every other ``logq-duckdb-*`` folder of its own user, without
waiting: taking it proves the owner dead (whatever its pid namespace, on one file system), and
the folder is deleted. The lock file is made under another name, locked, then renamed in, so a
sweep never finds an unlocked ``logq.lock`` of a live ``logq``; a folder just made, without one
yet, is new, and a folder without a lock file goes only when old (below). The random part of the
name keeps two live processes of the same pid (two containers) from sharing a folder.

``flock`` must mean the same to every ``logq`` sharing the folder: it does on one machine (a
``/tmp`` shared by containers) and over NFS with locking; an NFS mount with ``nolock`` (or
``local_lock``) keeps locks to each host, so a ``$TMPDIR`` shared that way across hosts is not
supported (another host's sweep would delete a live folder, and its next spill would fail).

A folder without a lock file is an older ``logq``'s (``logq-duckdb-<pid>``, which DuckDB itself
made when it spilled and removed when the query ended): its owner cannot be asked, so it is
deleted only when nothing in it changed for :data:`UNLOCKED_AGE_HOURS` hours.

The sweep never fails or delays a query beyond reading the folder of temporary files: any error
is ignored (logged at debug level, to the ``logq.spill`` logger), and ``logq --help`` or an
Athena query never runs it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import stat
import time

#: How every spill folder's name starts (the sweep looks at no other folder).
PREFIX = "logq-duckdb-"
#: The file a live ``logq`` holds locked in its spill folder.
LOCK_NAME = "logq.lock"
#: A spill folder without a lock file (an older logq's) is deleted when nothing in it has
#: changed for this long: its owner may still run (a long ``tail --follow``), and cannot be asked.
UNLOCKED_AGE_HOURS = 24

log = logging.getLogger("logq.spill")

#: This process's folder and its open lock file (held until exit; -1: not locked), by the
#: folder of temporary files it is in (one, but for tests that change ``$TMPDIR``).
_mine: dict[str, tuple[str, int]] = {}


def spill_directory() -> str:
    """This process's spill folder, made (and locked) on the first call, after a sweep of the
    folders dead ``logq`` processes left (:func:`sweep`): ``logq-duckdb-<pid>-<random>`` in
    the folder of temporary files (``$TMPDIR``, else the first writable of /tmp, /var/tmp...).
    Removed when the process exits.

    ``""`` (no spilling) when no folder is writable, as on a read-only root filesystem without
    a writable /tmp, or when its name is not UTF-8 (DuckDB could not take it): queries that fit
    in memory run as before, and one that does not fails with DuckDB's "Out of Memory"."""
    import tempfile

    try:
        root = tempfile.gettempdir()
        root.encode("utf-8")
    except (OSError, UnicodeError):  # "No usable temporary directory found in [...]"
        return ""
    if root in _mine:
        return _mine[root][0]
    sweep(root)
    try:
        folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
    except OSError as exc:
        log.debug("no spill folder in %s: %s", root, exc)
        return ""
    try:
        fd = _locked_file(folder)
    except OSError as exc:  # spilling works without the lock; only a kill would leave it
        log.debug("could not lock the spill folder %s: %s", folder, exc)
        fd = -1
    if not _mine:
        atexit.register(remove_mine)
    _mine[root] = (folder, fd)
    return folder


def _locked_file(folder: str) -> int:
    """Make ``folder``'s lock file, locked: made under another name, locked, then renamed to
    :data:`LOCK_NAME`, so that a sweep never finds it unlocked. The open descriptor."""
    building = os.path.join(folder, f".{LOCK_NAME}.new")
    fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(building, os.path.join(folder, LOCK_NAME))
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_mine() -> None:
    """At exit: this process's folder removed (DuckDB removed its own files when it closed),
    then the lock let go. Also called by an exit that skips the exit handlers
    (:func:`athena.engines.local.exit_now_if_stuck`)."""
    while _mine:
        _, (folder, fd) = _mine.popitem()
        shutil.rmtree(folder, ignore_errors=True)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def sweep(root: str) -> list[str]:
    """Delete the spill folders in ``root`` whose ``logq`` is dead (see the module doc): those
    of this user whose lock can be taken, and unlocked ones unchanged for
    :data:`UNLOCKED_AGE_HOURS`. The folders deleted; never raises."""
    deleted: list[str] = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(PREFIX)]
    except OSError as exc:
        log.debug("cannot list %s for dead spill folders: %s", root, exc)
        return deleted
    uid = os.getuid()
    mine = {folder for folder, _ in _mine.values()}
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or entry.path in mine:
                continue
            if _delete_if_dead(entry.path):
                deleted.append(entry.path)
        except OSError as exc:  # another sweep deleted it meanwhile, no permission...
            log.debug("left the spill folder %s: %s", entry.path, exc)
    return deleted


def _delete_if_dead(folder: str) -> bool:
    """Delete ``folder`` if its owner is dead: its lock taken at once, or (no lock file) nothing
    in it changed for :data:`UNLOCKED_AGE_HOURS`."""
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        if _changed_within(folder, UNLOCKED_AGE_HOURS * 3600):
            return False
        shutil.rmtree(folder)
        log.debug("deleted the unlocked spill folder %s (unchanged for a day)", folder)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its logq runs
        shutil.rmtree(folder)  # the lock still held: no other sweep deletes it meanwhile
        log.debug("deleted the spill folder %s of a logq that is gone", folder)
        return True
    finally:
        os.close(fd)


def _changed_within(folder: str, seconds: float) -> bool:
    """Whether ``folder`` or a file in it changed in the last ``seconds``."""
    since = time.time() - seconds
    if os.stat(folder, follow_symlinks=False).st_mtime >= since:
        return True
    with os.scandir(folder) as entries:
        return any(e.stat(follow_symlinks=False).st_mtime >= since for e in entries)
