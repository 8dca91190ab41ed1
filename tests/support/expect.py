"""Compare what a warehouse holds with a demo host's manifest, row for row.

Rows are compared as multisets of full tuples, so a lost line, a duplicated line and a wrong
value all show up, and the assertion message lists a few of each.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from cli.demohost import Manifest
from tests.support.pipeline import logq_json, logq_json_in_process

ACCESS_COLUMNS = (
    "service", "host", "container_id", "container_name", "timestamp", "method", "path",
    "protocol", "response_code", "response_flags", "bytes_received", "bytes_sent", "duration_ms",
    "upstream_service_time_ms", "x_forwarded_for", "user_agent", "request_id", "authority",
    "upstream_host",
)  # fmt: skip
LOG_COLUMNS = (
    "service", "host", "container_id", "container_name", "timestamp", "stream", "message",
)  # fmt: skip
COLUMNS = {"envoy_access": ACCESS_COLUMNS, "container_logs": LOG_COLUMNS}


def parse_ts(value: str) -> datetime:
    """An ISO-8601 timestamp as ``logq --format json`` prints it, as an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def select_table(
    table: str, warehouse: str, env: dict[str, str], *, in_process: bool = False
) -> list[dict[str, Any]]:
    """Every row of ``table`` through ``logq sql --format json`` (timestamps parsed), a ``logq``
    process or, ``in_process``, the same command run in this one."""
    quoted = ", ".join(f'"{c}"' for c in COLUMNS[table])
    run = logq_json_in_process if in_process else logq_json
    rows = run(
        ["sql", f"SELECT {quoted} FROM {table}", "--warehouse", warehouse, "--limit", "1000000"],
        env,
    )
    return [{**r, "timestamp": parse_ts(r["timestamp"])} for r in rows]


def select_tables(
    warehouse: str, env: dict[str, str]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Every row of both tables (as :func:`select_table` gives them) and each table's
    ``count(*)`` -- the engine's own count, not a count of the rows returned --, read by ``logq
    sql`` in this process (:func:`~tests.support.pipeline.logq_json_in_process`): a ``logq``
    process for each of the three reads cost about a CPU-second of start-up."""
    rows = {t: select_table(t, warehouse, env, in_process=True) for t in COLUMNS}
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in COLUMNS)
    (row,) = logq_json_in_process(["sql", sql, "--warehouse", warehouse], env)
    return rows, {t: int(row[t]) for t in COLUMNS}


def as_counter(rows: list[dict[str, Any]], table: str) -> Counter:
    return Counter(tuple(r[c] for c in COLUMNS[table]) for r in rows)


def expected_rows(manifest: Manifest, table: str, host: str) -> list[dict[str, Any]]:
    """The manifest's rows with the ``host`` column the shipper adds."""
    return [{**r, "host": host} for r in manifest.rows(table)]


def diff(expected: Counter, got: Counter) -> str:
    missing = list((expected - got).items())[:3]
    extra = list((got - expected).items())[:3]
    return f"missing (row, times): {missing}\nunexpected (row, times): {extra}"


def assert_tables_match(
    manifest: Manifest, warehouse: str, env: dict[str, str], host: str
) -> dict[str, list[dict[str, Any]]]:
    """Both tables hold exactly the manifest's rows; returns what was read, per table.

    Read by ``logq sql`` in this process: the pipeline's programs are the ones under test here,
    and a ``logq`` process per table cost more CPU than the comparison (the tests that are about
    ``logq`` itself run it as a process)."""
    out = {}
    counts = manifest.counts()
    for table in COLUMNS:
        rows = select_table(table, warehouse, env, in_process=True)
        assert dict(Counter(r["service"] for r in rows)) == counts[table], table
        want = as_counter(expected_rows(manifest, table, host), table)
        got = as_counter(rows, table)
        assert got == want, f"{table}:\n{diff(want, got)}"
        out[table] = rows
    return out
