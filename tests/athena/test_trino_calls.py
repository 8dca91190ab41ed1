"""Ad-hoc Trino SQL answers as on Athena for the calls athena/trinocalls.py rewrites.

Each test runs the Trino text through the real local engine (transpiled, then DuckDB) and
compares with what Trino's documentation (or its code, where named) gives.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from athena.engines.local import LocalEngine
from athena.engines.result import StatementError
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
    given: 22:00 UTC is 18:00 in New York (EDT since that morning), the same instant. DuckDB
    took 22:00 as New York time (02:00 UTC the next day). The table's zoned column was right
    and stays so."""
    got = rows(
        engine,
        "SELECT TIMESTAMP '2024-03-10 22:00:00' AT TIME ZONE 'America/New_York', "
        "hour(\"timestamp\" AT TIME ZONE 'America/New_York') FROM envoy_access "
        'ORDER BY "timestamp" LIMIT 1',
    )
    assert got == [(utc(2024, 3, 10, 22, 0), 18)]


def test_a_printed_at_time_zone_value_is_its_instant(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/datetime.html#time-zone-conversion: AT TIME ZONE
    "sets the time zone of a timestamp", the same instant (timestamp '2012-10-31 01:00 UTC' AT
    TIME ZONE 'America/Los_Angeles' is 2012-10-30 18:00:00.000 America/Los_Angeles). Locally
    the value was New York's wall time without a zone, printed as UTC: 4 hours off. Printed
    now as the instant, directly, through a derived table's or WITH query's column, and
    date_trunc of one (New York's midnight, still EST: 05:00 UTC), while hour() and
    date_format() keep New York's wall time, as Trino's do."""
    ny = "\"timestamp\" AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"WITH c AS (SELECT {ny} AS wall FROM envoy_access ORDER BY 1 LIMIT 1) "
        f"SELECT {ny} AS d, date_trunc('day', {ny}), hour({ny}), "
        f"date_format({ny}, '%Y-%m-%d %H'), w, c.wall FROM envoy_access, "
        f"(SELECT {ny} AS w FROM envoy_access ORDER BY 1 LIMIT 1), c "
        'ORDER BY "timestamp" LIMIT 1',
    )
    first = utc(2024, 3, 10, 22, 0, 3, 719000)
    assert got == [(first, utc(2024, 3, 10, 5, 0), 18, "2024-03-10 18", first, first)]
    grouped = rows(
        engine,
        f"SELECT date_trunc('hour', {ny}) AS h, count(*) FROM envoy_access GROUP BY 1",
    )
    assert grouped == [(utc(2024, 3, 10, 22, 0), 3)]


def test_at_time_zone_in_the_hour_clocks_go_back_keeps_both_instants(engine: LocalEngine) -> None:
    """New York's 01:30 on 2024-11-03 was two instants (05:30 and 06:30 UTC); both printed as
    one wall time without a zone."""
    got = rows(
        engine,
        "SELECT x AT TIME ZONE 'America/New_York', hour(x AT TIME ZONE 'America/New_York') "
        "FROM (VALUES TIMESTAMP '2024-11-03 05:30:00', TIMESTAMP '2024-11-03 06:30:00') t(x) "
        "ORDER BY x",
    )
    assert got == [(utc(2024, 11, 3, 5, 30), 1), (utc(2024, 11, 3, 6, 30), 1)]


def test_cast_of_an_at_time_zone_value_to_text_names_its_zone(engine: LocalEngine) -> None:
    """Trino casts a TIMESTAMP WITH TIME ZONE to text with its zone's name
    (SqlTimestampWithTimeZone: '2024-03-10 18:00:03.719 America/New_York'); locally it was the
    wall time alone, which reads as UTC on a page of UTC times."""
    got = rows(
        engine,
        "WITH c AS (SELECT \"timestamp\" AT TIME ZONE 'Asia/Kolkata' AS k FROM envoy_access) "
        "SELECT CAST(\"timestamp\" AT TIME ZONE 'America/New_York' AS varchar), "
        "CAST(date_trunc('hour', \"timestamp\" AT TIME ZONE 'America/New_York') AS varchar), "
        "(SELECT CAST(k AS varchar) FROM c ORDER BY k LIMIT 1) "
        'FROM envoy_access ORDER BY "timestamp" LIMIT 1',
    )
    assert got == [
        (
            "2024-03-10 18:00:03.719 America/New_York",
            "2024-03-10 18:00:00.000 America/New_York",
            "2024-03-11 03:30:03.719 Asia/Kolkata",
        )
    ]


def test_a_comparison_with_an_at_time_zone_value_compares_instants(engine: LocalEngine) -> None:
    """Trino compares a TIMESTAMP WITH TIME ZONE with a TIMESTAMP as instants, the TIMESTAMP
    read in the session zone (UTC on Athena): 22:05 UTC and later are the last two rows.
    Locally New York's wall time (18:05) was compared as if UTC, and none was."""
    ny = "\"timestamp\" AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"SELECT count_if({ny} >= TIMESTAMP '2024-03-10 22:05:00'), "
        f"count_if({ny} BETWEEN TIMESTAMP '2024-03-10 22:01:00' AND '2024-03-10 22:06:00'), "
        f'count_if({ny} = "timestamp") FROM envoy_access',
    )
    assert got == [(2, 1, 3)]


def test_in_with_an_at_time_zone_value_compares_instants(engine: LocalEngine) -> None:
    """Trino's x IN (a, b) is x = a OR x = b, compared as instants as = is: the row of 22:05
    UTC is IN (TIMESTAMP '2024-03-10 22:05:00') in New York too. Locally New York's wall time
    (18:05) was looked up among UTC times, and no row was."""
    ny = "\"timestamp\" AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"SELECT count_if({ny} IN (TIMESTAMP '2024-03-10 22:05:00', TIMESTAMP '2000-01-01')), "
        f"count_if({ny} NOT IN (TIMESTAMP '2024-03-10 22:05:00')), "
        f"count_if(TIMESTAMP '2024-03-10 22:05:00' IN ({ny})) FROM envoy_access",
    )
    assert got == [(1, 2, 1)]


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


@pytest.mark.parametrize(
    "sql", ["SELECT 1/0", "SELECT 1.0/0", "SELECT x/y FROM (VALUES (1, 0)) t(x, y)"]
)
def test_a_division_by_zero_says_what_to_do_in_logqs_words(engine: LocalEngine, sql: str) -> None:
    """DuckDB's message showed the division as ``//`` (integer_division) and advised a SET,
    which logq refuses."""
    from athena.engines.local import DIVISION_BY_ZERO_TEXT
    from athena.engines.result import StatementError

    with pytest.raises(StatementError) as failed:
        rows(engine, sql)
    assert str(failed.value) == DIVISION_BY_ZERO_TEXT
    assert "nullif(x, 0)" in str(failed.value) and "//" not in str(failed.value)


def test_regexp_extract_of_a_group_left_unset_is_null(engine: LocalEngine) -> None:
    """JoniRegexpFunctions.regexpExtract: NULL when the group took no part in the match (an
    optional group, the other side of an alternation); DuckDB gave ''. An empty group that
    matched stays '', and regexp_extract_all has NULL elements there on both engines."""
    got = rows(
        engine,
        "SELECT regexp_extract('ab', 'a(x)?b', 1), regexp_extract('ab', 'a(x?)b', 1), "
        "regexp_extract('GET /', '(POST|(GET)) (/)', 2), regexp_extract('POST /', "
        "'(POST|(GET)) (/)', 2), regexp_extract('zz', 'a(x)?', 1), regexp_extract('ab', 'b'), "
        "regexp_extract_all('ab ac', 'a(x)?', 1)",
    )
    assert got == [(None, "", "GET", None, None, "b", [None, None])]


def test_array_subscript_outside_the_array_fails_as_in_trino(engine: LocalEngine) -> None:
    """Trino's ArraySubscriptOperator fails outside the array (DuckDB: NULL, and a negative
    index counted from the end); element_at is NULL there, and fails for 0 only."""
    assert rows(
        engine,
        "SELECT ARRAY[1, 2][2], x[i], element_at(ARRAY[1, 2], 5), element_at(ARRAY[1, 2], -1), "
        "split('a,b', ',')[2], MAP(ARRAY['k'], ARRAY[7])['k'], MAP(ARRAY[5], ARRAY[ARRAY[1]])[5] "
        "FROM (VALUES (ARRAY[3, 4], 1)) t(x, i)",
    ) == [(2, 3, None, 2, "b", 7, [1])]
    for sql, says in [
        (
            "SELECT ARRAY[1, 2][5]",
            "Array subscript must be less than or equal to array length: 5 > 2",
        ),
        ("SELECT x[i] FROM (VALUES (ARRAY[3, 4], 3)) t(x, i)", "array length: 3 > 2"),
        ("SELECT ARRAY[1, 2][-1]", "Array subscript is negative: -1"),
        ("SELECT ARRAY[1, 2][0]", "SQL array indices start at 1"),
        ("SELECT element_at(ARRAY[1, 2], 0)", "SQL array indices start at 1"),
    ]:
        with pytest.raises(StatementError, match=re.escape(says)):
            rows(engine, sql)


def test_date_format_takes_trinos_specifiers(engine: LocalEngine) -> None:
    """Trino's date_format (DateTimeFunctions): %v is the ISO week and %x its year (DuckDB
    refused %v); a letter Trino does not know is that letter."""
    got = rows(
        engine,
        "SELECT date_format(TIMESTAMP '2024-12-30 13:05:09', '%x-W%v %W %i:%s %q'), "
        "date_format(DATE '2021-01-03', '%x-W%v'), date_format(\"timestamp\", '%v') "
        'FROM envoy_access ORDER BY "timestamp" LIMIT 1',
    )
    assert got == [("2025-W01 Monday 05:09 q", "2020-W53", "10")]


@pytest.mark.parametrize("spec", ["%u", "%U", "%V", "%w", "%X", "%D"])
def test_date_format_specifiers_trino_refuses_are_refused(spec: str) -> None:
    """Trino: "%u not supported in date format string"; sqlglot gave %u DuckDB's meaning of
    %W (a week from Monday), an answer where Athena has none."""
    with pytest.raises(QueryError, match=f"date_format\\(\\): {spec} is not supported"):
        to_duckdb(f"SELECT date_format(\"timestamp\", '{spec}') FROM envoy_access", {})


def test_json_size_as_trino(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/json.html#json_size: the members of an object
    or array, 0 for a scalar; NULL where the path finds nothing, and for text not JSON."""
    got = rows(
        engine,
        'SELECT json_size(\'{"x": {"a": 1, "b": 2}}\', \'$.x\'), json_size(\'{"x": [1, 2, 3]}\', '
        "'$.x'), json_size('{\"x\": {\"a\": 1}}', '$.x.a'), json_size('{\"x\": 1}', '$.y'), "
        "json_size(message, '$.ctx') FROM container_logs ORDER BY 5 NULLS LAST",
    )
    assert got == [(2, 3, 0, None, 1), (2, 3, 0, None, None)]


def test_any_all_none_match_with_sqls_three_values(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/array.html#any_match: NULL when the predicate
    is NULL for an element and decides for none; an empty array is false for any_match, true
    for the other two."""
    got = rows(
        engine,
        "SELECT any_match(ARRAY[1, 2], x -> x > 1), any_match(ARRAY[1, NULL], x -> x > 1), "
        "any_match(ARRAY[], x -> x > 1), all_match(ARRAY[2, 3], x -> x > 1), "
        "all_match(ARRAY[2, NULL], x -> x > 1), all_match(ARRAY[0, NULL], x -> x > 1), "
        "all_match(ARRAY[], x -> x > 1), none_match(ARRAY[1], x -> x > 1), "
        "none_match(ARRAY[1, NULL], x -> x > 1), none_match(ARRAY[5, NULL], x -> x > 1), "
        "any_match(CAST(NULL AS array(integer)), x -> x > 1)",
    )
    assert got == [(True, None, False, True, None, False, True, True, None, False, None)]


def test_regexp_position_as_trino(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/regexp.html#regexp_position (its examples
    first): the n-th match from start, each search from where the last one ended, over the
    whole text (^ is its start); -1 without one."""
    text = "'I have 23 apples, 5 pears and 13 oranges'"
    got = rows(
        engine,
        f"SELECT regexp_position({text}, '\\b\\d+\\b'), regexp_position({text}, '\\b\\d+\\b', 5), "
        f"regexp_position({text}, '\\b\\d+\\b', 12), regexp_position({text}, '\\b\\d+\\b', 12, 2), "
        f"regexp_position({text}, '\\b\\d+\\b', 12, 3), regexp_position('abc', 'c', 4), "
        "regexp_position('aaa', 'aa', 2), regexp_position('aaa', 'a+', 1, 2), "
        "regexp_position('abc', 'x*', 1, 3), regexp_position('éxé', 'é', 2), "
        "regexp_position('ab', '^b', 2), regexp_position('k=v', '(?<key>\\w)=')",
    )
    assert got == [(8, 8, 19, 31, -1, -1, 2, -1, 3, 3, -1, 1)]
    assert rows(  # columns named as the rewrite's lambda parameters are still the columns
        engine, "SELECT regexp_position(q, 'b', m, n) FROM (VALUES ('abab', 2, 2)) t(q, m, n)"
    ) == [(4,)]
    with pytest.raises(StatementError, match="start position cannot be smaller than 1"):
        rows(engine, "SELECT regexp_position('abc', 'b', 0)")


def test_a_double_divided_by_zero_is_infinity_or_nan(engine: LocalEngine) -> None:
    """IEEE's answer, as Trino's, where the statement shows a DOUBLE or REAL (DuckDB failed:
    integer_division makes every / its //); integers still divide as integers, truncated."""
    got = rows(
        engine,
        "SELECT 1e0 / 0, -1e0 / y, CAST(y AS double) / y, coalesce(y, 0e0) / 0, 7 / d, -7 / d, "
        "d * 1e0 / 4, CAST(1 AS real) / 0, typeof(7 / d) FROM (VALUES (1, 0, 2)) t(x, y, d)",
    )
    assert [str(v) for v in got[0]] == [
        "inf", "-inf", "nan", "nan", "3", "-3", "0.5", "inf", "INTEGER"
    ]  # fmt: skip
    from athena.engines.local import DIVISION_BY_ZERO_TEXT

    with pytest.raises(StatementError) as failed:  # a DOUBLE behind *: DuckDB's // fails
        rows(engine, "SELECT x / y FROM (SELECT * FROM (VALUES (1e0, 0e0)) t(x, y))")
    assert str(failed.value) == DIVISION_BY_ZERO_TEXT
    assert "CAST(x AS double) / y" in DIVISION_BY_ZERO_TEXT


def test_cast_of_a_double_to_text_as_java_prints_it(engine: LocalEngine) -> None:
    """Trino's CAST(double AS varchar) is Java's Double.toString: 1.0E7 from 1e7 up and under
    1e-3 (DuckDB wrote 10000000.0 and 1.5e-05), NaN and Infinity (DuckDB: nan, inf)."""
    got = rows(
        engine,
        "SELECT CAST(1e7 AS varchar), CAST(1.5e-5 AS varchar), CAST(-123456789.123e0 AS varchar), "
        "CAST(5e-4 AS varchar), CAST(0.1e0 + 0.2e0 AS varchar), CAST(-0e0 AS varchar), "
        "CAST(9999999.5e0 AS varchar), CAST(1e-3 AS varchar), CAST(0e0 / 0 AS varchar), "
        "CAST(-1e0 / 0 AS varchar), CAST(CAST(2.5e7 AS real) AS varchar), "
        "CAST(avg(bytes_sent) * 1e9 AS varchar) = CAST(avg(bytes_sent) * 1e9 AS varchar)"
        " FROM envoy_access",
    )
    assert got == [
        ("1.0E7", "1.5E-5", "-1.23456789123E8", "5.0E-4", "0.30000000000000004", "-0.0",
         "9999999.5", "0.001", "NaN", "-Infinity", "2.5E7", True)
    ]  # fmt: skip


def test_upper_keeps_the_sharp_s_as_trino(engine: LocalEngine) -> None:
    """Trino upper-cases character by character (Java's Character.toUpperCase): ß has no
    one-letter capital there and stays; DuckDB gave ẞ."""
    assert rows(engine, "SELECT upper('straße ßa'), upper('ẞ'), upper(NULL), lower('ẞ')") == [
        ("STRAßE ßA", "ẞ", None, "ß")
    ]


def test_a_double_column_divided_by_zero_is_infinity_or_nan(engine: LocalEngine) -> None:
    """Trino's DOUBLE division is IEEE's whatever holds the DOUBLE: a column of a VALUES list,
    a derived table or a WITH query defined as one, and avg() of an integer, which Trino
    types DOUBLE, are Infinity or NaN divided by 0 (DuckDB failed). An integer column, and
    avg() of a DECIMAL (a DECIMAL in Trino), still fail as on Athena; integers still
    truncate."""
    got = rows(
        engine,
        "WITH w AS (SELECT CAST(1 AS double) AS a) "
        "SELECT x / y, -x / 0, s.m / 0, w.a / 0, s.t / 2 FROM (VALUES (1e0, 0e0)) t(x, y) "
        "JOIN (SELECT avg(duration_ms) AS m, sum(duration_ms) AS t FROM envoy_access) s "
        "ON true CROSS JOIN w",
    )
    assert [str(v) for v in got[0][:4]] == ["inf", "-inf", "inf", "inf"]
    assert isinstance(got[0][4], int)
    assert rows(engine, "SELECT avg(response_code) / 0 > 0 FROM envoy_access") == [(True,)]
    assert rows(engine, "SELECT x / y FROM (SELECT 1 AS x, 0e0 AS y UNION ALL SELECT 3, 2)") == [
        (float("inf"),),
        (1.5,),
    ]
    from athena.engines.local import DIVISION_BY_ZERO_TEXT

    for sql in [
        "SELECT response_code / 0 FROM envoy_access",
        "SELECT t / 0 FROM (SELECT sum(duration_ms) AS t FROM envoy_access)",
        "SELECT a / 0 FROM (SELECT avg(x) AS a FROM (VALUES (1.5)) t(x))",
    ]:
        with pytest.raises(StatementError) as failed:
            rows(engine, sql)
        assert str(failed.value) == DIVISION_BY_ZERO_TEXT


def test_a_union_column_is_typed_by_position_not_by_later_branches_names(
    engine: LocalEngine,
) -> None:
    """A set operation's columns are named by its first branch and each branch gives its
    value at the same position (Trino's UNION): n is 7 and 3, integers, so n / 2 truncates;
    reading the second branch by name took its 0e0 for n and divided as DOUBLE (3.5, 1.5).
    f is 1e0 and 0e0 (by position), and 1 AS x with 2e0 a DOUBLE column."""
    got = rows(
        engine,
        "SELECT n / 2, f / 0 FROM (SELECT 7 AS n, 1e0 AS f UNION ALL SELECT 3 AS f, 0e0 AS n) "
        "ORDER BY 1 DESC",
    )
    assert [(n, str(f)) for n, f in got] == [(3, "inf"), (1, "nan")]
    assert all(isinstance(n, int) for n, _ in got)
    union = "SELECT x / 0 FROM (SELECT 1 AS x UNION ALL SELECT 2e0 AS y)"
    assert [str(x) for (x,) in rows(engine, union)] == ["inf", "inf"]


def test_a_column_renamed_by_its_tables_alias_is_typed_by_position(engine: LocalEngine) -> None:
    """``t(x, y) AS (SELECT 1e0 AS y, 7 AS x)`` (a WITH query or a derived table with column
    names) names the query's columns by position: y is 7, an integer, so y / 2 truncates (it
    was typed by the query's own name, a DOUBLE: 3.5), and x is the DOUBLE, Infinity over 0."""
    for sql in [
        "WITH t(x, y) AS (SELECT 1e0 AS y, 7 AS x) SELECT y / 2, x / 0 FROM t",
        "SELECT y / 2, x / 0 FROM (SELECT 1e0 AS y, 7 AS x) AS t(x, y)",
    ]:
        ((y, x),) = rows(engine, sql)
        assert (y, str(x)) == (3, "inf")
        assert isinstance(y, int)


def test_trinos_own_zoned_timestamps_print_with_their_zone(engine: LocalEngine) -> None:
    """Trino's now(), current_timestamp and from_unixtime(x) are timestamp(3) with time zone
    values in the session zone (UTC on Athena): CAST(... AS varchar) prints them with three
    digits and ' UTC' (SqlTimestampWithTimeZone), format's %s as Java's ZonedDateTime
    (FormatFunction: ...Z[UTC]). Locally they printed as the tables' timestamp column, which
    is a timestamp(3) on Athena and still prints without a zone."""
    got = rows(
        engine,
        "SELECT CAST(from_unixtime(1710108003.719) AS varchar), "
        "CAST(date_trunc('hour', from_unixtime(1710108003)) AS varchar), "
        "CAST(from_unixtime(0) + INTERVAL '1' DAY AS varchar), "
        "CAST(date_add('hour', 2, from_unixtime(0)) AS varchar), "
        "format('%s|%s', from_unixtime(1710108000), from_unixtime(1710108003.5)), "
        'CAST("timestamp" AS varchar), CAST(u AS varchar) '
        'FROM envoy_access, (SELECT from_unixtime(5) AS u) ORDER BY "timestamp" LIMIT 1',
    )
    assert got == [
        (
            "2024-03-10 22:00:03.719 UTC",
            "2024-03-10 22:00:00.000 UTC",
            "1970-01-02 00:00:00.000 UTC",
            "1970-01-01 02:00:00.000 UTC",
            "2024-03-10T22:00Z[UTC]|2024-03-10T22:00:03.500Z[UTC]",
            "2024-03-10 22:00:03.719",
            "1970-01-01 00:00:05.000 UTC",
        )
    ]
    ((now, current, local, formatted),) = rows(
        engine,
        "SELECT CAST(now() AS varchar), CAST(current_timestamp AS varchar), "
        "CAST(localtimestamp AS varchar), format('%s', now())",
    )
    zoned = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC"
    assert re.fullmatch(zoned, now) and re.fullmatch(zoned, current)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", local)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{3})?)?Z\[UTC\]", formatted)


def test_map_subscript_of_a_missing_key_fails_as_in_trino(engine: LocalEngine) -> None:
    """Trino's MapSubscriptOperator fails for a key the map lacks ("Key not present in map:
    b"); DuckDB gave NULL. element_at(map, key) stays NULL, and a NULL map or key is NULL. The
    message says element_at, as the array subscript's does: Trino's words alone named no way
    on for rows that lack the key."""
    assert rows(
        engine,
        "SELECT MAP(ARRAY['a'], ARRAY[1])['a'], element_at(MAP(ARRAY['a'], ARRAY[1]), 'b'), "
        "map_from_entries(ARRAY[ROW('k', 2)])['k'], CAST(NULL AS MAP(varchar, integer))['z'], "
        "MAP(ARRAY['a'], ARRAY[1])[NULL], m[1] "
        "FROM (SELECT MAP(ARRAY[1, 2], ARRAY['x', 'y']) AS m)",
    ) == [(1, None, 2, None, None, "x")]
    for sql, says in [
        ("SELECT MAP(ARRAY['a'], ARRAY[1])['b']", "Key not present in map: b"),
        ("SELECT map_from_entries(ARRAY[ROW('k', 2)])['z']", "Key not present in map: z"),
        ("SELECT CAST(MAP(ARRAY[1], ARRAY[2]) AS MAP(bigint, bigint))[7]", "in map: 7"),
        ("SELECT m[k] FROM (SELECT MAP(ARRAY[1], ARRAY['x']) AS m, 3 AS k)", "in map: 3"),
    ]:
        with pytest.raises(StatementError, match=re.escape(says)) as failed:
            rows(engine, sql)
        assert "(element_at(map, key) is NULL for a missing key)" in str(failed.value)


def test_row_fields_by_position_as_trino(engine: LocalEngine) -> None:
    """Trino reads a ROW's field by its constant position from 1 (the Structural types page:
    ROW(1, 2.0)[1]); DuckDB's [] reads only a row without field names and failed on the
    ROWs sqlglot writes with names ("struct_extract with an integer key ...")."""
    assert rows(
        engine,
        "SELECT CAST(ROW(1, 'a') AS ROW(x int, y varchar))[2], ROW(1, 'a')[1], r[2], (r)[1] "
        "FROM (SELECT ROW(7, 'b') AS r)",
    ) == [("a", 1, "b", 7)]
    for sql, says in [
        ("SELECT ROW(1, 'a')[3]", "position is 3: positions start at 1, and this ROW has 2"),
        ("SELECT ROW(1, 'a')[0]", "position is 0: positions start at 1"),
        ("SELECT r[i] FROM (SELECT ROW(1, 'a') AS r, 1 AS i)", "by a constant position"),
    ]:
        with pytest.raises(QueryError, match=re.escape(says)):
            to_duckdb(sql, {})
    from athena.engines.local import ROW_POSITION_TEXT

    with pytest.raises(StatementError) as failed:  # the ROW is behind *: said what to do
        rows(engine, "SELECT r[1] FROM (SELECT * FROM (SELECT ROW(1, 'a') AS r))")
    assert str(failed.value) == ROW_POSITION_TEXT


def test_hours_and_minutes_without_seconds_are_read_as_such(engine: LocalEngine) -> None:
    """``%H:%i`` with no ``:%s`` after it: sqlglot's trie over Trino's ``%T`` (``%H:%M:%S``)
    gave the format back unmapped, and its ``%M`` (Trino's minutes, ``%i``, as sqlglot holds
    them) was read as Trino's month name: ``date_format`` printed ``22:March``, and
    ``date_parse`` failed or read a month."""
    got = rows(
        engine,
        "SELECT date_format(TIMESTAMP '2024-03-10 22:05:09', '%H:%i'), "
        "date_format(TIMESTAMP '2024-03-10 22:05:09', '%d %H:%i %M'), "
        "date_parse('2024-03-10 22:05', '%Y-%m-%d %H:%i'), "
        "date_format(TIMESTAMP '2024-03-10 22:05:09', '%h:%i %p')",
    )
    assert got == [
        ("22:05", "10 22:05 March", datetime(2024, 3, 10, 22, 5), "10:05 PM"),
    ]


def test_date_parse_reads_trinos_specifiers(engine: LocalEngine) -> None:
    """Trino's date_parse (DateTimeFunctions, its Joda formatter): %f reads 1 to 9 digits, cut
    to milliseconds (DuckDB's %f: at most 6, kept); a text without a year is in 1970 (DuckDB:
    1900); %y reads 69 as 2069 (pivot 2020; DuckDB 1969); an unknown letter is that letter
    (DuckDB refused %q)."""
    got = rows(
        engine,
        "SELECT date_parse('2024-03-10 22:05:09', '%Y-%m-%d %H:%i:%s'), "
        "date_parse('10/3/2024 7:5:9', '%e/%c/%Y %k:%i:%S'), date_parse('22:05:09', '%T'), "
        "date_parse('2024-03-10 22:05:09.123456789', '%Y-%m-%d %T.%f'), "
        "date_parse('2024-03-10 22:05:09.5', '%Y-%m-%d %T.%f'), "
        "date_parse('69-01-02', '%y-%m-%d'), date_parse('70-01-02', '%y-%m-%d'), "
        "date_parse('2024q', '%Y%q'), date_parse('07:05:09 PM 2024%', '%r %Y%%'), "
        "date_parse('March 5 2024', '%M %e %Y')",
    )
    assert got == [
        (
            datetime(2024, 3, 10, 22, 5, 9),
            datetime(2024, 3, 10, 7, 5, 9),
            datetime(1970, 1, 1, 22, 5, 9),
            datetime(2024, 3, 10, 22, 5, 9, 123000),
            datetime(2024, 3, 10, 22, 5, 9, 500000),
            datetime(2069, 1, 2),
            datetime(1970, 1, 2),
            datetime(2024, 1, 1),
            datetime(2024, 1, 1, 19, 5, 9),
            datetime(2024, 3, 5),
        )
    ]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("%u", "%u is not supported"),
        ("%D", "%D is not supported"),
        ("%w", "%w is not supported"),
        ("%v", "%v (an ISO week or its year) is read otherwise"),
        ("%x", "%x (an ISO week or its year) is read otherwise"),
    ],
)
def test_date_parse_specifiers_trino_refuses_are_refused(spec: str, says: str) -> None:
    """Trino refuses %D %U %u %V %w %X in date_parse as in date_format; sqlglot gave %u and %w
    DuckDB's meanings. %v/%x, which DuckDB reads as the week's Monday (Joda: its Thursday),
    are refused with what to do rather than answered otherwise."""
    with pytest.raises(QueryError, match=re.escape(f"date_parse(): {says}")):
        to_duckdb(f"SELECT date_parse(path, '%Y {spec}') FROM envoy_access", {})


def test_from_iso8601_timestamp_keeps_the_texts_offset(engine: LocalEngine) -> None:
    """Trino's from_iso8601_timestamp parses with the offset kept (DateTimeFunctions:
    ISODateTimeFormat.dateTimeParser().withOffsetParsed()): 10:00+02:00 is 08:00Z, its hour()
    is 10 and its text ends with the zone Trino names that offset, +02:00 (TimeZoneKey);
    Z or no offset is UTC; Joda reads t and z as T and Z (DuckDB refused them). Locally the
    instant was right, but hour() gave UTC's 8 and the text had no zone."""
    iso = "from_iso8601_timestamp('2026-12-06T10:00:00+02:00')"
    got = rows(
        engine,
        f"SELECT {iso}, hour({iso}), CAST({iso} AS varchar), "
        "CAST(from_iso8601_timestamp('2026-12-06T10:00:00.5-0530') AS varchar), "
        "CAST(from_iso8601_timestamp('2026-12-06T10:00:00Z') AS varchar), "
        "CAST(from_iso8601_timestamp('2026-12-06T10:00:00+00:00') AS varchar), "
        "CAST(from_iso8601_timestamp('2026-12-06T10:00') AS varchar), "
        f"{iso} = TIMESTAMP '2026-12-06 08:00', date_format({iso}, '%H:%i'), "
        "hour(from_iso8601_timestamp('2026-12-06t10:00:00-05')), "
        "CAST(from_iso8601_timestamp('2026-12-06t10:00:00z') AS varchar)",
    )
    assert got == [
        (
            utc(2026, 12, 6, 8, 0),
            10,
            "2026-12-06 10:00:00.000 +02:00",
            "2026-12-06 10:00:00.500 -05:30",
            "2026-12-06 10:00:00.000 UTC",
            "2026-12-06 10:00:00.000 UTC",
            "2026-12-06 10:00:00.000 UTC",
            True,
            "10:00",
            10,
            "2026-12-06 10:00:00.000 UTC",
        )
    ]


def test_an_offset_zone_is_read_as_trino_names_it(engine: LocalEngine) -> None:
    """Trino takes a fixed offset as a zone (AT TIME ZONE '+02:00', TimeZoneKey's names);
    DuckDB refused it ("Unknown TimeZone '+02:00'")."""
    got = rows(
        engine,
        "SELECT hour(TIMESTAMP '2026-12-06 08:00' AT TIME ZONE '+02:00'), "
        "CAST(TIMESTAMP '2026-12-06 08:00' AT TIME ZONE '-03:30' AS varchar), "
        "TIMESTAMP '2026-12-06 08:00' AT TIME ZONE '+02:00'",
    )
    assert got == [(10, "2026-12-06 04:30:00.000 -03:30", utc(2026, 12, 6, 8, 0))]


def test_coalesce_and_case_of_at_time_zone_values_are_their_instants(
    engine: LocalEngine,
) -> None:
    """Trino's coalesce and CASE answer the value they pick, a TIMESTAMP WITH TIME ZONE: the
    same instant as a bare AT TIME ZONE prints (22:00:03.719Z). Locally they printed New
    York's wall time labelled UTC (18:00:03.719Z, 4 hours off), and compared so."""
    ny = "\"timestamp\" AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"SELECT coalesce({ny}, NULL), CASE WHEN response_code >= 0 THEN {ny} END, "
        f"CASE WHEN response_code < 0 THEN NULL ELSE date_trunc('hour', {ny}) END, "
        f"hour(coalesce({ny}, {ny})), CAST(coalesce(NULL, {ny}) AS varchar), "
        f'coalesce({ny}, NULL) = "timestamp" '
        'FROM envoy_access ORDER BY "timestamp" LIMIT 1',
    )
    first = utc(2024, 3, 10, 22, 0, 3, 719000)
    assert got == [
        (
            first,
            first,
            utc(2024, 3, 10, 22, 0),
            18,
            "2024-03-10 18:00:03.719 America/New_York",
            True,
        )
    ]
    case = f"CASE WHEN response_code > 0 THEN {ny} END"
    grouped = rows(
        engine, f"SELECT {case}, count(*) FROM envoy_access GROUP BY {case} ORDER BY 1 LIMIT 1"
    )
    assert grouped == [(first, 1)]


def test_date_diff_with_an_at_time_zone_value_counts_as_trino(engine: LocalEngine) -> None:
    """Trino's date_diff of TIMESTAMP WITH TIME ZONE values (timestamptz.DateDiff, Joda's
    zoned fields): a TIMESTAMP is read in UTC, hours count between the instants, days on the
    first value's clock. Locally New York's wall time was counted against UTC's: -5 hours.
    New York's midnights of 2024-03-10 (EST) and 2024-03-11 (EDT) are 23 hours apart: one
    day on New York's clock, 0 in UTC."""
    got = rows(
        engine,
        "SELECT date_diff('hour', TIMESTAMP '2026-12-06 10:00', "
        "TIMESTAMP '2026-12-06 10:00' AT TIME ZONE 'America/New_York'), "
        "date_diff('minute', TIMESTAMP '2026-12-06 10:00' AT TIME ZONE 'Asia/Kolkata', "
        "TIMESTAMP '2026-12-06 10:30'), "
        "date_diff('day', TIMESTAMP '2024-03-10 05:00' AT TIME ZONE 'America/New_York', "
        "TIMESTAMP '2024-03-11 04:00' AT TIME ZONE 'America/New_York'), "
        "date_diff('day', TIMESTAMP '2024-03-10 05:00', "
        "TIMESTAMP '2024-03-11 04:00' AT TIME ZONE 'America/New_York'), "
        "date_diff('hour', TIMESTAMP '2024-03-10 05:00', TIMESTAMP '2024-03-11 04:00')",
    )
    assert got == [(0, 30, 1, 0, 23)]


def test_cast_of_date_parse_to_text_has_three_fraction_digits(engine: LocalEngine) -> None:
    """Trino's date_parse is a timestamp(3) (DateTimeFunctions.dateParse), whose text always
    has three fraction digits (2026-12-06 10:00:00.000); DuckDB's TIMESTAMP printed none for
    a whole second."""
    parsed = "date_parse('2026-12-06 10:05','%Y-%m-%d %H:%i')"
    got = rows(
        engine,
        f"SELECT CAST({parsed} AS varchar), CAST(date_trunc('hour', {parsed}) AS varchar), "
        f"CAST({parsed} + INTERVAL '1' SECOND AS varchar), "
        "CAST(date_parse('10:05:09.5', '%T.%f') AS varchar), CAST(p AS varchar) "
        f"FROM (SELECT {parsed} AS p)",
    )
    assert got == [
        (
            "2026-12-06 10:05:00.000",
            "2026-12-06 10:00:00.000",
            "2026-12-06 10:05:01.000",
            "1970-01-01 10:05:09.500",
            "2026-12-06 10:05:00.000",
        )
    ]


def test_date_parse_applies_a_day_name_as_joda_does(engine: LocalEngine) -> None:
    """Trino's date_parse (DateTimeFunctions.dateParse: Joda's parseMillis) sets the fields it
    read from the largest (DateTimeParserBucket.computeMillis): a day of the week (%a, %W:
    short or full name, as written, lower or upper case) moves the date within its ISO week,
    after the day of the month. DuckDB read %a and ignored it, and refused a full name:
    2026-12-06 is a Sunday, so 'Mon 2026-12-06' is Monday 2026-11-30 on Athena. Without a
    month and day, Joda's second pass over the fields moves the date again ('Tue' alone is
    Tuesday 2000-12-26: 2000-01-01 moved to 1999-12-28, its year set again to 2000, moved
    again): refused, saying what to do."""
    got = rows(
        engine,
        "SELECT date_parse('Mon 2026-12-06', '%a %Y-%m-%d'), "
        "date_parse('Sun 2026-12-06', '%a %Y-%m-%d'), "
        "date_parse('Monday, 07 Dec 2026 10:00', '%a, %d %b %Y %H:%i'), "
        "date_parse('FRIDAY 2027-01-01', '%W %Y-%m-%d'), "
        "date_parse('monday 2027-01-01', '%W %Y-%m-%d'), "
        "date_parse('Wed 12/3 10:00', '%a %m/%e %H:%i'), date_parse(NULL, '%a %Y-%m-%d')",
    )
    assert got == [
        (
            datetime(2026, 11, 30),
            datetime(2026, 12, 6),
            datetime(2026, 12, 7, 10, 0),
            datetime(2027, 1, 1),
            datetime(2026, 12, 28),
            datetime(2000, 11, 29, 10, 0),
            None,
        )
    ]
    with pytest.raises(StatementError, match="Could not parse string"):
        rows(engine, "SELECT date_parse('Mox 2026-12-06', '%a %Y-%m-%d')")
    with pytest.raises(QueryError, match=re.escape("date_parse(): the format reads the day")):
        to_duckdb("SELECT date_parse(path, '%a %W %Y-%m-%d') FROM envoy_access", {})
    for fmt in ("%a", "%a %H:%i", "%a %Y", "%W %Y-%m"):
        with pytest.raises(QueryError, match=re.escape("without the date's month and day")):
            to_duckdb(f"SELECT date_parse(path, '{fmt}') FROM envoy_access", {})


def test_date_parse_without_a_year_is_in_2000_for_a_date(engine: LocalEngine) -> None:
    """Joda's parser gives a text without a year its default year, 2000, when the format's
    largest field is a month or a day (DateTimeParserBucket.computeMillis, iDefaultYear of
    DateTimeFormatter); a time alone stays on 1970-01-01. Locally every such text was in
    1970, and 29 February failed (DuckDB's 1900 has none)."""
    got = rows(
        engine,
        "SELECT date_parse('12-06', '%m-%d'), date_parse('02-29 10', '%m-%d %H'), "
        "date_parse('Dec 6', '%b %e'), date_parse('340', '%j'), "
        "date_parse('22:05:09', '%T'), date_parse('07 PM', '%h %p')",
    )
    assert got == [
        (
            datetime(2000, 12, 6),
            datetime(2000, 2, 29, 10, 0),
            datetime(2000, 12, 6),
            datetime(2000, 12, 5),
            datetime(1970, 1, 1, 22, 5, 9),
            datetime(1970, 1, 1, 19, 0),
        )
    ]


def test_a_decimal_literal_divided_by_a_literal_is_trinos_decimal(engine: LocalEngine) -> None:
    """Trino types 1.0 a DECIMAL(2,1) and 4 an INTEGER (a DECIMAL(10,0) beside a decimal);
    their quotient is a DECIMAL with the larger scale, rounded half away from zero
    (DecimalOperators: r_scale max(a_scale, b_scale), divideShortShortShort): 1.0 / 4 is 0.3
    on Athena. DuckDB gave the DOUBLE 0.25. Only literals (what the statement shows exactly)."""
    from decimal import Decimal

    got = rows(
        engine,
        "SELECT 1.0 / 4, 1.00 / 3, -1.0 / 4, 10 / 4.0, 1 / 3.00, 2.5 / (2), 1.0 / 4 * 100, "
        "CAST(1.0 / 4 AS varchar), 7 / 2, 1e0 / 4",
    )
    assert got == [
        (
            Decimal("0.3"),
            Decimal("0.33"),
            Decimal("-0.3"),
            Decimal("2.5"),
            Decimal("0.33"),
            Decimal("1.3"),
            Decimal("30.0"),
            "0.3",
            3,
            0.25,
        )
    ]


def test_format_of_an_at_time_zone_value_prints_javas_zoned_date_time(
    engine: LocalEngine,
) -> None:
    """Trino's format hands Java a TIMESTAMP WITH TIME ZONE as a ZonedDateTime in its zone
    (FormatFunction.toZonedDateTime): the wall time, the offset and, for a named zone, its
    name; an offset zone is a ZoneOffset, without a name. Locally %s printed the zone's wall
    time alone, as a TIMESTAMP (2026-12-06T05:00)."""
    got = rows(
        engine,
        "SELECT format('%s|%s|%s|%s', "
        "TIMESTAMP '2026-12-06 10:00' AT TIME ZONE 'America/New_York', "
        "from_iso8601_timestamp('2026-12-06T10:00:00+02:00'), "
        "TIMESTAMP '2024-07-01 10:00:01.5' AT TIME ZONE 'Europe/London', "
        "coalesce(TIMESTAMP '2026-12-06 10:00' AT TIME ZONE 'Europe/London', NULL))",
    )
    assert got == [
        (
            "2026-12-06T05:00-05:00[America/New_York]|2026-12-06T10:00+02:00|"
            "2024-07-01T11:00:01.500+01:00[Europe/London]|2026-12-06T10:00Z[Europe/London]",
        )
    ]


def test_date_parse_reads_a_month_as_a_short_or_full_name(engine: LocalEngine) -> None:
    """Trino's %b and %M are both Joda's month text (DateTimeFunctions: appendMonthOfYearShortText,
    appendMonthOfYearText), which reads a short or a full name (TextField.parseInto); DuckDB's
    %b took only 'Dec' and %B only 'December', so '06 December 2026' with '%d %b %Y' failed."""
    got = rows(
        engine,
        "SELECT date_parse('06 December 2026', '%d %b %Y'), date_parse('06 Dec 2026', '%d %M %Y'), "
        "date_parse('Sunday 06 December 2026', '%W %d %b %Y'), date_parse('May 6', '%b %e')",
    )
    assert got == [
        (datetime(2026, 12, 6), datetime(2026, 12, 6), datetime(2026, 12, 6), datetime(2000, 5, 6))
    ]
    with pytest.raises(StatementError, match="Could not parse string"):
        rows(engine, "SELECT date_parse('06 Decembre 2026', '%d %b %Y')")


def test_an_offset_iso_timestamp_is_its_instant_where_trino_reads_one(engine: LocalEngine) -> None:
    """from_iso8601_timestamp('...10:00+02:00') is 08:00Z (Trino keeps the offset, not the
    instant's meaning): to_unixtime, a difference of two, greatest/least, IS DISTINCT FROM and
    AT TIME ZONE of it read that instant, as of any AT TIME ZONE value. Locally the value held
    +02:00's wall time, which those read as if UTC: to_unixtime was 2 hours late, the
    difference of 10:00+02:00 and 10:00Z 0 (Trino -2 hours), greatest(10:00+02:00, 09:00Z)
    10:00Z (Trino 09:00Z), and AT TIME ZONE 'UTC' 10:00 UTC (Trino 08:00 UTC)."""
    iso = "from_iso8601_timestamp('2026-12-06T10:00:00+02:00')"
    ny = "TIMESTAMP '2026-12-06 10:00' AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"SELECT to_unixtime({iso}), to_unixtime({ny}), "
        f"{iso} - from_iso8601_timestamp('2026-12-06T10:00:00Z'), "
        f"greatest({iso}, from_iso8601_timestamp('2026-12-06T09:00:00Z')), "
        f"least({iso}, {ny}), {iso} IS DISTINCT FROM TIMESTAMP '2026-12-06 08:00', "
        f"CAST({iso} AT TIME ZONE 'UTC' AS varchar), hour({iso} AT TIME ZONE 'Asia/Tokyo'), "
        f"CAST(({ny}) AT TIME ZONE 'Asia/Tokyo' AS varchar)",
    )
    assert got == [
        (
            utc(2026, 12, 6, 8, 0).timestamp(),
            utc(2026, 12, 6, 10, 0).timestamp(),
            "-0 02:00:00.000",
            utc(2026, 12, 6, 9, 0),
            utc(2026, 12, 6, 8, 0),
            False,
            "2026-12-06 08:00:00.000 UTC",
            17,
            "2026-12-06 19:00:00.000 Asia/Tokyo",
        )
    ]


def test_a_decimal_quotient_below_one_has_its_leading_zero(engine: LocalEngine) -> None:
    """Trino's text of a DECIMAL below one has its 0 (Decimals.toString: -0.5 of -0.5 / 1, a
    DECIMAL(1,1), and 0.04 of 0.04 / 1); DuckDB writes a DECIMAL whose precision is its scale
    without it ('-.5', '.04'), so the text of such a quotient lacked it."""
    got = rows(
        engine,
        "SELECT CAST(-0.5 / 1 AS varchar), CAST(0.04 / 1 AS varchar), format('%s', 0.5 / 1), "
        "-0.5 / 1, CAST(1.0 / 4 AS varchar)",
    )
    from decimal import Decimal

    assert got == [("-0.5", "0.04", "0.5", Decimal("-0.5"), "0.3")]


def test_every_and_current_timezone_answer_as_trino(engine: LocalEngine) -> None:
    """https://trino.io/docs/current/functions/aggregate.html#every: an alias of bool_and
    (TRUE when every value is, NULLs left out, NULL without a value); current_timezone() is
    the session's zone, UTC on Athena and locally. DuckDB said "Scalar Function with name
    every does not exist" and the same of current_timezone."""
    got = rows(
        engine,
        "SELECT every(response_code > 0), every(response_code > 300), "
        "every(CAST(NULL AS boolean)), current_timezone() FROM envoy_access",
    )
    assert got == [(True, False, None, "UTC")]
    by_row = rows(
        engine,
        "SELECT every(x) OVER (ORDER BY n) FROM (VALUES (1, true), (2, NULL), (3, false)) "
        "AS t(n, x) ORDER BY n",
    )
    assert by_row == [(True,), (True,), (False,)]
    with pytest.raises(QueryError, match=re.escape("every(boolean)")):
        to_duckdb("SELECT every(a, b) FROM envoy_access", {})


def test_format_of_an_at_time_zone_value_in_the_repeated_hour_has_its_offset(
    engine: LocalEngine,
) -> None:
    """New York's clocks went back at 06:00Z on 2024-11-03: 05:30Z and 06:30Z are both 01:30
    there, the first in EDT (-04:00), the second in EST (-05:00), as Java's ZonedDateTime
    prints them (FormatFunction). The offset was read from the wall time, which takes the
    later one: both printed -05:00."""
    got = rows(
        engine,
        "SELECT format('%s|%s', TIMESTAMP '2024-11-03 05:30' AT TIME ZONE 'America/New_York', "
        "TIMESTAMP '2024-11-03 06:30' AT TIME ZONE 'America/New_York')",
    )
    assert got == [
        ("2024-11-03T01:30-04:00[America/New_York]|2024-11-03T01:30-05:00[America/New_York]",)
    ]


def test_date_diff_of_zoned_values_across_new_yorks_fall_back(engine: LocalEngine) -> None:
    """Trino's timestamptz.DateDiff takes the first value's zone (Joda's ZonedChronology): its
    hours and smaller count between instants, its days to years on that zone's clock. New
    York went back from EDT to EST at 06:00Z on 2024-11-03: 04:00Z (00:00 EDT) to 04:59Z the
    next day (23:59 EST) is 24 h 59 min but 0 days on New York's clock, 1 in UTC (a
    TIMESTAMP first); a week, month or quarter counts New York's clock likewise: 02:45 EDT to
    02:15 EST is 30 minutes short of a week, a month or a quarter there, 30 minutes over
    between the instants (UTC's count, 1 quarter with TIMESTAMPs)."""
    ny = "AT TIME ZONE 'America/New_York'"
    got = rows(
        engine,
        f"SELECT date_diff('hour', TIMESTAMP '2024-11-03 04:00' {ny}, "
        f"TIMESTAMP '2024-11-03 07:00' {ny}), "
        f"date_diff('day', TIMESTAMP '2024-11-03 04:00' {ny}, TIMESTAMP '2024-11-04 04:59' {ny}), "
        f"date_diff('day', TIMESTAMP '2024-11-03 04:00', TIMESTAMP '2024-11-04 04:59' {ny}), "
        f"date_diff('week', TIMESTAMP '2024-10-27 06:45' {ny}, TIMESTAMP '2024-11-03 07:15'), "
        f"date_diff('month', TIMESTAMP '2024-10-03 06:45' {ny}, TIMESTAMP '2024-11-03 07:15'), "
        f"date_diff('quarter', TIMESTAMP '2024-08-03 06:45' {ny}, TIMESTAMP '2024-11-03 07:15'), "
        "date_diff('quarter', TIMESTAMP '2024-08-03 06:45', TIMESTAMP '2024-11-03 07:15'), "
        f"date_diff('millisecond', TIMESTAMP '2024-11-03 05:30' {ny}, "
        f"TIMESTAMP '2024-11-03 06:30' {ny})",
    )
    assert got == [(3, 0, 1, 0, 0, 0, 1, 3_600_000)]
