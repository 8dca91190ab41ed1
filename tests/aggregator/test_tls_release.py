"""A TLS connection the server closes, or whose client closed, releases its socket promptly.

Defect: after an idle timeout or a protocol error the server sent close_notify and asyncio
waited up to its 30 s SSL shutdown timeout for the client's, holding the socket (and its file
descriptor) long after ``logq_aggregator_connections`` said it was closed. The aggregator runs
in the test's event loop; its sockets are read from ``/proc/net/tcp``: a socket still held by a
process has an inode there, one it closed has none.

The release drops a socket only once its client stops taking what is queued for it: a client
that reads its acks slowly gets them all (:func:`aggregator.server._release`, tested directly on
a plain TCP connection whose kernel buffers are made small).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aggregator import server as server_mod
from aggregator import service as service_mod
from aggregator.config import Settings
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record
from tests.aggregator.test_disk_full import _wait_for
from tests.shipper.tlsgen import make_ca_and_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")

#: ``st`` of a listening socket in /proc/net/tcp.
LISTEN = "0A"
#: Far below the 30 s asyncio held such a socket, far above the idle timeout plus the close's
#: grace: a bound on the wait, never a timing the test asserts.
RELEASE_BOUND_S = 20.0


def _held_sockets(port: int) -> int:
    """Connected sockets on local ``port`` that a process still holds (inode not 0)."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] != LISTEN and fields[9] != "0":
            held += 1
    return held


def _client(ca: Path, port: int, name: str) -> ssl.SSLSocket:
    """A TLS client that sent one chunk and read its ack."""
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    entries = [(time.time_ns(), record(name, service="tls"))]
    sock.sendall(wire.encode_packed_forward("logq.tls", entries, chunk=name))
    assert read_acks(sock, 1) == [name]
    return sock


def test_tls_sockets_are_released_after_an_idle_timeout_and_a_client_close(
    tmp_path: Path,
) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
        tls_cert=str(cert),
        tls_key=str(key),
        idle_timeout=1.0,
        max_connections=2,
    )
    agg = service_mod.Aggregator(settings)
    silent: list[ssl.SSLSocket] = []

    def released() -> bool:
        return _held_sockets(agg.port) == 0 and agg.metrics.connections._value.get() == 0

    async def until_released(running: asyncio.Future[int], what: str) -> None:
        deadline = time.monotonic() + RELEASE_BOUND_S
        while not released():
            assert not running.done(), "the aggregator ended"
            held = _held_sockets(agg.port)
            assert time.monotonic() < deadline, f"{held} sockets still held {what}"
            await asyncio.sleep(0.1)

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        try:
            # Clients that stay connected and answer nothing (gone, or not reading): the
            # server closes them at --idle-timeout and must not wait for their close_notify.
            for name in ("silent-1", "silent-2"):
                silent.append(await asyncio.to_thread(_client, ca, agg.port, name))
            await until_released(running, "after the idle timeout")
            # Clients that close: the --max-connections slots are free for as many again.
            for name in ("closed-1", "closed-2"):
                (await asyncio.to_thread(_client, ca, agg.port, name)).close()
            await until_released(running, "after the clients closed")
            again = [await asyncio.to_thread(_client, ca, agg.port, f"again-{i}") for i in (1, 2)]
            for sock in again:
                sock.close()
        finally:
            for sock in silent:
                sock.close()
            agg.stop()
        return await asyncio.wait_for(running, 120)

    assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    stored: Any = read_table(settings.warehouse, "container_logs")["message"].to_pylist()
    assert sorted(stored) == [
        "again-1",
        "again-2",
        "closed-1",
        "closed-2",
        "silent-1",
        "silent-2",
    ]


# --- the close's grace runs while the client takes its last bytes ---------------------------

#: Bytes queued in asyncio when the server closes: acks a client has not read yet.
BACKLOG = bytes(range(256)) * 4 * 800  # 800 KiB
#: Kernel buffers of both ends (Linux doubles them): far below BACKLOG, so most of it waits in
#: asyncio's transport, as it does for any client once the kernel buffers are full.
SMALL_BUFFER = 4096


async def _closed_with_backlog(read_slowly: bool) -> tuple[bytes, bool]:
    """A server connection that queues BACKLOG then is released (:func:`server._release`):
    what its client got, read slowly throughout, and whether the server's socket was closed
    while the client was still connected (one that reads nothing waits up to 20 s for it)."""
    queued, released = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
            writer.write(BACKLOG)
            assert writer.transport.get_write_buffer_size() > len(BACKLOG) // 2
            queued.set()
            await server_mod._release(writer, 120.0)
        except BaseException as exc:  # the test's own failure, reported below
            errors.append(exc)
            writer.transport.abort()
        finally:
            released.set()

    def client(port: int) -> tuple[bytes, bool]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(30)
        got = bytearray()
        with sock:
            if not read_slowly:
                assert queued.wait(RELEASE_BOUND_S), "the server never accepted"
                deadline = time.monotonic() + RELEASE_BOUND_S
                while _held_sockets(port) and time.monotonic() < deadline:
                    time.sleep(0.1)
                return bytes(got), not _held_sockets(port)
            while data := sock.recv(SMALL_BUFFER):
                got += data
                time.sleep(0.01)  # ~400 KB/s at best: the backlog takes 2 s or more
        return bytes(got), released.is_set()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        got, while_connected = await asyncio.to_thread(client, port)
        await asyncio.to_thread(released.wait, 60)
    if errors:
        raise errors[0]
    return got, while_connected


def test_a_closed_connection_hands_every_queued_ack_to_a_client_that_reads_slowly() -> None:
    """Review of a1: the close dropped the connection 1 s after it began, with the acks still
    queued in asyncio for a client that was reading them, only more slowly than that (its
    kernel buffers full): it then resent chunks that were stored, and a resend that goes to
    another aggregator (this one stopping) is stored twice. The grace now runs from the
    client's last progress: a client that reads gets every byte."""
    got, _ = asyncio.run(asyncio.wait_for(_closed_with_backlog(read_slowly=True), 120))
    assert len(got) == len(BACKLOG) and got == BACKLOG


def test_a_closed_plain_connection_whose_client_reads_nothing_is_dropped() -> None:
    """A plain TCP client that takes none of its last bytes, and stays connected, does not
    hold the socket: dropped once the grace passes without progress (asyncio waited for it
    for ever)."""
    got, while_connected = asyncio.run(
        asyncio.wait_for(_closed_with_backlog(read_slowly=False), 120)
    )
    assert while_connected, "the socket was held while the client read nothing"
    assert got == b""
