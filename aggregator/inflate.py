"""CompressedPackedForward blobs inflated off the event loop when they are big.

A gzip blob was inflated on the event loop while its message was decoded: a 64 MiB one (the
decompressed limit is four times --max-frame-bytes, 128 MiB by default) held every other
connection, the acks, /metrics and the flush loop for the whole inflate. A blob over
:data:`INLINE_MAX_COMPRESSED` bytes, or one that goes past :data:`INLINE_MAX_MEMBERS` gzip
members (tiny members cost a decompressor each) or :data:`INLINE_MAX_OUTPUT` bytes of output
(130 KB of gzip inflate to 128 MiB of zeros), is inflated in a worker thread instead, one blob
at a time (a single worker: a flood of big blobs takes one core, not all of them), in steps of
:data:`shipper.wire.GUNZIP_STEP` bytes of output under the same limits
(:class:`shipper.wire.GzipMembers`). Small blobs, what shippers send, stay inline: a thread
hand-off costs more than their inflate. The same worker joins and frames the batch of a big
message decoded in slices (:mod:`aggregator.big_messages`, :meth:`Inflater.run`):
bench/inflate_stall.py measures both.

A small blob that inflates past those limits (a blob of repeated lines: 1 MiB of gzip can
hold 8 MiB and more) was inflated inline up to them, thrown away, and inflated again from
its start in the worker: :meth:`Inflater.inline` now hands the inflate it began over
(:class:`Unfinished`: the zlib decompressor, where it is in the blob and the output so far)
and :meth:`Inflater.finish` goes on with it in the worker, each byte inflated once. The
server drops it (and the worker starts over) only when the message must wait for a turn
first (:data:`aggregator.server.HEAVY_AT_ONCE`): the output so far is not held meanwhile.

The connection waits for its blob, so its messages keep their order and each ack still follows
its message being durable; a connection closed meanwhile (its task cancelled: a stop past its
grace, an eviction) stops its inflate at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from shipper.wire import GzipMembers

#: Compressed bytes past which a blob is inflated in the worker (1 MiB: logq-shipper's gzip
#: chunks, Fluent Bit's and Fluentd's, are far smaller).
INLINE_MAX_COMPRESSED = 1024 * 1024
#: Gzip members inflated inline at most; the rest of a blob of more goes to the worker.
INLINE_MAX_MEMBERS = 256
#: Output inflated inline at most (Fluentd's largest chunks: 8 MiB); the rest goes to the worker.
INLINE_MAX_OUTPUT = 8 * 1024 * 1024

_T = TypeVar("_T")
_GZIP = ("gzip", b"gzip")
_COMPRESSED = ("compressed", b"compressed")


def gzip_blob(obj: Any) -> tuple[bytes, dict[Any, Any]] | None:
    """The blob and options of a CompressedPackedForward message (``[tag, blob, {"compressed":
    "gzip", ...}]``), or None for any other (the decoder judges those)."""
    if not isinstance(obj, list) or len(obj) < 3 or not isinstance(obj[0], str | bytes):
        return None
    second, options = obj[1], obj[2]
    if not isinstance(second, bytes | str) or not isinstance(options, dict):
        return None
    if not any(options.get(key) in _GZIP for key in _COMPRESSED):
        return None
    blob = second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
    return blob, options


class Unfinished:
    """A gzip blob's inflate begun inline and left for the worker (:meth:`Inflater.inline`):
    the job (its output so far), its steps (the zlib decompressor and where it is in the
    blob) and the message it is of. Going on with it (:meth:`Inflater.finish`) inflates
    each byte of the blob once."""

    def __init__(
        self, obj: list[Any], options: dict[Any, Any], job: GzipMembers, steps: Iterator[None]
    ) -> None:
        self.obj = obj
        self.options = options
        self.job = job
        self.steps = steps

    @property
    def inflated(self) -> int:
        """Bytes of output inflated so far (inline)."""
        return self.job.total


class Inflater:
    """Inflates the gzip blobs of messages, inline or in its one worker thread."""

    def __init__(self) -> None:
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    async def inflated(
        self, obj: Any, max_bytes: int, max_members: int, inline: bool = True
    ) -> Any:
        """``obj`` with its gzip blob inflated (a PackedForward message), or ``obj`` itself when
        it is no CompressedPackedForward message. :class:`shipper.wire.ProtocolError` for a
        blob that is not gzip, or is over ``max_bytes`` inflated or ``max_members`` members.
        ``inline=False``: all of it in the worker (its try inline, :meth:`inline`, failed)."""
        found = gzip_blob(obj)
        if found is None:
            return obj
        blob, options = found
        job = GzipMembers(blob, max_bytes, max_members)
        steps = job.steps()
        if inline and _inline_steps(job, steps, len(blob)):
            return _plain(obj, job.output(), options)
        return _plain(obj, await self._in_worker(job, steps), options)

    def inline(self, obj: Any, max_bytes: int, max_members: int) -> Any | Unfinished:
        """:meth:`inflated` when its blob is inflated inline (a small one), without waiting;
        else its inflate as far as it went inline (nothing of a blob over
        :data:`INLINE_MAX_COMPRESSED`), for :meth:`finish` to go on with in the worker. A
        caller that must wait (for a turn) before it may drop it and call :meth:`inflated`
        with ``inline=False`` instead: what was inflated is then inflated again."""
        found = gzip_blob(obj)
        if found is None:
            return obj
        blob, options = found
        job = GzipMembers(blob, max_bytes, max_members)
        steps = job.steps()
        if _inline_steps(job, steps, len(blob)):
            return _plain(obj, job.output(), options)
        return Unfinished(obj, options, job, steps)

    async def finish(self, unfinished: Unfinished) -> Any:
        """The message of an inflate :meth:`inline` began, inflated: its rest in the worker,
        after the blobs queued before it (the limits hold as inline: ProtocolError)."""
        job, steps = unfinished.job, unfinished.steps
        return _plain(unfinished.obj, await self._in_worker(job, steps), unfinished.options)

    async def run(self, job: Callable[[], _T]) -> _T:
        """``job()`` in the worker, after the work queued before it: for work whose long calls
        release the GIL (Arrow's), else the loop waits for them as long as it would inline."""
        return await asyncio.get_running_loop().run_in_executor(self._executor(), job)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="logq-inflate"
            )
        return self._worker

    async def _in_worker(self, job: GzipMembers, steps: Iterator[None]) -> bytes:
        """The output of ``job`` once the rest of its ``steps`` ran in the worker, after the
        blobs queued before it."""
        worker = self._executor()
        stopped = False

        def run() -> bytes:
            for _ in steps:
                if stopped:
                    return b""
            return job.output()  # joined here too: a copy of all of it

        try:
            return await asyncio.get_running_loop().run_in_executor(worker, run)
        except asyncio.CancelledError:
            stopped = True  # the worker's next step returns (a queued run never starts)
            raise

    async def close(self) -> None:
        """Drop the blobs still queued and wait for the worker to end (the server stopped: the
        connections waiting for a blob were cancelled, so it ends at its next step)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.shutdown, wait=True, cancel_futures=True)


def _inline_steps(job: GzipMembers, steps: Iterator[None], compressed: int) -> bool:
    """Run ``steps`` of ``job`` (a blob of ``compressed`` bytes) on the loop while the blob is
    small work: whether the inflate ended there (else its rest is the worker's)."""
    if compressed > INLINE_MAX_COMPRESSED:
        return False
    for _ in steps:
        if job.members > INLINE_MAX_MEMBERS or job.total >= INLINE_MAX_OUTPUT:
            return False
    return True


def _plain(obj: list[Any], blob: bytes, options: dict[Any, Any]) -> list[Any]:
    """``obj`` as the PackedForward message of its inflated ``blob``."""
    plain = {k: v for k, v in options.items() if k not in _COMPRESSED}
    return [obj[0], blob, plain, *obj[3:]]
