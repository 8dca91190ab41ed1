"""Ctrl-C while rows go out: the output ends with a whole row and its line break, not half of one.

``logq sql -f csv > out.csv`` stopped with Ctrl-C while a streamed result was written left the
last row cut anywhere: inside a value, inside a CSV quoted field (its closing quote missing, so
a reader takes the rest of the file into it), a JSON object without its ``}``. Two causes:

* a Ctrl-C between two pieces of a write (:func:`cli.output.write_all` writes in pieces so
  that a closed pipe is noticed): the pieces before it were out, the rest of the row was not;
* a Ctrl-C while a piece was being written into a pipe or a terminal: the interrupted
  ``write`` had passed on an unknown part of it, so where the row stood was not even known.

So while a piece is written a first Ctrl-C is held (:class:`WholeRows`) and raised once the
piece is out; the rest of the row it cut is then written, with its line break, before the
``KeyboardInterrupt`` goes on (status 130, ``logq: interrupted``). A second Ctrl-C raises at
once: a write that blocks (a paused ``less`` that does not read) must not make logq deaf. Nor
must the first: the wait for the piece, and for the rest of its row and the flush, lasts
:data:`GIVE_UP_SECONDS` at most (a ``SIGALRM`` then acts as the second Ctrl-C). The document
itself stays incomplete (a JSON array without its ``]``): a truncated answer must not look
whole.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

#: After a first Ctrl-C, how long the output may keep logq (the piece being written, then the
#: rest of the row it cut and the flush) before it is given up on as after a second Ctrl-C: into
#: a pager paused on a page, a write waits until the pager reads, and logq waited with it.
GIVE_UP_SECONDS = 1.0

#: Where the row that ``text[at:]`` continues ends (the index after its line break), or None
#: when it does not end in ``text``.
RowEnd = Callable[[str, int], int | None]


def line_end(text: str, at: int) -> int | None:
    """Rows one per line (JSON, Markdown, the table): the next line break."""
    found = text.find("\n", at)
    return None if found < 0 else found + 1


def csv_row_end(text: str, at: int) -> int | None:
    """CSV, ``text`` starting at a row's start: the next line break outside a quoted field
    (a value holding a line break is quoted; a quote in a field is doubled, so an odd count of
    quotes before a character means it is inside a quoted field)."""
    quotes = text.count('"', 0, at)
    for i in range(at, len(text)):
        c = text[i]
        if c == '"':
            quotes += 1
        elif c == "\n" and quotes % 2 == 0:
            return i + 1
    return None


def at_row_end(text: str, at: int, row_end: RowEnd) -> bool:
    """Whether the first ``at`` characters of ``text`` end with a whole row (or are none)."""
    return at == 0 or row_end(text, at - 1) == at


def _alarm_free() -> bool:
    """Whether this thread may use ``SIGALRM`` to bound a wait: the main thread (the only one
    that handles signals), on a system that has it, with nobody else's handler on it."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    )


def _disarm() -> None:
    """Cancel the alarm, before its handler goes (a ``SIGALRM`` already caught then is dropped:
    Python skips a caught signal whose handler is back to the default)."""
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def _on_alarm(handler: Callable[[int, FrameType | None], None]) -> Iterator[bool]:
    """``handler`` on ``SIGALRM`` for the block, when :func:`_alarm_free` (yields whether):
    the alarm disarmed and the default handler back on the way out."""
    if not _alarm_free():
        yield False
        return
    signal.signal(signal.SIGALRM, handler)
    try:
        yield True
    finally:
        _disarm()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@contextmanager
def given_up_after(seconds: float) -> Iterator[None]:
    """A ``KeyboardInterrupt`` in the block after ``seconds`` (it also stops a write blocked on
    a reader that does not read), when :func:`_alarm_free`; else the block as it is."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    with _on_alarm(expired) as armed:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, seconds)
        yield


class WholeRows:
    """Hold a first SIGINT while a piece is written (:meth:`writing`), for
    :data:`GIVE_UP_SECONDS` at most; see the module doc."""

    def __init__(self) -> None:
        self._writing = False
        self._held = False
        self._alarm = False

    def _sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._writing and not self._held:
            self._held = True
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, GIVE_UP_SECONDS)
            return
        raise KeyboardInterrupt

    def _sigalrm(self, signum: int, frame: FrameType | None) -> None:
        if self._held:  # the piece did not go out in time: as a second Ctrl-C
            raise KeyboardInterrupt

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Take SIGINT for the block, if it has Python's usual handler (a SIGINT ignored on
        purpose stays ignored, another handler stays) and this is the main thread; and SIGALRM,
        when :func:`_alarm_free`, to bound the wait of a held one."""
        usual = signal.default_int_handler
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not usual
        ):
            yield
            return
        with _on_alarm(self._sigalrm) as self._alarm:
            signal.signal(signal.SIGINT, self._sigint)
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, usual)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A piece's write: a first SIGINT now is raised when it is done, also when the write
        failed (the reader went away too: a Ctrl-C reaches a whole pipeline, ``head``
        included), so the Ctrl-C ends logq as it would have without the wait."""
        self._writing = True
        try:
            yield
        except Exception:
            if not self._held:
                raise
        finally:
            self._writing = False
            if self._held and self._alarm:
                _disarm()
        if self._held:
            self._held = False
            raise KeyboardInterrupt


def finish_row(out: TextIO, text: str, at: int, row_end: RowEnd) -> None:
    """After a Ctrl-C with the first ``at`` characters of ``text`` written: write the rest of
    the row they cut (and a line break if it has none in ``text``), then flush. A reader that
    is gone by then, or a second Ctrl-C, leaves it at that: the interrupt goes on all the same."""
    if at_row_end(text, at, row_end):
        rest = ""
    else:
        end = row_end(text, at)
        rest = text[at:end] if end is not None else text[at:] + "\n"
    end_with(out, rest)


def end_with(out: TextIO, rest: str) -> None:
    """Write ``rest`` and flush, after a Ctrl-C (see :func:`finish_row`); a second Ctrl-C
    meanwhile (the flush waits on a paused reader), :data:`GIVE_UP_SECONDS` of waiting or a
    failure gives up on ``out`` (:func:`abandon`)."""
    try:
        with given_up_after(GIVE_UP_SECONDS):
            out.write(rest)
            out.flush()
    except (KeyboardInterrupt, OSError, ValueError):
        abandon(out)


def abandon(out: TextIO) -> None:
    """Give up on ``out`` when it is stdout: point it at /dev/null, so that what is still
    buffered can neither block again nor fail again. Otherwise, after a second Ctrl-C that
    stopped a flush waiting on a paused ``less``, each later flush (:func:`cli.output.emit`'s,
    the interpreter's at exit) waited on it anew, and logq wanted a third Ctrl-C; after a reader
    gone, the exit's flush said "Exception ignored ... BrokenPipeError"."""
    if out is sys.stdout:
        from cli.errors import quiet_stdout

        quiet_stdout()


def flush_all(out: TextIO) -> None:
    """Flush ``out`` after whole rows were written (:func:`write_all`), under the same guard as
    a piece: a first Ctrl-C is held until the flush is done, for :data:`GIVE_UP_SECONDS` at
    most; a second Ctrl-C, or that time running out, gives up on ``out`` (:func:`abandon`).

    A plain ``flush`` into a paused reader (``logq tail -F | less``: a poll's few lines stay in
    stdout's buffer until this flush) waited until it read; a Ctrl-C stopped it, but left the
    lines buffered, and the interpreter's own flush at exit waited on them again, deaf to
    every other Ctrl-C, until the pager was quit (then "Exception ignored ... BrokenPipeError",
    status 120)."""
    guard = WholeRows()
    flushed = False
    try:
        with guard.taken(), guard.writing():
            out.flush()
            flushed = True
    except KeyboardInterrupt:
        if not flushed:  # a second Ctrl-C or the time ran out in it, or it failed after one
            abandon(out)
        raise


def write_all(out: TextIO, text: str, chunk: int, row_end: RowEnd = line_end) -> None:
    """Write ``text`` to ``out`` in pieces of at most ``chunk`` characters; on Ctrl-C, end with
    the row it cut (module doc). A second Ctrl-C inside a write leaves the row as it is (how
    much of that piece went out is not known) and gives up on ``out`` (:func:`abandon`): the
    second Ctrl-C ends logq, whatever is still buffered."""
    guard = WholeRows()
    at, inside = 0, False
    try:
        with guard.taken():
            for start in range(0, len(text), chunk):
                with guard.writing():
                    inside = True
                    out.write(text[start : start + chunk])
                    inside, at = False, min(start + chunk, len(text))
    except KeyboardInterrupt:
        if inside:  # a second Ctrl-C in a write, or a write that failed after the first
            abandon(out)
        else:
            finish_row(out, text, at, row_end)
        raise
