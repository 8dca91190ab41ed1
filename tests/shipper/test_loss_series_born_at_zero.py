"""A loss counted before any scrape showed its series at 0 waits for one.

Prometheus' ``increase()`` and ``rate()`` need a sample before the first event: a series whose
first sample is already 1 shows no increase, and operations.md's alerts on
``logq_shipper_files_lost_total`` never fired. The start-up counts (a container removed while
the shipper was down, a checkpointed file found gone) came moments after the series were
created at 0, before any scrape. While metrics are served, such a loss now waits for a scrape
that shows the series at 0; the next scrape shows the increase.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shipper.config import Endpoint
from shipper.metrics import HOLD_SECONDS, Metrics
from tests.shipper.receiver import free_port
from tests.shipper.shipping import scrape_lost


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(clock: Clock) -> Iterator[tuple[Metrics, int]]:
    """Metrics served on 127.0.0.1 (their port), as ``--metrics-listen`` does."""
    metrics = Metrics(clock=clock)
    port = free_port()
    server = metrics.serve(Endpoint("127.0.0.1", port))
    try:
        yield metrics, port
    finally:
        server.shutdown()
        server.server_close()


def value(metrics: Metrics, service: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "logq_shipper_files_lost_total", {"service": service, "reason": reason}
    )


def test_a_loss_of_a_service_never_scraped_is_shown_after_a_scrape_at_0(
    served: tuple[Metrics, int],
) -> None:
    metrics, port = served
    metrics.count_loss("gone", "removed_while_down")  # at start, its series created just now
    assert [scrape_lost(port, "gone", "removed_while_down") for _ in range(3)] == [0.0, 1.0, 1.0]
    metrics.count_loss("gone", "removed_while_down")  # shown at 0 already: counted at once
    assert value(metrics, "gone", "removed_while_down") == 2.0
    assert scrape_lost(port, "gone", "deleted_unread") == 0.0


def test_a_loss_of_a_service_scraped_at_0_is_counted_at_once(
    served: tuple[Metrics, int],
) -> None:
    metrics, port = served
    metrics.watch_service("web")  # its first source found
    assert scrape_lost(port, "web", "pin_limit") == 0.0
    metrics.count_loss("web", "pin_limit")
    assert value(metrics, "web", "pin_limit") == 1.0


def test_a_held_loss_is_counted_when_nothing_scrapes_in_time(
    served: tuple[Metrics, int], clock: Clock
) -> None:
    metrics, _ = served
    metrics.count_loss("gone", "deleted_unread")
    metrics.count_loss("gone", "deleted_unread")
    metrics.services_seen([])
    assert value(metrics, "gone", "deleted_unread") == 0.0
    clock.now += HOLD_SECONDS
    metrics.services_seen([])
    assert value(metrics, "gone", "deleted_unread") == 2.0


def test_without_a_metrics_server_a_loss_is_counted_at_once() -> None:
    metrics = Metrics()
    metrics.count_loss("gone", "removed_while_down")
    assert value(metrics, "gone", "removed_while_down") == 1.0
