"""The rate limit of the aggregator's repeated WARNINGs (aggregator/throttle.py)."""

from __future__ import annotations

import math

import pytest

from aggregator import throttle
from aggregator.throttle import Throttle


def test_a_key_is_due_once_per_period() -> None:
    every = Throttle(600.0)
    assert every.due("recipe", 1000.0)
    assert not every.due("recipe", 1599.0)
    assert every.due(("container_logs", "recipe"), 1599.0)  # another key: its own period
    assert every.due("recipe", 1600.0)
    once = Throttle(math.inf)
    assert once.due("recipe", 0.0)
    assert not once.due("recipe", 1e12)


def test_the_keys_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_KEYS the memory is cleared: a key is then due again early, never a leak."""
    monkeypatch.setattr(throttle, "MAX_KEYS", 3)
    every = Throttle(600.0)
    assert all(every.due(key, 0.0) for key in "abc")
    assert not every.due("a", 1.0)
    assert every.due("d", 1.0)  # the fourth key clears the memory
    assert len(every._last) == 1
    assert every.due("a", 2.0)
