"""R2s19: what releases a held loss count (shipper/metrics.py, 12cd119).

A loss counted before any scrape showed its series at 0 is held until "a scrape" completes.
Any GET other than /healthz and /livez counts as one: a request that did not show the series
(a filtered ``?name[]=`` request) releases it, and Prometheus' first scrape then sees it born at 1:
``increase()`` shows nothing, the alert of operations.md does not fire.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from shipper.config import Endpoint
from shipper.metrics import Metrics
from tests.shipper.receiver import free_port
from tests.shipper.shipping import scrape_lost


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics(clock=lambda: 1_000.0)
    port = free_port()
    server = metrics.serve(Endpoint("127.0.0.1", port))
    try:
        yield metrics, port
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_that_did_not_show_the_series_keeps_the_loss_held(
    served: tuple[Metrics, int],
) -> None:
    metrics, port = served
    metrics.count_loss("gone", "removed_while_down")
    request_path = "/metrics?name[]=logq_shipper_file_watches_refused_total"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{request_path}", timeout=10) as resp:
        body = resp.read().decode()
    assert 'logq_shipper_files_lost_total{reason="removed_while_down",service="gone"}' not in body
    # Prometheus' first scrape of this target must still see the series at 0.
    assert [scrape_lost(port, "gone", "removed_while_down") for _ in range(2)] == [0.0, 1.0]
