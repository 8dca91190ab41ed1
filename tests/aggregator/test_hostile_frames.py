"""Hostile Forward messages the decoder must refuse whole, never ack in part.

A refused message is a :class:`shipper.wire.ProtocolError` raised before anything of it is
stored; the server then acks what was durable before it and closes the connection. Covered:
truncated PackedForward blobs (on every decode path: the msgspec fast path, the bulk msgpack
path, :func:`shipper.wire.decode_message`, with and without gzip), messages of more entries
than the per-message limit (a 16 KB gzip blob inflating to millions of entries), records nested
too deeply (RecursionError), records of millions of tiny nested values (the object budget), and
``chunk`` options that are not strings.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from aggregator import decode as dec
from aggregator import packed
from aggregator.server import MAX_JSON_DEPTH, ConnectionClosed, _json_messages, _JsonScanner
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.aggregator.test_packed import shipper_record

T0 = 1_795_860_000_123_456_789


def blob_of(n: int) -> bytes:
    """A logq-shipper PackedForward body of ``n`` entries (EventTime, the fast path's shape)."""
    return wire.pack_entries([(T0 + i, shipper_record(i)) for i in range(n)])


def message(second: Any, **options: Any) -> Any:
    """A Forward message as the server's unpacker yields it."""
    return msgpack.unpackb(
        wire.pack(["logq.recipe", second, options]), raw=False, ext_hook=wire._ext_hook
    )


def refused(obj: Any, match: str, **kwargs: Any) -> None:
    """Both decoders refuse ``obj`` (the aggregator's and the general one), naming ``match``."""
    with pytest.raises(wire.ProtocolError, match=match):
        dec.decode(obj, 1 << 30, **kwargs)
    with pytest.raises(wire.ProtocolError, match=match):
        wire.decode_message(obj, 1 << 30, **kwargs)


# --- truncated PackedForward and the size option -------------------------------------------------


# 100 entries take the constant-metadata msgspec decoder, 10 the per-record one (under
# packed.CONSTANT_MIN_ENTRIES): both must decline a cut blob, and the fallback must refuse it.
@pytest.mark.parametrize("n", [10, 100])
@pytest.mark.parametrize("with_size", [True, False])
@pytest.mark.parametrize("gzipped", [False, True])
def test_a_truncated_packed_forward_is_refused_not_acked_short(
    n: int, with_size: bool, gzipped: bool
) -> None:
    cut = blob_of(n)[:-3]  # the last entry loses its last bytes
    options: dict[str, Any] = {"chunk": "c1"}
    if with_size:
        options["size"] = n
    if gzipped:
        options["compressed"] = "gzip"
    obj = message(gzip.compress(cut) if gzipped else cut, **options)
    refused(obj, "truncated PackedForward entries")
    assert packed.decode_entries(cut, n) is None
    assert packed.constant_columns(cut, n, dec.DICT_STRING) is None
    with pytest.raises(wire.ProtocolError, match="truncated"):
        dec._unpack_entries(cut)


@pytest.mark.parametrize("size", [0, 99, 101, 5000, 10**9, "100", 100.0, True, [100]])
@pytest.mark.parametrize("mode", ["packed", "gzip", "forward"])
def test_a_size_option_that_is_not_the_entry_count_is_ignored(size: Any, mode: str) -> None:
    """As in Fluentd: the blob's length says where it ends, and every entry is decoded (a
    client bug in ``size`` must not make it resend the chunk forever)."""
    blob = blob_of(100)
    if mode == "forward":
        entries = msgpack.unpackb(b"\xdd\x00\x00\x00\x64" + blob, raw=False)
        obj = message(entries, size=size, chunk="c")
    elif mode == "gzip":
        obj = message(gzip.compress(blob), size=size, compressed="gzip", chunk="c")
    else:
        obj = message(blob, size=size, chunk="c")
    batch, chunk = dec.decode(obj, 1 << 30)
    assert (batch.num_rows, chunk) == (100, "c")
    assert len(wire.decode_message(obj).events) == 100


def test_right_or_nil_size_is_accepted_on_every_path() -> None:
    blob = blob_of(100)
    for obj in (
        message(blob, size=100, chunk="c"),
        message(gzip.compress(blob), size=100, compressed="gzip", chunk="c"),
        message(blob, size=None, chunk="c"),
        message(blob, chunk="c"),
    ):
        batch, chunk = dec.decode(obj, 1 << 30)
        assert (batch.num_rows, chunk) == (100, "c")
        assert len(wire.decode_message(obj).events) == 100
    # Message mode has one event: ``size`` is not checked there (as in Fluentd).
    frame = wire.encode_message("t", T0, {"log": "x"}, {"size": 7})
    obj = msgpack.unpackb(frame, raw=False, ext_hook=wire._ext_hook)
    assert dec.decode(obj, 1 << 30)[0].num_rows == 1


def test_trailing_bytes_after_the_last_entry_are_refused() -> None:
    obj = message(blob_of(3) + b"\x92", size=3, chunk="c")
    refused(obj, "truncated PackedForward entries")


# --- entries per message (decompression amplification) ------------------------------------------


def test_a_gzip_bomb_of_tiny_entries_is_refused_at_the_entry_limit() -> None:
    """16 KB of gzip, 16 MiB of 3-byte ``[0, {}]`` entries: 5.6 million of them. Refused once
    the limit is passed (building at most that many), not decoded in full (~2 GB, 25 s).

    At a limit of 5,000: at the default (500,000) each decoder built its 500,000 entries
    first, ~2 CPU-s for the same refusal; the default is checked below."""
    body = b"\x92\x00\x80" * (16 * 1024 * 1024 // 3)
    bomb = gzip.compress(body, 9)
    assert len(bomb) < 20_000
    obj = message(bomb, compressed="gzip", chunk="c")
    refused(
        obj, "more than 5000 entries in one message .the per-message entry limit.", max_entries=5000
    )


def test_the_default_entry_limit_is_the_documented_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests refuse messages at small limits; without the flag, the decoders and the
    aggregator take the limit the README, docs/operations.md and ``--help`` give."""
    import argparse
    import inspect

    from aggregator.arguments import add_serve_flags
    from aggregator.config import load_settings
    from aggregator.server import ServerLimits

    assert wire.MAX_MESSAGE_ENTRIES == 500_000
    for decoder in (dec.decode, wire.decode_message):
        default = inspect.signature(decoder).parameters["max_entries"].default
        assert default == wire.MAX_MESSAGE_ENTRIES, decoder
    monkeypatch.setenv("LOGQ_WAREHOUSE", "s3://bucket/prefix")
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    assert load_settings(parser.parse_args([])).max_message_entries == 500_000
    assert ServerLimits().max_message_entries == 500_000
    (flag,) = [a for a in parser._actions if "--max-message-entries" in a.option_strings]
    assert "(default 500,000)" in str(flag.help)
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "| `--max-message-entries N` | 500,000 |" in readme
    operations = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "more than `--max-message-entries` entries (500,000)" in operations


def test_a_blob_of_more_gzip_members_than_the_entry_limit_is_refused() -> None:
    """Empty gzip members (20 bytes each) hold no entry, so the entry limit never saw them: a
    32 MB message of 1.6 million was decompressed member by member on the event loop. A
    sender writes whole entries in each member, so a message may hold as many members as
    entries; the members a real sender writes (one per entry at most) still decode."""
    entries = [gzip.compress(wire.pack_entries([(T0 + i, shipper_record(i))])) for i in range(20)]
    decoded = dec.decode(message(b"".join(entries), compressed="gzip"), 1 << 30, max_entries=20)
    assert decoded[0].num_rows == 20
    empties = gzip.compress(b"") * 21
    refused(message(empties, compressed="gzip"), "more than 20 gzip members", max_entries=20)
    refused(
        message(b"".join(entries) + gzip.compress(b""), compressed="gzip"),
        "more than 20 gzip members",
        max_entries=20,
    )


@pytest.mark.parametrize("mode", ["packed", "gzip", "forward"])
def test_the_entry_limit_holds_on_every_path(mode: str) -> None:
    blob = blob_of(100)
    if mode == "forward":
        second: Any = msgpack.unpackb(b"\xdd\x00\x00\x00\x64" + blob, raw=False)
        opts: dict[str, Any] = {}
    else:
        second = gzip.compress(blob) if mode == "gzip" else blob
        opts = {"compressed": "gzip"} if mode == "gzip" else {}
    refused(message(second, **opts), "more than 99 entries", max_entries=99)
    assert dec.decode(message(second, **opts), 1 << 30, max_entries=100)[0].num_rows == 100


def test_the_server_unpacker_refuses_a_huge_forward_array_from_its_header() -> None:
    unpacker = wire.new_unpacker(1 << 20, max_array_len=1000)
    unpacker.feed(wire.pack(["t", [[0, {}]] * 1001]))
    with pytest.raises(wire.ProtocolError, match=r"exceeds max_array_len.*entry limit"):
        list(wire.iter_messages(unpacker))
    unpacker = wire.new_unpacker(1 << 20, max_array_len=1000)
    unpacker.feed(wire.pack(["t", [[0, {}]] * 1000]))
    assert len(next(wire.iter_messages(unpacker))[1]) == 1000


# --- records of tiny nested values: the object budget --------------------------------------------


def _junk_entries(n_entries: int, width: int) -> list[tuple[int, dict[str, Any]]]:
    """Entries whose records each hold ``width`` empty maps (1 byte of msgpack, ~60 of Python),
    in arrays of 50 (under any array length limit)."""
    junk = [[{}] * 50] * (width // 50)
    return [(T0 + i, {"log": f"j{i}", "junk": junk}) for i in range(n_entries)]


@pytest.mark.parametrize("gzipped", [False, True])
def test_records_of_tiny_nested_values_are_refused_at_the_object_budget(gzipped: bool) -> None:
    """The entry limit does not reach inside records: 10 entries of 1,600 empty maps each
    build ~16,000 objects, over the budget of 128 per entry of a 100-entry limit (12,800)."""

    def second(width: int) -> tuple[bytes, dict[str, Any]]:
        blob = wire.pack_entries(_junk_entries(10, width))
        return (gzip.compress(blob), {"compressed": "gzip"}) if gzipped else (blob, {})

    blob, opts = second(1600)
    refused(message(blob, **opts), "more than 12,800 msgpack objects", max_entries=100)
    blob, opts = second(200)
    batch, _ = dec.decode(message(blob, **opts), 1 << 30, max_entries=100)
    assert batch.column("log").to_pylist() == [f"j{i}" for i in range(10)]


def test_unfinished_messages_of_all_connections_share_one_object_budget() -> None:
    """A streaming unpacker keeps the objects of a half-received message between reads: many
    connections each holding most of a message must not add up past one shared limit."""
    pool = wire.ObjectBudget(3_000)
    entries = [[0, {"log": "x", "junk": [[{}] * 50] * 4}] for _ in range(9)]  # ~1,900 objects
    half = wire.pack(["t", entries])[:-10]  # all but the end of the last entry

    def connection() -> tuple[Any, Any]:
        budget = wire.message_budget(100, 1 << 20, pool)
        return budget, wire.new_unpacker(1 << 20, max_array_len=100, budget=budget)

    a_budget, a = connection()
    a.feed(half)
    assert list(wire.iter_messages(a, a_budget)) == [] and pool.used > 1_500
    b_budget, b = connection()
    b.feed(half)
    with pytest.raises(wire.ObjectPoolFull, match="on all connections hold more than 3,000"):
        list(wire.iter_messages(b, b_budget))
    b_budget.reset()  # the server does this when it closes a connection
    a_budget.reset()
    assert pool.used == 0
    c_budget, c = connection()
    c.feed(wire.pack(["t", entries]))
    assert len(next(wire.iter_messages(c, c_budget))[1]) == 9
    assert pool.used == 0  # a finished message gives its count back


@pytest.mark.parametrize("n", [10, 70])  # 70: the constant-metadata decoder too
def test_the_msgspec_path_skips_values_it_does_not_keep(n: int) -> None:
    """With a right ``size`` the msgspec decoders read only the keys they keep and skip the
    rest unbuilt, so the same records cost nothing there and are accepted."""
    blob = wire.pack_entries(_junk_entries(n, 400))
    batch, _ = dec.decode(message(blob, size=n), 1 << 30, max_entries=100)
    assert batch.column("log").to_pylist() == [f"j{i}" for i in range(n)]


def test_the_server_unpacker_counts_objects_per_message_across_reads() -> None:
    """Forward and Message modes are built by the connection's unpacker: the budget holds
    there, starts over with each message, and a message fed in small reads is counted once."""
    # 128 per entry, 8 million at most (the default entry limit would allow 64 million).
    assert wire.message_objects(wire.MAX_MESSAGE_ENTRIES) == 8_000_000
    budget = wire.message_budget(100, 1 << 20)  # 12,800 objects
    assert budget is not None and wire.message_budget(100, 12_800) is None  # cannot exceed it
    unpacker = wire.new_unpacker(1 << 20, max_array_len=100, budget=budget)
    # ~7,000 objects each: two in a row fit only if the count starts over per message.
    ok = wire.pack(["t", [[0, {"log": "x", "junk": [[{}] * 50] * 15}] for _ in range(9)]])
    stream = ok + ok
    got = []
    for start in range(0, len(stream), 7):
        unpacker.feed(stream[start : start + 7])
        got.extend(wire.iter_messages(unpacker, budget))
    assert len(got) == 2 and all(len(m[1]) == 9 for m in got)
    unpacker.feed(wire.pack(["t", 0, {"log": "x", "junk": [[[{}] * 50] * 50] * 6}]))
    with pytest.raises(wire.ProtocolError, match="more than 12,800 msgpack objects"):
        list(wire.iter_messages(unpacker, budget))


# --- records nested too deeply -------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("mode", ["forward", "packed", "message"])
def test_a_record_nested_too_deeply_is_a_protocol_error(mode: str) -> None:
    rec = {"service": "deep", "v": _nested(900)}  # valid msgpack: under its 1024 limit
    if mode == "message":
        frame = wire.encode_message("t", T0, rec, {"chunk": "c"})
        obj = msgpack.unpackb(frame, raw=False, ext_hook=wire._ext_hook)
    elif mode == "packed":
        obj = message(wire.pack_entries([(T0, rec)]), chunk="c")
    else:
        obj = message([[wire.EventTime.from_ns(T0), rec]], chunk="c")
    with pytest.raises(wire.ProtocolError, match="nested too deeply"):
        dec.decode(obj, 1 << 30)


def test_json_text_nested_too_deeply_closes_as_a_protocol_error() -> None:
    with pytest.raises(ConnectionClosed, match="nested too deeply") as info:
        _json_messages(b'["t", 1, {"log": "ok"}]' + b"[" * 200_000)
    assert info.value.label == "protocol_error"


@pytest.mark.parametrize(
    "text",
    [
        '["t", ' + "9" * 5000 + ', {"log": "a time of 5,000 digits"}, {"chunk": "c"}]',
        '["t", 1, {"log": "a value of 5,000 digits", "n": ' + "9" * 5000 + '}, {"chunk": "c"}]',
    ],
)
@pytest.mark.parametrize("unfinished", [True, False])
def test_a_json_integer_too_long_for_python_closes_as_a_protocol_error(
    text: str, unfinished: bool
) -> None:
    """Python refuses to read an integer of over 4,300 digits (a ValueError, not a
    JSONDecodeError): hostile input, closed with a reason, not an internal error."""
    with pytest.raises(ConnectionClosed, match="JSON value that cannot be read") as info:
        _json_messages(text.encode(), unfinished=unfinished)
    assert info.value.label == "protocol_error"
    assert "4300" in str(info.value) and "set_int_max_str_digits" not in str(info.value)


_TRICKY_JSON = [
    json.dumps(["t", 1, {"log": 'a "quoted" ] } [ { \\ back\\slash \\"', "k": [[], {}]}]),
    json.dumps(["t", [[1, {"log": "\\\\"}], [2, {"log": "ü ] \\u00e9 \\n"}]], {"chunk": "c"}]),
    json.dumps(["t", 1, {"log": "x\\"}], ensure_ascii=False),
]


@pytest.mark.parametrize("text", _TRICKY_JSON)
def test_the_json_scanner_finds_the_end_of_a_message_however_it_is_split(text: str) -> None:
    """``]``, ``}``, quotes and backslashes inside strings do not fool it, and neither does a
    read that ends inside an escape; the message is complete at its last byte, not before."""
    data = text.encode()
    assert json.loads(data)  # valid JSON, so the test is about splitting
    byte_by_byte = _JsonScanner()
    for i in range(len(data)):
        byte_by_byte.feed(data[i : i + 1])
        assert byte_by_byte.complete is (i == len(data) - 1), (i, data[: i + 1])
    for cut in range(len(data) + 1):
        two = _JsonScanner()
        two.feed(data[:cut])
        assert two.complete is (cut == len(data))
        two.feed(data[cut:])
        assert two.complete


def test_the_json_scanner_counts_values_per_message_before_any_parse() -> None:
    """The object budget for JSON: ``[[],[],...]`` is 3 bytes a Python list. Commas inside
    strings are not values, and each message starts its count over."""
    scanner = _JsonScanner(max_values=10)
    scanner.feed(json.dumps(["t", 1, {"log": ",,,,,,,,,,,,,,,,,,,,"}]).encode())  # 5 values
    scanner.feed(json.dumps(["t", 1, {"log": "x", "a": [1, 2]}]).encode())  # 7: counted anew
    assert scanner.complete
    with pytest.raises(ConnectionClosed, match="more than 10 values"):
        scanner.feed(b'["t", [[], [], [], [], [], [], [], [], [], [], []')


def test_a_json_message_cut_anywhere_is_waited_for_not_refused() -> None:
    """A read may end inside a number (``23953.``), a word (``tr``) or an escape (``\\u00``):
    the parse error just before the end means "not arrived yet", not a bad message."""
    text = json.dumps(
        ["t", 23953.6459, {"log": "caf\u00e9", "ok": True, "n": None, "x": -0.0, "e": 1.5e-7}],
        ensure_ascii=True,
    ).encode()
    assert json.loads(text)
    for cut in range(1, len(text)):
        got, rest = _json_messages(text[:cut])
        assert got == [] and rest == text[:cut], cut
    assert len(_json_messages(text)[0]) == 1


def test_the_json_scanner_refuses_deep_nesting_as_it_arrives() -> None:
    scanner = _JsonScanner()
    scanner.feed(b"[" * MAX_JSON_DEPTH)
    with pytest.raises(ConnectionClosed, match="nested too deeply"):
        scanner.feed(b"[")


# --- chunk option --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [5, 1.5, False, {"id": "x"}, ["x"]])
def test_a_chunk_option_that_is_not_a_string_is_refused_before_storing(chunk: Any) -> None:
    with pytest.raises(wire.ProtocolError, match="chunk option must be a string"):
        dec.decode(message(blob_of(3), chunk=chunk), 1 << 30)


def test_string_bin_and_nil_chunks() -> None:
    assert dec.decode(message(blob_of(3), chunk="abc"), 1 << 30)[1] == "abc"
    assert dec.decode(message(blob_of(3), chunk=b"abc"), 1 << 30)[1] == b"abc"  # echoed as sent
    assert dec.decode(message(blob_of(3), chunk=None), 1 << 30)[1] is None


def test_a_chunk_id_over_the_limit_is_refused_before_storing() -> None:
    """The ack echoes the chunk id: a client's id of megabytes is refused, not echoed."""
    assert dec.decode(message(blob_of(3), chunk="c" * dec.MAX_CHUNK_CHARS), 1 << 30)[1]
    with pytest.raises(wire.ProtocolError, match="chunk option is 1,025 characters long"):
        dec.decode(message(blob_of(3), chunk="c" * (dec.MAX_CHUNK_CHARS + 1)), 1 << 30)
    with pytest.raises(wire.ProtocolError, match="over 1024"):
        dec.decode(message(blob_of(3), chunk=b"c" * 10_000_000), 1 << 30)


# --- the server: refused whole, earlier messages acked, the connection closed --------------------


def _closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    try:
        while data := sock.recv(65536):
            out += data
    except ConnectionResetError:
        pass
    return out


#: The entry limit of the server test: its bomb and its records of empty maps pass it (and the
#: object budget, 128 per entry) with thousands of entries and objects, not the millions the
#: defaults take to reach (500,000 entries, 8M objects: ~3 CPU-s of decoding to refuse them).
SERVER_ENTRIES = 1_000


@pytest.mark.integration
def test_server_acks_what_came_before_a_refused_message_then_closes(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--max-message-entries", str(SERVER_ENTRIES)])
    now = time.time_ns()

    def good(name: str) -> bytes:
        return wire.encode_packed_forward("logq.good", [(now, record(name, "good"))], name)

    cut = wire.pack_entries([(now, record(f"cut-{i}", "good")) for i in range(3)])[:-3]
    # No ``log``: the line is the record as JSON text, which the nesting overflows.
    deep = wire.pack_entries([(now, {"service": "good", "v": _nested(900)})])
    bad = {
        "truncated": wire.pack(["logq.good", cut, {"size": 3, "chunk": "x1"}]),
        "truncated_gzip": wire.pack(
            ["logq.good", gzip.compress(cut), {"compressed": "gzip", "chunk": "x2"}]
        ),
        "deep": wire.pack(["logq.good", deep, {"chunk": "x3"}]),
        "int_chunk": wire.pack(
            ["logq.good", wire.pack_entries([(now, record("i"))]), {"chunk": 7}]
        ),
        "bomb": wire.pack(
            ["logq.good", gzip.compress(b"\x92\x00\x80" * 5_000_000, 9), {"compressed": "gzip"}]
        ),
        # A few hundred bytes of gzip, 200,000 empty maps inside 20 records (under the entry
        # limit): over the object budget (128,000 at 1,000 entries).
        "nested": wire.pack(
            [
                "logq.good",
                gzip.compress(wire.pack_entries(_junk_entries(20, 10_000)), 9),
                {"compressed": "gzip", "chunk": "x4"},
            ]
        ),
        "long_chunk": wire.pack(
            ["logq.good", wire.pack_entries([(now, record("l"))]), {"chunk": "c" * 2000}]
        ),
    }
    # A bad entry among good ones is no bad message: the good entries are stored, the bad one
    # is a marked row of its own (tests/aggregator/test_bad_entries.py), the message is acked.
    entry = wire.pack([now // 10**9, record("kept", "good")])
    kept = {
        "record_not_map": entry + wire.pack([now // 10**9, 5]) + entry,
        "entry_not_pair": entry + wire.pack([now // 10**9]) + entry,
        "ext_type_5_time": entry + wire.pack([msgpack.ExtType(5, b"abcd"), {"log": "x"}]),
        "eventtime_wrong_len": wire.pack([msgpack.ExtType(0, b"abcde"), {"log": "x"}]) + entry,
    }
    try:
        with agg.connect() as bystander:
            for name, frame in bad.items():
                with agg.connect() as sock:
                    sock.sendall(good(f"before-{name}") + frame + good(f"after-{name}"))
                    replies = msgpack.Unpacker(raw=False)
                    replies.feed(_closed(sock))
                    assert [wire.decode_ack(o) for o in replies] == [f"before-{name}"], name
                bystander.sendall(good(f"bystander-{name}"))
                assert read_acks(bystander, 1) == [f"bystander-{name}"]
            for name, blob in kept.items():
                with agg.connect() as sock:
                    middle = wire.pack(["logq.good", blob, {"chunk": f"kept-{name}"}])
                    sock.sendall(good(f"before-{name}") + middle + good(f"after-{name}"))
                    acks = read_acks(sock, 3)
                    assert acks == [f"before-{name}", f"kept-{name}", f"after-{name}"], name
    finally:
        assert agg.stop() == 0  # flushes everything stored, acked or (wrongly) not
    table = read_table(agg.warehouse, "container_logs")
    expected = {f"{kind}-{name}" for name in bad for kind in ("before", "bystander")}
    expected |= {f"{kind}-{name}" for name in kept for kind in ("before", "after")}
    lines = table["message"].to_pylist()
    marked = [line for line in lines if line.startswith(dec.BAD_ENTRY_MARKER)]
    assert len(marked) == len(kept)
    assert lines.count("kept") == 2 + 2 + 1 + 1
    assert sorted(set(lines) - {"kept", *marked}) == sorted(expected)
    log = agg.log_text()
    assert "unexpected error" not in log and "Traceback" not in log
    for reason in (
        "truncated PackedForward entries",
        "nested too deeply",
        "chunk option must be a string",
        f"more than {SERVER_ENTRIES} entries in one message (the per-message entry limit)",
        f"more than {wire.message_objects(SERVER_ENTRIES):,} msgpack objects (the per-message",
        "chunk option is 2,000 characters long",
    ):
        assert reason in log, reason
    # One line per reason and address every 10 s (tests/aggregator/test_closed_warnings.py):
    # the same text again from 127.0.0.1 is not said twice.
    assert 0 < log.count("not the Forward protocol: ") <= len(bad)


@pytest.mark.integration
def test_json_mode_deep_nesting_closes_cleanly(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    try:
        with agg.connect() as sock:
            line = json.dumps(["logq.j", int(time.time()), {"log": "json-ok"}, {"chunk": "j1"}])
            sock.sendall(line.encode())
            assert _closed_after_ack(sock) == b'{"ack": "j1"}'
    finally:
        assert agg.stop() == 0
    log = agg.log_text()
    assert "JSON message nested too deeply" in log
    assert "Traceback" not in log and "RecursionError" not in log


def _closed_after_ack(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    ack = sock.recv(65536)
    sock.sendall(b"[" * 200_000)
    rest = _closed(sock)
    return ack + rest


@pytest.mark.integration
def test_the_entry_limit_is_a_flag(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--max-message-entries", "10"])
    now = time.time_ns()
    try:
        with agg.connect() as sock:
            sock.sendall(
                wire.encode_packed_forward(
                    "logq.t", [(now, record(f"ok-{i}", "t")) for i in range(10)], "ten"
                )
            )
            assert read_acks(sock, 1) == ["ten"]
            eleven = [(now, record(f"no-{i}", "t")) for i in range(11)]
            sock.sendall(wire.encode_packed_forward("logq.t", eleven, "eleven"))
            assert _closed(sock) == b""
    finally:
        assert agg.stop() == 0
    assert read_table(agg.warehouse, "container_logs").num_rows == 10
    assert "more than 10 entries in one message" in agg.log_text()


@pytest.mark.parametrize("packed_blob", [True, False])
def test_fluent_bit_entries_with_metadata_take_the_bulk_path(packed_blob: bool) -> None:
    """``[[time, metadata], record]`` entries (Fluent Bit) mixed with plain ones keep every
    row and its own time; an empty header is refused by the general path."""
    t1, t2 = wire.EventTime.from_ns(T0), wire.EventTime.from_ns(T0 + 5)
    entries = [[[t1, {"m": 1}], {"log": "with-meta"}], [t2, {"log": "plain"}]]
    obj = message(b"".join(wire.pack(e) for e in entries) if packed_blob else entries)
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.column("log").to_pylist() == ["with-meta", "plain"]
    assert batch.column("time_ns").to_pylist() == [T0, T0 + 5]
    (line,) = dec.decode(message([[[], {"log": "x"}]]), 1 << 30)[0].column("log").to_pylist()
    assert line.startswith(f"{dec.BAD_ENTRY_MARKER}: entry header is empty]")


@pytest.mark.parametrize(
    ("record", "line"),
    [
        ({"log": True}, "true"),
        ({"log": 1.5}, "1.5"),
        ({"log": {"k": [1, None]}}, '{"k": [1, null]}'),
        ({"message": {"k": 1}}, '{"k": 1}'),
        ({"msg": False, "level": "x"}, "false"),
        ({"log": b"bytes \xff"}, "bytes \ufffd"),
        ({"log": float("nan")}, "null"),  # JSON has no NaN
        ({"log": {"v": float("inf")}}, '{"v": null}'),
    ],
)
def test_lines_that_are_not_text_are_stored_as_json(record: dict[str, Any], line: str) -> None:
    """A ``log``/``message`` that is a map, a number or a boolean is kept as JSON text, as a
    JSON log pipeline would print it, not as Python's repr (``{'k': 1}``, ``True``)."""
    batch, _ = dec.decode(message([[wire.EventTime.from_ns(T0), record]]), 1 << 30)
    assert batch.column("log").to_pylist() == [line]


@pytest.mark.integration
def test_slow_senders_over_the_object_pool_wait_their_turn_instead_of_being_closed(
    tmp_path: Path,
) -> None:
    """Three clients each hold most of a Forward-mode message: together past one message's
    worth of objects (128 x 100 entries = 12,800). None is closed: a client in the middle of a
    message whose turn has not come reads nothing more until the first one has finished."""
    agg = start_aggregator(tmp_path, extra=["--max-message-entries", "100"])
    now = time.time_ns()

    def message(name: str) -> bytes:  # 90 entries of ~106 objects: ~9,500 objects
        entries = [[wire.EventTime.from_ns(now), {"log": f"{name}-{i}", "a": [{}] * 100}]
                   for i in range(90)]  # fmt: skip
        return wire.pack(["logq.pool", entries, {"chunk": name}])

    frames = {name: message(name) for name in ("a", "b", "c")}
    try:
        socks = {name: agg.connect() for name in frames}
        for name, frame in frames.items():  # all three unfinished: ~28,000 objects
            socks[name].sendall(frame[:-20])
            time.sleep(0.5)
        socks["b"].sendall(frames["b"][-20:])  # b is not first: it waits for a
        time.sleep(1)
        socks["a"].sendall(frames["a"][-20:])
        socks["c"].sendall(frames["c"][-20:])
        for name, sock in socks.items():
            assert read_acks(sock, 1, timeout=60) == [name]
            sock.close()
    finally:
        assert agg.stop() == 0
    logs = read_table(agg.warehouse, "container_logs")["message"].to_pylist()
    assert sorted(logs) == sorted(f"{n}-{i}" for n in frames for i in range(90))
    assert "objects_pool" not in agg.log_text() and "closing connection" not in agg.log_text()


# --- blobs without a size option: the msgspec path only where the general path accepts them ----


def _entry(value: bytes, log: bytes = b"\xa1x") -> bytes:
    """One ``[EventTime, {"log": ..., "v": value}]`` entry, ``value`` given as msgpack bytes."""
    time_ext = msgpack.packb(wire.EventTime.from_ns(T0).to_ext())
    return b"\x92" + time_ext + b"\x82\xa3log" + log + b"\xa1v" + value


def _before(obj: Any, max_entries: int) -> Any:
    """What :func:`aggregator.decode.decode` did with an unsized PackedForward message before it
    could take the msgspec path: the general path alone (a batch, or the refusal's text)."""
    blob = obj[1]
    try:
        if obj[2].get("compressed") == "gzip":
            blob = wire.gunzip_members(blob, 1 << 30)
        decoded = dec._fast_entries(obj[0], dec._unpack_entries(blob, max_entries))
        return (decoded or dec._general(obj, 1 << 30, max_entries))[0]
    except RecursionError:
        return "a record nested too deeply to decode"
    except wire.ProtocolError as exc:
        return str(exc)


def _now(obj: Any, max_entries: int) -> Any:
    try:
        return dec.decode(obj, 1 << 30, max_entries)[0]
    except wire.ProtocolError as exc:
        return str(exc)


_LIMIT = 1000  # --max-message-entries for the cases below: 128,000 objects, 16-bit headers
_HOSTILE_UNSIZED: dict[str, tuple[bytes, str]] = {
    # msgpack's stack is 1,024 deep: skip() stops there, as the general path's unpacker does.
    "nested deeper than msgpack's stack": (
        _entry(b"\x91" * 1100 + b"\xc0") * 3,
        "bad PackedForward",
    ),
    "a byte that is no msgpack type": (_entry(b"\xc1") * 3, "bad PackedForward entries"),
    "a map longer than the entry limit": (
        _entry(msgpack.packb({i: 0 for i in range(_LIMIT + 1)})),
        "1001 exceeds max_map_len.1000. .the per-message entry limit.",
    ),
    "an array longer than the entry limit": (
        _entry(msgpack.packb([None] * (_LIMIT + 1))) * 2,
        "1001 exceeds max_array_len.1000. .the per-message entry limit.",
    ),
    # An array16 header right after "d7 00" (here an integer's bytes): only a real EventTime's
    # bytes, at the start of an entry, are not taken for a header.
    "a long array after bytes that look like an EventTime": (
        _entry(b"\x92\xcd\xd7\x00" + msgpack.packb([None] * (_LIMIT + 1))),
        "exceeds max_array_len",
    ),
    "a malformed msgpack Timestamp": (_entry(b"\xd4\xff\x00") * 3, "invalid timestamp data"),
    "a malformed msgpack Timestamp (ext 8)": (_entry(b"\xc7\x01\xff\x00"), "invalid timestamp"),
    "more entries than the limit": (_entry(b"\xc0") * (_LIMIT + 1), "more than 1000 entries"),
    "a truncated last entry": (_entry(b"\xc0") * 3 + _entry(b"\xc0")[:-4], "truncated"),
    "a trailing byte": (_entry(b"\xc0") * 3 + b"\x92", "truncated PackedForward entries"),
    "records of many tiny objects": (
        wire.pack_entries(_junk_entries(10, 15_000)),  # over 128,000 objects
        "more than 128,000 msgpack objects",
    ),
    "deep records without a line": (
        wire.pack_entries([(T0, {"v": _nested(900)})] * 2),
        "nested too deeply",
    ),
}


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("case", sorted(_HOSTILE_UNSIZED))
def test_hostile_unsized_blobs_are_refused_as_before(case: str, gzipped: bool) -> None:
    """Counting the entries of an unsized blob must not let the msgspec path accept what the
    general path refuses: each is refused, with the general path's own reason."""
    blob, reason = _HOSTILE_UNSIZED[case]
    obj = message(
        gzip.compress(blob) if gzipped else blob,
        chunk="c",
        **({"compressed": "gzip"} if gzipped else {}),
    )
    before = _before(obj, _LIMIT)
    assert isinstance(before, str) and re.search(reason, before), before
    assert _now(obj, _LIMIT) == before
    # Refused by msgpack: not counted. The other two are whole msgpack entries, refused after.
    counted = packed.count_entries(blob, _LIMIT) is not None
    assert counted is (case == "deep records without a line")


def test_a_trailing_nil_is_a_bad_entry_on_both_paths() -> None:
    """A nil after the entries is counted as one more (the msgspec path declines it): the
    general path keeps the three good entries and stores the nil as a bad entry's row."""
    blob = _entry(b"\xc0") * 3 + b"\xc0"
    assert packed.count_entries(blob, _LIMIT) == 4
    for obj in (
        message(blob, chunk="c"),
        message(gzip.compress(blob), chunk="c", compressed="gzip"),
    ):
        before, now = _before(obj, _LIMIT), _now(obj, _LIMIT)
        for batch in (before, now):
            assert batch.column("log").to_pylist() == [
                "x",
                "x",
                "x",
                f"{dec.BAD_ENTRY_MARKER}: entry must be [time, record]] null",
            ]


# Look like the hostile ones, but the general path accepts them: so does the msgspec path.
_ACCEPTED_UNSIZED: dict[str, bytes] = {
    "nested 1,000 deep (msgspec's own limit is lower)": _entry(b"\x91" * 1000 + b"\xc0") * 3,
    "nested 1,020 deep": _entry(b"\x91" * 1020 + b"\xc0") * 2,
    "a map as long as the entry limit": _entry(msgpack.packb({i: 0 for i in range(_LIMIT)})),
    "a well-formed msgpack Timestamp": _entry(b"\xd6\xff\x00\x00\x00\x01") * 3,
    "header-like bytes in strings": _entry(msgpack.packb("\u0740\u07ff" * 50 + "\xff")) * 3,
    "header-like bytes in binary": _entry(msgpack.packb(b"\xdd\xff\xff\xff\xff\xd4\xff" * 9)),
    "many objects in a blob too small to reach the budget": wire.pack_entries(
        _junk_entries(10, 1_000)
    ),
    "an array as a map key": _entry(b"\x81\x92\x01\x02\x03") * 3,
}


@pytest.mark.parametrize("case", sorted(_ACCEPTED_UNSIZED))
def test_unsized_blobs_the_general_path_accepts_decode_the_same(case: str) -> None:
    blob = _ACCEPTED_UNSIZED[case]
    obj = message(blob, chunk="c")
    before = _before(obj, _LIMIT)
    assert not isinstance(before, str), before
    assert _now(obj, _LIMIT).equals(before)


def test_an_array32_longer_than_the_entry_limit_is_refused_as_before() -> None:
    """Past 65,535 items an array has a 32-bit length: found by its header too."""
    limit = 70_000
    blob = _entry(b"\x92\xcd\xd7\x00" + msgpack.packb([None] * (limit + 1)))
    assert b"\xcd\xd7\x00\xdd" in blob  # array32, right after an integer's "d7 00"
    obj = message(blob, chunk="c")
    assert (
        _before(obj, limit)
        == _now(obj, limit)
        == ("70001 exceeds max_array_len(70000) (the per-message entry limit)")
    )
    ok = _entry(msgpack.packb([None] * limit))
    assert packed.count_entries(ok, limit) == 1
    assert _now(message(ok, chunk="c"), limit).equals(_before(message(ok, chunk="c"), limit))


def test_binary_full_of_header_like_bytes_is_left_to_the_general_path() -> None:
    """Too many bytes that look like a header to check each one (binary data): not counted,
    the general path decodes it as before."""
    blob = _entry(msgpack.packb(b"\xd4\xff\xdd\xff\xff\xff\xff" * 4000)) * 2
    assert packed.count_entries(blob, _LIMIT) is None
    obj = message(blob, chunk="c")
    assert _now(obj, _LIMIT).equals(_before(obj, _LIMIT))


def test_a_map_as_a_map_key_is_read_as_text_by_both_paths() -> None:
    """Python cannot hash a map. The general path refused a whole message with one as a map key
    (and every resend of it: the client's data stopped there), while the msgspec path skipped
    the value and stored the records (as Fluentd, in Ruby, accepts them). Now the general path
    reads such a key as its JSON text, and both store the same rows, sized or not."""
    in_value = _entry(b"\x81\x81\x01\x02\x03") * 3  # {"v": {{1: 2}: 3}}
    time_ext = msgpack.packb(wire.EventTime.from_ns(T0).to_ext())
    at_top = (b"\x92" + time_ext + b"\x82\xa3log\xa1x\x81\xa1a\x01\xa1v") * 3  # {"a": 1}: "v"
    for blob in (in_value, at_top):
        before = _before(message(blob, chunk="c"), _LIMIT)
        assert not isinstance(before, str), before
        assert before.column("log").to_pylist() == ["x"] * 3
        assert _now(message(blob, chunk="c"), _LIMIT).equals(before)
        sized = dec.decode(message(blob, chunk="c", size=3), 1 << 30, _LIMIT)[0]
        assert sized.equals(before)
    assert dec._unpack_entries(at_top)[0][1] == {"log": "x", '{"a":1}': "v"}


def test_map_keys_past_json_are_read_as_their_repr() -> None:
    assert wire.map_key_text({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert wire.map_key_text({(1, 2): 3}) == "{(1, 2): 3}"  # JSON keys are text
    assert wire.map_key_text({"b": b"\x00"}) == "{'b': b'\\x00'}"


def test_an_unsized_blob_over_the_object_budget_bytes_is_left_to_the_general_path() -> None:
    """Over message_objects(max_entries) bytes the general path counts objects, which the
    count cannot: such a blob (real records at the default limit: over 8 MB) is not counted."""
    ok = wire.pack_entries([(T0 + i, shipper_record(i)) for i in range(100)])
    assert packed.count_entries(ok, _LIMIT) == 100
    limit = len(ok) // 128  # message_objects(limit) = 128 * limit < len(ok)
    assert wire.message_objects(limit) < len(ok) and packed.count_entries(ok, limit) is None
    assert dec.decode(message(ok, chunk="c"), 1 << 30, limit)[0].num_rows == 100


@pytest.mark.integration
def test_server_refuses_hostile_unsized_blobs_and_stores_good_ones(tmp_path: Path) -> None:
    """Unsized blobs through a real server: good ones (Fluentd style, EventTime and integer
    times, Fluent Bit's [[time, metadata], record]) stored and acked; each hostile one refused
    with its reason in the log, what came before it acked, and the server still serving."""
    agg = start_aggregator(tmp_path, extra=["--max-message-entries", str(_LIMIT)])
    now = time.time_ns()

    def good(name: str, n: int = 3) -> bytes:
        plain = [wire.pack([wire.EventTime.from_ns(now), record(f"{name}-{i}", "good")])
                 for i in range(n)]  # fmt: skip
        ints = [wire.pack([now // 10**9, record(f"{name}-int-{i}", "good")]) for i in range(n)]
        headed = [wire.pack([[wire.EventTime.from_ns(now), {}], record(f"{name}-fb-{i}", "good")])
                  for i in range(n)]  # fmt: skip
        return wire.pack(["logq.good", b"".join(plain + ints + headed), {"chunk": name}])

    bad = {
        name: wire.pack(["logq.good", blob, {"chunk": f"bad-{i}"}])
        for i, (name, (blob, _)) in enumerate(sorted(_HOSTILE_UNSIZED.items()))
    }
    try:
        with agg.connect() as bystander:
            for i, (name, frame) in enumerate(bad.items()):
                with agg.connect() as sock:
                    sock.sendall(good(f"before{i}") + frame + good(f"after{i}"))
                    replies = msgpack.Unpacker(raw=False)
                    replies.feed(_closed(sock))
                    assert [wire.decode_ack(o) for o in replies] == [f"before{i}"], name
                bystander.sendall(good(f"bystander{i}", 70))  # the constant decoder too
                assert read_acks(bystander, 1) == [f"bystander{i}"]
    finally:
        assert agg.stop() == 0
    stored = read_table(agg.warehouse, "container_logs")["message"].to_pylist()
    expected = [
        f"{kind}{i}-{form}{j}"
        for i in range(len(bad))
        for kind, n in (("before", 3), ("bystander", 70))
        for form in ("", "int-", "fb-")
        for j in range(n)
    ]
    assert sorted(stored) == sorted(expected)
    log = agg.log_text()
    assert "unexpected error" not in log and "Traceback" not in log
    for _, reason in _HOSTILE_UNSIZED.values():
        assert re.search(reason, log), reason
    # One line per reason and address every 10 s (tests/aggregator/test_closed_warnings.py):
    # the same text again from 127.0.0.1 is not said twice.
    assert 0 < log.count("not the Forward protocol: ") <= len(bad)


def test_a_bug_decoding_one_message_still_acks_the_durable_ones_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unexpected error decoding a message (a bug, e.g. R2's OverflowError of a float time
    just past int64) closes that connection; the messages before it in the same read are
    durable, and are acked first (unacked, their client would resend and store them twice)."""
    import asyncio

    import aggregator.server as server_module
    from aggregator.metrics import Metrics
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer, _message

    real = server_module.decode

    def decode(obj: Any, *args: Any) -> Any:
        if obj[0] == "logq.bug":
            raise OverflowError("int too big to convert")
        return real(obj, *args)

    monkeypatch.setattr(server_module, "decode", decode)

    async def scenario() -> list[str]:
        buffer = HeldBuffer()
        metrics = Metrics()
        bug = wire.encode_packed_forward("logq.bug", [(time.time_ns(), {"log": "x"})], chunk="b")
        async with serving(buffer, metrics) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_message("first", 3) + _message("second", 3) + bug)
            while len(buffer.waits) < 2:
                await asyncio.sleep(0.01)
            buffer.sync(0)
            buffer.sync(1)
            unpacker = wire.new_unpacker()
            while data := await asyncio.wait_for(reader.read(4096), 30):
                unpacker.feed(data)
            writer.close()
            acks = [wire.decode_ack(obj) for obj in unpacker]
            assert metrics.connections_rejected.labels("internal_error")._value.get() == 1
            return acks

    assert asyncio.run(scenario()) == ["first", "second"]


@pytest.mark.integration
def test_a_record_keyed_by_a_map_is_stored_with_its_message(tmp_path: Path) -> None:
    """Fluentd forwards a Ruby record keyed by a hash; the server refused its whole message and
    every resend (the client's data stopped there). Now it is acked, and every record stored."""
    agg = start_aggregator(tmp_path)
    time_ext = msgpack.packb(wire.EventTime.from_ns(time.time_ns()).to_ext())
    odd = b"\x92" + time_ext + b"\x82\xa3log\xa3odd\x81\xa1a\x01\xa1v"  # {{"a": 1}: "v"}
    plain = wire.pack([wire.EventTime.from_ns(time.time_ns()), record("plain", "keyed")])
    try:
        with agg.connect() as sock:
            sock.sendall(wire.pack(["logq.keyed", plain + odd + plain, {"chunk": "m1"}]))
            assert read_acks(sock, 1) == ["m1"]
        table = wait_rows(agg.warehouse, "container_logs", 3, agg)
    finally:
        assert agg.stop() == 0
    assert sorted(table["message"].to_pylist()) == ["odd", "plain", "plain"]


# --- map keys in Message and Forward mode (the connection's streaming unpacker) -------------------


def _odd_entry(ns: int, log: str) -> bytes:
    """``[EventTime, {"log": log, {"a": 1}: "v"}]``: a record keyed by a map, as Fluentd
    forwards a Ruby record so keyed (Python cannot build it)."""
    time_ext = msgpack.packb(wire.EventTime.from_ns(ns).to_ext())
    return b"\x92" + time_ext + b"\x82\xa3log" + msgpack.packb(log) + b"\x81\xa1a\x01\xa1v"


def _forward(tag: str, entries: list[bytes], chunk: str) -> bytes:
    """A Forward-mode message of the packed ``entries`` (an array of at most 65,535)."""
    head = b"\xdc" + len(entries).to_bytes(2, "big")
    return b"\x93" + msgpack.packb(tag) + head + b"".join(entries) + msgpack.packb({"chunk": chunk})


def _plain_entry(ns: int, log: str) -> bytes:
    return wire.pack([wire.EventTime.from_ns(ns), record(log, "keyed")])


def test_only_a_keyed_unpacker_builds_a_map_keyed_by_a_map() -> None:
    frame = _forward("logq.keyed", [_odd_entry(T0, "odd")], "c")
    plain = wire.new_unpacker()
    plain.feed(frame)
    with pytest.raises(wire.UnhashableKey, match="unusable map key"):
        list(wire.iter_messages(plain))
    assert issubclass(wire.UnhashableKey, wire.ProtocolError)  # refused where not read again
    keyed = wire.new_unpacker(keyed=True, budget=wire.ObjectBudget(100))
    keyed.feed(frame)
    (message,) = wire.iter_messages(keyed)
    assert message[1][0][1] == {"log": "odd", '{"a":1}': "v"}


def _frames_of(buffer: Any) -> list[list[str]]:
    return [dec.from_ipc(frame).column("log").to_pylist() for frame in buffer.frames]


async def _stored(buffer: Any, count: int, metrics: Any) -> list[list[str]]:
    """The logs of each frame appended, once ``count`` are, or once the connection is refused;
    each is made durable as it comes (the server reads on, and refuses, after that)."""
    refused = metrics.connections_rejected.labels("protocol_error")
    while True:
        for wait in buffer.waits:
            if not wait.done():
                wait.set_result(None)
        if len(buffer.frames) >= count or refused._value.get():
            return _frames_of(buffer)
        await asyncio.sleep(0.005)


async def _acks(reader: Any, count: int) -> list[str]:
    unpacker, acks = wire.new_unpacker(), []
    while len(acks) < count:
        data = await asyncio.wait_for(reader.read(4096), 30)
        assert data, f"closed after the acks {acks}"
        unpacker.feed(data)
        acks += [wire.decode_ack(obj) for obj in unpacker]
    return acks


def test_message_and_forward_mode_records_keyed_by_a_map_are_stored_as_packed_ones() -> None:
    """Fluentd forwards Ruby records keyed by a hash in every mode. In Message and Forward mode
    the server refused the whole message and closed the connection (msgpack cannot build such
    a map, and its streaming unpacker cannot go on), and every resend of it: the client's data
    stopped there. Now such a message is read again with the key as its JSON text, as a
    PackedForward blob is: stored, with the same rows, acked once durable, and the messages
    after it on the connection too."""
    from aggregator.metrics import Metrics
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    entries = [_plain_entry(now, "plain"), _odd_entry(now, "odd"), _plain_entry(now, "plain")]
    packed_form = wire.pack(["logq.keyed", b"".join(entries), {"chunk": "packed"}])
    message_mode = (
        b"\x94"
        + msgpack.packb("logq.keyed")
        + _odd_entry(now, "odd")[1:]  # [tag, time, record, option]: the entry's two items
        + msgpack.packb({"chunk": "message"})
    )
    after = _forward("logq.keyed", [_plain_entry(now, "after")], "after")

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                packed_form + _forward("logq.keyed", entries, "forward") + message_mode + after
            )
            assert await _stored(buffer, 4, metrics) == [
                ["plain", "odd", "plain"],
                ["plain", "odd", "plain"],
                ["odd"],
                ["after"],
            ]
            assert await _acks(reader, 4) == ["packed", "forward", "message", "after"]
            writer.close()
            assert metrics.connections_rejected.labels("protocol_error")._value.get() == 0
        packed_rows = dec.from_ipc(buffer.frames[0]).to_pylist()
        assert dec.from_ipc(buffer.frames[1]).to_pylist() == packed_rows
        assert dec.from_ipc(buffer.frames[2]).to_pylist() == packed_rows[1:2]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_map_key_reads_its_message_again_from_the_reads_before() -> None:
    """The map key comes in a later read than its message's start (a Forward-mode message is
    built as its entries arrive): the message is read again from its first byte, the reads
    before included, the message before it in the first read left as stored."""
    from aggregator.metrics import Metrics
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    first = _forward("logq.keyed", [_plain_entry(now, "first")], "first")
    logs = [f"before-{i}-" + "x" * 200 for i in range(600)] + ["odd", "last"]
    entries = [_plain_entry(now, log) for log in logs[:-2]]
    entries += [_odd_entry(now, "odd"), _plain_entry(now, "last")]
    keyed = _forward("logq.keyed", entries, "keyed")
    cut = len(first) + len(keyed) // 2  # the map key is in the second half

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write((first + keyed)[:cut])
            assert await _stored(buffer, 1, metrics) == [["first"]]  # and durable: read on
            while server.inflight.used < cut - len(first):  # all read, so fed, unfinished
                await asyncio.sleep(0.005)
            assert len(buffer.frames) == 1
            writer.write((first + keyed)[cut:])
            assert await _stored(buffer, 2, metrics) == [["first"], logs]
            assert await _acks(reader, 2) == ["first", "keyed"]
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_message_keyed_by_a_map_is_still_held_to_the_object_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Read again, a message is counted as it is built, as any other: past the per-message
    objects it is refused for that, not stored."""
    from aggregator.metrics import Metrics
    from aggregator.server import ServerLimits
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    tree = [[[0] * 10] * 10] * 10  # 1,110 objects, no array over the entry limit of 10
    heavy = wire.pack([wire.EventTime.from_ns(now), record("heavy", "keyed", a=tree, b=tree)])
    frame = _forward("logq.keyed", [_odd_entry(now, "odd"), heavy], "c")
    assert wire.message_objects(10) < 2 * 1_110

    async def scenario() -> bytes:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics, ServerLimits(max_message_entries=10)) as (_, h, p):
            reader, writer = await asyncio.open_connection(h, p)
            writer.write(frame)
            rest = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            assert buffer.frames == []
            assert metrics.connections_rejected.labels("protocol_error")._value.get() == 1
        return rest

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == b""  # closed, nothing acked
    assert "msgpack objects (the per-message limit" in caplog.text


def _repeated_keys(pairs: int) -> bytes:
    """A map of ``pairs`` pairs that all have the key ``"k"`` (its last value, 1, is kept)."""
    return bytes([0x80 | pairs]) + b"\xa1k\x00" * (pairs - 1) + b"\xa1k\x01"


def _repeated_keys_entry(ns: int, log: str) -> bytes:
    """A record whose values ``a``, ``b``, ``c`` each hold 10 maps of 10 pairs of one key: 98
    objects as built (each map holds one pair), 638 counted pair by pair."""
    maps = b"\x9a" + _repeated_keys(10) * 10
    time_ext = msgpack.packb(wire.EventTime.from_ns(ns).to_ext())
    record_ = (
        b"\x84\xa3log"
        + msgpack.packb(log)
        + b"".join(b"\xa1" + k + maps for k in (b"a", b"b", b"c"))
    )
    return b"\x92" + time_ext + record_


def test_repeated_map_keys_count_as_built_in_a_message_read_keyed_too() -> None:
    """A map of repeated keys builds one pair per key, as msgpack counts it; read again with its
    map keys as text (or for a client remembered as sending them), every pair sent was counted:
    a message the per-message object limit lets through (9 such records, ~920 objects of
    1,280) was refused, its connection closed, once one of its records was keyed by a map."""
    from aggregator.metrics import Metrics
    from aggregator.server import ServerLimits
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    logs = [f"repeated-{i}" for i in range(9)]
    repeated = [_repeated_keys_entry(now, log) for log in logs]
    plain, keyed = (
        _forward("logq.keyed", [*entries, *repeated], chunk)
        for entries, chunk in (
            ([_plain_entry(now, "plain")], "plain"),
            ([_odd_entry(now, "odd")], "odd"),
        )
    )
    assert wire.message_objects(10) == 1_280

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics, ServerLimits(max_message_entries=10)) as (_, h, p):
            reader, writer = await asyncio.open_connection(h, p)
            writer.write(plain + keyed)
            assert await _stored(buffer, 2, metrics) == [["plain", *logs], ["odd", *logs]]
            assert await _acks(reader, 2) == ["plain", "odd"]
            writer.close()
            assert metrics.connections_rejected.labels("protocol_error")._value.get() == 0
        rows = [dec.from_ipc(frame).to_pylist()[1:] for frame in buffer.frames]
        assert rows[0] == rows[1]  # the repeated keys' last values, on both paths

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.integration
def test_message_and_forward_mode_records_keyed_by_a_map_reach_the_warehouse(
    tmp_path: Path,
) -> None:
    """As the PackedForward one above, through a real aggregator: Forward mode, Message mode,
    and a message after them on the same connection, each acked, every record stored."""
    agg = start_aggregator(tmp_path)
    now = time.time_ns()
    entries = [_plain_entry(now, "plain"), _odd_entry(now, "odd"), _plain_entry(now, "plain")]
    message_mode = b"\x94" + msgpack.packb("logq.keyed") + _odd_entry(now, "alone")[1:]
    try:
        with agg.connect() as sock:
            sock.sendall(
                _forward("logq.keyed", entries, "m1")
                + message_mode
                + msgpack.packb({"chunk": "m2"})
                + _forward("logq.keyed", [_plain_entry(now, "after")], "m3")
            )
            assert read_acks(sock, 3) == ["m1", "m2", "m3"]
        table = wait_rows(agg.warehouse, "container_logs", 5, agg)
    finally:
        assert agg.stop() == 0
    assert sorted(table["message"].to_pylist()) == ["after", "alone", "odd", "plain", "plain"]
    assert "not the Forward protocol" not in agg.log_text()


def test_a_value_still_arriving_is_not_kept_twice_and_later_messages_are_read_again() -> None:
    """The unpacker holds the bytes of a value still arriving (a PackedForward blob): the
    connection does not keep them too (a rush of clients would hold the in-flight budget
    twice). A message keyed by a map that follows in the same read is still read again."""
    from aggregator.metrics import Metrics
    from aggregator.server import KEPT_UNPARSED_BYTES
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    logs = [f"packed-{i}-" + "x" * 200 for i in range(3000)]
    big = wire.encode_packed_forward(
        "logq.keyed", [(now, record(log, "keyed")) for log in logs], chunk="big"
    )
    keyed = _forward("logq.keyed", [_odd_entry(now, "odd")], "keyed")
    cut = len(big) // 2
    assert cut > 4 * KEPT_UNPARSED_BYTES

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(big[:cut])
            while server.inflight.used < cut:  # read, and so fed
                await asyncio.sleep(0.005)
            (conn,) = server._conns.values()
            assert sum(len(piece) for piece in conn.kept) <= KEPT_UNPARSED_BYTES
            writer.write(big[cut:] + keyed)
            assert await _stored(buffer, 2, metrics) == [logs, ["odd"]]
            assert await _acks(reader, 2) == ["big", "keyed"]
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_map_key_after_a_long_value_split_between_reads_is_refused_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its message's bytes were not kept (see above): it cannot be read again, and is refused
    with what to do, not as malformed msgpack."""
    from aggregator.metrics import Metrics
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    now = time.time_ns()
    long = wire.pack([wire.EventTime.from_ns(now), record("y" * 300_000, "keyed")])
    frame = _forward("logq.keyed", [long, _odd_entry(now, "odd")], "c")
    cut = 150_000

    async def scenario() -> bytes:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame[:cut])
            while server.inflight.used < cut:
                await asyncio.sleep(0.005)
            writer.write(frame[cut:])
            rest = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            assert buffer.frames == []
            assert metrics.connections_rejected.labels("protocol_error")._value.get() == 1
        return rest

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == b""  # closed, nothing acked
    assert "too many to keep to read it again" in caplog.text


def test_a_map_keyed_message_refused_as_such_is_stored_once_when_resent(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message above could not be read again, so it was refused, and its client's resend
    on a new connection was refused the same way, for ever: that client's data stopped there.
    Now its client address is remembered, and its next connections are read with such keys as
    text from their first byte, after each renewal of their unpacker too: the resend is read
    whole, stored once and acked. A client at another address stays on the plain unpacker."""
    from aggregator import server as server_module
    from aggregator.metrics import Metrics
    from tests.aggregator.helpers import serving
    from tests.aggregator.test_inflight import HeldBuffer

    caplog.set_level(logging.INFO, logger="logq.aggregator.server")
    # Renewed after every message: the second message below comes to a renewed unpacker.
    monkeypatch.setattr(server_module, "UNPACKER_RENEW_BYTES", 0)
    now = time.time_ns()

    def split_keyed(log: str, chunk: str) -> bytes:
        long = wire.pack([wire.EventTime.from_ns(now), record(log, "keyed")])
        return _forward("logq.keyed", [long, _odd_entry(now, "odd")], chunk)

    first, second = "y" * 300_000, "z" * 300_000
    frame, later = split_keyed(first, "c"), split_keyed(second, "c2")
    cut = 150_000  # a read ends inside the long value: over 64 KiB of it pending

    async def send_split(server: Any, writer: Any, data: bytes) -> None:
        writer.write(data[:cut])
        while server.inflight.used < cut:  # read, and so fed
            await asyncio.sleep(0.005)
        writer.write(data[cut:])

    async def stored(buffer: Any, count: int, metrics: Any) -> list[list[str]]:
        refused = metrics.connections_rejected.labels("protocol_error")
        while len(buffer.frames) < count:
            assert refused._value.get() <= 1, "a message keyed by a map was refused again"
            await asyncio.sleep(0.005)
        for wait in buffer.waits:
            if not wait.done():
                wait.set_result(None)
        return _frames_of(buffer)

    async def scenario() -> None:
        buffer = HeldBuffer()
        metrics = Metrics()
        async with serving(buffer, metrics) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            await send_split(server, writer, frame)
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, nothing acked
            writer.close()
            assert buffer.frames == []
            # The client resends the same bytes on a new connection, split the same way.
            reader, writer = await asyncio.open_connection(host, port)
            await send_split(server, writer, frame)
            assert await stored(buffer, 1, metrics) == [[first, "odd"]]
            assert await _acks(reader, 1) == ["c"]
            # Its next message, after the unpacker's renewal, is read so too.
            await send_split(server, writer, later)
            assert await stored(buffer, 2, metrics) == [[first, "odd"], [second, "odd"]]
            assert await _acks(reader, 1) == ["c2"]
            # Another client: the plain unpacker.
            other_reader, other_writer = await asyncio.open_connection(
                host, port, local_addr=("127.0.0.2", 0)
            )
            other_writer.write(_forward("logq.keyed", [_plain_entry(now, "plain")], "p"))
            assert await stored(buffer, 3, metrics) == [[first, "odd"], [second, "odd"], ["plain"]]
            assert await _acks(other_reader, 1) == ["p"]
            (other,) = [c for c in server._conns.values() if c.client == "127.0.0.2"]
            assert not other.keyed
            for each in (writer, other_writer):
                each.close()
            assert metrics.connections_rejected.labels("protocol_error")._value.get() == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert "its resend on a new connection is read with such keys as text" in caplog.text
    assert "client 127.0.0.1 sent a record keyed by a map" in caplog.text
