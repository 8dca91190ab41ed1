"""Rows stamped by a broken clock are stored, counted and logged: Athena would never see them.

The Athena tables project ``dt`` from 2020-01-01-00 to NOW, so a row from 1999 or 2099 lands in
a partition no Athena query enumerates. Nothing is dropped; the aggregator counts such rows in
``logq_aggregator_rows_outside_projection_total{table,service}`` and warns (once per table and
service every ten minutes), and the local engine still finds them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from athena.ddl import outside_projection
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.support.metrics import metrics_base, metrics_text
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration

_NS = 1_000_000_000


def _ns(year: int) -> int:
    return int(datetime(year, 6, 1, 12, tzinfo=UTC).timestamp()) * _NS


def test_a_new_services_series_are_served_at_0_before_the_flush_that_counts(
    tmp_path: Path,
) -> None:
    """A service's per-service series are created when its first message is received, not by
    the flush that counts its rows: a scrape in between serves the 0 that an ``increase()``
    alert needs (a first flush that both created and counted the series, after any restart,
    was never seen to increase)."""
    agg = start_aggregator(
        tmp_path, extra=["--metrics-listen", "127.0.0.1:0", "--flush-interval", "3600"]
    )
    try:
        entries = [(_ns(2019) + i * _NS, record(f"old {i}", service="oldclock")) for i in range(3)]
        with agg.connect() as sock:
            sock.sendall(wire.encode_packed_forward("logq.oldclock", entries, "o1"))
            assert read_acks(sock, 1) == ["o1"]
        before_flush = metrics_text(metrics_base(agg.log_text()))
        assert read_table(agg.warehouse, "container_logs").num_rows == 0, "not flushed yet"
    finally:
        assert agg.stop() == 0  # its flush writes and counts the rows
    assert read_table(agg.warehouse, "container_logs").num_rows == 3
    for series in (
        'rows_outside_projection_total{service="oldclock",table="container_logs"} 0.0',
        'rows_written_total{service="oldclock",table="container_logs"} 0.0',
        'envoy_parse_failures_total{service="oldclock"} 0.0',
        'event_times_replaced_total{service="oldclock"} 0.0',
    ):
        assert f"logq_aggregator_{series}" in before_flush


def test_outside_projection_bounds() -> None:
    now = datetime(2026, 11, 29, 10, 50, tzinfo=UTC).timestamp()
    assert outside_projection("2019-12-31-23", now)
    assert not outside_projection("2020-01-01-00", now)
    assert not outside_projection("2026-11-29-10", now)
    assert not outside_projection("2026-11-29-11", now)  # 10 minutes ahead: normal skew
    assert outside_projection("2026-11-29-12", now)
    assert outside_projection("2099-06-01-12", now)


def test_rows_from_a_broken_clock_are_kept_counted_and_logged(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    try:
        entries = [
            (_ns(1999), record("from 1999", service="clock")),
            (time.time_ns(), record("from now", service="clock")),
            (_ns(2099), record("from 2099", service="clock")),
            (_ns(2099) + _NS, record("from 2099 again", service="clock")),
            (time.time_ns(), record("fine", service="other")),
        ]
        with agg.connect() as sock:
            sock.sendall(wire.encode_packed_forward("logq.clock", entries, "c1"))
            assert read_acks(sock, 1) == ["c1"]
        table = wait_rows(agg.warehouse, "container_logs", 5, agg)
        base = metrics_base(agg.log_text())

        # The rows are readable once the flush's files are renamed in; its counts are added
        # when the flush returns, a moment later. (Waiting for the series of "other" waited
        # for nothing: every service's series is served at 0 from its first message on.)
        counted = 'rows_outside_projection_total{service="clock",table="container_logs"} 3.0'
        wait_until(lambda: counted in metrics_text(base), 30, "the flush's counts", proc=agg.proc)
        metrics = metrics_text(base)
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == sorted(
        ["from 1999", "from now", "from 2099", "from 2099 again", "fine"]
    )
    name = "logq_aggregator_rows_outside_projection_total"
    assert f'{name}{{service="clock",table="container_logs"}} 3.0' in metrics
    # Series of every service with rows exist at 0, so increase() alerts see a first event.
    assert f'{name}{{service="other",table="container_logs"}} 0.0' in metrics
    assert 'logq_aggregator_envoy_parse_failures_total{service="other"} 0.0' in metrics
    assert 'logq_aggregator_connections_closed_total{reason="protocol_error"} 0.0' in metrics
    assert 'logq_aggregator_rows_written_total{service="other",table="envoy_access"} 0.0' in metrics
    assert 'rows_written_total{service="clock",table="container_logs"} 4.0' in metrics
    # The flush histogram reaches past any sane --flush-interval (the alert compares them).
    assert 'logq_aggregator_flush_duration_seconds_bucket{le="600.0"}' in metrics
    warnings = [line for line in agg.log_text().splitlines() if "outside the Athena" in line]
    assert len(warnings) == 1, warnings  # one per table and service, not one per partition
    assert "service=clock" in warnings[0]
