"""Query benchmark: `logq errors --service S --since 1h` on a 10,000,000-row warehouse.

Builds a warehouse of ``--rows`` envoy_access rows (default 10,000,000) spread over ``--services``
services (20) and the last ``--hours`` hours (24), written with the aggregator's own writer
(``aggregator.writer.write_partitions``: one sorted zstd Parquet object per service/hour), or, if
that module cannot be imported, with pyarrow in the same layout. Then prints:

* the whole ``logq errors --service S --since 1h --format json`` process (start-up included),
  as engineers run it again and again (transpile cache warm; wall time, and the CPU time of the
  process, which other work on a shared machine inflates far less) and on a first run (cache
  empty);
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
``logq sql "SELECT count(*) ..."`` over all of them: the local engine's cost per file. ``--s3``:
the files are on a private SeaweedFS (started and stopped here; PUTs take ~10 ms a file), read
through pyarrow's S3 filesystem as ``s3://`` warehouses are; ``--code DIR``: the commands run the
code of another checkout (before/after figures).

``--services-hour N [--services S] [--code DIR]``: instead, ``logq services`` on a local
warehouse whose newest hour holds N flushed files per service (two writer nodes, the names the
aggregator gives them, as an uncompacted hour at a 10 s flush interval holds 360) for S services
(default 20): wall time and peak RSS of the process (it reads the footers of each hour's newest
files, not every file).

``--tail N [--services S] [--hours H] [--flushes F] [--code DIR]``: instead, ``logq tail`` over
a container_logs table of N lines (S services, default 20, over the last H hours, default 24),
a tenth of them in bursts of 8 lines sharing one millisecond (stack traces), each service-hour
in F files (default 6: flushes whose lines interleave): wall time and peak RSS of ``tail
--limit 100``, ``--limit 10000``, ``--stream stderr --grep`` and ``--since 1h`` for one service
(tail orders a millisecond's lines by file and place in it, as written: see
:mod:`athena.engines.local`); ``--code DIR`` runs another checkout (before/after figures).

``--listing s3|local [--services N] [--hours H] [--e2e]``: instead, the cost of *planning* a query
over every service (no ``--service``): N services (default 500) x the last H hours (default 48),
one tiny file per service-hour, on a private SeaweedFS (``s3``, started and stopped here) or in a
local directory. For ``--since 1h``, ``1d``, ``2d`` (and ``30d`` when H >= 720) it prints the
filesystem listings :func:`athena.partitions.plan` makes (recursive ones apart: those page
through a whole service folder), its wall time and the peak RSS of a process that only plans;
``--e2e`` also runs ``logq errors --since 1d`` (wall time, peak RSS). ``--latency-ms MS`` (S3)
plans again through a relay that delays every request by MS, as a real S3 round trip does;
``--code DIR`` plans with the ``athena`` package of another checkout (before/after figures).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

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


#: Runs ``logq`` with the arguments after the first, then writes the process's peak RSS (KiB,
#: ``VmHWM``) to the file named by the first. ``ru_maxrss`` from ``wait4`` cannot tell it: Linux
#: carries the RSS of the process that spawned the command (this one, with its SeaweedFS client
#: and test data) into the command's figure, which then showed the bench, not logq.
_PEAK_CHILD = """
import atexit, sys
peak_file = sys.argv.pop(1)
def _peak() -> None:
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(peak_file, "w") as out:
        out.write(kib)
atexit.register(_peak)
from cli.app import main
sys.argv[0] = "logq"
sys.exit(main())
"""


class Run(NamedTuple):
    """One ``logq`` process: wall time, exit status, peak RSS, what it printed on stderr."""

    seconds: float
    status: int
    peak_mib: int
    stderr: str


def run_logq(args: list[str], env: dict[str, str]) -> Run:
    """``logq ARGS`` (stdout thrown away) with its own peak RSS (see :data:`_PEAK_CHILD`).
    ``-P``: the code is that of the environment (``PYTHONPATH``, ``--code``), not that of the
    current directory, as for the ``logq`` script."""
    with tempfile.NamedTemporaryFile(prefix="logq-bench-peak-") as peak:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-P", "-c", _PEAK_CHILD, peak.name, *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        kib = Path(peak.name).read_text().strip()
    return Run(seconds, proc.returncode, int(kib or 0) // 1024, proc.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--services", type=int, default=None, help="default 20 (--listing: 500)")
    ap.add_argument("--hours", type=int, default=None, help="default 24 (--listing: 48)")
    ap.add_argument("--warehouse", default=None, help="directory (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="query an existing --warehouse as is")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=0, help="many-files mode: this many files")
    ap.add_argument("--old-share", type=float, default=0.0, help="--files: old-schema share")
    ap.add_argument("--s3", action="store_true", help="--files: on a private SeaweedFS")
    ap.add_argument("--listing", choices=["s3", "local"], default=None,
                    help="planning mode: listing cost over many services")  # fmt: skip
    ap.add_argument("--e2e", action="store_true", help="--listing: also logq errors --since 1d")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="--listing s3: also plan through a relay adding this per request",
    )
    ap.add_argument(
        "--code",
        default=None,
        help="--listing, --files: run the code of this checkout (before/after figures)",
    )
    ap.add_argument(
        "--services-hour", type=int, default=0, help="logq services mode: files per service-hour"
    )
    ap.add_argument("--tail", type=int, default=0, help="logq tail mode: this many lines")
    ap.add_argument("--flushes", type=int, default=6, help="--tail: files per service-hour")
    args = ap.parse_args()
    if args.tail:
        return tail_mode(
            args.tail, args.services or 20, args.hours or 24, args.flushes, args.repeat,
            args.code,
        )  # fmt: skip
    if args.services_hour:
        return services_hour(args.services_hour, args.services or 20, args.repeat, args.code)
    if args.listing:
        return planning(
            args.listing, args.services or 500, args.hours or 48, args.e2e,
            args.latency_ms, args.code,
        )  # fmt: skip
    args.services = args.services or 20
    args.hours = args.hours or 24
    if args.files:
        return many_files(args.files, args.old_share, args.warehouse, args.s3, args.code)

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


def _scratch(prefix: str, code_dir: str | None) -> tuple[Path, dict[str, str]]:
    """A scratch folder (its caller removes it), and the environment of the ``logq`` runs: its
    own transpile cache there, and the code of ``code_dir`` when given."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "LOGQ_CACHE_DIR": str(root / "cache")}
    if code_dir:
        env["PYTHONPATH"] = str(Path(code_dir).resolve())
    return root, env


def logs_table(
    service: str, n: int, start_ms: int, span_ms: int, rng: np.random.Generator
) -> pa.Table:
    """``n`` container_logs rows of one service, a tenth in bursts of 8 lines of one
    millisecond (a stack trace), the rest one a millisecond, with a ``service`` column."""
    from athena.schema import CONTAINER_LOGS

    bursts = n // 80
    single = n - bursts * 8
    ts = np.concatenate(
        [
            start_ms + rng.integers(0, span_ms, single),
            np.repeat(start_ms + rng.integers(0, span_ms, bursts), 8),
        ]
    )
    kind = np.concatenate([np.zeros(single, np.int8), np.ones(bursts * 8, np.int8)])
    order = np.argsort(ts, kind="stable")
    ts, kind = ts[order], kind[order]
    numbers = np.arange(len(ts)).astype(str)
    message = np.where(
        kind == 1,
        np.char.add('  File "/app/handlers.py", line ', numbers),
        np.char.add(f"INFO {service} handled request ", numbers),
    )
    stream = np.where(kind == 1, "stderr", "stdout")
    schema = CONTAINER_LOGS.arrow_schema()
    columns = {
        "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "service": pa.array(np.full(len(ts), service)),
        "host": pa.array(np.full(len(ts), "host-1")),
        "container_id": pa.array(np.full(len(ts), "c" * 64)),
        "container_name": pa.array(np.full(len(ts), service)),
        "stream": pa.array(stream),
        "message": pa.array(message),
    }
    fields = [pa.field("service", pa.string()), *schema]
    order_names = ["timestamp", "service", *[f.name for f in schema if f.name != "timestamp"]]
    return pa.table({k: columns[k] for k in order_names}).cast(
        pa.schema([fields[1], fields[0], *list(schema)[1:]])
    )


def tail_mode(
    rows: int, services: int, hours: int, flushes: int, repeat: int, code_dir: str | None
) -> int:
    """The ``--tail`` mode (module docstring)."""
    from aggregator.writer import object_name, write_partitions

    root, env = _scratch("logq-bench-tail-", code_dir)
    try:
        wh = open_warehouse(str(root / "wh"), create=True)
        now = datetime.now(UTC)
        start_ms = int((now - timedelta(hours=hours)).timestamp() * 1000)
        span_ms = hours * 3_600_000 - 60_000
        rng = np.random.default_rng(11)
        t0 = time.perf_counter()
        for i in range(services):
            table = logs_table(f"svc-{i:02d}", rows // services, start_ms, span_ms, rng)
            flush = rng.integers(0, flushes, table.num_rows)
            for seg in range(flushes):  # rows of each flush keep their order (the writer's)
                part = table.filter(pa.array(flush == seg))
                write_partitions(wh, "container_logs", part, object_name("node-a", seg + 1))
        code = f"; the code of {code_dir}" if code_dir else ""
        took = time.perf_counter() - t0
        print(f"built {rows:,} container_logs lines ({services} services x {hours} h, "
              f"{flushes} files per service-hour) in {took:.1f} s{code}")  # fmt: skip
        uri = str(root / "wh")
        commands = [
            ["tail", "-s", "svc-00", "--since", f"{hours}h", "--limit", "100"],
            ["tail", "-s", "svc-00", "--since", f"{hours}h", "--limit", "10000"],
            ["tail", "-s", "svc-00", "--since", f"{hours}h", "--stream", "stderr",
             "--grep", "line 1[0-9]*$", "--limit", "1000"],
            ["tail", "-s", "svc-00", "--since", "1h", "--limit", "1000"],
        ]  # fmt: skip
        for args in commands:
            runs = [run_logq([*args, "-f", "json", "--warehouse", uri], env) for _ in range(repeat)]
            bad = [r for r in runs if r.status != 0]
            if bad:
                print(bad[0].stderr, file=sys.stderr)
                return 1
            shown = " ".join(a if " " not in a else repr(a) for a in args)
            print(f"  logq {shown:<78} median {statistics.median(r.seconds for r in runs):5.2f} s"
                  f"  peak RSS {max(r.peak_mib for r in runs):4} MiB")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def services_hour(files: int, services: int, repeat: int, code_dir: str | None) -> int:
    """The ``--services-hour`` mode: ``files`` flushes (two nodes taking turns, 40 rows each
    over all ``services``) into the newest closed hour, then ``logq services -f json`` timed."""
    from aggregator.writer import object_name, write_partitions

    root, env = _scratch("logq-bench-services-", code_dir)
    try:
        wh = open_warehouse(str(root / "wh"), create=True)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        start_ms, rng = int(hour.timestamp() * 1000), np.random.default_rng(7)
        t0 = time.perf_counter()
        for seg in range(files):
            step_ms = 3_600_000 // files
            begin = start_ms + seg * step_ms
            rows = pa.concat_tables(
                service_table(f"svc-{i:02d}", 40 // services + 1, begin, step_ms, rng)
                for i in range(services)
            )
            node = ("node-a", "node-b")[seg % 2]
            write_partitions(wh, "envoy_access", rows, object_name(node, seg // 2 + 1))
        code = f"; the code of {code_dir}" if code_dir else ""
        print(f"{files} files x {services} services in one hour, built in "
              f"{time.perf_counter() - t0:.1f} s{code}")  # fmt: skip
        runs = [run_logq(["services", "-f", "json", "--warehouse", str(root / "wh")], env)
                for _ in range(repeat)]  # fmt: skip
        bad = [r for r in runs if r.status != 0]
        if bad:
            print(bad[0].stderr, file=sys.stderr)
            return 1
        print(f"logq services: median {statistics.median(r.seconds for r in runs):.2f} s "
              f"(runs {min(r.seconds for r in runs):.2f}-{max(r.seconds for r in runs):.2f} s), "
              f"peak RSS {max(r.peak_mib for r in runs)} MiB")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def many_files(
    count: int, old_share: float, uri: str | None, s3: bool = False, code_dir: str | None = None
) -> int:
    """The ``--files`` mode: build the warehouse (hard links to two 3-row templates; with ``s3``,
    PUTs of them to a private SeaweedFS), time three commands over every file (with the code of
    ``code_dir`` if given), remove it (unless ``--warehouse`` was given, locally)."""
    services = min(100, count)
    hours = -(-count // services)
    root = Path(uri if uri and not s3 else tempfile.mkdtemp(prefix="logq-bench-files-"))
    server = None
    env = {**os.environ}
    try:
        if s3:
            from tests.support.seaweedfs import AWS_OVERRIDES, start_seaweedfs

            server = start_seaweedfs()
            for name in AWS_OVERRIDES:  # this process writes the files, the commands read them
                env.pop(name, None)
            env.update(server.env())
            os.environ.update(server.env())
            target = f"s3://{server.create_bucket()}/wh"
        else:
            target = str(root)
        t0 = time.perf_counter()
        made = _build_many_files(target, root, count, services, hours, old_share)
        print(f"{made:,} files ({services} services x {hours} h, {old_share:.0%} old schema) "
              f"at {target}, built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        if code_dir:
            env["PYTHONPATH"] = str(Path(code_dir).resolve())
            print(f"  with the code of {env['PYTHONPATH']}")
        _run_many_files(target, hours, env, str(root / "cache"))
    finally:
        if server is not None:
            server.stop()
        if uri is None or s3:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _build_many_files(
    uri: str, root: Path, count: int, services: int, hours: int, old_share: float
) -> int:
    """``count`` 3-row envoy_access files, one a service-hour, the oldest ``old_share`` of the
    hours without ``upstream_host`` and ``x_forwarded_for``: hard links of two templates in a
    local warehouse, 16 concurrent PUTs on S3. Returns how many were made."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from athena.schema import DT_FORMAT

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    schema = ENVOY_ACCESS.arrow_schema()
    table = service_table("svc", 3, int(now.timestamp() * 1000) - 1000, 1, np.random.default_rng(1))
    table = table.drop_columns(["service"]).cast(schema)
    root.mkdir(parents=True, exist_ok=True)
    current, old = root / "template-current.parquet", root / "template-old.parquet"
    pq.write_table(table, current)
    pq.write_table(table.drop_columns(["upstream_host", "x_forwarded_for"]), old)
    first_old = hours - int(hours * old_share)  # hours ago from which files are old
    wanted = [
        (f"envoy_access/service=svc{s:03d}/dt={(now - timedelta(hours=h)).strftime(DT_FORMAT)}",
         f"c-{s}-{h}.parquet", old if h > first_old else current)
        for s in range(services) for h in range(1, hours + 1)
    ][:count]  # fmt: skip
    wh = open_warehouse(uri, create=True)
    if not wh.is_s3:
        for folder, name, template in wanted:
            Path(wh.path(folder)).mkdir(parents=True, exist_ok=True)
            os.link(template, Path(wh.path(folder, name)))
        return len(wanted)
    data = {template: template.read_bytes() for template in (current, old)}

    def put(item: tuple[str, str, Path]) -> None:
        folder, name, template = item
        with wh.fs.open_output_stream(wh.path(folder, name)) as f:
            f.write(data[template])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, wanted))
    return len(wanted)


def _run_many_files(uri: str, hours: int, env: dict[str, str], cache: str) -> None:
    """Wall time and peak RSS of three commands over every file of the warehouse at ``uri``."""
    env = {**env, "LOGQ_WAREHOUSE": uri, "LOGQ_CACHE_DIR": cache}
    since = f"{hours + 1}h"
    commands = [
        ["errors", "--since", since],
        ["upstreams", "--since", since],
        ["sql", "SELECT count(*) AS n FROM envoy_access", "--since", since],
    ]
    for args in commands:
        run = run_logq([*args, "-f", "json"], env)
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        print(f"  logq {shown:<58} {run.seconds:7.1f} s  peak RSS {run.peak_mib:5} MiB"
              f"{'' if run.status == 0 else f'  (exit status {run.status})'}")  # fmt: skip


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

    cpu: list[float] = []

    def run_cmd() -> None:  # also notes the process's CPU time (user + sys)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    def cold() -> None:  # an empty transpile cache: sqlglot runs
        shutil.rmtree(cache, ignore_errors=True)
        run_cmd()

    run_cmd()  # warm the page cache
    cold_s, _ = timed(cold, repeat)
    run_cmd()  # fill the transpile cache
    proc_s, _ = timed(run_cmd, repeat)
    proc_cpu_s = statistics.median(cpu[-repeat:])
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
        ("  same, CPU time of the process (user + sys)", proc_cpu_s, "steadier on a busy host"),
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
        args = ["sql", statement, "--service", service, "--since", "1d", "-f", "json"]
        run = run_logq([*args, *extra], env)
        assert run.status == 0, f"logq sql exited {run.status}: {run.stderr}"
        return run.seconds, run.peak_mib

    flag_s, flag_mib = sql_run("SELECT * FROM envoy_access", "--limit", "5")
    sql_s, sql_mib = sql_run("SELECT * FROM envoy_access LIMIT 5")
    print(f"  {'logq sql SELECT * ... --limit 5 (one service, 1d)':<52} {flag_s * 1000:8.1f} ms  "
          f"peak RSS {flag_mib} MiB")  # fmt: skip
    print(f"  {'  same with LIMIT 5 in the SQL (the yardstick)':<52} {sql_s * 1000:8.1f} ms  "
          f"peak RSS {sql_mib} MiB")  # fmt: skip


# --- --listing: the cost of planning a query over every service ------------------------------

#: The child that plans once and reports: listings, seconds, partitions, files, peak RSS.
_PLAN_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from athena import partitions
from athena.timerange import TimeRange
from athena.warehouse import Warehouse, open_warehouse

class Counting:  # the warehouse filesystem, counting listings (recursive ones apart)
    def __init__(self, fs):
        self.fs, self.flat, self.recursive = fs, 0, 0
    def get_file_info(self, what):
        if getattr(what, "recursive", None) is True:
            self.recursive += 1
        elif hasattr(what, "base_dir"):
            self.flat += 1
        return self.fs.get_file_info(what)
    def __getattr__(self, name):
        return getattr(self.fs, name)

real = open_warehouse(sys.argv[2])
fs = Counting(real.fs)
wh = Warehouse(uri=real.uri, fs=fs, base=real.base)
trange = TimeRange.parse(sys.argv[3], None)
started = time.perf_counter()
parts = partitions.plan(wh, "envoy_access", None, trange)
seconds = time.perf_counter() - started
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"flat": fs.flat, "recursive": fs.recursive, "seconds": seconds,
                  "partitions": len(parts), "files": sum(len(p.files) for p in parts),
                  "peak_kib": hwm}))
"""


def planning(
    where: str,
    services: int,
    hours: int,
    e2e: bool,
    latency_ms: float = 0.0,
    code_dir: str | None = None,
) -> int:
    """The ``--listing`` mode: build ``services`` x ``hours`` one-file partitions on a private
    SeaweedFS or in a temp dir, plan ``--since 1h/1d/2d`` over every service, print figures;
    again through :class:`_SlowProxy` with ``latency_ms``; with the ``athena`` package of
    ``code_dir`` (an older checkout, to compare) instead of this one."""
    import json

    server = proxy = None
    root = Path(tempfile.mkdtemp(prefix="logq-bench-listing-"))
    env = {**os.environ}
    try:
        if where == "s3":
            from tests.support.seaweedfs import AWS_OVERRIDES, start_seaweedfs

            server = start_seaweedfs()
            for name in AWS_OVERRIDES:  # this process writes the files, its children plan
                os.environ.pop(name, None)
            os.environ.update(server.env())
            env = {**os.environ}
            uri = f"s3://{server.create_bucket()}/wh"
        else:
            uri = str(root / "wh")
        t0 = time.perf_counter()
        _build_listing_warehouse(uri, root, services, hours)
        print(f"{where}: {services} services x {hours} h = {services * hours:,} one-file "
              f"partitions built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        windows = ["1h", "1d", "2d"] + (["30d"] if hours >= 720 else [])
        code = str(Path(code_dir).resolve()) if code_dir else str(Path(__file__).parents[1])
        setups = [("", env)]
        if server is not None and latency_ms > 0:
            proxy = _SlowProxy(server.endpoint, latency_ms / 1000)
            setups.append(
                (f"{latency_ms:g} ms per request", {**env, "AWS_ENDPOINT_URL": proxy.endpoint})
            )
        for label, child_env in setups:
            if label:
                print(f" through a relay adding {label}:")
            for since in windows:
                out = subprocess.run(
                    [sys.executable, "-c", _PLAN_CHILD, code, uri, since],
                    env=child_env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                got = json.loads(out.stdout)
                print(f"  plan --since {since:<4} (every service): {got['flat']:>7,} listings "
                      f"+ {got['recursive']:>5,} recursive  {got['seconds']:7.2f} s  "
                      f"{got['partitions']:>7,} partitions {got['files']:>7,} files  "
                      f"peak RSS {got['peak_kib'] // 1024} MiB")  # fmt: skip
        if e2e:
            cache = str(root / "cache")
            run = run_logq(
                ["errors", "--since", "1d", "-f", "json"],
                {**env, "LOGQ_WAREHOUSE": uri, "LOGQ_CACHE_DIR": cache},
            )
            failed = f"  (exit status {run.status}: {run.stderr.strip()[:200]})"
            print(
                f"  logq errors --since 1d (every service): {run.seconds:7.1f} s  "
                f"peak RSS {run.peak_mib} MiB{'' if run.status == 0 else failed}"
            )
    finally:
        if proxy is not None:
            proxy.close()
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _build_listing_warehouse(uri: str, root: Path, services: int, hours: int) -> None:
    """One 3-row Parquet file in each of the last ``hours`` hours of ``services`` services
    (hard links of one template locally, 16 concurrent PUTs on S3)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from athena.schema import DT_FORMAT

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    table = service_table("svc", 3, int(now.timestamp() * 1000), 1, np.random.default_rng(1))
    table = table.drop_columns(["service"]).cast(ENVOY_ACCESS.arrow_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    dts = [(now - timedelta(hours=h)).strftime(DT_FORMAT) for h in range(hours)]
    wh = open_warehouse(uri, create=True)
    rel = [f"envoy_access/service=svc{s:03d}/dt={dt}" for s in range(services) for dt in dts]
    if not wh.is_s3:
        for i, r in enumerate(rel):
            if i % hours == 0:  # a template per service: a file takes at most 65,000 links
                template = root / f"template-{i // hours}.parquet"
                template.write_bytes(data)
            folder = Path(wh.path(r))
            folder.mkdir(parents=True, exist_ok=True)
            os.link(template, folder / "c-0.parquet")
        return

    def put(r: str) -> None:
        with wh.fs.open_output_stream(wh.path(r, "c-0.parquet")) as f:
            f.write(data)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, rel))


class _SlowProxy:
    """A TCP relay on 127.0.0.1 that holds each chunk a client sends for ``delay`` seconds
    before passing it on: every S3 request then waits about one round trip, as on real S3
    (SeaweedFS on loopback answers in about a millisecond, which hides what concurrency buys).
    The Host header passes unchanged, so signed requests stay valid."""

    def __init__(self, upstream: str, delay: float) -> None:
        import socket
        import threading
        from urllib.parse import urlparse

        target = urlparse(upstream)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.delay = delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for src, dst, wait in ((client, server, self.delay), (server, client, 0.0)):
                threading.Thread(target=self._pipe, args=(src, dst, wait), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, wait: float) -> None:  # type: ignore[no-untyped-def]
        import contextlib
        import socket

        try:
            while data := src.recv(65536):
                if wait:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
