"""`logq sql` cannot write or read outside the warehouse; hostile data and values give one line.

Covers: EXPLAIN ANALYZE of a non-query (DuckDB runs it) refused like the statement itself; the
DuckDB sandbox (only the views' Parquet files, no extensions, no settings) on local and S3
warehouses; damaged Parquet files named in one line; timestamps past Python's range; NaN and
Infinity in --format json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from athena.engines.local import LocalEngine
from athena.engines.result import EngineError
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, logs_frame, utc, write_frame
from tests.cli.conftest import Warehouse


def one_line_error(stderr: str) -> str:
    """The single ``logq: error:`` line ``stderr`` must consist of."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("logq: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN ANALYZE COPY (SELECT 42 AS x) TO '{out}'",
        "explain   analyze\nCOPY (SELECT 42 AS x) TO '{out}' (FORMAT csv, USE_TMP_FILE false)",
        "EXPLAIN (FORMAT json) COPY (SELECT 42 AS x) TO '{out}'",
        "EXPLAIN ANALYZE EXPLAIN ANALYZE COPY (SELECT 42 AS x) TO '{out}'",
        "/* c */ EXPLAIN ANALYZE COPY (SELECT 42 AS x) TO '{out}'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE SET threads = 1",
        "EXPLAIN ANALYZE SELECT 1; COPY (SELECT 42 AS x) TO '{out}'",
    ],
)
def test_explain_of_a_non_query_is_refused(
    logq, warehouse: Warehouse, tmp_path: Path, statement: str
) -> None:
    out = tmp_path / "pwned.csv"
    run = logq("sql", statement.format(out=out), "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stderr
    assert "runs queries only" in one_line_error(run.stderr) or "one query" in run.stderr
    assert not out.exists()


def test_explain_of_a_query_runs_over_the_warehouse(logq, warehouse: Warehouse) -> None:
    for prefix in ("EXPLAIN", "EXPLAIN ANALYZE", "explain (format json)"):
        run = logq(
            "sql", f"{prefix} SELECT count(*) AS n FROM envoy_access WHERE service = 'recipe'",
            "-f", "json", "--warehouse", warehouse.uri,
        )  # fmt: skip
        assert run.exit_code == 0, run.stderr
        plan = " ".join(str(v) for row in run.json() for v in row.values())
        assert "READ_PARQUET" in plan.upper(), plan
    dry = logq("sql", "EXPLAIN ANALYZE SELECT 1 FROM envoy_access", "--dry-run",
               "--warehouse", warehouse.uri)  # fmt: skip
    assert dry.exit_code == 0 and "\nEXPLAIN ANALYZE\nSELECT" in dry.stdout


def test_explain_prints_its_plan_as_lines_in_the_table_format(logq, warehouse: Warehouse) -> None:
    """The plan is one text value of many lines: in a table cell its line breaks read ``\\n``
    and DuckDB's boxes ran together on one line. The table format prints it as its lines (json
    keeps the value whole); a SELECT whose values hold line breaks is still a table."""
    statement = "EXPLAIN SELECT count(*) AS n FROM envoy_access"
    run = logq("sql", statement, "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "physical_plan" and "\\n" not in run.stdout, run.stdout
    assert any("READ_PARQUET" in line for line in lines) and len(lines) > 5, run.stdout
    assert all(line.startswith(("╭", "│", "╰", "┌", "└")) for line in lines[1:]), run.stdout
    js = logq("sql", statement, "-f", "json", "--warehouse", warehouse.uri).json()
    assert js[0]["explain_key"] == "physical_plan" and "\n" in js[0]["explain_value"]
    text = logq("sql", "SELECT 'a' || chr(10) || 'b' AS t", "--warehouse", warehouse.uri)
    assert "┃ t " in text.stdout and "a\\nb" in text.stdout, text.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_blob('{secret}')",
        "SELECT * FROM read_json('{secret_dir}/*.txt')",
    ],
)
def test_sql_reads_no_file_but_the_warehouse(
    logq, warehouse: Warehouse, tmp_path: Path, statement: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("a,b\nhunter2,2\n")
    sql = statement.format(secret=secret, secret_dir=tmp_path)
    run = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stdout  # the statement must change: bad input
    line = one_line_error(run.stderr)
    assert "reads only the warehouse tables" in line and "hunter2" not in run.stdout


@pytest.mark.parametrize(
    ("statement", "extension"),
    [
        ("SELECT * FROM iceberg_scan('{secret_dir}')", "iceberg"),  # DuckDB tries to install it
        ("SELECT * FROM read_xlsx('{secret}')", "excel"),
        ("SELECT * FROM st_read('{secret}')", "spatial"),  # DuckDB says: INSTALL spatial
        # A scalar function of an extension read as a table: DuckDB says it "exists in the
        # spatial extension, but it's of a different type" (its raw error before)
        ("SELECT * FROM st_point(1, 2)", "spatial"),
    ],
)
def test_a_function_of_an_extension_is_refused_as_the_statements_fault(
    logq, warehouse: Warehouse, tmp_path: Path, statement: str, extension: str
) -> None:
    """The statement must change (exit 2, not 1, an engine failure "retrying may help"), and
    DuckDB's advice to INSTALL and LOAD the extension, which `logq sql` refuses, is not given."""
    secret = tmp_path / "secret.txt"
    secret.write_text("a,b\nhunter2,2\n")
    sql = statement.format(secret=secret, secret_dir=tmp_path)
    run = logq("sql", sql, "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stderr
    line = one_line_error(run.stderr)
    assert "reads only the warehouse tables" in line and f"{extension} extension" in line
    assert "INSTALL" not in line and "hunter2" not in run.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 42 AS x) TO '{out}'",
        "COPY (SELECT 42 AS x) TO '{part}' (FORMAT parquet)",
        "EXPORT DATABASE '{out}.dir'",
        "SELECT * FROM read_blob('{part}')",
        "ATTACH '{out}.db' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "SET enable_external_access = true",
        "RESET lock_configuration",
    ],
)
def test_engine_sandbox_holds_without_the_statement_check(
    warehouse: Warehouse, tmp_path: Path, statement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below `logq sql`'s check, DuckDB itself refuses (the statement reaches it verbatim, not
    even transpiled): files outside the views, writes elsewhere, extensions and settings. Only
    a COPY onto a file the views read passes the sandbox (USE_TMP_FILE false); the statement
    check is what stops that one, so it is not in this list."""
    engine = LocalEngine(warehouse.uri)
    monkeypatch.setattr(engine, "prepare", lambda sql, *args: (sql, {}))
    out = tmp_path / "out.csv"
    part = next(Path(warehouse.uri, "container_logs").rglob("part-*.parquet"))
    sql = statement.format(out=out, part=part)
    before = part.read_bytes()
    with pytest.raises(EngineError) as err:
        engine.run(sql, {}, {"envoy_access": engine.plan("envoy_access", ["recipe"], None)})
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())
    assert part.read_bytes() == before


def test_checkpoint_functions_are_refused_as_the_statement_is(logq, warehouse: Warehouse) -> None:
    """DuckDB's CHECKPOINT written as a table function, wherever in the statement: refused
    before it runs, saying why (exit 2, as the CHECKPOINT statement), not DuckDB's
    "TransactionContext Error" (exit 1, an engine failure a script would retry). A column, a
    WITH query, a string or a comment of that name is no call."""
    for statement in (
        "SELECT * FROM Force_Checkpoint('memory')",
        'SELECT * FROM "checkpoint"()',
        "SELECT * FROM main.checkpoint()",
        "SELECT count(*) AS n FROM envoy_access, LATERAL force_checkpoint()",
        "SELECT (SELECT 1 FROM checkpoint()) AS x",
        "EXPLAIN ANALYZE SELECT * FROM force_checkpoint()",
        "SELECT checkpoint()",
    ):
        run = logq("sql", statement, "--warehouse", warehouse.uri)
        assert run.exit_code == 2, (statement, run.stderr)
        line = one_line_error(run.stderr)
        assert "CHECKPOINT statement written as a function" in line, line
        assert "runs queries only" in line and "TransactionContext" not in line
    for sql, want in (
        ("SELECT checkpoint FROM (SELECT 1 AS checkpoint) AS t", {"checkpoint": 1}),
        ("WITH checkpoint AS (SELECT 1 AS c) SELECT c FROM checkpoint", {"c": 1}),
        ("SELECT 'force_checkpoint()' AS s -- checkpoint()", {"s": "force_checkpoint()"}),
        ("SELECT /* checkpoint() */ 1 AS n", {"n": 1}),
    ):
        run = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
        assert run.exit_code == 0 and run.json() == [want], (sql, run.stderr)


def test_settings_cannot_be_changed_mid_query(warehouse: Warehouse) -> None:
    engine = LocalEngine(warehouse.uri)
    result = engine.run("SELECT current_setting('enable_external_access') AS ext", {}, {})
    assert result.rows == [(False,)]


def write_damaged(root: Path) -> dict[str, Path]:
    """A warehouse with good data and, in one partition of each table, a zero-byte file and a
    file that is not Parquet though named so (an interrupted copy, a stray upload)."""
    start, end = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 11, 0)
    write_frame(str(root), "envoy_access", access_frame(50, start, end, ["app"], seed=3))
    write_frame(str(root), "container_logs", logs_frame(20, start, end, ["app"], seed=4))
    bad = {}
    for table, name, body in (
        ("container_logs", "half-uploaded.parquet", b""),
        ("envoy_access", "junk.parquet", b"PAR1" + b"x" * 100 + b"PAR1"),
    ):
        part = next((root / table / "service=app").iterdir())
        bad[table] = part / name
        bad[table].write_bytes(body)
    return bad


RANGE = ["--since", "2026-11-28T00:00:00Z", "--until", "2026-11-29T00:00:00Z"]


@pytest.mark.parametrize(
    ("args", "table"),
    [
        (["tail", *RANGE], "container_logs"),
        (["sql", "SELECT count(*) FROM container_logs"], "container_logs"),
        (["sql", "SELECT count(*) FROM envoy_access", *RANGE], "envoy_access"),
        (["errors", *RANGE], "envoy_access"),
        (["top", *RANGE], "envoy_access"),
    ],
)
def test_damaged_parquet_file_is_named_in_one_line(
    logq, tmp_path: Path, args: list[str], table: str
) -> None:
    bad = write_damaged(tmp_path / "wh")
    run = logq(*args, "--warehouse", str(tmp_path / "wh"))
    assert run.exit_code == 1, run.stdout
    line = one_line_error(run.stderr)
    assert str(bad[table]) in line and "move it out of the warehouse" in line


def test_timestamp_beyond_python_range_is_rendered(logq, warehouse: Warehouse) -> None:
    """Python's datetime stops at year 9999; DuckDB's text for the value is shown instead."""
    sql = "SELECT from_unixtime(1e12) AS t, from_unixtime(1.5) AS ok, 7 AS n"
    run = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [
        {"t": "33658-09-27 01:46:40+00", "ok": "1970-01-01T00:00:01.500Z", "n": 7}
    ]
    table = logq("sql", sql, "--warehouse", warehouse.uri)
    assert table.exit_code == 0 and "33658-09-27 01:46:40+00" in table.stdout


def test_json_has_no_nan_or_infinity(logq, warehouse: Warehouse) -> None:
    nan, inf = "CAST('NaN' AS double)", "CAST('Infinity' AS double)"
    sql = f"SELECT {nan} AS a, {inf} AS b, -{inf} AS c, 1.5 AS d, ARRAY[{nan}, 2.0] AS e"
    run = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr

    def refuse(word: str) -> None:
        raise AssertionError(f"{word} is not JSON")

    rows = json.loads(run.stdout, parse_constant=refuse)
    assert rows == [{"a": None, "b": None, "c": None, "d": 1.5, "e": [None, 2.0]}]
    csv = logq("sql", sql, "-f", "csv", "--warehouse", warehouse.uri)
    # csv (markdown and the table too) writes them as Athena does, as inside the array
    assert csv.stdout.splitlines()[1:] == ['NaN,Infinity,-Infinity,1.5,"[NaN, 2.0]"']


#: Whole numbers past bigint that Athena answers: a DECIMAL(38,0) literal, a sum past 2**63
#: (DuckDB's HUGEINT), next to a whole decimal that fits (a bigint, as before) and a NULL one.
PAST_BIGINT = (
    "SELECT CAST('99999999999999999999' AS DECIMAL(38,0)) AS d, sum(x) AS s, "
    "CAST(-7 AS DECIMAL(38,0)) AS fits, CAST(NULL AS DECIMAL(38,0)) AS n "
    "FROM (VALUES (9223372036854775807), (9223372036854775807)) t(x)"
)


def test_whole_decimals_past_bigint_print_exactly(logq, warehouse: Warehouse) -> None:
    """Every whole-number decimal column was cast to a 64-bit integer: one past it failed the
    query with a bare "Integer value out of bounds". It is kept whole, digit for digit."""
    args = ("sql", PAST_BIGINT, "--warehouse", warehouse.uri)
    run = logq(*args, "-f", "json")
    assert run.exit_code == 0, run.stderr
    assert run.json() == [{"d": 10**20 - 1, "s": 2 * (2**63 - 1), "fits": -7, "n": None}]
    assert '"d": 99999999999999999999, "s": 18446744073709551614' in run.stdout  # no float
    run = logq(*args, "-f", "csv")
    assert run.stdout.splitlines()[1] == "99999999999999999999,18446744073709551614,-7,"
    run = logq(*args, "-f", "markdown")
    assert "| 99999999999999999999 | 18446744073709551614 |" in run.stdout
    run = logq(*args)
    assert "99,999,999,999,999,999,999" in run.stdout and "18,446,744,073,709,551,614" in run.stdout


def test_json_prints_time_of_day_values(logq, warehouse: Warehouse) -> None:
    """A TIME value (DuckDB's, and pyathena's for Athena ``time``) was a JSON traceback."""
    sql = "SELECT TIME '01:02:03.250' AS t, CAST(NULL AS TIME) AS n"
    run = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout) == [{"t": "01:02:03.250000", "n": None}]


@pytest.mark.s3
@pytest.mark.integration
def test_sandbox_and_damaged_file_on_s3(logq, s3_warehouse: str) -> None:
    """S3 tables are pyarrow datasets registered in DuckDB: they work in the sandbox, local
    files stay out of reach, and a damaged object is named like a local file."""
    start, end = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 11, 0)
    write_frame(s3_warehouse, "envoy_access", access_frame(40, start, end, ["app"], seed=5))
    ok = logq("sql", "SELECT count(*) AS n FROM envoy_access", "-f", "json",
              "--warehouse", s3_warehouse)  # fmt: skip
    assert ok.exit_code == 0 and ok.json() == [{"n": 40}], ok.stderr
    top = logq("top", *RANGE, "-f", "json", "--warehouse", s3_warehouse)
    assert top.exit_code == 0 and top.json(), top.stderr
    denied = logq("sql", "SELECT * FROM read_text('/etc/hostname')", "--warehouse", s3_warehouse)
    assert denied.exit_code == 2 and "reads only the warehouse" in one_line_error(denied.stderr)
    wh = open_warehouse(s3_warehouse)
    bad = wh.path("envoy_access", "service=app", "dt=2026-11-28-10", "broken.parquet")
    with wh.fs.open_output_stream(bad) as out:
        out.write(b"")
    run = logq("sql", "SELECT count(*) AS n FROM envoy_access", "--warehouse", s3_warehouse)
    assert run.exit_code == 1
    line = one_line_error(run.stderr)
    assert bad in line and "move it out of the warehouse" in line


def test_sql_parse_error_is_one_line(logq, warehouse: Warehouse) -> None:
    run = logq("sql", "SELECT * FROM glob('/tmp/*')", "--warehouse", warehouse.uri)
    assert run.exit_code == 2
    assert "cannot parse the SQL" in one_line_error(run.stderr)


def test_show_runs_without_sqlglot_noise(logq, warehouse: Warehouse) -> None:
    """sqlglot parses SHOW as a generic command and warns on stderr each time; muted."""
    run = logq("sql", "SHOW TABLES", "--warehouse", warehouse.uri)
    assert run.exit_code == 0 and run.stderr == ""


def test_show_tables_and_columns_answer_as_athena(logq, warehouse: Warehouse) -> None:
    """DuckDB's SHOW TABLES listed nothing (the tables are registered only when a statement
    names them): an empty answer read as "no tables". SHOW COLUMNS FROM t, Athena's form, was
    a DuckDB parse error. Both answer as Athena does; DESCRIBE gives the same columns."""
    uri = warehouse.uri
    tables = logq("sql", "SHOW TABLES", "-f", "json", "--warehouse", uri)
    assert tables.exit_code == 0, tables.stderr
    assert tables.json() == [{"tab_name": "container_logs"}, {"tab_name": "envoy_access"}]
    some = logq("sql", "show tables in logq '*logs|nothing'", "-f", "json", "--warehouse", uri)
    assert some.json() == [{"tab_name": "container_logs"}]
    # Athena's documented wildcards are * and .* (Hive's form), on whole names, any case: a
    # '.*' read as a literal dot answered nothing (R2s18 #2).
    every = logq("sql", "SHOW TABLES '.*'", "-f", "json", "--warehouse", uri)
    assert every.json() == tables.json(), every.stderr
    for pattern in ("envoy.*", "ENVOY*", "nothing|envoy.access"):
        envoy = logq("sql", f"SHOW TABLES '{pattern}'", "-f", "json", "--warehouse", uri)
        assert envoy.json() == [{"tab_name": "envoy_access"}], pattern
    assert logq("sql", "SHOW TABLES 'envoy'", "-f", "json", "--warehouse", uri).json() == []
    described = logq("sql", "DESCRIBE envoy_access", "-f", "json", "--warehouse", uri).json()
    for statement in (
        "SHOW COLUMNS FROM envoy_access",
        "SHOW COLUMNS IN logq.envoy_access",
        "show columns in `envoy_access` in logq",
        "SHOW COLUMNS FROM awsdatacatalog.logq.envoy_access",  # as queries take it (R2s18 #6)
    ):
        run = logq("sql", statement, "-f", "json", "--warehouse", uri)
        assert run.exit_code == 0, (statement, run.stderr)
        fields = [r["field"] for r in run.json()]
        assert sorted(fields) == sorted(r["column_name"] for r in described), statement
        assert fields[-2:] == ["service", "dt"]  # partition columns last, as Athena lists them
    unknown = logq("sql", "SHOW COLUMNS FROM nope", "--warehouse", uri)
    assert unknown.exit_code == 2
    assert "unknown table 'nope'; the tables are envoy_access" in one_line_error(unknown.stderr)


@pytest.mark.parametrize(
    ("statement", "todo"),
    [
        ("  ", "got 0; the text is blank or only comments: pass one statement in quotes, e.g. "),
        ("-- why", "got 0; the text is blank or only comments"),
        ("SELECT 1; SELECT 2", "got 2; run them one at a time, one logq sql each"),
    ],
)
@pytest.mark.parametrize("scope", [(), ("--since", "1h")])
def test_no_or_several_statements_say_what_to_do(
    logq, empty_warehouse: str, statement: str, todo: str, scope: tuple[str, ...]
) -> None:
    """``logq sql "$Q"`` with Q unset said only "expected one SQL statement, got 0", with
    nothing on what to pass; the scoped path (--since) says the same as the plain one."""
    run = logq("sql", statement, *scope, "--warehouse", empty_warehouse)
    assert run.exit_code == 2, run.stderr
    assert f"logq: error: expected one SQL statement, {todo}" in run.stderr, run.stderr


@pytest.mark.parametrize("tail", ["; -- how many", ";\n-- how many\n", "; /* n */", ";  "])
def test_a_comment_after_the_last_semicolon_is_no_second_statement(
    logq, warehouse: Warehouse, tail: str
) -> None:
    """``SELECT ...; -- note``, as saved from an editor, is one statement (sqlglot makes the
    comment a ``Semicolon`` of its own: "expected one SQL statement, got 2"); with the scope
    flags, as SHOW, and a second real statement is still refused."""
    uri = warehouse.uri
    run = logq("sql", f"SELECT 42 AS n{tail}", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [{"n": 42}]
    scoped = logq("sql", f"SELECT count(*) AS n FROM envoy_access{tail}", "-s", "recipe",
                  "-f", "json", "--warehouse", uri)  # fmt: skip
    assert scoped.exit_code == 0, scoped.stderr
    recipe = warehouse.access[warehouse.access["service"] == "recipe"]
    assert scoped.json() == [{"n": len(recipe)}]
    show = logq("sql", f"SHOW TABLES{tail}", "-f", "csv", "--warehouse", uri)
    assert show.stdout.split() == ["tab_name", "container_logs", "envoy_access"], show.stderr
    two = logq("sql", f"SELECT 1; SELECT 2{tail}", "--warehouse", uri)
    assert two.exit_code == 2 and "expected one SQL statement" in two.stderr
    shadowed = logq(  # the table read under a CTE of its own name: the tables it reads are seen
        "sql", "WITH envoy_access AS (SELECT * FROM envoy_access WHERE service = 'recipe') "
        f"SELECT count(*) AS n FROM envoy_access{tail}", "-f", "json", "--warehouse", uri,
    )  # fmt: skip
    assert shadowed.exit_code == 0, shadowed.stderr
    assert shadowed.json() == [{"n": len(recipe)}]


def _warehouse_and_copy_onto_its_file(tmp_path: Path) -> tuple[Path, Path, str]:
    """A local warehouse of one file, that file, and the one write DuckDB's sandbox alone would
    let through: a COPY onto it without a temp file."""
    root = tmp_path / "wh"
    start, end = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 11, 0)
    write_frame(str(root), "container_logs", logs_frame(20, start, end, ["app"], seed=4))
    part = next(root.rglob("part-*.parquet"))
    copy = f"COPY (SELECT * FROM container_logs) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)"
    return root, part, copy


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1; -- ;\n{copy}",
        "SELECT 1; /* ; */ {copy}",
        "SELECT 1; /* /* */ {copy} */",
        "SELECT ';' AS a; {copy}",
        "SELECT '--' AS a; {copy}; -- x",
        'SELECT "a;--" FROM container_logs; {copy}',
        "SELECT $$ ; $$ AS a; {copy}",
        "SELECT $$; -- $$; {copy}",
        "-- a comment\n{copy}; -- x",
        "/* a comment */ {copy}; /* x */",
        "{copy}; -- x",
        "EXPLAIN ANALYZE SELECT 1; -- x\n{copy}",
        # the COPY is all comment: the SELECT runs, and the regenerated SQL DuckDB gets never
        # holds the comment that came after the last ``;``, nor a ``*/`` that closes one early
        "SELECT 1 AS n; -- */; {copy}; /*",
        "SELECT 1 AS n -- */; {copy}; /*\n",
    ],
)
def test_no_second_statement_passes_as_a_comment(logq, tmp_path: Path, statement: str) -> None:
    """A comment after the last ``;`` is dropped (``SELECT ...; -- note`` runs): nothing else
    is, whatever hides a ``;`` or a comment marker (strings, quoted names, ``$$``, block
    comments, a comment then a statement). The target is the one write DuckDB's sandbox alone
    would let through, a COPY onto a file the views read."""
    root, part, copy = _warehouse_and_copy_onto_its_file(tmp_path)
    before = part.read_bytes()
    run = logq("sql", statement.format(copy=copy), "-f", "json", "--warehouse", str(root))
    assert part.read_bytes() == before
    if statement.startswith("SELECT 1 AS n"):
        assert run.exit_code == 0 and run.json() == [{"n": 1}], run.stderr
    else:
        assert run.exit_code == 2 and one_line_error(run.stderr), run.stderr


@pytest.mark.parametrize("comment", ["-- how many\n", "--how many\n", "-- x=1 \n"])
def test_a_statement_starting_with_a_comment_is_the_statement(
    logq, warehouse: Warehouse, comment: str
) -> None:
    """A statement pasted from a saved query often begins with a ``--`` comment: click read it
    as an unknown option ("No such option: -- how many ..."). Options around it still work."""
    run = logq("sql", f"{comment}SELECT 42 AS n", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [{"n": 42}]
    before = logq("sql", "-f", "csv", f"{comment}SHOW TABLES", "--warehouse", warehouse.uri)
    assert before.exit_code == 0, before.stderr
    assert before.stdout.split() == ["tab_name", "container_logs", "envoy_access"]
    # options stay options: a misspelt one is still named, and --format=json is no statement
    typo = logq("sql", "--fromat", "json", "SELECT 1", "--warehouse", warehouse.uri)
    assert typo.exit_code == 2 and "No such option: --fromat" in typo.stderr
    valued = logq("sql", "--format=json", "SELECT 1 AS one", "--warehouse", warehouse.uri)
    assert valued.json() == [{"one": 1}]


@pytest.mark.parametrize(
    "statement",
    [
        "SHOW DATABASES",
        "SHOW ALL TABLES",
        "SHOW PARTITIONS envoy_access",
        "SHOW COLUMNS FROM a.b.c.envoy_access",  # said "not SHOW COLUMNS FROM" (R2s18 #6)
    ],
)
def test_other_show_statements_say_what_works(logq, warehouse: Warehouse, statement: str) -> None:
    """DuckDB answers some SHOW statements about itself (SHOW DATABASES: its in-memory
    "memory"), not about the warehouse: refused, naming what the local engine answers."""
    run = logq("sql", statement, "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and run.stdout == ""
    line = one_line_error(run.stderr)
    assert "answers SHOW TABLES, SHOW COLUMNS FROM <table>, and DESCRIBE" in line
    assert f"not {statement};" in line  # the whole head: "not SHOW ALL" read as a contradiction
    assert "--engine athena" in line


def test_warehouse_files_cannot_be_overwritten(logq, tmp_path: Path) -> None:
    """The one write the DuckDB sandbox alone would let through: a COPY onto a file the views
    read, without a temp file. The statement check refuses it in every disguise."""
    root, part, copy = _warehouse_and_copy_onto_its_file(tmp_path)
    before = part.read_bytes()
    for statement in (copy, f"EXPLAIN ANALYZE {copy}", f"EXPLAIN (FORMAT json) {copy}"):
        run = logq("sql", statement, "--warehouse", str(root))
        assert run.exit_code == 2 and "runs queries only" in one_line_error(run.stderr)
        assert part.read_bytes() == before
