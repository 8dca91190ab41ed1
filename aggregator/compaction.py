"""Compaction: merge a closed hour's small flush files into files of about ``--target-file-bytes``.

Flushes write one small file per partition every few seconds (freshness); Athena pays per file
opened, so once an hour is closed (its end plus ``grace`` has passed, and no file in it is younger
than ``grace``) its small files are merged. Run by ``logq-aggregator compact`` and by the
service every ``--compact-interval`` seconds.

The grace is never shorter than :func:`safe_grace`: the time after which a crashed aggregator's
heartbeat counts as stale (10 of its flush intervals plus a minute, ledger.py) plus a margin.
Until then nobody knows it crashed, compaction is not held, and a merge could take the objects
of the segment it was flushing when it died; its replay would write them again (duplicate
rows). With the grace above that point, its last objects are too young to merge until its
heartbeat is stale, and from then on compaction waits for its restart or drain. The floor
follows the largest ``flush_interval`` in the heartbeats (``--flush-interval 300``: 56 minutes).

Readers list every visible ``*.parquet`` and there is no atomic multi-object swap on S3, so the
order of a merge is chosen so that readers may briefly see a row twice but never miss one:

1. write the intent ``_compact-<id>.json`` (inputs, output, row count) in the partition (hidden
   from readers: the ``_`` prefix), then list the partition's intents: if another compactor's is
   there, withdraw this one and leave the partition to it;
2. write the merged output ``c-<id>.parquet`` (atomic: tmp+rename locally, one upload on S3;
   but pyarrow cannot abort an S3 upload, so a streamed merge that fails there publishes a
   short file, which its rollback deletes at once);
3. delete the inputs; 4. delete the intent.

``<id>`` is random, new for every attempt: two attempts never share an output or an intent, and
an attempt that fails deletes only its own output, and only while that output is incomplete. An
output that is complete (it holds the intent's row count) is never deleted by a rollback: some
compactor may already be deleting its inputs. Between 2 and 3 (milliseconds on a local disk;
on S3 one DeleteObjects request per 1,000 inputs; or until the next pass after a crash or a
failed delete there) inputs and output are both visible: Athena counts their rows twice, never
misses one; ``logq``'s local engine reads each once (it skips the inputs of a complete output,
by the rule of :mod:`athena.intents`, which :func:`finish_intents` applies too). A delete that
fails, whole or for some keys, leaves the intent in place: the next pass finishes the merge
(step 3 again, then 4), even while the hour holds files younger than the grace (the merged
output is one of them).

Two compactors on one partition (cron plus the periodic task, a leadership handover, a merge
slower than ``INTENT_STALE_AFTER``) cannot both merge the same files: each writes its intent
before it lists the others', so whichever lists second sees the first one's intent and withdraws
(both may withdraw; the next pass merges). The check needs no conditional put, only the
read-after-write and list-after-write consistency of a local disk or S3. A compactor that lists
files one has just merged finds them missing from the listing of that check (the other one
deleted them before its intent), and withdraws, even if it read small ones before its intent.

Every pass first finishes the intents it finds: one whose output is complete is finished at once
(its remaining inputs deleted), whoever wrote it; one whose output is missing or short is taken as
a crashed merge only when older than ``INTENT_STALE_AFTER`` (a running merge rewrites its intent
every ``INTENT_REFRESH``, checked before each input it reads, and stops if it was dropped), and
then its output (if any) and the intent are dropped and the inputs stay; a younger one means a
merge under way: the partition is skipped. The one gap: a process frozen for over
``INTENT_STALE_AFTER`` after reading its last input (SIGSTOP, a suspended VM) commits its output
when it resumes; if another compactor has meanwhile read the same inputs, rows stay twice.

Memory stays bounded: a group small enough (uncompressed) is loaded, sorted by ``timestamp``
and written; a larger one is streamed file by file, in order of each file's first timestamp, as
sorted runs.

Throughput: on S3 every request waits tens of milliseconds, so a pass works on many at once.
Services are listed ``LIST_THREADS`` at a time, their hours ``PARTITION_LIST_THREADS`` at a
time, and partitions merged ``MERGE_PARTITIONS`` at a time; each merge reads ``READ_THREADS``
inputs at a time and deletes them in one request per 1,000. Each input is fetched once: a small
one (a flush file) is read whole with its footer (on S3 in one GET, through boto3: pyarrow sends
a HEAD first), a larger one has its footer read once and its rows read once when merged. A
merge's other deletes (its intent; a rolled-back output) are one DELETE each on S3 (pyarrow's
are a HEAD, the DELETE and a PUT recreating the folder marker). The merges running at once
hold no more decoded bytes than ``MERGE_MEMORY_BYTES`` (the size of one group sorted in memory,
so the memory a compacting node needs is that of one such group, as before): a merge waits for
room before it writes its intent. ``hold`` is asked before each partition, for one with
something to merge once a merge slot is free, right before it starts: once it says stop, the
merges under way finish and no other starts.

A pass lists what its window holds, never a service's whole history. Each service folder is
listed without recursion for its hour folders first (pyarrow; on S3 one request per 1,000
hours). A young service, whose hours are nearly all within the window (at most 96 hours in
all), is then listed whole, recursively (one request per 1,000 objects: an idle pass over 200
young services x 48 hours x 2 tables is 800 LISTs, not 19,200). A longer history is listed, on
S3 with a window of at most 96 hours (the usual 48-hour lookback), from the window's first hour
on (ListObjectsV2 ``StartAfter``, through boto3: one request per 1,000 objects, whatever the
history before it: 2 LISTs per service folder, not 49); otherwise only the hours within the
window are listed, 32 at a time. (botocore parses a listing in Python, several times pyarrow's
cost per object: young services, where it would save no request, stay on pyarrow.) Entries of hours
outside the window are dropped as soon as they are listed.
A partition with no intent and fewer than two small files there (the usual state of a compacted
hour) is left at that: no other request. Any other is listed again, fresh, and that listing
serves the young-file check, the intents and the choice of files; only the intent check of step
1 lists again, just before a merge. A file that lands in a compacted hour after it was
listed is merged by the next pass. Hours compacted by an earlier pass are listed again all the
same: late data can land in any hour, and only a listing shows it. A pass looks
back ``--lookback-hours`` (48) from now, or, for the periodic task and ``compact`` without
``--lookback-hours``, from that long before the start of the last completed pass over the whole
warehouse (``_compaction/last-pass.json``, at most 30 days), so that the hours of a pause (a
stale heartbeat over a weekend, an outage) are compacted when it ends. A pass that is stopped,
or where every partition failed (an outage), does not move it; one where only some partitions
failed does (they stay in reach 48 hours).

Run one compactor per warehouse: the periodic task is off by default. Set ``--compact-interval``
on every aggregator, or on some (of the live ones that have it, said in their heartbeats, only
the one with the smallest node id compacts, see :func:`aggregator.ledger.compaction_blocker`),
or run ``logq-aggregator compact`` from cron on one machine. A second compactor is safe (see
above), only wasted work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.durable import atomic_file
from aggregator.ledger import (
    Heartbeat,
    compaction_blocker,
    expire_ledger,
    read_heartbeats,
    stale_after,
)
from aggregator.storage import (
    ROW_GROUP_ROWS,
    StorageError,
    delete_object,
    delete_objects,
    fetch_object,
    list_folder,
    list_tree_after,
    put_bytes,
    write_options,
)
from athena.intents import INTENT_PREFIX, is_intent, output_complete, read_intent
from athena.schema import DT_FORMAT, TABLES, Table, compacted_object_name, parse_dt
from athena.threads import ordered_map
from athena.warehouse import Warehouse, WarehouseError, open_warehouse

log = logging.getLogger("logq.aggregator.compaction")

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
DEFAULT_GRACE = timedelta(minutes=30)
#: Added to the staleness point of the slowest-flushing node (see :func:`safe_grace`): file
#: mtimes come from the store's clock, heartbeat times from each node's.
SAFE_GRACE_MARGIN = timedelta(minutes=5)
DEFAULT_LOOKBACK = timedelta(hours=48)
#: Groups up to this many uncompressed bytes are sorted in memory; larger ones are streamed.
SORT_IN_MEMORY_BYTES = 256 * 1024 * 1024
#: An intent older than this is a crashed merge; a younger one may be another compactor's.
INTENT_STALE_AFTER = timedelta(minutes=15)
#: A running merge rewrites its intent this often (between input files), so that only a
#: crashed (or stalled) one ever looks stale.
INTENT_REFRESH = timedelta(minutes=1)

# --- concurrency (see "Throughput" in the module docstring) ---------------------------------------
#: Service folders listed at once (each one LIST request per 1,000 of its hour folders, and,
#: for a young service, one per 1,000 objects; a round trip of tens of milliseconds on S3).
LIST_THREADS = 16
#: Partition-hours listed at once, for services whose folder is not listed whole.
PARTITION_LIST_THREADS = 32
#: A service folder with more hour folders than this is never listed whole (recursively): its
#: hours within the window are listed one by one (see :func:`_recurse`). On S3, a window of at
#: most this many hours is listed in one go from its first hour (see :func:`_list_window`):
#: either way a listing holds at most this many hours' entries.
RECURSIVE_MAX_HOURS = 96
#: Partitions merged at once (each reads :data:`READ_THREADS` inputs at a time and deletes
#: them in one request per 1,000 on S3). Their memory is bounded by :data:`MERGE_MEMORY_BYTES`.
MERGE_PARTITIONS = 4
#: Input files of one merge read at once (footers first, then the rows).
READ_THREADS = 8
#: Decoded bytes (Parquet's uncompressed size) that the merges running at once may hold: no
#: more than the one largest group sorted in memory needs alone, so running several merges at
#: once never needs more memory than before (a group this large or larger runs alone).
MERGE_MEMORY_BYTES = SORT_IN_MEMORY_BYTES
#: What a streamed group (too large to sort in memory) is counted for: its pieces and read-ahead.
STREAM_MEMORY_BYTES = SORT_IN_MEMORY_BYTES // 2
#: A streamed merge reads ahead at most this many (compressed) bytes of input.
STREAM_READAHEAD_BYTES = 32 * 1024 * 1024
#: Inputs up to this size are read whole with their footer (on S3 one GET, see
#: :func:`_fetch_whole`; the footer read would fetch the last 64 KiB anyway), so a flush file
#: is fetched once, not once per step.
WHOLE_READ_BYTES = 1024 * 1024
#: At most this many bytes of whole inputs are kept per partition between its footer reads and
#: its merges (the rest are read again when merged).
PREFETCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Input:
    path: str
    name: str
    size: int
    rows: int
    #: The footer, as read by :func:`_readable` (None: read it again).
    meta: pq.FileMetaData | None = field(default=None, compare=False, repr=False)
    #: The whole file, for small ones (None: read it when merged).
    data: pa.Buffer | None = field(default=None, compare=False, repr=False)


class CompactionFailed(StorageError):
    """Some partitions of a pass could not be compacted; the others were (``merged`` files)."""

    def __init__(self, failed: list[str], merged: int) -> None:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        what = "1 partition" if len(failed) == 1 else f"{len(failed)} partitions"
        super().__init__(f"{what} could not be compacted (see the log): {shown}")
        self.failed = failed
        self.merged = merged


def _visible(info: pafs.FileInfo) -> bool:
    name = info.base_name
    return (
        info.type == pafs.FileType.File
        and name.endswith(".parquet")
        and not name.startswith((".", "_"))
    )


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


def _put_intent(wh: Warehouse, path: str, body: dict) -> None:
    """Whole or not at all (a reader must never parse half an intent)."""
    put_bytes(wh, path, json.dumps(body).encode())


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


@contextlib.contextmanager
def _atomic_output(wh: Warehouse, path: str) -> Iterator[IO[bytes] | pa.NativeFile]:
    """A stream whose content appears at ``path`` whole, or not at all."""
    if not isinstance(wh.fs, pafs.LocalFileSystem):
        with wh.fs.open_output_stream(path) as out:
            yield out
        return
    with atomic_file(Path(path)) as fh:
        yield fh


def _conform(table: pa.Table, spec: Table) -> pa.Table:
    """Columns in schema order with schema types (older files may lack newer columns)."""
    schema = spec.arrow_schema()
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _merge(
    wh: Warehouse,
    spec: Table,
    group: list[Input],
    output: str,
    progress: Callable[[], None] = lambda: None,
) -> int:
    """Write ``group``'s rows to ``output``; return how many. ``progress`` runs before each
    input is read (it keeps the intent fresh, and raises to stop)."""
    group = [_with_footer(wh, f) for f in group]
    if _raw_bytes(group) <= SORT_IN_MEMORY_BYTES:
        tables = list(_read_inputs(wh, spec, group, progress, window=None))
        pieces: Iterator[pa.Table] = iter([pa.concat_tables(tables).sort_by("timestamp")])
        del tables
    else:
        pieces = _in_time_order(wh, spec, group, progress)
    rows = 0
    with _atomic_output(wh, output) as out:
        writer: pq.ParquetWriter | None = None
        try:
            for piece in pieces:
                if writer is None:  # the encodings are chosen from the first piece's values
                    writer = pq.ParquetWriter(out, piece.schema, **_writer_options(piece))
                writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
                rows += piece.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _with_footer(wh: Warehouse, f: Input) -> Input:
    """``f`` with its footer (read now if :func:`_readable` did not keep it)."""
    if f.meta is not None:
        return f
    meta = pq.read_metadata(f.path, filesystem=wh.fs)
    return Input(f.path, f.name, f.size, f.rows, meta, f.data)


def _raw_bytes(group: list[Input]) -> int:
    """The group's uncompressed size, from the footers (what sorting it in memory costs)."""
    total = 0
    for f in group:
        meta = f.meta
        if meta is None:  # not read yet: count it as the largest that could be
            return SORT_IN_MEMORY_BYTES + 1
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def _memory_cost(group: list[Input]) -> int:
    """What merging ``group`` holds in memory, for :class:`_MemoryBudget`."""
    raw = _raw_bytes(group)
    kept = sum(f.size for f in group if f.data is not None)
    return kept + (raw if raw <= SORT_IN_MEMORY_BYTES else STREAM_MEMORY_BYTES)


def _read_input(wh: Warehouse, spec: Table, f: Input) -> pa.Table:
    """One input's rows, from the bytes :func:`_readable` kept or with one more read (the
    footer is not read again): a small one whole (on S3 one GET), a larger one through
    pyarrow, its columns in one go."""
    data = f.data
    if data is None and f.size <= WHOLE_READ_BYTES:
        data = fetch_object(wh, f.path)
    if data is not None:
        return _conform(pq.ParquetFile(pa.BufferReader(data), metadata=f.meta).read(), spec)
    with _open(wh, f.path) as fh:
        table = pq.ParquetFile(fh, metadata=f.meta, pre_buffer=True).read()
    return _conform(table, spec)


def _open(wh: Warehouse, path: str) -> pa.NativeFile:
    """``path`` for reading through pyarrow. On S3 that is a HEAD (for the size) before the
    reads: pyarrow's Python API opens a file by name only, even ``Fragment.open`` given the
    size (measured on pyarrow 26), so small inputs are fetched with :func:`_fetch_whole`."""
    return wh.fs.open_input_file(path)


def _fetch_whole(wh: Warehouse, path: str) -> pa.Buffer:
    """All of ``path``'s bytes: on S3 in one GET (:func:`fetch_object`, where pyarrow sends a
    HEAD and a GET), elsewhere through pyarrow. Either way FileNotFoundError for a file gone,
    another OSError for a failed read, as :func:`_read_footer` and the merge expect."""
    data = fetch_object(wh, path)
    if data is not None:
        return data
    with _open(wh, path) as fh:
        return fh.read_buffer()


def _read_inputs(
    wh: Warehouse,
    spec: Table,
    files: list[Input],
    progress: Callable[[], None],
    window: int | None,
) -> Iterator[pa.Table]:
    """The rows of ``files``, in their order, read :data:`READ_THREADS` at a time and at most
    ``window`` compressed bytes ahead of the consumer (None: no limit). ``progress`` runs in
    the caller's thread before each input is started, so an exception it raises stops the
    reads (those under way finish; the others are not started)."""
    if not files:
        return
    pending: deque[tuple[Input, Future[pa.Table]]] = deque()
    ahead = 0
    index = 0
    pool = ThreadPoolExecutor(min(READ_THREADS, len(files)), thread_name_prefix="compact-read")
    try:
        while index < len(files) or pending:
            while index < len(files) and (
                not pending
                or (
                    len(pending) < READ_THREADS
                    and (window is None or ahead + files[index].size <= window)
                )
            ):
                f = files[index]
                index += 1
                progress()
                pending.append((f, pool.submit(_read_input, wh, spec, f)))
                ahead += f.size
            f, future = pending.popleft()
            ahead -= f.size
            yield future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _in_time_order(
    wh: Warehouse, spec: Table, group: list[Input], progress: Callable[[], None]
) -> Iterator[pa.Table]:
    """The group's files one after another, by their first timestamp, in row-group-sized
    pieces (for groups too large to sort in memory)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    ordered = sorted(group, key=_first_ts)
    for table in _read_inputs(wh, spec, ordered, progress, window=STREAM_READAHEAD_BYTES):
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows >= ROW_GROUP_ROWS:
            yield pa.concat_tables(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _writer_options(table: pa.Table) -> dict:
    opts = write_options(table)
    opts.pop("row_group_size", None)
    return opts


def _first_ts(f: Input) -> int:
    meta = f.meta
    if meta is None or meta.num_row_groups == 0:
        return 0
    stats = meta.row_group(0).column(0).statistics
    return int(stats.min.timestamp() * 1000) if stats is not None and stats.has_min_max else 0


class _MemoryBudget:
    """Bytes that the merges running at once may hold (:func:`_memory_cost`): a merge waits
    until its cost fits beside the others'; one costlier than the whole budget waits until it
    runs alone. A merge reserves before it writes its intent (a wait is no stall of a merge
    under way) and holds one reservation at a time, so waiting cannot deadlock."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        cost = min(max(0, cost), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + cost <= self.total)
            self.used += cost
        try:
            yield
        finally:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()


def compact_partition(
    wh: Warehouse,
    spec: Table,
    folder: str,
    target_bytes: int,
    infos: list[pafs.FileInfo] | None = None,
    budget: _MemoryBudget | None = None,
) -> int:
    """Merge the small files of one partition folder; return the number of input files merged.

    ``infos``: the caller's listing of ``folder`` (None: list it here). A pass lists each
    partition once and decides from that listing alone, without reading a footer, that most
    partitions (already compacted: one file, or no two small ones) have nothing to merge.

    ``budget``: shared by the partitions a pass merges at once (None: this call's own).
    """
    if infos is None:
        infos = list_folder(wh, folder)
    intents = [i for i in infos if _is_intent(i)]
    if intents:
        try:
            finish_intents(wh, folder, datetime.now(UTC) - INTENT_STALE_AFTER, intents)
        except PartitionBusy:
            log.info("skipping %s: another compaction is under way there", folder)
            return 0
        infos = list_folder(wh, folder)  # finishing a merge deleted its inputs: list again
    _sweep_temporaries(wh, infos)
    small = [i for i in infos if _visible(i) and (i.size or 0) < target_bytes // 2]
    if len(small) < 2:  # _groups merges only small files, two or more: no footer to read
        return 0
    budget = budget or _MemoryBudget(MERGE_MEMORY_BYTES)
    files = _readable(wh, small)
    merged = 0
    for group in _groups(files, target_bytes):
        with budget.reserve(_memory_cost(group)):
            if not _Attempt(wh, spec, folder, group).run():
                break  # another compactor works here: it has (or the next pass will) the rest
        merged += len(group)
    return merged


#: ``.<name>.<8 hex>.tmp``: a local write in progress (:func:`aggregator.durable.atomic_file`).
_TEMPORARY = re.compile(r"\A\..+\.[0-9a-f]{8}\.tmp\Z")


def _sweep_temporaries(wh: Warehouse, infos: list[pafs.FileInfo]) -> None:
    """Delete the temporary files of local writes killed mid-way (``kill -9`` skips their
    cleanup): readers skip them, but nothing else would ever remove them. Only those older
    than INTENT_STALE_AFTER, in a closed hour: no write can still be running."""
    cutoff = datetime.now(UTC) - INTENT_STALE_AFTER
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


def _readable(wh: Warehouse, infos: list[pafs.FileInfo]) -> list[Input]:
    """The files whose Parquet footer reads, by name; any other is left where it is, with an
    ERROR naming it (a truncated upload, a stray file: Athena fails on it too).

    Read :data:`READ_THREADS` at a time; files up to :data:`WHOLE_READ_BYTES` are read whole
    (their first :data:`PREFETCH_BYTES`), so that their merge needs no other request."""
    ordered = sorted(infos, key=lambda i: i.base_name)
    whole: list[bool] = []
    kept = 0
    for info in ordered:
        size = info.size or 0
        take = size <= WHOLE_READ_BYTES and kept + size <= PREFETCH_BYTES
        kept += size if take else 0
        whole.append(take)
    if not ordered:
        return []
    with ThreadPoolExecutor(min(READ_THREADS, len(ordered)), "compact-footer") as pool:
        results = list(pool.map(lambda a: _read_footer(wh, *a), zip(ordered, whole, strict=True)))
    return [f for f in results if f is not None]


def _read_footer(wh: Warehouse, info: pafs.FileInfo, whole: bool) -> Input | None:
    """``info``'s footer (and, if ``whole``, all its bytes), or None with an ERROR."""
    try:
        data: pa.Buffer | None = None
        if whole:
            data = _fetch_whole(wh, info.path)
            meta = pq.read_metadata(pa.BufferReader(data))
        else:
            with _open(wh, info.path) as fh:
                meta = pq.read_metadata(fh)
    except (pa.ArrowException, OSError) as exc:
        log.error(
            "not compacting %s: it is not a readable Parquet file (%s); queries of its "
            "partition fail on it too: move it out of the warehouse",
            info.path,
            exc,
        )
        return None
    size = len(data) if data is not None else info.size or 0
    return Input(info.path, info.base_name, size, meta.num_rows, meta, data)


def closed_partitions(
    wh: Warehouse,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
) -> Iterator[tuple[Table, str]]:
    """``(table, folder)`` of every partition whose hour ended more than ``grace`` ago."""
    for spec, folder, _ in _closed_partitions_listed(wh, now, grace, lookback, tables, service):
        yield spec, folder


def _closed_partitions_listed(
    wh: Warehouse,
    now: datetime,
    grace: timedelta,
    lookback: timedelta | None,
    tables: list[str] | None,
    service: str | None,
) -> Iterator[tuple[Table, str, list[pafs.FileInfo]]]:
    """:func:`closed_partitions`, each with what its folder held when it was listed.

    On S3 with a window of at most :data:`RECURSIVE_MAX_HOURS` hours, each service folder is
    listed from the window's first hour on (:func:`_list_window`), :data:`LIST_THREADS`
    services at a time. Otherwise each service folder is listed without recursion first (its
    ``dt=`` hour folders: on S3 one request per 1,000 hours); only its hours within
    the window are then listed, :data:`PARTITION_LIST_THREADS` at a time, or, when they are
    nearly all its hours (a young service, see :func:`_recurse`), the whole folder at once (one
    request per 1,000 objects). Either way a pass lists, and holds, what the window holds, not
    the service's history. Results come in order, a few ahead of the caller."""
    for name in tables or list(TABLES):
        spec = TABLES[name]
        services = [
            svc.path
            for svc in list_folder(wh, wh.table_root(name))
            if svc.type == pafs.FileType.Directory
            and svc.base_name.startswith("service=")
            and (service is None or svc.base_name == f"service={service}")
        ]
        listed = ordered_map(
            lambda path: _list_service(wh, path, now, grace, lookback),
            services,
            LIST_THREADS,
            name="compact-list",
        )
        parts = ordered_map(
            _list_partition(wh), _flatten(listed), PARTITION_LIST_THREADS, name="compact-list"
        )
        with contextlib.closing(listed), contextlib.closing(parts):
            for folder, infos in parts:
                yield spec, folder, infos


#: (partition folder, its entries, or None: not listed yet).
_Partition = tuple[str, list[pafs.FileInfo] | None]


def _flatten(services: Iterator[list[_Partition]]) -> Iterator[_Partition]:
    for partitions in services:
        yield from partitions


def _list_partition(wh: Warehouse) -> Callable[[_Partition], tuple[str, list[pafs.FileInfo]]]:
    def listed(part: _Partition) -> tuple[str, list[pafs.FileInfo]]:
        folder, infos = part
        return folder, (list_folder(wh, folder) if infos is None else infos)

    return listed


def _list_service(
    wh: Warehouse, folder: str, now: datetime, grace: timedelta, lookback: timedelta | None
) -> list[_Partition]:
    """The closed partitions of the service ``folder`` within ``lookback``, in order: with
    their entries when the folder was listed whole (:func:`_recurse`) or from the window's
    first hour on (:func:`_list_window`), else to be listed.

    The hour folders are listed first (pyarrow: one request per 1,000 hours). A young service
    is then listed whole, also by pyarrow; only a longer history is listed from the window's
    first hour with boto3 (one request instead of one per hour; botocore parses each object
    listed in Python, several times pyarrow's cost, which the young ones need not pay)."""
    hours = [
        info.base_name
        for info in list_folder(wh, folder)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("dt=")
    ]
    wanted = sorted(h for h in hours if _in_window(h, now, grace, lookback))
    if not wanted:
        return []
    if not _recurse(len(wanted), len(hours)):
        listed = _list_window(wh, folder, now, grace, lookback)
        if listed is not None:
            return listed
        return [(f"{folder}/{part}", None) for part in wanted]
    # Entries of the other hours are dropped at once: only the window's are kept.
    entries = _by_partition(folder, list_tree(wh, folder), set(wanted))
    return [(f"{folder}/{part}", entries.get(part, [])) for part in wanted]


def _list_window(
    wh: Warehouse, folder: str, now: datetime, grace: timedelta, lookback: timedelta | None
) -> list[_Partition] | None:
    """On S3, a window of at most :data:`RECURSIVE_MAX_HOURS` hours is listed in one go from
    its first hour on (:func:`list_tree_after`: the hours before it are skipped by the server,
    the few after it, still open, are dropped here): one LIST request for a service whose
    window is compacted, instead of one for its hour folders and one per hour. None: list
    otherwise (a local disk, no lookback or a longer one, whose entries are not held at once).
    """
    if lookback is None or lookback > timedelta(hours=RECURSIVE_MAX_HOURS):
        return None
    # The window's first hour starts at most an hour before ``now - lookback`` (its end is
    # within). Start after the hour before that one: S3 lists from "dt=<that hour>/…" on (keys
    # sort after their own prefix), SeaweedFS from the next folder (it skips the one named):
    # either way no hour of the window is missed, and at most one more hour is listed.
    first = (now - lookback - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    infos = list_tree_after(wh, folder, f"dt={(first - timedelta(hours=1)).strftime(DT_FORMAT)}")
    if infos is None:
        return None
    hours = {part for part in _hours_of(folder, infos) if _in_window(part, now, grace, lookback)}
    entries = _by_partition(folder, infos, hours)
    return [(f"{folder}/{part}", entries[part]) for part in sorted(hours)]


def _hours_of(folder: str, infos: list[pafs.FileInfo]) -> set[str]:
    """The ``dt=`` folder names the entries of ``folder`` (listed at any depth) are in."""
    prefix = folder.rstrip("/") + "/"
    return {
        i.path[len(prefix) :].partition("/")[0]
        for i in infos
        if i.path.startswith(prefix) and i.path[len(prefix) :].startswith("dt=")
    }


def _in_window(part: str, now: datetime, grace: timedelta, lookback: timedelta | None) -> bool:
    """``part`` (``dt=...``) is an hour that ended over ``grace`` ago and within ``lookback``."""
    try:
        start = parse_dt(part[3:])
    except ValueError:
        return False
    end = start + timedelta(hours=1)
    return end + grace <= now and (lookback is None or end >= now - lookback)


def _recurse(wanted: int, hours: int) -> bool:
    """List a service folder whole rather than hour by hour: when the hours to look at are
    nearly all of its hours (the others, at most a quarter of these, are the open ones and a
    few just past the window), and not more than :data:`RECURSIVE_MAX_HOURS` in all (a pass
    over a long window, ``--all`` or a resumed one, lists hour by hour and so holds a few
    hours' entries at a time, not the whole folder's)."""
    return hours <= RECURSIVE_MAX_HOURS and hours - wanted <= max(2, wanted // 4)


def list_tree(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
    """Everything under ``folder``, at any depth (nothing if it does not exist). On S3 one
    request per 1,000 objects (pyarrow lists a recursive selector without a delimiter)."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    try:
        return wh.fs.get_file_info(selector)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"listing {folder} in {wh.uri} failed: {exc}") from exc


def _by_partition(
    folder: str, infos: list[pafs.FileInfo], wanted: set[str]
) -> dict[str, list[pafs.FileInfo]]:
    """The entries directly in each ``wanted`` ``dt=`` folder of ``folder`` (a service's)."""
    parts: dict[str, list[pafs.FileInfo]] = {part: [] for part in wanted}
    prefix = folder.rstrip("/") + "/"
    for info in infos:
        if not info.path.startswith(prefix):
            continue
        part, sep, rest = info.path[len(prefix) :].partition("/")
        entries = parts.get(part)
        if entries is not None and sep and rest and "/" not in rest:
            entries.append(info)
    return parts


def safe_grace(beats: list[Heartbeat], flush_interval: float = 0.0) -> timedelta:
    """The shortest grace that cannot merge a crashed node's last objects before its heartbeat
    counts as stale (see the module docstring): the staleness point of the node that flushes
    least often (``flush_interval``: this node's own, its heartbeat may not be written yet),
    plus :data:`SAFE_GRACE_MARGIN`. Zero when no node has a heartbeat and none is given."""
    after = [b.stale_after for b in beats]
    if flush_interval > 0:
        after.append(stale_after(flush_interval))
    if not after:
        return timedelta(0)
    return timedelta(seconds=max(after)) + SAFE_GRACE_MARGIN


def effective_grace(
    wh: Warehouse,
    grace: timedelta,
    flush_interval: float = 0.0,
    *,
    enforce: bool = True,
    beats: list[Heartbeat] | None = None,
) -> timedelta:
    """``grace``, raised to :func:`safe_grace` of the heartbeats in ``wh`` (logged when it
    is), unless ``enforce`` is off (``compact --force``: logged as a warning). ``beats``: the
    heartbeats if the caller has just read them (for its hold check), else they are read."""
    floor = safe_grace(read_heartbeats(wh) if beats is None else beats, flush_interval)
    if grace >= floor:
        return grace
    if not enforce:
        log.warning(
            "compaction grace of %s minutes is below the safe %s (--force): objects of a "
            "segment that a crashed aggregator replays may be merged, and its rows stored twice",
            _minutes(grace),
            _minutes(floor),
        )
        return grace
    log.info(
        "compaction grace raised from %s to %s minutes: a crashed aggregator counts as down "
        "only 10 of its flush intervals plus a minute after its last heartbeat (%s minutes for "
        "the slowest-flushing one here, plus %s of margin); until then the objects of the "
        "segment it was flushing must not be merged, or its replay stores their rows twice",
        _minutes(grace),
        _minutes(floor),
        _minutes(floor - SAFE_GRACE_MARGIN),
        _minutes(SAFE_GRACE_MARGIN),
    )
    return floor


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.3g}"


def compact_warehouse(
    wh: Warehouse,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
    hold: Callable[[], str | None] | None = None,
    resume: bool = False,
    flush_interval: float = 0.0,
    safe: bool = True,
    beats: list[Heartbeat] | None = None,
) -> int:
    """Compact every closed partition; return the number of input files merged.

    ``grace`` is raised to :func:`safe_grace` (``flush_interval``: the caller's own
    ``--flush-interval``, if it is an aggregator) unless ``safe`` is off (``compact --force``).
    ``beats``: the heartbeats, when the caller has just read them to decide whether to compact
    at all (one LIST and a GET per aggregator fewer), else they are read here.

    ``hold`` is asked before each partition: a reason to stop the pass (another aggregator now
    leads compaction, or one went down), or None to go on.

    ``resume``: look back from ``lookback`` before the last completed pass (:func:`last_pass`)
    rather than from ``now``, so that hours a pause outlived are compacted too (at most
    :data:`MAX_RESUME_LOOKBACK`). A pass over the whole warehouse (no ``tables``/``service``)
    with ``resume`` or no ``lookback`` records itself when it completes; one that failed
    in a partition or was stopped does not.

    Also deletes offset-ledger hours past their retention (ledger.py): housekeeping that, like
    compaction, must run on one instance per warehouse.
    """
    now = now or datetime.now(UTC)
    grace = effective_grace(wh, grace, flush_interval, enforce=safe, beats=beats)
    if resume and lookback is not None:
        lookback = resume_lookback(wh, now, lookback)
    expire_ledger(wh, now)
    merged = 0
    failed: list[str] = []
    stopped = False
    walked = 0
    budget = _MemoryBudget(MERGE_MEMORY_BYTES)
    merging = threading.Semaphore(MERGE_PARTITIONS)
    started: list[tuple[str, Future[int]]] = []
    partitions = _closed_partitions_listed(wh, now, grace, lookback, tables, service)
    with ThreadPoolExecutor(MERGE_PARTITIONS, "compact") as pool, contextlib.closing(partitions):
        for spec, folder, infos in partitions:
            walked += 1
            # A compacted partition (the usual state) needs no request beyond its service's
            # LIST. Any other waits for a free merge slot first, so that ``hold`` is asked
            # right before its merge starts, as when partitions were merged one by one.
            work = _may_need_work(infos, target_bytes)
            if work:
                merging.acquire()  # released by _pass_partition, or below
            try:
                reason = hold() if hold is not None else None
                if reason is not None:  # the merges under way finish; no other starts
                    stopped = True
                    log.info("compaction pass stopped before %s: %s", folder, reason)
                    break
                if work:
                    future = pool.submit(
                        _pass_partition, wh, spec, folder, target_bytes, now - grace, budget
                    )
                    future.add_done_callback(lambda _: merging.release())
                    started.append((folder, future))
                    work = False  # the slot is the worker's now
            finally:
                if work:
                    merging.release()
    for folder, future in started:  # all done: the pool has shut down
        exc = future.exception()
        if exc is None:
            merged += future.result()
        else:  # one bad partition must not stop the others' compaction
            log.error(
                "compaction of %s failed: %s; no row is lost: a later pass retries", folder, exc
            )
            failed.append(folder)
    # A pass that walked every partition counts as completed even if some failed: one partition
    # that always fails (a damaged file) must not hold the record back, or every later pass
    # would look back further, up to 30 days of listings, to fail on it again. Its hours stay
    # in reach for 48 hours, as before. Only a pass where everything failed (the warehouse
    # refused: an outage) does not count.
    whole = tables is None and service is None and (resume or lookback is None)
    if whole and not stopped and (not failed or len(failed) < walked):
        _record_pass(wh, now)
    if failed:
        raise CompactionFailed(failed, merged)
    return merged


def _pass_partition(
    wh: Warehouse,
    spec: Table,
    folder: str,
    target_bytes: int,
    cutoff: datetime,
    budget: _MemoryBudget,
) -> int:
    """One partition of a pass (in a worker thread): list it, then merge unless a file is
    younger than ``cutoff``. The listing is its own, fresh (its service's may be minutes old
    by now): the young-file check and the choice of files rest on it as before."""
    infos = list_folder(wh, folder)  # the one listing: young files, intents, merge
    if _has_young_files(infos, cutoff):
        _finish_early(wh, folder, infos)
        return 0
    return compact_partition(wh, spec, folder, target_bytes, infos, budget)


def _finish_early(wh: Warehouse, folder: str, infos: list[pafs.FileInfo]) -> None:
    """Finish the merges left in a partition that is not to be merged yet (a file younger than
    the grace: a late flush, or the merged output of a pass that just failed to delete its
    inputs, which is young itself). Deleting a complete output's inputs is safe whatever the
    ages (:func:`finish_intents`), and Athena counts those rows twice until it is done: were
    it left to a pass after the grace, a failed delete would double them for 30+ minutes."""
    intents = [i for i in infos if _is_intent(i)]
    if not intents:
        return
    with contextlib.suppress(PartitionBusy):  # a merge under way: the pass after it finishes
        finish_intents(wh, folder, datetime.now(UTC) - INTENT_STALE_AFTER, intents)


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


def _has_young_files(infos: list[pafs.FileInfo], cutoff: datetime) -> bool:
    """A file written after ``cutoff`` means a flush (late data, replay) may still be landing."""
    return any(_visible(i) and i.mtime is not None and _mtime(i) > cutoff for i in infos)


# --- where the next pass resumes ----------------------------------------------------------------

#: ``<warehouse>/_compaction/last-pass.json``: hidden from the tables by its ``_`` prefix, like
#: the ledger's heartbeats (``_ledger/_nodes/``), and written the same way (one atomic put).
STATE_DIR = "_compaction"
LAST_PASS = "last-pass.json"
#: A resumed pass looks back at most this far (a pause this long is an incident: the hours
#: before it need ``logq-aggregator compact --all`` or ``--lookback-hours``).
MAX_RESUME_LOOKBACK = timedelta(days=30)


def _last_pass_path(wh: Warehouse) -> str:
    return wh.path(STATE_DIR, LAST_PASS)


def last_pass(wh: Warehouse) -> datetime | None:
    """When the last completed pass over the whole warehouse started (its ``now``: every hour
    closed by then was considered), or None (never, or the record is unreadable)."""
    path = _last_pass_path(wh)
    try:
        with wh.fs.open_input_stream(path) as fh:
            doc = json.loads(fh.read().decode("utf-8"))
        return datetime.fromtimestamp(float(doc["covered_through"]), UTC)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        log.warning("ignoring the unreadable compaction record %s: %s", path, exc)
        return None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"reading {path} in {wh.uri} failed: {exc}") from exc


def _record_pass(wh: Warehouse, now: datetime) -> None:
    """Note a completed pass (whole or not at all: :func:`put_bytes`). Failing to is only
    logged: the next pass then looks back further than it needs to, which is safe."""
    doc = {"covered_through": now.timestamp(), "finished": time.time()}
    try:
        put_bytes(wh, _last_pass_path(wh), (json.dumps(doc) + "\n").encode("utf-8"))
    except StorageError as exc:
        log.warning("could not record the completed compaction pass: %s", exc)


def resume_lookback(wh: Warehouse, now: datetime, base: timedelta = DEFAULT_LOOKBACK) -> timedelta:
    """``base`` before the last completed pass, counted from ``now`` (``base`` if there was
    none or it is recent), so that the hours of a pause are not skipped; at most
    :data:`MAX_RESUME_LOOKBACK`, with a WARNING naming what is left out."""
    last = last_pass(wh)
    if last is None or last >= now:
        return base
    wanted = now - last + base
    if wanted <= base:
        return base
    if wanted > MAX_RESUME_LOOKBACK:
        log.warning(
            "the last completed compaction pass started at %s; this one looks back only %s: "
            "hours that ended before %s are not compacted (run `logq-aggregator compact --all` "
            "or --lookback-hours for them)",
            last.isoformat(timespec="seconds"),
            MAX_RESUME_LOOKBACK,
            (now - MAX_RESUME_LOOKBACK).isoformat(timespec="seconds"),
        )
        return MAX_RESUME_LOOKBACK
    if now - last > base:
        log.info(
            "the last completed compaction pass started at %s: looking back %.0f hours",
            last.isoformat(timespec="seconds"),
            wanted.total_seconds() / 3600,
        )
    return wanted


def _check_exists(wh: Warehouse) -> None:
    """A warehouse that is not there is a typo to report, not an empty pass (exit 0)."""
    where = wh.base.split("/", 1)[0] if wh.is_s3 else wh.base
    info = wh.fs.get_file_info(where)
    if info.type != pafs.FileType.Directory:
        what = "bucket" if wh.is_s3 else "directory"
        raise WarehouseError(
            f"the warehouse {wh.uri} does not exist (no {what} {where}); check --warehouse"
        )


def _lookback(every: bool, hours: float | None) -> timedelta | None:
    if every:
        return None
    return DEFAULT_LOOKBACK if hours is None else timedelta(hours=hours)


def compact_main(argv: list[str]) -> int:
    """``logq-aggregator compact``: one compaction pass over the warehouse, then exit."""
    from aggregator.config import ConfigError, _read_toml

    parser = argparse.ArgumentParser(
        prog="logq-aggregator compact",
        description="Merge closed hours' small Parquet files into large ones (Athena's "
        "small-files problem). Safe to run while aggregators are writing.",
    )
    parser.add_argument("--config", help="the aggregator's TOML file (warehouse, sizes)")
    parser.add_argument("--warehouse", help="local dir or s3://bucket/prefix")
    parser.add_argument("--target-file-bytes", type=int, help="output file size (128 MiB)")
    parser.add_argument("--table", action="append", choices=list(TABLES), help="only this table")
    parser.add_argument("--service", help="only this (sanitised) service")
    parser.add_argument(
        "--grace-minutes",
        type=float,
        help="an hour is closed this long after it ends, if no file is younger (30; raised "
        "to 10 flush intervals of the slowest-flushing aggregator + 6 minutes when longer, "
        "unless given with --force)",
    )
    parser.add_argument(
        "--lookback-hours",
        type=float,
        help="only hours that ended within this many hours (default: 48 before the last "
        "completed pass, at least 48, at most 30 days)",
    )
    parser.add_argument("--all", action="store_true", help="every closed hour, however old")
    parser.add_argument(
        "--force",
        action="store_true",
        help="compact even while an aggregator that stopped without writing out its buffer "
        "has not been restarted or drained, and with a --grace-minutes given below the safe "
        "one (its replay may then store some rows twice)",
    )
    args = parser.parse_args(argv)
    for flag, value, most in (
        ("--grace-minutes", args.grace_minutes, 7 * 24 * 60),
        ("--lookback-hours", args.lookback_hours, 10 * 366 * 24),
    ):
        if value is None:
            continue
        if not (math.isfinite(value) and 0 <= value <= most):
            parser.error(f"{flag} must be a number from 0 to {most}, got {value}")
    from aggregator import logs

    logs.setup("info")
    try:
        conf = _read_toml(args.config) if args.config else {}
        wh = open_warehouse(args.warehouse or conf.get("warehouse"))
        _check_exists(wh)
        target = int(
            args.target_file_bytes or conf.get("target_file_bytes") or DEFAULT_TARGET_BYTES
        )
        beats = read_heartbeats(wh)
        hold = compaction_blocker(beats, None, time.time())
        if hold is not None and not args.force:
            print(f"logq-aggregator compact: deferred: {hold.reason} (or --force)", file=sys.stderr)
            return 0
        started = time.monotonic()
        explicit_grace = args.grace_minutes is not None
        merged = compact_warehouse(
            wh,
            target,
            grace=timedelta(minutes=args.grace_minutes) if explicit_grace else DEFAULT_GRACE,
            lookback=_lookback(args.all, args.lookback_hours),
            tables=args.table,
            service=args.service,
            resume=args.lookback_hours is None and not args.all,
            # --force alone (a crashed peer not back yet) keeps the grace floor for live ones.
            safe=not (args.force and explicit_grace),
            beats=beats,
        )
    except (ConfigError, WarehouseError, StorageError, OSError) as exc:
        print(f"logq-aggregator compact: {exc}", file=sys.stderr)
        return 1
    print(f"compacted {merged} files in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


__all__ = [
    "compact_main",
    "compact_partition",
    "compact_warehouse",
    "effective_grace",
    "last_pass",
    "resume_lookback",
    "safe_grace",
]
