"""Many-services benchmark: ``--services`` services over ``--connections`` Forward connections
into one real ``logq-aggregator``, at a modest rate, for a few flush intervals.

Each connection owns its share of the services and, every second, sends one PackedForward
message per service it owns: ``--lines`` Envoy access lines and as many application lines (two
sources per service, so both tables get a partition per service), each message waiting for its
ack, as a shipper's quiet sources do. Prints the aggregator's idle and peak RSS (VmHWM), its
most open descriptors, its CPU seconds, the freshness of one line sent at the end (ack to
visible in the warehouse), the Parquet objects written (count, median and smallest size) and
each flush's objects and duration from its log. What to look at: peak RSS follows the
configured limits, not the number of services; a flush writes one object per partition and
segment, so its time grows with the services (docs/operations.md, "S3 requests and storage").

Usage: ``python bench/services.py [--services 1000] [--connections 150] [--lines 2]
[--seconds 40] [--flush-interval 5] [--s3] [--keep]``. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import freshness, make_lines, parquet_files, start_s3
from bench.procfs import cpu_seconds, status_kib
from shipper import wire
from tests.support.procs import free_port, port_open, wait_until


def service_names(n: int) -> list[str]:
    return [f"svc-{i:04d}" for i in range(n)]


def message(svc: str, envoy: list[str], lines: int, offsets: dict[str, int]) -> tuple[str, bytes]:
    """One PackedForward message of ``svc``: ``lines`` Envoy lines (from ``envoy``) and as many
    application lines, from two sources whose offsets go on from ``offsets``."""
    now = time.time_ns()
    entries = []
    for k in range(lines):
        for kind, text in (("envoy", random.choice(envoy)), ("app", f"INFO request {k} done")):
            source = f"src-{svc}-{kind}"
            offsets[source] = offsets.get(source, 0) + 300
            record = {
                wire.KEY_LOG: text,
                wire.KEY_STREAM: "stdout",
                wire.KEY_SERVICE: svc,
                wire.KEY_HOST: "ip-10-0-1-17",
                wire.KEY_CONTAINER_ID: (svc + kind).encode().hex().ljust(64, "0")[:64],
                wire.KEY_CONTAINER_NAME: f"{svc}-{kind}",
                wire.KEY_IMAGE: "envoyproxy/envoy:v1.31.2" if kind == "envoy" else "app:1",
                wire.KEY_SOURCE_ID: source,
                wire.KEY_OFFSET: offsets[source],
            }
            entries.append((now + k, record))
    chunk = wire.new_chunk_id()
    return chunk, wire.encode_packed_forward(f"logq.{svc}", entries, chunk=chunk)


def connection(
    port: int, services: list[str], lines: int, stop: threading.Event, sent: list[int]
) -> None:
    """Send a message per service every second, each acked before the next, until ``stop``.

    ``sent`` is this connection's own one-item counter: summed after the threads end, so no
    two threads ever add to one number.
    """
    envoy = [line for _, _, line in make_lines(200)]
    offsets: dict[str, int] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        unpacker = wire.new_unpacker()
        due = time.monotonic()
        while not stop.is_set():
            for svc in services:
                chunk, frame = message(svc, envoy, lines, offsets)
                sock.sendall(frame)
                while not any(wire.decode_ack(obj) == chunk for obj in unpacker):
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the aggregator closed the connection")
                    unpacker.feed(data)
                sent[0] += 2 * lines
            due += 1.0
            time.sleep(max(0.0, due - time.monotonic()))


def watch(pid: int, stop: threading.Event, peak: dict[str, int]) -> None:
    """Track the most descriptors the aggregator holds at once."""
    while not stop.is_set():
        try:
            peak["fds"] = max(peak["fds"], len(os.listdir(f"/proc/{pid}/fd")))
        except OSError:
            return
        time.sleep(0.25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=150)
    ap.add_argument("--lines", type=int, default=2, help="per service, table and second")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--flush-interval", type=float, default=5.0)
    ap.add_argument("--s3", action="store_true", help="start a local SeaweedFS and write to it")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="logq-services-"))
    server, warehouse = None, str(tmp / "wh")
    if args.s3:
        server, warehouse, _ = start_s3()
    try:
        return run(args, tmp, warehouse)
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, warehouse: str) -> int:
    port, metrics = free_port(), free_port()
    log = tmp / "aggregator.log"
    cmd = [
        *(sys.executable, "-m", "aggregator.launch"),
        *("--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}"),
        *("--warehouse", warehouse, "--buffer-dir", str(tmp / "buffer")),
        *("--flush-interval", str(args.flush_interval)),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: port_open("127.0.0.1", port), 60, "the aggregator's port", proc, log)
    idle = status_kib(proc.pid, "VmRSS")
    names = service_names(args.services)
    stop, peak = threading.Event(), {"fds": 0}
    sent = [[0] for _ in range(args.connections)]
    senders = [
        threading.Thread(
            target=connection,
            args=(port, names[c :: args.connections], args.lines, stop, sent[c]),
            daemon=True,
        )
        for c in range(args.connections)
    ]
    threading.Thread(target=watch, args=(proc.pid, stop, peak), daemon=True).start()
    for t in senders:
        t.start()
    time.sleep(args.seconds)
    fresh = freshness(port, warehouse)
    stop.set()
    for t in senders:
        t.join(60)
    hwm, cpu = status_kib(proc.pid, "VmHWM"), cpu_seconds(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)
    sizes = sorted(info.size for info in parquet_files(warehouse)[1])
    flushes = re.findall(
        r"flushed segment \d+: (\d+) records.*?(\d+) files, ([\d.]+)s", log.read_text()
    )
    print(
        json.dumps(
            {
                "services": args.services,
                "connections": args.connections,
                "lines sent": sum(n for (n,) in sent),
                "idle RSS MiB": round(idle / 1024),
                "peak RSS MiB": round(hwm / 1024),
                "most open descriptors": peak["fds"],
                "CPU s": round(cpu, 1),
                "freshness s": round(fresh, 1),
                "objects (ledger included)": len(sizes),
                "median object B": int(statistics.median(sizes)) if sizes else 0,
                "smallest object B": sizes[0] if sizes else 0,
                "flushes": [f"{r} records, {f} objects, {s} s" for r, f, s in flushes],
            },
            indent=1,
        )
    )
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
