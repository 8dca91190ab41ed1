"""athena.threads.ordered_list: the loop's results and the loop's error, a few calls at once
(partition planning's listings and the freshness notes' footers both rely on it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


def _flight() -> tuple[Callable[[], None], Callable[[], None], dict[str, int]]:
    """Counters of the calls in flight: ``enter``, ``leave`` and the most at once seen."""
    lock, seen = threading.Lock(), {"now": 0, "most": 0}

    def enter() -> None:
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])

    def leave() -> None:
        with lock:
            seen["now"] -= 1

    return enter, leave, seen


def test_a_pool_nested_in_a_full_pool_runs_in_its_worker_thread() -> None:
    """``logq services`` on S3: 8 services at once, each reading its footers with an
    ordered_list of 8 too. With as many services as workers, each reads them one at a time in
    its own worker thread: at most 8 reads in flight, not 8 x 8, and no thread beyond the 8."""
    enter, leave, seen = _flight()
    threads: set[int] = set()

    def read(i: int) -> int:
        enter()
        threads.add(threading.get_ident())
        time.sleep(0.005)  # holds the read, so that reads of other services overlap it
        leave()
        return threading.get_ident()

    def service(s: int) -> int:
        readers = ordered_list(read, list(range(8)), 8)
        assert set(readers) == {threading.get_ident()}, "a read ran outside its service's thread"
        return s

    assert ordered_list(service, list(range(16)), 8) == list(range(16))
    assert seen["most"] <= 8, seen
    assert len(threads) <= 8


def test_a_pool_nested_in_a_pool_of_few_items_takes_its_share_of_the_workers() -> None:
    """Two services with 8 workers: each reads its footers 4 at a time (8 // 2), so both
    together never have more than 8 in flight, and each does overlap its own reads (shown
    by a read that waits, up to 10 s, for a second of its service to start, which read in
    turn it never would)."""
    enter, leave, seen = _flight()
    second = {s: threading.Event() for s in range(2)}
    started: dict[int, int] = {0: 0, 1: 0}
    lock = threading.Lock()

    def service(s: int) -> list[int]:
        per, per_lock = {"now": 0, "most": 0}, threading.Lock()

        def read(i: int) -> int:
            enter()
            with per_lock:
                per["now"] += 1
                per["most"] = max(per["most"], per["now"])
            with lock:
                started[s] += 1
                if started[s] == 2:
                    second[s].set()
            if i == 0:
                assert second[s].wait(10), "no second read of the service started"
            time.sleep(0.005)
            with per_lock:
                per["now"] -= 1
            leave()
            return i

        got = ordered_list(read, list(range(12)), 8)
        assert per["most"] <= 4, per
        return got

    assert ordered_list(service, [0, 1], 8) == [list(range(12))] * 2
    assert 2 <= seen["most"] <= 8, seen
