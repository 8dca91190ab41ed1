"""Shipper throughput: a 1,000,000-line Docker json-file host shipped to an acking sink.

    .venv/bin/python bench/ship.py [--lines N] [--containers C] [--keep DIR] [--batch-bytes N]

Writes a host of C containers (Envoy access lines of ~250 bytes, Docker json-file layout with
config.v2.json), starts a Forward sink in its own process (acks every chunk, discards the data),
runs ``logq-shipper --once`` in another process and prints lines/s, MB/s, CPU seconds and peak
RSS of the shipper process. For comparison it prints, in the same run, the ceiling of plain
Python on the same files: reading them in 1 MiB blocks and splitting lines; then also decoding
them (msgspec into a typed struct, as the shipper's fast path does, and json.loads).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SINK = r"""
import asyncio, sys, msgpack
async def handle(reader, writer):
    up = msgpack.Unpacker(raw=False, max_buffer_size=256 << 20)
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        up.feed(data)
        for msg in up:
            opts = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
            if "chunk" in opts:
                writer.write(msgpack.packb({"ack": opts["chunk"]}))
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=128)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

METHODS = ["GET"] * 8 + ["POST", "PUT"]
PATHS = ["/api/v1/recipes", "/api/v1/recipes/{id}", "/api/v1/users/{id}/favorites", "/healthz"]


def envoy_line(rng: random.Random, i: int) -> str:
    path = rng.choice(PATHS).replace("{id}", str(rng.randrange(1, 99999)))
    code = 503 if rng.random() < 0.03 else 200
    flags = "UF,URX" if code == 503 else "-"
    return (
        f"[2026-11-28T12:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z] "
        f'"{rng.choice(METHODS)} {path} HTTP/1.1" {code} {flags} 0 {rng.randrange(100, 9000)} '
        f'{rng.randrange(1, 400)} {rng.randrange(1, 390)} "10.0.{rng.randrange(256)}.'
        f'{rng.randrange(256)}" "okhttp/4.9.3" "{rng.getrandbits(128):032x}" '
        f'"recipe.internal" "10.0.1.5:8080"'
    )


def generate(root: Path, lines: int, containers: int) -> int:
    """Write the host; returns the total bytes of log files."""
    rng = random.Random(42)
    total = 0
    per = lines // containers
    for c in range(containers):
        cid = f"{c:02d}{rng.getrandbits(248):062x}"
        d = root / cid
        d.mkdir(parents=True)
        config = {
            "ID": cid,
            "Name": f"/ecs-svc{c}-envoy",
            "Config": {
                "Image": "envoyproxy/envoy:v1.31",
                "Labels": {"com.amazonaws.ecs.task-definition-family": f"svc{c}"},
            },
        }
        (d / "config.v2.json").write_text(json.dumps(config))
        n = per + (lines - per * containers if c == containers - 1 else 0)
        with open(d / f"{cid}-json.log", "wb", buffering=1 << 20) as f:
            for i in range(n):
                sec, ms = divmod(i, 1000)
                doc = {
                    "log": envoy_line(rng, i) + "\n",
                    "stream": "stdout",
                    "time": f"2026-11-28T12:{sec // 60 % 60:02d}:{sec % 60:02d}.{ms:03d}000123Z",
                }
                total += f.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    return total


def ceiling(root: Path, decode: str | None) -> tuple[int, float]:
    """Lines/s of reading + splitting (+ decoding with ``decode``: msgspec or json)."""
    import msgspec

    class Entry(msgspec.Struct, gc=False):
        log: str
        stream: str
        time: str

    typed = msgspec.json.Decoder(list[Entry])
    n = 0
    t0 = time.perf_counter()
    for path in sorted(root.glob("*/*-json.log")):
        with open(path, "rb", buffering=0) as f:
            rest = b""
            while block := f.read(1 << 20):
                block = rest + block
                cut = block.rfind(b"\n") + 1
                lines = block[: cut - 1].split(b"\n")
                rest = block[cut:]
                n += len(lines)
                if decode == "json":
                    json.loads(b"[" + b",".join(lines) + b"]")
                elif decode == "msgspec":
                    typed.decode(b"[" + b",".join(lines) + b"]")
    return n, time.perf_counter() - t0


def _pinned(cpu: int) -> Callable[[], None]:
    """A preexec hook that keeps the child on one CPU (wall-clock figures = one core)."""
    return lambda: os.sched_setaffinity(0, {cpu % os.cpu_count()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--containers", type=int, default=10)
    ap.add_argument("--keep", type=Path, help="write the host here and keep it")
    ap.add_argument("--compress", action="store_true", help="ship with --compress gzip")
    ap.add_argument(
        "--batch-bytes", type=int, help="ship with this --batch-bytes (small: many messages)"
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the shipper to CPU 0 and the sink to CPU 1 (one core each: wall = one core)",
    )
    args = ap.parse_args()

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="logq-bench-"))
    root = tmp / "containers"
    state = tmp / "state"
    shutil.rmtree(state, ignore_errors=True)
    if not root.exists():
        t0 = time.perf_counter()
        size = generate(root, args.lines, args.containers)
        took = time.perf_counter() - t0
        print(f"generated {args.lines:,} lines, {size / 1e6:.1f} MB in {took:.1f} s")
    size = sum(p.stat().st_size for p in root.glob("*/*-json.log"))

    sink = subprocess.Popen(
        [sys.executable, "-c", SINK],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_pinned(1) if args.pin else None,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        (tmp / "none").mkdir(exist_ok=True)  # a --cri-root given must exist
        cmd = [
            sys.executable,
            "-m",
            "shipper.daemon",
            "--once",
            "--aggregator",
            f"127.0.0.1:{port}",
            "--docker-root",
            str(root),
            "--cri-root",
            str(tmp / "none"),
            "--state-dir",
            str(state),
            "--log-level",
            "warning",
        ]
        if args.compress:
            cmd += ["--compress", "gzip"]
        if args.batch_bytes:
            cmd += ["--batch-bytes", str(args.batch_bytes)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, preexec_fn=_pinned(0) if args.pin else None)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        sink.terminate()
        sink.wait(10)
    if proc.returncode != 0:
        sys.exit(f"shipper failed with exit code {proc.returncode}")
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"shipper: {args.lines:,} lines, {size / 1e6:.1f} MB in {wall:.2f} s wall, {cpu:.2f} s CPU"
    )
    print(f"  throughput: {args.lines / wall:,.0f} lines/s  {size / wall / 1e6:.1f} MB/s (wall)")
    print(f"  per CPU-second: {args.lines / cpu:,.0f} lines/s")
    print(f"  peak RSS: {usage.ru_maxrss / 1024:.1f} MB  (minor page faults {usage.ru_minflt:,})")
    rate = args.lines / cpu
    n, dt = ceiling(root, None)
    print(f"ceiling, read + split in Python: {n / dt:,.0f} lines/s  {size / dt / 1e6:.0f} MB/s")
    n, dt = ceiling(root, "msgspec")
    print(
        f"ceiling, read + split + msgspec typed decode: {n / dt:,.0f} lines/s  "
        f"{size / dt / 1e6:.0f} MB/s (shipper per CPU-second: {rate / (n / dt):.0%} of it)"
    )
    n, dt = ceiling(root, "json")
    print(f"ceiling, read + split + json.loads: {n / dt:,.0f} lines/s  {size / dt / 1e6:.0f} MB/s")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
