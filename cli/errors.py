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
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"logq: error: {message}\n")
        raise typer.Exit(1 if isinstance(exc, EngineError | OSError) else 2) from None
