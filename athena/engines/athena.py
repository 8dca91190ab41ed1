"""The Athena engine: the canned SQL runs on Amazon Athena through pyathena.

What an engineer sees while it runs: one progress line on stderr (state, elapsed, data scanned)
when stderr is a terminal; afterwards the bytes scanned and the cost (USD 5 per TB, per MB rounded
up, 10 MB minimum). Ctrl-C stops the query on Athena (``StopQueryExecution``) before exiting, so an
abandoned query does not keep scanning and billing. ``--max-scan-bytes`` is enforced while the
query runs: as soon as Athena reports more data scanned than allowed, the query is cancelled.

Parameters are passed in pyathena's ``pyformat`` style, so pyathena quotes every value.
Endpoint and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL_ATHENA`` /
``AWS_ENDPOINT_URL``, ``AWS_REGION`` or the profile's region, the credentials chain).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, TextIO

from athena.engines.result import (
    EngineError,
    QueryResult,
    ScanBudgetError,
    StatementError,
    athena_cost_usd,
    human_bytes,
)

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

#: A statement refused at submission for where it is wrong in it (other InvalidRequestExceptions,
#: such as a workgroup without an output location, are no fault of the statement).
SUBMIT_REFUSAL = re.compile(r"line \d+:\d+: ")


class _VanishedFile(EngineError):
    """The query failed because a file it listed was deleted before it was read."""


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
        from pyathena.async_cursor import AsyncCursor

        quiet_pyathena()

        kwargs: dict[str, Any] = {
            "region_name": self.region,
            "schema_name": self.database,
            "cursor_class": AsyncCursor,
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

    def _show(self, state: str, started: float, scanned: int | None, final: bool = False) -> None:
        if not self.progress:
            return
        line = f"athena: {state:<9} {time.monotonic() - started:6.1f}s  {_human_bytes(scanned)}"
        end = "\n" if final else ""
        self.progress_out.write("\r\x1b[2K" + line + end)
        self.progress_out.flush()

    def run(
        self, sql: str, params: dict[str, Any], scopes: Any = None, max_rows: int | None = None
    ) -> QueryResult:
        """Start the query, follow it until it ends, fetch the rows (the first ``max_rows``
        only when given: each 1,000 rows is a GetQueryResults call).

        A query that failed because compaction deleted a file it had listed runs again (up to
        :data:`VANISHED_RETRIES` times): the local engine does the same, and Athena does not
        bill failed queries."""
        for attempt in range(VANISHED_RETRIES + 1):
            try:
                return self._run_once(sql, params, max_rows)
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

    def _run_once(self, sql: str, params: dict[str, Any], max_rows: int | None) -> QueryResult:
        from pyathena.error import Error as AthenaError

        text, values = self.prepare(sql, params)
        conn = self._connect()
        cursor = conn.cursor()
        started = time.monotonic()
        query_id = None
        try:
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
                raise _failure(reason)(f"Athena query {query_id} {result_set.state}: {reason}")
            final = result_set.data_scanned_in_bytes or 0
            if self.max_scan_bytes is not None and final > self.max_scan_bytes:
                self.progress_out.write(
                    f"athena: warning: the query scanned {final:,} bytes, over --max-scan-bytes "
                    f"{self.max_scan_bytes:,}; it finished before it could be stopped (a "
                    "workgroup's BytesScannedCutoffPerQuery is a hard limit)\n"
                )
            columns = [d[0] for d in (result_set.description or [])]
            fetched = result_set.fetchall() if max_rows is None else result_set.fetchmany(max_rows)
            rows = [tuple(r) for r in fetched]
            return QueryResult(
                columns=columns,
                rows=rows,
                engine=self.name,
                elapsed_s=time.monotonic() - started,
                scanned_bytes=result_set.data_scanned_in_bytes or 0,
                query_id=query_id,
                sql=text,
            )
        except KeyboardInterrupt:
            if query_id is not None:
                self.progress_out.write(f"\nathena: cancelling query {query_id}\n")
                cursor.cancel(query_id).result()
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
            cursor.close()
            conn.close()


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
