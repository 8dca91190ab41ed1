"""A long ``source_id`` is stored as a fixed-length id, the same on every decode path
(aggregator/source_ids.py), so what a client's ids cost the offset dedup is bounded and their
resends are still dropped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from aggregator import source_ids
from aggregator.dedup import OFFSETS_NAME, OffsetState
from aggregator.throttle import Throttle
from shipper import wire
from tests.aggregator.test_packed import shipper_record

T0 = 1_795_860_000_123_456_789
HOST = "h" * 600  # the same first 64 characters for both long ids
LONG_1, LONG_2 = f"{HOST}:1:fp", f"{HOST}:2:fp"
AT_THE_LIMIT = "x" * source_ids.MAX_SOURCE_ID_BYTES


def _event_time(ns: int) -> wire.EventTime:
    return wire.EventTime(ns // 1_000_000_000, ns % 1_000_000_000)


def every_path(tag: str, records: list[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
    """The batch of ``records`` through each decode path."""
    entries = [(T0 + i, r) for i, r in enumerate(records)]
    packed = msgpack.unpackb(wire.encode_packed_forward(tag, entries), raw=False)
    compressed = msgpack.unpackb(wire.encode_packed_forward(tag, entries, compress=True), raw=False)
    forward = [tag, [[_event_time(t), r] for t, r in entries]]
    floats = [tag, [[t / 1e9, r] for t, r in entries]]  # float times: the general path
    bits = [tag, [[[_event_time(t), {}], r] for t, r in entries]]  # Fluent Bit 5's entries
    batches = {"packed": dec.decode(packed, 1 << 30)[0]}  # first: the one the WARNING names
    messages = [dec.decode([tag, _event_time(t), r], 1 << 30)[0] for t, r in entries]
    return {
        **batches,
        "compressed": dec.decode(compressed, 1 << 30)[0],
        "forward": dec.decode(forward, 1 << 30)[0],
        "general": dec.decode(floats, 1 << 30)[0],
        "fluent-bit": dec.decode(bits, 1 << 30)[0],
        "message": pa.Table.from_batches(messages).combine_chunks().to_batches()[0],
        "big_messages": dec.decode_packed(tag, packed[1], len(records)) or pa.record_batch([]),
    }


def test_a_long_source_id_is_shortened_alike_on_every_decode_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: a source_id of any length was kept as sent: 20,000 distinct 10 KB ids took an
    aggregator to 1.28 GB and its offsets.json to 170 MB. Now one over 512 bytes is its start
    and its SHA-256 (the record stored, its line intact), whichever path decodes it."""
    monkeypatch.setattr(
        source_ids, "_warnings", Throttle(600.0, what="long ids", logger=source_ids.log)
    )
    ids = [LONG_1, LONG_2, "host:1:fp", AT_THE_LIMIT, LONG_1]
    records = [shipper_record(i, source_id=sid) for i, sid in enumerate(ids)]
    before = source_ids.LONG.value
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.decode"):
        batches = every_path("app.billing", records)
    short_1, short_2 = source_ids.shortened(LONG_1), source_ids.shortened(LONG_2)
    assert short_1 != short_2 and short_1.startswith("h" * 64 + "...sha256=")
    assert len(short_1.encode()) < 150
    for path, batch in batches.items():
        assert batch.column("source_id").to_pylist() == [
            short_1,
            short_2,
            "host:1:fp",
            AT_THE_LIMIT,
            short_1,
        ], path
        assert batch.column("log").to_pylist() == [r["log"] for r in records], path
        assert batch.column("offset").to_pylist() == [r["offset"] for r in records], path
    assert source_ids.LONG.value - before == 3 * len(batches)
    said = [r.getMessage() for r in caplog.records if "source_id over 512 bytes" in r.message]
    assert len(said) == 1, said  # rate-limited
    assert "(605 bytes, starting 'hhhh" in said[0] and "records=3" in said[0]


def test_the_resend_of_a_record_with_a_long_source_id_is_still_dropped(tmp_path: Path) -> None:
    records = [shipper_record(i, source_id=f"{HOST}:{i}:fp") for i in range(3)]
    first = every_path("app.billing", records)["packed"]
    state = OffsetState(tmp_path / OFFSETS_NAME)
    state.advance(first.column("source_id").dictionary_decode(), first.column("offset"))
    state.save()
    resent = every_path("app.billing", records)["forward"]
    mask = state.keep_mask(resent.column("source_id"), resent.column("offset"))
    assert mask.to_pylist() == [False, False, False]
    assert max(len(sid) for sid in OffsetState(state.path).load()._marks) < 150
