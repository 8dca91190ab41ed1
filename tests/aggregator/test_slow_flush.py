"""A flush that outlasts ``--flush-interval`` is said once in a while, with what it wrote.

Flushes run one after another: a slow one delays every client's data behind it. The histogram
shows the time; the WARNING names the objects, services and hours behind it (aggregator/
slow_flush.py), so an operator tells a passing backlog from sources spreading rows over hours.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aggregator.slow_flush import NAMED_SERVICES, slow_flush_text
from aggregator.writer import WrittenFile
from shipper import wire
from tests.aggregator.helpers import read_acks, record, start_aggregator, wait_rows
from tests.support.procs import wait_until


def _files(counts: dict[str, int]) -> list[WrittenFile]:
    return [
        WrittenFile("container_logs", service, f"2026-12-05-{hour:02d}", f"/w/{service}/{hour}", 1)
        for service, hours in counts.items()
        for hour in range(hours)
    ]


def test_a_flush_within_the_interval_says_nothing() -> None:
    assert slow_flush_text(7, 9.9, 10.0, _files({"a": 3})) is None
    assert slow_flush_text(7, 10.0, 10.0, _files({"a": 3})) is None


def test_a_slow_flush_names_its_objects_services_and_hours() -> None:
    counts = {"big": 9, "mid": 5, "small": 2, "tiny": 1, "tinier": 1}
    text = slow_flush_text(12, 41.25, 10.0, _files(counts))
    assert text is not None
    assert "segment 12 took 41.25s, longer than --flush-interval (10s)" in text
    assert "18 objects for 5 services over 9 hours" in text
    assert "most objects: big (9), mid (5), small (2) and 2 more" in text
    assert NAMED_SERVICES == 3
    assert "tiny" not in text


def test_a_slow_flush_of_nothing_names_no_service() -> None:
    text = slow_flush_text(1, 2.0, 1.0, [])
    assert text is not None
    assert "0 objects for 0 services over 0 hours." in text
    assert "most objects" not in text


@pytest.mark.integration
def test_the_aggregator_warns_of_a_slow_flush_once(tmp_path: Path) -> None:
    """Two flushes longer than a tiny interval: one WARNING (rate-limited), naming the hours."""
    agg = start_aggregator(tmp_path, extra=["--flush-interval", "0.001"])
    try:
        now = time.time_ns()
        for n in range(2):
            entries = [
                (now - hour * 3600 * 1_000_000_000, record(f"line {n} {hour}", service="spread"))
                for hour in range(4)
            ]
            with agg.connect() as sock:
                sock.sendall(wire.encode_packed_forward("logq.spread", entries, f"s{n}"))
                assert read_acks(sock, 1) == [f"s{n}"]
            wait_rows(agg.warehouse, "container_logs", 4 * (n + 1), agg)
        wait_until(lambda: "took" in agg.log_text(), 30, "the slow-flush warning", proc=agg.proc)
    finally:
        assert agg.stop() == 0
    warnings = [
        line for line in agg.log_text().splitlines() if "longer than --flush-interval" in line
    ]
    assert len(warnings) == 1, warnings
    assert "level=warning" in warnings[0]
    assert "4 objects for 1 service over 4 hours; most objects: spread (4)" in warnings[0]
