"""The table contract: names, types and partition values every part relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from athena import ddl, schema

ENVOY_COLUMNS = [
    "timestamp", "service", "host", "container_id", "container_name", "method", "path",
    "protocol", "response_code", "response_flags", "bytes_received", "bytes_sent",
    "duration_ms", "upstream_service_time_ms", "x_forwarded_for", "user_agent", "request_id",
    "authority", "upstream_host",
]  # fmt: skip
LOG_COLUMNS = [
    "timestamp", "service", "host", "container_id", "container_name", "stream", "message",
]  # fmt: skip


def test_tables_match_the_design_contract() -> None:
    assert schema.ENVOY_ACCESS.column_names() == ENVOY_COLUMNS
    assert schema.CONTAINER_LOGS.column_names() == LOG_COLUMNS
    files = schema.ENVOY_ACCESS.arrow_schema()
    assert "service" not in files.names and "dt" not in files.names
    assert files.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert files.field("response_code").type == pa.int32()
    assert files.field("bytes_sent").type == pa.int64()


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Recipe", "recipe"),
        ("../../etc", "etc"),
        ("a=b/c", "a_b_c"),
        ("café-api", "cafe-api"),
        (None, "unknown"),
        ("x" * 300, "x" * 128),
        ("../../Evil/..\\Name", "evil_name"),  # "_.." then "__": one underscore
        ("a_.._..b", "a_b"),
    ],
)
def test_sanitize_service_keeps_names_inside_their_folder(raw: str | None, expected: str) -> None:
    assert schema.sanitize_service(raw) == expected


@pytest.mark.parametrize("raw", ["服务", "サービス", "/", "..", "."])
def test_sanitize_service_hashes_names_with_nothing_printable(raw: str) -> None:
    value = schema.sanitize_service(raw)
    assert value.startswith("svc-") and "/" not in value and ".." not in value


@given(st.text(alphabet=st.sampled_from("aZ9._-/\\ =é服"), max_size=40) | st.text(max_size=40))
def test_sanitize_service_is_idempotent(raw: str) -> None:
    """The writer sanitises a name once more when it builds the path, and `logq` sanitises the
    stored name a user types back: both must land on the same folder."""
    once = schema.sanitize_service(raw)
    assert schema.sanitize_service(once) == once
    assert ".." not in once and "__" not in once and "/" not in once


def test_sanitize_service_keeps_non_latin_names_apart() -> None:
    assert schema.sanitize_service("服务") != schema.sanitize_service("サービス")


def test_dt_is_the_utc_hour() -> None:
    ts = datetime(2024, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert schema.dt_of(ts) == "2024-02-29-22"
    assert schema.parse_dt("2024-02-29-22") == datetime(2024, 2, 29, 22, tzinfo=UTC)
    assert schema.partition_path("envoy_access", "Recipe", "2024-02-29-22") == (
        "envoy_access/service=recipe/dt=2024-02-29-22"
    )


def test_ddl_declares_every_data_column_and_projection() -> None:
    text = ddl.create_table(schema.ENVOY_ACCESS, "s3://bucket/wh", ["recipe", "Auth"])
    for column in schema.ENVOY_ACCESS.data_columns:
        assert f"`{column.name}` {column.athena}" in text
    assert "LOCATION 's3://bucket/wh/envoy_access/'" in text
    assert "'projection.service.values' = 'auth,recipe'" in text
    assert "'projection.dt.format' = 'yyyy-MM-dd-HH'" in text
    assert "service=${service}/dt=${dt}" in text
    assert "PARTITIONED BY" in text and "STORED AS PARQUET" in text


def test_ddl_quotes_hostile_values() -> None:
    alter = ddl.set_service_values(schema.CONTAINER_LOGS, ["it's"], database="logs")
    assert alter.startswith("ALTER TABLE `logs`.`container_logs`")
    assert "'it_s'" in alter
    assert ddl.quote_string("a'b") == "'a\\'b'"  # Hive DDL: C-style escapes
    assert ddl.quote_string("s3://b/pre\\fix") == "'s3://b/pre\\\\fix'"
    assert ddl.quote_ident("we`ird") == "`we``ird`"
