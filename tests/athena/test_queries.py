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
    "now": "2026-11-28 00:31:00.000",
    "all_services": False,
    "services": ["recipe"],
    "path_prefix": "",
    "path_route": "",
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


def test_latency_percentiles_are_nearest_rank_on_both_engines() -> None:
    """latency.sql ranks durations itself (running counts over per-duration counts, so the table
    is read once), with no approx_percentile for Athena: on DuckDB its answer equals
    quantile_disc, ties and NULL durations included (a NULL counts as a request, not a time)."""
    import random

    import duckdb
    import pandas as pd

    assert "approx_percentile" not in to_athena(queries.load("latency").text, COMMON)[0]
    rng = random.Random(5)
    sizes = [1, 2, 3, 7, 10, 99, 100, 101, 250]
    rows = pd.DataFrame(
        [
            {
                "dt": "2026-11-27-23",
                "service": "recipe",
                "timestamp": pd.Timestamp("2026-11-27 23:10:00"),
                "path": f"/g{size}",
                "method": "GET",
                "upstream_host": None,
                "duration_ms": None if rng.random() < 0.1 else rng.choice([5, 5, 7, 40, 900]),
            }
            for size in sizes
            for _ in range(size)
        ]
        + [{"dt": "2026-11-27-23", "service": "recipe", "path": "/none", "method": "GET",
            "timestamp": pd.Timestamp("2026-11-27 23:10:00"), "upstream_host": None,
            "duration_ms": None}]
    ).astype({"duration_ms": "Int32"})  # fmt: skip
    con = duckdb.connect()
    con.register("envoy_access", rows)
    want = con.execute(
        "SELECT path, count(*), quantile_disc(duration_ms, 0.5), quantile_disc(duration_ms, 0.9),"
        " quantile_disc(duration_ms, 0.99), max(duration_ms) FROM envoy_access GROUP BY path"
    ).fetchall()
    sql, bound = to_duckdb(queries.load("latency").text, {**COMMON, "row_limit": 100})
    got = [r[1:7] for r in con.execute(sql, bound).fetchall()]
    assert sorted(got, key=str) == sorted(want, key=str)
    assert ("/none", 1, None, None, None, None) in got


def test_tables_of() -> None:
    assert queries.tables_of("WITH x AS (SELECT 1) SELECT * FROM x, envoy_access") == {
        "envoy_access"
    }


@pytest.mark.parametrize("tail", ["", "; -- the 5xx", ";\n/* the 5xx */"])
def test_tables_of_sees_a_shadowing_cte_before_a_trailing_comment(tail: str) -> None:
    """The statements as the rest of logq reads them (:func:`queries.parse_statements`): a
    comment after the last ``;`` made the statement a ``Block``, whose CTEs went unseen, so
    the table shadowed by its own ``WITH`` was not read at all (no local view: DuckDB's
    "circular reference to CTE")."""
    sql = (
        "WITH envoy_access AS (SELECT * FROM envoy_access WHERE response_code >= 500) "
        f"SELECT count(*) FROM envoy_access{tail}"
    )
    assert queries.tables_of(sql) == {"envoy_access"}
    with pytest.raises(QueryError, match="expected one SQL statement, got 2"):
        queries.tables_of(f"SELECT 1; SELECT * FROM envoy_access{tail}")


#: Statements sqlglot cannot parse, and the reason logq gives (after "cannot parse the SQL as
#: Athena (Trino) SQL: "), position and excerpt included: sqlglot's own words named its classes
#: (``<class 'sqlglot.expressions.query.Where'>``) and tokens (``<Token token_type: ...>``).
PARSE_ERRORS = [
    (
        "SELECT * FROM envoy_access WHERE",
        "the SQL ends early after WHERE: a condition is missing; "
        "line 1, column 28: SELECT * FROM envoy_access WHERE",
    ),
    (
        "SELECT * FROM",
        "the SQL ends early after FROM: a table name is missing; line 1, column 10: SELECT * FROM",
    ),
    (
        "SELECT a FROM b WHERE x = = 1",
        "a value is missing before '='; line 1, column 27: SELECT a FROM b WHERE x = = 1",
    ),
    (  # only a comment and a ';' after it: the SQL still ends there
        "SELECT a FROM b ORDER BY; -- why",
        "the SQL ends early after ORDER BY: what to order by is missing; "
        "line 1, column 17: SELECT a FROM b ORDER BY; -- why",
    ),
    (
        "SELECT a FROM WHERE x = 1",
        "a table name is missing before WHERE; line 1, column 15: SELECT a FROM WHERE x = 1",
    ),
    (
        "SELECT date_trunc('hour', ) FROM b",
        "a value is missing before ')'; line 1, column 27: SELECT date_trunc('hour', ) FROM b",
    ),
    ("SELECT (1", "the SQL ends early after '1': ')' is missing; line 1, column 9: SELECT (1"),
    (
        "SELECT 1 FROM t WHERE a = 1)",
        "unexpected ')'; line 1, column 28: SELECT 1 FROM t WHERE a = 1)",
    ),
    (  # a reason not foreseen keeps sqlglot's description
        "SELECT CAST(1 AS)",
        "Expected TYPE after CAST at ')'; line 1, column 17: SELECT CAST(1 AS)",
    ),
    (  # the line and column of the token on a later line; the excerpt on one line
        "SELECT *\nFROM envoy_access\nWHERE service = 'x' AND",
        "the SQL ends early after AND: a condition is missing; "
        "line 3, column 21: SELECT * FROM envoy_access WHERE service = 'x' AND",
    ),
]


@pytest.mark.parametrize(("sql", "reason"), PARSE_ERRORS)
def test_a_parse_error_reads_as_a_reason_with_its_place(sql: str, reason: str) -> None:
    with pytest.raises(QueryError) as refused:
        queries.one_statement(sql)
    assert str(refused.value) == f"cannot parse the SQL as Athena (Trino) SQL: {reason}"


def test_class_and_token_reprs_read_as_names_in_any_parse_error() -> None:
    """A description no rule of :mod:`athena.parse_errors` knows still reads: a class as its
    name, a token as its text, sqlglot's end-of-text token as the end of the SQL."""
    from sqlglot.errors import ParseError

    from athena.parse_errors import parse_error_text

    token = (
        "<Token token_type: TokenType.{}, text: {}, line: 1, col: 9, start: 8, end: 8, "
        "comments: []>"
    )
    description = (
        f"Odd {token.format('L_PAREN', '(')} in <class 'sqlglot.expressions.core.Glob'> "
        f"before {token.format('SENTINEL', 'SENTINEL')}"
    )
    error = ParseError.new(
        description, description=description, line=1, col=9, highlight="(", end_context=" 1"
    )
    assert parse_error_text(error) == (
        "Odd '(' in Glob before the end of the SQL at '('; line 1, column 9: ( 1"
    )
    assert parse_error_text(ParseError(f"\x1b[4m{description}\x1b[0m")) == (
        "Odd '(' in Glob before the end of the SQL"
    )


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


# latency.sql as it was when it folded every request's path (three regexp_replace per row) and
def test_upstreams_p99_is_nearest_rank_on_both_engines() -> None:
    """upstreams.sql ranks durations as latency.sql does, with no approx_percentile for Athena:
    Athena's (a q-digest) takes the smallest value with more than 99% of them at or below it,
    so for a host with 100 or 200 requests the next one up from DuckDB's quantile_disc, and
    the p99 of one host differed between engines and from its `latency --by upstream` p99.
    On DuckDB the answer is quantile_disc's, ties and NULL durations (a request, not a time)
    included, with the 5xx counts and rates of every request."""
    import random

    import duckdb
    import pandas as pd
    import sqlglot

    text = queries.load("upstreams").text
    assert "approx_percentile" not in to_athena(text, COMMON)[0]
    assert sqlglot.parse_one(queries.athena_literal_sql(text, COMMON), read="trino") is not None
    rng = random.Random(6)
    sizes = [1, 2, 3, 99, 100, 101, 200]
    rows = pd.DataFrame(
        [
            {
                "dt": "2026-11-27-23",
                "service": "recipe",
                "timestamp": pd.Timestamp("2026-11-27 23:10:00"),
                "path": "/",
                "method": "GET",
                "upstream_host": f"10.0.0.{size}:80" if size != 3 else None,
                "response_code": rng.choice([200, 200, 503, 0]),
                "duration_ms": None if rng.random() < 0.05 else rng.randrange(1, 60),
            }
            for size in sizes
            for _ in range(size)
        ]
    ).astype({"duration_ms": "Int32"})
    con = duckdb.connect()
    con.register("envoy_access", rows)
    want = con.execute(
        "SELECT coalesce(upstream_host, '-'), count(*), count_if(response_code >= 500),"
        " round(count_if(response_code >= 500) * 100 / count(*), 2),"
        " quantile_disc(duration_ms, 0.99) FROM envoy_access GROUP BY 1"
    ).fetchall()
    sql, bound = to_duckdb(text, {**COMMON, "row_limit": 100})
    got = [r[:5] for r in con.execute(sql, bound).fetchall()]
    assert sorted(got, key=str) == sorted(want, key=str)
    assert len(got) == len(sizes)


# took quantile_disc on DuckDB: the reference the one-scan version must agree with.
_ID_RE = (
    "'/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    "|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)"
)
LATENCY_PER_ROW = f"""
SELECT
  service,
  CASE :group_by
    WHEN 'upstream' THEN coalesce(upstream_host, '-')
    WHEN 'method' THEN method
    WHEN 'path' THEN CASE WHEN :raw_paths THEN path ELSE
      regexp_replace(
        regexp_replace(
          regexp_replace(split_part(path, '?', 1), {_ID_RE}/', '/{{id}}/'),
          {_ID_RE}/', '/{{id}}/'),
        {_ID_RE}$', '/{{id}}')
    END
  END AS "key",
  count(*) AS requests,
  approx_percentile(duration_ms, 0.5) AS p50_ms,
  approx_percentile(duration_ms, 0.9) AS p90_ms,
  approx_percentile(duration_ms, 0.99) AS p99_ms,
  max(duration_ms) AS max_ms,
  count(*) OVER () AS total_rows
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:path_prefix = '' OR starts_with(path, :path_prefix))
  AND (:method = '' OR method = :method)
GROUP BY 1, 2
ORDER BY p99_ms DESC, requests DESC, 1, 2
LIMIT :row_limit
"""


def _many_paths(n: int) -> list[str | None]:
    """``n`` request paths over a few routes: numeric ids, UUIDs, long hex, SKU-like and date
    segments, neighbouring ids, query strings (some with ids and slashes in them), NULLs."""
    import random
    import uuid

    rng = random.Random(7)
    out: list[str | None] = []
    for i in range(n):
        num, hexid = rng.randint(0, 10**7), f"{rng.getrandbits(80):020x}"
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        pick = rng.choice(
            [
                f"/api/v1/orders/{num}",
                f"/api/v1/orders/{num}/items/{rng.randint(1, 99)}",
                f"/api/v1/carts/{uid.upper() if i % 2 else uid}/items",
                f"/static/{hexid}/app.js",
                f"/api/v1/products/SKU-{num}/reviews/2024-05-{rng.randint(10, 28)}",
                f"/api/v1/orders/{num}/{num + 1}/{num + 2}",
                f"/api/v1/search?q=term{num}&page={rng.randint(1, 9)}",
                f"/api/v1/users/{num}?next=/api/v1/users/{num}/",
                "/api/v1/users/me",
                f"/a/{num}/",
                "/",
                f"/v2/h264/oauth2?state={hexid}",
                None,
            ]
        )
        out.append(pick)
    return out


def test_latency_routes_once_per_path_same_answers_as_per_request() -> None:
    """latency.sql reads the table once, folds each distinct path once and ranks durations
    from per-duration counts; on data with many distinct paths (ids, query strings, NULL paths)
    it answers exactly as folding every request and quantile_disc did, for every --by, with
    and without raw_paths, with filters and a LIMIT."""
    import random

    import duckdb
    import pandas as pd

    n = 6000
    rng = random.Random(11)
    paths = _many_paths(n)
    rows = pd.DataFrame(
        {
            "dt": [rng.choice(["2026-11-27-22", "2026-11-27-23"]) for _ in range(n)],
            "service": [rng.choice(["recipe", "cart", "auth"]) for _ in range(n)],
            "timestamp": [
                pd.Timestamp("2026-11-27 22:30:00") + pd.Timedelta(seconds=rng.randint(0, 7200))
                for _ in range(n)
            ],
            "path": paths,
            "method": [rng.choice(["GET", "GET", "POST", "DELETE"]) for _ in range(n)],
            "duration_ms": [rng.randint(0, 3000) for _ in range(n)],
            "upstream_host": [rng.choice(["10.0.0.1:80", "10.0.0.2:80", None]) for _ in range(n)],
        }
    )
    distinct = {p.split("?", 1)[0] for p in paths if p is not None}
    assert len(distinct) > 2000 and any(p is None for p in paths)
    assert sum(1 for p in paths if p and "?" in p) > 500
    con = duckdb.connect()
    con.register("envoy_access", rows)
    base = {**COMMON, "all_services": True, "services": [""], "row_limit": 100000}
    cases = [
        {"group_by": by, "raw_paths": raw}
        for by in ("path", "upstream", "method")
        for raw in (False, True)
    ] + [
        {"group_by": "path", "raw_paths": False, "services": ["cart"], "all_services": False},
        {"group_by": "path", "raw_paths": False, "path_prefix": "/api/v1/orders/"},
        {"group_by": "path", "raw_paths": False, "method": "POST", "row_limit": 7},
    ]
    new_text = queries.load("latency").text
    routed_groups = 0
    for case in cases:
        params = {**base, **case}
        want_sql, want_bound = to_duckdb(LATENCY_PER_ROW, params)
        got_sql, got_bound = to_duckdb(new_text, params)
        want = con.execute(want_sql, want_bound).fetchall()
        got = con.execute(got_sql, got_bound).fetchall()
        assert want, case
        assert got == want, case
        if case["group_by"] == "path" and not case["raw_paths"] and "services" not in case:
            routed_groups = max(routed_groups, len(got))
    # Folding made a few routes of thousands of paths (NULL stays one group per service).
    assert 10 <= routed_groups < 100
    keys = {r[1] for r in got}  # the last case: POST, routed, LIMIT 7
    assert len(got) == 7 and all(k is None or "?" not in k for k in keys)


def test_latency_sql_is_trino_with_each_route_regex_once() -> None:
    """The Athena text parses as Trino and carries each route regex once (in the step over
    distinct paths and durations), with no DuckDB 'g' flag."""
    import sqlglot

    text = queries.athena_literal_sql(queries.load("latency").text, COMMON)
    tree = sqlglot.parse_one(text, read="trino")
    assert tree is not None
    sql, _ = to_athena(queries.load("latency").text, COMMON)
    assert sql.count("regexp_replace(") == 3 and "'g'" not in sql


def test_trace_puts_the_enclosing_hop_first_within_a_millisecond() -> None:
    """Hops of one request starting in the same millisecond: the longer (enclosing) one
    first, whatever order the engine reads them in; a hop without a duration after them."""
    import duckdb
    import pandas as pd

    hops = [  # (service, container, duration): an app's sidecar inbound and outbound hops
        ("recipe", "envoy", 5),
        ("recipe", "envoy", 40),
        ("recipe", "envoy", None),
        ("front", "envoy", 3),
    ]
    params = {**COMMON, "all_services": True, "request_id": "r-1", "row_limit": 10}
    sql, bound = to_duckdb(queries.load("trace").text, params)
    for order in (hops, hops[::-1]):
        rows = pd.DataFrame(
            [
                {
                    "dt": "2026-11-27-23",
                    "service": service,
                    "container_name": container,
                    "timestamp": pd.Timestamp("2026-11-27 23:10:00.123"),
                    "method": "GET",
                    "path": "/",
                    "response_code": 200,
                    "response_flags": "-",
                    "duration_ms": duration,
                    "upstream_service_time_ms": None,
                    "upstream_host": None,
                    "authority": "a",
                    "request_id": "R-1",
                }
                for service, container, duration in order
            ]
        ).astype({"duration_ms": "Int32", "upstream_service_time_ms": "Int32"})
        con = duckdb.connect()
        con.register("envoy_access", rows)
        got = [(r[1], r[7]) for r in con.execute(sql, bound).fetchall()]
        assert got == [("recipe", 40), ("recipe", 5), ("front", 3), ("recipe", None)]
