"""Ingest benchmark: PackedForward frames of Envoy access lines -> logq-aggregator -> Parquet.

Starts a real ``logq-aggregator`` on 127.0.0.1 (a free port, temp buffer and warehouse), sends
pre-encoded PackedForward chunks of realistic Envoy lines over loopback (several chunks in flight
per connection, each waiting for its ack), then stops the aggregator with SIGTERM, which flushes
everything. Prints:

* lines/s to acknowledged (durable in the buffer) and to committed Parquet (SIGTERM included).
  The aggregator runs on one CPU (its threads and Arrow's share it) and the senders on the
  others, so the committed lines/s are the wall-clock rate of one core: "lines/s on one core"
  read literally. ``--no-pin`` lets it spread over every CPU (the rate of the whole machine;
  a CPU-second then buys less: GIL hand-offs and caches between cores);
* lines per CPU-second of the whole aggregator process (all its threads, from the first frame
  to its exit: the socket reads, fsyncs and final flush included), where ``--stages`` times
  the pipeline's stages alone; and that CPU split between the event loop (the main thread)
  and the other threads (buffer writes, flushes);
* the aggregator's peak RSS;
* a machine reference: the milliseconds of a fixed piece of work that runs no logq code, before
  and after each run (this VM's speed drifts by tens of percent between hours: a slow run
  beside a slow reference is the machine, not the code);
* Parquet bytes vs. the bytes the same lines take in Docker json-file logs (target <= 1/12),
  where the bytes of a row go, and the least zstd can store the random request ids in.

Usage: ``python bench/ingest.py [--lines N] [--runs N] [--chunk N] [--connections N]
[--warehouse URI] [--no-pin] [--unsized] [--gzip] [--tls] [--istio | --json
[--json-odd-every N]]`` (``--runs N``
measures N aggregators one after another and prints the median of each figure; a ``s3://``
warehouse uses the standard AWS settings, e.g. a local SeaweedFS; ``--istio`` sends lines in
Istio's proxy format, ``--json`` as Envoy's JSON access logs, ``--json-odd-every N`` with one
line in N holding a number the bulk JSON reader refuses; ``--unsized`` sends the chunks
without the ``size`` option, as Fluent Bit without ``Send_options true``, Fluentd and
fluent-logger do; ``--gzip`` sends them gzipped, CompressedPackedForward, as ``logq-shipper
--compress gzip`` and Fluent Bit's ``Compress gzip`` do; ``--tls`` serves Forward over TLS, a
throwaway CA's certificate, as shippers sending to an aggregator fleet over the network do).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.dedup import OFFSETS_NAME
from aggregator.flag_values import BUFFER_COMPRESSIONS, DEFAULT_BUFFER_COMPRESSION
from bench.procfs import cpu_seconds, status_kib, thread_cpu
from shipper import wire

SERVICES = ["recipe", "checkout", "search", "billing", "auth", "catalog", "cart", "profile"]
PATHS = [
    "/api/v1/recipes",
    "/api/v1/recipes/{id}",
    "/api/v1/search?q={q}&page={p}",
    "/api/v2/cart/{id}/items",
    "/healthz",
    "/api/v1/users/{id}/profile",
    "/static/app.{h}.js",
]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "python-requests/2.32.3",
    "Envoy/HC",
]
FLAGS = ["UF,URX", "UT", "UH", "UC", "DC", "NR"]


#: Istio's %RESPONSE_CODE_DETAILS% for the flags above.
DETAILS = {
    "UF,URX": "upstream_reset_before_response_started{connection_failure}",
    "UT": "response_timeout",
    "UH": "no_healthy_upstream",
    "UC": "upstream_reset_before_response_started{connection_termination}",
    "DC": "downstream_remote_disconnect",
    "NR": "route_not_found",
}


def istio_fields(rng: random.Random, i: int, svc: str, flags: str) -> tuple[str, str]:
    """What Istio's proxy format adds after the flags and at the end of Envoy's default one, as
    a sidecar prints it: mostly inbound requests, some outbound calls to other services."""
    details = DETAILS.get(flags, "via_upstream")
    pod = f"10.0.{i % 16}.{rng.randint(2, 30)}"
    port = rng.randint(32768, 60999)
    if rng.random() < 0.7:
        peer = f"10.1.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        sni = f"outbound_.8080_._.{svc}.prod.svc.cluster.local"
        tail = f"inbound|8080|| 127.0.0.6:{port} {pod}:8080 {peer}:{rng.randint(32768, 60999)}"
        tail += f" {sni} default"
    else:
        dst = rng.choice(SERVICES)
        vip = f"172.20.{SERVICES.index(dst)}.{SERVICES.index(dst) * 7 + 10}"
        cluster = f"outbound|8080||{dst}.prod.svc.cluster.local"
        tail = f"{cluster} {pod}:{port} {vip}:8080 {pod}:{rng.randint(32768, 60999)} - default"
    return f'{details} - "-"', tail


def make_lines(
    n: int, seed: int = 7, istio: bool = False, json_logs: bool = False, odd_every: int = 0
) -> list[tuple[int, str, str]]:
    """``(time_ns, service, line)`` for ``n`` Envoy access lines spread over ~20 minutes of the
    hour before this one (a closed hour: compaction may merge it); in Envoy's default format,
    with ``istio`` in Istio's proxy format (envoy_access keeps the fields the two share), or
    with ``json_logs`` as Envoy's JSON access logs (the same values under the keys of Envoy's
    docs, numbers typed, unset values null); with ``odd_every`` N, one JSON line in N (the
    middle one of each N) holds an odd number, in turn a ``bytes_sent`` past int64 (stored NULL,
    counted too large) and a ``response_code`` as a quoted fraction (``"200.0"``: 200), each of
    which the bulk JSON reader refuses beside typed numbers."""
    rng = random.Random(seed)
    base = int(time.time()) // 3600 * 3600 - 3600 + 1200
    out = []
    for i in range(n):
        t = base + i * 1200 / n
        svc = SERVICES[i % len(SERVICES)]
        path = (
            rng.choice(PATHS)
            .replace("{id}", str(rng.randint(1, 5000)))
            .replace("{q}", rng.choice(["pasta", "soup", "vegan+curry", "cake"]))
            .replace("{p}", str(rng.randint(1, 9)))
            .replace("{h}", "3f9a1c")
        )
        code, flags = 200, "-"
        r = rng.random()
        if r < 0.03:
            code, flags = rng.choice([502, 503, 504]), rng.choice(FLAGS)
        elif r < 0.08:
            code = rng.choice([404, 401, 429])
        dur = int(rng.expovariate(1 / 25)) + 1
        ust = "-" if flags != "-" else str(max(0, dur - rng.randint(0, 3)))
        when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        middle, tail = istio_fields(rng, i, svc, flags) if istio else ("", "")
        # Drawn in the order the text line prints them (the same lines as ever for a seed).
        method = rng.choice(["GET", "GET", "GET", "POST", "PUT"])
        received = rng.choice([0, 0, 0, rng.randint(10, 4000)])
        sent = rng.randint(100, 40000)
        xff = rng.choice(["-", "-", f"10.1.{rng.randint(0, 255)}.{rng.randint(1, 254)}"])
        agent = rng.choice(AGENTS)
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        upstream = f"10.0.{i % 16}.{rng.randint(2, 30)}:8080"
        if json_logs:
            values = {
                "start_time": when,
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "response_code": code,
                "response_flags": flags,
                "bytes_received": received,
                "bytes_sent": sent,
                "duration": dur,
                "upstream_service_time": None if ust == "-" else ust,
                "x_forwarded_for": None if xff == "-" else xff,
                "user_agent": agent,
                "request_id": request_id,
                "authority": f"{svc}.internal:8080",
                "upstream_host": upstream,
            }
            if odd_every and i % odd_every == odd_every // 2:
                if i // odd_every % 2:
                    values["response_code"] = f"{code}.0"
                else:
                    values["bytes_sent"] = 2**64
            line = json.dumps(values, separators=(",", ":"))
        else:
            line = (
                f'[{when}] "{method} {path} HTTP/1.1" '
                f"{code} {flags} {middle + ' ' if middle else ''}"
                f"{received} {sent} {dur} {ust} "
                f'"{xff}" "{agent}" "{request_id}" "{svc}.internal:8080" "{upstream}"'
                f"{' ' + tail if tail else ''}"
            )
        out.append((int(t * 1e9), svc, line))
    return out


def docker_json_bytes(lines: list[tuple[int, str, str]]) -> int:
    """Bytes of the same lines as dockerd's json-file driver writes them: one compact JSON object
    per line, ``<``, ``>`` and ``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``."""
    total = 0
    for t, _, line in lines:
        stamp = datetime.fromtimestamp(t / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
        doc = {"log": line + "\n", "stream": "stdout", "time": stamp}
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        total += len(text.encode()) + 1
    return total


def encode_chunks(
    lines: list[tuple[int, str, str]], per_chunk: int, sized: bool = True, gzipped: bool = False
) -> list[tuple[str, str, bytes]]:
    """``(service, chunk id, frame)``: PackedForward frames of ``per_chunk`` lines of one service
    each, with a ``chunk`` option and (unless ``sized`` is False) the ``size`` option, gzipped
    when ``gzipped`` (CompressedPackedForward). The services take turns, and each service's
    frames come in the order of its offsets."""
    by_service: dict[str, list] = {}
    for i, (t, svc, line) in enumerate(lines):
        rec = {
            wire.KEY_LOG: line,
            wire.KEY_STREAM: "stdout",
            wire.KEY_SERVICE: svc,
            wire.KEY_HOST: "ip-10-0-1-17",
            wire.KEY_CONTAINER_ID: (svc * 8)[:12] + "a" * 52,
            wire.KEY_CONTAINER_NAME: f"ecs-{svc}-12-envoy-d2f1",
            wire.KEY_IMAGE: "envoyproxy/envoy:v1.31.2",
            wire.KEY_SOURCE_ID: f"src-{svc}",
            wire.KEY_OFFSET: (i + 1) * 300,
        }
        by_service.setdefault(svc, []).append((t, rec))
    chunks = []
    for start in range(0, max(len(e) for e in by_service.values()), per_chunk):
        for svc, entries in by_service.items():
            part = entries[start : start + per_chunk]
            if not part:
                continue
            cid = wire.new_chunk_id()
            if sized:
                frame = wire.encode_packed_forward(f"logq.{svc}", part, cid, gzipped)
            elif gzipped:
                blob = gzip.compress(wire.pack_entries(part), compresslevel=1)
                options = {"chunk": cid, "compressed": "gzip"}
                frame = wire.pack([f"logq.{svc}", blob, options])
            else:
                frame = wire.pack([f"logq.{svc}", wire.pack_entries(part), {"chunk": cid}])
            chunks.append((svc, cid, frame))
    return chunks


def per_connection(chunks: list[tuple[str, str, bytes]], n: int) -> list[list[tuple[str, bytes]]]:
    """The chunks for each of ``n`` connections: all of a service's on one, in order, as a
    shipper sends a source. (Spread over connections, a service's later chunk could overtake an
    earlier one, whose lines the aggregator then drops as resent: their offsets are below what
    it has stored for that source.)"""
    services = list(dict.fromkeys(svc for svc, _, _ in chunks))
    home = {svc: i % n for i, svc in enumerate(services)}
    groups: list[list[tuple[str, bytes]]] = [[] for _ in range(n)]
    for svc, cid, frame in chunks:
        groups[home[svc]].append((cid, frame))
    return groups


def connect(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    """A connection to the aggregator on 127.0.0.1, over TLS with ``tls``."""
    sock = socket.create_connection(("127.0.0.1", port))
    return tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls is not None else sock


def send(
    port: int,
    chunks: list[tuple[str, bytes]],
    window: int,
    errors: list[str],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Send chunks with up to ``window`` unacknowledged, checking every ack."""
    try:
        with connect(port, tls) as sock:
            unpacker = wire.new_unpacker()
            pending: list[str] = []
            i = 0
            while i < len(chunks) or pending:
                while i < len(chunks) and len(pending) < window:
                    cid, frame = chunks[i]
                    sock.sendall(frame)
                    pending.append(cid)
                    i += 1
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("aggregator closed the connection")
                unpacker.feed(data)
                for obj in unpacker:
                    ack = wire.decode_ack(obj)
                    if ack != pending[0]:
                        raise RuntimeError(f"ack {ack!r} out of order, expected {pending[0]!r}")
                    pending.pop(0)
    except Exception as exc:
        errors.append(repr(exc))


def watch_hwm(
    proc: subprocess.Popen, peak: dict[str, int], threads: dict[tuple[int, str], float]
) -> None:
    """Track the aggregator's peak RSS (VmHWM, reset by exec, so the bench's own memory that a
    forked child briefly shares is not counted) and the CPU of each of its threads until it
    exits."""
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak["kib"] = max(peak["kib"], int(line.split()[1]))
        except (OSError, ValueError):
            pass
        threads.update(thread_cpu(proc.pid))
        time.sleep(0.05)


def cpu_by_thread(
    pid: int, start: dict[tuple[int, str], float], end: dict[tuple[int, str], float], total: float
) -> str:
    """Where the aggregator's CPU went from the first frame on: the event loop (the main
    thread: socket reads, decoding, framing, acks) and the other threads (asyncio's executor:
    buffer appends and fsyncs, flushes; the Parquet writers' pool). Python 3.11 names no OS
    thread, so they are told apart by thread id only; a thread's last 50 ms may be missed."""
    loop = sum(cpu - start.get(key, 0.0) for key, cpu in end.items() if key[0] == pid)
    others = [cpu - start.get(key, 0.0) for key, cpu in end.items() if key[0] != pid]
    return (
        f"event loop {loop:.2f} s, other threads {sum(others):.2f} s ({len(others)} threads), "
        f"unsampled {max(total - loop - sum(others), 0.0):.2f} s (threads' last 50 ms)"
    )


def parquet_files(
    warehouse: str, table: str | None = None
) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The warehouse's file system and its visible Parquet objects (of ``table``, else all)."""
    from athena.warehouse import list_entries, open_warehouse

    wh = open_warehouse(warehouse)
    root = wh.path(table) if table else wh.base
    infos = list_entries(wh.fs, pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return wh.fs, [
        i
        for i in infos
        if i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))
    ]


def parquet_stats(warehouse: str) -> tuple[int, int]:
    """(bytes, files) of the visible Parquet objects of a local or S3 warehouse."""
    _, files = parquet_files(warehouse)
    return sum(i.size or 0 for i in files), len(files)


def column_bytes(warehouse: str) -> tuple[int, dict[str, int]]:
    """(rows, compressed bytes per column) of the ``envoy_access`` files: where the size goes."""
    fs, files = parquet_files(warehouse, "envoy_access")
    rows, sizes = 0, {}
    for info in files:
        meta = pq.ParquetFile(info.path, filesystem=fs).metadata
        rows += meta.num_rows
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(rg).column(c)
                sizes[col.path_in_schema] = (
                    sizes.get(col.path_in_schema, 0) + col.total_compressed_size
                )
    return rows, sizes


def text_floor(warehouse: str, column: str) -> float:
    """Bytes a row that a string column of ``envoy_access`` cannot go under with zstd: the
    order-0 entropy of its characters times their count. zstd codes the literals it finds no
    match for (all of a random id) with Huffman codes, one code per byte and the same codes
    wherever the byte stands, so it cannot use what the position tells (a UUID's dashes, its
    version digit)."""
    import numpy as np

    from aggregator.string_bytes import offsets_and_bytes

    fs, files = parquet_files(warehouse, "envoy_access")
    counts = np.zeros(256, np.int64)
    rows = 0
    for info in files:
        values = pq.read_table(info.path, columns=[column], filesystem=fs)[column]
        rows += len(values)
        for chunk in values.chunks:
            offsets, data = offsets_and_bytes(chunk)
            counts += np.bincount(data[offsets[0] : offsets[-1]], minlength=256)
    total = counts.sum()
    if not rows or not total:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum() * total / 8 / rows)


def freshness(
    port: int, warehouse: str, tls: ssl.SSLContext | None = None, timeout: float = 120.0
) -> float:
    """Seconds from the ack of one line to the moment a reader can see it in the warehouse."""
    from athena.warehouse import list_entries, open_warehouse

    marker = f"freshness-probe-{uuid.uuid4()}"
    rec = {wire.KEY_LOG: marker, wire.KEY_STREAM: "stdout", wire.KEY_SERVICE: "probe"}
    with connect(port, tls) as sock:
        sock.sendall(wire.encode_packed_forward("logq.probe", [(time.time_ns(), rec)], "probe"))
        unpacker = wire.new_unpacker()
        while True:
            unpacker.feed(sock.recv(4096))
            if any(wire.decode_ack(o) == "probe" for o in unpacker):
                break
    acked = time.perf_counter()
    wh = open_warehouse(warehouse)
    root = wh.path("container_logs", "service=probe")
    while time.perf_counter() - acked < timeout:
        infos = list_entries(wh.fs, pafs.FileSelector(root, recursive=True, allow_not_found=True))
        for info in infos:
            if info.base_name.endswith(".parquet") and not info.base_name.startswith((".", "_")):
                table = pq.read_table(info.path, filesystem=wh.fs, columns=["message"])
                if marker in table["message"].to_pylist():
                    return time.perf_counter() - acked
        time.sleep(0.05)
    return float("nan")


def start_s3() -> tuple[object, str, dict[str, str]]:
    """A throw-away SeaweedFS (the test suite's helper) and a warehouse URI in a new bucket."""
    from tests.support.seaweedfs import start_seaweedfs

    server = start_seaweedfs()
    bucket = server.create_bucket()
    env = server.env()
    os.environ.update(env)
    return server, f"s3://{bucket}/wh", env


def stages(
    lines: int,
    chunk: int,
    compression: str = "none",
    sized: bool = True,
    runs: int = 3,
    istio: bool = False,
    json_logs: bool = False,
    odd_every: int = 0,
) -> None:
    """The aggregator's per-line cost on ONE core, stage by stage, in this process (no I/O
    waits; pinned to one CPU, so the writer's threads share it): what "lines/s on one core"
    means for the whole pipeline.

    The whole pipeline runs once to warm up (a long-running aggregator has: its first run in
    a process takes up to twice as long, faulting fresh memory in), then ``runs`` times. Per
    stage it prints the best run; then the sum of those bests (as earlier sessions reported it)
    and the median whole run: on a shared VM whose speed drifts, the median run is the figure
    to hold against a target."""
    from aggregator.batch import records_table, route
    from aggregator.decode import decode, to_ipc, tune_gc
    from aggregator.dedup import OffsetState
    from aggregator.flusher import _plain
    from aggregator.spill import Spill
    from aggregator.writer import object_name, write_objects
    from athena.warehouse import open_warehouse

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    tune_gc()
    made = make_lines(lines, istio=istio, json_logs=json_logs, odd_every=odd_every)
    chunks = encode_chunks(made, chunk, sized)
    unpacker = wire.new_unpacker()
    objs = []
    for _, _, frame in chunks:
        unpacker.feed(frame)
        objs += list(unpacker)
    tmp = tempfile.mkdtemp(prefix="logq-stages-")
    wh = open_warehouse(tmp, create=True)
    offsets = OffsetState(Path(tmp) / OFFSETS_NAME)
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}

    def timed(name: str, fn):
        """One run of a stage, by the wall clock and by the process's CPU time: on a shared
        machine another process's turns make the wall clock slower, not the CPU time."""
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.setdefault(name, []).append(time.perf_counter() - t)
        cpus.setdefault(name, []).append(time.process_time() - c)
        return out

    def pipeline(run: int) -> None:
        batches = timed("decode (msgspec -> Arrow)", lambda: [decode(o, 1 << 30)[0] for o in objs])
        payloads = timed(
            f"buffer frame (Arrow IPC, {compression})",
            lambda: [to_ipc(b, compression) for b in batches],
        )
        records = timed("read segment", lambda: records_table(payloads))
        timed(
            "dedup (source offsets)",
            lambda: offsets.keep_mask(_plain(records["source_id"]), _plain(records["offset"])),
        )
        routed = timed("route + Envoy parse", lambda: route(records))

        def spill() -> Spill:
            parked = Spill(Path(tmp) / f"spill-{run}")
            for name, table in routed.tables.items():
                parked.add(name, table)
            return parked

        parked = timed("spill by partition (Arrow IPC)", spill)
        timed(
            "Parquet write (zstd, local)",
            lambda: write_objects(wh, parked.objects(), lambda part: object_name("stage", 1, part)),
        )
        parked.close()

    references: list[float] = []
    t = time.perf_counter()
    pipeline(-1)  # the process's first run: its allocations fault fresh pages in, regexes compile
    cold = time.perf_counter() - t
    walls.clear()
    cpus.clear()
    for run in range(runs):
        references.append(machine_reference())
        pipeline(run)
    references.append(machine_reference())
    sizing = "with" if sized else "without"
    print(f"one core, {lines:,} lines, {sizing} the size option, {runs} runs (µs/line):")
    print(f"  {'stage (best run)':34s} {'wall':>6s} {'CPU':>6s}")
    for name in walls:
        wall, cpu = min(walls[name]) / lines * 1e6, min(cpus[name]) / lines * 1e6
        print(f"  {name:34s} {wall:6.2f} {cpu:6.2f}")
    best = sum(min(v) for v in walls.values())
    best_cpu = sum(min(v) for v in cpus.values())
    totals = sorted(sum(v[i] for v in walls.values()) for i in range(runs))
    totals_cpu = sorted(sum(v[i] for v in cpus.values()) for i in range(runs))
    median, median_cpu = totals[runs // 2], totals_cpu[runs // 2]
    print(
        f"  {'sum of the best runs':34s} {best / lines * 1e6:6.2f} {best_cpu / lines * 1e6:6.2f}"
        f"  -> {lines / best:,.0f} lines/s on one core"
    )
    print(
        f"  {'median whole run':34s} {median / lines * 1e6:6.2f} {median_cpu / lines * 1e6:6.2f}"
        f"  -> {lines / median:,.0f} lines/s on one core ({lines / median_cpu:,.0f} per CPU-second;"
        f" runs {', '.join(f'{lines / t:,.0f}' for t in totals)})"
    )
    print(f"  {'first (cold) run, not counted':34s} {cold / lines * 1e6:6.2f}")
    print(
        f"  machine reference (fixed work, no logq code): {statistics.median(references):.1f} ms"
        f" median, runs {', '.join(f'{r:.1f}' for r in references)}"
    )
    shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def _reference_text() -> bytes:
    """7 MB of the bench's lines (their times aside, the same every run)."""
    return "\n".join(line for _, _, line in make_lines(30_000, seed=3)).encode()


def machine_reference() -> float:
    """Milliseconds of a fixed piece of work that runs no logq code (zstd level 1, the Parquet
    writer's codec, over :func:`_reference_text`, and a pure-Python loop), timed between the
    stages' runs. This VM's speed drifts by a third between spells: when the stages are slow
    and the reference is slow by as much, the machine was slow, not the code."""
    text = _reference_text()
    t = time.perf_counter()
    pa.compress(text, codec="zstd", asbytes=True)
    total = 0
    for i in range(1_000_000):
        total += i & 7
    return (time.perf_counter() - t) * 1000


def reference_on(cpu: int | None) -> float:
    """:func:`machine_reference` timed on ``cpu``, the aggregator's when it is pinned (a slow
    spell of that CPU alone is then seen), then back on this thread's CPUs."""
    if cpu is None:
        return machine_reference()
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return machine_reference()
    finally:
        os.sched_setaffinity(0, mine)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=5000, help="lines per PackedForward chunk")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--window", type=int, default=4, help="chunks in flight per connection")
    ap.add_argument("--flush-interval", type=float, default=5.0)
    ap.add_argument("--warehouse", help="default: a temp dir (local disk)")
    ap.add_argument("--s3", action="store_true", help="start a local SeaweedFS and write to it")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--stages", action="store_true", help="only the one-core per-stage costs")
    ap.add_argument(
        "--runs",
        type=int,
        help="aggregators measured one after another, then the medians (default 1); with "
        "--stages: whole pipeline runs after one warm-up run (default 3)",
    )
    style = ap.add_mutually_exclusive_group()
    style.add_argument(
        "--istio", action="store_true", help="lines in Istio's proxy format (default: Envoy's)"
    )
    style.add_argument(
        "--json", action="store_true", help="lines as Envoy's JSON access logs (typed values)"
    )
    ap.add_argument(
        "--json-odd-every",
        type=int,
        default=0,
        metavar="N",
        help="with --json: one line in N holds an odd number (a bytes_sent past int64, a "
        'response_code "200.0", in turn), which the bulk JSON reader refuses beside typed '
        "numbers: its cost to the rest of the batch",
    )
    ap.add_argument(
        "--buffer-compression",
        default=DEFAULT_BUFFER_COMPRESSION,
        choices=BUFFER_COMPRESSIONS,
        help=f"the aggregator's buffer frames (default {DEFAULT_BUFFER_COMPRESSION}, as its own)",
    )
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the aggregator on one CPU and the senders on the others (its wall = one "
        "core; the default where there are two CPUs or more)",
    )
    ap.add_argument(
        "--unsized",
        action="store_true",
        help="frames without the size option (Fluent Bit without Send_options, Fluentd)",
    )
    ap.add_argument(
        "--gzip",
        action="store_true",
        help="gzipped frames (CompressedPackedForward, as --compress gzip); not with --stages",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="Forward over TLS (the aggregator's --tls-cert/--tls-key, a throwaway CA); "
        "not with --stages",
    )
    args = ap.parse_args()
    if args.json_odd_every and not args.json:
        ap.error("--json-odd-every is for --json lines")
    if args.stages and (args.gzip or args.tls):
        ap.error("--gzip and --tls are for the whole pipeline: not with --stages")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        print("one CPU: the aggregator shares it with the senders (not pinned)")
        args.pin = False
    if args.stages:
        sized, runs = not args.unsized, max(1, args.runs or 3)
        stages(
            args.lines,
            args.chunk,
            args.buffer_compression,
            sized,
            runs,
            args.istio,
            args.json,
            args.json_odd_every,
        )
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="logq-bench-"))
    args.tls_files, args.tls_client = None, None
    if args.tls:
        from tests.shipper.tlsgen import make_ca_and_server

        ca, cert, key = make_ca_and_server(tmp)
        args.tls_files = (cert, key)
        args.tls_client = ssl.create_default_context(cafile=str(ca))
    args.cpu = None  # the aggregator's one CPU, when it is pinned
    if args.pin:  # the last CPU for the aggregator; this process's threads (senders, SeaweedFS)
        # on the rest
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[:-1]))
        args.cpu = cpus[-1]
    s3_server = None
    env = dict(os.environ)
    warehouse = args.warehouse or str(tmp / "warehouse")
    if args.s3:
        s3_server, warehouse, s3_env = start_s3()
        env.update(s3_env)
    try:
        args.runs = args.runs or 1
        return run(args, tmp, warehouse, env)
    finally:
        if s3_server is not None:
            s3_server.stop()  # type: ignore[attr-defined]
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class RunFigures:
    """What one aggregator run measured (rates in lines per second)."""

    acked: float
    committed: float
    per_cpu_second: float
    peak_mib: float
    reference_ms: float
    """:func:`machine_reference` around the run (the mean of before and after)."""


def run(args: argparse.Namespace, tmp: Path, warehouse: str, env: dict[str, str]) -> int:
    """Generate the lines once, then measure ``args.runs`` aggregators (a fresh one each, with
    its own buffer and warehouse) and, with several, print the median of each figure: on a
    shared VM whose speed drifts by tens of percent, the median run is the figure to hold
    against a target. Compacts the last run's warehouse."""
    print(f"generating {args.lines:,} Envoy lines ...", flush=True)
    lines = make_lines(
        args.lines, istio=args.istio, json_logs=args.json, odd_every=args.json_odd_every
    )
    raw = docker_json_bytes(lines)
    chunks = encode_chunks(lines, args.chunk, not args.unsized, args.gzip)
    del lines
    runs = max(1, args.runs)
    figures: list[RunFigures] = []
    for number in range(runs):
        where, folder = warehouse, tmp
        if runs > 1:
            print(f"--- run {number + 1} of {runs}")
            where, folder = f"{warehouse.rstrip('/')}/run-{number + 1}", tmp / f"run-{number + 1}"
            folder.mkdir()
        measured = one_run(args, folder, where, env, chunks, raw)
        if measured is None:
            return 1
        figures.append(measured)
    if runs > 1:
        print_medians(figures, args.pin)
    return compacted(where, env, raw, args.lines)


def print_medians(figures: list[RunFigures], pinned: bool) -> None:
    """The median of each figure over the runs, and every run's value (in run order)."""

    def line(label: str, values: list[float], unit: str) -> None:
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{label:<26} {statistics.median(values):,.0f} {unit}  (runs: {each})")

    print(f"--- median of {len(figures)} runs")
    line("acknowledged (durable)", [f.acked for f in figures], "lines/s")
    committed = "lines/s on one core" if pinned else "lines/s on every CPU"
    line("committed to Parquet", [f.committed for f in figures], committed)
    line("aggregator CPU", [f.per_cpu_second for f in figures], "lines per CPU-second")
    line("aggregator peak RSS", [f.peak_mib for f in figures], "MiB")
    references = [f.reference_ms for f in figures]
    each = ", ".join(f"{r:.1f}" for r in references)
    median = statistics.median(references)
    print(f"{'machine reference':<26} {median:.1f} ms  (runs: {each}; higher is slower)")


def one_run(
    args: argparse.Namespace,
    tmp: Path,
    warehouse: str,
    env: dict[str, str],
    chunks: list[tuple[str, str, bytes]],
    raw: int,
) -> RunFigures | None:
    """Start an aggregator, send it every chunk, stop it, print what it took (None: failed)."""
    exe = Path(sys.executable).parent / "logq-aggregator"
    log = tmp / "aggregator.log"
    reference_before = reference_on(args.cpu)  # the machine's speed, before the aggregator runs
    cmd = [
        str(exe),
        "--listen",
        "127.0.0.1:0",
        "--warehouse",
        warehouse,
        "--buffer-dir",
        str(tmp / "buffer"),
        "--flush-interval",
        str(args.flush_interval),
        "--log-level",
        "warning",
        "--buffer-compression",
        args.buffer_compression,
    ]
    if args.tls_files is not None:
        cmd += ["--tls-cert", str(args.tls_files[0]), "--tls-key", str(args.tls_files[1])]
    pinned = None if args.cpu is None else functools.partial(os.sched_setaffinity, 0, {args.cpu})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pinned
        )
    port = 0
    deadline = time.monotonic() + 30
    while not port:
        m = re.search(r"listening on \S+:(\d+)", log.read_text())
        if m:
            port = int(m.group(1))
        elif proc.poll() is not None or time.monotonic() > deadline:
            print(log.read_text(), file=sys.stderr)
            proc.kill()
            return None
        time.sleep(0.05)
    peak = {"kib": 0}
    by_thread: dict[tuple[int, str], float] = {}
    watcher = threading.Thread(target=watch_hwm, args=(proc, peak, by_thread), daemon=True)
    watcher.start()
    fresh = freshness(port, warehouse, args.tls_client)

    groups = per_connection(chunks, args.connections)
    errors: list[str] = []
    cpu0 = cpu_seconds(proc.pid)
    by_thread0 = thread_cpu(proc.pid)
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=send, args=(port, g, args.window, errors, args.tls_client))
        for g in groups
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t_ack = time.perf_counter() - t0
    hwm_acked = status_kib(proc.pid, "VmHWM")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the aggregator's, once reaped
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=600)
    t_done = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime - cpu0
    watcher.join(timeout=5)
    if errors or rc != 0:
        print(f"FAILED: rc={rc} errors={errors}\n{log.read_text()[-3000:]}", file=sys.stderr)
        return None
    reference = (reference_before + reference_on(args.cpu)) / 2
    pq_bytes, n_files = parquet_stats(warehouse)
    n = args.lines
    where = "S3 (SeaweedFS)" if warehouse.startswith("s3://") else "local disk"
    print(f"warehouse                  {where}")
    sizing = "without" if args.unsized else "with"
    extras = (", gzip" if args.gzip else "") + (", TLS" if args.tls else "")
    print(f"lines                      {n:,} ({sizing} size{extras})")
    print(f"acknowledged (durable)     {n / t_ack:,.0f} lines/s  ({t_ack:.2f} s)")
    on_one = ", the aggregator on one CPU: the rate of one core" if args.pin else ", every CPU"
    where_timed = ", on the aggregator's CPU" if args.pin else ""
    print(
        f"committed to Parquet       {n / t_done:,.0f} lines/s  ({t_done:.2f} s, SIGTERM incl."
        f"{on_one})"
    )
    print(
        f"aggregator CPU             {n / cpu:,.0f} lines per CPU-second  ({cpu:.2f} s of its"
        " threads from the first frame to its exit)"
    )
    print(f"  by thread                {cpu_by_thread(proc.pid, by_thread0, by_thread, cpu)}")
    print(
        f"machine reference          {reference:.1f} ms (fixed work, no logq code, before and "
        f"after the run{where_timed}: the VM's speed; higher is slower)"
    )
    print(
        f"aggregator peak RSS        {peak['kib'] / 1024:,.0f} MiB  "
        f"({hwm_acked / 1024:,.0f} MiB until the last ack; the rest is the final flush)"
    )
    print(f"Docker json-file bytes     {raw:,}")
    print(f"Parquet bytes              {pq_bytes:,} in {n_files} files")
    print(f"ratio                      1/{raw / max(pq_bytes, 1):.1f}  (target <= 1/12)")
    rows, sizes = column_bytes(warehouse)
    if rows != n:  # every line is an access line of a built-in format
        print(f"FAILED: {rows:,} envoy_access rows for {n:,} lines sent", file=sys.stderr)
        return None
    if rows:
        top = sorted(sizes.items(), key=lambda kv: -kv[1])
        print(
            f"envoy_access bytes/row     {sum(sizes.values()) / rows:.1f}: "
            + ", ".join(f"{name} {size / rows:.1f}" for name, size in top[:8])
        )
        print(
            f"                           1/12 leaves {raw / 12 / rows:.1f} B/row; zstd's floor for "
            f"request_id text: {text_floor(warehouse, 'request_id'):.1f} (its characters' entropy)"
        )
    print(f"freshness                  {fresh:.2f} s from ack to readable ")
    print(f"                           (flush interval {args.flush_interval:g} s; target <= +2 s)")
    return RunFigures(n / t_ack, n / t_done, n / cpu, peak["kib"] / 1024, reference)


def compacted(warehouse: str, env: dict[str, str], raw: int, n: int) -> int:
    """Compact the warehouse as ``logq-aggregator compact`` does once the hour is closed, and
    print the ratio of what is then stored for good. A flush writes one small file per service
    and hour, whose pages compress less; compaction merges them."""
    exe = Path(sys.executable).parent / "logq-aggregator"
    cmd = [str(exe), "compact", "--warehouse", warehouse, "--all", "--grace-minutes", "0"]
    done = subprocess.run([*cmd, "--force"], env=env, capture_output=True, text=True)
    rows, sizes = column_bytes(warehouse)
    if done.returncode != 0 or rows != n:
        print(
            f"FAILED: compact rc={done.returncode}, {rows:,} rows\n{done.stderr[-3000:]}",
            file=sys.stderr,
        )
        return 1
    pq_bytes, n_files = parquet_stats(warehouse)
    print(f"compacted                  {pq_bytes:,} bytes in {n_files} files")
    print(f"ratio, compacted           1/{raw / max(pq_bytes, 1):.1f}  (target <= 1/12)")
    print(f"envoy_access bytes/row     {sum(sizes.values()) / rows:.1f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
