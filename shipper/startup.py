"""Ctrl-C while a console script starts: exit status 130 and one line, not a traceback.

``logq-shipper``, ``logq-aggregator`` and ``logq`` spend their first 0.1-0.5 s importing
(asyncio, msgpack, pyarrow, typer...) before any signal handler of theirs exists, and the
console scripts import the entry module before calling ``main()``. A SIGINT landing inside an
import surfaces wherever Python happens to check for signals: as a ``KeyboardInterrupt``
traceback, as a ``RuntimeError`` (in a class's ``__set_name__``), or printed as "Exception
ignored" and lost (in one of importlib's weakref callbacks). So each entry module imports inside
:func:`deferred_interrupts`, which holds the signal back until the imports are done, and guards
its ``main()`` with :func:`is_interrupt` / :func:`interrupted`. A Ctrl-C after the imports can
still land in one of importlib's weakref callbacks (a module a library imports lazily, as rich
does while typer renders ``logq --help``): Python can only print it as "Exception ignored" and
drop it. Each program's ``main()`` therefore first calls :func:`redeliver_dropped_interrupts`,
which delivers such a Ctrl-C again, where it can stop the program (from ``main()``, not at
import: a process that only imports the programs' modules, as a test runner, keeps its hook).
Standard library only: importing this module adds nothing to start-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

INTERRUPTED = 130
"""128 + SIGINT: the status shells report for a program stopped by Ctrl-C."""


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C -- also as Python 3.11 reports one landing in a
    ``__set_name__`` call while a class is created (a dataclass defined by a module being
    imported): a ``RuntimeError`` caused by the ``KeyboardInterrupt``."""
    cause: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; a cycle must not hang the exit
        if cause is None:
            return False
        if isinstance(cause, KeyboardInterrupt):
            return True
        cause = cause.__cause__
    return False


def interrupted(program: str) -> int:
    """Say ``PROGRAM: interrupted`` on stderr; returns the exit status for it (130)."""
    print(f"{program}: interrupted", file=sys.stderr)
    return INTERRUPTED


def redeliver_dropped_interrupts() -> None:
    """Install a ``sys.unraisablehook`` that sends a ``KeyboardInterrupt`` Python could not
    raise (it landed in a weakref callback or a finalizer) again as the signal it came from,
    10 ms later from a timer thread: the handler raises it where it can propagate, as if the
    signal had come a moment later. That is SIGINT for Ctrl-C, and the SIGTERM or SIGHUP of a
    :class:`~athena.engines.result.Terminated` (its ``signum``): sent again as SIGINT, which a
    job started in the background or by CI inherits as ignored, it was lost, and an Athena
    query went on running after ``timeout`` or a closed terminal had asked logq to stop.
    Anything else goes to the hook that was there before. Installed once."""
    previous = sys.unraisablehook
    if getattr(previous, "redelivers_interrupts", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # From another thread, a moment later: sent from here, the handler would run at
            # once, inside this hook, and the interrupt would be dropped again.
            signum = getattr(unraisable.exc_value, "signum", signal.SIGINT)
            later = threading.Timer(0.01, os.kill, (os.getpid(), signum))
            later.daemon = True
            later.start()
            return
        previous(unraisable)

    hook.redelivers_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def deferred_interrupts(program: str) -> Iterator[None]:
    """Run the block (a program's imports) with SIGINT blocked; a Ctrl-C meanwhile waits in
    the kernel and, delivered when the block ends, exits 130 with one line.

    The mask is the calling thread's: it holds the signal back in a process that has no other
    thread yet, as a console script while it imports (threads started in the block inherit
    it). The previous mask comes back, so an importer that had SIGINT blocked keeps it so.
    Outside the main thread (where Python raises ``KeyboardInterrupt``) nothing is blocked."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as exc:  # raised by hand, or before the block
        if not is_interrupt(exc):
            raise
        raise SystemExit(interrupted(program)) from None
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending SIGINT lands here
        except KeyboardInterrupt:
            raise SystemExit(interrupted(program)) from None


def run_held(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())`` with SIGINT held back until the coroutine starts.

    A Ctrl-C while asyncio builds the event loop left a half-built loop whose finalizer printed a
    traceback ("'_UnixSelectorEventLoop' object has no attribute '_signal_handlers'"), and one
    before the coroutine existed left it never awaited (a RuntimeWarning). Held back, the signal
    lands as the coroutine starts, where asyncio's own handler cancels it and ``asyncio.run``
    raises ``KeyboardInterrupt``: the caller's 130 and one line. ``main`` is a factory so the
    coroutine is made only once it will be awaited. Outside the main thread nothing is held."""
    import asyncio  # (here: ``logq`` imports this module and need not import asyncio)

    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(main())
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    async def released() -> T:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending SIGINT lands here
        return await main()

    try:
        return asyncio.run(released())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # if released() never ran
