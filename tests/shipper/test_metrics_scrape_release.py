"""Which requests release a loss held until a scrape has shown its series at 0.

Only an unfiltered ``GET /metrics`` does (:func:`shipper.metrics.is_scrape`): anything else
answered -- another path (a probe, a browser's ``/favicon.ico``, ``/``), the health paths -- may
not have been Prometheus, and released by it, Prometheus' first scrape saw the series born at 1.
A filtered ``?name[]=`` request, which does not show the series, keeps it held too (R2s19).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from shipper.config import Endpoint
from shipper.metrics import Metrics, is_scrape
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


@pytest.mark.parametrize(
    ("target", "status"),
    [("/", 404), ("/favicon.ico", 404), ("/livez", 200), ("/healthz", 200), ("/metrics/", 404)],
)
def test_other_paths_keep_the_loss_held(
    served: tuple[Metrics, int], target: str, status: int
) -> None:
    metrics, port = served
    metrics.count_loss("gone", "removed_while_down")
    assert _status(port, target) == status
    # Prometheus' first scrape still sees the series at 0, the next one the loss.
    assert [scrape_lost(port, "gone", "removed_while_down") for _ in range(2)] == [0.0, 1.0]


@pytest.mark.parametrize(
    ("target", "scrape"),
    [
        ("/metrics", True),
        ("/metrics?format=text", True),
        ("/metrics?name[]=logq_shipper_files_lost_total", False),
        ("/metrics?name%5B%5D=logq_shipper_files_lost_total", False),
        ("/", False),
        ("/metrics/", False),
    ],
)
def test_is_scrape(target: str, scrape: bool) -> None:
    assert is_scrape(target) is scrape


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


def _status(port: int, target: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("target", ["/healtz", "/health", "/", "/metrics/"])
def test_a_path_with_a_typo_is_not_found(served: tuple[Metrics, int], target: str) -> None:
    """A liveness probe with a typo (``/healtz``) was answered 200 with the metrics, for good,
    whatever the shipper's state: Prometheus' server answers every path. Now a 404 that names
    the three paths, as the aggregator's port answers."""
    _, port = served
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=10)
        raise AssertionError(f"{target} was answered")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        assert "/metrics, /healthz or /livez" in exc.read().decode()
