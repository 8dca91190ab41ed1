"""Following one source's files across rotation, truncation and deletion.

A :class:`Tailer` owns the files of one source: the live path plus rotated files it still has to
finish. Files are read strictly in order (oldest first), each through a
:class:`~shipper.cursor.Cursor` (large ``os.pread`` blocks, complete lines to the format parser).
Identity and resume points come from the checkpoint registry (see :mod:`shipper.checkpoint`),
a file's identity from its first line (see :mod:`shipper.fingerprint`).

Rotation cases, checked whenever the file being read is at its end (copytruncate also before
every read of the live file):

* rename (Docker ``-json.log`` -> ``.1``, kubelet ``0.log`` -> ``0.log.<time>``): the path now
  names another inode. The old file is at EOF and no longer written to; it is released and the
  new file is opened. Files rotated in between (the writer rotated twice between two polls) are
  found among the siblings by modification time and read first (see :mod:`shipper.rotated`).
* copytruncate: same inode, but smaller than our position or its first line changed. The copy
  (a sibling with our fingerprint) is finished from our position, then the live file restarts
  at 0 under a new ``source_id`` epoch.
* deletion: the path is gone and the inode has no links: finish to EOF, release.

This module holds the state and the read / poll / acknowledge loop. The class's other parts are
mixins, one module each, holding methods only (all state is set in :meth:`Tailer.__init__`):
:mod:`shipper.opening` (opening files, descriptor backoff, parking), :mod:`shipper.resume` (the
start: what a previous run left), :mod:`shipper.pinning` (new generations while behind),
:mod:`shipper.rotate_wait`, :mod:`shipper.split_lines` and :mod:`shipper.copytruncate`. Why lines
may be lost: :mod:`shipper.losses`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from shipper import fd_budget
from shipper.batch import WireRoom
from shipper.birth import Identity
from shipper.checkpoint import Registry
from shipper.copytruncate import CopyTruncate
from shipper.cursor import Chunk, Cursor
from shipper.discover import SourceSpec, rotated_siblings
from shipper.fingerprint import fingerprint
from shipper.formats import PARSERS, LineParser
from shipper.held_gz import HeldCopies
from shipper.multiline import BUILTIN, MultilineParser
from shipper.opening import Opening
from shipper.pinning import FAST_ROTATION_WINDOW, GzAt, Pinning
from shipper.resume import Resume
from shipper.rotate_wait import RotateWait
from shipper.rotated import rotation_path
from shipper.split_lines import SplitLines

log = logging.getLogger("logq.shipper.tailer")

READ_AHEAD_BYTES = 64 * 1024
"""The least a read of a file asks for, however little room the message being filled has
left: the lines past that room are kept for the next message (:meth:`Tailer._fit`). A
source's reader lowers it to ``--batch-bytes`` (:attr:`Tailer.read_ahead`): its kept lines
count in ``--max-inflight-bytes``, within the room reserved for a batch."""


class AtClose(NamedTuple):
    """What :meth:`Tailer.look_at_close` found of an ending source's files."""

    gone: bool
    """Its folder, or its files, are gone: its ``followed`` entry is forgotten."""
    read_until: float | None
    """When it was last followed (see :meth:`~shipper.resume.Resume._read_to_end_until`);
    None: nothing to note."""


UNKNOWN_AT_CLOSE = AtClose(gone=False, read_until=None)
"""Nothing known (not started, or the look was given up: a stop): nothing changes."""


class Tailer(Opening, Resume, Pinning, RotateWait, SplitLines, CopyTruncate):
    """All files of one source, read oldest first."""

    def __init__(
        self,
        spec: SourceSpec,
        registry: Registry,
        host: str,
        max_line_bytes: int,
        block_size: int = 256 * 1024,
        on_loss: Callable[[str], None] | None = None,
        once: bool = False,
        kept_out: bool = False,
        multiline: str | None = None,
        read_ahead: int = READ_AHEAD_BYTES,
    ) -> None:
        self.spec = spec
        self.read_ahead = read_ahead
        """The least a read asks for (see :data:`READ_AHEAD_BYTES`): what is read past the
        message's room is kept (:attr:`kept_bytes`)."""
        self.multiline = multiline
        """The ``--multiline`` parser grouping this source's lines into records (a key of
        :data:`~shipper.multiline.BUILTIN`), None for one record per line."""
        self.once = once
        """``--once``: ship what the files hold when the source starts, then end (see
        :meth:`finished`); lines written later are for the next run."""
        self.kept_out = kept_out
        """The source was excluded (``--exclude``, label ``logq.exclude``) until now: its
        checkpointed files deleted meanwhile held lines kept out on purpose, not lost (see
        :meth:`~shipper.resume.Resume._count_vanished`)."""
        self.unreadable: dict[str, str] = {}
        """Files of this source that cannot be opened for good (EACCES...), each with the reason
        and what to do: their lines are not shipped (``--once`` exits 1 saying so)."""
        self._bounded = False
        """``--once``: :meth:`start` set the bound; files opened after it hold only newer
        lines and are not read (their checkpoints let the next run read them)."""
        self.on_loss = on_loss or (lambda reason: None)
        """Called with a reason (see :data:`~shipper.losses.LOSS_REASONS`) when lines may have
        been lost."""
        self.registry = registry
        self.host = host
        self.max_line_bytes = max_line_bytes
        self.block_size = max(block_size, max_line_bytes + 4096)
        self.cursors: list[Cursor] = []
        self.live: Cursor | None = None
        self._released: deque[Identity] = deque(maxlen=64)
        """(device, inode, fingerprint, birth time) of the newest files let go: not "missed"
        rotations. The birth time (see :mod:`shipper.birth`) keeps a new file on the inode of
        one let go, with the same first line, from being taken for it and never read."""
        self._released_ends: dict[Identity, int] = {}
        """Where each of :attr:`_released` was read to when let go (the newest ones): one
        written past that since holds lines this tailer did not read (see
        :meth:`~shipper.resume.Resume._note_read_to_end`)."""
        self._passed_over: set[Identity] = set()
        """The same for the rotated files :meth:`start` found and did not open (finished by a
        previous run, or older than a first sighting reads): never missed rotations either,
        whatever their modification times (see :meth:`~shipper.resume.Resume._pass_over`)."""
        self._gz_at_start: set[GzAt] = set()
        """(device, inode, mtime, size) of the compressed rotated copies there at :meth:`start`
        (see :func:`~shipper.pinning.gz_at`):
        never counted as files rotated away unseen (see
        :meth:`~shipper.pinning.Pinning._unseen_compressed`)."""
        self._searched: tuple[int, int] | None = None
        """(device, inode) of the file at the live path when rotated files were last looked
        for without a live file to follow (see
        :meth:`~shipper.opening.Opening._missed_without_live`)."""
        self._started = False
        self._floor: int | None = None
        """mtime of the last file finished because it was rotated away: files rotated after
        it that we never opened are newer."""
        self._pin_limit_logged = False
        self._lingering: list[Cursor] = []
        """Files renamed away whose next file has data, watched for the rest of the rotate
        wait: another writer may still append (see :meth:`_check_lingering`)."""
        self._gap_flush: Cursor | None = None
        """A file after which files were lost: its open split lines go out at the next read."""
        self._cuts_warned = False
        """The WARNING that a flushed line's cut was not kept was logged (once per source)."""
        self._read_past: tuple[Chunk, int | None] | None = None
        """Lines read past ``max_bytes`` (``--batch-bytes``) or the message's
        :class:`~shipper.batch.WireRoom` and the restart position their chunk had before it
        was read (None: never cut, see :meth:`read`): the next read gives them (see
        :meth:`_fit`)."""
        self._orphan: Chunk | None = None
        """``--multiline``: the records still open in a file truncated in place with no copy
        to read on from, shipped as they are by the next read (see
        :meth:`~shipper.copytruncate.CopyTruncate._flush_truncated`)."""
        self._adopted: set[str] = set()
        """Registry keys of files gone but for a compressed copy, read again from that copy
        since the start from their checkpoints on: lines not read or not acknowledged at the
        stop, or a split line or ``--multiline`` record open in them (see
        :mod:`shipper.held_gz`)."""
        self._held_ready: HeldCopies | None = None
        """The compressed copies :meth:`start` may read again, read in a worker thread before
        it (see :meth:`~shipper.resume.Resume.prepare_off_loop`); closed by the start."""
        self.gz_stop: asyncio.Event | None = None
        """Set by the source's reader when it stops: the ``.gz`` work awaited then is given up
        (:class:`shipper.gz_pool.GivenUp`, see :meth:`prepare_off_loop`)."""
        self._in_place_warned = False
        self.last_rotation = -FAST_ROTATION_WINDOW
        """When a rotation of this source was last seen (monotonic)."""
        self.rotation_gap = float("inf")
        """Seconds between the last two rotations seen."""
        self._opened: dict[str, None] = {}
        """Fingerprints of the files this source opened or passed over at its start (the
        newest 1,024): a compressed rotated copy whose first line is not among them was never
        read."""
        self._counted: set[tuple[str, int]] = set()
        """Compressed copies already counted as lost (``rotated_unseen``)."""
        self._regrouping = False
        """The option is off for this source, but its checkpoint was kept back by a record
        open with it on: grouped as then until the next quiet point (see
        :meth:`_grouped_before`)."""
        if multiline is None:
            self.multiline = self._grouped_before()
            self._regrouping = self.multiline is not None
        self.parser = self._parser()
        """One parser for all files of the source: a split line (Docker 16 KiB partial
        entries, CRI ``P`` parts) whose parts straddle a rotation is joined across it."""
        self._held: list[Cursor] = []
        """Released files holding the first parts of a split line not complete yet: their
        checkpoints stay at the group's start until the line is acknowledged (see
        :meth:`commit`), so a restart reads the whole group again."""
        self._holding: set[Cursor] = set()
        """Files whose checkpoints are held back (:attr:`Cursor.held`), from their release until
        the line they hold is acknowledged (see :meth:`commit`)."""
        self._start_failed = False
        """An open failed for lack of descriptors (or a file could not be proven gone) during
        :meth:`start`: it is undone and tried again after the backoff."""
        self._start_retries = 0
        self._kept: set[str] = set()
        """Checkpoints kept after :data:`~shipper.resume.MAX_START_RETRIES`: not counted as lost."""
        self._parked: tuple[int, int, tuple[int, int, int]] | None = None
        """(device, inode, :func:`~shipper.idle_sweep.stamp`) of the live file closed while
        idle (see :meth:`_park`)."""
        self._last_data = 0.0
        self._ending = False
        """The source ends (see :meth:`~shipper.split_lines.SplitLines.end`): its open split
        lines go out with the next read."""
        self._stopping = False
        """:attr:`_ending` because the shipper stops, with ``--multiline`` (see
        :meth:`~shipper.split_lines.SplitLines.end`)."""
        self._open_retry_at = 0.0
        self._open_backoff = 0.0
        """While opens fail for lack of descriptors (EMFILE/ENFILE): when to try again, and
        the current pause (doubling up to :data:`~shipper.opening.OPEN_RETRY_MAX_SECONDS`)."""

    def _grouped_before(self) -> str | None:
        """The ``--multiline`` parser a checkpoint of this source was saved with
        (:attr:`~shipper.checkpoint.FileState.grouped`), now that the option is off for it.

        Such a checkpoint stays at the quiet point before a record open at the stop, below
        lines of the other stream already acknowledged. Read again one by one, the record's
        lines go at offsets at or below those: the shipper and the aggregator drop them as
        resends, and they were lost (R1s19 #2). Grouped as before up to the next quiet point
        past what was acknowledged (:meth:`_end_regrouping`), they go out as the record they
        were, above it."""
        for _, st in self.registry.items():
            if st.source == self.spec.key and st.grouped in BUILTIN:
                log.info(
                    "--multiline is off for this source now; grouping its lines with %s until "
                    "the record open at the last stop is shipped source=%s",
                    st.grouped,
                    self.spec.key,
                )
                return st.grouped
        return None

    def _end_regrouping(self) -> None:
        """One record per line from here (see :meth:`_grouped_before`): nothing is open and
        the file being read is read past every line acknowledged before the restart."""
        head = self.cursors[0] if self.cursors else None
        if self.parser.pending_origins() or len(self.cursors) > 1:
            return
        if head is not None and head.read_pos < head.acked_floor:
            return
        assert isinstance(self.parser, MultilineParser)
        self.parser = self.parser.inner
        for cur in [*self.cursors, *self._lingering]:
            cur.parser = self.parser
        self.multiline = None
        self._regrouping = False
        log.info("--multiline is off for this source from here source=%s", self.spec.key)

    def _parser(self) -> LineParser | MultilineParser:
        inner = PARSERS[self.spec.format](self.max_line_bytes)
        if self.multiline is None:
            return inner
        return MultilineParser(inner, BUILTIN[self.multiline])

    # -- reading ----------------------------------------------------------------------------

    def read(
        self,
        max_lines: int = 1 << 30,
        max_bytes: int = 1 << 30,
        of: Cursor | None = None,
        room: WireRoom | None = None,
    ) -> Chunk | None:
        """The next lines of the oldest unfinished file, or None when it is at its end.

        With ``room``, no more lines than it has room for (with ``of``: None when not even
        one fits); what they take is taken from it. Lines read in blocks are cut to fit
        (:meth:`_fit`); the open lines flushed as they are (split lines, ``--multiline``
        records: a few at a time) go whole, in the next message when they do not fit.
        """
        before = room.left if room is not None else 0
        chunk = self._read(max_lines, max_bytes, of, room)
        if room is None or chunk is None or room.left != before or not chunk.lines:
            return chunk  # counted by _fit, or nothing to count
        wire = chunk.lines.wire_bytes(room.per_record(chunk.cursor))
        # Such a chunk is never cut, yet fits in a message: it holds one open line per stream,
        # and a runtime writes two (``stdout``, ``stderr``: CRI's parser takes no other,
        # dockerd writes no other). Each is at most --max-line-bytes characters (4 bytes each)
        # and a marker, its time and stream one read block (one physical line), its keys at
        # most 6 x MAX_KEY_BYTES: 2 x (4 x 384 KiB + 388 KiB + 25 KiB) ~ 3.99 MB of 4.19 (its
        # bound, 4 bytes per character of the time too, may say more: it goes first, whole;
        # test_metadata_cap encodes the worst two).
        if of is not None and wire > room.left:
            self._read_past = chunk, None  # never cut: no restart position inside it
            return None
        room.left -= wire
        return chunk

    def _read(
        self, max_lines: int, max_bytes: int, of: Cursor | None, room: WireRoom | None
    ) -> Chunk | None:
        """:meth:`read` but for the room taken by lines not read in blocks.

        With ``of`` (the file a Forward message is being filled from), also None when the next
        lines are another file's: they start the next message. A message carries one file's
        ``source_id`` and its ack advances one file's checkpoint, but a renamed file in its
        rotate wait that grew comes first again, also between two reads of one message (see
        :meth:`~shipper.rotate_wait.RotateWait._check_lingering`). Joined to it, the new file's
        lines went out under the renamed file's id at their own, lower offsets: the aggregator
        dropped them as resends, and the new file's checkpoint moved past them.
        """
        if not self._started:
            if not self._may_open():
                self.drop_prepared()
                return None
            if not fd_budget.room():
                self.drop_prepared()  # not held while waiting: outside the budget
                fd_budget.wait_for_room(self.spec.key)
                return None
            self.start()
        if self._read_past is not None:
            (chunk, before), self._read_past = self._read_past, None
            if of in (None, chunk.cursor):
                return self._fit(chunk, before, max_lines, max_bytes, of, room)
            self._read_past = chunk, before  # not that file's (never: they are read first)
            return None
        if self._regrouping:
            self._end_regrouping()
        if self._lingering:
            self._check_lingering()
        if self._orphan is not None and of in (None, self._orphan.cursor):
            chunk, self._orphan = self._orphan, None
            return chunk
        if of is not None and (not self.cursors or self.cursors[0] is not of):
            return None
        if self._ending and self.parser.pending_origins():
            return self._flush_ending()
        if not self.cursors:
            return self._flush_deleted()
        head = self.cursors[0]
        if self._gap_flush is head:
            return self._flush_at_gap(head)
        if head is self.live:
            # Before every read of the live file, not only at its end: truncated in place
            # (copytruncate) and written again before we looked, reading on from our position
            # would ship the middle of new lines under the old content's id -- also on the
            # first read of a file opened just before another truncation.
            if self._rewritten(head):
                if not self._truncated(head) or not self.cursors:
                    return None
                if self._orphan is not None:
                    return self._read(max_lines, max_bytes, of, room)
            else:
                head.checked_pos = head.read_pos
        # A read of about what the message has room for (at least read_ahead: small lines
        # are read in few calls), the whole block only for a line longer than that.
        first = min(self.block_size, max(max_bytes, self.read_ahead))
        self.parser.reading_at = time.monotonic()
        cur = self.cursors[0]
        before = cur.restart_at()
        chunk = cur.read(self.block_size, max_lines, first)
        if chunk is not None:
            self._last_data = self.parser.reading_at
            if self._held:
                if self.multiline is not None:
                    self._note_shipped(chunk)
                self._settle_held(chunk)
            return self._fit(chunk, before, max_lines, max_bytes, of, room)
        elif self.once and self.finished():
            # Its bound reached, the run ends for this source: a line left open goes now, as
            # it is, when the file ends there (a container that died mid-line). When more bytes
            # follow (its next part was being written as the run started), the next run reads
            # the line whole: cut here, it was stored as two records (R1).
            if self.cursors[0].size() <= self.cursors[0].read_pos:
                chunk = self._flush_ending() if self.end() else None
        elif head is self.live and len(self.cursors) == 1:
            chunk = self._flush_split(head)
        return chunk

    def _fit(
        self,
        chunk: Chunk,
        before: int | None,
        max_lines: int,
        max_bytes: int,
        of: Cursor | None,
        room: WireRoom | None = None,
    ) -> Chunk | None:
        """The lines of ``chunk`` whose log text fits in ``max_bytes`` (at most ``max_lines``
        of them), the rest kept for the next read: a Forward message holds at most
        ``--batch-bytes`` of log text (a line longer than that goes alone). A read holds
        more (at least :data:`READ_AHEAD_BYTES`), and whole records are only known once
        parsed: the lines past the limit are kept parsed rather than read again. None when
        not even the first line fits in a message that has lines already (``of``): it starts
        the next one.

        The lines given are acknowledged before the kept ones, so their chunk's restart
        position is ``before`` (where a restart read the chunk again before it was read):
        a restart from there drops the lines acknowledged by their offsets, as after any
        checkpoint behind the acks (:attr:`~shipper.checkpoint.FileState.acked`).

        With ``room``, the lines also fit in what the message has room for (in an upper bound
        of their encoded bytes), taken from it. A chunk without a restart position inside
        (``before`` None: open lines flushed, see :meth:`read`) is given whole or not at all."""
        lines = chunk.lines
        per = room.per_record(chunk.cursor) if room is not None else 0
        wire = lines.wire_bytes(per) if room is not None else 0
        fits = room is None or wire <= room.left
        if (lines.nbytes <= max_bytes and len(lines) <= max_lines and fits) or (
            before is None and of is None
        ):
            if room is not None:
                room.left -= wire
            return chunk
        if before is None:
            self._read_past = chunk, before
            return None
        ends = itertools.accumulate(map(len, itertools.islice(lines.logs, max_lines)))
        n = bisect.bisect_right(list(ends), max_bytes)
        if not fits:  # per-line bounds only then: the rare cut by the room
            assert room is not None
            n = bisect.bisect_right(lines.wire_ends(per, max(n, 1)), room.left, hi=n)
        if n == 0:
            if of is not None:
                self._read_past = chunk, before
                return None
            n = 1
        head, tail = lines.split(n)
        if room is not None:
            room.left -= head.wire_bytes(per)
        self._read_past = Chunk(chunk.cursor, tail, chunk.resume, chunk.nread), before
        return Chunk(chunk.cursor, head, before, 0, chunk.save_first)

    @property
    def kept_bytes(self) -> int:
        """Log text of the lines read past the last message, kept for the next (see
        :meth:`_fit`): memory the reader counts in ``--max-inflight-bytes``."""
        return self._read_past[0].lines.nbytes if self._read_past is not None else 0

    def poll(self, finishing: bool = False) -> bool:
        """At the end of the current file: handle rotation, truncation, deletion.

        Returns True when something changed and reading should be tried again. With
        ``finishing`` (the source disappeared, or shutdown), files at their end are released.
        """
        if not self._started:
            return False  # start() was put off (no descriptors): read() retries it
        if self.finished():
            return False
        if not self.cursors:
            if self._parked is not None:  # also when finishing: lines written since count
                return self._parked_changed() and self._open_live()
            return False if finishing else self._open_live()
        head = self.cursors[0]
        if head is not self.live or finishing:
            if not finishing and self._rotate_wait(head):
                return False
            if head.has_remainder():
                head.final = True
                return True
            if not finishing and self._lingers(head):
                # The next file has data, but another writer may still append to this one
                # (several processes reopen one after another): watched until the wait ends.
                self.cursors.remove(head)
                head.linger_size = head.size()
                self._lingering.append(head)
                return True
            if head.unseen_after and (cut := self._next_parts_unseen(head)):
                head.gap_after = True
                head.gap_streams = cut
            if head.gap_after and head in self.parser.pending_origins():
                # Files after this one were lost: the parts of a split line still open here
                # would be joined to another line's parts in the next file. Shipped as they
                # are by the next read, before the file is let go.
                self._gap_flush = head
                return True
            if head.decompressed and head in self.parser.pending_origins():
                # The compressed copy of a deleted file: let go (held) as that file was when
                # it was deleted, its open record waiting for the next file's lines with no
                # timeout of its own -- grouped as the run before the restart grouped it.
                self._release(head)
                return True
            if not finishing and self._split_waits(head):
                return False
            if self._gap_flush is head:
                return True  # its split line goes out with the next read, then it is let go
            if head is self.live:
                self.live = None
            self._release(head)
            return True
        try:
            st = os.stat(self.spec.path)
        except FileNotFoundError:
            if os.fstat(head.fd).st_nlink == 0:
                if head.has_remainder():
                    head.final = True
                    return True
                log.info("log file deleted, released path=%s", head.path)
                # Renamed away and then deleted (Docker max-file, the kubelet's gzip) while
                # the path named no file: the files the runtime created, renamed and wrote
                # meanwhile are newer than it, and are looked for once the path names a file
                # again (see Opening._open_live). Without a floor nothing looked: never read,
                # never counted.
                self._floor = os.fstat(head.fd).st_mtime_ns
                self.live = None
                self._release(head)
                return True
            return False  # renamed, the new file is not there yet
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (head.dev, head.ino):
            log.info("log file rotated path=%s read=%d", head.path, head.read_pos)
            self._check_overrun(head)
            self.live = None
            self._floor = os.fstat(head.fd).st_mtime_ns
            # Kept at the head: its writer may still append (logrotate's create mode) until
            # the new file has data; then its unterminated last line, if any, is finished as it
            # is and it is released (the branch above).
            self._renamed_away(head)
            self._open_live()
            return True
        if os.fstat(head.fd).st_size < head.read_pos or fingerprint(head.fd) != head.fp:
            return self._truncated(head)
        # The live file is still at its path, followed from this descriptor, with no file
        # before it left to read: every file of the source last written before now is open
        # here or was read (saved for a restart that finds the source without checkpoints:
        # see Resume._first_seen). Not at every look -- a look that opened nothing (no live
        # file yet, a stop, a failed open) said nothing of the files written meanwhile.
        self.registry.note_followed(self.spec.key, time.time())
        if fd_budget.waiting_sources():
            self._park(head)
        return False

    def _release(self, cur: Cursor) -> None:
        log.debug("released path=%s ino=%d read=%d", cur.path, cur.ino, cur.read_pos)
        if cur in self.cursors:
            self.cursors.remove(cur)
        identity = (cur.dev, cur.ino, cur.fp, cur.birth)
        self._released.append(identity)
        self._released_ends[identity] = cur.read_pos
        if len(self._released_ends) > 2 * (self._released.maxlen or 0):
            kept = set(self._released)
            self._released_ends = {k: v for k, v in self._released_ends.items() if k in kept}
        tail = cur.tail(cur.read_pos)
        # Its size now, the last one noted: kept (held for a split line, or batches in
        # flight) and gone at the next start, it is judged by it -- a size noted up to a second
        # ago could miss what a writer appended since, read and never acknowledged.
        cur.note_seen()
        cur.close()
        if cur in self.parser.pending_origins() and not cur.superseded:
            # The first parts of a split line whose last part is in the next file: keep the
            # checkpoint at the group's start until the line is acknowledged.
            cur.held = True
            self._holding.add(cur)
            if cur not in self._held:
                self._held.append(cur)
            return
        if cur.outstanding == 0 and cur is not self.live and not cur.superseded and not cur.held:
            self.registry.finish(cur.key, cur.read_pos, tail)

    # -- acknowledgement -------------------------------------------------------------------

    def commit(self, cur: Cursor, resume: int, acked: int) -> None:
        """A batch of ``cur`` was acknowledged: advance its checkpoint."""
        cur.outstanding -= 1
        if cur.frees:
            self._free_held(cur, resume)
        if cur.ships:
            self._mark_shipped(cur, resume)
        if cur.superseded:
            if cur.copied_to is not None:  # the same bytes, followed in the copy
                self.commit(cur.copied_to, resume, acked)
            return
        if cur.closed and cur.outstanding == 0 and cur is not self.live and not cur.held:
            self.registry.finish(cur.key, cur.read_pos, "")
            return
        st = cur.state
        cur.acked_to = max(cur.acked_to, resume)
        st.offset = self._checkpoint_offset(cur, resume)
        st.acked_to = cur.acked_to if cur.acked_to > st.offset else 0
        if st.cuts or cur.passed_cuts:
            cur.place_cuts(st.offset)
        if cur.raised or st.floor:
            st.floor = cur.floor_at(st.offset)
            cur.prune_raised(st.offset)
        st.acked = max(st.acked, acked)
        st.grouped = self.multiline or ""
        st.tail = cur.tail(st.offset)
        st.path = str(cur.path)
        self.registry.put(cur.key, st)

    def _checkpoint_offset(self, cur: Cursor, resume: int) -> int:
        """Where a restart reads ``cur`` again once a batch up to ``resume`` is acknowledged:
        ``resume``, unless a file before it holds its checkpoint back (:attr:`Cursor.held`).

        A held file is read again from the start of the split line it holds, and with it the
        first parts of every line begun after that point -- also of other streams' lines that
        ``cur`` completed and that were acknowledged. Those parts must meet their next parts
        again, so ``cur`` is read again from where it was opened: the lines come out as the
        same records (offsets at or below :attr:`FileState.acked` are not sent again). Read on
        from ``resume``, they were joined to a later line and stored a second time (R1).
        A held file is let go once its line is completed (usually by the next file's first
        part) or flushed as it is (:data:`~shipper.split_lines.SPLIT_FLUSH_SECONDS` at the
        live file's end) and acknowledged: only a restart in that moment reads more again.

        With ``--multiline`` ``resume`` already is that place: the parser keeps, per file read
        since its last quiet point, where a restart reads it again
        (:meth:`~shipper.multiline.MultilineParser.pending_start`), which covers split lines
        too. Clamped here as well, a file *before* the held one, its batches acknowledged
        late, went back to where it was opened, below cuts already pruned: a restart read it
        again without them and stored a record flushed at its timeout twice (R3s18)."""
        if self.multiline is None and any(h is not cur for h in self._holding):
            return min(resume, cur.opened_at)
        return resume

    def finished(self) -> bool:
        """``--once``: everything below the bound set at :meth:`start` is read -- the file
        being read has reached its :attr:`Cursor.stop_at`, or no file is left. Files after it
        were rotated in or created during the run: the next run reads them."""
        if not (self.once and self._bounded):
            return False
        if not self.cursors:
            return True
        head = self.cursors[0]
        return head.stop_at is not None and (head.bound_reached or head.read_pos >= head.stop_at)

    def note_sizes(self) -> list[tuple[str, int]]:
        """Keep in the checkpoint of each file held open the size seen now
        (:attr:`~shipper.checkpoint.FileState.seen`, saved with the next write): also of the
        files renamed away and watched for the rest of their rotate wait (see
        :mod:`shipper.rotate_wait`), whose writer may still append to them. Returns, from the
        same look (the daemon's gauges every second: one ``fstat`` a file, not two), the bytes
        written but not acknowledged yet of each open file, by path."""
        for cur in self._lingering:
            cur.note_seen()
        behind = []
        for cur in self.cursors:
            size = cur.note_seen()
            size = cur.size() if size is None else size
            behind.append((str(cur.path), max(size - cur.acked_to, 0)))
        return behind

    def forget_deleted(self) -> int:
        """At a stop cut short: the deleted files still held cannot be read by a restart.
        Count them as lost now, and drop their checkpoints (a restart would blame the downtime
        and count them again). Returns how many."""
        n = 0
        for cur in self.cursors:
            if cur.deleted():
                self.registry.remove(cur.key)
                self.on_loss("deleted_unread")
                n += 1
        return n

    def holds_deleted(self) -> bool:
        """Whether the file being read (the oldest held) is deleted: its unread lines exist
        only behind our descriptor, and a restart could not read them."""
        return bool(self.cursors) and self.cursors[0].deleted()

    def open_keys(self) -> set[str]:
        """The registry keys of the files this source has open, or holds checkpoints of
        (renamed away and watched, held for a split line, read again from a compressed copy):
        whatever source an entry names, this tailer moves it on. The daemon's start leaves
        them alone when it judges the checkpoints of sources removed while it was down."""
        held = (*self.cursors, *self._lingering, *self._held, *self._holding)
        return {c.key for c in held} | self._adopted

    def settled(self) -> Cursor | None:
        """The live file, when it is all this source has open, is read to its end (the caller
        knows) and nothing here is driven by time: no split line waiting for
        :data:`~shipper.split_lines.SPLIT_FLUSH_SECONDS`, no renamed file in its
        :data:`~shipper.rotate_wait.ROTATE_WAIT_SECONDS`, no held or gap-flushed file, not
        parked, no open backoff. Only then may the source sleep until the file changes (an
        inotify event) instead of polling; else None."""
        live = self.live
        if (
            live is None
            or len(self.cursors) != 1
            or self.cursors[0] is not live
            or live.rotated_at is not None
            or live.gap_after
            or self._lingering
            or self._held
            or self._gap_flush is not None
            or self._orphan is not None
            or self._read_past is not None
            or self._parked is not None
            or self._open_backoff
            or self.parser.pending_origins()
        ):
            return None
        return live

    @property
    def waiting(self) -> bool:
        """Not following its files yet: put off for lack of descriptors."""
        return not self._started or fd_budget.is_waiting(self.spec.key)

    def _files_left(self) -> bool:
        """Whether the live file or an uncompressed rotated copy of it is still there (what a
        start could read; True when the folder cannot be listed now)."""
        try:
            rot = rotation_path(self.spec.path)
            return (
                os.path.lexists(self.spec.path)
                or os.path.exists(rot)
                or bool(rotated_siblings(rot))
            )
        except OSError:
            return True

    def drained(self) -> bool:
        """Whether no file is open or watched any more: every one was read to its end and let
        go (an end: its file renamed away or deleted), not a stop."""
        return not (self.cursors or self._lingering)

    def look_at_close(self, drained: bool) -> AtClose:
        """What :meth:`close` decides from, looked at before it: whether the source's files
        are gone, and, if it was ``drained`` (:meth:`drained`, asked before its files were
        closed), when it was last followed (:meth:`_read_to_end_until`). It stats the folder
        and the live path, lists the folder and opens its files: on the event loop, a source
        ending on a hung file system (a stale NFS mount) held every other source; the runner
        has it done on a worker thread, after :meth:`close_files` (it only reads the
        tailer's state)."""
        if not self._started:
            return UNKNOWN_AT_CLOSE
        if not os.path.isdir(self.spec.path.parent):
            # Its folder is gone: a removed container or pod, whose key never comes back
            # (ids are unique). Remembering it would keep an entry per container the host
            # ever ran (up to checkpoint.MAX_FOLLOWED). A --path folder deleted and made
            # again holds new files, which a first sighting reads as it should.
            return AtClose(gone=True, read_until=None)
        if not self._files_left():
            # Its files are gone and its folder stays (a CRI container's N.log removed by the
            # kubelet, its key never used again, while the pod lives on): when it was last
            # followed tells nothing of files that appear later. Kept, one entry per
            # container restart stayed in checkpoints.json (up to checkpoint.MAX_FOLLOWED,
            # rewritten at every save).
            return AtClose(gone=True, read_until=None)
        return AtClose(gone=False, read_until=self._read_to_end_until() if drained else None)

    def close_files(self) -> None:
        """Close every file (their checkpoints stay), before :meth:`look_at_close` runs
        elsewhere: a look that hangs does not hold descriptors (and the space of deleted
        files) meanwhile."""
        fd_budget.stop_waiting(self.spec.key)
        self.drop_prepared()
        for c in (*self.cursors, *self._lingering):
            c.close()
        self.cursors.clear()
        self._lingering.clear()
        self._held.clear()
        self._holding.clear()
        self._read_past = None  # their file is closed: read again from its checkpoint
        self.live = None

    def close(self, looked: AtClose | None = None) -> None:
        """Close every file; forget or note when the source was last followed, from what
        :meth:`look_at_close` found (``looked``; None: it looks now, on this thread)."""
        if looked is None:
            looked = self.look_at_close(self.drained())
        self.close_files()
        if not self._started:
            return
        if looked.gone:
            self.registry.forget_followed(self.spec.key)
        else:
            self._note_read_to_end(looked.read_until)
