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


#: Column of :func:`select_tables`'s statement naming the table a row comes from.
TABLE_TAG = "logq_table"
#: ``TABLE_TAG`` of the one row carrying both tables' ``count(*)``.
COUNTS_TAG = "count(*)"


def _branch(table: str | None, columns: list[str]) -> str:
    """One ``SELECT`` of :func:`select_tables`: ``table``'s columns (NULL for the other
    table's), or (``table=None``) the row of ``count(*)`` of both tables."""
    own = COLUMNS[table] if table else ()
    values = [f"'{table or COUNTS_TAG}' AS {TABLE_TAG}"]
    values += [f'"{c}"' if c in own else f'NULL AS "{c}"' for c in columns]
    for t in COLUMNS:
        values.append(f"(SELECT count(*) FROM {t}) AS n_{t}" if table is None else f"NULL AS n_{t}")
    return "SELECT " + ", ".join(values) + (f" FROM {table}" if table else "")


def select_tables(
    warehouse: str, env: dict[str, str]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Every row of both tables and each table's ``count(*)``, through ONE ``logq sql --format
    json`` run: (rows per table, timestamps parsed, as :func:`select_table` returns them;
    ``count(*)`` per table).

    One run, not three: each ``logq`` process costs about a CPU-second of start-up on a busy
    machine. The rows come from a ``UNION ALL`` of both tables (each branch names its own
    columns, NULL for the other table's, which are dropped again here); the counts are scalar
    ``count(*)`` subqueries in an extra row, so they stay the engine's own count of each table,
    not a count of the rows returned.
    """
    columns = list(dict.fromkeys(c for cols in COLUMNS.values() for c in cols))
    sql = " UNION ALL ".join(_branch(t, columns) for t in (*COLUMNS, None))
    rows = logq_json(["sql", sql, "--warehouse", warehouse, "--limit", "10000000"], env)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in COLUMNS}
    counts: dict[str, int] = {}
    for r in rows:
        tag = r[TABLE_TAG]
        if tag == COUNTS_TAG:
            assert not counts, f"two {COUNTS_TAG} rows"
            counts = {t: int(r[f"n_{t}"]) for t in COLUMNS}
            continue
        row = {c: r[c] for c in COLUMNS[tag]}
        row["timestamp"] = parse_ts(row["timestamp"])
        out[tag].append(row)
    assert counts, f"no {COUNTS_TAG} row in the answer"
    return out, counts


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
