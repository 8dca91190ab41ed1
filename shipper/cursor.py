"""One open log file and the read position in it; the lines it yields, block by block.

Reading a file is kept apart from deciding which file to read: a :class:`Cursor` reads its
file in large blocks with ``os.pread`` and hands complete lines to the source's parser, keeps
the resume point a restart needs (our position, or the start of a split line not complete yet),
skips the rest of a line longer than a block, drops lines a previous run had acknowledged, and
cuts a split line again where a previous run shipped it unfinished
(:attr:`shipper.checkpoint.FileState.cuts`), so it goes out as the same record. When to open,
finish or let go of a file is the tailer's (see :mod:`shipper.tailer`); each cursor counts
against the process's open-files budget (see :mod:`shipper.fd_budget`) while it is open.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shipper import fd_budget
from shipper.checkpoint import MAX_CUTS, FileState, file_key
from shipper.fingerprint import TAIL_BYTES, bytes_before, tail_hash
from shipper.formats import LineParser, overlong_line
from shipper.lines import Lines

if TYPE_CHECKING:
    from shipper.held_gz import UnseenAnswer, UnseenQuestion

log = logging.getLogger("logq.shipper.tailer")
"""The tailer's logger: these are its messages, and the split into modules changed none."""

RECENT_BYTES = 8192
"""The last bytes read that a cursor keeps (see :meth:`Cursor.read_before`): the copy
logrotate made before lines that were read from the live file before its truncation is told
by its last bytes, if they are among these (see :func:`shipper.copytruncate.copy_fit`). At
most this much memory per open file."""


class Cursor:
    """One open file and the read position in it."""

    def __init__(
        self,
        fd: int,
        path: Path,
        fp: str,
        state: FileState,
        parser: LineParser,
        birth: int | None,
    ) -> None:
        st = os.fstat(fd)
        fd_budget.count_open()
        self.fd = fd
        self.path = path
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.mtime_at_open = st.st_mtime_ns
        """The file's modification time when it was opened: a copy of the content read here
        (copytruncate) is modified later, copies of earlier contents were not (see
        :func:`shipper.copytruncate.copies_in_order`)."""
        self.fp = fp
        self.birth = birth
        """When its inode was created (:func:`shipper.birth.birth_time`, which the opener
        already called), None where unknown."""
        self.key = file_key(st.st_dev, st.st_ino, fp)
        self.state = state
        self.source_id = state.source_id
        self.read_pos = state.offset
        self.opened_at = state.offset
        """The checkpoint it was opened at. While a file before it holds its checkpoint back
        (:attr:`held`), this one's stays here: see :meth:`shipper.tailer.Tailer.commit`."""
        self.acked_to = max(state.offset, state.acked_to)
        """Where the acknowledged batches end (their resume point): the checkpoint, unless it
        is kept at :attr:`opened_at` (then also kept in :attr:`FileState.acked_to`)."""
        self.acked_floor = state.acked
        self.last_offset = state.floor
        """The highest record offset given in this file so far (see :meth:`number`)."""
        self.raised: list[tuple[int, int]] = (
            [(state.offset, state.floor)] if state.floor > state.offset else []
        )
        """``(position, offset)`` of records whose offset is above their end in the file
        (split lines flushed at ``position``, the lines numbered above them), for
        :meth:`floor_at`; pruned as the checkpoint passes them."""
        self.passed_cuts: list[list[int | str]] = []
        """Cuts (:attr:`FileState.cuts`) the checkpoint has passed, above :attr:`opened_at`:
        kept out of the saved entry, but put back while a held file keeps the checkpoint at
        :attr:`opened_at` (see :meth:`place_cuts`)."""
        self.parser = parser
        self.outstanding = 0
        """Batches read from this file and not acknowledged yet."""
        self.closed = False
        self.superseded = False
        """Truncated in place: its checkpoint entry now belongs to the new content."""
        self.copied_to: Cursor | None = None
        """Truncated in place, its content followed in this copy (same id, same offsets): the
        acks of its batches still in flight advance the copy's checkpoint (see
        :meth:`shipper.tailer.Tailer.commit`)."""
        self.decompressed = False
        """A temporary file holding a deleted file's gzip-compressed copy, read again from a
        checkpoint held for an open split line or ``--multiline`` record (see
        :mod:`shipper.held_gz`)."""
        self.final = False
        """No more writes will come (rotated away, deleted): an unterminated last line is
        complete as it is."""
        self._skip: bytes | None = None
        self._skip_start = 0
        self._skip_total = 0
        self.at_end = False
        """The last read found nothing new: the next data may follow a truncation."""
        self.checked_pos = self.read_pos
        """Read position when the file was last found to still hold our content: bytes before
        it are ours, bytes after it may have been read after a truncation (copytruncate)."""
        self.found_ours: tuple[int, int, int] | None = None
        """(size, modification and change times in ns) of the file when it was last found to
        hold our content: unchanged since, it was not written (see
        :meth:`shipper.copytruncate.CopyTruncate._rewritten`)."""
        try:
            start = bytes_before(fd, self.read_pos)
        except OSError:
            start = None
        self._recent: tuple[int, bytes | None] = (self.read_pos, start)
        """(:attr:`read_pos`, the last bytes read before it: at most :data:`RECENT_BYTES`)."""
        self._tail_before: tuple[int, bytes | None] = (self.read_pos, start)
        """(position, the :data:`~shipper.fingerprint.TAIL_BYTES` just before it as read here)
        where :attr:`read_pos` was before the last read that moved it: :attr:`checked_pos` is
        one of the two (it is set before every read of the live file). See
        :meth:`read_before`."""
        self.held = False
        """Released, but its checkpoint must stay: it holds the first parts of a split line
        that is not acknowledged yet."""
        self.frees: list[tuple[int, Cursor]] = []
        """(resume, file): reading this file completed a split line begun in that rotated-away
        file; once a batch up to ``resume`` is acknowledged, its checkpoint can go."""
        self.ships: list[tuple[int, Cursor]] = []
        """``--multiline`` (resume, file): a batch of this file holds the last record that
        had lines in that held file; once a batch up to ``resume`` is acknowledged, every
        line of it is stored (:attr:`FileState.shipped`)."""
        self.noted_shipped = False
        """``--multiline``: held, and its last record noted in a batch's :attr:`ships`."""
        self.stop_at: int | None = None
        """``--once``: read no byte at or past this offset (what the file held when the
        source started); None reads on as the file grows."""
        self.bound_reached = False
        """``--once``: every complete line below :attr:`stop_at` is read; what is left below
        it (an unfinished last line) is for the next run."""
        self.rotated_at: float | None = None
        """When the path was found to name another file (renamed away, still on disk): its
        writer may still append for a moment (see
        :data:`shipper.rotate_wait.ROTATE_WAIT_SECONDS`)."""
        self.unread_seen = False
        """The last read filled its block: the file held bytes we had not read yet."""
        self.linger_size = 0
        """Its size when it was set aside to linger (see
        :meth:`shipper.rotate_wait.RotateWait._check_lingering`)."""
        self.gap_after = False
        """Files rotated in after this one were lost (see
        :meth:`shipper.pinning.Pinning._check_overrun`): a split line still open at its end is
        not continued by the next file's parts."""
        self.gap_streams: list[str] | None = None
        """With :attr:`gap_after`: the streams whose open lines are cut there (None: every
        stream). Only those whose next entry is in a compressed copy never read (see
        :meth:`shipper.split_lines.SplitLines._next_parts_unseen`); another stream's line
        open at the same time continues in the next file as before (R7s20)."""
        self.unseen_after: list[Path] = []
        """Read again from its compressed copy at a start (:attr:`decompressed`): the
        compressed copies rotated after it that no checkpoint knows, oldest first -- written,
        rotated and compressed while the shipper was down, never opened, or read and
        forgotten. Looked into at its end if something is open there (see
        :meth:`shipper.split_lines.SplitLines._next_parts_unseen`)."""
        self.unseen_found: tuple[UnseenQuestion, UnseenAnswer] | None = None
        """(question, answer) of the scan of :attr:`unseen_after` made in a worker thread
        before the poll that asks it (see
        :meth:`shipper.split_lines.SplitLines.scan_off_loop`)."""
        self.cuts: list[tuple[int, int, str | None]] = sorted(
            (int(c[0]), int(c[1]), str(c[2]) if len(c) > 2 else None)
            for c in state.cuts
            if int(c[0]) > self.read_pos
        )
        """``(position, offset, stream)`` of split lines flushed before a restart (see
        :attr:`FileState.cuts`; stream None: every line open there) that reading has not
        reached again yet."""

    def read(self, block: int, max_lines: int = 1 << 30, first: int | None = None) -> Chunk | None:
        """The next complete lines (at most ``max_lines``), or None at the end of what is
        written so far (or at :attr:`stop_at`). With ``first``, that much is read first, and
        the whole ``block`` only when it holds no line end: a line longer than ``block`` is
        cut (kept in part, the rest skipped), one that fits is read whole."""
        limit = block
        if self.cuts:
            pos, offset, stream = self.cuts[0]
            if self.read_pos >= pos:
                del self.cuts[0]
                return self._cut_again(offset, stream)
            limit = min(limit, pos - self.read_pos)
        if self.stop_at is not None:
            limit = min(limit, self.stop_at - self.read_pos)
            if limit <= 0:
                self.at_end = self.bound_reached = True
                return None
        size = limit if first is None or self._skip is not None else min(limit, first)
        data = os.pread(self.fd, size, self.read_pos)
        idx = data.rfind(b"\n")
        long_line = idx < 0 and size < limit and len(data) == size
        if long_line:
            size = limit  # no line end yet: read as far as a line may go
            data = os.pread(self.fd, size, self.read_pos)
            idx = data.find(b"\n")
        self.at_end = not data
        self.unread_seen = len(data) == size
        if long_line and idx >= 0:
            # That line alone: the lines after it, up to a whole block, are read by the next
            # call rather than parsed now and kept past the message (Tailer._fit).
            data = data[: idx + 1]
        if not data:
            return None
        if self._skip is not None:
            # At the bound, the rest of an overlong line is for the next run (it resumes at
            # the line's start): the skip stops there, and the next read ends the file.
            return self._skip_more(data)
        if idx < 0:
            if self.cuts and self.read_pos + len(data) == self.cuts[0][0]:
                # A cut inside a line: not where this file was cut (it is not what was read
                # then). Forget it rather than stop there for good.
                del self.cuts[0]
                return self.read(block, max_lines, first)
            if limit < block and len(data) == limit:
                # The bound falls inside a line: left whole for the next run.
                self.at_end = self.bound_reached = True
                return None
            if len(data) < block:
                if self.final:  # rotated away with an unterminated last line: ship it as is
                    return self._last_line(data)
                return None  # the last line is not complete yet
            # One physical line longer than a whole block: keep its head, skip the rest.
            self._skip = data[: self.parser.max_line_bytes]
            self._skip_start = self.read_pos
            self._skip_total = len(data)
            self._advance(data, len(data))
            return Chunk(self, self.parser.new_lines(), self._skip_resume(), len(data))
        # Split no further than needed, and without copying the block: the last piece is the
        # unterminated tail (or the lines beyond ``max_lines``), read again next time.
        lines = data.split(b"\n", max_lines)
        del lines[-1]
        if len(lines) == max_lines:
            idx = sum(map(len, lines)) + max_lines - 1
        self.parser.origin = self
        parsed = self.number(self.parser.feed(lines, self.read_pos))
        self._advance(data, idx + 1)
        if self.acked_floor and parsed.offsets and parsed.offsets[0] <= self.acked_floor:
            parsed = _drop_upto(parsed, self.acked_floor)
        return Chunk(self, parsed, self._resume(), idx + 1)

    def _cut_again(self, offset: int, stream: str | None) -> Chunk:
        """Back at a place where a split line of ``stream`` (None: every open one) was flushed
        before a restart: its parts go out as the same record again, under the same offset (the
        aggregator drops it if it has it), and a next part written since starts a line of its
        own, as it did in the first run."""
        self.parser.origin = self
        streams = None if stream is None else (stream,)
        lines = self.number(self.parser.flush(self, offset, every=True, streams=streams), True)
        if self.acked_floor:
            lines = _drop_upto(lines, self.acked_floor)
        if len(lines):
            log.info(
                "cutting a split line where it was flushed before the restart path=%s", self.path
            )
        return Chunk(self, lines, self._resume(), 0)

    def number(self, lines: Lines, flushed: bool = False) -> Lines:
        """``lines``, just parsed, with offsets above every offset given in this file before.

        A line's offset is its end in the file, except for split lines (and ``--multiline``
        records) flushed as they are, which get one past the read position (see
        :meth:`shipper.split_lines.SplitLines._flush_offset`; ``flushed``): the line after
        them ends at least a byte further on, and a one-byte line (a damaged ``"\\n"``) ended
        exactly at such an offset -- the aggregator dropped it as a resend (it keeps a record
        only when its offset is above the source's highest). Such a line gets the next offset
        up instead; the lines after it are numbered from their ends again once these are
        above. The offsets given above their ends are kept (:attr:`raised`) so that the
        checkpoint can say where a restart resumes the numbering (:meth:`floor_at`)."""
        offsets = lines.offsets
        if not offsets:
            return lines
        if flushed:
            self.raised.append((self.read_pos, offsets[-1]))
        else:
            for i, end in enumerate(offsets):
                if end > self.last_offset:
                    break  # the rest are above too: offsets increase within a block
                offsets[i] = self.last_offset = self.last_offset + 1
                self.raised.append((end, self.last_offset))
        self.last_offset = max(self.last_offset, offsets[-1])
        return lines

    def floor_at(self, pos: int) -> int:
        """The highest offset given to a record ending at or before ``pos`` when it is above
        ``pos``, else 0 (:attr:`FileState.floor` of a checkpoint at ``pos``): the records read
        after ``pos`` again were numbered from it."""
        floor = max((offset for end, offset in self.raised if end <= pos), default=0)
        return floor if floor > pos else 0

    def place_cuts(self, pos: int) -> None:
        """The checkpoint is at ``pos`` now: :attr:`FileState.cuts` keeps the cuts after it,
        :attr:`passed_cuts` those between :attr:`opened_at` and it.

        A checkpoint can go back to :attr:`opened_at` after the acks passed a cut -- this
        file or the one after it released while holding a split line's first part (see
        :meth:`shipper.tailer.Tailer._checkpoint_offset`). Dropped as the ack passed it, a
        restart from there read the parts again uncut, joined them to a later part under a
        new offset and stored them a second time (R1s24). At most
        :data:`~shipper.checkpoint.MAX_CUTS` in all (a longer list is dropped as corrupt at
        a start), the furthest in the file kept: those after the checkpoint go before any
        passed one."""
        every = sorted([*self.state.cuts, *self.passed_cuts], key=lambda c: (int(c[0]), int(c[1])))
        every = [c for c in every if int(c[0]) > self.opened_at][-MAX_CUTS:]
        self.state.cuts = [c for c in every if int(c[0]) > pos]
        self.passed_cuts = [c for c in every if int(c[0]) <= pos]

    def keep_cut(self, cut: list[int | str]) -> bool:
        """Record ``cut`` (a split line flushed here) in :attr:`FileState.cuts`; False when
        :data:`~shipper.checkpoint.MAX_CUTS` not passed by the acks are kept already.

        A passed cut :meth:`place_cuts` put back (the checkpoint at :attr:`opened_at`) gives
        way, the oldest first, as there: refused for them, a line flushed while a file was held
        had no cut, and a restart before its ack joined its parts to a later part and stored
        them twice. An old passed cut missing usually costs nothing: its parts go out joined to
        the next line of their stream, under that line's offset, acknowledged too (not sent
        again) when it is before :attr:`acked_to`."""
        cuts = self.state.cuts
        if len(cuts) >= MAX_CUTS:
            passed = next((c for c in cuts if int(c[0]) <= self.acked_to), None)
            if passed is None:
                return False
            cuts.remove(passed)
        cuts.append(cut)
        return True

    def prune_raised(self, pos: int) -> None:
        """The checkpoint is at ``pos`` now: only what :meth:`floor_at` needs is kept -- at
        ``pos`` and after it, and at :attr:`opened_at`, where the checkpoint goes back to
        once a file before this one is held (see
        :meth:`shipper.tailer.Tailer._checkpoint_offset`): folded into ``pos``, the floor this
        file was opened with was lost, and a restart from there numbered the tiny lines after
        it below the offsets they had (dropped as acknowledged when they were not)."""
        later = [(end, offset) for end, offset in self.raised if end > pos]
        for at in {min(pos, self.opened_at), pos}:
            if floor := self.floor_at(at):
                later.append((at, floor))
        self.raised = later

    def restart_at(self) -> int:
        """Where a restart reads this file again now (see :meth:`_resume`)."""
        return self._resume()

    def _resume(self) -> int:
        """Where a restart must read again: our position, or the start of a split line's
        parts in this file that are not complete yet."""
        pending = self.parser.pending_start(self)
        return self.read_pos if pending is None else pending

    def _skip_resume(self) -> int:
        pending = self.parser.pending_start(self)
        return self._skip_start if pending is None else min(pending, self._skip_start)

    def _last_line(self, data: bytes) -> Chunk:
        # Its offset counts a newline that is not there: one past the end, still increasing.
        self.parser.origin = self
        parsed = self.number(self.parser.feed([data], self.read_pos))
        self._advance(data, len(data))
        return Chunk(self, parsed, self._resume(), len(data))

    def has_remainder(self) -> bool:
        """Bytes after the last complete line (an unterminated line)."""
        return not self.final and self.size() > self.read_pos

    def _skip_more(self, data: bytes) -> Chunk:
        nl = data.find(b"\n")
        if nl < 0:
            self._skip_total += len(data)
            self._advance(data, len(data))
            return Chunk(self, self.parser.new_lines(), self._skip_resume(), len(data))
        prefix = self._skip or b""
        dropped = self._skip_total + nl - len(prefix)
        self._skip = None
        self._advance(data, nl + 1)
        parsed = self.number(overlong_line(self.parser, prefix, self.read_pos, dropped))
        if self.read_pos <= self.acked_floor:
            parsed = self.parser.new_lines()
        return Chunk(self, parsed, self._resume(), nl + 1)

    def _advance(self, data: bytes, n: int) -> None:
        """Move :attr:`read_pos` past the first ``n`` bytes of ``data`` (read at it), keeping
        the last bytes read (see :meth:`read_before`)."""
        pos, recent = self._recent
        before = recent[-TAIL_BYTES:] if recent is not None else None
        if recent is not None and pos == self.read_pos and n < RECENT_BYTES:
            recent = (recent + data[:n])[-RECENT_BYTES:]
        else:  # also when read_pos was set from outside: what lies before it is not known
            recent = data[max(n - RECENT_BYTES, 0) : n]
        self.read_pos += n
        self._tail_before, self._recent = (pos, before), (self.read_pos, recent)

    def read_before(self, pos: int) -> bytes | None:
        """The (at most :data:`~shipper.fingerprint.TAIL_BYTES`) bytes just before ``pos`` as
        they were read here, for ``pos`` :attr:`checked_pos`, or :attr:`read_pos` and the
        positions up to :data:`RECENT_BYTES` before it; None when not known.

        Kept from the reads, not read again: after a truncation in place the descriptor shows
        the new content. They tell the copy of what was read from another generation's copy
        with the same first line (see :func:`shipper.copytruncate.copy_fit`), and new content
        written past our position from ours (see
        :meth:`shipper.copytruncate.CopyTruncate._rewritten`)."""
        at, recent = self._recent
        if recent is not None and pos <= at:
            end = len(recent) - (at - pos)
            if end - TAIL_BYTES >= 0:
                return recent[end - TAIL_BYTES : end]
            if end >= 0 and len(recent) == at:  # it holds every byte from the start
                return recent[:end]
        at, tail = self._tail_before
        return tail if at == pos else None

    def tail(self, pos: int) -> str:
        """The checkpoint's check of the bytes before ``pos`` (see
        :attr:`FileState.tail`), '' when it cannot be taken: a closed descriptor's number may
        belong to another file by now, and a file shorter than ``pos`` was truncated since it
        was read (the next read notices)."""
        if self.closed:
            return ""
        try:
            return tail_hash(self.fd, pos) or ""
        except OSError:
            return ""

    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return 0

    def note_seen(self) -> int | None:
        """Keep the file's size now in its checkpoint
        (:attr:`~shipper.checkpoint.FileState.seen`, saved with the next write; only ever
        raised): a file gone at the next start that was read past it held nothing unread the
        shipper had seen (see :mod:`shipper.removed` and
        :meth:`shipper.resume.Resume._count_vanished`). Not once closed: its descriptor's
        number may be another file's by then. Returns the size (None when closed): the
        gauges' look at the file is this one (:meth:`Tailer.note_sizes`)."""
        if self.closed:
            return None
        size = self.size()
        if self.state.seen is None or size > self.state.seen:
            self.state.seen = size
        return size

    def deleted(self) -> bool:
        """Whether the file has no name left (the runtime deleted it; only our descriptor
        keeps it readable). False when that cannot be told."""
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            fd_budget.count_closed()
            os.close(self.fd)


def _drop_upto(lines: Lines, floor: int) -> Lines:
    """Lines already acknowledged before a restart are not sent again."""
    return lines.select([i for i, off in enumerate(lines.offsets) if off > floor])


@dataclass(slots=True)
class Chunk:
    """Lines read from one file in one block, and the checkpoint they allow once acked."""

    cursor: Cursor
    lines: Lines
    resume: int
    nread: int
    save_first: bool = False
    """The registry holds something that must be on disk before these lines are sent (a
    flushed split line's cut, :attr:`FileState.cuts`)."""
