"""The compaction of one partition folder: the merges left there finished, then its small files
merged in groups of about the target size, one :mod:`attempt <aggregator.compaction.attempt>`
each."""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from aggregator.compaction.attempt import _Attempt
from aggregator.compaction.inputs import Input, _readable
from aggregator.compaction.intents import (
    INTENT_STALE_AFTER,
    PartitionBusy,
    _is_intent,
    finish_intents,
)
from aggregator.compaction.merge import _memory_cost, _MemoryBudget, _merge_budget
from aggregator.compaction.store_clock import StoreClock
from aggregator.ledger import LEDGER_DIR, NODES_DIR, REPLAYING_DIR
from aggregator.storage import list_folder
from athena.schema import Table
from athena.warehouse import Warehouse

if TYPE_CHECKING:
    from aggregator.compaction.notes import PassNotes

log = logging.getLogger("logq.aggregator.compaction")

#: How a foreign file's message ends in compaction's log (``logq``'s: run the command again).
LEFT_OUT = "; compaction merges the rest of its partition without it until then"


def stale_intents_before(clock: StoreClock | None) -> datetime:
    """Intents (and killed writes' temporary files) dated before this are a crashed one's:
    older than INTENT_STALE_AFTER by the store's ``clock`` (:mod:`.store_clock`), or by this
    host's clock without one."""
    if clock is None:
        return datetime.now(UTC) - INTENT_STALE_AFTER
    return clock.old_before(INTENT_STALE_AFTER)


def _visible(info: pafs.FileInfo) -> bool:
    name = info.base_name
    return (
        info.type == pafs.FileType.File
        and name.endswith(".parquet")
        and not name.startswith((".", "_"))
    )


def _groups(files: list[Input], target_bytes: int) -> list[list[Input]]:
    """Consecutive small files packed into groups of at most ``target_bytes`` (2+ files each)."""
    small = [f for f in files if f.size < target_bytes // 2]
    groups: list[list[Input]] = []
    current: list[Input] = []
    size = 0
    for f in small:
        if current and size + f.size > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    groups.append(current)
    return [g for g in groups if len(g) >= 2]


def compact_partition(
    wh: Warehouse,
    spec: Table,
    folder: str,
    target_bytes: int,
    infos: list[pafs.FileInfo] | None = None,
    budget: _MemoryBudget | None = None,
    stale_before: datetime | None = None,
    notes: PassNotes | None = None,
) -> int:
    """Merge the small files of one partition folder; return the number of input files merged.

    ``infos``: the caller's listing of ``folder`` (None: list it here). A pass lists each
    partition once and decides from that listing alone, without reading a footer, that most
    partitions (already compacted: one file, or no two small ones) have nothing to merge.

    ``budget``: shared by the partitions a pass merges at once (None: this call's own).

    ``stale_before``: an intent dated before this (by the store) is a crashed merge's (None:
    ``INTENT_STALE_AFTER`` before now on this host's clock; a pass gives the store's,
    :mod:`.store_clock`).

    A file whose footer declares other column types than ``spec``, or values beyond them by its
    statistics (another tool's, :attr:`.inputs.Input.foreign`), is left out of the merges, in
    place, with an ERROR naming it (and told to ``notes``); the others are merged as usual.
    Athena refuses that file; merging it would have cast it into one Athena reads (epoch
    integers taken for milliseconds) or failed the partition's merge at every pass.
    """
    if infos is None:
        infos = list_folder(wh, folder)
    if stale_before is None:
        stale_before = stale_intents_before(None)
    intents = [i for i in infos if _is_intent(i)]
    if intents:
        try:
            finish_intents(wh, folder, stale_before, intents)
        except PartitionBusy:
            log.info("skipping %s: another compaction is under way there", folder)
            return 0
        infos = list_folder(wh, folder)  # finishing a merge deleted its inputs: list again
    _sweep_temporaries(wh, infos, stale_before)
    small = [i for i in infos if _visible(i) and (i.size or 0) < target_bytes // 2]
    if len(small) < 2:  # _groups merges only small files, two or more: no footer to read
        return 0
    budget = budget or _merge_budget(wh)
    files = _without_foreign(_readable(wh, small, spec), notes)
    merged = 0
    for group in _groups(files, target_bytes):
        with budget.reserve(_memory_cost(group, wh)):
            if not _Attempt(wh, spec, folder, group).run():
                break  # another compactor works here: it has (or the next pass will) the rest
        merged += len(group)
    return merged


def _without_foreign(files: list[Input], notes: PassNotes | None) -> list[Input]:
    """``files`` less the foreign ones, each named in an ERROR (once a pass: a pass reads a
    partition's footers once) and told to ``notes``."""
    kept = []
    for f in files:
        if f.foreign is None:
            kept.append(f)
            continue
        log.error("%s", f.foreign.advice(LEFT_OUT))
        if notes is not None:
            notes.foreign_file(f.path)
    return kept


#: ``.<name>.<8 hex>.tmp``: a local write in progress (:func:`aggregator.durable.atomic_file`).
_TEMPORARY = re.compile(r"\A\..+\.[0-9a-f]{8}\.tmp\Z")


def _sweep_temporaries(wh: Warehouse, infos: list[pafs.FileInfo], cutoff: datetime) -> None:
    """Delete the temporary files of local writes killed mid-way (``kill -9`` skips their
    cleanup): readers skip them, but nothing else would ever remove them. Only those dated
    before ``cutoff`` (INTENT_STALE_AFTER ago, by the store's clock as intents are: on a file
    server whose clock is behind this host's, a flush of late rows writing its temporary file
    just now looked that much older, and was deleted under the writer), in a closed hour: no
    write can still be running."""
    for info in infos:
        if (
            info.type == pafs.FileType.File
            and _TEMPORARY.match(info.base_name)
            and info.mtime is not None
            and info.mtime.replace(tzinfo=info.mtime.tzinfo or UTC) < cutoff
        ):
            log.info("removing %s: left by a write that was killed", info.path)
            with contextlib.suppress(FileNotFoundError):
                wh.fs.delete_file(info.path)


#: The warehouse's own folders whose files local writes replace by tmp-then-rename
#: (:func:`aggregator.storage.put_bytes`): a pass's state (``_compaction/``: its clock marker,
#: its last pass), the tables' DDL (``_ddl/``, :mod:`aggregator.catalog`), and the ledger's
#: heartbeats and replay marks (``_ledger/_nodes/``, ``_ledger/_replaying/``, rewritten by
#: every aggregator after each flush pass). A ledger hour's (``_ledger/written=<hour>/``) go
#: with their hour (:func:`aggregator.ledger.expire_ledger`, after 7 days).
STATE_FOLDERS = (
    "_compaction",
    "_ddl",
    f"{LEDGER_DIR}/{NODES_DIR}",
    f"{LEDGER_DIR}/{REPLAYING_DIR}",
)


def sweep_state_temporaries(wh: Warehouse, cutoff: datetime) -> None:
    """:func:`_sweep_temporaries` for :data:`STATE_FOLDERS`: a ``kill -9`` in the milliseconds
    of such a write leaves its ``.tmp`` file, which nothing else would ever remove. Only dated
    before ``cutoff`` (a pass's stale-intent cutoff, by the store's clock): a write under way
    is milliseconds old. Local warehouses only (an S3 put leaves no temporary file): no
    request on S3."""
    if not isinstance(wh.fs, pafs.LocalFileSystem):
        return
    for name in STATE_FOLDERS:
        _sweep_temporaries(wh, list_folder(wh, wh.path(name)), cutoff)


def _may_need_work(infos: list[pafs.FileInfo], target_bytes: int) -> bool:
    """What :func:`compact_partition` would do anything about: an intent, a killed write's
    temporary file, or two small files to merge. Anything else (one merged file, the usual
    state of a compacted hour) is left without another request."""
    small = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if _is_intent(info) or _TEMPORARY.match(info.base_name):
            return True
        if _visible(info) and (info.size or 0) < target_bytes // 2:
            small += 1
            if small >= 2:
                return True
    return False
