"""The ``logq-aggregator`` console entry: allocator settings first, then the CLI.

Arrow picks its native memory pool from ``ARROW_DEFAULT_MEMORY_POOL`` when pyarrow loads, and
glibc's arena limit only binds threads created after it is set (see :mod:`.memory`). Both must
happen before :mod:`.service` imports pyarrow and the AWS SDK starts its threads, so the console
script enters here rather than in :mod:`.service`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from aggregator.memory import tune_memory_early

    tune_memory_early()
    from aggregator.service import main as service_main

    return service_main(argv)


if __name__ == "__main__":
    sys.exit(main())
