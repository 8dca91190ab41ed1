"""Ad-hoc time zones, numbers and counts mean locally what they mean on Athena.

Each test runs Trino text through the real local engine (transpiled, then DuckDB over a
warehouse written as the aggregator writes it), or through ``logq sql``, and compares with
what Trino's documentation gives (athena/trinotime.py, athena/trinofuncs.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from athena.engines.local import LocalEngine
from athena.engines.result import StatementError
from athena.queries import QueryError, to_duckdb
from cli.app import app
from tests.athena.factory import access_frame, utc, write_frame

#: The rows of the test warehouse: 15:00Z (16:00 in Berlin) and 23:30Z (00:30 the next day).
AT_15 = utc(2026, 11, 29, 15, 0)
AT_2330 = utc(2026, 11, 29, 23, 30)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("zones") / "warehouse")
    frame = access_frame(2, AT_15, AT_2330, ["recipe"], seed=3)
    frame["timestamp"] = [AT_15, AT_2330]
    write_frame(root, "envoy_access", frame)
    return root


@pytest.fixture(scope="module")
def rows(warehouse: str) -> Callable[[str], list[tuple[Any, ...]]]:
    """``rows(sql)``: the rows of ``sql`` (Trino) run by the local engine."""
    engine = LocalEngine(warehouse)
    return lambda sql: engine.run(sql, {}).rows


def logq_sql(warehouse: str, statement: str) -> Any:
    return CliRunner().invoke(app, ["sql", statement, "--warehouse", warehouse, "--format", "json"])


def test_at_time_zone_prints_the_same_instant(warehouse: str) -> None:
    """https://trino.io/docs/current/functions/datetime.html#time-zone-conversion: "The AT TIME
    ZONE operator sets the time zone of a timestamp": timestamp '2012-10-31 01:00 UTC' AT TIME
    ZONE 'America/Los_Angeles' is 2012-10-30 18:00:00.000 America/Los_Angeles, the same
    instant. pyathena hands it over as an aware datetime and logq prints it in UTC. Locally
    DuckDB gave the Berlin wall time without a zone, printed as UTC: 16:00Z for 15:00Z."""
    run = logq_sql(
        warehouse,
        "SELECT \"timestamp\" AT TIME ZONE 'Europe/Berlin' AS berlin, "
        "TIMESTAMP '2026-11-29 15:00:00' AT TIME ZONE 'Europe/Berlin' AS literal "
        "FROM envoy_access ORDER BY 1",
    )
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout) == [
        {"berlin": "2026-11-29T15:00:00.000Z", "literal": "2026-11-29T15:00:00.000Z"},
        {"berlin": "2026-11-29T23:30:00.000Z", "literal": "2026-11-29T15:00:00.000Z"},
    ]


def test_fields_of_a_zoned_value_are_read_in_its_zone(rows) -> None:
    """datetime.html: from_iso8601_timestamp('2020-05-11T11:15:05.055+01:00') is
    2020-05-11 11:15:05.055 +01:00 (it keeps the offset), and date_trunc returns the same
    type as its input. So for 23:00 at -05:00 Trino gives the day 11-29 (midnight at -05:00),
    hour 23 and the date 11-29; DuckDB read them in UTC: 11-30, 4 and 11-30."""
    iso = "from_iso8601_timestamp('2026-11-29T23:00:00-05:00')"
    assert rows(
        f"SELECT date_trunc('day', {iso}), hour({iso}), CAST({iso} AS date), "
        f"day_of_week({iso}), date_format({iso}, '%Y-%m-%d %H:%i')"
    ) == [(utc(2026, 11, 29, 5), 23, date(2026, 11, 29), 7, "2026-11-29 23:00")]
    # The documented text; a date alone has no offset (its -11 is the day), so UTC (Athena's).
    assert rows(
        "SELECT CAST(from_iso8601_timestamp('2020-05-11T11:15:05.055+01:00') AS varchar), "
        "hour(from_iso8601_timestamp('2020-05-11')), "
        "CAST(from_iso8601_timestamp('2020-05-11') AS varchar)"
    ) == [("2020-05-11 11:15:05.055 +01:00", 0, "2020-05-11 00:00:00.000 UTC")]


def test_zoned_column_through_a_cte_and_its_text(rows) -> None:
    """A zoned column of a CTE keeps its zone in the outer query, also renamed by another CTE;
    CAST to varchar prints the wall time and the zone (datetime.html's examples: '2012-10-30
    18:00:00.000 America/Los_Angeles'). 23:30Z is 00:30 on 11-30 in Berlin."""
    assert rows(
        "WITH b AS (SELECT \"timestamp\" AT TIME ZONE 'Europe/Berlin' AS local_ts "
        "FROM envoy_access), c AS (SELECT local_ts AS berlin FROM b) "
        "SELECT hour(berlin), CAST(berlin AS date), CAST(berlin AS varchar), "
        "timezone_hour(berlin) FROM c ORDER BY berlin"
    ) == [
        (16, date(2026, 11, 29), "2026-11-29 16:00:00.000 Europe/Berlin", 1),
        (0, date(2026, 11, 30), "2026-11-30 00:30:00.000 Europe/Berlin", 1),
    ]
    # An inner query never sees the outer one's outputs: its "timestamp" is the table's (UTC).
    assert rows(
        'SELECT "timestamp" AT TIME ZONE \'Europe/Berlin\' AS "timestamp" FROM '
        '(SELECT "timestamp" FROM envoy_access WHERE hour("timestamp") = 23)'
    ) == [(AT_2330,)]


def test_with_and_at_timezone_as_documented(rows) -> None:
    """datetime.html, with a UTC session (Athena's): with_timezone(TIMESTAMP '2022-11-01
    09:08:07.321', 'America/Los_Angeles') is 09:08:07.321 in Los Angeles (16:08:07.321Z);
    at_timezone converts the instant: 02:08:07.321 in Los Angeles, 09:08:07.321Z. Both were
    refused locally."""
    ts = "TIMESTAMP '2022-11-01 09:08:07.321'"
    got = rows(
        f"SELECT with_timezone({ts}, 'America/Los_Angeles'), "
        f"at_timezone({ts}, 'America/Los_Angeles'), "
        f"hour(at_timezone({ts}, 'America/Los_Angeles'))"
    )
    assert got == [
        (
            datetime(2022, 11, 1, 16, 8, 7, 321000, tzinfo=UTC),
            datetime(2022, 11, 1, 9, 8, 7, 321000, tzinfo=UTC),
            2,
        )
    ]


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(QueryError, match="unknown time zone 'Europe/Berln'"):
        to_duckdb("SELECT \"timestamp\" AT TIME ZONE 'Europe/Berln' FROM envoy_access", {})


def test_double_division_by_zero_is_ieee_integer_one_an_error(rows) -> None:
    """https://trino.io/docs/current/language/types.html#double: "A double is a 64-bit
    inexact, variable-precision implementing the IEEE Standard 754 for Binary Floating-Point
    Arithmetic": 1E0/0 is Infinity, 0E0/0 NaN (Trino's infinity(), nan()). An integer or
    decimal divided by zero fails on Trino (DIVISION_BY_ZERO). Locally every division by
    zero failed."""
    (got,) = rows(
        "SELECT 1.0E0 / 0, -1.0E0 / 0, 0.0E0 / 0, avg(duration_ms) / 0, "
        "CAST(count(*) AS double) / 0, 7 / 2, 7.0E0 / 2 FROM envoy_access"
    )
    assert got[:2] == (math.inf, -math.inf) and math.isnan(got[2])
    assert got[3:] == (math.inf, math.inf, 3, 3.5)
    for integral in ("count(*) / 0", "1.5 / 0"):
        with pytest.raises(StatementError, match="Division by zero"):
            rows(f"SELECT {integral} FROM envoy_access")


def test_approx_distinct_is_exact_locally(warehouse: str) -> None:
    """https://trino.io/docs/current/functions/aggregate.html#approx_distinct: "This function
    provides an approximation of count(DISTINCT x) ... should produce a standard error of
    2.3%". Locally it is the exact count, as the local percentiles are (DuckDB's
    approx_count_distinct was 3.6% off on 6,047 values)."""
    engine = LocalEngine(warehouse)
    got = engine.run(
        "SELECT approx_distinct(x), approx_distinct(x, 0.01), approx_distinct(y) "
        "FROM UNNEST(sequence(1, 6047)) AS t(x) CROSS JOIN (VALUES CAST(NULL AS bigint)) u(y)",
        {},
    ).rows
    assert got == [(6047, 6047, 0)]
    assert (
        "COUNT(DISTINCT path)" in to_duckdb("SELECT approx_distinct(path) FROM envoy_access", {})[0]
    )


def test_cast_timestamp_to_varchar_as_trino(rows, tmp_path: Path) -> None:
    """https://trino.io/docs/current/language/types.html#timestamp: the table's timestamp is
    Trino's timestamp(3), whose text has three fraction digits ('2026-11-29 15:00:00.000');
    DuckDB printed '2026-11-29 15:00:00+00'."""
    assert rows(
        'SELECT CAST("timestamp" AS varchar), CAST(date_trunc(\'hour\', "timestamp") AS '
        'varchar) FROM envoy_access ORDER BY "timestamp"'
    ) == [
        ("2026-11-29 15:00:00.000", "2026-11-29 15:00:00.000"),
        ("2026-11-29 23:30:00.000", "2026-11-29 23:00:00.000"),
    ]
