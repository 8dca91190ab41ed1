"""``--max-connections`` slots: connections that hold one without sending (one byte of a
message, or nothing) make room for new clients instead of locking them out for --idle-timeout;
refusals and failed handshakes are counted every time but logged at a bounded rate; a failed
shared-key handshake answers late (a key cannot be guessed at thousands of tries a second).

The server runs in the test's event loop over a buffer whose fsyncs the test completes by hand
(tests/aggregator/test_inflight.py), so "a message is being stored" is a state the test holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import aggregator.server as server_mod
from aggregator.metrics import Metrics
from aggregator.server import ForwardServer, ServerLimits
from aggregator.tls_files import tls_context
from shipper import wire
from tests.aggregator.helpers import serving
from tests.aggregator.test_inflight import (
    HeldBuffer,
    _ack,
    _handshake,
    _message,
    _pong,
    _rejected,
    _run,
    _until,
)
from tests.shipper.tlsgen import make_ca_and_server


def _open(server: ForwardServer) -> int:
    return server._open_connections()


def test_when_full_stalled_then_idle_connections_make_room_never_one_storing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three slots: one connection sent one byte of a message, one sent nothing, one has a
    message being stored. A new client closes the stalled one, the next the idle one; then every
    slot is storing a message and the next client is refused. The stored message is acked."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 0.0)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_connections=3)
        async with serving(buffer, metrics, limits) as (server, host, port):
            r_stalled, w_stalled = await asyncio.open_connection(host, port)
            w_stalled.write(b"\x93")  # the head of a 3-item array, then nothing
            await _until(lambda: any(c.partial_since for c in server._conns.values()))
            r_idle, w_idle = await asyncio.open_connection(host, port)
            r_busy, w_busy = await asyncio.open_connection(host, port)
            w_busy.write(_message("busy", 3))
            await _until(lambda: len(buffer.frames) == 1)  # stored, its fsync held
            await _until(lambda: _open(server) == 3 and all(c.reading for c in _idlers(server)))

            r_new, w_new = await asyncio.open_connection(host, port)
            w_new.write(_message("new", 3))
            await _until(lambda: len(buffer.frames) == 2)
            assert await asyncio.wait_for(r_stalled.read(), 30) == b""  # closed first
            r_next, w_next = await asyncio.open_connection(host, port)
            w_next.write(_message("next", 3))
            await _until(lambda: len(buffer.frames) == 3)
            assert await asyncio.wait_for(r_idle.read(), 30) == b""
            assert _rejected(metrics, "evicted") == 2

            # Every slot is storing a message now: the next client is refused.
            r_over, w_over = await asyncio.open_connection(host, port)
            assert await asyncio.wait_for(r_over.read(), 30) == b""
            assert _rejected(metrics, "max_connections") == 1
            for index, (reader, name) in enumerate(
                [(r_busy, "busy"), (r_new, "new"), (r_next, "next")]
            ):
                buffer.sync(index)
                assert await _ack(reader) == name
            for writer in (w_stalled, w_idle, w_busy, w_new, w_next, w_over):
                writer.close()

    _run(scenario())


def test_unfinished_pings_make_room_for_a_client_with_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a shared key, two connections that sent one byte of a PING held both slots for the
    handshake timeout (30 s, renewed at will), never made room: a client that has the key was
    refused, and the ones it evicted when idle could not come back. They are stalled messages
    now: the client with the key takes a slot and its message is stored and acked."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 0.0)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_connections=2)
        async with serving(buffer, metrics, limits, shared_key="k") as (server, host, port):
            holders = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection(host, port)
                await reader.read(4096)  # HELO
                writer.write(b"\x94")  # the head of a PING, then nothing
                holders.append((reader, writer))
            # Both heads read: unfinished PINGs.
            await _until(
                lambda: [bool(c.partial_since) for c in server._conns.values()] == [True] * 2
            )

            reader, writer = await asyncio.open_connection(host, port)
            first = await reader.read(4096)
            assert first, "the client with the key was refused: the unfinished PINGs held on"
            unpacker = wire.new_unpacker()
            unpacker.feed(first)
            helo = next(unpacker)
            assert helo[0] == "HELO", helo
            writer.write(wire.encode_ping("client", b"salt", helo[1]["nonce"], "k"))
            unpacker.feed(await reader.read(4096))
            assert next(unpacker)[1] is True  # PONG: authenticated
            writer.write(_message("keyed", 3))
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(reader) == "keyed"
            assert _rejected(metrics, "evicted") == 1
            for _, holder in (*holders, (reader, writer)):
                holder.close()

    _run(scenario())


def test_a_ping_trickled_a_byte_at_a_time_still_makes_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message still arriving is not stalled, but a PING is stalled from its first byte: a
    real client sends it at once, and one trickled without the key (a byte every 50 ms) must
    not hold its slot for the handshake timeout. A client with the key takes the slot."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 0.5)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_connections=1)
        async with serving(buffer, metrics, limits, shared_key="k") as (_, host, port):
            r_trickle, w_trickle = await asyncio.open_connection(host, port)
            await r_trickle.read(4096)  # HELO

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(600):
                        w_trickle.write(b"\xc0")  # a PING that never ends: the nils of a map
                        await asyncio.sleep(0.05)

            w_trickle.write(b"\x94\xa4PING\xdf\x00\x01\x00\x00")  # a 64K-pair map
            sender = asyncio.ensure_future(trickle())
            await asyncio.sleep(1.0)
            reader, writer, unpacker = await _handshake(host, port)
            await _until(
                lambda: _rejected(metrics, "max_connections") + _rejected(metrics, "evicted") == 1
            )
            assert _rejected(metrics, "evicted") == 1, "the trickled PING kept its slot"
            assert (await _pong(reader, unpacker))[:2] == ["PONG", True]
            sender.cancel()
            for w in (w_trickle, writer):
                w.close()

    _run(scenario())


def test_unfinished_tls_handshakes_make_room_for_a_client_that_completes_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a TLS port, a connection that sent nothing, and one that sent half a ClientHello,
    held their slots for the handshake timeout (30 s, renewed at will) and never made room:
    clients without the certificate locked out the ones with it. They wait on their clients
    as an unfinished message does now: a TLS client takes a slot and is served."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 0.0)
    ca, cert, key = make_ca_and_server(tmp_path)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(max_connections=2)
        tls = tls_context(str(cert), str(key))
        async with serving(buffer, metrics, limits, ssl_context=tls) as (server, host, port):
            silent = await asyncio.open_connection(host, port)
            half = await asyncio.open_connection(host, port)
            half[1].write(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes
            await _until(lambda: _open(server) == 2)
            client = ssl.create_default_context(cafile=str(ca))
            reader, writer = await asyncio.open_connection(host, port, ssl=client)
            writer.write(_message("tls", 3))
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(reader) == "tls"
            assert _rejected(metrics, "evicted") == 1
            for w in (silent[1], half[1], writer):
                w.close()

    _run(scenario())


def test_a_message_still_arriving_is_never_closed_for_a_newcomer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow client (a large Fluentd chunk over a slow link) whose message began long ago but
    keeps coming is sending, not stalled: a newcomer at --max-connections was given its slot
    and the message, half sent, was lost and resent (and could be cut again). The newcomer is
    refused now, the message is stored and acked; once the client stops mid-message for
    EVICT_AFTER_SECONDS, a newcomer takes its slot."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 0.5)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics, ServerLimits(max_connections=1)) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            frame = _message("slow", 3)
            sent = 0
            begun = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() - begun < 1.5:  # 3 x EVICT_AFTER_SECONDS
                writer.write(frame[sent : sent + 1])
                sent += 1
                await asyncio.sleep(0.05)
            assert sent < len(frame), "the message must still be unfinished"
            r_new, w_new = await asyncio.open_connection(host, port)
            await _until(
                lambda: _rejected(metrics, "max_connections") + _rejected(metrics, "evicted") == 1
            )
            assert _rejected(metrics, "evicted") == 0, "the message still arriving was cut"
            assert await asyncio.wait_for(r_new.read(), 30) == b""  # refused
            w_new.close()
            writer.write(frame[sent:])
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(reader) == "slow"
            assert _rejected(metrics, "evicted") == 0

            writer.write(_message("stopped", 3)[:5])  # then nothing
            await asyncio.sleep(0.6)
            r_new, w_new = await asyncio.open_connection(host, port)
            w_new.write(_message("new", 3))
            await _until(lambda: len(buffer.frames) == 2)
            assert await asyncio.wait_for(reader.read(), 30) == b""
            assert _rejected(metrics, "evicted") == 1
            for w in (writer, w_new):
                w.close()

    _run(scenario())


def _idlers(server: ForwardServer) -> list[Any]:
    return [c for c in server._conns.values() if c.partial_since is None and c.fed == 0]


def test_a_connection_is_not_closed_for_a_newcomer_before_it_has_been_quiet_a_while(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections quiet for less than EVICT_AFTER_SECONDS are not closed for newcomers (a
    burst of reconnects must not churn each other out): the newcomers are refused, and the
    WARNING about it is said once for the burst while the counter counts every refusal."""
    monkeypatch.setattr(server_mod, "EVICT_AFTER_SECONDS", 3600.0)

    async def scenario() -> None:
        metrics = Metrics()
        limits = ServerLimits(max_connections=2)
        async with serving(HeldBuffer(), metrics, limits) as (server, host, port):
            holders = [await asyncio.open_connection(host, port) for _ in range(2)]
            await _until(lambda: _open(server) == 2)
            for _ in range(20):
                reader, writer = await asyncio.open_connection(host, port)
                assert await asyncio.wait_for(reader.read(), 30) == b""
                writer.close()
            assert _rejected(metrics, "max_connections") == 20
            assert _rejected(metrics, "evicted") == 0
            assert _open(server) == 2
            for _, writer in holders:
                writer.close()

    caplog.set_level(logging.INFO, logger="logq.aggregator.server")
    _run(scenario())
    refusals = [r for r in caplog.records if "over --max-connections" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    assert "counts them all" in refusals[0].getMessage()


def test_a_failed_handshake_answers_late_without_holding_up_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong key's PONG waits (doubling per recent failure from the address): while it does,
    a client with the right key gets its PONG, and only the first failure is a WARNING."""
    monkeypatch.setattr(server_mod, "AUTH_DELAY_SECONDS", 0.01)

    async def scenario() -> None:
        metrics = Metrics()
        async with serving(HeldBuffer(), metrics, shared_key="k") as (server, host, port):
            for _ in range(3):
                reader, writer, unpacker = await _handshake(host, port, "guess")
                assert (await _pong(reader, unpacker))[:2] == ["PONG", False]
                writer.close()
            assert server._auth_failures["127.0.0.1"].failures == 3
            monkeypatch.setattr(server_mod, "AUTH_DELAY_SECONDS", 3600.0)
            _, w_slow, _ = await _handshake(host, port, "guess")
            await _until(lambda: server._auth_failures["127.0.0.1"].failures == 4)  # now waiting
            r_ok, w_ok, u_ok = await _handshake(host, port, "k")
            assert (await _pong(r_ok, u_ok))[:2] == ["PONG", True]
            assert len(server._conns) == 2  # the guess still waits for its PONG
            assert server._auth_failures.get("127.0.0.1") is None  # a success forgets them
            assert _rejected(metrics, "auth_failed") == 3
            for writer in (w_slow, w_ok):
                writer.close()

    caplog.set_level(logging.DEBUG, logger="logq.aggregator.server")
    _run(scenario())
    failed = [r for r in caplog.records if "shared_key mismatch" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_a_ping_of_non_ascii_digest_or_non_utf8_hostname_gets_its_pong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PING digest that is not ASCII made ``hmac.compare_digest`` raise TypeError, and a
    hostname that is not UTF-8 made hashing it raise: the connection was closed unanswered as
    an internal error (an ERROR with a traceback per try). Now the first is a failed handshake
    and the second is hashed as the bytes the client sent, as the client hashes them."""
    monkeypatch.setattr(server_mod, "AUTH_DELAY_SECONDS", 0.01)

    async def ping(host: str, port: int, hostname: bytes, digest: str) -> Any:
        reader, writer = await asyncio.open_connection(host, port)
        unpacker = wire.new_unpacker()
        helo = None
        while helo is None:
            unpacker.feed(await reader.read(4096))
            helo = next(unpacker, None)
        nonce = helo[1]["nonce"]
        if not digest:
            digest = hashlib.sha512(b"salt" + hostname + nonce + b"k").hexdigest()
        # A str8 hostname holding exactly the given bytes, whatever they are.
        raw = b"\x94\xa4PING\xd9" + bytes([len(hostname)]) + hostname
        writer.write(raw + msgpack.packb(b"salt") + msgpack.packb(digest))
        pong = await _pong(reader, unpacker)
        writer.close()
        return pong

    async def scenario() -> None:
        metrics = Metrics()
        async with serving(HeldBuffer(), metrics, shared_key="k") as (_, host, port):
            assert (await ping(host, port, b"client", "\u00e9" * 128))[:2] == ["PONG", False]
            assert (await ping(host, port, b"caf\xe9", ""))[:2] == ["PONG", True]
            assert _rejected(metrics, "auth_failed") == 1
            assert _rejected(metrics, "internal_error") == 0

    _run(scenario())


def test_the_delay_doubles_per_recent_failure_up_to_a_cap() -> None:
    server = ForwardServer(HeldBuffer(), Metrics(), ServerLimits(), shared_key="k")  # type: ignore[arg-type]
    delays = [server._auth_delay("10.0.0.1") for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert server._auth_delay("10.0.0.2") == 0.5  # per address


def test_guesses_sent_at_once_get_one_key_check_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failed handshake waited on its own connection, so one address holding many of them
    tried a key per connection (1024 / 8 s: 128 a second). Now, past AUTH_RATE_LIMIT_FAILURES
    failures, its keys are checked once per AUTH_CHECK_INTERVAL_SECONDS: 20 guesses sent at
    once get 5 checks, 2 wait their turn unanswered, 13 are closed unchecked (the right key
    too, when its turn is too far); a client with the right key on another address is served."""
    monkeypatch.setattr(server_mod, "AUTH_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(server_mod, "AUTH_CHECK_INTERVAL_SECONDS", 60.0)
    monkeypatch.setattr(server_mod, "AUTH_CHECK_WAIT_MAX_SECONDS", 120.0)
    free = server_mod.AUTH_RATE_LIMIT_FAILURES

    async def scenario() -> None:
        metrics = Metrics()
        async with serving(HeldBuffer(), metrics, shared_key="k", grace=0) as (_, host, port):
            guesses = [await _handshake(host, port, f"guess-{i}") for i in range(20)]
            await _until(lambda: _rejected(metrics, "auth_rate_limited") == 20 - free - 2)
            answers = await asyncio.gather(
                *(asyncio.wait_for(_pong(r, u), 0.5) for r, _, u in guesses),
                return_exceptions=True,
            )
            checked = [a for a in answers if isinstance(a, list)]
            assert len(checked) == free and _rejected(metrics, "auth_failed") == free
            assert all(p[:3] == ["PONG", False, "shared_key mismatch"] for p in checked)
            assert all(p[4] == "" for p in checked)  # no digest to guess from
            assert answers.count("closed") == 20 - free - 2  # unchecked, unanswered
            waiting = [a for a in answers if isinstance(a, TimeoutError)]
            assert len(waiting) == 2  # their turns: 60 s and 120 s on, delayed, not answered
            # The right key: its turn too far from the limited address, served from another.
            r_same, w_same, u_same = await _handshake(host, port, "k")
            assert await _pong(r_same, u_same) == "closed"
            r_other, w_other, u_other = await _handshake(host, port, "k", source="127.0.0.2")
            assert (await _pong(r_other, u_other))[:2] == ["PONG", True]
            assert _rejected(metrics, "auth_failed") == free  # still no more checks
            for writer in [w for _, w, _ in guesses] + [w_same, w_other]:
                writer.close()

    caplog.set_level(logging.DEBUG, logger="logq.aggregator.server")
    _run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        sum("failed shared-key handshakes from 127.0.0.1: its key checks" in w for w in warnings)
        == 1
    )
    assert sum("closed unanswered, its key unchecked" in w for w in warnings) == 1  # every 10 s


def test_a_right_key_behind_the_address_of_a_client_retrying_a_wrong_one_gets_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stale Fluent Bit with an old key on a shipper's host (or behind its NAT) retries for
    ever. With a lockout renewed by its every failure, the shipper beside it was refused for
    ever; with checks rate-limited, the failing client holds one turn at most, so the right key
    gets a turn on each try (within AUTH_CHECK_WAIT_MAX_SECONDS) and passes, while the failing
    client is still checked, one key per interval. A success there does not lift the limit."""
    monkeypatch.setattr(server_mod, "AUTH_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(server_mod, "AUTH_DELAY_MAX_SECONDS", 0.05)
    monkeypatch.setattr(server_mod, "AUTH_CHECK_INTERVAL_SECONDS", 0.2)
    monkeypatch.setattr(server_mod, "AUTH_CHECK_WAIT_MAX_SECONDS", 0.4)

    async def scenario() -> None:
        metrics = Metrics()
        async with serving(HeldBuffer(), metrics, shared_key="k", grace=0) as (server, host, port):
            stop = asyncio.Event()

            async def misconfigured() -> None:
                while not stop.is_set():
                    reader, writer, unpacker = await _handshake(host, port, "old-key")
                    await _pong(reader, unpacker)
                    writer.close()

            retrying = asyncio.create_task(misconfigured())
            try:
                await _until(lambda: _rejected(metrics, "auth_failed") >= 8)  # limited, retrying
                for _ in range(3):
                    failed = _rejected(metrics, "auth_failed")
                    reader, writer, unpacker = await _handshake(host, port, "k")
                    assert (await _pong(reader, unpacker))[:2] == ["PONG", True]  # first try
                    writer.close()
                    # The failing client's keys are still tried meanwhile.
                    await _until(lambda n=failed: _rejected(metrics, "auth_failed") > n)
                assert server._auth_failures["127.0.0.1"].limited(time.monotonic())
            finally:  # the retries end before the server stops
                stop.set()
                await retrying

    _run(scenario())


def test_the_failed_handshake_table_keeps_the_latest_addresses_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failures from more addresses than AUTH_FAILURES_MAX_ADDRESSES forget the oldest: the
    table stays bounded and a flood of new addresses does not wipe a recent guesser's count
    (it emptied the whole table). Taking turns adds no entry."""
    monkeypatch.setattr(server_mod, "AUTH_FAILURES_MAX_ADDRESSES", 100)
    server = ForwardServer(HeldBuffer(), Metrics(), ServerLimits(), shared_key="k")  # type: ignore[arg-type]
    for i in range(250):
        address = f"10.0.{i // 256}.{i % 256}"
        assert server._check_turn(address) == 0.0
        server._auth_delay(address)
        assert server._check_turn(f"10.1.{i // 256}.{i % 256}") == 0.0  # no failure: no entry
        if i == 150:
            for _ in range(server_mod.AUTH_RATE_LIMIT_FAILURES):
                server._auth_delay("10.9.9.9")  # rate-limited, and among the newest
        assert len(server._auth_failures) <= 100
    assert "10.0.0.0" not in server._auth_failures  # the oldest went first
    assert server._auth_failures["10.9.9.9"].limited(time.monotonic())


def test_a_short_shared_key_is_warned_about_once_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A short key is accepted (Fluentd setups share it) but said to be weak, with how to make
    a strong one; the key itself is never logged."""

    async def start(key: str) -> None:
        async with serving(HeldBuffer(), Metrics(), shared_key=key, grace=0):
            pass  # the warning is said at start

    caplog.set_level(logging.INFO, logger="logq.aggregator.server")
    _run(start("s3cr3t-fluentd"))
    weak = [r for r in caplog.records if "openssl rand -hex 32" in r.getMessage()]
    assert len(weak) == 1 and weak[0].levelno == logging.WARNING
    assert "14 characters" in weak[0].getMessage()
    assert "s3cr3t-fluentd" not in weak[0].getMessage()
    caplog.clear()
    _run(start("0123456789abcdef"))
    assert not [r for r in caplog.records if "openssl" in r.getMessage()]
