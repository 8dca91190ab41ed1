"""Big CompressedPackedForward blobs are inflated in one worker thread, not on the event loop
(aggregator/inflate.py): over 1 MiB compressed, or past 256 gzip members or 8 MiB of output.
Small ones stay inline. Acks, the order of a connection's messages, the limits and the stop hold.

The decompressors are watched (:class:`_Watched`): which thread each step ran on, its output,
and, for the server tests, a step in the worker held until the test lets it go, so that "a big
blob is being inflated" is a state the test holds, not a race.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from aggregator import big_messages
from aggregator import inflate as inflate_mod
from aggregator import server as server_mod
from aggregator.decode import from_ipc
from aggregator.inflate import (
    INLINE_MAX_COMPRESSED,
    INLINE_MAX_MEMBERS,
    INLINE_MAX_OUTPUT,
    Inflater,
    Unfinished,
)
from aggregator.metrics import Metrics
from aggregator.server import ForwardServer, ServerLimits
from shipper import wire
from tests.aggregator.helpers import record, serving
from tests.aggregator.test_inflight import HeldBuffer, _ack, _message, _rejected, _run, _until

WORKER = "logq-inflate"
_decompressobj = zlib.decompressobj


class _Watched:
    """``zlib.decompressobj`` as wire.py calls it, noting each step's thread and output size;
    while ``held`` is clear, a step in the worker waits for it (up to 30 s)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []
        self.held = threading.Event()
        self.held.set()
        self.waiting = threading.Event()
        """Set once a step in the worker waits for ``held``."""

    def __call__(self, **kwargs: int) -> Any:
        real = _decompressobj(**kwargs)
        watched = self

        class Decompressor:
            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                name = threading.current_thread().name
                if name.startswith(WORKER) and not watched.held.is_set():
                    watched.waiting.set()
                    watched.held.wait(30)
                out = real.decompress(data, max_length)
                watched.steps.append((name, len(out)))
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Decompressor()

    def threads(self) -> list[str]:
        """The threads the steps ran on, each once, in order ("worker" for the inflater's)."""
        names = ["worker" if n.startswith(WORKER) else n for n, _ in self.steps]
        return list(dict.fromkeys(names))


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Watched]:
    watch = _Watched()
    monkeypatch.setattr(wire.zlib, "decompressobj", watch)
    yield watch
    watch.held.set()


def _big_message(chunk: str, n: int = 1500) -> bytes:
    """A CompressedPackedForward message of ``n`` lines of random text, over
    INLINE_MAX_COMPRESSED bytes of gzip (random text hardly compresses)."""
    rng = random.Random(chunk)
    entries = [
        (1_795_860_000_000_000_000 + i, record(base64.b64encode(rng.randbytes(750)).decode()))
        for i in range(n)
    ]
    frame = wire.encode_packed_forward("logq.big", entries, chunk=chunk, compress=True)
    assert len(msgpack.unpackb(frame)[1]) > INLINE_MAX_COMPRESSED
    return frame


def _gzip_message(blob: bytes) -> list[Any]:
    return ["logq.t", blob, {"compressed": "gzip", "chunk": "c"}]


def _inflated(obj: Any, max_bytes: int, max_members: int) -> Any:
    async def inflate() -> Any:
        inflater = Inflater()
        try:
            return await inflater.inflated(obj, max_bytes, max_members)
        finally:
            await inflater.close()

    return asyncio.run(inflate())


def _workers() -> list[str]:
    """The inflater's worker threads still running."""
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER)]


# --- which blobs go to the worker ----------------------------------------------------------------


def test_a_blob_over_1_mib_is_inflated_in_the_worker_in_1_mib_steps(watched: _Watched) -> None:
    body = base64.b64encode(random.Random(1).randbytes(3 * 1024 * 1024))  # 3 MiB of gzip
    obj = _gzip_message(gzip.compress(body, 1))
    plain = _inflated(obj, len(body), 10)
    assert plain == ["logq.t", body, {"chunk": "c"}]
    assert watched.threads() == ["worker"]
    assert max(size for _, size in watched.steps) == wire.GUNZIP_STEP


def test_a_small_blob_is_inflated_inline(watched: _Watched) -> None:
    body = wire.pack_entries([(1, record(f"line {i}")) for i in range(1000)])
    obj = _gzip_message(gzip.compress(body))
    assert _inflated(obj, len(body), 10)[1] == body
    assert watched.threads() == ["MainThread"]


def test_members_past_256_are_inflated_in_the_worker(watched: _Watched) -> None:
    """A small blob of many tiny members costs a decompressor each: the first
    INLINE_MAX_MEMBERS inline, the others in the worker, the output whole and in order."""
    members = [str(i).encode() for i in range(INLINE_MAX_MEMBERS + 50)]
    blob = b"".join(gzip.compress(m) for m in members)
    plain = _inflated(_gzip_message(blob), 1 << 20, 1000)
    assert plain[1] == b"".join(members)
    assert watched.threads() == ["MainThread", "worker"]
    assert sum(1 for name, _ in watched.steps if name == "MainThread") == INLINE_MAX_MEMBERS


def test_output_past_8_mib_is_inflated_in_the_worker(watched: _Watched) -> None:
    """A small blob may inflate to the decompressed limit (130 KB of gzip: 128 MiB of zeros):
    its first INLINE_MAX_OUTPUT bytes inline, the rest in the worker."""
    body = b"\x00" * (3 * INLINE_MAX_OUTPUT)
    blob = gzip.compress(body, 9)
    assert len(blob) < INLINE_MAX_COMPRESSED
    assert _inflated(_gzip_message(blob), len(body), 10)[1] == body
    assert watched.threads() == ["MainThread", "worker"]
    inline = sum(size for name, size in watched.steps if name == "MainThread")
    assert inline == INLINE_MAX_OUTPUT


def test_an_inflate_begun_inline_is_finished_in_the_worker_not_started_over(
    watched: _Watched,
) -> None:
    """:meth:`Inflater.inline` of a small blob that inflates past INLINE_MAX_OUTPUT hands
    over what it began; :meth:`Inflater.finish` inflates only the rest, in the worker."""
    body = b"\x00" * (3 * INLINE_MAX_OUTPUT)
    obj = _gzip_message(gzip.compress(body, 9))

    async def inflate() -> Any:
        inflater = Inflater()
        try:
            begun = inflater.inline(obj, len(body), 10)
            assert isinstance(begun, Unfinished) and begun.inflated == INLINE_MAX_OUTPUT
            return await inflater.finish(begun)
        finally:
            await inflater.close()

    plain = asyncio.run(inflate())
    assert plain == ["logq.t", body, {"chunk": "c"}]
    assert watched.threads() == ["MainThread", "worker"]
    assert sum(size for name, size in watched.steps if name == "MainThread") == INLINE_MAX_OUTPUT
    assert sum(size for _, size in watched.steps) == len(body)  # each byte inflated once


def test_the_limits_hold_in_the_worker(watched: _Watched) -> None:
    """Output over the decompressed limit and more members than the entry limit are refused
    there as inline, the output checked at every step (not inflated in full first)."""
    body = random.Random(2).randbytes(2 * 1024 * 1024)
    blob = gzip.compress(body, 1) + gzip.compress(b"\x00" * (8 * 1024 * 1024), 9)
    with pytest.raises(wire.ProtocolError, match=f"exceeds {len(body) + 5} bytes"):
        _inflated(_gzip_message(blob), len(body) + 5, 10)
    assert sum(size for _, size in watched.steps) <= len(body) + 6
    many = gzip.compress(body, 1) + gzip.compress(b"") * 3
    with pytest.raises(wire.ProtocolError, match="more than 3 gzip members"):
        _inflated(_gzip_message(many), 1 << 30, 3)
    assert set(watched.threads()) == {"worker"}


def test_other_messages_are_left_as_they_are() -> None:
    """Not CompressedPackedForward: the decoder judges them (and words their errors)."""
    inflater = Inflater()
    for obj in (
        ["t", b"\x92\x01\x80", {"chunk": "c"}],
        ["t", 1, {"log": "x"}, {"compressed": "gzip"}],  # Message mode
        ["t", [[1, {}]], {"compressed": "gzip"}],
        [1, b"x", {"compressed": "gzip"}],
        "t",
    ):
        assert asyncio.run(inflater.inflated(obj, 1 << 20, 10)) is obj


# --- the server ----------------------------------------------------------------------------------


def test_other_connections_are_served_while_a_big_blob_inflates(watched: _Watched) -> None:
    """While the worker holds a big blob, another connection's message is stored and acked
    (the event loop is free), and the big blob's connection stores nothing after it: its next
    message waits its turn. Then both are acked in order."""
    big = _big_message("big")

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (_, host, port):
            watched.held.clear()
            r_big, w_big = await asyncio.open_connection(host, port)
            w_big.write(big + _message("after-big", 2))
            await _until(watched.waiting.is_set)
            r_other, w_other = await asyncio.open_connection(host, port)
            w_other.write(_message("other", 3))
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(r_other) == "other"
            assert len(buffer.frames) == 1  # nothing of the big blob's connection yet
            watched.held.set()
            await _until(lambda: len(buffer.frames) == 3)
            assert len(buffer.frames[1]) > len(buffer.frames[2])  # the big one first
            buffer.sync(1)
            buffer.sync(2)
            unpacker = wire.new_unpacker()
            acks: list[str] = []
            while len(acks) < 2:
                unpacker.feed(await asyncio.wait_for(r_big.read(4096), 30))
                acks.extend(wire.decode_ack(obj) for obj in unpacker)
            assert acks == ["big", "after-big"]
            for w in (w_big, w_other):
                w.close()

    _run(scenario())
    assert "worker" in watched.threads()


def test_a_small_blob_that_inflates_big_is_inflated_once(
    watched: _Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob under INLINE_MAX_COMPRESSED whose output goes past INLINE_MAX_OUTPUT (lowered
    to 1 MiB here: the same path, less CPU): the server inflates its start inline and the rest
    in the worker, each byte once (it was inflated again from its start in the worker), and
    stores and acks the message whole."""
    monkeypatch.setattr(inflate_mod, "INLINE_MAX_OUTPUT", wire.GUNZIP_STEP)
    text = "repeated " * 400
    entries = [(1_795_860_000_000_000_000 + i, record(f"{i} {text}")) for i in range(700)]
    body = wire.pack_entries(entries)
    assert 2 * wire.GUNZIP_STEP < len(body) < big_messages.BIG_BYTES  # stored the small way
    frame = wire.pack(["logq.t", gzip.compress(body, 6), {"compressed": "gzip", "chunk": "z"}])
    assert len(frame) < INLINE_MAX_COMPRESSED

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame)
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(reader) == "z"
            stored = from_ipc(buffer.frames[0])
            assert stored.column("log").to_pylist() == [r["log"] for _, r in entries]
            writer.close()

    _run(scenario())
    assert watched.threads() == ["MainThread", "worker"]
    inline = sum(size for name, size in watched.steps if name == "MainThread")
    assert inline == wire.GUNZIP_STEP
    assert sum(size for _, size in watched.steps) == len(body)  # each byte inflated once


def test_a_stop_during_an_inflate_ends_it_at_the_next_step(watched: _Watched) -> None:
    """A stop past its grace cancels the connection waiting for its blob: the worker ends the
    blob at its next step instead of inflating the rest for nothing, nothing is acked, and the
    stop returns once the worker thread has ended (none is left running past it)."""
    big = _big_message("big", n=4000)  # ~3 MiB of output: three steps or more

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        server = ForwardServer(buffer, metrics, ServerLimits())  # type: ignore[arg-type]
        host, port = await server.start("127.0.0.1", 0)
        watched.held.clear()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(big)
        await _until(watched.waiting.is_set)
        stopping = asyncio.create_task(server.stop(grace=0.1))
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, unacked
        assert _workers() and not stopping.done()  # the worker is still in its step
        watched.held.set()
        await asyncio.wait_for(stopping, 30)
        assert _workers() == []
        assert buffer.frames == []
        writer.close()

    _run(scenario())
    assert [name for name, _ in watched.steps if name.startswith(WORKER)] == [f"{WORKER}_0"]


def test_a_blob_whose_client_left_during_its_inflate_is_not_stored(
    watched: _Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client gives up on the connection while its blob waits for the worker (its ack
    timeout passed): the message, which it resends, is dropped as abandoned, not stored a
    second time. Whether the client left is asked again once the blob is inflated."""
    left = False
    monkeypatch.setattr(server_mod, "_peer_closed", lambda writer: left)
    big = _big_message("big")

    async def scenario() -> None:
        nonlocal left
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (_, host, port):
            watched.held.clear()
            _, writer = await asyncio.open_connection(host, port)
            writer.write(big)
            await _until(watched.waiting.is_set)
            left = True
            watched.held.set()
            await _until(lambda: metrics.abandoned.labels("dropped")._value.get() == 1)
            assert buffer.frames == []
            writer.close()

    _run(scenario())


def test_a_big_blob_over_the_limit_closes_only_its_connection(watched: _Watched) -> None:
    body = random.Random(3).randbytes(2 * 1024 * 1024)
    blob = gzip.compress(body, 1) + gzip.compress(b"\x00" * (64 * 1024 * 1024), 9)
    frame = wire.pack(["logq.t", blob, {"compressed": "gzip", "chunk": "bomb"}])

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame)
            assert await asyncio.wait_for(reader.read(), 30) == b""
            assert _rejected(metrics, "protocol_error") == 1
            r_ok, w_ok = await asyncio.open_connection(host, port)
            w_ok.write(_message("ok", 2))
            await _until(lambda: len(buffer.frames) == 1)
            buffer.sync(0)
            assert await _ack(r_ok) == "ok"
            for w in (writer, w_ok):
                w.close()

    _run(scenario())
    assert "worker" in watched.threads()
