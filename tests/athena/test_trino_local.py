"""Ad-hoc counts and time zones: what the local engine gives for Athena SQL it cannot mirror.

Each test runs Trino text through the real local engine (transpiled, then DuckDB over a
warehouse written as the aggregator writes it) and compares with Trino's documentation.
"""

from __future__ import annotations

import pytest

from athena.engines.local import LocalEngine
from athena.engines.result import StatementError
from athena.queries import QueryError, to_duckdb
from tests.athena.factory import access_frame, utc, write_frame

AT_15 = utc(2026, 11, 29, 15, 0)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("zones") / "warehouse")
    frame = access_frame(2, AT_15, utc(2026, 11, 29, 16, 0), ["recipe"], seed=3)
    write_frame(root, "envoy_access", frame)
    return root


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


@pytest.mark.parametrize("function", ["with_timezone", "at_timezone"])
def test_zone_functions_are_athena_only_locally(warehouse: str, function: str) -> None:
    """Trino's timestamp with time zone has no local counterpart (DuckDB's AT TIME ZONE gives
    a wall time without a zone): these are refused with the reason rather than answered in the
    wrong zone. An attempt to carry zones on the tree gave wrong answers (R3: a zone leaking
    to a same-named column of a sibling query, lost through date() and intervals)."""
    with pytest.raises((QueryError, StatementError), match="Athena"):
        LocalEngine(warehouse).run(
            f"SELECT {function}(\"timestamp\", 'Europe/Berlin') FROM envoy_access", {}
        )
