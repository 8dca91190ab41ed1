"""The durable buffer: append-only segment files, fsync'd before any ack (a write-ahead log).

Layout of ``--buffer-dir``::

    lock                    flock'd by the running aggregator (one instance per directory)
    node-id                 random id of this instance, prefix of every object key it writes
    last-seq                highest segment number ever opened (numbers are never reused)
    offsets.json            highest (source_id -> offset) committed to the warehouse (dedup.py)
    offsets.journal         the marks each flush raised since offsets.json was written
    chunks.journal          chunk keys of the segments flushed in the last minutes (chunks.py)
    0000000000000007.seg    segments, in order; the highest is the one being appended to
    0000000000000007.acked  rarely: the bytes of segment 7 that were acknowledged, when a
                            failed fsync left unacknowledged frames after them that could not
                            be cut off (see "A failed fsync" below)
    spill/                  parsed rows of the segment being flushed (spill.py), scratch space
    flushing/               object keys of the segment being flushed (flusher.py)
    quarantine/             segments set aside after a data error: a buffer dir of its own
                            (node id ``<node-id>-quarantine``), written out with ``drain``

Those files are checked to be regular files before any is read (a FIFO's ``open()`` waited for
a writer for ever, hanging the start): aggregator/state_files.py.

A segment is a sequence of frames ``[u32 length][u32 crc32][payload]``; the payload is the decoded
events of one Forward message (a row count and an Arrow IPC stream, see ``decode.to_ipc``, or
for a message of few rows msgpack columns, see ``small_frames``; a message with a ``chunk``
also carries its chunk key, see ``chunks.frame_payload``). A
crash can leave a torn frame at the end of the last segment: replay stops at a last frame whose
length or checksum is wrong, which can only be a frame that was never acknowledged (acks go out
after the fsync that covers it). A damaged frame inside a segment is skipped, with an ERROR, and
the frames after it are kept (see :func:`read_frames`).

Group commit: many connections append, one ``fsync`` covers every frame written before it
started, and each append returns once its frame is covered.

A big frame (:data:`WORKER_WRITE_BYTES`: a big message's, see aggregator/big_messages.py) is
checksummed and written in a worker thread: on the event loop its ``crc32`` and ``write`` took
~50 to 90 ms for 38 to 64 MiB, every other connection waiting. The frames appended meanwhile
wait in memory behind it and are written, in order, once it is; the segment's file is neither
swapped (a seal, a failed fsync) nor cut while such a write runs (:meth:`Buffer._worker_idle`).
The group-commit fsync runs beside it: it covers the frames written before it started only.

A failed fsync (an I/O error, a full thin volume) fails the appends it should have covered, and
those written since: their clients resend them (Fluent Bit, Fluentd: same chunk id, no source
offset the flusher could drop the copy by). So none of those frames may be flushed from this
segment, or every resent line would be stored twice. The segment is cut back to the end of
its last good fsync (``ftruncate`` + ``fsync``) and sealed there; the next append goes to a
new segment, never after bytes whose durability is unknown. If the cut itself fails, the good
length is kept with the segment (:attr:`Segment.end`) and written beside it (``<seq>.acked``)
so that the flusher, a restart's replay and its chunk ids all stop there. (A crash before
the cut or the marker is durable replays those frames, as it replays any frame written but not
yet acknowledged at a crash: their chunk ids are restored with them, so a resend after the
restart is recognised, see chunks.py.)

A failed write (a full volume, an I/O error) can leave part of its frame in the file. It is
cut off (``ftruncate`` to the end of the last whole frame); frames appended after a partial
one would be lost (a reader skips a damaged frame by scanning for the next good one, which can
start inside the frames after it). If even that cut fails, the segment is set aside for the
group-commit task, which seals it like a failed fsync's (``fsync``, then cut or
``<seq>.acked``, at the end of its last whole frame), and the next append goes to a new
segment.

A segment is sealed (closed and handed to the flusher) on every flush interval or when it
reaches ``segment_bytes``; it is deleted only once its Parquet objects are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aggregator.chunks import JOURNAL_NAME, FlushedChunks, frame_chunks
from aggregator.durable import fsync_dir, write_atomic
from aggregator.flag_values import NODE_ID
from aggregator.frames import HEADER, Scan, encode_frame, frame_header, scan_frames
from aggregator.state_files import (
    ACKED_SUFFIX,
    LAST_SEQ_NAME,
    LOCK_NAME,
    NODE_ID_NAME,
    SEGMENT_RE,
    SEGMENT_SUFFIX,
    NotRegularStateFile,
    check_lock_file,
    check_state_files,
    segment_name,
)
from shipper.errors import unusable_dir_message

log = logging.getLogger("logq.aggregator.buffer")

#: Sub-folder of the buffer dir the flusher parks a segment's parsed rows in (spill.py).
SPILL_DIR = "spill"
#: Sub-folder for segments whose flush fails with a data error (see Buffer.quarantine).
QUARANTINE_DIR = "quarantine"
#: Payload bytes from which a frame is checksummed and written in a worker thread (see the
#: module docstring): ~1 ms of the loop's at 1 MiB, more than a thread hand-off costs; the
#: frames of logq-shipper's and Fluent Bit's messages are smaller and stay on the loop.
WORKER_WRITE_BYTES = 1024 * 1024

#: A frame waiting for the big one written in the worker: its payload, chunk key and future.
_Queued = tuple[bytes, bytes | None, asyncio.Future[None]]


@dataclass(frozen=True)
class Segment:
    """A sealed segment: its sequence number (monotonic per buffer dir) and file."""

    seq: int
    path: Path
    end: int | None = None
    """Where its acknowledged frames end, when unacknowledged ones follow them (a failed fsync
    whose frames could not be cut off); None: the whole file. Readers stop there."""

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:  # gone (flushed) or unreadable: counts as nothing buffered
            return 0


def read_frames(path: Path, end: int | None = None) -> Iterator[bytes]:
    """Payloads of a segment, skipping a damaged frame inside it and stopping at a torn tail
    (or at ``end``: :attr:`Segment.end`).

    A frame whose checksum fails but which is followed by a valid frame was written, fsync'd
    and acknowledged before the frames after it: the disk damaged it. It is skipped with an
    ERROR (its records are lost) and the frames after it are kept. A bad frame at the end is the
    torn write of a crash, never acknowledged: replay stops there with a warning.

    Streamed frame by frame: a flush holds one slice of a segment in memory, never the file.
    """

    def damaged(pos: int, length: int) -> None:
        log.error(
            "buffer segment %s: the frame at offset %d (%d bytes) fails its checksum "
            "though frames follow it: disk damage; its records are lost, the rest of "
            "the segment is kept (check the disk)",
            path.name,
            pos,
            length,
        )

    size = _readable(path, end)
    scan = Scan()
    with open(path, "rb") as fh:
        yield from scan_frames(fh, size, scan, damaged)
    if scan.end < size:
        log.warning(
            "buffer segment %s: ignoring %d bytes of a torn or corrupt frame at offset %d "
            "(the end of the segment: a write cut by a crash, never acknowledged)",
            path.name,
            size - scan.end,
            scan.end,
        )


def _quiet_frames(path: Path, end: int | None) -> Iterator[bytes]:
    """The good payloads of a segment, like :func:`read_frames` but leaving the reports of
    damage to the flush that reads it next."""
    size = _readable(path, end)
    with open(path, "rb") as fh:
        yield from scan_frames(fh, size, Scan(), lambda pos, length: None)


def _readable(path: Path, end: int | None) -> int:
    """Bytes of a segment file to read: all of them, or those up to ``end``."""
    size = path.stat().st_size
    return size if end is None else min(size, end)


def end_marker(path: Path) -> Path:
    """The file that holds :attr:`Segment.end` of the segment at ``path`` (see module doc)."""
    return path.with_suffix(ACKED_SUFFIX)


def _load_end(path: Path) -> int | None:
    """The recorded end of a segment's acknowledged frames, or None (the whole file)."""
    try:
        text = end_marker(path).read_bytes().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():  # bytes: ASCII digits only (a corrupt 0xff said only "'ascii' codec")
        raise OSError(
            f"{end_marker(path)} does not hold a byte count; restore it or, if the segment's "
            "frames after the last acknowledged one may be stored twice, delete it"
        )
    return int(text)


#: errno -> why the buffer dir cannot be used and what to do, for the one-line start error. An
#: unwritable directory is the usual first-deployment mistake: a host path created by Docker or
#: the kubelet is root's, and the image runs as an unprivileged user.
_UNUSABLE_DIR = {
    errno.EACCES: (
        "is not writable by this process",
        "give it to that user (chown -R {uid}:{gid} {dir}) or fix the deployment's volume setup "
        "(fsGroup on Kubernetes, a chown before start on ECS: deploy/README.md)",
    ),
    errno.EROFS: ("is on a read-only file system", "mount a writable volume there"),
    errno.ENOTDIR: ("is not a directory", "a file is in the way: point it at a directory"),
    errno.EEXIST: ("is not a directory", "a file is in the way: point it at a directory"),
}
_UNUSABLE_DIR[errno.EPERM] = _UNUSABLE_DIR[errno.EACCES]


#: What an error of another cause says, when one of any cause is made a line of its own.
_OTHER_CAUSE = ("cannot be used", "check the path and its volume")


def unusable_dir_error(
    directory: Path, exc: OSError, flag: str = "--buffer-dir", any_cause: bool = False
) -> OSError:
    """``exc`` (raised while opening ``directory``, the folder of ``flag``) as one line that
    names the flag, the directory, the uid/gid this process runs as and what to do. Errors of
    other causes are returned unchanged, unless ``any_cause``: where the directory is created
    (a bare ``[Errno 2] No such file or directory: '/proc/b'`` named no flag)."""
    known = exc.errno in _UNUSABLE_DIR and not (
        exc.errno == errno.EEXIST and exc.filename != str(directory)  # only mkdir's "a file"
    )
    if not (known or any_cause):
        return exc
    what, todo = _UNUSABLE_DIR[exc.errno or 0] if known else _OTHER_CAUSE
    error = type(exc)(unusable_dir_message(flag, directory, exc, what, todo))
    error.errno = exc.errno
    return error


class BufferDirInUse(OSError):
    """Another live process holds the buffer directory's lock: said as it is (a failure at
    run time, exit 1, as a port in use: that process may be an instance still stopping)."""


class Buffer:
    """Append-only, group-committed segment log under one directory."""

    def __init__(self, directory: str | os.PathLike[str], segment_bytes: int, limit_bytes: int):
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.limit_bytes = limit_bytes
        self.node_id = ""
        self._sealed: list[Segment] = []
        self._active: Segment | None = None
        self._fd = -1
        self._active_size = 0
        self._synced = _Synced()
        """What the last good fsync of the active segment covered (acknowledged frames)."""
        self._sealed_bytes = 0
        self._sealing_bytes = 0
        """Bytes of segments being sealed (their fsync under way): counted in
        :attr:`total_bytes` until they are in ``_sealed_bytes`` (:meth:`_sealing`)."""
        self._waiters: list[asyncio.Future[None]] = []
        self._torn: list[_Torn] = []
        """Segments a failed write left with a partial frame it could not cut off, waiting for
        the group-commit task to seal them (:meth:`_seal_torn`), oldest first."""
        self._lock: asyncio.Lock | None = None
        self._kick: asyncio.Event | None = None
        self._space: asyncio.Event | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._closed = False
        self._lock_fd = -1
        self._next_seq = 1
        """Number of the next active segment (none is open after a start on a full volume)."""
        self._chunks: dict[int, list[bytes]] = {}
        """Chunk keys of the messages in each segment (see :meth:`recent_chunks`)."""
        self._queued: deque[_Queued] | None = None
        """Frames waiting to be written behind a big one, in order (None: none is written in
        the worker, and appends write at once)."""
        self._queued_bytes = 0
        """Their bytes (with the big one's until written): counted in :attr:`total_bytes`."""
        self._writer: asyncio.Task[None] | None = None
        """The task writing the queued frames (:meth:`_write_queued`)."""
        self._idle: asyncio.Event | None = None
        """Set while no frame is being written in the worker (:meth:`_worker_idle`)."""
        self.flushed_chunks = FlushedChunks(self.dir / JOURNAL_NAME)

    # --- lifecycle ------------------------------------------------------------------------

    def open(self, node_id: str | None = None) -> list[Segment]:
        """Create or reopen the directory; return the segments left by a previous run."""
        self.lock()  # its errors say what is wrong already (wrapped again, they said it twice)
        try:
            return self._open(node_id)
        except OSError as exc:
            error = unusable_dir_error(self.dir, exc)
            if error is exc:
                raise
            raise error from exc

    def lock(self) -> None:
        """Create the directory and take its lock, if not yet held (:meth:`open` does it too).

        Cheap, unlike reading the segments: the service takes it before it binds any port, so
        that a second aggregator on the same directory exits with that reason alone, without
        holding a port meanwhile."""
        if self._lock_fd >= 0:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_dir()
        except (BufferDirInUse, NotRegularStateFile):
            raise
        except OSError as exc:
            raise unusable_dir_error(self.dir, exc, any_cause=True) from exc

    def _open(self, node_id: str | None) -> list[Segment]:
        check_state_files(self.dir)  # a FIFO among them hung the start (state_files.py)
        self.node_id = node_id or self._load_node_id()
        found = sorted(
            (int(m.group(1)), p) for p in self.dir.iterdir() if (m := SEGMENT_RE.fullmatch(p.name))
        )
        for seq, path in found:
            if path.stat().st_size == 0:
                path.unlink()
                end_marker(path).unlink(missing_ok=True)
                continue
            self._sealed.append(Segment(seq, path, _load_end(path)))
        self._sealed_bytes = sum(s.size for s in self._sealed)
        # End markers left by a crash right after their segment went:
        for marker in self.dir.glob(f"*{ACKED_SUFFIX}"):
            if not marker.with_suffix(SEGMENT_SUFFIX).exists():
                marker.unlink()
        # Never reuse a sequence number, even when every segment was flushed and deleted: object
        # keys are derived from it, and a reused one would overwrite data already committed.
        last = max(found[-1][0] if found else 0, self._load_last_seq())
        self._next_seq = last + 1
        try:
            self._open_active(last + 1)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._sealed:
                raise
            # The segments left behind are what fills the volume: writing them to the
            # warehouse deletes them. Start without an active segment; the first append
            # after that opens one (appends wait while the volume is under its reserve).
            log.warning(
                "--buffer-dir %s is full (%s): the %d segments left by the previous run are "
                "written to the warehouse first, which frees it; new data waits until then",
                self.dir,
                exc.strerror or exc,
                len(self._sealed),
            )
        return list(self._sealed)

    def _lock_dir(self) -> None:
        """One aggregator per buffer dir: a second one would interleave segments and keys."""
        check_lock_file(self.dir)
        self._lock_fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise BufferDirInUse(
                f"--buffer-dir {self.dir} is in use by another logq-aggregator; give each "
                "instance its own buffer directory"
            ) from None

    def _load_last_seq(self) -> int:
        path = self.dir / LAST_SEQ_NAME
        try:
            return int(path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0
        except ValueError:
            raise OSError(
                f"{path} does not hold a number; restore it, or set it above the highest "
                "segment number in the object keys of the warehouse (<node-id>-<seq>-<n>)"
            ) from None

    def _save_last_seq(self, seq: int) -> None:
        write_atomic(self.dir / LAST_SEQ_NAME, f"{seq}\n".encode("ascii"))

    def _load_node_id(self) -> str:
        path = self.dir / NODE_ID_NAME
        if path.exists():
            value = path.read_text(encoding="ascii").strip()
            if NODE_ID.fullmatch(value):
                return value
            raise OSError(f"{path} holds {value!r}, not a node id; delete it to get a new one")
        value = secrets.token_hex(6)
        write_atomic(path, f"{value}\n".encode("ascii"))
        return value

    def _open_active(self, seq: int) -> None:
        """Open segment ``seq`` for appending; on an error (a full volume) none is open and
        nothing changed but maybe an empty file, which the next try or start reuses or drops."""
        path = self.dir / segment_name(seq)
        self._save_last_seq(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._active = Segment(seq, path)
        self._active_size = 0
        self._synced = _Synced()
        self._next_seq = seq + 1

    def start(self) -> None:
        """Start the group-commit task (call inside the running event loop)."""
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._syncer = asyncio.create_task(self._sync_loop(), name="buffer-fsync")

    async def close(self) -> None:
        """Seal the active segment (if it holds data) and stop; nothing pending is lost.

        No next segment is opened: a stop on a full volume must not fail on a file it would
        never use. Stops even when the seal raises (its fsync failed), then re-raises: the
        segment is in :meth:`sealed` all the same, for the stop's flush."""
        try:
            while self._writer is not None and self._queued is not None:
                await asyncio.wait([self._writer])  # the frames appended before the stop
            await self.seal(open_next=False)
        finally:
            self._closed = True
            if self._writer is not None:  # appended during the seal: its file stays open
                await asyncio.wait([self._writer])  # until the worker's write ends
            if self._syncer:
                self._syncer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._syncer
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if self._active and self._active.size == 0:
                    self._active.path.unlink(missing_ok=True)
            self.unlock()

    def unlock(self) -> None:
        """Release the directory lock (done by close(); the kernel does it if the process dies)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- appending --------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes on disk: sealed segments not yet flushed plus the active one."""
        return (
            self._sealed_bytes
            + self._sealing_bytes
            + self._active_size
            + self._queued_bytes
            + sum(t.end for t in self._torn)
        )

    @contextlib.contextmanager
    def _sealing(self, size: int) -> Iterator[None]:
        """Count ``size`` bytes of a segment being sealed in :attr:`total_bytes` meanwhile: its
        bytes left ``_active_size`` (or ``_torn``) before its fsync and reach ``_sealed_bytes``
        after it, so the buffer looked that much emptier for one fsync (connections read past
        --buffer-limit-bytes then, and the disk guard's estimate was off by as much)."""
        self._sealing_bytes += size
        try:
            yield
        finally:
            self._sealing_bytes -= size

    @property
    def active_bytes(self) -> int:
        return self._active_size

    @property
    def full(self) -> bool:
        return self.total_bytes >= self.limit_bytes

    def short_of_disk(self) -> str | None:
        """Why the buffer's volume has no room for more data, None when it has (this buffer
        does not watch its volume: :class:`aggregator.diskguard.GuardedBuffer` does)."""
        return None

    async def wait_for_space(self) -> None:
        """Return once the buffer is under its limit (callers stop reading meanwhile)."""
        assert self._space is not None
        while self.full:
            self._space.clear()
            await self._space.wait()

    def write(self, payload: bytes, chunk: bytes | None = None) -> asyncio.Future[None]:
        """Append one frame; the returned future completes once it is fsync'd. ``chunk``: the
        chunk key the frame carries (``chunks.frame_payload``), journaled when the segment is
        flushed.

        A frame of :data:`WORKER_WRITE_BYTES` or more, and every frame appended while one is
        written in the worker, is queued (see the module docstring): an error writing it (a
        full volume) fails its future rather than raising here; either way it is not
        acknowledged, and its client resends it."""
        assert self._kick is not None, "Buffer.start() was not called"
        if self._closed:
            raise RuntimeError("buffer is closed")
        if self._queued is None and len(payload) < WORKER_WRITE_BYTES:
            return self._append(payload, chunk)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._queued is None:
            self._queued = deque()
            self._writer = asyncio.create_task(self._write_queued(), name="buffer-write")
        self._queued.append((payload, chunk, done))
        self._queued_bytes += HEADER.size + len(payload)
        return done

    def _append(
        self, payload: bytes, chunk: bytes | None, done: asyncio.Future[None] | None = None
    ) -> asyncio.Future[None]:
        """Write the frame of ``payload`` on the loop; its future (``done``, when given)."""
        if self._fd < 0:
            self._open_active(self._next_seq)  # started on a full volume: raises while it is
        frame = encode_frame(payload)
        try:
            _write_all(self._fd, frame)
        except OSError:
            self._cut_partial_frame()  # the client resends the message: it is not acknowledged
            raise
        return self._appended(len(frame), chunk, done)

    def _appended(
        self, size: int, chunk: bytes | None, done: asyncio.Future[None] | None
    ) -> asyncio.Future[None]:
        """Count a frame of ``size`` bytes just written, and have the next fsync settle its
        future (``done``, else a new one)."""
        assert self._kick is not None
        self._active_size += size
        if chunk is not None:
            assert self._active is not None
            self._chunks.setdefault(self._active.seq, []).append(chunk)
        fut = done if done is not None else asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._kick.set()
        return fut

    async def _write_queued(self) -> None:
        """Write the queued frames in order, the big ones in the worker
        (:meth:`_append_in_worker`), until none is left: appends write at once again. A frame
        that cannot be written fails its future alone, as :meth:`write` would have raised."""
        queued = self._queued
        assert queued is not None
        try:
            while queued:
                payload, chunk, done = queued.popleft()
                try:
                    if self._closed:
                        raise RuntimeError("buffer is closed")
                    if len(payload) < WORKER_WRITE_BYTES:
                        self._append(payload, chunk, done)
                    else:
                        await self._append_in_worker(payload, chunk, done)
                except BaseException as exc:  # OSError (disk full...): its client resends it
                    if not done.done():
                        done.set_exception(
                            exc if isinstance(exc, Exception) else _cancelled_write()
                        )
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._queued_bytes -= HEADER.size + len(payload)
        finally:
            for payload, _, done in queued:  # cancelled (the loop is closing): never written
                self._queued_bytes -= HEADER.size + len(payload)
                if not done.done():
                    done.set_exception(_cancelled_write())
            self._queued = self._writer = None

    async def _append_in_worker(
        self, payload: bytes, chunk: bytes | None, done: asyncio.Future[None]
    ) -> None:
        """:meth:`_append` with the checksum and write in a worker thread, the active segment
        kept meanwhile (:meth:`_worker_idle`)."""
        assert self._idle is not None
        if self._fd < 0:
            self._open_active(self._next_seq)
        self._idle.clear()
        try:
            loop = asyncio.get_running_loop()
            try:
                size = await loop.run_in_executor(None, _write_frame, self._fd, payload)
            except OSError:
                self._cut_partial_frame()
                raise
            self._appended(size, chunk, done)
        finally:
            self._idle.set()

    async def _worker_idle(self) -> None:
        """Return once no frame is being written in the worker, so that the active segment can
        be swapped or cut back (the caller must not wait again before it does)."""
        assert self._idle is not None
        while not self._idle.is_set():
            await self._idle.wait()

    async def append(self, payload: bytes) -> None:
        await self.write(payload)

    def _cut_partial_frame(self) -> None:
        """After a write failed mid-frame (disk full, I/O error): cut its partial frame off, or
        the frames appended after it could be lost to the reader's scan past a damaged frame.
        If the disk refuses the cut too, the segment is set aside to be sealed at the end of
        its last whole frame (:meth:`_seal_torn`, kicked here) and the next append goes to a
        new segment: none is ever written after those bytes."""
        try:
            os.ftruncate(self._fd, self._active_size)
            return
        except OSError as exc:
            error = exc
        old = self._active
        assert old is not None and self._kick is not None
        log.error(
            "buffer segment %s: could not cut off the partial frame of a failed write (%s); "
            "the segment is sealed at its last whole frame (byte %d) and appends go to a new one",
            old.path.name,
            error,
            self._active_size,
        )
        self._torn.append(_Torn(old, self._fd, self._active_size, self._synced, self._waiters))
        self._active, self._fd, self._active_size, self._waiters = None, -1, 0, []
        try:
            self._open_active(old.seq + 1)
        except OSError as exc:  # a full volume: the next append or seal opens one
            log.warning("could not open buffer segment %d yet: %s", old.seq + 1, exc)
        self._kick.set()  # the group-commit task seals it (it may be in an fsync of its fd now)

    async def _sync_loop(self) -> None:
        assert self._kick is not None and self._lock is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            async with self._lock:
                await self._guarded(self._seal_torn())
                waiters, self._waiters = self._waiters, []
                if not waiters:
                    continue
                active, covers = self._active, self._covered()
                try:
                    await loop.run_in_executor(None, os.fsync, self._fd)
                except Exception as exc:  # never end this task: every later ack would hang
                    log.error(
                        "buffer fsync failed: %s; the senders will retry",
                        exc,
                        exc_info=not isinstance(exc, OSError),  # anything else is a bug
                    )
                    await self._worker_idle()  # its frame is cut back with the others
                    torn = self._torn_of(active)
                    if torn is None:
                        await self._guarded(self._drop_unsynced(exc, waiters))
                    else:  # a torn write set it aside meanwhile
                        torn.failed, torn.waiters = exc, waiters + torn.waiters
                        await self._guarded(self._seal_torn())
                    continue
                torn = self._torn_of(active)
                if torn is None:
                    self._synced = covers
                else:
                    torn.synced = covers
                _settle(waiters)

    async def _guarded(self, step: Awaitable[None]) -> None:
        """Run a sealing step of the fsync task; an error is logged, not raised: this task
        must not end, or every later ack would hang (its appends are settled by the step)."""
        try:
            await step
        except Exception as exc:
            log.error("buffer segment not sealed cleanly: %s", exc, exc_info=True)

    def _torn_of(self, segment: Segment | None) -> _Torn | None:
        """The record of ``segment`` if a torn write set it aside (see _cut_partial_frame)."""
        return next((t for t in self._torn if t.segment is segment), None)

    async def _seal_torn(self) -> None:
        """Seal the segments set aside by torn writes, oldest first (called under the lock,
        before anything newer is sealed): their appends not yet covered by an fsync are fsync'd
        (or fail, as after any failed fsync), and the partial frame is cut off or marked as not
        to be read (:attr:`Segment.end`), like the frames of a failed fsync."""
        loop = asyncio.get_running_loop()
        while self._torn:
            torn = self._torn.pop(0)
            with self._sealing(torn.end):  # in total_bytes until sealed
                exc = torn.failed
                if exc is None:
                    try:
                        await loop.run_in_executor(None, os.fsync, torn.fd)
                    except Exception as error:  # as in _sync_loop: this task must not end
                        log.error("buffer fsync failed: %s; the senders will retry", error)
                        exc = error
                if exc is not None:
                    try:
                        await self._seal_acked(torn.segment, torn.fd, torn.synced)
                    finally:
                        _settle(torn.waiters, exc)
                    continue
                try:
                    await self._seal_whole_frames(torn)
                finally:
                    _settle(torn.waiters)

    async def _seal_whole_frames(self, torn: _Torn) -> None:
        """Seal a torn segment whose whole frames are fsync'd (acknowledged once this returns)
        at the end of the last one (:meth:`_seal_at`)."""
        await self._seal_at(torn.segment, torn.fd, torn.end, "the partial frame of a failed write")

    async def _seal_at(self, segment: Segment, fd: int, size: int, what: str) -> None:
        """Seal ``segment`` (its file open at ``fd``, closed here) at ``size`` bytes: cut there,
        or else marked as not to be read past it (:attr:`Segment.end`). A segment with nothing
        before ``size`` is deleted instead (if that fails, it is sealed empty: end 0). ``what``
        names the bytes after ``size``, for the log line of a failed cut."""
        cut = await asyncio.get_running_loop().run_in_executor(
            None, _cut_back, segment.path, fd, size, what
        )
        if size == 0:
            with contextlib.suppress(OSError):
                segment.path.unlink()
                end_marker(segment.path).unlink(missing_ok=True)
                return
        if not cut:
            segment = Segment(segment.seq, segment.path, size)
        self._sealed.append(segment)
        self._sealed_bytes += segment.size

    def _covered(self) -> _Synced:
        """What an fsync starting now covers: every frame of the active segment so far."""
        seq = self._active.seq if self._active is not None else -1
        return _Synced(self._active_size, len(self._chunks.get(seq, ())))

    async def _drop_unsynced(self, exc: BaseException, waiters: list[asyncio.Future[None]]) -> None:
        """After a failed fsync of the active segment: fail its appends not yet covered by a
        good fsync (those of the fsync and those written since), and seal the segment cut back
        to its acknowledged frames; the next append opens a new one (see module doc). The
        appends fail once that is done: none is resent while its frame may still be flushed."""
        waiters, self._waiters = waiters + self._waiters, []
        old, fd, synced, size = self._active, self._fd, self._synced, self._active_size
        assert old is not None
        self._active, self._fd, self._active_size = None, -1, 0
        try:
            self._open_active(old.seq + 1)
        except OSError as error:  # a full volume: the next append or seal opens one
            log.warning("could not open buffer segment %d yet: %s", old.seq + 1, error)
        try:
            with self._sealing(size):
                await self._seal_acked(old, fd, synced)
        finally:
            _settle(waiters, exc)

    async def _seal_acked(self, segment: Segment, fd: int, synced: _Synced) -> None:
        """Seal ``segment`` (its file open at ``fd``, closed here) without the frames after its
        last good fsync (:meth:`_seal_at`)."""
        keys = self._chunks.pop(segment.seq, [])[: synced.chunks]
        if keys:  # those of failed appends are forgotten: their resends must be stored
            self._chunks[segment.seq] = keys
        log.warning(
            "buffer segment %s %s at its last good fsync (%d bytes): the messages written after "
            "it were not acknowledged, their clients resend them, and they are not flushed from it",
            segment.path.name,
            "dropped" if synced.size == 0 else "sealed",
            synced.size,
        )
        await self._seal_at(
            segment, fd, synced.size, "the unacknowledged frames after a failed fsync"
        )

    # --- sealing and deleting ---------------------------------------------------------------

    async def seal(self, open_next: bool = True) -> Segment | None:
        """Close the active segment if it holds data, open the next, return the sealed one.

        The segment is sealed (in :meth:`sealed`, for the flusher) whatever fails: an fsync
        error fails the appends it should have covered (their clients resend them) and seals
        the segment without their frames (:meth:`_seal_acked`), and a next
        segment that cannot be opened (a full volume) is opened by the next append or the next
        seal, as after a start on a full volume. Either error is raised afterwards, for the
        caller to report; the buffer stays usable. With no active segment (one could not be
        opened), this tries to open one and raises if it still cannot. ``open_next=False`` (a
        stop) opens none.
        """
        assert self._lock is not None
        async with self._lock:
            while True:  # a big write failing meanwhile can set the active segment aside
                await self._seal_torn()
                await self._worker_idle()
                if not self._torn:
                    break
            if self._active is None:
                if open_next and not self._closed and self._fd < 0:
                    self._open_active(self._next_seq)  # the retry of a failed open
                return None
            if self._active_size == 0:
                return None
            old, old_fd, old_size = self._active, self._fd, self._active_size
            waiters, self._waiters = self._waiters, []
            synced = self._synced
            self._active, self._fd, self._active_size = None, -1, 0
            # The next segment opens before the fsync below lets other tasks run: an append
            # meanwhile goes to it (or, if it could not open, opens one itself, which no later
            # step replaces: its frame would be acknowledged from an orphaned file).
            open_error: OSError | None = None
            if open_next:
                try:
                    self._open_active(old.seq + 1)
                except OSError as exc:
                    open_error = exc
            with self._sealing(old_size):
                try:
                    await asyncio.get_running_loop().run_in_executor(None, os.fsync, old_fd)
                except OSError as exc:
                    # Flushed for its acknowledged frames only: the others' clients resend them.
                    try:
                        await self._seal_acked(old, old_fd, synced)
                    finally:
                        _settle(waiters, exc)
                    raise
                _close(old_fd, old.path)
                _settle(waiters)
                self._sealed.append(old)
                self._sealed_bytes += old_size
            if open_error is not None:
                raise open_error
            return old

    def sealed(self) -> list[Segment]:
        """Sealed segments waiting to be flushed, oldest first."""
        return list(self._sealed)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has sealed the last segment (or failed to, its fsync): no
        frame is appended from then on (:meth:`write` refuses), so the directory can only
        lose segments."""
        return self._closed

    def written_out(self) -> bool:
        """Whether the buffer is closed and its directory holds no segment with data, read
        from the disk (not from :meth:`sealed`): every frame acknowledged here is then in
        committed Parquet objects (a segment is deleted only after its commit), or set aside in
        :attr:`quarantine_dir`. What a stop cut short by ``--stop-timeout`` decides its exit
        status on (``Aggregator._timed_out_status``); safe from any thread."""
        if not self._closed:
            return False
        for path in self.dir.iterdir():
            if SEGMENT_RE.fullmatch(path.name):
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: committed
                    if path.stat().st_size > 0:
                        return False
        return True

    # --- chunk keys across a restart (chunks.py) -------------------------------------------------

    def recent_chunks(self, progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """The chunk keys of messages made durable before this start, oldest first: those of
        segments flushed in the last minutes (``chunks.journal``), then those in the segments
        left by the previous run (read from their frames: the whole buffer is read once, which
        takes seconds per GiB, see docs/operations.md). ``progress(segments_read, bytes_read)``
        hears after each segment (in the calling thread)."""
        keys = self.flushed_chunks.load()
        done = 0
        for count, segment in enumerate(self._sealed, 1):
            if segment.seq not in self._chunks:
                found = frame_chunks(_quiet_frames(segment.path, segment.end))
                if found:
                    self._chunks[segment.seq] = found
            keys.extend(self._chunks.get(segment.seq, ()))
            if progress is not None:
                done += segment.size
                progress(count, done)
        return keys

    def retire_chunks(self, segment: Segment) -> None:
        """Journal the chunk keys of a segment about to leave the buffer (flushed or set aside),
        so that a restart still recognises resends of its messages. Blocking (an fsync): the
        service calls it in a worker thread; :meth:`delete` calls it if it was not. A failure
        (a full disk) is logged and the segment goes anyway: the buffer must free its space."""
        keys = self._chunks.pop(segment.seq, None)
        if not keys:
            return
        try:
            self.flushed_chunks.add(keys)
        except OSError as exc:
            log.warning(
                "could not note the %d chunk ids of segment %d in %s (%s): after a restart, "
                "resends of those messages would be stored again",
                len(keys),
                segment.seq,
                self.flushed_chunks.path,
                exc,
            )

    @property
    def quarantine_dir(self) -> Path:
        """Where :meth:`quarantine` puts segments: a buffer dir of its own."""
        return self.dir / QUARANTINE_DIR

    def quarantined(self) -> int:
        """Segments waiting in :attr:`quarantine_dir`."""
        return len(list(self.quarantine_dir.glob(f"*{SEGMENT_SUFFIX}")))

    def quarantine(self, segment: Segment, before_move: Callable[[], None] | None = None) -> Path:
        """Move a segment that cannot be flushed (a data error, not an outage) out of the way,
        into a buffer dir of its own that ``logq-aggregator drain`` writes out after a fix.
        Nothing is deleted; the segments behind it flow again.

        Raises OSError, the segment left where it is (still sealed here), when it cannot be set
        aside whole: moved without its ``.acked`` marker (:attr:`Segment.end`), a drain would
        write out its unacknowledged frames, which their clients resent and were stored.
        ``before_move`` runs once the target is ready, right before the move: the caller's
        clean-up of the segment's failed flushes (not done for a move that cannot happen, or
        each retry would write and delete them again: R4)."""
        folder = self.quarantine_dir
        folder.mkdir(exist_ok=True)
        if not (folder / NODE_ID_NAME).exists():  # its own keys: never this node's segment keys
            write_atomic(folder / NODE_ID_NAME, f"{self.node_id[:53]}-quarantine\n".encode("ascii"))
        target = folder / segment.path.name
        if segment.end is not None:  # before the segment: never one without its marker
            write_atomic(end_marker(target), f"{segment.end}\n".encode("ascii"))
        if before_move is not None:
            before_move()
        size = segment.size
        self.retire_chunks(segment)  # its rows are not stored yet, but will be by a drain
        os.replace(segment.path, target)
        self._unseal(segment, size)  # it has left: whatever fails next, it is not retried here
        try:
            fsync_dir(folder)
            fsync_dir(self.dir)
            end_marker(segment.path).unlink(missing_ok=True)  # after: a rename undone by a
        except OSError as exc:  # crash must not find the segment back without its marker
            log.warning(
                "segment %s moved to %s, but the move may not be durable (%s): after a crash it "
                "may be back in %s, and is then flushed or set aside again",
                segment.path.name,
                folder,
                exc,
                self.dir,
            )
        return target

    def delete(self, segment: Segment) -> None:
        """Drop a segment whose Parquet objects are committed; wake readers if under limit."""
        self.retire_chunks(segment)
        size = segment.size
        segment.path.unlink(missing_ok=True)
        end_marker(segment.path).unlink(missing_ok=True)  # after: never a segment without it
        self._unseal(segment, size)

    def _unseal(self, segment: Segment, size: int) -> None:
        """Forget a sealed segment whose file left the buffer; wake readers if under limit."""
        self._sealed = [s for s in self._sealed if s.seq != segment.seq]
        self._sealed_bytes = max(0, self._sealed_bytes - size)
        if self._space is not None and not self.full:
            self._space.set()


@dataclass
class _Torn:
    """An active segment set aside after a failed write whose partial frame could not be cut
    off (see Buffer._cut_partial_frame), until the group-commit task seals it."""

    segment: Segment
    fd: int
    """Its file, still open: an fsync of it may be running when it is set aside."""
    end: int
    """Where its last whole frame ends (the partial frame follows)."""
    synced: _Synced
    """What its last good fsync covered (updated by one running when it was set aside)."""
    waiters: list[asyncio.Future[None]]
    """Its appends not yet covered by an fsync."""
    failed: BaseException | None = None
    """The error of an fsync of it that failed after it was set aside."""


@dataclass(frozen=True)
class _Synced:
    """What a good fsync of the active segment covered: its first ``size`` bytes, holding the
    first ``chunks`` chunk keys of its messages. Frames past it are not acknowledged."""

    size: int = 0
    chunks: int = 0


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None = None) -> None:
    """Complete the appends waiting for an fsync: durable, or failed with ``exc``."""
    for w in waiters:
        if w.done():
            continue
        if exc is None:
            w.set_result(None)
        else:
            w.set_exception(exc)


def _cancelled_write() -> RuntimeError:
    return RuntimeError("buffer write cancelled (the aggregator is stopping): not stored")


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` all of ``data`` (a write to a regular file can be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_frame(fd: int, payload: bytes) -> int:
    """Append the frame of ``payload`` to ``fd``, without copying the payload; its bytes.
    Blocking, for a worker thread: the checksum and the writes release the GIL."""
    header = frame_header(payload)
    _write_all(fd, header)
    _write_all(fd, payload)
    return len(header) + len(payload)


def _cut_back(path: Path, fd: int, size: int, what: str) -> bool:
    """Truncate a segment's file to ``size`` durably and close it; if the disk refuses either
    step, record ``size`` as where its acknowledged frames end and return False (blocking).
    ``what`` follows ``size``, for the log line."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
        return True
    except OSError as exc:
        log.error(
            "buffer segment %s: could not cut off %s (%s); they are marked as not to be read "
            "(%s) and are never flushed",
            path.name,
            what,
            exc,
            end_marker(path).name,
        )
        _mark_end(path, size)
        return False
    finally:
        _close(fd, path)


def _close(fd: int, path: Path) -> None:
    """Close a segment's file; an error is logged, never raised. Whether its frames are durable
    was settled by the fsync (and cut) before it, and Linux releases the descriptor even when
    close reports a deferred write error (EIO on NFS/EFS): raising here ended the fsync task,
    and every later ack hung (R4)."""
    try:
        os.close(fd)
    except OSError as exc:
        log.warning(
            "closing buffer segment %s reported %s (its fsync had succeeded)", path.name, exc
        )


def _mark_end(path: Path, end: int) -> None:
    """Record where the acknowledged frames of the segment at ``path`` end, for a restart.
    In memory the segment knows it anyway: a failure is logged, not raised."""
    try:
        write_atomic(end_marker(path), f"{end}\n".encode("ascii"))
    except OSError as exc:
        log.error(
            "could not write %s (%s): if the aggregator restarts before segment %s is flushed, "
            "its frames after byte %d, never acknowledged, are replayed with it, and the lines "
            "their clients resent since may be stored twice (check the disk)",
            end_marker(path),
            exc,
            path.name,
            end,
        )
