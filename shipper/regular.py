"""Opening files that must be regular files, without ever blocking.

A plain ``open()`` of a FIFO waits for a writer, and the shipper's event loop with it: a
``<id>-json.log``, a rotated ``.1``, a pod's ``0.log``, a ``config.v2.json`` or the checkpoint
registry made a FIFO (by mistake, or by anyone who can write there) stopped every source, the
metrics server and SIGTERM. :func:`open_regular` opens with ``O_NONBLOCK`` (a FIFO opens at
once, a socket fails) and refuses whatever is not a regular file (FIFO, device, directory)
with :class:`NotRegularFile`, so callers skip it with a warning naming the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The path names something other than a regular file (its kind is in ``strerror``)."""

    mode: int = 0


def kind(mode: int) -> str:
    """What a file of ``mode`` is, in words (``a FIFO (named pipe)``...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def not_regular(path: str | os.PathLike[str], mode: int) -> NotRegularFile:
    exc = NotRegularFile(errno.EINVAL, f"not a regular file but {kind(mode)}", os.fspath(path))
    exc.mode = mode
    return exc


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file ``path`` (close-on-exec, blocking reads);
    raises :class:`NotRegularFile` for anything else, and what ``os.open`` raises. Never
    waits for a FIFO's writer."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    fd = open_regular(path)
    with open(fd, "rb", closefd=True) as f:
        return f.read()


def is_regular(path: Path | str) -> bool:
    """Whether ``path`` (followed if a link) is a regular file now."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
