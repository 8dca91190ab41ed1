"""Rendering: units, status colours, and json/csv/markdown that parse back."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cli.output import (
    OutputFormat,
    emit,
    format_cell,
    header,
    plain,
    render_table,
    status_style,
    to_markdown,
)

COLUMNS = ["timestamp", "path", "response_code", "count", "p99_ms", "path_share_pct", "bytes_sent"]
ROWS = [
    (datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC), "/a|b", 503, 1234, 15036, 2.5, 1536),
    (datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC), '/x,"y"\n', 200, 7, None, 100.0, 5 * 1024**2),
]


def test_cells_have_units() -> None:
    assert format_cell("p99_ms", 15036) == "15,036 ms"
    assert format_cell("share_pct", 2.5) == "2.50 %"
    assert format_cell("bytes_sent", 1536) == "1.5 KiB"
    assert format_cell("bytes_sent", 5 * 1024**2) == "5.0 MiB"
    assert format_cell("count", 1234567) == "1,234,567"
    assert format_cell("count", None) == ""  # NULL: empty, as in markdown; '-' is a value
    assert format_cell("response_flags", "-") == "-"
    assert header("path_share_pct") == "path share %" and header("p99_ms") == "p99 ms"


def test_status_classes() -> None:
    assert status_style(503) == "bold red"
    assert status_style(404) == "yellow"
    assert status_style(301) == "cyan"
    assert status_style(200) == "green"
    assert status_style(0) == "magenta"


def test_table_colours_5xx_red_only_on_terminals() -> None:
    out = io.StringIO()
    render_table(COLUMNS, ROWS, out=out, width=160, color=True)
    text = out.getvalue()
    assert re.search(r"\x1b\[1;31m\s*503", text) and re.search(r"\x1b\[32m\s*200", text)
    assert "15,036 ms" in text and "1.5 KiB" in text
    plain_out = io.StringIO()
    render_table(COLUMNS, ROWS, out=plain_out, width=160)
    assert "\x1b[" not in plain_out.getvalue()


def test_json_round_trip() -> None:
    out = io.StringIO()
    emit(OutputFormat.json, COLUMNS, ROWS, out=out)
    rows = json.loads(out.getvalue())
    assert rows[0]["timestamp"] == "2026-01-02T03:04:05.006Z"
    assert rows[1]["path"] == '/x,"y"\n' and rows[1]["p99_ms"] is None
    assert list(rows[0]) == COLUMNS


def test_csv_round_trip() -> None:
    out = io.StringIO()
    emit(OutputFormat.csv, COLUMNS, ROWS, out=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[1]["path"] == '/x,"y"\n' and rows[1]["p99_ms"] == ""
    assert rows[0]["timestamp"] == "2026-01-02T03:04:05.006Z" and rows[0]["count"] == "1234"


def test_markdown_escapes_pipes_and_newlines() -> None:
    text = to_markdown(COLUMNS, ROWS)
    lines = text.splitlines()
    assert len(lines) == 4
    assert "/a\\|b" in lines[2] and "\n" not in lines[3].strip("\n")
    assert lines[1].split(" | ")[2].strip("-") == ":"


def markdown_cells(text: str) -> tuple[list[str], list[list[str]]]:
    """What a GitHub-flavoured Markdown renderer shows of a table: (header, rows) as text, a
    ``<br>`` as a line break; anything else the cells would render as (emphasis, code, a link,
    HTML) fails the test. Fails unless ``text`` is exactly one table."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parse(text)
    assert tokens[0].type == "table_open" and tokens[-1].type == "table_close", text
    assert sum(t.type == "table_open" for t in tokens) == 1, text
    header: list[str] = []
    rows: list[list[str]] = []
    cells = header
    for token in tokens:
        if token.type == "tr_open" and header:
            rows.append([])
            cells = rows[-1]
        if token.type != "inline":
            continue
        shown = ""
        for child in token.children or []:
            if child.type == "text":
                shown += child.content
            elif child.type == "html_inline" and child.content == "<br>":
                shown += "\n"
            else:
                raise AssertionError(f"{child.type} {child.content!r} in a cell of:\n{text}")
        cells.append(shown)
    return header, rows


#: Values Markdown would otherwise show as something else, split, or lose.
HOSTILE_MARKDOWN = [
    "/a|b||c",
    "line one\nline two\r\nthree",
    "`code` and ``more`` and a lone `",
    "*bold* _it_ __init__ ~~gone~~ ~x~",
    "<script>alert(1)</script> <br> &lt; &amp;",
    "[a link](https://example.com) ![img](x.png)",
    "back\\slash\\|pipe \\`tick",
    "日本語のパス/ユーザー",
    "👍 emoji",
    "p99_ms request_id",
]


def test_markdown_renders_every_value_as_it_is() -> None:
    """Escaping only ``|`` and a backslash, a value rendered as formatting: a backtick opened
    code (where no escape works: ``\\|`` showed both characters), ``*x*`` emphasis, a user
    agent's ``<script>`` HTML, ``&lt;`` an entity; a line break became a space."""
    rows = [(v, i) for i, v in enumerate(HOSTILE_MARKDOWN)]
    header, cells = markdown_cells(to_markdown(["value", "n"], rows))
    assert header == ["value", "n"]
    assert cells == [[v.replace("\r\n", "\n"), str(i)] for v, i in rows]  # a line break


def test_markdown_keeps_urls_text() -> None:
    """GitHub (cmark-gfm) makes a link of ``http://``, ``https://``, ``ftp://`` and ``www.`` as it
    reads the raw text, and shows every escape's backslash inside one: a referer's
    ``?x=1&y=[2]`` read ``?x=1\\&y=\\[2\\]``. (markdown-it, used here, links after the
    escapes, so it cannot show that.) The ``:`` or ``.`` that starts one is escaped: no cell
    holds a URL as GitHub would link it, and each value still renders as itself."""
    values = [
        "https://example.com/a?x=1&y=[2]",
        "see www.example.com/<p> and ftp://h/_x_",
        "HTTP://A.B/*c* http://a.b/|c",
    ]
    text = to_markdown(["referer"], [(v,) for v in values])
    assert not re.search(r"[^\\]://|www\.", text), text
    assert markdown_cells(text) == (["referer"], [[v] for v in values])


def test_markdown_columns_line_up_wide_characters_included() -> None:
    """A table that fits in one batch has every line as wide on screen (East Asian characters
    and emoji take two columns): the text itself reads as a table."""
    from rich.cells import cell_len

    rows = [(v, i * 1000) for i, v in enumerate(HOSTILE_MARKDOWN)]
    lines = to_markdown(["value", "n"], rows).splitlines()
    assert len({cell_len(line) for line in lines}) == 1, "\n".join(lines)
    bars = {
        tuple(i for i, ch in enumerate(line) if ch == "|" and line[i - 1 : i] != "\\")
        for line in lines
        if line.isascii()
    }
    assert len(bars) == 1, "\n".join(lines)


def test_a_wider_row_after_the_first_batch_keeps_the_table_valid() -> None:
    """A streamed result is laid out by its first window: a later, wider value (with pipes
    and a line break) sticks out, and every row still has its cells."""
    from cli.output import markdown_pieces

    first = [("short", 1), ("tiny", 22)]
    later = [("a much | much wider value\nthat goes on", 333), ("x", 4)]
    text = "".join(markdown_pieces(["value", "n"], [first, later]))
    header, cells = markdown_cells(text)
    assert header == ["value", "n"]
    assert cells == [[v, str(n)] for v, n in first + later]


def test_plain_values() -> None:
    assert plain(Decimal("5")) == 5 and plain(Decimal("2.5")) == 2.5
    assert plain(b"ab") == "ab"
    assert plain([datetime(2026, 1, 1, tzinfo=UTC)]) == ["2026-01-01T00:00:00.000Z"]


def test_a_whole_decimal_reads_exactly_in_the_table() -> None:
    """A DECIMAL(38,0) value (pyathena's ``Decimal``) was read as a float in the table:
    99999999999999999999 showed as 100,000,000,000,000,000,000.00."""
    assert format_cell("d", Decimal("99999999999999999999")) == "99,999,999,999,999,999,999"
    assert format_cell("d", Decimal("-7")) == "-7"
    assert format_cell("d", Decimal("2.50")) == "2.50"  # with a scale: as before


def test_empty_table_formats() -> None:
    out = io.StringIO()
    emit(OutputFormat.csv, ["a", "b"], [], out=out)
    assert out.getvalue() == "a,b\n"
    out = io.StringIO()
    emit(OutputFormat.json, ["a"], [], out=out)
    assert json.loads(out.getvalue()) == []


def test_freshness_age() -> None:
    from cli.output import age

    now = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
    assert age(datetime(2026, 1, 2, 2, 55, 30, tzinfo=UTC), now) == "4m 30s"
    assert age(datetime(2026, 1, 1, 1, 0, 0), now) == "1d 2h"
    assert age(now, now) == "0s"


def test_a_time_ahead_of_the_clock_says_so() -> None:
    """Clamped to "0s ago", rows stamped hours ahead (a wrong clock) read as the freshest."""
    from cli.output import since_text

    now = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
    assert since_text(now + timedelta(hours=2, minutes=5), now) == (
        "in 2h 5m, ahead of this clock: a source clock is wrong?"
    )
    assert since_text(now + timedelta(seconds=1), now) == "0s ago"  # clocks a second apart
    assert since_text(now - timedelta(minutes=26), now) == "26m ago"
    assert "ahead of this clock" in format_cell("newest", datetime.now(UTC) + timedelta(hours=2))
    assert format_cell("newest", datetime(2026, 1, 1, tzinfo=UTC)).endswith(" ago)")
