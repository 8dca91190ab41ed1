"""A client that gives up waiting for an ack (past its ack timeout) closes the connection and
resends the message, here or to another aggregator. An aggregator that was stalled meanwhile (a
SIGSTOP, a VM pause, heavy swapping) still finds the message in its socket when it resumes: it
must not store it, or its lines are stored twice. A message without a chunk id is stored all
the same: its client cannot resend it. A client that half-closes right after sending and reads
its acks has given up nothing: its messages are stored and acked.

The server tests run a :class:`aggregator.server.ForwardServer` in the test's event loop: while
the test makes blocking socket calls the loop is held, which is the stall, and "the client
closed before the server read" is a state the test holds (the kernel's TCP state of the
server's socket is waited for), not a race. The stall must outlast
:data:`aggregator.server.GIVEN_UP_AFTER_S` (made short here; the test blocks the loop for that
long: that is the stall, not a wait for a condition). The last test runs two real aggregators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator import server as server_module
from aggregator.metrics import Metrics
from shipper import wire
from shipper.config import Endpoint
from shipper.sender import ForwardClient, rendezvous_order
from tests.aggregator.helpers import (
    AggregatorProc,
    read_acks,
    read_table,
    record,
    serving,
    start_aggregator,
)
from tests.aggregator.test_inflight import HeldBuffer, _run, _until
from tests.support.metrics import metrics_base, sample
from tests.support.procs import wait_until

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the server tells a closed peer by Linux's TCP_INFO"
)

#: ``st`` of /proc/net/tcp for CLOSE_WAIT: the peer's FIN was received.
CLOSE_WAIT = "08"
#: ``st`` of /proc/net/tcp for ESTABLISHED.
ESTABLISHED = "01"
#: ``st`` of /proc/net/tcp for LISTEN.
LISTEN = "0A"
#: The in-process tests' :data:`aggregator.server.GIVEN_UP_AFTER_S`, and how long their stall
#: lasts (past it).
GIVEN_UP_AFTER_S = 0.3
STALL_S = 0.5


@pytest.fixture
def short_stall(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A short stall counts as giving up: the in-process tests hold the loop for less long."""
    monkeypatch.setattr(server_module, "GIVEN_UP_AFTER_S", GIVEN_UP_AFTER_S)
    yield


def _message(name: str, lines: int, chunk: bool = True) -> bytes:
    now = time.time_ns()
    entries = [
        (now, record(f"{name} {i}", source_id=f"host/{name}", offset=i + 1)) for i in range(lines)
    ]
    return wire.encode_packed_forward(f"logq.{name}", entries, chunk=name if chunk else None)


def _tcp_state(local_port: int, remote_port: int) -> str | None:
    """The TCP state (``st``, hex) of the IPv4 socket ``local_port`` -> ``remote_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
            remote_port
        ):
            return state
    return None


def _send_and_close(port: int, message: bytes) -> None:
    """Blocking (the event loop, and so the server, is held): connect, send, close, wait until
    the server's end of the connection has the FIN (CLOSE_WAIT), and stall on past
    :data:`STALL_S` after the send (the client gave up after its ack timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(message)
        sent = time.monotonic()
        client_port = sock.getsockname()[1]
    wait_until(lambda: _tcp_state(port, client_port) == CLOSE_WAIT, 15, "the FIN at the server")
    time.sleep(max(0.0, sent + STALL_S - time.monotonic()))  # the stall itself


def _abandoned(metrics: Metrics, outcome: str) -> float:
    return metrics.abandoned.labels(outcome)._value.get()


def test_a_message_whose_client_closed_before_it_was_read_is_not_stored(
    caplog: pytest.LogCaptureFixture, short_stall: None
) -> None:
    async def scenario() -> None:
        buffer, metrics = HeldBuffer(), Metrics()
        async with serving(buffer, metrics) as (server, _, port):
            given_up = _message("given-up", 5) + _message("given-up-too", 3)
            no_acks = _message("no-acks", 4, chunk=False)
            # The stall: the loop runs none of the server's code while these calls block.
            _send_and_close(port, given_up)
            _send_and_close(port, no_acks)
            total = len(given_up) + len(no_acks)
            await _until(lambda: metrics.bytes_in._value.get() == total)

            def durable_and_done() -> bool:
                for wait in buffer.waits:  # whatever was appended is made durable
                    if not wait.done():
                        wait.set_result(None)
                return not server._conns

            await _until(durable_and_done)
            # The message of the client that asked for no acks is stored: it cannot resend.
            assert len(buffer.frames) == 1
            assert b"no-acks 3" in buffer.frames[0]
            assert _abandoned(metrics, "dropped") == 2
            assert _abandoned(metrics, "stored") == 0
            assert metrics.acks._value.get() == 0

    with caplog.at_level("WARNING", logger="logq.aggregator.server"):
        _run(scenario())
    (warning,) = [r.getMessage() for r in caplog.records if "closed its connection" in r.message]
    assert "before 2 messages it sent (8 lines) were buffered: not stored here" in warning


def test_a_client_that_closes_while_its_message_is_made_durable_is_counted(
    caplog: pytest.LogCaptureFixture, short_stall: None
) -> None:
    """The window the server cannot close: read, appended, the fsync slow (a degraded volume),
    and the client gives up before it ends. The message is stored and its ack goes nowhere:
    counted, and said, since the client's resend may store its lines a second time."""

    async def scenario() -> None:
        buffer, metrics = HeldBuffer(), Metrics()
        async with serving(buffer, metrics) as (_, host, port):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(_message("slow-fsync", 5))
            await _until(lambda: len(buffer.frames) == 1)  # appended, not durable yet
            client_port = writer.get_extra_info("sockname")[1]
            writer.close()
            await writer.wait_closed()
            await _until(lambda: _tcp_state(port, client_port) == CLOSE_WAIT)
            await asyncio.sleep(STALL_S)  # the slow fsync, past the client's ack timeout
            buffer.sync(0)
            await _until(lambda: _abandoned(metrics, "stored") == 1, timeout=10)
            assert _abandoned(metrics, "dropped") == 0

    with caplog.at_level("WARNING", logger="logq.aggregator.server"):
        _run(scenario())
    assert any(
        "closed its connection while 1 messages it sent were being made durable" in r.message
        and "may be stored twice" in r.message
        for r in caplog.records
    )


def test_a_client_still_connected_gets_its_ack_and_its_lines_stored() -> None:
    """The check does not touch the usual case, nor a client that half-closes only after its
    ack came."""

    async def scenario() -> None:
        buffer, metrics = HeldBuffer(), Metrics()
        async with serving(buffer, metrics) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_message("kept", 5))
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            unpacker = wire.new_unpacker()
            while not (acks := list(unpacker)):
                data = await reader.read(4096)
                assert data, "closed before the ack"
                unpacker.feed(data)
            assert [wire.decode_ack(a) for a in acks] == ["kept"]
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            assert _abandoned(metrics, "dropped") == _abandoned(metrics, "stored") == 0

    _run(scenario())


def _durable(buffer: HeldBuffer) -> None:
    """Make every frame appended so far durable."""
    for wait in buffer.waits:
        if not wait.done():
            wait.set_result(None)


async def _send_half_close_and_read(port: int, payload: bytes) -> bytes:
    """Send, half-close (FIN: the server's socket goes CLOSE_WAIT), then read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return data


async def _serve_half_closed(payload: bytes) -> tuple[bytes, HeldBuffer, Metrics]:
    """What a client that half-closes right after sending reads back, with the server's buffer
    and metrics."""
    buffer, metrics = HeldBuffer(), Metrics()
    async with serving(buffer, metrics) as (_, _, port):
        client = asyncio.create_task(_send_half_close_and_read(port, payload))

        def synced_and_answered() -> bool:
            _durable(buffer)  # every frame appended is made durable as it comes
            return client.done()

        await _until(synced_and_answered, timeout=30)
        return await client, buffer, metrics


def test_a_msgpack_client_that_half_closes_and_waits_gets_its_ack() -> None:
    """``shutdown(SHUT_WR)`` right after sending, then reading the acks (a script, a proxy
    that passes the half-close on): the FIN is there when the server reads, but the client
    gave nothing up. Found by the R4s18 review (it was dropped, and again at each resend)."""
    data, buffer, metrics = _run(_serve_half_closed(_message("half-closed", 3)))
    unpacker = wire.new_unpacker()
    unpacker.feed(data)
    acks = [wire.decode_ack(o) for o in unpacker]
    assert acks == ["half-closed"], (acks, _abandoned(metrics, "dropped"))
    assert len(buffer.frames) == 1
    assert _abandoned(metrics, "dropped") == _abandoned(metrics, "stored") == 0


def test_a_json_client_that_half_closes_and_waits_gets_its_ack() -> None:
    """The JSON text path Fluentd's in_forward also reads (``printf '[...]' | nc -N``)."""
    msg = json.dumps(["logq.json", 1700000000, {"log": "hello\n"}, {"chunk": "json-1"}]).encode()
    data, buffer, metrics = _run(_serve_half_closed(msg))
    assert b"json-1" in data, (data, _abandoned(metrics, "dropped"))
    assert len(buffer.frames) == 1


def test_a_dropped_message_resent_to_the_same_aggregator_is_stored_and_acked(
    short_stall: None,
) -> None:
    """The drop leaves the recent chunks alone, so the client's resend here is stored."""

    async def scenario() -> None:
        buffer, metrics = HeldBuffer(), Metrics()
        async with serving(buffer, metrics) as (_, _, port):
            message = _message("resent", 4)
            _send_and_close(port, message)  # the stall: dropped when the loop resumes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message)
            unpacker = wire.new_unpacker()
            acks: list[object] = []
            while not acks:
                _durable(buffer)
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.05)
                except TimeoutError:
                    continue
                assert data
                unpacker.feed(data)
                acks = [wire.decode_ack(o) for o in unpacker]
            writer.close()
            assert acks == ["resent"]
            assert len(buffer.frames) == 1
            assert _abandoned(metrics, "dropped") == 1

    _run(scenario())


@contextlib.contextmanager
def _stopped_at_the_end(*aggs: AggregatorProc) -> Iterator[None]:
    """Stop ``aggs`` when the block ends: each must exit 0 (it drained cleanly) when the block
    ran to its end; any the block left stopped (SIGSTOP) when it failed is resumed first, so
    that no aggregator outlives the test."""
    try:
        yield
        for agg in aggs:
            assert agg.stop() == 0
    finally:
        for agg in aggs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agg.proc.pid, signal.SIGCONT)
            agg.stop()


@pytest.mark.integration
def test_an_aggregator_stalled_past_the_ack_timeout_does_not_store_the_resent_lines(
    tmp_path: Path,
) -> None:
    """The auditor's scenario (A2s18 F1): n0 stopped (SIGSTOP) longer than the client's ack
    timeout; the client closes, resends to n1, which stores and acks; n0 resumes (SIGCONT) with
    the message still in its socket. Each line must be stored once."""
    extra = ["--metrics-listen", "127.0.0.1:0"]
    n0 = start_aggregator(tmp_path, extra=[*extra, "--node-id", "n0"], name="n0")
    n1 = start_aggregator(tmp_path, extra=[*extra, "--node-id", "n1"], name="n1")
    batch = _message("batch", 40)
    no_acks = _message("no-acks", 3, chunk=False)
    with _stopped_at_the_end(n0, n1):
        n0_metrics = metrics_base(n0.log_text())
        os.killpg(n0.proc.pid, signal.SIGSTOP)
        try:
            with n0.connect() as sock:  # the kernel accepts while the process is stopped
                sock.sendall(batch)
                with pytest.raises(TimeoutError):  # the client's ack timeout runs out, and
                    # the stall outlasts the time after which a closed client gave up
                    read_acks(sock, 1, timeout=server_module.GIVEN_UP_AFTER_S + 0.5)
            with n0.connect() as sock:
                sock.sendall(no_acks)  # fluent-logger: sends, closes, never resends
            with n1.connect() as sock:
                sock.sendall(batch)  # the resend, to the other aggregator
                assert read_acks(sock, 1) == ["batch"]
        finally:
            os.killpg(n0.proc.pid, signal.SIGCONT)
        wait_until(
            lambda: (
                sample(n0_metrics, "logq_aggregator_bytes_received_total")
                >= len(batch) + len(no_acks)
            ),
            30,
            "n0 reads what waited in its sockets",
            proc=n0.proc,
            log=n0.log,
        )
        dropped = sample(n0_metrics, 'logq_aggregator_abandoned_messages_total{outcome="dropped"}')
    messages = sorted(read_table(n0.warehouse, "container_logs")["message"].to_pylist())
    expected = sorted([f"batch {i}" for i in range(40)] + [f"no-acks {i}" for i in range(3)])
    assert messages == expected
    assert dropped == 1
    assert "closed its connection before 1 messages it sent (40 lines)" in n0.log_text()


def _first_for(endpoint: Endpoint, endpoints: tuple[Endpoint, ...]) -> str:
    """A source id that rendezvous hashing sends to ``endpoint`` first."""
    return next(
        name
        for name in (f"source-{i}" for i in range(1000))
        if rendezvous_order(name, endpoints)[0] == endpoint
    )


def _server_states(port: int) -> set[str]:
    """The TCP states (``st``, hex) of the server's ends of the connections to IPv4 ``port``."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] != LISTEN:
            states.add(fields[3])
    return states


@pytest.mark.integration
def test_a_shipper_with_a_short_ack_timeout_fails_over_from_a_stalled_aggregator_once(
    tmp_path: Path,
) -> None:
    """x2's chaos run: two aggregators, logq-shipper's ``--ack-timeout 1``, one aggregator
    stopped (SIGSTOP) for 1-5 s stored lines twice. The shipper gave up on a batch, closed the
    connection (FIN) and resent the batch to the other aggregator; the stopped one resumed less
    than :data:`aggregator.server.GIVEN_UP_AFTER_S` after the batch reached its socket, so it
    took the FIN for a client that half-closes and waits for its acks, and stored the batch
    too. The shipper now resets the connection it gives up on (RST), which the aggregator tells
    apart from a half-close whatever the delay: the batch is stored once."""
    n0 = start_aggregator(tmp_path, extra=["--node-id", "n0"], name="n0")
    n1 = start_aggregator(tmp_path, extra=["--node-id", "n1"], name="n1")
    endpoints = (Endpoint("127.0.0.1", n0.port), Endpoint("127.0.0.1", n1.port))
    source = _first_for(endpoints[0], endpoints)
    batch = _message("batch", 40)

    async def deliver() -> Endpoint:
        # n0 stays down past the resend (at least half of backoff_base): a backoff of a few ms
        # let a loaded machine's resend go back to the stopped n0.
        client = ForwardClient(
            endpoints, hostname="test-host", ack_timeout=0.3, backoff_base=60.0, backoff_cap=60.0
        )
        gave_up = asyncio.Event()

        def on_retry(_: str) -> None:
            client.ack_timeout = 30.0  # n1 just started: its first ack may take a while
            gave_up.set()

        client.on_retry = on_retry
        try:
            delivery = asyncio.create_task(client.deliver(batch, "batch", affinity=source))
            await gave_up.wait()
            # n0 resumes once the client's close reached its socket: 0.3 s after the batch
            # did, well within GIVEN_UP_AFTER_S.
            await asyncio.to_thread(
                wait_until,
                lambda: ESTABLISHED not in _server_states(n0.port),
                15,
                "the client's close",
            )
            os.killpg(n0.proc.pid, signal.SIGCONT)
            return await delivery
        finally:
            await client.close()

    with _stopped_at_the_end(n0, n1):
        os.killpg(n0.proc.pid, signal.SIGSTOP)
        try:
            assert _run(deliver()) == endpoints[1]
        finally:
            os.killpg(n0.proc.pid, signal.SIGCONT)
        wait_until(
            lambda: not _server_states(n0.port),
            30,
            "n0 reads what waited in its socket and closes the connection",
            proc=n0.proc,
            log=n0.log,
        )
    messages = sorted(read_table(n0.warehouse, "container_logs")["message"].to_pylist())
    assert messages == sorted(f"batch {i}" for i in range(40)), "stored by n0 and n1 both"
