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
import ctypes.util
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
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.statx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_statx = _load_statx()

Identity = tuple[int, int, str, int | None]
"""(device, inode, fingerprint, birth time) of a file: one life of an inode, with its content's
first line (a file the shipper let go or passed over: :attr:`shipper.tailer.Tailer._released`)."""


def birth_time(fd: int) -> int | None:
    """The birth time of the open file ``fd`` in nanoseconds since the epoch, or None when
    the system or the file system does not tell it (see the module's docstring)."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf) != 0:
        return None  # ENOSYS (old kernel), EPERM (an old seccomp profile): as if unknown
    raw = buf.raw
    if not int.from_bytes(raw[_MASK_AT : _MASK_AT + 4], sys.byteorder) & _STATX_BTIME:
        return None
    sec = int.from_bytes(raw[_BTIME_AT : _BTIME_AT + 8], sys.byteorder, signed=True)
    nsec = int.from_bytes(raw[_BTIME_AT + 8 : _BTIME_AT + 12], sys.byteorder)
    if sec <= 0 and nsec == 0:
        return None  # not recorded (some file systems fill the mask with a zero time)
    return sec * 1_000_000_000 + nsec
