"""Reconnect-rush benchmark: many Forward clients each sending one large chunk at once.

After an aggregator restart every client reconnects together, and Fluent Bit's chunks are about
2 MB. ``--connections`` clients (400 by default) each send one PackedForward message of
``--records`` Envoy-sized records (9,000: ~2.4 MB) at the same moment and wait for its ack. The
script prints the aggregator's idle and peak RSS (VmHWM), the time until every message was
acked, and RSS once the next flush has trimmed the heap. ``--max-inflight-bytes`` bounds the
bytes read and not yet durable across all connections; the peak should follow that budget, not
the number of connections (DESIGN: bounded by configured limits, not by input).

Usage: ``python bench/herd.py [--connections N] [--records N] [aggregator flags ...]``.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procfs import status_kib
from shipper import wire
from tests.support.procs import free_port, port_open, wait_until


def messages(connections: int, records: int) -> list[tuple[str, bytes]]:
    """One PackedForward message per connection: the same records, each its own chunk id."""
    now = time.time_ns()
    blob = wire.pack_entries(
        [
            (
                now,
                {
                    "log": f"herd-{k} " + "z" * 180,
                    "stream": "stdout",
                    "service": f"s{k % 20}",
                    "host": "h",
                    "container_id": "c",
                    "container_name": "n",
                },
            )
            for k in range(records)
        ]
    )
    out = []
    for _ in range(connections):
        chunk = wire.new_chunk_id()
        out.append((chunk, wire.pack(["logq.herd", blob, {"chunk": chunk, "size": records}])))
    return out


async def send_all(port: int, batch: list[tuple[str, bytes]]) -> collections.Counter[str]:
    """Send every message on its own connection at once; count how each one ended."""
    outcome: collections.Counter[str] = collections.Counter()

    async def one(chunk: str, message: bytes) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message)
            await writer.drain()
            unpacker = msgpack.Unpacker(raw=False)
            while data := await asyncio.wait_for(reader.read(4096), 600):
                unpacker.feed(data)
                if any(wire.decode_ack(obj) == chunk for obj in unpacker):
                    outcome["acked"] += 1
                    writer.close()
                    return
            outcome["closed unacked"] += 1
        except (OSError, TimeoutError) as exc:
            outcome[type(exc).__name__] += 1

    await asyncio.gather(*(one(chunk, message) for chunk, message in batch))
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--records", type=int, default=9000)
    args, aggregator_flags = parser.parse_known_args()
    batch = messages(args.connections, args.records)
    with tempfile.TemporaryDirectory(prefix="logq-herd-") as tmp:
        port = free_port()
        log = open(Path(tmp) / "aggregator.log", "w")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "logq-aggregator"),
                "--listen",
                f"127.0.0.1:{port}",
                "--warehouse",
                f"{tmp}/warehouse",
                "--buffer-dir",
                f"{tmp}/buffer",
                "--flush-interval",
                "5",
                "--max-connections",
                str(max(1024, 2 * args.connections)),
                *aggregator_flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: port_open("127.0.0.1", port), 60, "the aggregator", proc=proc)
            idle = status_kib(proc.pid, "VmRSS")
            started = time.monotonic()
            outcome = asyncio.run(send_all(port, batch))
            took = time.monotonic() - started
            peak = status_kib(proc.pid, "VmHWM")
            time.sleep(7)  # the next flush trims the heap (aggregator/memory.py)
            after = status_kib(proc.pid, "VmRSS")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(300)
            log.close()
    size = len(batch[0][1])
    print(
        f"{args.connections} connections x {size / 1e6:.2f} MB "
        f"({args.connections * size / 1e9:.2f} GB in all): {dict(outcome)} in {took:.1f} s"
    )
    print(
        f"aggregator RSS: idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
        f"after the next flush {after / 1024:.0f} MiB"
    )
    return 0 if outcome["acked"] == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
