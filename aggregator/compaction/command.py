"""``logq-aggregator compact``: one compaction pass over the warehouse, then exit."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from datetime import timedelta

import pyarrow.fs as pafs

from aggregator.compaction.grace import DEFAULT_GRACE, safe_grace
from aggregator.compaction.listing import DEFAULT_LOOKBACK
from aggregator.compaction.notes import PassNotes
from aggregator.compaction.passes import compact_warehouse
from aggregator.ledger import Heartbeat, compaction_blocker, read_heartbeats
from aggregator.storage import StorageError
from athena.schema import TABLES
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


#: ``compact``'s exit status when its pass has been deferred for longer than
#: ``--max-deferral-hours``: a failed CronJob run (kube_job_failed), told apart from a pass that
#: failed (1) or a usage error (2).
DEFERRED_TOO_LONG_EXIT = 3
#: Default ``--max-deferral-hours``: a crashed aggregator is back in minutes (a pod rescheduled
#: with its volume in well under an hour); one still down after this was scaled in, or its node
#: lost, and waits for an operator's ``drain``, which only an alert gets done.
MAX_DEFERRAL_HOURS = 2.0


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


def _paragraph(text: str) -> str:
    """``text`` wrapped for ``--help`` without breaking a flag at its hyphens (argparse's own
    wrapping printed ``--max-deferral-`` and ``hours`` on two lines)."""
    return textwrap.fill(text, width=79, break_on_hyphens=False)


def compact_main(argv: list[str]) -> int:
    """``logq-aggregator compact``: one compaction pass over the warehouse, then exit."""
    from aggregator.config import ConfigError, Settings, blame_warehouse, load_settings

    parser = argparse.ArgumentParser(
        prog="logq-aggregator compact",
        description=_paragraph(
            "Merge closed hours' small Parquet files into large ones (Athena's small-files "
            "problem). Safe to run while aggregators are writing."
        ),
        epilog=_paragraph(
            "exit status: 0 done (also deferred, while a restart may still end the wait); 1 a "
            "pass that failed or a warehouse that does not exist; 2 a usage error (a bad flag, "
            f"--config or --warehouse); {DEFERRED_TOO_LONG_EXIT} deferred for longer than "
            "--max-deferral-hours, or for a heartbeat the warehouse refuses (--force merges "
            "anyway)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="the aggregator's TOML file (warehouse, sizes)")
    parser.add_argument(
        "--warehouse",
        help="local dir or s3://bucket/prefix (default $LOGQ_WAREHOUSE, else ./logq-warehouse)",
    )
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
        "--max-deferral-hours",
        type=float,
        default=MAX_DEFERRAL_HOURS,
        help="a pass deferred for an aggregator that stopped without writing out its buffer "
        "exits 0 while that has lasted at most this long (a restart ends it), then exits "
        f"{DEFERRED_TOO_LONG_EXIT} so that the failed run is noticed (it needs a drain: "
        f"default {MAX_DEFERRAL_HOURS:g})",
    )
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
        ("--max-deferral-hours", args.max_deferral_hours, 10 * 366 * 24),
    ):
        if value is None:
            continue
        if not (math.isfinite(value) and 0 <= value <= most):
            parser.error(f"{flag} must be a number from 0 to {most}, got {value}")
    from aggregator import logs

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
