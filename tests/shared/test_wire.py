"""The Forward protocol codec: every mode the spec defines, decoded the same way."""

from __future__ import annotations

import gzip
import hashlib
import random
import zlib

import msgpack
import pytest

from shipper import wire

T0 = 1_700_000_000_123_456_789


def _decode_all(data: bytes) -> list[wire.Message]:
    unpacker = wire.new_unpacker()
    unpacker.feed(data)
    return [wire.decode_message(obj) for obj in wire.iter_messages(unpacker)]


def test_event_time_is_ext_type_0_with_big_endian_seconds_and_nanos() -> None:
    packed = wire.pack(wire.EventTime(0x01020304, 0x05060708))
    assert packed == b"\xd7\x00\x01\x02\x03\x04\x05\x06\x07\x08"
    # ext8 form (C7 08 00 ...) as some clients send it decodes too
    unpacker = wire.new_unpacker()
    unpacker.feed(b"\xc7\x08\x00\x01\x02\x03\x04\x05\x06\x07\x08")
    assert next(unpacker) == wire.EventTime(0x01020304, 0x05060708)


def test_packed_forward_round_trip_with_chunk_and_size() -> None:
    entries = [(T0 + i, {"log": f"line {i}", "offset": i}) for i in range(3)]
    chunk = wire.new_chunk_id()
    [msg] = _decode_all(wire.encode_packed_forward("logq.recipe", entries, chunk=chunk))
    assert msg.tag == "logq.recipe"
    assert msg.chunk == chunk
    assert msg.options["size"] == 3
    assert [(e.time_ns, e.record["log"]) for e in msg.events] == [(t, r["log"]) for t, r in entries]


def test_compressed_packed_forward_with_several_gzip_members() -> None:
    body = wire.pack_entries([(T0, {"log": "a"})]), wire.pack_entries([(T0 + 1, {"log": "b"})])
    blob = gzip.compress(body[0]) + gzip.compress(body[1])
    frame = wire.pack(["t", blob, {"compressed": "gzip"}])
    [msg] = _decode_all(frame)
    assert [e.record["log"] for e in msg.events] == ["a", "b"]


def test_message_mode_with_integer_time_and_forward_mode() -> None:
    frames = wire.pack(["app.web", 1_700_000_000, {"log": "int time"}]) + wire.encode_forward(
        "app.web", [(T0, {"log": "x"}), (T0 + 5, {"log": "y"})], {"chunk": "abc"}
    )
    first, second = _decode_all(frames)
    assert first.events[0].time_ns == 1_700_000_000 * 10**9
    assert first.chunk is None
    assert [e.record["log"] for e in second.events] == ["x", "y"]
    assert second.chunk == "abc"


def test_fluent_bit_metadata_entries_are_accepted() -> None:
    entry = [[wire.EventTime.from_ns(T0), {"otlp": {}}], {"log": "fb"}]
    frame = wire.pack(["fb.tag", [entry], {"chunk": "c1", "fluent_signal": 0}])
    [msg] = _decode_all(frame)
    assert msg.events[0].time_ns == T0
    assert msg.events[0].record == {"log": "fb"}


def test_stream_decoding_across_split_writes() -> None:
    data = wire.encode_packed_forward("t", [(T0, {"log": "split"})], chunk="k")
    unpacker = wire.new_unpacker()
    got = []
    for i in range(len(data)):
        unpacker.feed(data[i : i + 1])
        got += [wire.decode_message(o) for o in wire.iter_messages(unpacker)]
    assert len(got) == 1 and got[0].events[0].record["log"] == "split"


@pytest.mark.parametrize(
    "obj, reason",
    [
        ({"not": "an array"}, "expected a Forward message array"),
        (["t"], "expected a Forward message array"),
        ([1, 2, {}], "tag must be a string"),
        (["t", True, {}], "cannot tell the Forward mode"),
        (["t", 1, "not a map"], "record must be a map"),
        (["t", [[1]]], "entry must be"),
        (["t", b"\x00\x01", {"compressed": "gzip"}], "bad gzip payload"),
        (["t", b"x", {"compressed": "lz4"}], "unsupported compression"),
    ],
)
def test_malformed_messages_raise_protocol_error(obj: object, reason: str) -> None:
    with pytest.raises(wire.ProtocolError, match=reason):
        wire.decode_message(msgpack.unpackb(msgpack.packb(obj), raw=False))


def test_gzip_bomb_is_refused() -> None:
    blob = gzip.compress(b"\x00" * 10_000_000)
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        wire.gunzip_members(blob, max_bytes=1_000_000)


def test_many_gzip_members_are_decompressed_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zlib copies the input left after a member's end (``unused_data``): fed the whole rest of
    the blob for each member, a blob of n tiny members cost ~n²/2 member sizes of copying
    (32 MB of empty members: ~20 minutes of the aggregator's event loop). Counted as the bytes
    the decompressors are handed, which the copy follows; the output is unchanged."""
    fed = 0
    real = zlib.decompressobj

    class Counting:
        def __init__(self, **kwargs: int) -> None:
            self._d = real(**kwargs)

        def decompress(self, data: bytes | memoryview, max_length: int = 0) -> bytes:
            nonlocal fed
            fed += len(data)
            return self._d.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:
            return getattr(self._d, name)

    monkeypatch.setattr(wire.zlib, "decompressobj", Counting)
    members = [gzip.compress(str(i).encode()) for i in range(2000)]
    blob = b"".join(members) + b"\x00" * 8
    assert wire.gunzip_members(blob, 1 << 20) == b"".join(str(i).encode() for i in range(2000))
    assert fed <= len(blob) + len(members) * wire._MEMBER_WINDOW


def test_later_gzip_members_of_any_size_decompress_exactly_and_keep_the_bomb_limit() -> None:
    """Fluentd's concatenated members (one per buffer append): the members after the first are
    fed in doubling windows, so one far larger than the first window (incompressible, and
    stored at level 0) must come out whole, as must empty ones and zero padding; the output
    limit holds to the byte in a later member as in the first."""
    sizes = [0, 1, 63, 64, 65, 5_000, 300_000, 0, 70_000]
    bodies = [random.Random(n).randbytes(n) for n in sizes]
    blob = b"".join(gzip.compress(b, compresslevel=i % 10) for i, b in enumerate(bodies))
    whole = b"".join(bodies)
    assert wire.gunzip_members(blob + b"\x00" * 9, len(whole)) == whole
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        wire.gunzip_members(blob, len(whole) - 1)
    bomb = gzip.compress(b"a") + gzip.compress(b"\x00" * 10_000_000)
    with pytest.raises(wire.ProtocolError, match="exceeds 1000000 bytes"):
        wire.gunzip_members(bomb, max_bytes=1_000_000)
    with pytest.raises(wire.ProtocolError, match="truncated"):
        wire.gunzip_members(blob[:-3], len(whole))


def test_truncated_gzip_is_refused() -> None:
    blob = gzip.compress(wire.pack_entries([(T0, {"log": "a"})]))
    with pytest.raises(wire.ProtocolError):
        wire.gunzip_members(blob[:-6], max_bytes=1_000_000)


def test_ack_round_trip() -> None:
    unpacker = wire.new_unpacker()
    unpacker.feed(wire.encode_ack("Y2h1bms="))
    assert wire.decode_ack(next(unpacker)) == "Y2h1bms="
    assert wire.decode_ack(["HELO", {}]) is None


def test_handshake_digests_follow_the_spec() -> None:
    salt, nonce = b"salt", b"nonce"
    expected = hashlib.sha512(b"salt" + b"client" + b"nonce" + b"key").hexdigest()
    assert wire.ping_digest(salt, "client", nonce, "key") == expected
    ping = msgpack.unpackb(wire.encode_ping("client", salt, nonce, "key"), raw=False)
    assert ping[0] == "PING" and ping[1] == "client" and ping[3] == expected
    pong = msgpack.unpackb(wire.encode_pong(True, "", "server", salt, nonce, "key"), raw=False)
    assert pong[:3] == ["PONG", True, ""]
    assert pong[4] == hashlib.sha512(b"salt" + b"server" + b"nonce" + b"key").hexdigest()


def test_invalid_utf8_in_records_survives_decoding() -> None:
    raw = msgpack.packb(["t", 1, {"log": b"ok \xff\xfe bytes"}], use_bin_type=True)
    [msg] = _decode_all(raw)
    assert msg.events[0].record["log"] == b"ok \xff\xfe bytes"
    raw_str = b"\x93\xa1t\x01\x81\xa3log\xa4a\xff\xfeb"  # str type holding invalid UTF-8
    [msg] = _decode_all(raw_str)
    assert isinstance(msg.events[0].record["log"], str)
