"""Ctrl-C, SIGTERM and SIGHUP while an Athena query runs: the query is stopped, not orphaned.

An abandoned Athena query keeps scanning and billing after the process that started it died.
So while the Athena engine waits on a query, the three signals that end a program from outside
(Ctrl-C; SIGTERM from ``timeout``, a CI job's kill or a service manager; SIGHUP from a closed
terminal or ssh session) raise a ``KeyboardInterrupt`` (:class:`~athena.engines.result.
Terminated` for the last two), and the engine answers every ``KeyboardInterrupt`` with
``StopQueryExecution`` before logq exits.

One moment needs more: while ``StartQueryExecution`` is in flight the query may already run on
Athena, but its id is not known yet. A signal that arrives then is held (:meth:`Interrupts.
starting`) and raised as soon as Athena has named the query, so the engine can stop it. A
second signal in that moment raises at once (a start that hangs must not make logq deaf; pyathena
then still waits for the id and cancels the query).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from athena.engines.result import Terminated

#: Signals that end a program from outside while it waits on Athena.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """The three signals as exceptions, held while a query starts (see the module doc)."""

    def __init__(self) -> None:
        self._holding = False
        self._held: KeyboardInterrupt | None = None

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        stop = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
        if self._holding and self._held is None:
            self._held = stop
            return
        raise stop

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Take the signals for the block. Only those with their usual disposition are taken
        (SIGTERM and SIGHUP: death; SIGINT: Python's KeyboardInterrupt): a signal ignored on
        purpose (``nohup`` ignores SIGHUP; a background job SIGINT) stays ignored, and a
        handler someone else installed stays theirs. Python runs signal handlers in the main
        thread only, so elsewhere nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        usual = {
            signal.SIGINT: signal.default_int_handler,
            signal.SIGTERM: signal.SIG_DFL,
            signal.SIGHUP: signal.SIG_DFL,
        }
        taken = {s: usual[s] for s in STOP_SIGNALS if signal.getsignal(s) == usual[s]}
        for s in taken:
            signal.signal(s, self._raise)
        try:
            yield
        finally:
            for s, handler in taken.items():
                signal.signal(s, handler)

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Hold a signal that arrives during the block (a query's start) and raise it when the
        block ends: by then the query has an id and can be stopped."""
        self._holding, self._held = True, None
        try:
            yield
        finally:
            self._holding = False
            held, self._held = self._held, None
            if held is not None:
                raise held
