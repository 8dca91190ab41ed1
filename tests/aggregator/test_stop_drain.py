"""A graceful stop reads what a client without acks had sent before the drain window ended
(aggregator/stop_reads.py, ``ForwardServer.stop``).

Defect: the stop flagged every connection, waited ``STOP_DRAIN_SECONDS``, then cancelled those
waiting in a read; but the msgpack loop was ``while not conn.stopping``, so a connection busy
when the stop came (waiting for the fsync of message A) went back to the loop top, saw the flag
and left without reading message B, already in its socket. fluent-logger, Fluent Bit and
Fluentd without ``require_ack_response`` cannot resend it: B was lost. The JSON loop had no
such check and read on, for as long as its client sent, until the stop's grace ran out.

Now the window's end cuts each connection's reader at what had reached this host: the busy
connection reads B after A's fsync, drops the unfinished message behind it (as before), and
reads nothing its client sent after the cut. The fsync of A is held by a gate on ``os.fsync``
(buffer segments only), as the fault injection of test_fsync_failure.py; the end of the window
is seen by an idle connection the stop closes then.

Behind a full reader, what reached this host waits in the kernel's receive queue; over TLS that
is ciphertext, which the cut used to leave unread (messages lost): it is now deciphered up to the
last TLS record wholly queued at the cut, and no further.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import itertools
import json
import os
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator import service as service_mod
from aggregator.config import Settings
from aggregator.stop_reads import _kernel_queue
from shipper import wire
from tests.aggregator.helpers import REAL_FSYNC, is_segment, read_table, record
from tests.aggregator.test_disk_full import _wait_for
from tests.shipper.tlsgen import make_ca_and_server
from tests.support.procs import closed_unanswered

TAG = "logq.drain"


class HeldFsync:
    """``os.fsync`` whose next fsync of a buffer segment, once armed, waits for ``release``
    (a slow disk, for one message); every other fsync is real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        if self.armed and is_segment(fd):
            self.armed = False
            self.entered.set()
            assert self.release.wait(60), "the test never released the held fsync"
        REAL_FSYNC(fd)


def _message(text: str, encoding: str) -> bytes:
    """One message without a ``chunk`` option (no ack asked, as fluent-logger sends)."""
    rec = record(text, service="drain")
    if encoding == "json":
        return json.dumps([TAG, int(time.time()), rec]).encode()
    return wire.encode_message(TAG, time.time_ns(), rec)


def _connect(port: int, ca: Path | None) -> socket.socket:
    """A client connection; over TLS when ``ca`` (its handshake done) is given."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if ca is None:
        return sock
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(sock, server_hostname="127.0.0.1")


def _aggregator(
    tmp_path: Path, transport: str
) -> tuple[Path | None, Settings, service_mod.Aggregator]:
    """An aggregator on a free port (with ``tls``: a certificate of a new CA), flushing only at
    its stop: (the CA to trust, or None; its settings; it)."""
    ca, cert, key = make_ca_and_server(tmp_path) if transport == "tls" else (None, None, None)
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=300,
        tls_cert=str(cert) if cert else None,
        tls_key=str(key) if key else None,
    )
    return ca, settings, service_mod.Aggregator(settings)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("encoding", ["msgpack", "json"])
@pytest.mark.parametrize("tail", ["unfinished", "after the window"])
def test_a_stop_stores_what_a_busy_connection_had_received_and_nothing_sent_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str, tail: str, transport: str
) -> None:
    """A no-ack client sends A; while A's fsync is held it sends B (and with ``unfinished``
    half of C); the stop comes and its drain window ends (the idle connection is closed);
    (with ``after the window`` the client then sends D;) the fsync is released. A and B are in
    the warehouse after the stop, C (unfinished) and D (sent after the window) are not, and
    the stop ends with 0. Before the fix: B was lost (msgpack); the JSON loop read D too.
    Over TLS B is deciphered as it comes (the reader is not full, the kernel queue empty at
    the cut): it is in the reader, and D is not read either."""
    ca, settings, agg = _aggregator(tmp_path, transport)
    exits: list[int] = []
    agg._exit_now = exits.append  # type: ignore[method-assign]
    disk = HeldFsync(monkeypatch)
    c = _message("C unfinished", encoding)

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        try:
            await _wait_for(lambda: agg.port, running, "start")
            idle = await asyncio.to_thread(_connect, agg.port, ca)
            client = await asyncio.to_thread(_connect, agg.port, ca)
            with idle, client:
                assert agg.server is not None
                await _wait_for(lambda: len(agg.server._conns) == 2, running, "2 connections")
                disk.armed = True
                client.sendall(_message("A durable slowly", encoding))
                assert await asyncio.to_thread(disk.entered.wait, 30), "A was never fsync'd"
                unfinished = c[: len(c) // 2] if tail == "unfinished" else b""
                client.sendall(_message("B behind A", encoding) + unfinished)
                agg._stop_requested()
                assert await asyncio.to_thread(closed_unanswered, idle, 30), "no end of the window"
                if tail == "after the window":
                    client.sendall(_message("D after the window", encoding))
                disk.release.set()
                return await asyncio.wait_for(running, 120)
        finally:
            disk.release.set()

    assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    assert not exits
    stored = sorted(read_table(settings.warehouse, "container_logs")["message"].to_pylist())
    assert stored == ["A durable slowly", "B behind A"]


def _unacked(sock: socket.socket) -> int:
    """Bytes ``sock`` sent that its peer's kernel has not acknowledged (Linux ``SIOCOUTQ``):
    the rest reached the aggregator's host, in its socket or its reader."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0])


def _sealing_client(port: int, ca: Path | None) -> tuple[socket.socket, Callable[[bytes], bytes]]:
    """A client connection and what a message becomes on its wire. Over TLS (``ca``) the
    records are made here (``ssl.SSLObject``, the handshake done), one message to a record,
    so the test knows where each message's ciphertext ends in the TCP stream."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if ca is None:
        return sock, bytes
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=str(ca))
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "the aggregator closed the connection during the TLS handshake"
            incoming.write(data)
    sock.sendall(outgoing.read())

    def seal(message: bytes) -> bytes:
        tls.write(message)
        return outgoing.read()

    return sock, seal


def _send_rest(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` (after the window) until the aggregator closes the connection."""
    sock.setblocking(True)
    sock.settimeout(60)
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _server_queue(agg: service_mod.Aggregator, client: socket.socket) -> int:
    """Bytes waiting in the kernel receive queue of the aggregator's end of ``client``."""
    assert agg.server is not None
    peer = "{}:{}".format(*client.getsockname())
    (conn,) = (c for c in agg.server._conns.values() if c.peer == peer)
    assert conn.reader is not None
    return _kernel_queue(conn.reader._socket)


async def _fill(
    agg: service_mod.Aggregator, client: socket.socket, stream: bytes, queue: str
) -> int:
    """Send ``stream`` from the start; how much was sent. ``full``: until the socket takes
    nothing for 0.2 s (the aggregator's reader and kernel queue full, and a little on the
    client's host). ``partly``: until the aggregator's kernel holds 64 KiB behind its full
    reader, with room for more."""
    sent = stalled = 0
    while sent < len(stream) and stalled < 20:
        if queue == "partly" and _server_queue(agg, client) >= 65536:
            return sent
        try:
            sent += client.send(stream[sent : sent + (65536 if queue == "full" else 4096)])
            stalled = 0
        except BlockingIOError:
            stalled += 1
        await asyncio.sleep(0.01)
    assert queue == "full", "the kernel queue filled before it held 64 KiB: send less"
    assert sent < len(stream), "send more: the client's socket never filled"
    return sent


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("queue", ["full", "partly"])
def test_a_stop_also_reads_what_waits_in_the_kernel_behind_a_full_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str, queue: str
) -> None:
    """While A's fsync is held, the no-ack client writes messages: the connection's reader
    fills and asyncio stops pulling from the socket, so much of what reached this host waits
    in the kernel's receive queue when the window ends (``full``: until the client's socket
    takes no more; ``partly``: 64 KiB). After the window the client sends the rest, which
    lands behind it in that queue (``partly``: at once). Every message that had reached this
    host is stored (counted from what the client's kernel says the aggregator's acknowledged),
    in order, and none the client had not sent when the window ended.

    Over TLS that queue is ciphertext. Before the fix only what had been deciphered was read
    (``full``: thousands of messages lost). A fix that counted raw bytes but let asyncio's
    socket reads (up to 256 KiB) run on would decipher the bytes sent after the window along
    with the last ones before it (``partly``)."""
    ca, settings, agg = _aggregator(tmp_path, transport)
    agg._exit_now = lambda code: None  # type: ignore[method-assign]
    disk = HeldFsync(monkeypatch)
    figures: dict[str, int] = {}
    ends: list[int] = []  # where each bulk message's bytes end in the client's TCP stream

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        try:
            await _wait_for(lambda: agg.port, running, "start")
            idle = await asyncio.to_thread(_connect, agg.port, ca)
            client, encode = await asyncio.to_thread(_sealing_client, agg.port, ca)
            with idle, client:
                assert agg.server is not None
                await _wait_for(lambda: len(agg.server._conns) == 2, running, "2 connections")
                first = encode(_message("A durable slowly", "msgpack"))  # records in order
                wire_bytes = [encode(_message(f"B{i:07d}", "msgpack")) for i in range(20_000)]
                ends.extend(itertools.accumulate(len(b) for b in wire_bytes))
                stream = b"".join(wire_bytes)
                disk.armed = True
                client.sendall(first)
                assert await asyncio.to_thread(disk.entered.wait, 30), "A was never fsync'd"
                # A small send buffer: little of what the client sent waits on its own host,
                # so "sent when the window ended" is close to what had reached the aggregator.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                client.setblocking(False)
                sent = await _fill(agg, client, stream, queue)
                agg._stop_requested()
                assert await asyncio.to_thread(closed_unanswered, idle, 30), "no end of the window"
                figures.update(sent=sent, reached=sent - _unacked(client))
                rest = asyncio.ensure_future(asyncio.to_thread(_send_rest, client, stream[sent:]))
                disk.release.set()
                code = await asyncio.wait_for(running, 120)
                await asyncio.wait_for(rest, 120)
                return code
        finally:
            disk.release.set()

    assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    stored = read_table(settings.warehouse, "container_logs")["message"].to_pylist()
    assert stored.count("A durable slowly") == 1
    behind = sorted(m for m in stored if m.startswith("B"))
    assert behind == [f"B{i:07d}" for i in range(len(behind))], "stored in order, none skipped"
    reached = bisect.bisect_right(ends, figures["reached"])  # messages wholly on this host
    sent = bisect.bisect_right(ends, figures["sent"])  # messages wholly sent in the window
    assert reached <= len(behind) <= sent < len(ends), (figures, reached, sent, len(behind))
