"""The ``logq-aggregator`` console entry: allocator settings first, then the CLI.

Arrow picks its native memory pool from ``ARROW_DEFAULT_MEMORY_POOL`` when pyarrow loads, and
glibc's arena limit only binds threads created after it is set (see :mod:`.memory`). Both must
happen before :mod:`.service` imports pyarrow and the AWS SDK starts its threads, so the console
script enters here rather than in :mod:`.commands`.

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
        from aggregator.memory import tune_memory_early

        tune_memory_early()
        arrow_without_pandas()
        from aggregator.commands import main as service_main
    try:
        return service_main(argv)
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        return interrupted("logq-aggregator")


def arrow_without_pandas() -> None:
    """Keep pyarrow from importing pandas, which the aggregator never uses.

    ``pa.array`` asks pyarrow's pandas shim whether its input is a pandas object, and the shim
    imports pandas to answer, once per process: half a CPU-second or more (and tens of MiB) of
    every aggregator, at its first frame. The shim makes that one attempt only; made while
    ``import pandas`` fails, it leaves pyarrow without pandas for good (as when pandas is not
    installed), and pandas stays importable for anything else."""
    import pyarrow as pa

    if "pandas" in sys.modules:  # already paid for: pyarrow may as well use it
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])  # the shim's one attempt
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder that fails ``import pandas`` (and only that)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is kept from pyarrow in logq-aggregator")


if __name__ == "__main__":
    sys.exit(main())
