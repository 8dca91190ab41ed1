"""Prometheus metrics of logq-shipper (served on ``--metrics-listen``).

Counters are per service so that a noisy or stuck service stands out; ``bytes_behind`` is per
file: the bytes written by the runtime that the aggregators have not acknowledged yet -- the one
number to alert on when shipping falls behind.

Services come and go (Docker names such as ``vigilant_turing``, short-lived ECS tasks and
Kubernetes jobs): a service's own series are removed once no source of it has been followed for
:data:`SERVICE_SERIES_IDLE_SECONDS`, or ``/metrics`` (and Prometheus) would grow with every
container the host ever ran. One that comes back starts again at 0 (``increase()`` takes
resets). ``bytes_behind`` goes with its file.

The same port answers ``/healthz`` for liveness probes: 200 while the shipper's event loop ticks,
503 once it has been stuck for :data:`STALL_SECONDS` (the HTTP server runs on its own thread, so
a page of metrics alone would not show that), and 503 while checkpoints cannot be written (a
full or read-only ``--state-dir``: shipping goes on, but a restart would re-send everything
since the last write). ``/livez`` answers only the first question: use it for a liveness probe,
since restarting a shipper does not free its disk (each restart would re-send everything since
the last checkpoint), and ``/healthz`` for alerts and readiness. Slow or failing deliveries are
not a reason to restart a shipper and fail neither: alert on ``logq_shipper_bytes_behind`` and
retries.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import MetricsHandler

from shipper.config import Endpoint
from shipper.losses import LOSS_REASONS

#: ``/healthz`` answers 503 once the event loop has not ticked for this long.
STALL_SECONDS = 30.0
#: A service's own series are removed after this long without a source of it being followed
#: (the aggregator keeps its per-service series as long: ``aggregator.metrics``).
SERVICE_SERIES_IDLE_SECONDS = 24 * 3600.0
#: How often (seconds) idle services are looked for.
SWEEP_SECONDS = 60.0


class Metrics:
    """The shipper's metrics in their own registry (several shippers can live in one process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """The one clock of :meth:`watch_service` and :meth:`services_seen` (monotonic: a
        wall clock stepped back a day would keep idle series, stepped forward drop live ones).
        Tests pass their own."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines_read = Counter(
            "logq_shipper_lines_read", "Lines read from log files", ["service"], registry=r
        )
        self.bytes_read = Counter(
            "logq_shipper_bytes_read", "Bytes read from log files", ["service"], registry=r
        )
        self.lines_acked = Counter(
            "logq_shipper_lines_acked",
            "Lines acknowledged by an aggregator",
            ["service"],
            registry=r,
        )
        self.bytes_acked = Counter(
            "logq_shipper_bytes_acked",
            "File bytes whose lines were acknowledged",
            ["service"],
            registry=r,
        )
        self.retries = Counter(
            "logq_shipper_retries",
            "Delivery attempts that failed and were retried",
            ["endpoint"],
            registry=r,
        )
        self.truncated = Counter(
            "logq_shipper_truncated_lines",
            "Lines cut at --max-line-bytes",
            ["service"],
            registry=r,
        )
        self.invalid_utf8 = Counter(
            "logq_shipper_invalid_utf8_lines",
            "Lines with invalid UTF-8 (replaced)",
            ["service"],
            registry=r,
        )
        self.malformed = Counter(
            "logq_shipper_malformed_lines",
            "Lines not in the runtime's format, shipped raw",
            ["service"],
            registry=r,
        )
        self.bad_times = Counter(
            "logq_shipper_bad_time_lines",
            "Lines whose runtime time does not parse or is outside what an EventTime carries "
            "(before 1970, from 2106-02-07): shipped with the read time, the text kept",
            ["service"],
            registry=r,
        )
        self.lost_files = Counter(
            "logq_shipper_files_lost",
            "Log files deleted, compressed or truncated before they were read to the end "
            "(their unread lines are lost); reason: deleted_unread, truncated_without_copy, "
            "truncated_in_place (possible: only lines written since the last look), "
            "rotated_unseen (at least one per file when compressed copies show them, else one "
            "per look that found files may be missing), pin_limit (one per episode of files "
            "that may be lost), removed_while_down (possible: a container or pod removed while "
            "the shipper was down, after all it had seen was shipped)",
            ["service", "reason"],
            registry=r,
        )
        self.bytes_behind = Gauge(
            "logq_shipper_bytes_behind",
            "Bytes of a file not acknowledged yet",
            ["path"],
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "logq_shipper_inflight_bytes", "Bytes read and waiting for an ack", registry=r
        )
        self.files = Gauge("logq_shipper_open_files", "Log files being followed", registry=r)
        self.excluded_sources = Gauge(
            "logq_shipper_excluded_sources",
            "Log sources found at the last discovery pass and not read: they match --exclude "
            "or carry the label logq.exclude=true",
            registry=r,
        )
        self.sources_waiting = Gauge(
            "logq_shipper_sources_waiting_for_fd",
            "Log sources waiting for a file descriptor (the open-files limit is reached: raise "
            "LimitNOFILE / ulimit -n)",
            registry=r,
        )
        self.sources_waiting.set_function(_waiting_sources)
        self.file_watches = Gauge(
            "logq_shipper_file_watches",
            "Live log files watched with inotify (the others are polled every --poll-interval)",
            registry=r,
        )
        self.file_watches_refused = Counter(
            "logq_shipper_file_watches_refused",
            "Log files the kernel refused an inotify watch (fs.inotify.max_user_watches "
            "reached): they are polled every --poll-interval; raise the limit",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "logq_shipper_checkpoint_write_failures",
            "Failed writes of the checkpoint registry (full or read-only --state-dir)",
            registry=r,
        )
        self.discovery_failures = Counter(
            "logq_shipper_discovery_failures",
            "Discovery passes that could not list every log folder (out of file descriptors, "
            "permissions); the sources already followed are kept",
            registry=r,
        )
        self._problems: dict[str, str] = {}
        self._service_seen: dict[str, float] = {}
        """Service -> when a source of it was last followed (:attr:`clock`)."""
        self._swept_at: float | None = None
        """When idle services were last looked for (:attr:`clock`)."""

        self.last_tick = time.monotonic()

    def watch_service(self, service: str) -> None:
        """Create a service's per-service series at 0 when its first source is found.

        An alert on ``increase(...[1h]) > 0`` needs a sample before the first loss: a series
        that first appears already at 1 has no increase to see. (Its next restart then shows
        as a counter reset from 0, which ``increase`` does count.) The service counts as seen
        now: a source that ends before the next :meth:`services_seen` still has its series
        removed a day later."""
        if service not in self._service_seen:
            for counter in self._service_counters():
                counter.labels(service)
            for reason in LOSS_REASONS:
                self.lost_files.labels(service, reason)
        self._service_seen[service] = self.clock()

    def services_seen(self, services: Iterable[str]) -> None:
        """The services of the sources followed now (called every second or so): their series
        stay (created if need be); those of services without a source for
        :data:`SERVICE_SERIES_IDLE_SECONDS` are removed, at most every :data:`SWEEP_SECONDS`."""
        for service in services:
            self.watch_service(service)
        now = self.clock()
        if self._swept_at is None:
            self._swept_at = now
        if now - self._swept_at < SWEEP_SECONDS:
            return
        self._swept_at = now
        idle = [s for s, t in self._service_seen.items() if now - t >= SERVICE_SERIES_IDLE_SECONDS]
        for service in idle:
            del self._service_seen[service]
            for counter in self._service_counters():
                with contextlib.suppress(KeyError):
                    counter.remove(service)
            for reason in LOSS_REASONS:
                with contextlib.suppress(KeyError):
                    self.lost_files.remove(service, reason)

    def services(self) -> int:
        """How many services have series now."""
        return len(self._service_seen)

    def _service_counters(self) -> tuple[Counter, ...]:
        """The counters labelled by ``service`` alone."""
        return (
            self.lines_read,
            self.bytes_read,
            self.lines_acked,
            self.bytes_acked,
            self.truncated,
            self.invalid_utf8,
            self.malformed,
            self.bad_times,
        )

    def tick(self) -> None:
        """Called from the event loop every second (see :meth:`health`)."""
        self.last_tick = time.monotonic()

    def set_problem(self, name: str, reason: str | None) -> None:
        """Make ``/healthz`` answer 503 with ``reason`` until it is cleared with None."""
        if reason is None:
            self._problems.pop(name, None)
        else:
            self._problems[name] = reason

    def liveness(self) -> tuple[int, str]:
        """``/livez``: 503 only while the event loop is stuck (what a restart can fix)."""
        stalled = time.monotonic() - self.last_tick
        if stalled > STALL_SECONDS:
            return 503, f"event loop stalled for {stalled:.0f}s\n"
        return 200, "ok\n"

    def health(self) -> tuple[int, str]:
        """``/healthz``: the status and a one-line reason."""
        status, text = self.liveness()
        if status != 200:
            return status, text
        problems = list(self._problems.values())  # a copy: the event loop thread writes it
        if problems:
            return 503, "; ".join(problems) + "\n"
        return 200, "ok\n"

    def serve(self, listen: Endpoint) -> ThreadingHTTPServer:
        """Serve ``/metrics`` (any other path too, as Prometheus' own server does) and
        ``/healthz`` on a daemon thread; returns the server (``server_address`` has the port)."""
        metrics = self

        class Handler(MetricsHandler.factory(self.registry)):  # type: ignore[misc]
            def do_GET(self) -> None:
                path = urlparse(self.path).path
                if path not in ("/healthz", "/livez"):
                    super().do_GET()
                    return
                status, text = metrics.health() if path == "/healthz" else metrics.liveness()
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        family = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family})
        server = server_class((listen.host, listen.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


def _waiting_sources() -> int:
    from shipper.fd_budget import waiting_sources

    return waiting_sources()
