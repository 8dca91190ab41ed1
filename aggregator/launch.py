"""The ``logq-aggregator`` console entry: allocator settings first, then the CLI.

Arrow picks its native memory pool from ``ARROW_DEFAULT_MEMORY_POOL`` when pyarrow loads, and
glibc's arena limit only binds threads created after it is set (see :mod:`.memory`). Both must
happen before :mod:`.service` imports pyarrow and the AWS SDK starts its threads, so the console
script enters here rather than in :mod:`.commands`. The command line is parsed before either
(:func:`aggregator.arguments.parse_command_line`, light modules only): ``--help``, ``--version``
and a bad flag need none of it.

This module imports nothing heavy itself: :func:`main` imports with SIGINT held back
(:func:`shipper.startup.deferred_interrupts`), so a Ctrl-C during start-up -- importing pyarrow
and boto3 takes a few hundred milliseconds, before the service takes SIGINT over for a graceful
stop -- ends with exit status 130 and one line, not a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import faulthandler
import sys

from shipper.startup import (
    deferred_interrupts,
    interrupted,
    is_interrupt,
    redeliver_dropped_interrupts,
)


def main(argv: list[str] | None = None) -> int:
    # A fatal signal (SIGBUS when a memory-mapped spill file cannot be read back after a disk
    # error, see aggregator/spill.py) then leaves the Python stack on stderr, not just "signal 7".
    faulthandler.enable()
    redeliver_dropped_interrupts()
    with deferred_interrupts("logq-aggregator"):
        # --help, --version and a usage error end here, before the heavy imports (pyarrow,
        # the server, the compaction code): answered in tens of milliseconds, not 0.6 s.
        from aggregator.arguments import parse_command_line

        command = parse_command_line(argv)
        from aggregator.memory import tune_memory_early

        tune_memory_early()
        arrow_without_pandas()
        from aggregator.commands import run
    try:
        return run(command)
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        return interrupted("logq-aggregator")


def arrow_without_pandas() -> None:
    """Make pyarrow's one attempt at pandas now, while it fails
    (:mod:`athena.unused_imports`): the aggregator never uses pandas, and ``pa.array`` at its
    first frame imported it."""
    import pyarrow as pa

    from athena.unused_imports import pandas_kept_from_pyarrow

    with pandas_kept_from_pyarrow():
        pa.array([0])


if __name__ == "__main__":
    sys.exit(main())
