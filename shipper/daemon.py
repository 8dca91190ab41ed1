"""logq-shipper: the host daemon (entry point ``logq-shipper``).

Discovers log sources, runs one :class:`~shipper.source.SourceRunner` per source, persists
checkpoints as acks arrive, and handles the process lifecycle:

* ``--once``: ship what the files hold now, wait for every ack, exit 0 -- or exit 1 with one
  line saying why (no aggregator reachable within ``--retry-timeout``, wrong shared key...).
* follow mode (default): rescan for new containers as soon as inotify reports a change in the
  log roots (else every ``--discover-interval`` seconds; with inotify a full rescan still runs
  every max(``--discover-interval``, :data:`FULL_SCAN_SECONDS`) as a safety net), drain and
  release sources that disappeared. Passes run on a thread of their own, reads and acks go
  on meanwhile (:meth:`Shipper._discover`). A folder that cannot be listed for now (out of
  file descriptors, EIO) keeps its sources (they are not "gone"), the others are unaffected;
  passes back off only while a whole root cannot be listed. A folder that can never be listed
  (EACCES: the shipper runs as a user without access) is warned about once and skipped.
  An idle source sleeps until inotify reports a change of its live file (at most
  :data:`~shipper.source.IDLE_CEILING_SECONDS`), else it looks every ``--poll-interval``
  (no inotify, watch limit reached, network filesystems); see :class:`FileWatcher`.
  A source that fails (one broken file) is started again by the discovery pass
  :data:`RETRY_SECONDS` later, the pause doubling with each failure in a row up to the
  safety-net rescan period; the others are unaffected.
* SIGTERM / SIGINT: stop reading, wait for in-flight acks (at most ``--retry-timeout``), save
  checkpoints, exit 0. SIGHUP: a warning that there is no configuration reload; it goes on.
* checkpoints that cannot be written (full or read-only ``--state-dir``) do not stop shipping:
  delivery stays at-least-once, since lines re-read after a restart keep their source ids and
  the aggregators drop the ones they already stored (per-source offsets). It is loud instead:
  one error line (repeated every minute), ``logq_shipper_checkpoint_write_failures_total``,
  ``/healthz`` 503. If the last save at exit fails too, the shipper exits 1 with one line.

Exit status: 0 done; 1 a delivery failure or skipped logs in ``--once`` (a log folder that could
not be listed, for now -- out of file descriptors -- or for good -- EACCES, a loop of links --, or
a log file that could not be read: :meth:`Shipper._once_incomplete`),
a wrong shared key, or checkpoints that could not be saved at exit; 2 a configuration error
(also a ``--docker-root`` / ``--cri-root`` given that does not exist with ``--once``, or kubelet's
``/var/log/containers`` given as a root: :func:`~shipper.discover.check_roots`);
130 interrupted before start-up finished.
"""

from __future__ import annotations

import sys

from shipper.startup import (
    deferred_interrupts,
    interrupted,
    is_interrupt,
    redeliver_dropped_interrupts,
    run_held,
)

# The console script imports this module before main() runs: a Ctrl-C during these imports
# (~0.1 s: asyncio, msgpack, prometheus_client...) waits until they are done, then exits 130
# with one line.
with deferred_interrupts("logq-shipper"):
    import asyncio
    import contextlib
    import logging
    import os
    import signal
    import ssl
    import time
    from collections.abc import Awaitable, Callable
    from dataclasses import replace
    from pathlib import Path
    from typing import TypeVar

    from shipper import checkpoint, gz_pool
    from shipper.checkpoint import FileState, Registry
    from shipper.config import TLS_KEY_PASSWORD_ENV, Config, load_config, weak_key_warning
    from shipper.daemon_threads import DaemonThreads
    from shipper.discover import Discoverer, Scan, SourceSpec, check_roots, node_names
    from shipper.errors import ConfigError, ShipperError, StartError, listen_error
    from shipper.exclude import Excluder, Exclusion
    from shipper.file_modes import exposed_config
    from shipper.followed import gone_followed
    from shipper.fsnames import as_text
    from shipper.idle_sweep import IdleSweep
    from shipper.inotify import DirectoryWatcher, FileWatcher, directories_to_watch
    from shipper.logs import announce_metrics, setup_logging
    from shipper.metrics import Metrics
    from shipper.open_files import raise_open_files_limit as raise_limit
    from shipper.own_files import warn_state_in_paths
    from shipper.presence import Looking, look
    from shipper.removed import count_removed, gone_files, unfound_by_source
    from shipper.sender import ForwardClient, tls_context
    from shipper.source import SourceRunner, Window
    from shipper.tls_keys import KeyPairError, load_key_pair
    from shipper.tls_reload import ReloadingTls

log = logging.getLogger("logq.shipper")

_T = TypeVar("_T")

STALE_CHECKPOINT_SECONDS = 7 * 24 * 3600
SETTLE_SECONDS = 0.05
"""After an inotify event, wait this long for the rest of the burst before rescanning."""
RECHECK_SECONDS = 0.5
"""After an event-driven rescan, rescan once more this soon (files of a new container)."""
FULL_SCAN_SECONDS = 10.0
"""With inotify watching every folder, the safety-net rescan runs this often (at least)."""
MAX_BACKOFF_SECONDS = 30.0
"""Longest pause between discovery passes that keep failing (out of file descriptors...)."""
RETRY_SECONDS = 1.0
"""A source that failed (one broken file) is started again this soon by a discovery pass; each
failure in a row doubles the pause, up to the safety-net rescan period (see
:meth:`Shipper._note_failure`)."""
RETRY_EARLY_SECONDS = 0.01
"""A pass this close to a source's retry time takes it: a timer may fire a hair early."""
GAUGE_SECONDS = 1.0
"""How often ``bytes_behind`` and the other gauges are refreshed (at most)."""
GONE_GRACE_SECONDS = 5.0
"""A source whose file is missing while its folder is still there is drained only once the file
has been missing this long: a rotation renames the file before the runtime creates the next one,
and a pass in between must not end the source (its rotated files would then be skipped)."""
SAVE_RETRY_SECONDS = 1.0
"""Pause between attempts to write checkpoints that failed."""
SAVE_ERROR_LOG_SECONDS = 60.0
"""While checkpoint writes keep failing, the error line is repeated this often."""
SLOW_PASS_SECONDS = 30.0
"""A discovery pass still running after this long is warned about, and ``/healthz`` answers
503 until it ends: off the event loop, a pass hung on a dead file system (a stale NFS mount
under a root) no longer stalls the loop, which ``/livez`` reported, but it finds nothing new.
A look of the start at the checkpoints of sources removed while the shipper was down is warned
about too (not in ``/healthz``: shipping and discovery go on meanwhile)."""
LOOKS_THREAD_NAME = "logq-looks"
"""The thread of the start's looks at sources removed while the shipper was down."""
CLOSE_LOOKS_THREAD_NAME = "logq-close-looks"
"""The thread of the looks of sources that end at their folders."""


class Shipper:
    """The daemon's state: configuration, registry, client, and the running sources."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        # Before the registry takes its lock: a root that cannot be meant ends start-up here.
        check_roots(cfg.docker_root, cfg.cri_root, cfg.given, cfg.once)
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.registry = Registry(cfg.state_dir)
        warn_state_in_paths(cfg.paths, cfg.state_dir, cfg.excludes, log)
        self.window = Window(cfg.max_inflight_bytes)
        self.client = ForwardClient(
            cfg.aggregators,
            hostname=cfg.hostname,
            shared_key=cfg.shared_key,
            username=cfg.username,
            password=cfg.password,
            tls_files=_tls(cfg),
            client_cert=cfg.tls_cert is not None,
            server_name=cfg.tls_server_name,
            ack_timeout=cfg.ack_timeout,
            give_up_after=cfg.retry_timeout if cfg.once else None,
            on_retry=lambda ep: self.metrics.retries.labels(ep).inc(),
            placements=self,
        )
        for endpoint in cfg.aggregators:  # at 0 from the start (see Metrics.watch_service)
            self.metrics.retries.labels(str(endpoint))
        self.runners: dict[str, SourceRunner] = {}
        self.file_watcher: FileWatcher | None = None
        """inotify on the sources' live files (follow mode, where available): idle sources
        sleep until their file changes instead of polling it (see SourceRunner._idle)."""
        self.idle_sweep = IdleSweep()
        """The safety net of the sources asleep on :attr:`file_watcher`: one look at all
        their files every IDLE_CEILING_SECONDS (see :mod:`shipper.idle_sweep`)."""
        self.poll_sweep = IdleSweep()
        """The look at the files of the idle sources not watched (no inotify, watch limit,
        network filesystems) every ``--poll-interval``, for all of them at once."""
        self._dirty = asyncio.Event()
        self._prune: asyncio.TimerHandle | None = None
        """A save due once the files finished before the last one are old enough to leave it
        (see :meth:`_save`)."""
        self._saved = asyncio.Condition()
        self._generation = 0
        self._saved_generation = 0
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()
        """A second stop request: do not wait for the in-flight acks."""
        self._saver_closing = False
        """Set at exit: the checkpoint loop finishes its write in progress, then returns."""
        self._failure: BaseException | None = None
        # A file opened is on disk soon, acknowledged or not (see Registry.on_new). Not waited
        # for: the write joins the checkpoint loop's next one (bursts share a write), so a
        # burst of new containers costs a few more writes, never a pause in reading.
        self.registry.on_new = self.checkpoint_changed
        self.lines_acked = 0
        """Lines acknowledged since start (all sources)."""
        self._gauge_paths: set[str] = set()
        self._gauge_values: dict[str, int] = {}
        """``bytes_behind`` as last set, by path label (set again only when it moves)."""
        self.discoverer = Discoverer(
            cfg.docker_root,
            cfg.cri_root,
            cfg.paths,
            node_names(cfg.hostname),
            Excluder(cfg.excludes),
        )
        self._discovery = DaemonThreads()
        """The one thread where discovery passes run (see :meth:`_discover`): the
        :attr:`discoverer` and its caches are only ever used from there, one pass at a time.
        A daemon thread: a pass hung on a dead file system does not keep the process alive
        after a stop."""
        self._pass_looking = Looking()
        """Where the look of a pass at the sources it missed is (see :meth:`_pass`)."""
        self.looks = DaemonThreads(LOOKS_THREAD_NAME)
        """The thread of the start's looks at the checkpoints of sources removed while the
        shipper was down (:meth:`_forget_removed`): not the discovery thread, so that one hung
        there (a checkpoint's folder on a stale NFS mount outside the log roots) holds back
        neither the sources found nor the passes that find new ones."""
        self.close_looks = DaemonThreads(CLOSE_LOOKS_THREAD_NAME)
        """The thread of the looks of sources that end at their files
        (:meth:`shipper.tailer.Tailer.look_at_close`), off the loop; not the start's, whose
        looks may hang on folders that have nothing to do with them."""
        self._found_since: set[str] | None = None
        """While the start's verdicts on removed sources are pending: the keys every pass
        since the first found (read, excluded, or read by another route). A source found
        again meanwhile (its folder back, a listing that had failed) is shipped from its
        checkpoints: its pending verdict, looked at before, is dropped (see
        :meth:`_judgeable`)."""
        self._excluded: dict[str, tuple[SourceSpec, Exclusion]] = {}
        """The sources excluded at the last pass, each logged once when first seen; also those
        whose file is missing for less than GONE_GRACE_SECONDS (a rotation between rename and
        create): they are not logged again, and the gauge does not dip."""
        self._kept_out: set[str] = set()
        """Keys of the sources excluded in this run and not read since: when the exclusion is
        lifted, their files deleted meanwhile are not counted as lost (Tailer.kept_out)."""
        self._stopped_excluded: set[str] = set()
        """Keys of sources being shipped when they became excluded: stopped, their runner
        removed once it has delivered what it had read (see :meth:`_stop_excluded`)."""
        self._missing: dict[str, float] = {}
        """Source key -> when its file was first found missing (see GONE_GRACE_SECONDS)."""
        self._retry_at: dict[str, float] = {}
        """Key of a failed source -> when the discovery pass may start it again (monotonic);
        taken or dropped by the first pass after that time."""
        self._failures: dict[str, int] = {}
        """Key of a source -> its failures in a row (kept while its file is found: the count
        sets the next retry's pause)."""
        self._retry_added = asyncio.Event()
        """A retry was recorded: the wait for the next pass is worked out again."""
        self._scan_failures = 0
        """Discovery passes in a row that could not list everything (0: the last one could)."""
        self._blind_passes = 0
        """Consecutive passes that could not list a root: discovery backs off while > 0."""
        self._save_error: str | None = None
        """Why the last checkpoint write failed; None while writes work."""
        self._save_failures = 0
        self._save_error_logged = 0.0

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_changed(self) -> int:
        """Note a registry change; returns the generation to wait for with
        :meth:`checkpoint_saved`."""
        self._generation += 1
        self._dirty.set()
        return self._generation

    def sent_to(self, source_id: str) -> str:
        """Where the last batch of ``source_id`` went, if not its first choice
        (:class:`shipper.sender.Placements`)."""
        return self.registry.sent_to(source_id)

    def sent_through(self, source_id: str) -> int | None:
        """How far the lines of ``source_id`` sent there reach
        (:class:`shipper.sender.Placements`)."""
        return self.registry.sent_through(source_id)

    async def place(self, source_id: str, endpoint: str, through: int | None = None) -> None:
        """Save where the next batch of ``source_id`` goes, and how far its lines reach,
        before it is sent, when that changes what a restart would do
        (:class:`shipper.sender.Placements`)."""
        if self.registry.place(source_id, endpoint, through):
            await self.checkpoint_saved(self.checkpoint_changed())

    async def checkpoint_saved(self, generation: int) -> None:
        """Wait until the registry holding ``generation`` is durable on disk -- or until a
        write fails: shipping then goes on without durable checkpoints (see the module doc)."""
        async with self._saved:
            await self._saved.wait_for(
                lambda: self._saved_generation >= generation or self._save_error is not None
            )

    async def _tick_loop(self) -> None:
        """Prove to ``/healthz`` that the event loop runs (metrics.py); refresh the gauges
        (every ``--discover-interval``, at most :data:`GAUGE_SECONDS`: discovery passes are
        rarer with inotify)."""
        period = min(GAUGE_SECONDS, self.cfg.discover_interval)
        while True:
            self.metrics.tick()
            self._update_gauges()
            await asyncio.sleep(period)

    async def _checkpoint_loop(self) -> None:
        """Persist the registry whenever acks moved it; bursts of acks share one write."""
        while True:
            await self._dirty.wait()
            if self._saver_closing:
                return
            self._dirty.clear()
            try:
                await self._save()
            except OSError as exc:
                # Acks keep their place in memory and the next write carries them.
                await self._save_failed(exc)
                self._dirty.set()
                await asyncio.sleep(SAVE_RETRY_SECONDS)
            else:
                self._save_worked()

    async def _save_failed(self, exc: OSError) -> None:
        self.metrics.checkpoint_failures.inc()
        self._save_failures += 1
        reason = exc.strerror or str(exc)
        now = time.monotonic()
        if self._save_error is None or now - self._save_error_logged >= SAVE_ERROR_LOG_SECONDS:
            self._save_error_logged = now
            log.error(
                "cannot write checkpoints: shipping goes on, but a restart now would read and "
                "send again the lines acknowledged since the last write (the aggregators drop "
                "them as duplicates); free space or fix permissions path=%s failures=%d error=%r",
                self.registry.path,
                self._save_failures,
                reason,
            )
        if self._save_error is None:
            self._save_error = reason
            self.metrics.set_problem(
                "checkpoints", f"cannot write checkpoints to {self.registry.path}: {reason}"
            )
            async with self._saved:
                self._saved.notify_all()  # sources waiting for this write go on

    def _save_worked(self) -> None:
        if self._save_error is None:
            return
        log.info(
            "checkpoints written again path=%s failures=%d", self.registry.path, self._save_failures
        )
        self._save_error = None
        self._save_failures = 0
        self.metrics.set_problem("checkpoints", None)

    async def _save(self) -> None:
        generation = self._generation
        data = self.registry.snapshot()
        await asyncio.to_thread(self.registry.write, data)
        async with self._saved:
            self._saved_generation = max(self._saved_generation, generation)
            self._saved.notify_all()
        if self.registry.holds_finished() and self._prune is None:
            # Files finished moments ago are in this save (Registry.finish); one more save once
            # they are old enough leaves them out. Else on a quiet host checkpoints.json kept
            # them until the next ack (~500 bytes each: 95 KB after 200 containers went).
            self._prune = asyncio.get_running_loop().call_later(
                checkpoint.FINISHED_SAVE_SECONDS + 0.1, self._pruned
            )

    def _pruned(self) -> None:
        self._prune = None
        self.checkpoint_changed()

    # -- sources ----------------------------------------------------------------------------

    async def _discover(self) -> Scan:
        """One discovery pass, off the event loop; says once when passes start and stop failing.

        A pass lists the roots, globs ``--path`` and stats (and, when it changed, parses) each
        container's ``config.v2.json``: 1 to 9 ms for 300 containers, 30 ms and more at the
        first pass, during which the loop read no line and handled no ack. It runs on
        :attr:`_discovery`'s one thread, so passes never overlap (one still running when its
        waiter was cancelled holds the next back), their results reach the loop in the order
        they ran, and the discoverer's caches have one user.
        The :class:`Scan` is handed over whole when the pass is done (its specs are frozen),
        with what the thread found of the sources the pass missed (:meth:`_pass`); what the
        daemon keeps (runners, retries, failure counts) changes here, on the loop."""
        known = self._known()
        scan = await self._off_loop(lambda: self._pass(known))
        # Back off only while a whole root cannot be listed (out of fds...): a failing folder
        # under it says nothing about the others, whose discovery must stay prompt.
        self._blind_passes = self._blind_passes + 1 if scan.blind else 0
        if scan.complete:
            if self._scan_failures:
                log.info("discovery works again after %d failed passes", self._scan_failures)
            self._scan_failures = 0
            return scan
        self.metrics.discovery_failures.inc()
        if not self._scan_failures:
            log.error(
                "discovery failed, keeping the sources under what could not be listed and "
                "retrying failures=%d error=%r",
                len(scan.failures),
                scan.failures[0],
            )
        self._scan_failures += 1
        return scan

    def _known(self) -> dict[str, Path]:
        """The live files of the sources running (not draining) and of those kept excluded,
        by key: a pass that does not find one looks at it (see :meth:`_gone`). Taken on the
        loop when a pass starts: sources are started and excluded only from a pass's results,
        on the loop, so none appears meanwhile."""
        known = {key: spec.path for key, (spec, _) in self._excluded.items()}
        known.update((key, r.spec.path) for key, r in self.runners.items() if not r.finishing)
        return known

    def _pass(self, known: dict[str, Path]) -> Scan:
        """A discovery pass, and a look at the files of the ``known`` sources it did not find
        (:mod:`shipper.presence`): the discovery thread's work. On the loop, those ``stat``
        calls (a file and its folder per source missing, at every pass while it is missing)
        held every read and ack, for as long as a slow file system took. Sources under a
        folder the pass could not list are not looked at: they are kept anyway, and that
        folder may be the one that hangs."""
        self._pass_looking.folder = None  # (the last pass's look is over)
        scan = self.discoverer.scan()
        found = {spec.key for spec in scan.specs} | scan.excluded.keys()
        missing = {
            key: path
            for key, path in known.items()
            if key not in found and not scan.may_have_missed(path)
        }
        return replace(scan, looked=look(missing, self._pass_looking)) if missing else scan

    async def _off_loop(self, work: Callable[[], _T], looking: Looking | None = None) -> _T:
        """``work()`` run on the discovery thread; said (WARNING, ``/healthz`` 503) while it
        runs longer than :data:`SLOW_PASS_SECONDS`, naming the folder of ``looking`` when its
        look has one, else the log roots."""
        future = asyncio.wrap_future(self._discovery.submit(work))
        return await _said_if_slow(future, lambda: self._slow_pass(looking))

    def _slow_pass(self, looking: Looking | None) -> Callable[[float | None], None]:
        """Say that a work on the discovery thread is slow; returns what says it is over."""
        log.warning(
            "discovery pass still running after %g s: no new container or file is found, and "
            "none gone is released, until it ends; look for a slow or hung file system (a "
            "stale NFS mount) %s",
            SLOW_PASS_SECONDS,
            self._where(looking),
        )
        self.metrics.set_problem(
            "discovery",
            f"a discovery pass has been running for more than {SLOW_PASS_SECONDS:g} s: new "
            "containers and files are not found (a hung file system under a log root?)",
        )

        def over(took: float | None) -> None:  # also when a stop gives up waiting (_follow)
            self.metrics.set_problem("discovery", None)
            if took is not None:
                log.info("discovery pass ended after %.1f s", took)

        return over

    def _where(self, looking: Looking | None) -> str:
        """Where a look that takes long is, for its warning: the folder it is at, when it
        says, else under the log roots (a pass's listing)."""
        if looking is not None and looking.folder is not None:
            return f"at folder={as_text(looking.folder)}"
        return "under docker_root={} cri_root={} paths={}".format(
            self.cfg.docker_root, self.cfg.cri_root, ",".join(self.cfg.paths) or "-"
        )

    async def _start_look(self, work: Callable[[], _T], looking: Looking) -> _T:
        """``work()``, a look of the start at sources removed while the shipper was down, run
        on :attr:`_start_looks`; said (WARNING, naming the folder it is at) while it runs
        longer than :data:`SLOW_PASS_SECONDS`. The sources found are shipped meanwhile."""
        future = asyncio.wrap_future(self.looks.submit(work))
        return await _said_if_slow(future, lambda: self._slow_start_look(looking))

    def _slow_start_look(self, looking: Looking) -> Callable[[float | None], None]:
        """Say that a look of the start is slow; returns what says it is over."""
        log.warning(
            "look at the sources removed while the shipper was down still running after %g s: "
            "their checkpoints are judged (deleted_unread, removed_while_down) and forgotten "
            "when it ends, the sources found are shipped meanwhile; look for a slow or hung "
            "file system (a stale NFS mount) %s",
            SLOW_PASS_SECONDS,
            self._where(looking),
        )

        def over(took: float | None) -> None:
            if took is not None:
                log.info(
                    "look at the sources removed while the shipper was down ended after %.1f s",
                    took,
                )

        return over

    def _note_excluded(self, scan: Scan) -> None:
        """One INFO line per source when it is first found excluded (not at every pass), and
        the gauge: an operator can see that exclusion works, and on what it matched."""
        for key, (spec, why) in scan.excluded.items():
            self._missing.pop(key, None)
            if key in self._excluded:
                continue
            running = key in self.runners and key not in self._stopped_excluded
            log.info(
                "%s key=%s service=%s container_name=%s path=%s matched=%s rule=%r",
                "source excluded: stops reading, what was read is delivered, its checkpoint kept"
                if running
                else "source excluded, not read",
                key,
                spec.service,
                spec.container_name or "-",
                spec.path,
                why.matched,
                why.rule,
            )
        self._excluded = {**self._still_excluded(scan), **scan.excluded}
        self._kept_out |= scan.excluded.keys()
        self._kept_out &= self._excluded.keys() | {s.key for s in scan.specs}
        self.metrics.excluded_sources.set(len(self._excluded))

    def _still_excluded(self, scan: Scan) -> dict[str, tuple[SourceSpec, Exclusion]]:
        """The sources excluded before that this pass did not report, and may still exist: a
        pass that failed to list their folder, or one between a rotation's rename and the
        runtime's new file (missing for less than GONE_GRACE_SECONDS, folder still there). A
        source shipped now (its exclusion lifted) is not one of them."""
        shipped = {s.key for s in scan.specs}
        now = time.monotonic()
        kept = {}
        for key, entry in self._excluded.items():
            if key in scan.excluded or key in shipped:
                continue
            if scan.may_have_missed(entry[0].path) or not self._gone(key, scan, now):
                kept[key] = entry
            else:
                self._missing.pop(key, None)
        return kept

    def _stop_excluded(self, scan: Scan) -> None:
        """Stop the sources being shipped that are now excluded (a container renamed to a name
        that matches): they read nothing more, deliver what they read, and their checkpoints
        stay, so that lifting the exclusion later resumes there: nothing is sent twice, and
        what the container wrote meanwhile is shipped then (what its files still hold). A
        restart with a new ``--exclude`` never starts them at all; their checkpoints stay too.
        """
        # A source another route now reads is stopped the same way (see Discoverer._read_once).
        for key in (scan.excluded.keys() | scan.read_as) & self.runners.keys():
            runner = self.runners[key]
            if key in self._stopped_excluded or runner.finishing:
                continue
            self._stopped_excluded.add(key)
            runner.stopping = True

    def _sync_sources(self, scan: Scan) -> None:
        self._note_excluded(scan)
        self._stop_excluded(scan)
        seen = {s.key for s in scan.specs}
        if self._found_since is not None:  # the start's verdicts are pending
            self._found_since |= seen | scan.excluded.keys() | scan.read_as
        now = time.monotonic()
        for spec in scan.specs:
            runner = self.runners.get(spec.key)
            if runner is None:
                due = self._retry_at.get(spec.key)
                if due is not None and due > now + RETRY_EARLY_SECONDS:
                    continue  # failed a moment ago: not before its retry time
                log.info(
                    "%s key=%s service=%s path=%s",
                    "new source" if due is None else "source started again after a failure",
                    spec.key,
                    spec.service,
                    spec.path,
                )
                self.registry.describe(spec.key, spec.service, spec.container_name)
                runner = SourceRunner(self, spec, kept_out=spec.key in self._kept_out)
                self._kept_out.discard(spec.key)
                self.runners[spec.key] = runner
                runner.start()
                assert runner.task is not None
                runner.task.add_done_callback(self._runner_done)
            elif (
                spec is not runner.spec
                and spec != runner.spec
                and not runner.finishing
                and (spec.path, spec.format) == (runner.spec.path, runner.spec.format)
            ):
                log.info(
                    "source metadata changed key=%s service=%s was=%s",
                    spec.key,
                    spec.service,
                    runner.spec.service,
                )
                runner.update_spec(spec)
                self.registry.describe(spec.key, spec.service, spec.container_name)
        for key in seen:
            self._missing.pop(key, None)
        self._forget_retries(scan, seen, now)
        for key, runner in self.runners.items():
            if key in seen or runner.finishing or key in scan.excluded or key in scan.read_as:
                continue
            if scan.may_have_missed(runner.spec.path):
                continue  # its folder was unreadable this time: it may only be unlisted
            if self._gone(key, scan, now):
                log.info("source gone, draining key=%s", key)
                runner.finishing = True
                self._missing.pop(key, None)

    def _gone(self, key: str, scan: Scan, now: float) -> bool:
        """Whether a source missing from a complete pass is really gone: its folder removed
        (a container or pod deleted), or its file missing for GONE_GRACE_SECONDS. What was
        there was looked at on the discovery thread after the pass (:attr:`Scan.looked`);
        a source it did not look at (none the daemon knew when the pass started) is kept."""
        there = scan.looked.get(key)
        if there is None:
            return False
        if there.file:
            self._missing.pop(key, None)
            return False  # still there, whatever the listing said
        if not there.folder:
            return True
        return now - self._missing.setdefault(key, now) >= GONE_GRACE_SECONDS

    def _forget_retries(self, scan: Scan, seen: set[str], now: float) -> None:
        """After a pass: the retries due were taken (their sources started above) or, their
        files not found, are dropped: a later pass that finds one starts it as a new source,
        a file that vanished meanwhile is not started again. A complete pass that did not
        find a source forgets its failures too."""
        self._retry_at = {k: t for k, t in self._retry_at.items() if t > now + RETRY_EARLY_SECONDS}
        if scan.complete:
            kept = seen | self.runners.keys() | self._retry_at.keys()
            self._failures = {k: n for k, n in self._failures.items() if k in kept}

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        key = task.get_name()
        runner = self.runners.get(key)
        exc = None if task.cancelled() else task.exception()
        ends = exc is not None or key in self._stopped_excluded
        ran_since = None
        if runner is not None and runner.task is task and (runner.finishing or ends):
            del self.runners[key]
            self._stopped_excluded.discard(key)
            ran_since = runner.started_at
        if exc is None:
            return
        if isinstance(exc, ShipperError) or self.cfg.once:
            # --once cannot claim success; a delivery failure concerns every source.
            if self._failure is None:
                self._failure = exc
            self._stop.set()
        else:
            # One broken file must not stop the others: a discovery pass starts it again soon.
            if runner is not None:
                self.metrics.source_failures.labels(runner.spec.service).inc()
            delay = self._note_failure(key, ran_since)
            log.error(
                "source failed, will retry in %.1f s key=%s failures=%d error=%r",
                delay,
                key,
                self._failures[key],
                str(exc),
                exc_info=exc,
            )

    def _note_failure(self, key: str, ran_since: float | None) -> float:
        """Record when the failed source ``key`` may start again; returns the pause.

        1 s after its first failure, doubling with each failure in a row up to the safety-net
        rescan period (the retry of a shipper without backoff: a file that fails every time
        costs one traceback per period, and a transient fault heals within seconds). A source
        that ran that long before it failed starts over at 1 s: counting "in a row" by time
        run rather than by batches shipped, a file that fails after every first batch still
        backs off."""
        cap = max(self.cfg.discover_interval, FULL_SCAN_SECONDS)
        now = time.monotonic()
        ran_long = ran_since is not None and now - ran_since >= cap
        failures = 1 if ran_long else self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_SECONDS * 2 ** min(failures - 1, 16), cap)
        self._retry_at[key] = now + delay
        self._retry_added.set()
        return delay

    def _forget_stale(self, source: str) -> int:
        """Forget the checkpoints of ``source``, which no pass found since the start, not
        written for :data:`STALE_CHECKPOINT_SECONDS`; returns how many. Those of sources found
        stay, excluded ones included: an exclusion lifted a month later resumes at the
        checkpoint instead of sending again what was already stored."""
        cutoff = time.time() - STALE_CHECKPOINT_SECONDS
        stale = [k for k, s in self.registry.items() if s.source == source and s.updated < cutoff]
        for key in stale:
            self.registry.remove(key)
        return len(stale)

    def _judge_removed(self, scan: Scan) -> asyncio.Task[bool]:
        """After the first discovery pass: judge what was removed while the shipper was down
        (:meth:`_forget_removed`), in a task of its own. The start does not wait for it: its
        looks at folders (a removed source's checkpoint may name a folder on a hung NFS mount,
        outside the log roots) held back every source, all shipping stopped, until they
        ended. Each verdict is applied when its look comes back, unless its source was found
        again meanwhile (:meth:`_judgeable`)."""
        self._found_since = set()
        unfound: dict[str, dict[str, Path]] = {}
        if scan.complete:
            found = {s.key for s in scan.specs} | scan.excluded.keys()
            # Taken now, before any source starts: the registry holds the previous run's.
            unfound = unfound_by_source(self.registry, found)
        as_left = {
            key: (state, state.updated)
            for files in unfound.values()
            for key in files
            if (state := self.registry.get(key)) is not None
        }
        return asyncio.create_task(self._forget_removed(scan, unfound, as_left))

    async def _forget_removed(
        self,
        scan: Scan,
        unfound: dict[str, dict[str, Path]],
        as_left: dict[str, tuple[FileState, float]],
    ) -> bool:
        """Count and forget the checkpoints of files removed while the shipper was down (the
        files of ``unfound``, by source, as the first pass left them: ``as_left``), forget
        those gone for long and the ``followed`` entries of containers and pods removed.
        Returns True."""
        try:
            for source, files in unfound.items():
                await self._count_removed(source, files, as_left)
            await self._prune_followed(scan)
        finally:
            self._found_since = None  # (cancelled by a stop too: the next start judges again)
        return True

    async def _count_removed(
        self, source: str, files: dict[str, Path], as_left: dict[str, tuple[FileState, float]]
    ) -> None:
        """Count the files of ``source``, removed while the shipper was down (see
        :mod:`shipper.removed`): found by no pass,
        their lines not shipped were lost without a count (``deleted_unread``), and lines
        written while the shipper was down possibly so (``removed_while_down``); then
        :meth:`_forget_stale`. Which are
        gone is looked at on the thread of the start's looks (a folder listed and its files
        stat'ed per file, which held the loop, then the start, on a slow file system); the
        registry is changed here, on the loop, once they come back."""
        looking = Looking()
        gone = await self._start_look(lambda: gone_files(files, looking), looking)
        if not self._judgeable(source):
            return
        untouched = {key for key in gone if self._untouched(key, *as_left[key])}
        on_loss = self.metrics.count_loss
        nodes = node_names(self.cfg.hostname)
        # Judged before the stale ones are forgotten: those go uncounted.
        counted = count_removed(self.registry, set(), nodes, on_loss, untouched)
        if counted + self._forget_stale(source):
            self.checkpoint_changed()

    def _judgeable(self, source: str) -> bool:
        """Whether the start's verdict on ``source``, a source its first pass did not find,
        still holds: no pass found it since (its folder back, or a listing that had failed:
        its runner reads its checkpoints, and a verdict forgetting them under it would count
        a loss that is none and read its files again), and it runs nowhere."""
        found = self._found_since or set()
        return source not in found and source not in self.runners and source not in self._excluded

    def _untouched(self, key: str, was: FileState, updated: float) -> bool:
        """Whether checkpoint ``key`` of a removed source is as the first pass left it (``was``,
        written at ``updated``): not taken up since by a running source (the same file found
        at another path: its runner's checkpoint from then on, whatever source it names), nor
        held open by one. One file, one source: a verdict does not forget a checkpoint a
        runner uses."""
        state = self.registry.get(key)
        if state is not was or state.updated != updated:
            return False
        return not any(key in r.tailer.open_keys() for r in self.runners.values())

    async def _prune_followed(self, scan: Scan) -> None:
        """After the first discovery pass: forget the ``followed`` entries of containers and
        pods removed while the shipper was down (see :mod:`shipper.followed`). Their folders
        are looked at one by one, so a pass that failed somewhere does not matter: a folder
        that could not be listed is there. Pod folders are looked for under ``--cri-root`` and
        under every folder of pods that ``--path`` symlinks (``/var/log/containers``) led to;
        with ``--path`` and a pass that failed somewhere, not at all (those folders are known
        only from a pass that saw every link). A source found again meanwhile keeps its entry
        (:meth:`_judgeable`)."""
        specs = [*scan.specs, *(spec for spec, _ in scan.excluded.values())]
        pod_roots = {s.path.parent.parent.parent for s in specs if s.key.startswith("cri:")}
        if self.cfg.cri_root:
            pod_roots.add(Path(self.cfg.cri_root))
        if not scan.complete and self.cfg.paths:
            # The folders of pods that --path symlinks lead to are learned from the pass:
            # one that failed (the links' folder could not be listed) may have missed one,
            # and its pods would be looked for under --cri-root only, and dropped.
            pod_roots.clear()
        docker_root = Path(self.cfg.docker_root) if self.cfg.docker_root else None
        sources = self.registry.followed_sources()
        if not sources:
            return
        # Looked at on the thread of the start's looks (roots listed, a folder per entry).
        looking = Looking()
        dropped = await self._start_look(
            lambda: gone_followed(sources, docker_root, pod_roots, looking), looking
        )
        dropped = [source for source in dropped if self._judgeable(source)]
        for source in dropped:
            self.registry.forget_followed(source)
        if dropped:
            log.info(
                "forgot the followed entries of %d %s removed while the shipper was down",
                len(dropped),
                "container or pod" if len(dropped) == 1 else "containers or pods",
            )
            self.checkpoint_changed()

    def _note_sizes(self) -> None:
        """Keep in each open file's checkpoint the size seen now
        (:attr:`~shipper.checkpoint.FileState.seen`, saved with the next write): if its
        container is removed while the shipper is down, the next start knows how much of it was
        never shipped, and whether a file rotated away and deleted meanwhile was read to its
        end (also one watched for its rotate wait: a writer may still append to it). Not a
        write of its own: at a stop the last save carries it."""
        for runner in self.runners.values():
            runner.tailer.note_sizes()

    def _update_gauges(self) -> None:
        """Every second: the sizes noted (see :meth:`_note_sizes`), ``bytes_behind`` of each
        open file -- set only where it moved: 300 idle files were 300 label look-ups a
        second, about a third of an idle shipper's event loop (bench/idle.py --pods)."""
        paths: set[str] = set()
        shown = self._gauge_values
        for runner in self.runners.values():
            for path, behind in runner.tailer.note_sizes():
                label = as_text(path)  # a name that is no UTF-8 failed every scrape
                if shown.get(label) != behind:
                    self.metrics.bytes_behind.labels(label).set(behind)
                    shown[label] = behind
                paths.add(label)
        for gone in self._gauge_paths - paths:
            shown.pop(gone, None)
            with contextlib.suppress(KeyError):
                self.metrics.bytes_behind.remove(gone)
        self._gauge_paths = paths
        # Per-service series of services without a source for a day go (see Metrics).
        self.metrics.services_seen({runner.spec.service for runner in self.runners.values()})
        self.metrics.files.set(len(paths))
        # Batches stepped out of the window while they wait for the names are read too.
        self.metrics.inflight_bytes.set(self.window.used + self.window.aside)

    # -- lifecycle --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish the in-flight batches (at most ``--retry-timeout``); a second
        one exits without waiting, as people expect of a second Ctrl-C."""
        if self._stop.is_set():
            if not self._stop_now.is_set():
                log.warning(
                    "second stop request: exiting now; batches not acknowledged yet are read "
                    "and sent again at the next start"
                )
            self._stop_now.set()
            return
        log.info(
            "stop requested: finishing in-flight batches (at most %g s; stop again to exit at "
            "once)",
            self.cfg.retry_timeout,
        )
        self._stop.set()

    def hang_up(self) -> None:
        """SIGHUP: what Fluent Bit does without hot reload, say so and go on. It was the
        default action, an exit without the final checkpoint save (a ``systemctl reload``, a
        closed terminal), whose lines were then all read and sent again."""
        log.warning(
            "SIGHUP received: logq-shipper does not reload its configuration and keeps "
            "running; restart it to apply a changed configuration (SIGTERM stops it cleanly)"
        )

    def _signal_handlers(self) -> list[tuple[int, Callable[[], None]]]:
        handlers = [(signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop)]
        if hasattr(signal, "SIGHUP"):  # not on Windows
            handlers.append((signal.SIGHUP, self.hang_up))
        return handlers

    async def run(self) -> int:
        if weak := weak_key_warning(self.cfg.shared_key):
            log.warning("%s", weak)
        if exposed := exposed_config(self.cfg.config_file):
            log.warning("%s", exposed)
        loop = asyncio.get_running_loop()
        for sig, handler in self._signal_handlers():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        if self.cfg.metrics_listen is not None:
            try:
                server = self.metrics.serve(self.cfg.metrics_listen)
            except OSError as exc:
                failed = listen_error("--metrics-listen", str(self.cfg.metrics_listen), exc)
                raise StartError(str(failed)) from None
            announce_metrics(server.addresses())
        saver = asyncio.create_task(self._checkpoint_loop())
        ticker = asyncio.create_task(self._tick_loop())
        exit_error: ShipperError | None = None
        if not self.cfg.once:  # --once ends at the end of its files: it polls its few waits
            self.file_watcher = watcher = FileWatcher.create()
            if watcher is not None:
                watcher.start(loop)
                self.metrics.file_watches.set_function(lambda: watcher.watches)
                watcher.on_refused = self.metrics.file_watches_refused.inc
        try:
            await self._ship()
            await self._shutdown()
        finally:
            # Never cancel a save in progress: its thread would keep writing the same tmp file
            # as the final save below. Let the loop finish its write, then save once more.
            ticker.cancel()
            if self._prune is not None:
                self._prune.cancel()
            self._saver_closing = True
            self._dirty.set()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self._retrieve_runner_errors()
            try:
                await self._save()
            except OSError as exc:
                exit_error = ShipperError(
                    f"cannot save checkpoints to {self.registry.path} at exit: "
                    f"{exc.strerror or exc}; lines acknowledged since the last save will be "
                    "read and sent again at the next start (the aggregators drop them as "
                    "duplicates)"
                )
            gz_pool.shutdown()
            self._discovery.shutdown()
            self.looks.shutdown()
            self.close_looks.shutdown()
            await self.client.close()
            self.registry.close()
            self.idle_sweep.close()
            self.poll_sweep.close()
            if self.file_watcher is not None:
                self.file_watcher.close()
            for sig, _ in self._signal_handlers():
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._failure is not None:
            if isinstance(self._failure, ShipperError):
                raise self._failure
            raise ShipperError(f"internal error: {self._failure!r}") from self._failure
        if exit_error is not None:
            raise exit_error
        if not self.cfg.once:  # --once says "once: done" with its figures
            # The last line of a stop, as the aggregator's "stopped cleanly": without it a log
            # that ends at "stop requested" cannot be told from a process killed in its stop.
            log.info(
                "stopped: the checkpoints of every acknowledged line are in %s", self.registry.path
            )
        return 0

    async def _ship(self) -> None:
        """The first discovery pass, then the sources it found shipped: to the end of their
        files (``--once``), or followed with the passes after it until a stop. A stop during
        the first pass does not wait for it either (see :meth:`_follow`), and the sources do
        not wait for the start's looks at sources removed while the shipper was down
        (:meth:`_judge_removed`)."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            scan = await _unless_stopped(self._discover(), stop)
        finally:
            stop.cancel()
        if scan is None:  # (a call hung on a dead file system held the stop)
            log.info("stopped during the first discovery pass: no source was started")
            return
        # The checkpoints and followed entries of what was removed meanwhile are judged from
        # looks on a thread of their own: neither the sources found nor a stop wait for them.
        judging = self._judge_removed(scan)
        try:
            await self._ship_found(scan, judging)
        finally:
            judging.cancel()  # (a stop: the next start judges what is left)
            with contextlib.suppress(asyncio.CancelledError):
                await judging

    async def _ship_found(self, scan: Scan, judging: asyncio.Task[bool]) -> None:
        """Ship the sources of the first pass ``scan``; with ``--once``, wait for the start's
        verdicts on removed sources (``judging``) too, unless stopped: its final save carries
        them, as before they held its start."""
        specs = scan.specs
        if not specs and scan.complete:
            log.warning(
                "%s docker_root=%s cri_root=%s paths=%s excluded=%d",
                "every log file found is excluded (--exclude, label logq.exclude)"
                if scan.excluded
                else "no log files found",
                self.cfg.docker_root,
                self.cfg.cri_root,
                ",".join(self.cfg.paths) or "-",
                len(scan.excluded),
            )
        self._sync_sources(scan)
        if self.cfg.once:
            await self._wait_once()
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await _unless_stopped(judging, stop)
            finally:
                stop.cancel()
            if self._failure is None:
                self._failure = self._once_incomplete(scan)
        else:
            await self._follow()

    def _once_incomplete(self, scan: Scan) -> ShipperError | None:
        """Why ``--once`` cannot claim that everything was shipped, if it cannot: a folder that
        could not be listed, for now (out of fds) or for good (EACCES, a loop of links), or a
        log file that could not be read (its lines skipped). Those were warnings and exit 0,
        while ``--help`` promised 1."""
        if not scan.complete:
            return ShipperError(
                f"shipped the files found, but discovery was incomplete: {scan.failures[0]}"
            )
        unread = [why for r in self.runners.values() for why in r.tailer.unreadable.values()]
        skipped = scan.skipped + unread
        if not skipped:
            return None
        more = (
            f" (and {len(skipped) - 1} more, each in a WARNING above)" if len(skipped) > 1 else ""
        )
        return ShipperError(f"shipped the files found, but logs were skipped: {skipped[0]}{more}")

    def _retrieve_runner_errors(self) -> None:
        """Mark every finished source task's error as seen: the first one is already reported
        through ``self._failure``; the rest would otherwise print "Task exception was never
        retrieved" tracebacks after the clear message."""
        for runner in self.runners.values():
            task = runner.task
            if task is not None and task.done() and not task.cancelled():
                task.exception()

    async def _wait_once(self) -> None:
        tasks = [r.task for r in self.runners.values() if r.task is not None]
        if not tasks:
            return
        stop = asyncio.create_task(self._stop.wait())
        done_all = asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait([stop, done_all], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not done_all.done():
            done_all.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await done_all
        if self._failure is None:
            log.info(
                "once: done sources=%d excluded=%d lines_acked=%d",
                len(tasks),
                len(self._excluded),
                self.lines_acked,
            )

    async def _follow(self) -> None:
        # inotify makes discovery immediate where it exists; scanning stays as the safety net.
        watcher = DirectoryWatcher.create()
        covered = False
        if watcher is not None:
            watcher.start(asyncio.get_running_loop())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            if watcher is not None:
                covered = bool(await _unless_stopped(self._watch(watcher), stop))
            # A container that appeared between the start's scan and the watches being set up
            # sent its events to no one: look once more soon, now that they are in place (else
            # it waited for the safety-net rescan, --discover-interval or longer).
            recheck = watcher is not None
            while not self._stop.is_set():
                woke = await self._pause(watcher, stop, self._scan_delay(recheck, covered))
                if woke is None:
                    continue  # a source failed: its retry may be due before the pass planned
                # After an event, look again soon: a container's files are written one by
                # one, and the scan that the first event triggered may have come too early.
                recheck = woke
                if recheck:
                    await asyncio.sleep(SETTLE_SECONDS)  # let a burst of events finish
                if self._stop.is_set():
                    break
                # Asked to stop during the pass (or the listing of the folders to watch, on
                # the same thread): one hung on a dead file system does not hold up the stop
                # (its final checkpoint save above all).
                scan = await _unless_stopped(self._discover(), stop)
                if scan is None or self._stop.is_set():
                    break  # asked to stop during the pass: start nothing new
                self._sync_sources(scan)
                if watcher is not None and not scan.blind:
                    listed = await _unless_stopped(self._watch(watcher), stop)
                    if listed is None:
                        break
                    covered = listed
        finally:
            stop.cancel()
            if watcher is not None:
                watcher.close()

    async def _pause(
        self, watcher: DirectoryWatcher | None, stop: asyncio.Future[bool], timeout: float
    ) -> bool | None:
        """Wait for the next discovery pass: True when inotify reported a change, False after
        ``timeout`` (or a stop), None when a source failed meanwhile (the wait is worked out
        again: its retry may be due sooner)."""
        self._retry_added.clear()
        retry = asyncio.ensure_future(self._retry_added.wait())
        try:
            if watcher is not None and not self._blind_passes:
                change = asyncio.ensure_future(watcher.wait(timeout))
                done, _ = await asyncio.wait(
                    [stop, change, retry], return_when=asyncio.FIRST_COMPLETED
                )
                change.cancel()
                if change in done:
                    return change.result()
                return None if retry in done else False
            # No inotify, or a root unlistable: events would only bring failing passes (and
            # so would a retry: the pass taking it would fail too).
            waits = [stop] if self._blind_passes else [stop, retry]
            done, _ = await asyncio.wait(waits, timeout=timeout)
            if watcher is not None:
                watcher.changed.clear()
            return None if retry in done else False
        finally:
            retry.cancel()

    def _scan_delay(self, recheck: bool, covered: bool) -> float:
        """Seconds until the next discovery pass unless inotify reports a change first."""
        interval = self.cfg.discover_interval
        if self._blind_passes:
            return min(interval * 2 ** min(self._blind_passes, 16), MAX_BACKOFF_SECONDS)
        if self._scan_failures:
            delay = interval  # a folder failed: look again without waiting for the safety net
        elif recheck:
            delay = min(RECHECK_SECONDS, interval)
        else:
            delay = max(interval, FULL_SCAN_SECONDS) if covered else interval
        if self._retry_at:  # a failed source is started again by the pass at its retry time
            delay = min(delay, max(min(self._retry_at.values()) - time.monotonic(), 0.0))
        return delay

    async def _watch(self, watcher: DirectoryWatcher) -> bool:
        """Watch the folders where log files appear; True when every one of them is watched
        (events then cover every change discovery cares about). The folders are listed on
        the discovery thread (10 ms and more for 1000 containers, at every pass); the watches
        change here, on the loop, which reads their events."""
        dirs, roots_there = await self._off_loop(self._watch_dirs)
        watcher.watch_all(dirs)
        if any(os.path.dirname(p) != _glob_dir(p) for p in self.cfg.paths):
            return False  # a wildcard in a folder part: new folders there are not watched
        if not roots_there:
            return False  # a root given that is not there yet (a host booting): scan for it
        return {str(d) for d in dirs} <= watcher.watched

    def _watch_dirs(self) -> tuple[list[Path], bool]:
        """The folders to watch, and whether every root given is there (a thread's work)."""
        roots = {"docker_root": self.cfg.docker_root, "cri_root": self.cfg.cri_root}
        there = all(key not in self.cfg.given or os.path.isdir(roots[key] or "") for key in roots)
        dirs = directories_to_watch(
            Path(self.cfg.docker_root) if self.cfg.docker_root else None,
            Path(self.cfg.cri_root) if self.cfg.cri_root else None,
            list(self.cfg.paths),
            self.discoverer.listings,
        )
        return dirs, there

    async def _shutdown(self) -> None:
        """Stop reading everywhere, give in-flight batches time to be acknowledged.

        A source reading a file the runtime deleted (held open: it was behind) reads it to
        its end first, within the same time: a restart could not read it any more."""
        self._note_sizes()  # what was there when reading stopped: unread if never shipped
        # A batch waiting for the aggregator names (a placement, see ForwardClient._held) is
        # sent nowhere: it would hold the stop up to --retry-timeout for a name that may not
        # resolve before. Read again at the next start, it waits there again.
        self.client.stop_holding()
        draining = 0
        for runner in self.runners.values():
            if runner.stopping:
                continue  # excluded meanwhile (_stop_excluded): nothing more is read from it
            if runner.tailer.holds_deleted():
                runner.drain_deleted = True
                draining += 1
            else:
                runner.stopping = True
        if draining:
            log.info(
                "stopping: %d sources first read the deleted files they hold to their end "
                "(at most %g s)",
                draining,
                self.cfg.retry_timeout,
            )
        tasks = [r.task for r in self.runners.values() if r.task is not None and not r.task.done()]
        if not tasks:
            return
        # Before the tasks end: their tailers close the files they hold.
        everything = asyncio.gather(*tasks, return_exceptions=True)
        now = asyncio.ensure_future(self._stop_now.wait())
        await asyncio.wait(
            [everything, now], timeout=self.cfg.retry_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        now.cancel()
        pending = {t for t in tasks if not t.done()}
        unfinished = [r for r in self.runners.values() if r.task in pending]
        lost = sum(r.tailer.forget_deleted() for r in unfinished if r.drain_deleted)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "exiting with unacknowledged batches (they will be re-read) sources=%d%s",
                len(pending),
                f"; {lost} deleted files were not read to their end (their unread lines are "
                "lost, counted as deleted_unread)"
                if lost
                else "",
            )
            await asyncio.wait(pending)


def _glob_dir(pattern: str) -> str:
    """The folder part of a ``--path`` glob up to its first wildcard."""
    parts = []
    for part in Path(os.path.dirname(pattern)).parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else ""


def raise_open_files_limit() -> int | None:
    """Raise the soft limit on open files to the hard limit (:mod:`shipper.open_files`); returns
    the soft limit now (None: unlimited)."""
    return raise_limit(log)[1]


def _tls(cfg: Config) -> ReloadingTls | None:
    """The client TLS context of ``cfg``, built again for new connections when its files
    (``--tls-ca``, ``--tls-cert``, ``--tls-key``) change; a ConfigError at start."""
    if not cfg.tls:
        return None
    return ReloadingTls(
        (cfg.tls_ca, cfg.tls_cert, cfg.tls_key), lambda: _tls_context(cfg), (ConfigError,), log
    )


async def _said_if_slow(
    future: asyncio.Future[_T], slow: Callable[[], Callable[[float | None], None]]
) -> _T:
    """``await future``; once it has run :data:`SLOW_PASS_SECONDS`, ``slow()`` says so and
    returns what to call when the wait is over (with the seconds it took; None when the wait
    was given up: a stop)."""
    started = time.monotonic()
    done, _ = await asyncio.wait({future}, timeout=SLOW_PASS_SECONDS)
    if done:
        return future.result()
    over = slow()
    try:
        return await future
    finally:
        over(time.monotonic() - started if future.done() else None)


async def _unless_stopped(work: Awaitable[_T], stop: asyncio.Future[bool]) -> _T | None:
    """``await work``, unless ``stop`` comes first: None then, and ``work`` is cancelled (its
    thread's call, if one runs, is left to end on its own)."""
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        return None
    return task.result()


def _tls_context(cfg: Config) -> ssl.SSLContext:
    try:
        ctx = tls_context(cfg.tls_ca, cfg.tls_verify)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load --tls-ca {cfg.tls_ca}: {exc}; it must be PEM") from None
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        try:
            load_key_pair(
                ctx, cfg.tls_cert, cfg.tls_key, cfg.tls_key_password, PASSPHRASE_FROM, log
            )
        except KeyPairError as exc:
            raise ConfigError(str(exc)) from None
    return ctx


#: Where the passphrase of an encrypted ``--tls-key`` comes from, for errors.
PASSPHRASE_FROM = f"--tls-key-password or ${TLS_KEY_PASSWORD_ENV}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit status.

    A Ctrl-C before :meth:`Shipper.run` takes SIGINT over (a graceful stop from then on) ends
    start-up with 130 and one line."""
    redeliver_dropped_interrupts()
    try:
        return _main(argv)
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        return interrupted("logq-shipper")


def _main(argv: list[str] | None) -> int:
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    raise_open_files_limit()
    try:
        return run_held(lambda: _amain(cfg))
    except ConfigError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 2
    except ShipperError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 1


async def _amain(cfg: Config) -> int:
    return await Shipper(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
