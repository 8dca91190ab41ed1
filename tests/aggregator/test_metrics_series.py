"""Per-service series come with a service's first rows and go after a day without rows."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pyarrow as pa
import pytest

from aggregator import metrics as metrics_mod
from aggregator.decode import decode
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


def _message(service: str | None, tag: str = "logq.app") -> pa.RecordBatch:
    record = {"log": "a line", "stream": "stdout"}
    if service is not None:
        record["service"] = service
    batch, _ = decode([tag, [[int(time.time()), record]]], 1 << 20)
    return batch


def test_a_received_message_creates_its_services_series_at_0_until_they_are_swept() -> None:
    """Series exist from a service's first message (before the flush that counts its rows),
    for logq-shipper records (``service``) and other clients' (the tag's last part); a service
    whose series were swept gets them again with its next message (the shortcut for services
    already seen forgets them with the sweep)."""
    m = Metrics()
    m.messages_received(_message("recipe"))
    m.messages_received(_message(None, tag="kube.var.log.cart"))
    assert services_in(m) == {"recipe", "cart"}
    text = m.render().decode()
    assert 'logq_aggregator_rows_written_total{service="cart",table="envoy_access"} 0.0' in text
    later = 30 * 86400.0 + SERVICE_SERIES_IDLE_SECONDS + 120
    m.services_seen(["other"], now=later)
    assert services_in(m) == {"other"}
    m.messages_received(_message("recipe"))
    m.messages_received(_message(None, tag="kube.var.log.cart"))
    assert services_in(m) == {"other", "recipe", "cart"}


def test_a_blank_service_does_not_stand_for_the_tags_service_it_takes() -> None:
    """A blank ``service`` takes the tag's service, as an empty one does: two messages with the
    same blank name and other tags are two services, each with its series from its first
    message (the shortcut once remembered the blank name as if it decided the service)."""
    m = Metrics()
    m.messages_received(_message("  ", tag="logq.cart"))
    m.messages_received(_message("  ", tag="logq.orders"))
    assert services_in(m) == {"cart", "orders"}


def test_the_names_remembered_for_received_messages_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fluent Bit tags that carry a container id, all of one service: the shortcut's memory
    of the names it has seen is bounded, not one entry per container for ever."""
    monkeypatch.setattr(metrics_mod, "_SERVICE_KEYS_MAX", 50)
    m = Metrics()
    for container in range(500):
        m.messages_received(_message(None, tag=f"kube.c{container:04d}.log"))
    assert len(m._service_keys) <= 50
    assert services_in(m) == {"log"}


def test_services_past_the_cap_share_one_series(caplog: pytest.LogCaptureFixture) -> None:
    """20,000 service names from one sender made /metrics 22 MB: past MAX_SERVICE_SERIES
    services, new ones count under OTHER_SERVICE (said once), and get their own series again
    once idle ones are swept."""
    m = Metrics()
    cap = metrics_mod.MAX_SERVICE_SERIES
    names = [f"svc-{i}" for i in range(cap + 500)]
    with caplog.at_level("WARNING", logger="logq.aggregator.metrics"):
        m.services_seen(names, now=1_000.0)
        m.services_seen(names, now=1_010.0)  # a second flush of the same services
    assert services_in(m) == {*names[:cap], metrics_mod.OTHER_SERVICE}
    assert caplog.text.count("the rows of new ones are counted under") == 1
    page = m.render()
    assert len(page) < 3 * 1024 * 1024, "about 2 MB at the cap (22 MB for 20,000 services)"

    # Counted where the flush counts them (aggregator/service.py _record).
    for name in (names[0], names[cap], names[-1]):
        m.rows_written.labels("container_logs", m.series_label(name)).inc(2)
    text = m.render().decode()
    assert 'rows_written_total{service="svc-0",table="container_logs"} 2.0' in text
    assert 'rows_written_total{service="_other_",table="container_logs"} 4.0' in text

    # A day later the first services are idle and swept: the services past the cap get their
    # own series from their next rows on.
    later = 1_000.0 + SERVICE_SERIES_IDLE_SECONDS + 120
    m.services_seen(names[cap:], now=later)
    assert names[0] not in services_in(m)
    m.services_seen(names[cap:], now=later + 10)
    assert services_in(m) == {*names[cap:], metrics_mod.OTHER_SERVICE}
    assert m.series_label(names[-1]) == names[-1]


def test_replaced_event_times_of_a_service_past_the_cap_count_under_the_shared_series() -> None:
    m = Metrics()
    m.services_seen([f"svc-{i}" for i in range(metrics_mod.MAX_SERVICE_SERIES)], now=1_000.0)
    m.event_times_replaced(_message("one-too-many"), "nil")
    text = m.render().decode()
    assert 'event_times_replaced_total{service="_other_"} 1.0' in text
    assert "one-too-many" not in text


def _close_reasons_in_source() -> set[str]:
    """Every ``reason`` the server gives ``connections_closed_total``: the label of each
    ``ConnectionClosed(reason, label)`` and of each ``connections_rejected.labels(...)``,
    written as text in the aggregator's source."""
    import ast
    from pathlib import Path

    import aggregator

    found: set[str] = set()
    for path in Path(aggregator.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func, label = node.func, None
            if isinstance(func, ast.Name) and func.id == "ConnectionClosed":
                given = node.args[1:2] + [k.value for k in node.keywords if k.arg == "label"]
                label = given[0] if given else None
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "labels"
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "connections_rejected"
            ):
                label = node.args[0] if node.args else None
            if isinstance(label, ast.Constant) and isinstance(label.value, str):
                found.add(label.value)
    return found


def test_every_close_reason_is_served_at_0_from_the_start() -> None:
    """``increase()`` alerts miss the first close of a reason whose series is born at 1:
    ``evicted`` and ``tls_failed`` were left out of CLOSE_REASONS."""
    in_source = _close_reasons_in_source()
    assert {"protocol_error", "evicted", "tls_failed", "not_allowed"} <= in_source
    assert in_source <= set(metrics_mod.CLOSE_REASONS), in_source - set(metrics_mod.CLOSE_REASONS)
    served = Metrics().render().decode()
    for reason in in_source:
        assert f'logq_aggregator_connections_closed_total{{reason="{reason}"}} 0.0' in served
