"""``logq`` runs without numpy, which it never uses.

pyarrow imports numpy at its own import whenever numpy is installed (it is: the aggregator
uses it), and ``pyarrow.compute`` tries again at its own. That import was 0.3 CPU-seconds of a
0.8 CPU-second local ``logq errors``. ``logq`` gives pyarrow and DuckDB Python values and reads
back Arrow tables and Python values (:mod:`athena.arrow_values`); no numpy array goes either
way. pyarrow, DuckDB and pyathena each run without numpy as when it is not installed: a numpy
call of theirs (``to_numpy()``, a pandas result) says numpy is needed.

:func:`numpy_kept_out` is called by the ``logq`` console entry (``cli/launch.py``) before
anything imports pyarrow, and lasts as long as the process.
"""

from __future__ import annotations

import sys


def numpy_kept_out() -> None:
    """From now on, ``import numpy`` fails in this process.

    Nothing changes when numpy is loaded already (a test process, an in-process call): what
    has it keeps it."""
    if "numpy" not in sys.modules and _NoNumpy not in sys.meta_path:
        sys.meta_path.insert(0, _NoNumpy)


class _NoNumpy:
    """An import finder that fails ``import numpy`` (and only that)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "numpy":
            raise ImportError(
                "numpy is not loaded in logq, which never uses it (athena/no_numpy.py)"
            )
