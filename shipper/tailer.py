"""Following one source's files across rotation, truncation and deletion.

A :class:`Tailer` owns the files of one source: the live path plus rotated files it still has to
finish. Files are read strictly in order (oldest first), in large blocks with ``os.pread``, and
handed to the format parser as complete lines. Identity and resume points come from the
checkpoint registry (see :mod:`shipper.checkpoint`).

Rotation cases, checked whenever the file being read is at its end:

* rename (Docker ``-json.log`` -> ``.1``, kubelet ``0.log`` -> ``0.log.<time>``): the path now
  names another inode. The old file is at EOF and no longer written to; it is released and the
  new file is opened. Files rotated in between (the writer rotated twice between two polls) are
  found among the siblings by modification time and read first.
* copytruncate: same inode, but smaller than our position or its first line changed. The copy
  (a sibling with our fingerprint) is finished from our position, then the live file restarts
  at 0 under a new ``source_id`` epoch.
* deletion: the path is gone and the inode has no links: finish to EOF, release.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from shipper.checkpoint import FileState, Registry, file_key
from shipper.discover import SourceSpec, rotated_siblings
from shipper.formats import PARSERS, LineParser, Lines, overlong_line

log = logging.getLogger("logq.shipper.tailer")

FINGERPRINT_BYTES = 1024
PIN_CHECK_SECONDS = 0.25
"""How often a source checks whether its live file was rotated (see pin_new_generation)."""
MAX_PINNED_FILES = 64
"""Rotated files a source keeps open at most while it is behind (bounds descriptors)."""
LOSS_REASONS = ("deleted_unread", "truncated_without_copy", "pin_limit")
"""Why lines may have been lost (the ``reason`` label of ``logq_shipper_files_lost_total``):
a file known from the checkpoint was gone at start (rotated away and deleted while the shipper
was down); a file truncated in place (copytruncate) with no copy to finish from; the source fell
more than :data:`MAX_PINNED_FILES` rotations behind, so files deleted before it catches up are
never read."""


def fingerprint(fd: int) -> str | None:
    """Hash of the file's first line (at most 1 KiB); None while that line is incomplete."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.blake2b(head, digest_size=8).hexdigest()


class Cursor:
    """One open file and the read position in it."""

    def __init__(self, fd: int, path: Path, fp: str, state: FileState, parser: LineParser) -> None:
        st = os.fstat(fd)
        self.fd = fd
        self.path = path
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.fp = fp
        self.key = file_key(st.st_dev, st.st_ino, fp)
        self.state = state
        self.source_id = state.source_id
        self.read_pos = state.offset
        self.acked_floor = state.acked
        self.parser = parser
        self.outstanding = 0
        """Batches read from this file and not acknowledged yet."""
        self.closed = False
        self.superseded = False
        """Truncated in place: its checkpoint entry now belongs to the new content."""
        self.final = False
        """No more writes will come (rotated away, deleted): an unterminated last line is
        complete as it is."""
        self._skip: bytes | None = None
        self._skip_start = 0
        self._skip_total = 0
        self.at_end = False
        """The last read found nothing new: the next data may follow a truncation."""

    def read(self, block: int, max_lines: int = 1 << 30) -> Chunk | None:
        """The next complete lines (at most ``max_lines``), or None at the end of what is
        written so far."""
        data = os.pread(self.fd, block, self.read_pos)
        self.at_end = not data
        if not data:
            return None
        if self._skip is not None:
            return self._skip_more(data)
        idx = data.rfind(b"\n")
        if idx < 0:
            if len(data) < block:
                if self.final:  # rotated away with an unterminated last line: ship it as is
                    return self._last_line(data)
                return None  # the last line is not complete yet
            # One physical line longer than a whole block: keep its head, skip the rest.
            self._skip = data[: self.parser.max_line_bytes]
            self._skip_start = self.read_pos
            self._skip_total = len(data)
            self.read_pos += len(data)
            return Chunk(self, self.parser.new_lines(), self._skip_start, len(data))
        # Split no further than needed, and without copying the block: the last piece is the
        # unterminated tail (or the lines beyond ``max_lines``), read again next time.
        lines = data.split(b"\n", max_lines)
        del lines[-1]
        if len(lines) == max_lines:
            idx = sum(map(len, lines)) + max_lines - 1
        parsed = self.parser.feed(lines, self.read_pos)
        self.read_pos += idx + 1
        if self.acked_floor and parsed.offsets and parsed.offsets[0] <= self.acked_floor:
            parsed = _drop_upto(parsed, self.acked_floor)
        pending = self.parser.pending_start()
        return Chunk(self, parsed, self.read_pos if pending is None else pending, idx + 1)

    def _last_line(self, data: bytes) -> Chunk:
        # Its offset counts a newline that is not there: one past the end, still increasing.
        parsed = self.parser.feed([data], self.read_pos)
        self.read_pos += len(data)
        return Chunk(self, parsed, self.read_pos, len(data))

    def has_remainder(self) -> bool:
        """Bytes after the last complete line (an unterminated line)."""
        return not self.final and self.size() > self.read_pos

    def _skip_more(self, data: bytes) -> Chunk:
        nl = data.find(b"\n")
        if nl < 0:
            self._skip_total += len(data)
            self.read_pos += len(data)
            return Chunk(self, self.parser.new_lines(), self._skip_start, len(data))
        prefix = self._skip or b""
        dropped = self._skip_total + nl - len(prefix)
        self._skip = None
        self.read_pos += nl + 1
        parsed = overlong_line(self.parser, prefix, self.read_pos, dropped)
        if self.read_pos <= self.acked_floor:
            parsed = self.parser.new_lines()
        return Chunk(self, parsed, self.read_pos, nl + 1)

    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
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


class Tailer:
    """All files of one source, read oldest first."""

    def __init__(
        self,
        spec: SourceSpec,
        registry: Registry,
        host: str,
        max_line_bytes: int,
        block_size: int = 256 * 1024,
        on_loss: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.on_loss = on_loss or (lambda reason: None)
        """Called with a reason (see :data:`LOSS_REASONS`) when lines may have been lost."""
        self.registry = registry
        self.host = host
        self.max_line_bytes = max_line_bytes
        self.block_size = max(block_size, max_line_bytes + 4096)
        self.cursors: list[Cursor] = []
        self.live: Cursor | None = None
        self._released: deque[tuple[int, int, str]] = deque(maxlen=64)
        self._started = False
        self._floor: int | None = None
        """mtime of the last file finished because it was rotated away: files rotated after
        it that we never opened are newer."""
        self._pin_limit_logged = False

    # -- opening ----------------------------------------------------------------------------

    def _parser(self) -> LineParser:
        return PARSERS[self.spec.format](self.max_line_bytes)

    def _source_id(self, ino: int, fp: str, epoch: int) -> str:
        sid = f"{self.host}:{ino:x}:{fp}"
        return f"{sid}+{epoch}" if epoch else sid

    def _open(
        self, path: Path, fresh: bool, exclude: Container[tuple[int, int, str]] = ()
    ) -> Cursor | None:
        """Open ``path`` at its checkpoint (or at 0 when ``fresh`` and unknown), else None.

        Files whose (device, inode, fingerprint) is in ``exclude`` are not opened.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot open log file path=%s error=%s", path, exc)
            return None
        try:
            fp = fingerprint(fd)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if fp is None or (st.st_dev, st.st_ino, fp) in exclude:
            os.close(fd)
            return None
        key = file_key(st.st_dev, st.st_ino, fp)
        state = self.registry.get(key)
        if state is None:
            if not fresh:
                os.close(fd)
                return None
            state = FileState(self.spec.key, str(path), self._source_id(st.st_ino, fp, 0), 0, 0)
            self.registry.put(key, state)
        elif state.offset > st.st_size:
            # Truncated while we were not running: the content is new. (A corrupt offset looks
            # the same; the warning makes the possible duplicates visible.)
            log.warning(
                "checkpoint is past the end of the file: truncated while the shipper was down, "
                "reading it from its start as new content path=%s offset=%d size=%d registry=%s",
                path,
                state.offset,
                st.st_size,
                self.registry.path,
            )
            epoch = state.epoch + 1
            state = FileState(
                self.spec.key, str(path), self._source_id(st.st_ino, fp, epoch), 0, 0, epoch
            )
            self.registry.put(key, state)
        log.debug("opened path=%s ino=%d offset=%d", path, st.st_ino, state.offset)
        return Cursor(fd, path, fp, state, self._parser())

    def start(self) -> None:
        """Open the rotated files a previous run had not finished, then the live file.

        Files rotated *after* the last one we know of while we were down (the runtime rotated
        twice) were never read: they are newer than it and are read too, oldest first.
        """
        self._started = True
        known = {k for k, s in self.registry.items() if s.source == self.spec.key}
        rotated: list[tuple[int, Cursor]] = []
        if known:
            unknown: list[Path] = []
            newest_known = -1
            for sib in rotated_siblings(self.spec.path):
                cur = self._open(sib, fresh=False)
                if cur is None:
                    unknown.append(sib)
                    continue
                mtime = os.fstat(cur.fd).st_mtime_ns
                newest_known = max(newest_known, mtime)
                if cur.read_pos < cur.size():
                    rotated.append((mtime, cur))
                else:  # finished before the restart: forget it
                    self.registry.remove(cur.key)
                    cur.close()
            if newest_known < 0:
                # The files we knew are gone (deleted by max-file): whatever was written after
                # our last checkpoint is newer than it.
                stamps = [st.updated for k in known if (st := self.registry.get(k)) is not None]
                newest_known = int(max(stamps) * 1e9)
            for sib in unknown:
                try:
                    newer = os.stat(sib).st_mtime_ns >= newest_known
                except OSError:
                    continue
                cur = self._open(sib, fresh=True) if newer else None
                if cur is not None:
                    rotated.append((os.fstat(cur.fd).st_mtime_ns, cur))
        self.cursors = [c for _, c in sorted(rotated, key=lambda x: x[0])]
        for c in self.cursors:
            log.info("resuming rotated file path=%s offset=%d", c.path, c.read_pos)
        self._open_live()
        self._count_vanished(known)

    def _count_vanished(self, known: set[str]) -> None:
        """Checkpointed files of this source that no longer exist were rotated away and deleted
        while we were down: what was written to them after the checkpoint is lost. Count each
        (visible in metrics and logs) and forget it."""
        opened = {c.key for c in self.cursors}
        for key in known - opened:
            state = self.registry.get(key)
            if state is None:
                continue  # finished and forgotten above
            log.warning(
                "log file deleted before it was read to the end (rotated away while the shipper "
                "was down); lines after offset %d are lost path=%s",
                state.offset,
                state.path,
            )
            self.on_loss("deleted_unread")
            self.registry.remove(key)

    def _open_live(self) -> bool:
        """Open the file now at the live path, after any files rotated since the last one we
        finished (the runtime may rotate several times between two polls)."""
        cur = self._open(self.spec.path, fresh=True)
        if cur is None:
            return False
        if any(c.key == cur.key for c in self.cursors):
            cur.close()
            return False
        missed = self._missed_rotations(cur) if self._floor is not None else []
        self.cursors.extend(missed)
        self.cursors.append(cur)
        self.live = cur
        log.info(
            "following file path=%s source=%s offset=%d missed_rotations=%d",
            cur.path,
            self.spec.key,
            cur.read_pos,
            len(missed),
        )
        return True

    # -- reading ----------------------------------------------------------------------------

    def read(self, max_lines: int = 1 << 30, max_bytes: int = 1 << 30) -> Chunk | None:
        """The next lines of the oldest unfinished file, or None when it is at its end."""
        if not self._started:
            self.start()
        if not self.cursors:
            return None
        head = self.cursors[0]
        if head is self.live and head.at_end and self._rewritten(head):
            # Truncated in place and written past our position before we looked again:
            # reading on from our position would ship the middle of new lines.
            self._truncated(head)
            if not self.cursors:
                return None
        block = min(self.block_size, max(max_bytes, 65536))
        if block < self.max_line_bytes + 4096:  # an allowed line must fit in a block
            block = self.block_size
        return self.cursors[0].read(block, max_lines)

    @staticmethod
    def _rewritten(cur: Cursor) -> bool:
        """Whether the file under ``cur`` is no longer the content we were reading."""
        try:
            return cur.size() < cur.read_pos or fingerprint(cur.fd) not in (cur.fp, None)
        except OSError:
            return False

    def pin_new_generation(self) -> None:
        """While we are behind, open each file the runtime rotates in as soon as it appears.

        An open descriptor keeps a rotated file readable even after the runtime deletes it
        (``max-file``), so a shipper that lags by more than the rotation window still loses
        nothing. Without this, rotations would only be noticed at the end of the file being
        read, and generations rotated *and* deleted meanwhile would be gone.
        """
        live = self.live
        if live is None:
            # A rotation left a new file with no complete line yet. Open it once it has one,
            # here too: reading may be waiting for acks, and the runtime keeps rotating.
            if self._floor is not None and len(self.cursors) < MAX_PINNED_FILES:
                self._open_live()
            return
        if len(self.cursors) >= MAX_PINNED_FILES:
            if not self._pin_limit_logged:
                self._pin_limit_logged = True
                self.on_loss("pin_limit")
                log.warning(
                    "source is %d rotated files behind; newer rotations are found when it "
                    "catches up, and files the runtime deletes before that are lost path=%s",
                    len(self.cursors),
                    self.spec.path,
                )
            return
        self._pin_limit_logged = False
        try:
            st = os.stat(self.spec.path)
        except OSError:
            return  # renamed and not recreated yet, or deleted: poll() handles it at EOF
        if (st.st_dev, st.st_ino) == (live.dev, live.ino):
            return
        log.info("log file rotated while behind path=%s read=%d", live.path, live.read_pos)
        self._floor = os.fstat(live.fd).st_mtime_ns
        self.live = None
        if not self._open_live():
            self.live = live  # the new file is not complete yet (no first line): later

    def poll(self, finishing: bool = False) -> bool:
        """At the end of the current file: handle rotation, truncation, deletion.

        Returns True when something changed and reading should be tried again. With
        ``finishing`` (the source disappeared, or shutdown), files at their end are released.
        """
        if not self.cursors:
            return False if finishing else self._open_live()
        head = self.cursors[0]
        if head is not self.live or finishing:
            if head.has_remainder():
                head.final = True
                return True
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
                self.live = None
                self._release(head)
                return True
            return False  # renamed, the new file is not there yet
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (head.dev, head.ino):
            log.info("log file rotated path=%s read=%d", head.path, head.read_pos)
            self.live = None
            self._floor = os.fstat(head.fd).st_mtime_ns
            if head.has_remainder():
                head.final = True  # finish its unterminated last line first, then release it
            else:
                self._release(head)
            self._open_live()
            return True
        if os.fstat(head.fd).st_size < head.read_pos or fingerprint(head.fd) != head.fp:
            self._truncated(head)
            return True
        return False

    def _missed_rotations(self, live: Cursor) -> list[Cursor]:
        """Rotated files newer than the last one we finished that we never opened, oldest
        first: they were live for a moment between two polls."""
        floor = self._floor or 0
        found: list[tuple[int, Cursor]] = []
        for sib in rotated_siblings(self.spec.path):
            try:
                st = os.stat(sib)
            except OSError:
                continue
            if st.st_mtime_ns < floor or st.st_ino == live.ino:
                continue
            if any(c.ino == st.st_ino for c in self.cursors):
                continue
            cur = self._open(sib, fresh=True, exclude=self._released)
            if cur is not None:
                log.debug("found a missed rotation path=%s ino=%d", sib, cur.ino)
                found.append((st.st_mtime_ns, cur))
        return [c for _, c in sorted(found, key=lambda x: x[0])]

    def _truncated(self, head: Cursor) -> None:
        """copytruncate: finish the copy from our position, restart the live file at 0.

        Copies made *after* ours (logrotate ran again before we looked) hold lines we never
        read: the copy's mtime becomes the floor of the missed-rotation search, which then
        reads them from their start, oldest first, before the live file.
        """
        copy = None
        read_all = False  # a copy exists and holds nothing past our position
        for sib in rotated_siblings(self.spec.path):
            try:
                fd = os.open(sib, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            ours = fingerprint(fd) == head.fp
            if ours and st.st_size > head.read_pos:
                state = FileState(
                    self.spec.key, str(sib), head.source_id, head.read_pos, head.acked_floor
                )
                self.registry.put(file_key(st.st_dev, st.st_ino, head.fp), state)
                copy = Cursor(fd, sib, head.fp, state, head.parser)
                self._floor = st.st_mtime_ns
                break
            if ours and not read_all:
                read_all = True
                self._floor = st.st_mtime_ns
                self._released.append((st.st_dev, st.st_ino, head.fp))  # read: not "missed"
            os.close(fd)
        if copy is None and not read_all:
            log.warning(
                "log file truncated in place and no copy found to finish from; lines written "
                "after offset %d and before the truncation, if any, are lost path=%s",
                head.read_pos,
                head.path,
            )
            self.on_loss("truncated_without_copy")
        else:
            log.info(
                "log file truncated in place path=%s read=%d copy=%s",
                head.path,
                head.read_pos,
                copy.path if copy else "read to its end",
            )
        epoch = head.state.epoch + 1
        head.superseded = True
        self.registry.put(
            head.key,
            FileState(
                self.spec.key,
                str(head.path),
                self._source_id(head.ino, head.fp, epoch),
                0,
                0,
                epoch,
            ),
        )
        self.cursors.remove(head)
        head.close()
        self.live = None
        if copy is not None:
            self.cursors.insert(0, copy)
        self._open_live()

    def _release(self, cur: Cursor) -> None:
        log.debug("released path=%s ino=%d read=%d", cur.path, cur.ino, cur.read_pos)
        if cur in self.cursors:
            self.cursors.remove(cur)
        self._released.append((cur.dev, cur.ino, cur.fp))
        cur.close()
        if cur.outstanding == 0 and cur is not self.live and not cur.superseded:
            self.registry.remove(cur.key)

    # -- acknowledgement -------------------------------------------------------------------

    def commit(self, cur: Cursor, resume: int, acked: int) -> None:
        """A batch of ``cur`` was acknowledged: advance its checkpoint."""
        cur.outstanding -= 1
        if cur.superseded:
            return
        if cur.closed and cur.outstanding == 0 and cur is not self.live:
            self.registry.remove(cur.key)
            return
        st = cur.state
        st.offset = resume
        st.acked = max(st.acked, acked)
        st.path = str(cur.path)
        self.registry.put(cur.key, st)

    def behind(self) -> list[tuple[str, int]]:
        """Bytes written but not acknowledged yet, per open file."""
        return [(str(c.path), max(c.size() - c.state.offset, 0)) for c in self.cursors]

    def close(self) -> None:
        for c in self.cursors:
            c.close()
        self.cursors.clear()
        self.live = None
