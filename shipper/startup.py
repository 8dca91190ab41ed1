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
import time
from collections.abc import Callable, Coroutine, Iterator
from types import CodeType
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
    from a thread of its own once the hook has returned (:func:`_send_after`): the handler
    raises it where it can propagate, as if the signal had come a moment later. That is
    SIGINT for Ctrl-C, and the SIGTERM or SIGHUP of a
    :class:`~athena.engines.result.Terminated` (its ``signum``): sent again as SIGINT, which a
    job started in the background or by CI inherits as ignored, it was lost, and an Athena
    query went on running after ``timeout`` or a closed terminal had asked logq to stop.
    Anything else goes to the hook that was there before. Installed once."""
    previous = sys.unraisablehook
    if getattr(previous, "redelivers_interrupts", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # From another thread, once this hook has returned: sent from here, the handler
            # would run at once, inside this hook, and the interrupt would be dropped again.
            signum = getattr(unraisable.exc_value, "signum", signal.SIGINT)
            later = threading.Thread(target=_send_after, args=(hook.__code__, signum))
            later.daemon = True
            later.start()
            return
        previous(unraisable)

    hook.redelivers_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _send_after(hook: CodeType, signum: int) -> None:
    """Send ``signum`` to this process once the main thread is out of ``hook`` (looked at every
    10 ms). A timer of 10 ms was not enough: on a loaded machine the main thread was still in
    the hook, starting the timer's thread, when the signal came, and the ``KeyboardInterrupt``
    was dropped again ("Exception ignored in sys.unraisablehook")."""
    main = threading.main_thread().ident
    while True:
        time.sleep(0.01)
        frame = sys._current_frames().get(main) if main is not None else None
        while frame is not None and frame.f_code is not hook:
            frame = frame.f_back
        if frame is None:  # (the main thread is out of the hook, or gone)
            break
    os.kill(os.getpid(), signum)


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
        # asyncio.run(), on a loop that closes with the stop signals ignored (_close_quietly)
        with asyncio.Runner(loop_factory=_quietly_closing_loop) as runner:
            return runner.run(released())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # if released() never ran


#: The signals that stop a daemon (SIGHUP: a warning), ignored while its event loop closes.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _quietly_closing_loop() -> Any:  # an asyncio event loop (asyncio is imported lazily)
    """asyncio's event loop (``asyncio.run``'s own), whose ``close()`` ignores the stop signals
    until it is done: :func:`_close_quietly`."""
    import asyncio

    class QuietlyClosingLoop(asyncio.SelectorEventLoop):
        def close(self) -> None:
            _close_quietly(self, super().close)

    return QuietlyClosingLoop()


def _close_quietly(loop: Any, close: Callable[[], None]) -> None:
    """Close ``loop`` with SIGINT, SIGTERM and SIGHUP ignored (the program's end: a stop asked
    for now has nothing left to stop), then give each its handler back, unless the loop has set
    it to the default as it removed its own.

    A signal landing in asyncio's ``close()`` printed a message or a traceback: once the loop's
    self-pipe was closed, the signal's wakeup byte was written to a closed descriptor
    ("Exception ignored when trying to write to the signal wakeup fd: ... Bad file
    descriptor"), or, with SIGINT no longer the loop's (logq-shipper gave its handlers back at
    the end of its run), a ``KeyboardInterrupt`` left the loop half closed, and closing it
    again on garbage collection failed ("Exception ignored in: BaseEventLoop.__del__ ...
    AttributeError"). Ignored, a signal is dropped by the kernel: no byte, no exception.
    They are ignored in ``close()`` alone, which waits for nothing (it shuts the default
    executor down without waiting): before it, asyncio's stop (cancelling tasks,
    ``shutdown_default_executor``) can wait without end for a thread stuck in a call, and a
    stop signal must still end it there."""
    if loop.is_running() or loop.is_closed():
        close()  # (raises for a running loop; nothing to do for a closed one)
        return
    if threading.current_thread() is not threading.main_thread():
        close()  # (signal handlers can only be set from the main thread)
        return
    # Not a handler set outside Python (None: an embedding host's): it could not be set back,
    # and the signal would stay ignored for the rest of the process.
    known = [sig for sig in _STOP_SIGNALS if signal.getsignal(sig) is not None]
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in known}
    try:
        close()
    finally:
        for sig, handler in before.items():
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, handler)  # not the loop's: its handler back
