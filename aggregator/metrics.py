"""Prometheus metrics of the aggregator and the tiny HTTP endpoint serving them (+ ``/healthz``).

Each :class:`Metrics` owns its registry, so several aggregators in one test process do not share
counters. Names follow Prometheus conventions (``_total`` counters, base units: bytes, seconds).
"/healthz" answers 200 (``ok``) while the aggregator takes data and can write to its warehouse,
503 with the reason in the body when

* it is starting: the endpoint is up first, before the buffer left by the previous run is read
  (seconds per GiB), and says ``starting: ...`` (with the progress) until the Forward port
  listens. ``/metrics`` answers 200 all along: it is the liveness check, /healthz the readiness
  one (a restart during a long start would only begin the reading again);
* flushes have been failing for longer than ``unhealthy_after`` seconds (``--unhealthy-after``;
  the data is still safe in the buffer, but an orchestrator should know), or
* the ``--buffer-dir`` volume is too full to take data: appends wait (acks are withheld, shippers
  resend later or elsewhere) until flushes free space, so that a flush always has room to run.
  ``logq_aggregator_buffer_disk_free_bytes`` shows how close the volume is, or
* the buffer has failed to seal or open its segments (a full volume, an I/O error) for longer
  than ``unhealthy_after`` (each failure counts in ``logq_aggregator_storage_errors_total``;
  the next flush interval tries again), or
* a background task of the aggregator (the flush loop, compaction...) stopped on an internal
  error: that needs a restart, and the log holds its traceback, or
* it is stopping (SIGTERM, SIGINT): from the stop request until the exit it takes no more
  data (the Forward port closes, the last flush runs), so it says ``stopping: ...`` and a load
  balancer sends shippers elsewhere. ``/metrics`` answers 200 until the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aggregator import listen, source_ids
from aggregator.batch import service_column
from aggregator.throttle import Throttle
from athena.table_names import TABLE_NAMES
from shipper import wire
from shipper.discover import names_service
from shipper.metric_bounds import (
    MAX_METRICS_CONNECTIONS,
    SERVICE_SERIES_IDLE_SECONDS,
    SWEEP_SECONDS,
    IdleNames,
    MetricsSlots,
)
from shipper.sender import reset_connection

log = logging.getLogger("logq.aggregator.metrics")


#: Buckets of ``logq_aggregator_flush_duration_seconds`` (seconds).
FLUSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1200)

#: Every ``reason`` of ``logq_aggregator_connections_closed_total`` (server.py), created at 0
#: so that ``increase()`` alerts see the first close of each.
CLOSE_REASONS = (
    "auth_failed",
    "auth_rate_limited",
    "handshake_failed",
    "protocol_error",
    "frame_too_large",
    "max_connections",
    "idle_timeout",
    "slow_client",
    "backpressure",
    "objects_pool_full",
    "buffer_error",
    "internal_error",
    "not_allowed",
    "evicted",
    "tls_failed",
)
#: Every ``outcome`` of ``logq_aggregator_abandoned_messages_total`` (server.py), created at 0
#: (see CLOSE_REASONS): ``dropped``, the client had closed the connection before the message was
#: buffered (not stored: the client resends it); ``stored``, it closed while the message was
#: being made durable (stored, and resent by the client: its lines may be stored twice).
ABANDONED_OUTCOMES = ("dropped", "stored")
#: Names (services, tags) remembered by :meth:`Metrics.messages_received` before it starts
#: again: bounded, as tags can carry container ids while their service stays the same.
_SERVICE_KEYS_MAX = 10_000
#: Services with their own series at most. Any sender picks its service names: 20,000 of them
#: in one burst made /metrics 22 MB (6 series each), seconds to render and to scrape, and as
#: many series in Prometheus. A service first seen past this many counts under
#: :data:`OTHER_SERVICE` until an idle one's series are swept (its rows are stored as usual).
MAX_SERVICE_SERIES = 2_000
#: The ``service`` label of the services past :data:`MAX_SERVICE_SERIES`: never a stored
#: service's name, as :func:`athena.schema.sanitize_service` strips leading underscores.
OTHER_SERVICE = "_other_"


class _KeptElsewhere:
    """A counter whose count another module keeps, read at each scrape: for counts made where
    no :class:`Metrics` is at hand (decoding is module-level) or before it is."""

    def __init__(self, name: str, documentation: str, count: Callable[[], int]) -> None:
        self.name, self.documentation, self.count = name, documentation, count

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.count())]


class Metrics:
    """The aggregator's counters and gauges, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter(
            "logq_aggregator_records_received_total", "Events received", registry=r
        )
        self.bytes_in = Counter(
            "logq_aggregator_bytes_received_total", "Bytes read from connections", registry=r
        )
        self.acks = Counter("logq_aggregator_acks_total", "Chunks acknowledged", registry=r)
        self.connections = Gauge(
            "logq_aggregator_connections", "Open Forward connections", registry=r
        )
        self.connections_rejected = Counter(
            "logq_aggregator_connections_closed_total",
            "Connections closed by the server, by reason",
            ["reason"],
            registry=r,
        )
        self.buffer_bytes = Gauge(
            "logq_aggregator_buffer_bytes", "Bytes in the durable buffer", registry=r
        )
        self.inflight_bytes = Gauge(
            "logq_aggregator_inflight_bytes",
            "Bytes of Forward messages read and not yet durable, across connections (bounded by "
            "--max-inflight-bytes)",
            registry=r,
        )
        self.inflight_waiting = Gauge(
            "logq_aggregator_inflight_waiting_connections",
            "Connections waiting for room in the in-flight budget (--max-inflight-bytes)",
            registry=r,
        )
        self.inflight_closed = Counter(
            "logq_aggregator_inflight_wait_closed_total",
            "Connections closed unread after waiting too long for the in-flight budget (their "
            "clients resend later or elsewhere)",
            registry=r,
        )
        self.backpressure = Counter(
            "logq_aggregator_backpressure_total",
            "Times reading stopped because the buffer was full",
            registry=r,
        )
        self.flush_seconds = Histogram(
            "logq_aggregator_flush_duration_seconds",
            "Time to flush one buffer segment",
            # Up to 20 minutes: the alert compares p99 with --flush-interval (10 s by default,
            # 60-300 s in the sizing guide), and histogram_quantile cannot exceed the highest
            # finite bucket (prometheus-client's default stops at 10 s).
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        self.rows_written = Counter(
            "logq_aggregator_rows_written_total",
            "Rows committed, per table and service (the denominator of a service's parse "
            "failure ratio; sum by table for the old per-table figure)",
            ["table", "service"],
            registry=r,
        )
        self.files_written = Counter(
            "logq_aggregator_files_written_total", "Parquet objects committed", registry=r
        )
        self.storage_errors = Counter(
            "logq_aggregator_storage_errors_total",
            "Failed flushes (S3 or disk) and buffer segments that failed to seal or open",
            registry=r,
        )
        self.parse_failures = Counter(
            "logq_aggregator_envoy_parse_failures_total",
            "Envoy access lines that did not parse (stored in container_logs); lines on stderr "
            "and a data plane's own log lines are not counted",
            ["service"],
            registry=r,
        )
        self.numbers_rounded = Counter(
            "logq_aggregator_envoy_numbers_rounded_total",
            "Envoy JSON access lines stored with a number rounded to the nearest whole number "
            "(a number with a fraction, e.g. a duration of 1.5, in an integer column); the "
            "series of a service appears at its first such line",
            ["service"],
            registry=r,
        )
        self.numbers_too_large = Counter(
            "logq_aggregator_envoy_numbers_too_large_total",
            "Envoy JSON access lines stored with a number column NULL because the number was "
            "past its digits (9 for an int column, 18 for a bigint one, e.g. a bytes_sent past "
            "int64); the rest of the line is stored. The series of a service appears at its "
            "first such line",
            ["service"],
            registry=r,
        )
        self.rows_outside_projection = Counter(
            "logq_aggregator_rows_outside_projection_total",
            "Rows stamped before 2020 or more than 15 minutes ahead (a broken clock): stored, "
            "but outside Athena's dt projection, so only the local engine finds them",
            ["table", "service"],
            registry=r,
        )
        self.bad_entries = Counter(
            "logq_aggregator_bad_entries_total",
            "Entries of Forward messages that are not [time, record] (reason: record_not_map, "
            "entry_not_time_record, bad_time), each stored in container_logs as a row whose "
            "line starts with '[logq: bad Forward entry'; the other entries of their messages "
            "are stored and acked",
            ["reason"],
            registry=r,
        )
        self.times_replaced = Counter(
            "logq_aggregator_event_times_replaced_total",
            "Events whose time could not be kept as sent (nil, a string, 0, NaN, infinite, "
            "beyond year 2262 e.g. milliseconds sent as seconds, EventTime nanoseconds over "
            "999,999,999): stored with the time the aggregator received them",
            ["service"],
            registry=r,
        )
        self._times_warnings = Throttle(
            math.inf, what="services with replaced event times", logger=log
        )
        """Services told of replaced event times: once each (the counter counts them all)."""
        self.duplicates = Counter(
            "logq_aggregator_duplicates_dropped_total",
            "Resent records dropped (by source offset, or in a chunk already received)",
            registry=r,
        )
        self.duplicate_chunks = Counter(
            "logq_aggregator_duplicate_chunks_total",
            "Messages acked without storing them: their chunk id was received a moment ago "
            "(a client resending after a lost ack)",
            registry=r,
        )
        self.signals_dropped = Counter(
            "logq_aggregator_signal_messages_dropped_total",
            "Fluent Bit messages of another signal than logs (fluent_signal: metrics, traces, "
            "blobs, profiles, other): acked and not stored (logq keeps logs only); narrow the "
            "Match of that forward output",
            ["signal"],
            registry=r,
        )
        self.abandoned = Counter(
            "logq_aggregator_abandoned_messages_total",
            "Messages with a chunk id whose client closed the connection before their ack (it "
            "gave up waiting, e.g. past its ack timeout while this aggregator was stalled, and "
            "resends them): outcome=dropped, closed before they were buffered (not stored here); "
            "outcome=stored, closed while they were being made durable (their lines may be "
            "stored twice)",
            ["outcome"],
            registry=r,
        )
        self.quarantined = Counter(
            "logq_aggregator_segments_quarantined_total",
            "Buffer segments set aside after failing with a data error (see docs/operations.md)",
            registry=r,
        )
        self.compacted_files = Counter(
            "logq_aggregator_compaction_files_merged_total", "Small files compacted", registry=r
        )
        self.compaction_failed_partitions = Gauge(
            "logq_aggregator_compaction_failed_partitions",
            "Partitions the last compaction pass could not compact (0: none, or no pass yet); "
            "a merge whose input deletes fail shows its rows twice on Athena until one succeeds",
            registry=r,
        )
        self.peers_down = Gauge(
            "logq_aggregator_peers_down",
            "Aggregators whose heartbeat is stale, as this one last read them: stopped without "
            "writing out their buffer (a crash, or a scale-in whose shutdown flush did not "
            "finish). Compaction waits for each until it is restarted or drained",
            registry=r,
        )
        self.ledger_unreadable = Gauge(
            "logq_aggregator_ledger_unreadable_objects",
            "Heartbeats and replay marks under _ledger/ the warehouse refuses for good (access "
            "denied, archived), as this aggregator last read them: each holds compaction (a "
            "heartbeat) until it is deleted or made readable; the ERROR log names them",
            registry=r,
        )
        self.compaction_uploads_aborted = Counter(
            "logq_aggregator_compaction_uploads_aborted_total",
            "Incomplete multipart uploads of merge outputs that compaction aborted on S3: "
            "left by a compactor killed mid-merge (their parts were billed until then)",
            registry=r,
        )
        self.compaction_pass_failures = Counter(
            "logq_aggregator_compaction_pass_failures_total",
            "Compaction passes that failed, in part (see ..._failed_partitions) or whole",
            registry=r,
        )
        self.metrics_connections_refused = Counter(
            "logq_aggregator_metrics_connections_refused_total",
            "Connections to --metrics-listen closed unanswered: that many were open already "
            "(scrapers that do not read their replies, or too many at once), or the connection "
            "had sent no request for 1 s and a newcomer took its slot",
            registry=r,
        )
        r.register(
            _KeptElsewhere(
                "logq_aggregator_long_source_ids_total",
                f"Records whose source_id was over {source_ids.MAX_SOURCE_ID_BYTES} bytes, "
                "stored with a fixed-length id in its place (its start and its SHA-256; all "
                "aggregators of the process)",
                lambda: source_ids.LONG.value,
            )
        )
        self.sources_evicted: Callable[[], int] = lambda: 0
        """Sources the offset dedup forgot for its bound (the service points it at them)."""
        r.register(
            _KeptElsewhere(
                "logq_aggregator_sources_evicted_total",
                "Sources the offset dedup forgot, least recently seen first, to stay under its "
                "maximum (aggregator/dedup.py MAX_SOURCES): lines they resend may be stored twice",
                lambda: self.sources_evicted(),
            )
        )
        self.sources = Gauge(
            "logq_aggregator_dedup_sources",
            "Sources (source_id) whose highest committed offset the offset dedup remembers",
            registry=r,
        )
        self.disk_free = Gauge(
            "logq_aggregator_buffer_disk_free_bytes",
            "Free bytes on the --buffer-dir volume (below the reserve, appends wait)",
            registry=r,
        )
        for reason in CLOSE_REASONS:
            self.connections_rejected.labels(reason)
        for outcome in ABANDONED_OUTCOMES:
            self.abandoned.labels(outcome)
        self._service_seen = IdleNames(SERVICE_SERIES_IDLE_SECONDS, SWEEP_SECONDS)
        """Services with their own series (and :data:`OTHER_SERVICE` once used), and when
        they last had rows (monotonic)."""
        self._series_capped = False
        """Whether the cap on services with series was reported (once per process)."""
        self._service_keys: set[str] = set()
        """What decided the services of received messages whose series exist (emptied by a
        sweep that removes series): :meth:`messages_received` skips such messages."""
        self.failing_since: float | None = None
        self.unhealthy_after = 300.0
        self.disk_low: str | None = None
        """Why appends wait for disk space under --buffer-dir, while they do."""
        self.starting: str | None = "starting"
        """What a start is doing until the Forward port listens (None from then on)."""
        self.stopping: str | None = None
        """Why a stop began (SIGTERM...), from then until the exit: the aggregator takes no more
        data, so a load balancer must stop sending shippers to it."""
        self.buffer_error: str | None = None
        """Why the buffer could not seal or open a segment, until it can again."""
        self.buffer_failing_since: float | None = None
        self.broken: str | None = None
        """Which background task stopped on an internal error, and what to do (for good)."""

    def services_seen(self, services: Iterable[str], now: float | None = None) -> None:
        """Services with rows: their series exist from then on, at 0 until the first failure
        (an alert on increase() needs that first sample); the series of services without rows
        for :data:`SERVICE_SERIES_IDLE_SECONDS` are removed. Past :data:`MAX_SERVICE_SERIES`
        services, new ones share :data:`OTHER_SERVICE`'s (count with :meth:`series_label`).

        Called as each message is received (:meth:`messages_received`) and again by the flush
        that counts its rows: a scrape between the two serves the 0. A first message whose
        event times are replaced, or a replay of the previous run's buffer, still counts at once
        (the alert rules of docs/operations.md also fire on a series born above 0)."""
        now = time.monotonic() if now is None else now
        for service in services:
            label = service if service in self._service_seen else self._admit(service)
            self._service_seen.seen(label, now)
        idle = self._service_seen.idle(now)
        if idle:
            self._service_keys.clear()  # the next messages find out which ones are still there
        for service in idle:
            for metric, labels in (
                (self.parse_failures, (service,)),
                (self.numbers_rounded, (service,)),
                (self.numbers_too_large, (service,)),
                (self.times_replaced, (service,)),
                *((self.rows_outside_projection, (table, service)) for table in TABLE_NAMES),
                *((self.rows_written, (table, service)) for table in TABLE_NAMES),
            ):
                with contextlib.suppress(KeyError):  # never created (no rows of that table)
                    metric.remove(*labels)

    def series_label(self, service: str) -> str:
        """The ``service`` label that counts ``service``'s rows: its own name once
        :meth:`services_seen` gave it series, else :data:`OTHER_SERVICE` (past the cap)."""
        return service if service in self._service_seen else OTHER_SERVICE

    def _admit(self, service: str) -> str:
        """The label of a service new to the series: itself while fewer than
        :data:`MAX_SERVICE_SERIES` services have series, else :data:`OTHER_SERVICE` (said once).
        Its series are created at 0 either way (an alert on increase() needs that sample)."""
        own = len(self._service_seen) - (OTHER_SERVICE in self._service_seen)
        label = service
        if own >= MAX_SERVICE_SERIES:
            label = OTHER_SERVICE
            if not self._series_capped:
                self._series_capped = True
                log.warning(
                    "more than %d services have rows: the rows of new ones are counted under "
                    'service="%s" in the per-service metrics (their rows are stored as usual); '
                    "a sender that puts ids in its service names (or tags) does this: fix its "
                    "service label. Said once; a service gets its own series again once others "
                    "had no rows for %d h",
                    MAX_SERVICE_SERIES,
                    OTHER_SERVICE,
                    SERVICE_SERIES_IDLE_SECONDS // 3600,
                )
            if OTHER_SERVICE in self._service_seen:
                return label
        self.parse_failures.labels(label)
        self.times_replaced.labels(label)
        # rows_written{table,service} and rows_outside_projection: at 0 for both tables.
        for table in TABLE_NAMES:
            self.rows_outside_projection.labels(table, label)
            self.rows_written.labels(table, label)
        return label

    def messages_received(self, batch: pa.RecordBatch) -> None:
        """A received message's services (:meth:`services_seen`): their series are created
        here, at 0, a flush before the counts of their first rows.

        On the hot path, once per message: when the names that decide its services were seen
        before (:func:`_deciding_names`), a look at the few names of a column's dictionary is
        all it costs; otherwise the services are worked out as the flush does
        (:func:`aggregator.batch.service_column`, ~0.1 ms)."""
        if not batch.num_rows:
            return
        keys = _deciding_names(batch)
        if keys is not None and all(key in self._service_keys for key in keys):
            return
        services = service_column(pa.Table.from_batches([batch])).dictionary
        self.services_seen(services.to_pylist())
        if keys is not None:
            if len(self._service_keys) >= _SERVICE_KEYS_MAX:  # tags that churn (container ids)
                self._service_keys.clear()
            self._service_keys.update(keys)

    def event_times_replaced(self, rows: pa.RecordBatch, example: str) -> None:
        """Count the ``rows`` of one message whose time was replaced by the receive time, per
        (sanitised) service; say so once per service, with the time as it was sent, which
        is not kept (:data:`aggregator.decode.OnReplacedTimes`)."""
        services = service_column(pa.Table.from_batches([rows]))
        self.services_seen(services.dictionary.to_pylist())
        for item in pc.value_counts(services).to_pylist():
            service, count = str(item["values"]), int(item["counts"])
            self.times_replaced.labels(self.series_label(service)).inc(count)
            if not self._times_warnings.due(service, time.time()):
                continue
            log.warning(
                "an event time that cannot be kept as sent (nil, a string, 0, NaN, infinite, "
                "beyond year 2262 such as milliseconds sent as seconds, or EventTime nanoseconds "
                "over 999,999,999) was replaced by the time it was received; fix the sender's "
                "clock or encoder (said once per service; "
                "logq_aggregator_event_times_replaced_total counts them) service=%s tag=%s sent=%s",
                service,
                rows.column("tag")[0].as_py(),
                example,
            )

    def problem(self) -> str | None:
        """Why /healthz answers 503, or None while healthy."""
        if self.broken is not None:  # says why it stops, and that it is to be restarted
            return self.broken
        if self.stopping is not None:
            return self.stopping
        if self.starting is not None:
            return self.starting
        if self.disk_low is not None:
            return self.disk_low
        now = time.monotonic()
        if self.failing_since is not None and now - self.failing_since >= self.unhealthy_after:
            return "flushes to the warehouse are failing"
        if (
            self.buffer_failing_since is not None
            and now - self.buffer_failing_since >= self.unhealthy_after
        ):
            return f"the buffer cannot seal or open its segments: {self.buffer_error}"
        return None

    def healthy(self) -> bool:
        return self.problem() is None

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _deciding_names(batch: pa.RecordBatch) -> list[str] | None:
    """The names that decide a message's services, when a few do: the ``service`` values if
    every record has one (logq-shipper's), or the tags (their last part) if none has (Fluent
    Bit, Fluentd); None for a mix, worked out row by row."""
    service = batch.column(batch.schema.get_field_index(wire.KEY_SERVICE))
    if not isinstance(service, pa.DictionaryArray):
        return None
    if not service.null_count:
        names = service.dictionary.to_pylist()
        # "" or a blank name takes the tag's service: not one that decides alone.
        return names if all(map(names_service, names)) else None
    tag = batch.column(batch.schema.get_field_index("tag"))
    every_null = service.null_count == len(service)
    if every_null and isinstance(tag, pa.DictionaryArray) and not tag.null_count:
        return ["\x00" + str(t) for t in tag.dictionary.to_pylist()]
    return None


#: Seconds a reply may wait for its client to read it before the connection is dropped (with the
#: reply: a client that does not read must not keep a page in memory for as long as it likes).
WRITE_TIMEOUT_SECONDS = 10.0
#: Seconds a client has to send its request's head.
REQUEST_TIMEOUT_SECONDS = 10.0
#: Seconds between two WARNINGs about metrics connections closed over the limit.
_REFUSED_WARNING_SECONDS = 60.0


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` over HTTP/1.1 on an asyncio server.

    It shares the event loop that serves Forward connections, so nothing it does may hold that
    loop: the page is rendered in a worker thread (one render shared by the scrapes that arrive
    meanwhile), a reply waits at most :data:`WRITE_TIMEOUT_SECONDS` for its client to read it,
    and at most :data:`MAX_METRICS_CONNECTIONS` are open at once, a silent one giving its slot
    to a newcomer as in the shipper (:mod:`shipper.metric_bounds`)."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: listen.Listeners | None = None
        self._slots: MetricsSlots[asyncio.StreamWriter] = MetricsSlots()
        self._refused = 0
        """Connections closed over the limit since the last WARNING about them."""
        self._refused_warnings = Throttle(
            _REFUSED_WARNING_SECONDS, what="refused metrics connections", logger=log
        )
        self._rendering: asyncio.Future[bytes] | None = None
        """The page being rendered in a worker thread, while one is."""

    async def start(self, addresses: Sequence[listen.Address] | None = None) -> int:
        """Listen (``addresses``: those of the host, resolved already); the port."""
        self._server = await listen.start_server(
            self._handle, self.host, self.port, addresses=addresses
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def addresses(self) -> list[tuple[Any, ...]]:
        """The ``getsockname()`` of every socket listened on (one per address of the host)."""
        return [s.getsockname() for s in self._server.sockets] if self._server else []

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        """Connections being served (at most :data:`MAX_METRICS_CONNECTIONS`)."""
        return len(self._slots)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = self._slots.admit(writer)
        if closed is not None:  # the newcomer, or the silent one whose slot it takes
            self._refuse(closed)
        if closed is writer:
            return
        try:
            await self._serve(reader, writer)
        finally:
            self._slots.release(writer)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection over :data:`MAX_METRICS_CONNECTIONS` unread; count it, and say so
        at most every :data:`_REFUSED_WARNING_SECONDS`."""
        reset_connection(writer)
        self.metrics.metrics_connections_refused.inc()
        self._refused += 1
        if not self._refused_warnings.due("refused", time.time()):
            return
        log.warning(
            "closed %d metrics connection(s) unanswered: %d were open already (the limit); "
            "scrapers that do not read their replies, connections that send no request "
            "(closed after 1 s for a newcomer), or too many at once, hold them: check "
            "what connects to --metrics-listen (logq_aggregator_metrics_connections_refused_total "
            "counts them) peer=%s",
            self._refused,
            MAX_METRICS_CONNECTIONS,
            _peer(writer),
        )
        self._refused = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one request, then close; a client too slow to send or to read is dropped."""
        # drain() returns only once the whole reply is with the kernel: close() then frees it.
        writer.transport.set_write_buffer_limits(high=0)
        answered = False
        try:
            request = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), timeout=REQUEST_TIMEOUT_SECONDS
            )
            if not self._slots.answering(writer):  # its slot went to a newcomer: it is reset
                return
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1].split("?", 1)[0] if len(line) >= 2 else "/"
            status, ctype, body = await self._reply(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), timeout=WRITE_TIMEOUT_SECONDS)
            answered = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            if answered:
                writer.close()
            else:
                reset_connection(writer)

    async def _reply(self, path: str) -> tuple[str, str, bytes]:
        """Status, content type and body for ``path``."""
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, await self._page()
        if path == "/healthz":
            problem = self.metrics.problem()
            if problem is None:
                return "200 OK", "text/plain; charset=utf-8", b"ok\n"
            return "503 Service Unavailable", "text/plain; charset=utf-8", f"{problem}\n".encode()
        return "404 Not Found", "text/plain", b"try /metrics or /healthz\n"

    async def _page(self) -> bytes:
        """The /metrics page, rendered in a worker thread: a large one takes a while, and the
        event loop meanwhile keeps reading and acking Forward messages. Scrapes that arrive
        during a render share it (one render at a time, however many scrapers)."""
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(asyncio.to_thread(self.metrics.render))
            self._rendering.add_done_callback(self._rendered)
        return await asyncio.shield(self._rendering)

    def _rendered(self, _: asyncio.Future[bytes]) -> None:
        self._rendering = None


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
