"""Calls that wait on S3 or the disk (listings, reads), run a few at a time with their results
in order: the local engine's partition planning, compaction's listings, the freshness notes'
footer reads and ``logq services``' services all need it.

Pools nest: ``logq services`` works on 8 services at once, and each reads its footers with
:func:`ordered_list` too. Each worker thread of a pool carries its *share* of the pool's
calls at once (:func:`ordered_list`'s ``workers`` over its threads), and an
:func:`ordered_list` called in it runs no more than that: 8 services at once read their
footers one at a time each, in their own threads (8 in flight, not 8 x 8), and 2 services
read theirs 4 at a time each."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: ``share``: in a pool's worker thread, the calls at once an ordered_list started there may
#: run (unset in any other thread: no limit but its own ``workers``).
_worker = threading.local()


def _take_share(share: int) -> None:
    """A pool thread's initializer: the share of its pool's calls it may run below it."""
    _worker.share = share


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    threads: int,
    ahead: int | None = None,
    name: str = "logq-io",
    share: int = 1,
) -> Iterator[R]:
    """``fn`` over ``items`` in ``threads`` threads, results in ``items`` order, at most
    ``ahead`` (2 x ``threads``) started beyond the one the caller waits for: results are not
    piled up faster than they are used; ``items`` is drawn from as they are started. A failure
    is raised where the loop would raise it (the first failing item's own exception, in order).
    Closing the iterator, or a failure, cancels what has not started. ``share``: the calls at
    once an :func:`ordered_list` nested in ``fn`` may run (the module docstring)."""
    ahead = ahead or 2 * threads
    pool = ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=_take_share, initargs=(share,)
    )
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def ordered_list(
    work: Callable[[T], R], items: Sequence[T], workers: int, name: str = "logq-io"
) -> list[R]:
    """``[work(i) for i in items]`` with up to ``workers`` calls at once (S3 requests wait on
    the network, not on Python). One worker, or one item, runs in the calling thread with no
    pool at all: a local folder's listings and footers cost tens of microseconds that threads
    would only take turns at (the GIL). A failure is raised as the loop would raise it: the
    first failing item's own exception, in ``items`` order; calls not yet started are
    cancelled rather than run for nothing.

    Called in a worker thread of another pool, it runs at most that thread's share of the
    other's ``workers`` (the module docstring): what is in flight at once stays what the
    outermost call allows, however deep they nest; a share of one runs in that thread."""
    workers = min(workers, getattr(_worker, "share", workers))
    if workers <= 1 or len(items) <= 1:
        return [work(i) for i in items]
    threads = min(workers, len(items))
    share = workers // threads
    return list(ordered_map(work, items, threads, ahead=len(items), name=name, share=share))
