"""One place where the project's own errors become one line on stderr and an exit code.

Exit codes: 2 for bad input (time ranges, service names, SQL that does not parse), 1 for engine
and storage failures (DuckDB, Athena, S3), 130 for Ctrl-C. ``LOGQ_DEBUG=1`` re-raises instead, to
show the traceback. Anything else is a bug and keeps its traceback.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from athena.engines.result import EngineError

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


@contextmanager
def friendly() -> Iterator[None]:
    """Run a command body, translating expected failures into a message and an exit code."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write("logq: interrupted\n")
        raise typer.Exit(130) from None
    except (EngineError, OSError, ValueError, KeyError) as exc:
        if os.environ.get("LOGQ_DEBUG"):
            raise
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        sys.stderr.write(f"logq: error: {shorten(message)}\n")
        raise typer.Exit(1 if isinstance(exc, EngineError | OSError) else 2) from None
