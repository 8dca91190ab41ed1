"""Pinning: while a source is behind, opening each file the runtime rotates in as it appears.

An open descriptor keeps a rotated file readable after the runtime deletes it. Rotated files
opened while the source is behind (pinned, so the runtime's deletions lose nothing) are bounded
per source (:data:`MAX_PINNED_FILES`) and by the process's open-files budget (see
:mod:`shipper.fd_budget`), which live files count against too. Files rotated in and gone between
two checks are counted as lost (see :meth:`Pinning._check_overrun`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shipper import fd_budget
from shipper.cursor import Cursor
from shipper.discover import compressed_siblings, rotated_siblings
from shipper.fingerprint import gzip_identity
from shipper.rotated import modified_since, rotation_path

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")

GzAt = tuple[int, int, int, int]


def gz_at(st: os.stat_result) -> GzAt:
    """(device, inode, mtime, size) of a compressed rotated copy: what tells the copies there
    at a source's start from those made later (see :meth:`Pinning._unseen_compressed`). The
    size too: the runtime deletes the oldest copy (``max-file``) and the next one compressed
    can get its inode, in the same tick of a coarse clock (1 s file times); taken for the copy
    there at the start, a file never read was not counted lost (R3s20)."""
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


PIN_CHECK_SECONDS = 0.25
"""How often a source checks whether its live file was rotated (see pin_new_generation)."""
PIN_CHECK_FAST_SECONDS = 0.05
"""The same for a source that rotates fast (two rotations less than :data:`FAST_ROTATION_GAP`
apart, the last within :data:`FAST_ROTATION_WINDOW` seconds): with compressed rotations (Docker
``compress``) a file exists uncompressed only while it is live, and one rotated away between
two checks is never read. Sources rotating every few minutes keep the slower pace: 200 idle
sources looked at every 0.05 s cost a sixth of a core."""
FAST_ROTATION_GAP = 2.0
FAST_ROTATION_WINDOW = 30.0
MAX_PINNED_FILES = 64
"""Rotated files a source keeps open at most while it is behind (bounds descriptors)."""


class Pinning:
    """Part of :class:`~shipper.tailer.Tailer`: pinning new generations while behind."""

    def pin_new_generation(self: Tailer) -> None:
        """While we are behind, open each file the runtime rotates in as soon as it appears.

        An open descriptor keeps a rotated file readable even after the runtime deletes it
        (``max-file``), so a shipper that lags by more than the rotation window still loses
        nothing. Without this, rotations would only be noticed at the end of the file being
        read, and generations rotated *and* deleted meanwhile would be gone.
        """
        live = self.live
        if self._parked is not None:
            return  # closed while idle: poll() reopens it when it changes
        if live is None:
            # A rotation left a new file with no complete line yet. Open it once it has one,
            # here too: reading may be waiting for acks, and the runtime keeps rotating.
            if self._floor is not None and not self._pin_full():
                self._open_live()
            return
        if self._pin_full():
            return
        try:
            st = os.stat(self.spec.path)
        except OSError:
            return  # renamed and not recreated yet, or deleted: poll() handles it at EOF
        if (st.st_dev, st.st_ino) == (live.dev, live.ino):
            return
        log.info("log file rotated while behind path=%s read=%d", live.path, live.read_pos)
        self._check_overrun(live)
        self._renamed_away(live)
        self._floor = os.fstat(live.fd).st_mtime_ns
        self.live = None
        if not self._open_live():
            self.live = live  # the new file is not complete yet (no first line): later

    def pin_check_seconds(self: Tailer) -> float:
        """How long until the next rotation check while behind (see PIN_CHECK_FAST_SECONDS)."""
        recent = time.monotonic() - self.last_rotation < FAST_ROTATION_WINDOW
        fast = recent and self.rotation_gap < FAST_ROTATION_GAP
        return PIN_CHECK_FAST_SECONDS if fast else PIN_CHECK_SECONDS

    def _check_overrun(self: Tailer, last: Cursor) -> None:
        """``last`` was the live file when we last looked (or opened it) and the path now
        names another file (also notes the rotation's time, see :meth:`pin_check_seconds`).
        If ``last`` is gone from the folder already, files may have been
        rotated in and gone between two looks, never opened:

        * with compressed rotations (Docker ``compress``, kubelet), each ``.gz`` newer than
          ``last`` whose first line is none we opened is such a file: each counts once;
        * else, a plain rotated copy newer than ``last`` means the runtime rotated
          ``max-file`` times or more since that look. How many files were lost cannot be known
          (exactly ``max-file`` rotations lose nothing): one possible loss is counted.

        A ``last`` compressed away after a single rotation loses nothing (we hold it open)."""
        now = time.monotonic()
        self.rotation_gap, self.last_rotation = now - self.last_rotation, now
        if not last.deleted():
            return
        try:
            floor = os.fstat(last.fd).st_mtime_ns
            rot = rotation_path(self.spec.path)
            newer = len(modified_since(rotated_siblings(rot), floor))
            compressed, unseen = self._unseen_compressed(rot, floor)
        except OSError:
            return
        lost = len(unseen) if compressed else int(newer > 0)
        for _ in range(lost):
            self.on_loss("rotated_unseen")
        if not lost:
            return
        last.gap_after = True
        log.warning(
            "log file rotated away between two checks of its path: the runtime rotates faster "
            "than the shipper looks (every %g s while behind), and %s; raise the rotation size "
            "or count (Docker max-size/max-file, kubelet containerLogMaxSize/"
            "containerLogMaxFiles) path=%s",
            PIN_CHECK_SECONDS,
            f"{lost} file(s) were compressed before they were read (their lines are lost)"
            if compressed
            else "files rotated in and deleted in between may be lost",
            self.spec.path,
        )

    def _count_unseen(self: Tailer, floor: int, before: Cursor | None) -> None:
        """Count the compressed rotated copies newer than ``floor`` that were never read (see
        :meth:`_unseen_compressed`) as ``rotated_unseen``, when the live file is looked for
        without one just seen rotated (:meth:`_check_overrun` counts those): one empty, or
        not there, when the source started or after a rotation, that the runtime wrote,
        rotated and compressed before it was opened. A split line open at the end of
        ``before`` (the newest file still to read, if any) is not continued by later parts."""
        _, unseen = self._unseen_compressed(rotation_path(self.spec.path), floor)
        for _ in unseen:
            self.on_loss("rotated_unseen")
        if unseen:
            if before is not None:
                before.gap_after = True
            log.warning(
                "log file rotated away and compressed before the shipper could open it: %d "
                "file(s) were compressed before they were read (their lines are lost); the "
                "runtime rotates faster than the shipper looks (every %g s), raise the "
                "rotation size or count (Docker max-size/max-file, kubelet "
                "containerLogMaxSize/containerLogMaxFiles) path=%s",
                len(unseen),
                PIN_CHECK_SECONDS,
                self.spec.path,
            )

    def _unseen_compressed(
        self: Tailer, rot: Path, floor: int
    ) -> tuple[bool, list[tuple[str, int]]]:
        """(whether ``rot`` has compressed rotated copies at all, the identities of those newer
        than ``floor`` whose first line is none this source opened and that were not counted
        before). Their lines were never read: compressed files are not shipped."""
        copies = compressed_siblings(rot)
        unseen: list[tuple[str, int]] = []
        for path, st in modified_since(copies, floor):
            if gz_at(st) in self._gz_at_start:
                continue  # compressed before this start: its file is the start's to judge
            ident = gzip_identity(path)
            if ident is None or ident[0] is None:
                continue  # being written: the next look counts it
            fp, size = ident[0], ident[1]
            if fp in self._opened or (fp, size) in self._counted:
                continue
            if len(self._counted) >= 4096:
                self._counted.clear()  # older copies are below any later floor anyway
            self._counted.add((fp, size))
            unseen.append((fp, size))
        return bool(copies), unseen

    def _pin_full(self: Tailer) -> bool:
        """Whether this source may not open another file while behind: it holds
        :data:`MAX_PINNED_FILES`, or the process is at its descriptor budget
        (:func:`shipper.fd_budget.pin_budget`) and this source already holds one. Logged and
        counted once per episode per source."""
        n = len(self.cursors)
        over_budget = n >= 1 and fd_budget.open_files() >= fd_budget.pin_budget()
        if n < MAX_PINNED_FILES and not over_budget:
            self._pin_limit_logged = False
            return False
        if not self._pin_limit_logged:
            self._pin_limit_logged = True
            self.on_loss("pin_limit")
            log.warning(
                "source is %d rotated files behind and %s; newer rotations are found when it "
                "catches up, and files the runtime deletes before that are lost path=%s "
                "open_log_files=%d",
                n,
                "the process is at its file descriptor budget"
                if over_budget
                else f"at the per-source limit of {MAX_PINNED_FILES}",
                self.spec.path,
                fd_budget.open_files(),
            )
        return True
