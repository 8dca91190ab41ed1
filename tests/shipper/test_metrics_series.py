"""Per-service series come with a service's first source and go a day after its last one ended.

The clock is injected (``Metrics(clock=...)``); the process clocks are set to a machine up for
weeks, so a sweep that compared the injected times with another clock (the aggregator's bug of
session 9) would see every service as fresh, or every one as idle, and fail here.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from shipper import metrics as metrics_mod
from shipper.metric_bounds import IdleNames
from shipper.metrics import SERVICE_SERIES_IDLE_SECONDS, SWEEP_SECONDS, Metrics
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import quick_config

DAY = SERVICE_SERIES_IDLE_SECONDS


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _up_for_weeks(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(monotonic=lambda: 30 * 86400.0, time=lambda: 2e9)
    monkeypatch.setattr(metrics_mod, "time", clock)


def services_in(metrics: Metrics) -> set[str]:
    text = _render(metrics)
    return {
        line.split('service="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if 'service="' in line and not line.startswith("#")
    }


def _render(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_series_of_services_without_a_source_for_a_day_are_removed() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    m.watch_service("recipe")
    m.watch_service("vigilant_turing")  # a Docker name: its container ran once
    assert services_in(m) == {"recipe", "vigilant_turing"}
    m.lines_read.labels("recipe").inc(3)
    text = _render(m)
    assert 'logq_shipper_files_lost_total{reason="deleted_unread",service="recipe"} 0.0' in text

    clock.now += DAY / 2
    m.services_seen(["recipe"])
    assert services_in(m) == {"recipe", "vigilant_turing"}, "half a day: both kept"
    clock.now += DAY / 2 + SWEEP_SECONDS
    m.services_seen(["recipe"])
    assert services_in(m) == {"recipe"}, "vigilant_turing had no source for a day"
    assert m.services() == 1
    text = _render(m)
    assert 'logq_shipper_lines_read_total{service="recipe"} 3.0' in text
    assert 'logq_shipper_files_lost_total{reason="pin_limit",service="recipe"} 0.0' in text

    # It comes back: its series again, at 0.
    clock.now += DAY
    m.services_seen(["recipe", "vigilant_turing"])
    assert services_in(m) == {"recipe", "vigilant_turing"}
    assert (
        m.registry.get_sample_value("logq_shipper_lines_read_total", {"service": "vigilant_turing"})
        == 0.0
    )


def test_a_service_followed_all_along_keeps_its_series_however_quiet() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    m.services_seen(["recipe"])
    for _ in range(3 * 24):
        clock.now += 3600
        m.services_seen(["recipe"])
    assert services_in(m) == {"recipe"}


def test_series_stay_bounded_under_churn() -> None:
    """A new short-lived container (its own service) every 2 minutes for three days keeps
    about a day of them, not three."""
    step = 120.0
    runs = int(3 * DAY // step)
    clock = FakeClock(0.0)
    m = Metrics(clock=clock)
    for n in range(runs):
        clock.now = n * step
        m.watch_service(f"job-{n}")
        m.services_seen([])  # its source ended before the next tick
    kept = services_in(m)
    per_day = int(DAY // step)
    assert per_day <= len(kept) <= per_day + 1
    assert f"job-{runs - 1}" in kept and "job-0" not in kept


@pytest.mark.integration
def test_the_shipper_drops_the_series_of_a_removed_container_a_day_later(
    tmp_path: Path,
) -> None:
    """A real shipper, in this process: its container is removed; a day later (injected clock)
    the service's series are gone; a new container of the same service brings them back."""
    from shipper.daemon import Shipper

    docker = tmp_path / "containers"
    first = "a" * 64
    make_container(docker, first, "short-job", lines=["one", "two"])
    receiver = Receiver()
    cfg = quick_config(tmp_path, receiver, docker)
    clock = FakeClock()
    metrics = Metrics(clock=clock)

    def lines_read() -> float | None:
        return metrics.registry.get_sample_value(
            "logq_shipper_lines_read_total", {"service": "short-job"}
        )

    async def until(condition: object, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def go() -> None:
        shipper = Shipper(cfg, metrics=metrics)
        run = asyncio.create_task(shipper.run())
        await until(lambda: len(receiver.records) == 2, "the first container's lines")
        assert lines_read() == 2.0
        shutil.rmtree(docker / first)
        await until(lambda: not shipper.runners, "the removed container's source to end")
        clock.now += DAY / 2
        await asyncio.sleep(2.5)  # two gauge ticks: no source, but not a day yet
        assert lines_read() == 2.0
        clock.now += DAY / 2 + SWEEP_SECONDS
        await until(lambda: lines_read() is None, "the idle service's series to go")
        assert "short-job" not in services_in(metrics)

        make_container(docker, "b" * 64, "short-job", lines=["three"])
        await until(lambda: len(receiver.records) == 3, "the new container's line")
        assert lines_read() == 1.0, "fresh series: the old count is not carried over"
        shipper.request_stop()
        assert await run == 0

    try:
        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        receiver.close()


def test_idle_names_are_one_sweep_for_both_daemons() -> None:
    """:class:`~shipper.metric_bounds.IdleNames`, the books of the shipper's services (no
    source followed) and of the aggregator's (no rows): a name idle for the day goes at the
    first look after it, looks come at most every sweep interval, and a name seen again
    after it went is new."""
    names = IdleNames(idle_after=100.0, every=10.0)
    names.seen("a", 0.0)
    names.seen("b", 50.0)
    assert names.idle(0.0) == []  # the first call starts the interval
    assert names.idle(95.0) == []  # a look: nobody idle for 100 s yet
    assert names.idle(101.0) == [] and len(names) == 2  # a is idle, but no look is due yet
    assert names.idle(105.0) == ["a"] and "a" not in names and "b" in names
    assert names.idle(150.0) == ["b"] and len(names) == 0
    names.seen("a", 160.0)  # back: new, its 100 s start again
    assert names.idle(259.0) == []
    assert names.idle(265.0) == []  # idle since 260, no look due before 269
    assert names.idle(270.0) == ["a"]
