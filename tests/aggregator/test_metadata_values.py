"""Metadata values logq cannot use are ignored, on every decode path (aggregator.decode).

A Forward client's ``service``, ``host`` (and ``container_id``, ``container_name``, ``image``,
``format``) that is not text (``42``, ``true``, ``{"name": "orders"}`` from an ECS logging app
under Fluent Bit's ``Merge_Log On``) counts as absent: the next rule gives the value (a
``kubernetes`` label, the FireLens family, the tag's last part), as docs/operations.md says,
rather than a junk service folder of the value as JSON. ``stream`` holds ``stdout`` or
``stderr`` (DESIGN.md): ``STDERR`` is ``stderr``, and a value that is no stream (``console``)
is ignored like the others. The record's line is what it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from aggregator import packed, packed_scan
from aggregator import service as service_mod
from aggregator.config import Settings
from aggregator.throttle import Throttle
from shipper import wire
from tests.aggregator.helpers import read_table, record
from tests.aggregator.test_client_metadata import (
    K8S_TAG,
    T0,
    column,
    decode_all_ways,
    firelens_record,
    kube_record,
    routed,
)
from tests.aggregator.test_disk_full import _wait_for
from tests.aggregator.test_packed import shipper_record

NOT_TEXT: list[Any] = [42, True, 1.5, ["a"], {"name": "orders", "version": "1.2"}]
METADATA = ("service", "host", "container_id", "container_name", "image", "format")


def services(batch: pa.RecordBatch) -> list[str]:
    """The service folder of each row (its partition value), in row order."""
    return routed(batch).tables["container_logs"].column("service").to_pylist()


def one_each_way(tag: str, record: dict[str, Any]) -> list[pa.RecordBatch]:
    """``record`` alone through CompressedPackedForward and Fluent Bit 5's ``[[time,
    metadata], record]`` entries (as an array and as a blob), besides the paths of
    :func:`decode_all_ways` (PackedForward, Forward, Message)."""
    frame = wire.encode_packed_forward(tag, [(T0, record)], compress=True)
    compressed = msgpack.unpackb(frame, raw=False)
    assert compressed[2]["compressed"] == "gzip"
    head = [wire.EventTime(T0 // 1_000_000_000, T0 % 1_000_000_000), {"trace": 1}]
    blob = wire.pack([head, record])
    return [
        decode_all_ways(tag, [record]),
        dec.decode(compressed, 1 << 30)[0],
        dec.decode([tag, [[head, record]]], 1 << 30)[0],
        dec.decode([tag, blob, {"size": 1, "compressed": "text"}], 1 << 30)[0],
    ]


@pytest.mark.parametrize("value", NOT_TEXT, ids=repr)
def test_a_service_that_is_not_text_takes_the_tags(value: Any) -> None:
    for batch in one_each_way("app.billing", {"log": "hello", "service": value}):
        assert column(batch, "service") == [None]
        assert services(batch) == ["billing"]
        assert column(batch, "log") == ["hello"]


@pytest.mark.parametrize("key", METADATA)
def test_other_metadata_that_is_not_text_is_ignored(key: str) -> None:
    for batch in one_each_way("app.billing", {"log": "hello", key: {"name": "x"}}):
        assert column(batch, key) == [None], key


def test_a_message_of_many_records_takes_the_tags_too() -> None:
    """Large PackedForward blobs, of the shipper's shape otherwise, first go to the fast
    decoders (the column-wise scan, the constant-metadata one): they decline such values."""
    n = packed_scan.MIN_ENTRIES
    records = [shipper_record(i, service={"name": "orders"}, host=5) for i in range(n)]
    frame = wire.encode_packed_forward("logq.recipe", [(T0 + i, r) for i, r in enumerate(records)])
    batch, _ = dec.decode(msgpack.unpackb(frame, raw=False), 1 << 30)
    assert set(column(batch, "service")) == {None}
    assert set(column(batch, "host")) == {None}
    assert set(routed(batch).tables["container_logs"].column("service").to_pylist()) == {"recipe"}


def test_a_service_that_is_not_text_gives_way_to_client_metadata() -> None:
    """``Merge_Log On`` lifts an app's ``"service": {"name": ...}`` beside Fluent Bit's
    ``kubernetes`` map (and FireLens's task definition): those name the service."""
    kube = kube_record("a", labels={"logq.service": "from-label"})
    kube.update(service={"name": "orders"}, host=7)
    firelens = firelens_record("b")
    firelens["service"] = ["orders"]
    batch = decode_all_ways(K8S_TAG, [kube, firelens])
    assert column(batch, "service") == ["from-label", "recipe"]
    assert column(batch, "host")[0] == "node-1"


def test_the_line_is_unchanged() -> None:
    """A record without ``log`` keeps its line: its message key, else itself as JSON."""
    bare = {"service": {"name": "orders"}, "level": "info"}
    records = [{"message": "paid", "service": 42}, bare]
    batch = decode_all_ways("app.billing", records)
    assert column(batch, "log") == ["paid", json.dumps(bare, sort_keys=True)]
    assert services(batch) == ["billing", "billing"]


STREAMS = [
    ("STDERR", "stderr"),
    ("Stdout", "stdout"),
    (b"STDOUT", "stdout"),
    ("console", None),
    ("", None),
    (2, None),
]


@pytest.mark.parametrize(("sent", "stored"), STREAMS, ids=repr)
def test_a_stream_is_stdout_or_stderr(sent: Any, stored: str | None) -> None:
    for batch in one_each_way("app.billing", {"log": "hello", "stream": sent}):
        assert column(batch, "stream") == [stored]


def test_a_stream_that_is_no_stream_gives_way_to_dockers_source() -> None:
    record = {"log": "x", "stream": "console", "source": "STDERR", "container_name": "/app"}
    batch = decode_all_ways("app.billing", [record])
    assert column(batch, "stream") == ["stderr"]
    assert column(batch, "container_name") == ["app"]


@pytest.mark.parametrize("n", [packed.CONSTANT_MIN_ENTRIES, packed_scan.MIN_ENTRIES])
@pytest.mark.parametrize("client", ["logq-shipper", "firelens"])
def test_many_records_of_odd_streams_are_coerced_too(client: str, n: int) -> None:
    """Mixed streams in a large shipper-shaped blob (the msgspec per-record decoder; the
    column-wise scan before it), and FireLens's records (the msgspec client decoder), whose
    ``source`` gives the stream that ``console`` does not."""
    odd = ["stdout", "STDERR", "console"]
    if client == "logq-shipper":
        records = [shipper_record(i, stream=odd[i % 3]) for i in range(n)]
        stored = ["stdout", "stderr", None]
    else:
        records = [firelens_record(f"l{i}", stream=odd[i % 3]) for i in range(n)]
        stored = ["stdout", "stderr", "stdout"]
    entries = [(T0 + i, r) for i, r in enumerate(records)]
    obj = msgpack.unpackb(wire.encode_packed_forward(client, entries), raw=False)
    batch, _ = dec.decode(obj, 1 << 30)
    assert column(batch, "stream") == [stored[i % 3] for i in range(n)]


def test_client_records_of_mixed_metadata_and_odd_streams() -> None:
    """FireLens records whose ``source`` and keys differ (the msgspec client decoder's
    record-by-record fills, not its one-fill-per-chunk branch), a few with a ``stream`` of
    their own: ``STDERR`` is ``stderr``, and ``console`` gives way to ``source``."""
    odd = ["stdout", "STDERR", "console"]
    records = [
        firelens_record(
            f"l{i}",
            source=("stdout", "stderr")[i % 2],
            **({"stream": odd[i % 3]} if i % 4 == 0 else {}),
        )
        for i in range(packed.CONSTANT_MIN_ENTRIES)
    ]
    entries = [(T0 + i, r) for i, r in enumerate(records)]
    obj = msgpack.unpackb(wire.encode_packed_forward("ecs.recipe", entries), raw=False)
    batch, _ = dec.decode(obj, 1 << 30)
    expected = [
        {"stdout": "stdout", "STDERR": "stderr", "console": "stdout"}[odd[i % 3]]
        if i % 4 == 0
        else ("stdout", "stderr")[i % 2]
        for i in range(len(records))
    ]
    assert column(batch, "stream") == expected


# --- source_id: text only (the offset dedup's key) ------------------------------------------

SOURCE_IDS_NOT_TEXT: list[Any] = [5, b"5", 5.0, True]


@pytest.mark.parametrize("value", SOURCE_IDS_NOT_TEXT, ids=repr)
def test_a_source_id_that_is_not_text_is_no_source_id(value: Any) -> None:
    """logq-shipper sends its source ids as text; any other value is another client's field,
    not an id to deduplicate by: absent in the buffer, on every decode path, the shipper's
    record beside it keeping its id."""
    shipper = record("shipped", source_id="5", offset=10)
    foreign = record("foreign", source_id=value, offset=10)
    mixed = decode_all_ways("app.billing", [foreign, shipper])
    assert column(mixed, "source_id") == [None, "5"]
    for batch in [mixed, *one_each_way("app.billing", foreign)]:
        assert column(batch, "source_id")[0] is None
        assert column(batch, "log")[0] == "foreign"


def test_records_whose_source_id_differs_only_in_type_are_all_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: a ``source_id`` of 5, b"5" or 5.0 was coerced to text and shared the offset
    dedup's mark with the text "5": of records with the same offset, all but one were dropped
    as resends, silently. Now only text is a source id; the others are kept (each in a message
    of its own chunk), a WARNING said once per type."""
    settings = Settings(
        listen="127.0.0.1:0",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
    )
    monkeypatch.setattr(  # none said yet
        dec, "_foreign_source_ids", Throttle(math.inf, what="source_id types", logger=dec.log)
    )
    agg = service_mod.Aggregator(settings)
    values: list[Any] = ["5", 5, b"5", 5.0, 5, "5"]

    async def send(port: int, i: int, value: Any) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        entries = [(time.time_ns(), record(f"line {i}", source_id=value, offset=10))]
        writer.write(wire.encode_packed_forward("logq.types", entries, chunk=f"c{i}"))
        await writer.drain()
        assert wire.decode_ack(msgpack.unpackb(await reader.read(4096))) == f"c{i}"
        writer.close()

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        for i, value in enumerate(values):
            await send(agg.port, i, value)
        agg.stop()
        return await asyncio.wait_for(running, 120)

    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    stored = read_table(settings.warehouse, "container_logs")["message"].to_pylist()
    # The text "5" at offset 10 twice is a shipper's resend: stored once. Every other is kept.
    assert sorted(stored) == ["line 0", "line 1", "line 2", "line 3", "line 4"]
    said = [r.getMessage() for r in caplog.records if "source_id that is not text" in r.message]
    assert [m.split("(")[1].split(",")[0] for m in said] == ["int", "bytes", "float"], said
