"""The rotate wait: a file renamed away may still get lines from a writer not reopened yet.

logrotate's ``create`` mode renames the file and creates a new one before the program reopens
its log, so the program's last lines go to the renamed file: it stays open, and what is appended
to it is read, for :data:`ROTATE_WAIT_SECONDS`.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from shipper.cursor import Cursor

if TYPE_CHECKING:
    from shipper.tailer import Tailer

ROTATE_WAIT_SECONDS = 5.0
"""A file renamed away stays open this long, also once the new file has data (another writer
may not have reopened yet), and what is appended to it meanwhile is read: logrotate's
``create`` mode renames the file and creates a new one before the program reopens its log (on
a signal, or later), so the program's last lines go to the renamed file. Fluent Bit's tail
``Rotate_Wait`` (5 s by default) does the same."""


class RotateWait:
    """Part of :class:`~shipper.tailer.Tailer`: files kept open in their rotate wait."""

    def _renamed_away(self: Tailer, cur: Cursor) -> None:
        """``cur``'s path names another file now: a rotation renamed it away. Its rotate wait
        starts, and its checkpoint says so (:attr:`~shipper.checkpoint.FileState.rotated`,
        saved with the next write): gone at the next start after it was read to its size at
        the stop, it was not counted as lost (``deleted_unread``, a page) -- the writer had
        moved on to the new file."""
        cur.rotated_at = time.monotonic()
        self._flag_rotated(cur)

    def _flag_rotated(self: Tailer, cur: Cursor) -> None:
        """``cur`` was renamed away by a rotation: its checkpoint says so
        (:attr:`~shipper.checkpoint.FileState.rotated`), with its size now. Also for a file a
        start finds only under its rotated name (see :meth:`shipper.resume.Resume._start`):
        the live file at the previous stop, rotated while the shipper was down, never seen
        renamed by a running shipper. Unflagged, a stop in its rotate wait (or while it held
        a split line's first parts), then ``max-file`` deleting it, paged ``deleted_unread``
        though it had been read to its end."""
        # Its size now, Docker's final one (dockerd writes nothing to a file it rotated): the
        # size noted up to a second ago may miss the lines written just before the rename.
        # Saved with the flag, then a kill (no stop to note sizes), or the flag set after the
        # stop noted them (a source still draining a deleted file looks on): the file, gone
        # at the next start with those lines unread, was taken as read to its end, unpaged.
        cur.note_seen()
        if not cur.state.rotated:
            cur.state.rotated = True
            self.registry.dirty = True

    def _in_rotate_wait(self: Tailer, cur: Cursor) -> bool:
        """Whether ``cur`` was renamed away less than :data:`ROTATE_WAIT_SECONDS` ago and is
        still on disk: its writer may still append (never under ``--once``)."""
        if self.once or cur.rotated_at is None:
            return False
        if time.monotonic() - cur.rotated_at >= ROTATE_WAIT_SECONDS:
            return False
        try:
            return os.fstat(cur.fd).st_nlink > 0
        except OSError:
            return False

    def _lingers(self: Tailer, head: Cursor) -> bool:
        """Whether ``head`` (renamed away, read to its end, the file after it has data) is
        still in its rotate wait, with no split line open in it."""
        return head not in self.parser.pending_origins() and self._in_rotate_wait(head)

    def _check_lingering(self: Tailer) -> None:
        """Files renamed away within the rotate wait: one that grew is read again first; one
        whose wait is over (or that was deleted) is let go."""
        for cur in list(self._lingering):
            expired = not self._in_rotate_wait(cur)
            grew = cur.size() > cur.linger_size
            if grew or expired:
                self._lingering.remove(cur)
                if expired:
                    cur.rotated_at = None  # then let go as any file read to its end
                self.cursors.insert(0, cur)  # read what it got first

    def _rotate_wait(self: Tailer, head: Cursor) -> bool:
        """Whether ``head``, renamed away and read to its end, may still get lines: for
        :data:`ROTATE_WAIT_SECONDS` after the rename, while it is on disk and the file after
        it has no data yet (a writer that has moved to the new file is done with the old)."""
        if not self._in_rotate_wait(head):
            return False
        if self.live is None:
            self._open_live()  # the new file, once it has a first line
        later = self.cursors[1] if len(self.cursors) > 1 else None
        return later is None or later.size() == 0
