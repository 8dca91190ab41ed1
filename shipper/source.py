"""One source's pipeline: read batches from its files, deliver them in order, commit on ack.

Per source there is a reader task (tail + parse + encode, one batch ahead) and a sender task
(deliver, wait for the ack, advance the checkpoint). Batches of one source are delivered strictly
one after the other: the aggregator drops a record whose offset is not above the highest it has
stored for the source, so a later batch must never overtake a resent earlier one. Sources run
concurrently, and the :class:`Window` bounds the bytes read but not yet acknowledged across all
of them: when it is full, reading stops and the files are the buffer. A batch that waits for
the aggregator names after a restart steps out of it while it waits, its file read no further
meanwhile (see :class:`Window`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from shipper import fd_budget, gz_pool, multiline, wire
from shipper.batch import (
    Batch,
    WireRoom,
    body_room,
    encode_message,
    record_bytes,
    record_constants,
)
from shipper.discover import SourceSpec
from shipper.errors import ShipperError
from shipper.idle_sweep import Sleeper, stamp, telling
from shipper.lines import Lines
from shipper.sender import HeldAtStop
from shipper.tailer import READ_AHEAD_BYTES, UNKNOWN_AT_CLOSE, AtClose, Tailer

if TYPE_CHECKING:
    from shipper.config import Endpoint
    from shipper.cursor import Cursor
    from shipper.daemon import Shipper
    from shipper.metrics import Metrics

log = logging.getLogger("logq.shipper.source")

IDLE_CEILING_SECONDS = 2.0
"""Longest sleep of an idle source whose live file is watched with inotify, unless a look at
its file finds it unchanged: the safety net for an event that never comes (a write inotify
cannot see, a watch the kernel dropped). It is Fluent Bit's tail ``Progress_Check_Interval``
(2 s), which plays the same part next to its inotify backend; a lost event (or a write through
``mmap``, which inotify does not report) delays lines by 2 s at most, never loses them. The
looks are taken for all sleeping sources at once (:mod:`shipper.idle_sweep`): an ``fstat`` and
a ``stat`` per file a period, where each source used to take a turn of its read loop.
Measured with bench/idle.py at 500 idle sources: 7.5 % of a core polling every 0.25 s,
1.65 % with a turn per source at this ceiling, 1.2 % with 5 s, 0.55 % with none (discovery's
safety-net scans, gauges, checkpoints)."""
WATCH_RETRY_SECONDS = 60.0
"""A live file the watcher refused (inotify watch limit reached) is offered to it again this
often; it is polled meanwhile."""


def batch_reserve(batch_bytes: int) -> int:
    """The window's room a reader reserves for its next batch: twice ``--batch-bytes`` (a
    character of log text and its record's keys take more than a byte), and never more than
    a message holds (:data:`~shipper.wire.MAX_MESSAGE_BYTES`): with ``--batch-bytes`` raised
    past it, a reserve the window rarely had left every other batch to the lines kept past
    the last one alone."""
    return min(2 * batch_bytes, wire.MAX_MESSAGE_BYTES)


class Window:
    """A byte budget for batches in flight; ``acquire`` waits while it is spent.

    A batch waiting for the aggregator names (see
    :data:`~shipper.sender.PLACEMENT_DNS_WAIT_SECONDS`) steps out of it (:meth:`step_aside`)
    while it waits: it may wait a minute, and batches that cannot be sent must not keep the
    files that can from being read. Its source reads nothing more meanwhile
    (:meth:`SourceRunner._until_sent`), so that is one batch per waiting file, and all of them
    together at most :attr:`limit` bytes (past it a waiting batch stays in until there is room
    aside, woken when another one steps back: :class:`StepAside`): the batches read stay
    within twice the window."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.aside = 0
        """Bytes of the batches stepped out while they wait for the names."""
        self._cond = asyncio.Condition()
        self._aside_freed = asyncio.Event()
        """Set, and replaced by a new one, when room aside is given back (:meth:`step_back`,
        the only way it comes back): wakes the batches refused it (:meth:`step_aside_when_room`).
        Not :attr:`_cond`: :meth:`step_back` takes no lock."""

    def has_room(self, n: int) -> bool:
        # A batch bigger than the whole window still goes, alone.
        return self.used == 0 or self.used + n <= self.limit

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.has_room(n))
            self.used += n

    def try_acquire(self, n: int) -> bool:
        """:meth:`acquire` if there is room now, else nothing; whether it did. Not a
        coroutine: the budget only shrinks (nothing to wake)."""
        if not self.has_room(n):
            return False
        self.used += n
        return True

    async def resize(self, held: int, n: int) -> None:
        """Turn a reservation of ``held`` bytes into one of ``n`` bytes (never waits)."""
        async with self._cond:
            self.used += n - held
            self._cond.notify_all()

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()

    async def step_aside(self, n: int) -> bool:
        """Take ``n`` bytes of a batch that waits for the names out of the budget, if the
        batches aside stay within :attr:`limit` (one alone always may); whether it did."""
        async with self._cond:
            if self.aside and self.aside + n > self.limit:
                return False
            self.aside += n
            self.used -= n
            self._cond.notify_all()
            return True

    async def step_aside_when_room(self, n: int) -> None:
        """:meth:`step_aside`, waiting while the batches aside leave no room for ``n`` bytes:
        woken when one of them steps back (:meth:`step_back`), not at a poll."""
        while True:
            freed = self._aside_freed  # before trying: a step back meanwhile sets this one
            if await self.step_aside(n):
                return
            await freed.wait()

    def step_back(self, n: int) -> None:
        """A batch stepped aside is sent now: its ``n`` bytes count again, at once (they are
        read already; readers wait until acks bring the budget back under its limit). Not a
        coroutine: no reader to wake (the budget only shrinks), and no lock to wait for, so a
        cancellation cannot leave the bytes counted aside -- and again when released. The
        batches refused room aside are woken (:meth:`step_aside_when_room`): there is some."""
        self.aside -= n
        self.used += n
        freed, self._aside_freed = self._aside_freed, asyncio.Event()
        freed.set()


class StepAside:
    """The ``on_hold`` of one batch (see :meth:`~shipper.sender.ForwardClient.deliver`): out
    of ``window`` while it waits for the aggregator names, back in once it is sent or given
    up. Refused room aside (:meth:`Window.step_aside`), it waits for some in a task of its
    own and steps out as soon as the waiting batches sent or given up leave it room
    (:meth:`Window.step_back`).
    Refused once, it stayed in for its whole wait (up to a minute), keeping the files that
    can be sent from being read, as every waiting batch did before they stepped out; tried
    again at each poll of the wait for the names, it stayed in up to
    :data:`~shipper.sender.PLACEMENT_DNS_POLL_SECONDS` past the room coming back."""

    def __init__(self, window: Window, n: int) -> None:
        self.window = window
        self.n = n
        self.aside = False
        self._refused: asyncio.Task[None] | None = None
        """Waits for room aside (:meth:`_when_room`) after a refusal; cancelled when the
        batch stops waiting."""

    async def __call__(self, held: bool) -> None:
        if held:
            if not (self.aside or self._refused):
                self.aside = await self.window.step_aside(self.n)
                if not self.aside:
                    self._refused = asyncio.create_task(self._when_room())
            return
        # No await from here on: run in a cancelled task's ``finally`` (SourceRunner._deliver),
        # it must not leave the bytes aside nor the task waiting for room.
        if self._refused is not None:
            self._refused.cancel()  # a cancelled task never steps aside (_when_room)
            self._refused = None
        if self.aside:
            self.aside = False
            self.window.step_back(self.n)

    async def _when_room(self) -> None:
        await self.window.step_aside_when_room(self.n)
        self.aside = True  # no await between: cancelled, it was not counted aside
        self._refused = None


class SourceRunner:
    """Reader + sender tasks of one source."""

    def __init__(self, shipper: Shipper, spec: SourceSpec, kept_out: bool = False) -> None:
        """``kept_out``: the source was excluded until now (see :attr:`Tailer.kept_out`)."""
        self.shipper = shipper
        self.spec = spec
        cfg = shipper.cfg
        metrics = shipper.metrics
        metrics.watch_service(spec.service)
        grouping = multiline.choose(spec.service, spec.multiline, cfg.multiline)
        if grouping is not None:
            metrics.multiline_listed()
        self.tailer = Tailer(
            spec,
            shipper.registry,
            cfg.hostname,
            cfg.max_line_bytes,
            on_loss=lambda reason: metrics.count_loss(self.spec.service, reason),
            once=cfg.once,
            kept_out=kept_out,
            multiline=grouping,
            read_ahead=min(READ_AHEAD_BYTES, cfg.batch_bytes),
        )
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self._per_record: tuple[str, int] | None = None
        """(source id, :meth:`_record_bytes`) of the file read last."""
        self.started_at = 0.0
        """When :meth:`start` ran: a source that ran long enough before it failed starts its
        retry backoff over (see ``Shipper._note_failure``)."""
        self._kept = 0
        """Bytes the window counts for the lines the tailer read past the last batch
        (:attr:`Tailer.kept_bytes`): see :meth:`_room`."""
        self._reading = 0
        """Bytes the window counts for the reader's read in hand: the room reserved for it,
        then its batch until the queue takes it (:meth:`_release_held`)."""
        self._queued: tuple[str, int] | None = None
        """The source id and last record offset of the last batch with lines put on
        :attr:`queue`: read, and sent after the batch being sent (see :meth:`_send`)."""
        self._wake = asyncio.Event()
        """Set by the file watcher when the live file changes, and by the flags below: an idle
        reader waits on it (see :meth:`_idle`)."""
        self._watched: tuple[int, int, int] | None = None
        """(device, inode, watch descriptor) of the live file watched with inotify."""
        self._unwatchable: tuple[int, int, float] | None = None
        """(device, inode, when) of a live file the watcher refused: polled, and offered to it
        again after :data:`WATCH_RETRY_SECONDS` (watches freed by sources that ended)."""
        self._last_event = 0.0
        """When an event last ended the reader's idle wait (monotonic)."""
        self._finishing = False
        self._stopping = False
        self._drain_deleted = False
        self._stopped = asyncio.Event()
        """Set with :attr:`stopping`: the ``.gz`` work the reader awaits is given up
        (:attr:`Tailer.gz_stop`)."""
        self.tailer.gz_stop = self._stopped
        self.task: asyncio.Task[None] | None = None
        self._waiting = asyncio.Event()
        """Set while the reader waits for the window or for the sender."""
        self._read_since_check = False
        """The reader read a batch since the pin loop last looked: it is behind, busy."""
        self._active = asyncio.Event()
        """Wakes the pin loop: the reader read a batch or began to wait. An idle reader at the
        end of its file sets neither, and sees rotations itself (:meth:`Tailer.poll`)."""
        self._times_warned = False
        """The source's first line with an unusable runtime time was logged (once a source)."""

    @property
    def finishing(self) -> bool:
        """The source disappeared: drain what its files hold, then end."""
        return self._finishing

    @finishing.setter
    def finishing(self, value: bool) -> None:
        self._finishing = value
        self._wake.set()  # an idle reader must not sleep on until its ceiling

    @property
    def stopping(self) -> bool:
        """Shutdown: read nothing more, deliver what was read."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = value
        if value:
            self._stopped.set()
        self._wake.set()

    @property
    def drain_deleted(self) -> bool:
        """Shutdown, but the file being read is deleted (held open since the runtime removed
        it): read on while that holds, then stop -- a restart could not read those lines."""
        return self._drain_deleted

    @drain_deleted.setter
    def drain_deleted(self, value: bool) -> None:
        self._drain_deleted = value
        self._wake.set()

    def update_spec(self, spec: SourceSpec) -> None:
        """New metadata of the same file (``config.v2.json`` fixed or relabelled): lines read
        from now on carry it. The tailer keeps its own copy: key, path and format are unchanged.
        """
        old = self.spec
        assert (spec.key, spec.path, spec.format) == (old.key, old.path, old.format)
        self.shipper.metrics.watch_service(spec.service)
        self.spec = spec

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=self.spec.key)

    async def _run(self) -> None:
        reader = asyncio.create_task(self._read_loop())
        sender = asyncio.create_task(self._send_loop())
        pinner = asyncio.create_task(self._pin_loop())
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in (reader, sender, pinner):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reader, sender, pinner, return_exceptions=True)
            self._unwatch()
            drained = self.tailer.drained()
            self.tailer.close_files()  # its kept lines go (read again from the checkpoint)
            looked = UNKNOWN_AT_CLOSE
            try:
                looked = await self._look_at_close(drained)
            finally:  # also when a stop gave up waiting for the look: nothing noted then
                self.tailer.close(looked)
            await self._release_held()
            if self.shipper.registry.dirty:
                # The files' checkpoints were dropped (read to their end and acknowledged):
                # checkpoints.json forgets them now, not at some other source's next ack.
                self.shipper.checkpoint_changed()

    async def _look_at_close(self, drained: bool) -> AtClose:
        """:meth:`Tailer.look_at_close` on the shipper's thread of such looks: on the loop, the
        ``stat`` of the folder and the live path and the listing of the folder of a source
        that ends on a hung file system (a stale NFS mount: its container removed) held every
        other source's reads and acks until they returned. A stop does not wait for it
        (:attr:`_stopped`): nothing is noted then (a folder gone is found by the next start,
        :meth:`shipper.daemon.Shipper._prune_followed`)."""
        work = self.shipper.close_looks.submit(self.tailer.look_at_close, drained)
        look = asyncio.wrap_future(work)
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({look, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if look.done():
            return look.result()
        look.cancel()  # (not started yet: dropped; else it ends on its own)
        return UNKNOWN_AT_CLOSE

    # -- reading ----------------------------------------------------------------------------

    async def _pin_loop(self) -> None:
        """Open files the runtime rotates in while the reader is behind -- waiting for acks, or
        busy with older lines -- every :meth:`Tailer.pin_check_seconds`: an open file survives its
        deletion by the runtime's ``max-file``.

        A busy reader counts, not only a waiting one: a CPU-bound reader waits for moments
        only, and files rotated in and deleted while it worked were lost without a count.
        Sleeps on :attr:`_active` while the reader is idle at the end of its file: with 1000
        idle sources, a check every 0.25 s each was about a tenth of a core for nothing."""
        while not self.stopping:
            await self._active.wait()
            await asyncio.sleep(self.tailer.pin_check_seconds())
            if not (self._waiting.is_set() or self._read_since_check):
                self._active.clear()
                continue
            self._read_since_check = False
            try:
                self.tailer.pin_new_generation()
            except OSError as exc:
                log.warning("rotation check failed key=%s error=%r", self.spec.key, str(exc))

    async def _read_loop(self) -> None:
        cfg = self.shipper.cfg
        # Room for a whole batch is reserved *before* reading it: a batch waiting for the
        # window would otherwise be memory the window does not see (so would the lines read
        # past it, kept for the next: _room).
        reserve = batch_reserve(cfg.batch_bytes)
        failing_since: float | None = None
        while not self.stopping:
            if self.drain_deleted and not self.tailer.holds_deleted():
                break
            room = self._reading = await self._room(reserve)
            # Before the tailer's start (no-op after it): the compressed copies it reads again
            # are decompressed in a worker thread, not on the loop. No await between this and
            # the start below: the answers are for the files as the start finds them. A stop
            # does not wait for it (queued behind other sources' copies at a restart of many,
            # the source ended at --retry-timeout "with unacknowledged batches").
            try:
                await self.tailer.prepare_off_loop()
            except gz_pool.GivenUp:
                await self._release_reading()  # stopping: the start is not made, nor the read
                continue
            try:
                batch = self._next_batch(one_chunk=not room)
            except OSError as exc:
                # EIO, EACCES...: keep the source, try again later; the checkpoint holds.
                await self._release_reading()
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if cfg.once and now - failing_since >= cfg.retry_timeout:
                    # --once must end: the error is not going away by itself.
                    raise ShipperError(
                        f"cannot read source {self.spec.key} for {cfg.retry_timeout:g} s: {exc}"
                    ) from None
                log.error("cannot read source, retrying key=%s error=%r", self.spec.key, str(exc))
                await asyncio.sleep(max(cfg.poll_interval, 1.0))
                continue
            failing_since = None
            await self._count_kept(room, batch)
            if batch is not None:
                self._read_since_check = True
                self._active.set()
                await self._enqueue(batch)
                if batch.lines and self.shipper.client.may_hold(
                    batch.cursor.source_id, batch.first_offset
                ):
                    await self._until_sent()
                await asyncio.sleep(0)
                continue
            try:
                if await self.tailer.poll_off_loop(finishing=self.finishing):
                    continue
            except gz_pool.GivenUp:
                continue  # stopping: the scan is not waited for
            if (cfg.once and not self.tailer.waiting) or (
                self.finishing and not self.tailer.cursors
            ):
                # --once waits its turn for a file descriptor (sources ending free theirs)
                # instead of ending with its files unread. It ends at the bound the tailer set
                # when it started (Tailer.finished), not when the writer pauses: a container
                # writing faster than we ship cannot keep it going. A split line left open
                # (the container stopped mid-line) is shipped as it is first (Tailer.end).
                if self.tailer.end():
                    continue
                break
            await self._idle()
        if self.tailer.multiline is not None and (self.stopping or self.drain_deleted):
            await self._ship_open_records()
        await self.queue.put(None)  # tells the sender that nothing more comes

    async def _ship_open_records(self) -> None:
        """Shutdown of a ``--multiline`` source: its open records go out as they are (their
        cuts in the checkpoint, as at the end of a ``--once`` run), in the batches the
        shutdown waits to see acknowledged. Left to the restart, a record whose first lines
        are in a rotated file the runtime deletes or compresses meanwhile (Docker
        ``compress``, the kubelet) depended on that file's compressed copy (R1s19 #1); a
        next line written after the stop starts a record of its own."""
        if not self.tailer.end(stopping=True):
            return
        reserve = batch_reserve(self.shipper.cfg.batch_bytes)
        while self.tailer.parser.pending_origins():
            room = self._reading = await self._room(reserve)
            batch = self._next_batch(one_chunk=True)
            await self._count_kept(room, batch)
            if batch is None:
                return
            await self._enqueue(batch)

    async def _room(self, reserve: int) -> int:
        """Reserve ``reserve`` bytes of the window for the next batch, before it is read; 0
        when the tailer holds lines read past the last batch and the window has no room: the
        next batch is those lines alone (:meth:`_next_batch` with ``one_chunk``), their bytes
        counted already (:attr:`_kept`), once the batches read before them are sent (the
        window's room comes back with acks). Such a source does not wait for room: sources
        whose kept lines fill the window would wait for each other's, for good."""
        window = self.shipper.window
        if self._kept:
            if window.try_acquire(reserve):
                return reserve
            await self._until_sent()
            return reserve if window.try_acquire(reserve) else 0
        await self._blocking(window.acquire(reserve), not window.has_room(reserve))
        return reserve

    async def _count_kept(self, held: int, batch: Batch | None) -> None:
        """Turn the ``held`` bytes reserved for a read, and those counted for the lines kept
        before it, into the bytes of the ``batch`` read and of the lines kept now: a source
        holds them until its next batch, and many backlogged sources hold many (each at most
        a batch's text, :attr:`Tailer.read_ahead`, or one long line), within the window."""
        kept = self.tailer.kept_bytes
        nbytes = batch.nbytes if batch is not None else 0
        await self.shipper.window.resize(held + self._kept, nbytes + kept)
        self._kept = kept  # (no await since the resize: a cancel cannot come between)
        self._reading = nbytes

    async def _release_reading(self) -> None:
        """Give back the room reserved for a read that was not made."""
        held, self._reading = self._reading, 0
        await self.shipper.window.release(held)

    async def _release_held(self) -> None:
        """At the source's end, give back every byte of the window it still holds: its kept
        lines, its read in hand and the batches queued that the sender did not take (the one
        it was sending gave its own back: :meth:`_send`). A source that failed (one broken
        file: the daemon starts it again after a backoff) had its reader and sender
        cancelled with those bytes counted: each failure kept up to three batches' worth of
        ``--max-inflight-bytes`` for good, and a file failing at every retry stopped every
        source once they filled it."""
        held = self._kept + self._reading
        self._kept = self._reading = 0
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            if batch is not None:
                held += batch.nbytes
        await self.shipper.window.release(held)

    async def _until_sent(self) -> None:
        """Read nothing more until the batches queued are sent: the last one may wait for the
        aggregator names (:meth:`~shipper.sender.ForwardClient.may_hold`), up to a minute,
        stepped out of the window (:class:`Window`). Batches read behind it would wait as
        long, in the window, where the sources that can send need the room. Only the batches
        of lines that went, before a restart, to an address of a name not resolved yet go one
        at a time so (and the lines kept past a batch when the window is full: :meth:`_room`).
        A stop ends the wait (the reader ends)."""
        sent = asyncio.ensure_future(self.queue.join())
        stop = asyncio.ensure_future(self._stopped.wait())

        async def either() -> None:
            await asyncio.wait({sent, stop}, return_when=asyncio.FIRST_COMPLETED)

        try:
            await self._blocking(either(), True)
        finally:
            sent.cancel()
            stop.cancel()

    async def _enqueue(self, batch: Batch) -> None:
        await self._blocking(self.queue.put(batch), self.queue.full())
        self._reading = 0  # the sender's now: it releases the bytes (_send, _drop_at_stop)
        if batch.lines:
            self._queued = (batch.cursor.source_id, batch.last_offset)

    async def _idle(self) -> None:
        """At the end of the files, with nothing to do: wait before looking again.

        A source rotating fast is looked at more often (Tailer.pin_check_seconds). A settled
        source (see :meth:`_settled`) sleeps until its file changes: one whose live file is
        watched with inotify until an event says so, with a look at the file every
        :data:`IDLE_CEILING_SECONDS` as the safety net (500 idle sources polled every 0.25 s
        cost about 8 % of a core for nothing); one whose file is not watched (no inotify,
        watch limit reached, a network filesystem) with a look every ``--poll-interval``.
        Those looks are taken for every sleeping source at once (:mod:`shipper.idle_sweep`),
        which wakes one only when its file changed: a look is two system calls, where a turn
        of the read loop took a dozen and reserved window room."""
        delay = min(self.shipper.cfg.poll_interval, self.tailer.pin_check_seconds())
        settled = self._settled()
        if settled is None:
            await asyncio.sleep(delay)
            self._wake.clear()
            return
        sleeper, watched = settled
        # One Event per source: events coalesce while it sleeps.
        if watched:
            sweep, period = self.shipper.idle_sweep, max(delay, IDLE_CEILING_SECONDS)
        else:
            sweep, period = self.shipper.poll_sweep, delay
        sweep.sleep(self._wake, sleeper, period)
        try:
            await self._wake.wait()
        finally:
            sweep.woke(self._wake)
        if watched:
            # Woken by a write (or the sweep found the file changed): look at once after a
            # quiet spell, but not more often than polling would -- a file written line by
            # line is read in batches, as before, not a turn (and a Forward message) per write.
            now = time.monotonic()
            rest = self._last_event + delay - now
            if rest > 0 and not (self.stopping or self.finishing or self.drain_deleted):
                await asyncio.sleep(rest)
            self._last_event = max(now, self._last_event + delay)
        self._wake.clear()  # what woke it happened before the next read, which sees it

    def _settled(self) -> tuple[Sleeper, bool] | None:
        """The file the reader may sleep on until it changes, as last seen, and whether it is
        watched with inotify (else it is looked at every ``--poll-interval``); None to take
        another turn after ``--poll-interval``. It may sleep when the path still names its
        live file (after a rename, nothing tells us when the next file appears), and nothing
        time-driven is pending -- in the tailer (:meth:`Tailer.settled`), or because the
        source is ending, runs ``--once`` (it ends at its bound, it never idles), or other
        sources wait for a descriptor (idle files are closed after PARK_IDLE_SECONDS)."""
        live = self.tailer.settled()
        if live is None:
            self._unwatch()
            return None
        watched = self._watch(live)
        if watched is None:
            return None
        if self.finishing or self.stopping or self.drain_deleted or self.shipper.cfg.once:
            return None
        if fd_budget.waiting_sources():
            return None
        try:
            st = os.stat(self.spec.path)
            # Taken before the read that found nothing new (Tailer._rewritten): a change after
            # it, which an event may not report, is the sweep's to see.
            seen = live.found_ours or stamp(os.fstat(live.fd))
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (live.dev, live.ino):
            return None
        key, registry = self.spec.key, self.shipper.registry
        named = (live.dev, live.ino)
        refused = self._unwatchable  # offered to the watcher again at its time
        until = refused[2] if refused and refused[:2] == named else math.inf
        sleeper = Sleeper(
            live.fd,
            seen,
            self.spec.path,
            named,
            lambda at: registry.note_followed(key, at),
            until if telling(seen) else -math.inf,
        )
        return sleeper, watched

    def _watch(self, live: Cursor) -> bool | None:
        """Whether inotify watches the live file (False: it is polled: no inotify, the watch
        refused); None when it was watched just now -- a write before the watch existed woke
        nobody: read once more -- or the kernel dropped the watch (watched again next turn)."""
        watcher = self.shipper.file_watcher
        if watcher is None:
            return False
        if self._watched is None or self._watched[:2] != (live.dev, live.ino):
            self._unwatch()
            refused = self._unwatchable
            now = time.monotonic()
            if refused and refused[:2] == (live.dev, live.ino) and now < refused[2]:
                return False
            wd = watcher.watch(live.fd, live.dev, self._wake)
            if wd is None:
                self._unwatchable = (live.dev, live.ino, now + WATCH_RETRY_SECONDS)
                return False
            self._watched = (live.dev, live.ino, wd)
            self._unwatchable = None
            return None
        if not watcher.watching(self._watched[2], self._wake):
            self._watched = None
            return None
        return True

    def _unwatch(self) -> None:
        if self._watched is None:
            return
        watcher = self.shipper.file_watcher
        if watcher is not None:
            watcher.unwatch(self._watched[2], self._wake)
        self._watched = None

    async def _blocking(self, aw: Awaitable[None], waits: bool) -> None:
        """Await something that may wait for acks, with rotations watched meanwhile when it
        ``waits`` (known beforehand: an idle source's turns must not wake its pin loop)."""
        if not waits:
            await aw
            return
        self._waiting.set()
        self._active.set()
        try:
            await aw
        finally:
            self._waiting.clear()

    def _next_batch(self, one_chunk: bool = False) -> Batch | None:
        """The next batch of one file's lines; with ``one_chunk`` only what the tailer's next
        read gives (at a shutdown: the open records, no line read after them)."""
        cfg = self.shipper.cfg
        lines = Lines()
        cursor = None
        resume = 0
        nread = 0
        save_first = False
        # However large --batch-lines and --batch-bytes, no message passes the 4 MiB every
        # aggregator takes: one over an aggregator's limit would be resent forever.
        room = WireRoom(body_room(self.spec.tag, cfg.compress), self._record_bytes)
        while len(lines) < cfg.batch_lines and lines.nbytes < cfg.batch_bytes and room.left > 0:
            try:
                # One file per batch (see Tailer.read): the batch's source id and the
                # checkpoint its ack advances are that file's.
                chunk = self.tailer.read(
                    cfg.batch_lines - len(lines),
                    cfg.batch_bytes - lines.nbytes,
                    of=cursor,
                    room=room,
                )
            except OSError:
                if cursor is None:
                    raise
                break  # ship what was read; the error comes back on the next call
            if chunk is None:
                break
            cursor = chunk.cursor
            resume = chunk.resume
            nread += chunk.nread
            save_first = save_first or chunk.save_first
            if len(lines) == 0:
                lines = chunk.lines
            else:
                lines.extend(chunk.lines)
            if one_chunk:
                break
        if cursor is None:
            return None
        cursor.outstanding += 1
        m = self.shipper.metrics
        svc = self.spec.service
        n = len(lines)
        m.lines_read.labels(svc).inc(n)
        m.bytes_read.labels(svc).inc(nread)
        if lines.truncated:
            m.truncated.labels(svc).inc(lines.truncated)
        if lines.invalid_utf8:
            m.invalid_utf8.labels(svc).inc(lines.invalid_utf8)
        if lines.malformed:
            m.malformed.labels(svc).inc(lines.malformed)
        if lines.bad_times:
            m.bad_times.labels(svc).inc(lines.bad_times)
            self._warn_bad_times()
        if lines.multiline_joined:
            m.multiline_joined.labels(svc).inc(lines.multiline_joined)
        if lines.multiline_cut:
            m.multiline_cut.labels(svc).inc(lines.multiline_cut)
        if lines.cuts_dropped:
            m.cuts_dropped.labels(svc).inc(lines.cuts_dropped)
        payload = b""
        chunk_id = ""
        if n:
            chunk_id = wire.new_chunk_id()
            body = lines.encode(self._constants(cursor))
            payload = encode_message(self.spec.tag, body, n, chunk_id, cfg.compress)
        return Batch(
            tag=self.spec.tag,
            payload=payload,
            chunk=chunk_id,
            lines=n,
            nbytes=max(len(payload), 1),
            resume=resume,
            last_offset=lines.offsets[-1] if n else 0,
            first_offset=lines.offsets[0] if n else 0,
            cursor=cursor,
            nread=nread,
            save_first=save_first,
        )

    def _constants(self, cursor: Cursor) -> dict[str, Any]:
        """The keys every record of ``cursor``'s file carries."""
        return record_constants(
            self.spec.service,
            self.spec.container_id,
            self.spec.container_name,
            self.shipper.cfg.hostname,
            self.spec.image,
            cursor.source_id,
            self.spec.format_hint,
        )

    def _record_bytes(self, cursor: Cursor) -> int:
        """:attr:`WireRoom.per_record` of ``cursor``'s file (its source id is the one key that
        differs between files), computed once per file."""
        known = self._per_record
        if known is None or known[0] != cursor.source_id:
            known = self._per_record = cursor.source_id, record_bytes(self._constants(cursor))
        return known[1]

    def _warn_bad_times(self) -> None:
        """Say once per source that lines went out stamped with their read time."""
        if self._times_warned:
            return
        self._times_warned = True
        log.warning(
            "lines whose runtime time does not parse or is before 1970 or from 2106-02-07 "
            "(outside what the Forward protocol's EventTime carries) are shipped with the time "
            "they were read; their own time text stays in the record's 'time' key (said once "
            "per source; logq_shipper_bad_time_lines_total counts them) key=%s service=%s",
            self.spec.key,
            self.spec.service,
        )

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        m = self.shipper.metrics
        client = self.shipper.client
        affinity: str | None = None
        """The source id (file) of the last batch: a batch of another file means that one is
        done (batches go out in file order), and so is the last one when the source ends --
        their endpoint rankings go (see ForwardClient.forget)."""
        try:
            while True:
                batch = await self.queue.get()
                if batch is None:
                    return
                if affinity != batch.cursor.source_id:
                    if affinity is not None:
                        client.forget(affinity)
                    affinity = batch.cursor.source_id
                try:
                    await self._send(batch, m)
                except HeldAtStop:
                    await self._drop_at_stop()
                    return
                finally:
                    self.queue.task_done()  # for the reader's _until_sent
        finally:
            if affinity is not None:
                client.forget(affinity)

    async def _drop_at_stop(self) -> None:
        """The shipper stops while a batch of a file it has open waits for the aggregator
        names (see :class:`~shipper.sender.HeldAtStop` and :meth:`_send`): it and those read
        after it go nowhere (a batch must not overtake it), their lines read again at the
        next start; the reader ends."""
        log.info(
            "stopped while its batch waited for the aggregator names; its lines are read again "
            "at the next start key=%s",
            self.spec.key,
        )
        while (batch := await self.queue.get()) is not None:
            await self.shipper.window.release(batch.nbytes)
            self.queue.task_done()

    async def _deliver(self, batch: Batch) -> Endpoint:
        """Send ``batch`` until acknowledged; where it went. At a stop while it waits for the
        aggregator names (:class:`~shipper.sender.HeldAtStop`): raised again when its file is
        open (the next start reads these lines again), else sent at once -- its file is let
        go (deleted, or renamed away and read) or is deleted and read to its end now: the
        next start may not find these lines, better stored twice by the first choice than
        lost.

        While it waits for the names, the batch is out of the window (:class:`Window`), back
        in once it is sent or given up."""
        waits = StepAside(self.shipper.window, batch.nbytes)
        deliver = functools.partial(
            self.shipper.client.deliver,
            batch.payload,
            batch.chunk,
            affinity=batch.cursor.source_id,
            offsets=(batch.first_offset, batch.last_offset),
            on_hold=waits,
        )
        try:
            try:
                return await deliver()
            except HeldAtStop:
                if not (self.drain_deleted or batch.cursor.closed):
                    raise
                await waits(False)
                return await deliver(hold=False)
        finally:
            await waits(False)  # _send releases its bytes from the window

    async def _send(self, batch: Batch, m: Metrics) -> None:
        """Deliver one batch, then advance and persist its checkpoint."""
        if batch.save_first:
            # A flushed split line's cut must survive a crash before its record is sent.
            await self.shipper.checkpoint_saved(self.shipper.checkpoint_changed())
        sid = batch.cursor.source_id
        try:
            if batch.payload:
                sent_to = await self._deliver(batch)
                if self._queued is not None and self._queued[0] == sid:
                    # The next batch is read already: where this one went (a failover), the
                    # placement reaches its lines from now on, saved with this ack's
                    # checkpoint below -- not in a write of its own before it is sent.
                    self.shipper.registry.reach(sid, sent_to.hash_key, self._queued[1])
        finally:
            await self.shipper.window.release(batch.nbytes)
        self.tailer.commit(batch.cursor, batch.resume, batch.last_offset)
        m.lines_acked.labels(self.spec.service).inc(batch.lines)
        self.shipper.lines_acked += batch.lines
        m.bytes_acked.labels(self.spec.service).inc(batch.nread)
        # The next batch goes out only once this ack's checkpoint is on disk: after a crash
        # at most one batch (acked or not) is sent again (a read cut into several batches is
        # read again, its acknowledged lines dropped by their offsets: Tailer._fit).
        await self.shipper.checkpoint_saved(self.shipper.checkpoint_changed())
