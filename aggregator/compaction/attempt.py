"""One merge attempt: a group of a partition's small files into a new ``c-<id>.parquet``.

Readers list every visible ``*.parquet`` and there is no atomic multi-object swap on S3, so the
order of a merge is chosen so that readers may briefly see a row twice but never miss one:

1. write the intent ``_compact-<id>.json`` (inputs, output, row count) in the partition (hidden
   from readers: the ``_`` prefix), then list the partition's intents: if another compactor's is
   there, withdraw this one and leave the partition to it;
2. write the merged output ``c-<id>.parquet`` (atomic: tmp+rename locally; on S3 a multipart
   upload completed only when the merge succeeds and aborted otherwise, so a merge that fails
   half way publishes nothing: :mod:`aggregator.multipart`. pyarrow's stream, still used on a
   filesystem built without boto3 settings or where boto3's requests got no answer, cannot
   abort: there a failed merge publishes a short file, which its rollback deletes at once);
3. delete the inputs; 4. delete the intent.

``<id>`` is random, new for every attempt: two attempts never share an output or an intent, and
an attempt that fails deletes only its own output, and only while that output is incomplete. An
output that is complete (it holds the intent's row count) is never deleted by a rollback: some
compactor may already be deleting its inputs. Between 2 and 3 (milliseconds on a local disk; on S3
one DeleteObjects request per 1,000 inputs; or until the next pass after a crash or a failed delete
there) inputs and output are both visible: Athena counts their rows twice, never misses one;
``logq``'s local engine reads each once (it skips the inputs of a complete output, by the rule of
:mod:`athena.intents`, which :func:`.intents.finish_intents` applies too). A delete that fails,
whole or for some keys, leaves the intent in place: the next pass finishes the merge (step 3 again,
then 4), even while the hour holds files younger than the grace (the merged output is one of them).

Two compactors on one partition (cron plus the periodic task, a leadership handover, a merge
slower than ``INTENT_STALE_AFTER``) cannot both merge the same files: each writes its intent
before it lists the others', so whichever lists second sees the first one's intent and withdraws
(both may withdraw; the next pass merges). The check needs no conditional put, only the
read-after-write and list-after-write consistency of a local disk or S3. A compactor that lists
files one has just merged finds them missing from the listing of that check (the other one
deleted them before its intent), and withdraws, even if it read small ones before its intent.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import timedelta

import pyarrow.fs as pafs

from aggregator.compaction.inputs import Input
from aggregator.compaction.intents import INTENT_STALE_AFTER, _complete, _exists, _is_intent
from aggregator.compaction.merge import _merge
from aggregator.storage import StorageError, delete_object, delete_objects, list_folder, put_bytes
from athena.intents import INTENT_PREFIX
from athena.schema import Table, compacted_object_name
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

#: A running merge rewrites its intent this often (between input files), so that only a
#: crashed (or stalled) one ever looks stale.
INTENT_REFRESH = timedelta(minutes=1)


def _put_intent(wh: Warehouse, path: str, body: dict) -> None:
    """Whole or not at all (a reader must never parse half an intent)."""
    put_bytes(wh, path, json.dumps(body).encode())


class _Withdrawn(Exception):
    """This attempt leaves the partition to another compactor (its intent is there, or took
    this one's for a crashed merge's: :meth:`_Attempt.progress`)."""

    def __init__(self, reason: str, level: int = logging.INFO) -> None:
        super().__init__(reason)
        self.level = level


class _Attempt:
    """One merge of ``group`` into a new ``c-<id>.parquet`` (module docstring, steps 1-4)."""

    def __init__(self, wh: Warehouse, spec: Table, folder: str, group: list[Input]) -> None:
        self.wh, self.spec, self.folder, self.group = wh, spec, folder, group
        uid = secrets.token_hex(10)
        self.output_name = compacted_object_name(uid)
        self.output = f"{folder}/{self.output_name}"
        self.intent = f"{folder}/{INTENT_PREFIX}{uid}.json"
        self.rows_in = sum(f.rows for f in group)
        self.body = {
            "inputs": [f.name for f in group],
            "output": self.output_name,
            "rows": self.rows_in,
        }
        self.refreshed = 0.0

    def run(self) -> bool:
        """True once the group is merged (by this attempt or, it turned out, by another);
        False if it withdrew for another compactor. Raises if the merge failed (inputs kept)."""
        _put_intent(self.wh, self.intent, self.body)
        self.refreshed = time.monotonic()
        try:
            self._check()
            rows_out = _merge(self.wh, self.spec, self.group, self.output, self.progress)
        except BaseException as exc:
            if _complete(self.wh, self.output, self.rows_in):
                # Written whole despite the error (a reply lost after the upload): it stands.
                log.warning("merge into %s reported %s; its output is complete", self.output, exc)
                return self._commit()
            self._roll_back()
            if isinstance(exc, _Withdrawn):
                log.log(exc.level, "skipping %s: %s", self.folder, exc)
                return False
            if isinstance(exc, Exception) and self._lost_inputs():
                log.info("skipping %s: another compactor merged its files meanwhile", self.folder)
                return False
            raise
        if not _complete(self.wh, self.output, self.rows_in):
            self._roll_back()
            if self._lost_inputs():
                log.info("skipping %s: another compactor merged its files meanwhile", self.folder)
                return False
            raise StorageError(
                f"{self.folder}: merged {rows_out} rows, expected {self.rows_in}; kept inputs"
            )
        return self._commit()

    def _check(self) -> None:
        """Withdraw if another compactor's intent is there, or if an input is gone or changed.

        One LIST, after this attempt's intent is written. The inputs were read (small ones
        whole) before it: a compactor that merged them since then has deleted them before
        deleting its intent, so either its intent or the inputs' absence shows here
        (list-after-write consistency, as for the intents). One that starts later sees this
        intent and withdraws. So inputs read before the intent are as good as read after it.
        """
        listing = list_folder(self.wh, self.folder)
        if any(_is_intent(i) and i.path != self.intent for i in listing):
            raise _Withdrawn("another compaction started there")
        sizes = {i.base_name: i.size or 0 for i in listing if i.type == pafs.FileType.File}
        changed = [f.name for f in self.group if f.name not in sizes or sizes[f.name] != f.size]
        if changed:
            raise _Withdrawn(
                f"{len(changed)} of its files ({changed[0]}…) were merged or rewritten meanwhile"
            )

    def progress(self) -> None:
        """Rewrite the intent every ``INTENT_REFRESH`` so that a long merge never looks crashed;
        stop if another compactor already took it for a crashed one and dropped it."""
        if time.monotonic() - self.refreshed < INTENT_REFRESH.total_seconds():
            return
        if not _exists(self.wh, self.intent):
            raise _Withdrawn(
                f"the intent of this merge was dropped as stale while it ran (a stall of over "
                f"{INTENT_STALE_AFTER}); its inputs are kept",
                logging.WARNING,
            )
        _put_intent(self.wh, self.intent, self.body)
        self.refreshed = time.monotonic()

    def _commit(self) -> bool:
        """Delete the inputs: the output is complete, so this is safe whoever else acts here."""
        if not _exists(self.wh, self.intent):
            if self._lost_inputs():  # another pass finished this merge: nothing left to do
                return True
            # Dropped as a crashed merge's while this one stalled for INTENT_STALE_AFTER. A
            # complete output is never deleted (a finisher may be deleting its inputs), so
            # commit: the intent again first, so that a compactor that now starts on these
            # inputs sees it and withdraws (one that has already read them all would store
            # them twice: the documented limit).
            log.warning(
                "%s: the intent of the merge into %s was dropped as stale while it ran (a "
                "stall of over %s); committing it",
                self.folder,
                self.output_name,
                INTENT_STALE_AFTER,
            )
            _put_intent(self.wh, self.intent, self.body)
        try:
            delete_objects(self.wh, [f.path for f in self.group])
        except StorageError as exc:  # the intent stays: the next pass finishes the merge
            raise StorageError(
                f"merged {len(self.group)} files into {self.output_name}, but deleting them "
                f"failed ({exc}); their rows show twice until the next pass deletes them"
            ) from exc
        delete_object(self.wh, self.intent)
        log.info(
            "compacted %d files (%d rows) into %s",
            len(self.group),
            self.rows_in,
            self.output,
        )
        return True

    def _roll_back(self) -> None:
        """Drop this attempt's output, found incomplete (it stays so: no other attempt writes
        this name), and its intent."""
        delete_object(self.wh, self.output)
        delete_object(self.wh, self.intent)

    def _lost_inputs(self) -> bool:
        return any(not _exists(self.wh, f.path) for f in self.group)
