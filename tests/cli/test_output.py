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
    assert format_cell("count", None) == "-"
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
    assert lines[1].split(" | ")[2] == "---:"


def test_plain_values() -> None:
    assert plain(Decimal("5")) == 5 and plain(Decimal("2.5")) == 2.5
    assert plain(b"ab") == "ab"
    assert plain([datetime(2026, 1, 1, tzinfo=UTC)]) == ["2026-01-01T00:00:00.000Z"]


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
