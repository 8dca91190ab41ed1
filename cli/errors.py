"""One place where the project's own errors become one line on stderr and an exit code.

Exit codes: 2 for bad input (time ranges, service names, SQL that does not parse), 1 for engine
and storage failures (DuckDB, Athena, S3), 130 for Ctrl-C. ``LOGQ_DEBUG=1`` re-raises instead, to
show the traceback. Anything else is a bug and keeps its traceback.

A reader that stops early (``logq timeline | head -2``) is no failure: the output ends quietly,
as Python's documentation recommends for SIGPIPE (stdout pointed at /dev/null, exit 1, no
message), rather than "Broken pipe" on the terminal of someone who asked for two lines.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from athena.engines.result import EngineError
from cli.storage import advice

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


@contextmanager
def friendly() -> Iterator[None]:
    """Run a command body, translating expected failures into a message and an exit code."""
    try:
        yield
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        sys.stderr.write("logq: interrupted\n")
        raise typer.Exit(130) from None
    except (EngineError, OSError, ValueError, KeyError) as exc:
        if os.environ.get("LOGQ_DEBUG"):
            raise
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        line = shorten(message)
        hint = advice(message) if isinstance(exc, EngineError | OSError) else None
        if hint:
            line = f"{line.rstrip('. ')}; {hint}"
        sys.stderr.write(f"logq: error: {line}\n")
        raise typer.Exit(1 if isinstance(exc, EngineError | OSError) else 2) from None
