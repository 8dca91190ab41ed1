"""When a file's inode was created (its birth time): tells a file from a later one on its inode.

ext4 hands a freed inode to the next file created, so logrotate's ``create`` mode (delete the
oldest rotated file, rename the live file, create a new one) gives the new live file the inode
just freed. With a fixed first line (a CSV header, W3C's ``#Version: 1.0``, a banner) the new
file has the old one's device, inode and fingerprint, and used to get its ``source_id``: the
aggregator dropped its lines up to the old file's size as resends. The birth time differs
between the two lives of an inode; it stays the same through a rename and a truncation in
place (copytruncate: the ``source_id`` epoch tells those apart), and a copy (gzip, copytruncate's
copy) has another inode, so it is recognised by its content as before.

Python 3.11 has no ``os.statx``: libc's ``statx(2)`` is called through :mod:`ctypes`. Where
there is none (a file system that does not record it -- NFS, some FUSE --, a kernel before
4.11, a libc without ``statx``), :func:`birth_time` is None and callers fall back to the
identity without it, as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800
_STATX_SIZE = 256
"""``struct statx`` is 256 bytes (with its spare fields)."""
_MASK_AT = 0
"""``stx_mask`` (u32) at byte 0: which fields the file system filled in."""
_BTIME_AT = 0x50
"""``stx_btime`` (``struct statx_timestamp``: s64 seconds, u32 nanoseconds) at byte 0x50."""


def _load_statx() -> Callable[..., int] | None:
    """libc's ``statx``, or None where libc has none (glibc < 2.28, other libcs)."""
    try:  # the process's own symbols, libc's among them (find_library would run ldconfig)
        fn = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_statx = _load_statx()
log = logging.getLogger("logq.shipper.birth")
_told = False
"""Whether the missing birth times were logged (once a process)."""

Identity = tuple[int, int, str, int | None]
"""(device, inode, fingerprint, birth time) of a file: one life of an inode, with its content's
first line (a file the shipper let go or passed over: :attr:`shipper.tailer.Tailer._released`)."""


def birth_time(fd: int) -> int | None:
    """The birth time of the open file ``fd`` in nanoseconds since the epoch, or None when
    the system or the file system does not tell it (see the module's docstring)."""
    if _statx is None:
        return _unknown("this C library has no statx()")
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf) != 0:
        # ENOSYS (old kernel), EPERM (an old seccomp profile): as if unknown
        return _unknown(f"statx() failed: {os.strerror(ctypes.get_errno())}")
    raw = buf.raw
    if not int.from_bytes(raw[_MASK_AT : _MASK_AT + 4], sys.byteorder) & _STATX_BTIME:
        return _unknown("the file system does not record them")
    sec = int.from_bytes(raw[_BTIME_AT : _BTIME_AT + 8], sys.byteorder, signed=True)
    nsec = int.from_bytes(raw[_BTIME_AT + 8 : _BTIME_AT + 12], sys.byteorder)
    if sec <= 0 and nsec == 0:  # some file systems fill the mask with a zero time
        return _unknown("the file system does not record them")
    return sec * 1_000_000_000 + nsec


def _unknown(reason: str) -> None:
    """None, and once a process a WARNING: without birth times the protection is off."""
    global _told
    if not _told:
        _told = True
        log.warning(
            "file birth times are not available (%s): a log file created on the inode of a "
            "deleted one with the same first line (a fixed header or banner) may have its "
            "lines taken for resends of the old file's and dropped; keep log files on a file "
            "system that records them (ext4, xfs, btrfs, tmpfs) where that matters",
            reason,
        )
    return None
