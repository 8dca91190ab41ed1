"""Rendering query results: a Rich table for people, json/csv/markdown for pipes and documents.

``json`` and ``csv`` are for machines: nothing but the data goes to stdout (no colour, no notes,
no progress); timestamps are ISO-8601 UTC with a ``Z``. ``table`` is for a person in an incident:
status codes coloured by class, numbers right-aligned with thousands separators and units taken
from the column name (``_ms`` → ms, ``_pct`` → %, ``bytes`` → KiB/MiB).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, TextIO

from athena.engines.result import human_bytes


class OutputFormat(StrEnum):
    """Values of ``--format``."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def plain(value: Any) -> Any:
    """A JSON-ready value: ISO-8601 UTC for times, float for decimals, text for bytes."""
    if isinstance(value, datetime):
        from athena.timerange import iso_utc

        return iso_utc(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):  # an Arrow duration; Athena sends intervals as text
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def json_ready(value: Any) -> Any:
    """:func:`plain`, with NaN and ±Infinity as ``null``.

    JSON has no such numbers: ``json.dumps`` would write the bare words ``NaN``/``Infinity``,
    which ``jq``, ``JSON.parse`` and most other parsers reject, failing the whole document.
    ``null`` keeps the column numeric-or-null for consumers (a string such as ``"NaN"`` would
    put text into a numeric column); a NaN comes from 0/0-style arithmetic on no data, which
    is what null says. The table, CSV and Markdown formats still show ``nan``/``inf``.
    """
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def to_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A JSON array of row objects (column order kept); strictly valid JSON (no NaN)."""
    objects = [{c: json_ready(v) for c, v in zip(columns, row, strict=True)} for row in rows]
    return json.dumps(objects, ensure_ascii=False, indent=2, allow_nan=False)


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with a header row; NULL is the empty field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else plain(v) for v in row])
    return buf.getvalue()


def _md_cell(value: Any) -> str:
    text = "" if value is None else str(plain(value))
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in values escaped)."""
    numeric = [_is_numeric_column(rows, i) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(_md_cell(c) for c in columns) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- the human table ---------------------------------------------------------------------------


def _is_numeric_column(rows: Sequence[Sequence[Any]], index: int) -> bool:
    values = [r[index] for r in rows if r[index] is not None]
    return bool(values) and all(
        isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
    )


def format_cell(column: str, value: Any) -> str:
    """Text of one value in the human table, with the unit its column name implies."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        from athena.timerange import iso_utc

        if column == "newest":  # freshness: how long ago, at a glance
            return f"{iso_utc(value)} ({age(value)} ago)"
        return iso_utc(value)
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if column.endswith("_pct"):
            return f"{value:,.2f} %"
        if column.endswith("_ms"):
            return f"{value:,.0f} ms" if float(value).is_integer() else f"{value:,.1f} ms"
        if "bytes" in column:
            return human_bytes(value)
        return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    return str(value)


def age(ts: datetime, now: datetime | None = None) -> str:
    """``2h 5m``, ``42s``: time since ``ts`` (naive means UTC), largest two units."""
    from datetime import UTC

    now = now or datetime.now(UTC)
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    seconds = max(0, int((now - aware).total_seconds()))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def status_style(code: Any) -> str:
    """Rich style of an HTTP status: 5xx red, 4xx yellow, 3xx cyan, 2xx green, 0 magenta."""
    try:
        c = int(code)
    except (TypeError, ValueError):
        return ""
    if c >= 500:
        return "bold red"
    if c >= 400:
        return "yellow"
    if c >= 300:
        return "cyan"
    if c >= 200:
        return "green"
    return "magenta"


def header(column: str) -> str:
    """Column title for people: ``p99_ms`` → ``p99 ms``, ``path_share_pct`` → ``path share %``."""
    text = column
    for suffix, unit in (("_pct", " %"), ("_ms", " ms")):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + unit
    return text.replace("_", " ")


#: Width of the table when stdout is not a terminal (Rich would otherwise assume 80).
PIPE_WIDTH = 200


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    out: TextIO | None = None,
    title: str | None = None,
    width: int | None = None,
    color: bool | None = None,
) -> None:
    """Print a Rich table (colour only when ``out`` is a terminal, unless ``color`` says)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = out or sys.stdout
    if width is None and not (hasattr(out, "isatty") and out.isatty()):
        width = PIPE_WIDTH  # a file or a pipe: do not wrap at 80 columns
    console = Console(file=out, width=width, highlight=False, force_terminal=color)
    table = Table(title=title, header_style="bold", show_lines=False, title_justify="left")
    numeric = [_is_numeric_column(rows, i) for i in range(len(columns))]
    for col, num in zip(columns, numeric, strict=True):
        table.add_column(header(col), justify="right" if num else "left", overflow="fold")
    for row in rows:
        cells = []
        for col, value in zip(columns, row, strict=True):
            style = status_style(value) if col in ("response_code", "status") else ""
            if col in ("errors_5xx", "error_pct") and value:
                style = "red"
            cells.append(Text(format_cell(col, value), style=style))
        table.add_row(*cells)
    console.print(table)


def emit(
    fmt: OutputFormat,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    out: TextIO | None = None,
    title: str | None = None,
) -> None:
    """Write the result in ``fmt`` to ``out`` (stdout by default)."""
    out = out or sys.stdout
    if fmt is OutputFormat.json:
        out.write(to_json(columns, rows) + "\n")
    elif fmt is OutputFormat.csv:
        out.write(to_csv(columns, rows))
    elif fmt is OutputFormat.markdown:
        out.write(to_markdown(columns, rows))
    else:
        render_table(columns, rows, out=out, title=title)
    out.flush()
