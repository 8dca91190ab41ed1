"""athena.threads.ordered_list: the loop's results and the loop's error, a few calls at once
(partition planning's listings and the freshness notes' footers both rely on it)."""

from __future__ import annotations

import threading
import time

import pytest

from athena.threads import ordered_list


def test_results_come_in_order_whatever_order_the_calls_end_in() -> None:
    def slow_first(i: int) -> int:
        time.sleep(0.02 * (5 - i))
        return i * i

    assert ordered_list(slow_first, list(range(5)), 4) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize(("items", "workers"), [([1, 2, 3], 1), ([7], 8), ([], 8)])
def test_one_worker_or_one_item_runs_in_the_calling_thread(items: list[int], workers: int) -> None:
    """No pool at all: a local warehouse's footers and listings are read in turn, as before."""
    caller, seen = threading.get_ident(), set()

    def work(i: int) -> int:
        seen.add(threading.get_ident())
        return i

    before = threading.active_count()
    assert ordered_list(work, items, workers) == items
    assert seen <= {caller}
    assert threading.active_count() == before


def test_the_first_failing_item_in_order_is_raised_not_the_first_to_fail() -> None:
    """Item 3 fails first in time; item 1 fails after it (once it has): the loop raises item
    1's own error, and so does ordered_list."""
    three_failed = threading.Event()

    def work(i: int) -> int:
        if i == 3:
            three_failed.set()
            raise KeyError("three")
        if i == 1:
            assert three_failed.wait(10)
            raise LookupError("one")
        return i

    with pytest.raises(LookupError, match="one") as caught:
        ordered_list(work, [0, 1, 2, 3], 4)
    assert type(caught.value) is LookupError


def test_a_failure_cancels_the_calls_not_yet_started() -> None:
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            raise OSError("first")
        time.sleep(0.05)
        return i

    with pytest.raises(OSError, match="first"):
        ordered_list(work, list(range(40)), 2)
    assert len(started) < 40
