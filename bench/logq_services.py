"""`logq services` benchmark: every service of an S3 warehouse, one after the other or at once.

``logq services`` lists each service's hours (a listing per table) and reads the footers of the
newest files of its newest hours: a few round trips per service. Builds, on a private SeaweedFS
(started and stopped here), ``--services`` services (default 100) x 1 hour of data ten minutes
old, in the two layouts of ``bench/stale_note.py`` (``outputs``: one compaction output per
service; ``flushes``: three flushes of one writer node into every service folder). Then times
the command in-process (no start-up: the work it does) with the services worked on one after
the other (``S3_SERVICE_THREADS = 1``: the code before) and a few at once, directly and through
a relay adding ``--latency-ms`` (default 20) per request, as a real S3 round trip does. Prints
the median of ``--repeat`` runs (default 3) and checks that both print the same answer.
``--dry-run`` times ``logq services --dry-run`` instead: its listings of every service's
hours, the same ``S3_SERVICE_THREADS`` at once. Figures, not assertions.

Usage: ``python bench/logq_services.py [--services N] [--latency-ms MS] [--repeat N]
[--dry-run]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stale_note import each_warehouse


def time_services(
    uri: str, threads: int, repeat: int, more: tuple[str, ...] = ()
) -> tuple[float, str]:
    """Median seconds of ``logq services -f json`` (and ``more`` options) over ``uri`` with
    ``threads`` services at once, and what it printed (stdout, then stderr)."""
    from typer.testing import CliRunner

    import athena.freshness as freshness
    from cli.app import app

    freshness.S3_SERVICE_THREADS = threads
    runner = CliRunner()
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = runner.invoke(app, ["services", "-f", "json", "--warehouse", uri, *more])
        times.append(time.perf_counter() - t0)
        if run.exit_code != 0:
            raise SystemExit(f"logq services exited {run.exit_code}: {run.stderr}")
        out = run.stdout + run.stderr
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true", help="time `logq services --dry-run`")
    args = ap.parse_args()
    more = ("--dry-run",) if args.dry_run else ()

    import athena.freshness as freshness

    after_threads = freshness.S3_SERVICE_THREADS
    try:
        # closing: SeaweedFS stops at once when a run fails, not whenever the generator goes
        with contextlib.closing(each_warehouse(args.services, args.latency_ms)) as cases:
            for uri, label in cases:
                outs = []
                for threads in (1, after_threads):
                    secs, out = time_services(uri, threads, args.repeat, more)
                    outs.append(out)
                    print(f"  {label:>9}  services {threads} at a time: {secs * 1000:8.1f} ms")
                same = "same answer" if outs[0] == outs[1] else "ANSWERS DIFFER"
                if args.dry_run:  # a line per table and service with hours
                    listed = f"{outs[-1].count('/service=')} service folders with hours"
                else:
                    listed = f"{outs[-1].count('service')} services listed"
                print(f"  {'':>9}  {same} ({listed})")
    finally:
        freshness.S3_SERVICE_THREADS = after_threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
