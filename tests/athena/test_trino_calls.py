"""Ad-hoc Trino SQL answers as on Athena for the calls athena/trinocalls.py rewrites.

Each test runs the Trino text through the real local engine (transpiled, then DuckDB) and
compares with what Trino's documentation (or its code, where named) gives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from athena.engines.local import LocalEngine
from athena.queries import QueryError, to_duckdb
from tests.athena.factory import access_frame, logs_frame, utc, write_frame

AT = utc(2024, 3, 10, 22, 0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LocalEngine:
    root = str(tmp_path_factory.mktemp("calls") / "warehouse")
    access = access_frame(3, AT, utc(2024, 3, 10, 23, 0), ["recipe"], seed=5)
    access["timestamp"] = [
        datetime(2024, 3, 10, 22, 0, 3, 719000, tzinfo=AT.tzinfo),
        datetime(2024, 3, 10, 22, 5, 0, 0, tzinfo=AT.tzinfo),
        datetime(2024, 3, 10, 22, 7, 1, 500000, tzinfo=AT.tzinfo),
    ]
    write_frame(root, "envoy_access", access)
    logs = logs_frame(2, AT, utc(2024, 3, 10, 23, 0), ["recipe"], seed=6)
    logs["message"] = ['{"level":"warn","ctx":{"id":7}}', "INFO plain text, not JSON"]
    write_frame(root, "container_logs", logs)
    return LocalEngine(root)


def rows(engine: LocalEngine, sql: str) -> list[tuple[Any, ...]]:
    return engine.run(sql, {}).rows


def test_json_extract_of_text_that_is_not_json_is_null(engine: LocalEngine) -> None:
    """Trino's JsonExtract returns NULL when the text does not parse: a log line that is not
    JSON is a NULL level, not a failed query (DuckDB: "Malformed JSON")."""
    got = rows(
        engine,
        "SELECT json_extract_scalar(message, '$.level'), json_extract(message, '$.ctx') "
        "FROM container_logs ORDER BY 1 NULLS LAST",
    )
    assert got == [("warn", '{"id":7}'), (None, None)]
    assert rows(engine, "SELECT json_extract_scalar('', '$.a'), json_extract('x', '$')") == [
        (None, None)
    ]


def test_json_extract_scalar_of_an_object_or_array_is_null(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/json.html#json_extract_scalar: "the value
    referenced by json_path must be a scalar (boolean, number or string)"; else NULL. DuckDB
    gave the object's JSON text."""
    sql = (
        "SELECT json_extract_scalar('{\"a\":{\"b\":1}}', '$.a'), "
        "json_extract_scalar('{\"a\":[1]}', '$.a'), json_extract_scalar('{\"a\":{\"b\":1}}', "
        "'$.a.b'), json_extract_scalar('{\"it''s\":true}', '$[\"it''s\"]')"
    )
    assert rows(engine, sql) == [(None, None, "1", "true")]


def test_split_with_a_limit_keeps_the_rest_in_the_last_field(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/string.html#split: "The last element in the
    array always contain everything left in the string"; sqlglot dropped the limit."""
    got = rows(
        engine,
        "SELECT split('a,b,c', ',', 2), split('a,b,c', ',', 1), split('a,b,c', ',', 5), "
        "split(NULL, ',', 2), split('/api/recipes/42', '/', 3)",
    )
    assert got == [(["a", "b,c"], ["a,b,c"], ["a", "b", "c"], None, ["", "api", "recipes/42"])]
    with pytest.raises(QueryError, match="limit 0 is below 1"):
        to_duckdb("SELECT split(path, '/', 0) FROM envoy_access", {})


def test_substr_outside_the_text_is_empty_as_in_trino(engine: LocalEngine) -> None:
    """Trino's StringFunctions.substr: '' for a start of 0, a length below 1, or a negative
    start before the beginning. DuckDB took start 0 as the position before the first
    character ('he' for substr('hello', 0, 3)) and clamped the rest."""
    got = rows(
        engine,
        "SELECT substr('hello', 0, 3), substr('hello', 0), substr('hello', -10), "
        "substr('hello', -10, 7), substr('hello', 3, -1), substr('hello', -5), "
        "substr('hello', -3, 2), substr('héllo', 2, 2), substr(NULL, 0), "
        "substring('hello' FROM 0 FOR 2)",
    )
    assert got == [("", "", "", "", "", "hello", "ll", "él", None, "")]


def test_at_time_zone_of_a_timestamp_without_zone_reads_it_as_utc(engine: LocalEngine) -> None:
    """Trino reads a TIMESTAMP in the session zone (UTC on Athena) and shows it in the zone
    given: 22:00 UTC is 18:00 in New York (EDT since that morning). DuckDB took 22:00 as New
    York time (02:00 UTC the next day). The table's zoned column was right and stays so."""
    got = rows(
        engine,
        "SELECT TIMESTAMP '2024-03-10 22:00:00' AT TIME ZONE 'America/New_York', "
        "hour(\"timestamp\" AT TIME ZONE 'America/New_York') FROM envoy_access "
        'ORDER BY "timestamp" LIMIT 1',
    )
    assert got == [(datetime(2024, 3, 10, 18, 0), 18)]


def test_cast_of_a_double_to_an_integer_rounds_half_away_from_zero(engine: LocalEngine) -> None:
    """Trino's DoubleOperators cast through MathFunctions.round (half away from zero):
    CAST(2.5e0 AS integer) is 3; DuckDB rounds half to even (2)."""
    got = rows(
        engine,
        "SELECT CAST(2.5e0 AS integer), CAST(-2.5e0 AS bigint), try_cast(0.5e0 AS smallint), "
        "CAST(avg(x) AS bigint), CAST('12' AS integer), CAST(2.5 AS integer) "
        "FROM (VALUES 1, 2) t(x)",
    )
    assert got == [(3, -3, 1, 2, 12, 3)]


def test_cast_of_the_timestamp_column_to_text_prints_as_athena(engine: LocalEngine) -> None:
    """Athena's column is a timestamp(3): its text has three fraction digits and no zone;
    the local TIMESTAMP WITH TIME ZONE printed '2024-03-10 22:00:03.719+00'."""
    got = rows(
        engine,
        'SELECT CAST("timestamp" AS varchar), CAST(date_trunc(\'hour\', "timestamp") AS '
        'varchar), CAST(1 AS varchar) FROM envoy_access ORDER BY "timestamp"',
    )
    assert got == [
        ("2024-03-10 22:00:03.719", "2024-03-10 22:00:00.000", "1"),
        ("2024-03-10 22:05:00.000", "2024-03-10 22:00:00.000", "1"),
        ("2024-03-10 22:07:01.500", "2024-03-10 22:00:00.000", "1"),
    ]


def test_weighted_approx_percentile_is_refused_not_answered_unweighted() -> None:
    """approx_percentile(x, w, p) became quantile_disc(x, p): the weight was dropped."""
    with pytest.raises(QueryError, match="with a weight has no local equivalent"):
        to_duckdb("SELECT approx_percentile(duration_ms, bytes_sent, 0.5) FROM envoy_access", {})


def test_extract_fields_as_trino_names_and_numbers_them(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/datetime.html#extract: DOW is day_of_week(),
    1 (Monday) to 7 (Sunday): DuckDB's dow made Sunday 0. DAY_OF_WEEK, YEAR_OF_WEEK/YOW and
    DAY_OF_MONTH failed ("extract specifier not recognized")."""
    got = rows(
        engine,
        "SELECT extract(dow FROM DATE '2024-03-10'), extract(day_of_week FROM DATE "
        "'2024-03-11'), extract(yow FROM DATE '2024-12-30'), extract(year_of_week FROM DATE "
        "'2024-12-30'), extract(day_of_month FROM DATE '2024-12-30'), extract(day_of_year FROM "
        "DATE '2024-02-01'), extract(dow FROM \"timestamp\") FROM envoy_access LIMIT 1",
    )
    assert got == [(7, 1, 2025, 2025, 30, 32, 7)]


def test_url_encode_and_decode_as_javas_url_coder(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/url.html#url_encode: "The ASCII space character
    is encoded as +", and ".-*_" are not encoded; url_decode reads + as a space (Java's
    URLDecoder). DuckDB wrote %20 and %2A, left ~, and kept + when decoding."""
    got = rows(
        engine, "SELECT url_encode('a b*~-_.é'), url_decode('q=a+b%20c%2B'), url_decode(NULL)"
    )
    assert got == [("a+b*%7E-_.%C3%A9", "q=a b c+", None)]


def test_java_named_groups_are_spelled_for_re2(engine: LocalEngine) -> None:
    """DuckDB refused Java's ``(?<name>...)`` ("invalid perl operator: (?<")."""
    assert rows(
        engine,
        "SELECT regexp_extract('x=42', 'x=(?<n>[0-9]+)', 1), regexp_like('ab', '(?<g>b)'), "
        "regexp_replace('ab', '(?<g>b)', 'c'), regexp_extract_all('a1b2', '(?<d>[0-9])')",
    ) == [("42", True, "ac", ["1", "2"])]


@pytest.mark.parametrize(
    "pattern",
    [r"\(?<x>", r"[(?<]x", r"[]?<]", r"\Q(?<x>\E", "a(?:b)(?i)c"],
)
def test_what_only_looks_like_a_named_group_is_left_as_written(pattern: str) -> None:
    from athena.trinocalls import _re2_spelling

    assert _re2_spelling(pattern, "regexp_like") == pattern
    assert _re2_spelling(r"\Q(?<x>\E(?<y>z)", "f") == r"\Q(?<x>\E(?P<y>z)"


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"(?<=x=)\d", "a lookbehind ((?<=...)"),
        (r"(?<!x)\d", "a negative lookbehind ((?<!...)"),
        (r"\d(?=ms)", "a lookahead ((?=...)"),
        (r"\d(?!ms)", "a negative lookahead ((?!...)"),
        (r"(?>a|ab)c", "an atomic group ((?>...)"),
    ],
)
def test_a_lookaround_is_refused_with_what_to_do(pattern: str, what: str) -> None:
    with pytest.raises(QueryError) as refused:
        to_duckdb(f"SELECT regexp_extract(message, '{pattern}') FROM container_logs", {})
    assert f"regexp_extract: the pattern holds {what}" in str(refused.value)
    assert "--engine athena" in str(refused.value)


@pytest.mark.parametrize("sql", ["SELECT 1/0", "SELECT 1.0/0", "SELECT 1e0/0"])
def test_a_division_by_zero_says_what_to_do_in_logqs_words(engine: LocalEngine, sql: str) -> None:
    """DuckDB's message showed the division as ``//`` (integer_division) and advised a SET,
    which logq refuses."""
    from athena.engines.local import DIVISION_BY_ZERO_TEXT
    from athena.engines.result import StatementError

    with pytest.raises(StatementError) as failed:
        rows(engine, sql)
    assert str(failed.value) == DIVISION_BY_ZERO_TEXT
    assert "nullif(x, 0)" in str(failed.value) and "//" not in str(failed.value)
