"""Bad input at volume: one real aggregator under fuzzing, slowloris and wrong keys, while good
clients deliver known lines -- which must all land, exactly once.

What is thrown at ``logq-aggregator`` (``--shared-key``, a short ``--idle-timeout``, a small
``--max-connections``), all at the same time as good traffic:

* 5,000 mutated Forward frames (``--long``: 20,000), from valid frames of all four modes
  (Message with EventTime and integer times, Forward, PackedForward, CompressedPackedForward with
  gzip): bit flips, truncations, splices, corrupted length fields, huge declared lengths, deep
  nesting, a gzip bomb, and a hostile value put in every position of the message tree. A fixed
  seed makes a failure reproducible. Each frame is classified locally with the server's own
  unpacker settings: a frame that is one complete msgpack object is followed on the same
  connection by a tiny "sync" message whose ack proves the server read past it (or the server
  closes the connection: a new one is opened); any other frame (truncated, malformed, trailing
  bytes) is the connection's last, followed by a half-close, so every frame is really decoded.
* a client with the wrong shared key (refused, with the reason in the PONG and the log) and a
  ``logq-shipper`` with the wrong key (exits non-zero, ships nothing);
* slowloris clients: one trickling its PING a byte at a time, one trickling a frame after the
  handshake, one silent; then a flood of them up to ``--max-connections``. The server must
  close each within about the idle timeout, and good clients get their slots back.
* through a real ``logq-shipper`` (following the host, with the right key): invalid UTF-8, a
  lone-surrogate escape, 1 MiB lines (split by Docker in 16 KiB parts, and in one piece), and
  malformed Docker JSON lines in a container's json-file log. ``shipper/formats.py`` promises
  that nothing is dropped: invalid UTF-8 is carried with U+FFFD, an over-long line is cut at
  ``--max-line-bytes`` (256 KiB) with a visible ``[logq-shipper: truncated N bytes]`` marker, and
  a line that is not Docker JSON is shipped as raw text on stdout, timestamped when read. A single
  json-file entry longer than a read block is cut *before* parsing: its first 256 KiB of raw JSON
  land as the message (with the marker). Those exact rows are asserted, and the shipper's counters
  (invalid UTF-8, truncated, malformed lines) must say exactly how many there were.

The fuzzing also found server bugs, fixed with it: map keys that are arrays, NaN/infinite or
out-of-range event times, ``bin`` values where a time goes, and chunk ids that are not UTF-8
used to end in "unexpected error" tracebacks; a message cut by TCP right after its header or
tag was refused as "not the Forward protocol" (the second test below); and a client trickling
one byte per second was never closed.

At the end the aggregator is still up, exits 0 on SIGTERM, the good shipper's host is in the
warehouse row for row (plus the hostile lines as promised), the raw good client's lines are there
exactly once, and ``/metrics`` counted the refused connections by reason.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import random
import re
import select
import socket
import string
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cli.demohost import Manifest, write_host
from cli.demoruntime import docker_entry, rfc3339nano, split_parts
from cli.demoservices import SERVICES
from shipper import wire
from shipper.formats import TRUNCATION_MARKER
from tests.support.expect import COLUMNS, as_counter, diff, expected_rows, select_table
from tests.support.pipeline import (
    Aggregator,
    run_shipper_once,
    start_aggregator,
    start_shipper,
)
from tests.support.procs import LOCALHOST, free_port, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SHARED_KEY = "chaos-shared-key"
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 24
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_LINE_BYTES = 256 * 1024  # logq-shipper's default --max-line-bytes
FUZZ_FRAMES = 5_000
FUZZ_WORKERS = 4
SEED = 20261128
#: How long a slowloris client may keep its connection before the test calls it a failure
#: (the server should close it after about IDLE_TIMEOUT; this is only a generous upper bound).
SLOWLORIS_BOUND = 30.0
TRICKLE_EVERY = 0.4


# --- a minimal Forward client ---------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection."""


class ForwardClient:
    """One connection: the shared-key handshake, then frames and acks."""

    def __init__(self, port: int, key: str = SHARED_KEY, hostname: str = "chaos-client"):
        self.sock = socket.create_connection((LOCALHOST, port), timeout=30)
        self.unpacker = wire.new_unpacker()
        self.pong: list[Any] = []
        try:
            helo = self.next_object()
            if not (isinstance(helo, list) and helo and helo[0] == "HELO"):
                raise AssertionError(f"expected HELO, got {helo!r}")
            salt = os.urandom(16)
            self.sock.sendall(wire.encode_ping(hostname, salt, helo[1]["nonce"], key))
            self.pong = self.next_object()
        except BaseException:
            self.close()
            raise

    @property
    def accepted(self) -> bool:
        return len(self.pong) > 1 and self.pong[0] == "PONG" and self.pong[1] is True

    def next_object(self) -> Any:
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise Closed
            self.unpacker.feed(data)

    def wait_ack(self, chunk: str) -> None:
        while True:
            if wire.decode_ack(self.next_object()) == chunk:
                return

    def send(self, frame: bytes) -> None:
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            raise Closed from None

    def finish(self) -> None:
        """Half-close and wait for the server to close its side."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()


def connect(port: int, attempts: int = 600) -> ForwardClient:
    """A handshaken connection, retried while the server is at --max-connections."""
    for _ in range(attempts):
        try:
            client = ForwardClient(port)
        except (Closed, ConnectionResetError, BrokenPipeError):
            time.sleep(0.1)
            continue
        assert client.accepted, client.pong
        return client
    raise AssertionError(f"no connection accepted after {attempts} attempts")


# --- valid frames of every mode, and their mutations -----------------------------------------

NOW_NS = time.time_ns()


def fuzz_record(rng: random.Random, i: int) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "log": rng.choice(
            [
                f"fuzz line {i} " + "x" * rng.randrange(0, 200),
                '10.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET /api HTTP/1.1" 200 - 0 5 3 2',
                "naïve ünïcödé ✓ " * rng.randrange(1, 5),
            ]
        ),
        "stream": rng.choice(["stdout", "stderr"]),
        "service": "fuzz",
        "container_id": f"fuzz-{rng.randrange(4)}",
        "container_name": "fuzz",
        "host": "fuzz-host",
    }
    if rng.random() < 0.5:
        rec["source_id"] = f"fuzz-src-{rng.randrange(8)}"
        rec["offset"] = i * 1000 + rng.randrange(1000)
    if rng.random() < 0.3:
        rec["format"] = "envoy"
        rec["image"] = "envoyproxy/envoy:v1.31.2"
    return rec


def base_message(rng: random.Random, i: int) -> list[Any]:
    """A valid Forward message as a tree (``bytes`` blobs hold packed entries)."""
    tag = f"logq.fuzz.{rng.choice(['app', 'envoy', 'x'])}"
    n = rng.randrange(1, 6)
    entries = [(NOW_NS - rng.randrange(10**12), fuzz_record(rng, i)) for _ in range(n)]
    chunk = {"chunk": f"fuzz-{i}"}
    mode = rng.randrange(6)
    if mode == 0:  # Message, EventTime
        return [tag, wire.EventTime.from_ns(entries[0][0]), entries[0][1], chunk]
    if mode == 1:  # Message, integer time, no options
        return [tag, entries[0][0] // 10**9, entries[0][1]]
    if mode == 2:  # Forward
        return [tag, [[wire.EventTime.from_ns(t), r] for t, r in entries], chunk]
    if mode == 3:  # PackedForward
        return [tag, wire.pack_entries(entries), {**chunk, "size": n}]
    if mode == 4:  # CompressedPackedForward
        body = gzip.compress(wire.pack_entries(entries), compresslevel=1)
        return [tag, body, {**chunk, "size": n, "compressed": "gzip"}]
    # PackedForward with float times and no size (Fluentd's older forms)
    blob = b"".join(wire.pack([t / 1e9, r]) for t, r in entries)
    return [tag, blob, chunk]


HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**64 - 1,
    -(2**63),
    1.5,
    math.nan,
    math.inf,
    "",
    "s" * 300,
    "\u202e\x00",
    b"",
    b"\xff\xfe\x00",
    [],
    [[]],
    {},
    {"log": None},
    {b"\xff": 1},
    msgpack.ExtType(0, b"\x00\x00"),  # EventTime of the wrong length
    msgpack.ExtType(0, b"\xff" * 8),  # EventTime in 2106
    msgpack.ExtType(0, b"\x00" * 12),
    msgpack.ExtType(42, b"unknown ext"),
]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a message tree (list items, map values, and map keys as ``("key", k)``)."""
    out = [prefix]
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            out += _paths(item, (*prefix, i))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, ("key", k)))
            out += _paths(v, (*prefix, k))
    return out


def _hashable(value: Any) -> Any:
    """``value`` usable as a dict key; lists and maps become tuples (still msgpack arrays)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((_hashable(k), _hashable(v)) for k, v in value.items())
    return value


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, tuple):  # a map key: arrays as keys are packed from tuples
        key = _hashable(value)
        return {(key if k == head[1] else k): v for k, v in obj.items()}
    if isinstance(obj, list):
        copy = list(obj)
        copy[head] = _replace(copy[head], rest, value)
        return copy
    return {**obj, head: _replace(obj[head], rest, value)}


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=wire._default, use_bin_type=True, strict_types=False)


def wrong_type_anywhere(rng: random.Random, msg: list[Any]) -> bytes:
    """A hostile value at one random position, inside the packed entries too."""
    if isinstance(msg[1], bytes) and rng.random() < 0.5:
        opts = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
        gz = opts.get("compressed") == "gzip"
        raw = gzip.decompress(msg[1]) if gz else msg[1]
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(raw)
        entries = [list(e) for e in unpacker]
        path = rng.choice(_paths(entries)[1:])
        entries = _replace(entries, path, rng.choice(HOSTILE_VALUES))
        body = b"".join(_pack(e) for e in entries)
        return _pack([msg[0], gzip.compress(body) if gz else body, *msg[2:]])
    path = rng.choice(_paths(msg))
    return _pack(_replace(msg, path, rng.choice(HOSTILE_VALUES)))


#: Headers announcing far more than follows: bin32, str32, array32, map32, ext32.
HUGE_HEADERS = [
    b"\xc6\xff\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\x00\x10\x00\x00",
    b"\xc9\x00\x00\x10\x00\x00",
    b"\xc5\xff\xf0",
]
_LENGTH_HEADS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xDC: 2, 0xDD: 4}
_LENGTH_HEADS |= {0xDE: 2, 0xDF: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}


def corrupt_length(rng: random.Random, frame: bytes) -> bytes:
    """Rewrite the length field after a random length-carrying header byte."""
    spots = [i for i, b in enumerate(frame) if b in _LENGTH_HEADS or 0x90 <= b <= 0xBF]
    if not spots:
        return frame[::-1]
    i = rng.choice(spots)
    width = _LENGTH_HEADS.get(frame[i], 0)
    if width == 0:  # fixarray / fixmap / fixstr: change the count in the low bits
        return frame[:i] + bytes([frame[i] ^ rng.randrange(1, 16)]) + frame[i + 1 :]
    value = rng.choice([0, 1, 2 ** (8 * width) - 1, rng.randrange(2 ** (8 * width))])
    return frame[: i + 1] + value.to_bytes(width, "big") + frame[i + 1 + width :]


def mutate(rng: random.Random, frames: list[bytes], msg: list[Any]) -> bytes:
    frame = _pack(msg)
    kind = rng.randrange(10)
    if kind == 0:  # bit flips
        data = bytearray(frame)
        for _ in range(rng.randrange(1, 9)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:  # truncation: a client that died mid-message
        return frame[: rng.randrange(1, len(frame))]
    if kind == 2:  # splice two frames
        other = rng.choice(frames)
        return frame[: rng.randrange(1, len(frame))] + other[rng.randrange(len(other)) :]
    if kind == 3:
        return corrupt_length(rng, frame)
    if kind == 4:  # a huge declared length spliced in
        at = rng.randrange(1, len(frame))
        return frame[:at] + rng.choice(HUGE_HEADERS) + frame[at:]
    if kind == 5:  # bytes inserted, deleted or duplicated
        a = rng.randrange(len(frame))
        b = min(len(frame), a + rng.randrange(1, 32))
        op = rng.randrange(3)
        if op == 0:
            return frame[:a] + rng.randbytes(b - a) + frame[a:]
        if op == 1:
            return frame[:a] + frame[b:]
        return frame[:b] + frame[a:b] + frame[b:]
    if kind == 6:  # bad option values
        opts = {
            "chunk": rng.choice(HOSTILE_VALUES),
            "size": rng.choice([0, -1, 2**32, 2**63, "3", None, 10**6]),
            "compressed": rng.choice(["gzip", "zstd", b"gzip", 1, None, "text"]),
        }
        return _pack([msg[0], msg[1], opts])
    return wrong_type_anywhere(rng, msg)  # kinds 7-9: the most productive


def special_frames() -> list[bytes]:
    """Hand-made extremes, sent first (deterministic)."""
    bomb = gzip.compress(b"\x00" * (80 * 1024 * 1024), compresslevel=9)
    entry = wire.pack_entries([(NOW_NS, {"log": "x"})])
    return [
        b"\x91" * 5000 + b"\xa6bottom",  # nested deeper than any stack
        _pack(["logq.bomb", bomb, {"compressed": "gzip", "chunk": "bomb", "size": 1}]),
        _pack(["logq.big", entry, {"size": 2**31, "chunk": "size"}]),
        _pack(["logq.t", [[wire.EventTime.from_ns(NOW_NS), {"log": "ok"}]] * 2000, {"chunk": "n"}]),
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * 64,
        b"\x93\xa1t\xc6\x7f\xff\xff\xff",
        b"GET / HTTP/1.1\r\n\r\n",
    ]


# --- the fuzzing worker ------------------------------------------------------------------------


@dataclass
class FuzzStats:
    sent: int = 0
    synced: int = 0
    """Complete frames the server read past (the following sync was acked)."""
    closed: int = 0
    """Connections the server closed after a complete frame (it refused that frame)."""
    last: int = 0
    """Incomplete or malformed frames sent as a connection's last bytes."""
    errors: list[str] = field(default_factory=list)


def classify(frame: bytes) -> bool:
    """True when ``frame`` is exactly whole msgpack objects, as the server's unpacker sees it.

    A map keyed by a map (or an array holding one) is no Python dict key (UnhashableKey): the
    server reads such a message again with those keys as text and stores it, in every mode
    (``ForwardServer._read_keyed``), and so is the frame read again here."""
    for keyed in (False, True):
        unpacker = wire.new_unpacker(MAX_FRAME_BYTES, keyed=keyed)
        try:
            unpacker.feed(frame)
            count = sum(1 for _ in wire.iter_messages(unpacker))
        except wire.UnhashableKey:
            continue  # (not raised by a keyed unpacker: refused if it were)
        except (msgpack.BufferFull, wire.ProtocolError):
            return False
        return count > 0 and unpacker.tell() == len(frame)
    return False


def fuzz_worker(port: int, frames: list[bytes], stats: FuzzStats, worker: int) -> None:
    client: ForwardClient | None = None
    try:
        for n, frame in enumerate(frames):
            if client is None:
                client = connect(port)
            stats.sent += 1
            if not classify(frame):
                with contextlib.suppress(Closed):
                    client.send(frame)
                client.finish()
                client = None
                stats.last += 1
                continue
            sync = f"sync-{worker}-{n}"
            try:
                client.send(frame + wire.pack(["logq.sync", b"", {"chunk": sync}]))
                client.wait_ack(sync)
                stats.synced += 1
            except (Closed, ConnectionResetError):
                client.close()
                client = None
                stats.closed += 1
    except BaseException as exc:  # reported by the test, with the worker's progress
        stats.errors.append(f"worker {worker} after {stats.sent} frames: {exc!r}")
    finally:
        if client is not None:
            client.close()


def fuzz_frames(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = [_pack(base_message(rng, i)) for i in range(64)]
    return [mutate(rng, valid, base_message(rng, i)) for i in range(count)]


# --- good clients ------------------------------------------------------------------------------

GOOD_SERVICE = "goodraw"


def good_frames(start: int, count: int) -> list[tuple[str, bytes, list[str]]]:
    """(chunk, frame, messages) in every mode; records carry source_id + offset (dedup)."""
    out = []
    for i in range(start, start + count):
        msgs = [f"GOODRAW line {i}.{j} ✓" for j in range(3)]
        recs = [
            {
                "log": m,
                "stream": "stdout",
                "service": GOOD_SERVICE,
                "container_id": "goodraw-cid",
                "container_name": "goodraw",
                "host": "goodraw-host",
                "source_id": "goodraw-src",
                "offset": i * 10 + j + 1,
            }
            for j, m in enumerate(msgs)
        ]
        chunk = f"good-{i}"
        t = NOW_NS - 60 * 10**9 + i * 10**6
        mode = i % 4
        if mode == 0:
            frames = [wire.encode_message("logq.good", t + j, r, {"chunk": f"{chunk}.{j}"})
                      for j, r in enumerate(recs)]  # fmt: skip
            out += [
                (f"{chunk}.{j}", f, [m]) for j, (f, m) in enumerate(zip(frames, msgs, strict=True))
            ]
            continue
        entries = [(t + j, r) for j, r in enumerate(recs)]
        if mode == 1:
            frame = wire.encode_forward("logq.good", entries, {"chunk": chunk})
        else:
            frame = wire.encode_packed_forward("logq.good", entries, chunk, compress=mode == 3)
        out.append((chunk, frame, msgs))
    return out


def good_client(port: int, frames: list[tuple[str, bytes, list[str]]], errors: list[str]) -> None:
    """Send frames in order, each until acked (reconnecting and resending after a close)."""
    try:
        pending = list(frames)
        client: ForwardClient | None = None
        while pending:
            if client is None:
                client = connect(port)
            chunk, frame, _ = pending[0]
            try:
                client.send(frame)
                client.wait_ack(chunk)
                pending.pop(0)
            except (Closed, ConnectionResetError, TimeoutError):
                client.close()
                client = None
        if client is not None:
            client.close()
    except BaseException as exc:
        errors.append(f"good client: {exc!r}")


# --- slowloris ---------------------------------------------------------------------------------


@dataclass
class Slow:
    """One slowloris connection: what it trickles and when the server closed it."""

    kind: str
    sock: socket.socket
    payload: bytes
    pos: int = 0
    closed_after: float | None = None
    started: float = field(default_factory=time.monotonic)


def open_slow(port: int, kind: str) -> Slow | None:
    """``ping``: trickles its PING; ``frame``: handshakes, then trickles a frame; ``silent``:
    handshakes, then says nothing. None when the server refused the connection."""
    if kind == "ping":
        try:
            sock = socket.create_connection((LOCALHOST, port), timeout=10)
        except OSError:
            return None
        try:
            unpacker = wire.new_unpacker()
            unpacker.feed(sock.recv(65536))
            nonce = next(unpacker)[1]["nonce"]
        except (OSError, StopIteration):
            sock.close()
            return None
        return Slow(kind, sock, wire.encode_ping("slow", os.urandom(16), nonce, SHARED_KEY))
    try:
        client = ForwardClient(port)
    except (Closed, OSError):
        return None
    frame = wire.encode_packed_forward("logq.slow", [(NOW_NS, {"log": "slow" * 100})], "slow")
    return Slow(kind, client.sock, frame if kind == "frame" else b"")


def trickle(slows: list[Slow], bound: float = SLOWLORIS_BOUND) -> None:
    """Send each connection one more byte every TRICKLE_EVERY s until the server closes them all
    (or ``bound`` passes: those still open keep ``closed_after=None``)."""
    deadline = time.monotonic() + bound
    for s in slows:
        s.sock.setblocking(False)
    while time.monotonic() < deadline:
        open_ = [s for s in slows if s.closed_after is None]
        if not open_:
            return
        readable, _, _ = select.select([s.sock for s in open_], [], [], TRICKLE_EVERY)
        for s in open_:
            gone = False
            if s.sock in readable:
                try:
                    while True:
                        data = s.sock.recv(65536)
                        if not data:
                            gone = True
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True
            if not gone and s.pos < len(s.payload) - 1:  # never the final byte
                try:
                    s.sock.send(s.payload[s.pos : s.pos + 1])
                    s.pos += 1
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True
            if gone:
                s.closed_after = time.monotonic() - s.started
                s.sock.close()
    for s in slows:
        if s.closed_after is None:
            s.sock.close()


# --- the hostile container log lines (through logq-shipper) ------------------------------------


@dataclass
class HostileLine:
    raw: bytes
    """What goes into the json-file log (one or several physical lines)."""
    message: str
    """The ``container_logs.message`` the shipper's documented behaviour gives."""
    timestamp: datetime | None
    """The expected event time (None: the time the shipper read it)."""
    stream: str = "stdout"


def hostile_lines(when: datetime) -> list[HostileLine]:
    t = rfc3339nano(when, 123)
    ts = when.replace(microsecond=when.microsecond // 1000 * 1000)

    def entry(log_json: bytes, stream: str = "stdout") -> bytes:
        return b'{"log":' + log_json + b',"stream":"' + stream.encode() + b'","time":"' + t.encode()

    def docker(text: str, stream: str = "stdout") -> bytes:
        return docker_entry(text, stream, t).encode("utf-8")

    filler = 1024 * 1024 - 16  # "abc...z" repeated: built by one multiplication, not 1M chr()s
    big = "CHAOS-big-split " + (string.ascii_lowercase * (filler // 26 + 1))[:filler]
    whole = big.replace("CHAOS-big-split", "CHAOS-big-whole")
    dropped = len(big) - MAX_LINE_BYTES
    whole_raw = docker(whole + "\n")
    lines = [
        HostileLine(
            entry(b'"CHAOS-utf8 \xff\xfe bad \xc3\x28 end\\n"') + b'"}\n',
            "CHAOS-utf8 \ufffd\ufffd bad \ufffd( end",
            ts,
        ),
        HostileLine(
            entry(b'"CHAOS-surrogate \\ud800 lone\\n"', "stderr") + b'"}\n',
            "CHAOS-surrogate \ufffd lone",
            ts,
            "stderr",
        ),
        HostileLine(  # split by the runtime into 16 KiB entries, joined by the shipper
            "".join(docker_entry(p, "stdout", t) for p in split_parts(big)).encode(),
            big[:MAX_LINE_BYTES] + TRUNCATION_MARKER.format(dropped=dropped),
            ts,
        ),
        HostileLine(  # one 1 MiB entry (a writer that does not split like dockerd)
            whole_raw,
            # Longer than a read block: shipper/cursor.py keeps its first --max-line-bytes
            # bytes *unparsed* (shipper/formats.overlong_line), marks and counts it.
            whole_raw[:MAX_LINE_BYTES].decode()
            + TRUNCATION_MARKER.format(dropped=len(whole_raw) - 1 - MAX_LINE_BYTES),
            None,
        ),
    ]
    for raw in (
        b'{"log":"CHAOS-malformed unterminated string',
        b"CHAOS-malformed plain text, not JSON at all",
        b'["CHAOS-malformed", "an array"]',
        b'{"log":"CHAOS-malformed no time\\n","stream":"stdout"}',
        b'{"log":42,"stream":"stdout","time":"' + t.encode() + b'","x":"CHAOS-malformed"}',
    ):
        lines.append(HostileLine(raw + b"\n", raw.decode(), None))
    lines.append(
        HostileLine(docker("CHAOS-after the bad lines\n"), "CHAOS-after the bad lines", ts)
    )
    return lines


def append_hostile(manifest: Manifest) -> tuple[str, list[HostileLine]]:
    """Append the hostile lines to the last app container; returns its id and the lines."""
    app = [c for c in manifest.containers if c.role == "app"][-1]
    when = datetime.now(UTC) - timedelta(minutes=5)
    lines = hostile_lines(when)
    with open(app.log_path, "ab") as out:
        for line in lines:
            out.write(line.raw)
    return app.id, lines


# --- checks ----------------------------------------------------------------------------------


def metric_values(port: int, name: str) -> dict[str, float]:
    """``{label set text: value}`` of one metric family from /metrics."""
    with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def open_connections(port: int) -> float:
    return metric_values(port, "logq_aggregator_connections")[""]


def check_warehouse(
    manifest: Manifest,
    hostile_cid: str,
    hostile: list[HostileLine],
    good: list[tuple[str, bytes, list[str]]],
    warehouse: str,
    env: dict[str, str],
    forbidden_cids: set[str],
) -> None:
    ours = {c.id for c in manifest.containers}
    host = socket.gethostname()
    for table in COLUMNS:
        rows = select_table(table, warehouse, env, in_process=True)
        leaked = sorted({r["container_id"] for r in rows} & forbidden_cids)
        assert not leaked, f"{table}: rows from the wrong-key shipper landed: {leaked}"
        mine = [r for r in rows if r["container_id"] in ours]
        is_chaos = [table == "container_logs" and "CHAOS-" in (r["message"] or "") for r in mine]
        want = as_counter(expected_rows(manifest, table, host), table)
        got = as_counter([r for r, c in zip(mine, is_chaos, strict=True) if not c], table)
        assert got == want, f"{table}:\n{diff(want, got)}"
        if table == "container_logs":
            check_hostile([r for r, c in zip(mine, is_chaos, strict=True) if c], hostile_cid,
                          hostile)  # fmt: skip
            goods = Counter(r["message"] for r in rows if r["service"] == GOOD_SERVICE)
            expected = Counter(m for _, _, msgs in good for m in msgs)
            assert goods == expected, f"raw good client: {diff(expected, goods)}"


def check_hostile(rows: list[dict[str, Any]], cid: str, hostile: list[HostileLine]) -> None:
    got = Counter((r["container_id"], r["stream"], r["message"]) for r in rows)
    want = Counter((cid, h.stream, h.message) for h in hostile)
    short = {k: (k[0][:8], k[1], k[2][:80]) for k in (*got, *want)}
    missing = [short[k] for k in want - got]
    extra = [short[k] for k in got - want]
    assert got == want, f"hostile lines: missing {missing}\nunexpected {extra}"
    times = {r["message"]: r["timestamp"] for r in rows}
    for h in hostile:
        if h.timestamp is not None:
            assert times[h.message] == h.timestamp, h.message[:60]


# --- the scenario ------------------------------------------------------------------------------


def run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def test_bad_input_at_volume_loses_nothing_for_good_clients(
    tmp_path: Path, subprocess_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    long = bool(request.config.getoption("--long"))
    rounds = 4 if long else 1
    manifest = write_host(tmp_path / "containers", seed=61, requests=300)
    hostile_cid, hostile = append_hostile(manifest)
    wrong = write_host(tmp_path / "wrongkey", seed=62, requests=5, services=SERVICES[:1],
                       long_line=False)  # fmt: skip
    warehouse = str(tmp_path / "warehouse")
    metrics_port = free_port()
    agg = start_aggregator(
        warehouse, tmp_path, subprocess_env,
        "--shared-key", SHARED_KEY,
        "--idle-timeout", str(IDLE_TIMEOUT),
        "--max-connections", str(MAX_CONNECTIONS),
        "--max-frame-bytes", str(MAX_FRAME_BYTES),
        "--metrics-listen", f"{LOCALHOST}:{metrics_port}",
    )  # fmt: skip
    try:
        scenario(agg, manifest, wrong, tmp_path, subprocess_env, rounds, hostile_cid, hostile,
                 metrics_port, warehouse)  # fmt: skip
    finally:
        agg.kill()


def scenario(
    agg: Aggregator,
    manifest: Manifest,
    wrong: Manifest,
    tmp_path: Path,
    env: dict[str, str],
    rounds: int,
    hostile_cid: str,
    hostile: list[HostileLine],
    metrics_port: int,
    warehouse: str,
) -> None:
    # The good shipper follows the host; its metrics say what it shipped and counted.
    shipper_metrics = free_port()
    shipper = start_shipper(
        agg.address, manifest.root, tmp_path / "state", env,
        "--shared-key", SHARED_KEY, "--metrics-listen", f"{LOCALHOST}:{shipper_metrics}",
    )  # fmt: skip
    try:
        good1 = phase_one(agg, wrong, tmp_path, env, rounds)
        check_shipper(shipper_metrics, manifest, hostile)
        assert shipper.terminate() == 0, shipper.log.read_text()[-3000:]
    finally:
        shipper.kill()
    good2 = phase_two(agg, metrics_port)

    closed = metric_values(metrics_port, "logq_aggregator_connections_closed_total")
    for reason in REFUSALS:
        assert closed.get(f'{{reason="{reason}"}}', 0) > 0, (reason, closed)
    # Hostile input must be refused as such, never reach an unhandled code path.
    assert closed.get('{reason="internal_error"}', 0) == 0, closed
    assert agg.terminate() == 0, agg.log.read_text()[-3000:]
    log = agg.log.read_text(errors="replace")
    assert "shared_key mismatch" in log and "slow client" in log
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:4000]
    check_warehouse(manifest, hostile_cid, hostile, good1 + good2, warehouse, env,
                    {c.id for c in wrong.containers})  # fmt: skip


#: ``logq_aggregator_connections_closed_total`` reasons this scenario must provoke.
REFUSALS = ("protocol_error", "auth_failed", "slow_client", "idle_timeout", "max_connections")


def phase_one(
    agg: Aggregator, wrong: Manifest, tmp_path: Path, env: dict[str, str], rounds: int
) -> list[tuple[str, bytes, list[str]]]:
    """All at once, while the good shipper runs: the raw good client, the wrong-key shipper and
    client, three slowloris clients and the fuzzers. Returns the good client's frames."""
    good1 = good_frames(0, 200)
    errors: list[str] = []
    wrong_run: dict[str, Any] = {}
    slows = [s for k in ("ping", "frame", "silent") if (s := open_slow(agg.port, k))]
    assert len(slows) == 3

    def ship_wrong() -> None:
        wrong_run["run"] = run_shipper_once(
            agg.address, wrong.root, tmp_path / "wrong-state", env,
            "--shared-key", "not-the-key", "--retry-timeout", "5",
        )  # fmt: skip

    frames = special_frames() + fuzz_frames(FUZZ_FRAMES * rounds, SEED)
    stats = [FuzzStats() for _ in range(FUZZ_WORKERS)]
    shares = [frames[i::FUZZ_WORKERS] for i in range(FUZZ_WORKERS)]

    def fuzz(i: int) -> Callable[[], None]:
        return lambda: fuzz_worker(agg.port, shares[i], stats[i], i)

    threads = run_threads(
        [ship_wrong, lambda: good_client(agg.port, good1, errors), lambda: trickle(slows)]
        + [fuzz(i) for i in range(FUZZ_WORKERS)]
    )
    intruder = ForwardClient(agg.port, key="wrong-key", hostname="intruder")
    try:
        assert intruder.pong[:3] == ["PONG", False, "shared_key mismatch"], intruder.pong
        with pytest.raises((Closed, ConnectionResetError)):
            intruder.next_object()
    finally:
        intruder.close()
    join(threads)
    assert not errors, errors
    fuzz_errors = [e for s in stats for e in s.errors]
    assert not fuzz_errors, fuzz_errors
    assert sum(s.sent for s in stats) == len(frames)
    print(  # shown with pytest -s: the figures of this run
        f"fuzz: {len(frames)} frames, {sum(s.synced for s in stats)} read past, "
        f"{sum(s.closed for s in stats)} refused when complete, "
        f"{sum(s.last for s in stats)} incomplete/malformed (sent last on their connection)"
    )
    # The fuzzer reached both sides: frames refused and frames read past.
    assert sum(s.synced for s in stats) > 0 and sum(s.closed + s.last for s in stats) > 0, stats
    refused = wrong_run["run"]
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "shared_key mismatch" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    assert_slow_closed(slows)
    assert agg.proc.poll() is None, "the aggregator died"
    return good1


def phase_two(agg: Aggregator, metrics_port: int) -> list[tuple[str, bytes, list[str]]]:
    """A flood of slowloris connections up to --max-connections: one more is refused; the good
    client waits for a slot and then delivers. Returns the good client's frames."""
    wait_until(lambda: open_connections(metrics_port) == 0, 60, "phase 1 connections to close")
    kinds = ("ping", "frame", "silent")
    flood = [s for i in range(MAX_CONNECTIONS) if (s := open_slow(agg.port, kinds[i % 3]))]
    assert len(flood) == MAX_CONNECTIONS
    with pytest.raises((Closed, ConnectionResetError)):
        ForwardClient(agg.port).close()  # over the limit: closed before any HELO
    good2 = good_frames(200, 40)
    errors: list[str] = []
    join(run_threads([lambda: trickle(flood), lambda: good_client(agg.port, good2, errors)]))
    assert not errors, errors
    assert_slow_closed(flood)
    assert agg.proc.poll() is None, "the aggregator died"
    return good2


def check_shipper(port: int, manifest: Manifest, hostile: list[HostileLine]) -> None:
    """Every line acked, and the bad ones counted as formats.py promises."""
    want = len(manifest.access) + len(manifest.logs) + len(hostile)

    def total(name: str) -> float:
        return sum(metric_values(port, name).values())

    wait_until(lambda: total("logq_shipper_lines_acked_total") >= want, 120, "the good shipper")
    assert total("logq_shipper_lines_acked_total") == want
    assert total("logq_shipper_invalid_utf8_lines_total") == 2  # bad bytes; a lone surrogate
    assert total("logq_shipper_truncated_lines_total") == 2  # both 1 MiB lines
    assert total("logq_shipper_malformed_lines_total") == 5


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a client thread hung"


def assert_slow_closed(slows: list[Slow]) -> None:
    kept = [s.kind for s in slows if s.closed_after is None]
    assert not kept, f"slowloris connections still open after {SLOWLORIS_BOUND:.0f}s: {kept}"


def test_frames_arriving_in_small_pieces_are_accepted(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A slow but honest client is not a slowloris: a message cut anywhere -- right after its
    array header, its tag, between entries -- and delivered piece by piece within the idle
    timeout is acknowledged (the server must not take the middle of a message for the start
    of a new one)."""
    agg = start_aggregator(str(tmp_path / "warehouse"), tmp_path, subprocess_env,
                           "--shared-key", SHARED_KEY, "--idle-timeout", "5")  # fmt: skip
    try:
        client = connect(agg.port)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = good_frames(0, 8)
        for chunk, frame, _ in frames:
            cuts = sorted({*range(1, min(len(frame), 40)), len(frame) // 2, len(frame) - 1})
            for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True):
                client.send(frame[a:b])
                time.sleep(0.005)
            client.wait_ack(chunk)
        client.close()
        assert agg.terminate() == 0
    finally:
        agg.kill()
    warehouse = str(tmp_path / "warehouse")
    rows = select_table("container_logs", warehouse, subprocess_env, in_process=True)
    assert Counter(r["message"] for r in rows) == Counter(m for *_, msgs in frames for m in msgs)
