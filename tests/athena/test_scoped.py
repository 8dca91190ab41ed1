"""Ad-hoc statements scoped by --service/--since/--until for Athena (athena/scoped.py)."""

from __future__ import annotations

import pytest
import sqlglot

from athena.queries import QueryError, tables_of
from athena.scoped import Scope, scope_statement
from athena.timerange import TimeRange

ONLY_RECIPE = Scope(["recipe"], None)
WHERE = "WHERE service IN ('recipe')"


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (  # quoted, any case: Trino folds it; the alias keeps the quoted name
            'SELECT "Envoy_Access".path FROM "Envoy_Access"',
            f'SELECT "Envoy_Access".path FROM (SELECT * FROM "Envoy_Access" {WHERE}) '
            'AS "Envoy_Access"',
        ),
        (  # catalog and database kept inside; a column qualified with them loses them
            "SELECT logs.envoy_access.path FROM awsdatacatalog.logs.envoy_access",
            "SELECT envoy_access.path FROM (SELECT * FROM awsdatacatalog.logs.envoy_access "
            f"{WHERE}) AS envoy_access",
        ),
        (  # an alias with column names, then TABLESAMPLE: both stay after the subquery
            "SELECT a FROM container_logs AS c (a, b, c, d, e, f, g, h, i) TABLESAMPLE "
            "BERNOULLI (10)",
            f"SELECT a FROM (SELECT * FROM container_logs {WHERE}) AS c (a, b, c, d, e, f, g, "
            "h, i) TABLESAMPLE BERNOULLI (10)",
        ),
        (  # a recursive CTE and another table are not ours; the table after them is
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT * FROM r, other.services_seen, envoy_access",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT * FROM r, other.services_seen, (SELECT * FROM envoy_access "
            f"{WHERE}) AS envoy_access",
        ),
        ("DESCRIBE envoy_access", "DESCRIBE envoy_access"),  # no rows read: nothing to scope
    ],
)
def test_only_warehouse_table_references_change(statement: str, expected: str) -> None:
    scoped = scope_statement(statement, ONLY_RECIPE)
    assert scoped.sql == expected
    sqlglot.parse_one(scoped.sql, read="trino")  # still one statement Trino's grammar takes


def test_cte_shadowing_the_table() -> None:
    """Inside its own definition a CTE's name is still the table (not recursive); after it,
    the name is the CTE, which reads the scoped table already."""
    statement = (
        "WITH envoy_access AS (SELECT * FROM envoy_access WHERE x = 1) "
        "SELECT * FROM envoy_access e WHERE e.path IN (SELECT path FROM envoy_access)"
    )
    scoped = scope_statement(statement, ONLY_RECIPE)
    assert scoped.sql == (
        f"WITH envoy_access AS (SELECT * FROM (SELECT * FROM envoy_access {WHERE}) AS "
        "envoy_access WHERE x = 1) SELECT * FROM envoy_access e WHERE e.path IN "
        "(SELECT path FROM envoy_access)"
    )
    assert scoped.tables == {"envoy_access"}
    assert tables_of(statement) == {"envoy_access"}  # before: {} (the local view was missing)


def test_time_range_condition_and_dt_detection() -> None:
    rows = TimeRange.parse("2026-11-28T00:00:00.5Z", "2026-11-28T01:00:00Z")
    scoped = scope_statement("SELECT 1 FROM container_logs", Scope(None, rows))
    assert scoped.sql == (
        "SELECT 1 FROM (SELECT * FROM container_logs WHERE dt BETWEEN '2026-11-28-00' AND "
        "'2026-11-28-00' AND \"timestamp\" >= CAST('2026-11-28 00:00:00.500' AS timestamp) "
        "AND \"timestamp\" < CAST('2026-11-28 01:00:00.000' AS timestamp)) AS container_logs"
    )
    assert not scoped.dt_condition
    # --dry-run's words print the times as logq prints them everywhere (was +00:00 isoformat).
    assert Scope(["recipe"], rows).describe() == (
        "service IN (recipe); dt 2026-11-28-00..2026-11-28-00, rows with "
        "2026-11-28T00:00:00.500Z <= timestamp < 2026-11-28T01:00:00.000Z"
    )
    for typed in (
        "SELECT 1 FROM envoy_access WHERE dt >= '2026-11-28-00'",
        "SELECT 1 FROM envoy_access a JOIN container_logs c ON c.dt = a.dt AND a.dt > 'x'",
    ):
        assert scope_statement(typed, Scope(None, None)).dt_condition


def test_without_flags_nothing_changes_and_bad_sql_is_left_to_athena() -> None:
    for statement in ("SELECT  count(*) FROM envoy_access -- as typed", "SELEC x FROM y"):
        assert scope_statement(statement, Scope(None, None)).sql == statement
    with pytest.raises(QueryError, match="need a statement logq can parse"):
        scope_statement("SELEC x FROM envoy_access", ONLY_RECIPE)
    with pytest.raises(QueryError, match="one SQL statement"):
        scope_statement("SELECT 1 FROM envoy_access; SELECT 2", ONLY_RECIPE)


@pytest.mark.parametrize(
    "statement",
    ["CREATE TABLE x AS SELECT * FROM envoy_access",
     "INSERT INTO envoy_access SELECT * FROM container_logs"],
)  # fmt: skip
def test_flags_on_a_statement_that_is_no_query_are_refused(statement: str) -> None:
    """An INSERT's target is written, not read: wrapping it would break the statement, and
    leaving the flags out would answer another question. As typed without the flags."""
    with pytest.raises(QueryError, match="apply to queries"):
        scope_statement(statement, ONLY_RECIPE)
    assert scope_statement(statement, Scope(None, None)).sql == statement


def test_hidden_columns_the_statement_names_reach_it() -> None:
    """Trino leaves hidden columns out of ``*``: before, ``SELECT *`` in the subquery hid
    "$path" from the statement (COLUMN_NOT_FOUND on Athena with any flag)."""
    statement = 'SELECT "$path", e."$FILE_SIZE", count(*) FROM envoy_access e GROUP BY 1, 2'
    scoped = scope_statement(statement, ONLY_RECIPE)
    assert scoped.sql == (
        'SELECT "$path", e."$FILE_SIZE", count(*) FROM (SELECT *, "$path", "$file_size" FROM '
        f"envoy_access {WHERE}) e GROUP BY 1, 2"
    )
    plain = scope_statement("SELECT path FROM envoy_access", ONLY_RECIPE).sql
    assert plain.startswith(f"SELECT path FROM (SELECT * FROM envoy_access {WHERE})")


@pytest.mark.parametrize(
    "statement",
    ["PREPARE p FROM SELECT count(*) FROM envoy_access",
     "SHOW STATS FOR (SELECT * FROM envoy_access WHERE method = 'GET')",
     'SHOW STATS FOR "Container_Logs"',
     "EXPLAIN (TYPE IO) SELECT * FROM logs.envoy_access",
     "DROP TABLE envoy_access"],
)  # fmt: skip
def test_commands_naming_a_table_are_refused_with_flags(statement: str) -> None:
    """sqlglot parses these as an opaque Command (no tables, no query inside): before, they
    went to Athena unscoped, the flags ignored without a word."""
    with pytest.raises(QueryError, match=r"apply to queries .* put the conditions"):
        scope_statement(statement, ONLY_RECIPE)
    assert scope_statement(statement, Scope(None, None)).sql == statement


@pytest.mark.parametrize(
    "statement",
    ["SHOW TABLES", "EXECUTE p", "PREPARE p FROM SELECT 'envoy_access' -- envoy_access"],
)  # fmt: skip
def test_commands_naming_no_table_pass(statement: str) -> None:
    """A table name in a string or a comment is not a table."""
    assert scope_statement(statement, ONLY_RECIPE).sql == statement
