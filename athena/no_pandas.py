"""pyarrow kept from importing pandas in our programs, which never use it.

pyarrow's pandas shim imports pandas the first time it is asked about it -- when ``pa.array``
checks whether its input is a pandas object, when ``pyarrow.dataset`` loads --: half a
CPU-second or more and tens of MiB of every ``logq-aggregator`` (at its first frame) and of
every ``logq`` query over S3, whose values never go through pandas (:mod:`athena.arrow_values`
converts zoned times without it). The shim makes that one attempt only; made while
``import pandas`` fails, it leaves pyarrow without pandas for good, as when pandas is not
installed, and pandas stays importable for anything else.

The block is process-wide while it lasts: it is held only around that first attempt, made
before the program imports anything that wants pandas.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def pandas_kept_from_pyarrow() -> Iterator[None]:
    """While inside, ``import pandas`` fails, unless pandas is loaded already (then pyarrow
    may as well use it: the cost is paid, and a test process holds it anyway)."""
    if "pandas" in sys.modules:
        yield
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        yield
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder that fails ``import pandas`` (and only that)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is kept from pyarrow in logq's programs")
