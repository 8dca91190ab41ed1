"""One place where the project's own errors become one line on stderr and an exit code.

Exit codes: 2 for bad input (time ranges, service names, SQL that does not parse, and the SQL of
``logq sql`` that the engine refuses as written: no such column or table, a type error, the local
sandbox's refusal; click's usage errors too, said in the same one line by
:func:`cli.app.one_line_usage`; and a query refused or cancelled over ``--max-scan-bytes``,
which scans the same bytes however often it is retried), 1 for engine and storage failures
(DuckDB, Athena, S3; also a canned query the engine refuses, which is logq's bug, not the
user's), 130 for Ctrl-C, 143 (SIGTERM) and 129 (SIGHUP) when those stop an Athena query
(:class:`~athena.engines.result.Terminated`). A script may retry on 1; retrying on 2 cannot
help. ``LOGQ_DEBUG=1`` re-raises instead, to show the traceback. Anything else is a bug and
keeps its traceback.

A reader that stops early (``logq timeline | head -2``) is no failure: logq stops writing at
once, says nothing and exits 0 (:data:`READER_GONE_EXIT`), whatever the command and however
much output was left, as ripgrep does. Not 1: that is an engine failure, and a pipeline
under ``set -o pipefail`` would fail on it. Not 141 (a death by SIGPIPE, as GNU tools die):
whether a writer still has output left when ``head`` quits depends on how much fits in the pipe
buffer, so ``logq services | head -1`` would exit 0 and ``logq tail | head -1`` 141, the same
script passing on a small warehouse and failing on a big one. The reader's own exit status says
whether it failed. Stdout is then pointed at /dev/null (Python's advice for SIGPIPE), so the
interpreter's last flush cannot raise again; large output is written in pieces
(:func:`cli.output.write_all`) so that a closed pipe is noticed at all.
"""

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from athena.engines.result import (
    READ_ACCESS_HINT,
    EngineError,
    EngineStuck,
    ScanBudgetError,
    StatementError,
    Terminated,
)
from cli.storage import advice

#: Exit status when the reader of stdout went away (``| head``): success, see above.
READER_GONE_EXIT = 0

#: Error messages echo the value at fault; a 100 KB ``--service`` must not make a 200 KB line.
MAX_MESSAGE_CHARS = 400


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to about ``limit`` characters in the middle (the value at fault), so the
    advice at its end survives; says how much was left out."""
    if len(message) <= limit:
        return message
    head, tail = limit // 2, limit // 2 - 40
    cut = len(message) - head - tail
    return f"{message[:head]}[... {cut:,} characters ...]{message[-tail:]}"


def quiet_stdout() -> None:
    """Point stdout at /dev/null after the reader went away, so the interpreter's last flush of
    what is still buffered cannot raise a second BrokenPipeError at exit."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def ended_by_closed_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``SystemExit``) was raised while handling a write into a closed pipe.

    The libraries that print for logq outside its command bodies end the program on EPIPE with
    status 1 themselves: click (typer) for ``logq --help | head -1``, Rich when its own console
    cannot write. Both raise it inside their ``except`` clause, so the EPIPE error is the exit's
    ``__context__``; an engine failure's exit never has one."""
    seen: BaseException | None = exc.__context__
    for _ in range(3):  # the EPIPE error, possibly re-raised once or twice
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.EPIPE:
            return True
        seen = seen.__context__
    return False


@contextmanager
def friendly(user_sql: bool = False) -> Iterator[None]:
    """Run a command body, translating expected failures into a message and an exit code.

    ``user_sql``: the body runs SQL the user wrote (``logq sql``), so a
    :class:`StatementError` is bad input (2) rather than an engine failure (1)."""
    try:
        yield
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(READER_GONE_EXIT) from None
    except KeyboardInterrupt as exc:
        stopped = isinstance(exc, Terminated)
        # After SIGHUP the terminal may be gone (EIO): the exit status must still come out.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"logq: stopped by {exc.signame}\n" if stopped else "logq: interrupted\n"
            )
            if isinstance(exc, EngineStuck):  # DuckDB went on: say why the exit did not wait
                sys.stderr.write(f"logq: {exc}\n")
        raise typer.Exit(exc.exit_status if stopped else 130) from None
    except (EngineError, OSError, ValueError, KeyError) as exc:
        if os.environ.get("LOGQ_DEBUG"):
            raise
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        line = shorten(message)
        failure = isinstance(exc, EngineError | OSError) and not (
            (user_sql and isinstance(exc, StatementError)) or isinstance(exc, ScanBudgetError)
        )
        hint = advice(message) if failure else None
        if hint is None and isinstance(exc, PermissionError):  # a local warehouse's file
            hint = f"{READ_ACCESS_HINT} and run the command again"
        if hint:
            line = f"{line.rstrip('. ')}; {hint}"
        sys.stderr.write(f"logq: error: {line}\n")
        raise typer.Exit(1 if failure else 2) from None


#: pydantic's lead-in to the message of a ``ValueError`` raised inside a validator (typer's
#: choice check raises one): it tells a user nothing.
_VALUE_ERROR_LEAD = "Value error, "


def plain_reason(exc: BaseException) -> str | None:
    """What was wrong with an option's value, in a user's words, when typer's pydantic check
    refused it (``exc`` is the ``BadParameter`` raised from pydantic's ``ValidationError``);
    None for any other usage error, whose words are click's own and plain already.

    pydantic speaks to programmers ("Value error, 'xml' is not one of ...", "Input should be a
    valid integer, unable to parse string as an integer") and never echoes the value."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if type(cause).__name__ != "ValidationError" or not callable(errors):
        return None
    try:
        first = errors(include_url=False)[0]
        kind, value, bounds = first["type"], first["input"], first.get("ctx") or {}
    except (IndexError, KeyError, TypeError):
        return None
    # repr() quotes the value and escapes control characters, as typer's own message did.
    shown = repr(value) if isinstance(value, str) else repr(str(value))
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{shown} is not a whole number"
    if kind in ("float_parsing", "float_type", "finite_number") or _is_nan(value):
        return f"{shown} is not a number"  # NaN fails pydantic's bounds checks, said so
    if kind in ("greater_than_equal", "greater_than") and bounds:
        return f"{shown} is less than the minimum, {_bound(bounds)}"
    if kind in ("less_than_equal", "less_than") and bounds:
        return f"{shown} is more than the maximum, {_bound(bounds)}"
    message = getattr(exc, "message", "")
    if isinstance(message, str) and message.startswith(_VALUE_ERROR_LEAD):
        return message.removeprefix(_VALUE_ERROR_LEAD)  # typer's choice message, escaped
    return None


def _is_nan(value: object) -> bool:
    """Whether ``value`` reads as a NaN float ("nan", "NaN")."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return number != number


def _bound(bounds: dict[str, object]) -> str:
    """The limit in pydantic's error context, written as the help writes it (3600, not 3600.0)."""
    limit = next(iter(bounds.values()))
    return f"{limit:g}" if isinstance(limit, float) else str(limit)
