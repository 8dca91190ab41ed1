"""``--buffer-dir`` and a local ``--warehouse`` kept apart, checked at start (serve and ``drain``).

A warehouse in the buffer dir is refused (exit 2, the command must change): each flush empties
``<buffer-dir>/spill/`` (:mod:`aggregator.spill`), and a warehouse there lost every object it
was given while the stop said "every acknowledged record is in <warehouse>"; anywhere else in
the buffer dir, or the buffer dir itself, the warehouse is deleted with the buffer dir, which
docs/operations.md has deleted after a drain and as a refused copy (a restored volume).

A buffer dir inside the warehouse breaks nothing here (``logq``, compaction and the replay each
read only their own names: tried with a segment in a table's folder), but it goes wherever the
warehouse goes (a copy, a sync, a clean-up of old files): a WARNING.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aggregator.buffer import SPILL_DIR
from aggregator.config import ConfigError
from athena.warehouse import open_warehouse, os_path, resolve_uri

log = logging.getLogger("logq.aggregator")


def check_folders_apart(buffer_dir: str, warehouse: str | None) -> None:
    """Raise :class:`ConfigError` for a local ``warehouse`` (URI, as ``--warehouse``) in
    ``buffer_dir`` or the same folder; warn of ``buffer_dir`` inside it. Links are followed
    (the folders as they are on disk), nothing is made."""
    if resolve_uri(warehouse).startswith("s3://"):
        return
    shown = open_warehouse(warehouse).base  # refuses a URI that names no warehouse, as serve
    wh = Path(os_path(shown))
    buffer = Path(buffer_dir).resolve()  # as the buffer takes it: no ~ expansion
    if wh == buffer or buffer in wh.parents:
        where = "is the same folder as" if wh == buffer else "is inside"
        raise ConfigError(
            f"--warehouse {warehouse or shown} {where} --buffer-dir {buffer_dir}: each flush "
            f"empties {buffer / SPILL_DIR}, and a buffer dir is deleted after a drain "
            "or as a copy: either would take the warehouse with it; give each a folder of its "
            "own, side by side (/var/lib/logq/buffer and /var/lib/logq/warehouse)"
        )
    if wh in buffer.parents:
        log.warning(
            "--buffer-dir %s is inside the local --warehouse %s: it goes wherever the "
            "warehouse goes (a copy, a sync, a clean-up of old files); give it a folder "
            "outside the warehouse",
            buffer_dir,
            shown,
        )
