"""A Forward message whose msgpack headers already declare more than ``--max-frame-bytes`` (a
bin or str of 100 MB, an array of 10^8 elements) is refused as soon as those headers are read:
msgpack checks a length only once all its bytes are there, so such a message was read until
the limit filled the unpacker or ``--idle-timeout`` ran out. Only that connection is closed,
with a reason naming the limit and the flag, counted as ``frame_too_large``.

The server runs in the test's event loop (tests/aggregator/test_inflight.py's buffer); its idle
timeout is an hour, so a connection closed within the test was closed by the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import logging
import random
import struct
from typing import Any

import msgpack
import pytest

from aggregator.declared import MAX_HEADERS, DeclaredSize
from aggregator.metrics import Metrics
from aggregator.server import SEND_SMALLER, ForwardServer, ServerLimits, _Conn
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

LIMIT = 1 << 20
HOUR = 3600.0
BIG = 100 * 1000 * 1000

#: Message heads that declare more than LIMIT, each followed by some of its body.
DECLARING = {
    # PackedForward (Fluentd, Fluent Bit): its blob, a bin of 100 MB.
    "packed_bin": b"\x93\xa8logq.big\xc6" + struct.pack(">I", BIG) + b"x" * 4096,
    # A Message-mode record whose log is a str of 100 MB.
    "record_str": b"\x93\xa8logq.big\xce"
    + struct.pack(">I", 1_795_860_000)
    + b"\x82\xa6stream\xa6stdout\xa3log\xdb"
    + struct.pack(">I", BIG)
    + b"y" * 4096,
    # Forward mode: an array of 10^8 entries (under --max-message-entries here).
    "entries_array": b"\x92\xa8logq.big\xdd" + struct.pack(">I", BIG) + b"\x92\x01\x80" * 100,
}


@pytest.mark.parametrize("name", list(DECLARING))
def test_a_message_declaring_more_than_the_limit_is_refused_from_its_headers(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The head comes in pieces (a header split between two reads too); the connection is closed
    while the client still sends nothing more, and a bystander's messages go on being acked."""
    refusal = _refusal(DECLARING[name], LIMIT, caplog)
    assert f"over --max-frame-bytes ({LIMIT:,} bytes)" in refusal, refusal
    assert "refused from its headers" in refusal and f"{BIG:,}" in refusal


def test_under_a_tiny_limit_short_headers_are_refused_without_empty_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``--max-frame-bytes 48``, a Message-mode record whose log is a 31-byte str (one-byte
    headers, no length header to name) declares more than the limit: the refusal said "at least
    (), over". The bystander's message is small enough for the limit."""
    head = b"\x94\xa8logq.big\x01\x81\xa3log\xbfab"
    small = msgpack.packb(["logq.ok", 1, {"log": "x"}, {"chunk": "after"}])
    refusal = _refusal(head, 48, caplog, bystander=small)
    assert "declare 49 bytes at least, over --max-frame-bytes (48 bytes)" in refusal, refusal
    assert "()" not in refusal


def _refusal(
    head: bytes, limit: int, caplog: pytest.LogCaptureFixture, bystander: bytes | None = None
) -> str:
    """The reason logged for the connection that sent ``head`` (in three pieces, then nothing
    more) to a server whose ``--max-frame-bytes`` is ``limit``; a bystander's message (chunk
    ``after``) sent after it must still be acked."""

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(limit, idle_timeout=HOUR, max_message_entries=10**9)
        async with serving(buffer, metrics, limits) as (_, host, port):
            r_good, w_good = await asyncio.open_connection(host, port)
            reader, writer = await asyncio.open_connection(host, port)
            for piece in (head[:11], head[11:14], head[14:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader.read(), 60) == b""  # closed: never the idle
            assert _rejected(metrics, "frame_too_large") == 1
            w_good.write(_message("after", 2) if bystander is None else bystander)
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(r_good) == "after"
            for w in (writer, w_good):
                w.close()

    caplog.set_level(logging.WARNING, logger="logq.aggregator.server")
    _run(scenario())
    (refusal,) = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    return refusal


def test_messages_within_the_limit_split_anywhere_are_all_acked() -> None:
    """Real messages of every shape, sent a few bytes at a time: none is taken for one that
    declares too much (the headers give a least size, never more than the message's)."""
    records = [
        {"log": "x" * n, "stream": "stdout", "n": [1, 2.5, None, True]} for n in (0, 40, 300)
    ]
    frames = [
        wire.encode_packed_forward(
            "logq.a", [(1_795_860_000_000_000_000, r) for r in records], "p"
        ),
        msgpack.packb(["logq.b", [[1_795_860_000, r] for r in records * 100], {"chunk": "f"}]),
        msgpack.packb(["logq.c", 1_795_860_000, records[2], {"chunk": "m"}]),
    ]
    stream = b"".join(frames)
    cuts = sorted(random.Random(25).sample(range(1, len(stream)), 40))

    async def scenario() -> list[str]:
        buffer = HeldBuffer()
        metrics = Metrics()
        limit = max(len(f) for f in frames)  # a message's size exactly at the limit is fine
        limits = ServerLimits(limit, idle_timeout=HOUR)
        async with serving(buffer, metrics, limits) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)

            async def send() -> None:
                for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                    writer.write(stream[start:end])
                    await writer.drain()
                    await asyncio.sleep(0.002)

            sending = asyncio.create_task(send())
            for i in range(len(frames)):  # each made durable, so that the next one is read
                await _until(lambda i=i: len(buffer.frames) > i)
                buffer.sync(i)
            await sending
            unpacker = wire.new_unpacker()
            acks: list[str] = []
            while len(acks) < len(frames):
                unpacker.feed(await asyncio.wait_for(reader.read(4096), 30))
                acks.extend(wire.decode_ack(obj) for obj in unpacker)
            assert _rejected(metrics, "frame_too_large") == 0
            writer.close()
            return acks

    assert _run(scenario()) == ["p", "f", "m"]


# --- the limit is a message's, not a read's -----------------------------------------------------


class _DurableBuffer(HeldBuffer):
    """Every append durable at once."""

    def write(self, payload: bytes, chunk: bytes | None = None) -> asyncio.Future[None]:
        wait = super().write(payload, chunk)
        wait.set_result(None)
        return wait


def _json_message(name: str, size: int) -> bytes:
    return json.dumps(["logq.j", 1_795_860_000, {"log": "x" * size}, {"chunk": name}]).encode()


def _acks(data: bytes, how: str) -> list[str]:
    """The acks in what the server wrote (msgpack, or JSON text for JSON messages)."""
    if how != "JSON":
        return [wire.decode_ack(obj) for obj in msgpack.Unpacker(io.BytesIO(data), raw=False)]
    decoder, text, pos, acks = json.JSONDecoder(), data.decode(), 0, []
    while pos < len(text):
        ack, pos = decoder.raw_decode(text, pos)
        acks.append(ack["ack"])
    return acks


@pytest.mark.parametrize("how", ["msgpack", "behind the PING", "JSON"])
def test_small_messages_read_together_past_the_limit_are_all_acked(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a --max-frame-bytes smaller than a read, one read of several small messages, each
    within the limit: all stored and acked, in order (the read was refused as one message too
    large: msgpack's buffer limit, and the JSON path's, judged what one read held). A message
    over the limit behind them in the same read is still refused, once they are acked."""
    limit = 1024
    names = [f"m{i}" for i in range(12)]
    if how == "JSON":
        small = [_json_message(n, 200) for n in names]
        big = _json_message("big", 2 * limit)
    else:
        small = [_message(n, 1) for n in names]
        big = _message("big", 8)
    assert max(map(len, small)) < limit < len(big) and sum(map(len, small)) > 2 * limit

    async def scenario() -> list[str]:
        buffer = _DurableBuffer()
        metrics = Metrics()
        key = "k" if how == "behind the PING" else None
        limits = ServerLimits(limit, idle_timeout=HOUR)
        async with serving(buffer, metrics, limits, shared_key=key) as (_, host, port):
            if key is None:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"".join(small) + big)
                unpacker = None
            else:
                reader, writer, unpacker = await _handshake(
                    host, port, then=b"".join([*small, big])
                )
                assert (await _pong(reader, unpacker))[1] is True
            data = await asyncio.wait_for(reader.read(), 30)  # until the server closes
            if unpacker is not None:  # what the HELO's unpacker already holds
                data = b"".join(wire.pack(obj) for obj in unpacker) + data
            assert len(buffer.frames) == len(small)
            assert _rejected(metrics, "frame_too_large") == 1
            writer.close()
            return _acks(data, how)

    caplog.set_level(logging.WARNING, logger="logq.aggregator.server")
    assert _run(scenario()) == names
    (refusal,) = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert SEND_SMALLER in refusal, refusal
    if how == "JSON":
        assert f"JSON message larger than --max-frame-bytes ({limit:,} bytes)" in refusal


@pytest.mark.parametrize("pieces", [1, 30])
def test_a_forward_mode_message_over_the_limit_is_refused_however_it_is_read(
    pieces: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A Forward-mode message of many small entries, over the limit: its first 256 headers
    declare less than the limit, and msgpack parses its entries as they come, so the
    unpacker's buffer never holds more than the limit unparsed. Trickled, it was stored and
    acked; in one read, it is now fed a limit's worth at a time. Refused either way, with a
    WARNING that says what to change: the client only sees its connection closed, and resends
    the same message."""
    limit = 1024
    entries = [[1_795_860_000, {"log": "x"}] for _ in range(200)]
    frame = msgpack.packb(["logq.f", entries, {"chunk": "f"}])
    assert len(frame) > 2 * limit

    async def scenario() -> None:
        buffer = _DurableBuffer()
        metrics = Metrics()
        limits = ServerLimits(limit, idle_timeout=HOUR)
        async with serving(buffer, metrics, limits) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            step = -(-len(frame) // pieces)
            with contextlib.suppress(ConnectionError):  # closed before the last piece
                for at in range(0, len(frame), step):
                    writer.write(frame[at : at + step])
                    await writer.drain()
                    await asyncio.sleep(0.005)
                assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, unacked
            assert buffer.frames == []
            assert _rejected(metrics, "frame_too_large") == 1
            writer.close()

    caplog.set_level(logging.WARNING, logger="logq.aggregator.server")
    _run(scenario())
    (refusal,) = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert f"message larger than --max-frame-bytes ({limit:,} bytes); {SEND_SMALLER}" in refusal


# --- bytes a client writes with its PING ------------------------------------------------------


def test_a_message_written_with_the_ping_is_refused_from_its_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shared-key client may write its PING and its first message at once: the head of a
    message declaring 100 MB, in the PING's write, is refused as when it comes in a later read
    (it was buffered unchecked, and the connection held until --idle-timeout). The PONG comes
    first; the server goes on serving others."""

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(LIMIT, idle_timeout=HOUR, max_message_entries=10**9)
        async with serving(buffer, metrics, limits, shared_key="k") as (_, host, port):
            reader, writer, unpacker = await _handshake(host, port, then=DECLARING["packed_bin"])
            assert (await _pong(reader, unpacker))[1] is True
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed: never the idle
            assert _rejected(metrics, "frame_too_large") == 1
            r_good, w_good, u_good = await _handshake(host, port, then=_message("after", 2))
            assert (await _pong(r_good, u_good))[1] is True
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert wire.decode_ack(await _pong(r_good, u_good)) == "after"
            for w in (writer, w_good):
                w.close()

    caplog.set_level(logging.WARNING, logger="logq.aggregator.server")
    _run(scenario())
    (refusal,) = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert "refused from its headers" in refusal and f"{BIG:,}" in refusal, refusal


def test_messages_written_with_the_ping_are_acked_and_counted_once() -> None:
    """The PING, two whole messages and the first half of a third in one write, the rest of the
    third later: all three acked, in order, and every byte the client sent counted once in
    ``logq_aggregator_bytes_received_total``."""
    frames = [_message(name, n) for name, n in (("a", 3), ("b", 40), ("c", 20))]
    behind = frames[0] + frames[1] + frames[2][:1000]

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        limits = ServerLimits(LIMIT, idle_timeout=HOUR)
        async with serving(buffer, metrics, limits, shared_key="k") as (_, host, port):
            reader, writer, unpacker = await _handshake(host, port, then=behind)
            assert (await _pong(reader, unpacker))[1] is True
            await _until(lambda: len(buffer.frames) == 2)
            buffer.sync(0)
            buffer.sync(1)
            acks = [wire.decode_ack(await _pong(reader, unpacker)) for _ in "ab"]
            writer.write(frames[2][1000:])
            await _until(lambda: len(buffer.frames) == 3)
            buffer.sync(2)
            acks.append(wire.decode_ack(await _pong(reader, unpacker)))
            assert acks == ["a", "b", "c"]
            ping = len(wire.encode_ping("client", b"salt", b"n" * 16, "k"))
            assert metrics.bytes_in._value.get() == ping + sum(map(len, frames))
            writer.close()

    _run(scenario())


def test_the_least_size_never_exceeds_the_message_and_the_walk_is_bounded() -> None:
    """Any split of a valid message: the least size declared stays within its length; walked
    whole, it is its length. A message of many small entries is walked MAX_HEADERS headers far."""
    message = msgpack.packb(
        ["t", 1, {"a": [b"b" * 300, msgpack.ExtType(0, b"12345678"), -1, 2**40, 1.5, {}]}, {}]
    )
    rng = random.Random(7)
    for _ in range(500):
        walker = DeclaredSize(0)
        cuts = sorted(rng.sample(range(1, len(message)), rng.randint(1, 20)))
        for start, end in zip([0, *cuts], [*cuts, len(message)], strict=True):
            walker.feed(message[start:end])
            assert walker.least_size() <= len(message)
        assert walker.least_size() == len(message)
    many = msgpack.packb(["t", [[1, {"log": "x"}] for _ in range(1000)]])
    walker = DeclaredSize(0)
    walker.feed(many)
    assert walker.done and walker.headers == MAX_HEADERS


def test_a_byte_no_msgpack_starts_with_ends_the_walk() -> None:
    """0xc1 (never used): the unpacker refuses the message; nothing after it is read as a
    header (here a bin of 100 MB), whether or not a read split the header before it."""
    data = b"\x93\xa1t\xc1\xc6" + struct.pack(">I", BIG)
    for split in range(1, len(data)):
        walker = DeclaredSize(0)
        walker.feed(data[:split])
        walker.feed(data[split:])
        assert walker.done and walker.least_size() < 16


# --- the server's walk over random valid streams, as the real unpacker splits them -------------


def _value(rng: random.Random, depth: int) -> Any:
    """A random msgpack value: every header width of str, bin, ext, array and map, every int
    and float width, EventTime, nil and booleans, nested a few levels."""
    kind = rng.randrange(10 if depth < 3 else 7)
    size = rng.choice([0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]) if rng.random() < 0.2 else 5
    if kind == 0:
        return rng.choice([None, True, False, 1.5, rng.random()])
    if kind == 1:
        return rng.choice([0, 127, 128, 255, 256, 65536, 2**32, 2**64 - 1, -1, -33, -129, -(2**63)])
    if kind == 2:
        return "é" * (size // 2) + "s" * (size % 2)
    if kind == 3:
        return b"b" * size
    if kind == 4:
        return msgpack.ExtType(rng.randrange(128), b"e" * rng.choice([1, 2, 4, 8, 16, 3, size]))
    if kind == 5:
        return wire.EventTime(rng.randrange(2**32), rng.randrange(10**9))
    if kind == 6:
        return "t" * rng.randrange(40)
    count = rng.choice([0, 1, 15, 16, 20])
    if kind == 7:
        return [_value(rng, depth + 1) for _ in range(count)]
    return {f"k{i}": _value(rng, depth + 1) for i in range(count)}


def _random_message(rng: random.Random) -> bytes:
    """A valid Forward message of a random mode: Forward, Message, PackedForward (bin or, as
    old Fluentd sends it, str blob) or CompressedPackedForward, with or without options."""
    tag = "logq." + "t" * rng.randrange(40)
    entries = [
        [rng.choice([wire.EventTime(1_795_860_000, 1), 1_795_860_000, 1.5]), _record(rng)]
        for _ in range(rng.choice([0, 1, 15, 16, 17, 40]))
    ]
    options = [{"chunk": "c" * rng.randint(1, 24), "size": len(entries), "x": _value(rng, 2)}]
    options = options if rng.random() < 0.7 else []
    packer = msgpack.Packer(default=wire._default, use_single_float=rng.random() < 0.3)
    mode = rng.randrange(5)
    if mode == 0:
        return packer.pack([tag, entries, *options])
    if mode == 1:
        return packer.pack([tag, entries[0][0] if entries else 1, _record(rng), *options])
    blob = b"".join(packer.pack(entry) for entry in entries)
    if mode == 2:
        blob = gzip.compress(blob, compresslevel=1)
        options = [{**(options[0] if options else {}), "compressed": "gzip"}]
    if mode == 3:  # the blob as a str (msgpack's old raw type)
        return msgpack.Packer(default=wire._default, use_bin_type=False).pack([tag, blob, *options])
    return packer.pack([tag, blob, *options])


def _record(rng: random.Random) -> dict[str, Any]:
    record = {"log": "l" * rng.choice([0, 1, 31, 32, 300, 70000]), "stream": "stdout"}
    record.update({f"f{i}": _value(rng, 1) for i in range(rng.randrange(4))})
    return record


def _walked_reads(stream: bytes, cuts: list[int], limit: int) -> list[tuple[int, int]]:
    """Feed ``stream`` to a connection's real unpacker in the reads ``cuts`` makes and run the
    server's own check after each read, as ``ForwardServer._serve`` does: per read that ends
    inside a message, (the least size the walk declared, the stream offset of its start). A
    refusal fails the test."""
    server = ForwardServer(HeldBuffer(), Metrics(), ServerLimits(limit))  # type: ignore[arg-type]
    conn = _Conn("test:1")
    unpacker = wire.new_unpacker(2 * len(stream))
    seen: list[tuple[int, int]] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        conn.read = stream[start:end]
        unpacker.feed(conn.read)
        conn.fed += len(conn.read)
        for _ in unpacker:
            conn.boundary = unpacker.tell()
        error = server._declared_error(conn)
        assert error is None, error
        if conn.declared is not None:
            seen.append((conn.declared.least_size(), conn.declared.start))
    assert conn.boundary == conn.fed == len(stream)
    return seen


def test_random_valid_messages_split_anywhere_are_never_refused_from_their_headers() -> None:
    """Several random valid messages of every mode in one stream (so one read holds the end of
    one and the start of the next), split at random points, at every byte for some: after each
    read the least size walked is never more than the unfinished message's own length, and no
    message is refused with the limit at the largest message's size. A message walked whole
    declares exactly its length: a header misread by a byte would show there."""
    rng = random.Random(2025)
    for round_ in range(120):
        messages = [_random_message(rng) for _ in range(rng.randint(1, 4))]
        stream = b"".join(messages)
        starts = {sum(map(len, messages[:i])): len(m) for i, m in enumerate(messages)}
        if round_ % 20 == 0 and len(stream) < 20_000:
            cuts = list(range(1, len(stream)))
        else:
            cuts = sorted(
                rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.choice([1, 7, 60])))
            )
        for least, start in _walked_reads(stream, cuts, max(map(len, messages))):
            assert least <= starts[start], (round_, start, least, starts[start])
        for message in messages:  # walked whole (within MAX_HEADERS): exactly its length
            walker = DeclaredSize(0)
            walker.feed(message[:3])
            walker.feed(message[3:])
            if walker.headers < MAX_HEADERS:
                assert walker.least_size() == len(message), (round_, message[:64])


def test_each_byte_of_a_big_message_is_walked_once_whatever_its_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check runs on the hot path after every read of an unfinished message: it hands the
    walk only that read's new bytes (a rescan from the message's start would cost the square of
    its reads), and a PackedForward blob is skipped, not read: four headers."""
    handed: list[int] = []
    feed = DeclaredSize.feed

    def counting(self: DeclaredSize, data: bytes, offset: int = 0) -> None:
        handed.append(len(data) - offset)
        feed(self, data, offset)

    headers: list[int] = []
    header = DeclaredSize._header

    def counting_headers(self: DeclaredSize, data: bytes, i: int) -> int | None:
        headers.append(i)
        return header(self, data, i)

    monkeypatch.setattr(DeclaredSize, "feed", counting)
    monkeypatch.setattr(DeclaredSize, "_header", counting_headers)
    entries = [(1_795_860_000_000_000_000, {"log": "x" * 200, "stream": "stdout"})] * 5000
    message = wire.encode_packed_forward("logq.big", entries, "c")
    stream = message + message
    seen = _walked_reads(stream, list(range(4096, len(stream), 4096)), len(message))
    assert len(handed) == len(seen) > 2 * len(message) // 4096 - 4  # every read inside one
    assert sum(handed) <= len(stream)  # each byte handed once: no rescan from the start
    assert len(headers) <= 2 * 8  # per message: array, tag, bin, options map and its 2 pairs
