"""The buffer's guard against a full ``--buffer-dir`` volume: the buffer counts as full while the
volume has less than a reserve free, so that a flush, the one thing that frees the disk, always
has room for its files (:class:`GuardedBuffer`)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from aggregator.buffer import Buffer

log = logging.getLogger("logq.aggregator")

#: Free space kept on the --buffer-dir volume (one segment's worth, within these bounds, and at
#: most 1/DISK_RESERVE_SHARE of the volume): below it appends wait, so that a flush, the one
#: thing that frees the disk, always has room for its small files (offsets, notes) and usually
#: for its spill (spill.py holds the rows in memory when it has not).
DISK_RESERVE_MIN = 1024 * 1024
DISK_RESERVE_MAX = 64 * 1024 * 1024
DISK_RESERVE_SHARE = 8
#: How long a free-space reading is trusted (minus what was appended since) when not near the
#: reserve.
DISK_RECHECK_SECONDS = 1.0


def disk_reserve_bytes(segment_bytes: int, volume_bytes: int | None = None) -> int:
    """Free bytes to keep under --buffer-dir for a flush (see :data:`DISK_RESERVE_MIN`)."""
    reserve = max(DISK_RESERVE_MIN, min(segment_bytes, DISK_RESERVE_MAX))
    if volume_bytes:  # a small volume: keep most of it for data
        reserve = min(reserve, volume_bytes // DISK_RESERVE_SHARE)
    return reserve


def disk_space(directory: Path) -> tuple[int, int]:
    """``(free, size)`` in bytes of the volume of ``directory`` (free: what we may write)."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


#: File systems held in memory: what they hold is gone when the host restarts.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
#: The mount table of this process's mount namespace (Linux).
MOUNTINFO = Path("/proc/self/mountinfo")


def warn_if_in_memory(directory: Path) -> None:
    """Warn when the buffer dir ``directory`` is on a file system held in memory (``/dev/shm``,
    ``/run``, a Kubernetes ``emptyDir`` with ``medium: Memory``): an ack says the records are
    durable, and there a restart of the host takes them, which the shippers, having their
    acks, never resend. Not refused: a test rig or a host that drains before it reboots may
    mean it. Silent where the mount table cannot be read (not Linux)."""
    try:
        mounts = MOUNTINFO.read_text(errors="replace")
    except OSError:
        return
    kind = file_system_type(os.path.realpath(directory), mounts)
    if kind in MEMORY_FILE_SYSTEMS:
        log.warning(
            "--buffer-dir %s is on %s, held in memory: acknowledged records waiting there are "
            "lost if the host restarts before they reach the warehouse; put the buffer dir on "
            "a disk (a PersistentVolumeClaim, not an emptyDir with medium: Memory)",
            directory,
            kind,
        )


def file_system_type(path: str, mountinfo: str) -> str | None:
    """The type of the file system holding ``path`` (absolute, links resolved) according to
    ``mountinfo`` (the text of ``/proc/<pid>/mountinfo``): the one mounted at the longest mount
    point above it, the last one mounted there if several were."""
    found, longest = None, -1
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = point == "/" or path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:
            found, longest = rest[0], len(point)
    return found


#: An escaped character of a mount point in mountinfo (``\040``: a space).
_OCTAL = re.compile(r"\\([0-7]{3})")


class GuardedBuffer(Buffer):
    """The buffer, counted as full also while its volume has less than ``reserve`` bytes free.

    Full means the Forward server stops reading (acks are withheld, shippers resend later or
    elsewhere) and a flush is started: without this, appends fill the disk to the last byte and
    a flush cannot write even its offsets file, so the segments that fill the disk are never
    deleted. ``on_change(reason)`` hears when appends start waiting for disk (a reason naming
    the directory and what to do) and when they resume (None).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_bytes: int,
        limit_bytes: int,
        on_change: Callable[[str | None, int], None] | None = None,
    ):
        super().__init__(directory, segment_bytes, limit_bytes)
        self.reserve = disk_reserve_bytes(segment_bytes)  # set from the volume size when read
        self.disk_low: str | None = None
        self._on_change = on_change
        self._free: int | None = None
        self._free_total = 0  # total_bytes when _free was read
        self._free_at = 0.0

    @property
    def full(self) -> bool:
        return super().full or self._short_of_disk()

    def check_limit_fits(self) -> None:
        """Warn at start when ``--buffer-limit-bytes`` is more than the volume can hold (its
        free space, what the buffer holds already, less the reserve): the disk, not the limit,
        then stops appends, and every other file on that volume is left without room. Not
        refused: data is safe either way (the reserve withholds acks in time)."""
        try:
            free, size = disk_space(self.dir)
        except OSError:
            return  # the appends say what is wrong with the volume
        room = free + self.total_bytes - disk_reserve_bytes(self.segment_bytes, size)
        if self.limit_bytes <= room:
            return
        log.warning(
            "--buffer-limit-bytes %s is more than --buffer-dir %s can hold: its volume has %s "
            "bytes free and the buffer holds %s, so the disk fills first (acks are then "
            "withheld at %s bytes free, and other files on that volume get no room); lower "
            "--buffer-limit-bytes to at most %s, or give the volume more room",
            f"{self.limit_bytes:,}",
            self.dir,
            f"{free:,}",
            f"{self.total_bytes:,}",
            f"{disk_reserve_bytes(self.segment_bytes, size):,}",
            f"{max(room, 0):,}",
        )

    def short_of_disk(self) -> str | None:
        """Why the volume is under the reserve (read again if the last reading is not to be
        trusted), else None. ``full`` does not tell it while the buffer is over its limit."""
        return self.disk_low if self._short_of_disk() else None

    def wake_if_space(self) -> None:
        """Let waiting readers go on if there is room again (space freed by anything)."""
        if self._space is not None and not self.full:
            self._space.set()

    def _short_of_disk(self) -> bool:
        estimate = None
        if self._free is not None and time.monotonic() - self._free_at < DISK_RECHECK_SECONDS:
            estimate = self._free - max(0, self.total_bytes - self._free_total)
        if estimate is None or estimate < 2 * self.reserve:  # near the reserve: read it again
            try:
                self._free, size = disk_space(self.dir)
            except OSError:
                return False  # no reading: appends go on and fail with their own error
            self.reserve = disk_reserve_bytes(self.segment_bytes, size)
            self._free_total, self._free_at = self.total_bytes, time.monotonic()
            self._set_disk_low(self._free)
        return self.disk_low is not None

    def _set_disk_low(self, free: int) -> None:
        low = free < self.reserve
        if low == (self.disk_low is not None):
            if self._on_change is not None:
                self._on_change(self.disk_low, free)
            return
        if low:
            self.disk_low = (
                f"--buffer-dir {self.dir} has {free} bytes free, under the {self.reserve} a "
                "flush needs: acks are withheld until there is room again; "
                + (
                    "the buffer holds no data, so other files on that volume take the space: "
                    "free it or give the volume more room"
                    if self.total_bytes == 0
                    else "flushes free what the buffer holds once the warehouse takes it (give "
                    "the volume more room, lower --buffer-limit-bytes, or check the warehouse "
                    "is reachable)"
                )
            )
            log.warning("%s", self.disk_low)
        else:
            self.disk_low = None
            log.info("--buffer-dir %s has %d bytes free again: taking data", self.dir, free)
        if self._on_change is not None:
            self._on_change(self.disk_low, free)
