"""Canned query files: parameters found safely, rendered for both engines, values never inlined."""

from __future__ import annotations

import pytest

from athena import queries
from athena.queries import QueryError, find_placeholders, to_athena, to_duckdb

COMMON = {
    "dt_from": "2026-11-27-23",
    "dt_to": "2026-11-28-00",
    "since": "2026-11-27 23:00:00.000",
    "until": "2026-11-28 00:30:00.000",
    "all_services": False,
    "services": ["recipe"],
    "path_prefix": "",
    "method": "",
    "row_limit": 10,
    "status_min": 500,
    "status_max": 599,
    "group_by": "path",
    "top_by": "path",
    "every_seconds": 60,
    "request_id": "r",
    "stream": "",
    "grep": "",
}


def test_every_query_parses_and_constrains_dt_and_service() -> None:
    names = queries.query_names()
    assert {"errors", "latency", "flags", "upstreams", "top", "timeline", "trace", "tail"} <= set(
        names
    )
    for name in names:
        q = queries.load(name)
        assert q.description
        hours_only = name == "services"  # counts whole hour partitions: no since/until
        need = {"dt_from", "dt_to", "services"} | (set() if hours_only else {"since", "until"})
        assert need <= set(q.parameters), name
        sql, bound = to_duckdb(q.text, COMMON)
        assert "$dt_from" in sql and "$services__0" in sql
        assert set(bound) <= set(COMMON) | {"services__0"}


def test_placeholders_ignore_strings_comments_and_casts() -> None:
    sql = "SELECT ':not', a::int, b -- :nor\nFROM t WHERE x = :yes AND y IN (:list)"
    assert [n for _, _, n in find_placeholders(sql)] == ["yes", "list"]


def test_list_expansion_and_missing_values() -> None:
    sql, bound = to_duckdb("SELECT 1 FROM t WHERE s IN (:s)", {"s": ["a", "b'c"]})
    assert "IN ($s__0, $s__1)" in sql and bound == {"s__0": "a", "s__1": "b'c"}
    with pytest.raises(QueryError, match=":x"):
        to_duckdb("SELECT :x", {})
    with pytest.raises(QueryError, match="empty list"):
        to_duckdb("SELECT 1 FROM t WHERE s IN (:s)", {"s": []})


def test_athena_rendering_uses_pyformat_and_escapes_percent() -> None:
    sql, bound = to_athena(
        "SELECT 1 FROM t WHERE p LIKE '%x' AND s IN (:s) AND q = :q", {"s": ["a"], "q": 1}
    )
    assert sql == "SELECT 1 FROM t WHERE p LIKE '%%x' AND s IN (%(s__0)s) AND q = %(q)s"
    assert bound == {"s__0": "a", "q": 1}


def test_athena_literal_quotes_hostile_values() -> None:
    q = queries.load("errors")
    text = queries.athena_literal_sql(q.text, {**COMMON, "services": ["x' OR '1'='1"]})
    assert "service IN ('x'' OR ''1''=''1')" in text
    assert "LIMIT 10" in text


def test_percentiles_exact_on_duckdb() -> None:
    sql, _ = to_duckdb(queries.load("latency").text, COMMON)
    assert "QUANTILE_DISC(duration_ms, 0.99)" in sql


def test_tables_of() -> None:
    assert queries.tables_of("WITH x AS (SELECT 1) SELECT * FROM x, envoy_access") == {
        "envoy_access"
    }


def test_unknown_query() -> None:
    with pytest.raises(QueryError, match="the queries are"):
        queries.load("nope")


def test_database_qualified_tables_read_local_views() -> None:
    sql, _ = to_duckdb('SELECT count(*) FROM "logs".envoy_access JOIN db.other ON true', {})
    assert "FROM envoy_access" in sql and "db.other" in sql
