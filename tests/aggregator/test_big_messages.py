"""A big PackedForward message, or a big Forward-mode one, is decoded a slice of entries at a
time (aggregator/big_messages.py) and comes out as it would whole: the same rows, the same
refusals, bad entries and replaced times told once with their counts added up. In the
server, another connection's message is decoded, stored and acked between two of the big
message's slices.

The thresholds are lowered (a few KiB, slices of a few entries) so that small blobs take the
sliced path; the slices are watched by wrapping the decoder the module calls."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import big_messages
from aggregator.decode import decode, from_ipc, to_ipc
from aggregator.metrics import Metrics
from shipper import wire
from tests.aggregator.helpers import record, serving
from tests.aggregator.test_inflight import HeldBuffer, _ack, _message, _run, _until

T0 = 1_795_860_000_000_000_000
MAX_BYTES = 1 << 30
MAX_ENTRIES = wire.MAX_MESSAGE_ENTRIES


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(big_messages, "BIG_BYTES", 4096)
    monkeypatch.setattr(big_messages, "SLICE_BYTES", 1500)
    monkeypatch.setattr(big_messages, "ENDS_PER_STEP", 7)
    monkeypatch.setattr(big_messages, "BIG_ENTRIES", 50)
    monkeypatch.setattr(big_messages, "SLICE_ENTRIES", 16)


def _entries(n: int, services: int = 3) -> list[tuple[int, dict[str, Any]]]:
    return [
        (T0 + i, record(f"line {i} " + "x" * (i % 300), service=f"svc{i % services}"))
        for i in range(n)
    ]


def _sliced(
    obj: Any, max_entries: int = MAX_ENTRIES, size: int | None = None
) -> tuple[pa.Table, str | None, int, list[Any], list[Any]]:
    """(table, chunk, steps, replaced-times calls, bad-entries calls) of ``decode_steps``
    (``size``: the message's wire bytes, as the server tells them)."""
    replaced: list[Any] = []
    bad: list[Any] = []
    steps = big_messages.decode_steps(
        obj,
        MAX_BYTES,
        max_entries,
        lambda rows, example: replaced.append((rows.num_rows, example)),
        lambda tag, reasons: bad.append((tag, reasons)),
        size,
    )
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batches, chunk = done.value
            break
        count += 1
    table = pa.Table.from_batches([big_messages.joined(batches)])
    return table, chunk, count, replaced, bad


def _whole(obj: Any, max_entries: int = MAX_ENTRIES) -> tuple[pa.Table, str | None, list, list]:
    replaced: list[Any] = []
    bad: list[Any] = []
    batch, chunk = decode(
        obj,
        MAX_BYTES,
        max_entries,
        lambda rows, example: replaced.append((rows.num_rows, example)),
        lambda tag, reasons: bad.append((tag, reasons)),
    )
    return pa.Table.from_batches([batch]), chunk, replaced, bad


def _same(obj: Any, max_entries: int = MAX_ENTRIES, size: int | None = None) -> int:
    """Assert ``obj`` decodes in slices as it does whole; the steps it took. (Whole first: a
    Forward-mode message loses its entries as its slices are decoded.)"""
    started = time.time_ns()
    whole, whole_chunk, whole_replaced, whole_bad = _whole(obj, max_entries)
    table, chunk, steps, replaced, bad = _sliced(obj, max_entries, size)
    assert _rows(table, started) == _rows(whole, started)
    assert (chunk, replaced, bad) == (whole_chunk, whole_replaced, whole_bad)
    # ...and its buffer frame reads back the same
    framed = from_ipc(to_ipc(table.to_batches()[0]))
    assert _rows(framed, started) == _rows(whole, started)
    return steps


def _rows(table: pa.Table, started: int) -> list[dict[str, Any]]:
    """The rows of ``table``, a time stamped since ``started`` (the receive time) as such."""
    rows = table.to_pylist()
    for row in rows:
        if row["time_ns"] >= started:
            row["time_ns"] = "received"
    return rows


def test_a_big_message_is_decoded_in_slices_as_it_is_whole() -> None:
    entries = _entries(400)
    blob = wire.pack_entries(entries)
    assert len(blob) > 10 * big_messages.SLICE_BYTES
    steps = _same(["logq.big", blob, {"size": len(entries), "chunk": "c1"}])
    assert steps > len(blob) // (2 * big_messages.SLICE_BYTES)  # a step a slice


@pytest.mark.parametrize("size", [None, 5, "400", True], ids=["none", "wrong", "text", "bool"])
def test_without_a_usable_size_the_slices_are_counted(size: object) -> None:
    blob = wire.pack_entries(_entries(400))
    options: dict[str, Any] = {"chunk": "c1"}
    if size is not None:
        options["size"] = size
    assert _same(["logq.big", blob, options]) > 1


def test_bad_entries_and_replaced_times_are_told_once_with_their_counts_added() -> None:
    packer = msgpack.Packer(use_bin_type=True)
    parts = []
    for i, (time_ns, rec) in enumerate(_entries(300)):
        if i % 50 == 7:
            parts.append(packer.pack([T0 // 10**9, "not a map"]))  # a bad entry
        elif i % 50 == 9:
            parts.append(packer.pack([0, rec]))  # a time that cannot be kept
        else:
            parts.append(wire.pack_entries([(time_ns, rec)]))
    obj = ["logq.big", b"".join(parts), {"chunk": "c1"}]
    assert _same(obj) > 1
    _, _, _, replaced, bad = _sliced(obj)
    assert len(bad) == 1 and sum(bad[0][1].values()) == 6
    assert len(replaced) == 1 and replaced[0][0] == 6


def test_a_truncated_or_overlong_big_message_is_refused_as_whole() -> None:
    blob = wire.pack_entries(_entries(100))
    for obj, limit in (
        (["logq.big", blob[:-3], {"size": 100}], MAX_ENTRIES),  # truncated
        (["logq.big", blob + b"\xc1", {"size": 100}], MAX_ENTRIES),  # a byte of no type
        (["logq.big", blob, {"size": 100}], 99),  # more entries than allowed
        (["logq.big", blob, {"size": 100, "chunk": {"no": "text"}}], MAX_ENTRIES),
    ):
        with pytest.raises(wire.ProtocolError) as whole:
            _whole(obj, limit)
        with pytest.raises(wire.ProtocolError) as sliced:
            _sliced(obj, limit)
        assert str(sliced.value) == str(whole.value)


def test_a_slice_that_is_refused_refuses_the_message() -> None:
    """An entry the general path refuses (an array longer than the entry limit) in the last
    slice of a blob without ``size``: nothing of the message comes out, as whole."""
    good = wire.pack_entries(_entries(200))
    hostile = msgpack.packb([T0 // 10**9, {"log": "x", "list": list(range(300))}])
    obj = ["logq.big", good + hostile, {"chunk": "c1"}]
    with pytest.raises(wire.ProtocolError) as whole:
        _whole(obj, max_entries=250)
    with pytest.raises(wire.ProtocolError) as sliced:
        _sliced(obj, max_entries=250)
    assert str(sliced.value) == str(whole.value)
    assert _same(["logq.big", good + hostile, {"chunk": "c1"}]) > 1  # under the default limit


def test_past_the_object_budget_only_sized_fast_path_blobs_are_sliced() -> None:
    """A blob the general path would hold to the message's object budget (more bytes than
    :func:`shipper.wire.message_objects`: here a limit of 400 entries) is sliced when sized and
    read by the fast paths; without ``size``, or with an entry only the general path reads,
    it is decoded whole, in one step."""
    entries = _entries(400)
    blob = wire.pack_entries(entries)
    assert len(blob) > wire.message_objects(400)
    sliced = _same(["logq.big", blob, {"size": 400}], 400)
    assert sliced > len(blob) // (2 * big_messages.SLICE_BYTES)
    assert _same(["logq.big", blob, {"chunk": "c"}], 400) == 1
    float_time = msgpack.packb([T0 / 10**9, record("a float time")])
    cut = wire.pack_entries(entries[:200]) + float_time + wire.pack_entries(entries[201:])
    steps = _same(["logq.big", cut, {"size": 400}], 400)
    assert 2 < steps < sliced  # gave up at the slice of the float time


def test_entry_heads_inside_values_do_not_fool_the_cut() -> None:
    """Bytes that look like an entry's head (``[EventTime``) inside a ``bin`` value: the cut
    without parsing fails its checks, and the blob is cut at parsed entry ends instead."""
    fake = b"\x92\xd7\x00" + bytes(8) + b"\x81" + b"\x92\xd7\x00" * 5
    entries = [(t, {**rec, "raw": fake}) for t, rec in _entries(300)]
    blob = wire.pack_entries(entries)
    assert blob.count(fake) == 300
    assert _same(["logq.big", blob, {"size": 300, "chunk": "c"}]) > 1


def _forward_mode(entries: list[Any], options: dict[str, Any] | None = None) -> Any:
    """The Forward-mode message of ``entries`` (``(time, record)`` or raw entries) as the
    server's unpacker gives it: EventTimes as :class:`shipper.wire.EventTime`."""
    raw = [[wire.EventTime.from_ns(e[0]), e[1]] if isinstance(e, tuple) else e for e in entries]
    message = ["logq.fwd", raw] if options is None else ["logq.fwd", raw, options]
    unpacker = wire.new_unpacker()
    unpacker.feed(wire.pack(message))
    return next(unpacker)


@pytest.mark.parametrize("options", [None, {}, {"chunk": "c1", "size": 3}], ids=str)
def test_a_big_forward_mode_message_is_decoded_in_slices_as_it_is_whole(
    options: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many short entries: SLICE_ENTRIES a slice (their bytes never fill SLICE_BYTES)."""
    monkeypatch.setattr(big_messages, "SLICE_BYTES", 1 << 20)
    obj = _forward_mode(_entries(400), options)
    assert big_messages.is_big(obj)
    assert _same(obj) == -(-400 // big_messages.SLICE_ENTRIES)  # a step a slice
    assert obj[1] == [None] * 400  # each slice's entries dropped once decoded


def _long_entries(n: int, length: int) -> list[tuple[int, dict[str, Any]]]:
    return [(T0 + i, record(f"long {i} " + "y" * length)) for i in range(n)]


@pytest.mark.parametrize("known", [True, False], ids=["wire size", "measured"])
def test_a_forward_mode_message_of_few_long_entries_is_big_by_its_bytes(
    known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer entries than BIG_ENTRIES, but more than BIG_BYTES of them (2,000 lines of 4 KiB,
    at the real thresholds): decoded in slices of about SLICE_BYTES, fewer entries than
    SLICE_ENTRIES each, as whole. Its wire size is the server's (msgpack), else its entries'
    text is measured (JSON)."""
    entries = _long_entries(40, 600)
    frame = wire.pack(["logq.fwd", [[wire.EventTime.from_ns(t), r] for t, r in entries]])
    assert len(entries) < big_messages.BIG_ENTRIES and len(frame) > 4 * big_messages.BIG_BYTES
    size = len(frame) if known else None
    pieces: list[int] = []
    real = big_messages.decode

    def counted(piece: Any, *args: Any, **kwargs: Any) -> Any:
        pieces.append(len(piece[1]))
        return real(piece, *args, **kwargs)

    obj = _forward_mode(entries)
    assert big_messages.is_big(obj, size)
    monkeypatch.setattr(big_messages, "decode", counted)
    assert _same(obj, size=size) == len(pieces) > 1  # a step a slice
    per_slice = big_messages.SLICE_BYTES * len(entries) // len(frame)
    assert 1 <= max(pieces) <= per_slice + 1 < big_messages.SLICE_ENTRIES
    assert sum(pieces) == len(entries)


@pytest.mark.parametrize(
    ("entries", "max_entries", "measured"),
    [(40, MAX_ENTRIES, 40), (30, 20, "some"), (60, 20, 0)],
    ids=["all", "refused, judged by its bytes", "refused, judged by its count"],
)
def test_a_json_forward_mode_message_is_measured_once_as_far_as_it_is_used(
    entries: int, max_entries: int, measured: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a wire size (JSON), :func:`message_bytes` measures the entries once, and
    ``is_big`` and ``decode_steps`` told it measure none and judge and slice as when they
    measured themselves. A message of more than ``max_entries`` entries is refused whole:
    measured only as far as ``is_big`` reads (up to BIG_BYTES; nothing past BIG_ENTRIES,
    which decide alone), never all of them for the slices it will not have."""
    obj = _forward_mode(_long_entries(entries, 600))
    alone = big_messages.is_big(obj)
    steps = _steps_or_refusal(_forward_mode(_long_entries(entries, 600)), max_entries, None)
    calls: list[Any] = []
    measure = big_messages._entry_bytes

    def counted(entry: Any) -> int:
        calls.append(entry)
        return measure(entry)

    monkeypatch.setattr(big_messages, "_entry_bytes", counted)
    size = big_messages.message_bytes(obj, None, max_entries)
    if measured == "some":
        assert 0 < len(calls) < entries and size is not None and size > big_messages.BIG_BYTES
    else:
        assert len(calls) == measured
    calls.clear()
    assert big_messages.is_big(obj, size) == alone
    assert _steps_or_refusal(obj, max_entries, size) == steps
    assert calls == []
    assert big_messages.message_bytes(obj, 1234, max_entries) == 1234 and calls == []


def _steps_or_refusal(obj: Any, max_entries: int, size: int | None) -> int | str:
    """The steps ``decode_steps`` took, or why it refused the message."""
    try:
        return _sliced(obj, max_entries, size)[2]
    except wire.ProtocolError as exc:
        return str(exc)


def test_a_forward_mode_message_of_few_short_entries_is_not_big() -> None:
    """Its wire size, or its measured text, under BIG_BYTES: decoded whole in one step."""
    entries = _entries(30)
    frame = wire.pack(["logq.fwd", [[wire.EventTime.from_ns(t), r] for t, r in entries]])
    assert len(frame) < big_messages.BIG_BYTES
    obj = _forward_mode(entries)
    assert not big_messages.is_big(obj, len(frame))
    assert not big_messages.is_big(obj)
    assert _sliced(obj, size=len(frame))[2] == 0


def test_odd_forward_mode_entries_are_decoded_in_slices_as_whole() -> None:
    """Fluent Bit's ``[[time, metadata], record]`` entries, integer and float times, times that
    cannot be kept (replaced, told once) and bad entries (told once, counts added up): the
    slices that hold them take the general path, the others the fast one, with the same rows."""
    entries: list[Any] = []
    for i, (time_ns, rec) in enumerate(_entries(300)):
        if i % 50 == 7:
            entries.append([T0 // 10**9, "not a map"])
        elif i % 50 == 9:
            entries.append([0, rec])
        elif i % 3 == 0:
            entries.append([[wire.EventTime.from_ns(time_ns), {"meta": 1}], rec])
        elif i % 3 == 1:
            entries.append([time_ns // 10**9, rec])
        else:
            entries.append([time_ns / 10**9, rec])
    assert _same(_forward_mode(entries, {"chunk": "c1"})) > 1
    _, _, _, replaced, bad = _sliced(_forward_mode(entries, {"chunk": "c1"}))
    assert len(bad) == 1 and sum(bad[0][1].values()) == 6
    assert len(replaced) == 1 and replaced[0][0] == 6


def test_a_forward_mode_message_of_too_many_entries_is_refused_as_whole() -> None:
    obj = _forward_mode(_entries(100), {"chunk": "c1"})
    with pytest.raises(wire.ProtocolError) as whole:
        _whole(obj, 99)
    with pytest.raises(wire.ProtocolError) as sliced:
        _sliced(obj, 99)
    assert str(sliced.value) == str(whole.value)


def test_small_messages_and_others_are_decoded_whole_in_one_step() -> None:
    small = wire.pack_entries(_entries(5))
    assert len(small) < big_messages.BIG_BYTES
    big = wire.pack_entries(_entries(400))
    for obj in (
        ["logq.small", small, {"size": 5}],
        ["logq.fwd", [[T0, record("a")], [T0, record("b")]], {}],  # Forward mode
        ["logq.gz", big, {"compressed": "gzip"}],  # not inflated: the decoder's to judge
    ):
        assert not big_messages.is_big(obj)
    table, _, steps, _, _ = _sliced(["logq.small", small, {"size": 5}])
    assert steps == 0 and table.num_rows == 5


# --- in the server ----------------------------------------------------------------------------


@pytest.fixture
def slices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The order of the big message's slices ("slice") and of the one-step decodes of other
    messages ("other"), as the server runs them."""
    order: list[str] = []
    real, real_packed = big_messages.decode, big_messages.decode_packed

    def slice_decode(*args: Any, **kwargs: Any) -> Any:
        for hook in ON_SLICE:
            hook()
        order.append("slice")
        return real(*args, **kwargs)

    def slice_decode_packed(*args: Any, **kwargs: Any) -> Any:
        for hook in ON_SLICE:
            hook()
        order.append("slice")
        return real_packed(*args, **kwargs)

    def whole_decode(*args: Any, **kwargs: Any) -> Any:
        order.append("other")
        return real(*args, **kwargs)

    monkeypatch.setattr(big_messages, "decode", slice_decode)
    monkeypatch.setattr(big_messages, "decode_packed", slice_decode_packed)
    monkeypatch.setattr("aggregator.server.decode", whole_decode)
    yield order
    ON_SLICE.clear()


#: Called before each slice is decoded (by the ``slices`` fixture).
ON_SLICE: list[Callable[[], None]] = []


@pytest.mark.parametrize("mode", ["packed", "forward"])
def test_another_connection_is_acked_between_the_slices_of_a_big_message(
    slices: list[str], mode: str
) -> None:
    """The other connection's message is sent while the big one's first slice is decoded: it
    is decoded, stored and acked before the big one's last slice; the big message is stored
    whole, as one frame, after it, its records once each and in order, and acked only once
    durable."""
    entries = _entries(1500)
    if mode == "packed":
        big = wire.encode_packed_forward("logq.big", entries, chunk="big")
    else:
        big = wire.pack(
            ["logq.big", [[wire.EventTime.from_ns(t), r] for t, r in entries], {"chunk": "big"}]
        )
    other = _message("other", 3)
    metrics = Metrics()

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, metrics) as (_, host, port):
            r_other, w_other = await asyncio.open_connection(host, port)

            def first_slice_sends_other() -> None:
                if "slice" not in slices:
                    w_other.write(other)  # on the wire now, during the big message

            ON_SLICE.append(first_slice_sends_other)
            r_big, w_big = await asyncio.open_connection(host, port)
            w_big.write(big)
            await _until(lambda: len(buffer.frames) == 1)
            assert "other" in slices
            buffer.sync(0)
            assert await _ack(r_other) == "other"
            await _until(lambda: len(buffer.frames) == 2)
            for _ in range(50):  # stored, not durable: no ack
                await asyncio.sleep(0)
            assert metrics.acks._value.get() == 1
            buffer.sync(1)
            assert await _ack(r_big) == "big"
            stored = from_ipc(buffer.frames[1])
            unpacker = wire.new_unpacker()
            unpacker.feed(big)
            assert stored.to_pylist() == _whole(next(unpacker))[0].to_pylist()
            assert stored.column("log").to_pylist() == [r["log"] for _, r in entries]
            for w in (w_big, w_other):
                w.close()

    _run(scenario())
    at = slices.index("other")
    assert slices[:at] == ["slice"] * at and at >= 1
    after = slices[at + 1 :]
    assert after.count("slice") >= 1 and set(after) == {"slice"}


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_a_forward_mode_message_of_few_long_entries_is_decoded_the_big_way(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Fewer entries than BIG_ENTRIES but more than BIG_BYTES on the wire: the server decodes
    it in slices and frames it in the worker (it was decoded and framed whole, on the event
    loop), told its wire size (msgpack; JSON's is measured from its entries, each entry once:
    the server's two ``is_big`` calls, ``decode_steps`` and its slice count each measured
    them, up to four times). Stored as one frame, acked once durable, not before."""
    entries = _long_entries(40, 600)
    calls: list[tuple[Any, ...]] = []
    real = big_messages.decode_steps
    measured: list[Any] = []
    measure = big_messages._entry_bytes

    def watched(*args: Any) -> Any:
        calls.append(args)
        return (yield from real(*args))

    def counted(entry: Any) -> int:
        measured.append(entry)
        return measure(entry)

    monkeypatch.setattr(big_messages, "decode_steps", watched)
    monkeypatch.setattr(big_messages, "_entry_bytes", counted)
    if encoding == "msgpack":
        raw = [[wire.EventTime.from_ns(t), r] for t, r in entries]
        frame = wire.pack(["logq.fwd", raw, {"chunk": "long"}])
    else:
        raw = [[t // 10**9, r] for t, r in entries]
        frame = json.dumps(["logq.fwd", raw, {"chunk": "long"}]).encode()
    assert len(entries) < big_messages.BIG_ENTRIES and len(frame) > big_messages.BIG_BYTES
    metrics = Metrics()

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, metrics) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame)
            await _until(lambda: len(buffer.frames) == 1)
            for _ in range(50):  # stored, not durable: no ack
                await asyncio.sleep(0)
            assert metrics.acks._value.get() == 0
            buffer.sync(0)
            if encoding == "msgpack":
                assert await _ack(reader) == "long"
            else:
                assert json.loads(await asyncio.wait_for(reader.read(4096), 30)) == {"ack": "long"}
            stored = from_ipc(buffer.frames[0])
            assert stored.column("log").to_pylist() == [r["log"] for _, r in entries]
            writer.close()

    _run(scenario())
    assert len(calls) == 1
    if encoding == "msgpack":
        assert calls[0][-1] == len(frame) and measured == []
    else:
        assert len(measured) == len(entries)  # each entry once
        assert calls[0][-1] == sum(map(measure, measured)) > big_messages.BIG_BYTES


def test_big_messages_of_many_connections_are_decoded_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big messages (plain, and gzip blobs of a few KiB that inflate past the threshold) sent
    by many connections at once are inflated and decoded HEAVY_AT_ONCE at a time: each holds
    its inflated blob and decoded slices across awaits, which no budget counts. All are
    stored and acked."""
    from aggregator import server as server_module

    active: list[int] = [0, 0]  # now, most at once
    real = big_messages.decode_steps

    def counted(*args: Any, **kwargs: Any) -> Any:
        active[0] += 1
        active[1] = max(active)
        try:
            for _ in range(300):  # steps of a long message: time for the others to arrive
                yield
            return (yield from real(*args, **kwargs))
        finally:
            active[0] -= 1

    monkeypatch.setattr(big_messages, "decode_steps", counted)
    entries = _entries(1500)
    blob = wire.pack_entries(entries)
    messages = [
        wire.encode_packed_forward("logq.big", entries, chunk=f"big{i}") for i in range(4)
    ] + [
        msgpack.packb(["logq.gz", gzip.compress(blob), {"compressed": "gzip", "chunk": f"gz{i}"}])
        for i in range(2)
    ]

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (_, host, port):
            conns = [await asyncio.open_connection(host, port) for _ in messages]
            for (_, w), message in zip(conns, messages, strict=True):
                w.write(message)
            await _until(lambda: len(buffer.frames) == len(messages))
            for i in range(len(messages)):
                buffer.sync(i)
            acks = {await _ack(r) for r, _ in conns}
            assert acks == {f"big{i}" for i in range(4)} | {"gz0", "gz1"}
            for _, w in conns:
                w.close()

    _run(scenario())
    assert server_module.HEAVY_AT_ONCE == 2
    assert active[1] == 2  # 6 at once without the turns


def test_a_small_gzip_message_is_stored_while_big_ones_hold_every_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two big messages hold both turns (their decoding held until the test lets it go): a
    small gzip message of a third connection, inflated inline, is stored and acked meanwhile,
    without a turn; a gzip blob that inflates big still waits for one."""
    from aggregator import server as server_module

    held: list[int] = [0]  # big messages being decoded
    release: list[bool] = [False]
    real = big_messages.decode_steps

    def holding(*args: Any, **kwargs: Any) -> Any:
        held[0] += 1
        while not release[0]:
            yield
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(big_messages, "decode_steps", holding)
    entries = _entries(1500)
    bigs = [wire.encode_packed_forward("logq.big", entries, chunk=f"big{i}") for i in range(2)]
    small_blob = wire.pack_entries(_entries(5))
    small = msgpack.packb(
        ["logq.gz", gzip.compress(small_blob), {"compressed": "gzip", "chunk": "small"}]
    )
    big_gzip = msgpack.packb(
        [
            "logq.gz",
            gzip.compress(wire.pack_entries(entries)),
            {"compressed": "gzip", "chunk": "gz"},
        ]
    )
    assert server_module.HEAVY_AT_ONCE == 2

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (_, host, port):
            conns = [await asyncio.open_connection(host, port) for _ in range(4)]
            for (_, w), message in zip(conns, bigs, strict=False):
                w.write(message)
            await _until(lambda: held[0] == 2)  # both turns taken
            conns[2][1].write(big_gzip)
            conns[3][1].write(small)
            await _until(lambda: len(buffer.frames) == 1, timeout=10)
            buffer.sync(0)
            assert await _ack(conns[3][0]) == "small"
            assert held[0] == 2  # the big gzip message still waits for a turn
            release[0] = True
            await _until(lambda: len(buffer.frames) == 4)
            for i in range(1, 4):
                buffer.sync(i)
            acks = {await _ack(r) for r, _ in conns[:3]}
            assert acks == {"big0", "big1", "gz"}
            for _, w in conns:
                w.close()

    _run(scenario())


def test_a_big_message_of_another_signal_is_acked_and_not_stored() -> None:
    """Fluent Bit's metrics or traces (``fluent_signal``) in a message as big as a big log
    message: skipped and acked as a small one is (it was decoded in slices and stored as logs)."""
    blob = wire.pack_entries(_entries(400))
    assert len(blob) > big_messages.BIG_BYTES
    message = msgpack.packb(["logq.metrics", blob, {"fluent_signal": 1, "chunk": "m1"}])

    async def scenario() -> None:
        buffer = HeldBuffer()
        async with serving(buffer, Metrics()) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(message)
            assert await _ack(reader) == "m1"
            assert buffer.frames == []
            writer.close()

    _run(scenario())
