"""Hostile-input benchmark: what malicious or broken Forward clients cost the aggregator.

Each scenario starts a fresh ``logq-aggregator`` (local warehouse), sends one kind of hostile
input, then has a well-behaved client send one acknowledged message, and prints the
aggregator's peak RSS (VmHWM), its CPU seconds, how long the well-behaved client waited for its
ack, and whether the hostile connection was closed:

* ``gzip-bomb``: 16 KB of gzip inflating to 5.6 million 3-byte ``[0, {}]`` entries (refused at
  the per-message entry limit);
* ``nested``: 16 KB of gzip inflating to 20 records holding 17 million empty maps (refused at
  the per-message object budget);
* ``slow-partials``: three connections, each sending 90% of a 10 MB Forward-mode message of
  tiny maps and then nothing (``--max-frame-bytes 10485760``; the object pool shared by all
  unfinished messages);
* ``json-pieces``: a 0.9 MB JSON message sent in 600 pieces 20 ms apart (a re-parse of the
  whole message per piece would be quadratic).

Usage: ``python bench/hostile.py [scenario ...]`` (all by default). Figures, not assertions.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from bench.procfs import cpu_seconds, status_kib
from shipper import wire
from tests.support.pipeline import Aggregator, start_aggregator
from tests.support.procs import LOCALHOST

T0 = 1_795_860_000_000_000_000


def _connect(agg: Aggregator) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, agg.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed(sock: socket.socket, timeout: float = 60) -> bool:
    """Whether the server closed ``sock`` (reads EOF or a reset within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionError:  # reset: closed with unread data
        return True
    except OSError:  # timed out: still open
        return False
    return True


def _bystander_wait(agg: Aggregator) -> float:
    """Seconds a well-behaved client waits for the ack of one small message."""
    frame = wire.encode_packed_forward(
        "logq.ok", [(time.time_ns(), {"log": "fine", "service": "ok"})], "ok-1"
    )
    started = time.perf_counter()
    with _connect(agg) as sock:
        sock.sendall(frame)
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("the aggregator closed a well-behaved connection")
            unpacker.feed(data)
            if any(wire.decode_ack(o) == "ok-1" for o in unpacker):
                return time.perf_counter() - started


def gzip_bomb(agg: Aggregator) -> list[socket.socket]:
    body = b"\x92\x00\x80" * (16 * 1024 * 1024 // 3)
    frame = wire.pack(["logq.bomb", gzip.compress(body, 9), {"compressed": "gzip"}])
    sock = _connect(agg)
    sock.sendall(frame)
    return [sock]


def nested(agg: Aggregator) -> list[socket.socket]:
    junk = [[{}] * 50_000] * 17
    entries = [(T0 + i, {"log": f"j{i}", "junk": junk}) for i in range(20)]
    blob = gzip.compress(wire.pack_entries(entries), 9)
    sock = _connect(agg)
    sock.sendall(wire.pack(["logq.nested", blob, {"compressed": "gzip", "chunk": "n"}]))
    return [sock]


def slow_partials(agg: Aggregator) -> list[socket.socket]:
    message = msgpack.packb(["logq.slow", [[0, {"log": "x", "a": [{}] * 400_000}]] * 25])
    socks = []
    for _ in range(3):
        sock = _connect(agg)
        with contextlib.suppress(ConnectionError):  # closed while sending: over the pool
            sock.sendall(message[: int(len(message) * 0.9)])
        socks.append(sock)
        time.sleep(2)
    return socks


def json_pieces(agg: Aggregator) -> list[socket.socket]:
    text = json.dumps(["logq.json", int(time.time()), {"log": "x", "a": [0] * 300_000}])
    data = text.encode()
    sock = _connect(agg)
    step = len(data) // 600 + 1
    for start in range(0, len(data), step):
        sock.sendall(data[start : start + step])
        time.sleep(0.02)
    return [sock]


SCENARIOS: dict[str, tuple[Callable[[Aggregator], list[socket.socket]], tuple[str, ...]]] = {
    "gzip-bomb": (gzip_bomb, ()),
    "nested": (nested, ()),
    "slow-partials": (slow_partials, ("--max-frame-bytes", "10485760")),
    "json-pieces": (json_pieces, ()),
}


def run(name: str, work: Path) -> None:
    send, flags = SCENARIOS[name]
    work.mkdir(parents=True)
    agg = start_aggregator(str(work / "warehouse"), work, {}, *flags)
    try:
        before = status_kib(agg.proc.pid, "VmHWM")
        cpu0 = cpu_seconds(agg.proc.pid)
        socks = send(agg)
        waited = _bystander_wait(agg)
        closed = sum(_closed(s, timeout=3) for s in socks)
        hwm = status_kib(agg.proc.pid, "VmHWM")
        cpu = cpu_seconds(agg.proc.pid) - cpu0
        for s in socks:
            s.close()
    finally:
        agg.kill()
    print(
        f"{name:<14} peak RSS {hwm / 1024:7.0f} MiB (idle {before / 1024:.0f})  "
        f"CPU {cpu:5.2f} s  other client's ack {waited:6.2f} s  "
        f"hostile connections closed {closed}/{len(socks)}"
    )


def main() -> int:
    names = sys.argv[1:] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s) {sorted(unknown)}; choose from {list(SCENARIOS)}")
        return 2
    with tempfile.TemporaryDirectory(prefix="logq-bench-hostile-") as tmp:
        for name in names:
            run(name, Path(tmp) / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
