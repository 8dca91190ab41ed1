"""Text columns stored as Parquet BINARY without the UTF8 annotation (Spark, Hive, Impala and
older writers store strings so; pyarrow reads them as ``binary``).

Athena (Trino's Hive connector) reads such a column as varchar. ``logq`` counted the file as
foreign ("holds column path as binary where the table has string") and refused every query
reading the column. Now such a file reads as text, the same answer as if its columns were
strings; one whose bytes are not UTF-8 text is named (logq's strings hold only UTF-8, and
replacing the bytes would change the data unseen), and a query that does not read the column
still answers, counting its rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from athena.warehouse import open_warehouse
from tests.cli.test_foreign_files import ADVICE, _error_line, foreign_warehouse

#: Counts each path and user agent, over every row of the last three hours.
GROUPED = (
    "SELECT path, user_agent, count(*) AS n FROM envoy_access "
    "GROUP BY path, user_agent ORDER BY path, user_agent"
)


def _set_types(uri: str, foreign: str, text: pa.DataType) -> None:
    """The foreign file with ``path`` and ``user_agent`` as ``text`` (same values)."""
    fs = open_warehouse(uri).fs
    rows = pq.read_table(foreign, filesystem=fs)
    for name in ("path", "user_agent"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, rows[name].cast(text))
    pq.write_table(rows, foreign, filesystem=fs)


def _answers(logq, uri: str) -> tuple[list[dict], list[dict]]:
    grouped = logq("sql", GROUPED, "--since", "3h", "--warehouse", uri, "-f", "json")
    assert grouped.exit_code == 0, grouped.stderr
    errors = logq("errors", "--warehouse", uri, "--since", "3h", "-f", "json")
    assert errors.exit_code == 0, errors.stderr
    return grouped.json(), errors.json()


@pytest.mark.parametrize("text", ["binary", "large_binary"])
@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_text_stored_as_binary_reads_as_strings(
    logq, tmp_path: Path, where: str, text: str
) -> None:
    """HEAD refused ``logq sql`` and ``logq errors`` (the file named as foreign). Now they
    answer as they do once the same file holds strings, its non-ASCII paths intact."""
    uri, foreign, truth = foreign_warehouse(tmp_path, "path_binary", where)
    _set_types(uri, foreign, getattr(pa, text)())
    assert str(pq.read_schema(foreign).field("user_agent").type) == text
    copied = pq.read_metadata(foreign).num_rows
    grouped, errors = _answers(logq, uri)
    assert sum(r["n"] for r in grouped) == truth + copied
    assert sum(r["n"] for r in grouped if r["path"].endswith("/é")) == copied

    _set_types(uri, foreign, pa.string())
    assert _answers(logq, uri) == (grouped, errors)


@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_binary_text_that_is_not_utf8_is_named(logq, tmp_path: Path, where: str) -> None:
    """One value of bytes that are no UTF-8 text: a query reading the column fails naming the
    file and the column (DuckDB named the file as unreadable, "damaged or not Parquet"); one
    that does not read it counts every row, the file's too."""
    uri, foreign, truth = foreign_warehouse(tmp_path, "path_not_utf8", where)
    for args in (["errors", "--since", "3h"], ["sql", GROUPED, "--since", "3h"]):
        run = logq(*args, "--warehouse", uri)
        assert run.exit_code == 1, (args, run.stdout)
        line = _error_line(run.stderr)
        want = f"{foreign} holds column path as binary with bytes that are not UTF-8 text"
        assert want in line and ADVICE in line, (args, line)
        assert run.stdout == "" and "Traceback" not in run.stderr
    sql = "SELECT count(*) AS n FROM envoy_access"
    counted = logq("sql", sql, "--since", "3h", "--warehouse", uri, "-f", "json")
    assert counted.exit_code == 0, counted.stderr
    assert counted.json() == [{"n": truth + pq.read_metadata(foreign).num_rows}]


@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_bytes_where_the_table_has_another_type_are_named_by_type(
    logq, tmp_path: Path, where: str
) -> None:
    """``response_code`` as raw bytes that are no UTF-8 text: read as text
    (``binary_as_string``), they failed before the cast to int could, and the file was called
    damaged ("if it is damaged or not Parquet"). It is named by its column's type."""
    uri, foreign, _ = foreign_warehouse(tmp_path, "code_binary", where)
    run = logq("errors", "--since", "3h", "--warehouse", uri)
    assert run.exit_code == 1, run.stdout
    line = _error_line(run.stderr)
    assert f"{foreign} holds column response_code as binary where the table has int" in line


def test_a_statement_error_on_bytes_keeps_its_own_message(logq, tmp_path: Path) -> None:
    """The statement's own bytes that are no UTF-8 text are the user's error (exit 2, DuckDB's
    words), even beside a file whose bytes are not UTF-8: only the Parquet reader's words
    (:data:`athena.engines.local._NOT_UTF8`) send logq looking for a file."""
    uri, foreign, _ = foreign_warehouse(tmp_path, "path_not_utf8", "scanned")
    sql = "SELECT from_utf8(X'ff') AS d FROM envoy_access LIMIT 1"
    run = logq("sql", sql, "--warehouse", uri)
    assert run.exit_code == 2, run.stderr
    line = _error_line(run.stderr)
    assert "could not convert blob to UTF8 string" in line and foreign not in line, line


@pytest.mark.s3
@pytest.mark.integration
def test_an_s3_warehouse_reads_binary_text_and_names_bytes_not_utf8(
    logq, s3_warehouse: str
) -> None:
    """S3 tables are read by pyarrow with the declared schema: its cast reads binary text as
    strings, and its error for bytes that are not UTF-8 ("Invalid UTF8 payload") named no
    file."""
    uri, foreign, _ = foreign_warehouse(s3_warehouse, "path_binary", "scanned")
    copied = pq.read_metadata(foreign, filesystem=open_warehouse(uri).fs).num_rows
    grouped, _ = _answers(logq, uri)
    assert sum(r["n"] for r in grouped if r["path"].endswith("/é")) == copied

    uri, foreign, _ = foreign_warehouse(f"{s3_warehouse}/bad", "path_not_utf8", "scanned")
    run = logq("errors", "--since", "3h", "--warehouse", uri)
    assert run.exit_code == 1, run.stdout
    line = _error_line(run.stderr)
    assert f"{foreign} holds column path as binary with bytes that are not UTF-8 text" in line
