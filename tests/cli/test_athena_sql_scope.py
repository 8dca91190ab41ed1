"""`logq sql --engine athena` with --service/--since/--until: the rows the tables show are the
local engine's, and Athena reads only the partitions in scope.

The statement is sent to moto's Athena API (which records it, but cannot run SQL); the SQL it
received is then run by the local engine (transpiled to DuckDB as every statement is) over the
same warehouse with no flags at all, and must answer exactly what `logq sql` with the flags
answers locally.
"""

from __future__ import annotations

import pytest

from tests.athena.athena_moto import athena_env, executions, queue_result, set_progression
from tests.cli.conftest import Warehouse

pytestmark = pytest.mark.integration

ATHENA = ["--engine", "athena", "--athena-output", "s3://results/", "--athena-database", "logs"]
#: Inside the fixture's data (22:30 to 01:30), not on hour boundaries: the timestamp bounds
#: matter as much as the dt ones.
RANGE = ["--since", "2026-11-27T23:15:00Z", "--until", "2026-11-28T00:45:00Z"]
FLAGS = ["-s", "recipe,users", *RANGE]
#: The subquery each reference to envoy_access becomes under FLAGS.
SCOPED_ACCESS = (
    "(SELECT * FROM envoy_access WHERE dt BETWEEN '2026-11-27-23' AND '2026-11-28-00' AND "
    "service IN ('recipe', 'users') AND \"timestamp\" >= CAST('2026-11-27 23:15:00.000' AS "
    "timestamp) AND \"timestamp\" < CAST('2026-11-28 00:45:00.000' AS timestamp))"
)

STATEMENTS = {
    "plain": (
        'SELECT service, count(*) AS n, min("timestamp") AS first, max("timestamp") AS last '
        "FROM envoy_access GROUP BY service ORDER BY service"
    ),
    "alias and a correlated subquery on the other table": (
        "SELECT a.service, count(*) AS requests, (SELECT count(*) FROM container_logs WHERE "
        "container_logs.service = a.service) AS lines FROM envoy_access a GROUP BY a.service "
        "ORDER BY 1"
    ),
    "a CTE shadowing the table, database-qualified inside": (
        "WITH envoy_access AS (SELECT service, response_code FROM logs.envoy_access WHERE "
        "response_code >= 500) SELECT service, count(*) AS n FROM envoy_access GROUP BY service "
        "ORDER BY service"
    ),
    "IN subquery, UNION ALL": (
        "SELECT 'access' AS t, count(*) AS n FROM envoy_access WHERE service IN (SELECT service "
        "FROM container_logs WHERE stream = 'stderr') UNION ALL SELECT 'logs', count(*) FROM "
        "container_logs ORDER BY 1"
    ),
}


@pytest.fixture
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    athena_env(monkeypatch, moto_server)
    set_progression(moto_server, None)
    return moto_server


def sent_to_athena(logq, moto: str, statement: str, *flags: str) -> str:
    """Run ``logq sql`` on Athena (moto) and return the SQL Athena received."""
    queue_result(moto, [("n", "bigint")], [])
    before = len(executions(moto))
    run = logq("sql", statement, *flags, "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    sent = executions(moto)
    assert len(sent) == before + 1
    return sent[-1]["Query"]


@pytest.mark.parametrize("statement", STATEMENTS.values(), ids=STATEMENTS.keys())
def test_sql_flags_on_athena_answer_as_locally(
    logq, moto: str, warehouse: Warehouse, statement: str
) -> None:
    """Before: Athena got the statement as typed, the flags only a note that they do nothing
    there (every row of every service and hour, where locally the same command showed those
    of recipe and users in the range)."""
    sent = sent_to_athena(logq, moto, statement, *FLAGS)
    assert SCOPED_ACCESS in sent or SCOPED_ACCESS.replace("FROM envoy", "FROM logs.envoy") in sent
    local = logq("sql", statement, *FLAGS, "-f", "json", "--warehouse", warehouse.uri)
    assert local.exit_code == 0, local.stderr
    as_sent = logq("sql", sent, "-f", "json", "--warehouse", warehouse.uri)  # no flags
    assert as_sent.exit_code == 0, as_sent.stderr
    assert as_sent.json() == local.json()
    unscoped = logq("sql", statement, "-f", "json", "--warehouse", warehouse.uri)
    assert unscoped.json() != local.json()  # the flags do narrow this data


def test_sql_flags_on_athena_exact_text(logq, moto: str) -> None:
    """Only the table reference changes (aliased by its own name: ``envoy_access.service``
    still resolves); the rest reaches Athena as typed, comment and spacing included."""
    statement = "SELECT envoy_access.service  -- who\nFROM envoy_access\nWHERE method = 'GET'"
    sent = sent_to_athena(logq, moto, statement, *FLAGS)
    assert sent == (
        "SELECT envoy_access.service  -- who\n"
        f"FROM {SCOPED_ACCESS} AS envoy_access\nWHERE method = 'GET'"
    )
    only_service = sent_to_athena(logq, moto, "SELECT 1 FROM envoy_access e", "-s", "recipe")
    assert only_service == (
        "SELECT 1 FROM (SELECT * FROM envoy_access WHERE service IN ('recipe')) e"
    )


def test_sql_dry_run_on_athena_shows_the_sql_sent(logq, moto: str) -> None:
    before = len(executions(moto))
    run = logq("sql", "SELECT count(*) FROM envoy_access", *FLAGS, "--dry-run", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert f"SELECT count(*) FROM {SCOPED_ACCESS} AS envoy_access\n" in run.stdout
    assert "-- envoy_access: service IN (recipe, users); dt 2026-11-27-23..2026-11-28-00" in (
        run.stdout
    )
    assert len(executions(moto)) == before
    bad = logq("sql", "SELEC x FROM envoy_access", *FLAGS, "--dry-run", *ATHENA)
    assert bad.exit_code == 2 and "--service/--since/--until need a statement" in bad.stderr


def test_sql_without_flags_is_sent_as_typed_with_a_note(logq, moto: str) -> None:
    """No flag: the statement as typed. Without a dt condition Athena enumerates every hour
    since the projection starts (times every service): a note says so and how to narrow."""
    statement = "SELECT count(*) AS n FROM envoy_access"
    queue_result(moto, [("n", "bigint")], [[1]])
    run = logq("sql", statement, "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert executions(moto)[-1]["Query"] == statement
    assert "no condition on dt and no --since" in run.stderr
    assert "every hour partition since 2020-01-01-00 of every service" in run.stderr
    assert "--since 1d" in run.stderr and "WHERE dt >= '" in run.stderr
    for quiet in (
        "SELECT count(*) AS n FROM envoy_access WHERE dt >= '2026-11-28-00'",
        "DESCRIBE envoy_access",
    ):
        queue_result(moto, [("n", "bigint")], [[1]])
        run = logq("sql", quiet, "-f", "json", *ATHENA)
        assert run.exit_code == 0, run.stderr
        assert "no condition on dt" not in run.stderr
    with_since = sent_to_athena(logq, moto, statement, "--since", "1h")
    assert "dt BETWEEN" in with_since


def test_sql_max_scan_bytes_on_athena_counts_the_scope(
    logq, moto: str, warehouse: Warehouse
) -> None:
    """Before: never checked before the statement started. The scoped statement reads only the
    partitions of the flags: their bytes bound the scan, so a budget between them and the
    whole table lets it run, and one below them refuses it before it starts."""
    from athena.partitions import plan
    from athena.timerange import TimeRange
    from athena.warehouse import open_warehouse

    wh = open_warehouse(warehouse.uri)
    trange = TimeRange.parse(RANGE[1], RANGE[3], open_start=True)
    scoped = sum(p.bytes for p in plan(wh, "envoy_access", ["recipe", "users"], trange))
    whole = sum(p.bytes for p in plan(wh, "envoy_access", None, None))
    assert 0 < scoped < whole
    statement = "SELECT count(*) AS n FROM envoy_access"
    budget = ["--max-scan-bytes", str(scoped - 1), "--warehouse", warehouse.uri]
    before = len(executions(moto))
    run = logq("sql", statement, *FLAGS, *budget, *ATHENA)
    assert run.exit_code == 2 and "over --max-scan-bytes" in run.stderr, run.stderr
    assert "not started" in run.stderr and len(executions(moto)) == before
    no_flags = logq("sql", statement, "--max-scan-bytes", str(whole - 1), "--warehouse",
                    warehouse.uri, *ATHENA)  # fmt: skip
    assert no_flags.exit_code == 2 and "of every hour" in no_flags.stderr
    assert len(executions(moto)) == before
    sent_to_athena(logq, moto, statement, *FLAGS, "--max-scan-bytes", str(scoped), "--warehouse",
                   warehouse.uri)  # fmt: skip
