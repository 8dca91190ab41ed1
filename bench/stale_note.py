"""Stale-note benchmark: the note's cost over every service (no ``--service``) on S3.

A query without ``--service`` over an ``s3://`` warehouse ends with the stale-data note
(:func:`cli.explain.note_stale`): it reads the Parquet footers of the newest files of the
newest hour the query planned (:func:`athena.freshness.newest_in`). Builds, on a private
SeaweedFS (started and stopped here), ``--services`` services (default 50) x 1 hour of data ten
minutes old (the note then speaks), laid out two ways:

* ``outputs``: one compaction output (``c-<id>``) per service: no order in their names, so every
  one's footer is read (a footer per service);
* ``flushes``: three flushes of one writer node, each writing a file into every service folder
  (``node-a-<seq>-0000``): the two newest segments' files, capped at ``MAX_FOOTERS`` (16).

With ``--ahead`` every service also holds rows stamped 10 minutes ahead of now (a source
whose clock runs ahead; in the same compaction output, or in a fourth flush), kept within the
current hour, where the query plans them: the note then names those rows rather than calling
the data stale.

Then times :func:`note_stale` after ``logq errors --since 1h`` (planned, run once) with the
footers read one at a time (``S3_FOOTER_THREADS = 1``: the code before) and a few at once,
directly and through a relay adding ``--latency-ms`` (default 20) per request, as a real S3
round trip does. Prints the median of ``--repeat`` notes (default 5) and checks that both
print the same note. Figures, not assertions.

Usage: ``python bench/stale_note.py [--services N] [--latency-ms MS] [--repeat N] [--ahead]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.query import _SlowProxy


def build(uri: str, services: int, layout: str, ahead: bool = False) -> None:
    """``services`` services' rows 10-12 minutes old, written with the aggregator's writer in
    the ``layout`` the module docstring describes; ``ahead``: rows of a clock ahead too."""
    import pandas as pd

    from athena.schema import compacted_object_name
    from tests.athena.factory import access_frame, write_with_writer

    now = datetime.now(UTC)
    names = [f"svc{i:03d}" for i in range(services)]
    hour_end = now.replace(minute=59, second=58, microsecond=0)
    late = min(now + timedelta(minutes=10), hour_end)
    skewed = access_frame(services, late, late + timedelta(seconds=1), names, seed=7)
    if layout == "outputs":
        start = now - timedelta(minutes=12)
        frame = access_frame(4 * services, start, start + timedelta(minutes=2), names)
        frame = pd.concat([frame, skewed]) if ahead else frame
        write_with_writer(uri, "envoy_access", frame, name=compacted_object_name(f"{1:020x}"))
        return
    for k in range(3):
        start = now - timedelta(minutes=12) + timedelta(seconds=40 * k)
        frame = access_frame(4 * services, start, start + timedelta(seconds=40), names, seed=k)
        write_with_writer(uri, "envoy_access", frame, seq=10 + k)
    if ahead:
        write_with_writer(uri, "envoy_access", skewed, seq=13)


def time_note(uri: str, threads: int, repeat: int) -> tuple[float, str, int]:
    """Median seconds of one stale note over every service with ``threads`` footer readers,
    the note it printed and the footers it read."""
    import pyarrow.parquet as pq

    import athena.freshness as freshness
    from cli.explain import note_stale
    from cli.notes import forget_notes
    from cli.options import Common, EngineName
    from cli.output import OutputFormat
    from cli.runner import execute, prepare

    common = Common(
        service=None, since="1h", until=None, path=None, method=None, limit=None,
        fmt=OutputFormat.json, engine=EngineName.local, warehouse=uri, dry_run=False,
        athena_database="logq", athena_workgroup=None, athena_output=None, athena_region=None,
        max_scan_bytes=None,
    )  # fmt: skip
    prep = prepare(common, "errors", "envoy_access", {"status_min": 200, "status_max": 299})
    with contextlib.redirect_stderr(io.StringIO()):  # the command's own note, once
        execute(common, prep)  # plans the partitions the note reads, as the command does
    freshness.S3_FOOTER_THREADS = threads
    real = pq.read_metadata
    reads: list[str] = []

    def counted(path: str, *args: object, **kwargs: object) -> object:
        reads.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    pq.read_metadata = counted  # type: ignore[assignment]
    times, err = [], ""
    try:
        for _ in range(repeat):
            reads.clear()
            forget_notes()
            prep.stale_checked = False
            out = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(out):
                note_stale(common, prep)
            times.append(time.perf_counter() - t0)
            err = out.getvalue().strip()
    finally:
        pq.read_metadata = real
    return statistics.median(times), err, len(reads)


@contextlib.contextmanager
def seaweedfs_endpoints(latency_ms: float) -> Iterator[tuple[Any, list[tuple[str, str]]]]:
    """SeaweedFS started for a bench, the AWS settings pointed at it, and the two ways to reach
    it, ``(label, endpoint URL)``: direct, and through a proxy adding ``latency_ms`` to every
    request (S3 from another zone); the endpoint is set back to direct after each use, and all
    of it stopped at the end."""
    from tests.support.seaweedfs import AWS_OVERRIDES, start_seaweedfs

    os.environ.pop("LOGQ_ENGINE", None)
    server = start_seaweedfs()
    proxy = None
    try:
        for name in AWS_OVERRIDES:
            os.environ.pop(name, None)
        os.environ.update(server.env())
        direct = os.environ["AWS_ENDPOINT_URL"]
        proxy = _SlowProxy(server.endpoint, latency_ms / 1000)
        yield server, [("direct", direct), (f"+{latency_ms:g} ms", proxy.endpoint)]
    finally:
        if proxy is not None:
            proxy.close()
        server.stop()


def each_warehouse(
    services: int, latency_ms: float, ahead: bool = False
) -> Iterator[tuple[str, str]]:
    """For each layout (one compaction output per service, three flushes of one node), built
    in a bucket of its own, and each way to reach SeaweedFS (:func:`seaweedfs_endpoints`):
    ``(warehouse uri, label)`` with ``AWS_ENDPOINT_URL`` set to that way."""
    with seaweedfs_endpoints(latency_ms) as (server, endpoints):
        for layout in ("outputs", "flushes"):
            uri = f"s3://{server.create_bucket()}/wh"
            build(uri, services, layout, ahead)
            print(f"{layout}: {services} services x 1 hour on SeaweedFS")
            for label, endpoint in endpoints:
                os.environ["AWS_ENDPOINT_URL"] = endpoint
                yield uri, label
            os.environ["AWS_ENDPOINT_URL"] = endpoints[0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ahead", action="store_true", help="rows of a clock 10 minutes ahead too")
    args = ap.parse_args()

    import athena.freshness as freshness

    after_threads = freshness.S3_FOOTER_THREADS
    try:
        # closing: SeaweedFS stops at once when a run fails, not whenever the generator goes
        warehouses = each_warehouse(args.services, args.latency_ms, args.ahead)
        with contextlib.closing(warehouses) as cases:
            for uri, label in cases:
                notes = []
                for threads in (1, after_threads):
                    secs, err, reads = time_note(uri, threads, args.repeat)
                    notes.append(err)
                    print(f"  {label:>9}  footers {threads} at a time: {secs * 1000:7.1f} ms  "
                          f"({reads} footers read)")  # fmt: skip
                # The clock runs between the two: rows ahead "by up to 9m 53s" come nearer,
                # the newest data "(10m 1s ago)" grows older.
                kept = {re.sub(r"by up to [^)]*|\((?:\d+[dhms] ?)+ ago\)", "...", n) for n in notes}
                same = "same note" if len(kept) == 1 else f"NOTES DIFFER: {notes}"
                print(f"  {'':>9}  {same}: {notes[-1][:100]}")
    finally:
        freshness.S3_FOOTER_THREADS = after_threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
