"""Compaction benchmark: how fast closed partitions of small flush files are merged, and what an
idle pass (nothing left to merge) costs, on a local disk and on a private SeaweedFS (S3).

The sizing in docs/operations.md rests on two figures this script measures:

* **merge**: ``--partitions`` closed partition-hours of ``--files`` small files of ``--rows``
  rows each (1,080 x 50 rows is the documented worst case per partition-hour at
  ``--flush-interval 10`` with 3 aggregators; the files here are ~5 KiB of random ids, the
  audit's were ~7 KB), merged by one ``compact_warehouse`` pass: wall time of the pass, input
  files merged per second, the CPU seconds of the pass (all threads; wall times on a shared
  machine vary more) and the process's peak RSS (VmHWM, the set-up included); the rows are
  then counted back (every row exactly once, or the script fails);
* **idle**: ``--idle-services`` services x ``--idle-hours`` hours x 2 tables of partitions
  already compacted (one file each): wall time of a pass that only lists them (one LIST per
  service folder for its hour folders, then one recursive listing of a young service's
  folder, or one LIST per hour in the window for one with a longer history); with
  ``--idle-history N``, each service also has N older hours, past the pass's lookback, which
  a pass must not list (N uncompacted files each: ``--idle-history-files``).

On SeaweedFS each pass also prints the S3 requests it sent, by kind, as the server counted them
(its metrics; HEAD counts as GET): exact, where the wall times vary with the machine's load.

**one merge of many inputs** (``--overlapping N`` and/or ``--sequential N``): a partition-hour of
N Envoy files of ``--merge-rows`` rows each, sorted by time, merged by ``compact_partition`` in a
fresh child process with logq-aggregator's allocator settings (so its peak RSS, ``VmHWM``, is
the merge's and not the set-up's; its RSS after the imports is printed beside it).
``--overlapping``: every file spans the whole hour (three aggregators' flush files across late
data, many shippers' backfill: every input is open at once); ``--sequential``: file k holds the
k-th slice of the hour (one aggregator's flush files: read one after another); ``--late N``:
``--late-sequential`` (360) such slices and then N files over the whole hour, flushed after
them (a mostly sequential hour with late data: only the late ones overlap). The output is
checked: every row once, each merged file sorted by time. On the local disk unless
``--backend s3`` (a private SeaweedFS, the S3 requests of the merge printed) or ``both``.

``--impl PATH`` measures another single-file ``compaction.py`` (a revision from before the
``aggregator/compaction/`` package, e.g. ``git show 97a917d:aggregator/compaction.py >
/tmp/old.py``) for before/after figures; for a later revision, run this script in a worktree
of it.

Usage: ``python bench/compact.py [--backend local|s3|both] [--partitions N] [--files N]
[--rows N] [--idle-services N] [--idle-hours N] [--idle-history N] [--idle-history-files N]
[--impl PATH]``; ``python bench/compact.py --overlapping 1000 [--sequential 360] [--late 100]
[--merge-rows N] [--backend local|s3|both]``
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS, TABLES, partition_path
from athena.warehouse import Warehouse, open_warehouse

#: Uploads while building the warehouse (setup only, not measured).
SETUP_THREADS = 16
NOW = datetime.now(UTC)
#: A closed hour well inside the default lookback.
HOUR = (NOW - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)


def load_impl(path: str | None) -> ModuleType:
    """The compaction module to measure (its ``compact_warehouse``): the work tree's, or the
    file at ``path``."""
    if path is None:
        import aggregator.compaction.passes

        return aggregator.compaction.passes
    spec = importlib.util.spec_from_file_location("bench_compaction_impl", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def flush_file(part: int, seq: int, rows: int) -> bytes:
    """One small flush file of ``rows`` container_logs rows (unique messages), as the writer
    encodes it."""
    base = int(HOUR.timestamp() * 1000)
    rnd = random.Random(part * 1_000_003 + seq)  # ids as random as real ones: ~7 KB a file
    table = pa.table(
        {
            "timestamp": pa.array(
                [base + ((k * 37 + seq * 11) % 3600) * 1000 for k in range(rows)],
                pa.timestamp("ms", tz="UTC"),
            ),
            "host": [f"host-{seq % 3}"] * rows,
            "container_id": [f"{seq % 7:064x}"] * rows,
            "container_name": [f"svc-{part}"] * rows,
            "stream": ["stdout"] * rows,
            "message": [
                f"p{part}-f{seq}-r{k} GET /api/v1/items/{rnd.randrange(10**6)} 200 "
                f"req={rnd.getrandbits(128):032x} trace={rnd.getrandbits(64):016x} "
                f"user={rnd.getrandbits(48):012x} span={rnd.getrandbits(128):032x} "
                f"session={rnd.getrandbits(128):032x} took {rnd.randrange(2000)} ms"
                for k in range(rows)
            ],
        },
        schema=CONTAINER_LOGS.arrow_schema(),
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, **write_options(table))
    return sink.getvalue()


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def put(wh: Warehouse, path: str, data: bytes) -> None:
    if isinstance(wh.fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return
    with wh.fs.open_output_stream(path) as out:
        out.write(data)


def upload(wh: Warehouse, items: list[tuple[str, Callable[[], bytes]]]) -> None:
    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        for f in [pool.submit(lambda p=p, d=d: put(wh, p, d())) for p, d in items]:
            f.result()


def count_rows(wh: Warehouse, folder: str) -> tuple[int, int]:
    """(rows, distinct messages) of the visible files in ``folder``."""
    infos = wh.fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    messages: list[str] = []
    for info in infos:
        if info.base_name.endswith(".parquet") and not info.base_name.startswith((".", "_")):
            messages += pq.read_table(info.path, filesystem=wh.fs)["message"].to_pylist()
    return len(messages), len(set(messages))


#: The S3 requests the server has answered so far for a bucket, by kind (SeaweedFS only).
Requests = Callable[[str], Counter[str]]


def request_mix(requests: Requests | None, wh: Warehouse, before: Counter[str]) -> str:
    """`` (requests: 12 GET, 3 LIST, ...)``: what the server answered since ``before``."""
    if requests is None:
        return ""
    bucket = wh.base.split("/", 1)[0]
    # The server counts a request just after answering it: let the last ones land.
    time.sleep(0.5)
    sent = requests(bucket) - before
    return " (requests: " + ", ".join(f"{n} {kind}" for kind, n in sent.most_common()) + ")"


def requests_now(requests: Requests | None, wh: Warehouse) -> Counter[str]:
    return requests(wh.base.split("/", 1)[0]) if requests is not None else Counter()


def bench_merge(
    impl: ModuleType,
    uri: str,
    partitions: int,
    files: int,
    rows: int,
    label: str,
    requests: Requests | None = None,
) -> None:
    wh = open_warehouse(uri, create=True)
    items: list[tuple[str, Callable[[], bytes]]] = []
    folders = []
    for part in range(partitions):
        folder = wh.path(
            partition_path("container_logs", f"svc-{part}", HOUR.strftime("%Y-%m-%d-%H"))
        )
        folders.append(folder)
        for seq in range(files):
            name = f"n{seq % 3}-{seq:016d}-0000.parquet"
            items.append((f"{folder}/{name}", lambda p=part, s=seq: flush_file(p, s, rows)))
    started = time.monotonic()
    upload(wh, items)
    size = sum(len(flush_file(0, s, rows)) for s in range(3)) / 3
    print(
        f"[{label}] built {partitions} partitions x {files} files of {rows} rows "
        f"(~{size / 1024:.1f} KiB each) in {time.monotonic() - started:.1f}s"
    )
    before = requests_now(requests, wh)
    started, cpu = time.monotonic(), time.process_time()
    merged = impl.compact_warehouse(wh, now=NOW + timedelta(days=1), lookback=None)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    print(
        f"[{label}] merge pass: {merged} files merged in {wall:.2f}s: "
        f"{merged / wall:.0f} files/s, {wall / partitions:.2f}s per partition; "
        f"{cpu:.2f} CPU s ({cpu / max(1, merged) * 1000:.2f} ms a file); "
        f"peak RSS {peak_rss_mib():.0f} MiB{request_mix(requests, wh, before)}"
    )
    for folder in folders:
        got, distinct = count_rows(wh, folder)
        if got != files * rows or distinct != got:
            raise SystemExit(f"{folder}: {got} rows, {distinct} distinct; want {files * rows}")
    print(f"[{label}] rows checked: {partitions * files * rows} rows, each exactly once")


def bench_idle(
    impl: ModuleType,
    uri: str,
    services: int,
    hours: int,
    label: str,
    history: int = 0,
    history_files: int = 1,
    requests: Requests | None = None,
) -> None:
    wh = open_warehouse(uri, create=True)
    data = flush_file(0, 0, 5)
    items: list[tuple[str, Callable[[], bytes]]] = []
    top = NOW.replace(minute=0, second=0, microsecond=0)
    for table in TABLES:
        for svc in range(services):
            for h in range(1, hours + 1):
                dt = (top - timedelta(hours=h)).strftime("%Y-%m-%d-%H")
                path = wh.path(partition_path(table, f"idle-{svc}", dt), "c-merged.parquet")
                items.append((path, lambda: data))
    partitions = len(items)
    for table in TABLES:  # older hours, past the lookback: uncompacted, never to be listed
        for svc in range(services):
            for h in range(hours + 3, hours + 3 + history):
                folder = partition_path(
                    table, f"idle-{svc}", (top - timedelta(hours=h)).strftime("%Y-%m-%d-%H")
                )
                for seq in range(history_files):
                    items.append((wh.path(folder, f"n0-{seq:016d}-0000.parquet"), lambda: data))
    started = time.monotonic()
    upload(wh, items)
    print(
        f"[{label}] built {services} services x {hours} h x {len(TABLES)} tables "
        f"({partitions} compacted partitions; {services} x {history} h x {history_files} "
        f"files of history past the lookback) in {time.monotonic() - started:.1f}s"
    )
    for run in (1, 2):
        before = requests_now(requests, wh)
        started = time.monotonic()
        merged = impl.compact_warehouse(wh, now=NOW, lookback=timedelta(hours=hours + 1))
        wall = time.monotonic() - started
        print(
            f"[{label}] idle pass {run}: {merged} merged, {partitions} partitions in "
            f"{wall:.2f}s ({partitions / wall:.0f} partitions/s); peak RSS (set-up included) "
            f"{peak_rss_mib():.0f} MiB{request_mix(requests, wh, before)}"
        )


def envoy_file(seq: int, rows: int, start_ms: int, span_ms: int) -> pa.Table:
    """``rows`` Envoy access rows of one input, sorted by time, within ``span_ms`` from
    ``start_ms`` (ids and paths as random as real ones)."""
    rnd = random.Random(seq)
    times = sorted(start_ms + rnd.randrange(span_ms) for _ in range(rows))
    code = [503 if rnd.random() < 0.03 else 200 for _ in range(rows)]
    paths = ["/api/v1/recipes", "/api/v1/recipes/{}", "/api/v1/users/{}/favorites", "/healthz"]
    columns = {
        "timestamp": pa.array(times, pa.timestamp("ms", tz="UTC")),
        "host": [f"ip-10-0-{seq % 3}-7"] * rows,
        "container_id": [f"{seq % 7:064x}"] * rows,
        "container_name": ["envoy"] * rows,
        "method": [rnd.choice(("GET", "GET", "GET", "POST")) for _ in range(rows)],
        "path": [rnd.choice(paths).format(rnd.randrange(1, 99999)) for _ in range(rows)],
        "protocol": ["HTTP/1.1"] * rows,
        "response_code": pa.array(code, pa.int32()),
        "response_flags": ["UF,URX" if c == 503 else "-" for c in code],
        "bytes_received": pa.array([0] * rows, pa.int64()),
        "bytes_sent": pa.array([rnd.randrange(100, 9000) for _ in range(rows)], pa.int64()),
        "duration_ms": pa.array([rnd.randrange(1, 400) for _ in range(rows)], pa.int32()),
        "upstream_service_time_ms": pa.array(
            [rnd.randrange(1, 390) for _ in range(rows)], pa.int32()
        ),
        "x_forwarded_for": [f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}" for _ in range(rows)],
        "user_agent": ["okhttp/4.9.3"] * rows,
        "request_id": [f"{rnd.getrandbits(128):032x}" for _ in range(rows)],
        "authority": ["recipe.internal"] * rows,
        "upstream_host": ["10.0.1.5:8080"] * rows,
    }
    return pa.table(columns, schema=ENVOY_ACCESS.arrow_schema())


def one_merge_files(kind: str, files: int, late: int) -> list[tuple[int, int, int]]:
    """(seq, start ms, span ms) of the inputs of a one-merge case: ``overlapping``, each over
    the hour; ``sequential``, file k the k-th slice of it; ``late``, ``files`` sequential ones
    and then ``late`` more over the whole hour, flushed after them (their names sort after
    those of their node: late data, or a backfill, flushed by the same aggregators)."""
    start, hour = int(HOUR.timestamp() * 1000), 3_600_000
    if kind == "overlapping":
        return [(seq, start, hour) for seq in range(files)]
    slices = [(seq, start + seq * hour // files, hour // files) for seq in range(files)]
    return slices + [
        (seq, start, hour) for seq in range(files, files + late if kind == "late" else files)
    ]


def bench_one_merge(
    root: Path | None,
    files: int,
    rows: int,
    kind: str,
    late: int = 0,
    s3: object | None = None,
) -> None:
    """Build one partition-hour of Envoy inputs (:func:`one_merge_files`) and merge it in a
    child process, on the local disk under ``root`` or on the SeaweedFS ``s3``."""
    label = f"{kind}, {'s3' if s3 is not None else 'local'}"
    if s3 is not None:
        wh = open_warehouse(f"s3://{s3.create_bucket()}/wh", create=True)  # type: ignore[attr-defined]
    else:
        assert root is not None
        wh = open_warehouse(str(root / kind), create=True)
    folder = wh.path(partition_path("envoy_access", "recipe", HOUR.strftime("%Y-%m-%d-%H")))
    started = time.monotonic()
    items: list[tuple[str, Callable[[], bytes]]] = []
    for seq, begin, span in one_merge_files(kind, files, late):
        table = envoy_file(seq, rows, begin, span)
        sink = io.BytesIO()
        pq.write_table(table, sink, **write_options(table))
        data = sink.getvalue()
        items.append((f"{folder}/n{seq % 3}-{seq:016d}-0000.parquet", lambda d=data: d))
    upload(wh, items)
    size = sum(len(d()) for _, d in items)
    total = len(items)
    print(
        f"[{label}] built {total} files of {rows} Envoy rows ({size / total / 1024:.0f} KiB "
        f"each, {size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f}s"
    )
    requests = s3.requests if s3 is not None else None  # type: ignore[attr-defined]
    before = requests_now(requests, wh)
    child = [sys.executable, __file__, "--merge-folder", folder, "--merge-warehouse", wh.uri]
    # The allocator settings of logq-aggregator (aggregator/memory.py), as its environment.
    env = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2", **os.environ}
    out = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    mix = request_mix(requests, wh, before)
    infos = wh.fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    outputs = sorted(i.path for i in infos if i.base_name.startswith("c-"))
    rows_out = 0
    for output in outputs:  # each merged file sorted by time, every row once in all
        ms = pq.read_table(output, columns=["timestamp"], filesystem=wh.fs)["timestamp"]
        ms = ms.cast(pa.int64())
        rows_out += len(ms)
        if bool((ms.to_numpy()[1:] < ms.to_numpy()[:-1]).any()):
            raise SystemExit(f"{output}: not sorted by time")
    if rows_out != total * rows:
        raise SystemExit(f"{folder}: {rows_out} rows, want {total * rows}")
    print(
        f"[{label}] merge of {got['merged']} files into {len(outputs)} in {got['seconds']:.2f}s; "
        f"peak RSS {got['peak_kib'] / 1024:.0f} MiB ({got['base_kib'] / 1024:.0f} MiB after "
        f"the imports); rows checked: {rows_out}, sorted{mix}"
    )


def merge_folder(uri: str, folder: str) -> None:
    """The child of :func:`bench_one_merge`: merge ``folder``, print figures as JSON."""
    from aggregator.compaction.partition import compact_partition
    from aggregator.compaction.passes import DEFAULT_TARGET_BYTES

    base = int(peak_rss_mib() * 1024)
    wh = open_warehouse(uri)
    started = time.monotonic()
    merged = compact_partition(wh, ENVOY_ACCESS, folder, DEFAULT_TARGET_BYTES)
    seconds = time.monotonic() - started
    figures = {"merged": merged, "seconds": seconds, "peak_kib": int(peak_rss_mib() * 1024)}
    print(json.dumps({**figures, "base_kib": base}))


def one_merges(args: argparse.Namespace) -> None:
    """The one-merge cases asked for (``--overlapping``, ``--sequential``, ``--late``), on the
    backends asked for (``--backend``: the local disk unless given)."""
    cases = [
        (n, kind, late)
        for n, kind, late in (
            (args.overlapping, "overlapping", 0),
            (args.sequential, "sequential", 0),
            (args.late_sequential if args.late else 0, "late", args.late),
        )
        if n
    ]
    backends = ["local", "s3"] if args.backend == "both" else [args.backend or "local"]
    for backend in backends:
        if backend == "local":
            root = Path(tempfile.mkdtemp(prefix="logq-bench-merge-"))
            try:
                for n, kind, late in cases:
                    bench_one_merge(root, n, args.merge_rows, kind, late)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            continue
        from tests.support.seaweedfs import AWS_OVERRIDES, start_seaweedfs

        server = start_seaweedfs()
        try:
            for name in AWS_OVERRIDES:
                os.environ.pop(name, None)
            os.environ.update(server.env())
            for n, kind, late in cases:
                bench_one_merge(None, n, args.merge_rows, kind, late, server)
        finally:
            server.stop()


def run_backend(args: argparse.Namespace, impl: ModuleType, backend: str) -> None:
    if backend == "local":
        root = Path(tempfile.mkdtemp(prefix="logq-bench-compact-"))
        try:
            if args.files:
                bench_merge(
                    impl, str(root / "merge"), args.partitions, args.files, args.rows, "local"
                )
            if args.idle_services:
                bench_idle(
                    impl,
                    str(root / "idle"),
                    args.idle_services,
                    args.idle_hours,
                    "local",
                    args.idle_history,
                    args.idle_history_files,
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    from tests.support.seaweedfs import AWS_OVERRIDES, start_seaweedfs

    server = start_seaweedfs()
    try:
        for name in AWS_OVERRIDES:
            os.environ.pop(name, None)
        os.environ.update(server.env())
        if args.files:
            uri = f"s3://{server.create_bucket()}/wh"
            bench_merge(impl, uri, args.partitions, args.files, args.rows, "s3", server.requests)
        if args.idle_services:
            uri = f"s3://{server.create_bucket()}/wh"
            bench_idle(
                impl,
                uri,
                args.idle_services,
                args.idle_hours,
                "s3",
                args.idle_history,
                args.idle_history_files,
                server.requests,
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=["local", "s3", "both"],
        help="default: both for a pass, local for one merge (--overlapping ...)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--files", type=int, default=1080, help="per partition (0: no merge)")
    parser.add_argument("--rows", type=int, default=50, help="per file")
    parser.add_argument("--idle-services", type=int, default=200, help="0: no idle pass")
    parser.add_argument("--idle-hours", type=int, default=48)
    parser.add_argument(
        "--idle-history", type=int, default=0, help="older hours per service, past the lookback"
    )
    parser.add_argument("--idle-history-files", type=int, default=1, help="per older hour")
    parser.add_argument(
        "--impl", help="a single-file compaction.py to measure instead of the work tree's"
    )
    parser.add_argument(
        "--overlapping", type=int, default=0, help="one merge of N inputs spanning the hour"
    )
    parser.add_argument(
        "--sequential", type=int, default=0, help="one merge of N inputs, each a slice of the hour"
    )
    parser.add_argument(
        "--late",
        type=int,
        default=0,
        help="one merge of --late-sequential sequential inputs and N more spanning the hour",
    )
    parser.add_argument("--late-sequential", type=int, default=360)
    parser.add_argument("--merge-rows", type=int, default=2000, help="rows per input of those")
    parser.add_argument("--merge-folder", help=argparse.SUPPRESS)
    parser.add_argument("--merge-warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    if args.merge_folder:
        merge_folder(args.merge_warehouse, args.merge_folder)
        return
    if args.overlapping or args.sequential or args.late:
        one_merges(args)
        return

    logging.basicConfig(level=logging.WARNING)
    impl = load_impl(args.impl)
    print(f"compaction: {impl.__file__}; {os.cpu_count()} CPUs")
    backend_arg = args.backend or "both"
    for backend in ("local", "s3") if backend_arg == "both" else (backend_arg,):
        run_backend(args, impl, backend)


if __name__ == "__main__":
    main()
