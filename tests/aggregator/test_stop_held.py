"""A stop and the connections it finds held back (``ForwardServer.stop``, ``_wait_for_space``).

Defect: a connection paused because the buffer was over --buffer-limit-bytes when the stop came
stayed paused through it: the stop ends the flush loop, so no room came, and the connection
waited for its BACKPRESSURE_CLOSE_SECONDS (10 s) or for the end of the stop's wait for the
connections, then was closed with the chunk its client had sent unread and unacknowledged (a
client without acks lost it), an idle one as late. Now the stop's cut ends the pause: a held
connection with nothing sent is closed at once, one with bytes waiting is read up to the cut,
stored past the limit (the stop flushes the buffer anyway) and acknowledged; unless the buffer's
volume is short of disk (:class:`aggregator.diskguard.GuardedBuffer`): then it is closed
unacknowledged, and its client resends later. A connection idle while it waits for the in-flight
budget is closed at the cut too, not when the connection ahead of it is done.

The buffer is held over its limit by the flush the first chunk starts, held by the test until
the end of the scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aggregator import diskguard as diskguard_mod
from aggregator import server as server_mod
from aggregator import service as service_mod
from aggregator.config import Settings
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record
from tests.aggregator.test_disk_full import MIB, _Volume, _wait_for
from tests.aggregator.test_stop_drain import HeldFsync
from tests.support.procs import closed_unanswered

TAG = "logq.held"

#: Waits until that many more connections are held back by the full buffer.
Held = Callable[[int], Awaitable[None]]
Scenario = Callable[[service_mod.Aggregator, "asyncio.Future[int]"], Awaitable[None]]


def _chunk(text: str, chunk: str) -> bytes:
    return wire.encode_packed_forward(TAG, [(time.time_ns(), record(text, service="held"))], chunk)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _stored(settings: Settings) -> list[str]:
    return sorted(read_table(settings.warehouse, "container_logs")["message"].to_pylist())


def _run(tmp_path: Path, scenario: Scenario, **options: Any) -> tuple[Settings, int, list[int]]:
    """An aggregator flushing only when its buffer is full and at its stop, through
    ``scenario(agg, running)``, which stops it: its settings, exit status and watchdog exits
    (recorded, not made)."""
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=300,
        stop_timeout=60,
        **options,
    )
    agg = service_mod.Aggregator(settings)
    exits: list[int] = []
    agg._exit_now = exits.append  # type: ignore[method-assign]

    async def run() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        await scenario(agg, running)
        return await asyncio.wait_for(running, 60)

    code = asyncio.run(asyncio.wait_for(run(), 120))
    return settings, code, exits


class _HeldFlush:
    """The aggregator's flushes, held until :attr:`release` (a slow warehouse)."""

    def __init__(self, agg: service_mod.Aggregator) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real = agg._flush_segment
        agg._flush_segment = self  # type: ignore[method-assign]

    def __call__(self, segment: Any, deadline: float | None = None) -> Any:
        self.entered.set()
        assert self.release.wait(60), "the test never released the held flush"
        return self._real(segment, deadline)


@contextlib.asynccontextmanager
async def _full_buffer(
    agg: service_mod.Aggregator, running: asyncio.Future[int]
) -> AsyncIterator[Held]:
    """The buffer over its limit (--buffer-limit-bytes 1) with the chunk ``first``, acked, and
    the flush that starts then held until the block ends: yields a wait for connections held
    back by it."""
    flush = _HeldFlush(agg)
    try:
        with _connect(agg.port) as first:
            first.sendall(_chunk("first", "c0"))
            assert await asyncio.to_thread(read_acks, first, 1) == ["c0"]
        assert await asyncio.to_thread(flush.entered.wait, 30), "no flush at the limit"
        assert agg.buffer.full
        paused = agg.metrics.backpressure
        before = paused._value.get()  # the first chunk's connection may have been paused

        async def held(count: int) -> None:
            def more() -> bool:
                return bool(paused._value.get() >= before + count)

            await _wait_for(more, running, f"{count} held connections")

        yield held
    finally:
        flush.release.set()


def test_a_client_held_by_a_full_buffer_at_the_stop_gets_its_chunk_acked_and_stored_once(
    tmp_path: Path,
) -> None:
    """Its chunk, sent while the buffer is over its limit, is acknowledged after the stop's
    cut, and the warehouse holds every acked record once after the stop."""

    async def scenario(agg: service_mod.Aggregator, running: asyncio.Future[int]) -> None:
        async with _full_buffer(agg, running) as held_back:
            with _connect(agg.port) as held:
                held.sendall(_chunk("held at the stop", "c1"))
                await held_back(1)
                agg._stop_requested()
                assert await asyncio.to_thread(read_acks, held, 1) == ["c1"]

    settings, code, exits = _run(tmp_path, scenario, buffer_limit_bytes=1)
    assert (code, exits) == (0, [])
    assert _stored(settings) == ["first", "held at the stop"]


def _keyed_by_a_map(log: str) -> bytes:
    """A Message-mode message without options whose record is also keyed by a map
    (``{"log": log, {"a": 1}: "v"}``), as Fluentd forwards a Ruby record so keyed."""
    now = wire.pack(wire.EventTime.from_ns(time.time_ns()))
    return b"\x93" + wire.pack(TAG) + now + b"\x82\xa3log" + wire.pack(log) + b"\x81\xa1a\x01\xa1v"


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(
            lambda: wire.encode_message(TAG, time.time_ns(), record("no ack")), id="plain"
        ),
        # Told apart too: read ahead with such a key as its text, as it is stored.
        pytest.param(lambda: _keyed_by_a_map("no ack"), id="keyed-by-a-map"),
    ],
)
def test_a_client_without_acks_held_at_the_stop_gets_its_message_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: Callable[[], bytes]
) -> None:
    """A client that asks for no acks (fluent-logger), held by the full buffer long enough to
    be told apart by its first message, read ahead (``BACKPRESSURE_CLOSE_SECONDS`` shortened):
    the cut finds it held with nothing left in its socket, yet with that message read, so it
    is not closed: the message is stored once. It cannot be resent: closed, it was lost."""
    monkeypatch.setattr(server_mod, "BACKPRESSURE_CLOSE_SECONDS", 0.5)

    async def scenario(agg: service_mod.Aggregator, running: asyncio.Future[int]) -> None:
        assert agg.server is not None
        conns = agg.server._conns

        def read_ahead() -> bool:
            return any(c.acks is False and c.early for c in conns.values())

        async with _full_buffer(agg, running):
            with _connect(agg.port) as no_acks:
                no_acks.sendall(first())
                await _wait_for(read_ahead, running, "its first message read ahead")
                agg._stop_requested()
                assert await asyncio.to_thread(closed_unanswered, no_acks, 30), "not closed"

    settings, code, exits = _run(tmp_path, scenario, buffer_limit_bytes=1)
    assert (code, exits) == (0, [])
    assert _stored(settings) == ["first", "no ack"]


def test_an_idle_connection_held_by_a_full_buffer_is_closed_at_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle connection held back by the full buffer is closed at the stop's cut: before a
    held client's chunk, whose fsync the test holds meanwhile, is acknowledged. Closed only at
    the end of the stop's wait for the connections, that client would have been cut off with
    it, unacknowledged."""
    disk = HeldFsync(monkeypatch)

    async def scenario(agg: service_mod.Aggregator, running: asyncio.Future[int]) -> None:
        async with _full_buffer(agg, running) as held_back:
            with _connect(agg.port) as idle, _connect(agg.port) as held:
                held.sendall(_chunk("held at the stop", "c1"))
                await held_back(2)
                disk.armed = True
                agg._stop_requested()
                try:
                    assert await asyncio.to_thread(disk.entered.wait, 30), "the chunk not read"
                    assert await asyncio.to_thread(closed_unanswered, idle, 30), "idle not closed"
                finally:
                    disk.release.set()
                assert await asyncio.to_thread(read_acks, held, 1) == ["c1"]

    settings, code, exits = _run(tmp_path, scenario, buffer_limit_bytes=1)
    assert (code, exits) == (0, [])
    assert _stored(settings) == ["first", "held at the stop"]


def test_an_idle_connection_waiting_for_the_in_flight_budget_is_closed_at_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget (--max-inflight-bytes 1) is held by a chunk whose fsync the test holds; an
    idle connection waits for it (for longer than the stop: its pause would close it after 60
    s). The stop's cut closes it while that fsync is still held, and the chunk is acknowledged
    after it. It used to be closed at the end of the stop's wait for the connections, which
    cut the chunk's connection off with it, unacknowledged."""
    monkeypatch.setattr(server_mod, "BACKPRESSURE_CLOSE_SECONDS", 60.0)
    disk = HeldFsync(monkeypatch)

    async def scenario(agg: service_mod.Aggregator, running: asyncio.Future[int]) -> None:
        assert agg.server is not None
        budget = agg.server.inflight
        with _connect(agg.port) as busy:
            disk.armed = True
            busy.sendall(_chunk("made durable slowly", "c1"))
            try:
                assert await asyncio.to_thread(disk.entered.wait, 30), "the chunk not read"
                with _connect(agg.port) as idle:
                    await _wait_for(lambda: budget.waiting == 1, running, "a wait for the budget")
                    agg._stop_requested()
                    assert await asyncio.to_thread(closed_unanswered, idle, 30), "not closed"
            finally:
                disk.release.set()
            assert await asyncio.to_thread(read_acks, busy, 1) == ["c1"]

    settings, code, exits = _run(tmp_path, scenario, max_inflight_bytes=1)
    assert (code, exits) == (0, [])
    assert _stored(settings) == ["made durable slowly"]


def test_a_held_client_is_closed_unacked_at_the_stop_when_the_disk_is_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffer's volume is under the disk guard's reserve at the cut: the held client's
    chunk is not read past the limit, its connection is closed without an ack (its client
    resends it later) and nothing of it is stored."""
    volume = _Volume(100 * MIB)
    monkeypatch.setattr(diskguard_mod, "disk_space", volume)

    async def scenario(agg: service_mod.Aggregator, running: asyncio.Future[int]) -> None:
        async with _full_buffer(agg, running) as held_back:
            with _connect(agg.port) as held:
                held.sendall(_chunk("held on a short disk", "c1"))
                await held_back(1)
                volume.free = MIB // 2  # under the reserve (64 MiB here)
                while agg.buffer.short_of_disk() is None:  # its reading is trusted a second
                    await asyncio.sleep(0.05)
                agg._stop_requested()
                assert await asyncio.to_thread(closed_unanswered, held, 30), "not closed unacked"
                volume.free = 100 * MIB  # the stop's flush has room

    settings, code, exits = _run(tmp_path, scenario, buffer_limit_bytes=1)
    assert (code, exits) == (0, [])
    assert _stored(settings) == ["first"]
