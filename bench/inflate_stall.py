"""Event-loop stall benchmark: how long the aggregator's event loop stops while one big
CompressedPackedForward message is ingested.

Runs a :class:`aggregator.server.ForwardServer` in this process (its buffer a list whose writes
are durable at once: the fsync is not measured), a ticker task that sleeps 1 ms at a time and
notes how late it wakes (every other connection, ack and /metrics answer waits as long), and a
client thread that sends one message of about ``--mib`` MiB of entries (64 by default) and
waits for its ack: Envoy access lines (~150,000 of them for 64 MiB), then 64 KiB lines (1,024),
whose decoding costs little beside their inflate. For each way of sending the message it prints
the longest stall, the stalls over 50 ms added up, and the time to the ack:

* ``plain``: PackedForward, no gzip: what decoding and buffering the lines cost alone;
* ``gzip inline``: gzip inflated on the event loop, as before aggregator/inflate.py (forced
  here by raising its thresholds);
* ``gzip worker``: gzip over 1 MiB inflated in the worker thread (the default);
* ``plain, disk``: ``plain`` into a real buffer (aggregator/buffer.py) in a temporary folder,
  its frame's checksum and ``write`` included (the fsync runs in a thread either way);
* ``forward mode``: the entries sent as a Forward-mode array (``[tag, [[time, record]...]]``,
  Fluent Bit's default) rather than a PackedForward blob, into the list. One of long lines,
  fewer than 8,192 entries, was decoded and framed whole on the loop before such messages
  were judged by their bytes too: 64 MiB of 64 KiB lines ~100 to 120 ms, now ~45 to 60 ms;
  16 MiB of 4 KiB lines ~25 to 40 ms, now ~13 ms (2-core VM under other load).

Decoding the lines into a batch runs on the event loop a slice of ~2 MiB of entries at a time,
the loop free between slices, and the batch is joined and framed in the inflate worker
(aggregator/big_messages.py): the ``plain`` row is the longest of those steps, ~30 ms for
either kind of line (2-core VM, median of 3). Before, the decode and frame were one step:
~0.8 s for the access lines and ~0.15 s for the long ones, in every row. The buffer's own
write of the frame (its checksum and copy, then the ``write`` call: ~50 to 90 ms for a 38 to
64 MiB frame) ran on the loop too, before aggregator/buffer.py wrote big frames in a worker
(the ``plain, disk`` row).

Usage: ``python bench/inflate_stall.py [--mib N] [--runs N] [--kind access|long]
[--line-kib N]``: ``--kind`` runs one kind of line only, ``--line-kib`` sets the long lines'
length (64 KiB by default; 4 KiB lines are Fluentd's and Fluent Bit's long ones, whose
Forward-mode messages are a few thousand entries of several MiB). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from aggregator import inflate
from aggregator.buffer import Buffer
from aggregator.metrics import Metrics
from aggregator.server import ForwardServer, ServerLimits
from bench.ingest import encode_chunks, make_lines
from shipper import wire

TICK = 0.001
#: Bytes of one of ingest.py's entries, packed (measured: ~450).
ENTRY_BYTES = 450
LONG_LINE = 64 * 1024
#: Stalls at least this long are added up (a 50 ms one is already felt by every connection).
FELT = 0.050


class DurableList:
    """A buffer whose writes are durable at once (kept only as their sizes)."""

    full = False
    disk_low = None

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def write(self, payload: bytes, chunk: bytes | None = None) -> asyncio.Future[None]:
        self.sizes.append(len(payload))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def wait_for_space(self) -> None:
        return None


def access_lines(mib: int) -> tuple[str, bytes, int]:
    """(tag, PackedForward blob, lines) of about ``mib`` MiB of ingest.py's Envoy access lines
    and records (its services' chunks joined)."""
    lines = make_lines(mib * 1024 * 1024 // ENTRY_BYTES)
    frames = [msgpack.unpackb(frame, raw=False) for _, _, frame in encode_chunks(lines, len(lines))]
    return frames[0][0], b"".join(blob for _, blob, _ in frames), len(lines)


def long_lines(mib: int, length: int = LONG_LINE) -> tuple[str, bytes, int]:
    """(tag, PackedForward blob, lines) of about ``mib`` MiB of ``length``-byte lines (access
    lines joined): few entries, so that inflating costs more than decoding."""
    text = " ".join(line for _, _, line in make_lines(200))
    line = (text * (length // len(text) + 1))[:length]
    count = mib * 1024 * 1024 // length
    entries = [(1_795_860_000_000_000_000 + i, {wire.KEY_LOG: line}) for i in range(count)]
    return "logq.long", wire.pack_entries(entries), count


@contextlib.asynccontextmanager
async def buffer_of(on_disk: bool) -> AsyncIterator[Any]:
    """A :class:`DurableList`, or a real buffer in a temporary folder when ``on_disk``."""
    if not on_disk:
        yield DurableList()
        return
    with tempfile.TemporaryDirectory(prefix="inflate-stall-") as folder:
        buffer = Buffer(folder, 1 << 40, 1 << 40)
        buffer.open("bench")
        buffer.start()
        try:
            yield buffer
        finally:
            await buffer.close()


def forward_mode(tag: str, blob: bytes, chunk: str = "big") -> bytes:
    """The Forward-mode message (``[tag, [[time, record]...], options]``) of ``blob``'s
    entries."""
    entries = list(msgpack.Unpacker(io.BytesIO(blob), raw=False, max_buffer_size=len(blob)))
    return wire.pack([tag, entries, {"chunk": chunk}])


def message(tag: str, blob: bytes, lines: int, compress: bool) -> bytes:
    """The PackedForward message of ``blob``, gzipped at level 1 (as logq-shipper --compress
    gzip does) when ``compress``."""
    options: dict[str, Any] = {"size": lines, "chunk": "big"}
    if compress:
        blob = gzip.compress(blob, compresslevel=1)
        options["compressed"] = "gzip"
    return wire.pack([tag, blob, options])


@contextlib.contextmanager
def inline_only(on: bool) -> Iterator[None]:
    """Every gzip blob inflated on the event loop while ``on`` (as before inflate.py)."""
    names = ("INLINE_MAX_COMPRESSED", "INLINE_MAX_MEMBERS", "INLINE_MAX_OUTPUT")
    saved = {name: getattr(inflate, name) for name in names}
    for name in names if on else ():
        setattr(inflate, name, 1 << 62)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(inflate, name, value)


def send(port: int, frame: bytes, acked: dict[str, Any]) -> None:
    """Send ``frame`` and wait for its ack (in a thread: not on the event loop measured)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.sendall(frame)
        unpacker = wire.new_unpacker()
        while (ack := next(unpacker, None)) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before its ack")
            unpacker.feed(data)
    acked["chunk"] = wire.decode_ack(ack)
    acked["seconds"] = time.perf_counter() - start


async def one_run(frame: bytes, max_frame: int, on_disk: bool = False) -> tuple[float, ...]:
    """(longest stall, stalls over FELT added up, seconds to the ack) of one ingest, under
    ``--max-frame-bytes max_frame``, into a real buffer when ``on_disk``."""
    async with buffer_of(on_disk) as buffer:
        return await _one_run(buffer, frame, max_frame)


async def _one_run(buffer: Any, frame: bytes, max_frame: int) -> tuple[float, float, float]:
    limits = ServerLimits(max_frame_bytes=max_frame)
    server = ForwardServer(buffer, Metrics(), limits)
    _, port = await server.start("127.0.0.1", 0)
    stalls: list[float] = []
    acked: dict[str, Any] = {}
    sender = threading.Thread(target=send, args=(port, frame, acked))

    async def tick() -> None:
        while sender.is_alive():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            stalls.append(time.perf_counter() - before - TICK)

    try:
        sender.start()
        await tick()
        sender.join()
    finally:
        await server.stop(grace=5)
    if "chunk" not in acked:
        raise RuntimeError("no ack: see the server's log")
    return max(stalls), sum(s for s in stalls if s >= FELT), acked["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=64, help="decompressed size of the message")
    ap.add_argument("--runs", type=int, default=5, help="runs of each way (median shown)")
    ap.add_argument("--kind", choices=("access", "long"), help="one kind of line only")
    ap.add_argument("--line-kib", type=int, default=LONG_LINE // 1024, help="long lines' KiB")
    args = ap.parse_args()
    kinds = {
        "access": access_lines,
        "long": functools.partial(long_lines, length=args.line_kib * 1024),
    }
    for warm_up in (message(*access_lines(1), compress=True), message(*access_lines(8), False)):
        asyncio.run(one_run(warm_up, len(warm_up)))  # imports and first calls, not counted
    print(f"ticker every {TICK * 1000:g} ms; median of {args.runs} runs (the least in brackets)")
    for kind_name, kind in kinds.items():
        if args.kind not in (None, kind_name):
            continue
        tag, blob, lines = kind(args.mib)
        plain, gzipped = message(tag, blob, lines, False), message(tag, blob, lines, True)
        forward = forward_mode(tag, blob)
        print(
            f"\n{kind_name} lines: one message of {lines:,} lines, "
            f"{len(blob) / 2**20:.1f} MiB of entries, {len(gzipped) / 2**20:.1f} MiB gzipped"
        )
        print(
            f"{'sent as':<14}{'longest stall (least)':>24}{f'stalls >= {FELT * 1000:g} ms':>20}"
            f"{'ack':>10}"
        )
        max_frame = max(len(plain), len(forward)) + 1024 * 1024  # the plain messages too
        for name, frame, inline, on_disk in (
            ("plain", plain, False, False),
            ("gzip inline", gzipped, True, False),
            ("gzip worker", gzipped, False, False),
            ("plain, disk", plain, False, True),
            ("forward mode", forward, False, False),
        ):
            with inline_only(inline):
                runs = [asyncio.run(one_run(frame, max_frame, on_disk)) for _ in range(args.runs)]
            longest, felt, ack = (statistics.median(r[i] for r in runs) for i in range(3))
            least = min(r[0] for r in runs)
            print(
                f"{name:<14}{longest * 1000:>12.0f} ms ({least * 1000:4.0f} ms)"
                f"{felt * 1000:>17.0f} ms{ack:>8.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
