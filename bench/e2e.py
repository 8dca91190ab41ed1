"""End to end: Docker json-file logs -> logq-shipper -> 2 logq-aggregators -> S3 -> logq sql.

    .venv/bin/python bench/e2e.py [--lines N] [--shippers N] [--flush-interval S] [--keep]

Real processes on loopback, as on a host and its aggregation tier: a private SeaweedFS (S3 on
127.0.0.1, free ports, throw-away data), a bucket, two ``logq-aggregator`` processes writing the
warehouse ``s3://<bucket>/wh``, and ``--shippers`` ``logq-shipper`` daemons (follow mode, both
aggregators given with ``--aggregator``) over a generated host of 20 services, each an ECS task of
an Envoy sidecar and an app container (Docker json-file layout; with several shippers the
services are dealt over one Docker root per shipper). Phases:

1. bulk: ``--lines`` lines already in the files when the shippers start; timed from the shippers'
   start until a ``logq sql`` count over the S3 warehouse returns every one of them;
2. live: probe lines appended at a steady rate (plus background Envoy lines) while everything
   runs; freshness = seconds from a probe's ``write`` to a query returning it;
3. stop: SIGTERM to the shippers, then the aggregators (VmHWM and CPU read just before), a final
   ``logq sql`` count that must match what was written exactly (exit 1 if not), then SeaweedFS;
4. ceiling: the same files read by ``cat`` and by Python (read, split, ``json.loads`` per line).

Everything is generated from fixed seeds (the timestamps follow the clock). Every process and
temp dir is removed at the end, also on errors and Ctrl-C (``--keep`` keeps the files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import e2e_live
from bench.e2e_host import SERVICE_NAMES, Host, write_host
from bench.procfs import Usage, scrape_or_empty, usage
from tests.support.pipeline import Aggregator, Daemon, start_aggregator, start_shipper
from tests.support.procs import console_script, free_port, log_tail
from tests.support.seaweedfs import AWS_OVERRIDES, SeaweedFS, start_seaweedfs

COUNT_SQL = (
    "SELECT 'envoy_access' AS tbl, count(*) AS n, count(DISTINCT request_id) AS distinct_keys "
    "FROM envoy_access UNION ALL "
    "SELECT 'container_logs' AS tbl, count(*) AS n, count(DISTINCT message) AS distinct_keys "
    "FROM container_logs"
)
ROWS = "logq_aggregator_rows_written_total"
ACKED = "logq_shipper_lines_acked_total"


@dataclass
class Pipeline:
    """The running processes and where their logs are."""

    s3: SeaweedFS
    warehouse: str
    env: dict[str, str]
    aggregators: list[tuple[Aggregator, int]] = field(default_factory=list)
    """Each aggregator with its metrics port."""
    shippers: list[tuple[Daemon, int]] = field(default_factory=list)
    """Each shipper with its metrics port."""
    usage: list[Usage] = field(default_factory=list)

    def logs(self) -> str:
        procs = [d for d, _ in self.aggregators] + [d for d, _ in self.shippers]
        return "".join(log_tail(d.log, 15) for d in procs)

    def committed(self) -> list[float]:
        """Rows each aggregator has committed to Parquet (its Prometheus counter)."""
        return [scrape_or_empty(port).get(ROWS, 0.0) for _, port in self.aggregators]

    def acked(self) -> float:
        return sum(scrape_or_empty(port).get(ACKED, 0.0) for _, port in self.shippers)


def child_env(s3: SeaweedFS) -> dict[str, str]:
    """Our environment without AWS overrides or a warehouse, plus the SeaweedFS settings."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_OVERRIDES}
    env.pop("LOGQ_WAREHOUSE", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(s3.env())
    return env


@contextlib.contextmanager
def pipeline(args: argparse.Namespace, tmp: Path) -> Iterator[Pipeline]:
    """SeaweedFS, a bucket and the aggregators (shippers start later); all stopped on exit."""
    s3 = start_seaweedfs()
    try:
        warehouse = f"s3://{s3.create_bucket('logq-e2e')}/wh"
        env = child_env(s3)
        # In-process queries (freshness polls) read the same S3 settings from our environment.
        for name in AWS_OVERRIDES:
            os.environ.pop(name, None)
        os.environ.update(s3.env())
        pipe = Pipeline(s3, warehouse, env)
        try:
            for i in range(args.aggregators):
                work = tmp / f"aggregator-{i + 1}"
                work.mkdir()
                port = free_port()
                agg = start_aggregator(
                    warehouse, work, env,
                    "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning",
                    flush_interval=args.flush_interval,
                )  # fmt: skip
                pipe.aggregators.append((agg, port))
            yield pipe
        finally:
            for daemon, _ in pipe.shippers + pipe.aggregators:
                daemon.kill()
    finally:
        s3.stop()


def start_shippers(pipe: Pipeline, tmp: Path, roots: list[Path]) -> None:
    every = [arg for a, _ in pipe.aggregators for arg in ("--aggregator", a.address)]
    for i, root in enumerate(roots):
        work = tmp / f"shipper-{i + 1}"
        work.mkdir()
        port = free_port()
        shipper = start_shipper(
            every[1], root, work / "state", pipe.env,
            *every[2:], "--hostname", f"ip-10-0-1-{17 + i}",
            "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning",
            "--poll-interval", "0.1", "--discover-interval", "0.5",
        )  # fmt: skip
        pipe.shippers.append((shipper, port))


def count(pipe: Pipeline) -> dict[str, tuple[int, int]]:
    """``logq sql`` over the S3 warehouse: ``{table: (rows, distinct keys)}``."""
    cmd = [str(console_script("logq")), "sql", COUNT_SQL, "--format", "json"]
    cmd += ["--warehouse", pipe.warehouse]
    done = subprocess.run(
        cmd, env=pipe.env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"logq sql exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {r["tbl"]: (int(r["n"]), int(r["distinct_keys"])) for r in json.loads(done.stdout)}


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, pipe: Pipeline, interval: float = 0.1
) -> float:
    """Poll ``check`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not check():
        for daemon, _ in pipe.aggregators + pipe.shippers:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"{what}: a process exited early{pipe.logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s{pipe.logs()}")
        time.sleep(interval)
    return time.monotonic()


@dataclass
class Bulk:
    """The bulk phase: what was shipped and when (seconds since the shippers were started)."""

    lines: int
    raw_bytes: int
    """Docker json-file bytes of the bulk lines."""
    acked: float
    committed: float
    queryable: float
    counted: dict[str, tuple[int, int]]


def bulk(pipe: Pipeline, host: Host, tmp: Path, roots: list[Path], timeout: float) -> Bulk:
    want = host.written.lines
    t0 = time.monotonic()
    start_shippers(pipe, tmp, roots)
    acked = wait_for("shippers acked", lambda: pipe.acked() >= want, timeout, pipe)
    committed = wait_for("rows committed", lambda: sum(pipe.committed()) >= want, timeout, pipe)
    while True:  # the metrics say committed; the figure is when a reader sees every line
        counted = count(pipe)
        if sum(n for n, _ in counted.values()) >= want:
            break
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"logq sql counts {counted} after {timeout:.0f} s, want {want:,}")
    queryable = time.monotonic() - t0
    return Bulk(want, host.written.bytes, acked - t0, committed - t0, queryable, counted)


def stop_all(pipe: Pipeline) -> list[float]:
    """SIGTERM shippers, then aggregators; returns rows each aggregator committed before."""
    per_agg = pipe.committed()
    for i, (shipper, _) in enumerate(pipe.shippers):
        pipe.usage.append(usage(f"shipper {i + 1}", shipper.proc))
        if shipper.terminate() != 0:
            raise RuntimeError(f"shipper {i + 1} failed on SIGTERM{log_tail(shipper.log)}")
    for i, (agg, _) in enumerate(pipe.aggregators):
        pipe.usage.append(usage(f"aggregator {i + 1}", agg.proc))
        if agg.terminate(timeout=120) != 0:
            raise RuntimeError(f"aggregator {i + 1} failed on SIGTERM{log_tail(agg.log)}")
    return per_agg


def ceiling(host: Host) -> tuple[int, int, float, float]:
    """(lines, bytes, cat seconds, Python seconds) over the host's log files."""
    paths = [str(c.log_path) for c in host.containers]
    size = sum(os.path.getsize(p) for p in paths)
    t = time.perf_counter()
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)
    t_cat = time.perf_counter() - t
    lines = 0
    t = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                json.loads(line)
                lines += 1
    return lines, size, t_cat, time.perf_counter() - t


def parquet_bytes(pipe: Pipeline) -> tuple[int, int]:
    """(bytes, objects) of the Parquet files in the warehouse."""
    bucket, _, prefix = pipe.warehouse.removeprefix("s3://").partition("/")
    total = files = 0
    for page in (
        pipe.s3.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix + "/")
    ):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                total += obj["Size"]
                files += 1
    return total, files


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank: with 100 samples p99 is the 99th smallest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def report(
    args: argparse.Namespace,
    host: Host,
    b: Bulk,
    live: e2e_live.LiveResult,
    pipe: Pipeline,
    per_agg: list[float],
    final: dict[str, tuple[int, int]],
    parquet: tuple[int, int],
) -> bool:
    """Print the figures; True when the final count is exact."""
    w = host.written
    n, mb = b.lines, b.raw_bytes / 1e6
    print()
    print(
        f"bulk: {n:,} lines, {mb:.1f} MB Docker json-file, {args.shippers} shipper(s) -> "
        f"{args.aggregators} aggregators -> SeaweedFS (S3), --flush-interval "
        f"{args.flush_interval:g} s; each step: seconds since the shippers were started"
    )
    for label, seconds in (
        ("acknowledged (fsync'd in the aggregators' buffers)", b.acked),
        ("committed to Parquet in S3 (aggregators' metrics)", b.committed),
        ("END TO END: a logq sql count returns every line", b.queryable),
    ):
        print(
            f"  {label:<52} {seconds:6.1f} s  {n / seconds:>11,.0f} lines/s  "
            f"{mb / seconds:5.1f} MB/s"
        )
    total = sum(per_agg) or 1.0
    print("rows committed per aggregator (bulk + live; sources stick to one aggregator)")
    for i, rows in enumerate(per_agg):
        print(f"  aggregator {i + 1:<41} {rows:>10,.0f}  ({rows / total:.0%})")
    print("peak RSS (VmHWM) and CPU time of each process, read just before stopping it")
    for u in pipe.usage:
        print(f"  {u.name:<52} {u.peak_rss_kib / 1024:>6,.0f} MiB  {u.cpu_seconds:6.1f} s CPU")
    pq_bytes, pq_files = parquet
    print(
        f"Parquet / raw: {pq_bytes / 1e6:.1f} MB in {pq_files} objects "
        f"(avg {pq_bytes / max(pq_files, 1) / 1e3:,.0f} kB, not compacted) vs "
        f"{w.bytes / 1e6:.1f} MB Docker json-file = 1/{w.bytes / max(pq_bytes, 1):.1f}"
    )
    lat = live.latencies
    print(
        f"freshness: {live.probes} probes at {live.rate:g}/s over {live.seconds:.0f} s into "
        f"{args.probe_services} services, {live.background_rate:,.0f} background lines/s, "
        f"--flush-interval {args.flush_interval:g} s"
    )
    if lat:
        print(
            f"  {'written to the file -> returned by a query':<52} p50 {pct(lat, 0.5):.2f} s  "
            f"p99 {pct(lat, 0.99):.2f} s  max {lat[-1]:.2f} s"
        )
        print(
            f"  {'(upper bound by one poll; a poll takes, median)':<52} "
            f"{statistics.median(live.poll_seconds):.2f} s ({len(live.poll_seconds)} polls)"
        )
    if live.poll_errors:
        print(f"  {len(live.poll_errors)} polls failed and were retried: {live.poll_errors[0]}")
    if live.missing:
        print(f"  NOT SEEN: {len(live.missing)} probes, e.g. {live.missing[:5]}")
    expected = {"envoy_access": w.access, "container_logs": w.logs}
    ok = not live.missing
    print("exact count after SIGTERM to every process (logq sql over S3; key: request_id/message)")
    for table, want in expected.items():
        rows, distinct = final.get(table, (0, 0))
        good = rows == want == distinct
        ok = ok and good
        print(
            f"  {table:<15} written {want:>10,}  rows {rows:>10,}  distinct keys {distinct:>10,}  "
            f"{'OK' if good else 'MISMATCH'}"
        )
    print(f"  total           written {w.lines:>10,}  {'exact' if ok else 'NOT EXACT'}")
    return ok


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: unwind through every ``finally`` so processes and temp dirs go (once:
    a second Ctrl-C must not cut the clean-up short)."""
    if e2e_live.INTERRUPTED.is_set():
        return
    e2e_live.INTERRUPTED.set()
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_500_000, help="bulk lines (default 1,500,000)")
    ap.add_argument("--shippers", type=int, default=1, help="shipper processes (hosts)")
    ap.add_argument("--aggregators", type=int, default=2, help="aggregator processes")
    ap.add_argument("--minutes", type=float, default=20, help="time span of the bulk lines")
    ap.add_argument("--flush-interval", type=float, default=2.0, help="aggregator flush, s")
    ap.add_argument("--probes", type=int, default=100, help="freshness probe lines")
    ap.add_argument("--probe-rate", type=float, default=5.0, help="probes per second")
    ap.add_argument("--probe-services", type=int, default=4, help="services the probes go to")
    ap.add_argument("--live-rate", type=float, default=1000.0, help="background lines/s, live")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on a phase after")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, files)")
    args = ap.parse_args()
    began = time.monotonic()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="logq-e2e-"))
    try:
        return run(args, tmp, began)
    except (RuntimeError, TimeoutError, AssertionError) as exc:  # AssertionError: ignored SIGTERM
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping every process", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, began: float) -> int:
    roots = [tmp / f"host-{i + 1}" / "containers" for i in range(args.shippers)]
    t = time.perf_counter()
    host, maker = write_host(roots, args.lines, args.minutes)
    print(
        f"generated {host.written.lines:,} lines, {host.written.bytes / 1e6:.1f} MB in "
        f"{len(host.containers)} containers of {len(SERVICE_NAMES)} services "
        f"in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    with pipeline(args, tmp) as pipe:
        print(f"SeaweedFS up in {pipe.s3.startup_seconds:.1f} s; shipping ...", flush=True)
        b = bulk(pipe, host, tmp, roots, args.timeout)
        print(f"bulk phase done in {b.queryable:.1f} s; live phase ...", flush=True)
        probe_services = list(SERVICE_NAMES[: args.probe_services])
        live = e2e_live.run(
            host, maker, pipe.warehouse, probe_services,
            args.probes, args.probe_rate, args.live_rate, args.timeout,
        )  # fmt: skip
        if live.errors:
            raise RuntimeError("; ".join(live.errors))
        want = host.written.lines
        wait_for("live lines committed", lambda: sum(pipe.committed()) >= want, args.timeout, pipe)
        per_agg = stop_all(pipe)
        final = count(pipe)
        pq_bytes, pq_files = parquet_bytes(pipe)
        pipe.usage.append(usage("SeaweedFS", pipe.s3.proc))
    lines, size, t_cat, t_py = ceiling(host)
    ok = report(args, host, b, live, pipe, per_agg, final, (pq_bytes, pq_files))
    print(f"ceiling: the same files ({lines:,} lines, {size / 1e6:.1f} MB), page cache warm")
    for label, seconds in (("cat > /dev/null", t_cat), ("Python read + split + json.loads", t_py)):
        print(
            f"  {label:<52} {seconds:6.1f} s  {lines / seconds:>11,.0f} lines/s  "
            f"{size / seconds / 1e6:5,.0f} MB/s"
        )
    print(
        f"  {'end to end / Python ceiling (lines/s)':<52} "
        f"{b.lines / b.queryable / (lines / t_py):.0%}"
    )
    print(f"run time {time.monotonic() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
