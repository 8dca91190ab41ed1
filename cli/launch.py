"""The ``logq`` console entry: the CLI imported with SIGINT held back, then run.

A Ctrl-C while ``logq`` starts must end with status 130 and one line, never a traceback.
:mod:`cli.app` holds SIGINT back around its imports, but its module body goes on after them
(the typer app, every command's registration: tens of milliseconds on a loaded machine), and a
signal landing there, before :func:`cli.app.main` runs, was Python's to report. Imported from
here, the whole module is inside :func:`~shipper.startup.deferred_interrupts` (as
``aggregator/launch.py`` does for ``logq-aggregator``). This module imports nothing heavy, and
keeps numpy out (:func:`~athena.unused_imports.numpy_kept_out`) before anything imports
pyarrow.
"""

from __future__ import annotations

from athena.unused_imports import numpy_kept_out
from shipper.startup import deferred_interrupts, redeliver_dropped_interrupts


def main() -> None:
    redeliver_dropped_interrupts()
    with deferred_interrupts("logq"):
        numpy_kept_out()
        from cli.app import main as run
    run()


if __name__ == "__main__":  # pragma: no cover
    main()
