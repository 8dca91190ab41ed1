"""The msgspec PackedForward fast path gives the same batches as the general decoder, or declines.

Every case decodes one PackedForward message twice: through :func:`aggregator.decode.decode`
(which tries the fast path first) and through the general msgpack path alone; the batches must
be equal. Cases the fast path must decline are checked to reach the general path.
"""

from __future__ import annotations

import gzip
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from aggregator import packed
from shipper import wire

T0 = 1_795_860_000_123_456_789


def shipper_record(i: int, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        wire.KEY_LOG: f"line {i} é",
        wire.KEY_STREAM: "stdout",
        wire.KEY_TIME: "2026-11-28T10:00:00.123456789Z",
        wire.KEY_SERVICE: "recipe",
        wire.KEY_CONTAINER_ID: "c" * 64,
        wire.KEY_CONTAINER_NAME: "ecs-recipe-envoy",
        wire.KEY_HOST: "ip-10-0-1-17",
        wire.KEY_IMAGE: "envoyproxy/envoy:v1.31.2",
        wire.KEY_SOURCE_ID: "src-1",
        wire.KEY_OFFSET: (i + 1) * 100,
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def message(records: list[dict[str, Any]], **options: Any) -> Any:
    frame = wire.encode_packed_forward("logq.recipe", [(T0 + i, r) for i, r in enumerate(records)])
    obj = msgpack.unpackb(frame, raw=False)
    obj[2].update(options)
    return obj


def general(obj: Any) -> Any:
    blob = obj[1]
    decoded = dec._fast_entries(obj[0], dec._unpack_entries(blob))
    return (decoded or dec._general(obj, 1 << 30, wire.MAX_MESSAGE_ENTRIES))[0]


def same_batch(got: pa.RecordBatch, expected: pa.RecordBatch) -> bool:
    """Equal batches, except the receive time of bad entries' rows (a clock read per decode)."""
    names = [n for n in got.schema.names if n != "time_ns"]
    if not got.select(names).equals(expected.select(names)):
        return False
    logs = got.column("log").to_pylist()
    kept = [i for i, line in enumerate(logs) if not (line or "").startswith(dec.BAD_ENTRY_MARKER)]
    index = pa.array(kept, pa.int32())
    return got.column("time_ns").take(index).equals(expected.column("time_ns").take(index))


def test_shipper_batch_takes_the_fast_path_and_matches() -> None:
    obj = message([shipper_record(i) for i in range(50)])
    assert packed.decode_entries(obj[1], obj[2]["size"]) is not None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    assert batch.column("time_ns").to_pylist()[:2] == [T0, T0 + 1]
    assert batch.column(wire.KEY_FORMAT).null_count == 50


def test_values_that_vary_within_a_message_match() -> None:
    records = [
        shipper_record(
            i,
            service=f"svc{i % 3}",
            stream="stderr" if i % 2 else "stdout",
            format="envoy" if i == 3 else _DROP,
            extra={"nested": [1, 2]},
        )
        for i in range(20)
    ]
    obj = message(records)
    batch, _ = dec.decode(obj, 1 << 30)
    assert packed.columns(packed.decode_entries(obj[1], 20), dec.DICT_STRING) is not None
    assert batch.equals(general(obj))
    assert batch.column(wire.KEY_SERVICE).to_pylist()[:4] == ["svc0", "svc1", "svc2", "svc0"]


@pytest.mark.parametrize("size", [None, 0, 19, 21, 10**9, "20", True])
def test_a_wrong_size_falls_back_and_still_decodes_every_entry(size: Any) -> None:
    obj = message([shipper_record(i) for i in range(20)])
    obj[2]["size"] = size
    assert packed.decode_entries(obj[1], size) is None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.num_rows == 20
    assert batch.equals(general(obj))


@pytest.mark.parametrize(
    "over",
    [
        {wire.KEY_LOG: _DROP, "message": "from fluent-logger"},
        {wire.KEY_SERVICE: 42},
        {wire.KEY_OFFSET: -5},
        {wire.KEY_OFFSET: "12"},
        {wire.KEY_LOG: b"bytes \xff log"},
    ],
)
def test_unusual_records_match_the_general_path(over: dict[str, Any]) -> None:
    obj = message([shipper_record(0), shipper_record(1, **over)])
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.num_rows == 2
    assert batch.equals(general(obj))


def test_integer_times_take_the_fast_path_and_match() -> None:
    entries = b"".join(wire.pack([1_795_860_000 + i, shipper_record(i)]) for i in range(3))
    obj = ["logq.recipe", entries, {"size": 3}]
    assert packed.columns(packed.decode_entries(entries, 3), dec.DICT_STRING) is not None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    assert batch.column("time_ns").to_pylist() == [(1_795_860_000 + i) * 10**9 for i in range(3)]


@pytest.mark.parametrize(
    "time",
    [1.5, True, wire.EventTime(1, 2).to_ext(), msgpack.ExtType(0, b"\x00" * 4)],
)
def test_other_times_are_left_to_the_general_path(time: Any) -> None:
    """Float or boolean times, EventTimes of the wrong length: the general path accepts them
    (the EventTime, the float) or stores their entries as bad entries' rows
    (tests/aggregator/test_bad_entries.py). (Times that cannot be kept as sent are stamped on
    receipt: tests/aggregator/test_event_times.py.)"""
    entries = wire.pack([T0 // 10**9, shipper_record(0)]) + wire.pack([time, shipper_record(1)])
    obj = ["logq.recipe", entries, {"size": 2}]
    if isinstance(time, msgpack.ExtType) and len(time.data) == 8:
        assert packed.columns(packed.decode_entries(entries, 2), dec.DICT_STRING) is not None
    else:
        assert packed.columns(packed.decode_entries(entries, 2), dec.DICT_STRING) is None
    try:
        expected = general(obj)
    except wire.ProtocolError as exc:
        with pytest.raises(wire.ProtocolError) as info:
            dec.decode(obj, 1 << 30)
        assert str(info.value) == str(exc)
    else:
        assert same_batch(dec.decode(obj, 1 << 30)[0], expected)


def test_invalid_utf8_is_replaced_not_dropped() -> None:
    entries = wire.pack_entries([(T0, shipper_record(0))]).replace(b"line 0", b"line \xff")
    obj = ["logq.recipe", entries, {"size": 1}]
    assert packed.decode_entries(entries, 1) is None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    # U+FFFD per invalid sequence, as the general path and Fluent Bit do
    assert batch.column(wire.KEY_LOG).to_pylist() == ["line \ufffd é"]


def test_gzip_members_take_the_fast_path() -> None:
    frame = wire.encode_packed_forward(
        "logq.recipe", [(T0, shipper_record(i)) for i in range(5)], compress=True
    )
    obj = msgpack.unpackb(frame, raw=False)
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.column(wire.KEY_OFFSET).to_pylist() == [100, 200, 300, 400, 500]


@pytest.fixture
def small_batches_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The constant-metadata decoder for messages of any size (it skips small ones)."""
    monkeypatch.setattr(packed, "CONSTANT_MIN_ENTRIES", 1)


def test_constant_metadata_decoder_takes_a_shipper_batch_with_both_streams() -> None:
    n = packed.CONSTANT_MIN_ENTRIES
    records = [shipper_record(i, stream="stderr" if i % 3 == 0 else "stdout") for i in range(n)]
    obj = message(records)
    assert packed.constant_columns(obj[1], n, dec.DICT_STRING) is not None
    assert packed.constant_columns(obj[1], n - 1, dec.DICT_STRING) is None  # wrong size
    small = message(records[: n - 1])
    assert packed.constant_columns(small[1], n - 1, dec.DICT_STRING) is None  # too small
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    assert batch.column(wire.KEY_STREAM).to_pylist()[:4] == ["stderr", "stdout", "stdout", "stderr"]
    assert batch.column(wire.KEY_SERVICE).to_pylist() == ["recipe"] * n


@pytest.mark.parametrize(
    "later",
    [
        {wire.KEY_SERVICE: "checkout"},  # another value
        {wire.KEY_SERVICE: _DROP},  # absent later
        {wire.KEY_FORMAT: "envoy"},  # absent first, present later
        {wire.KEY_HOST: None},  # nil later
        {wire.KEY_IMAGE: b"envoyproxy/envoy:v1.31.2"},  # the same text as bin
        {wire.KEY_STREAM: "console"},  # a stream the decoder does not know: ignored
        {wire.KEY_STREAM: "STDERR"},  # a stream in another case: lowered
    ],
)
@pytest.mark.usefixtures("small_batches_too")
def test_a_record_that_differs_from_the_first_gets_its_own_values(later: dict[str, Any]) -> None:
    records = [shipper_record(i, **(later if i == 7 else {})) for i in range(10)]
    obj = message(records)
    assert packed.constant_columns(obj[1], 10, dec.DICT_STRING) is None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    key, value = next(iter(later.items()))
    expected = None if value is _DROP or value is None else value
    if isinstance(expected, bytes):
        expected = expected.decode()
    if key == wire.KEY_STREAM:
        expected = {"console": None, "STDERR": "stderr"}[value]  # the column's two (DESIGN.md)
    assert batch.column(key).to_pylist()[7] == expected
    assert batch.column(key).to_pylist()[6] == shipper_record(6).get(key)


@pytest.mark.usefixtures("small_batches_too")
def test_huge_metadata_is_not_cached_and_still_decodes() -> None:
    records = [shipper_record(i, container_name="n" * 5000) for i in range(4)]
    obj = message(records)
    before = len(packed._DECODERS)
    assert packed.constant_columns(obj[1], 4, dec.DICT_STRING) is None
    assert len(packed._DECODERS) == before
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    assert batch.column(wire.KEY_CONTAINER_NAME).to_pylist() == ["n" * 5000] * 4


@pytest.mark.usefixtures("small_batches_too")
def test_the_decoder_cache_is_bounded() -> None:
    for i in range(packed._MAX_DECODERS + 20):
        obj = message([shipper_record(0, source_id=f"src-{i}")])
        assert packed.constant_columns(obj[1], 1, dec.DICT_STRING) is not None
    assert len(packed._DECODERS) == packed._MAX_DECODERS
    obj = message([shipper_record(0, source_id=f"src-{packed._MAX_DECODERS + 19}")])
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.column(wire.KEY_SOURCE_ID).to_pylist() == [f"src-{packed._MAX_DECODERS + 19}"]


# --- blobs without a size option (Fluent Bit without Send_options, Fluentd, fluent-logger) ---


def _entries_blob(times: list[Any], records: list[dict[str, Any]], headed: bool = False) -> bytes:
    """Concatenated ``[time, record]`` entries (``[[time, metadata], record]`` when headed)."""
    packer = msgpack.Packer(default=wire._default, use_bin_type=True)
    return b"".join(
        packer.pack([[t, {"stream": "F"}] if headed else t, r])
        for t, r in zip(times, records, strict=True)
    )


def _event_times(n: int) -> list[Any]:
    return [wire.EventTime.from_ns(T0 + i * 1_000_003) for i in range(n)]


def _int_times(n: int) -> list[Any]:
    return [T0 // 10**9 + i for i in range(n)]


def _mixed_times(n: int) -> list[Any]:
    return [t if i % 3 else T0 // 10**9 + i for i, t in enumerate(_event_times(n))]


def _kube_record(i: int) -> dict[str, Any]:
    """A Fluent Bit record with its kubernetes filter's metadata (the client decoder)."""
    return {
        "log": f"kube {i}\n",
        "stream": "stdout",
        "kubernetes": {"pod_name": "web-1", "container_name": "app", "docker_id": "d" * 64},
    }


def _bin_record(i: int) -> dict[str, Any]:
    """Strings sent as msgpack bin (older clients): the general path's to decode."""
    return {"log": f"bin {i}".encode(), "stream": b"stderr", "service": b"recipe"}


_RECORDS = {
    "shipper": shipper_record,
    "fluent-logger": lambda i: {"message": f"m{i}", "level": "info"},
    # The line of a record without ``log``: the first message key that is not nil, as text;
    # other values, or no such key, as JSON (the general path's part).
    "message keys": lambda i: [
        {"log": None, "message": None, "msg": f"msg {i}", "MESSAGE": "not this"},
        {"MESSAGE": f"journald {i}", "_PID": 1},
        {"message": {"k": [i, None]}},
        {"msg": i, "message": None},
        {"level": "info", "n": i},
        {"log": f"log {i}", "message": {"ignored": True}},
        {"message": f"m{i}".encode()},
    ][i % 7],
    "kubernetes": _kube_record,
    "bin": _bin_record,
    "mixed": lambda i: shipper_record(i) if i % 2 else _bin_record(i),
}
_TIMES = {"event": _event_times, "int": _int_times, "mixed": _mixed_times}


def _unsized_and_sized(blob: bytes, n: int, **options: Any) -> tuple[Any, Any]:
    def obj(**more: Any) -> Any:
        frame = wire.pack(["logq.recipe", blob, {"chunk": "c", **options, **more}])
        return msgpack.unpackb(frame, raw=False, ext_hook=wire._ext_hook)

    return obj(), obj(size=n)


def _reference(obj: Any, max_entries: int = wire.MAX_MESSAGE_ENTRIES) -> Any:
    """What :func:`aggregator.decode.decode` gave a PackedForward message without ``size``
    before such messages could take the msgspec path: the general path alone."""
    blob = obj[1]
    if obj[2].get("compressed") == "gzip":
        blob = wire.gunzip_members(blob, 1 << 30)
    decoded = dec._fast_entries(obj[0], dec._unpack_entries(blob, max_entries))
    return (decoded or dec._general(obj, 1 << 30, max_entries))[0]


@pytest.mark.parametrize("n", [10, 100])  # 100: the constant-metadata decoder too
@pytest.mark.parametrize("times", sorted(_TIMES))
@pytest.mark.parametrize("records", sorted(_RECORDS))
@pytest.mark.parametrize("headed", [False, True])
def test_an_unsized_blob_decodes_to_the_same_batch_as_a_sized_one(
    n: int, times: str, records: str, headed: bool
) -> None:
    blob = _entries_blob(_TIMES[times](n), [_RECORDS[records](i) for i in range(n)], headed)
    unsized, sized = _unsized_and_sized(blob, n)
    assert packed.count_entries(blob, wire.MAX_MESSAGE_ENTRIES) == n
    batch, chunk = dec.decode(unsized, 1 << 30)
    assert chunk == "c"
    assert batch.equals(dec.decode(sized, 1 << 30)[0])
    assert batch.equals(_reference(unsized))
    assert batch.num_rows == n


@pytest.mark.parametrize("n", [10, 100])
@pytest.mark.parametrize("headed", [False, True])
@pytest.mark.parametrize("times", ["event", "int"])
def test_an_unsized_blob_takes_the_msgspec_path(
    n: int, headed: bool, times: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logq-shipper's, Fluent Bit's (``[[time, metadata], record]`` too, kubernetes metadata)
    and fluent-logger's (``message``) records without ``size``: msgspec decodes them, the
    general path is not reached."""
    blobs = [
        _entries_blob(_TIMES[times](n), [make(i) for i in range(n)], headed)
        for make in (shipper_record, _kube_record, _RECORDS["fluent-logger"])
    ]
    expected = [dec.decode(_unsized_and_sized(b, n)[1], 1 << 30)[0] for b in blobs]

    def no_general(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(dec, "_unpack_entries", no_general)
    monkeypatch.setattr(dec, "_general", no_general)
    for blob, batch in zip(blobs, expected, strict=True):
        assert dec.decode(_unsized_and_sized(blob, n)[0], 1 << 30)[0].equals(batch)


def test_records_with_a_message_key_take_the_msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record without ``log`` takes its line from ``message``, ``msg`` or ``MESSAGE`` (the
    first that is not nil) on the msgspec path too, sized or not; as text only: any other
    value goes to the general path, which writes it as JSON."""
    records = [_RECORDS["message keys"](i) for i in (0, 1, 5)] * 30
    blob = _entries_blob(_event_times(90), records)
    unsized, sized = _unsized_and_sized(blob, 90)
    expected = _reference(unsized)
    assert expected.column("log").to_pylist()[:3] == ["msg 0", "journald 1", "log 5"]
    monkeypatch.setattr(dec, "_general", None)  # not called
    monkeypatch.setattr(dec, "_unpack_entries", None)
    for obj in (unsized, sized):
        assert dec.decode(obj, 1 << 30)[0].equals(expected)
    for other in ({"message": 5}, {"message": b"bin"}, {"msg": None}):
        blob = _entries_blob(_event_times(2), [records[0], other])
        assert packed.columns(packed.decode_entries(blob, 2), dec.DICT_STRING) is None


def test_unsized_gzip_members_take_the_msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """CompressedPackedForward as Fluentd sends it: several gzip members, one after another."""
    blobs = [_entries_blob(_event_times(70), [shipper_record(i) for i in range(70)])] * 3
    whole = b"".join(blobs)
    members = b"".join(gzip.compress(b) for b in blobs)
    unsized, sized = _unsized_and_sized(members, 210, compressed="gzip")
    expected = dec.decode(sized, 1 << 30)[0]
    assert expected.equals(_reference(unsized))
    assert packed.count_entries(whole, wire.MAX_MESSAGE_ENTRIES) == 210
    monkeypatch.setattr(dec, "_unpack_entries", None)  # not called
    batch, _ = dec.decode(unsized, 1 << 30)
    assert batch.equals(expected)
    assert batch.column(wire.KEY_OFFSET).to_pylist() == [(i % 70 + 1) * 100 for i in range(210)]


def test_null_constant_columns_are_not_kept_for_every_size() -> None:
    """NULL columns' buffers are ``n`` rows long: kept per message size (up to 500,000
    entries), 1,024 of them would hold GiBs. Built for many sizes, none is retained."""
    before = pa.total_allocated_bytes()
    for n in range(100_000, 100_050):
        column = packed.constant_column(None, n, dec.DICT_STRING)
        assert column.null_count == n and column.type == dec.DICT_STRING
    del column
    assert pa.total_allocated_bytes() - before < 1 << 20
