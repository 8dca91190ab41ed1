"""``--buffer-dir`` and a local ``--warehouse`` kept apart, checked at start (serve and ``drain``).

A warehouse in the buffer dir's ``spill/`` folder is refused (exit 2, the command must change):
each flush empties ``<buffer-dir>/spill/`` (:mod:`aggregator.spill`), and a warehouse there lost
every object it was given while the stop said "every acknowledged record is in <warehouse>".

A warehouse that is the buffer dir, or elsewhere inside it, works (the buffer and the warehouse
read and delete only their own names), so a deployment set up so keeps starting after an
upgrade; but the warehouse goes with the buffer dir when that is deleted, which
docs/operations.md does after a drain and to a refused copy (a restored volume): a WARNING.
So does a buffer dir inside the warehouse: it goes wherever the warehouse goes (a copy, a sync,
a clean-up of old files). (``logq``, compaction and the replay each read only their own file
names: tried with a segment in a table's folder.)
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
    ``buffer_dir``'s spill folder; warn of it elsewhere in ``buffer_dir`` (or the same folder),
    and of ``buffer_dir`` inside it. Links are followed
    (the folders as they are on disk), nothing is made."""
    if resolve_uri(warehouse).startswith("s3://"):
        return
    shown = open_warehouse(warehouse).base  # refuses a URI that names no warehouse, as serve
    wh = Path(os_path(shown))
    buffer = Path(buffer_dir).resolve()  # as the buffer takes it: no ~ expansion
    spill = buffer / SPILL_DIR
    if wh == spill or spill in wh.parents:
        raise ConfigError(
            f"--warehouse {warehouse or shown} is inside --buffer-dir {buffer_dir}'s {spill}, "
            "which each flush empties: every row written there would be lost; give each a "
            "folder of its own, side by side (/var/lib/logq/buffer and /var/lib/logq/warehouse)"
        )
    if wh == buffer or buffer in wh.parents:
        where = "is the same folder as" if wh == buffer else "is inside"
        log.warning(
            "the local --warehouse %s %s --buffer-dir %s: deleting the buffer dir (after a "
            "drain, or a refused copy of one) would take the warehouse with it; give each a "
            "folder of its own, side by side (/var/lib/logq/buffer and /var/lib/logq/warehouse)",
            shown,
            where,
            buffer_dir,
        )
    if wh in buffer.parents:
        log.warning(
            "--buffer-dir %s is inside the local --warehouse %s: it goes wherever the "
            "warehouse goes (a copy, a sync, a clean-up of old files); give it a folder "
            "outside the warehouse",
            buffer_dir,
            shown,
        )
