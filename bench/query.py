"""Query benchmark: `logq errors --service S --since 1h` on a 10,000,000-row warehouse.

Builds a warehouse of ``--rows`` envoy_access rows (default 10,000,000) spread over ``--services``
services (20) and the last ``--hours`` hours (24), written with the aggregator's own writer
(``aggregator.writer.write_partitions``: one sorted zstd Parquet object per service/hour), or, if
that module cannot be imported, with pyarrow in the same layout. Then prints:

* the whole ``logq errors --service S --since 1h --format json`` process (start-up included),
  as engineers run it again and again (transpile cache warm) and on a first run (cache empty);
* the query itself inside logq (DuckDB execution of the transpiled canned SQL), and the
  partition listing that precedes it;
* DuckDB's own time for the same SQL on the same files, in the same run, as the yardstick;
* ``logq --help`` start-up time;
* ``logq sql "SELECT * ..." --limit 5`` against the same statement with ``LIMIT 5`` written in
  it (time and peak RSS): ``--limit`` must stop fetching, not slice a whole result.

Usage: ``python bench/query.py [--rows N] [--warehouse DIR] [--reuse] [--repeat N]``.

``--files N [--old-share F]``: instead, a warehouse of N tiny envoy_access files (100 services,
one file per service-hour, as compaction leaves them), a share F of them (the oldest hours) of an
older schema version without ``upstream_host`` and ``x_forwarded_for``; prints wall time and peak
RSS of ``logq errors``, ``logq upstreams`` (reads a column the old files lack) and
``logq sql "SELECT count(*) ..."`` over all of them: the local engine's cost per file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa

from athena.schema import ENVOY_ACCESS
from athena.warehouse import open_warehouse

PATHS = np.array(
    [
        "/api/recipes",
        "/api/recipes/{id}",
        "/api/users",
        "/api/orders",
        "/healthz",
        "/api/search",
        "/api/cart",
        "/api/checkout",
        "/static/app.js",
        "/api/profile",
    ]
)
CODES = np.array([200] * 90 + [201, 204, 304, 400, 404, 404, 429, 500, 502, 503, 503, 504])
FLAGS = {500: "-", 502: "UF,URX", 503: "UH", 504: "UT", 429: "RL", 404: "NR"}
METHODS = np.array(["GET", "GET", "GET", "POST", "PUT", "DELETE"])
AGENTS = np.array(["curl/8.5.0", "Mozilla/5.0", "okhttp/4.12", "Go-http-client/2.0"])


def service_table(
    service: str, n: int, start_ms: int, span_ms: int, rng: np.random.Generator
) -> pa.Table:
    """``n`` rows of one service, timestamps uniform over the span, with a ``service`` column."""
    ts = np.sort(start_ms + rng.integers(0, span_ms, n))
    codes = CODES[rng.integers(0, len(CODES), n)]
    flags = np.array([FLAGS.get(int(c), "-") for c in np.unique(codes)])
    flag_of = dict(zip(np.unique(codes).tolist(), flags.tolist(), strict=True))
    upstream = np.char.add("10.1.0.", rng.integers(1, 9, n).astype(str))
    columns = {
        "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "service": pa.array(np.full(n, service)),
        "host": pa.array(np.char.add("host-", rng.integers(0, 8, n).astype(str))),
        "container_id": pa.array(np.full(n, f"{abs(hash(service)):064x}"[:64])),
        "container_name": pa.array(np.full(n, "envoy")),
        "method": pa.array(METHODS[rng.integers(0, len(METHODS), n)]),
        "path": pa.array(PATHS[rng.integers(0, len(PATHS), n)]),
        "protocol": pa.array(np.full(n, "HTTP/1.1")),
        "response_code": pa.array(codes, pa.int32()),
        "response_flags": pa.array([flag_of[int(c)] for c in codes]),
        "bytes_received": pa.array(rng.integers(0, 4096, n), pa.int64()),
        "bytes_sent": pa.array(rng.integers(0, 65536, n), pa.int64()),
        "duration_ms": pa.array(rng.integers(1, 1500, n), pa.int32()),
        "upstream_service_time_ms": pa.array(rng.integers(0, 1400, n), pa.int32()),
        "x_forwarded_for": pa.array(np.char.add("203.0.113.", rng.integers(1, 250, n).astype(str))),
        "user_agent": pa.array(AGENTS[rng.integers(0, len(AGENTS), n)]),
        "request_id": pa.array(np.char.add(f"{service}-", np.arange(n).astype(str))),
        "authority": pa.array(np.full(n, f"{service}.internal")),
        "upstream_host": pa.array(np.char.add(upstream, ":8080")),
    }
    schema = ENVOY_ACCESS.arrow_schema()
    fields = [pa.field("service", pa.string()), *schema]
    order = ["timestamp", "service", *[f.name for f in schema if f.name != "timestamp"]]
    return pa.table({k: columns[k] for k in order}).cast(
        pa.schema([fields[1], fields[0], *list(schema)[1:]])
    )


def build(uri: str, rows: int, services: int, hours: int) -> str:
    """Write the warehouse; returns which writer was used."""
    wh = open_warehouse(uri, create=True)
    now = datetime.now(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    start_ms = int(start.timestamp() * 1000)
    span_ms = int(min(now, end).timestamp() * 1000) - start_ms
    rng = np.random.default_rng(42)
    per = rows // services
    try:
        from aggregator.writer import write_partitions

        writer = "aggregator.writer.write_partitions"
    except ImportError:  # pragma: no cover - the writer lives in another package of this repo
        write_partitions = None
        writer = "pyarrow fallback (aggregator.writer not importable)"
    for i in range(services):
        table = service_table(f"svc-{i:02d}", per, start_ms, span_ms, rng)
        if write_partitions is not None:
            write_partitions(wh, "envoy_access", table, "bench-0000000000000001.parquet")
        else:
            _fallback_write(wh, table)
    return writer


def _fallback_write(wh, table: pa.Table) -> None:  # pragma: no cover
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from athena.schema import dt_of, partition_path

    dts = pc.strftime(table["timestamp"], "%Y-%m-%d-%H")
    for dt in pc.unique(dts).to_pylist():
        part = table.filter(pc.equal(dts, dt))
        service = part["service"][0].as_py()
        folder = wh.path(partition_path("envoy_access", service, dt))
        wh.fs.create_dir(folder, recursive=True)
        pq.write_table(part.drop_columns(["service"]), f"{folder}/bench.parquet",
                       filesystem=wh.fs, compression="zstd")  # fmt: skip
    del dt_of


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--warehouse", default=None, help="directory (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="query an existing --warehouse as is")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=0, help="many-files mode: this many files")
    ap.add_argument("--old-share", type=float, default=0.0, help="--files: old-schema share")
    args = ap.parse_args()
    if args.files:
        return many_files(args.files, args.old_share, args.warehouse)

    tmp = None
    uri = args.warehouse
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="logq-bench-")
        uri = str(Path(tmp) / "wh")
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            writer = build(uri, args.rows, args.services, args.hours)
            print(f"built {args.rows:,} rows ({args.services} services x {args.hours} h) "
                  f"with {writer} in {time.perf_counter() - t0:.1f} s at {uri}")  # fmt: skip
        report(uri, args.repeat)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def many_files(count: int, old_share: float, uri: str | None) -> int:
    """The ``--files`` mode: build the warehouse (hard links to two 3-row templates), time
    three commands over every file, remove it (unless ``--warehouse`` was given)."""
    import pyarrow.parquet as pq

    from athena.schema import DT_FORMAT

    services = min(100, count)
    hours = -(-count // services)
    root = Path(uri or tempfile.mkdtemp(prefix="logq-bench-files-"))
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        schema = ENVOY_ACCESS.arrow_schema()
        table = service_table(
            "svc", 3, int(now.timestamp() * 1000) - 1000, 1, np.random.default_rng(1)
        )
        table = table.drop_columns(["service"]).cast(schema)
        root.mkdir(parents=True, exist_ok=True)
        current, old = root / "template-current.parquet", root / "template-old.parquet"
        pq.write_table(table, current)
        pq.write_table(table.drop_columns(["upstream_host", "x_forwarded_for"]), old)
        first_old = hours - int(hours * old_share)  # hours ago from which files are old
        made = 0
        for s in range(services):
            for h in range(1, hours + 1):
                if made == count:
                    break
                dt = (now - timedelta(hours=h)).strftime(DT_FORMAT)
                folder = root / "envoy_access" / f"service=svc{s:03d}" / f"dt={dt}"
                folder.mkdir(parents=True, exist_ok=True)
                os.link(old if h > first_old else current, folder / f"c-{s}-{h}.parquet")
                made += 1
        print(f"{made:,} files ({services} services x {hours} h, "
              f"{old_share:.0%} old schema) at {root}")  # fmt: skip
        logq = str(Path(sys.executable).with_name("logq"))
        env = {**os.environ, "LOGQ_WAREHOUSE": str(root)}
        since = f"{hours + 1}h"
        commands = [
            ["errors", "--since", since],
            ["upstreams", "--since", since],
            ["sql", "SELECT count(*) AS n FROM envoy_access", "--since", since],
        ]
        for args in commands:
            started = time.perf_counter()
            quiet = subprocess.DEVNULL
            proc = subprocess.Popen(
                [logq, *args, "-f", "json"], env=env, stdout=quiet, stderr=quiet
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            shown = " ".join(a if " " not in a else repr(a) for a in args)
            print(f"  logq {shown:<58} {wall:7.1f} s  peak RSS {usage.ru_maxrss // 1024:5} MiB"
                  f"{'' if status == 0 else f'  (exit status {status})'}")  # fmt: skip
    finally:
        if uri is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def report(uri: str, repeat: int) -> None:
    import duckdb

    from athena.engines.local import LocalEngine
    from athena.queries import load, to_duckdb
    from cli.options import Common, EngineName
    from cli.output import OutputFormat
    from cli.runner import prepare

    service = "svc-07"
    logq = str(Path(sys.executable).with_name("logq"))
    cache = tempfile.mkdtemp(prefix="logq-bench-cache-")
    env = {**os.environ, "LOGQ_WAREHOUSE": uri, "LOGQ_CACHE_DIR": cache}
    cmd = [logq, "errors", "--service", service, "--since", "1h", "--format", "json"]

    def run_cmd() -> None:
        subprocess.run(cmd, env=env, capture_output=True, check=True)

    def cold() -> None:  # an empty transpile cache: sqlglot runs
        shutil.rmtree(cache, ignore_errors=True)
        run_cmd()

    run_cmd()  # warm the page cache
    cold_s, _ = timed(cold, repeat)
    run_cmd()  # fill the transpile cache
    proc_s, _ = timed(run_cmd, repeat)
    shutil.rmtree(cache, ignore_errors=True)
    help_s, _ = timed(
        lambda: subprocess.run([logq, "--help"], capture_output=True, check=True), repeat
    )

    common = Common(
        service=[service], since="1h", until=None, path=None, method=None, limit=None,
        fmt=OutputFormat.json, engine=EngineName.local, warehouse=uri, dry_run=False,
        athena_database="logq", athena_workgroup=None, athena_output=None, athena_region=None,
        max_scan_bytes=None,
    )  # fmt: skip
    prep = prepare(common, "errors", "envoy_access", {"status_min": 500, "status_max": 599})
    engine = LocalEngine(uri)
    plan_s, parts = timed(lambda: engine.plan("envoy_access", [service], prep.trange), repeat)
    scopes = {"envoy_access": parts}
    runs = [engine.run(prep.sql, prep.params, scopes) for _ in range(repeat)]
    query_s = statistics.median(r.elapsed_s for r in runs)
    full_s, _ = timed(lambda: engine.run(prep.sql, prep.params, scopes), repeat)

    # DuckDB on its own: same transpiled SQL, same files, hive partitioning from the paths.
    sql, bound = to_duckdb(load("errors").text, prep.params)
    files = [f.path for p in parts for f in p.files]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE VIEW envoy_access AS SELECT * FROM read_parquet($files, hive_partitioning = true, "
        "hive_types = {'service': VARCHAR, 'dt': VARCHAR})".replace("$files", repr(files))
    )
    duck_s, duck_rows = timed(lambda: con.execute(sql, bound).fetchall(), repeat)
    size = sum(p.bytes for p in parts)
    rows_in = con.execute("SELECT count(*) FROM envoy_access").fetchone()[0]

    print(
        f"query: errors --service {service} --since 1h -> {len(runs[-1].rows)} result rows; "
        f"{len(parts)} partitions, {len(files)} files, {size / 1e6:.1f} MB, {rows_in:,} rows read"
    )
    lines = [
        (f"logq errors ... (whole process, median of {repeat})", proc_s, "limit 1000 ms"),
        ("  same, first run (empty transpile cache)", cold_s, "limit 1000 ms"),
        ("query itself inside logq (DuckDB execute)", query_s, "limit 100 ms"),
        ("partition listing inside logq", plan_s, ""),
        ("engine.run incl. view setup", full_s, ""),
        ("DuckDB alone, same SQL, same files", duck_s, "the yardstick"),
        ("logq --help start-up", help_s, "limit 300 ms"),
    ]
    for label, seconds, note in lines:
        print(f"  {label:<52} {seconds * 1000:8.1f} ms  {note}")
    assert len(duck_rows) == len(runs[-1].rows)

    # logq sql --limit: the first rows only, not the whole result (one service, one day).
    def sql_run(statement: str, *extra: str) -> tuple[float, int]:
        args = [logq, "sql", statement, "--service", service, "--since", "1d", "-f", "json"]
        started = time.perf_counter()
        proc = subprocess.Popen([*args, *extra], env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        assert status == 0, f"logq sql exited {status}"
        return time.perf_counter() - started, usage.ru_maxrss // 1024

    flag_s, flag_mib = sql_run("SELECT * FROM envoy_access", "--limit", "5")
    sql_s, sql_mib = sql_run("SELECT * FROM envoy_access LIMIT 5")
    print(f"  {'logq sql SELECT * ... --limit 5 (one service, 1d)':<52} {flag_s * 1000:8.1f} ms  "
          f"peak RSS {flag_mib} MiB")  # fmt: skip
    print(f"  {'  same with LIMIT 5 in the SQL (the yardstick)':<52} {sql_s * 1000:8.1f} ms  "
          f"peak RSS {sql_mib} MiB")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
