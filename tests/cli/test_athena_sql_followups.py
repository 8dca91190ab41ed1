"""`logq sql --engine athena` with --service/--since/--until (moto): the service enum checked
as the canned commands check it, Athena's hidden columns kept, and statements logq cannot
scope refused (reviewer R1's findings)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.athena.athena_moto import executions, queue_result
from tests.cli.conftest import Warehouse
from tests.cli.test_athena_enum import _athena, database, lookups, moto  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

RANGE = ["--since", "2026-11-27T23:15:00Z", "--until", "2026-11-28T00:45:00Z"]


def test_sql_names_a_service_outside_the_enum_and_exits_3(
    logq: Callable,
    moto: str,  # noqa: F811
    database: str,  # noqa: F811
    lookups: list[str],  # noqa: F811
) -> None:
    """Before: `[]`, exit 0, not a word (Athena reads no partition of a service its enum
    lacks). Now the canned commands' note, and exit 3 for an empty answer to a question
    that had none."""
    queue_result(moto, [("path", "varchar")], [])
    statement = "SELECT path FROM envoy_access"
    run = logq("sql", statement, "-s", "newsvc", *RANGE, "-f", "json", *_athena(database))
    assert run.exit_code == 3, (run.stdout, run.stderr)
    assert run.json() == []
    assert (
        f"'newsvc' is not in the service list (projection.service.values) of the Athena "
        f"table {database}.envoy_access" in run.stderr
    )
    assert "logq: no results: Athena reads no partition of 'newsvc'" in run.stderr
    assert lookups == ["envoy_access"]
    # One name in the list: the answer stands (exit 0), the other name is noted.
    queue_result(moto, [("path", "varchar")], [["/api"]])
    run = logq("sql", statement, "-s", "recipe,newsvc", *RANGE, "-f", "json", *_athena(database))
    assert run.exit_code == 0 and run.json() == [{"path": "/api"}], run.stderr
    assert "'newsvc' is not in the service list" in run.stderr
    assert "showing recipe only" in run.stderr and "no results" not in run.stderr
    # A row (a count of 0) is an answer: noted, exit 0.
    queue_result(moto, [("n", "bigint")], [[0]])
    count = "SELECT count(*) AS n FROM envoy_access"
    run = logq("sql", count, "-s", "newsvc", *RANGE, "-f", "json", *_athena(database))
    assert run.exit_code == 0 and "'newsvc' is not in the service list" in run.stderr


def test_sql_enum_is_looked_up_per_table_read(
    logq: Callable,
    moto: str,  # noqa: F811
    database: str,  # noqa: F811
    lookups: list[str],  # noqa: F811
) -> None:
    """Each table the statement reads is looked up (once); container_logs has no table in
    this Glue database, so its list is unknown and the empty answer is not called "no answer"
    (exit 0), while envoy_access's note stands."""
    queue_result(moto, [("n", "bigint")], [])
    statement = (
        "SELECT a.path FROM envoy_access a JOIN container_logs c ON c.container_id = "
        "a.container_id JOIN envoy_access b ON b.request_id = a.request_id"
    )
    run = logq("sql", statement, "-s", "newsvc", *RANGE, "-f", "json", *_athena(database))
    assert run.exit_code == 0, run.stderr
    assert sorted(lookups) == ["container_logs", "envoy_access"]
    assert f"{database}.envoy_access" in run.stderr and "no results" not in run.stderr
    dry = logq("sql", statement, "-s", "newsvc", *RANGE, "--dry-run", *_athena(database))
    assert dry.exit_code == 0 and len(lookups) == 2  # --dry-run asks Glue nothing


def test_sql_hidden_columns_reach_athena_and_are_refused_locally(
    logq: Callable,
    moto: str,  # noqa: F811
    database: str,  # noqa: F811
    warehouse: Warehouse,
) -> None:
    """Before: `(SELECT * FROM envoy_access WHERE ...)` left "$path" out (Trino's `*` has no
    hidden column): COLUMN_NOT_FOUND on Athena with any flag."""
    statement = 'SELECT "$path" AS file, count(*) AS n FROM envoy_access GROUP BY 1'
    queue_result(moto, [("file", "varchar"), ("n", "bigint")], [["s3://b/x.parquet", 3]])
    run = logq("sql", statement, "-s", "recipe", *RANGE, "-f", "json", *_athena(database))
    assert run.exit_code == 0, run.stderr
    sent = executions(moto)[-1]["Query"]
    assert sent.startswith(
        'SELECT "$path" AS file, count(*) AS n FROM (SELECT *, "$path" FROM envoy_access '
        "WHERE dt BETWEEN '2026-11-27-23' AND '2026-11-28-00' AND service IN ('recipe')"
    ), sent
    local = logq("sql", statement, "-s", "recipe", "--warehouse", warehouse.uri)
    assert local.exit_code == 2 and local.stdout == ""
    assert '"$path" is a hidden column of the Athena tables' in local.stderr
    assert "--engine athena" in local.stderr


@pytest.mark.parametrize(
    "statement",
    ["PREPARE p FROM SELECT count(*) FROM envoy_access",
     "SHOW STATS FOR (SELECT * FROM envoy_access WHERE method = 'GET')"],
)  # fmt: skip
def test_sql_statements_logq_cannot_scope_are_refused(
    logq: Callable,
    moto: str,  # noqa: F811
    database: str,  # noqa: F811
    statement: str,
) -> None:
    """Before: sent unscoped, no note (sqlglot parses them as an opaque Command)."""
    before = len(executions(moto))
    run = logq("sql", statement, "-s", "recipe", *RANGE, *_athena(database))
    assert run.exit_code == 2, (run.stdout, run.stderr)
    assert "--service/--since/--until apply to queries" in run.stderr
    assert "put the conditions on dt, service and timestamp in the statement" in run.stderr
    assert len(executions(moto)) == before


def test_sql_locally_with_no_known_service_exits_3_as_on_athena(
    logq: Callable, warehouse: Warehouse
) -> None:
    """The same question on the local engine: before, `[]` and exit 0 (the help promises 3
    when there is nothing to ask, and Athena now says 3)."""
    statement = "SELECT path FROM envoy_access"
    run = logq("sql", statement, "-s", "recipee", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 3 and run.json() == [], run.stderr
    assert "logq: no results: no data of 'recipee' in envoy_access" in run.stderr
    assert "did you mean 'recipe'?" in run.stderr
    known = logq("sql", statement + " WHERE false", "-s", "recipe,recipee", "-f", "json",
                 "--warehouse", warehouse.uri)  # fmt: skip
    assert known.exit_code == 0 and known.json() == [], known.stderr
