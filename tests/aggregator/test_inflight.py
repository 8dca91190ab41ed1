"""The in-flight byte budget shared by all connections (``--max-inflight-bytes``).

Unit tests drive :class:`aggregator.inflight.InflightBytes` step by step; the server tests run a
:class:`aggregator.server.ForwardServer` in the test's event loop over a buffer whose fsyncs the
test completes by hand, so "a message is still in flight" is a state the test holds, not a
race; the last one runs the real program with a tiny budget.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aggregator.server as server_mod
from aggregator.arguments import add_serve_flags
from aggregator.config import ConfigError, load_settings
from aggregator.inflight import InflightBytes
from aggregator.metrics import Metrics
from aggregator.server import FIRST_READ, ServerLimits
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, serving, start_aggregator


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for ``condition`` (checked as the event loop runs), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


# --- the budget alone ---------------------------------------------------------------------------


def test_past_the_limit_readers_wait_and_are_served_in_turn() -> None:
    async def scenario() -> list[str]:
        budget = InflightBytes(100, first_read=10)
        a, b, c = budget.share(), budget.share(), budget.share()
        a.take(95)  # a's message is being received: 95 of 100 in flight
        served: list[str] = []

        async def first_read(name: str, share: Any) -> None:
            await share.wait_for_room()
            served.append(name)

        tasks = [asyncio.create_task(first_read("b", b))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(first_read("c", c)))
        await _until(lambda: budget.waiting == 2)
        assert served == []  # neither b nor c may read: 95 + 10 > 100
        a.keep(0)  # a's message is durable
        await asyncio.gather(*tasks)
        assert (budget.used, b.held, c.held) == (0, 0, 0)  # waiting for a client holds nothing
        return served

    assert _run(scenario()) == ["b", "c"]


def test_a_message_begun_earlier_goes_before_one_not_begun() -> None:
    async def scenario() -> list[str]:
        budget = InflightBytes(100, first_read=10)
        holder, idle, partial = budget.share(), budget.share(), budget.share()
        holder.take(60)
        partial.take(40)  # began after holder's, before idle asks
        served: list[str] = []

        async def go(name: str, wait: Any) -> None:
            await wait
            served.append(name)

        tasks = [asyncio.create_task(go("idle", idle.wait_for_room()))]
        await _until(lambda: budget.waiting == 1)
        tasks.append(asyncio.create_task(go("partial", partial.reserve(30))))
        await _until(lambda: budget.waiting == 2)
        holder.keep(0)  # 40 in flight: room for partial's 30, then idle's 10
        await asyncio.gather(*tasks)
        return served

    assert _run(scenario()) == ["partial", "idle"]


def test_the_oldest_message_always_proceeds_even_alone_past_the_limit() -> None:
    async def scenario() -> None:
        budget = InflightBytes(100, first_read=10)
        a, b = budget.share(), budget.share()
        a.take(90)  # a's message began first
        b.take(50)  # b's too (two first reads at once pass the limit a little)
        b_waits = asyncio.create_task(b.reserve(100))
        await _until(lambda: budget.waiting == 1)
        # a's message is the oldest in flight: it goes although 140 + 100 > 100, or the two
        # half-received messages would wait on each other forever.
        assert not await a.reserve(100)
        assert budget.used == 240 and not b_waits.done()
        a.give_back(100)
        a.keep(0)
        await b_waits  # now b's is the oldest
        b.give_back(100)
        b.keep(0)
        # Alone, a message larger than the whole budget still gets in.
        lone = budget.share()
        lone.take(10)
        for _ in range(5):
            assert not await lone.reserve(300)
        assert budget.used == 1510
        lone.close()
        assert budget.used == 0 and budget.waiting == 0

    _run(scenario())


def test_a_connection_closed_while_waiting_leaves_the_queue() -> None:
    async def scenario() -> None:
        budget = InflightBytes(100, first_read=10)
        a, b, c = budget.share(), budget.share(), budget.share()
        a.take(100)
        b_task = asyncio.create_task(b.wait_for_room())
        c_task = asyncio.create_task(c.wait_for_room())
        await _until(lambda: budget.waiting == 2)
        b_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b_task
        b.close()
        assert budget.waiting == 1
        a.close()
        await c_task
        assert budget.used == 0 and budget.waiting == 0

    _run(scenario())


# --- the server ---------------------------------------------------------------------------------


class HeldBuffer:
    """A buffer whose appends are durable only when the test says so (``sync``)."""

    full = False
    disk_low = None

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.waits: list[asyncio.Future[None]] = []

    def write(self, payload: bytes, chunk: bytes | None = None) -> asyncio.Future[None]:
        self.frames.append(payload)
        self.waits.append(asyncio.get_running_loop().create_future())
        return self.waits[-1]

    def sync(self, index: int) -> None:
        self.waits[index].set_result(None)

    async def wait_for_space(self) -> None:
        return None


def _message(name: str, n: int) -> bytes:
    now = time.time_ns()
    entries = [(now, record(f"{name}-{i}-" + "x" * 200)) for i in range(n)]
    return wire.encode_packed_forward("logq.inflight", entries, chunk=name)


async def _ack(reader: asyncio.StreamReader) -> str:
    unpacker = wire.new_unpacker()
    while True:
        data = await reader.read(4096)
        assert data, "closed before the ack"
        unpacker.feed(data)
        for obj in unpacker:
            chunk = wire.decode_ack(obj)
            assert chunk is not None
            return chunk


def test_past_the_budget_another_connection_is_not_read_until_bytes_are_released() -> None:
    """A message larger than the whole budget goes in alone; while it is not durable, a second
    connection's message is neither read nor decoded; once the first is, the second goes."""

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_inflight_bytes=FIRST_READ)
        big, small = _message("big", 1500), _message("small", 10)
        assert len(big) > 4 * FIRST_READ
        async with serving(buffer, metrics, limits) as (server, host, port):
            r1, w1 = await asyncio.open_connection(host, port)
            w1.write(big)
            await _until(lambda: len(buffer.frames) == 1)  # decoded, appended, not yet durable
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(small)
            await w2.drain()
            # Either the second message is read (what the budget must prevent) or its
            # connection waits for its turn.
            await _until(lambda: len(buffer.frames) == 2 or server.inflight.waiting == 1)
            assert len(buffer.frames) == 1
            assert metrics.bytes_in._value.get() == len(big)  # not one byte of small's read
            assert server.inflight.used >= len(big)
            buffer.sync(0)
            assert await _ack(r1) == "big"
            await _until(lambda: len(buffer.frames) == 2)
            buffer.sync(1)
            assert await _ack(r2) == "small"
            assert metrics.bytes_in._value.get() == len(big) + len(small)
            await _until(lambda: server.inflight.used == 0)
            for writer in (w1, w2):
                writer.close()

    _run(scenario())


def test_decoded_messages_are_not_kept_while_their_fsync_is_awaited() -> None:
    """N connections waiting for the group fsync must not each hold a decoded message."""

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_message("kept", 2000))
            await _until(lambda: len(buffer.frames) == 1)
            (task,) = server._conns  # the connection's task, awaiting the fsync
            held = _big_locals(task.get_coro(), 64 * 1024)
            assert held == [], f"kept while awaiting the fsync: {held}"
            buffer.sync(0)
            assert await _ack(reader) == "kept"
            writer.close()

    _run(scenario())


def _big_locals(coro: Any, size: int) -> list[str]:
    """The locals of ``coro`` and of the coroutines it awaits, down the chain, that hold
    ``size`` bytes or more of a message: its bytes, its decoded form or its Arrow batch."""
    found = []
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frame = coro.cr_frame
        for name, value in frame.f_locals.items():
            items = value if isinstance(value, list | tuple) else [value]
            if any(_big(item, size) for item in items[:4]):
                found.append(f"{frame.f_code.co_name}.{name}")
        coro = coro.cr_await
    return found


def _big(value: Any, size: int) -> bool:
    import pyarrow as pa

    if isinstance(value, bytes | bytearray):
        return len(value) >= size
    if isinstance(value, pa.Table | pa.RecordBatch):
        return value.nbytes >= size
    if isinstance(value, list | tuple):  # a decoded message: [tag, blob, options]
        return any(isinstance(v, bytes) and len(v) >= size for v in value[:4])
    return False


# --- the program ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_many_connections_past_a_tiny_budget_all_get_acked_and_stored(tmp_path: Path) -> None:
    """Eight clients send a ~0.4 MB message each at once to an aggregator whose budget is
    64 KiB: each message passes it alone, in turn; every one is acked and stored once."""
    agg = start_aggregator(tmp_path, extra=["--max-inflight-bytes", "65536"])
    names = [f"c{k}" for k in range(8)]
    frames = {name: _message(name, 1500) for name in names}
    try:
        socks = {name: agg.connect() for name in names}
        for name in names:
            socks[name].sendall(frames[name])
        for name in names:
            assert read_acks(socks[name], 1, timeout=120) == [name]
            socks[name].close()
    finally:
        assert agg.stop() == 0
    stored = read_table(agg.warehouse, "container_logs")["message"].to_pylist()
    assert len(stored) == 8 * 1500 and len(set(stored)) == 8 * 1500
    log_text = agg.log_text()
    assert "at most 65,536 bytes of messages in flight" in log_text
    assert "closing connection" not in log_text


def test_the_budget_is_a_flag_and_a_config_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    assert load_settings(parser.parse_args([])).max_inflight_bytes == 256 * 1024 * 1024
    conf = tmp_path / "agg.toml"
    conf.write_text("max-inflight-bytes = 1048576\n")
    settings = load_settings(parser.parse_args(["--config", str(conf)]))
    assert settings.max_inflight_bytes == 1 << 20
    with pytest.raises(ConfigError, match="--max-inflight-bytes must be at least 1; got "):
        load_settings(parser.parse_args(["--max-inflight-bytes", "0"]))


def _rejected(metrics: Metrics, label: str) -> float:
    return metrics.connections_rejected.labels(label)._value.get()


def test_a_connection_asking_for_acks_is_closed_unread_after_waiting_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its client gives up on an unacked message and resends it elsewhere, while its bytes
    still wait in this socket: read once the budget has room, they would be stored twice. So a
    wait past BACKPRESSURE_CLOSE_SECONDS closes it unread, as a full buffer does."""
    monkeypatch.setattr(server_mod, "BACKPRESSURE_CLOSE_SECONDS", 0.5)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_inflight_bytes=FIRST_READ)
        async with serving(buffer, metrics, limits) as (_, host, port):
            r1, w1 = await asyncio.open_connection(host, port)
            w1.write(_message("big", 1500))
            await _until(lambda: len(buffer.frames) == 1)  # appended, not durable: budget full
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(_message("given-up", 10))
            await w2.drain()
            assert await asyncio.wait_for(r2.read(), 30) == b""  # closed, nothing acked
            assert _rejected(metrics, "backpressure") == 1
            assert metrics.inflight_closed._value.get() == 1
            buffer.sync(0)
            assert await _ack(r1) == "big"
            await asyncio.sleep(0.2)
            assert len(buffer.frames) == 1  # the given-up message was never read
            for writer in (w1, w2):
                writer.close()

    _run(scenario())


async def _handshake(
    host: str, port: int, key: str = "k", source: str | None = None, then: bytes = b""
) -> tuple[Any, Any, Any]:
    """Connect (from the address ``source``, if given), read the HELO and send a PING with
    ``key``, and ``then`` in the same write: (reader, writer, unpacker)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    unpacker = wire.new_unpacker()
    helo = None
    while helo is None:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("the server closed the connection before its HELO")
        unpacker.feed(data)
        helo = next(unpacker, None)
    writer.write(wire.encode_ping("client", b"salt", helo[1]["nonce"], key) + then)
    return reader, writer, unpacker


async def _pong(reader: asyncio.StreamReader, unpacker: Any) -> Any:
    """The server's next answer on a connection whose HELO ``unpacker`` read: its PONG, then
    its acks (``"closed"`` if it closed the connection instead)."""
    while (obj := next(unpacker, None)) is None:
        data = await asyncio.wait_for(reader.read(4096), 30)
        if not data:
            return "closed"
        unpacker.feed(data)
    return obj


def test_a_handshake_is_not_queued_behind_a_full_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PING sent at once gets its PONG while the budget is full (it waited for the budget
    past the handshake deadline and was refused as a slow client: a rush of shared-key
    clients would all fail)."""
    monkeypatch.setattr(server_mod, "HANDSHAKE_TIMEOUT", 1.0)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_inflight_bytes=FIRST_READ)
        async with serving(buffer, metrics, limits, shared_key="k") as (_, host, port):
            r1, w1, u1 = await _handshake(host, port)
            assert (await _pong(r1, u1))[:2] == ["PONG", True]
            w1.write(_message("big", 1500))
            await _until(lambda: len(buffer.frames) == 1)  # the budget is full
            r2, w2, u2 = await _handshake(host, port)
            await asyncio.sleep(1.5)  # past HANDSHAKE_TIMEOUT with the budget still full
            buffer.sync(0)
            assert (await _pong(r2, u2))[:2] == ["PONG", True]
            assert _rejected(metrics, "slow_client") == 0
            for writer in (w1, w2):
                writer.close()

    _run(scenario())


def test_a_stalled_message_does_not_hold_the_others_up_to_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message the budget lets read first stops coming half-way: while others wait, it is
    closed after MESSAGE_STALL_SECONDS without a byte, not after --idle-timeout."""
    monkeypatch.setattr(server_mod, "MESSAGE_STALL_SECONDS", 0.5)

    class DurableBuffer(HeldBuffer):
        def write(self, payload: bytes, chunk: bytes | None = None) -> asyncio.Future[None]:
            wait = super().write(payload, chunk)
            wait.set_result(None)
            return wait

    async def scenario() -> None:
        buffer = DurableBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_inflight_bytes=4 * FIRST_READ, idle_timeout=600.0)
        async with serving(buffer, metrics, limits) as (server, host, port):
            stalled = _message("stalled", 3000)
            r1, w1 = await asyncio.open_connection(host, port)
            w1.write(stalled[: len(stalled) // 2])  # half a message, then nothing
            await _until(lambda: server.inflight.used >= 4 * FIRST_READ)
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(_message("small", 5))
            assert await asyncio.wait_for(_ack(r2), 30) == "small"
            assert _rejected(metrics, "slow_client") == 1
            assert await asyncio.wait_for(r1.read(), 30) == b""
            for writer in (w1, w2):
                writer.close()

    _run(scenario())
