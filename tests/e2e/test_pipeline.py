"""End to end through real processes: shipper -> aggregator over TCP -> Parquet in S3 -> ``logq``.

The host is written by :mod:`cli.demohost`, whose manifest holds the row every line must become,
computed from the typed values the lines were rendered from. The test compares the *whole*
content of both tables (as multisets, so a duplicate or a loss shows) with that manifest, then
restarts the aggregator, appends lines to live files and ships again to show that what was
already delivered is not delivered twice and that the new lines arrive once.

The shipper and the aggregators run as processes; what they stored is read back by ``logq sql``
run in the test's process (:func:`~tests.support.pipeline.logq_json_in_process`: the same
command code, without a second of CPU for each ``logq`` start), except the canned query, asked
of a real ``logq``.
"""

from __future__ import annotations

import io
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cli.demohost import write_host
from cli.demoruntime import docker_entry, rfc3339nano
from cli.demotraffic import AccessRow
from tests.support.expect import assert_tables_match
from tests.support.parquet import assert_fastparquet_reads, fastparquet_values
from tests.support.pipeline import (
    logq_json,
    logq_json_in_process,
    run_shipper_once,
    start_aggregator,
)

pytestmark = [pytest.mark.integration, pytest.mark.s3]

KEY = re.compile(
    r"^wh/(envoy_access|container_logs)/service=[a-z0-9_.-]+/dt=\d{4}-\d{2}-\d{2}-\d{2}/"
    r"[^/_.][^/]*\.parquet$"
)


@pytest.fixture
def env(subprocess_env: dict[str, str], s3_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, **s3_env}


def test_every_line_arrives_exactly_once_with_typed_values(
    tmp_path: Path, s3_warehouse: str, env: dict[str, str], seaweedfs
) -> None:
    now = datetime.now(UTC)
    manifest = write_host(tmp_path / "containers", seed=20261128, now=now, requests=400)
    host = socket.gethostname()

    agg = start_aggregator(s3_warehouse, tmp_path, env)
    try:
        shipped = run_shipper_once(agg.address, manifest.root, tmp_path / "state", env)
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()

    # 1. Object layout in the bucket: only complete Parquet files, under the partition rule.
    bucket = s3_warehouse.removeprefix("s3://").split("/")[0]
    s3 = seaweedfs.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
        if not o["Key"].endswith("/")
    ]
    data = [k for k in keys if k.startswith(("wh/envoy_access/", "wh/container_logs/"))]
    assert data, f"the aggregator wrote no table data to the bucket: {keys}"
    assert [k for k in data if not KEY.match(k)] == []
    # Anything else (DDL, state) lives under names readers skip.
    assert [k for k in keys if k not in data and not k.startswith("wh/_")] == []
    keys = data
    services = {re.search(r"service=([^/]+)", k).group(1) for k in keys}  # type: ignore[union-attr]
    assert services == set(manifest.services)
    # An independent Parquet reader agrees on one file (zstd, ms timestamps, no partition cols).
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    columns = fastparquet_values(body)
    assert "service" not in columns and "dt" not in columns
    assert assert_fastparquet_reads(body) > 0
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    ts = meta.schema.column(meta.schema.names.index("timestamp"))
    assert ts.physical_type == "INT64"
    assert "isAdjustedToUTC=true, timeUnit=milliseconds" in str(ts.logical_type)
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}

    # 2. Whole tables equal the manifest, as multisets: nothing lost, nothing twice.
    tables = assert_tables_match(manifest, s3_warehouse, env, host)
    access, logs = tables["envoy_access"], tables["container_logs"]

    # 3. Specific typed values: '-' is NULL where the schema says so, numbers are numbers.
    by_key = {(r["service"], r["request_id"]): r for r in access}
    uh = next(r for r in manifest.access if r["response_flags"] == "UH")
    row = by_key[(uh["service"], uh["request_id"])]
    assert row["response_code"] == 503 and isinstance(row["response_code"], int)
    assert row["upstream_host"] is None and row["upstream_service_time_ms"] is None
    assert row["bytes_sent"] == 19 and row["timestamp"] == uh["timestamp"]
    dc = next(r for r in manifest.access if r["response_code"] == 0)
    assert by_key[(dc["service"], dc["request_id"])]["response_flags"] == "DC"
    v6 = next(r for r in manifest.access if (r["upstream_host"] or "").startswith("["))
    assert by_key[(v6["service"], v6["request_id"])]["upstream_host"] == v6["upstream_host"]
    long_line = max(manifest.logs, key=lambda r: len(r["message"]))
    assert len(long_line["message"]) > 16 * 1024  # Docker split it; the shipper joined it
    assert any(r["message"] == long_line["message"] for r in logs)
    assert all(r["timestamp"].microsecond % 1000 == 0 for r in access[:50])

    # 4. The canned query answers from S3 what the manifest says, asked of a ``logq`` process
    # (the tables above and the counts below are read by the same code in this one).
    wh = ["--warehouse", s3_warehouse]
    errors = logq_json(
        ["errors", "--service", "recipe", "--since", "3h", "--limit", "10000", *wh],
        env,
    )
    got_errors = {(r["path"], r["response_code"], r["response_flags"]): r["count"] for r in errors}
    assert got_errors == dict(manifest.errors("recipe"))
    assert errors[0]["count"] == max(manifest.errors("recipe").values())


def test_restart_and_appended_lines_are_shipped_once(
    tmp_path: Path, s3_warehouse: str, env: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    manifest = write_host(tmp_path / "containers", seed=5, now=now, requests=60, long_line=False)
    state = tmp_path / "state"

    def ship_round() -> None:
        # One buffer segment per round (sealed by SIGTERM), so every round's objects come from
        # the same buffer dir and a reused segment number would show as lost rows.
        agg = start_aggregator(s3_warehouse, tmp_path, env, flush_interval=60)
        try:
            done = run_shipper_once(agg.address, manifest.root, state, env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert agg.terminate() == 0, agg.log.read_text()
        finally:
            agg.kill()

    ship_round()
    ship_round()  # nothing new: the checkpoints must keep it from being sent again
    counts = manifest.counts()
    sql = "SELECT service, count(*) AS n FROM {t} GROUP BY service"
    for table in ("envoy_access", "container_logs"):
        rows = logq_json_in_process(["sql", sql.format(t=table), "--warehouse", s3_warehouse], env)
        assert {r["service"]: r["n"] for r in rows} == counts[table]

    # Append to a live Envoy log: exactly the new lines arrive, once.
    envoy = next(c for c in manifest.containers if c.role == "envoy" and c.service == "search")
    # Into an hour that already holds search rows: the new object must sit next to the old.
    start = next(r["timestamp"] for r in manifest.access if r["service"] == "search")
    extra = [
        AccessRow(
            "search", start + timedelta(milliseconds=i), "GET", f"/api/v1/search?q=new{i}",
            "HTTP/1.1", 200, "-", 0, 1234, 7, 6, None, "curl/8.5.0", f"appended-{i}",
            "search.internal:9200", "[2600:1f18:4a3:6901::99]:9200",
        )
        for i in range(5)
    ]  # fmt: skip
    with open(envoy.log_path, "a", encoding="utf-8") as out:
        for row in extra:
            out.write(docker_entry(row.line() + "\n", "stdout", rfc3339nano(row.start, 1)))
    ship_round()
    wh = ["--warehouse", s3_warehouse]
    appended = "request_id LIKE 'appended-%'"
    rows = logq_json_in_process(
        ["sql", f"SELECT request_id, bytes_sent FROM envoy_access WHERE {appended}", *wh],
        env,
    )
    assert sorted(r["request_id"] for r in rows) == [f"appended-{i}" for i in range(5)]
    assert {r["bytes_sent"] for r in rows} == {1234}
    # ...and nothing stored before was lost (e.g. overwritten by a reused object key).
    rows = logq_json_in_process(["sql", sql.format(t="envoy_access"), *wh], env)
    want = {**counts["envoy_access"], "search": counts["envoy_access"]["search"] + 5}
    assert {r["service"]: r["n"] for r in rows} == want


def test_acknowledged_lines_survive_an_aggregator_crash(
    tmp_path: Path, s3_warehouse: str, env: dict[str, str]
) -> None:
    """Acked means durable: SIGKILL the aggregator before it flushed; a restart writes it all."""
    manifest = write_host(tmp_path / "containers", seed=8, requests=80, long_line=False)
    agg = start_aggregator(s3_warehouse, tmp_path, env, flush_interval=3600)
    try:
        done = run_shipper_once(agg.address, manifest.root, tmp_path / "state", env)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        agg.kill()  # no SIGTERM: nothing gets the chance to flush
    agg = start_aggregator(s3_warehouse, tmp_path, env)
    try:
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    sql = "SELECT service, count(*) AS n FROM {t} GROUP BY service"
    counts = manifest.counts()
    for table in ("envoy_access", "container_logs"):
        rows = logq_json_in_process(["sql", sql.format(t=table), "--warehouse", s3_warehouse], env)
        assert {r["service"]: r["n"] for r in rows} == counts[table], table
