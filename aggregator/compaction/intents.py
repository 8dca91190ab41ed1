"""The intents of merges that other compactors left: finished, dropped, or waited for.

Every pass first finishes the intents it finds: one whose output is complete is finished at once
(its remaining inputs deleted), whoever wrote it; one whose output is missing or short is taken as
a crashed merge only when older than ``INTENT_STALE_AFTER`` (a running merge rewrites its intent
every ``INTENT_REFRESH``, checked before each input it reads, and stops if it was dropped), and
then its output (if any) and the intent are dropped and the inputs stay; a younger one means a
merge under way: the partition is skipped. The one gap: a process frozen for over
``INTENT_STALE_AFTER`` after reading its last input (SIGSTOP, a suspended VM) commits its output
when it resumes; if another compactor has meanwhile read the same inputs, rows stay twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.fs as pafs

from aggregator.storage import StorageError, delete_object, delete_objects, list_folder
from athena.intents import is_intent, output_complete, read_intent
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

#: An intent older than this is a crashed merge; a younger one may be another compactor's.
INTENT_STALE_AFTER = timedelta(minutes=15)


def _exists(wh: Warehouse, path: str) -> bool:
    return wh.fs.get_file_info(path).type == pafs.FileType.File


def _complete(wh: Warehouse, output: str, rows: int) -> bool:
    """``output`` may stand for its inputs (:func:`athena.intents.output_complete`: the rule
    readers apply too); a storage error is a StorageError."""
    try:
        return output_complete(wh.fs, output, rows)
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(f"reading {output} in {wh.uri} failed: {exc}") from exc


def _is_intent(info: pafs.FileInfo) -> bool:
    return is_intent(info.base_name)


def _intents(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
    """The intents in ``folder`` now (a fresh LIST: the two-compactors check needs one)."""
    return [i for i in list_folder(wh, folder) if _is_intent(i)]


class PartitionBusy(Exception):
    """Another compactor's merge is under way in this partition (a fresh intent): skip it."""


def finish_intents(
    wh: Warehouse,
    folder: str,
    stale_before: datetime | None = None,
    intents: list[pafs.FileInfo] | None = None,
) -> int:
    """Complete or drop the merges other compactors left in ``folder``; return how many.

    ``intents``: those of the caller's listing of ``folder`` (None: list it here).

    An intent whose output is complete is finished at once, whatever its age: deleting its
    inputs is what its writer would do next, and rows the output holds cannot be lost. One whose
    output is missing or short is dropped (with that output) only when older than
    ``stale_before`` (None: every one); a younger one belongs to a merge that may still be
    running elsewhere and raises :class:`PartitionBusy`, after the complete ones are finished.
    """
    done = 0
    busy = False
    for info in _intents(wh, folder) if intents is None else intents:
        try:
            intent = read_intent(wh.fs, info.path)
            output, rows = f"{folder}/{intent.output}", intent.rows
            inputs = [f"{folder}/{name}" for name in intent.inputs]
        except FileNotFoundError:  # its writer (or another pass) finished it meanwhile
            continue
        except ValueError:
            # Not one this version writes (they are atomic): a stray, or cut short by an
            # older version. It would make every merge here withdraw: drop it once stale.
            if stale_before is not None and _mtime(info) > stale_before:
                busy = True
            else:
                log.warning("deleting %s: not a readable compaction intent", info.path)
                delete_object(wh, info.path)
            continue
        if _complete(wh, output, rows):
            delete_objects(wh, inputs)
            log.info("finished the interrupted merge into %s (its inputs deleted)", output)
        elif stale_before is not None and _mtime(info) > stale_before:
            busy = True
            continue
        else:  # a crashed merge: the inputs are the truth
            delete_object(wh, output)
            log.info("dropped the stale intent %s (its inputs kept)", info.path)
        delete_object(wh, info.path)
        done += 1
    if busy:
        raise PartitionBusy(folder)
    return done


def _mtime(info: pafs.FileInfo) -> datetime:
    if info.mtime is None:
        return datetime.now(UTC)
    return info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
