"""The table contract: names, types and partition values every part relies on."""

from __future__ import annotations

import hashlib
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
        ("x" * 128, "x" * 128),  # the longest name stored as it is
        ("_" + "x" * 128 + "._-", "x" * 128),  # its ends stripped: nothing lost, no hash
        ("Café API", "cafe_api"),
        ("ns/pod/container", "ns_pod_container"),
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


def _sha(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:10]


def test_names_that_lose_characters_keep_apart_by_a_hash_after_what_is_left() -> None:
    """``Заказы-api`` and ``注文-api`` both became ``api``, the folder of a service really
    named ``api``: the letters without an ASCII form were dropped without a word."""
    orders_ru = schema.sanitize_service("Заказы-api")
    orders_ja = schema.sanitize_service("注文-api")
    assert orders_ru == f"api-{_sha('Заказы-api')}"
    assert orders_ja == f"api-{_sha('注文-api')}"
    assert len({orders_ru, orders_ja, schema.sanitize_service("api")}) == 3
    assert schema.sanitize_service("straße") == f"strae-{_sha('straße')}"  # ß has no fold
    assert schema.sanitize_service("emoji-😀") == f"emoji-{_sha('emoji-😀')}"
    # What the writer says about it (aggregator.stored_names): what was dropped.
    result = schema.sanitized_service("Заказы-api")
    assert result.hashed and result.dropped == ("З", "а", "к", "з", "ы") and not result.cut_from
    assert not schema.sanitized_service("Café-API").hashed  # accents fold: nothing lost


def test_long_names_sharing_their_first_128_characters_keep_apart() -> None:
    """Cut at 128 characters, two long names with the same start shared one folder."""
    head = "checkout" * 17  # 136 characters
    one, two = (schema.sanitize_service(head + tail) for tail in ("canary", "stable"))
    assert one != two
    assert one == head[:117] + "-" + _sha(head + "canary")
    assert len(one) == len(two) == schema.MAX_SERVICE_LEN
    # The kept part ends before a '-', '_' or '.' the cut leaves at its end: no "--".
    cut_at_dash = "x" * 116 + "-" + "y" * 20
    assert schema.sanitize_service(cut_at_dash) == "x" * 116 + "-" + _sha(cut_at_dash)
    assert schema.sanitized_service(head + "canary").cut_from == 142


#: Characters that fold, are replaced, or have no ASCII form; with them long names (cut).
_TRICKY = st.sampled_from(["a", "Z", "9", ".", "_", "-", "/", " ", "é", "ß", "Ж", "注", "😀",
                           "\ufffd", "\udcff", "\u0301", "ﬁ", "x" * 60])  # fmt: skip


@given(st.lists(_TRICKY, max_size=12).map("".join), st.sampled_from(["Ж", "注", "ß", "😀"]))
def test_sanitize_service_is_idempotent_and_keeps_what_it_drops_apart(raw: str, lost: str) -> None:
    """A stored name sanitises to itself (the writer sanitises twice, `logq` and the Athena
    enum sanitise stored names), whatever the name lost; and a character with no ASCII form
    moves a name to another folder, wherever it is: dropped, it merged the two."""
    for name in (raw, raw + lost, lost + raw):
        once = schema.sanitize_service(name)
        assert schema.sanitize_service(once) == once
        assert len(once) <= schema.MAX_SERVICE_LEN
        assert ".." not in once and "__" not in once and "/" not in once
        assert once[0] not in "._-" and once[-1] not in "._-"
    assert schema.sanitize_service(raw + lost) != schema.sanitize_service(raw)
    assert schema.sanitize_service(lost + raw) != schema.sanitize_service(raw)


def test_hashed_names_are_canonical_folders_and_athena_enum_values() -> None:
    """The folders the new names get are read (not skipped as strays) and listed in the enum."""
    from athena.stray_folders import is_service

    names = ["Заказы-api", "注文-api", "x" * 300, "服务", "emoji-😀"]
    stored = [schema.sanitize_service(n) for n in names]
    assert len({*stored, "api"}) == len(names) + 1  # "Заказы-api" and "注文-api" were "api"
    assert all(is_service(value) for value in stored)
    assert ddl.service_enum([*names, "api"]).split(",") == sorted({*stored, "api"})


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
