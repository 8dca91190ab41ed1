"""A /metrics scrape never holds the event loop that acks Forward messages (A2s19 #1).

In process: a collector registered in the aggregator's registry stands for a huge page (20,000
services made it 22 MB and 3-16 s to render): it blocks until the test releases it, then
yields 8 MB, more than loopback's socket buffers hold for a client that does not read.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from aggregator import metrics as metrics_mod
from aggregator import service as service_mod
from aggregator.config import Settings
from shipper import wire
from shipper.metric_bounds import MAX_METRICS_CONNECTIONS, SILENT_EVICT_SECONDS
from tests.aggregator.helpers import http_get, record

#: The label value that makes the page large.
BIG = "x" * (8 * 1024 * 1024)


class HugePage:
    """A collector that blocks its render until ``release`` (at most ``timeout`` seconds, so
    a failing test ends), then yields :data:`BIG`."""

    def __init__(self, timeout: float) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        self.started.set()
        self.release.wait(self.timeout)
        page = GaugeMetricFamily("test_huge_page", "stands for 20,000 services", labels=["v"])
        page.add_metric([BIG], 1.0)
        yield page


def _scraper() -> socket.socket:
    """A client that sends ``GET /metrics`` and never reads (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def _ack_in_thread(port: int, chunk: str, text: str, timeout: float) -> str | None:
    """Send one message from a blocking client; its ack, or None if none came in ``timeout``
    seconds (a thread: the test's event loop is the aggregator's, which a bug could hold)."""
    entries = [(time.time_ns(), record(text, service="during-scrape"))]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(wire.encode_packed_forward("logq.scrape", entries, chunk=chunk))
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    return None
                unpacker.feed(data)
                for obj in unpacker:
                    return wire.decode_ack(obj)
        except TimeoutError:
            return None


def _good_client(
    agg: service_mod.Aggregator,
    huge: HugePage,
    may_send: threading.Event,
    acks: list[str | None],
) -> None:
    """Once the page renders (and the test says so, or 30 s passed): one message, its ack
    (None if none came in 30 s) in ``acks``; then let the render go on."""
    try:
        huge.started.wait(60)
        may_send.wait(30)
        acks.append(_ack_in_thread(agg.port, "c1", "during", 30.0))
    finally:
        huge.release.set()


def _reset(sock: socket.socket) -> bool:
    """Whether the server reset (dropped) the connection: a pending ECONNRESET, seen without
    reading any of the reply (and cleared by this look: ask once per connection)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET


def _refused(port: int) -> bool:
    """Whether a new connection is closed by the server without an answer to its request."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):  # reset, maybe before connect() returned
        return True
    except TimeoutError:
        return False


def test_acks_flow_while_a_scrape_renders_and_scrapers_that_do_not_read_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_mod, "WRITE_TIMEOUT_SECONDS", 1.0)
    settings = Settings(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
    )
    agg = service_mod.Aggregator(settings)
    huge = HugePage(timeout=60)
    agg.metrics.registry.register(huge)
    scrapers = [_scraper() for _ in range(MAX_METRICS_CONNECTIONS)]
    # The good client is a thread of its own: a render on the event loop would hold the test's
    # code too, and only this thread would then release it (after its ack or its 30 s).
    may_send = threading.Event()
    acks: list[str | None] = []
    client = threading.Thread(
        target=_good_client, args=(agg, huge, may_send, acks), name="good-client", daemon=True
    )

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        try:
            while agg.metrics_server is None or not agg.port or agg.metrics_server.port == 0:
                await asyncio.sleep(0.05)
            await _steps(agg.metrics_server)
        finally:
            huge.release.set()
            for sock in scrapers:  # before the stop, which would wait for their connections
                sock.close()
            agg.stop()
            status = await asyncio.wait_for(running, 120)
        assert status == 0

    async def _steps(server: metrics_mod.MetricsServer) -> None:
        client.start()
        for sock in scrapers:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        while server.open_connections < len(scrapers):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(huge.started.wait, 60)

        # Every slot held, the page still rendering: one more connection is closed at once.
        assert await asyncio.to_thread(_refused, server.port), f"not refused; acks: {acks}"
        refused = "logq_aggregator_metrics_connections_refused_total"
        assert agg.metrics.registry.get_sample_value(refused) == 1

        # The render holds a worker thread, not the event loop: the message is acked.
        may_send.set()
        await asyncio.to_thread(client.join, 60)
        assert acks == ["c1"], "no ack while a scrape was rendering"

        # The page is 8 MB; none of the scrapers reads it: each is dropped after the timeout.
        dropped: set[int] = set()
        deadline = time.monotonic() + 60  # the timeout is 1 s here
        while len(dropped) < len(scrapers) and time.monotonic() < deadline:
            dropped |= {i for i, sock in enumerate(scrapers) if i not in dropped and _reset(sock)}
            await asyncio.sleep(0.1)
        assert len(dropped) == len(scrapers), f"{len(dropped)} of {len(scrapers)} dropped"
        while server.open_connections:
            await asyncio.sleep(0.05)
        status, body = await http_get(server.port, "/metrics")
        assert status == 200 and BIG in body and "logq_aggregator_acks_total 1.0" in body

    try:
        asyncio.run(asyncio.wait_for(scenario(), 180))
    finally:
        huge.release.set()
        for sock in scrapers:
            sock.close()


def test_connections_that_never_send_a_request_do_not_lock_scrapes_out() -> None:
    """Sixteen connections that open the metrics port and send nothing (a port scanner, a
    broken probe, a slowloris) held every slot for the 10 s request timeout, over and over: each
    scrape and each ``/healthz`` probe meanwhile was reset, so a liveness probe could restart a
    healthy aggregator. A newcomer now takes the slot of the connection silent the longest."""

    async def scenario() -> None:
        metrics = metrics_mod.Metrics()
        metrics.starting = None  # started: /healthz says ok
        server = metrics_mod.MetricsServer(metrics, "127.0.0.1", 0)
        await server.start()
        silent: list[socket.socket] = []
        try:
            for _ in range(MAX_METRICS_CONNECTIONS):
                silent.append(socket.create_connection(("127.0.0.1", server.port)))
            while server.open_connections < MAX_METRICS_CONNECTIONS:
                await asyncio.sleep(0.05)
            await asyncio.sleep(SILENT_EVICT_SECONDS + 0.2)
            status, body = await http_get(server.port, "/healthz")
            assert (status, body) == (200, "ok\n")
            # The probe's slot is free again: the scrape takes it, nobody else goes.
            status, body = await http_get(server.port, "/metrics")
            assert status == 200 and "logq_aggregator_acks_total" in body
            assert [_reset(sock) for sock in silent] == [True] + [False] * (len(silent) - 1)
            refused = "logq_aggregator_metrics_connections_refused_total"
            assert metrics.registry.get_sample_value(refused) == 1
            while server.open_connections != MAX_METRICS_CONNECTIONS - 1:
                await asyncio.sleep(0.05)
        finally:
            for sock in silent:
                sock.close()
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
