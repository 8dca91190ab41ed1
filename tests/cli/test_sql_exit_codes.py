"""`logq sql` exit codes as the README's table has them: 2 when the statement must change (it
does not parse, names a column, table or function that does not exist, mixes types, or asks
the local sandbox for a file), 1 when reading the data failed. A script may retry on 1; it
would retry a refused statement forever. The same refusal of a canned query is logq's bug,
an engine failure (1)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from athena import queries
from athena.engines.local import _refusal, _statement_fault
from tests.cli.conftest import Warehouse
from tests.cli.test_sql_sandbox import one_line_error


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        ("COPY (SELECT 42 AS x) TO '/tmp/logq-never-written.csv'", "runs queries only"),
        ("SELEC 1", "cannot parse the SQL"),
        ("SELECT nosuchcol FROM envoy_access", 'Referenced column "nosuchcol" not found'),
        ("SELECT * FROM '/etc/passwd'", "unknown table '/etc/passwd'; the tables are"),
        ("SELECT * FROM nosuch", "unknown table 'nosuch'; the tables are"),
        # a warehouse table named in a string DuckDB reads as SQL: not "unknown table
        # 'envoy_access'; the tables are envoy_access, ...", which contradicts itself
        ("SELECT * FROM query_table('envoy_access')", "(FROM envoy_access), not by a name"),
        ("SELECT * FROM query('SELECT 1 FROM Container_Logs')", "(FROM container_logs), not"),
        ("SELECT * FROM read_text('/etc/passwd')", "reads only the warehouse tables"),
        ("SELECT nosuchfn(1)", "nosuchfn does not exist"),
        ("SELECT response_code + 'x' FROM envoy_access", "Binder Error"),
        ("SELECT CAST(host AS integer) FROM envoy_access", "Conversion Error"),
        # a value that quotes DuckDB's words for a missing extension is no missing extension
        (
            "SELECT CAST('f is not in the catalog, but it exists in the spatial extension' "
            "AS integer)",
            "Conversion Error: Could not convert string",
        ),
        ("SELECT regexp_like(path, '(') FROM envoy_access", "Invalid Input Error"),
        # DuckDB's CHECKPOINT as a table function: a TransactionContext Error, exit 1 as if
        # the engine failed (force_checkpoint) or run (checkpoint), where CHECKPOINT is refused
        ("SELECT * FROM force_checkpoint()", "FORCE CHECKPOINT statement written as a function"),
        ("SELECT * FROM checkpoint()", "DuckDB's CHECKPOINT statement written as a function"),
        ("SELECT * FROM query('SELECT * FROM force_checkpoint()')", "not DuckDB's CHECKPOINT"),
    ],
)
def test_statement_refused_as_written_exits_2(
    logq, warehouse: Warehouse, statement: str, words: str
) -> None:
    run = logq("sql", statement, "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stderr
    assert words in one_line_error(run.stderr) and run.stdout == ""


def test_unreadable_file_still_exits_1(logq, tmp_path: Path) -> None:
    """Not the statement's fault: a Parquet file of the table that cannot be read."""
    from tests.cli.test_sql_sandbox import write_damaged

    bad = write_damaged(tmp_path / "wh")
    run = logq("sql", "SELECT count(*) FROM envoy_access", "--warehouse", str(tmp_path / "wh"))
    assert run.exit_code == 1
    assert str(bad["envoy_access"]) in one_line_error(run.stderr)


def test_canned_query_refused_is_an_engine_failure(
    logq, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logq's own SQL that DuckDB refuses is a bug in logq, not bad input: exit 1."""
    broken = queries.CannedQuery(
        name="errors", text="SELECT nosuchcol, 0 AS total_rows FROM envoy_access"
    )
    monkeypatch.setattr(queries, "load", lambda name: broken)
    run = logq("errors", "--since", "2026-11-27T00:00:00Z", "--until", "2026-11-29T00:00:00Z",
               "--warehouse", warehouse.uri)  # fmt: skip
    assert run.exit_code == 1, run.stderr
    assert "nosuchcol" in one_line_error(run.stderr)


def test_a_failed_read_of_a_registered_dataset_is_no_statement_fault(tmp_path: Path) -> None:
    """On an S3 warehouse DuckDB scans pyarrow datasets; when pyarrow cannot read (S3 down,
    access denied, a file gone) DuckDB raises an InvalidInputException, the class a bad regular
    expression gets too. The wording tells them apart: this one stays an engine failure."""
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    dataset = ds.dataset([str(path)], format="parquet")
    path.unlink()
    con = duckdb.connect()
    con.register("envoy_access", dataset)
    with pytest.raises(duckdb.InvalidInputException) as read_failed:
        con.sql("SELECT * FROM envoy_access").fetchall()
    assert not _statement_fault(read_failed.value)
    # The wording of DuckDB 1.x, which pyproject allows (R1 checked it with duckdb 1.4.1).
    older = duckdb.InvalidInputException(
        "Invalid Input Error: arrow_scan: get_next failed(): IOError: Failed to open local file"
    )
    assert not _statement_fault(older)
    with pytest.raises(duckdb.InvalidInputException) as bad_pattern:
        con.sql("SELECT regexp_matches('a', '(')").fetchall()
    assert _statement_fault(bad_pattern.value)


def test_an_extension_logq_itself_needs_is_an_engine_failure() -> None:
    """DuckDB's wheels build in parquet, icu and json, which logq's own SQL needs (the views,
    the session zone, the Trino functions): a DuckDB lacking one tries to install it, and that
    is a broken installation (exit 1), not a statement to change. An extension only the
    statement needs stays the statement's fault."""
    wording = (
        "An error occurred while trying to automatically install the required extension '{}: "
        'Cannot access directory "/root/.duckdb/extensions" - file system operations are '
        "disabled by configuration"
    )
    for engine_needs in ("parquet", "icu", "json"):
        missing = duckdb.Error(wording.format(engine_needs))
        assert _refusal(missing) is None and not _statement_fault(missing)
    refusal = _refusal(duckdb.Error(wording.format("iceberg")))
    assert refusal is not None and "needs DuckDB's iceberg extension" in refusal
