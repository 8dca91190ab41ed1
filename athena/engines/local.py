"""The local engine: DuckDB over the warehouse's Parquet files, with our own partition pruning.

The canned Athena SQL is transpiled by sqlglot (:func:`athena.queries.to_duckdb`). Each table the
statement reads becomes a DuckDB view over exactly the files :func:`athena.partitions.plan` chose:

* a local warehouse: DuckDB's own Parquet reader over the file list (column pruning, row-group
  statistics, parallel scan);
* an S3 warehouse: a ``pyarrow.dataset`` over the same list through pyarrow's S3 filesystem
  (DuckDB's httpfs extension is not available offline); DuckDB scans it with projection and filter
  pushdown, so only the needed columns are fetched. It reads the files a few hundred at a time
  (:mod:`athena.engines.s3scan`): a plain dataset kept every footer it read until the query
  ended, ~50 KB a file (``logq errors --since 1d`` over 12,000 files: 870 MiB, now 300 MiB).

``service`` and ``dt`` come from the Hive-style folder names, as they do on Athena.

Local files are read by column name against the *first* file's schema, not with
``union_by_name``. With ``union_by_name = true`` DuckDB reads and keeps every file's footer when
the view is bound, and a view is bound again at each reference to it (``logq errors`` reads its
table twice): about 110 KB per file and reference, ``logq errors --since 10d`` over 24,000 files
peaked at 2.7 GB. Against the first file, binding reads one footer and the scan opens the
others one at a time: 0.41 GB for the same query, and about twice as fast. The view names every
column of :func:`full_schema`, so files of an older schema version (the writer only ever *adds*
columns, Athena follows with ``ADD COLUMNS``) cannot go unnoticed: if the first file lacks a
column, binding the view fails; if a later one does, DuckDB fails with "schema mismatch" when a
query reads that column. Either runs the query again with that table read ``union_by_name``
(the missing column NULL): mixed tables pay the old price, uniform ones (what the writer
produces) do not. Every column is cast to the type :mod:`athena.schema` declares
(:func:`_declared_column`; free where the file has that type), never to what the first file,
or ``union_by_name``, made of it: a file another tool wrote with other types (text, epoch
integers) fails the cast, and only then are footers read to name it
(:class:`~athena.foreign.ForeignFile`). On S3, pyarrow's cast of epoch integers to times does
not fail: the scan refuses such a file by the schema it read to scan it
(:func:`athena.foreign.refuse_integer_times`). Text stored as Parquet BINARY (Spark, Hive) is
read as text (``binary_as_string``, as Athena reads it; a cast of bytes escaped every
non-ASCII one). The newest hour's files go first, so that only queries that read a column the
old files lack pay it (see :meth:`LocalEngine._register`).
Nothing is printed before that is settled, so the second run shows only in the time taken: a
result of up to :data:`~athena.engines.result.STREAM_WINDOW_ROWS` rows is fetched whole first;
a larger one asked for as a stream (``logq sql``: ``stream=True``) has every file's footer read,
one at a time, before its first row goes out, and a table found to mix schemas is read
``union_by_name`` from the start. The rest of it is then fetched a batch at a time as it is
written (:class:`_LocalBatches`), in bounded memory; a file that compaction replaces after rows
went out ends it with an error that says the output is incomplete (it cannot run again unseen).

Weighed and left: one view per schema version (knowing a file's schema means reading its
footer, the cost avoided), ``parquet_metadata_cache`` (it keeps the footers: the memory avoided)
and materialising the footers once per query (still every footer in memory). Past
:data:`MANY_FILES` files a query warns on stderr and suggests ``--service`` or a shorter
``--since``; it still runs.

Written order. The tables store milliseconds, and a stack trace's lines share one: ordered by
time alone, DuckDB returned them in any order (its top-N sort is not stable). Within a Parquet
file the rows stand in the order they were written (the writer and compaction sort by time,
stably), and a partition's flush files are named from buffer segment ids, in the order they
were flushed. So a canned query that orders by Athena's hidden column ``"$path"`` (``tail.sql``)
gets views with two more columns, ``"$path"`` (DuckDB's ``filename``) and ``"$file_row_number"``
(its ``file_row_number``), and the transpiler follows each ORDER BY key on ``"$path"`` with one on
``"$file_row_number"`` in the same direction (:func:`athena.queries.written_order`): newest first
and oldest first are then the same order read from either end, ``LIMIT`` included. On S3 the
scan numbers each file's rows as pyarrow hands them out (:mod:`athena.engines.s3scan`).
Between files it is name order: the written order for one node's flushes (and for compaction,
which merges its inputs in name order), not across two nodes (whose order is not known) nor
between a compaction output (``c-<random id>``) and a flush that landed in its hour later.
Other statements get views without them: ``SELECT *`` shows the table's columns and ``dt``
only, and ``logq sql`` is refused hidden columns as before (a view's columns cannot be hidden
from ``*``, and DuckDB's virtual columns do not pass through a view). Weighed and left: a
sequence column in the files (a contract change), and ``row_number()`` over the files (it
serialises the scan). Athena runs ``tail.sql`` as written: its ``"$path"`` keeps one object's
lines together, in any order among themselves.

Once the views exist the connection is locked down (:func:`_sandbox`): DuckDB may then open only
the Parquet files the views read, cannot load extensions and cannot change a setting. ``logq sql``
runs statements people type (or paste), and DuckDB's SQL can read any file (``read_text``), write
files (``COPY ... TO``) and attach databases; the engine answers queries over the warehouse only.

A statement DuckDB refuses as written (no such column or table, a type or syntax error, the
sandbox's refusal) is a :class:`StatementError`, anything else an :class:`EngineError`: only
the caller knows whether the SQL was the user's (``logq sql``: bad input) or logq's own.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from athena.arrow_values import column_values
from athena.engines.result import (
    READ_ACCESS_HINT,
    STREAM_BATCH_ROWS,
    STREAM_WINDOW_ROWS,
    EngineError,
    EngineStuck,
    QueryResult,
    ScanBudgetError,
    StatementError,
)
from athena.engines.spill import spill_directory
from athena.foreign import DID_NOT_WRITE, ForeignFile, refuse_integer_times
from athena.moved_columns import moved_hint
from athena.queries import FILE_ROW_COLUMN, PATH_COLUMN, reads_file_rows

T = TypeVar("T")
#: Past this many Parquet files, a local query says on stderr how to make it smaller. It still
#: runs: DuckDB needs a few tens of KB per file and a second or so per thousand files.
MANY_FILES = 20_000
#: DuckDB's words for a SIGINT that landed while it ran a statement in the main thread (a
#: plain ``RuntimeError``): see :func:`duckdb_interrupts`.
DUCKDB_INTERRUPTED = "Query interrupted"
#: After Ctrl-C, how long to wait for DuckDB to stop the query before exiting anyway.
INTERRUPT_WAIT_SECONDS = 5.0
#: Meanwhile, how often to ask DuckDB again (a statement started after the last ask runs on).
_INTERRUPT_AGAIN_SECONDS = 0.05
#: The worker threads of statements DuckDB did not stop in time (:class:`EngineStuck`): while
#: one runs, the process must not end through Python's finalization (see :func:`exit_now_if_stuck`).
_LEFT_RUNNING: list[Any] = []
#: Connections (and the result readers on them) let go of after a Ctrl-C without being closed
#: (:func:`_left_to_exit`): closing them freed what DuckDB held (a sorted 20M-row result:
#: gigabytes, about a second), and so did Python's finalization; the process ends without
#: either (:func:`exit_now_if_stuck`).
_LEFT_OPEN: list[tuple[Any, ...]] = []

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from athena.partitions import Partition
    from athena.timerange import TimeRange
    from athena.warehouse import Warehouse


def _sql_str(value: str) -> str:
    """A DuckDB string literal (quotes doubled); used only for file paths we listed ourselves."""
    return "'" + value.replace("'", "''") + "'"


#: What pyarrow appends to an error raised in Python code it called (the S3 scan reads its files
#: in a Python generator, :mod:`athena.engines.s3scan`): the traceback, then the error again.
_PYTHON_DETAIL = re.compile(
    r"\. Detail: Python exception: Traceback \(most recent call last\):.*", re.S
)
#: How Python words an OSError that pyarrow raised (``[Errno 2] Path does not exist``) when the
#: error passes through Python on its way back to DuckDB; pyarrow's own words lack the number.
_PYTHON_ERRNO = re.compile(r"(IOError: )\[Errno \d+\] ")


def _duckdb_text(exc: Exception) -> str:
    """DuckDB's message for ``exc`` as it reads without the Python code between DuckDB and
    pyarrow on S3: the same words as a plain dataset scan, no traceback."""
    return _PYTHON_ERRNO.sub(r"\1", _PYTHON_DETAIL.sub("", str(exc)))


def _one_line(message: str) -> str:
    """A DuckDB message on one line: its ``LINE 1: ...`` context kept, the caret line dropped."""
    lines = [ln.strip() for ln in message.splitlines()]
    return " ".join(ln for ln in lines if ln and set(ln) != {"^"})


def _sandbox(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """Let ``con`` open only ``files`` (local Parquet the views read; none on S3, where pyarrow
    reads), load no extension and change no setting, for the rest of its life.

    ``allowed_paths`` must be set before ``enable_external_access = false`` (it cannot be widened
    afterwards), and ``lock_configuration`` makes every later ``SET``/``RESET``/``PRAGMA`` fail,
    including attempts to undo the two. Registered Arrow tables and datasets are not files and
    keep working. The listed files could still be written by ``COPY ... TO`` with
    ``USE_TMP_FILE false``: ``logq sql`` refuses every statement but a query before it gets here.
    """
    listing = ", ".join(_sql_str(f) for f in files)
    con.execute(f"SET allowed_paths = [{listing}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


#: How DuckDB names the extension a function of the statement needs: its attempt to install
#: and load it on its own (refused by the sandbox, worded as a plain ``duckdb.Error``), or its
#: advice to ``INSTALL``/``LOAD`` it when it does not try (statements logq refuses), also when
#: the extension's function is of another kind (``FROM st_point(1, 2)``: a scalar function used
#: as a table). Matched at the start of the message only: a message that quotes a value
#: (``Could not convert string '... exists in the x extension'``) is not about an extension.
_NEEDS_EXTENSION = re.compile(
    r"An error occurred while trying to automatically install the required extension '(\w+)"
    r"|Catalog Error: .* is not in the catalog, "
    r"(?:but it|a function by this name) exists in the (\w+) extension"
)
#: Extensions logq's own SQL needs (the views read Parquet, the session zone is ICU's, Trino's
#: functions map onto core and JSON ones), built into DuckDB's wheels: a DuckDB that lacks one
#: is a broken installation (exit 1), not a statement to change.
_ENGINE_EXTENSIONS = frozenset({"parquet", "icu", "json", "core_functions"})

_SANDBOX = (
    "the local engine reads only the warehouse tables (envoy_access, container_logs): "
    "no other files, extensions or settings"
)


def _refusal(exc: Exception) -> str | None:
    """The sandbox's refusal of ``exc`` as advice, or None when it is another error. A function
    of an extension DuckDB lacks (``iceberg_scan``, ``read_xlsx``, ``st_read``) is one: the
    statement must change (exit 2), and DuckDB's own advice, ``INSTALL x; LOAD x;``, is what
    ``logq sql`` refuses, so it is not repeated. So is a checkpoint DuckDB refuses inside a
    query (``force_checkpoint()`` in a ``query('...')`` string, where :mod:`athena.queries`
    does not see it): the statement must change, as for the ``CHECKPOINT`` ``logq sql``
    refuses, where it was an engine failure (exit 1)."""
    import duckdb

    text = str(exc)
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in text:
        return f"{_SANDBOX}; DuckDB refused: " + _one_line(text)
    if isinstance(exc, duckdb.TransactionException) and "CHECKPOINT" in text:
        # force_checkpoint() where athena.queries cannot see it: inside query('...')
        return (
            "the local engine runs queries over the warehouse tables only, not DuckDB's "
            "CHECKPOINT, which acts on its own database; DuckDB refused: " + _one_line(text)
        )
    extension = _NEEDS_EXTENSION.match(text)
    name = extension and (extension.group(1) or extension.group(2))
    if name and name not in _ENGINE_EXTENSIONS:
        return (
            f"{_SANDBOX}; the statement needs DuckDB's {name} extension, which it does not "
            "load: query envoy_access or container_logs in Athena SQL"
        )
    return None


#: How DuckDB words a failure to *read* data, whatever its exception class: pyarrow's scan of
#: an S3 dataset failing (S3 down, access denied: an InvalidInputException), a file that does
#: not match the first one's columns or types. Never the statement's fault.
_READ_FAILURES = (
    "reading the stream registered as",  # DuckDB 2: a registered pyarrow dataset's read failed
    "arrow_scan: get_next failed",  # the same before DuckDB 2 (pyproject allows 1.1 and later)
    "schema mismatch",
    "reading file",
)


def _statement_fault(exc: Exception) -> bool:
    """Whether DuckDB refused the statement itself (see :class:`StatementError`): a syntax,
    binder or catalog error (no such column, table or function), a type mismatch, a value the
    SQL cannot convert or that overflows, an invalid argument (a bad regular expression), a
    feature DuckDB lacks. I/O, memory, interruption and internal errors are not, and neither is
    anything :data:`_READ_FAILURES` describes."""
    import duckdb

    faults = (
        duckdb.ParserException,
        duckdb.SyntaxException,
        duckdb.BinderException,
        duckdb.CatalogException,
        duckdb.ConversionException,
        duckdb.TypeMismatchException,
        duckdb.InvalidTypeException,
        duckdb.OutOfRangeException,
        duckdb.InvalidInputException,
        duckdb.NotImplementedException,
    )
    text = str(exc)
    return isinstance(exc, faults) and not any(marker in text for marker in _READ_FAILURES)


def _bad_file(exc: Exception, files: list[str]) -> str | None:
    """The file of ``files`` a DuckDB read error names, or None (not a file's fault)."""
    text = str(exc)
    named = [f for f in files if f in text]
    return max(named, key=len) if named else None


#: How DuckDB names the column a failed cast read (``... when casting from source column
#: response_code``, ``failed to cast column "response_code" ...``).
_CAST_COLUMN = re.compile(r'(?:source column |failed to cast column "?)([A-Za-z_][A-Za-z0-9_]*)')
#: pyarrow's words, in the error DuckDB passes on from an S3 table's scan (``reading the stream
#: registered as ...``), for a file column that does not convert to the declared type
#: (:mod:`athena.engines.s3scan` reads the files with the table's schema), or whose values are
#: beyond it ("Integer value 3000000000 not in range", an int64 column of an int one).
_ARROW_CAST_FAILURES = (
    "Failed to parse string",
    "no kernel matching input types",
    "cast",
    "not in range",
)


#: How a failed cast names the integer it could not convert (DuckDB: ``Type INT64 with value
#: 3000000000 can't be cast``; pyarrow: ``Integer value 3000000000 not in range``).
_CAST_VALUE = re.compile(r"(?:with value|Integer value) (-?[0-9]+)\b")


def _cast_value(exc: Exception) -> int | None:
    """The integer a failed cast could not convert, when its error gives it: only a file whose
    statistics span it is named (:func:`athena.foreign.range_mismatch`)."""
    named = _CAST_VALUE.search(str(exc))
    return int(named.group(1)) if named else None


def _cast_failure(exc: Exception, s3: bool = False) -> str | None:
    """For a DuckDB error that is a cast which failed or cannot be done (a value that is no
    such type, ``Unimplemented type for cast``), the column it names, ``""`` when it names
    none; None for any other error. Such an error may come from a file whose column has another
    type than the table's (the view casts every column to it: :func:`_declared_column`).

    A binder error never does, even one that suggests "explicit type casts": the view's columns
    have the declared types whatever the files hold, so the statement is at fault (``host + 1``
    in ``logq sql`` must keep its own message, and read no footer). Nor does DuckDB's own cast
    over an S3 table (``s3``): pyarrow hands it the declared types, and a file's values that do
    not convert fail in pyarrow's scan, in its words; a ``CAST(path AS INT)`` of the statement
    read every footer of the scope (seconds over thousands of files) to name none."""
    import duckdb

    text = str(exc)
    if isinstance(exc, duckdb.ConversionException) and not s3:
        named = _CAST_COLUMN.search(text)
        return named.group(1) if named else ""
    if "reading the stream registered as" in text and any(
        words in text for words in (*_ARROW_CAST_FAILURES, DID_NOT_WRITE)
    ):
        return ""  # an S3 table's scan: pyarrow names neither the file nor the column
    return None


#: DuckDB's words for a Parquet file's text that is not UTF-8 (a local file, read
#: ``binary_as_string``), and pyarrow's in the error of an S3 table's scan (its cast); not a
#: statement's own failed cast of bytes ("could not convert blob to string").
_NOT_UTF8 = ("Invalid string encoding found in Parquet file", "Invalid UTF8 payload")


def _schema_mismatch(exc: Exception) -> bool:
    """Whether ``exc`` is DuckDB finding a file whose columns differ from the first file's: one
    lacking a column ("schema mismatch in glob") or holding it with another type (its cast
    failed while reading the file). Neither is damage: the table is read ``union_by_name``."""
    import duckdb

    text = str(exc)
    if isinstance(exc, duckdb.InvalidInputException) and "schema mismatch" in text:
        return True
    return isinstance(exc, duckdb.ConversionException) and (
        "failed to cast column" in text and "reading file" in text
    )


#: DuckDB's words for a division by zero (with ``integer_division`` set, every ``/``: its
#: message shows the division as ``//`` and advises a ``SET``, which logq refuses).
_DIVISION_BY_ZERO = "Division by zero in expression"
#: What logq says instead.
DIVISION_BY_ZERO_TEXT = (
    "division by zero: Athena refuses it too for integers and decimals; divide by nullif(x, 0) "
    "to get NULL, or wrap the division in try(...). A DOUBLE divided by 0 is Infinity or NaN "
    "on Athena, and in logq sql where the statement shows the DOUBLE: write CAST(x AS double) "
    "/ y"
)

#: DuckDB's words for ``r[1]`` on a ROW with field names, which its ``[]`` cannot read by
#: position (its ``ROW(...)`` has names); logq reads such a field where the statement shows
#: the ROW (:func:`athena.trinocalls.subscript`), and says this where it does not.
_ROW_POSITION = "struct_extract with an integer key can only be used on unnamed structs"
#: What logq says instead.
ROW_POSITION_TEXT = (
    "a ROW's field by position (r[1]) is read locally only where the statement shows the ROW "
    "(ROW(...), CAST(... AS ROW(...)), or a column a subquery or WITH query defines as one, "
    "not through *); read the field by name (r.x), or run the statement with --engine athena"
)


def unreadable_file(path: str, exc: Exception) -> EngineError:
    """One line naming the file and what to do; DuckDB's reason without the path repeated (the
    path can be long, and the message is cut at about 400 characters)."""
    reason = (_duckdb_text(exc).splitlines() or [""])[0]
    for named in (f"'{path}'", f'"{path}"', path):  # "Cannot open file "": ..." was left
        reason = reason.replace(named, "")
    reason = " ".join(reason.split()).replace(" :", ":")
    if "Permission denied" in reason:
        return EngineError(
            f"cannot read the Parquet file {path} ({reason}): {READ_ACCESS_HINT}, or move it "
            "out of the warehouse, and run the command again"
        )
    return EngineError(
        f"cannot read the Parquet file {path} ({reason}); if it is damaged or not Parquet "
        "(e.g. a truncated copy), move it out of the warehouse and run the command again"
    )


def _declared_column(field: pa.Field) -> str:
    """``field`` of the view as the table declares it: its file column cast to the declared
    type. DuckDB takes a column's type from the first file (or, ``union_by_name``, widens it
    over all of them): a file another tool wrote with ``response_code`` as text made the column
    text, and ``max(response_code)`` answered ``abc``. Cast, a value that is no such type fails
    the query (:func:`athena.foreign.find_foreign` then names the file); where the file's type
    is the declared one, DuckDB drops the cast when it binds the view, and filters still reach
    the Parquet scan (row groups skipped by their statistics)."""
    import pyarrow as pa

    name = f'"{field.name}"'
    if field.name in ("service", "dt"):  # from the folder names, read as VARCHAR
        return name
    if pa.types.is_timestamp(field.type):
        duck = "TIMESTAMPTZ" if field.type.tz else "TIMESTAMP"
    else:
        duck = _DUCKDB_TYPES[str(field.type)]
    return f"CAST({name} AS {duck}) AS {name}"


#: DuckDB's names of the Arrow types :mod:`athena.schema` declares (timestamps aside); a
#: column of another type added there fails every local query until it is named here.
_DUCKDB_TYPES = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT"}


def full_schema(table: str) -> pa.Schema:
    """The table as queries see it: the file columns plus ``service`` and ``dt``."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    base = schema_table(table).arrow_schema()
    return base.append(pa.field("service", pa.string())).append(pa.field("dt", pa.string()))


def _integral_decimals_to_int(table: pa.Table) -> pa.Table:
    """DuckDB sums and counts as HUGEINT (DECIMAL(38,0) in Arrow); Athena returns bigint.

    A column holding a value past bigint stays a decimal (``CAST('99999999999999999999' AS
    DECIMAL(38,0))``, which Athena answers, or a sum past 2**63): casting it failed the whole
    query with Arrow's bare "Integer value out of bounds". :func:`_python_rows` makes its
    values Python ints, exact in every output format."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if _whole_decimal(f.type):
            try:
                column = table.column(i).cast(pa.int64())
            except pa.ArrowInvalid:  # a value past bigint: kept whole, as a decimal
                continue
            table = table.set_column(i, f.name, column)
    return table


def _whole_decimal(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_decimal(kind) and kind.scale == 0


class LocalEngine:
    """Runs Athena SQL on DuckDB over one warehouse."""

    name = "local"

    def __init__(self, warehouse: str | None = None, max_scan_bytes: int | None = None) -> None:
        from athena.warehouse import open_warehouse

        self.warehouse: Warehouse = open_warehouse(warehouse)
        self.max_scan_bytes = max_scan_bytes

    def plan(self, table: str, services: list[str] | None, trange: Any | None) -> list[Partition]:
        """The partitions a query over ``table`` will read (see :func:`athena.partitions.plan`)."""
        from athena.partitions import plan

        return plan(self.warehouse, table, services, trange)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        with duckdb_interrupts():
            return self._connected()

    def _connected(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(":memory:")
        # date_trunc, casts and printing of TIMESTAMPTZ follow the session zone: make it UTC.
        con.execute("SET TimeZone = 'UTC'")
        # The SQL is Athena's (Trino): an integer divided by an integer is an integer there,
        # truncated toward zero (7/2 = 3, count_if(...)*100/count(*) a whole percent).
        con.execute("SET integer_division = true")
        # DuckDB draws a progress bar on stdout for queries past 2 s when it thinks it runs
        # interactively (``python -c``, notebooks): it would land in the JSON/CSV output.
        con.execute("SET enable_progress_bar = false")
        # A query larger than memory spills to disk: DuckDB's default is ./.tmp, in whatever
        # folder logq was started from (a read-only root or cwd failed with "Failed to create
        # directory .tmp"). Under $TMPDIR instead, one folder per process, removed at exit and
        # by the next logq if this one is killed; none at all without a writable temporary
        # folder (every query failed there).
        spill = spill_directory().replace("'", "''")
        con.execute(f"SET temp_directory = '{spill}'")
        return con

    def _file_error(self, path: str, exc: Exception) -> Exception:
        """A file DuckDB could not read: gone since the listing (:class:`_Vanished`, the query
        runs again over a fresh listing) or damaged (:func:`unreadable_file`)."""
        import pyarrow.fs as pafs

        try:
            gone = self.warehouse.fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:
            gone = False
        return _Vanished(path) if gone else unreadable_file(path, exc)

    def _register(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        parts: list[Partition],
        rows: TimeRange | None = None,
        by_name: bool = False,
        positions: bool = False,
    ) -> None:
        """``table`` as a view of ``parts``; with ``rows``, only rows with a ``timestamp`` in it
        (partitions are whole hours, ``logq sql --since 15m`` means the last 15 minutes).
        With ``positions``, the view also has each row's file and place in it (``"$path"``,
        ``"$file_row_number"``: see the module docstring, "Written order").

        Local files are matched to the first file's columns unless ``by_name`` (DuckDB's
        ``union_by_name``, for tables that mix schema versions: see the module docstring);
        :class:`_MixedSchemas` when the first file lacks a column of the table."""
        import pyarrow as pa

        schema = full_schema(table)
        # The newest hour first: DuckDB takes the first file's columns, and files of an older
        # schema version are the older ones. So queries that do not read the columns they lack
        # stay on the cheap path, and those that do fail early: each service's oldest files
        # come first after it (the partitions are in service, dt order).
        if parts:
            first = max(range(len(parts)), key=lambda i: parts[i].dt)
            parts = [parts[first], *parts[:first], *parts[first + 1 :]]
        files = [f.path for p in parts for f in p.files]
        if not files:
            if positions:
                schema = schema.append(pa.field(PATH_COLUMN, pa.string()))
                schema = schema.append(pa.field(FILE_ROW_COLUMN, pa.int64()))
            con.register(table, pa.Table.from_batches([], schema=schema))
            return
        where = ""
        if rows is not None:
            where = (
                f' WHERE "timestamp" >= TIMESTAMPTZ {_sql_str(rows.since.isoformat())}'
                f' AND "timestamp" < TIMESTAMPTZ {_sql_str(rows.until.isoformat())}'
            )
        if not self.warehouse.is_s3:
            import duckdb

            listing = ", ".join(_sql_str(f) for f in files)
            columns = ", ".join(_declared_column(field) for field in schema)
            if positions:  # DuckDB's virtual columns of read_parquet: only tail.sql reads them
                columns += f', filename AS "{PATH_COLUMN}", file_row_number AS "{FILE_ROW_COLUMN}"'
            try:  # binding reads the first footer (all of them by_name): a damaged one fails now
                con.execute(
                    f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM (SELECT {columns} '
                    f"FROM read_parquet([{listing}], hive_partitioning = true, "
                    f"union_by_name = {str(by_name).lower()}, binary_as_string = true, "
                    "hive_types = {'service': VARCHAR, 'dt': VARCHAR}))" + where
                )
            except duckdb.BinderException as exc:
                if by_name:
                    raise EngineError(
                        f"DuckDB could not read the {table} files: {_one_line(str(exc))}"
                    ) from exc
                raise _MixedSchemas(table) from exc  # our own SQL: the first file lacks a column
            except duckdb.Error as exc:
                foreign = self._foreign(exc, {table: parts})
                if foreign is not None:
                    raise foreign from exc
                bad = _bad_file(exc, files)
                if bad is not None:
                    raise self._file_error(bad, exc) from exc
                raise EngineError(
                    f"DuckDB could not read the {table} files: {_one_line(str(exc))}"
                ) from exc
            return
        import pyarrow.dataset as ds

        from athena.engines.s3scan import chunked_dataset

        dataset = chunked_dataset(
            files,
            schema,
            self.warehouse.fs,
            self.warehouse.table_root(table),
            ds.partitioning(
                pa.schema([("service", pa.string()), ("dt", pa.string())]), flavor="hive"
            ),
            check=functools.partial(refuse_integer_times, table),
            positions=(PATH_COLUMN, FILE_ROW_COLUMN) if positions else None,
        )
        if not where:
            con.register(table, dataset)
            return
        con.register(f"_logq_{table}_files", dataset)
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM "_logq_{table}_files"{where}'
        )

    def prepare(
        self,
        sql: str,
        params: dict[str, Any],
        scopes: dict[str, list[Partition]],
        explain: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The DuckDB statement and bound values for Athena ``sql`` (what --dry-run prints);
        ``explain`` (``EXPLAIN``, ``EXPLAIN ANALYZE``) is put before the transpiled query."""
        from athena.queries import to_duckdb

        duck_sql, bound = to_duckdb(sql, params)
        return (f"{explain}\n{duck_sql}" if explain else duck_sql), bound

    def run(
        self,
        sql: str,
        params: dict[str, Any],
        scopes: dict[str, list[Partition]] | None = None,
        rows: TimeRange | None = None,
        explain: str | None = None,
        max_rows: int | None = None,
        exact: bool = False,
        stream: bool = False,
    ) -> QueryResult:
        """Run Athena ``sql`` with ``params`` over the partitions in ``scopes``.

        ``scopes`` None: every table the statement reads is read in full (found by parsing it).
        Given, it must name every warehouse table the statement reads (canned queries know).
        ``rows``: the tables show only rows whose ``timestamp`` falls in it (``logq sql``; the
        canned queries filter in their own SQL). ``explain``: see :meth:`prepare`.
        ``max_rows``: fetch only the first rows (``logq sql --limit``): DuckDB streams the
        result and stops, instead of building all of it. ``stream``: a result larger than
        :data:`~athena.engines.result.STREAM_WINDOW_ROWS` comes back with its first rows and the
        rest in :attr:`QueryResult.more`, fetched as it is read (close the result when done).
        """
        if scopes is None:
            from athena.queries import tables_of
            from athena.schema import TABLES

            scopes = {name: self.plan(name, None, None) for name in tables_of(sql) & set(TABLES)}
        _warn_if_many(scopes)
        by_name: set[str] = set()  # tables found to mix schema versions: read union_by_name
        attempt = 0
        while True:
            try:
                return self._run_once(sql, params, scopes, rows, explain, max_rows, by_name, stream)
            except _MixedSchemas as mixed:
                if mixed.tables <= by_name:  # cannot happen (read by name, no mismatch): no loop
                    raise EngineError(f"DuckDB could not read the {mixed} files") from mixed
                by_name |= mixed.tables  # one more run per table, at most
            except _Vanished as gone:
                attempt += 1
                if attempt == _ATTEMPTS:
                    raise EngineError(
                        f"the Parquet file {gone.path} was replaced while the query read it, "
                        f"{_ATTEMPTS} times (compaction running?); run the command again"
                    ) from None
                scopes = {t: self._relisted(parts, exact) for t, parts in scopes.items()}

    def _relisted(self, parts: list[Partition], exact: bool = False) -> list[Partition]:
        """The same partitions with their files listed again (compaction swapped some); with
        ``exact``, only the files of ``parts`` that are still there (and still stand)."""
        from athena.partitions import Partition, list_files

        out = []
        for p in parts:
            files = list_files(self.warehouse, self.warehouse.path(p.relative))
            if exact:
                chosen = {f.path for f in p.files}
                files = tuple(f for f in files if f.path in chosen)
            if files:
                out.append(Partition(p.table, p.service, p.dt, files))
        return out

    def _run_once(
        self,
        sql: str,
        params: dict[str, Any],
        scopes: dict[str, list[Partition]],
        rows: TimeRange | None,
        explain: str | None,
        max_rows: int | None,
        by_name: set[str],
        stream: bool = False,
    ) -> QueryResult:
        duckdb = load_duckdb()
        duck_sql, bound = self.prepare(sql, params, scopes, explain)
        positions = reads_file_rows(sql)
        total = sum(p.bytes for parts in scopes.values() for p in parts)
        if self.max_scan_bytes is not None and total > self.max_scan_bytes:
            raise ScanBudgetError(
                f"the query would read {total:,} bytes of Parquet, over --max-scan-bytes "
                f"{self.max_scan_bytes:,}; narrow --since/--until or --service"
            )
        files = [f.path for parts in scopes.values() for p in parts for f in p.files]
        con = self._connect()
        more: _LocalBatches | None = None
        busy = False  # a statement DuckDB did not stop still holds the connection
        try:

            def set_up() -> None:  # binding reads footers (every one by_name): not instant
                for name, parts in scopes.items():
                    self._register(
                        con, name, parts, rows, by_name=name in by_name, positions=positions
                    )
                _sandbox(con, [] if self.warehouse.is_s3 else files)

            _interruptible(con, set_up)
            started = time.perf_counter()
            try:
                if stream:
                    reader, table = _interruptible(
                        con, lambda: _first_window(con.sql(duck_sql, params=bound), max_rows)
                    )
                else:
                    reader = None
                    table = _interruptible(
                        con, lambda: _fetch(con.sql(duck_sql, params=bound), max_rows)
                    )
            except duckdb.Error as exc:
                raise self._query_error(exc, scopes, by_name, files, sql) from exc
            elapsed = time.perf_counter() - started
            if reader is not None:  # more to come: settle the schemas before any row goes out
                self._check_uniform(scopes, by_name)
                left = None if max_rows is None else max_rows - table.num_rows
                error = self._stream_error(scopes, files)
                more = _LocalBatches(con, reader, error, left, sent=table.num_rows)
        except EngineStuck:
            busy = True
            raise
        except KeyboardInterrupt:
            if more is None:
                _left_to_exit(con)
                busy = True  # left open: the process ends without closing it
            raise
        finally:
            if more is None and not busy:
                reader = None  # the pending result holds the connection
                con.close()
        table = _integral_decimals_to_int(table)
        from athena.queries import athena_column_name, unnamed_marker

        marker = unnamed_marker(sql)
        return QueryResult(
            columns=[athena_column_name(c, i, marker) for i, c in enumerate(table.column_names)],
            rows=_python_rows(table),
            engine=self.name,
            elapsed_s=elapsed,
            scanned_bytes=total,
            partitions=[p.relative for parts in scopes.values() for p in parts],
            files=len(files),
            sql=duck_sql,
            scopes=scopes,
            more=more,
        )

    def _query_error(
        self,
        exc: Exception,
        scopes: dict[str, list[Partition]],
        by_name: set[str],
        files: list[str],
        sql: str | None = None,
    ) -> Exception:
        """What a DuckDB error while running the query means: tables that mix schemas or a file
        that vanished (run again), a damaged file, the sandbox's refusal, the statement's own
        fault (:class:`StatementError`), or another engine failure. ``sql``: the statement, whose
        unnamed columns the message then calls so (:func:`athena.queries.unnamed_in_message`)."""
        foreign = self._foreign(exc, scopes)
        if foreign is not None:
            return foreign
        mixed = _mixed_tables(exc, scopes, by_name, self.warehouse.is_s3)
        if mixed:
            return _MixedSchemas(*mixed)
        bad = _bad_file(exc, files)
        if bad is not None:
            return self._file_error(bad, exc)
        refused = _refusal(exc)
        if refused is not None:
            return StatementError(refused)
        failed = StatementError if _statement_fault(exc) else EngineError
        text = _one_line(_duckdb_text(exc))
        if _DIVISION_BY_ZERO in text:
            return failed(DIVISION_BY_ZERO_TEXT)
        if _ROW_POSITION in text:
            return failed(ROW_POSITION_TEXT)
        if sql is not None:
            from athena.queries import unnamed_in_message, unnamed_marker

            text = unnamed_in_message(text, unnamed_marker(sql))
        return failed(f"DuckDB could not run the query: {text}{moved_hint(text)}")

    def _foreign(self, exc: Exception, scopes: dict[str, list[Partition]]) -> ForeignFile | None:
        """The file whose column types differ from its table's when ``exc`` is a cast that
        failed (:func:`_cast_failure`), else None. Footers are read only here, after DuckDB
        raised, one at a time: the files DuckDB names first, then each table's first file
        (whose types DuckDB took for the column), then the others: all of them, as a cast
        failing in a filter pushed into the scan names no file either; none where the view's
        cast named cannot be a file's (:func:`athena.foreign.cast_can_fail`), unless the
        reader's cast failed: two files hold the column with other types (a foreign first
        file with ``path`` as int64, the others' text cast to it). Or, for text that is
        not UTF-8 (:data:`_NOT_UTF8`), the file holding such bytes in a column stored as raw
        bytes (:func:`athena.foreign.utf8_mismatch`). None leaves DuckDB's message (the
        statement's own failed ``CAST(path AS INT)``)."""
        column, text = _cast_failure(exc, self.warehouse.is_s3), str(exc)
        utf8 = any(words in text for words in _NOT_UTF8)
        if column is None and not utf8:
            return None
        from athena.foreign import cast_can_fail, find_foreign

        failed, reader = _cast_value(exc), _schema_mismatch(exc)
        for table, parts in scopes.items():
            if not parts or not (utf8 or reader or cast_can_fail(table, column or "")):
                continue
            paths = [f.path for p in parts for f in p.files]
            named = [path for path in paths if path in text]
            newest = max(p.dt for p in parts)
            bound = next(p for p in parts if p.dt == newest).files[:1]  # as _register orders
            first = [*named, *(f.path for f in bound)]
            found = find_foreign(
                self.warehouse, table, paths, first, column or "", failed, utf8=utf8
            )
            if found is not None:
                return found
        return None

    def _stream_error(
        self, scopes: dict[str, list[Partition]], files: list[str]
    ) -> Callable[[Exception, int], Exception]:
        """How a DuckDB error reads once ``sent`` rows went out: as :meth:`_query_error`, but
        what would have run the query again is now an error that says the output is cut short
        (the rows printed cannot be taken back)."""

        def error(exc: Exception, sent: int) -> Exception:
            found = self._query_error(exc, scopes, set(scopes), files)
            if isinstance(found, _Vanished):
                return EngineError(
                    f"the Parquet file {found.path} was replaced while the result was being "
                    f"written (compaction running?); the output stops after {sent:,} rows and "
                    "is incomplete: run the command again"
                )
            return found

        return error

    def _check_uniform(self, scopes: dict[str, list[Partition]], by_name: set[str]) -> None:
        """Raise :class:`_MixedSchemas` for the local tables whose files do not all have the
        same columns, before a streamed result's first row is printed: DuckDB would otherwise
        find the mismatch when its scan reaches an older file, after rows went out, too late to
        run the query again ``union_by_name``. Reads one footer at a time (a few ms a file), so
        memory stays what the query needs; only results larger than the window pay it."""
        if self.warehouse.is_s3:  # read by pyarrow against the full schema: never mismatched
            return
        mixed = [
            table
            for table, parts in scopes.items()
            if table not in by_name and not self._uniform([f.path for p in parts for f in p.files])
        ]
        if mixed:
            raise _MixedSchemas(*mixed)

    def _uniform(self, files: list[str]) -> bool:
        """Whether every file of ``files`` has the same column names and types."""
        import pyarrow.parquet as pq

        seen: tuple[tuple[str, str], ...] | None = None
        for path in files:
            try:
                schema = pq.read_schema(path)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise self._file_error(path, exc) from exc
            columns = tuple((f.name, str(f.type)) for f in schema)
            if seen is not None and columns != seen:
                return False
            seen = columns
        return True


class _LocalBatches:
    """The rest of a streamed local result (:class:`~athena.engines.result.RowBatches`): DuckDB's
    Arrow reader read a batch at a time, each batch fetched in a worker thread as the first
    window was (Ctrl-C interrupts DuckDB) and turned into Python rows only when asked for, so
    the rows held at once are one batch, whatever the size of the result."""

    def __init__(
        self,
        con: Any,
        reader: Any,
        error: Callable[[Exception, int], Exception],
        left: int | None,
        sent: int,
    ) -> None:
        self._con = con
        self._reader = reader
        self._error = error
        self._left = left
        self.sent = sent
        """Rows handed out so far, the first window's included (for the error text)."""

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        import duckdb

        try:
            while self._con is not None and (self._left is None or self._left > 0):
                try:
                    batch = _interruptible(self._con, self._read)
                except duckdb.Error as exc:
                    raise self._error(exc, self.sent) from exc
                if batch is None:
                    return
                if self._left is not None:
                    batch = batch.slice(0, self._left)
                    self._left -= batch.num_rows
                self.sent += batch.num_rows
                yield _batch_rows(batch)
        except KeyboardInterrupt:  # while a batch was fetched
            self.close(interrupted=True)
            raise
        finally:
            self.close()

    def _read(self) -> pa.RecordBatch | None:
        return _next_batch(self._reader)

    def close(self, interrupted: bool = False) -> None:
        """Let go of the reader, then the connection (DuckDB stops the query). ``interrupted``
        (the program ends on a Ctrl-C): the query is stopped, but neither is closed; the
        process ends without freeing them (:func:`_left_to_exit`)."""
        import duckdb

        con, reader = self._con, self._reader
        self._con = self._reader = None
        if con is None:
            return
        if interrupted:
            _left_to_exit(con, reader)
            return
        del reader
        with contextlib.suppress(duckdb.Error):
            con.close()


#: Runs of one query when files it was given vanish (compaction replaced them) meanwhile.
_ATTEMPTS = 3


class _Vanished(Exception):
    """A file the query was given is gone: compaction merged it since the listing."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _MixedSchemas(Exception):
    """Files of these tables differ in columns: read them ``union_by_name`` and run again."""

    def __init__(self, *tables: str) -> None:
        super().__init__(", ".join(tables))
        self.tables = set(tables)


def _mixed_tables(
    exc: Exception, scopes: dict[str, list[Partition]], by_name: set[str], s3: bool
) -> set[str]:
    """The tables not yet read ``union_by_name`` whose files ``exc`` says mix schemas: the
    table of the file it names, or every such table when it names none of theirs."""
    if s3 or not _schema_mismatch(exc):
        return set()
    candidates = {t: parts for t, parts in scopes.items() if t not in by_name and parts}
    text = str(exc)
    named = {
        t for t, parts in candidates.items() if any(f.path in text for p in parts for f in p.files)
    }
    return named or set(candidates)


def _warn_if_many(scopes: dict[str, list[Partition]]) -> None:
    """Say on stderr how to narrow a query that reads more than :data:`MANY_FILES` files (it
    runs anyway: it worked before, only slowly and with a lot of memory)."""
    count = sum(len(p.files) for parts in scopes.values() for p in parts)
    if count > MANY_FILES:
        hours = len({p.dt for parts in scopes.values() for p in parts})
        sys.stderr.write(
            f"logq: warning: this query reads {count:,} Parquet files ({hours:,} hours); "
            "DuckDB needs memory and time for each: narrow it with --service or a shorter "
            "--since\n"
        )
        sys.stderr.flush()


@contextlib.contextmanager
def duckdb_interrupts() -> Iterator[None]:
    """Raise a Ctrl-C that DuckDB reported as its own error as the ``KeyboardInterrupt`` it is.

    A statement DuckDB runs in the main thread checks Python's signals itself; a SIGINT that
    lands then comes out as ``RuntimeError("Query interrupted")``, which no handler of logq
    took for a Ctrl-C: a traceback and exit 1 (seen when it landed while the views were being
    made). Long statements run in a worker thread instead (:func:`_interruptible`); this is
    for the short ones that stay in the main thread (settings, a ``--grep`` check)."""
    try:
        yield
    except RuntimeError as exc:
        if type(exc) is RuntimeError and str(exc) == DUCKDB_INTERRUPTED:
            raise KeyboardInterrupt from exc
        raise


def load_duckdb() -> ModuleType:
    """``duckdb``, imported (the first time) with Ctrl-C held back until the import is done.

    Its extension runs Python while it initialises (enum classes, imports): a Ctrl-C raised
    there aborted the process ("Critical nanobind error: ... KeyboardInterrupt", status 134)
    or failed the import (``ImportError: Encountered an error while initializing the
    extension``, a traceback and exit 1). Blocking the signal is not enough by then (another
    thread, one of the listing's or Arrow's, takes it and Python still raises it in the main
    thread), so for the import SIGINT's handler only notes it; the handler that was there gets
    it when the import is done: a ``KeyboardInterrupt`` where logq handles one."""
    import signal
    import threading

    if "duckdb" in sys.modules or threading.current_thread() is not threading.main_thread():
        import duckdb

        return duckdb
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, the default death, or not Python's: nothing raised
        import duckdb

        return duckdb
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        import duckdb
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            signal.raise_signal(signal.SIGINT)  # the KeyboardInterrupt, now that it can be one
    return duckdb


def _interruptible(con: Any, work: Callable[[], T]) -> T:
    """``work()`` (a query on ``con``) in a worker thread, so that Ctrl-C stops it.

    A query running in the main thread held it inside DuckDB: Python's SIGINT handler never
    ran, and ``logq sql`` with a runaway join ignored Ctrl-C for minutes. Here the main thread
    waits, takes the KeyboardInterrupt, and has DuckDB interrupt the query
    (``con.interrupt()``, made for a call from another thread). It waits on an Event, not
    ``Thread.join``: a join interrupted by Ctrl-C marks a running thread as ended on Python
    3.11, and the connection was then closed under the query (DuckDB aborted at exit)."""
    import threading

    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the main thread as it is
            outcome.append((False, exc))
        finally:
            done.set()

    worker = threading.Thread(target=run, name="logq-duckdb", daemon=True)
    try:
        # Started inside the try: a Ctrl-C that lands while it starts (the thread may already
        # run) must stop it too; the connection was closed under its statement and DuckDB
        # aborted the process ("connection is busy", then SIGABRT). (If the thread never
        # started, the wait below runs out its deadline.)
        worker.start()
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        # Again and again: DuckDB forgets an interrupt that lands between two statements (each
        # new one starts uninterrupted), and ``work`` may be several (the set-up's views, then
        # the lockdown), with Python between them; the first may also come before the
        # statement began.
        deadline = time.monotonic() + INTERRUPT_WAIT_SECONDS
        con.interrupt()
        while not done.wait(_INTERRUPT_AGAIN_SECONDS) and time.monotonic() < deadline:
            con.interrupt()
        # Its error's traceback holds the result reader, and with it the connection: let go,
        # or closing the connection fails ("busy").
        outcome.clear()
        if not done.is_set():
            # DuckDB did not stop (a hung read, a Python function): the statement still holds
            # the connection, whose close would fail ("connection is busy", a traceback). The
            # caller leaves it open (:class:`EngineStuck`), and the process ends without it
            # (:func:`exit_now_if_stuck`).
            _LEFT_RUNNING.append(worker)
            raise EngineStuck(INTERRUPT_WAIT_SECONDS) from None
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _left_to_exit(con: Any, *held: Any) -> None:
    """After a Ctrl-C: stop what ``con`` runs, and keep it (and ``held``, a result reader on
    it) unclosed until the process ends, without finalization (:func:`exit_now_if_stuck`).

    Closing it let DuckDB free the result it held: after a Ctrl-C while a sorted 20M-row result
    (10 GB resident) was written as CSV, logq spent 0.8-1.5 s in ``close`` and the finalization
    before it began to exit; now 0.02 s. The kernel's teardown of that memory as the process
    ends remains (0.8-1.4 s on a 2-core VM), as it does for any process that holds it. The
    spill folder is removed all the same."""
    import duckdb

    with contextlib.suppress(duckdb.Error):
        con.interrupt()  # a pipeline still running stops; a finished result stays as it is
    _LEFT_OPEN.append((con, *held))


def exit_now_if_stuck(status: int) -> None:
    """End the process at once with ``status`` if a statement DuckDB did not stop still runs
    (:class:`EngineStuck`), or a connection was left open after a Ctrl-C (:func:`_left_to_exit`):
    output flushed and this process's spill folder removed, but no interpreter finalization.

    Python's exit with that statement running aborted the process whenever the statement
    came back into Python while the interpreter was finalizing (a Python function in the SQL;
    an S3 warehouse's scan, whose batches come from a Python generator): the thread, told to
    exit, unwound through DuckDB's C++ frames ("FATAL: exception not rethrown", or "Fatal
    Python error: PyGILState_Release"), status 134 instead of 130. Only the folder removal of
    the exit handlers matters here (the lock file goes with the process)."""
    if not _LEFT_OPEN and not any(worker.is_alive() for worker in _LEFT_RUNNING):
        return
    import os
    import signal
    import threading

    from athena.engines.spill import remove_mine

    # From here a Ctrl-C (the user's second, as logq seems slow to end) ends it at once, with
    # the same status: raised as a KeyboardInterrupt out of a flush or the folder's removal, it
    # was a traceback, then the very finalization this skips (with a statement still running:
    # status 134). A folder left so is swept by the next logq (its lock goes with the process).
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(status))
    remove_mine()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader gone (EPIPE), a closed terminal
            stream.flush()
    os._exit(status)


def _fetch(relation: Any, max_rows: int | None) -> pa.Table:
    """The rows of a DuckDB relation as Arrow: all, or the first ``max_rows`` only."""
    import pyarrow as pa

    if max_rows is None:
        return relation.to_arrow_table()
    reader = relation.to_arrow_reader(min(max_rows, 100_000))
    batches, count = [], 0
    while (batch := _next_batch(reader)) is not None:
        batches.append(batch)
        count += batch.num_rows
        if count >= max_rows:
            break
    return pa.Table.from_batches(batches, reader.schema).slice(0, max_rows)


def _first_window(relation: Any, max_rows: int | None) -> tuple[Any, pa.Table]:
    """The first rows of a DuckDB relation, batch by batch, until the result ends, ``max_rows``
    is reached or there are more than :data:`STREAM_WINDOW_ROWS`: (the reader, None when
    nothing is left to read; the rows so far, at most ``max_rows``)."""
    import pyarrow as pa

    reader = relation.to_arrow_reader(STREAM_BATCH_ROWS)
    batches, count = [], 0
    while count <= STREAM_WINDOW_ROWS and (max_rows is None or count < max_rows):
        batch = _next_batch(reader)
        if batch is None:
            return None, pa.Table.from_batches(batches, reader.schema)
        batches.append(batch)
        count += batch.num_rows
    table = pa.Table.from_batches(batches, reader.schema)
    if max_rows is not None and count >= max_rows:
        return None, table.slice(0, max_rows)
    return reader, table


def _next_batch(reader: Any) -> pa.RecordBatch | None:
    """The reader's next batch, None at the end. A DuckDB error while it streams reaches
    pyarrow's reader as an ``OSError`` holding DuckDB's message: it is raised again as the DuckDB
    exception that message names, so that it reads as the same failure of a whole fetch does
    (a damaged file, a schema mismatch, the statement's own fault)."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
    except OSError as exc:
        raise _duckdb_error(exc) from exc


#: How DuckDB's messages start: the kind of error (``Invalid Input Error: ...``).
_DUCKDB_KIND = re.compile(r"([A-Za-z][A-Za-z ]*?) Error: ")


def _duckdb_error(exc: OSError) -> Exception:
    """The DuckDB exception an Arrow stream's ``OSError`` reports (``Conversion Error: ...``:
    ``duckdb.ConversionException``), else ``duckdb.Error``, with the same message."""
    import duckdb

    text = str(exc)
    match = _DUCKDB_KIND.match(text)
    words = match.group(1).split() if match else []
    kind = getattr(duckdb, "".join(w[:1].upper() + w[1:] for w in words) + "Exception", None)
    if not (isinstance(kind, type) and issubclass(kind, duckdb.Error)):
        kind = duckdb.Error
    return kind(text)


def _batch_rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    """One streamed batch as Python rows, converted as a whole result is."""
    import pyarrow as pa

    return _python_rows(_integral_decimals_to_int(pa.Table.from_batches([batch])))


def _python_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The rows as Python values, column by column (names may repeat: ``SELECT 1 a, 2 a``).

    A whole-number DECIMAL column (one with a value past bigint) is Python ints, printed as the
    bigint columns are, digit for digit. A column Python cannot hold (a timestamp or date past
    year 9999, DuckDB's ``infinity``) is shown as DuckDB's own text for it (``33658-09-27
    01:46:40+00``) rather than failing the whole result: the value is real, people asked for
    it, and only Python's datetime is short.
    """
    columns: list[list[Any]] = []
    for column in table.columns:
        try:
            values = column_values(column)
        except (OverflowError, ValueError):
            values = _as_text(column)
        else:
            if _whole_decimal(column.type):  # past bigint (:func:`_integral_decimals_to_int`)
                values = [None if v is None else int(v) for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True)) if columns else [()] * table.num_rows


def _as_text(column: pa.ChunkedArray) -> list[str | None]:
    """``column`` as DuckDB prints each value (UTC), NULL kept."""
    import duckdb
    import pyarrow as pa

    with duckdb_interrupts(), duckdb.connect(":memory:") as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_logq_column", pa.table({"v": column}))
        return [r[0] for r in con.sql('SELECT CAST(v AS VARCHAR) FROM "_logq_column"').fetchall()]
