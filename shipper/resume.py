"""Starting a source: what a previous run (or an earlier tailer of this process) left.

A source the registry knows has the rotated files it had not finished read first, then those
rotated after the newest one it knows of. A source first seen with rotated files already next to
its live file (it rotated before the first scan, or during a shipper restart) has those read
first; see :meth:`Resume._first_seen`. Checkpointed files that are provably gone are counted as
lost (see :data:`shipper.losses.LOSS_REASONS`). A file opened at its checkpoint must still hold
the bytes read before it, else it was replaced and is read from its start (see
:meth:`Resume._verified`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shipper import fd_budget, gz_pool, rotate_wait
from shipper.birth import Identity, birth_time
from shipper.checkpoint import MAX_FLOOR_LEAD, FileState, file_key
from shipper.cursor import Cursor
from shipper.discover import compressed_siblings, generation_name, rotated_siblings
from shipper.fingerprint import fingerprint, gzip_identity, tail_hash
from shipper.held_gz import (
    HeldCopies,
    HeldPlan,
    held_by_compressed,
    prepare_held,
    verified,
)
from shipper.opening import another_life, born_in
from shipper.pinning import gz_at
from shipper.regular import open_regular
from shipper.rotated import age, compressed_identities, oldest_first, rotation_path

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")

MAX_START_RETRIES = 8
"""Starts put off because a checkpointed file could not be proven gone (a folder listing or
an open failed for a moment); after that many its checkpoint is kept, uncounted, and the
source goes on (a file that is there but cannot be opened must not stall its source)."""


def _latest_write(st: os.stat_result) -> float:
    """When the file was last written at the latest (seconds): its modification time, or the
    end of that second when the time is a whole second -- a coarse file system's (1 s), which
    drops the fraction. Compared with the previous run's last save (exact), a file written just
    after it looked older, and a source first seen skipped it unread (R1). A fine time is
    taken as it is: a file finished and forgotten just before the save is not read again (its
    lines would go out again, and the first part of a split line shipped cut would be joined
    to a later part and stored twice)."""
    return _end_of_second(st.st_mtime_ns)


def _end_of_second(ns: int) -> float:
    """A file time ``ns`` in seconds, a whole second (a coarse file system's) taken as its end
    (see :func:`_latest_write`)."""
    return (ns + (1_000_000_000 if ns % 1_000_000_000 == 0 else 0)) / 1e9


def _may_grow(st: os.stat_result) -> bool:
    """Whether a rotated file read to its end was written less than
    :data:`~shipper.rotate_wait.ROTATE_WAIT_SECONDS` ago: its writer may not have reopened yet
    (the kubelet's runtime writes on to ``0.log.<time>`` until it does) and append more. Let
    go at the start, what it got next was never read, nor counted (R1); kept, it has its
    rotate wait as any file renamed while we run."""
    return time.time() - _latest_write(st) < rotate_wait.ROTATE_WAIT_SECONDS


def _inode_stays(key: str, state: FileState) -> tuple[bool, bool]:
    """Whether ``state.path`` is still on the inode of checkpoint ``key``, though not with its
    content (the entry vanished), and whether that is the very file, its birth time the one in
    its ``source_id`` (truncated in place while the shipper was down, not deleted and another
    created on the freed inode). Without a birth time on both sides the second is False."""
    dev, ino, _ = key.split(":", 2)
    try:
        fd = open_regular(state.path)
    except OSError:
        return False, False
    try:
        st = os.fstat(fd)
        birth = birth_time(fd)
    except OSError:
        return False, False
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) != (int(dev), int(ino)):
        return False, False
    return True, birth is not None and born_in(state.source_id) == f"{birth:x}"


def _unchanged_since(state: FileState) -> bool:
    """Whether the file at ``state.path`` was neither modified nor changed (its status: the
    change time) after ``state`` was saved (whole-second times count as the end of their
    second, see :func:`_latest_write`).

    A truncation the running shipper handled leaves an entry at offset 0, nothing acknowledged
    (see :mod:`shipper.copytruncate`); a file not written since at the next start held
    nothing to lose (a first line it holds, complete or not, is still there to read), and
    counting it ``truncated_in_place`` raised a ticket at every such restart (A3s18). Lines
    written after the entry, or read and not acknowledged, were removed by a truncation that
    moved the file times past it: those still count. The change time too, as a tool can set
    the modification time back (``touch -r``, ``rsync -t``: the loss was hidden, R2s19) but
    not the change time, which every write and every ``utime`` sets to now; only a wall
    clock stepped back while the shipper was down can still hide one.

    First the file's size and modification time, when the entry keeps those it had as the
    truncation was handled (:attr:`FileState.left_at`): both the same to the nanosecond, it
    was not written since, and a change of its status alone while the shipper was down
    (chmod or chown by configuration management, setfacl, xattrs, ``restorecon``, a backup's
    hard link) moved only the change time: counted, it raised the A3s18 ticket again (B3s19).
    A write and a truncation while down and the time set back (R2s19) leave another
    modification time, unless set back to that very nanosecond. Whole-second times (a coarse
    file system's) cannot tell a write in the same second: the file times decide there, as
    for entries without it (saved by an older shipper, or when the ``fstat`` failed)."""
    try:
        st = os.stat(state.path)
    except OSError:
        return False
    left = state.left_at
    if left is not None and st.st_mtime_ns % 1_000_000_000 and left == [st.st_size, st.st_mtime_ns]:
        return True
    return max(_latest_write(st), _end_of_second(st.st_ctime_ns)) < state.updated


def _name_order(path: Path) -> tuple[int, str]:
    """Where ``path`` sorts among its rotated siblings by name alone, oldest first (see
    :func:`~shipper.rotated.age`)."""
    _, number, name = age(0, path)
    return number, name


class Resume:
    """Part of :class:`~shipper.tailer.Tailer`: its start, resuming from the checkpoints."""

    def start(self: Tailer) -> None:
        """Open the rotated files a previous run had not finished, then the live file.

        Files rotated *after* the last one we know of while we were down (the runtime rotated
        twice) were never read: they are newer than it and are read too, oldest first. A
        source the registry does not know (see :meth:`_first_seen`) has its rotated files read
        too, before the live file.
        """
        try:
            self._start()
        finally:
            self.drop_prepared()  # what the start did not take (or another start will ask again)

    def _start(self: Tailer) -> None:
        self._started = True
        self._start_failed = False
        known = {k for k, s in self.registry.items() if s.source == self.spec.key}
        try:
            rotated = self._known_rotated(known) if known else self._first_seen()
            held_gz = self._held_compressed(known, rotated) if known else []
            rotated += self._rotated_after_held(held_gz, rotated)
            self.cursors = held_gz + oldest_first(rotated)
            self._pass_over()
            now = time.time()
            for mtime_ns, cur in rotated:
                self._flag_rotated(cur)
                # Renamed moments ago: its writer may still append.
                age = now - mtime_ns / 1e9
                if age < rotate_wait.ROTATE_WAIT_SECONDS:
                    cur.rotated_at = time.monotonic() - max(age, 0.0)
            # Not held back by the budget: read() found room before the start, and a live
            # file left closed would look gone to _vanished_ok. The few rotated files a start
            # opens beyond the budget come out of the reserve.
            self._open_live(within_budget=False)
            if self.live is None and not self._start_failed:
                self._floor = self._floor_at_start()
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
            self._floor = None  # taken again, with what is passed over, by the next start
            self._passed_over.clear()
            self._gz_at_start.clear()
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
        # Every file of the source here now is open, or was passed over by the rules above:
        # one last written before now is not a file this run never opened (see _first_seen).
        self.registry.note_followed(self.spec.key, time.time())
        self.registry.forget_finished(self.spec.key)
        for c in self.cursors:
            if c is not self.live:
                log.info("resuming rotated file path=%s offset=%d", c.path, c.read_pos)
        self._count_vanished(known)

    async def prepare_off_loop(self: Tailer) -> None:
        """Before :meth:`start`: the compressed copies it may read a held file again from
        (:meth:`_held_compressed`), decompressed in a ``.gz`` worker thread
        (:mod:`shipper.gz_pool`), so that the event loop keeps sending, acknowledging and
        answering meanwhile: on the loop a 100 MiB copy held it for about 0.6 s at every such
        restart (more on a busy host), every source waiting (``bench/unread_scan.py``).

        Asked of every checkpoint of the source whose file is not found in its folder (by
        inode and first line, :meth:`_still_there`; which are gone for sure is known only
        once :meth:`start` opens the others): a plain file's generations that share a first
        line (a banner) match every checkpoint of it, and each restart decompressed them all.
        The answers are kept with the identity of the copy each was read from
        (:class:`~shipper.held_gz.HeldCopies`): :meth:`start` uses one only for that very
        file, unchanged; a copy replaced, renamed over or written since is read again there,
        as without this. What it does not take is closed, and so is
        everything when the start is put off after all (:meth:`drop_prepared`): the copies'
        descriptors are not in the budget, so they are held only from here to the start."""
        if self._started or self._held_ready is not None:
            return  # started, or asked already for the next start
        if not self._may_open() or not fd_budget.room():
            # The start is put off (out of descriptors, see :meth:`Tailer.read`): decompressed
            # copies kept for it would hold descriptors outside the budget, and temp space,
            # while it waits -- a restart of thousands of waiting sources ran out of both.
            return
        self._held_ready = HeldCopies()  # nothing to take (yet): not asked again meanwhile
        known = [(k, s) for k, s in self.registry.items() if s.source == self.spec.key]
        gone = self._not_found(known)
        if gone is not None:  # None: cannot tell, every one is asked
            known = gone
        held = held_by_compressed(self.spec.path, known) if known else []
        if not held:
            return
        copies = {gz for _, _, candidates in held for gz in candidates}
        plan = HeldPlan(tuple(sorted(copies)))
        asked = self._held_ready
        ready = await gz_pool.run(prepare_held, plan, HeldCopies.close, self.gz_stop)
        if self._held_ready is not asked:
            ready.close()  # started (or closed) meanwhile: its answers are not for this start
            return
        self._held_ready = ready

    def drop_prepared(self: Tailer) -> None:
        """Close what :meth:`prepare_off_loop` left for a start that did not happen (put off
        for lack of descriptors, or a stop): the next start asks again."""
        ready, self._held_ready = self._held_ready, None
        if ready is not None:
            ready.close()

    def _prepared(self: Tailer) -> HeldCopies:
        """The answers :meth:`prepare_off_loop` left for this start (none: read here)."""
        if self._held_ready is None:
            self._held_ready = HeldCopies()
        return self._held_ready

    def _pass_over(self: Tailer) -> None:
        """Remember the rotated files this start found and did not open -- finished by a
        previous run and forgotten, or older than a first sighting reads (:meth:`_first_seen`)
        -- by identity (:attr:`Tailer._passed_over`), and the compressed copies there now
        (:attr:`Tailer._gz_at_start`).

        The search for missed rotations (:meth:`~shipper.opening.Opening._missed_rotations`)
        takes every rotated file modified at its floor or later. With the floor taken at the
        start (:meth:`_floor_at_start`: the newest file time then), or with file times that
        tie (1 s clocks: a rename and the new file's first write in one tick), that is also a
        file the start deliberately left: it was opened again from 0 and its lines sent again;
        the first part of a split line that had been shipped cut was joined to the next file's
        part and stored twice (R1). Their fingerprints join :attr:`Tailer._opened`, so that
        their compressed copies, made later, are not taken for files never read either."""
        followed = {(c.dev, c.ino) for c in self.cursors}
        rot = rotation_path(self.spec.path)
        for sib in rotated_siblings(rot):
            try:
                fd = open_regular(sib)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._out_of_descriptors(sib, exc)  # the start is undone and tried again
                    return
                continue  # unreadable: not opened by the search either (it logs why)
            try:
                st = os.fstat(fd)
                fp = None if (st.st_dev, st.st_ino) in followed else fingerprint(fd)
                birth = birth_time(fd)
            except OSError:
                fp = None
            finally:
                os.close(fd)
            if fp is not None:
                self._passed_over.add((st.st_dev, st.st_ino, fp, birth))
                self._opened[fp] = None
        for gz in compressed_siblings(rot):
            try:
                st = os.stat(gz)
            except OSError:
                continue
            self._gz_at_start.add(gz_at(st))

    def _floor_at_start(self: Tailer) -> int:
        """Where to look for missed rotations (:attr:`Tailer._floor`) when the live file
        could not be opened at the start: it was empty or had no complete first line yet (a
        container that has not written, a file the runtime has just rotated in), or was not
        there. Its lines come later, and the runtime may rotate it away before the next look
        -- a burst, or while the source reads a backlog of rotated files after a restart.
        Without a floor nothing looks for it then: the next file is opened, and this one was
        never read, nor counted as lost.

        The newest modification time of the live file and its rotated copies now: files
        rotated away later hold lines written after this, and those already here were opened
        by :meth:`start` or passed over (:meth:`_pass_over`), told apart by identity."""
        stamps = [0]
        for path in (self.spec.path, *rotated_siblings(rotation_path(self.spec.path))):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:  # gone, or not to be looked at: a lower floor only looks wider
                continue
        return max(stamps)

    def _verified(
        self: Tailer,
        fd: int,
        path: Path,
        st: os.stat_result,
        fp: str,
        state: FileState,
        birth: int | None,
    ) -> FileState:
        """``state``, the checkpoint of the file just opened as ``fd``, if the file still holds
        the content it was taken in; else a new one reading the file from its start.

        The key (device, inode, first line) matches a file deleted and created again (the
        inode reused) or truncated in place and written again (copytruncate), both while the
        shipper was down, when the new content starts with the same line (a fixed banner).
        Then the checkpoint's offset falls past the end or into the new content: resumed there,
        the lines before it would never be read, and even read from 0 under the old
        ``source_id`` the aggregator would drop them as resends. So the new content is read
        from its start under a new epoch -- what :mod:`shipper.copytruncate` does when it sees
        the truncation -- and counted as ``truncated_in_place``: the old content's lines
        written after the checkpoint, if any, were lost while the shipper was down.

        Its :attr:`FileState.acked` must be within the file too: records read again at or
        below it are not sent, so one past the end (a corrupt entry, or the file truncated
        while the shipper was down with the checkpoint held back before the truncation point)
        dropped every line written up to there, without a word. Only records flushed as they
        are (split lines, ``--multiline`` records) are numbered past the bytes read, by at
        most :data:`~shipper.checkpoint.MAX_FLOOR_LEAD`.

        One ``pread`` per file opened at a position; entries without a :attr:`FileState.tail`
        (an older shipper's) are only checked against the size, as before. A checkpoint whose
        id names this inode with another birth time (:func:`~shipper.opening.another_life`)
        was a deleted file's, even at 0 or with the same bytes before it (a header-only file).
        """
        if another_life(state.source_id, st, birth):
            why = (
                "the file was replaced (deleted, and another created on its inode) while the "
                "shipper was down"
            )
        elif state.offset > st.st_size:
            why = "checkpoint is past the end of the file: truncated while the shipper was down"
        elif state.acked > st.st_size + MAX_FLOOR_LEAD:
            # Lines re-read or written later at offsets up to ``acked`` would be dropped as
            # acknowledged: every line of the file's next ``acked - size`` bytes, unseen.
            why = (
                "checkpoint's acknowledged offset is past the end of the file: truncated while "
                "the shipper was down"
            )
        else:
            if not state.tail:
                return state
            try:
                if tail_hash(fd, state.offset) == state.tail:
                    return state
            except OSError:
                return state  # cannot tell: as before the check existed
            why = (
                "the bytes before the checkpoint are not the ones read there: the file was "
                "replaced (deleted and created again, or truncated and written again) while the "
                "shipper was down or had it closed"
            )
        epoch = self.registry.next_epoch(st.st_dev, st.st_ino)  # past this one's and any other
        sid = self._source_id(st.st_ino, fp, epoch, birth)
        fresh = FileState(self.spec.key, str(path), sid, 0, 0, epoch)
        self.registry.put(file_key(st.st_dev, st.st_ino, fp), fresh)
        if any(
            s.source_id == state.source_id and s.path != str(path) for _, s in self.registry.items()
        ):  # a copy kept by copytruncate goes on from the checkpoint (_adopt_copy): no loss
            log.info(
                "%s; a copy of it goes on from its checkpoint, and it is read from its start "
                "as new content under a new id path=%s",
                why,
                path,
            )
            return fresh
        # (A corrupt offset looks the same; the warning makes the possible duplicates visible.)
        log.warning(
            "%s; reading it from its start as new content under a new id (lines the old "
            "content got after the checkpoint, if any, are lost) path=%s offset=%d acked=%d "
            "size=%d registry=%s",
            why,
            path,
            state.offset,
            state.acked,
            st.st_size,
            self.registry.path,
        )
        self.on_loss("truncated_in_place")
        return fresh

    def _vanished_ok(self: Tailer, known: set[str]) -> bool:
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

    def _still_there(self: Tailer, key: str, present: dict[tuple[int, int], Path]) -> bool:
        """Whether the file of checkpoint ``key`` may still exist: its inode is in the folder
        and not reused by a file we opened or one with another first line."""
        dev, ino, fp = key.split(":", 2)
        where = present.get((int(dev), int(ino)))
        if where is None or any((c.dev, c.ino) == (int(dev), int(ino)) for c in self.cursors):
            return False
        try:
            fd = open_regular(where)
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

    def _present_inodes(self: Tailer) -> dict[tuple[int, int], Path] | None:
        """(device, inode) -> path of every file named like this source's files (its live file
        and its generations' names, :func:`~shipper.discover.generation_name`: logrotate's
        dateext and ``extension`` ones too, else one still in its folder was looked for in the
        ``.gz`` copies), or None when the folder or one of them could not be looked at
        (anything but ENOENT)."""
        rot = rotation_path(self.spec.path)
        try:
            names = os.listdir(rot.parent)
        except OSError:
            return None
        out: dict[tuple[int, int], Path] = {}
        for name in names:
            if name != rot.name and not generation_name(rot.name, name):
                continue
            try:
                st = os.stat(rot.parent / name)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            out[(st.st_dev, st.st_ino)] = rot.parent / name
        return out

    def _known_rotated(self: Tailer, known: set[str]) -> list[tuple[int, Cursor]]:
        """Rotated files of a source the registry knows: those not finished, and those
        rotated after the newest one we know of.

        "After" by :func:`~shipper.rotated.age`: of files with the same modification time
        (1 s clocks), the name tells the order. By time alone, an older file finished and
        forgotten by a previous run was taken for a newer one and read again from 0 (R1)."""
        rotated: list[tuple[int, Cursor]] = []
        unknown: list[Path] = []
        newest_known: tuple[int, int, str] = (-1, 0, "")
        for sib in rotated_siblings(rotation_path(self.spec.path)):
            cur = self._open(sib, fresh=False)
            if cur is None:
                unknown.append(sib)
                continue
            st = os.fstat(cur.fd)
            newest_known = max(newest_known, age(st.st_mtime_ns, sib))
            if cur.read_pos < st.st_size or _may_grow(st):
                rotated.append((st.st_mtime_ns, cur))
            else:  # finished before the restart: forget it
                # Forgotten, and passed over (see _pass_over).
                self.registry.finish(cur.key, cur.read_pos, cur.tail(cur.read_pos))
                cur.close()
        if newest_known[0] < 0:
            # The files we knew are gone (deleted by max-file): whatever was written after
            # our last checkpoint (at that time too, whatever its name) is newer than it.
            stamps = [st.updated for k in known if (st := self.registry.get(k)) is not None]
            newest_known = (int(max(stamps) * 1e9), -(1 << 62), "")
        for sib in unknown:
            if self._adopt_copy(sib, known):
                cur = self._open(sib, fresh=False)
                if cur is not None:
                    rotated.append((os.fstat(cur.fd).st_mtime_ns, cur))
                continue
            try:
                newer = age(os.stat(sib).st_mtime_ns, sib) > newest_known
            except OSError:
                continue
            cur = self._open(sib, fresh=True) if newer else None
            if cur is not None:
                rotated.append((os.fstat(cur.fd).st_mtime_ns, cur))
        return rotated

    def _held_compressed(
        self: Tailer, known: set[str], rotated: list[tuple[int, Cursor]]
    ) -> list[Cursor]:
        """Files a checkpoint holds that are gone but for their gzip-compressed copy (Docker
        ``compress``, the kubelet, logrotate ``compress``), opened from that copy at the
        checkpoint (see :mod:`shipper.held_gz`), oldest first. They are read before every
        rotated file still uncompressed: both runtimes compress the older ones (Docker all,
        the kubelet all but the newest), and a ``.gz``'s modification time is when it was
        compressed, not written.

        Whatever held the checkpoint back: a ``--multiline`` record still open, the start of
        a line the runtime split, or lines not read or not acknowledged at the stop (the
        shipper was behind, or stopped for a DaemonSet or ECS agent update while the runtime
        rotated and compressed the file). Only those were read again from the copy before;
        the unread rest of any other file was counted ``deleted_unread`` (a page), lost with
        a copy of it right there."""
        opened = {c.key for _, c in rotated}
        vanished = self._not_found(
            [
                (key, state)
                for key in sorted(known - opened)
                if (state := self.registry.get(key)) is not None
            ]
        )
        if not vanished:
            return []  # none, or cannot tell (then the start is put off: _vanished_ok)
        held = held_by_compressed(self.spec.path, vanished)
        copies: list[tuple[str, FileState, int, Path]] = []
        taken: set[Path] = set()
        for key, state, candidates in held:
            got = self._open_compressed(state, [c for c in candidates if c not in taken])
            if got is not None:
                taken.add(got[1])
                copies.append((key, state, *got))
        found = [self._resume_copy(key, state, fd, gz) for key, state, fd, gz in copies]
        self._note_unknown_after(found, known)
        # By the name it had uncompressed: Docker's .2 before its .1, kubelet's by time.
        return sorted(found, key=lambda c: age(0, c.path.with_suffix("")))

    def _not_found(
        self: Tailer, entries: list[tuple[str, FileState]]
    ) -> list[tuple[str, FileState]] | None:
        """Those of ``entries`` (checkpoints of this source) whose file is not in its folder
        (:meth:`_still_there`), None when the folder cannot be looked at. The live file's
        checkpoint is among those a start has not opened yet: a plain file's older generation
        that starts with the same banner, compressed, holds the same bytes before a
        checkpoint just past the banner, and was taken for it -- read from there under the
        live file's ``source_id``, while the live file went on with it too."""
        present = self._present_inodes()
        if present is None:
            return None
        return [(k, s) for k, s in entries if not self._still_there(k, present)]

    def _note_unknown_after(self: Tailer, held: list[Cursor], known: set[str]) -> None:
        """Give each file read again from its compressed copy (``held``) the compressed copies
        rotated after it (by name) whose first line no checkpoint of the source (``known``)
        has, up to the next copy that is read again or known: :attr:`Cursor.unseen_after`.
        A line still open at its end has its next entry in one of them if that copy holds
        its stream's lines: never read, the line is cut there, not joined to the live file's
        next line (see :meth:`~shipper.split_lines.SplitLines._next_parts_unseen`). Copies
        past the next one read hold that file's lines' continuations, not this one's. Only
        listed and read at their first bytes here; streamed only if a line is open at the
        held file's end."""
        if not held:
            return
        try:
            copies = compressed_siblings(rotation_path(self.spec.path))
        except OSError:
            return
        order = sorted(
            (_name_order(gz.with_suffix("")), gz, unknown)
            for gz in copies
            if (unknown := self._unknown_copy(gz, held, known)) is not None
        )
        for cur in held:
            after = _name_order(cur.path.with_suffix(""))
            run: list[Path] = []
            for name, gz, unknown in order:
                if name <= after:
                    continue
                if not unknown:
                    break  # read again, or read before: the line's next part is from there on
                run.append(gz)
            cur.unseen_after = run

    def _unknown_copy(self: Tailer, gz: Path, held: list[Cursor], known: set[str]) -> bool | None:
        """Whether the compressed copy ``gz`` is of a file no checkpoint of the source
        (``known``) has and not one read again (``held``); None when its first line cannot be
        read (being written, damaged): left out, as the search for missed rotations does."""
        if any(c.path == gz for c in held):
            return False
        ident = gzip_identity(gz)
        if ident is None or ident[0] is None:
            return None
        return all(key.rsplit(":", 1)[-1] != ident[0] for key in known)

    def _rotated_after_held(
        self: Tailer, held: list[Cursor], rotated: list[tuple[int, Cursor]]
    ) -> list[tuple[int, Cursor]]:
        """The uncompressed rotated files this start left unopened that were rotated after a
        file read again from its compressed copy (``held``, see :meth:`_held_compressed`), by
        name (the kubelet's ``0.log.<time>``, Docker's lower ``.N``): opened from 0.

        With every file it knew gone, :meth:`_known_rotated` reads the unknown ones written
        after its newest checkpoint, by time -- but that is the time of the held file's last
        acknowledgement, and a file rotated in after it and never opened (the live path was
        not created again yet, or the shipper stopped first) can have been written before
        it, or in the same second on a coarse file system: it was passed over, never read
        nor counted, and the held line's last part in it lost (H1s20, the extended tailer
        model's ``cri_slow_reopen``). Rotated after the held file, it is newer than anything
        this start resumes; a file of it already read and forgotten is passed over by
        :meth:`~shipper.opening.Opening._open` as before."""
        if not held:
            return []
        newest = max(_name_order(c.path.with_suffix("")) for c in held)
        followed = {(c.dev, c.ino) for _, c in rotated}
        found: list[tuple[int, Cursor]] = []
        for sib in rotated_siblings(rotation_path(self.spec.path)):
            if _name_order(sib) <= newest:
                continue
            try:
                st = os.stat(sib)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in followed:
                continue
            cur = self._open(sib, fresh=True)
            if cur is not None:
                found.append((os.fstat(cur.fd).st_mtime_ns, cur))
        return found

    def _resume_copy(self: Tailer, key: str, state: FileState, fd: int, gz: Path) -> Cursor:
        """A cursor of the decompressed copy ``fd`` of ``gz``, at checkpoint ``key``'s
        ``state``, which it takes over."""
        fp = key.rsplit(":", 1)[-1]
        cur = Cursor(fd, gz, fp, state, self.parser, None)
        cur.final = True  # no more writes: its last line is complete as it is
        cur.decompressed = True
        # Under the copy's key from now on (a kill before its first ack finds it again);
        # the old key is left for _count_vanished, which sees the copy going on from it.
        self.registry.put(cur.key, state)
        self._adopted.add(key)
        log.info(
            "resuming a rotated file from its compressed copy at its checkpoint: its lines "
            "from there on are read from the copy, nothing lost path=%s offset=%d",
            gz,
            state.offset,
        )
        return cur

    def _open_compressed(
        self: Tailer, state: FileState, candidates: list[Path]
    ) -> tuple[int, Path] | None:
        """A descriptor of the one of ``candidates`` decompressed that holds the bytes the
        checkpoint ``state`` checked before its offset, and its path; None if none does, or
        if several do. Generations of a plain file that start with the same banner and the
        same lines up to the offset cannot be told apart: reading whichever the folder
        listed first shipped another generation's lines under the held file's ``source_id``
        and lost its open record uncounted (R5s19 #4); left alone, the loss is counted."""
        found: list[tuple[int, Path]] = []
        ready = self._prepared()
        for gz in candidates:
            fd = ready.decompressed(gz)
            if fd is None:
                continue
            if verified(fd, state):
                found.append((fd, gz))
            else:
                os.close(fd)
        if len(found) == 1:
            return found[0]
        for fd, _ in found:
            os.close(fd)
        if found:
            log.warning(
                "several compressed copies match a rotated file a checkpoint holds, and which "
                "one it was cannot be told: none is read, its lines from the checkpoint on are "
                "lost (counted); give each generation a distinct first line (a timestamp) "
                "path=%s copies=%s",
                state.path,
                ",".join(str(gz) for _, gz in found),
            )
        return None

    def _adopt_copy(self: Tailer, sib: Path, known: set[str]) -> bool:
        """Whether the rotated file ``sib``, unknown to the registry, is a copy of a file it
        knows (logrotate's ``copytruncate`` while the shipper was down, the copy kept): the
        same first line, and the bytes before that file's checkpoint are the copy's too (its
        :attr:`~shipper.checkpoint.FileState.tail`). If so, the copy gets that checkpoint and
        source id, as a copytruncate seen while running does, so it resumes where the original
        was acknowledged rather than being read whole under a new id (every line stored
        twice). An entry without a ``tail`` (an older shipper's) adopts nothing.

        Only the checkpoint of the file copytruncate rewrites in place counts: the live path's
        inode, which no longer holds what was read there (:meth:`_replaced_live`). Any other
        entry may match a different file by chance -- a plain file with a fixed banner and
        repeated lines, renamed by logrotate ``create`` -- and adopting it would read that file
        from the middle under another file's id, its lines dropped as resends (R3)."""
        try:
            fd = open_regular(sib)
        except OSError:
            return False
        try:
            fp = fingerprint(fd)
            st = os.fstat(fd)
            for key in sorted(known):
                state = self.registry.get(key)
                if fp is None or state is None or not state.tail or key.split(":", 2)[2] != fp:
                    continue
                if not self._replaced_live(key, state):
                    continue
                if tail_hash(fd, state.offset) != state.tail:
                    continue
                copy = FileState(
                    self.spec.key,
                    str(sib),
                    state.source_id,
                    state.offset,
                    state.acked,
                    state.epoch,
                    cuts=[list(c) for c in state.cuts],
                    tail=state.tail,
                    acked_to=state.acked_to,
                    floor=state.floor,
                )
                self.registry.put(file_key(st.st_dev, st.st_ino, fp), copy)
                log.info(
                    "resuming a copy of a file truncated while the shipper was down at its "
                    "checkpoint path=%s offset=%d",
                    sib,
                    state.offset,
                )
                return True
        except OSError:
            return False
        finally:
            os.close(fd)
        return False

    def _replaced_live(self: Tailer, key: str, state: FileState) -> bool:
        """Whether checkpoint ``key`` is of the file now at the live path (same device and
        inode) and that file no longer holds what was read there: another first line, shorter
        than the checkpoint, or other bytes before it."""
        dev, ino, fp = key.split(":", 2)
        try:
            fd = open_regular(self.spec.path)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (int(dev), int(ino)):
                return False
            if fingerprint(fd) != fp or st.st_size < state.offset:
                return True
            return tail_hash(fd, state.offset) != state.tail
        except OSError:
            return False
        finally:
            os.close(fd)

    def _first_seen(self: Tailer) -> list[tuple[int, Cursor]]:
        """Rotated files of a source the registry does not know, to read before its live file.

        A container can rotate before the shipper first follows it (a burst in its first
        second, one started during a shipper restart or rollout, one found after the last
        discovery pass of a run that stopped, or one waiting for a file descriptor): its
        rotated files hold its first lines. Which are read (:meth:`_read_rotated_since`):

        * a source no run followed (the registry's ``followed`` part does not name it): all of
          them, oldest first -- the container's whole current log, as its live file is read
          from its start too (Vector's ``read_from = beginning`` for a file without a
          checkpoint). So on the very first run, and for a source excluded until now;
        * a source a run followed and forgot (its files read to their end and acknowledged:
          the container stopped, now it is back -- after a restart, or in this process: its
          runner ended, an exclusion was lifted, and discovery found it again): those last
          written after a tailer last had all its files in hand
          (:meth:`~shipper.checkpoint.Registry.note_followed`); older ones were read then, and
          are skipped, said in an INFO line with their count and that time. Not after a tailer
          last *looked* at them: one that ended right after its container wrote and rotated,
          or that never had a file open, did not read what was written since it last had
          them all in hand.

        A registry an older shipper saved has no ``followed`` part: files last written after
        its final save are read, older ones skipped, with a WARNING (a source that run never
        followed loses them).

        Compressed rotated files (``.gz``: Docker ``compress``, the kubelet's older ones,
        logrotate ``compress``) are not read, as for a source with checkpoints, where a
        compressed file is read only from a checkpoint held in it (:meth:`_held_compressed`):

        * no bound keeps them from being read twice: a ``.gz``'s modification time is when it
          was compressed (the kubelet compresses a file at its next rotation), not when its
          lines were written, so the time above cannot tell a copy of a file a run read and
          forgot -- read again from the copy (another inode: another ``source_id``), the
          aggregator could not drop its lines, stored twice;
        * a source no run followed has no bound at all: at a first start, a host's years of
          logrotate ``compress`` history (``rotate 52``, ``weekly``) would be shipped, each
          file decompressed whole into ``TMPDIR`` first (Fluent Bit's tail does not read them
          either: only the files its ``Path`` matches).

        So lines a new container wrote before the shipper first followed it that are only in
        a compressed file (rotated twice by then, or at once with Docker ``compress``) are
        not shipped: an INFO says how many such files there are
        (:meth:`_note_compressed_unread`).
        """
        since, followed = self._read_rotated_since()
        found: list[tuple[int, Cursor]] = []
        skipped: list[Path] = []
        for sib in rotated_siblings(rotation_path(self.spec.path)):
            try:
                st = os.stat(sib)
            except OSError:
                continue
            if since is not None and _latest_write(st) < since:
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
        self._note_compressed_unread(since)
        if skipped:
            assert since is not None
            log.log(
                logging.INFO if followed else logging.WARNING,
                "new source: not reading rotated files last written before %s "
                "source=%s skipped=%d oldest=%s since=%s",
                "a run last had all its files in hand (read then)"
                if followed
                else "the previous run's final checkpoint save (a shipper before this version "
                "kept no record of the sources it followed: if that run never followed this "
                "source, their lines are not shipped)",
                self.spec.key,
                len(skipped),
                min(skipped),
                datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        return found

    def _note_compressed_unread(self: Tailer, since: float | None) -> None:
        """Say (INFO) how many compressed rotated files of a source without checkpoints are
        left unread that may hold lines no run read: those last written at ``since`` or later
        (all when None; see :meth:`_first_seen` for why none is read). Before, nothing told
        an operator that a new container's first lines were only in such a file."""
        try:
            copies = compressed_siblings(rotation_path(self.spec.path))
        except OSError:
            return  # the uncompressed ones were listed just now: the next start says it
        unread = 0
        for gz in copies:
            try:
                st = os.stat(gz)
            except OSError:
                continue
            if since is None or _latest_write(st) >= since:
                unread += 1
        if unread:
            log.info(
                "new source already rotated: its compressed rotated files are not read (a "
                "compressed file is read only from a checkpoint held in it); lines that are "
                "only there are not shipped source=%s compressed=%d",
                self.spec.key,
                unread,
            )

    def _read_rotated_since(self: Tailer) -> tuple[float | None, bool]:
        """(the time before which a first sighting skips rotated files, None: read them all;
        whether that time is when a run last had all this source's files in hand rather than
        an older shipper's final save). See :meth:`_first_seen`."""
        last = self.registry.followed_at(self.spec.key)
        if last is not None:
            # A run -- this one (the source's runner ended and discovery found it again) or
            # an earlier one -- had all its files in hand then: those last written before
            # were read. A margin for coarse file times (a jiffy): lines read twice keep their
            # source id and offset, and the aggregator drops them.
            return last - 0.05, True
        if self.registry.followed_before is None:
            # First run (saved_at None: all), or an older shipper's registry
            return self.registry.saved_at, False
        return None, True  # no run followed it: all of them

    def _read_to_end_until(self: Tailer) -> float | None:
        """At the end of a tailer whose files were all drained and let go (its source gone:
        its file renamed away, or deleted, and not made again): what to note as followed (see
        :meth:`~shipper.checkpoint.Registry.note_followed`; None: nothing), the time before
        which every file
        of the source still here that a later first sighting would read was read by this
        tailer -- now when all were; else the last write of the oldest it did not read.

        The last full look (a poll that found the live file at its path) is older than the
        lines the source wrote in its last moments, before its file was renamed away: found
        again in this process or after a restart, that file was read again whole, every line
        of it sent twice. A file this tailer never opened (one the runtime made as the runner
        ended, then rotated) still holds lines no run read: the time stays before it.

        Only for a tailer :meth:`~shipper.tailer.Tailer.drained` (else its checkpoints say
        what was read). It lists the folder and opens files: part of
        :meth:`~shipper.tailer.Tailer.look_at_close` (off the event loop); only reads the
        tailer's state, the runner's tasks over."""
        last = self.registry.followed_at(self.spec.key)
        since = None if last is None else last - 0.05
        read = {*self._released, *self._passed_over}
        until = time.time()  # before the look: a file made after it is written after it
        # The live path first: a file renamed from it while the folder is listed is then
        # seen under one of the two names.
        unread = [self._unread_since(self.spec.path, since, read)]
        try:
            siblings = rotated_siblings(rotation_path(self.spec.path))
        except OSError:
            return None  # cannot tell which files are here: nothing noted
        unread += [self._unread_since(path, since, read) for path in siblings]
        if any(t is not None and t < 0 for t in unread):
            return None  # a file that cannot be opened: nothing noted
        return min([until, *(t for t in unread if t is not None)])

    def _note_read_to_end(self: Tailer, until: float | None) -> None:
        """Note ``until`` (:meth:`_read_to_end_until`, None: nothing) as when the source was
        last followed, unless a later time is noted already."""
        last = self.registry.followed_at(self.spec.key)
        if until is not None and (last is None or until > last):
            self.registry.note_followed(self.spec.key, until)

    def _unread_since(
        self: Tailer, path: Path, since: float | None, read: set[Identity]
    ) -> float | None:
        """The last write of the file at ``path`` (seconds) if a first sighting would read it
        and it is not one of ``read`` -- or it is, but was written past where this tailer let
        it go (a writer that never reopened after a rename); None if it was read, or is not
        there. -1 when it cannot be told (it cannot be opened): then nothing is noted."""
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        except OSError:
            return -1.0
        try:
            st = os.fstat(fd)
            if since is not None and _latest_write(st) < since:
                return None  # a first sighting skips it anyway
            fp = fingerprint(fd)
            identity = None if fp is None else (st.st_dev, st.st_ino, fp, birth_time(fd))
        except OSError:
            return -1.0
        finally:
            os.close(fd)
        if identity in read and st.st_size <= self._released_ends.get(identity, st.st_size):
            return None  # read to its end: not written past where it was let go
        return st.st_mtime_ns / 1e9

    def _count_vanished(self: Tailer, known: set[str]) -> None:
        """Checkpointed files of this source that no longer exist were rotated away and deleted
        while we were down: what was written to them after the checkpoint is lost. Count each
        (visible in metrics and logs) and forget it -- unless a compressed rotation of the
        file (``.gz``, as Docker's ``compress`` and the kubelet make) shows it ended where we
        had read to, or the source was excluded until now (:attr:`Tailer.kept_out`): lines
        kept out on purpose are not lost, and a page for them would be a false alarm."""
        opened = {c.key for c in self.cursors} | self._kept
        vanished = [
            (key, state)
            for key in sorted(known - opened)
            if (state := self.registry.get(key)) is not None  # None: finished, forgotten
        ]
        if not vanished:
            return
        compressed = compressed_identities(self.spec.path)
        taken = {c.state.source_id for c in self.cursors}
        for key, state in vanished:
            stays, truncated = _inode_stays(key, state)
            if stays:  # new content on its inode must not reuse its id
                self.registry.keep_epoch(key)
            self.registry.remove(key)
            if state.source_id in taken:  # a copy of it goes on from here (_adopt_copy)
                continue
            fp = key.rsplit(":", 1)[-1]
            end = max(state.offset, state.acked_to)  # acknowledged to, also when kept back
            if (fp, end % (1 << 32)) in compressed:
                log.info(
                    "log file was compressed after it was read to its end; nothing lost "
                    "path=%s offset=%d",
                    state.path,
                    end,
                )
                continue
            if self.kept_out:
                # Not a loss: operations.md pages on deleted_unread.
                log.info(
                    "log file deleted while its source was excluded: its lines after offset %d "
                    "were kept out on purpose, not lost path=%s",
                    end,
                    state.path,
                )
                continue
            if truncated and end == 0 and _unchanged_since(state):
                log.info(
                    "log file not written since a truncation the shipper handled before its "
                    "stop; nothing lost path=%s",
                    state.path,
                )
                continue
            if truncated:
                self._truncated_while_down(state, end)
                continue
            if state.shipped:
                log.info(
                    "log file deleted after every line of it was stored in an acknowledged "
                    "multi-line record; nothing lost path=%s",
                    state.path,
                )
                continue
            # Renamed away before the stop and read to its size then -- unless a compressed
            # copy of it (its first bytes) with another size than ``end`` (that one was taken
            # above) shows it got lines after the stop, and could not be read from (it cannot
            # be decompressed, or not told from another generation): lost for sure, a page.
            grew = state.rotated and any(f == fp for f, _ in compressed)
            if state.rotated and state.seen is not None and state.seen <= end and not grew:
                self._rotated_then_deleted(state, end)
                continue
            why = "rotated away while the shipper was down, or while it was behind at its last stop"
            if state.grouped:  # not behind: held for a record open at the stop (R1s19 #1)
                why += ", or kept for a multi-line record open at that stop and deleted, with "
                why += "no compressed copy, since"
            if grew:
                why += "; its compressed copy is not the size read to: written after the stop"
            log.warning(
                "log file deleted before it was read to the end (%s); lines after offset %d are "
                "lost path=%s",
                why,
                end,
                state.path,
            )
            self.on_loss("deleted_unread")

    def _rotated_then_deleted(self: Tailer, state: FileState, end: int) -> None:
        """The file of checkpoint ``state`` had been renamed away by a rotation when the
        shipper stopped (often in its rotate wait: a stop within 5 s of a rotation), was read
        to ``end``, as far as its size at the stop (:attr:`FileState.seen`), and was deleted
        while the shipper was down (``max-file``). Counted ``deleted_unread`` it paged while
        every line of it was stored.

        A Docker json-file source lost nothing: dockerd writes nothing to a file once it
        rotated it. Another writer may have appended to the renamed file after the stop -- a
        program that had not reopened its log yet (logrotate's ``create`` mode), a runtime
        between the kubelet's rename and its reopen -- so those lines, if any, are lost: a
        possible loss (``rotated_then_deleted``, a ticket, not a page)."""
        if self.spec.key.startswith("docker:"):
            log.info(
                "rotated log file deleted while the shipper was down, read to its end before "
                "the stop (offset %d, its size at the stop); nothing lost path=%s",
                end,
                state.path,
            )
            return
        log.warning(
            "rotated log file deleted while the shipper was down; it had been read to its size "
            "at the stop (offset %d), but lines its writer appended to it after the stop, if "
            "any (one that had not reopened its log yet), are lost path=%s",
            end,
            state.path,
        )
        self.on_loss("rotated_then_deleted")

    def _truncated_while_down(self: Tailer, state: FileState, end: int) -> None:
        """The file of checkpoint ``state`` is still there, without the content read (truncated
        in place while the shipper was down, with no copy to finish from): lines written after
        ``end`` and before the truncation, if any, are lost -- a possible loss, as
        :meth:`_verified` counts it. Counted ``deleted_unread`` it paged for a file that was not
        deleted, often with nothing lost."""
        log.warning(
            "log file truncated in place while the shipper was down, with no copy to finish "
            "from; lines written after offset %d and before the truncation, if any, are lost "
            "path=%s",
            end,
            state.path,
        )
        self.on_loss("truncated_in_place")
