"""Opening a source's files: at their checkpoint, within the process's descriptor budget.

A file's identity and resume point come from the checkpoint registry (see
:mod:`shipper.checkpoint`), its identity from its first line (see :mod:`shipper.fingerprint`);
the resume point is checked against the bytes read before it (see
:meth:`shipper.resume.Resume._verified`).
The live file is opened after any files rotated since the last one finished (the runtime may
rotate several times between two polls). Out of descriptors, opens back off (doubling up to
:data:`OPEN_RETRY_MAX_SECONDS`), and while sources wait for a descriptor an idle live file is
closed (parked) and reopened when it changes (see :mod:`shipper.fd_budget`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Container
from pathlib import Path
from typing import TYPE_CHECKING

from shipper import fd_budget
from shipper.birth import Identity, birth_time
from shipper.checkpoint import FileState, file_key
from shipper.cursor import Cursor
from shipper.discover import fix_hint, rotated_siblings, skip_not_regular
from shipper.fingerprint import fingerprint, tail_hash
from shipper.idle_sweep import stamp
from shipper.regular import NotRegularFile, open_regular
from shipper.rotated import modified_since, oldest_first, rotation_path

if TYPE_CHECKING:
    from shipper.tailer import Tailer

log = logging.getLogger("logq.shipper.tailer")

PARK_IDLE_SECONDS = 2.0
"""While sources wait for a descriptor, a source whose live file had nothing new for this long
(read to its end, all acknowledged) closes it and reopens it when it grows or is rotated: with
more sources than descriptors, every source still makes progress, in turns."""
OPEN_RETRY_MAX_SECONDS = 30.0
"""Longest pause between attempts to open a file while the process is out of descriptors."""


def source_id(host: str, ino: int, fp: str, epoch: int, birth: int | None) -> str:
    """The ``source_id`` of a file first seen: ``host:inode:fingerprint@birth``, ``+epoch``
    after a truncation in place. The birth time (see :mod:`shipper.birth`) tells a file from a
    later one on its inode with the same first line, which the aggregator took for resends of
    the old one. Without one (NFS, an old kernel) it is ``host:inode:fingerprint`` as before.
    Registry entries keep the id they were given (an upgrade resends nothing, duplicates
    nothing)."""
    sid = f"{host}:{ino:x}:{fp}"
    if birth is not None:
        sid = f"{sid}@{birth:x}"
    return f"{sid}+{epoch}" if epoch else sid


def another_life(sid: str, st: os.stat_result, birth: int | None) -> bool:
    """Whether ``sid``, a checkpoint's id, names the inode of ``st`` born at another time: it
    was given to a file deleted since, whose inode the file ``st`` got. Its checkpoint is not
    this file's, whatever their first lines and bytes. A copy's checkpoint (copytruncate,
    :meth:`~shipper.resume.Resume._adopt_copy`) carries the id of the file it copies, another
    inode: not compared; nor are ids without a birth time (an older shipper's)."""
    parts = sid.rsplit(":", 2)
    born = born_in(sid)
    if birth is None or len(parts) != 3 or born is None:
        return False
    return parts[1] == f"{st.st_ino:x}" and born != f"{birth:x}"


def born_in(sid: str) -> str | None:
    """The birth time a :func:`source_id` carries (hex, as written), None when it has none."""
    last = sid.rsplit(":", 1)[-1]
    return last.partition("@")[2].partition("+")[0] if "@" in last else None


class Opening:
    """Part of :class:`~shipper.tailer.Tailer`: opening its files, backing off, parking."""

    def _source_id(self: Tailer, ino: int, fp: str, epoch: int, birth: int | None) -> str:
        return source_id(self.host, ino, fp, epoch, birth)

    def _open(
        self: Tailer, path: Path, fresh: bool, exclude: Container[Identity] = ()
    ) -> Cursor | None:
        """Open ``path`` at its checkpoint (or at 0 when ``fresh`` and unknown), else None.

        Files whose (device, inode, fingerprint, birth time) is in ``exclude`` are not opened:
        a new file on the inode of one let go, with the same first line, is.
        """
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:  # a FIFO's open() waited for a writer: the whole shipper
            skip_not_regular("log file", os.fspath(path), exc.mode)
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_descriptors(path, exc)
            elif os.fspath(path) not in self.unreadable:  # said once, not at every look
                why = f"cannot read log file {path}: {exc.strerror or exc}; {fix_hint(exc)}"
                self.unreadable[os.fspath(path)] = why
                log.warning(
                    "cannot open log file, its lines are not shipped: %s path=%s error=%s",
                    fix_hint(exc),
                    path,
                    exc,
                )
            return None
        if self.unreadable:
            self.unreadable.pop(os.fspath(path), None)
        if self._open_backoff:
            log.info("log files open again path=%s open_files=%d", path, fd_budget.open_files() + 1)
            self._open_backoff = 0.0
        try:
            fp = fingerprint(fd)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if fp is None:
            os.close(fd)
            return None
        birth = birth_time(fd)
        identity = (st.st_dev, st.st_ino, fp, birth)
        if identity in exclude:
            os.close(fd)
            return None
        key = file_key(st.st_dev, st.st_ino, fp)
        state = self.registry.get(key)
        if state is None and self._finished_before(fd, path, st, key, identity):
            os.close(fd)
            self._opened[fp] = None
            return None
        if state is None:
            if not fresh:
                os.close(fd)
                return None
            # New content on an inode truncated in place: it takes over the entry left for it.
            # Never at an epoch below one used on the inode: its id could be an earlier
            # content's (same first line), whose lines the aggregator has.
            restarted = self.registry.take_restarted(
                st.st_dev, st.st_ino, self.spec.key, fp, self._rereadable_keys()
            )
            epoch = self.registry.next_epoch(st.st_dev, st.st_ino)
            if restarted is not None:
                epoch = max(epoch, restarted.epoch)
            sid = self._source_id(st.st_ino, fp, epoch, birth)
            state = FileState(self.spec.key, str(path), sid, 0, 0, epoch)
            self.registry.put(key, state)
        else:
            if path == self.spec.path:
                # At the live path again (the kubelet renames a file back when the runtime
                # could not reopen its log): its writer may write on.
                state.rotated = False
                # Such an entry as an older shipper left it:
                self.registry.take_restarted(
                    st.st_dev, st.st_ino, self.spec.key, fp, self._rereadable_keys()
                )
            if state.offset or state.acked or another_life(state.source_id, st, birth):
                state = self._verified(fd, path, st, fp, state, birth)
        log.debug("opened path=%s ino=%d offset=%d", path, st.st_ino, state.offset)
        self._opened[fp] = None
        if len(self._opened) > 1024:
            del self._opened[next(iter(self._opened))]
        return Cursor(fd, path, fp, state, self.parser, birth)

    def _rereadable_keys(self: Tailer) -> set[str]:
        """The registry keys of the files a restart may read again: held for an open split
        line or ``--multiline`` record (open, held, or gone but for a compressed copy, see
        :mod:`shipper.held_gz`), and, while one is held (with ``--multiline`` always), the
        files let go since, with batches in flight or checkpoints kept back behind it. Their
        entries are not a truncated file's to take over (see
        :meth:`~shipper.checkpoint.Registry.take_restarted`): a held file's entry at offset 0
        with nothing acknowledged looks like one, and once the runtime deleted the file (the
        gzip of Docker ``compress``) its inode is free for the next file. Taken, the entry was
        gone at a restart, and the held parts with it: lost, and not even counted (H1s20,
        with the option off; the option had it fixed)."""
        keys = {c.key for c in self._holding} | self._adopted
        if self.multiline is not None or self._holding:
            # Let go with batches in flight (deleted by the gzip at once): a kill before their
            # acks reads it again from its compressed copy (see shipper.held_gz).
            keys |= {file_key(dev, ino, fp) for dev, ino, fp, _ in self._released}
        return keys | {o.key for o in self.parser.pending_origins() if isinstance(o, Cursor)}

    def _finished_before(
        self: Tailer, fd: int, path: Path, st: os.stat_result, key: str, identity: Identity
    ) -> bool:
        """Whether file ``key`` was finished and forgotten moments ago (see
        :meth:`shipper.checkpoint.Registry.finish`) and still holds what was read then (not
        shorter, the same bytes before where it ended). Such a file is passed over, as a file
        this process let go is (:attr:`Tailer._released`): read again, its lines went out
        twice -- the first part of a split line shipped cut joined to a later part -- and
        what a writer that never reopened appended after its rotate wait came out of order."""
        state = self.registry.finished(key)
        if state is None or st.st_size < state.offset:
            return False
        if another_life(state.source_id, st, identity[3]):
            return False  # a new file on the inode of the one finished (see shipper.birth)
        try:
            if state.tail and tail_hash(fd, state.offset) != state.tail:
                return False
        except OSError:
            return False
        self._passed_over.add(identity)
        log.debug("passing over a file finished moments ago path=%s", path)
        return True

    def _may_open(self: Tailer) -> bool:
        """False while out of descriptors and the backoff has not passed."""
        return not self._open_backoff or time.monotonic() >= self._open_retry_at

    def _out_of_descriptors(self: Tailer, path: Path, exc: OSError) -> None:
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

    def _back_off(self: Tailer) -> None:
        self._open_backoff = min(max(self._open_backoff * 2, 1.0), OPEN_RETRY_MAX_SECONDS)
        self._open_retry_at = time.monotonic() + self._open_backoff

    def _open_live(self: Tailer, within_budget: bool = True) -> bool:
        """Open the file now at the live path, after any files rotated since the last one we
        finished (the runtime may rotate several times between two polls)."""
        if not self._may_open():
            return False
        if within_budget and not fd_budget.room():
            fd_budget.wait_for_room(self.spec.key)
            return False
        cur = self._open(self.spec.path, fresh=True)
        if cur is None:
            return self._missed_without_live()
        fd_budget.stop_waiting(self.spec.key)
        if any(c.key == cur.key for c in self.cursors):
            cur.close()
            return False
        self._searched = None
        missed = self._look_for_missed(cur) if self._floor is not None else []
        if missed is None:
            cur.close()
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

    def _missed_without_live(self: Tailer) -> bool:
        """With a live file that cannot be opened yet (empty, or no complete first line),
        still follow the files rotated in and away since :attr:`_floor`: the runtime may
        rotate twice between two looks and the newest file stay empty (a quiet container
        after a burst; the kubelet creates it empty), and they were read only once it got a
        line (R1). Searched only when the live path names another file than at the last such
        search (a rotation changes it), so an empty live file costs one ``stat`` per look, not
        a folder listing. Whether files were found."""
        if self._floor is None:
            return False
        try:
            st = os.stat(self.spec.path)
        except OSError:
            # Renamed away and not created again yet: the writer may still append to the
            # renamed file, which is read once the new file is there (as a followed live
            # file is kept until then, see poll).
            return False
        now = (st.st_dev, st.st_ino)
        if now == self._searched:
            return False
        missed = self._look_for_missed(None)
        if missed is None:
            return False
        self._searched = now
        if self._bounded:
            for late in missed:
                late.stop_at = late.read_pos
        self.cursors.extend(missed)
        if missed:
            log.info(
                "following rotated files while the live file is empty path=%s source=%s "
                "missed_rotations=%d",
                self.spec.path,
                self.spec.key,
                len(missed),
            )
        return bool(missed)

    def _look_for_missed(self: Tailer, live: Cursor | None) -> list[Cursor] | None:
        """:meth:`_missed_rotations`, and the compressed copies newer than :attr:`_floor`
        that were never read counted as lost (see
        :meth:`~shipper.pinning.Pinning._count_unseen`); None when the folder could not be
        listed (out of descriptors: files rotated in between would be skipped; nothing is
        changed, and the next look tries again)."""
        try:
            missed = self._missed_rotations(live)
        except OSError as exc:
            if not self._open_backoff:
                log.warning(
                    "cannot look for rotated files, retrying with backoff path=%s error=%s",
                    self.spec.path,
                    exc,
                )
            self._back_off()
            return None
        with contextlib.suppress(OSError):  # only a count: the next rotation looks again
            self._count_unseen(self._floor or 0, self.cursors[-1] if self.cursors else None)
        return missed

    def _missed_rotations(self: Tailer, live: Cursor | None) -> list[Cursor]:
        """Rotated files newer than the last one we finished that we never opened, oldest
        first: they were live for a moment between two polls.

        Files set aside in their rotate wait (:attr:`_lingering`) are open too: one that its
        writer still appends to is newer than the file whose rotation was just seen. Opened a
        second time, its lines not acknowledged yet were read twice, and the second cursor,
        released at its end, dropped the file's checkpoint while the first still followed it.
        """
        found: list[tuple[int, Cursor]] = []
        siblings = rotated_siblings(rotation_path(self.spec.path))
        followed = {(c.dev, c.ino) for c in (*self.cursors, *self._lingering)}
        if live is not None:
            followed.add((live.dev, live.ino))
        left = {*self._released, *self._passed_over}
        for sib, st in modified_since(siblings, self._floor or 0):
            if (st.st_dev, st.st_ino) in followed:
                continue
            cur = self._open(sib, fresh=True, exclude=left)
            if cur is not None:
                log.debug("found a missed rotation path=%s ino=%d", sib, cur.ino)
                found.append((st.st_mtime_ns, cur))
        return oldest_first(found)

    def _park(self: Tailer, head: Cursor) -> None:
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
        self._parked = (head.dev, head.ino, stamp(st))
        self._floor = st.st_mtime_ns
        self.cursors.clear()
        self.live = None
        head.close()
        log.debug("idle log file closed for a waiting source path=%s", head.path)

    def _parked_changed(self: Tailer) -> bool:
        """Whether the live file closed while idle grew, shrank, was written (its times: a
        copytruncate written again to the same size left its inode and size as they were,
        and the new lines unread until the size next changed) or was replaced. Its last
        write is :data:`PARK_IDLE_SECONDS` older than its closing: coarse times move too."""
        assert self._parked is not None
        dev, ino, seen = self._parked
        try:
            st = os.stat(self.spec.path)
        except FileNotFoundError:
            return False  # renamed and not recreated yet, or the container is gone
        except OSError:
            return True  # let the open find out
        return (st.st_dev, st.st_ino) != (dev, ino) or stamp(st) != seen
