"""Ad-hoc Trino SQL means on DuckDB what it means on Athena (athena/trinofuncs.py).

Each test runs the Trino text through the local engine (transpiled and run by DuckDB, as
`logq sql` does) and compares with the value Trino's documentation gives.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from athena.engines.local import LocalEngine
from athena.engines.result import StatementError
from athena.queries import QueryError, to_duckdb


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``duck(sql)``: the first row of ``sql`` (Trino) run by the local engine."""
    engine = LocalEngine(str(tmp_path_factory.mktemp("empty-warehouse")))

    def run(sql: str) -> tuple[Any, ...]:
        return engine.run(sql, {}).rows[0]

    return run


def test_regexp_replace_groups_as_trino(duck) -> None:
    """https://trino.io/docs/current/functions/regexp.html#regexp_replace: "Capturing groups
    can be referenced in replacement using $g ... A dollar sign ($) may be included in the
    replacement by escaping it with a backslash (\\$)", and
    regexp_replace('1a 2b 14m', '(\\d+)([ab]) ', '3c$2 ') is '3ca 3cb 14m'. DuckDB's
    replacement is RE2's (\\1): before, '$2' came out as the text '$2'."""
    documented = r"SELECT regexp_replace('1a 2b 14m', '(\d+)([ab]) ', '3c$2 ')"
    assert duck(documented) == ("3ca 3cb 14m",)
    # $0 the whole match; \$ a dollar; \\ a backslash; a backslash before any other character
    # is that character (Java's Matcher.appendReplacement).
    assert duck(r"SELECT regexp_replace('/a/12/b', '/([0-9]+)/', '/<$1>\$\\$0\x/')") == (
        r"/a/<12>$\/12/x/b",
    )
    assert duck(r"SELECT regexp_replace('1a 2b 14m', '\d+[ab] ')") == ("14m",)


@pytest.mark.parametrize(
    ("replacement", "says"),
    [("$12", "$12 has no local equivalent"), ("${name}", "${name} has no local"),
     ("a$", "names no group"), ("a\\", "lone backslash"),
     ("x -> x[1]", "with a lambda has no local equivalent")],
)  # fmt: skip
def test_regexp_replace_without_local_spelling_is_refused(replacement: str, says: str) -> None:
    with pytest.raises(QueryError, match=re.escape(says)):
        quoted = replacement if "->" in replacement else f"'{replacement}'"
        to_duckdb(f"SELECT regexp_replace(path, '(a)', {quoted}) FROM envoy_access", {})


def test_split_part_past_the_last_field_is_null(duck) -> None:
    """https://trino.io/docs/current/functions/string.html#split_part: "Field indexes start
    with 1. If the index is larger than the number of fields, then null is returned."
    DuckDB returned ''. Trino refuses an index below 1 (DuckDB counted from the end)."""
    assert duck("SELECT split_part('a,b', ',', 3), split_part('a,b', ',', 2), "
                "split_part('a,b', ',', 1), split_part('', ',', 1), split_part('a', ',', 2)") == (
        None, "b", "a", "", None,
    )  # fmt: skip
    rows = duck("SELECT array_agg(split_part('a,b', ',', i) ORDER BY i) FROM (VALUES 1, 2, 3) t(i)")
    assert rows == (["a", "b", None],)
    with pytest.raises(StatementError, match="index must be 1 or more"):
        duck("SELECT split_part('a,b', ',', i) FROM (VALUES -1) t(i)")
    with pytest.raises(QueryError, match="below 1"):
        to_duckdb("SELECT split_part(path, '/', 0) FROM envoy_access", {})


def test_format_as_trino_documents(duck) -> None:
    """https://trino.io/docs/current/functions/conversion.html#format (Java's Formatter):
    format('%s%%', 123) '123%', format('%.5f', pi()) '3.14159', format('%03d', 8) '008',
    format('%,.2f', 1234567.89) '1,234,567.89', format('%-7s,%7s', 'hello', 'world')
    'hello  ,  world', format('%2$s %3$s %1$s', 'a', 'b', 'c') 'b c a'. DuckDB's format is
    fmt's {} language: it returned '%s=%d' for format('%s=%d', ...)."""
    assert duck(
        "SELECT format('%s%%', 123), format('%.5f', pi()), format('%03d', 8), "
        "format('%,.2f', 1234567.89), format('%-7s,%7s', 'hello', 'world'), "
        "format('%2$s %3$s %1$s', 'a', 'b', 'c'), format('%s=%d', 'a', 5)"
    ) == ("123%", "3.14159", "008", "1,234,567.89", "hello  ,  world", "b c a", "a=5")
    # Java prints a NULL argument as "null" (padded to the width), %S upper-cases, %n a newline,
    # %s takes any type (DuckDB's printf refuses %s for a double).
    assert duck("SELECT format('%s|%5d|%S|%n|%s', NULL, NULL, 'abc', 1.5E0)") == (
        "null| null|ABC|\n|1.5",
    )


@pytest.mark.parametrize(
    "call",
    ["format('%tY', current_date)", "format('%g', 1.0E0)", "format('%b', true)",
     "format(path, 1)", "format('100%')"],
)  # fmt: skip
def test_format_without_local_equivalent_is_refused(call: str) -> None:
    with pytest.raises(QueryError, match="format"):
        to_duckdb(f"SELECT {call} FROM envoy_access", {})


@pytest.mark.parametrize(
    ("call", "instead", "trino_value"),
    [
        ("url_extract_host('http://www.example.com:80/stuff/x?k=v#f')", "regexp_extract",
         "www.example.com"),
        ("url_extract_path('http://www.example.com:80/stuff/x?k=v#f')", "regexp_extract",
         "/stuff/x"),
        ("url_extract_parameter('http://www.example.com/x?k=v%20w&j=2', 'k')", "url_decode",
         "v w"),
        ("url_extract_query('http://www.example.com/x?k=v&j=2#f')", "regexp_extract", "k=v&j=2"),
        ("url_extract_protocol('https://www.example.com/x')", "regexp_extract", "https"),
    ],
)  # fmt: skip
def test_athena_only_functions_say_what_to_use(
    duck, call: str, instead: str, trino_value: str
) -> None:
    """https://trino.io/docs/current/functions/url.html: the URL functions read
    [protocol:][//host[:port]][path][?query][#fragment]. DuckDB has none of them: the local
    error names the function as Athena-only, and the expression it suggests (works on both
    engines) gives Trino's value here."""
    with pytest.raises(QueryError) as refused:
        to_duckdb(f"SELECT {call}", {})
    message = str(refused.value)
    assert "is an Athena (Trino) function the local engine (DuckDB) does not have" in message
    assert instead in message and "--engine athena" in message
    suggestion = message.split("use ", 1)[1].split(" instead", 1)[0]
    url = call.split("'")[1]
    filled = suggestion.replace("(url,", f"('{url}',").replace("NAME", "k")
    assert duck(f"SELECT {filled}") == (trino_value,)


@pytest.mark.parametrize(
    ("call", "x", "trino_value"),
    [
        ("nan()", "", "nan"),
        ("infinity()", "", float("inf")),
        ("is_finite(x)", "1.5", True),
        ("is_finite(x)", "CAST('-Infinity' AS double)", False),
        ("is_finite(x)", "CAST('NaN' AS double)", False),
        ("is_infinite(x)", "CAST('-Infinity' AS double)", True),
        ("is_infinite(x)", "CAST('NaN' AS double)", False),
        ("e()", "", math.e),
        ("from_unixtime_nanos(nanos)", "1700000000000000000", 1_700_000_000),
    ],
)  # fmt: skip
def test_athena_only_math_functions_say_what_to_use(
    duck, call: str, x: str, trino_value: Any
) -> None:
    """https://trino.io/docs/current/functions/math.html (and from_unixtime_nanos, datetime):
    DuckDB has none of these names; its own error suggested another function ("nanosecond"
    for nan()). The refusal names a spelling that gives Trino's value on both engines."""
    with pytest.raises(QueryError) as refused:
        to_duckdb(f"SELECT {call.replace('(x)', '(1.0)').replace('(nanos)', '(0)')}", {})
    message = str(refused.value)
    assert f"{call.split('(')[0]}() is an Athena (Trino) function" in message
    suggestion = message.split("use ", 1)[1].split(" instead", 1)[0]
    value = duck(f"SELECT {suggestion.replace('(x)', f'({x})').replace('nanos', x)}")[0]
    if call.startswith("from_unixtime"):
        value = value.timestamp()
    if trino_value == "nan":
        assert math.isnan(value)
    else:
        assert value == trino_value


def test_athena_only_function_without_equivalent_and_in_logq_sql(
    logq_sql_local: Any,
) -> None:
    run = logq_sql_local("SELECT human_readable_seconds(96) AS t")
    assert run.exit_code == 2
    assert "human_readable_seconds() is an Athena (Trino) function" in run.stderr
    assert "no local equivalent" in run.stderr and "--engine athena" in run.stderr


@pytest.fixture
def logq_sql_local(tmp_path: Path) -> Any:
    from typer.testing import CliRunner

    from cli.app import app

    def run(statement: str) -> Any:
        return CliRunner().invoke(app, ["sql", statement, "--warehouse", str(tmp_path)])

    return run


def test_format_f_of_a_decimal_rounds_the_exact_value_half_up(duck) -> None:
    """Trino hands Java a BigDecimal: format('%.2f', 2.675) is 2.68 on Athena (HALF_UP of the
    exact decimal); printf through a double printed 2.67 (and 0.2 for %.1f of 0.25)."""
    assert duck(
        "SELECT format('%.2f', 2.675), format('%.2f', -2.675), format('%.1f', 0.25), "
        "format('%,.2f', 1234567.885), format('%.2f', 2.675E0)"
    ) == ("2.68", "-2.68", "0.3", "1,234,567.89", "2.67")  # the DOUBLE is left as it was


def test_format_s_of_a_timestamp_as_java_prints_it(duck, tmp_path: Path) -> None:
    """Trino hands Java a LocalDateTime: seconds only when not zero, then 3, 6 or 9 digits.
    The tables' timestamp (WITH TIME ZONE locally, plain on Athena) prints the same."""
    assert duck(
        "SELECT format('%s|%s|%s|%s|%s', TIMESTAMP '2020-01-01 00:00:00', "
        "TIMESTAMP '2020-01-01 00:00:05', TIMESTAMP '2020-01-01 00:00:00.1', "
        "TIMESTAMP '2020-01-01 10:20:00.1234', DATE '2020-01-01')"
    ) == (
        "2020-01-01T00:00|2020-01-01T00:00:05|2020-01-01T00:00:00.100|"
        "2020-01-01T10:20:00.123400|2020-01-01",
    )
    from tests.athena.factory import access_frame, utc, write_frame

    write_frame(
        str(tmp_path),
        "envoy_access",
        access_frame(5, utc(2026, 11, 28), utc(2026, 11, 28, 1), ["a"], seed=3),
    )
    engine = LocalEngine(str(tmp_path))
    scopes = {"envoy_access": engine.plan("envoy_access", None, None)}
    rows = engine.run(
        'SELECT format(\'%s\', "timestamp"), "timestamp" FROM envoy_access', {}, scopes
    ).rows
    for text, ts in rows:
        assert text == ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def test_format_s_of_a_double_as_java(duck) -> None:
    """Java's Double.toString: as DuckDB's text between 1e-3 and 1e7, NaN and Infinity by
    name; past that range Java's 1.0E7 (the local engine refused it)."""
    assert duck(
        "SELECT format('%s|%s|%s|%s|%s', 10000.0E0, 0.5E0, 0.001E0, CAST('NaN' AS double), "
        "CAST('-Infinity' AS double))"
    ) == ("10000.0|0.5|0.001|NaN|-Infinity",)
    assert duck("SELECT format('%s|%s|%s', 1.0E7, -1.0E-4, 123456789.5E0)") == (
        "1.0E7|-1.0E-4|1.234567895E8",
    )


def test_hidden_columns_are_refused_locally() -> None:
    """Before: DuckDB's "column "$path" not found ... Candidate bindings: "path"", a lead to
    the wrong column."""
    with pytest.raises(QueryError, match=r'"[$]path" is a hidden column .* --engine athena'):
        to_duckdb('SELECT "$path", count(*) FROM envoy_access GROUP BY 1', {})


@pytest.mark.parametrize(
    ("call", "name"),
    [
        ("from_base('ff', 16)", "from_base"),
        ("width_bucket(3.5, 0, 10, 5)", "width_bucket"),
        ("width_bucket(3.5, ARRAY[1.0, 2.0])", "width_bucket"),
        ("soundex('Robert')", "soundex"),
        ("split_to_map('a=1,b=2', ',', '=')", "split_to_map"),
        ("map_agg(k, v) FROM (VALUES ('a', 1)) t(k, v)", "map_agg"),
    ],
)
def test_typed_athena_only_functions_are_refused_by_their_name(call: str, name: str) -> None:
    """sqlglot parses these into typed expressions, which DuckDB's SQL spells otherwise: the
    local error named a function the user never wrote (split_to_map -> "str_to_map does not
    exist"). They are refused like the other Athena-only functions, by the name written."""
    with pytest.raises(QueryError) as refused:
        to_duckdb(f"SELECT {call}", {})
    message = str(refused.value)
    assert f"{name}() is an Athena (Trino) function the local engine (DuckDB)" in message
    assert "--engine athena" in message and "str_to_map" not in message


def test_names_of_typed_athena_only_functions_as_columns_stay_valid(duck) -> None:
    """Only calls are refused: a column or alias of that name, or the name in a string, runs."""
    assert duck(
        "SELECT soundex, width_bucket AS from_base, 'split_to_map(a)' AS normalize "
        "FROM (VALUES (1, 2)) t(soundex, width_bucket)"
    ) == (1, 2, "split_to_map(a)")


def _trino_width_bucket(x: float, bound1: float, bound2: float, n: int) -> int:
    """Trino's ``MathFunctions.widthBucket``: buckets over [min, max) counted from bound1, so
    with bound1 > bound2 the numbers run the other way (n + 1 minus the ascending bucket)."""
    lower, upper = min(bound1, bound2), max(bound1, bound2)
    if x < lower:
        bucket = 0
    elif x >= upper:
        bucket = n + 1
    else:
        bucket = int(n * (x - lower) / (upper - lower) + 1)
    return n - bucket + 1 if bound1 > bound2 else bucket


def test_width_bucket_suggestion_gives_trinos_buckets(duck) -> None:
    """https://trino.io/docs/current/functions/math.html#width_bucket: the bucket of x in n
    equal-width buckets between bound1 and bound2; 0 before bound1's side, n + 1 beyond
    bound2's, numbered from bound1 also when bound1 > bound2 (as Trino's MathFunctions
    computes it). The spellings suggested (they work on both engines) give those, each for
    the order of bounds it names."""
    with pytest.raises(QueryError) as refused:
        to_duckdb("SELECT width_bucket(x, 0, 10, 5)", {})
    advice = str(refused.value).split("use ", 1)[1]
    ascending = advice.split(" when lo < hi, or ", 1)[0]
    descending = advice.split(" when lo < hi, or ", 1)[1].split(" when lo > hi", 1)[0]
    xs = [-1, 0, 1.99, 2, 5, 9.99, 10, 11]
    assert [_trino_width_bucket(x, 0, 10, 5) for x in xs] == [0, 1, 1, 2, 3, 5, 6, 6]
    assert [_trino_width_bucket(x, 10, 0, 5) for x in xs] == [6, 5, 5, 4, 3, 1, 0, 0]
    for lo, hi, form in [(0, 10, ascending), (10, 0, descending), (-3, 7.5, ascending),
                         (7.5, -3, descending)]:  # fmt: skip
        for x in [*xs, -3, 7.5, 4.2]:
            values = {"x": str(x), "lo": str(lo), "hi": str(hi), "n": "5"}
            sql = re.sub(r"\b(x|lo|hi|n)\b", lambda m, v=values: f"({v[m.group(1)]})", form)
            assert duck(f"SELECT {sql}") == (_trino_width_bucket(x, lo, hi, 5),), (x, lo, sql)


def test_normalize_is_nfc_as_in_trino(duck) -> None:
    """https://trino.io/docs/current/functions/string.html#normalize: "Transforms string with
    NFC normalization form" (the default form). DuckDB's nfc_normalize is that form: e and a
    combining acute become é, A and a combining ring Å, the Ångström sign Å (U+00C5), as
    Python's unicodedata (the Unicode standard's NFC, as Java's Normalizer) gives them."""
    import unicodedata

    texts = ["e\u0301", "A\u030a", "\u212b", "plain", "\ufb01"]
    got = duck("SELECT " + ", ".join(f"normalize('{t}'), normalize('{t}', NFC)" for t in texts))
    want = tuple(unicodedata.normalize("NFC", t) for t in texts for _ in range(2))
    assert got == want and got[0] == "\u00e9" and got[-1] == "\ufb01"  # NFC keeps ligatures
    with pytest.raises(QueryError, match=r"normalize\(s, NFD\) .*--engine athena"):
        to_duckdb("SELECT normalize('e', NFD)", {})


def test_normalize_with_no_normal_form_is_not_called_an_athena_form() -> None:
    """Trino's grammar takes NFC, NFD, NFKC or NFKD only: ``normalize(s, foo)`` fails there
    too, so it is no "Athena form" that --engine athena would run."""
    with pytest.raises(QueryError, match="FOO is no normal form") as refused:
        to_duckdb("SELECT normalize('e', foo)", {})
    assert "--engine athena" not in str(refused.value)


def test_width_bucket_over_an_array_is_not_given_the_four_argument_advice() -> None:
    """``width_bucket(x, bins)`` has no lo, hi or n: the CASE written for the four-argument
    form would not be what it computes."""
    with pytest.raises(QueryError, match="no local equivalent") as refused:
        to_duckdb("SELECT width_bucket(3.5, ARRAY[1.0, 2.0])", {})
    assert "CASE" not in str(refused.value)
