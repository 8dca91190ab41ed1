"""Writing to a real S3 server (SeaweedFS) through pyarrow's S3 filesystem."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from aggregator.buffer import Segment
from aggregator.dedup import OffsetState
from aggregator.envoy import BUILTIN_FORMATS
from aggregator.flusher import Flusher
from aggregator.ledger import Committed, Ledger, entry_name
from aggregator.state_files import segment_name
from athena.warehouse import open_warehouse
from shipper import wire
from tests.aggregator.helpers import (
    ENVOY_IMAGE,
    envoy_line,
    parquet_files,
    read_acks,
    read_table,
    record,
    start_aggregator,
    wait_rows,
)
from tests.aggregator.proxy import TcpProxy
from tests.aggregator.test_flusher import write_segment
from tests.support.metrics import metrics_base
from tests.support.parquet import assert_fastparquet_reads
from tests.support.procs import wait_until

pytestmark = [pytest.mark.s3, pytest.mark.integration]

OUTAGE_SECONDS = 6.0
"""Twice --unhealthy-after (3 s): /healthz must turn 503 during the outage and the flush must
have failed and been retried (backoff 0.5, 1, 2 s...) before S3 is back. The long outage with
backpressure is tests/chaos/test_s3_outage.py's."""


def test_aggregator_writes_partitions_to_s3(
    tmp_path: Path, s3_warehouse: str, s3_env: dict[str, str], subprocess_env: dict[str, str]
) -> None:
    env = {**subprocess_env, **s3_env}
    agg = start_aggregator(tmp_path, warehouse=s3_warehouse, env=env)
    now = time.time_ns()
    hostile = ["../../escape", "/", "a=b", "ünïcode", "日本"]
    try:
        with agg.connect() as sock:
            entries = [
                (now, record(envoy_line(code=500 + i), service="recipe", image=ENVOY_IMAGE))
                for i in range(4)
            ] + [(now, record(f"app {s}", service=s)) for s in hostile]
            sock.sendall(wire.encode_packed_forward("logq.x", entries, chunk="s3-1"))
            assert read_acks(sock, 1) == ["s3-1"]
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    envoy = read_table(s3_warehouse, "envoy_access")
    assert sorted(envoy["response_code"].to_pylist()) == [500, 501, 502, 503]
    logs = read_table(s3_warehouse, "container_logs")
    assert logs.num_rows == len(hostile)
    wh = open_warehouse(s3_warehouse)
    data = parquet_files(s3_warehouse, "envoy_access") + parquet_files(
        s3_warehouse, "container_logs"
    )
    assert len(data) == 1 + len(hostile)
    for path in data:
        assert path.startswith(wh.base + "/")
        assert "/../" not in path and "//" not in path
        rel = path[len(wh.base) + 1 :].split("/")
        assert len(rel) == 4 and rel[1].startswith("service=") and rel[2].startswith("dt=")
    # The DDL lives next to the data, under a name readers skip.
    ddl = wh.fs.get_file_info(pafs.FileSelector(wh.path("_ddl")))
    assert sorted(i.base_name for i in ddl) == [
        "container_logs.columns.json",
        "container_logs.sql",
        "envoy_access.columns.json",
        "envoy_access.sql",
    ]
    with wh.fs.open_input_stream(wh.path("_ddl", "envoy_access.sql")) as fh:
        text = fh.read().decode()
    assert "recipe" in text and "CREATE EXTERNAL TABLE IF NOT EXISTS" in text
    # fastparquet reads an object straight from S3 bytes too.
    first = parquet_files(s3_warehouse, "envoy_access")[0]
    local = tmp_path / "copy.parquet"
    with wh.fs.open_input_stream(first) as fh:
        local.write_bytes(fh.read())
    assert assert_fastparquet_reads(local) == 4


def test_s3_outage_keeps_data_buffered_then_writes_it(
    tmp_path: Path, s3_warehouse: str, s3_env: dict[str, str], subprocess_env: dict[str, str]
) -> None:
    """S3 unreachable for 6 s: acks continue (the buffer holds the data), nothing is lost.

    (SeaweedFS itself stopped for 35 s, with backpressure: tests/chaos/test_s3_outage.py.)"""
    endpoint = urlparse(s3_env["AWS_ENDPOINT_URL"])
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    proxy.up()
    env = {**subprocess_env, **s3_env, "AWS_ENDPOINT_URL": proxy.endpoint}
    extra = ["--metrics-listen", "127.0.0.1:0", "--unhealthy-after", "3"]
    extra += ["--retry-max-interval", "2"]  # S3 back: written within 2 s, not 8 (the default 60)
    agg = start_aggregator(tmp_path, warehouse=s3_warehouse, env=env, extra=extra)
    try:
        with agg.connect() as sock:
            sock.sendall(
                wire.encode_packed_forward("logq.a", [(time.time_ns(), record("before"))], "0")
            )
            assert read_acks(sock, 1) == ["0"]
            wait_rows(s3_warehouse, "container_logs", 1, agg)
            healthz = f"{metrics_base(agg.log_text())}/healthz"
            assert _status(healthz) == 200
            proxy.down()
            outage_started = time.monotonic()
            for i in range(1, 6):
                entries = [(time.time_ns(), record(f"during-{i}-{j}")) for j in range(100)]
                sock.sendall(wire.encode_packed_forward("logq.a", entries, str(i)))
                assert read_acks(sock, 1) == [str(i)]
                time.sleep(1)
            wait_until(lambda: "failed" in agg.log_text(), 30, "a failed flush", proc=agg.proc)
            # Failing for longer than --unhealthy-after: an orchestrator is told (data is safe).
            wait_until(lambda: _status(healthz) == 503, 30, "/healthz 503", proc=agg.proc)
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
            proxy.up()
        table = wait_rows(s3_warehouse, "container_logs", 501, agg, timeout=90)
        wait_until(lambda: _status(healthz) == 200, 30, "/healthz 200 again", proc=agg.proc)
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
        proxy.down()
    messages = table["message"].to_pylist()
    assert len(messages) == 501 and len(set(messages)) == 501
    assert "retrying in" in agg.log_text()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_replay_on_s3_deletes_only_the_earlier_attempts_extra_objects(
    tmp_path: Path, s3_warehouse: str, s3_env: dict[str, str]
) -> None:
    """The replay's listing of partition folders (flusher._found) spells keys as S3 does."""
    wh = open_warehouse(s3_warehouse)
    seg = Segment(5, tmp_path / segment_name(5))
    total = write_segment(seg.path, frames=4, per_frame=50)

    def flusher(state: str) -> Flusher:
        offsets = OffsetState(tmp_path / f"{state}.json").load()
        spill = tmp_path / state / "spill"
        return Flusher(wh, offsets, "node-a", BUILTIN_FORMATS, spill, Ledger(wh, "node-a"))

    def objects() -> list[str]:
        infos = wh.fs.get_file_info(pafs.FileSelector(wh.base, recursive=True))
        return sorted(
            i.path for i in infos if i.path.endswith(".parquet") and "/_ledger/" not in i.path
        )

    flusher("old").flush(seg)
    written = objects()
    for path in written:
        wh.fs.copy_file(path, path.replace("-0000.parquet", "-0003.parquet"))
    for info in wh.fs.get_file_info(pafs.FileSelector(wh.base, recursive=True)):
        if info.base_name == entry_name("node-a", 5):
            wh.fs.delete_file(info.path)
    assert len(objects()) == 2 * len(written)

    empty = pa.table({"source_id": pa.array([], pa.string()), "offset": pa.array([], pa.int64())})
    result = flusher("new").flush(seg, Committed(empty))
    assert result.records == total
    assert objects() == written
    rows = sum(pq.read_metadata(p, filesystem=wh.fs).num_rows for p in written)
    assert rows == total


def test_a_table_write_that_fails_midway_leaves_no_object(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while a flushed object is being encoded (here after a first row group went
    out) must not publish the rows encoded so far: closing an S3 upload stream completes it,
    so encoded straight into the stream the object appeared with half its rows."""
    import aggregator.storage as storage
    from aggregator.storage import StorageError, put_table

    wh = open_warehouse(s3_warehouse)
    path = wh.path("envoy_access", "service=x", "dt=2026-11-30-20", "f.parquet")
    table = pa.table({"n": pa.array(range(200_000), pa.int64())})
    real = pq.write_table

    def fails_midway(t: pa.Table, where: object, **options: object) -> None:
        with pq.ParquetWriter(where, t.schema) as writer:
            writer.write_table(t.slice(0, 100_000))
            raise OSError("encoding failed")

    monkeypatch.setattr(storage.pq, "write_table", fails_midway)
    with pytest.raises(StorageError, match="encoding failed"):
        put_table(wh, path, table)
    assert wh.fs.get_file_info(path).type == pafs.FileType.NotFound

    monkeypatch.setattr(storage.pq, "write_table", real)
    put_table(wh, path, table)  # a retry writes it whole
    assert pq.read_table(path, filesystem=wh.fs)["n"].to_pylist() == list(range(200_000))
