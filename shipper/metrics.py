"""Prometheus metrics of logq-shipper (served on ``--metrics-listen``).

Counters are per service so that a noisy or stuck service stands out; ``bytes_behind`` is per
file: the bytes written by the runtime that the aggregators have not acknowledged yet -- the one
number to alert on when shipping falls behind.

Services come and go (Docker names such as ``vigilant_turing``, short-lived ECS tasks and
Kubernetes jobs): a service's own series are removed once no source of it has been followed for
:data:`~shipper.metric_bounds.SERVICE_SERIES_IDLE_SECONDS`, as the aggregator's once it has no
rows (:mod:`shipper.metric_bounds`), or ``/metrics`` (and Prometheus) would grow with every
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
import errno
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import MetricsHandler

from shipper.config import Endpoint
from shipper.losses import LOSS_REASONS
from shipper.metric_bounds import (
    MAX_METRICS_CONNECTIONS,
    SERVICE_SERIES_IDLE_SECONDS,
    SILENT_EVICT_SECONDS,
    SWEEP_SECONDS,
    IdleNames,
    MetricsSlots,
)

#: ``/healthz`` answers 503 once the event loop has not ticked for this long.
STALL_SECONDS = 30.0
#: A loss counted before any scrape showed its series at 0 waits for one at most this long
#: (seconds; Prometheus scrapes every 15 s to 1 min): see :meth:`Metrics.count_loss`.
HOLD_SECONDS = 300.0
#: Seconds a metrics connection may wait on its client, to send its request or to read the
#: reply, before it is closed: each holds a thread and a descriptor, and the descriptors come
#: out of the reserve kept for the aggregator sockets and checkpoint saves
#: (:mod:`shipper.fd_budget`); a scraper or probe sends its request as soon as it connects.
REQUEST_TIMEOUT_SECONDS = 10.0


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
        self.multiline_joined = Counter(
            "logq_shipper_multiline_records",
            "Records of several lines joined by --multiline (a stack trace each)",
            ["service"],
            registry=None,  # listed once a source groups lines (see multiline_listed)
        )
        self.multiline_cut = Counter(
            "logq_shipper_multiline_cut_records",
            "--multiline records cut at 1,000 lines or --max-line-bytes: the trace goes on "
            "in a next record",
            ["service"],
            registry=None,  # listed once a source groups lines (see multiline_listed)
        )
        self.cuts_dropped = Counter(
            "logq_shipper_cuts_dropped",
            "Lines of --multiline sources flushed as they are (split lines, records) whose cut the "
            "checkpoint had no room for: a restart before the next ack may store them twice",
            ["service"],
            registry=None,  # listed once a source groups lines (see multiline_listed)
        )
        self._multiline_listed = False
        self.lost_files = Counter(
            "logq_shipper_files_lost",
            "Log files deleted, compressed or truncated before they were read to the end "
            "(their unread lines are lost); reason: deleted_unread, truncated_without_copy, "
            "truncated_in_place (possible: only lines written since the last look), "
            "rotated_unseen (at least one per file when compressed copies show them, else one "
            "per look that found files may be missing), pin_limit (one per episode of files "
            "that may be lost), removed_while_down (possible: a container or pod removed while "
            "the shipper was down, after all it had seen was shipped), rotated_then_deleted "
            "(possible: a file rotated away before the stop, read to its size then, deleted "
            "while the shipper was down; lines appended to it after the stop, if any)",
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
        self.source_failures = Counter(
            "logq_shipper_source_failures",
            "Log sources that stopped on an unexpected error (one broken file; the others go "
            "on): each is started again after a backoff, see the ERROR 'source failed' line",
            ["service"],
            registry=r,
        )
        self.discovery_failures = Counter(
            "logq_shipper_discovery_failures",
            "Discovery passes that could not list every log folder for a passing reason (out "
            "of file descriptors, EIO); the sources already followed are kept. A folder the "
            "shipper may not read is warned about once and skipped, not counted here",
            registry=r,
        )
        self.metrics_connections_refused = Counter(
            "logq_shipper_metrics_connections_refused",
            f"Connections to --metrics-listen closed unanswered: {MAX_METRICS_CONNECTIONS} "
            "were being served already, or the connection had sent no request for "
            f"{SILENT_EVICT_SECONDS:g} s and a newcomer took its slot (as the aggregator's "
            "logq_aggregator_metrics_connections_refused_total)",
            registry=r,
        )
        self._problems: dict[str, str] = {}
        self._service_seen = IdleNames(SERVICE_SERIES_IDLE_SECONDS, SWEEP_SECONDS)
        """The services with series, and when a source of each was last followed
        (:attr:`clock`)."""
        self._lock = threading.Lock()
        """Guards the scrape bookkeeping below: scrapes run on the HTTP server's threads."""
        self._serving = False
        self._scrapes = 0
        """Scrapes begun so far (their numbers: 1, 2, ...)."""
        self._exposed = 0
        """The number of the latest-begun scrape that has completed."""
        self._born: dict[str, int] = {}
        """Service -> :attr:`_scrapes` when its series were created: a scrape numbered above
        it, once completed, has shown them at 0."""
        self._held: dict[tuple[str, str], tuple[int, float]] = {}
        """(service, reason) -> (losses, since when, :attr:`clock`) not counted yet: no scrape
        has shown the series at 0 (see :meth:`count_loss`)."""

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
            with self._lock:
                self._born[service] = self._scrapes
        self._service_seen.seen(service, self.clock())

    def count_loss(self, service: str, reason: str) -> None:
        """Count a file of ``service`` that lost lines for ``reason`` (one of
        :data:`~shipper.losses.LOSS_REASONS`), its series created at 0 first.

        Created at 0 moments before the loss, as the start-up counts do (``removed_while_down``
        and ``deleted_unread`` of sources removed while the shipper was down, the checkpointed
        files a source finds gone at its start), the series still reached Prometheus born at
        1: its first sample already 1, ``increase()`` and ``rate()`` saw nothing and the alert
        of operations.md never fired -- on Kubernetes, where a rolled-out shipper is a new
        target, for every pod deleted during the rollout. While metrics are served, such a
        loss is counted once a scrape (:func:`is_scrape`) has shown the series at 0 (the next
        scrape shows the increase), or after :data:`HOLD_SECONDS` if none comes. Without
        ``--metrics-listen`` nothing scrapes: counted at once."""
        self.watch_service(service)
        with self._lock:
            if not self._serving or self._exposed > self._born.get(service, -1):
                hold = False
            else:
                held, since = self._held.get((service, reason), (0, self.clock()))
                self._held[(service, reason)] = (held + 1, since)
                hold = True
        if not hold:
            self.lost_files.labels(service, reason).inc()

    def _scrape_begins(self) -> int:
        """A scrape starts: its number (see :meth:`_scraped`)."""
        with self._lock:
            self._scrapes += 1
            return self._scrapes

    def _scraped(self, number: int) -> None:
        """Scrape ``number`` has completed: the series created before it began were shown at 0,
        and the losses held for them are counted now (the next scrape shows them)."""
        with self._lock:
            self._exposed = max(self._exposed, number)
            ready = [key for key in self._held if self._born.get(key[0], -1) < self._exposed]
            counts = [(key, self._held.pop(key)[0]) for key in ready]
        for (service, reason), n in counts:
            self.lost_files.labels(service, reason).inc(n)

    def _release_overdue(self) -> None:
        """Count the losses held for :data:`HOLD_SECONDS` (nothing scrapes, or rarely)."""
        now = self.clock()
        with self._lock:
            due = [k for k, (_, since) in self._held.items() if now - since >= HOLD_SECONDS]
            counts = [(key, self._held.pop(key)[0]) for key in due]
        for (service, reason), n in counts:
            self.lost_files.labels(service, reason).inc(n)

    def services_seen(self, services: Iterable[str]) -> None:
        """The services of the sources followed now (called every second or so): their series
        stay (created if need be); those of services without a source for
        :data:`SERVICE_SERIES_IDLE_SECONDS` are removed, at most every :data:`SWEEP_SECONDS`."""
        for service in services:
            self.watch_service(service)
        self._release_overdue()
        for service in self._service_seen.idle(self.clock()):
            with self._lock:
                self._born.pop(service, None)
            for counter in self._service_counters():
                with contextlib.suppress(KeyError):
                    counter.remove(service)
            for reason in LOSS_REASONS:
                with contextlib.suppress(KeyError):
                    self.lost_files.remove(service, reason)

    def services(self) -> int:
        """How many services have series now."""
        return len(self._service_seen)

    def multiline_listed(self) -> None:
        """A source with ``--multiline`` (or the ``logq.multiline`` label) started: its three
        counters are on ``/metrics`` from now on. A shipper none of whose sources groups lines
        lists none of them, as before the option existed."""
        if not self._multiline_listed:
            self._multiline_listed = True
            for counter in (self.multiline_joined, self.multiline_cut, self.cuts_dropped):
                self.registry.register(counter)

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
            self.multiline_joined,
            self.multiline_cut,
            self.cuts_dropped,
            self.source_failures,
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

    def serve(self, listen: Endpoint) -> _BoundedServer:
        """Serve ``/metrics`` (only :func:`is_scrape` requests release held losses),
        ``/healthz`` and ``/livez`` on a daemon thread; returns the server (``server_address``
        has the port). Any other path is a 404 naming those three, as on the aggregator's port:
        Prometheus' own server answered every path with the metrics, so a probe with a typo
        (``/healtz``) was a 200 for good, even with the event loop stuck."""
        metrics = self

        class Handler(MetricsHandler.factory(self.registry)):  # type: ignore[misc]
            timeout = REQUEST_TIMEOUT_SECONDS

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the socket closes only once every file made of it has
                # The whole request within the timeout: the socket's own applies to each read,
                # and a client sending a byte at a time (a slowloris) would never be dropped.
                self.rfile = io.BufferedReader(_Deadline(self.connection, self.timeout))

            def parse_request(self) -> bool:
                # A connection whose slot went to a newcomer was shut down: the end of file
                # cut its head short, and answering that head (rendering the page) failed on
                # the closed socket with a traceback on stderr for every one evicted.
                slots = self.server.slots
                ok = slots.holds(self.connection) and bool(super().parse_request())
                if not slots.answering(self.connection):  # its whole head has come
                    self.close_connection = True
                    return False
                self.connection.settimeout(self.timeout)  # the reply's own time to be read
                return ok

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                if path not in ("/metrics", "/healthz", "/livez"):
                    self._answer(404, "not found: try /metrics, /healthz or /livez\n")
                    return
                if path == "/metrics":
                    number = metrics._scrape_begins() if is_scrape(self.path) else None
                    super().do_GET()
                    if number is not None:
                        metrics._scraped(number)
                    return
                self._answer(*(metrics.health() if path == "/healthz" else metrics.liveness()))

            def _answer(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = _listening_server(listen, Handler)
        server.on_refused = self.metrics_connections_refused.inc
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        with self._lock:
            self._serving = True
        return server


class _Deadline(io.RawIOBase):
    """Reads of a socket that all end by one deadline (:exc:`TimeoutError` past it)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not come in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most :data:`MAX_METRICS_CONNECTIONS` at once
    (:class:`~shipper.metric_bounds.MetricsSlots`)."""

    def __init__(self, address: Any, handler: type) -> None:
        self.slots: MetricsSlots[socket.socket] = MetricsSlots()
        self.on_refused: Callable[[], None] = lambda: None
        """Called for each connection closed unanswered, refused or evicted (the counter
        ``logq_shipper_metrics_connections_refused_total``)."""
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        closed = self.slots.admit(request)
        if closed is not None:
            self.on_refused()  # the newcomer, or the silent one whose slot it takes
        if closed is request:
            self.shutdown_request(request)  # closed unanswered; the scraper retries
            return
        if closed is not None:  # its thread's read ends at once, and it answers nothing
            with contextlib.suppress(OSError):
                closed.shutdown(socket.SHUT_RDWR)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.slots.release(request)
        super().shutdown_request(request)

    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) listened on, the port the kernel's for a ``--metrics-listen``
        port 0."""
        host, port = self.server_address[:2]
        return [(str(host), int(port))]


class _DualStackServer(_BoundedServer):
    """Listens on every IPv6 address and, through IPv4-mapped ones, every IPv4 address."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def addresses(self) -> list[tuple[str, int]]:
        """Both families, IPv4 first, as the aggregator names its ``:PORT`` (one socket here)."""
        port = int(self.server_address[1])
        return [("0.0.0.0", port), ("::", port)]


def _listening_server(listen: Endpoint, handler: type) -> _BoundedServer:
    """The HTTP server on ``listen``. Host ``""`` (``--metrics-listen :PORT``): IPv4 and IPv6
    both, whatever the host's ``net.ipv6.bindv6only``; IPv4 alone on a host without IPv6
    (``ipv6.disable=1``), where binding ``[::]`` fails."""
    if not listen.host:
        try:
            return _DualStackServer(("::", listen.port), handler)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
        return _BoundedServer(("0.0.0.0", listen.port), handler)
    family = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_BoundedServer,), {"address_family": family})
    return server_class((listen.host, listen.port), handler)


def is_scrape(target: str) -> bool:
    """Whether a GET of ``target`` (path and query) is a scrape that releases the losses held
    for it (see :meth:`Metrics.count_loss`): ``/metrics`` with no ``name[]`` filter, the only
    request sure to show every series at 0. A filtered request leaves the others out, and
    another path is no Prometheus scrape (a probe, a browser's ``/favicon.ico``): released by
    them, the next scrape saw the series born at 1 (R2s19)."""
    url = urlparse(target)
    return url.path == "/metrics" and "name[]" not in parse_qs(url.query)


def _waiting_sources() -> int:
    from shipper.fd_budget import waiting_sources

    return waiting_sources()
