"""Lines the runtime split (Docker 16 KiB partial entries, CRI ``P`` parts), across rotations.

One parser serves all files of a source, so a line the runtime split is joined even when a
rotation falls between its parts. No file's checkpoint passes the first part of a line that is
not acknowledged whole: a rotated file holding such parts keeps its checkpoint (at the line's
start) until the batch completing the line is acknowledged, so a restart at any point reads the
whole line again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from shipper.checkpoint import MAX_CUTS
from shipper.cursor import Chunk, Cursor

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")

SPLIT_FLUSH_SECONDS = 5.0
"""A line the runtime split (Docker 16 KiB partial entries, CRI ``P`` parts) whose next part has
not come for this long, while the file has nothing new, is shipped as it is (Fluent Bit's
``Docker_Mode_Flush``, 4 s by default): a container that died mid-line would otherwise hold it,
and its file's checkpoint, for as long as the source lives."""


class SplitLines:
    """Part of :class:`~shipper.tailer.Tailer`: split lines held, flushed and settled."""

    def _flush_at_gap(self: Tailer, head: Cursor) -> Chunk | None:
        """The split lines still open at the end of ``head``, after which files were lost,
        as they are (:attr:`Cursor.gap_after`)."""
        self._gap_flush = None
        head.gap_after = False
        return self._flushed(
            head,
            logging.WARNING,
            "shipping split lines as they are: their next parts were in files rotated away unread",
        )

    def _flush_split(self: Tailer, head: Cursor) -> Chunk | None:
        """At the end of the live file, split lines whose next part has not come for
        :data:`SPLIT_FLUSH_SECONDS`, their parts in it or in files rotated away before it
        (held): shipped as they are. The held files' checkpoints go once they are acked."""
        if self.once or time.monotonic() - self._last_data < SPLIT_FLUSH_SECONDS:
            return None  # --once leaves unfinished lines to the next run
        origins = self.parser.pending_origins()
        if not origins or not origins <= {head, *self._held}:
            return None
        return self._flushed(
            head,
            logging.INFO,
            f"shipping an unfinished split line as it is: its next part has not come for "
            f"{SPLIT_FLUSH_SECONDS:g} s",
        )

    def _flushed(self: Tailer, head: Cursor, level: int, why: str) -> Chunk | None:
        """Every open split line, as it is, in a chunk of ``head`` (offsets one past its read
        position); held files are freed once it is acknowledged."""
        self.parser.origin = head
        lines = self.parser.flush(head, head.read_pos + 1, every=True)
        if not len(lines):
            return None
        log.log(level, "%s lines=%d path=%s", why, len(lines), head.path)
        # Where the parts were cut, for a restart that reads them again before this is acked.
        if len(head.state.cuts) < MAX_CUTS:
            head.state.cuts.append([head.read_pos, head.read_pos + 1])
            self.registry.put(head.key, head.state)
        chunk = Chunk(head, lines, head._resume(), 0, save_first=True)
        if self._held:
            self._settle_held(chunk)
        return chunk

    def _settle_held(self: Tailer, chunk: Chunk) -> None:
        """Split lines begun in released files that ``chunk`` completed: their files'
        checkpoints go once the chunk is acknowledged."""
        pending = self.parser.pending_origins()
        for held in [h for h in self._held if h not in pending]:
            self._held.remove(held)
            chunk.cursor.frees.append((chunk.resume, held))

    def _split_waits(self: Tailer, head: Cursor) -> bool:
        """``head`` (rotated away, read to its end) holds the first parts of a split line and
        no file after it is open yet (the new one is empty): kept until the next part comes
        in a new file, or for :data:`SPLIT_FLUSH_SECONDS`, after which the parts are shipped
        as they are by the next read (a container that died mid-line, then rotated)."""
        if self.once or head not in self.parser.pending_origins():
            return False
        if self.live is None:
            self._open_live()
        if len(self.cursors) > 1:
            return False  # the next file goes on with the line, or shows it is over
        if time.monotonic() - self._last_data >= SPLIT_FLUSH_SECONDS:
            self._gap_flush = head
            return False
        return True

    def _free_held(self: Tailer, cur: Cursor, resume: int) -> None:
        """Split lines begun in released files are acknowledged up to ``resume`` of ``cur``:
        those files' checkpoints can go."""
        keep: list[tuple[int, Cursor]] = []
        for threshold, held in cur.frees:
            if threshold > resume:
                keep.append((threshold, held))
                continue
            held.held = False
            if held.closed and held.outstanding == 0:
                self.registry.remove(held.key)
        cur.frees = keep
