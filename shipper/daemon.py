"""logq-shipper: the host daemon (entry point ``logq-shipper``).

Discovers log sources, runs one :class:`~shipper.source.SourceRunner` per source, persists
checkpoints as acks arrive, and handles the process lifecycle:

* ``--once``: ship what the files hold now, wait for every ack, exit 0 -- or exit 1 with one
  line saying why (no aggregator reachable within ``--retry-timeout``, wrong shared key...).
* follow mode (default): rescan for new containers as soon as inotify reports a change in the
  log roots (else every ``--discover-interval`` seconds), drain and release sources that
  disappeared.
* SIGTERM / SIGINT: stop reading, wait for in-flight acks (at most ``--retry-timeout``), save
  checkpoints, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from shipper.checkpoint import Registry
from shipper.config import Config, load_config
from shipper.discover import SourceSpec, discover_all
from shipper.errors import ConfigError, ShipperError
from shipper.inotify import DirectoryWatcher, directories_to_watch
from shipper.logs import setup_logging
from shipper.metrics import Metrics
from shipper.sender import ForwardClient, tls_context
from shipper.source import SourceRunner, Window

log = logging.getLogger("logq.shipper")

STALE_CHECKPOINT_SECONDS = 7 * 24 * 3600
SETTLE_SECONDS = 0.05
"""After an inotify event, wait this long for the rest of the burst before rescanning."""
RECHECK_SECONDS = 0.5
"""After an event-driven rescan, rescan once more this soon (files of a new container)."""


class Shipper:
    """The daemon's state: configuration, registry, client, and the running sources."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.registry = Registry(cfg.state_dir)
        self.window = Window(cfg.max_inflight_bytes)
        self.client = ForwardClient(
            cfg.aggregators,
            hostname=cfg.hostname,
            shared_key=cfg.shared_key,
            username=cfg.username,
            password=cfg.password,
            tls=_tls(cfg),
            ack_timeout=cfg.ack_timeout,
            give_up_after=cfg.retry_timeout if cfg.once else None,
            on_retry=lambda ep: self.metrics.retries.labels(ep).inc(),
        )
        for endpoint in cfg.aggregators:  # at 0 from the start (see Metrics.watch_service)
            self.metrics.retries.labels(str(endpoint))
        self.runners: dict[str, SourceRunner] = {}
        self._dirty = asyncio.Event()
        self._saved = asyncio.Condition()
        self._generation = 0
        self._saved_generation = 0
        self._stop = asyncio.Event()
        self._saver_closing = False
        """Set at exit: the checkpoint loop finishes its write in progress, then returns."""
        self._failure: BaseException | None = None
        self.lines_acked = 0
        """Lines acknowledged since start (all sources)."""
        self._gauge_paths: set[str] = set()

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_changed(self) -> int:
        """Note a registry change; returns the generation to wait for with
        :meth:`checkpoint_saved`."""
        self._generation += 1
        self._dirty.set()
        return self._generation

    async def checkpoint_saved(self, generation: int) -> None:
        """Wait until the registry holding ``generation`` is durable on disk."""
        async with self._saved:
            await self._saved.wait_for(lambda: self._saved_generation >= generation)

    async def _tick_loop(self) -> None:
        """Prove to ``/healthz`` that the event loop runs (metrics.py)."""
        while True:
            self.metrics.tick()
            await asyncio.sleep(1.0)

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
                # Acks keep their place in memory; sources wait (bounded) until a write works.
                log.error(
                    "cannot write checkpoints, retrying path=%s error=%r",
                    self.registry.path,
                    str(exc),
                )
                self._dirty.set()
                await asyncio.sleep(1.0)

    async def _save(self) -> None:
        generation = self._generation
        data = self.registry.snapshot()
        await asyncio.to_thread(self.registry.write, data)
        async with self._saved:
            self._saved_generation = max(self._saved_generation, generation)
            self._saved.notify_all()

    # -- sources ----------------------------------------------------------------------------

    def _discover(self) -> list[SourceSpec]:
        return discover_all(self.cfg.docker_root, self.cfg.cri_root, self.cfg.paths)

    def _sync_sources(self, specs: list[SourceSpec]) -> None:
        seen = {s.key for s in specs}
        for spec in specs:
            if spec.key not in self.runners:
                log.info("new source key=%s service=%s path=%s", spec.key, spec.service, spec.path)
                runner = SourceRunner(self, spec)
                self.runners[spec.key] = runner
                runner.start()
                assert runner.task is not None
                runner.task.add_done_callback(self._runner_done)
        for key, runner in self.runners.items():
            if key not in seen and not runner.finishing:
                log.info("source gone, draining key=%s", key)
                runner.finishing = True

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        key = task.get_name()
        runner = self.runners.get(key)
        exc = None if task.cancelled() else task.exception()
        if runner is not None and runner.task is task and (runner.finishing or exc is not None):
            del self.runners[key]
        if exc is None:
            return
        if isinstance(exc, ShipperError) or self.cfg.once:
            # --once cannot claim success; a delivery failure concerns every source.
            if self._failure is None:
                self._failure = exc
            self._stop.set()
        else:
            # One broken file must not stop the others: it is picked up again at the next scan.
            log.error(
                "source failed, will retry at the next scan key=%s error=%r",
                key,
                str(exc),
                exc_info=exc,
            )

    def _gc_registry(self, specs: list[SourceSpec]) -> None:
        live = {s.key for s in specs}
        cutoff = time.time() - STALE_CHECKPOINT_SECONDS
        for key, state in self.registry.items():
            if state.source not in live and state.updated < cutoff:
                self.registry.remove(key)

    def _update_gauges(self) -> None:
        paths: set[str] = set()
        for runner in self.runners.values():
            for path, behind in runner.tailer.behind():
                self.metrics.bytes_behind.labels(path).set(behind)
                paths.add(path)
        for gone in self._gauge_paths - paths:
            with contextlib.suppress(KeyError):
                self.metrics.bytes_behind.remove(gone)
        self._gauge_paths = paths
        self.metrics.files.set(len(paths))
        self.metrics.inflight_bytes.set(self.window.used)

    # -- lifecycle --------------------------------------------------------------------------

    def request_stop(self) -> None:
        log.info("stop requested: finishing in-flight batches")
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        if self.cfg.metrics_listen is not None:
            try:
                self.metrics.serve(self.cfg.metrics_listen)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {self.cfg.metrics_listen}: {exc.strerror or exc}; "
                    "pick another --metrics-listen"
                ) from None
        saver = asyncio.create_task(self._checkpoint_loop())
        ticker = asyncio.create_task(self._tick_loop())
        try:
            specs = self._discover()
            if not specs:
                log.warning(
                    "no log files found docker_root=%s cri_root=%s paths=%s",
                    self.cfg.docker_root,
                    self.cfg.cri_root,
                    ",".join(self.cfg.paths) or "-",
                )
            self._gc_registry(specs)
            self._sync_sources(specs)
            if self.cfg.once:
                await self._wait_once()
            else:
                await self._follow()
            await self._shutdown()
        finally:
            # Never cancel a save in progress: its thread would keep writing the same tmp file
            # as the final save below. Let the loop finish its write, then save once more.
            ticker.cancel()
            self._saver_closing = True
            self._dirty.set()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self._retrieve_runner_errors()
            await self._save()
            await self.client.close()
            self.registry.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._failure is not None:
            if isinstance(self._failure, ShipperError):
                raise self._failure
            raise ShipperError(f"internal error: {self._failure!r}") from self._failure
        return 0

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
            log.info("once: done sources=%d lines_acked=%d", len(tasks), self.lines_acked)

    async def _follow(self) -> None:
        # inotify makes discovery immediate where it exists; the interval stays as the fallback.
        watcher = DirectoryWatcher.create()
        if watcher is not None:
            watcher.start(asyncio.get_running_loop())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            recheck = False
            while not self._stop.is_set():
                if watcher is not None:
                    watcher.watch_all(self._watch_dirs())
                    # After an event, look again soon: a container's files are written one by
                    # one, and the scan that the first event triggered may have come too early.
                    timeout = (
                        min(RECHECK_SECONDS, self.cfg.discover_interval)
                        if recheck
                        else (self.cfg.discover_interval)
                    )
                    change = asyncio.ensure_future(watcher.wait(timeout))
                    await asyncio.wait([stop, change], return_when=asyncio.FIRST_COMPLETED)
                    recheck = change.done() and not change.cancelled() and change.result()
                    change.cancel()
                    if recheck:
                        await asyncio.sleep(SETTLE_SECONDS)  # let a burst of events finish
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop), self.cfg.discover_interval)
                if self._stop.is_set():
                    break
                self._sync_sources(self._discover())
                self._update_gauges()
        finally:
            stop.cancel()
            if watcher is not None:
                watcher.close()

    def _watch_dirs(self) -> list[Path]:
        return directories_to_watch(
            Path(self.cfg.docker_root) if self.cfg.docker_root else None,
            Path(self.cfg.cri_root) if self.cfg.cri_root else None,
            list(self.cfg.paths),
        )

    async def _shutdown(self) -> None:
        """Stop reading everywhere, give in-flight batches time to be acknowledged."""
        for runner in self.runners.values():
            runner.stopping = True
        tasks = [r.task for r in self.runners.values() if r.task is not None and not r.task.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.cfg.retry_timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "exiting with unacknowledged batches (they will be re-read) sources=%d",
                len(pending),
            )
            await asyncio.wait(pending)


def _tls(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    try:
        return tls_context(cfg.tls_ca, cfg.tls_verify)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load --tls-ca {cfg.tls_ca}: {exc}; it must be PEM") from None


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        return asyncio.run(_amain(cfg))
    except ConfigError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 2
    except ShipperError as exc:
        print(f"logq-shipper: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _amain(cfg: Config) -> int:
    return await Shipper(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
