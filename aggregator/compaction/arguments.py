"""``logq-aggregator compact``'s command line: its parser and the checks of its values.

Standard library only (and the table names, :mod:`athena.table_names`):
:func:`aggregator.arguments.parse_command_line` parses it before ``logq-aggregator`` imports the
compaction code, pyarrow and the AWS SDK, so ``compact --help`` and a bad flag are answered at
once. The pass itself is :func:`aggregator.compaction.command.compact`.
"""

from __future__ import annotations

import argparse
import math
import textwrap

from athena.table_names import TABLE_NAMES

#: ``compact``'s exit status when its pass has been deferred for longer than
#: ``--max-deferral-hours``: a failed CronJob run (kube_job_failed), told apart from a pass that
#: failed (1) or a usage error (2).
DEFERRED_TOO_LONG_EXIT = 3
#: Default ``--max-deferral-hours``: a crashed aggregator is back in minutes (a pod rescheduled
#: with its volume in well under an hour); one still down after this was scaled in, or its node
#: lost, and waits for an operator's ``drain``, which only an alert gets done.
MAX_DEFERRAL_HOURS = 2.0


def _paragraph(text: str) -> str:
    """``text`` wrapped for ``--help`` without breaking a flag at its hyphens (argparse's own
    wrapping printed ``--max-deferral-`` and ``hours`` on two lines)."""
    return textwrap.fill(text, width=79, break_on_hyphens=False)


def compact_parser() -> argparse.ArgumentParser:
    """The parser of ``logq-aggregator compact``."""
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
    parser.add_argument(
        "--table", action="append", choices=list(TABLE_NAMES), help="only this table"
    )
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
    return parser


def parse_compact_args(argv: list[str]) -> argparse.Namespace:
    """``compact``'s arguments, each number in its range; a usage error exits 2 (argparse's
    message), ``--help`` exits 0."""
    parser = compact_parser()
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
    return args
