"""athena.arrow_values: the same Python values as pyarrow's own conversion, without pandas."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfoNotFoundError

import pyarrow as pa
import pytest

from athena.arrow_values import column_values, scalar_value, zone_of
from tests.athena.factory import access_frame, utc, write_frame

INSTANTS = [0, 1_700_000_000_123_456, -86_400_000_001, None, 253_402_300_799_999_999]
"""Microseconds: the epoch, a recent time, before 1970, NULL, the last microsecond of 9999."""


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize("tz", ["UTC", "Etc/UTC", "+05:30", "-08:00", "America/New_York"])
def test_zoned_timestamps_equal_pyarrows_own_values(unit: str, tz: str) -> None:
    per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    values = [None if v is None else v // per_unit for v in INSTANTS]
    column = pa.chunked_array([pa.array(values, pa.int64()).cast(pa.timestamp(unit, tz=tz))])
    try:
        theirs = column.to_pylist()
    except OverflowError:  # year 9999 east of UTC: past datetime's range, both refuse
        with pytest.raises(OverflowError):
            column_values(column)
        column = column.slice(0, len(values) - 1)
        theirs = column.to_pylist()
    ours = column_values(column)
    assert ours == theirs
    assert [t.utcoffset() if t else None for t in ours] == [
        t.utcoffset() if t else None for t in theirs
    ]
    for i, value in enumerate(theirs):
        assert scalar_value(column[i]) == value


def test_other_types_are_pyarrows_own_values() -> None:
    table = pa.table(
        {
            "naive": pa.array([1, None], pa.timestamp("ms")),
            "text": ["a", None],
            "n": [1, 2],
            "ns": pa.array([1, None], pa.timestamp("ns", tz="UTC")),
        }
    )
    for column in table.columns:
        assert column_values(column) == column.to_pylist()


def test_a_local_query_with_times_loads_neither_pandas_nor_numpy(tmp_path: Path) -> None:
    """pyarrow imports pandas (half a second) to convert zoned times; logq's answers hold
    them, and `logq services` reads the newest of each partition: neither needs it. pyarrow
    imports numpy at its own import (0.3 CPU-s), and logq never uses it: the console entry
    keeps it out (athena/unused_imports.py). Without either block this names it."""
    uri = str(tmp_path / "wh")
    assert _loaded_after_queries(uri, None) == "loaded: []"


@pytest.mark.integration
@pytest.mark.s3
def test_a_query_over_s3_loads_neither_pandas_nor_numpy(
    s3_warehouse: str, subprocess_env: dict[str, str], s3_env: dict[str, str]
) -> None:
    """Over S3 the tables are read through pyarrow.dataset, whose load imported pandas (half
    a CPU-second of every such ``logq``): without numpy (athena/unused_imports.py) pandas
    cannot load, and the answers are the same."""
    env = {**subprocess_env, **s3_env}
    assert _loaded_after_queries(s3_warehouse, env) == "loaded: []"


def _loaded_after_queries(uri: str, env: dict[str, str] | None) -> str:
    """Which of pandas and numpy are loaded after three commands over ``uri`` (rows written
    here), run in a new Python through the ``logq`` console entry, as a user runs them."""
    write_frame(uri, "envoy_access", access_frame(50, utc(2026, 11, 27), utc(2026, 11, 28), ["a"]))
    script = (
        "import sys\n"
        "from cli.launch import main\n"
        f"for args in (['errors', '--since', '2026-11-26T00:00:00Z'], ['services'],\n"
        "             ['sql', 'SELECT timestamp FROM envoy_access', '-f', 'json']):\n"
        f"    sys.argv = ['logq', *args, '--warehouse', {uri!r}]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, exit.code\n"
        "    print('\\n-- done', flush=True)\n"
        "print('loaded:', [m for m in ('pandas', 'numpy') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    *answers, last = done.stdout.split("-- done\n")
    errors, services, times = answers
    assert "/api/" in errors and "2026-11-27" in services and "2026-11-27" in times, done.stdout
    return last.strip()


def test_intervals_read_as_athena_prints_them() -> None:
    """`max(timestamp) - min(timestamp)` printed as DuckDB's MonthDayNano tuple
    (`[0, 0, 4260000000000]` in JSON); Athena's forms instead: day to second in milliseconds,
    year to month as years-months, the sign in front, NULL kept."""
    import duckdb

    sql = (
        "SELECT TIMESTAMP '2026-11-30 23:11:00' - TIMESTAMP '2026-11-30 22:00:00' AS span, "
        "INTERVAL '1' DAY - INTERVAL '1' HOUR AS a, INTERVAL '-90' MINUTE AS neg, "
        "INTERVAL '1.5' SECOND AS ms, INTERVAL '14' MONTH AS ym, INTERVAL '-3' MONTH AS yneg, "
        "INTERVAL '14' MONTH + INTERVAL '2' DAY AS mixed, INTERVAL '0' SECOND AS zero, "
        "CAST(NULL AS INTERVAL) AS nothing"
    )
    table = duckdb.sql(sql).to_arrow_table()
    assert [column_values(c) for c in table.columns] == [
        ["0 01:11:00.000"],
        ["0 23:00:00.000"],
        ["-0 01:30:00.000"],
        ["0 00:00:01.500"],
        ["1-2"],
        ["-0-3"],
        ["1-2 2 00:00:00.000"],
        ["0 00:00:00.000"],
        [None],
    ]


def test_maps_read_as_dicts() -> None:
    """`histogram(response_code)` is a map: pyarrow's key-value pairs printed in JSON as
    `[[200, 700], [404, 34]]`; a dict prints as an object. A key a dict cannot hold (a list)
    keeps the pairs; NULL is kept."""
    import duckdb

    sql = (
        "SELECT histogram(code) AS h, map([[1]], [2]) AS listed, "
        "CAST(NULL AS MAP(VARCHAR, INTEGER)) AS nothing FROM (VALUES (200), (200), (404)) t(code)"
    )
    table = duckdb.sql(sql).to_arrow_table()
    assert [column_values(c) for c in table.columns] == [
        [{200: 2, 404: 1}],
        [[([1], 2)]],
        [None],
    ]


def test_intervals_round_to_the_millisecond_as_trino() -> None:
    """Trino's timestamp(p) minus timestamp(p) rounds to the nearest millisecond, a half up
    (1.5 ms is 2, -1.5 ms is -1, -1.6 ms is -2); locally the microseconds were cut off
    (`now() - max(timestamp)`, literals with a 4th digit)."""
    import duckdb

    base = "TIMESTAMP '2026-01-01 00:00:00'"
    spans = [
        f"TIMESTAMP '2026-01-01 00:00:00.0015' - {base}",
        f"{base} - TIMESTAMP '2026-01-01 00:00:00.0015'",
        f"{base} - TIMESTAMP '2026-01-01 00:00:00.0016'",
        f"{base} - TIMESTAMP '2026-01-01 00:00:00.0004'",
        "TIMESTAMP '2025-12-31 23:59:59.9994' - TIMESTAMP '2026-01-02 00:00:00'",
    ]
    table = duckdb.sql("SELECT " + ", ".join(spans)).to_arrow_table()
    assert [column_values(c) for c in table.columns] == [
        ["0 00:00:00.002"],
        ["-0 00:00:00.001"],
        ["-0 00:00:00.002"],
        ["0 00:00:00.000"],
        ["-1 00:00:00.001"],
    ]


def test_intervals_and_maps_inside_arrays_rows_and_maps() -> None:
    """An interval or a map inside an array, a row or a map printed as before the fix at the
    top level: MonthDayNano tuples and key-value pairs (`[[[200, 2]]]` in JSON)."""
    import duckdb

    sql = (
        "SELECT [histogram(code)] AS maps, [INTERVAL '90' MINUTE, NULL] AS spans, "
        "{'span': INTERVAL '14' MONTH, 'codes': histogram(code)} AS r, "
        "map(['a'], [INTERVAL '1' SECOND]) AS valued, map([INTERVAL '1' DAY], [1]) AS keyed, "
        "[CAST(NULL AS MAP(VARCHAR, INTEGER))] AS nulls "
        "FROM (VALUES (200), (200), (404)) t(code)"
    )
    table = duckdb.sql(sql).to_arrow_table()
    assert [column_values(c) for c in table.columns] == [
        [[{200: 2, 404: 1}]],
        [["0 01:30:00.000", None]],
        [{"span": "1-2", "codes": {200: 2, 404: 1}}],
        [{"a": "0 00:00:01.000"}],
        [{"1 00:00:00.000": 1}],
        [[None]],
    ]


def test_map_keys_are_spelled_as_json_spells_them() -> None:
    """A dict key reaches JSON through `str()`: `histogram(date_trunc('hour', timestamp))`
    printed `"2026-11-30 22:00:00+00:00"` (ISO-8601 `...T22:00:00.000Z` everywhere else, and in
    the pairs before maps were dicts) and `histogram(code >= 500)` printed `"False"`."""
    import duckdb

    sql = (
        "SELECT histogram(date_trunc('hour', ts)) AS hours, histogram(code >= 500) AS failed, "
        "histogram(encode('é')) AS blobs FROM (VALUES (TIMESTAMPTZ '2026-11-30 22:10:00+00', "
        "200), (TIMESTAMPTZ '2026-11-30 22:20:00+00', 503)) t(ts, code)"
    )
    table = duckdb.sql(sql).to_arrow_table()
    assert [column_values(c) for c in table.columns] == [
        [{"2026-11-30T22:00:00.000Z": 2}],
        [{"false": 1, "true": 1}],
        [{"é": 2}],
    ]


def test_a_map_whose_keys_read_the_same_keeps_its_pairs() -> None:
    """Times apart by under a millisecond print the same: a dict would keep one count."""
    import duckdb

    sql = (
        "SELECT histogram(ts) AS h FROM (VALUES (TIMESTAMPTZ '2026-11-30 22:00:00.0001+00'), "
        "(TIMESTAMPTZ '2026-11-30 22:00:00.0002+00')) t(ts)"
    )
    [[pairs]] = [column_values(c) for c in duckdb.sql(sql).to_arrow_table().columns]
    assert [count for _, count in pairs] == [1, 1]


def test_numpy_kept_out_says_why() -> None:
    """In a ``logq`` process, something that does ask for numpy is told why it is missing."""
    code = "from athena.unused_imports import numpy_kept_out\nnumpy_kept_out()\nimport numpy\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ImportError: numpy is not loaded in logq, which never uses it" in done.stderr


@pytest.mark.parametrize("name", ["+٠٥:٣٠", "+05:30x", "+5:30", "05:30"])
def test_a_fixed_offset_zone_is_ascii_digits_and_nothing_more(name: str) -> None:
    """``+٠٥:٣٠`` passed ``str.isdigit`` and read as +05:30; ``+05:30x`` as +05:30 too."""
    with pytest.raises(ZoneInfoNotFoundError):  # an IANA name it is not
        zone_of(name)


def test_fixed_offset_zones() -> None:
    assert zone_of("+05:30").utcoffset(None) == timedelta(hours=5, minutes=30)
    assert zone_of("-01:00").utcoffset(None) == timedelta(hours=-1)
