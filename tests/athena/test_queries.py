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
    "raw_paths": False,
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


ROUTE_PATHS = [
    "/api/v1/products?ids=447,337,646",
    "/api/v1/carts/3F2A9C1E-77B1-4C1E-9A7F-1D2B3C4D5E6F/items/12",
    "/api/v1/orders/1/2/3/4",
    "/static/0123456789abcdef0123/app.js",
    "/api/v1/users/me",
    "/api/v1/v2beta/abc123",
    "/a/12/",
    "/",
    "relative/7",
    "/deadbeef/cafe",
    "/api/v1/products/SKU-99880/reviews/2024-05-01",
    "/v2/h264/oauth2",
]


@pytest.mark.parametrize("name", ["errors", "latency", "top"])
def test_routes_fold_ids_the_same_on_duckdb_as_in_python(name: str) -> None:
    """The route expression, run for real on DuckDB after transpiling, agrees with an
    independent Python split, and --raw-paths gives the paths back as logged."""
    import duckdb
    import pandas as pd

    from tests.cli.routes import route

    rows = pd.DataFrame(
        {
            "dt": "2026-11-27-23",
            "service": "recipe",
            "timestamp": pd.Timestamp("2026-11-27 23:10:00"),
            "path": ROUTE_PATHS,
            "method": "GET",
            "response_code": 503,
            "response_flags": "UH",
            "duration_ms": 5,
            "upstream_host": None,
            "user_agent": None,
            "x_forwarded_for": None,
        }
    )
    con = duckdb.connect()
    con.register("envoy_access", rows)
    params = {**COMMON, "row_limit": 100}
    for raw in (False, True):
        sql, bound = to_duckdb(queries.load(name).text, {**params, "raw_paths": raw})
        cursor = con.execute(sql, bound)
        columns = [d[0] for d in cursor.description]
        at = columns.index("path" if name == "errors" else "key")
        got = sorted(r[at] for r in cursor.fetchall())
        want = sorted(ROUTE_PATHS if raw else {route(p) for p in ROUTE_PATHS})
        assert got == want, (name, raw)
    assert route(ROUTE_PATHS[1]) == "/api/v1/carts/{id}/items/{id}"
    assert route(ROUTE_PATHS[2]) == "/api/v1/orders/{id}/{id}/{id}/{id}"
    assert route("/a/12/") == "/a/{id}/" and route("/api/v1/v2beta/abc123") == ROUTE_PATHS[5]
    assert route(ROUTE_PATHS[10]) == "/api/v1/products/{id}/reviews/{id}"
    assert route("/v2/h264/oauth2") == "/v2/h264/oauth2"


def test_routes_on_athena_replace_every_match() -> None:
    """Trino's regexp_replace replaces every match by itself (DuckDB needs 'g', which the
    transpiler adds): the Athena text carries the patterns as written, without a 'g'."""
    sql, _ = to_athena(queries.load("errors").text, {**COMMON, "raw_paths": False})
    assert sql.count("regexp_replace(") == 3 and "'g'" not in sql
    duck, _ = to_duckdb(queries.load("errors").text, {**COMMON, "raw_paths": False})
    assert duck.count("'g'") == 3
