"""Calls that wait on S3 or the disk (listings, reads), run a few at a time with their results
in order: the local engine's partition planning and compaction's listings both need it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
