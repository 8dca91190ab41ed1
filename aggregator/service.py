"""``logq-aggregator``: the service lifecycle (serve, flush, shut down cleanly).

The command line (serve, ``compact``, ``drain``) is :mod:`aggregator.commands`. Serving:

1. lock ``--buffer-dir`` (a second aggregator on it exits 1 before it binds any port), then
   serve ``--metrics-listen``: ``/metrics`` answers from here on (liveness), ``/healthz`` says
   ``starting: ...`` (503, with the progress) until step 3;
2. open the buffer; refuse (exit 2) a buffer dir whose node id a live process uses, a copy
   of a running node's (twins.py); read the chunk ids in the segments left by a previous run
   (seconds per GiB: the reason /metrics comes first); those segments are flushed first once
   serving (replay, minus the lines other aggregators committed meanwhile, see ledger.py);
3. listen (one ``listening on HOST:PORT`` line on stderr once the socket is bound);
4. every ``--flush-interval`` seconds, or when the active segment reaches its size, seal it and
   flush sealed segments in order; a failed flush (S3 down) is retried with capped exponential
   backoff while the buffer keeps the data and, once full (``--buffer-limit-bytes``, or its
   volume nearly full: see diskguard.py), withholds acks;
5. on SIGTERM/SIGINT: before step 3 is done (a large buffer takes a while to read), stop
   starting: release the lock, leave the buffer as found, one line, exit 0 (nothing was
   acknowledged in this run); once serving: ``/healthz`` says ``stopping: ...`` (503) from the
   request until the exit, stop accepting, let connections finish acking what they sent, seal,
   flush everything acknowledged, exit 0 (exit 1 if the warehouse still
   refuses the data after ``SHUTDOWN_FLUSH_SECONDS``: it stays in the buffer and is written at
   the next start); a second signal exits 1 at once (the buffer holds everything acknowledged).
   A stop while the replay waits for its peers ends the wait and exits 1, the replay left in
   the buffer for the next start (see :meth:`_replay_left_for_next_start`).
   SIGHUP is no reload: a warning, and the aggregator goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aggregator import listen
from aggregator.allowed import parse_networks
from aggregator.buffer import SPILL_DIR, Segment, unusable_dir_error
from aggregator.catalog import Catalog
from aggregator.compact_loop import PeriodicCompaction
from aggregator.config import Settings, listening_text, split_host_port, user_map
from aggregator.dedup import OFFSETS_NAME, OffsetState
from aggregator.diskguard import GuardedBuffer, warn_if_in_memory
from aggregator.envoy import BUILTIN_FORMATS, EnvoyFormat, compile_format
from aggregator.flusher import Flusher, FlushResult
from aggregator.folders_apart import check_folders_apart
from aggregator.ledger import LEDGER_DIR, NODES_DIR, Committed, Ledger
from aggregator.metrics import Metrics, MetricsServer
from aggregator.open_files import fd_limit_hint
from aggregator.parse_warnings import ParseFailureWarnings
from aggregator.server import ForwardServer, ServerLimits, bound_addresses
from aggregator.slow_flush import WARNING_SECONDS, slow_flush_text
from aggregator.state_files import SEGMENT_SUFFIX
from aggregator.stop_budget import StopWatchdog, WorkerCalls, connections_grace
from aggregator.throttle import Throttle
from aggregator.tls_files import TlsFiles
from aggregator.twins import TwinRunning, live_twin
from athena.ddl import outside_projection
from athena.warehouse import Warehouse, open_warehouse, os_path, resolve_uri
from shipper.logs import announce, announce_metrics

log = logging.getLogger("logq.aggregator")
T = TypeVar("T")

#: Rows outside the Athena projection are logged at most this often per table and service
#: (the counter counts them all).
CLOCK_WARNING_SECONDS = 600.0

SHUTDOWN_FLUSH_SECONDS = 60.0
#: A second stop request this soon after the first is taken as the same one, delivered twice.
STOP_REPEAT_IGNORED_SECONDS = 1.0
#: How long a stop waits for a DDL update under way (the DDL is rewritten at the next start).
CATALOG_STOP_SECONDS = 15.0
#: The end of ``--stop-timeout`` kept for the stop's last steps (sealing the buffer, the log
#: line saying what was abandoned) after the steps that wait on the warehouse are cut short;
#: at most this share of it.
STOP_RESERVE_SECONDS = 3.0
STOP_RESERVE_SHARE = 0.2
#: How often the DDL is checked against the services in the warehouse (see Catalog.resync).
CATALOG_RESYNC_SECONDS = 300.0
#: How long a replay waits for live peers to commit what they acknowledged before it began.
REPLAY_PEER_WAIT_SECONDS = 60.0
#: How long ``drain`` keeps retrying a warehouse that refuses writes before giving up.
DRAIN_SECONDS = 300.0
#: Failed flushes of one segment in a row with the same data error (not OSError: S3, disk)
#: before it is set aside (Buffer.quarantine) so that the segments behind it flow again.
QUARANTINE_AFTER = 3


def _hang_up() -> None:
    """SIGHUP: what Fluentd and Fluent Bit users send to reload. There is no reload here, so
    say so and go on; it was the default action, an exit that left every acknowledged record
    for the next start to write."""
    log.warning(
        "SIGHUP received: logq-aggregator does not reload its configuration and keeps "
        "running; restart it (SIGTERM, which writes out everything acknowledged) to apply a "
        "changed configuration"
    )


class ReplayPostponed(Exception):
    """A replay's wait for its peers ended without them committing, when replaying anyway is not
    wanted: a stop during the wait (the replay is left in the buffer for the next start). Not
    a flush error: nothing is counted, retried or set aside."""


class StartInterrupted(Exception):
    """A stop was requested while the aggregator was still starting: it ends the start-up
    (raised between its steps, and between the segments of the buffer read)."""


def _open_warehouse(uri: str | None) -> Warehouse:
    """The warehouse, a local one's folder made and found writable. A folder that cannot be
    made or written fails the start (exit 1) with one line naming ``--warehouse``, the folder
    and what to do: the bare ``[Errno 20] Not a directory: ...`` named neither the setting nor
    a remedy, and a folder that exists but cannot be written (a read-only mount, another
    user's) was found out only by the first flush, after the start had acknowledged data,
    which then failed in a loop of WARNINGs until the buffer filled."""
    try:
        warehouse = open_warehouse(uri, create=True)
    except OSError as exc:
        folder = Path(exc.filename) if exc.filename else Path(resolve_uri(uri))
        raise unusable_dir_error(folder, exc, "--warehouse", any_cause=True) from exc
    if not warehouse.is_s3:
        folder = Path(os_path(warehouse.base))
        try:
            _check_writable(folder)
        except OSError as exc:
            raise unusable_dir_error(folder, exc, "--warehouse", any_cause=True) from exc
    return warehouse


#: The file made and removed in a local warehouse's folder at start to find it writable.
WRITE_CHECK_NAME = ".logq-write-check"


def _check_writable(folder: Path) -> None:
    """Make and remove a file in ``folder``: OSError if the file system or its permissions
    refuse (what a flush would meet; ``os.access`` answers for the real user, not the
    effective one, and not for every file system's rules)."""
    probe = folder / f"{WRITE_CHECK_NAME}-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    probe.unlink()


def envoy_formats(settings: Settings) -> tuple[EnvoyFormat, ...]:
    """The configured ``--envoy-format``s, then the built-in ones: a configured format is tried
    first, so one that differs from a built-in format only in its operators (Envoy's default
    with ``%RESPONSE_DURATION%`` for ``%DURATION%``, ``%REQ(X-REAL-IP)%`` in the
    ``X-Forwarded-For`` place) takes its lines; the built-in one would match them too and store
    the other fields' values in its columns. (The order within each round of attempts:
    :func:`aggregator.envoy.attempts_for`.) Lines in a built-in format cost one refused split
    attempt more, where a format is configured."""
    return tuple(compile_format(f) for f in settings.envoy_formats) + BUILTIN_FORMATS


def seal_wait(interval: float, last_seal: float, now: float) -> float:
    """Seconds until the next seal: ``interval`` after the last one (monotonic times), at once
    when the flush since then took longer than that."""
    return max(0.0, interval - (now - last_seal))


class Aggregator:
    """One running aggregator: buffer, Forward server, flush loop, metrics, catalog."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.formats = envoy_formats(settings)  # bad formats fail before anything is created
        self.metrics = Metrics()
        self.metrics.unhealthy_after = settings.unhealthy_after
        check_folders_apart(settings.buffer_dir, settings.warehouse)  # before either is made
        self.warehouse = _open_warehouse(settings.warehouse)
        self.buffer = GuardedBuffer(
            settings.buffer_dir,
            settings.segment_bytes,
            settings.buffer_limit_bytes,
            self._disk_changed,
        )
        self.catalog = Catalog(self.warehouse, settings)
        self._flush_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._clock: Callable[[], float] = time.monotonic  # tests move it
        self._stop_requested_at = 0.0
        self._stop_status: int | None = None
        """The stop's exit status once its flush is over (then only worker threads are waited
        for, :meth:`_leave_workers`): a second stop request exits with it."""
        self._flush_lock = asyncio.Lock()
        self._size_seal: asyncio.Task[None] | None = None
        self._catalog_task: asyncio.Task[None] | None = None
        self._catalog_pending: set[str] = set()
        self._clock_warnings = Throttle(
            CLOCK_WARNING_SECONDS,
            what="tables and services with rows outside the partition projection",
            logger=log,
        )
        """Per (table, service): rows outside the Athena projection were logged lately."""
        self._slow_flush_warnings = Throttle(WARNING_SECONDS, what="slow flushes", logger=log)
        """One key: a flush longer than --flush-interval was logged lately."""
        self._parse_warnings = ParseFailureWarnings()
        self._catalog_ready = False
        self.server: ForwardServer | None = None
        self.metrics_server: MetricsServer | None = None
        self._addresses: dict[str, list[listen.Address]] = {}
        """The addresses of --listen and --metrics-listen, by flag, resolved once at start-up
        (:meth:`_check_listen_hosts`) and bound as they are."""
        self.flusher: Flusher | None = None
        self.ledger: Ledger | None = None
        self.port = 0
        self._replay: set[int] = set()
        """Segments left by a previous run: checked against the ledger when flushed."""
        self._replay_since = 0.0
        self._committed: Committed | None = None
        self._replay_wait_ends: float | None = None
        """When (monotonic) the replay's wait for its peers times out and it replays anyway:
        set by the first wait, kept by the waits of the retries after a failed poll (each one
        began a full wait again: intermittent read errors put the timeout off for ever)."""
        self._stop_wait = threading.Event()
        """Set by a stop: ends a replay's wait for its peers (a worker thread waits on it)."""
        self._quarantined_here = 0
        """Segments this process set aside (drain reports them and exits 1)."""
        self._forgotten = False
        """Whether the stop or the drain removed the node's heartbeat from the ledger (the
        drain's last step, after every flush and set-aside: :meth:`_timed_out_status`; a stop
        cut short before it says so: :meth:`_heartbeat_note`)."""
        self._cycle_error = ""
        """The last error of a flush cycle (logged with its traceback when it changes)."""
        self._exit_now: Callable[[int], object] = os._exit
        """How a second stop request, or a stop past ``--stop-timeout``, ends the process
        (tests replace it)."""
        self._calls = WorkerCalls()
        """The blocking calls under way in worker threads (what a stop out of time abandons)."""
        self._stop_deadline: float | None = None
        """When (monotonic) the stop under way must have ended: ``--stop-timeout`` after it
        was asked for."""
        self._watchdog = StopWatchdog(
            settings.stop_timeout,
            self._stop_timed_out,
            lambda code: self._exit_now(code),
            status=self._timed_out_status,
        )
        self._draining = False
        """Run as ``logq-aggregator drain`` (what a refused copy is told to do differs)."""

    # --- lifecycle ------------------------------------------------------------------------

    def _open_buffer(self) -> None:
        """Open the buffer, its offsets and the ledger, and start the buffer's fsync task."""
        self._read_buffer_dir()
        self.buffer.start()

    def _read_buffer_dir(self) -> None:
        """The blocking part of :meth:`_open_buffer` (a worker thread may run it: it touches
        no event loop object)."""
        try:
            replay = self.buffer.open(self.settings.node_id)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OSError(
                exc.errno,
                f"--buffer-dir {self.settings.buffer_dir} is full ({exc.strerror}): not even its "
                f"small state files can be written. Its {SEGMENT_SUFFIX} files hold acknowledged "
                "data, do not delete them: give the volume more room (or move the directory to a "
                "bigger one) and start again; the segments are then written to the warehouse",
            ) from exc
        if not self._draining:  # a drain takes no data: its limit and volume do not matter
            self.buffer.check_limit_fits()
            warn_if_in_memory(self.buffer.dir)
        offsets = OffsetState(Path(self.settings.buffer_dir) / OFFSETS_NAME).load()
        self.metrics.sources.set_function(lambda: len(offsets))
        self.metrics.sources_evicted = lambda: offsets.evicted
        compacts = self.settings.compact_interval > 0
        self.ledger = Ledger(self.warehouse, self.buffer.node_id, compacts=compacts)
        self._refuse_a_copy(self.ledger)
        self.flusher = Flusher(
            self.warehouse,
            offsets,
            self.buffer.node_id,
            self.formats,
            Path(self.settings.buffer_dir) / SPILL_DIR,
            self.ledger,
        )
        self._replay = {s.seq for s in replay}
        self._replay_since = time.time()
        self._publish_replay_mark()
        if replay:
            log.info("replaying %d buffer segments left by the previous run", len(replay))

    def _refuse_a_copy(self, ledger: Ledger) -> None:
        """Raise :class:`TwinRunning` (exit 2) when another live process uses this node id:
        this --buffer-dir is a copy of a running node's (twins.py). Before anything is written
        under the node id (the replay mark, a heartbeat, objects). A stop during the check's
        wait ends the start-up (exit 0). A warehouse that cannot be read skips the check with
        a WARNING: the start must not depend on it (the flushes retry it)."""
        phase = self.metrics.starting
        self.metrics.starting = (
            f"starting: checking that no running aggregator uses node id {ledger.node_id}"
        )
        try:
            twin = live_twin(ledger, self._stop_wait)
        except OSError as exc:
            log.warning(
                "could not read the heartbeat of node %s to check that no other process runs "
                "under it (%s); starting without that check",
                ledger.node_id,
                exc,
            )
            return
        finally:
            self.metrics.starting = phase
        self._check_stop()
        if twin is not None:
            beat, age = twin
            raise TwinRunning(
                ledger.node_id, self.settings.buffer_dir, beat.process, age, self._draining
            )

    def _publish_replay_mark(self) -> None:
        """At start-up, before serving: publish the replay mark (ledger.py) at once, so that a
        peer reading the ledger from now on sees this replay and waits for it; with no replay,
        remove a mark an earlier run left (its crash mid-replay, then an emptied buffer), which
        would otherwise order this live node among the replays."""
        assert self.ledger is not None
        if not self._replay:
            self.ledger.replay_done()
            return
        try:
            self.ledger.announce_replay(self._replay_since, self.settings.flush_interval)
        except OSError as exc:  # written again before the replay reads the ledger
            log.warning("could not publish the replay mark at start-up: %s", exc)

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            self._watchdog.cancel()

    async def _run(self) -> int:
        # The lock first (cheap): a second aggregator on this buffer dir exits with that
        # reason and never holds the metrics port. Then /metrics and /healthz, so that an
        # orchestrator's liveness check passes while a large buffer is read (seconds per GiB).
        # The signal handlers come before that read: a stop during it ends the start-up cleanly
        # (exit 0) instead of killing the process with the default action.
        self.buffer.lock()
        self._install_signals()
        started = False
        self.metrics.starting = "starting: opening the buffer (--buffer-dir)"
        try:
            await self._check_listen_hosts()
            self._check_stop()
            await self._start_metrics()
            self._check_stop()
            await asyncio.to_thread(self._read_buffer_dir)
            self._check_stop()
            self.buffer.start()
            started = True
            self.metrics.buffer_bytes.set(self.buffer.total_bytes)
            await self._start_serving()
        except BaseException as exc:
            # A port in use, a bad certificate, a stop...: leave the buffer as found (unlocked,
            # no empty segment), for a second try in this process as for the next start.
            phase = self.metrics.starting
            if self.server is not None:
                await self.server.stop(grace=0)
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if started:
                await self.buffer.close()
            else:
                self.buffer.unlock()
            if self._replay and self.ledger is not None:  # the next start publishes it again
                await asyncio.to_thread(self.ledger.replay_done)
            if not isinstance(exc, StartInterrupted):
                raise
            log.info(
                "stopped during start-up (%s): nothing was acknowledged in this run; the "
                "buffered data stays in %s and is written at the next start",
                (phase or "starting").removeprefix("starting: ").split(";")[0],
                self.settings.buffer_dir,
            )
            return 0
        flush_task = asyncio.create_task(self._flush_loop(), name="flush-loop")
        compact_task = asyncio.create_task(self._compact_loop(), name="compact-loop")
        resync_task = asyncio.create_task(self._catalog_resync_loop(), name="catalog-resync")
        await self._stopping.wait()
        resync_task.cancel()
        code = await self._shutdown(flush_task, compact_task)
        self._stop_status = code
        return await self._leave_workers(code)

    def _check_stop(self) -> None:
        """Raise :class:`StartInterrupted` if a stop was requested (while starting). Also called
        from the thread that reads the buffer: ``is_set`` only reads a flag."""
        if self._stopping.is_set():
            raise StartInterrupted

    async def _check_listen_hosts(self) -> None:
        """Resolve the hosts of --listen and --metrics-listen before the buffer is read: a name
        that does not resolve failed the start only once the Forward port was opened, after the
        segments left by the previous run were read (seconds per GiB). Their addresses are kept
        for the binds: resolved again there, after that read, a name could fail for now."""
        settings = self.settings
        for flag, address in (
            ("--listen", settings.listen),
            ("--metrics-listen", settings.metrics_listen),
        ):
            if address:
                host, port = split_host_port(address, flag)
                self._addresses[flag] = await listen.resolved(flag, address, host, port)

    async def _start_metrics(self) -> None:
        """``/metrics`` and ``/healthz`` on ``--metrics-listen`` (if set), listening."""
        if not self.settings.metrics_listen:
            return
        mhost, mport = split_host_port(self.settings.metrics_listen, "--metrics-listen")
        self.metrics_server = MetricsServer(self.metrics, mhost, mport)
        try:
            await self.metrics_server.start(self._addresses.get("--metrics-listen"))
        except OSError as exc:
            address = self.settings.metrics_listen
            raise listen.listen_failure("--metrics-listen", address, mhost, exc) from exc
        # Every address listened on, IPv4 first, as ``listening on`` names them: ``:PORT``
        # (IPv4 and IPv6, README) read ``0.0.0.0:PORT``, which the README says is IPv4 only.
        announce_metrics(bound_addresses(self.metrics_server.addresses()))

    async def _start_serving(self) -> None:
        """The Forward server, listening once the chunk ids of the previous run are read."""
        s = self.settings
        tls = (
            TlsFiles(s.tls_cert, s.tls_key, s.tls_client_ca, key_password=s.tls_key_password)
            if s.tls_cert and s.tls_key
            else None
        )
        self.server = ForwardServer(
            self.buffer,
            self.metrics,
            ServerLimits(
                self.settings.max_frame_bytes,
                self.settings.max_connections,
                self.settings.idle_timeout,
                self.settings.max_message_entries,
                max_inflight_bytes=self.settings.max_inflight_bytes,
            ),
            shared_key=self.settings.shared_key,
            users=user_map(self.settings),
            tls_files=tls,
            on_append=self._on_append,
            buffer_compression=self.settings.buffer_compression,
            allowed_networks=parse_networks(self.settings.allow_network),
        )
        await self._restore_chunks(self.server)
        self._check_stop()
        self.metrics.starting = "starting: opening the Forward port (--listen)"
        host, port = split_host_port(self.settings.listen, "--listen")
        try:
            _, self.port = await self.server.start(host, port, self._addresses.get("--listen"))
        except OSError as exc:
            raise listen.listen_failure("--listen", self.settings.listen, host, exc) from exc
        self.metrics.starting = None  # ready: /healthz reports on flushes and disk from now on
        shown = listening_text(self.server.listening)  # ``:PORT``: IPv4 and IPv6
        announce(f"listening on {shown}")
        log.info(
            "aggregator %s: warehouse %s, buffer %s",
            self.buffer.node_id,
            self.warehouse.uri,
            self.settings.buffer_dir,
        )

    async def _restore_chunks(self, server: ForwardServer) -> None:
        """Remember the chunk ids made durable before this start (chunks.py): a client whose
        ack the previous run's death cut off resends to this one, which must not store it
        again. Done before listening: resends come first. /healthz shows the progress."""
        try:
            keys = await asyncio.to_thread(self.buffer.recent_chunks, self._reading_progress())
        except OSError as exc:
            log.warning(
                "could not read the chunk ids of the previous run (%s): resends of messages "
                "it buffered without acking them will be stored again",
                exc,
            )
            return
        server.chunks.restore(keys)
        if keys:
            log.info("remembering %d chunk ids buffered before this start", len(keys))

    def _reading_progress(self) -> Callable[[int, int], None]:
        """Sets the /healthz ``starting: ...`` reason while the segments left by the previous
        run are read (called from the reading thread: one attribute store, atomic)."""
        segments = len(self.buffer.sealed())
        total = sum(s.size for s in self.buffer.sealed())

        def progress(read: int, read_bytes: int) -> None:
            self._check_stop()  # ends the read between two segments
            self.metrics.starting = (
                f"starting: reading the {segments} buffer segments left by the previous run: "
                f"{read} done, {read_bytes / 1e6:.0f} of {total / 1e6:.0f} MB; the Forward port "
                "opens after the last"
            )

        if segments:
            progress(0, 0)
        else:
            self.metrics.starting = "starting: reading the chunk ids of the last flushes"
        return progress

    async def drain(self) -> int:
        """Write out every segment of the buffer dir, then exit (no server, no new data).

        For an aggregator that is gone for good: attach its buffer disk anywhere and drain it
        into the warehouse. Lines that shippers resent to other aggregators after it died are
        skipped (ledger.py), so nothing is stored twice.
        """
        try:
            return await self._drain()
        finally:
            self._watchdog.cancel()

    async def _drain(self) -> int:
        self._draining = True
        self._open_buffer()
        self._install_signals()
        await self.buffer.close()
        if not self._replay:
            log.info("drain: %s holds no buffered data", self.settings.buffer_dir)
        ok = await self._flush_sealed(deadline=time.monotonic() + DRAIN_SECONDS)
        if self._catalog_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._catalog_task, timeout=CATALOG_STOP_SECONDS)
        if not ok:
            log.error(
                "drain: %s refused the data for %.0fs; it is still safe in %s, run drain again",
                self.warehouse.uri,
                DRAIN_SECONDS,
                self.settings.buffer_dir,
            )
            return 1
        assert self.ledger is not None
        await asyncio.to_thread(self.ledger.forget)
        self._forgotten = True
        if self._quarantined_here:
            log.error(
                "drain: %d segments failed with a data error and were moved to %s, not "
                "written; the rest is in %s",
                self._quarantined_here,
                self.buffer.quarantine_dir,
                self.warehouse.uri,
            )
            return 1
        log.info("drained %s into %s", self.settings.buffer_dir, self.warehouse.uri)
        return 0

    def stop(self) -> None:
        if self._stop_deadline is None:  # the stop's budget runs from the first request
            self._stop_deadline = time.monotonic() + self.settings.stop_timeout
            self._watchdog.start()
        if self.metrics.stopping is None:  # /healthz 503 from now until the exit
            self.metrics.stopping = (
                "stopping: no new connections or data; flushing what was acknowledged"
            )
        self._stopping.set()
        self._stop_wait.set()  # a replay waiting for its peers stops waiting
        self._flush_now.set()  # wake the flush loop so that it returns

    def _stop_requested(self) -> None:
        """SIGTERM/SIGINT: a clean stop; a second one exits at once, as people expect of a
        second Ctrl-C (a stop can wait up to a minute for a warehouse that refuses data). A
        repeat within :data:`STOP_REPEAT_IGNORED_SECONDS` is the same request delivered twice
        (a wrapper forwarding the signal its process group also got), not a second one."""
        now = self._clock()
        if not self._stopping.is_set():
            self._stop_requested_at = now
            starting = self.metrics.starting
            # In force before it is logged: the read of the buffer ends at its next segment
            # (stop() starts a thread, and the read went on meanwhile, to its end on a busy host).
            self.stop()
            if starting is not None:
                phase = starting.removeprefix("starting: ").split(";")[0]
                log.info("stop requested during start-up: ending it (%s)", phase)
            return
        if now - self._stop_requested_at < STOP_REPEAT_IGNORED_SECONDS:
            log.info("stop requested again at once: taken as the same request")
            return
        if self._stop_status is not None:  # the flush is over: nothing is cut short
            log.info(
                "stop requested again after the stop's flush: exiting now (status %d) without "
                "waiting for worker threads",
                self._stop_status,
            )
            self._flush_logs()
            self._exit_now(self._stop_status)
            return
        self._exit_at_once()

    def _exit_at_once(self) -> None:
        """Exit 1 without waiting for the flush under way. Nothing acknowledged is lost: every
        acked record is fsync'd in the buffer, which is only emptied by a committed flush (as
        after ``kill -9``: the next start writes it, minus what was already committed)."""
        log.error(
            "second stop request: exiting now without finishing the flush; the data is safe in "
            "%s and will be written at the next start",
            self.settings.buffer_dir,
        )
        self._flush_logs()  # the line above must be out first
        self._exit_now(1)  # os._exit: a worker thread stuck in a write must not hold the exit

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = [(signal.SIGTERM, self._stop_requested), (signal.SIGINT, self._stop_requested)]
        if hasattr(signal, "SIGHUP"):  # not on Windows
            handlers.append((signal.SIGHUP, _hang_up))
        for sig, handler in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)

    async def _shutdown(
        self, flush_task: asyncio.Task[None], compact_task: asyncio.Task[None]
    ) -> int:
        """Stop taking data, flush what was acknowledged; 0 once it is all in the warehouse,
        else 1 with the line that says where the data is (a disk error included: the exit
        codes are a contract, and a bare errno said neither)."""
        log.info(
            "stopping: no new connections; flushing what was acknowledged (stop again to exit "
            "at once: the data then stays in %s)",
            self.settings.buffer_dir,
        )
        try:
            code = await self._stop_and_flush(flush_task, compact_task)
            return 1 if self.metrics.broken is not None else code  # restart after a bug
        except OSError as exc:
            log.error(
                "could not finish the stop (%s); the data is safe in %s and will be written at "
                "the next start",
                exc,
                self.settings.buffer_dir,
            )
            return 1

    async def _stop_and_flush(
        self, flush_task: asyncio.Task[None], compact_task: asyncio.Task[None]
    ) -> int:
        """The stop's steps, each cut short where ``--stop-timeout`` runs out
        (:meth:`_abandon_stop`)."""
        assert self.server is not None
        await self.server.stop(grace=connections_grace(self._stop_left()))
        compact_task.cancel()
        # Not cancelled: a flush running in a worker thread must finish before the final one
        # (within the stop's budget: one that has not returned then is left to the next start).
        _, pending = await asyncio.wait({compact_task, flush_task}, timeout=self._stop_left())
        try:
            await self.buffer.close()
        except OSError as exc:  # its fsync failed: the segment is sealed all the same
            log.error(
                "could not seal the last buffer segment (%s): flushing every sealed one; "
                "messages it did not cover were not acknowledged (their clients resend them)",
                exc,
            )
        if pending:
            return await self._abandon_stop()
        done, left = await self._within_stop(
            "the check of the replay's peers", self._replay_left_for_next_start
        )
        if not done:
            return await self._abandon_stop()
        if left:
            ok = True
        else:
            end = min(time.monotonic() + SHUTDOWN_FLUSH_SECONDS, self._stop_steps_end())
            flush = asyncio.ensure_future(self._flush_sealed(deadline=end))
            await asyncio.wait({flush}, timeout=self._stop_left())
            if not flush.done():
                return await self._abandon_stop()
            ok = flush.result()
        if self._replay and self.ledger is not None:  # the next start publishes a new mark
            done, _ = await self._within_stop("removing the replay mark", self.ledger.replay_done)
            if not done:
                return await self._abandon_stop(written=ok and not left)
        if self.flusher is not None:  # one offsets file for the next start (dedup.py)
            try:
                await asyncio.to_thread(self.flusher.offsets.close)
            except OSError as exc:  # the journal still holds every mark: nothing is lost
                log.warning("could not fold the offsets journal into %s: %s", OFFSETS_NAME, exc)
        if self._catalog_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._catalog_task, timeout=min(CATALOG_STOP_SECONDS, self._stop_left())
                )
        if self.metrics_server:
            await self.metrics_server.stop()
        if not ok:
            log.error(
                "could not write the buffer to %s before stopping; the data is safe in %s "
                "and will be written at the next start",
                self.warehouse.uri,
                self.settings.buffer_dir,
            )
            return 1
        if left:  # the heartbeat stays: the buffer is not empty (compaction waits for it)
            # Exit 1, not 0: exit 0 says the buffer is empty (DESIGN.md), and an operator may
            # then retire the volume.
            log.error(
                "stopped before the replay of the %d buffer segments left by the previous run: "
                "peers %s have not yet committed what they hold of it (replaying now could "
                "store their lines twice); the data is safe in %s and will be written at the "
                "next start (keep that volume)",
                len(self._replay),
                left,
                self.settings.buffer_dir,
            )
            return 1
        if self.ledger is not None:  # holds nothing now: replaying peers need not wait for it
            done, _ = await self._within_stop("removing the ledger heartbeat", self.ledger.forget)
            if not done:
                log.warning(
                    "stopped: every acknowledged record is in %s, but the ledger heartbeat of "
                    "node %s could not be removed within --stop-timeout (%gs)%s",
                    self.warehouse.uri,
                    self.ledger.node_id,
                    self.settings.stop_timeout,
                    self._heartbeat_note(),
                )
                return 0
            self._forgotten = True
        set_aside = self.buffer.quarantined()
        if set_aside:
            log.warning(
                "stopped: every acknowledged record is in %s, except %d quarantined segments "
                "in %s (a data error; after a fix: logq-aggregator drain --buffer-dir %s)",
                self.warehouse.uri,
                set_aside,
                self.buffer.quarantine_dir,
                self.buffer.quarantine_dir,
            )
            return 0
        log.info("stopped cleanly: every acknowledged record is in %s", self.warehouse.uri)
        return 0

    # --- the stop's budget (--stop-timeout) ----------------------------------------------------

    def _stop_steps_end(self) -> float:
        """When (monotonic) the stop's steps that wait on the warehouse are cut short: the end
        of ``--stop-timeout`` less a reserve for its last steps."""
        timeout = self.settings.stop_timeout
        deadline = self._stop_deadline
        if deadline is None:  # a stop not asked for through stop(): a test's own sequence
            deadline = self._stop_deadline = time.monotonic() + timeout
        return deadline - min(STOP_RESERVE_SECONDS, STOP_RESERVE_SHARE * timeout)

    def _stop_left(self) -> float:
        """Seconds left before :meth:`_stop_steps_end`."""
        return max(0.0, self._stop_steps_end() - time.monotonic())

    async def _within_stop(self, what: str, call: Callable[[], T]) -> tuple[bool, T | None]:
        """``call()`` in a worker thread, waited for until :meth:`_stop_steps_end`: (True, its
        result; its exception is raised), or (False, None) when it has not returned by then
        (it goes on in its thread, abandoned: :meth:`_leave_workers`)."""
        task = asyncio.ensure_future(self._calls.run(what, call))
        await asyncio.wait({task}, timeout=self._stop_left())
        if not task.done():
            return False, None
        return True, task.result()

    async def _abandon_stop(self, written: bool = False) -> int:
        """End a stop whose budget ran out waiting on the warehouse: exit 1 (0 if everything
        acknowledged was ``written`` already, or the buffer turns out written: closed, its
        directory holds no segment left, :meth:`_timed_out_status`), saying what was
        abandoned; the buffer, sealed, keeps every acknowledged record that was not written,
        for the next start."""
        running = "; ".join(self._calls.running()) or "nothing in a worker thread"
        if self.metrics_server:
            await self.metrics_server.stop()
        # What is held may come after the commits (a ledger heartbeat on a warehouse that
        # stopped answering after the flush): decided from the disk, as the watchdog does.
        if written or self._timed_out_status() == 0:
            log.warning(
                "stopped: every acknowledged record is in %s%s, but the stop ran out of "
                "--stop-timeout (%gs) waiting on it, abandoning: %s%s",
                self.warehouse.uri,
                self._set_aside_note(),
                self.settings.stop_timeout,
                running,
                self._heartbeat_note(),
            )
            return 0
        left = self.buffer.sealed()
        log.error(
            "the stop ran out of --stop-timeout (%gs) before the buffer was written to %s "
            "(a warehouse slow to answer, or more buffered than that time writes): %d buffer "
            "segments (%.1f MB) not written, abandoning: %s; the data is safe in %s and will be "
            "written at the next start",
            self.settings.stop_timeout,
            self.warehouse.uri,
            len(left),
            sum(s.size for s in left) / 1e6,
            running,
            self.settings.buffer_dir,
        )
        return 1

    async def _leave_workers(self, code: int) -> int:
        """After the stop: let the calls still under way in worker threads (a compaction pass,
        which ends at its next partition) return within ``--stop-timeout``, then end the
        process with ``code`` rather than wait for the rest (a process does not exit while a
        worker thread runs, and Python cannot stop one): a catalog update or a request to a
        warehouse that does not answer."""
        await self._calls.wait_idle(self._stop_steps_end())
        if not self._calls.running():
            return code
        log.warning(
            "exiting (status %d) without waiting for calls still under way in worker threads: %s",
            code,
            "; ".join(self._calls.running()),
        )
        self._flush_logs()
        self._exit_now(code)
        return code

    def _timed_out_status(self) -> int:
        """The exit status of a stop cut short at ``--stop-timeout`` (the watchdog's thread, or
        :meth:`_abandon_stop`), from durable state: 0 when the buffer is closed and its
        directory holds no segment left to write (the abandoned flush committed before), as
        the stop would have said; else 1. A bug seen in this run stays 1, as at the end of a
        stop in time; so does a drain that has not removed the node from the ledger yet (its
        last step: until then a segment may be in the middle of its move to the quarantine,
        not yet counted, and the node's heartbeat holds compaction back) or that set segments
        aside: exit 0 of a drain says the node is drained."""
        if self.metrics.broken is not None:
            return 1
        if self._draining and (self._quarantined_here or not self._forgotten):
            return 1
        try:
            return 0 if self.buffer.written_out() else 1
        except OSError:  # the directory cannot be listed: the data may still be there
            return 1

    def _set_aside_note(self) -> str:
        """``, except N quarantined segments in DIR`` when the buffer's quarantine holds any
        (a stop cut short that exits 0 says so, as one in time does), else ``""``."""
        try:
            set_aside = self.buffer.quarantined()
        except OSError:
            return ""
        if not set_aside:
            return ""
        return f", except {set_aside} quarantined segments in {self.buffer.quarantine_dir}"

    def _heartbeat_note(self) -> str:
        """What a stop that exits 0 without removing its ledger heartbeat leaves the operator
        (``""`` once it is removed, or without a ledger): the heartbeat, once stale, holds
        compaction and the ledger's expiry back on every aggregator (:func:`.ledger.
        compaction_blocker`: to them it is a node that stopped without writing out its
        buffer) until this node starts again or a drain of its (written) buffer removes it."""
        if self.ledger is None or self._forgotten:
            return ""
        beat = self.warehouse.path(LEDGER_DIR, NODES_DIR, f"{self.ledger.node_id}.json")
        if self.warehouse.is_s3:
            beat = f"s3://{beat}"
        return (
            f"; its ledger heartbeat {beat} stays: once it is stale, compaction and the "
            f"ledger's expiry wait for node {self.ledger.node_id} on every aggregator until it "
            f"starts again or `logq-aggregator drain --buffer-dir {self.settings.buffer_dir}` "
            "removes it (the buffer is written: that drain ends at once; if the volume is "
            "gone, delete that file)"
        )

    def _stop_timed_out(self, code: int = 1) -> None:
        """The watchdog's word on a stop still held at ``--stop-timeout`` (in its own thread),
        before it exits with ``code`` (:meth:`_timed_out_status`). Every acknowledged record
        is fsync'd in the buffer before its ack and the buffer is emptied only by committed
        flushes: as after ``kill -9``, the next start (or drain) writes what was not written."""
        running = "; ".join(self._calls.running()) or "a step on the event loop"
        if code == 0:
            log.warning(
                "stopped: every acknowledged record is in %s%s, but the stop did not end within "
                "--stop-timeout (%gs): exiting 0 now, abandoning: %s%s",
                self.warehouse.uri,
                self._set_aside_note(),
                self.settings.stop_timeout,
                running,
                self._heartbeat_note(),
            )
            self._flush_logs()
            return
        log.error(
            "the stop did not end within --stop-timeout (%gs): exiting 1 now, abandoning: %s; "
            "the data is safe in %s and %s",
            self.settings.stop_timeout,
            running,
            self.settings.buffer_dir,
            (
                "is written by running logq-aggregator drain again"
                if self._draining
                else "will be written at the next start"
            ),
        )
        self._flush_logs()

    @staticmethod
    def _flush_logs() -> None:
        """Get the lines logged so far out before an ``os._exit``."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()

    def _replay_left_for_next_start(self) -> list[str]:
        """The peers a stop would wait for before it could write the replay, when it need not:
        the replay has not read the ledger yet (its wait for them was under way, or had not
        begun), the peers are still behind, and nothing was acknowledged in this run (every
        sealed segment is replayed; SIGTERM's contract is to write what *this* run
        acknowledged). The stop then ends at once and leaves the replay to the next start
        instead of waiting on the peers. Empty: the stop writes everything (runs in a worker
        thread: it lists the warehouse)."""
        if not self._replay or self._committed is not None or self.ledger is None:
            return []
        if any(s.seq not in self._replay for s in self.buffer.sealed()):
            return []
        try:
            return self.ledger.behind(self._replay_since, time.time())
        except OSError:  # the stop's flush retries the warehouse until its deadline
            return []

    # --- flushing ---------------------------------------------------------------------------

    def _disk_changed(self, reason: str | None, free: int) -> None:
        self.metrics.disk_low = reason
        self.metrics.disk_free.set(free)

    def _on_append(self) -> None:
        self.metrics.buffer_bytes.set(self.buffer.total_bytes)
        if self.buffer.active_bytes >= self.settings.segment_bytes and self._size_seal is None:
            # Seal now even if the flusher is busy: segments (and a flush's spill) stay bounded.
            self._size_seal = asyncio.create_task(self._seal_for_size())
        if self.buffer.full:
            self._flush_now.set()

    async def _seal_for_size(self) -> None:
        try:
            await self._supervised("size seal", self._seal, forever=False)
        finally:
            self._size_seal = None
            self._flush_now.set()

    async def _flush_loop(self) -> None:
        await self._supervised("flush loop", self._flush_forever)

    async def _flush_forever(self) -> None:
        """Seal and flush every interval (or when asked) until the service stops.

        The interval runs from one seal to the next, not from the end of a flush: a flush that
        takes seconds (hundreds of services' objects to upload) would otherwise add its time to
        every cycle, and a line acked just after a seal would wait two flushes plus the
        interval instead of one flush plus the interval. A cycle that fails is logged, counted
        and tried again at the next interval: one error (a full disk) must not stop flushing
        until a restart."""
        replayed = bool(self._replay)
        try:
            if await self._flush_sealed():  # replay first
                await self._heartbeat(self._replay_since)
                if replayed:
                    # A peer whose replay began after this one waits for a heartbeat that
                    # covers its start: the next cycle's, given at once rather than after an
                    # interval (the lines acked meanwhile are written with it).
                    self._flush_now.set()
        except Exception as exc:
            self._cycle_failed(exc)
        else:
            self._cycle_ok()
        last_seal = time.monotonic()
        while not self._stopping.is_set():
            wait = seal_wait(self.settings.flush_interval, last_seal, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), wait)
            self._flush_now.clear()
            if self._stopping.is_set():
                return
            last_seal = time.monotonic()
            try:
                await self._flush_cycle()
            except Exception as exc:
                self._cycle_failed(exc)
            else:
                self._cycle_ok()

    async def _flush_cycle(self) -> None:
        """Seal the active segment, flush every sealed one, tell the peers how far it got."""
        sealed_at = time.time()
        await self._seal()
        if await self._flush_sealed():
            await self._heartbeat(sealed_at)
        self.buffer.wake_if_space()

    def _cycle_failed(self, exc: Exception) -> None:
        """Count a failed flush cycle (a bug or an unforeseen error: flush errors are retried
        inside it); its traceback is logged when the error is new, one line after that."""
        self.metrics.storage_errors.inc()
        if self.metrics.failing_since is None:
            self.metrics.failing_since = time.monotonic()
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "flush cycle failed (%s); trying again in %gs, the data stays in the buffer "
            "(report the error if it persists)",
            error,
            self.settings.flush_interval,
            exc_info=error != self._cycle_error,
        )
        self._cycle_error = error

    def _cycle_ok(self) -> None:
        """A whole cycle ran (everything sealed is flushed): forget a failed one."""
        if self._cycle_error:
            log.info("flush cycles work again")
            self._cycle_error = ""
            self.metrics.failing_since = None

    async def _seal(self) -> None:
        """Seal the active segment for the flusher. An OSError (the volume full, an I/O error)
        is logged, counted and fails /healthz once it lasts ``--unhealthy-after``; the sealed
        data is flushed all the same and the next seal tries again."""
        m = self.metrics
        try:
            await self.buffer.seal()
        except OSError as exc:
            m.storage_errors.inc()
            error = f"{exc.strerror or exc} under --buffer-dir {self.settings.buffer_dir}"
            if m.buffer_error != error:
                log.error(
                    "buffer segment not sealed or opened: %s; what is sealed is flushed, the "
                    "next seal tries again and new data waits until one opens (%s)",
                    error,
                    fd_limit_hint(exc) or "free space on that volume if it is full",
                )
            m.buffer_error = error
            if m.buffer_failing_since is None:
                m.buffer_failing_since = time.monotonic()
            return
        if m.buffer_error is not None:
            log.info("the buffer under --buffer-dir %s takes data again", self.settings.buffer_dir)
        m.buffer_error, m.buffer_failing_since = None, None

    async def _supervised(
        self, what: str, body: Callable[[], Awaitable[None]], forever: bool = True
    ) -> None:
        """Run a background task of the service; if it raises (an exception its own handling
        did not foresee) or, being a loop (``forever``), ends while the service is not stopping,
        say so loudly (ERROR, traceback), fail /healthz and stop as on SIGTERM (the final flush
        included), exiting 1, instead of the silent death of a task nobody awaits until the
        stop. A process that runs on without its flusher or compactor only looks alive: the
        deploy files' liveness checks (``/metrics``) would never restart it, while every
        service manager restarts a process that exits 1, and the next start replays the
        buffer."""
        try:
            await body()
        except Exception as exc:
            reason = f"the {what} stopped on an internal error ({type(exc).__name__}: {exc})"
            log.error("%s", reason, exc_info=True)
        else:
            if self._stopping.is_set() or not forever:
                return
            reason = f"the {what} ended while the aggregator runs"
            log.error("%s", reason)
        if self._stopping.is_set() or self.metrics.broken is not None:
            return
        self.metrics.broken = (
            f"{reason}: the aggregator stops and exits 1 to be restarted (acknowledged data "
            f"is safe in {self.settings.buffer_dir}); report the error"
        )
        log.error(
            "stopping after an internal error so that the service manager restarts the "
            "aggregator: acknowledged data is safe in %s",
            self.settings.buffer_dir,
        )
        self.stop()

    async def _heartbeat(self, committed_through: float) -> None:
        """Tell replaying peers that everything acked before ``committed_through`` is written."""
        assert self.ledger is not None
        try:
            await self._calls.run(
                "writing the ledger heartbeat",
                self.ledger.heartbeat,
                committed_through,
                self.settings.flush_interval,
            )
        except OSError as exc:  # best effort: a stale heartbeat only means peers do not wait
            log.debug("ledger heartbeat not written: %s", exc)

    def _flush_segment(self, segment: Segment, deadline: float | None = None) -> FlushResult:
        """Flush one segment (in a worker thread); a replayed one minus what peers committed."""
        assert self.flusher is not None and self.ledger is not None
        committed = None
        if segment.seq in self._replay:
            if self._committed is None:
                self._committed = self._reconcile(deadline)
            committed = self._committed
        result = self.flusher.flush(segment, committed)
        if committed is not None:
            self._replay.discard(segment.seq)
            self._replay_progress()
        return result

    def _reconcile(self, deadline: float | None) -> Committed:
        """Before the first replayed segment: say that this node replays, wait for the peers
        (:meth:`_wait_for_peers`), then read what they committed of the replayed sources."""
        assert self.flusher is not None and self.ledger is not None
        self._wait_for_peers(deadline)
        # Also after a wait that timed out: from here on this replay reads the ledger.
        self.ledger.announce_replay(
            self._replay_since, self.settings.flush_interval, reads_ledger=True
        )
        replayed = [s for s in self.buffer.sealed() if s.seq in self._replay]
        sources = self.flusher.sources(replayed)
        since = min((s.path.stat().st_mtime for s in replayed), default=self._replay_since)
        committed = self.ledger.committed_elsewhere(since, sources)
        log.info(
            "replay: other aggregators hold %d committed lines of the %d sources in "
            "the replayed segments; lines among them are skipped",
            committed.pairs,
            len(sources),
        )
        return committed

    def _wait_for_peers(self, deadline: float | None) -> None:
        """Wait until every live peer has committed what it acknowledged before the replay
        began (ledger.py), so that the lines a shipper resent to it are skipped here.

        While serving (``deadline`` None) a stop ends the wait: the stop's flush waits again,
        or leaves the replay for the next start (:meth:`_stop_and_flush`). In the stop's flush
        (``deadline`` set, stopping) the wait lasts until the deadline and, if the peers are
        still behind, the replay stays in the buffer (:class:`ReplayPostponed`) rather than
        risk storing their lines twice. Otherwise, after :data:`REPLAY_PEER_WAIT_SECONDS`, it
        replays anyway: a peer that cannot flush must not hold this node's data for ever. That
        time counts from the first wait: a poll that fails (a 503) fails the flush, and the
        retry's wait gets what is left of it, not a new one."""
        assert self.ledger is not None
        stopping = deadline is not None and self._stopping.is_set()
        if self._replay_wait_ends is None:
            self._replay_wait_ends = time.monotonic() + REPLAY_PEER_WAIT_SECONDS
        timeout = max(0.0, self._replay_wait_ends - time.monotonic())
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            timeout = left if stopping else min(timeout, left)
        interval = self.settings.flush_interval
        behind = self.ledger.check_in(self._replay_since, interval)
        if behind:
            log.info(
                "replay waits for peers %s to commit what they acknowledged before it began "
                "(up to %.0fs more); peers replaying after this node are not waited for",
                behind,
                timeout,
            )
            stop = None if deadline is not None else self._stop_wait
            began = time.monotonic()
            behind = self.ledger.wait_for_peers(
                self._replay_since, timeout, stop=stop, flush_interval=interval
            )
            if not behind:
                log.info(
                    "replay: no peer is behind any more after %.1fs (they committed, or "
                    "replay after this node)",
                    time.monotonic() - began,
                )
        if not behind:
            return
        if stopping or (deadline is None and self._stop_wait.is_set()):
            raise ReplayPostponed(
                f"peers {behind} have not committed what they acknowledged before this "
                "node's replay began; the replay waits for them (it would store the lines "
                "a shipper resent to them twice)"
            )
        log.warning(
            "peers %s have not committed their buffers within %.0fs; replaying anyway "
            "(lines they hold may be stored twice, none are lost)",
            behind,
            time.monotonic() - (self._replay_wait_ends - REPLAY_PEER_WAIT_SECONDS),
        )

    def _replay_progress(self) -> None:
        """After a replayed segment: refresh the replay mark (a long replay keeps its node
        counted as live), or remove it once the replay is written."""
        assert self.ledger is not None
        if not self._replay:
            self._committed = None
            self.ledger.replay_done()
            return
        if self._committed is not None:
            try:
                self.ledger.announce_replay(
                    self._replay_since, self.settings.flush_interval, reads_ledger=True
                )
            except OSError as exc:
                log.debug("replay mark not refreshed: %s", exc)

    async def _flush_sealed(self, deadline: float | None = None) -> bool:
        """Flush every sealed segment in order, retrying with backoff; False if out of time."""
        async with self._flush_lock:
            for segment in self.buffer.sealed():
                if not await self._flush_one(segment, deadline):
                    return False
            return True

    async def _flush_one(self, segment: Segment, deadline: float | None) -> bool:
        assert self.flusher is not None
        delay = min(0.5, self.settings.retry_max_interval)
        data_errors, last_error = 0, ""
        while True:
            try:
                result = await self._calls.run(
                    f"the flush of segment {segment.seq}", self._flush_segment, segment, deadline
                )
            except ReplayPostponed as exc:  # a stop: left for the stop's flush, or its deadline
                log.log(logging.INFO if deadline is None else logging.WARNING, "%s", exc)
                return False
            except Exception as exc:
                self.metrics.storage_errors.inc()
                if self.metrics.failing_since is None:
                    self.metrics.failing_since = time.monotonic()
                if isinstance(exc, OSError):  # S3 or disk: retried for as long as it lasts
                    data_errors, last_error = 0, ""
                else:
                    error = f"{type(exc).__name__}: {exc}"
                    data_errors = data_errors + 1 if error == last_error else 1
                    last_error = error
                if data_errors >= QUARANTINE_AFTER and await self._set_aside(segment, exc):
                    return True
                if deadline is not None and time.monotonic() + delay > deadline:
                    log.error("flush of segment %d failed: %s", segment.seq, exc)
                    return False
                if deadline is None and self._stopping.is_set():
                    return False  # the shutdown flush takes over, with its own deadline
                log.warning(
                    "flush of segment %d failed (%s); retrying in %.1fs, the data stays buffered",
                    segment.seq,
                    exc,
                    delay,
                )
                if deadline is None:
                    with contextlib.suppress(TimeoutError):  # a stop cuts the wait short
                        await asyncio.wait_for(self._stopping.wait(), delay)
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_interval)
                continue
            self.metrics.failing_since = None
            self._record(result)
            self._catalog_services(result.services)
            await asyncio.to_thread(self.buffer.retire_chunks, segment)  # an fsync: off the loop
            self.buffer.delete(segment)
            self.metrics.buffer_bytes.set(self.buffer.total_bytes)
            return True

    async def _set_aside(self, segment: Segment, exc: BaseException) -> bool:
        """Quarantine a segment (:meth:`_quarantine`); False if its volume refused the move.

        It then stays in the buffer and the caller retries it as after any failed flush: the
        next try flushes it (the error may be gone) or sets it aside again. Never skipped: a
        segment flushed after those behind it would lose its lines to their offset marks."""
        try:
            await asyncio.to_thread(self._quarantine, segment, exc)
        except OSError as error:
            log.error(
                "segment %d failed %d times with a data error (%s: %s) and could not be moved "
                "to %s (%s); it stays in the buffer and is tried again, the segments behind it "
                "wait (free space or fix permissions on that volume, and report the error)",
                segment.seq,
                QUARANTINE_AFTER,
                type(exc).__name__,
                exc,
                self.buffer.quarantine_dir,
                error,
            )
            return False
        return True

    def _quarantine(self, segment: Segment, exc: BaseException) -> None:
        """Set aside a segment that fails with the same kind of data error every time."""
        flusher = self.flusher
        assert flusher is not None
        target = self.buffer.quarantine(segment, lambda: flusher.abandon(segment.seq))
        if segment.seq in self._replay:
            self._replay.discard(segment.seq)
            self._replay_progress()
        self.metrics.quarantined.inc()
        self._quarantined_here += 1
        self.metrics.failing_since = None
        self.metrics.buffer_bytes.set(self.buffer.total_bytes)
        log.error(
            "segment %d failed %d times with a data error (%s: %s); moved it to %s so the "
            "rest of the buffer flows. Nothing is lost: after a fix, write it out with "
            "`logq-aggregator drain --buffer-dir %s --warehouse ...` (report the error)",
            segment.seq,
            QUARANTINE_AFTER,
            type(exc).__name__,
            exc,
            target,
            target.parent,
        )

    def _catalog_services(self, services: set[str]) -> None:
        """Hand new services to the catalog off the flush path (Athena may be slow or down)."""
        fresh = services - self.catalog.services
        if not fresh and self._catalog_ready:
            return
        self._catalog_pending |= services
        if self._catalog_task is None or self._catalog_task.done():
            self._catalog_task = asyncio.create_task(self._update_catalog(), name="catalog")

    async def _update_catalog(self) -> None:
        await self._supervised("catalog update", self._add_pending_services, forever=False)

    async def _add_pending_services(self) -> None:
        while self._catalog_pending:
            batch, self._catalog_pending = self._catalog_pending, set()
            self._catalog_ready = await self._calls.run(
                "the table DDL update", self.catalog.add_services, batch, wait=False
            )

    def _record(self, result: FlushResult) -> None:
        m = self.metrics
        m.flush_seconds.observe(result.seconds)
        m.duplicates.inc(result.duplicates)
        m.files_written.inc(len(result.files))
        m.services_seen(
            {*result.services, *result.parse_failures, *(f.service for f in result.files)}
        )
        for f in result.files:
            m.rows_written.labels(f.table, m.series_label(f.service)).inc(f.rows)
        for service, count in result.parse_failures.items():
            m.parse_failures.labels(m.series_label(service)).inc(count)
        for service, count in result.numbers_rounded.items():
            m.numbers_rounded.labels(m.series_label(service)).inc(count)
        for service, count in result.numbers_too_large.items():
            m.numbers_too_large.labels(m.series_label(service)).inc(count)
        now = time.time()
        self._parse_warnings.note(result.parse_failures, result.unparsed_samples, now)
        slow = slow_flush_text(
            result.segment, result.seconds, self.settings.flush_interval, result.files
        )
        if slow is not None and not self._draining and self._slow_flush_warnings.due("slow", now):
            log.warning("%s", slow)
        for f in result.files:
            if outside_projection(f.dt, now):
                m.rows_outside_projection.labels(f.table, m.series_label(f.service)).inc(f.rows)
                self._warn_clock(f.table, f.service, f.dt, now)

    def _warn_clock(self, table: str, service: str, dt: str, now: float) -> None:
        """Say (at most every :data:`CLOCK_WARNING_SECONDS` per table and service) that rows
        went where Athena does not look."""
        if not self._clock_warnings.due((table, service), now):
            return
        log.warning(
            "rows stamped outside the Athena partition projection (before 2020 or more than "
            "15 minutes ahead: a broken clock at the source); they are stored, and only the "
            "local engine finds them (logq sql ... --since/--until around that time) table=%s "
            "service=%s dt=%s",
            table,
            service,
            dt,
        )

    async def _catalog_resync_loop(self) -> None:
        await self._supervised("catalog resync loop", self._catalog_resync_forever)

    async def _catalog_resync_forever(self) -> None:
        """Pick up services other aggregators added, in case two DDL rewrites crossed."""
        while True:
            await asyncio.sleep(CATALOG_RESYNC_SECONDS)
            if self._catalog_task is None or self._catalog_task.done():
                await self._calls.run("the table DDL check", self.catalog.resync, wait=False)

    async def _compact_loop(self) -> None:
        await self._supervised("compaction loop", self._compact_forever)

    async def _compact_forever(self) -> None:
        """Every ``--compact-interval``: a compaction pass (see :class:`PeriodicCompaction`)."""
        assert self.ledger is not None
        compaction = PeriodicCompaction(
            self.warehouse,
            self.settings,
            self.metrics,
            self.ledger,
            calls=self._calls,
            stopping=self._stopping.is_set,
        )
        await compaction.forever()
