"""``logq-aggregator compact``: one compaction pass over the warehouse, then exit.

Its command line is :mod:`aggregator.compaction.arguments` (parsed before anything heavy is
imported).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta

import pyarrow.fs as pafs

from aggregator.compaction.arguments import DEFERRED_TOO_LONG_EXIT, parse_compact_args
from aggregator.compaction.grace import DEFAULT_GRACE, safe_grace
from aggregator.compaction.listing import DEFAULT_LOOKBACK
from aggregator.compaction.notes import PassNotes
from aggregator.compaction.passes import compact_warehouse
from aggregator.ledger import Heartbeat, compaction_blocker, read_heartbeats
from aggregator.storage import StorageError
from athena.warehouse import Warehouse, WarehouseError, check_folder, open_warehouse


def _check_exists(wh: Warehouse) -> None:
    """A warehouse that is not there is a typo to report, not an empty pass (exit 0); a local
    one this user cannot read is said as ``logq`` says it (:func:`check_folder`)."""
    if not wh.is_s3:
        problem = check_folder(wh.base)
        if problem is not None:
            raise WarehouseError(problem)
        return
    bucket = wh.base.split("/", 1)[0]
    if wh.fs.get_file_info(bucket).type != pafs.FileType.Directory:
        raise WarehouseError(
            f"the warehouse {wh.uri} does not exist (no bucket {bucket}); check --warehouse"
        )


def _deferred_for(beats: list[Heartbeat], now: float) -> float:
    """Seconds compaction has been held back by the stale heartbeats in ``beats``: since the
    first of them went stale (a node is down once its heartbeat is ``stale_after`` old). Taken
    from the heartbeats themselves, so that it holds across runs of this stateless command.
    Infinite for a heartbeat the warehouse refuses for good (:attr:`Heartbeat.unreadable`)."""
    return max((b.stale_for(now) for b in beats if b.stale(now)), default=0.0)


def _deferral_message(reason: str, waited: float, most_hours: float) -> tuple[str, int]:
    """What a deferred ``compact`` prints, and its exit status: 0 while a restart may still
    end the wait, :data:`DEFERRED_TOO_LONG_EXIT` past ``most_hours``, so that a scheduler's
    failed-job alert fires rather than every run "succeeding" without compacting."""
    if waited == float("inf"):  # a heartbeat refused for good: no restart ends this wait
        return (
            f"logq-aggregator compact: deferred: {reason}. No restart ends this wait: "
            "nothing is compacted until then; --force merges anyway",
            DEFERRED_TOO_LONG_EXIT,
        )
    if waited <= most_hours * 3600:
        return f"logq-aggregator compact: deferred: {reason} (or --force)", 0
    return (
        f"logq-aggregator compact: deferred for {_span(waited)}, longer than "
        f"--max-deferral-hours {most_hours:g}: {reason}. Until then nothing is compacted "
        "(Athena slows down on small files); --force merges anyway",
        DEFERRED_TOO_LONG_EXIT,
    )


def _span(seconds: float) -> str:
    """``57 min`` or ``3.2 h``."""
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _lookback(every: bool, hours: float | None) -> timedelta | None:
    if every:
        return None
    return DEFAULT_LOOKBACK if hours is None else timedelta(hours=hours)


def compact_main(argv: list[str]) -> int:
    """``logq-aggregator compact``: one compaction pass over the warehouse, then exit."""
    return compact(parse_compact_args(argv))


def compact(args: argparse.Namespace) -> int:
    """The compaction pass of a parsed command line (:func:`parse_compact_args`): the exit
    status."""
    from aggregator import logs
    from aggregator.config import ConfigError, Settings, blame_warehouse, load_settings

    logs.setup("info")
    settings: Settings | None = None
    try:
        # The file checked as serve checks each value (a value out of range included), its
        # two flags over it; the warehouse ($LOGQ_WAREHOUSE without either) opened here, as a
        # usage error, not a failed pass.
        given = {"warehouse": args.warehouse, "target_file_bytes": args.target_file_bytes}
        conf = argparse.Namespace(config=args.config, **given)
        settings = load_settings(conf, partial=True)
        wh = open_warehouse(settings.warehouse)
    except (ConfigError, WarehouseError) as exc:  # a bad configuration, as in serve: exit 2
        print(f"logq-aggregator compact: {blame_warehouse(exc, conf, settings)}", file=sys.stderr)
        return 2
    target = settings.target_file_bytes
    try:
        _check_exists(wh)
        beats = read_heartbeats(wh)
        now = time.time()
        hold = compaction_blocker(beats, None, now)
        if hold is not None and not args.force:
            waited = _deferred_for(beats, now)
            message, status = _deferral_message(hold.reason, waited, args.max_deferral_hours)
            print(message, file=sys.stderr)
            return status
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
