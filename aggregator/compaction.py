"""Compaction: merge a closed hour's small flush files into files of about ``--target-file-bytes``.

Flushes write one small file per partition every few seconds (freshness); Athena pays per file
opened, so once an hour is closed (its end plus ``grace`` has passed, and no file in it is younger
than ``grace``) its small files are merged. Run by ``logq-aggregator compact`` and by the
service every ``--compact-interval`` seconds.

Readers list every visible ``*.parquet`` and there is no atomic multi-object swap on S3, so the
order of a merge is chosen so that readers may briefly see a row twice but never miss one:

1. write the intent ``_compact-<id>.json`` (inputs, output, row count) in the partition (hidden
   from readers: the ``_`` prefix);
2. write the merged output ``c-<id>.parquet`` (atomic: tmp+rename locally, one upload on S3);
3. delete the inputs; 4. delete the intent.

Between 2 and 3 (milliseconds; or until the next run after a crash there) the inputs and the
output are both visible. Every run first finishes the intents it finds: if the output exists and
holds the intent's row count the remaining inputs are deleted, otherwise the output (if any) and
the intent are dropped and the inputs stay. ``<id>`` is a
hash of the input names, so a repeated attempt writes the same key. Memory stays bounded: a group
small enough (uncompressed) is loaded, sorted by ``timestamp`` and written; a larger one is
streamed file by file, in order of each file's first timestamp, as sorted runs.

Run one compactor per warehouse: the periodic task is off by default (``--compact-interval``
enables it; set it on one aggregator instance, or run ``logq-aggregator compact`` from cron). A
second compactor that finds a fresh intent skips that partition, but two passes that list the
same partition at the same instant could still both merge it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.durable import atomic_file
from aggregator.ledger import compaction_blocker, expire_ledger, read_heartbeats
from aggregator.storage import (
    ROW_GROUP_ROWS,
    StorageError,
    delete_object,
    list_folder,
    write_options,
)
from athena.schema import TABLES, Table, parse_dt
from athena.warehouse import Warehouse, WarehouseError, open_warehouse

log = logging.getLogger("logq.aggregator.compaction")

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
DEFAULT_GRACE = timedelta(minutes=30)
DEFAULT_LOOKBACK = timedelta(hours=48)
#: Groups up to this many uncompressed bytes are sorted in memory; larger ones are streamed.
SORT_IN_MEMORY_BYTES = 256 * 1024 * 1024
INTENT_PREFIX = "_compact-"
#: An intent older than this is a crashed merge; a younger one may be another compactor's.
INTENT_STALE_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class Input:
    path: str
    name: str
    size: int
    rows: int


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


class PartitionBusy(Exception):
    """Another compactor's merge is under way in this partition (a fresh intent): skip it."""


def finish_intents(wh: Warehouse, folder: str, stale_before: datetime | None = None) -> int:
    """Complete or drop the merges a crash interrupted in ``folder``; return how many.

    Only intents older than ``stale_before`` are taken as crashed; a younger one belongs to a
    merge that may still be running elsewhere and raises :class:`PartitionBusy`.
    """
    done = 0
    for info in list_folder(wh, folder):
        if not (info.base_name.startswith(INTENT_PREFIX) and info.base_name.endswith(".json")):
            continue
        if stale_before is not None and info.mtime is not None:
            mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
            if mtime > stale_before:
                raise PartitionBusy(folder)
        with wh.fs.open_input_stream(info.path) as fh:
            intent = json.loads(fh.read().decode("utf-8"))
        output = f"{folder}/{intent['output']}"
        if _exists(wh, output):
            if pq.read_metadata(output, filesystem=wh.fs).num_rows == intent["rows"]:
                for name in intent["inputs"]:
                    delete_object(wh, f"{folder}/{name}")
            else:  # an output cut short: the inputs are the truth
                delete_object(wh, output)
        delete_object(wh, info.path)
        done += 1
    return done


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


def _merge(wh: Warehouse, spec: Table, group: list[Input], output: str) -> int:
    metas = [pq.read_metadata(f.path, filesystem=wh.fs) for f in group]
    raw = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
    if raw <= SORT_IN_MEMORY_BYTES:
        tables = [_conform(pq.read_table(f.path, filesystem=wh.fs), spec) for f in group]
        pieces: Iterator[pa.Table] = iter([pa.concat_tables(tables).sort_by("timestamp")])
    else:
        pieces = _in_time_order(wh, spec, group)
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


def _in_time_order(wh: Warehouse, spec: Table, group: list[Input]) -> Iterator[pa.Table]:
    """The group's files one after another, by their first timestamp, in row-group-sized
    pieces (for groups too large to sort in memory)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    for f in sorted(group, key=lambda f: _first_ts(wh, f)):
        pending.append(_conform(pq.read_table(f.path, filesystem=wh.fs), spec))
        pending_rows += pending[-1].num_rows
        if pending_rows >= ROW_GROUP_ROWS:
            yield pa.concat_tables(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _writer_options(table: pa.Table) -> dict:
    opts = write_options(table)
    opts.pop("row_group_size", None)
    return opts


def _first_ts(wh: Warehouse, f: Input) -> int:
    stats = pq.read_metadata(f.path, filesystem=wh.fs).row_group(0).column(0).statistics
    return int(stats.min.timestamp() * 1000) if stats is not None and stats.has_min_max else 0


def compact_partition(wh: Warehouse, spec: Table, folder: str, target_bytes: int) -> int:
    """Merge the small files of one partition folder; return the number of input files merged."""
    try:
        finish_intents(wh, folder, datetime.now(UTC) - INTENT_STALE_AFTER)
    except PartitionBusy:
        log.info("skipping %s: another compaction is under way there", folder)
        return 0
    files = _readable(wh, [i for i in list_folder(wh, folder) if _visible(i)])
    merged = 0
    for group in _groups(files, target_bytes):
        names = sorted(f.name for f in group)
        gid = hashlib.sha1("\n".join(names).encode()).hexdigest()[:20]
        output_name = f"c-{gid}.parquet"
        intent = f"{folder}/{INTENT_PREFIX}{gid}.json"
        rows_in = sum(f.rows for f in group)
        with wh.fs.open_output_stream(intent) as out:
            body = {"inputs": names, "output": output_name, "rows": rows_in}
            out.write(json.dumps(body).encode())
        try:
            rows_out = _merge(wh, spec, group, f"{folder}/{output_name}")
        except BaseException:
            delete_object(wh, f"{folder}/{output_name}")
            delete_object(wh, intent)
            raise
        if rows_out != rows_in:  # never delete inputs unless the output holds every row
            delete_object(wh, f"{folder}/{output_name}")
            delete_object(wh, intent)
            raise StorageError(f"{folder}: merged {rows_out} rows, expected {rows_in}; kept inputs")
        for f in group:
            delete_object(wh, f.path)
        delete_object(wh, intent)
        merged += len(group)
        log.info(
            "compacted %d files (%d rows) into %s/%s", len(group), rows_in, folder, output_name
        )
    return merged


def _readable(wh: Warehouse, infos: list[pafs.FileInfo]) -> list[Input]:
    """The files whose Parquet footer reads, by name; any other is left where it is, with an
    ERROR naming it (a truncated upload, a stray file: Athena fails on it too)."""
    out = []
    for info in sorted(infos, key=lambda i: i.base_name):
        try:
            rows = pq.read_metadata(info.path, filesystem=wh.fs).num_rows
        except (pa.ArrowException, OSError) as exc:
            log.error(
                "not compacting %s: it is not a readable Parquet file (%s); queries of its "
                "partition fail on it too: move it out of the warehouse",
                info.path,
                exc,
            )
            continue
        out.append(Input(info.path, info.base_name, info.size or 0, rows))
    return out


def closed_partitions(
    wh: Warehouse,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
) -> Iterator[tuple[Table, str]]:
    """``(table, folder)`` of every partition whose hour ended more than ``grace`` ago."""
    for name in tables or list(TABLES):
        spec = TABLES[name]
        for svc in list_folder(wh, wh.table_root(name)):
            if svc.type != pafs.FileType.Directory or not svc.base_name.startswith("service="):
                continue
            if service is not None and svc.base_name != f"service={service}":
                continue
            for part in list_folder(wh, svc.path):
                if part.type != pafs.FileType.Directory or not part.base_name.startswith("dt="):
                    continue
                try:
                    start = parse_dt(part.base_name[3:])
                except ValueError:
                    continue
                end = start + timedelta(hours=1)
                if end + grace > now or (lookback is not None and end < now - lookback):
                    continue
                yield spec, part.path


def compact_warehouse(
    wh: Warehouse,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
    hold: Callable[[], str | None] | None = None,
) -> int:
    """Compact every closed partition; return the number of input files merged.

    ``hold`` is asked before each partition: a reason to stop the pass (another aggregator now
    leads compaction, or one went down), or None to go on.

    Also deletes offset-ledger hours past their retention (ledger.py): housekeeping that, like
    compaction, must run on one instance per warehouse.
    """
    now = now or datetime.now(UTC)
    expire_ledger(wh, now)
    merged = 0
    failed: list[str] = []
    for spec, folder in closed_partitions(wh, now, grace, lookback, tables, service):
        reason = hold() if hold is not None else None
        if reason is not None:
            log.info("compaction pass stopped before %s: %s", folder, reason)
            break
        try:
            if _has_young_files(wh, folder, now - grace):
                continue
            merged += compact_partition(wh, spec, folder, target_bytes)
        except Exception as exc:  # one bad partition must not stop the others' compaction
            log.error("compaction of %s failed: %s; its files are unchanged", folder, exc)
            failed.append(folder)
    if failed:
        raise CompactionFailed(failed, merged)
    return merged


def _has_young_files(wh: Warehouse, folder: str, cutoff: datetime) -> bool:
    """A file written after ``cutoff`` means a flush (late data, replay) may still be landing."""
    for info in list_folder(wh, folder):
        if _visible(info) and info.mtime is not None:
            mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
            if mtime > cutoff:
                return True
    return False


def _check_exists(wh: Warehouse) -> None:
    """A warehouse that is not there is a typo to report, not an empty pass (exit 0)."""
    where = wh.base.split("/", 1)[0] if wh.is_s3 else wh.base
    info = wh.fs.get_file_info(where)
    if info.type != pafs.FileType.Directory:
        what = "bucket" if wh.is_s3 else "directory"
        raise WarehouseError(
            f"the warehouse {wh.uri} does not exist (no {what} {where}); check --warehouse"
        )


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
        default=DEFAULT_GRACE.total_seconds() / 60,
        help="an hour is closed this long after it ends, if no file is younger (30)",
    )
    parser.add_argument(
        "--lookback-hours",
        type=float,
        default=DEFAULT_LOOKBACK.total_seconds() / 3600,
        help="only hours that ended within this many hours (48)",
    )
    parser.add_argument("--all", action="store_true", help="every closed hour, however old")
    parser.add_argument(
        "--force",
        action="store_true",
        help="compact even while an aggregator that stopped without writing out its buffer "
        "has not been restarted or drained (its replay may then store some rows twice)",
    )
    args = parser.parse_args(argv)
    for flag, value, most in (
        ("--grace-minutes", args.grace_minutes, 7 * 24 * 60),
        ("--lookback-hours", args.lookback_hours, 10 * 366 * 24),
    ):
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
        hold = compaction_blocker(read_heartbeats(wh), None, time.time())
        if hold is not None and not args.force:
            print(f"logq-aggregator compact: deferred: {hold.reason} (or --force)", file=sys.stderr)
            return 0
        started = time.monotonic()
        merged = compact_warehouse(
            wh,
            target,
            grace=timedelta(minutes=args.grace_minutes),
            lookback=None if args.all else timedelta(hours=args.lookback_hours),
            tables=args.table,
            service=args.service,
        )
    except (ConfigError, WarehouseError, StorageError, OSError) as exc:
        print(f"logq-aggregator compact: {exc}", file=sys.stderr)
        return 1
    print(f"compacted {merged} files in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


__all__ = ["compact_main", "compact_partition", "compact_warehouse"]
