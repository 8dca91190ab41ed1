"""Lines the runtime split (Docker 16 KiB partial entries, CRI ``P`` parts), across rotations.

One parser serves all files of a source, so a line the runtime split is joined even when a
rotation falls between its parts. No file's checkpoint passes the first part of a line that is
not acknowledged whole: a rotated file holding such parts keeps its checkpoint (at the line's
start) until the batch completing the line is acknowledged, so a restart at any point reads the
whole line again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from shipper import gz_pool
from shipper.checkpoint import MAX_CUTS
from shipper.cursor import Chunk, Cursor
from shipper.fingerprint import fingerprint
from shipper.held_gz import UnseenQuestion, held_by_compressed, unseen_cut
from shipper.lines import Lines
from shipper.regular import open_regular
from shipper.removed import inode_in_folder

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")

SPLIT_FLUSH_SECONDS = 5.0
"""A line the runtime split (Docker 16 KiB partial entries, CRI ``P`` parts) whose next part has
not come for this long after its newest part was read, with the file read to its end, is
shipped as it is (Fluent Bit's ``Docker_Mode_Flush``, 4 s by default): a container that died
mid-line would otherwise hold it, and its file's checkpoint, for as long as the source lives.
Timed per stream: a container that keeps writing whole lines on stderr does not hold a stdout
line left unfinished (a prompt without ``\n``)."""


class SplitLines:
    """Part of :class:`~shipper.tailer.Tailer`: split lines held, flushed and settled."""

    def _flush_at_gap(self: Tailer, head: Cursor) -> Chunk | None:
        """The split lines (and ``--multiline`` records) still open at the end of ``head``,
        as they are: files after it were lost (:attr:`Cursor.gap_after`), or the next file
        stayed empty for the wait of :meth:`_split_waits`."""
        self._gap_flush = None
        lost = head.gap_after
        streams, head.gap_streams = head.gap_streams, None
        head.gap_after = False
        if self.parser.records_only():
            why = (
                "the files after it were rotated away unread"
                if lost
                else f"its file was rotated and no next line came for "
                f"{self.parser.wait_seconds(SPLIT_FLUSH_SECONDS):g} s"
            )
            level = logging.WARNING if lost else logging.INFO
            return self._flushed(
                head, level, f"shipping open multi-line records as they are: {why}", streams
            )
        # Unchanged without --multiline: also after the wait for an empty next file.
        return self._flushed(
            head,
            logging.WARNING,
            "shipping split lines as they are: their next parts were in files rotated away unread",
            streams,
        )

    def _next_parts_unseen(self: Tailer, head: Cursor) -> list[str]:
        """The streams of the lines open at the end of ``head``, a file read again from its
        compressed copy at the start, whose next entry is in a compressed copy no checkpoint
        knew (:attr:`Cursor.unseen_after`): rotated and compressed while the shipper was
        down, never read. Their ends are lost with it (counted ``rotated_unseen``, once);
        continued by the live file's next entry of their stream, two different lines were
        stored as one record with nothing counted (R3s20 #3). A copy holding only the other
        stream's lines may have been read and forgotten by an earlier run: it says nothing,
        and a line of a stream not in those copies waits for its next part as before -- also
        when a line of the other stream is cut at the same time (R7s20). Asked once, when
        ``head`` is read to its end.

        The copies are parsed whole when they hold none of the open streams (seconds per
        100 MiB): the shipper asks the question in a worker thread first
        (:meth:`scan_off_loop`); its answer is used here when it was for the same question,
        else (a test driving :meth:`poll` directly) the copies are scanned here."""
        question = self._unseen_question(head)
        head.unseen_after = []
        found, head.unseen_found = head.unseen_found, None
        if question is None:
            return []
        if found is not None and found[0] == question:
            cut, unseen = found[1]
        else:
            cut, unseen = unseen_cut(question)
        if not cut:
            return []
        self.on_loss("rotated_unseen")
        log.warning(
            "a line open at the end of a rotated file read again from its compressed copy "
            "continues in a compressed file the shipper never read (rotated and compressed "
            "while it was down): its next parts are lost, and what was read of it is shipped "
            "as it is; keep shipper restarts shorter than the rotation window (Docker "
            "max-size x max-file) path=%s unread=%s streams=%s",
            head.path,
            ",".join(str(gz) for gz in unseen),
            ",".join(sorted(cut)),
        )
        return sorted(cut)

    def _unseen_question(self: Tailer, head: Cursor) -> UnseenQuestion | None:
        """What :meth:`_next_parts_unseen` asks of ``head`` now: None when nothing is to be
        asked (no unread copy after it, or no line open at its end)."""
        if not head.unseen_after:
            return None
        open_streams = self.parser.open_in(head)
        if not open_streams:
            return None
        return UnseenQuestion(
            tuple(head.unseen_after),
            frozenset(open_streams),
            self.spec.format,
            self.max_line_bytes,
        )

    async def scan_off_loop(self: Tailer) -> None:
        """Before :meth:`poll` at the end of the files: the question
        :meth:`_next_parts_unseen` would ask of the file being read, answered in a worker
        thread of its own (:func:`~shipper.held_gz.unseen_cut`, :mod:`shipper.gz_pool`), so
        that the event loop keeps serving acks, heartbeats, ``/metrics`` and the other sources
        meanwhile. On the loop a copy of
        100 MiB held it for about a second (up to ~5 s on a busy host) at every such start.

        The thread gets an immutable question (file paths, stream names, the format) and
        makes its own parser: nothing it reads is shared with the loop. The answer is kept on
        the cursor with its question and used only if :meth:`poll` asks the same one (reading
        more of the file in between, which may open or close lines, asks another)."""
        if not self._started or not self.cursors:
            return
        head = self.cursors[0]
        if head is self.live:
            return
        question = self._unseen_question(head)
        if question is None:
            return
        if head.unseen_found is not None and head.unseen_found[0] == question:
            return
        answer = await gz_pool.run(unseen_cut, question, stop=self.gz_stop)
        head.unseen_found = (question, answer)

    async def poll_off_loop(self: Tailer, finishing: bool = False) -> bool:
        """:meth:`poll`, its scans of whole files done in a worker thread first
        (:meth:`scan_off_loop`): what the source's reader calls at the end of its files."""
        await self.scan_off_loop()
        return self.poll(finishing)

    def _flush_split(self: Tailer, head: Cursor) -> Chunk | None:
        """At the end of the live file, split lines whose next part has not come for
        :data:`SPLIT_FLUSH_SECONDS` since their newest part was read, their parts in it or in
        files rotated away before it (held): shipped as they are. The held files'
        checkpoints go once they are acked."""
        if self.once:
            return None  # --once ships them when its source ends (see end())
        streams = self.parser.overdue(time.monotonic(), SPLIT_FLUSH_SECONDS)
        if not streams:
            return None
        origins = self.parser.pending_origins(streams)
        if not origins or not origins <= {head, *self._held}:
            return None
        if self.parser.records_only(streams):
            wait = self.parser.wait_seconds(SPLIT_FLUSH_SECONDS, streams)
            why = (
                f"shipping an open multi-line record as it is: no next line has come for {wait:g} s"
            )
        else:
            why = (
                f"shipping an unfinished split line as it is: its next part has not come for "
                f"{SPLIT_FLUSH_SECONDS:g} s"
            )
        return self._flushed(head, logging.INFO, why, streams)

    def end(self: Tailer, stopping: bool = False) -> bool:
        """The source ends: its container or pod was removed (its files are gone or going),
        or ``--once`` read what it had to, or (``stopping``) the shipper stops and the
        source groups ``--multiline`` records (see
        :meth:`shipper.source.SourceRunner._ship_open_records`). Returns whether split lines
        are still open; if so, the next :meth:`read` ships them as they are, as Fluent Bit
        does with its pending Docker-mode lines when a file's ingestion stops
        (``flb_tail_dmode_pending_flush_all``): a container's last line written without a
        newline (a crash message) would otherwise never be shipped -- a removed file cannot
        be read again, and a next run would not even open it.

        The cut is in the checkpoint before the record is sent, as for the 5 s flush, and the
        ack moves the checkpoint past the parts. So a ``--once`` run after this one starts
        after them and does not ship them again, a crash before the ack cuts them again into
        the same record (which the aggregator drops by offset), and a next part the container
        writes later starts a line of its own -- what a Fluent Bit user sees after it was
        stopped (or its flush timer fired) between two parts. ``--once`` cuts only a line at
        the very end of its file: one whose next part is already written (it was being
        written as the run started) is left whole to the next run, which reads on from it."""
        self._ending = True
        self._stopping = stopping
        return bool(self.parser.pending_origins())

    def _flush_ending(self: Tailer) -> Chunk | None:
        """The split lines left open when the source ends (:meth:`end`), as they are, in a
        chunk of the file being read, or else of the newest file holding their parts."""
        origins = self.parser.pending_origins()
        if not origins:
            return None
        files = self.cursors[:1] or self._held[-1:] or [o for o in origins if isinstance(o, Cursor)]
        if not files:  # not a file of ours: nothing to attach the lines to
            self.parser.reset()
            return None
        if self.parser.records_only():
            why = (
                "shipping an open multi-line record as it is: the --once run ends here; a next "
                "line written later starts a record of its own"
                if self.once
                else "shipping an open multi-line record as it is: the shipper stops; a next "
                "line written later starts a record of its own"
                if self._stopping
                else "shipping an open multi-line record as it is: its source ended"
            )
        else:
            why = "shipping an unfinished split line as it is: " + (
                "the --once run ends here; a next part written later starts a line of its own"
                if self.once
                else "its source ended (the container or pod was removed in the middle of a line)"
            )
        return self._flushed(files[0], logging.INFO, why)

    def _flushed(
        self: Tailer,
        head: Cursor,
        level: int,
        why: str,
        streams: list[str] | None = None,
    ) -> Chunk | None:
        """Every open split line (of ``streams`` only, when given), as it is, in a chunk of
        ``head`` (offsets one past its read position); held files are freed once it is
        acknowledged."""
        self.parser.origin = head
        at = self._flush_offset(head)
        lines = head.number(self.parser.flush(head, at, every=True, streams=streams), True)
        if not len(lines):
            return None
        log.log(level, "%s lines=%d path=%s", why, len(lines), head.path)
        # Where the parts were cut, for a restart that reads them again before this is acked.
        for offset, stream in zip(lines.offsets, lines.streams, strict=True):
            if not head.keep_cut([head.read_pos, offset, stream]) and self.multiline is not None:
                self._cut_not_kept(head, lines)  # without --multiline: dropped silently
        self.registry.put(head.key, head.state)
        chunk = Chunk(head, lines, head._resume(), 0, save_first=True)
        if self._held:
            self._settle_held(chunk)
        return chunk

    def _cut_not_kept(self: Tailer, head: Cursor, lines: Lines) -> None:
        """The checkpoint already holds :data:`~shipper.checkpoint.MAX_CUTS` cuts not passed
        yet (its acks are not coming, or open records overlapped without a pause for that
        long): this one is not kept, so a restart before the checkpoint passes it may join
        these lines to what follows and store them a second time. Counted
        (``logq_shipper_cuts_dropped_total``), WARNING once per source. ``--multiline``
        sources only: without the option the cut is dropped silently, as it always was."""
        lines.cuts_dropped += 1
        if not self._cuts_warned:
            self._cuts_warned = True
            log.warning(
                "a flushed line's cut is not kept in the checkpoint: it already holds %d; a "
                "restart before the next acknowledgement may store these lines twice path=%s",
                MAX_CUTS,
                head.path,
            )

    def _flush_offset(self: Tailer, head: Cursor) -> int:
        """The first record offset for split lines flushed at ``head``'s read position: one
        past it, and past every offset given at that position before (another stream's line
        flushed earlier, acknowledged or still in flight): the aggregator keeps a record only
        when its offset is above the source's highest, so a second line at the same offset
        was dropped (R1). Also past every offset given in the file so far
        (:attr:`~shipper.cursor.Cursor.last_offset`): a one-byte line read since the last
        flush was numbered past it (see :meth:`~shipper.cursor.Cursor.number`)."""
        at = max(head.read_pos, head.last_offset) + 1
        earlier = [int(c[1]) for c in head.state.cuts if c[0] == head.read_pos]
        if head.state.acked >= at:
            earlier.append(head.state.acked)
        return max([at, *(offset + 1 for offset in earlier)])

    def _settle_held(self: Tailer, chunk: Chunk) -> None:
        """Split lines begun in released files that ``chunk`` completed: their files'
        checkpoints go once the chunk is acknowledged."""
        pending = self.parser.pending_origins()
        for held in [h for h in self._held if h not in pending]:
            self._held.remove(held)
            chunk.cursor.frees.append((chunk.resume, held))

    def _flush_deleted(self: Tailer) -> Chunk | None:
        """No file open: the records (``--multiline``) and split lines open in a file
        deleted at its rotation (Docker ``compress``, the kubelet's gzip), whose next file has
        not come, as they are once no line came for the wait. Nothing else shipped them: the
        timeouts run at the end of an open file, and with none open they waited for a next
        file that a stopped container never makes (R1s19 fuzzer, ``R3_COMPRESS``; without the
        option too: H1s20, a split line's first parts never stored)."""
        if not self._held or not self.parser.pending_origins():
            return None
        wait = self.parser.wait_seconds(SPLIT_FLUSH_SECONDS)
        if time.monotonic() - self._last_data < wait:
            return None
        if self._next_file_came():
            return None  # read first: the next part may be in it
        if self.multiline is not None:
            why = (
                f"shipping open multi-line records as they are: their file was deleted at its "
                f"rotation and no next line came for {wait:g} s"
            )
        else:
            why = (
                f"shipping an unfinished split line as it is: its file was deleted at its "
                f"rotation and its next part has not come for {wait:g} s"
            )
        chunk = self._flushed(self._held[-1], logging.INFO, why)
        if chunk is not None:
            if self.multiline is not None:
                self._note_shipped(chunk)
            self._settle_held(chunk)  # the held files go once it is acknowledged
        return chunk

    def _next_file_came(self: Tailer) -> bool:
        """Whether rotated files newer than the deleted one were found (:attr:`_floor`), now
        followed: the runtime created, wrote and rotated away the next file while the live
        path named none (Docker creating the new file only at its next write), so nothing
        looked for it (see :meth:`~shipper.opening.Opening._missed_without_live`). Shipped
        as they were, the open lines were cut though their next parts were there; and once
        their acknowledgement let the deleted file's checkpoint go, the source had none, a
        restart took it for a new source and passed the unread file over, uncounted (R3s20,
        the extended tailer model's ``docker_late_create`` seed 54)."""
        if self._floor is None:
            return False
        found = self._look_for_missed(None)
        if not found:
            return False
        self.cursors.extend(found)
        return True

    def _note_shipped(self: Tailer, chunk: Chunk) -> None:
        """``--multiline``: held files whose last record ``chunk`` holds (no open record has
        lines in them any more; only the span to the next quiet point keeps them): once it is
        acknowledged, their checkpoints say so (:attr:`FileState.shipped`), and a restart that
        finds them deleted knows nothing was lost in them (R1s19 #4: an error loop across
        rotations paged ``deleted_unread`` for files whose records were all stored)."""
        open_in = self.parser.record_origins()
        for held in self._held:
            if not held.noted_shipped and held not in open_in:
                held.noted_shipped = True
                chunk.cursor.ships.append((chunk.resume, held))

    def _mark_shipped(self: Tailer, cur: Cursor, resume: int) -> None:
        """A batch of ``cur`` up to ``resume`` is acknowledged: the held files whose last
        record it held are marked (see :meth:`_note_shipped`)."""
        keep: list[tuple[int, Cursor]] = []
        marked = False
        for threshold, held in cur.ships:
            if threshold > resume:
                keep.append((threshold, held))
            elif self.registry.get(held.key) is held.state and not held.state.shipped:
                held.state.shipped = True
                self.registry.put(held.key, held.state)
                marked = True
        cur.ships = keep
        if marked:
            self._finish_shipped_gone()

    def _finish_shipped_gone(self: Tailer) -> None:
        """Forget the checkpoints of held files marked :attr:`~FileState.shipped` whose file
        is gone from disk (the runtime's ``max-file`` deleted it): nothing in them is left to
        read or to count, and a restart cannot read them again. An error loop (traces back to
        back, no quiet point) otherwise kept one entry per rotation for as long as it lasted,
        each rewritten at every save (R5s19 #2). A file still there keeps its entry: without
        it a restart took it for a new file and read it again. So does one with a compressed
        copy (Docker ``compress``, the kubelet): a restart reads it again for the head of a
        record whose next lines are in the next file, and without it those lines were stored
        as a record of their own. ``max-file`` deletes the copies too, so this stays bounded."""
        for held in self._held:
            state = self.registry.get(held.key)
            if state is not held.state or not state.shipped or not _gone_from_disk(held):
                continue
            if not held_by_compressed(self.spec.path, [(held.key, state)]):
                self.registry.finish(held.key, held.read_pos, "")

    def _split_waits(self: Tailer, head: Cursor) -> bool:
        """``head`` (rotated away, read to its end) holds the first parts of a split line and
        no file after it is open yet (the new one is empty): kept until the next part comes
        in a new file, or for :data:`SPLIT_FLUSH_SECONDS` (an open ``--multiline`` record
        alone: :data:`~shipper.multiline.MULTILINE_FLUSH_SECONDS`), after which the parts are
        shipped as they are by the next read (a container that died mid-line, then rotated)."""
        if self.once or head not in self.parser.pending_origins():
            return False
        if self.live is None:
            self._open_live()
        if len(self.cursors) > 1:
            return False  # the next file goes on with the line, or shows it is over
        if time.monotonic() - self._last_data >= self.parser.wait_seconds(SPLIT_FLUSH_SECONDS):
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
            self._holding.discard(held)
            if held.closed and held.outstanding == 0:
                self.registry.finish(held.key, held.read_pos, "")
        cur.frees = keep


def _gone_from_disk(held: Cursor) -> bool:
    """Whether no file in ``held``'s folder is ``held``'s file: none has its device and inode,
    or the one that has (the inode reused by a new file, as file systems do at once) starts
    with another first line. Anything that cannot be looked at may still be it: False."""
    try:
        path = inode_in_folder(held.path.parent, held.dev, held.ino)
        if path is None:
            return True
        fd = open_regular(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fp = fingerprint(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return fp is not None and fp != held.fp
