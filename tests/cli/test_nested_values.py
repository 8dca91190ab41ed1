"""ARRAY, MAP, ROW and VARBINARY values in csv, markdown and the table as Athena shows them
(``[a, b]``, ``{k=v}``, ``{name=value}``, ``68 c3 a9``), not as Python reprs."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest

from cli.output import OutputFormat, emit, format_cell, render_table
from tests.cli.test_output import markdown_cells

#: A value of each type family, as either engine hands it over, and Athena's text of it.
FAMILIES: dict[str, tuple[Any, str]] = {
    "array": (["a", None, "b,c"], "[a, null, b,c]"),
    "map": ({"k": 1, "z": None}, "{k=1, z=null}"),
    "map-as-pairs": ([([1], 2)], "{[1]=2}"),  # pyarrow's form: nested, or keys not hashable
    "row": ({"x": 1, "y": "x|y", "ok": True}, "{x=1, y=x|y, ok=true}"),
    "varbinary": (b"h\xc3\xa9\x00\xff", "68 c3 a9 00 ff"),
    "doubles": (
        [1.5, float("nan"), float("inf"), float("-inf")],
        "[1.5, NaN, Infinity, -Infinity]",
    ),
    "nested": (
        [{"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "tags": [("k", [b"\x01"])]}, None],
        "[{at=2026-01-02T03:04:05.000Z, tags={k=[01]}}, null]",
    ),
}


def _csv_cell(value: Any) -> str:
    out = io.StringIO()
    emit(OutputFormat.csv, ["v", "n"], [(value, 1)], out=out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["v", "n"] and rows[1][1] == "1"
    return rows[1][0]


def _markdown_cell(value: Any) -> str:
    out = io.StringIO()
    emit(OutputFormat.markdown, ["v", "n"], [(value, 1)], out=out)
    header, rows = markdown_cells(out.getvalue())  # as a renderer shows it: escapes undone
    assert header == ["v", "n"] and rows[0][1] == "1"
    return rows[0][0]


def _table_cell(value: Any) -> str:
    out = io.StringIO()
    render_table(["v", "n"], [(value, 1)], out=out)  # not a terminal: one line per row
    lines = [line for line in out.getvalue().splitlines() if line.count("│") == 3]
    assert len(lines) == 1, out.getvalue()
    return lines[0].split("│")[1].strip()


@pytest.mark.parametrize("family", FAMILIES)
def test_csv_shows_nested_values_as_athena(family: str) -> None:
    value, athena = FAMILIES[family]
    assert _csv_cell(value) == athena


@pytest.mark.parametrize("family", FAMILIES)
def test_markdown_shows_nested_values_as_athena(family: str) -> None:
    value, athena = FAMILIES[family]
    assert _markdown_cell(value) == athena


@pytest.mark.parametrize("family", FAMILIES)
def test_table_shows_nested_values_as_athena(family: str) -> None:
    value, athena = FAMILIES[family]
    assert _table_cell(value) == athena


#: NaN and infinite doubles on their own, as Athena's console and result CSV write them: the
#: same words as inside an ARRAY (FAMILIES' "doubles"), not Python's ``nan``, ``inf``, ``-inf``.
DOUBLES = [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")]


@pytest.mark.parametrize(("value", "athena"), [(True, "true"), (False, "false")])
def test_a_boolean_reads_as_athena_in_csv_and_markdown(value: bool, athena: str) -> None:
    """Python's ``True`` was written beside ``[true, false]`` in the same row."""
    assert _csv_cell(value) == athena
    assert _markdown_cell(value) == athena
    assert _csv_cell([value]) == f"[{athena}]"


@pytest.mark.parametrize(("value", "athena"), DOUBLES)
def test_a_nonfinite_double_reads_as_athena_in_csv_markdown_and_table(
    value: float, athena: str
) -> None:
    assert _csv_cell(value) == athena
    assert _markdown_cell(value) == athena
    assert _table_cell(value) == athena


@pytest.mark.parametrize(("value", "athena"), DOUBLES)
def test_a_nonfinite_double_in_the_table_has_no_unit(value: float, athena: str) -> None:
    """A column's unit is no measure of NaN: not ``nan ms``, ``nan %`` or ``inf TiB``."""
    for column in ("p99_ms", "error_pct", "bytes_sent", "n"):
        assert format_cell(column, value) == athena


def test_control_characters_inside_a_value_stay_escaped_in_the_table() -> None:
    assert _table_cell(["\x1b[2J", "a\nb"]) == "[\\x1b[2J, a\\nb]"


def test_athena_engine_values_read_back_as_athena_wrote_them() -> None:
    """The Athena engine's rows: pyathena turns Athena's text into lists, dicts and bytes;
    csv shows that text again."""
    from pyathena.converter import DefaultTypeConverter

    convert = DefaultTypeConverter().convert
    for kind, text in [
        ("array", "[a, b]"),
        ("map", "{last=Smith, first=Bob}"),
        ("row", "{field0=Bob, field1=38}"),
        ("varbinary", "68 c3 a9"),
        ("array", "[1.5, NaN, Infinity, -Infinity]"),  # pyathena reads it as JSON: floats
    ]:
        assert _csv_cell(convert(kind, text)) == text


def test_local_engine_values_from_duckdb() -> None:
    """The local engine's rows (pyarrow through :func:`athena.arrow_values.column_values`)."""
    import duckdb

    from athena.arrow_values import column_values

    table = duckdb.sql(
        "select ['a', null] a, {'x': 1, 'y': interval 90 minute} r, map(['k'], [[1, 2]]) m, "
        "[map(['k'], [true])] am, encode('hé') b"
    ).to_arrow_table()
    row = tuple(column_values(c)[0] for c in table.columns)
    out = io.StringIO()
    emit(OutputFormat.csv, table.column_names, [row], out=out)
    assert list(csv.reader(io.StringIO(out.getvalue())))[1] == [
        "[a, null]",
        "{x=1, y=0 01:30:00.000}",
        "{k=[1, 2]}",
        "[{k=true}]",
        "68 c3 a9",
    ]


def test_local_engine_varbinary_map_keys_in_hex_as_other_varbinary() -> None:
    """A map's VARBINARY keys (``histogram`` of a blob): hex in csv, as its values are; JSON
    still prints the key as text, as before."""
    import json

    import duckdb

    from athena.arrow_values import column_values

    table = duckdb.sql("select map([from_hex('00ff'), encode('é')], [from_hex('01'), null]) m")
    [value] = column_values(table.to_arrow_table().column(0))
    assert _csv_cell(value) == "{00 ff=01, c3 a9=null}"
    out = io.StringIO()
    emit(OutputFormat.json, ["m"], [(value,)], out=out)
    assert json.loads(out.getvalue()) == [{"m": {"\x00\ufffd": "\x01", "é": None}}]
