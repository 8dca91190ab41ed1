"""Following one source's files across rotation, truncation and deletion.

A :class:`Tailer` owns the files of one source: the live path plus rotated files it still has to
finish. Files are read strictly in order (oldest first), each through a
:class:`~shipper.cursor.Cursor` (large ``os.pread`` blocks, complete lines to the format parser).
Identity and resume points come from the checkpoint registry (see :mod:`shipper.checkpoint`),
a file's identity from its first line (see :mod:`shipper.fingerprint`).

One parser serves all files of a source, so a line the runtime split (Docker 16 KiB partial
entries, CRI ``P`` parts) is joined even when a rotation falls between its parts. No file's
checkpoint passes the first part of a line that is not acknowledged whole: a rotated file holding
such parts keeps its checkpoint (at the line's start) until the batch completing the line is
acknowledged, so a restart at any point reads the whole line again.

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

A source first seen with rotated files already next to its live file (it rotated before the
first scan, or during a shipper restart) has those read first; see :meth:`Tailer._first_seen`.
Rotated files opened while the source is behind (pinned, so the runtime's deletions lose
nothing) are bounded per source (:data:`MAX_PINNED_FILES`) and by the process's open-files
budget (see :mod:`shipper.fd_budget`), which live files count against too.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Container
from pathlib import Path

from shipper import fd_budget
from shipper.checkpoint import MAX_CUTS, FileState, Registry, file_key
from shipper.cursor import Chunk, Cursor
from shipper.discover import SourceSpec, compressed_siblings, rotated_siblings
from shipper.fingerprint import fingerprint, gzip_identity
from shipper.formats import PARSERS, LineParser
from shipper.rotated import (
    compressed_copy,
    compressed_identities,
    modified_since,
    oldest_first,
    rotation_path,
)

log = logging.getLogger("logq.shipper.tailer")

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
SPLIT_FLUSH_SECONDS = 5.0
"""A line the runtime split (Docker 16 KiB partial entries, CRI ``P`` parts) whose next part has
not come for this long, while the file has nothing new, is shipped as it is (Fluent Bit's
``Docker_Mode_Flush``, 4 s by default): a container that died mid-line would otherwise hold it,
and its file's checkpoint, for as long as the source lives."""
ROTATE_WAIT_SECONDS = 5.0
"""A file renamed away stays open this long, also once the new file has data (another writer
may not have reopened yet), and what is appended to it meanwhile is read: logrotate's
``create`` mode renames the file and creates a new one before the program reopens its log (on
a signal, or later), so the program's last lines go to the renamed file. Fluent Bit's tail
``Rotate_Wait`` (5 s by default) does the same."""
PARK_IDLE_SECONDS = 2.0
"""While sources wait for a descriptor, a source whose live file had nothing new for this long
(read to its end, all acknowledged) closes it and reopens it when it grows or is rotated: with
more sources than descriptors, every source still makes progress, in turns."""
OPEN_RETRY_MAX_SECONDS = 30.0
"""Longest pause between attempts to open a file while the process is out of descriptors."""
LOSS_REASONS = (
    "deleted_unread",
    "truncated_without_copy",
    "truncated_in_place",
    "pin_limit",
    "rotated_unseen",
)
"""Why lines may have been lost (the ``reason`` label of ``logq_shipper_files_lost_total``):
a file known from the checkpoint was gone at start (rotated away and deleted while the shipper
was down, and no ``.gz`` of it shows it was read to its end); a file truncated in place
(copytruncate) with no copy to finish from, while lines we had not read were in it
(``truncated_without_copy``: lost for sure), or after we had read all we saw
(``truncated_in_place``: lines written between our last look and the truncation, if any, are
lost; Docker ``max-file=1`` truncates its file at every rotation); the source fell more than
:data:`MAX_PINNED_FILES` rotations behind, or the process reached its descriptor budget
(:func:`shipper.fd_budget.pin_budget`), so files deleted before it catches up are never read;
the file that was live at the last check is gone already (see :meth:`Tailer._check_overrun`),
so files may have been rotated in and gone between two checks, never opened."""


_last_active: dict[str, float] = {}
"""Per source key, when a tailer of this process last looked at its files (wall clock): a
source that comes back (its runner ended and discovery found it again) is not new, and its
rotated files older than this were read by the previous tailer. A source whose folder is gone
when its tailer closes is forgotten (see :meth:`Tailer.close`)."""
MAX_REMEMBERED_SOURCES = 100_000
MAX_START_RETRIES = 8
"""Starts put off because a checkpointed file could not be proven gone (a folder listing or
an open failed for a moment); after that many its checkpoint is kept, uncounted, and the
source goes on (a file that is there but cannot be opened must not stall its source)."""


def _touch(key: str) -> None:
    if key not in _last_active and len(_last_active) >= MAX_REMEMBERED_SOURCES:
        for old in sorted(_last_active, key=_last_active.__getitem__)[: len(_last_active) // 2]:
            del _last_active[old]
    _last_active[key] = time.time()


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
        once: bool = False,
    ) -> None:
        self.spec = spec
        self.once = once
        """``--once``: ship what the files hold when the source starts, then end (see
        :meth:`finished`); lines written later are for the next run."""
        self._bounded = False
        """``--once``: :meth:`start` set the bound; files opened after it hold only newer
        lines and are not read (their checkpoints let the next run read them)."""
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
        self._lingering: list[Cursor] = []
        """Files renamed away whose next file has data, watched for the rest of the rotate
        wait: another writer may still append (see :meth:`_check_lingering`)."""
        self._gap_flush: Cursor | None = None
        """A file after which files were lost: its open split lines go out at the next read."""
        self._in_place_warned = False
        self.last_rotation = -FAST_ROTATION_WINDOW
        """When a rotation of this source was last seen (monotonic)."""
        self.rotation_gap = float("inf")
        """Seconds between the last two rotations seen."""
        self._opened: dict[str, None] = {}
        """Fingerprints of the files this source opened (the newest 1,024): a compressed
        rotated copy whose first line is not among them was never read."""
        self._counted: set[tuple[str, int]] = set()
        """Compressed copies already counted as lost (``rotated_unseen``)."""
        self.parser = self._parser()
        """One parser for all files of the source: a split line (Docker 16 KiB partial
        entries, CRI ``P`` parts) whose parts straddle a rotation is joined across it."""
        self._held: list[Cursor] = []
        """Released files holding the first parts of a split line not complete yet: their
        checkpoints stay at the group's start until the line is acknowledged (see
        :meth:`commit`), so a restart reads the whole group again."""
        self._start_failed = False
        """An open failed for lack of descriptors (or a file could not be proven gone) during
        :meth:`start`: it is undone and tried again after the backoff."""
        self._start_retries = 0
        self._kept: set[str] = set()
        """Checkpoints kept after :data:`MAX_START_RETRIES`: not counted as lost."""
        self._parked: tuple[int, int, int] | None = None
        """(device, inode, size) of the live file closed while idle (see :meth:`_park`)."""
        self._last_data = 0.0
        self._open_retry_at = 0.0
        self._open_backoff = 0.0
        """While opens fail for lack of descriptors (EMFILE/ENFILE): when to try again, and
        the current pause (doubling up to :data:`OPEN_RETRY_MAX_SECONDS`)."""

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
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_descriptors(path, exc)
            else:
                log.warning("cannot open log file path=%s error=%s", path, exc)
            return None
        if self._open_backoff:
            log.info("log files open again path=%s open_files=%d", path, fd_budget.open_files() + 1)
            self._open_backoff = 0.0
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
        self._opened[fp] = None
        if len(self._opened) > 1024:
            del self._opened[next(iter(self._opened))]
        return Cursor(fd, path, fp, state, self.parser)

    def _may_open(self) -> bool:
        """False while out of descriptors and the backoff has not passed."""
        return not self._open_backoff or time.monotonic() >= self._open_retry_at

    def _out_of_descriptors(self, path: Path, exc: OSError) -> None:
        """No descriptor left: back off (doubling) instead of retrying at every check, and
        log once per source until an open works again."""
        if not self._open_backoff:
            log.warning(
                "cannot open log file: the process is out of file descriptors; retrying with "
                "backoff (raise the open-files limit, e.g. LimitNOFILE=, ulimit -n) "
                "path=%s open_log_files=%d error=%s",
                path,
                fd_budget.open_files(),
                exc,
            )
        self._start_failed = True
        self._back_off()

    def _back_off(self) -> None:
        self._open_backoff = min(max(self._open_backoff * 2, 1.0), OPEN_RETRY_MAX_SECONDS)
        self._open_retry_at = time.monotonic() + self._open_backoff

    def start(self) -> None:
        """Open the rotated files a previous run had not finished, then the live file.

        Files rotated *after* the last one we know of while we were down (the runtime rotated
        twice) were never read: they are newer than it and are read too, oldest first. A
        source the registry does not know (see :meth:`_first_seen`) has its rotated files read
        too, before the live file.
        """
        self._started = True
        self._start_failed = False
        known = {k for k, s in self.registry.items() if s.source == self.spec.key}
        try:
            rotated = self._known_rotated(known) if known else self._first_seen()
            self.cursors = oldest_first(rotated)
            now = time.time()
            for mtime_ns, cur in rotated:  # renamed moments ago: its writer may still append
                age = now - mtime_ns / 1e9
                if age < ROTATE_WAIT_SECONDS:
                    cur.rotated_at = time.monotonic() - max(age, 0.0)
            # Not held back by the budget: read() found room before the start, and a live
            # file left closed would look gone to _vanished_ok. The few rotated files a start
            # opens beyond the budget come out of the reserve.
            self._open_live(within_budget=False)
            if not self._start_failed and not self._vanished_ok(known):
                self._start_failed = True
        except OSError as exc:  # listing the folder failed: nothing can be decided now
            if not self._open_backoff:  # once per episode, not at every retry
                log.warning(
                    "cannot look for rotated files, retrying with backoff path=%s error=%s",
                    self.spec.path,
                    exc,
                )
            self._start_failed = True
            self._back_off()
        if self._start_failed:
            # Files that could not be opened (or listed) would be taken as gone, and their
            # checkpoints forgotten; a new source's would look older than the ones opened.
            # Undo everything, and start again from scratch after the backoff.
            self._started = False
            for c in self.cursors:
                c.close()
            self.cursors.clear()
            self.live = None
            for k in [k for k, s in self.registry.items() if s.source == self.spec.key]:
                if k not in known:
                    self.registry.remove(k)
            return
        self._start_retries = 0
        if self.once:
            # The bound: what the live file holds now. Rotated files opened above end where
            # they are (no longer written); a rotation during the run keeps the live file's
            # bytes below the bound in the open descriptor (or the copy, for copytruncate).
            if self.live is not None:
                self.live.stop_at = self.live.size()
            self._bounded = True
        fd_budget.stop_waiting(self.spec.key)
        _touch(self.spec.key)
        for c in self.cursors:
            if c is not self.live:
                log.info("resuming rotated file path=%s offset=%d", c.path, c.read_pos)
        self._count_vanished(known)

    def _vanished_ok(self, known: set[str]) -> bool:
        """Whether every checkpointed file of this source not opened now is provably gone: no
        file in its folder with its device and inode (ENOENT is the only proof). A listing or
        ``stat`` that fails otherwise, or the file found there unopened (a listing that failed
        for a moment and came back empty), puts the start off with a backoff -- up to
        :data:`MAX_START_RETRIES` times, then the source goes on and keeps that checkpoint."""
        opened = {c.key for c in self.cursors}
        missing = [k for k in known - opened if self.registry.get(k) is not None]
        if not missing:
            return True
        present = self._present_inodes()
        doubt = [k for k in missing if present is None or self._still_there(k, present)]
        if not doubt:
            return True
        self._start_retries += 1
        if self._start_retries > MAX_START_RETRIES:
            log.warning(
                "a checkpointed file of this source is still there but could not be opened; "
                "going on without it, its checkpoint is kept source=%s files=%d",
                self.spec.key,
                len(doubt),
            )
            self._kept = set(doubt)
            return True
        log.info(
            "a checkpointed file of this source could not be found for sure; retrying "
            "source=%s files=%d",
            self.spec.key,
            len(doubt),
        )
        self._back_off()
        return False

    def _still_there(self, key: str, present: dict[tuple[int, int], Path]) -> bool:
        """Whether the file of checkpoint ``key`` may still exist: its inode is in the folder
        and not reused by a file we opened or one with another first line."""
        dev, ino, fp = key.split(":", 2)
        where = present.get((int(dev), int(ino)))
        if where is None or any((c.dev, c.ino) == (int(dev), int(ino)) for c in self.cursors):
            return False
        try:
            fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            return fingerprint(fd) == fp
        except OSError:
            return True
        finally:
            os.close(fd)

    def _present_inodes(self) -> dict[tuple[int, int], Path] | None:
        """(device, inode) -> path of every file named like this source's files, or None when
        the folder or one of them could not be looked at (anything but ENOENT)."""
        rot = rotation_path(self.spec.path)
        try:
            names = os.listdir(rot.parent)
        except OSError:
            return None
        out: dict[tuple[int, int], Path] = {}
        for name in names:
            if name != rot.name and not name.startswith(rot.name + "."):
                continue
            try:
                st = os.stat(rot.parent / name)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            out[(st.st_dev, st.st_ino)] = rot.parent / name
        return out

    def _known_rotated(self, known: set[str]) -> list[tuple[int, Cursor]]:
        """Rotated files of a source the registry knows: those not finished, and those
        rotated after the newest one we know of."""
        rotated: list[tuple[int, Cursor]] = []
        unknown: list[Path] = []
        newest_known = -1
        for sib in rotated_siblings(rotation_path(self.spec.path)):
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
        return rotated

    def _first_seen(self) -> list[tuple[int, Cursor]]:
        """Rotated files of a source the registry does not know, to read before its live file.

        A container can rotate before the shipper first sees it (a burst in its first second,
        or one started during a shipper restart or rollout): its rotated files hold its first
        lines. Those last written after the previous run's final checkpoint save are read,
        oldest first; so are all of them on the very first run (no registry yet) -- the
        container's whole current log, as its live file is read from its start too. Older
        ones were written while a previous run was watching the host, which read them (or was
        configured not to watch this source): they are skipped, counted in the log.
        Compressed rotations are never read (see :func:`shipper.discover.rotated_siblings`).
        """
        since = self.registry.saved_at
        previous = _last_active.get(self.spec.key)
        if previous is not None:
            # Seen by this process before (its runner ended, discovery found it again): the
            # previous tailer read what was written before it last looked. A margin for coarse
            # file times (a jiffy): lines read twice keep their source id and offset, and the
            # aggregator drops them.
            previous -= 0.05
            since = previous if since is None else max(since, previous)
        found: list[tuple[int, Cursor]] = []
        skipped: list[Path] = []
        for sib in rotated_siblings(rotation_path(self.spec.path)):
            try:
                st = os.stat(sib)
            except OSError:
                continue
            if since is not None and st.st_mtime < since:
                skipped.append(sib)
                continue
            cur = self._open(sib, fresh=True)
            if cur is not None:
                found.append((os.fstat(cur.fd).st_mtime_ns, cur))
        if found:
            log.info(
                "new source already rotated: reading its rotated files first source=%s files=%d",
                self.spec.key,
                len(found),
            )
        if skipped:
            log.info(
                "new source: not reading rotated files last written before the previous run's "
                "final checkpoint (read then, or not watched) source=%s skipped=%d oldest=%s",
                self.spec.key,
                len(skipped),
                min(skipped),
            )
        return found

    def _count_vanished(self, known: set[str]) -> None:
        """Checkpointed files of this source that no longer exist were rotated away and deleted
        while we were down: what was written to them after the checkpoint is lost. Count each
        (visible in metrics and logs) and forget it -- unless a compressed rotation of the
        file (``.gz``, as Docker's ``compress`` and the kubelet make) shows it ended where we
        had read to."""
        opened = {c.key for c in self.cursors} | self._kept
        vanished = [
            (key, state)
            for key in sorted(known - opened)
            if (state := self.registry.get(key)) is not None  # None: finished, forgotten
        ]
        if not vanished:
            return
        compressed = compressed_identities(self.spec.path)
        for key, state in vanished:
            self.registry.remove(key)
            fp = key.rsplit(":", 1)[-1]
            if (fp, state.offset % (1 << 32)) in compressed:
                log.info(
                    "log file was compressed after it was read to its end; nothing lost "
                    "path=%s offset=%d",
                    state.path,
                    state.offset,
                )
                continue
            log.warning(
                "log file deleted before it was read to the end (rotated away while the shipper "
                "was down, or while it was behind at its last stop); lines after offset %d are "
                "lost path=%s",
                state.offset,
                state.path,
            )
            self.on_loss("deleted_unread")

    def _open_live(self, within_budget: bool = True) -> bool:
        """Open the file now at the live path, after any files rotated since the last one we
        finished (the runtime may rotate several times between two polls)."""
        if not self._may_open():
            return False
        if within_budget and not fd_budget.room():
            fd_budget.wait_for_room(self.spec.key)
            return False
        cur = self._open(self.spec.path, fresh=True)
        if cur is None:
            return False
        fd_budget.stop_waiting(self.spec.key)
        if any(c.key == cur.key for c in self.cursors):
            cur.close()
            return False
        try:
            missed = self._missed_rotations(cur) if self._floor is not None else []
        except OSError as exc:
            # The folder could not be listed (out of descriptors): files rotated in between
            # would be skipped. Nothing is changed; the next poll tries again.
            if not self._open_backoff:
                log.warning(
                    "cannot look for rotated files, retrying with backoff path=%s error=%s",
                    cur.path,
                    exc,
                )
            cur.close()
            self._back_off()
            return False
        if self._bounded:
            for late in (*missed, cur):  # rotated in or created after the bound: next run
                late.stop_at = late.read_pos
        self.cursors.extend(missed)
        self.cursors.append(cur)
        self.live = cur
        self._last_data = time.monotonic()
        was_parked, self._parked = self._parked, None
        log.log(
            logging.DEBUG if was_parked else logging.INFO,
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
            if not self._may_open():
                return None
            if not fd_budget.room():
                fd_budget.wait_for_room(self.spec.key)
                return None
            self.start()
        if self._lingering:
            self._check_lingering()
        if not self.cursors:
            return None
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
            else:
                head.checked_pos = head.read_pos
        block = min(self.block_size, max(max_bytes, 65536))
        if block < self.max_line_bytes + 4096:  # an allowed line must fit in a block
            block = self.block_size
        chunk = self.cursors[0].read(block, max_lines)
        if chunk is not None:
            self._last_data = time.monotonic()
            if self._held:
                self._settle_held(chunk)
        elif head is self.live and len(self.cursors) == 1:
            chunk = self._flush_split(head)
        return chunk

    def _flush_at_gap(self, head: Cursor) -> Chunk | None:
        """The split lines still open at the end of ``head``, after which files were lost,
        as they are (:attr:`Cursor.gap_after`)."""
        self._gap_flush = None
        head.gap_after = False
        return self._flushed(
            head,
            logging.WARNING,
            "shipping split lines as they are: their next parts were in files rotated away unread",
        )

    def _flush_split(self, head: Cursor) -> Chunk | None:
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

    def _flushed(self, head: Cursor, level: int, why: str) -> Chunk | None:
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

    @staticmethod
    def _rewritten(cur: Cursor) -> bool:
        """Whether the file under ``cur`` is no longer the content we were reading (its first
        line changed -- or is incomplete now, which ours was not -- or it shrank below our
        position)."""
        try:
            return cur.size() < cur.read_pos or fingerprint(cur.fd) != cur.fp
        except OSError:
            return False

    def _settle_held(self, chunk: Chunk) -> None:
        """Split lines begun in released files that ``chunk`` completed: their files'
        checkpoints go once the chunk is acknowledged."""
        pending = self.parser.pending_origins()
        for held in [h for h in self._held if h not in pending]:
            self._held.remove(held)
            chunk.cursor.frees.append((chunk.resume, held))

    def pin_new_generation(self) -> None:
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
        live.rotated_at = time.monotonic()
        self._floor = os.fstat(live.fd).st_mtime_ns
        self.live = None
        if not self._open_live():
            self.live = live  # the new file is not complete yet (no first line): later

    def pin_check_seconds(self) -> float:
        """How long until the next rotation check while behind (see PIN_CHECK_FAST_SECONDS)."""
        recent = time.monotonic() - self.last_rotation < FAST_ROTATION_WINDOW
        fast = recent and self.rotation_gap < FAST_ROTATION_GAP
        return PIN_CHECK_FAST_SECONDS if fast else PIN_CHECK_SECONDS

    def _check_overrun(self, last: Cursor) -> None:
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

    def _unseen_compressed(self, rot: Path, floor: int) -> tuple[bool, list[tuple[str, int]]]:
        """(whether ``rot`` has compressed rotated copies at all, the identities of those newer
        than ``floor`` whose first line is none this source opened and that were not counted
        before). Their lines were never read: compressed files are not shipped."""
        copies = compressed_siblings(rot)
        unseen: list[tuple[str, int]] = []
        for path, _ in modified_since(copies, floor):
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

    def _pin_full(self) -> bool:
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

    def poll(self, finishing: bool = False) -> bool:
        """At the end of the current file: handle rotation, truncation, deletion.

        Returns True when something changed and reading should be tried again. With
        ``finishing`` (the source disappeared, or shutdown), files at their end are released.
        """
        if not self._started:
            return False  # start() was put off (no descriptors): read() retries it
        _touch(self.spec.key)
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
            if head.gap_after and head in self.parser.pending_origins():
                # Files after this one were lost: the parts of a split line still open here
                # would be joined to another line's parts in the next file. Shipped as they
                # are by the next read, before the file is let go.
                self._gap_flush = head
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
            head.rotated_at = time.monotonic()
            self._open_live()
            return True
        if os.fstat(head.fd).st_size < head.read_pos or fingerprint(head.fd) != head.fp:
            return self._truncated(head)
        if fd_budget.waiting_sources():
            self._park(head)
        return False

    def _split_waits(self, head: Cursor) -> bool:
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

    def _in_rotate_wait(self, cur: Cursor) -> bool:
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

    def _lingers(self, head: Cursor) -> bool:
        """Whether ``head`` (renamed away, read to its end, the file after it has data) is
        still in its rotate wait, with no split line open in it."""
        return head not in self.parser.pending_origins() and self._in_rotate_wait(head)

    def _check_lingering(self) -> None:
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

    def _rotate_wait(self, head: Cursor) -> bool:
        """Whether ``head``, renamed away and read to its end, may still get lines: for
        :data:`ROTATE_WAIT_SECONDS` after the rename, while it is on disk and the file after
        it has no data yet (a writer that has moved to the new file is done with the old)."""
        if not self._in_rotate_wait(head):
            return False
        if self.live is None:
            self._open_live()  # the new file, once it has a first line
        later = self.cursors[1] if len(self.cursors) > 1 else None
        return later is None or later.size() == 0

    def _park(self, head: Cursor) -> None:
        """Other sources wait for a descriptor: close the live file if it is idle -- read to
        its end, nothing in flight, no split line open -- keeping its checkpoint. The next
        polls ``stat`` its path and reopen it when it grew or was rotated (the rotated file
        is then found from ``_floor`` and finished from its checkpoint)."""
        if (
            len(self.cursors) != 1
            or head.outstanding
            or self._held
            or head.frees
            or time.monotonic() - self._last_data < PARK_IDLE_SECONDS
            or self.parser.pending_origins()
        ):
            return
        st = os.fstat(head.fd)
        if st.st_size != head.read_pos or head.state.offset != head.read_pos:
            return
        self._parked = (head.dev, head.ino, head.read_pos)
        self._floor = st.st_mtime_ns
        self.cursors.clear()
        self.live = None
        head.close()
        log.debug("idle log file closed for a waiting source path=%s", head.path)

    def _parked_changed(self) -> bool:
        """Whether the live file closed while idle grew, shrank or was replaced."""
        assert self._parked is not None
        dev, ino, size = self._parked
        try:
            st = os.stat(self.spec.path)
        except FileNotFoundError:
            return False  # renamed and not recreated yet, or the container is gone
        except OSError:
            return True  # let the open find out
        return (st.st_dev, st.st_ino) != (dev, ino) or st.st_size != size

    def _missed_rotations(self, live: Cursor) -> list[Cursor]:
        """Rotated files newer than the last one we finished that we never opened, oldest
        first: they were live for a moment between two polls."""
        found: list[tuple[int, Cursor]] = []
        siblings = rotated_siblings(rotation_path(self.spec.path))
        for sib, st in modified_since(siblings, self._floor or 0):
            if st.st_ino == live.ino:
                continue
            if any(c.ino == st.st_ino for c in self.cursors):
                continue
            cur = self._open(sib, fresh=True, exclude=self._released)
            if cur is not None:
                log.debug("found a missed rotation path=%s ino=%d", sib, cur.ino)
                found.append((st.st_mtime_ns, cur))
        return oldest_first(found)

    def _truncated(self, head: Cursor) -> bool:
        """copytruncate: finish the copy from our position, restart the live file at 0.

        Returns False when it could not look (out of descriptors): nothing changed, and the
        live file must not be read on.

        Copies made *after* ours (logrotate ran again before we looked) hold lines we never
        read: the copy's mtime becomes the floor of the missed-rotation search, which then
        reads them from their start, oldest first, before the live file.

        A copy smaller than our position means the truncation came between our last check and
        a read: the bytes past the copy's end were the new content's. The copy is then read
        again from the last position known to be ours, under a new id (the old id's offsets
        up to our position are taken at the aggregator); a few lines may arrive twice, none
        is lost.
        """
        copy = None
        read_all = False  # a copy exists and holds nothing past our position
        epoch = head.state.epoch + 1
        try:
            siblings = rotated_siblings(rotation_path(self.spec.path))
        except OSError as exc:
            # The copy may be among them: nothing is changed yet, the next check tries again.
            self._out_of_descriptors(self.spec.path, exc)
            return False
        for sib in siblings:
            try:
                fd = os.open(sib, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # The copy may be this one: deciding without it would lose its lines.
                    # Nothing is changed yet; the next read or poll tries again.
                    self._out_of_descriptors(sib, exc)
                    return False
                continue
            try:
                st = os.fstat(fd)
                ours = fingerprint(fd) == head.fp
            except OSError:
                os.close(fd)
                continue
            if ours and head.checked_pos <= st.st_size < head.read_pos:
                log.warning(
                    "log file truncated while being read: bytes after offset %d were read from "
                    "the new content; reading its copy again from offset %d under a new id "
                    "(some lines may arrive twice) path=%s copy=%s",
                    st.st_size,
                    head.checked_pos,
                    head.path,
                    sib,
                )
                state = FileState(
                    self.spec.key,
                    str(sib),
                    self._source_id(head.ino, head.fp, epoch),
                    head.checked_pos,
                    0,
                    epoch,
                )
                epoch += 1
                self.registry.put(file_key(st.st_dev, st.st_ino, head.fp), state)
                copy = Cursor(fd, sib, head.fp, state, self.parser)
                copy.stop_at = head.stop_at  # same bytes at the same offsets as head's
                self._floor = st.st_mtime_ns
                break
            if ours and st.st_size > head.read_pos:
                # Its checkpoint starts where head's is (what is acknowledged), reading goes
                # on from where head's is: batches of head in flight are acked in order
                # before the copy's first, so a crash before that reads them again.
                state = FileState(
                    self.spec.key,
                    str(sib),
                    head.source_id,
                    head.state.offset,
                    head.state.acked,
                    head.state.epoch,
                    cuts=[list(c) for c in head.state.cuts],  # same bytes, same cuts
                )
                self.registry.put(file_key(st.st_dev, st.st_ino, head.fp), state)
                copy = Cursor(fd, sib, head.fp, state, self.parser)
                copy.read_pos = copy.checked_pos = head.read_pos
                copy.cuts = list(head.cuts)
                copy.acked_floor = max(head.acked_floor, state.acked)
                copy.stop_at = head.stop_at
                self._floor = st.st_mtime_ns
                break
            if ours and not read_all:
                read_all = True
                self._floor = st.st_mtime_ns
                self._released.append((st.st_dev, st.st_ino, head.fp))  # read: not "missed"
            os.close(fd)
        if copy is None and not read_all:
            read_all, unread = compressed_copy(self.spec.path, head.fp, head.read_pos)
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
        return True

    def _release(self, cur: Cursor) -> None:
        log.debug("released path=%s ino=%d read=%d", cur.path, cur.ino, cur.read_pos)
        if cur in self.cursors:
            self.cursors.remove(cur)
        self._released.append((cur.dev, cur.ino, cur.fp))
        cur.close()
        if cur in self.parser.pending_origins() and not cur.superseded:
            # The first parts of a split line whose last part is in the next file: keep the
            # checkpoint at the group's start until the line is acknowledged.
            cur.held = True
            if cur not in self._held:
                self._held.append(cur)
            return
        if cur.outstanding == 0 and cur is not self.live and not cur.superseded and not cur.held:
            self.registry.remove(cur.key)

    # -- acknowledgement -------------------------------------------------------------------

    def commit(self, cur: Cursor, resume: int, acked: int) -> None:
        """A batch of ``cur`` was acknowledged: advance its checkpoint."""
        cur.outstanding -= 1
        if cur.frees:
            self._free_held(cur, resume)
        if cur.superseded:
            return
        if cur.closed and cur.outstanding == 0 and cur is not self.live and not cur.held:
            self.registry.remove(cur.key)
            return
        st = cur.state
        st.offset = resume
        if st.cuts:
            st.cuts = [c for c in st.cuts if c[0] > resume]
        st.acked = max(st.acked, acked)
        st.path = str(cur.path)
        self.registry.put(cur.key, st)

    def _free_held(self, cur: Cursor, resume: int) -> None:
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

    def behind(self) -> list[tuple[str, int]]:
        """Bytes written but not acknowledged yet, per open file."""
        return [(str(c.path), max(c.size() - c.state.offset, 0)) for c in self.cursors]

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

    def settled(self) -> Cursor | None:
        """The live file, when it is all this source has open, is read to its end (the caller
        knows) and nothing here is driven by time: no split line waiting for
        :data:`SPLIT_FLUSH_SECONDS`, no renamed file in its :data:`ROTATE_WAIT_SECONDS`, no
        held or gap-flushed file, not parked, no open backoff. Only then may the source sleep
        until the file changes (an inotify event) instead of polling; else None."""
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

    def close(self) -> None:
        fd_budget.stop_waiting(self.spec.key)
        if self._started:
            if os.path.isdir(self.spec.path.parent):
                _touch(self.spec.key)
            else:
                # Its folder is gone: a removed container or pod, whose key never comes back
                # (ids are unique). Remembering it would keep an entry per container the host
                # ever ran (up to MAX_REMEMBERED_SOURCES). A --path folder deleted and made
                # again holds new files, which a first sighting reads as it should.
                _last_active.pop(self.spec.key, None)
        for c in (*self.cursors, *self._lingering):
            c.close()
        self.cursors.clear()
        self._lingering.clear()
        self._held.clear()
        self.live = None
