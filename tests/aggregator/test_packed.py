"""The msgspec PackedForward fast path gives the same batches as the general decoder, or declines.

Every case decodes one PackedForward message twice: through :func:`aggregator.decode.decode`
(which tries the fast path first) and through the general msgpack path alone; the batches must
be equal. Cases the fast path must decline are checked to reach the general path.
"""

from __future__ import annotations

from typing import Any

import msgpack
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
    return dec._fast_entries(obj[0], dec._unpack_entries(blob)) or dec._general(obj, 1 << 30)


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


def test_integer_times_take_the_general_path() -> None:
    entries = b"".join(wire.pack([1_795_860_000 + i, shipper_record(i)]) for i in range(3))
    obj = ["logq.recipe", entries, {"size": 3}]
    assert packed.columns(packed.decode_entries(entries, 3), dec.DICT_STRING) is None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.column("time_ns").to_pylist() == [(1_795_860_000 + i) * 10**9 for i in range(3)]


def test_invalid_utf8_is_replaced_not_dropped() -> None:
    entries = wire.pack_entries([(T0, shipper_record(0))]).replace(b"line 0", b"line \xff")
    obj = ["logq.recipe", entries, {"size": 1}]
    assert packed.decode_entries(entries, 1) is None
    batch, _ = dec.decode(obj, 1 << 30)
    assert batch.equals(general(obj))
    assert batch.column(wire.KEY_LOG).to_pylist() == ["line ? é"]  # as the general path does


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
        {wire.KEY_STREAM: "console"},  # a stream the decoder does not know
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
