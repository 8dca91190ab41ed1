"""``logq-aggregator compact``: one compaction pass over the warehouse, then exit."""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import timedelta

import pyarrow.fs as pafs

from aggregator.compaction.grace import DEFAULT_GRACE, safe_grace
from aggregator.compaction.listing import DEFAULT_LOOKBACK
from aggregator.compaction.notes import PassNotes
from aggregator.compaction.passes import DEFAULT_TARGET_BYTES, compact_warehouse
from aggregator.ledger import compaction_blocker, read_heartbeats
from aggregator.storage import StorageError
from athena.schema import TABLES
from athena.warehouse import Warehouse, WarehouseError, open_warehouse


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
        notes = PassNotes()
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
            notes=notes,
        )
    except (ConfigError, WarehouseError, StorageError, OSError) as exc:
        print(f"logq-aggregator compact: {exc}", file=sys.stderr)
        return 1
    print(f"compacted {merged} files in {time.monotonic() - started:.1f}s", file=sys.stderr)
    _tell(notes, safe_grace(beats), args.service, args.lookback_hours is not None)
    return 0


def _tell(notes: PassNotes, safe: timedelta, service: str | None, lookback_given: bool) -> None:
    """What the pass left alone and why (nothing when it skipped nothing worth a word): a
    user who runs ``compact`` after a backfill must not be left with "compacted 0 files"."""
    for line in notes.lines(safe, service, lookback_given):
        print(line if line.startswith(" ") else f"logq-aggregator compact: {line}", file=sys.stderr)
