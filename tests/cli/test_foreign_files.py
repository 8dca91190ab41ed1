"""Parquet files in the warehouse that logq's aggregator did not write (foreign files).

Someone copies a file from another tool into a table's folder, or an old schema wrote it: its
``timestamp`` is text, epoch integers or times past year 9999, or ``response_code`` is text.
Each was a traceback (``logq services``, the stale note of every query), a raw DuckDB type
error naming no file, or a wrong answer (``max(response_code)`` was ``abc``: DuckDB widened the
column to text). Now: an error naming the file, the column and what to do; a query whose answer
does not depend on the file's types still answers. The foreign file goes where DuckDB binds the
view (``bound``: the first file of the newest hour) or where its scan meets it later
(``scanned``), as the two fail differently. Files of an older schema version (columns missing,
none of another type) are tests/cli/test_mixed_schemas.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, logs_frame, write_frame

#: Names that list before and after the factory's ``part-0000.parquet`` in a partition.
NAMES = {"bound": "0-foreign.parquet", "scanned": "z-foreign.parquet"}
ADVICE = "logq did not write it; move it out of the table's folder or rewrite it"


def _far(t: pa.Table) -> pa.Array:
    """Times past year 9999 (three times the largest Python holds), as another tool's clock
    bug writes them."""
    return pa.array([253402300800000 * 3] * len(t), pa.int64()).cast(t["timestamp"].type)


#: How a foreign file differs from the table: the column and its values, from the rows copied.
FOREIGN: dict[str, tuple[str, Callable[[pa.Table], pa.Array]]] = {
    "ts_text": ("timestamp", lambda t: pa.array([str(v) for v in t["timestamp"].to_pylist()])),
    "ts_far": ("timestamp", _far),
    "ts_int": ("timestamp", lambda t: t["timestamp"].cast(pa.int64())),
    # Epoch milliseconds, one time for every row (a tool stamping a batch with its flush time,
    # a file of one row): the footer's statistics hold one value.
    "ts_int_one": ("timestamp", lambda t: pa.array([t["timestamp"].cast(pa.int64())[0]] * len(t))),
    "code_text": ("response_code", lambda t: pa.array(["abc"] * len(t))),
    "code_bigint": ("response_code", lambda t: t["response_code"].cast(pa.int64())),
    "code_huge": ("response_code", lambda t: pa.array([3_000_000_000] * len(t), pa.int64())),
    "duration_double": ("duration_ms", lambda t: t["duration_ms"].cast(pa.float64())),
    # Text as Parquet BINARY (no UTF8 annotation), as Spark, Hive and Impala write it: a
    # non-ASCII path in each (DuckDB's CAST of bytes to text escaped it), and bytes that are no
    # UTF-8 text in the last.
    "path_binary": ("path", lambda t: pa.array([f"{p}/é".encode() for p in t["path"].to_pylist()])),
    "path_not_utf8": ("path", lambda t: pa.array([b"/ok"] * (len(t) - 1) + [b"/\xff"])),
    # response_code as raw bytes (200 as a little-endian short: no UTF-8 text).
    "code_binary": ("response_code", lambda t: pa.array([b"\xc8\x00"] * len(t))),
}  # fmt: skip


#: How long an hour runs before the rows of its first minutes make the newest hour
#: (:func:`foreign_warehouse`): by then each of its files holds a dozen rows or so.
FULL_HOUR = timedelta(minutes=20)


def foreign_warehouse(
    root: Path | str, kind: str, where: str = "bound", table: str = "envoy_access"
) -> tuple[str, str, int]:
    """A warehouse of two services over the last two hours plus one foreign file in the newest
    hour of ``table``: the rows of a file there, copied with one column changed
    (:data:`FOREIGN`). ``root``: a folder (the warehouse is ``wh`` in it) or an ``s3://``
    warehouse. Returns the warehouse, the foreign file (as logq names it) and the rows before
    it."""
    uri = root if isinstance(root, str) else str(root / "wh")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    hour = end.replace(minute=0, second=0)
    if end - hour < FULL_HOUR:  # the hour begun holds a few rows, one file maybe one row
        end = hour - timedelta(seconds=1)
    frames = {"envoy_access": access_frame, "container_logs": logs_frame}
    frame = frames[table](300, end - timedelta(hours=2), end, ["a", "b"])
    files = write_frame(uri, table, frame, files_per_partition=2)
    fs = open_warehouse(uri).fs
    # The newest hour of all (service a's when it has one): the file DuckDB binds the view
    # to and the stale-data note reads. Service a's newest hour alone missed both in the first
    # minutes of an hour, when only service b had rows in it yet.
    newest = max(files, key=lambda f: f.split("dt=")[1])
    rows = pq.read_table(newest, filesystem=fs)
    # (one time alone would make ts_int the single-valued case ts_int_one tests on its own)
    assert len(set(rows["timestamp"].to_pylist())) > 1, "the newest file holds one time"
    column, values = FOREIGN[kind]
    foreign = f"{newest.rsplit('/', 1)[0]}/{NAMES[where]}"
    changed = rows.set_column(rows.schema.get_field_index(column), column, values(rows))
    pq.write_table(changed, foreign, filesystem=fs)
    return uri, foreign, len(frame)


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("logq: error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("ts_text", "holds column timestamp as string where the table has timestamp"),
        ("ts_far", "holds times past year 9999"),
    ],
)
def test_services_names_a_file_whose_times_it_cannot_read(
    logq, tmp_path: Path, kind: str, problem: str
) -> None:
    """Was a traceback (TypeError from text, OverflowError past 9999) and exit 1."""
    uri, foreign, _ = foreign_warehouse(tmp_path, kind)
    run = logq("services", "--warehouse", uri)
    assert run.exit_code == 1, run.stdout
    line = _error_line(run.stderr)
    assert f"the Parquet file {foreign} {problem}: " in line, line
    assert ADVICE in line and "Traceback" not in run.stderr


@pytest.mark.parametrize("kind", ["ts_text", "ts_far"])
def test_queries_answer_without_the_freshness_note(logq, tmp_path: Path, kind: str) -> None:
    """The stale-data note reads the newest files' times: it is left out, with a note that
    says why, and the answer stands. Past-9999 rows fall outside the window; text times that
    read as times are counted (DuckDB converts them, as the view casts the column)."""
    uri, foreign, truth = foreign_warehouse(tmp_path, kind, "scanned")
    run = logq("errors", "--warehouse", uri, "-f", "json")
    assert run.exit_code == 0, run.stderr
    notes = [ln for ln in run.stderr.splitlines() if foreign in ln]
    assert len(notes) == 1 and notes[0].startswith("logq: note: "), run.stderr
    assert "Traceback" not in run.stderr
    sql = "SELECT count(*) AS n FROM envoy_access"
    counted = logq("sql", sql, "--since", "3h", "--warehouse", uri, "-f", "json")
    assert counted.exit_code == 0, counted.stderr
    copied = pq.read_metadata(foreign).num_rows
    assert counted.json() == [{"n": truth + (copied if kind == "ts_text" else 0)}]


@pytest.mark.parametrize("where", ["bound", "scanned"])
@pytest.mark.parametrize(
    ("kind", "column", "found", "declared"),
    [
        ("ts_int", "timestamp", "int64", "timestamp"),
        ("code_text", "response_code", "string", "int"),
    ],
)
def test_queries_refuse_a_file_of_other_column_types_naming_it(
    logq, tmp_path: Path, kind: str, column: str, found: str, declared: str, where: str
) -> None:
    """Epoch integers were a raw DuckDB type error (Athena fails on them too, HIVE_BAD_DATA);
    text response codes answered ``max(response_code)`` with ``abc``. No row is dropped
    silently: a query reading the column fails, naming the file and the column; one that does
    not read it (``latency`` reads no response code) answers."""
    uri, foreign, _ = foreign_warehouse(tmp_path, kind, where)
    sql = "SELECT max(response_code) AS m, count(*) AS n FROM envoy_access"
    latency = logq("latency", "--warehouse", uri)
    assert latency.exit_code == (1 if column == "timestamp" else 0), latency.stderr
    for args in (["errors"], ["sql", sql, "--since", "3h"]):
        run = logq(*args, "--warehouse", uri)
        assert run.exit_code == 1, (args, run.stdout)
        line = _error_line(run.stderr)
        want = f"{foreign} holds column {column} as {found} where the table has {declared}"
        assert want in line, (args, line)
        assert ADVICE in line and "`logq ddl`" in line, line
        assert run.stdout == ""


@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_queries_name_a_file_of_values_beyond_the_table_type(
    logq, tmp_path: Path, where: str
) -> None:
    """An int64 ``response_code`` is of the table's kind (int): only its values, beyond int,
    fail the cast. That was DuckDB's "Type INT64 with value 3000000000 can't be cast", naming no
    file; its footer's statistics now name the file, the column and the values."""
    uri, foreign, _ = foreign_warehouse(tmp_path, "code_huge", where)
    sql = "SELECT max(response_code) AS m, count(*) AS n FROM envoy_access"
    for args in (["errors"], ["sql", sql, "--since", "3h"]):
        run = logq(*args, "--warehouse", uri)
        assert run.exit_code == 1, (args, run.stdout)
        line = _error_line(run.stderr)
        want = (
            f"{foreign} holds column response_code with values 3000000000 to 3000000000, "
            "beyond the table's int"
        )
        assert want in line, (args, line)
        assert ADVICE in line and "`logq ddl`" in line, line
    latency = logq("latency", "--warehouse", uri)  # reads no response code: answers
    assert latency.exit_code == 0, latency.stderr


def test_services_still_reads_epoch_integer_times(logq, tmp_path: Path) -> None:
    """Plain integers are epoch milliseconds to the freshness figures (the first writers
    stored them so): ``logq services`` lists the service; only the queries refuse the file."""
    uri, _, _ = foreign_warehouse(tmp_path, "ts_int")
    run = logq("services", "--warehouse", uri, "-f", "json")
    assert run.exit_code == 0, run.stderr
    assert [r["service"] for r in run.json()] == ["a", "b"]


@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_values_of_the_same_kind_read_as_the_declared_type(
    logq, tmp_path: Path, where: str
) -> None:
    """A bigint response code reads as the table's int; a double duration is not widened: the
    answer keeps the declared integer type wherever the file is."""
    uri, _, truth = foreign_warehouse(tmp_path, "code_bigint", where)
    sql = "SELECT max(response_code) AS m, count(*) AS n FROM envoy_access"
    run = logq("sql", sql, "--since", "3h", "--warehouse", uri, "-f", "json")
    assert run.exit_code == 0, run.stderr
    [row] = run.json()
    assert isinstance(row["m"], int) and row["n"] > truth

    uri, _, _ = foreign_warehouse(tmp_path / "double", "duration_double", where)
    sql = "SELECT max(duration_ms) AS d FROM envoy_access"
    run = logq("sql", sql, "--since", "3h", "--warehouse", uri, "-f", "json")
    assert run.exit_code == 0, run.stderr
    assert isinstance(run.json()[0]["d"], int), run.stdout


def test_a_foreign_file_among_older_schema_files_is_named(logq, tmp_path: Path) -> None:
    """Older files without ``upstream_host`` send the table through ``union_by_name``, which
    widens a column to text across files: the cast back to the declared type still fails, and
    the file is named."""
    uri, foreign, _ = foreign_warehouse(tmp_path, "code_text", "scanned")
    old = sorted(Path(uri).glob("envoy_access/service=b/dt=*/part-0000.parquet"))[0]
    pq.write_table(pq.read_table(old).drop_columns(["upstream_host"]), old)
    sql = "SELECT max(response_code) AS m, count(upstream_host) AS u FROM envoy_access"
    run = logq("sql", sql, "--since", "3h", "--warehouse", uri)
    assert run.exit_code == 1, run.stdout
    line = _error_line(run.stderr)
    assert f"{foreign} holds column response_code as string where the table has int" in line


@pytest.mark.parametrize("where", ["bound", "scanned"])
def test_a_statement_error_keeps_its_own_message_beside_a_foreign_file(
    logq, tmp_path: Path, where: str
) -> None:
    """A type error in the statement itself is the user's (exit 2, DuckDB's words), even with
    a foreign file in the table: a binder error's "explicit type casts" named the file (exit
    1), and so could a failed ``CAST`` of another column."""
    uri, foreign, _ = foreign_warehouse(tmp_path, "code_text", where)
    for sql, words in (
        ("SELECT host + 1 FROM envoy_access", "Binder Error"),
        ("SELECT CAST(path AS INT) FROM envoy_access", "Could not convert string"),
    ):
        run = logq("sql", sql, "--warehouse", uri)
        assert run.exit_code == 2, (sql, run.stderr)
        line = _error_line(run.stderr)
        assert words in line and foreign not in line, line


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["ts_int", "code_text", "code_huge"])
def test_an_s3_warehouse_names_the_foreign_file(logq, s3_warehouse: str, kind: str) -> None:
    """S3 tables are read by pyarrow with the declared schema: its error ("Failed to parse
    string", "no kernel matching input types") named no file. The file is named; a statement's
    own error keeps its message."""
    uri, foreign, _ = foreign_warehouse(s3_warehouse, kind, "scanned")
    problem = {
        "ts_int": "holds column timestamp as int64 where the table has timestamp",
        "code_text": "holds column response_code as string where the table has int",
        "code_huge": "holds column response_code with values 3000000000 to 3000000000, beyond",
    }[kind]
    run = logq("errors", "--warehouse", uri)
    assert run.exit_code == 1, run.stdout
    line = _error_line(run.stderr)
    assert f"{foreign} {problem}" in line, line
    own = logq("sql", "SELECT host + 1 FROM envoy_access", "--warehouse", uri)
    assert own.exit_code == 2 and "Binder Error" in _error_line(own.stderr), own.stderr


#: Commands that read ``timestamp`` (each filters on it; the last ``sql`` without --since
#: reads it only as a value), with the table their foreign file goes in.
TIME_READERS: list[tuple[str, list[str]]] = [
    ("envoy_access", ["errors"]),
    ("envoy_access", ["latency"]),
    ("envoy_access", ["sql", "SELECT count(*) AS n FROM envoy_access", "--since", "3h"]),
    ("envoy_access", ["sql", "SELECT min(timestamp) AS t FROM envoy_access"]),
    # (--since: tail's 15 minutes may end before the newest rows, at the hour's start in its
    # first minutes: foreign_warehouse)
    ("container_logs", ["tail", "--since", "3h"]),
]


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["ts_int", "ts_int_one"])
def test_s3_and_local_refuse_epoch_integer_times_alike(
    logq, tmp_path: Path, s3_warehouse: str, kind: str
) -> None:
    """pyarrow's scan of an S3 table casts a file's int64 ``timestamp`` to the table's type
    as epoch milliseconds, where DuckDB's cast of a local one refuses it. Only a time filter
    whose row-group statistics pyarrow could not compare ("no kernel matching input types")
    failed: ``ts_int_one``'s one value per row group passed, and so did every query without
    --since. Those answered from the integers read as times, without a word (``errors``
    counted the copied rows; epoch seconds would be 1970 and dropped by the filter). Both
    warehouses now refuse the file, naming it and the column, for every command reading it."""
    problem = "holds column timestamp as int64 where the table has timestamp"
    # The commands only read: one warehouse of each table and kind of storage serves every
    # command of that table (logq keeps nothing of a file between commands).
    built: dict[str, tuple[str, str, int]] = {}
    for table, args in TIME_READERS:
        for root in (tmp_path / table, f"{s3_warehouse}-{table}"):
            if str(root) not in built:
                built[str(root)] = foreign_warehouse(root, kind, "scanned", table)
            uri, foreign, _ = built[str(root)]
            run = logq(*args, "--warehouse", uri)
            assert run.exit_code == 1, (uri, args, run.stdout)
            line = _error_line(run.stderr)
            assert f"the Parquet file {foreign} {problem}: {ADVICE}" in line, (uri, args, line)
            assert run.stdout == ""


# --- Folders logq did not write ---------------------------------------------------------------

#: A data file copied into folders the aggregator never names (:mod:`athena.stray_folders`).
#: Each changed some answers and not others: ``service=svc=x`` failed every query without
#: --service (DuckDB: "Hive partition mismatch"), ``service=%2F..`` was answered as service
#: ``/..``, ``service=a `` and ``service=A`` as more services ``a`` that ``-s a`` never chose,
#: and a ``dt=`` that is no hour was counted by long ranges and ``logq sql`` only.
STRAYS = [
    "service=svc=x/dt=2026-11-28-00",
    "service=%2F../dt=2026-11-28-00",
    "service=a /dt=2026-11-28-00",
    "service=A/dt=2026-11-28-00",
    "service=a/dt=not-a-date",
    "service=a/dt=2026-13-45-99",
    "service=a/dt=2026-11-28-24",
    "service=a/dt=2026-11-28-00 ",
]
SHORT = ["--since", "2026-11-27T23:00:00Z", "--until", "2026-11-28T02:00:00Z"]
LONG = ["--since", "2026-11-01T00:00:00Z", "--until", "2026-11-29T00:00:00Z"]


@pytest.mark.parametrize(
    "args",
    [
        ["services"],
        ["errors", *SHORT],
        ["errors", *LONG],
        ["errors", "-s", "a", *LONG],
        ["top", *LONG],
        ["sql", "SELECT service, dt, count(*) AS n FROM envoy_access GROUP BY 1, 2 ORDER BY 1, 2"],
        ["sql", "SELECT count(*) AS n FROM envoy_access", *LONG],
    ],
)
def test_folders_logq_did_not_write_are_skipped_with_a_note(
    logq, tmp_path: Path, args: list[str]
) -> None:
    """Every command answers as without those folders (Athena's projection never reads
    them), and says which it skipped and what to do, once each listing meets them."""
    uri = str(tmp_path / "wh")
    start = datetime(2026, 11, 27, 23, tzinfo=UTC)
    frame = access_frame(300, start, start + timedelta(hours=3), ["a", "b"], seed=4)
    first = sorted(write_frame(uri, "envoy_access", frame))[0]
    clean = logq(*args, "-f", "json", "--warehouse", uri)
    assert clean.exit_code == 0 and clean.json(), clean.stderr
    for stray in STRAYS:
        folder = tmp_path / "wh" / "envoy_access" / stray
        folder.mkdir(parents=True)
        folder.joinpath("part-0000.parquet").write_bytes(Path(first).read_bytes())
    run = logq(*args, "-f", "json", "--warehouse", uri)
    assert (run.exit_code, run.stdout) == (0, clean.stdout), run.stderr
    notes = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: note: skipped ")]
    table = str(tmp_path / "wh" / "envoy_access")
    assert notes[0].startswith(f"logq: note: skipped 4 folders in {table} ("), notes
    assert notes[0].endswith(
        "so neither logq nor Athena reads them; move them out of the warehouse"
    )
    if args[0] == "services" or LONG[1] in args or "GROUP BY" in args[-1]:  # a's hours listed
        assert len(notes) == 2 and f"skipped 4 folders in {table}/service=a (" in notes[1], notes
    else:  # a short range looks its hours up by name: a's dt= folders are not listed
        assert len(notes) == 1, notes
    again = logq(*args, "-f", "json", "--warehouse", uri)  # each command notes afresh
    assert [
        ln for ln in again.stderr.splitlines() if ln.startswith("logq: note: skipped ")
    ] == notes
