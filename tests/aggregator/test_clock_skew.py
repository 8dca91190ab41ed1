"""Rows stamped by a broken clock are stored, counted and logged: Athena would never see them.

The Athena tables project ``dt`` from 2020-01-01-00 to NOW, so a row from 1999 or 2099 lands in
a partition no Athena query enumerates. Nothing is dropped; the aggregator counts such rows in
``logq_aggregator_rows_outside_projection_total{table,service}`` and warns (once per table and
service every ten minutes), and the local engine still finds them.
"""

from __future__ import annotations

import re
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from athena.ddl import outside_projection
from shipper import wire
from tests.aggregator.helpers import read_acks, record, start_aggregator, wait_rows
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration

_NS = 1_000_000_000


def _ns(year: int) -> int:
    return int(datetime(year, 6, 1, 12, tzinfo=UTC).timestamp()) * _NS


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
        port = int(re.search(r"metrics on http://[^:]+:(\d+)/", agg.log_text()).group(1))

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        # The rows are readable once the flush's files are renamed in; its counts are added
        # when the flush returns, a moment later.
        counted = 'rows_outside_projection_total{service="other",table="container_logs"}'
        wait_until(lambda: counted in scrape(), 30, "the flush's counts", proc=agg.proc)
        metrics = scrape()
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
    assert 'logq_aggregator_rows_written_total{table="envoy_access"} 0.0' in metrics
    # The flush histogram reaches past any sane --flush-interval (the alert compares them).
    assert 'logq_aggregator_flush_duration_seconds_bucket{le="600.0"}' in metrics
    warnings = [line for line in agg.log_text().splitlines() if "outside the Athena" in line]
    assert len(warnings) == 1, warnings  # one per table and service, not one per partition
    assert "service=clock" in warnings[0]
