"""copytruncate: the live file truncated in place, after (or without) a copy of it.

Same inode, but smaller than our position or its first line changed. The copy (a sibling with
our fingerprint) is finished from our position, then the live file restarts at 0 under a new
``source_id`` epoch. Checked before every read of the live file, and at its end.
"""

from __future__ import annotations

import errno
import logging
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from shipper.birth import birth_time
from shipper.checkpoint import FileState, file_key
from shipper.cursor import Chunk, Cursor
from shipper.discover import compressed_siblings, rotated_siblings
from shipper.fingerprint import TAIL_BYTES, fingerprint, gzip_identity
from shipper.regular import open_regular
from shipper.rotated import age, rotation_path

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")


def copies_in_order(siblings: list[Path], opened_ns: int) -> list[Path]:
    """``siblings`` in the order to look for the copy of a file opened when its modification
    time was ``opened_ns``: those modified since, oldest first, then the others, newest first
    (by :func:`~shipper.rotated.age`: modification time, then name, ``.1`` newer than ``.2``).

    The copy is told by its first line and the bytes up to our position; with a first line
    every generation shares (an empty line, a banner, a CSV header) an older generation's copy
    (``.2``) has both too. Taken in ``os.listdir`` order, it was "finished" from our position
    when listed first: lines read from it long ago went out again under the new id, stored
    twice (A3s18). A copy of what we read was made after we opened the file, an earlier
    generation's before; of the copies made since, ours is the first (logrotate may have run
    again before we looked). None is modified since (file times of a jiffy or a second: a
    truncation moments after the open, or a copy made just before it): the newest is ours,
    older ones are earlier generations'. A sibling that cannot be looked at comes last."""
    since: list[tuple[tuple[int, int, str], Path]] = []
    before: list[tuple[tuple[int, int, str], Path]] = []
    for sib in siblings:
        try:
            mtime_ns = os.stat(sib).st_mtime_ns
        except OSError:  # gone, or not to be looked at: last, its open tells
            mtime_ns = -1
        (since if mtime_ns > opened_ns else before).append((age(mtime_ns, sib), sib))
    since.sort(key=lambda item: item[0])
    before.sort(key=lambda item: item[0], reverse=True)
    return [sib for _, sib in since + before]


class Fit(Enum):
    """What a rotated sibling is to the content a truncated live file held (see
    :func:`copy_fit`)."""

    WHOLE = "whole"
    """Its copy, holding every byte read: finished from our read position."""
    CHECKED = "checked"
    """Its copy, but the bytes read after :attr:`~shipper.cursor.Cursor.checked_pos` are not
    in it (shorter, or other bytes there): the truncation came between our last check and a
    read, which read the new content. Read again from ``checked_pos``."""
    EARLIER = "earlier"
    """Shorter than ``checked_pos`` (its bytes there cannot be compared), and made before the
    file was opened: an earlier generation's copy (its lines were read from the live file
    before its truncation)."""
    READ = "read"
    """Its copy, shorter than ``checked_pos``, holding the bytes read just before its own end:
    the lines after it were written between the copy and the truncation, and read from the
    live file before the truncation. Nothing is left to read from it (B1s19)."""


def copy_fit(fd: int, st: os.stat_result, head: Cursor) -> Fit | None:
    """How the rotated file open at ``fd`` (``st`` its ``fstat``) stands to ``head``, the live
    file found truncated in place; None: it is not the copy of what ``head`` read.

    A first line every generation shares (an empty line, a banner, a CSV header) leaves
    several copies with ours; which one was made after the open cannot be told by file times
    alone (1 s times; copies that keep the original's time: ``cp -p``, ``rsync -t``), and a
    later generation's copy is as long as ours or longer. Taken for ours, it was "finished" from
    our position: its lines before it and our copy's unread rest were lost, uncounted, and a
    line cut at our offset stored (R2s19). So the copy must hold the very bytes read before our
    position (:meth:`~shipper.cursor.Cursor.read_before`); copies alike in those bytes too are
    taken in :func:`copies_in_order`. A sibling shorter than ``checked_pos`` made before the
    open is an earlier generation's. One made since is ours when it ends with the very bytes
    read before that offset (:data:`~shipper.cursor.RECENT_BYTES` are kept): the lines after
    it were written between the copy and the truncation and read from the live file; counted
    a loss, every such rotation raised a false ticket (B1s19). A later generation's copy
    shorter than our position has other bytes before its end (else it repeats ours, up to the
    256 bytes compared): left to be read whole as a missed rotation, as is one whose end is
    further back than the bytes kept (it cannot be told)."""
    if fingerprint(fd) != head.fp:
        return None
    size = st.st_size
    if size >= head.read_pos and _holds(fd, head.read_pos, head.read_before(head.read_pos)):
        return Fit.WHOLE
    if size >= head.checked_pos:
        checked = head.read_before(head.checked_pos)
        return Fit.CHECKED if _holds(fd, head.checked_pos, checked) else None
    if st.st_mtime_ns <= head.mtime_at_open:
        return Fit.EARLIER
    ours = head.read_before(size)
    return Fit.READ if ours is not None and _holds(fd, size, ours) else None


def _holds(fd: int, pos: int, tail: bytes | None) -> bool:
    """Whether the file at ``fd`` holds ``tail`` just before ``pos`` (None, not known: yes,
    the first line and the size decide as before)."""
    return not tail or os.pread(fd, len(tail), pos - len(tail)) == tail


def still_read_there(cur: Cursor) -> bool:
    """Whether the file under ``cur`` still holds the bytes read just before
    :attr:`~shipper.cursor.Cursor.read_pos` and before
    :attr:`~shipper.cursor.Cursor.checked_pos` (those not known are not compared).

    Both: a truncation after our last read leaves other bytes before ``read_pos``; one
    between the last check and that read had it read the new content there, whose bytes before
    ``checked_pos`` are not ours (then :attr:`Fit.CHECKED` reads the copy again from there).
    One ``pread`` of at most 512 bytes after a read of at most
    :data:`~shipper.fingerprint.TAIL_BYTES` (tailing a line at a time), two of 256 after a
    larger one (a backlog's block)."""
    pos, last = cur.read_pos, cur.read_before(cur.read_pos)
    checked = cur.read_before(cur.checked_pos) if cur.checked_pos != pos else None
    if not checked:
        return _holds(cur.fd, pos, last)
    start = cur.checked_pos - len(checked)
    if last is None or pos - start > 2 * TAIL_BYTES:
        return _holds(cur.fd, pos, last) and _holds(cur.fd, cur.checked_pos, checked)
    data = os.pread(cur.fd, pos - start, start)
    return len(data) == pos - start and data.startswith(checked) and data.endswith(last)


def _size_and_time(fd: int) -> list[int] | None:
    """``[size, modification time in ns]`` of the file at ``fd`` (see
    :attr:`FileState.left_at`), None when it cannot be taken."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class CompressedCopy(NamedTuple):
    """The gzip-compressed copy taken for that of a truncated live file's content."""

    read_all: bool
    """Its uncompressed size is our position: nothing was left unread."""
    mtime_ns: int
    """Its modification time: logrotate gives a ``.gz`` its source's, the time of the copy."""


def compressed_copy(path: Path, fp: str, read_pos: int, opened_ns: int) -> CompressedCopy | None:
    """The compressed copy of the content with first line ``fp``, read to ``read_pos``, of a
    live file at ``path`` opened when its modification time was ``opened_ns`` (copytruncate
    with ``compress``), None without one. Several share ``fp`` (later generations too, when
    logrotate ran again before we looked): the first in :func:`copies_in_order` is taken. Its
    bytes are not compared as a plain copy's are: that would decompress it up to our position
    on the event loop; its uncompressed size tells whether lines were left unread."""
    try:
        copies = compressed_siblings(rotation_path(path))
    except OSError:
        return None
    for copy in copies_in_order(copies, opened_ns):
        ident = gzip_identity(copy)
        if ident is None or ident[0] != fp:
            continue
        try:
            mtime_ns = os.stat(copy).st_mtime_ns
        except OSError:
            continue
        return CompressedCopy(ident[1] == read_pos % (1 << 32), mtime_ns)
    return None


class CopyTruncate:
    """Part of :class:`~shipper.tailer.Tailer`: noticing and handling copytruncate."""

    @staticmethod
    def _rewritten(cur: Cursor) -> bool:
        """Whether the file under ``cur`` is no longer the content we were reading: its first
        line changed (or is incomplete now, which ours was not), it shrank below our position,
        or it holds other bytes than those read before our position or before the last
        checked one (:func:`still_read_there`).

        The last: every generation starts with the same line (a CSV header, a banner, an
        empty line) and the file was truncated and written again past our position before we
        looked (the shipper paused while acks were held back). Size and first line told
        nothing: the new content was read on from its middle under the old id (a cut line
        stored, its first lines and the copy's unread rest lost, nothing counted: B2s19).

        It runs before every read of the live file (a pause in a backlog is a pause between
        two reads). A file whose size and times are those it had when last found ours was not
        written since: only its ``fstat`` is taken, as at the read that finds nothing more
        after the one that read a new line (tailing a line at a time then costs about what
        the size and first-line check alone did). Not with whole-second times (a coarse file
        system's): a truncation written again to the same size within that second would
        pass."""
        try:
            st = os.fstat(cur.fd)
        except OSError:
            return cur.read_pos > 0  # taken for an empty file, as Cursor.size does
        if st.st_size < cur.read_pos:
            return True
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == cur.found_ours and st.st_mtime_ns % 1_000_000_000:
            return False
        try:
            ours = fingerprint(cur.fd) == cur.fp and still_read_there(cur)
        except OSError:
            return False
        if ours:
            cur.found_ours = stamp
        return not ours

    def _compressed_copy(self: Tailer, head: Cursor) -> tuple[bool, bool]:
        """(read all, lines unread) as the compressed copy of ``head``'s content tells (see
        :func:`compressed_copy`); (False, False) without one.

        With one, the uncompressed copies newer than it are later generations' (logrotate ran
        again before we looked; with ``delaycompress`` the ``.1`` is the next generation's
        while ours is ``.2.gz``): its time is the floor of the missed-rotation search, which
        reads them whole. Without that floor they were never read, nor counted."""
        found = compressed_copy(self.spec.path, head.fp, head.read_pos, head.mtime_at_open)
        if found is None:
            return False, False
        self._floor = found.mtime_ns
        return found.read_all, not found.read_all

    def _truncated(self: Tailer, head: Cursor) -> bool:
        """copytruncate: finish the copy from our position, restart the live file at 0.

        Returns False when it could not look (out of descriptors): nothing changed, and the
        live file must not be read on.

        Copies made *after* ours (logrotate ran again before we looked) hold lines we never
        read: the copy's mtime becomes the floor of the missed-rotation search, which then
        reads them from their start, oldest first, before the live file.

        A copy smaller than our position, or with other bytes before it than those read
        (:func:`copy_fit`), means the truncation came between our last check and a read: the
        bytes read after that check were the new content's. The copy is then read
        again from the last position known to be ours, under a new id (the old id's offsets
        up to our position are taken at the aggregator); a few lines may arrive twice, none
        is lost.
        """
        copy = None
        read_all = False  # a copy exists and holds nothing past our position
        epoch = head.state.epoch + 1
        try:
            siblings = rotated_siblings(rotation_path(self.spec.path))
            siblings = copies_in_order(siblings, head.mtime_at_open)
        except OSError as exc:
            # The copy may be among them: nothing is changed yet, the next check tries again.
            self._out_of_descriptors(self.spec.path, exc)
            return False
        for sib in siblings:
            try:
                fd = open_regular(sib)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # The copy may be this one: deciding without it would lose its lines.
                    # Nothing is changed yet; the next read or poll tries again.
                    self._out_of_descriptors(sib, exc)
                    return False
                continue
            try:
                st = os.fstat(fd)
                fit = copy_fit(fd, st, head)
            except OSError:
                os.close(fd)
                continue
            if fit is Fit.CHECKED:
                log.warning(
                    "log file truncated while being read: bytes after offset %d were read from "
                    "the new content; reading its copy again from offset %d under a new id "
                    "(some lines may arrive twice) path=%s copy=%s",
                    head.checked_pos,
                    head.checked_pos,
                    head.path,
                    sib,
                )
                state = FileState(
                    self.spec.key,
                    str(sib),
                    self._source_id(head.ino, head.fp, epoch, head.birth),
                    head.checked_pos,
                    0,
                    epoch,
                )
                epoch += 1
                self.registry.put(file_key(st.st_dev, st.st_ino, head.fp), state)
                copy = Cursor(fd, sib, head.fp, state, self.parser, birth_time(fd))
                state.tail = copy.tail(head.checked_pos)  # checked at a restart before its ack
                copy.stop_at = head.stop_at  # same bytes at the same offsets as head's
                self._floor = st.st_mtime_ns
                break
            if fit is Fit.WHOLE:
                # Its checkpoint starts where head's is (what is acknowledged), reading goes
                # on from where head's is: batches of head in flight are acked in order
                # before the copy's first, so a crash before that reads them again.
                # A copy holding nothing past our position is followed too (read at once to
                # its end, then released as any rotated file): left out of the registry, a
                # restart's missed-rotation search from an older checkpointed file read it
                # whole under a new id, its lines stored twice (A3s18).
                state = FileState(
                    self.spec.key,
                    str(sib),
                    head.source_id,
                    head.state.offset,
                    head.state.acked,
                    head.state.epoch,
                    cuts=[list(c) for c in head.state.cuts],  # same bytes, same cuts
                    acked_to=head.state.acked_to,
                    floor=head.state.floor,  # and the same numbering
                )
                self.registry.put(file_key(st.st_dev, st.st_ino, head.fp), state)
                copy = Cursor(fd, sib, head.fp, state, self.parser, birth_time(fd))
                # From the copy's own bytes: head's hash may have been taken after the
                # truncation (an ack between it and this poll), of the new content (R1).
                state.tail = copy.tail(state.offset)
                copy.read_pos = copy.checked_pos = head.read_pos
                copy.cuts = list(head.cuts)
                copy.last_offset, copy.raised = head.last_offset, list(head.raised)
                copy.acked_floor = max(head.acked_floor, state.acked)
                copy.stop_at = head.stop_at
                self._follow_acks(head, copy)
                self._floor = st.st_mtime_ns
                break
            if fit in (Fit.EARLIER, Fit.READ) and not read_all:
                read_all = True
                self._floor = st.st_mtime_ns
                read = (st.st_dev, st.st_ino, head.fp, birth_time(fd))
                self._released.append(read)  # read: not "missed"
            os.close(fd)
        if copy is None and not read_all:
            read_all, unread = self._compressed_copy(head)
        if copy is None and not read_all:
            if head.unread_seen or unread:
                log.warning(
                    "log file truncated in place and no copy found to finish from; lines "
                    "written after offset %d and before the truncation are lost path=%s",
                    head.read_pos,
                    head.path,
                )
                self.on_loss("truncated_without_copy")
            else:
                # All we had seen was read: only lines written since our last look, if any,
                # are lost. Docker's max-file=1 (its default with max-size alone) does this at
                # every rotation; a warning each time would drown the log.
                self.on_loss("truncated_in_place")
                level = logging.INFO if self._in_place_warned else logging.WARNING
                self._in_place_warned = True
                log.log(
                    level,
                    "log file truncated in place with no copy, after we had read all we saw "
                    "(offset %d); lines written after our last look and before the "
                    "truncation, if any, are lost (Docker max-file=1 truncates at every "
                    "rotation: keep max-file 2 or more) path=%s",
                    head.read_pos,
                    head.path,
                )
        else:
            log.info(
                "log file truncated in place path=%s read=%d copy=%s",
                head.path,
                head.read_pos,
                copy.path if copy else "read to its end",
            )
        if copy is not None:
            self.parser.retag(head, copy)  # a split line's parts go on in the copy
        elif self.multiline is not None:
            self._orphan = self._flush_truncated(head)
        head.superseded = True
        # Read from 0 under the next epoch: kept under the old first line's key, which new
        # content with that line (a fixed banner) opens. Content with another first line gets
        # its own key and takes this entry over (Registry.take_restarted); left here, the next
        # start took it for a file deleted unread.
        self.registry.put(
            head.key,
            FileState(
                self.spec.key,
                str(head.path),
                self._source_id(head.ino, head.fp, epoch, head.birth),
                0,
                0,
                epoch,
                left_at=_size_and_time(head.fd),
            ),
        )
        self.cursors.remove(head)
        head.close()
        self.live = None
        if copy is not None:
            self.cursors.insert(0, copy)
        self._open_live()
        return True

    def _flush_truncated(self: Tailer, head: Cursor) -> Chunk | None:
        """``--multiline``: the records (and split lines) open in ``head``, truncated in place
        with no copy to read on from, as they are, at offsets one past what was read of it.

        Nothing else would ever ship them: their lines are in no file a read reaches again,
        and the timeout flush takes records of the file being read only (R3s18: a record open
        at the truncation stayed unshipped until a later line ended it, or was lost). They go
        under ``head``'s id, at offsets above every record of it, before the new content's
        first line. No cut is kept: the entry of ``head``'s inode now belongs to the new
        content, so no restart reads this content again -- as a line of it that was never
        read, the records are lost if the shipper stops before their ack."""
        if head not in self.parser.pending_origins():
            return None
        self.parser.origin = head
        lines = head.number(self.parser.flush(head, self._flush_offset(head), every=True), True)
        if not len(lines):
            return None
        log.info(
            "shipping open multi-line records as they are: their file was truncated in place "
            "with no copy to read on from lines=%d path=%s",
            len(lines),
            head.path,
        )
        chunk = Chunk(head, lines, head.read_pos, 0)
        if self._held:
            self._settle_held(chunk)
        return chunk

    def _follow_acks(self: Tailer, head: Cursor, copy: Cursor) -> None:
        """The batches of ``head`` still in flight count as the copy's, and their acks
        advance the copy's checkpoint (:meth:`~shipper.tailer.Tailer.commit` forwards them).

        Else a copy holding nothing past our position had no batch of its own: it was
        finished as soon as it was read to its end, and a kill before those batches' acks
        restarted with the copy's entry finished at its end: their lines were never read
        again, and lost (R1s19 #3)."""
        head.copied_to = copy
        copy.outstanding += head.outstanding
