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
query reads that column; a column whose type changed fails its cast. Any of these runs the query
again with that table read ``union_by_name`` (the missing column NULL): mixed tables pay the old
price, uniform ones (what the writer produces) do not. The newest hour's files go first, so
that only queries that read a column the old files lack pay it (see :meth:`LocalEngine._register`).
Nothing is printed before the result is complete (``--limit`` included), so the second run shows
only in the time taken.

Weighed and left: one view per schema version (knowing a file's schema means reading its
footer, the cost avoided), ``parquet_metadata_cache`` (it keeps the footers: the memory avoided)
and materialising the footers once per query (still every footer in memory). Past
:data:`MANY_FILES` files a query warns on stderr and suggests ``--service`` or a shorter
``--since``; it still runs.

Once the views exist the connection is locked down (:func:`_sandbox`): DuckDB may then open only
the Parquet files the views read, cannot load extensions and cannot change a setting. ``logq sql``
runs statements people type (or paste), and DuckDB's SQL can read any file (``read_text``), write
files (``COPY ... TO``) and attach databases; the engine answers queries over the warehouse only.

A statement DuckDB refuses as written (no such column or table, a type or syntax error, the
sandbox's refusal) is a :class:`StatementError`, anything else an :class:`EngineError`: only
the caller knows whether the SQL was the user's (``logq sql``: bad input) or logq's own.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from athena.arrow_values import column_values
from athena.engines.result import EngineError, QueryResult, ScanBudgetError, StatementError

T = TypeVar("T")
#: Past this many Parquet files, a local query says on stderr how to make it smaller. It still
#: runs: DuckDB needs a few tens of KB per file and a second or so per thousand files.
MANY_FILES = 20_000
#: After Ctrl-C, how long to wait for DuckDB to stop the query before exiting anyway.
INTERRUPT_WAIT_SECONDS = 5.0

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


def _refusal(exc: Exception) -> str | None:
    """The sandbox's refusal of ``exc`` as advice, or None when it is another error."""
    import duckdb

    text = str(exc)
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in text:
        return (
            "the local engine reads only the warehouse tables (envoy_access, container_logs): "
            "no other files, extensions or settings; DuckDB refused: " + _one_line(text)
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


def unreadable_file(path: str, exc: Exception) -> EngineError:
    """One line naming the file and what to do; DuckDB's reason without the path repeated (the
    path can be long, and the message is cut at about 400 characters)."""
    reason = (_duckdb_text(exc).splitlines() or [""])[0]
    reason = " ".join(reason.replace(f"'{path}'", "").replace(path, "").split())
    return EngineError(
        f"cannot read the Parquet file {path} ({reason}); if it is damaged or not Parquet "
        "(e.g. a truncated copy), move it out of the warehouse and run the command again"
    )


def full_schema(table: str) -> pa.Schema:
    """The table as queries see it: the file columns plus ``service`` and ``dt``."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    base = schema_table(table).arrow_schema()
    return base.append(pa.field("service", pa.string())).append(pa.field("dt", pa.string()))


def _integral_decimals_to_int(table: pa.Table) -> pa.Table:
    """DuckDB sums and counts as HUGEINT (DECIMAL(38,0) in Arrow); Athena returns bigint."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type) and f.type.scale == 0:
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return table


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
    ) -> None:
        """``table`` as a view of ``parts``; with ``rows``, only rows with a ``timestamp`` in it
        (partitions are whole hours, ``logq sql --since 15m`` means the last 15 minutes).

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
            columns = ", ".join(f'"{name}"' for name in schema.names)
            try:  # binding reads the first footer (all of them by_name): a damaged one fails now
                con.execute(
                    f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT {columns} FROM read_parquet('
                    f"[{listing}], hive_partitioning = true, "
                    f"union_by_name = {str(by_name).lower()}, "
                    "hive_types = {'service': VARCHAR, 'dt': VARCHAR})" + where
                )
            except duckdb.BinderException as exc:
                if by_name:
                    raise EngineError(
                        f"DuckDB could not read the {table} files: {_one_line(str(exc))}"
                    ) from exc
                raise _MixedSchemas(table) from exc  # our own SQL: the first file lacks a column
            except duckdb.Error as exc:
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
    ) -> QueryResult:
        """Run Athena ``sql`` with ``params`` over the partitions in ``scopes``.

        ``scopes`` None: every table the statement reads is read in full (found by parsing it).
        Given, it must name every warehouse table the statement reads (canned queries know).
        ``rows``: the tables show only rows whose ``timestamp`` falls in it (``logq sql``; the
        canned queries filter in their own SQL). ``explain``: see :meth:`prepare`.
        ``max_rows``: fetch only the first rows (``logq sql --limit``): DuckDB streams the
        result and stops, instead of building all of it.
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
                return self._run_once(sql, params, scopes, rows, explain, max_rows, by_name)
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
    ) -> QueryResult:
        import duckdb

        duck_sql, bound = self.prepare(sql, params, scopes, explain)
        total = sum(p.bytes for parts in scopes.values() for p in parts)
        if self.max_scan_bytes is not None and total > self.max_scan_bytes:
            raise ScanBudgetError(
                f"the query would read {total:,} bytes of Parquet, over --max-scan-bytes "
                f"{self.max_scan_bytes:,}; narrow --since/--until or --service"
            )
        files = [f.path for parts in scopes.values() for p in parts for f in p.files]
        con = self._connect()
        try:
            for name, parts in scopes.items():
                self._register(con, name, parts, rows, by_name=name in by_name)
            _sandbox(con, [] if self.warehouse.is_s3 else files)
            started = time.perf_counter()
            try:
                table = _interruptible(
                    con, lambda: _fetch(con.sql(duck_sql, params=bound), max_rows)
                )
            except duckdb.Error as exc:
                mixed = _mixed_tables(exc, scopes, by_name, self.warehouse.is_s3)
                if mixed:
                    raise _MixedSchemas(*mixed) from exc
                bad = _bad_file(exc, files)
                if bad is not None:
                    raise self._file_error(bad, exc) from exc
                refused = _refusal(exc)
                if refused is not None:
                    raise StatementError(refused) from exc
                failed = StatementError if _statement_fault(exc) else EngineError
                raise failed(
                    f"DuckDB could not run the query: {_one_line(_duckdb_text(exc))}"
                ) from exc
            elapsed = time.perf_counter() - started
        finally:
            con.close()
        table = _integral_decimals_to_int(table)
        return QueryResult(
            columns=table.column_names,
            rows=_python_rows(table),
            engine=self.name,
            elapsed_s=elapsed,
            scanned_bytes=total,
            partitions=[p.relative for parts in scopes.values() for p in parts],
            files=len(files),
            sql=duck_sql,
            scopes=scopes,
        )


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

    threading.Thread(target=run, name="logq-duckdb", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        con.interrupt()
        done.wait(INTERRUPT_WAIT_SECONDS)
        # Its error's traceback holds the result reader, and with it the connection: let go,
        # or closing the connection fails ("busy").
        outcome.clear()
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _fetch(relation: Any, max_rows: int | None) -> pa.Table:
    """The rows of a DuckDB relation as Arrow: all, or the first ``max_rows`` only."""
    import pyarrow as pa

    if max_rows is None:
        return relation.to_arrow_table()
    reader = relation.to_arrow_reader(min(max_rows, 100_000))
    batches, count = [], 0
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        if count >= max_rows:
            break
    return pa.Table.from_batches(batches, reader.schema).slice(0, max_rows)


def _python_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The rows as Python values, column by column (names may repeat: ``SELECT 1 a, 2 a``).

    A column Python cannot hold (a timestamp or date past year 9999, DuckDB's ``infinity``)
    is shown as DuckDB's own text for it (``33658-09-27 01:46:40+00``) rather than failing the
    whole result: the value is real, people asked for it, and only Python's datetime is short.
    """
    columns: list[list[Any]] = []
    for column in table.columns:
        try:
            columns.append(column_values(column))
        except (OverflowError, ValueError):
            columns.append(_as_text(column))
    return list(zip(*columns, strict=True)) if columns else [()] * table.num_rows


def _as_text(column: pa.ChunkedArray) -> list[str | None]:
    """``column`` as DuckDB prints each value (UTC), NULL kept."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_logq_column", pa.table({"v": column}))
        return [r[0] for r in con.sql('SELECT CAST(v AS VARCHAR) FROM "_logq_column"').fetchall()]
    finally:
        con.close()
