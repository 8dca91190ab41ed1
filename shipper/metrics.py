"""Prometheus metrics of logq-shipper (served on ``--metrics-listen``).

Counters are per service so that a noisy or stuck service stands out; ``bytes_behind`` is per
file: the bytes written by the runtime that the aggregators have not acknowledged yet -- the one
number to alert on when shipping falls behind.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from shipper.config import Endpoint


class Metrics:
    """The shipper's metrics in their own registry (several shippers can live in one process)."""

    def __init__(self) -> None:
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
        self.lost_files = Counter(
            "logq_shipper_files_lost",
            "Log files deleted or truncated before they were read to the end (their unread "
            "lines are lost); reason: deleted_unread, truncated_without_copy, pin_limit",
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

    def serve(self, listen: Endpoint) -> None:
        start_http_server(listen.port, addr=listen.host, registry=self.registry)
