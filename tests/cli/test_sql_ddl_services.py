"""`logq sql`, `logq ddl`, `logq services`, relative time ranges and the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.athena.factory import access_frame, write_frame
from tests.cli.conftest import END, SERVICES, START, Warehouse

LOGQ = Path(sys.executable).with_name("logq")


def test_sql_json_rows_with_iso_timestamps(logq, warehouse: Warehouse) -> None:
    run = logq(
        "sql",
        "SELECT request_id, \"timestamp\", response_code, service, dt FROM envoy_access "
        "WHERE service = 'billing' AND dt = '2026-11-28-01' ORDER BY request_id",
        "--format", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    df = warehouse.access
    want = df[(df["service"] == "billing") & (df["timestamp"] >= pd.Timestamp("2026-11-28T01:00Z"))]
    want = want.sort_values("request_id")
    assert [r["request_id"] for r in rows] == list(want["request_id"])
    assert [r["timestamp"] for r in rows] == [
        t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
        for t in want["timestamp"]
    ]
    assert {r["dt"] for r in rows} == {"2026-11-28-01"}
    assert all(isinstance(r["response_code"], int) for r in rows)


def test_sql_aggregate_over_both_tables(logq, warehouse: Warehouse) -> None:
    run = logq(
        "sql",
        "SELECT (SELECT count(*) FROM envoy_access) AS a, "
        "(SELECT count(*) FROM container_logs) AS l",
        "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.json() == [{"a": len(warehouse.access), "l": len(warehouse.logs)}]


def test_sql_names_unnamed_columns_as_athena(logq, warehouse: Warehouse) -> None:
    """Athena (Trino's LogicalPlanner) names a column with no name ``_col`` and its position;
    DuckDB named them after the expression (``count_star()``, ``max("timestamp")``). A bare
    column keeps its name and an alias wins; a UNION takes its first query's names."""
    run = logq(
        "sql",
        'SELECT service, count(*), max("timestamp"), count(*) AS n, upper(service) '
        "FROM envoy_access GROUP BY service ORDER BY 2 DESC LIMIT 1",
        "-f", "csv", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[0] == "service,_col1,_col2,n,_col4"
    union = logq("sql", "SELECT 1, 2 AS b UNION ALL SELECT 3, 4", "-f", "json",
                 "--warehouse", warehouse.uri)  # fmt: skip
    rows = sorted(union.json(), key=lambda r: r["b"])
    assert rows == [{"_col0": 1, "b": 2}, {"_col0": 3, "b": 4}]


def test_sql_table_titles_are_the_names_the_statement_gave(logq, warehouse: Warehouse) -> None:
    """The table showed ``a_b`` as ``a b`` and ``_col1`` as `` col1`` (titles made for the
    canned answers' columns, ``p99_ms`` -> ``p99 ms``): names no column of the statement has.
    The canned answers keep theirs."""
    run = logq("sql", "SELECT 1 AS a_b, 2, 3 AS p99_ms", "-f", "table",
               "--warehouse", warehouse.uri)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    titles = run.stdout.splitlines()[1].strip("│┃ ").split()
    assert [t.strip("│┃") for t in titles if t.strip("│┃")] == ["a_b", "_col1", "p99_ms"]
    latency = logq("latency", "--since", START.isoformat(), "--until", END.isoformat(),
                   "-f", "table", "--warehouse", warehouse.uri)  # fmt: skip
    assert latency.exit_code == 0, latency.stderr
    assert "p99 ms" in latency.stdout and "p99_ms" not in latency.stdout


def test_sql_names_columns_after_a_star_by_their_position(logq, warehouse: Warehouse) -> None:
    """Trino counts every column, a ``*``'s too: an unnamed one after ``*`` is ``_col`` and
    its position in the result, and a subquery's unnamed column read through ``*`` has no
    name either (DuckDB said ``count_star()`` for both)."""
    wh = ["-f", "json", "--warehouse", warehouse.uri]
    star = logq("sql", "SELECT *, count(*) OVER () FROM container_logs LIMIT 1", *wh)
    assert star.exit_code == 0, star.stderr
    names = list(star.json()[0])
    assert names[-1] == f"_col{len(names) - 1}" and len(names) > 5
    derived = logq(
        "sql",
        "WITH c AS (SELECT count(*), 7 AS seven, max(service) FROM envoy_access) "
        "SELECT 1, * FROM c, (SELECT min(service) FROM envoy_access)",
        *wh,
    )
    assert derived.exit_code == 0, derived.stderr
    assert list(derived.json()[0]) == ["_col0", "_col1", "seven", "_col3", "_col4"]


def test_sql_never_renames_a_name_the_user_wrote(logq, warehouse: Warehouse) -> None:
    """The local engine marks the columns Athena names by position with ``_col?``; an alias
    the user wrote that way (or as DuckDB's repeat of it, ``_col?_1``) is theirs and stays,
    while the unnamed columns around it still get ``_col`` and their position."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    plain = logq("sql", 'SELECT 1 AS "_col?", 2, 3 AS "_col?_1"', *wh)
    assert plain.exit_code == 0, plain.stderr
    assert plain.stdout.splitlines()[0] == "_col?,_col1,_col?_1"
    star = logq("sql", 'SELECT *, 1 AS "_COL?", 3 FROM (SELECT 5 AS a, 6)', *wh)
    assert star.exit_code == 0, star.stderr
    assert star.stdout.splitlines()[0] == "a,_col1,_COL?,_col3"


def test_sql_names_columns_made_unique_twice_by_position(logq, warehouse: Warehouse) -> None:
    """A ``*`` over a subquery whose own ``*`` read two unnamed lists: DuckDB makes the
    repeated marker unique at each level (``_col?_1_1``), which came out as a column name."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    for sql in [
        "SELECT * FROM (SELECT * FROM (SELECT 1, 2) a, (SELECT 3, 4) b)",
        "SELECT * FROM (SELECT * FROM (VALUES (1, 2)) a, (VALUES (3, 4)) b)",
        "WITH w AS (SELECT * FROM (VALUES (1, 2)) a, (VALUES (3, 4)) b) SELECT * FROM w",
    ]:
        run = logq("sql", sql, *wh)
        assert run.exit_code == 0, run.stderr
        assert run.stdout.splitlines() == ["_col0,_col1,_col2,_col3", "1,2,3,4"], sql


def test_sql_names_values_columns_as_athena(logq, warehouse: Warehouse) -> None:
    """A VALUES list read through ``*`` has no column names on Trino (``_col0``, ``_col1``);
    DuckDB said ``col0``, ``col1``. Names the user gave stay."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    bare = logq("sql", "SELECT * FROM (VALUES (1, 2)) CROSS JOIN (VALUES 3) AS t", *wh)
    assert bare.exit_code == 0, bare.stderr
    assert bare.stdout.splitlines() == ["_col0,_col1,_col2", "1,2,3"]
    named = logq("sql", "SELECT * FROM (VALUES (1, 2)) AS t(a, b)", *wh)
    assert named.stdout.splitlines() == ["a,b", "1,2"]


def test_sql_names_lateral_values_columns_as_athena(logq, warehouse: Warehouse) -> None:
    """``LATERAL (VALUES ...) AS t`` follows the rule of a plain VALUES list: ``t.*`` and
    ``*`` give ``_col`` and the result position, where DuckDB said ``col0``; names given stay."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    s = "(SELECT 1 AS x) s"
    for sql, want in [
        (f"SELECT t.* FROM {s}, LATERAL (VALUES (1, 2)) AS t", ["_col0,_col1", "1,2"]),
        (f"SELECT * FROM {s} CROSS JOIN LATERAL (VALUES (1, 2)) AS t", ["x,_col1,_col2", "1,1,2"]),
        (f"SELECT * FROM {s} CROSS JOIN LATERAL (VALUES (1, 2))", ["x,_col1,_col2", "1,1,2"]),
        (f"SELECT * FROM {s}, LATERAL (VALUES (1, 2)) AS t(a, b)", ["x,a,b", "1,1,2"]),
    ]:
        run = logq("sql", sql, *wh)
        assert run.exit_code == 0, run.stderr
        assert run.stdout.splitlines() == want, sql


def test_sql_error_on_an_unnamed_column_says_it_has_no_name(logq, warehouse: Warehouse) -> None:
    """DuckDB's candidates were the local engine's markers (``"_col?_0"``), names no one can
    write; the message calls them unnamed and says how to name them."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    for sql in ["SELECT col0 FROM (VALUES (1, 2))", "SELECT x FROM (SELECT 1)"]:
        run = logq("sql", sql, *wh)
        assert run.exit_code != 0 and run.stdout == "", (sql, run.stdout)
        assert "_col?" not in run.stderr and "(no name)" in run.stderr, run.stderr
        assert "(VALUES (1, 2)) AS t(a, b)" in run.stderr, run.stderr


def test_sql_names_the_columns_of_a_bare_values_statement_as_athena(
    logq, warehouse: Warehouse
) -> None:
    """``logq sql "VALUES ..."`` (a statement it takes) is named as Athena names it, ``_col0``,
    ``_col1``, as the same list read through ``SELECT *`` is; its ORDER BY and LIMIT apply."""
    wh = ["-f", "csv", "--warehouse", warehouse.uri]
    bare = logq("sql", "VALUES (1, 'a'), (2, 'b')", *wh)
    assert bare.exit_code == 0, bare.stderr
    assert bare.stdout.splitlines() == ["_col0,_col1", "1,a", "2,b"]
    ordered = logq("sql", "VALUES 1, 3, 2 ORDER BY 1 DESC LIMIT 2", *wh)
    assert ordered.stdout.splitlines() == ["_col0", "3", "2"]
    union = logq("sql", "VALUES 1 UNION ALL SELECT 2", *wh)
    assert union.stdout.splitlines() == ["_col0", "1", "2"]


def test_sql_names_row_fields_as_athena(logq, warehouse: Warehouse) -> None:
    """Athena shows a ROW's fields as ``field0``, ``field1`` (``{field0=1, field1=a}``);
    DuckDB's struct said ``_0``, ``_1``. A cast to a ROW type keeps the names it gives."""
    run = logq(
        "sql",
        "SELECT ROW(1, 'a', ROW(2)), CAST(ROW(1, 2) AS ROW(x integer, y integer)), "
        "ARRAY[ROW(3)]",
        "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.json() == [
        {
            "_col0": {"field0": 1, "field1": "a", "field2": {"field0": 2}},
            "_col1": {"x": 1, "y": 2},
            "_col2": [{"field0": 3}],
        }
    ]


def test_sql_rows_inside_a_cast_keep_casting_by_position(logq, warehouse: Warehouse) -> None:
    """A ROW nested in a cast's operand (in another ROW, an ARRAY, a MAP, a CASE; TRY_CAST
    too) is cast by position as on Trino: naming its fields field0, field1 made DuckDB refuse
    the cast ("STRUCT to STRUCT cast must have at least one matching member")."""
    run = logq(
        "sql",
        "SELECT CAST(ROW(1, ROW(2, 3)) AS ROW(a integer, b ROW(c integer, d integer))) AS n, "
        "CAST(ARRAY[ROW(1, 2)] AS ARRAY(ROW(a integer, b integer))) AS arr, "
        "CAST(map(ARRAY['k'], ARRAY[ROW(1, 2)]) AS MAP(varchar, ROW(a integer, b integer))) AS m, "
        "CAST(CASE WHEN true THEN ROW(1, 2) END AS ROW(a integer, b integer)) AS c, "
        "TRY_CAST(ROW(1, ROW(2, 3)) AS ROW(a integer, b ROW(c integer, d integer))) AS t, "
        "ROW(4, ROW(5)) AS plain",
        "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.json() == [
        {
            "n": {"a": 1, "b": {"c": 2, "d": 3}},
            "arr": [{"a": 1, "b": 2}],
            "m": {"k": {"a": 1, "b": 2}},
            "c": {"a": 1, "b": 2},
            "t": {"a": 1, "b": {"c": 2, "d": 3}},
            "plain": {"field0": 4, "field1": {"field0": 5}},
        }
    ]


def test_sql_since_restricts_partitions(logq, warehouse: Warehouse) -> None:
    run = logq(
        "sql", "SELECT count(*) AS n FROM envoy_access", "-s", "recipe", "--since",
        "2026-11-28T00:00:00Z", "--until", "2026-11-28T01:00:00Z", "-f", "json",
        "--warehouse", warehouse.uri,
    )  # fmt: skip
    df = warehouse.access
    hour = df[
        (df["service"] == "recipe")
        & (df["timestamp"].dt.strftime("%Y-%m-%d-%H") == "2026-11-28-00")
    ]
    assert run.json() == [{"n": len(hour)}]


def test_sql_since_until_restrict_rows_not_just_hours(logq, warehouse: Warehouse) -> None:
    """`--since 15m` means the last 15 minutes: the tables show rows by their timestamp, in
    both tables, though partitions are whole hours."""
    since, until = "2026-11-27T23:20:00Z", "2026-11-28T00:40:00Z"
    run = logq(
        "sql",
        "SELECT (SELECT count(*) FROM envoy_access) AS a, (SELECT count(*) FROM container_logs) "
        "AS l, (SELECT min(\"timestamp\") FROM envoy_access) AS first",
        "--since", since, "--until", until, "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr

    def inside(df: pd.DataFrame) -> pd.DataFrame:
        return df[
            (df["timestamp"] >= pd.Timestamp(since)) & (df["timestamp"] < pd.Timestamp(until))
        ]

    access, logs = inside(warehouse.access), inside(warehouse.logs)
    assert 0 < len(access) < len(warehouse.access)
    [row] = run.json()
    assert (row["a"], row["l"]) == (len(access), len(logs))
    assert row["first"] >= since.replace("Z", ".000Z")
    dry = logq("sql", "SELECT 1 FROM envoy_access", "--since", since, "--until", until,
               "--dry-run", "--warehouse", warehouse.uri)  # fmt: skip
    # Times as logq prints them everywhere else (was 2026-11-27T23:20:00+00:00).
    assert "-- rows with 2026-11-27T23:20:00.000Z <= timestamp < 2026-11-28T00:40:00.000Z" in (
        dry.stdout
    )


@pytest.mark.parametrize(
    ("statement", "hint"),
    [
        ("SELECT log FROM container_logs", "`log` is a column of the Fluent Bit / Fluentd"),
        ("SELECT c.log FROM container_logs c", "here it is `message` in container_logs"),
        ("SELECT kubernetes.pod_name FROM container_logs", "split_part(container_name, '/', 1)"),
        ("SELECT count(*) FROM envoy_access WHERE year = '2026'", "`dt`, the UTC hour"),
        ("SELECT count(*) FROM envoy_access WHERE partition_0 = 'x'", "`dt`, the UTC hour"),
        ("SELECT time FROM container_logs", "here it is `timestamp`"),
    ],
)
def test_a_query_of_the_old_fluent_tables_says_where_its_column_went(
    logq, warehouse: Warehouse, statement: str, hint: str
) -> None:
    """A query written for a hand-written Fluent Bit / Fluentd table: DuckDB's own message
    offered the look-alike ``host`` for ``log``."""
    run = logq("sql", statement, "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stderr
    assert hint in run.stderr
    assert "Coming from Fluent Bit / Fluentd" in run.stderr


def test_athenas_message_of_an_old_tables_column_gets_the_hint_too() -> None:
    from athena.engines.athena import AthenaEngine
    from athena.moved_columns import moved_hint

    reason = "COLUMN_NOT_FOUND: line 1:8: Column 'kubernetes.namespace_name' cannot be resolved"
    engine = AthenaEngine(output="s3://results/logq/", region="us-east-1")
    assert "split_part(container_name, '/', 1)" in engine.next_step(reason)
    assert "`stream`" in moved_hint(
        "COLUMN_NOT_FOUND: line 1:8: Column 'source' cannot be resolved"
    )
    assert moved_hint("COLUMN_NOT_FOUND: line 1:8: Column 'nope' cannot be resolved") == ""


def test_sql_errors_are_clear(logq, warehouse: Warehouse) -> None:
    run = logq("sql", "SELECT nope FROM envoy_access", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "DuckDB could not run the query" in run.stderr
    run = logq("sql", "SELEKT 1 FROM", "--warehouse", warehouse.uri)
    assert run.exit_code != 0 and "logq: error" in run.stderr
    run = logq("sql", "SELEC x FROM envoy_access", "--warehouse", warehouse.uri)
    assert "cannot parse the SQL" in run.stderr and "SELEC x FROM envoy_access" in run.stderr
    # An unclosed quote or comment fails in sqlglot's tokenizer, not its parser.
    for sql in ("SELECT x FROM envoy_access WHERE path = '/a", 'SELECT "a', "SELECT 1 /* x"):
        run = logq("sql", sql, "--warehouse", warehouse.uri)
        assert run.exit_code == 2 and "cannot parse the SQL" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert "\x1b[" not in run.stderr  # no terminal colour codes in the message


def test_sql_parse_errors_name_no_sqlglot_internals(logq, warehouse: Warehouse) -> None:
    """A trailing WHERE read ``Required keyword: 'this' missing for <class
    'sqlglot.expressions.query.Where'>``, a trailing FROM ``Expected table name but got <Token
    token_type: TokenType.SENTINEL, ...>``: now the reason and where, still exit 2."""
    from tests.cli.test_sql_sandbox import one_line_error

    for sql, reason in [
        ("SELECT * FROM envoy_access WHERE", "ends early after WHERE: a condition is missing"),
        ("SELECT * FROM", "the SQL ends early after FROM: a table name is missing"),
        ("SELECT a FROM b WHERE x = = 1", "a value is missing before '='; line 1, column 27"),
    ]:
        run = logq("sql", "-f", "csv", "--warehouse", warehouse.uri, "--", sql)
        line = one_line_error(run.stderr)
        assert run.exit_code == 2 and reason in line and line.endswith(sql), line
        assert not any(w in line for w in ("<class", "<Token", "sqlglot", "SENTINEL")), line


def test_ddl_prints_both_tables(logq, warehouse: Warehouse) -> None:
    run = logq("ddl", "--warehouse", "s3://bucket/wh", "-s", "recipe", "-s", "users")
    assert run.exit_code == 0
    assert run.stdout.count("CREATE EXTERNAL TABLE") == 2
    # In the database the query commands use, whatever the Athena console has selected.
    assert run.stdout.startswith("CREATE DATABASE IF NOT EXISTS `logq`;")
    assert "`logq`.`envoy_access`" in run.stdout and "`logq`.`container_logs`" in run.stdout
    assert "'s3://bucket/wh/envoy_access/'" in run.stdout
    assert "'projection.service.values' = 'recipe,users'" in run.stdout
    # Applied again, CREATE ... IF NOT EXISTS does nothing: the ALTERs update the service list.
    for name in ("envoy_access", "container_logs"):
        assert (
            f"ALTER TABLE `logq`.`{name}` SET TBLPROPERTIES "
            "('projection.service.values' = 'recipe,users');" in run.stdout
        )
    local = logq("ddl", "--warehouse", warehouse.uri)
    assert "'projection.service.values' = 'billing,recipe,users'" in local.stdout
    assert "is a local folder and Athena reads only S3" in local.stderr


def test_ddl_of_a_local_warehouse_says_the_commands_that_give_a_usable_one(
    logq, warehouse: Warehouse
) -> None:
    """A local warehouse's DDL has a LOCATION Athena cannot read (the folder). The note said
    "pass --warehouse s3://bucket/prefix" only; it now gives the copy to make and the exact
    command for its DDL, the options given carried over, and that command prints a LOCATION
    in S3 with the same service list (it lists nothing: the services are given)."""
    import re
    import shlex

    run = logq("ddl", "--warehouse", warehouse.uri, "-s", "recipe,users",
               "--athena-database", "my db")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert f"'{warehouse.uri}/envoy_access/'" in run.stdout
    assert f"(aws s3 sync {shlex.quote(warehouse.uri)} s3://BUCKET/PREFIX)" in run.stderr
    [command] = re.findall(r"`(logq ddl [^`]*)`", run.stderr)
    args = shlex.split(command)[1:]
    assert args == ["ddl", "--warehouse", "s3://BUCKET/PREFIX", "--athena-database", "my db",
                    "--service", "recipe,users"]  # fmt: skip
    again = logq(*args)
    assert again.exit_code == 0, again.stderr
    assert "LOCATION 's3://BUCKET/PREFIX/envoy_access/'" in again.stdout
    assert "'projection.service.values' = 'recipe,users'" in again.stdout
    assert again.stdout.startswith("CREATE DATABASE IF NOT EXISTS `my db`;")
    assert again.stderr == ""
    listed = logq("ddl", "--warehouse", warehouse.uri)  # services found: the copy's are listed
    assert "`logq ddl --warehouse s3://BUCKET/PREFIX`" in listed.stderr
    # The folder to copy as opened, not the URI as given: `aws s3 sync file:///...` names none.
    given = logq("ddl", "--warehouse", f"file://{warehouse.uri}", "-s", "recipe")
    assert given.exit_code == 0, given.stderr
    assert f"(aws s3 sync {shlex.quote(warehouse.uri)} s3://BUCKET/PREFIX)" in given.stderr


def test_services_lists_newest_time(logq, warehouse: Warehouse) -> None:
    run = logq("services", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0
    rows = {r["service"]: r for r in run.json()}
    assert sorted(rows) == sorted(SERVICES)
    for svc in SERVICES:
        newest = max(
            warehouse.access[warehouse.access["service"] == svc]["timestamp"].max(),
            warehouse.logs[warehouse.logs["service"] == svc]["timestamp"].max(),
        )
        assert rows[svc]["newest"] == newest.strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{newest.microsecond // 1000:03d}Z"
        )
        assert rows[svc]["access_hours"] == 4


def test_services_table_titles_are_words_as_every_canned_answers(
    logq, warehouse: Warehouse
) -> None:
    """Locally the table said ``access_hours`` / ``log_hours`` (titles as ``logq sql`` keeps
    them), where every canned answer's table, and ``services`` on Athena, says words."""
    run = logq("services", "-f", "table", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    titles = [t.strip() for t in run.stdout.splitlines()[2].split("┃")[1:-1]]
    assert titles == ["service", "access hours", "log hours", "newest"], run.stdout


def test_services_limit(logq, warehouse: Warehouse) -> None:
    every = logq("services", "-f", "json", "--warehouse", warehouse.uri).json()
    cut = logq("services", "-f", "json", "--limit", "2", "--warehouse", warehouse.uri)
    assert len(every) > 2
    assert cut.json() == every[:2]
    # The listing has every service: the cut says how many (it said "the result has more").
    assert f"showing 2 of {len(every)} rows (raise --limit)" in cut.stderr, cut.stderr


def test_services_empty_and_unknown(logq, warehouse: Warehouse, empty_warehouse: str) -> None:
    run = logq("services", "-f", "json", "--warehouse", empty_warehouse)
    assert run.json() == [] and "holds no data yet" in run.stderr
    run = logq("services", "-s", "nope", "--warehouse", warehouse.uri, "-f", "json")
    assert run.json() == [] and "known: billing, recipe, users" in run.stderr


def test_services_empty_warehouse_in_a_table_is_one_line(logq, empty_warehouse: str) -> None:
    """The table format says "No results" once, without an empty table under it (as the
    canned queries do), and the exit status stays 3."""
    for fmt in ("table", "markdown"):
        run = logq("services", "-f", fmt, "--warehouse", empty_warehouse)
        assert run.exit_code == 3
        assert run.stdout == f"No results: the warehouse {empty_warehouse} holds no data yet\n"
        assert "no results" not in run.stderr


def test_services_counts_only_hours_with_parquet_files(logq, tmp_path: Path) -> None:
    """An emptied hour folder (files moved away, a failed copy), one holding no data file
    (`_tmp.parquet`, notes) or a `dt=` name that is no hour counted as an hour of data, and a
    service whose folders were all empty was listed with 0 hours: count only valid hours
    with a `.parquet` file (what the queries read)."""
    uri = str(tmp_path / "wh")
    frame = access_frame(200, START, END, ["billing"], seed=5)
    [first, *_] = write_frame(uri, "envoy_access", frame)
    hours = frame["timestamp"].map(lambda t: t.strftime("%Y-%m-%d-%H")).nunique()
    root = tmp_path / "wh"
    billing = root / "envoy_access" / "service=billing"
    (billing / "dt=2026-11-29-05").mkdir()
    (billing / "dt=2026-11-29-06").mkdir()
    (billing / "dt=2026-11-29-06" / "_tmp.parquet").write_bytes(b"partial")
    (billing / "dt=2026-11-29-06" / "notes.txt").write_text("x")
    for odd in ("dt=garbage", "dt=2026-1-1-1"):
        (billing / odd).mkdir()
        shutil.copy(first, billing / odd / "part-0000.parquet")
    (root / "container_logs" / "service=billing" / "dt=2026-11-29-05").mkdir(parents=True)
    for table in ("envoy_access", "container_logs"):
        (root / table / "service=ghost" / "dt=2026-11-28-01").mkdir(parents=True)
    run = logq("services", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    assert [(r["service"], r["access_hours"], r["log_hours"]) for r in rows] == [
        ("billing", hours, 0)
    ]
    dry = logq("services", "--dry-run", "--warehouse", uri)
    assert f"envoy_access/service=billing: {hours} hours, newest dt=" in dry.stdout
    assert "ghost" not in dry.stdout and "container_logs" not in dry.stdout.split("\n", 1)[1]


def test_services_reads_each_hour_folder_once_and_stops_at_a_data_file(
    logq, tmp_path: Path, monkeypatch
) -> None:
    """`logq services` on a year of 200 services took minutes: pyarrow's listing stats every
    entry and reads each hour's folder to its end, and with rows stamped ahead of the clock
    every hour was listed again. Each hour folder is now read once, with os.scandir, and
    only up to its first data file (the answer is the same: the test above and
    test_hours_with_data_are_the_hours_the_readers_read)."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    uri = str(tmp_path / "wh")
    frame = access_frame(300, now - timedelta(hours=6), now + timedelta(hours=2), ["svc"], seed=2)
    write_frame(uri, "envoy_access", frame, files_per_partition=3)
    service = tmp_path / "wh" / "envoy_access" / "service=svc"
    hours = sorted(p.name for p in service.iterdir())
    scanned: list[tuple[str, int]] = []  # (folder, entries taken)
    real_scandir = os.scandir

    class Counted:
        def __init__(self, path: str) -> None:
            self.inner = real_scandir(path)
            self.at = len(scanned)
            scanned.append((str(path), 0))

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def __iter__(self) -> Counted:
            return self

        def __next__(self) -> os.DirEntry[str]:
            entry = next(self.inner)
            folder, taken = scanned[self.at]
            scanned[self.at] = (folder, taken + 1)
            return entry

    monkeypatch.setattr(os, "scandir", Counted)
    run = logq("services", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert run.json()[0]["access_hours"] == len(hours)
    assert "also has rows" in run.stderr  # the second look for the newest line happened
    hour_scans = [(f, n) for f, n in scanned if "/dt=" in f]
    assert sorted(f.rsplit("/", 1)[1] for f, _ in hour_scans) == hours  # each hour once
    assert all(n == 1 for _, n in hour_scans), hour_scans  # 3 files each, the first answers


def test_relative_since_counts_only_recent_rows(logq, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old = access_frame(300, now - timedelta(hours=5), now - timedelta(hours=2), ["svc"], seed=3)
    new = access_frame(
        300, now - timedelta(minutes=50), now - timedelta(minutes=1), ["svc"], seed=4
    )
    uri = str(tmp_path / "wh")
    write_frame(uri, "envoy_access", pd.concat([old, new], ignore_index=True))
    run = logq(
        "errors", "-s", "svc", "--since", "1h", "-f", "json", "--warehouse", uri, "--limit", "1000"
    )
    got = sum(r["count"] for r in run.json())
    assert got == int((new["response_code"] >= 500).sum())
    run = logq(
        "errors", "-s", "svc", "--since", "1d", "-f", "json", "--warehouse", uri, "--limit", "1000"
    )
    both = pd.concat([old, new])
    assert sum(r["count"] for r in run.json()) == int((both["response_code"] >= 500).sum())


def test_services_newest_skips_an_empty_hour_and_names_a_damaged_file(logq, tmp_path: Path) -> None:
    start = datetime(2026, 11, 28, 10, tzinfo=UTC)
    frame = access_frame(50, start, start + timedelta(hours=2), ["svc"], seed=5)
    uri = str(tmp_path / "wh")
    write_frame(uri, "envoy_access", frame)
    empty = tmp_path / "wh" / "envoy_access" / "service=svc" / "dt=2026-11-28-13"
    empty.mkdir()  # a newer hour whose files were moved away
    [row] = logq("services", "-f", "json", "--warehouse", uri).json()
    newest = frame["timestamp"].max()
    assert row["newest"] == newest.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{newest.microsecond // 1000:03d}Z"
    )
    damaged = tmp_path / "wh" / "envoy_access" / "service=svc" / "dt=2026-11-28-11" / "x.parquet"
    damaged.write_bytes(b"")
    run = logq("services", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 1
    assert f"cannot read the Parquet file {damaged}" in run.stderr
    assert "move it out of the warehouse" in run.stderr


def test_console_script_contract(warehouse: Warehouse) -> None:
    """The installed `logq` process: JSON on stdout only, LOGQ_WAREHOUSE honoured."""
    env = {**os.environ, "LOGQ_WAREHOUSE": warehouse.uri}
    proc = subprocess.run(
        [str(LOGQ), "errors", "--service", "recipe", "--since", "2026-11-27T22:00:00Z",
         "--until", "2026-11-28T02:00:00Z", "--format", "json", "--limit", "1000"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    df = warehouse.access
    total = int(((df["service"] == "recipe") & (df["response_code"] >= 500)).sum())
    assert sum(r["count"] for r in rows) == total
    assert {"path", "response_code", "response_flags", "count"} <= set(rows[0])


def test_ddl_takes_service_names_as_the_query_commands_do(logq) -> None:
    """A comma-separated list is a list (one value 'recipe_checkout' hid every service); a
    name the writer would have stored otherwise is refused with the stored spelling."""
    run = logq("ddl", "--warehouse", "s3://b/wh", "-s", "recipe,checkout", "-s", "Users")
    assert run.exit_code == 0, run.stderr
    assert "'projection.service.values' = 'checkout,recipe,users'" in run.stdout
    run = logq("ddl", "--warehouse", "s3://b/wh", "-s", "x' OR '1'='1")
    assert run.exit_code == 2 and run.stdout == ""
    assert "is not a service name" in run.stderr  # no suggestion: no service has that name
    assert "x_or_1_1" not in run.stderr
    run = logq("ddl", "--warehouse", "s3://b/wh", "-s", "recipe", "--athena-database", "a`b")
    assert "CREATE DATABASE IF NOT EXISTS `a``b`;" in run.stdout
    assert "ALTER TABLE `a``b`.`envoy_access`" in run.stdout
    run = logq("ddl", "--warehouse", "s3://b/wh", "-s", "recipe", "--athena-database", " ")
    assert run.exit_code == 2 and "--athena-database is empty" in run.stderr


def test_services_counts_only_the_hours_in_range(logq, warehouse: Warehouse) -> None:
    """Locally too, --since/--until narrow the hours counted (the data spans 4 hours)."""
    run = logq(
        "services", "-f", "json", "--warehouse", warehouse.uri,
        "--since", "2026-11-28T00:00:00Z", "--until", "2026-11-28T01:00:00Z",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    assert sorted(r["service"] for r in rows) == sorted(SERVICES)
    assert {r["access_hours"] for r in rows} == {1}
    run = logq(
        "services", "-f", "json", "--warehouse", warehouse.uri,
        "--since", "2026-11-20T00:00:00Z", "--until", "2026-11-21T00:00:00Z",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.json() == []
    assert "no data between 2026-11-20-00h and 2026-11-20-23h UTC" in run.stderr


def test_sql_limit_fetches_the_first_rows_in_order(logq, warehouse: Warehouse) -> None:
    """--limit stops fetching (DuckDB streams) but keeps the statement's order."""
    run = logq(
        "sql", "SELECT request_id FROM envoy_access ORDER BY request_id DESC",
        "--limit", "3", "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    want = sorted(warehouse.access["request_id"], reverse=True)[:3]
    assert [r["request_id"] for r in run.json()] == want
    every = logq("sql", "SELECT count(*) AS n FROM envoy_access", "-f", "json", "--limit", "1",
                 "--warehouse", warehouse.uri)  # fmt: skip
    assert every.json() == [{"n": len(warehouse.access)}]


def test_until_alone_reads_every_row_before_it(logq, warehouse: Warehouse) -> None:
    """`sql` and `services` without --since have no start: --until alone keeps every row
    before it (it used to mean the hour before now, and a past --until was refused)."""
    until = "2026-11-28T00:40:00Z"
    run = logq(
        "sql", "SELECT count(*) AS n FROM envoy_access", "--until", until,
        "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    before = warehouse.access[warehouse.access["timestamp"] < pd.Timestamp(until)]
    assert 0 < len(before) < len(warehouse.access)
    assert run.json() == [{"n": len(before)}]
    services = logq("services", "-f", "json", "--until", until, "--warehouse", warehouse.uri)
    assert services.exit_code == 0, services.stderr
    assert sorted(r["service"] for r in services.json()) == sorted(SERVICES)


def test_sql_keeps_athena_meaning_of_division_date_diff_and_regexp_extract(
    logq, warehouse: Warehouse
) -> None:
    """The statement is Athena's (Trino) SQL; locally it must mean the same. Trino: integer
    division truncates toward zero, date_diff counts whole units, regexp_extract without a
    match is NULL (DuckDB's own functions give 3.5, 1 and '')."""
    run = logq(
        "sql",
        "SELECT 7/2 AS half, -7/2 AS neg, 7.0/2 AS real_half, "
        "date_diff('day', CAST('2022-05-01 23:45:09' AS timestamp), "
        "CAST('2022-05-02 03:56:31' AS timestamp)) AS days, "
        "date_diff('hour', CAST('2022-05-01 23:45:09' AS timestamp), "
        "CAST('2022-05-02 03:56:31' AS timestamp)) AS hours, "
        "regexp_extract('no digits here', '\\d+') AS rx, "
        "regexp_extract('order 42 and 7', '(\\d+) and (\\d+)', 2) AS second, "
        "(SELECT count_if(response_code >= 500) * 100 / count(*) FROM envoy_access) AS pct, "
        "regexp_extract(regexp_extract('no digits here', '\\d+'), '.*') AS nested_rx, "
        "(SELECT approx_percentile(date_diff('day', CAST('2022-05-01 23:45:09' AS timestamp), "
        "CAST('2022-05-02 03:56:31' AS timestamp)), 0.5)) AS nested_days",
        "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    [row] = run.json()
    errors = int((warehouse.access["response_code"] >= 500).sum())
    assert row == {
        "half": 3,
        "neg": -3,
        "real_half": 3.5,
        "days": 0,
        "hours": 4,
        "rx": None,
        "second": "7",
        "pct": errors * 100 // len(warehouse.access),
        "nested_rx": None,  # the same meaning inside another rewritten call
        "nested_days": 0,
    }


def test_ctrl_c_stops_a_runaway_local_query(warehouse: Warehouse) -> None:
    """A join that would run for hours: Ctrl-C ends it at once with 'logq: interrupted' and
    exit 130. The query ran in the main thread, inside DuckDB, where Python's SIGINT handler
    never got to run: the process went on for minutes (then printed a traceback)."""
    import signal
    import time

    from bench.procfs import cpu_seconds

    runaway = (
        "SELECT count(*) FROM envoy_access a, envoy_access b, envoy_access c "
        "WHERE a.path || b.path || c.path LIKE '%zz%'"
    )
    proc = subprocess.Popen(
        [str(LOGQ), "sql", runaway, "--warehouse", warehouse.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Test runners may ignore SIGINT (pytest-xdist workers); a terminal's Ctrl-C is default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while cpu_seconds(proc.pid) < 3.0:  # imports are well under that: the query runs
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the query never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err == "logq: interrupted\n"


def test_sql_keeps_every_value_of_columns_named_alike(logq, empty_warehouse: str) -> None:
    """``SELECT 1 AS a, 2 AS a`` has two columns ``a`` (the Athena console shows both): a JSON
    object kept one value, and csv.DictReader would too. Every format names the later ones
    ``a_2`` (``a_3`` when the result has an ``a_2``), the same everywhere, and stderr says so."""
    import csv
    import io

    sql = "SELECT 1 AS a, 2 AS a, 3 AS a_2, 4 AS a"
    names = ["a", "a_3", "a_2", "a_4"]
    runs = {f: logq("sql", sql, "-f", f, "--warehouse", empty_warehouse) for f in
            ("json", "csv", "table", "markdown")}  # fmt: skip
    for fmt, run in runs.items():
        assert run.exit_code == 0, run.stderr
        assert "more than one column named 'a'" in run.stderr, (fmt, run.stderr)
        assert "'a' as 'a_3', 'a' as 'a_4'" in run.stderr, (fmt, run.stderr)
    assert runs["json"].json() == [dict(zip(names, [1, 2, 3, 4], strict=True))]
    assert list(csv.DictReader(io.StringIO(runs["csv"].stdout))) == [
        dict(zip(names, "1234", strict=True))
    ]
    for fmt in ("table", "markdown"):
        assert all(n in runs[fmt].stdout for n in names), runs[fmt].stdout
    alone = logq("sql", "SELECT 1 AS a, 2 AS b", "-f", "json", "--warehouse", empty_warehouse)
    assert alone.json() == [{"a": 1, "b": 2}] and "note" not in alone.stderr


def test_null_and_the_value_dash_look_different_in_the_table(logq, empty_warehouse: str) -> None:
    """The table showed NULL as ``-``, and ``-`` is a value logq stores (``response_flags``
    '-': no flags), so ``SELECT NULL, '-'`` read ``- | -``. NULL is now an empty cell in the
    table, as in markdown (and csv's empty field, json's null)."""
    sql = "SELECT NULL AS x, '-' AS y, 1 AS z"
    cells = {}
    for fmt in ("table", "markdown"):
        run = logq("sql", sql, "-f", fmt, "--warehouse", empty_warehouse)
        assert run.exit_code == 0, run.stderr
        row = [line for line in run.stdout.splitlines() if "1" in line][-1]
        cells[fmt] = [c.strip() for c in row.replace("│", "|").split("|")[1:-1]]
    assert cells["table"] == cells["markdown"] == ["", "-", "1"], cells
    json_run = logq("sql", sql, "-f", "json", "--warehouse", empty_warehouse)
    assert json_run.json() == [{"x": None, "y": "-", "z": 1}]
