"""Per-service series come with a service's first rows and go after a day without rows."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from aggregator import metrics as metrics_mod
from aggregator.metrics import SERVICE_SERIES_IDLE_SECONDS, Metrics


@pytest.fixture(autouse=True)
def _up_for_weeks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process clock of a machine up for weeks: the times the tests pass must be the only
    clock the sweep goes by (it once compared them with this one, and never swept)."""
    clock = SimpleNamespace(monotonic=lambda: 30 * 86400.0, time=time.time)
    monkeypatch.setattr(metrics_mod, "time", clock)


def services_in(metrics: Metrics) -> set[str]:
    text = metrics.render().decode()
    return {
        line.split('service="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if 'service="' in line and not line.startswith("#")
    }


def test_series_of_services_without_rows_for_a_day_are_removed() -> None:
    m = Metrics()
    m.services_seen(["recipe", "3f4a9c2b1d7e"], now=1_000.0)
    assert services_in(m) == {"recipe", "3f4a9c2b1d7e"}
    text = m.render().decode()
    assert 'logq_aggregator_envoy_parse_failures_total{service="recipe"} 0.0' in text
    m.parse_failures.labels("recipe").inc(3)

    m.services_seen(["recipe"], now=1_000.0 + SERVICE_SERIES_IDLE_SECONDS / 2)
    assert services_in(m) == {"recipe", "3f4a9c2b1d7e"}, "half a day: both kept"
    m.services_seen(["recipe"], now=1_000.0 + SERVICE_SERIES_IDLE_SECONDS + 120)
    assert services_in(m) == {"recipe"}, "the container-id service had no rows for a day"
    text = m.render().decode()
    assert 'logq_aggregator_envoy_parse_failures_total{service="recipe"} 3.0' in text
    assert 'rows_outside_projection_total{service="recipe",table="envoy_access"}' in text

    # It comes back: its series again, at 0.
    m.services_seen(["3f4a9c2b1d7e"], now=1_000.0 + 2 * SERVICE_SERIES_IDLE_SECONDS)
    assert "3f4a9c2b1d7e" in services_in(m)


def test_series_stay_bounded_under_churn() -> None:
    """A new service every minute for three days keeps about a day of them, not three."""
    m = Metrics()
    for minute in range(3 * 24 * 60):
        m.services_seen([f"container-{minute}"], now=minute * 60.0)
    kept = services_in(m)
    per_day = int(SERVICE_SERIES_IDLE_SECONDS // 60)
    assert per_day <= len(kept) <= per_day + 2
    assert f"container-{3 * 24 * 60 - 1}" in kept and "container-0" not in kept
