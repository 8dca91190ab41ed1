"""The rate limit of the aggregator's repeated WARNINGs (aggregator/throttle.py)."""

from __future__ import annotations

import logging
import math

import pytest

from aggregator import throttle
from aggregator.throttle import Throttle

log = logging.getLogger("logq.aggregator.test_throttle")


def make(seconds: float) -> Throttle:
    return Throttle(seconds, what="services with a fault", logger=log)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not logged" in r.message]


def test_a_key_is_due_once_per_period() -> None:
    every = make(600.0)
    assert every.due("recipe", 1000.0)
    assert not every.due("recipe", 1599.0)
    assert every.due(("container_logs", "recipe"), 1599.0)  # another key: its own period
    assert every.due("recipe", 1600.0)
    once = make(math.inf)
    assert once.due("recipe", 0.0)
    assert not once.due("recipe", 1e12)


@pytest.mark.parametrize("seconds", [600.0, math.inf])
def test_a_full_throttle_counts_new_keys_instead_of_warning_again(
    seconds: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: past MAX_KEYS the memory was cleared, so every key was due again: 12,000
    services warned about twice made 24,000 once-per-service warnings. Now a period names at
    most MAX_KEYS keys and one line counts the others, however many there are."""
    monkeypatch.setattr(throttle, "MAX_KEYS", 3)
    warnings = make(seconds)
    keys = [f"service-{i}" for i in range(12)]
    with caplog.at_level(logging.WARNING, logger=log.name):
        named = [key for _ in range(2) for key in keys if warnings.due(key, 10.0)]
        named += [key for key in keys if warnings.due(key, 100.0)]
    assert named == keys[:3]
    assert summaries(caplog) == [
        "1 more warnings about services with a fault not logged: at most 3 are named "
        "individually at a time, to keep the log bounded (the metrics count every event; this "
        "line sums up the others at most every 600 s)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):
        if math.isfinite(seconds):  # the named keys are due again in the next period
            assert [key for key in keys if warnings.due(key, 700.0)] == keys[:3]
        assert not warnings.due("service-5", 700.0)
    # Held back since the first summary: 8 + 9 + 9, said by the first call past the period (a
    # named key's, when the period ends), and with it this one when it is that call.
    held = 26 if math.isfinite(seconds) else 27
    assert [m.split(" not")[0] for m in summaries(caplog)] == [
        f"{held} more warnings about services with a fault"
    ]


@pytest.mark.parametrize("seconds", [600.0, math.inf])
def test_the_count_held_back_is_said_when_no_new_key_comes_after_it(
    seconds: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: the summary was said only when a key that found no room came after the period:
    the count of a burst that then stopped (a flood of services, once) was never logged. Now
    any call past the period says it, a remembered key's too."""
    monkeypatch.setattr(throttle, "MAX_KEYS", 2)
    warnings = make(seconds)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert [k for k in ("a", "b", "c", "d", "e") if warnings.due(k, 10.0)] == ["a", "b"]
        assert [m.split(" not")[0] for m in summaries(caplog)] == [
            "1 more warnings about services with a fault"
        ]
        caplog.clear()
        warnings.due("a", 300.0)  # within the period: nothing more said yet
        assert summaries(caplog) == []
        warnings.due("a", 700.0)  # the burst is over: only a remembered key comes
    assert [m.split(" not")[0] for m in summaries(caplog)] == [
        "2 more warnings about services with a fault"
    ]


def test_keys_whose_period_is_over_make_room_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key past its period would be due anyway: forgotten first, it leaves room for a new
    one; the remembered keys are bounded, never a leak."""
    monkeypatch.setattr(throttle, "MAX_KEYS", 3)
    every = make(600.0)
    assert every.due("a", 0.0) and every.due("b", 100.0) and every.due("c", 200.0)
    assert not every.due("d", 599.0)  # none is over its period yet
    assert every.due("d", 650.0)  # a's is: a is forgotten
    assert not every.due("b", 650.0)  # b is still remembered, within its period
    assert len(every._last) == 3
    assert every.due("a", 750.0)  # b's period is over (not c's): b made room
    assert sorted(every._last) == ["a", "c", "d"]
