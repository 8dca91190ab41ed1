"""The Athena engine: the canned SQL runs on Amazon Athena through pyathena.

What an engineer sees while it runs: one progress line on stderr (state, elapsed, data scanned)
when stderr is a terminal; afterwards the bytes scanned and the cost (USD 5 per TB, per MB rounded
up, 10 MB minimum). Ctrl-C stops the query on Athena (``StopQueryExecution``) before exiting, so an
abandoned query does not keep scanning and billing; so do SIGTERM and SIGHUP while a query runs
(``timeout``, a CI job's kill, a closed terminal), also one that lands while
``StartQueryExecution`` is in flight: see :mod:`athena.engines.interrupts`. ``--max-scan-bytes``
is enforced while the query runs: as soon as Athena reports more data scanned than allowed, the
query is cancelled.

Parameters are passed in pyathena's ``pyformat`` style, so pyathena quotes every value.
Endpoint and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL_ATHENA`` /
``AWS_ENDPOINT_URL``, ``AWS_REGION`` or the profile's region, the credentials chain).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from athena.engines.interrupts import Interrupts
from athena.engines.result import (
    STREAM_BATCH_ROWS,
    STREAM_WINDOW_ROWS,
    EngineError,
    QueryResult,
    ScanBudgetError,
    StatementError,
    Terminated,
    athena_cost_usd,
    human_bytes,
)
from athena.moved_columns import moved_hint

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")

#: How Athena says that a file it listed was gone when it came to read it: compaction replaced
#: the partition's small files meanwhile (they are deleted once the merged file is complete).
VANISHED_FILE = re.compile(
    # Not every HIVE_CANNOT_OPEN_SPLIT: "Access Denied" (KMS, IAM) or a damaged file is not
    # cured by running again.
    r"HIVE_FILE_NOT_FOUND|NoSuchKey|The specified key does not exist|File does not exist",
    re.IGNORECASE,
)
#: Runs of a query again after such a failure (the listing is then the compacted one).
VANISHED_RETRIES = 2

#: How Athena says that it refused the statement itself (:class:`StatementError`): the reason
#: starts with one of Trino's user error codes (``COLUMN_NOT_FOUND: line 1:8: Column 'x' cannot
#: be resolved``), or, without a code, with the position in the statement of a syntax error
#: (``line 1:1: mismatched input 'SELEC'``). Storage and service failures (``HIVE_BAD_DATA``,
#: ``HIVE_CANNOT_OPEN_SPLIT``, Access Denied, ``GENERIC_INTERNAL_ERROR``, exhausted resources)
#: carry other codes and no position, and stay engine failures.
STATEMENT_FAILURE = re.compile(
    r"(?:SYNTAX_ERROR|COLUMN_NOT_FOUND|TABLE_NOT_FOUND|SCHEMA_NOT_FOUND|CATALOG_NOT_FOUND"
    r"|FUNCTION_NOT_FOUND|AMBIGUOUS_NAME|MISSING_COLUMN_NAME|DUPLICATE_COLUMN_NAME"
    r"|TYPE_MISMATCH|TYPE_NOT_FOUND|INVALID_LITERAL|INVALID_FUNCTION_ARGUMENT"
    r"|INVALID_CAST_ARGUMENT|DIVISION_BY_ZERO|NUMERIC_VALUE_OUT_OF_RANGE"
    r"|EXPRESSION_NOT_AGGREGATE|EXPRESSION_NOT_SCALAR)\b"
    r"|line \d+:\d+: (?:mismatched input|extraneous input|no viable alternative)",
)

#: How Athena says that the database or one of logq's tables is not in its catalog:
#: ``TABLE_NOT_FOUND: line 1:15: Table 'awsdatacatalog.logs.envoy_access' does not exist``,
#: ``SCHEMA_NOT_FOUND: line 1:15: Schema 'logs' does not exist``.
MISSING_TABLE = re.compile(r"TABLE_NOT_FOUND\b.*?Table '([^']+)' does not exist")
MISSING_SCHEMA = re.compile(r"SCHEMA_NOT_FOUND\b.*?Schema '([^']+)' does not exist")

#: How Athena says that a query projects more partitions than it allows (1,000,000 with
#: partition projection): Trino's Hive connector code and words ("Query over table 'x' can
#: potentially read more than 1000000 partitions"), or another "exceeded ... partitions".
PARTITION_LIMIT = re.compile(
    r"HIVE_EXCEEDED_PARTITION_LIMIT|can potentially read more than [\d,]+ partitions"
    r"|exceed\w*\b[^.;]*\bpartitions",
    re.IGNORECASE,
)

#: A statement refused at submission for where it is wrong in it (other InvalidRequestExceptions,
#: such as a workgroup without an output location, are no fault of the statement).
SUBMIT_REFUSAL = re.compile(r"line \d+:\d+: ")


class _VanishedFile(EngineError):
    """The query failed because a file it listed was deleted before it was read."""


@functools.cache
def _cursor_class() -> type:
    """pyathena's ``AsyncCursor``, telling :attr:`announce` which query a second interrupt
    stopped while its ``StartQueryExecution`` was in flight (pyathena waits for the id, then
    cancels the query; this only lets logq say so)."""
    from pyathena.async_cursor import AsyncCursor

    class _Cursor(AsyncCursor):  # type: ignore[misc]
        announce: Callable[[str], None] | None = None

        def _set_interrupted_execution_id(self, execution_id: str) -> None:
            if self.announce is not None:
                self.announce(execution_id)

    return _Cursor


def _human_bytes(n: int | None) -> str:
    return human_bytes(n or 0)


def quiet_pyathena() -> None:
    """Keep pyathena's own logging off the terminal.

    pyathena logs every failed API call with ``_logger.exception`` (a full traceback) and then
    raises; logq turns that exception into one clear line, so the traceback is noise. With no
    logging configured, Python would print it through its last-resort handler. ``LOGQ_DEBUG=1``
    (which also makes logq re-raise its own errors) leaves pyathena's logging as it is.
    """
    if os.environ.get("LOGQ_DEBUG"):
        return
    logger = logging.getLogger("pyathena")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


class AthenaEngine:
    """Runs Athena SQL on Amazon Athena."""

    name = "athena"

    def __init__(
        self,
        database: str = "logq",
        workgroup: str | None = None,
        output: str | None = None,
        region: str | None = None,
        max_scan_bytes: int | None = None,
        progress: bool = False,
        progress_out: TextIO | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.database = database
        self.workgroup = workgroup
        self.output = output
        self.region = region or default_region()
        self.max_scan_bytes = max_scan_bytes
        self.progress = progress
        self.progress_out = progress_out or sys.stderr
        self.poll_interval = poll_interval
        self._interrupts = Interrupts()
        if not self.output and not self.workgroup:
            raise EngineError(
                "Athena needs a place for results: pass --athena-output s3://BUCKET/PREFIX/ "
                "(or LOGQ_ATHENA_OUTPUT), or --athena-workgroup with an output location"
            )
        if not self.region:
            raise EngineError(
                "no AWS region for Athena: pass --athena-region, set AWS_REGION, or set a "
                "region in the AWS profile"
            )

    def prepare(self, sql: str, params: dict[str, Any], scopes: Any = None) -> tuple[str, dict]:
        """The statement in pyathena's parameter style and its values."""
        from athena.queries import to_athena

        return to_athena(sql, params) if params else (sql, {})

    def _connect(self) -> Any:
        from pyathena import connect

        quiet_pyathena()

        kwargs: dict[str, Any] = {
            "region_name": self.region,
            "schema_name": self.database,
            "cursor_class": _cursor_class(),
            "poll_interval": self.poll_interval,
        }
        if self.output:
            kwargs["s3_staging_dir"] = self.output
        if self.workgroup:
            kwargs["work_group"] = self.workgroup
        endpoint = os.environ.get("AWS_ENDPOINT_URL_ATHENA")
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return connect(**kwargs)

    def _say(self, line: str) -> None:
        """Write a line on the progress stream; a terminal that is gone (SIGHUP after the ssh
        session closed: EIO) must not keep logq from stopping the query."""
        try:
            self.progress_out.write(line)
            self.progress_out.flush()
        except (OSError, ValueError):
            pass

    def _stop(self, cursor: Any, query_id: str, why: BaseException) -> None:
        """Stop ``query_id`` on Athena (StopQueryExecution) and say so; when that fails, or a
        second Ctrl-C or signal cuts it short, say how to stop it by hand (the interrupt still
        ends logq)."""
        cause = f" ({why.signame})" if isinstance(why, Terminated) else ""
        self._say(f"\nathena: cancelling query {query_id}{cause}\n")
        by_hand = f"stop it with `aws athena stop-query-execution --query-execution-id {query_id}`"
        try:
            cursor.cancel(query_id).result()
        except Exception as exc:
            self._say(f"athena: could not cancel query {query_id} ({exc}); {by_hand}\n")
        except BaseException:  # a second Ctrl-C or signal while the cancel was on its way
            self._say(f"athena: the cancel of query {query_id} was cut short: {by_hand}\n")
            raise

    def _show(self, state: str, started: float, scanned: int | None, final: bool = False) -> None:
        if not self.progress:
            return
        line = f"athena: {state:<9} {time.monotonic() - started:6.1f}s  {_human_bytes(scanned)}"
        end = "\n" if final else ""
        self.progress_out.write("\r\x1b[2K" + line + end)
        self.progress_out.flush()

    def run(
        self,
        sql: str,
        params: dict[str, Any],
        scopes: Any = None,
        max_rows: int | None = None,
        stream: bool = False,
    ) -> QueryResult:
        """Start the query, follow it until it ends, fetch the rows (the first ``max_rows``
        only when given: each 1,000 rows is a GetQueryResults call). ``stream``: a result of
        more than :data:`~athena.engines.result.STREAM_WINDOW_ROWS` rows comes back with its
        first rows, the rest in :attr:`QueryResult.more`, fetched page by page as it is read.

        A query that failed because compaction deleted a file it had listed runs again (up to
        :data:`VANISHED_RETRIES` times): the local engine does the same, and Athena does not
        bill failed queries. Ctrl-C, SIGTERM and SIGHUP stop the query on Athena
        (:mod:`athena.engines.interrupts`)."""
        with self._interrupts.taken():
            return self._run_retrying(sql, params, max_rows, stream)

    def _run_retrying(
        self, sql: str, params: dict[str, Any], max_rows: int | None, stream: bool
    ) -> QueryResult:
        for attempt in range(VANISHED_RETRIES + 1):
            try:
                return self._run_once(sql, params, max_rows, stream)
            except _VanishedFile as exc:
                if attempt == VANISHED_RETRIES:
                    raise EngineError(
                        f"{exc}; the partition's files were being compacted, try again"
                    ) from exc
                self.progress_out.write(
                    "athena: a file was replaced by compaction while the query read it; "
                    "running the query again\n"
                )
        raise AssertionError("unreachable")

    def _run_once(
        self, sql: str, params: dict[str, Any], max_rows: int | None, stream: bool = False
    ) -> QueryResult:
        from pyathena.error import Error as AthenaError

        text, values = self.prepare(sql, params)
        conn = self._connect()
        cursor = conn.cursor()
        cursor.announce = lambda qid: self._say(f"\nathena: cancelling query {qid}\n")
        started = time.monotonic()
        query_id = None
        more: _AthenaBatches | None = None
        try:
            with self._interrupts.starting():  # a signal now is raised once the query has an id
                query_id, future = cursor.execute(text, values or None)
            scanned: int | None = 0
            state = "QUEUED"
            while not future.done():
                execution = cursor.query_execution(query_id).result()
                state = execution.state or state
                scanned = execution.data_scanned_in_bytes
                self._show(state, started, scanned)
                if state in TERMINAL_STATES:
                    break  # finished: its rows are paid for, whatever it scanned
                if self.max_scan_bytes is not None and (scanned or 0) > self.max_scan_bytes:
                    cursor.cancel(query_id).result()
                    raise ScanBudgetError(
                        f"Athena query {query_id} scanned {scanned:,} bytes, over "
                        f"--max-scan-bytes {self.max_scan_bytes:,}; it was cancelled. Narrow "
                        "--since/--until or --service"
                    )
                time.sleep(self.poll_interval)
            result_set = future.result()
            self._show(result_set.state or state, started, result_set.data_scanned_in_bytes, True)
            if result_set.state != "SUCCEEDED":
                reason = result_set.state_change_reason or "no reason given"
                failed = f"Athena query {query_id} {result_set.state}: {reason}"
                raise _failure(reason)(failed + self.next_step(reason))
            final = result_set.data_scanned_in_bytes or 0
            if self.max_scan_bytes is not None and final > self.max_scan_bytes:
                self.progress_out.write(
                    f"athena: warning: the query scanned {final:,} bytes, over --max-scan-bytes "
                    f"{self.max_scan_bytes:,}; it finished before it could be stopped (a "
                    "workgroup's BytesScannedCutoffPerQuery is a hard limit)\n"
                )
            columns = [d[0] for d in (result_set.description or [])]
            fetched_from = _typed_nested(result_set, sql)
            if stream:
                rows, more = _first_window(fetched_from, max_rows, lambda: _close(cursor, conn))
            else:
                fetched = (
                    fetched_from.fetchall()
                    if max_rows is None
                    else fetched_from.fetchmany(max_rows)
                )
                rows = [tuple(r) for r in fetched]
            return QueryResult(
                columns=columns,
                rows=rows,
                engine=self.name,
                elapsed_s=time.monotonic() - started,
                scanned_bytes=result_set.data_scanned_in_bytes or 0,
                query_id=query_id,
                sql=text,
                more=more,
            )
        except KeyboardInterrupt as stop:
            # Without an id: the start failed, or a second interrupt came while it was in
            # flight (pyathena then waited for the id and cancelled the query itself).
            if query_id is not None:
                self._stop(cursor, query_id, stop)
            raise
        except AthenaError as exc:
            # Athena refuses a statement that does not parse when it is submitted
            # (InvalidRequestException "line 1:8: mismatched input ..."), not as a FAILED query.
            refused = "InvalidRequestException" in str(exc) and SUBMIT_REFUSAL.search(str(exc))
            raise (StatementError if refused else EngineError)(f"Athena: {exc}") from exc
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, BotoCoreError | ClientError):
                raise EngineError(f"Athena API: {exc}") from exc
            raise
        finally:
            if more is None:  # a streamed result keeps them until it is read or closed
                _close(cursor, conn)

    def next_step(self, reason: str) -> str:
        """What to do about a failed query's ``reason`` ("; ..." to append), or ``""``: create
        the tables when Athena does not have them, narrow the query when it projects too many
        partitions."""
        from athena.schema import TABLES

        table = MISSING_TABLE.search(reason)
        schema = MISSING_SCHEMA.search(reason)
        parts = table.group(1).split(".") if table else []
        if schema or (parts and parts[-1] in TABLES):
            db = schema.group(1) if schema else (parts[-2] if len(parts) > 1 else self.database)
            return (
                f"; Athena has no logq tables in database {db!r}: create them with the "
                f"statements of `logq ddl --warehouse s3://BUCKET/PREFIX --athena-database {db}`"
                f", or run logq-aggregator with --athena-database {db}; or pass the right "
                "--athena-database"
            )
        moved = moved_hint(reason)
        if moved:
            return moved
        if PARTITION_LIMIT.search(reason):
            return (
                "; the query projects more partitions (hours x services) than Athena allows "
                "(1,000,000): narrow --since/--until or add --service (logq sql: constrain dt "
                "and service in WHERE)"
            )
        return ""


def _typed_nested(result_set: Any, sql: str) -> Any:
    """``result_set``, its ARRAY, MAP and ROW values typed as the statement declares them
    (:mod:`athena.nested_types`: Athena's metadata says only ``array``, and pyathena reads
    ``{a=1}`` as ``{'a': '1'}``); unchanged when no column is nested or the types are not
    known. Scalars are typed by pyathena from the metadata already."""
    from athena.nested_types import NESTED_KINDS, declared_types

    kinds = [str(d[1]).lower() for d in (result_set.description or [])]
    if not NESTED_KINDS.intersection(kinds):
        return result_set
    types = declared_types(sql)
    if types is None or len(types) != len(kinds):
        return result_set
    chosen = {i: t for i, (k, t) in enumerate(zip(kinds, types, strict=True)) if k in NESTED_KINDS}
    return _TypedRows(result_set, chosen)


class _TypedRows:
    """A finished result set whose fetched rows get their nested columns typed."""

    def __init__(self, result_set: Any, types: dict[int, Any]) -> None:
        self._result_set = result_set
        self._types = types

    def _typed(self, rows: list[Any]) -> list[tuple[Any, ...]]:
        from athena.nested_types import typed_value

        out = []
        for row in rows:
            values = list(row)
            for i, dtype in self._types.items():
                values[i] = typed_value(values[i], dtype)
            out.append(tuple(values))
        return out

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return self._typed(self._result_set.fetchmany(size))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._typed(self._result_set.fetchall())


def _close(cursor: Any, conn: Any) -> None:
    cursor.close()
    conn.close()


def _first_window(
    result_set: Any, max_rows: int | None, close: Callable[[], None]
) -> tuple[list[tuple[Any, ...]], _AthenaBatches | None]:
    """The first rows of a finished query (more than :data:`STREAM_WINDOW_ROWS` when there are,
    at most ``max_rows``), and the rest as batches to read (None: nothing is left)."""
    want = STREAM_WINDOW_ROWS + 1 if max_rows is None else min(max_rows, STREAM_WINDOW_ROWS + 1)
    rows = [tuple(r) for r in result_set.fetchmany(want)]
    if len(rows) < want or (max_rows is not None and len(rows) >= max_rows):
        return rows, None
    left = None if max_rows is None else max_rows - len(rows)
    return rows, _AthenaBatches(result_set, close, left, len(rows))


class _AthenaBatches:
    """The rest of a streamed Athena result (:class:`~athena.engines.result.RowBatches`): pages
    of GetQueryResults (1,000 rows each) fetched as the batches are read, so the rows held are
    a batch and a page whatever the size of the result. The query has finished by then:
    Ctrl-C only stops the reading."""

    def __init__(
        self, result_set: Any, close: Callable[[], None], left: int | None, sent: int
    ) -> None:
        self._result_set = result_set
        self._close: Callable[[], None] | None = close
        self._left = left
        self.sent = sent
        """Rows handed out so far, the first window's included (for the error text)."""

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        from botocore.exceptions import BotoCoreError, ClientError
        from pyathena.error import Error as AthenaError

        try:
            while self._close is not None and (self._left is None or self._left > 0):
                size = min(self._left or STREAM_BATCH_ROWS, STREAM_BATCH_ROWS)
                try:
                    rows = [tuple(r) for r in self._result_set.fetchmany(size)]
                except (AthenaError, BotoCoreError, ClientError) as exc:
                    raise EngineError(
                        f"Athena: fetching the results failed after {self.sent:,} rows, so "
                        f"the output is incomplete ({exc}); run the command again"
                    ) from exc
                if not rows:
                    return
                if self._left is not None:
                    self._left -= len(rows)
                self.sent += len(rows)
                yield rows
        finally:
            self.close()

    def close(self, interrupted: bool = False) -> None:
        """Stop the query (also after a Ctrl-C: an abandoned query goes on billing)."""
        close, self._close = self._close, None
        if close is not None:
            close()


def _failure(reason: str) -> type[EngineError]:
    """The error for a query that ended FAILED with ``reason``: a file that compaction replaced
    (run it again), the statement refused as written, or another engine failure."""
    if VANISHED_FILE.search(reason):
        return _VanishedFile
    if STATEMENT_FAILURE.match(reason.strip()):
        return StatementError
    return EngineError


def default_region() -> str | None:
    """The AWS region as the SDKs resolve it: AWS_REGION, AWS_DEFAULT_REGION, then the profile
    (``~/.aws/config``, ``AWS_CONFIG_FILE``); None when none of them names one."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session().region_name
    except ProfileNotFound as exc:
        raise EngineError(
            f"{exc}: AWS_PROFILE names a profile that is not in the AWS config files; fix or "
            "unset AWS_PROFILE, or set AWS_REGION"
        ) from None


def cost_line(result: QueryResult) -> str:
    """``scanned 1.2 GiB, about USD 0.0059 (query …)`` for the note after a query."""
    scanned = result.scanned_bytes or 0
    return (
        f"Athena scanned {_human_bytes(scanned)} ({scanned:,} bytes), about USD "
        f"{athena_cost_usd(scanned):.6f} (USD 5/TB, 10 MB minimum); query {result.query_id}"
    )
