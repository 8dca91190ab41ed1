"""Calls that wait on S3 or the disk (listings, reads), run a few at a time with their results
in order: the local engine's partition planning, compaction's listings and the freshness
notes' footer reads all need it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    threads: int,
    ahead: int | None = None,
    name: str = "logq-io",
) -> Iterator[R]:
    """``fn`` over ``items`` in ``threads`` threads, results in ``items`` order, at most
    ``ahead`` (2 x ``threads``) started beyond the one the caller waits for: results are not
    piled up faster than they are used; ``items`` is drawn from as they are started. A failure
    is raised where the loop would raise it (the first failing item's own exception, in order).
    Closing the iterator, or a failure, cancels what has not started."""
    ahead = ahead or 2 * threads
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
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
    cancelled rather than run for nothing."""
    if workers <= 1 or len(items) <= 1:
        return [work(i) for i in items]
    threads = min(workers, len(items))
    return list(ordered_map(work, items, threads, ahead=len(items), name=name))
