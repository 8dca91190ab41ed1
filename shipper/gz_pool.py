"""The shipper's own worker threads for reading compressed (``.gz``) log files.

A restart may read whole compressed copies: a held file decompressed again
(:func:`~shipper.held_gz.prepare_held`), an unread copy scanned for a split line's next part
(:func:`~shipper.held_gz.unseen_cut`) -- about a second of a core per 100 MiB each. Run on the
default executor (``asyncio.to_thread``), they shared its few threads (``min(32, cores + 4)``)
with the checkpoint writes (:meth:`shipper.daemon.Shipper._save`): a start of many sources
with such copies queued the saves behind seconds of decompression, while acknowledged lines
waited to be recorded. Here they get :data:`GZ_THREADS` threads of their own, shut down with
the daemon (:func:`shutdown`); the default executor keeps serving the saves. Daemon threads
(:mod:`shipper.daemon_threads`): a read hung on a dead file system does not keep a stopped
shipper's process alive, as an executor's threads did (joined at exit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from shipper.daemon_threads import DaemonThreads

GZ_THREADS = 2
"""Threads reading compressed copies at once: two keep one source's scan from holding back
every other source's start, and leave the default executor's threads to the saves."""

_T = TypeVar("_T")
_R = TypeVar("_R")

_pool: DaemonThreads | None = None


def _executor() -> DaemonThreads:
    global _pool
    if _pool is None:
        _pool = DaemonThreads("logq-gz", GZ_THREADS)
    return _pool


class GivenUp(Exception):
    """The work was given up before it ended: its ``stop`` event was set (the source stops)."""


async def run(
    fn: Callable[[_T], _R],
    arg: _T,
    discard: Callable[[_R], None] | None = None,
    stop: asyncio.Event | None = None,
) -> _R:
    """``fn(arg)`` in one of the ``.gz`` threads, awaited on the running event loop.

    Awaited no more -- the task is cancelled, or ``stop`` is set first (:class:`GivenUp`: the
    source stops, and must not wait for work queued behind other sources' at a restart) --
    the work is dropped if it has not started, else its answer goes to ``discard`` once it
    comes (descriptors of decompressed copies are closed, not left open)."""
    work = _executor().submit(fn, arg)
    waited = asyncio.wrap_future(work)
    try:
        if stop is None:
            return await waited
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not waited.done():
            raise GivenUp(f"{getattr(fn, '__name__', fn)} given up: stopping")
        return waited.result()
    except (asyncio.CancelledError, GivenUp):
        waited.cancel()  # cancels ``work`` too if it has not started
        if discard is not None:
            work.add_done_callback(lambda done: _discard(done, discard))
        raise


def _discard(done: Future[_R], discard: Callable[[_R], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        discard(done.result())


def shutdown() -> None:
    """At the daemon's end: work not started is dropped, work running ends on its own (its
    answer is not awaited any more). A later :func:`run` starts new threads."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False)
