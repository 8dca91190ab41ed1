"""pandas and numpy kept out of logq's programs, which never use them (pyarrow imports them).

pandas: pyarrow's pandas shim imports pandas the first time it is asked about it -- when
``pa.array`` checks whether its input is a pandas object, when ``pyarrow.dataset`` loads --:
half a CPU-second or more and tens of MiB of every ``logq-aggregator`` (at its first frame),
which never uses pandas. The shim makes that one attempt only; made while ``import pandas``
fails (:func:`pandas_kept_from_pyarrow`, ``aggregator/launch.py``), it leaves pyarrow without
pandas for good, as when pandas is not installed, and pandas stays importable for anything else.
That block is process-wide while it lasts: it is held only around that first attempt, made
before the program imports anything that wants pandas. In ``logq`` pandas cannot load at all:
it needs numpy.

numpy: pyarrow imports numpy at its own import whenever numpy is installed (it is: the
aggregator uses it), and ``pyarrow.compute`` tries again at its own. That import was 0.3
CPU-seconds of a 0.8 CPU-second local ``logq errors``. ``logq`` gives pyarrow and DuckDB Python
values and reads back Arrow tables and Python values; no numpy array goes either way. pyarrow,
DuckDB and pyathena each run without numpy as when it is not installed: a numpy call of theirs
(``to_numpy()``, a pandas result) says numpy is needed. :func:`numpy_kept_out` is called by the
``logq`` console entry (``cli/launch.py``) before anything imports pyarrow, and lasts as long as
the process.

Neither changes anything when the module is loaded already (a test process, an in-process
call): the cost is paid, and what has it keeps it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Refused:
    """An import finder that fails the import of one module (and only that one)."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == self.name:
            raise ImportError(self.why)


_NO_PANDAS = _Refused("pandas", "pandas is kept from pyarrow in logq's programs")
_NO_NUMPY = _Refused(
    "numpy", "numpy is not loaded in logq, which never uses it (athena/unused_imports.py)"
)


@contextmanager
def pandas_kept_from_pyarrow() -> Iterator[None]:
    """While inside, ``import pandas`` fails, unless pandas is loaded already."""
    if _NO_PANDAS.name in sys.modules:
        yield
        return
    sys.meta_path.insert(0, _NO_PANDAS)
    try:
        yield
    finally:
        sys.meta_path.remove(_NO_PANDAS)


def numpy_kept_out() -> None:
    """From now on, ``import numpy`` fails in this process, unless numpy is loaded already."""
    if _NO_NUMPY.name not in sys.modules and _NO_NUMPY not in sys.meta_path:
        sys.meta_path.insert(0, _NO_NUMPY)
