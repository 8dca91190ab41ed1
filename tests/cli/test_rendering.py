"""What a person sees: values never broken into other plausible values, log text that cannot
drive the terminal, a timeline readable without colour, and one exit status for a closed pipe.

Each test builds data with the values an incident brings (IPv6 upstreams, long paths, user
agents and log lines holding escape sequences) and checks the rendered text itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import output
from cli.chart import BLOCKS, render_timeline
from cli.output import (
    WRITE_CHUNK,
    OutputFormat,
    emit,
    render_table,
    to_markdown,
    visible,
)
from tests.athena.factory import access_frame, logs_frame, utc, write_frame

LOGQ = Path(sys.executable).with_name("logq")

#: The columns ``logq trace`` prints, and hops with values that used to be folded into others.
TRACE_COLUMNS = [
    "timestamp", "service", "container_name", "method", "path", "response_code",
    "response_flags", "duration_ms", "upstream_service_time_ms", "upstream_host", "authority",
]  # fmt: skip
IPV6 = "[2600:1f18:4a3:6901::99]:9200"
LONG_PATH = "/api/v2/recipes/42/ingredients/" + "x" * 150 + "?expand=nutrition"
TS = datetime(2026, 11, 29, 11, 33, 49, tzinfo=UTC)
TRACE_ROWS = [
    (TS, "front", "envoy", "GET", LONG_PATH, 200, "-", 1924, 1015, "10.0.5.77:8080",
     "api.example.com"),
    (TS + timedelta(milliseconds=3), "recipe", "envoy", "GET", "/api/recipes/42", 503, "UF,URX",
     37, None, IPV6, "recipe.internal"),
]  # fmt: skip
WHOLE = ["2026-11-29T11:33:49.000Z", "2026-11-29T11:33:49.003Z", "10.0.5.77:8080", IPV6,
         "UF,URX", "1,924 ms", "1,015 ms", "api.example.com", "recipe.internal"]  # fmt: skip

#: Control characters a log line or a request header can carry.
RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
HOSTILE_AGENT = "evil\x1b[2J\x1b[Hfake [bold]ok[/bold]"
HOSTILE_PATH = "/p\x1b]0;pwned\x07ath"
HOSTILE_LINES = [
    "progress\r\x1b[2Kdone",
    "\x1b]0;title\x07 title set",
    "\x1b[31mred\x1b[0m and [bold]markup[/bold]",
    "two\nlines\tand a tab \x9b2J",
]


class Terminal(io.StringIO):
    """A StringIO that says it is a terminal (as a person's stdout does)."""

    def isatty(self) -> bool:
        return True


def _table(rows=TRACE_ROWS, columns=TRACE_COLUMNS, **kwargs) -> str:
    out = kwargs.pop("out", None) or io.StringIO()
    render_table(columns, rows, out=out, title="request abc", **kwargs)
    return out.getvalue()


# --- 1. values are never broken into other values ----------------------------------------------


def test_a_pipe_gets_every_row_on_one_line() -> None:
    """Not a terminal: no wrapping at all, however long the path (it used to fold at 200)."""
    text = _table()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 2, text
    assert LONG_PATH in rows[0] and "10.0.5.77:8080" in rows[0]
    assert IPV6 in rows[1] and "2026-11-29T11:33:49.003Z" in rows[1]


@pytest.mark.parametrize("width", [200, 170, 120, 80, 40])
def test_a_terminal_never_breaks_an_identifier(width: int) -> None:
    """At any width: each timestamp, host, flag and number whole on one line, nothing wider
    than the terminal; a path is cut with "…" in a table (each row stays one line), or in
    records folded whole under its name."""
    text = _table(width=width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    for value in WHOLE:
        assert value in text, (width, value, text)
    if "── 1 of 2" in text:  # records
        assert LONG_PATH in text.replace("\n  ", "") and "/api/recipes/42" in text
    else:
        rows = [line for line in text.splitlines() if line.startswith("│")]
        assert len(rows) == 2, text
        for row, path in zip(rows, (LONG_PATH, "/api/recipes/42"), strict=True):
            assert _shows(row.split("│")[5].strip(), path), row


def _shows(cell: str, value: str) -> bool:
    """``cell`` is ``value``, or its start, "…" and its end."""
    start, cut, end = cell.partition("…")
    return cell == value or (cut and value.startswith(start) and value.endswith(end))


def test_routes_cut_to_fit_stay_apart() -> None:
    """At 80 columns `logq errors` cut each route's end: `/api/v1/recipes/feed` and
    `/api/v1/recipes/{id}` both read `/api/v1/recipe…`, one route with two counts. A path too
    long for its column keeps its start and its last segments, the "…" between them."""
    columns = ["service", "path", "response_code", "response_flags", "count",
               "path_share_pct", "path_requests"]  # fmt: skip
    paths = ["/api/v1/recipes/feed", "/api/v1/recipes/{id}", "/api/v1/recipes/{id}/ratings",
             "/healthz", "/api/v1/products/SKU-99880123456"]  # fmt: skip
    rows = [("recipe", p, 503, "UF,URX", 90, 17.21, 523) for p in paths]
    for width in (80, 76):
        text = _table(rows, columns, width=width)
        lines = [line for line in text.splitlines() if line.startswith("│")]
        assert len(lines) == len(paths) and max(map(len, text.splitlines())) <= width, text
        cells = [line.split("│")[2].strip() for line in lines]
        assert len(set(cells)) == len(paths), cells
        assert all(_shows(c, p) for c, p in zip(cells, paths, strict=True)), cells
        assert cells[3] == "/healthz" and "…/feed" in cells[0] and "…/{id}" in cells[1], cells


def test_a_narrow_terminal_prints_records() -> None:
    """When the whole values cannot fit side by side, one record per row, ``name value``."""
    text = _table(width=80)
    assert "┃" not in text and "── 1 of 2" in text and "── 2 of 2" in text
    assert re.search(r"^upstream host +\[2600:1f18:4a3:6901::99\]:9200$", text, re.M), text
    assert re.search(r"^response code +503$", text, re.M)
    assert LONG_PATH in text.replace("\n  ", "")  # folded under its name, nothing dropped


def test_a_table_a_few_columns_too_wide_drops_its_bars_before_turning_to_records() -> None:
    """`logq latency` at 80 columns missed the boxed table by one column and printed every
    row as a record; without the bars (one space between columns) it is a table, values whole."""
    columns = ["service", "path", "requests", "p50_ms", "p90_ms", "p99_ms", "max_ms"]
    rows = [
        ("checkout", "/api/v1/recipes/feed", 452, 162, 15016, 15037, 15039),
        ("recipe", "/api/v1/recipes/{id}/ratings", 69, 22, 45, 103, 103),
    ]
    text = _table(rows, columns, width=80)
    assert "── 1 of" not in text and "│" not in text, text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith(("checkout", "recipe "))]
    assert len(body) == 2, text
    assert body[0].split()[2:] == [
        "452",
        "162",
        "ms",
        "15,016",
        "ms",
        "15,037",
        "ms",
        "15,039",
        "ms",
    ]
    assert "/api/v1/recipes/feed" in body[0] and "…/{id}/ratings" in body[1], text
    assert "── 1 of 2" in _table(rows, columns, width=50)  # narrower still: records


def test_percentages_stay_whole_in_forty_columns() -> None:
    columns = ["service", "path", "requests", "request_share_pct", "errors_5xx", "error_pct"]
    rows = [("recipe", "/api/recipes/42", 123456, 37.91, 1234, 12.5)] * 3
    text = _table(rows, columns, width=40)
    assert "37.91 %" in text and "12.50 %" in text and "123,456" in text, text
    assert max(len(line) for line in text.splitlines()) <= 40


def test_prose_wraps_between_words_and_titles_before_values() -> None:
    """A table that fits once titles and prose wrap stays a table, identifiers still whole."""
    columns = ["service", "flag", "requests", "meaning", "check"]
    meaning = "upstream connection failure, in addition to the request being retried"
    rows = [("recipe", "UF,URX", 1200, meaning, "upstream process up? listening?")]
    text = _table(rows, columns, width=70)
    assert "┃" in text and "UF,URX" in text and "1,200" in text, text
    assert max(len(line) for line in text.splitlines()) <= 70
    words = " ".join(
        cell.strip()
        for line in text.splitlines()
        if line.startswith("│")
        for cell in line.split("│")[4:5]
    )
    assert " ".join(words.split()) == meaning  # all words, in order, none cut


def test_a_wide_terminal_shows_the_table_as_it_is() -> None:
    text = _table(width=400)
    assert LONG_PATH in text and "upstream service time ms" in text  # titles not wrapped
    assert len([line for line in text.splitlines() if line.startswith("│")]) == 2


def test_a_terminal_is_not_treated_as_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's width counts (COLUMNS=80): records, not a 300-column table."""
    monkeypatch.setenv("COLUMNS", "80")
    text = _table(out=Terminal())
    assert "── 1 of 2" in text and max(len(line) for line in text.splitlines()) <= 80


def test_trace_in_a_pipe_keeps_every_hop_on_one_line(logq, tmp_path: Path) -> None:
    """`logq trace ID > file`: each hop one line, every value whole (it folded at 200)."""
    uri = str(tmp_path / "wh")
    frame = access_frame(30, utc(2026, 11, 29, 11, 30), utc(2026, 11, 29, 11, 35), ["front"], 1)
    frame.loc[[2, 5], "request_id"] = "abc-123"
    frame.loc[2, "upstream_host"] = "10.0.5.77:8080"
    frame.loc[5, "upstream_host"] = IPV6
    frame.loc[5, "path"] = LONG_PATH
    write_frame(uri, "envoy_access", frame)
    run = logq("trace", "abc-123", "--since", "2026-11-29T11:00:00Z", "--until",
               "2026-11-29T12:00:00Z", "--warehouse", uri)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2, run.stdout
    assert "10.0.5.77:8080" in run.stdout and IPV6 in run.stdout and LONG_PATH in run.stdout
    for hop in frame.loc[[2, 5], "timestamp"]:
        assert hop.strftime("%Y-%m-%dT%H:%M:%S.") in run.stdout


# --- 2. log text is data, never terminal control ------------------------------------------------


def test_visible_escapes_controls_but_tabs() -> None:
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("x\r\ny\tz") == "x\\r\\ny\tz"
    assert visible("\x07\x00\x7f\x9b") == "\\x07\\x00\\x7f\\x9b"
    assert visible("a\u202eb\u2028") == "a\\u202eb\\u2028"  # bidi override, line separator
    assert visible("plain [bold]é ü 日本[/bold]") == "plain [bold]é ü 日本[/bold]"


def test_a_table_shows_escape_sequences_and_markup_as_text() -> None:
    columns = ["service", "user_agent", "path", "requests"]
    rows = [("recipe", HOSTILE_AGENT, HOSTILE_PATH, 7)]
    for width in (None, 200, 50, 30):
        text = _table(rows, columns, width=width)
        assert not RAW_CONTROL.search(text.replace("\n", "")), repr(text)
        if width is None or width == 200:  # one line per row: the text as it is
            assert "evil\\x1b[2J\\x1b[Hfake [bold]ok[/bold]" in text, text  # no markup
            assert "/p\\x1b]0;pwned\\x07ath" in text


def test_a_title_and_column_names_are_not_markup() -> None:
    text = _table([(1,)], ["[red]n"], width=80)
    assert "request abc" in text and "[red]n" in text


def test_colour_codes_are_only_logq_own() -> None:
    """On a terminal Rich colours the status; the data's own ESC stays escaped."""
    columns = ["user_agent", "response_code"]
    text = _table([(HOSTILE_AGENT, 503)], columns, width=120, color=True)
    assert "\\x1b[2J" in text and "\x1b[2J" not in text and "\x1b[H" not in text
    assert re.search(r"\x1b\[1;31m\s*503", text)


def test_markdown_escapes_controls() -> None:
    text = to_markdown(["user_agent"], [(HOSTILE_AGENT,)])
    assert "\x1b" not in text and "\\\\x1b\\[2J" in text  # \x1b, with Markdown's own escapes


def test_csv_on_a_terminal_escapes_controls_and_piped_stays_exact() -> None:
    """``-f csv`` to a terminal passed a log line's ESC, CR and BEL to it (a message could
    clear the screen or fake output): there it shows them escaped as the table does; to a
    pipe or file it stays exact CSV (the tests below read it back)."""
    columns = ["message\x1b[8m", "n"]
    rows = [(line, i) for i, line in enumerate(HOSTILE_LINES)]
    shown = Terminal()
    emit(OutputFormat.csv, columns, rows, out=shown)
    text = shown.getvalue()
    assert not RAW_CONTROL.search(text.replace("\n", "")), repr(text)
    assert text.splitlines() == ["message\\x1b[8m,n"] + [
        f"{visible(line)},{i}" for i, line in enumerate(HOSTILE_LINES)
    ]
    piped = io.StringIO()
    emit(OutputFormat.csv, columns, rows, out=piped)
    back = list(csv.reader(io.StringIO(piped.getvalue(), newline="")))
    assert back == [columns] + [[line, str(i)] for i, line in enumerate(HOSTILE_LINES)]


def test_tail_follow_csv_on_a_terminal_escapes_controls_and_piped_stays_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``logq tail -F -f csv`` writes each poll's rows itself (not through ``emit``): on a
    terminal it still passed a log line's ESC and CR to it, where ``logq sql -f csv`` shows
    them escaped. Piped, two polls are one exact CSV file (one header)."""
    from types import SimpleNamespace

    from cli.commands.logs import _print_log_lines
    from cli.follow import DISPLAY_COLUMNS, _Rows

    at = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    rows = [(at, "svc", "app", "stdout", line) for line in HOSTILE_LINES]
    for out in (Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stdout", out)
        result = _Rows(DISPLAY_COLUMNS)
        for poll in (rows[:2], rows[2:]):  # two polls: the header once
            _print_log_lines(SimpleNamespace(fmt=OutputFormat.csv), result, None, poll, True)
        text = out.getvalue()
        stamp = "2026-11-30T22:00:00.000Z"
        if out.isatty():
            assert not RAW_CONTROL.search(text.replace("\n", "")), repr(text)
            assert text.splitlines() == [",".join(DISPLAY_COLUMNS)] + [
                f"{stamp},svc,app,stdout,{visible(line)}" for line in HOSTILE_LINES
            ]
        else:
            back = list(csv.reader(io.StringIO(text, newline="")))
            assert back == [DISPLAY_COLUMNS] + [
                [stamp, "svc", "app", "stdout", line] for line in HOSTILE_LINES
            ]


@pytest.fixture(scope="module")
def hostile_warehouse(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Log lines, a container name and a user agent holding escape sequences (the tests only
    read it)."""
    uri = str(tmp_path_factory.mktemp("hostile") / "wh")
    start = utc(2026, 11, 29, 11, 0)
    logs = logs_frame(len(HOSTILE_LINES), start, start + timedelta(minutes=1), ["recipe"], 2)
    logs["message"] = HOSTILE_LINES
    logs["container_name"] = "app\x1b[8m"
    write_frame(uri, "container_logs", logs)
    access = access_frame(40, start, start + timedelta(minutes=1), ["recipe"], 3)
    access["user_agent"] = HOSTILE_AGENT
    write_frame(uri, "envoy_access", access)
    return uri


RANGE = ["--since", "2026-11-29T10:00:00Z", "--until", "2026-11-29T12:00:00Z"]


def test_tail_escapes_control_characters(logq, hostile_warehouse: str) -> None:
    uri = hostile_warehouse
    run = logq("tail", *RANGE, "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == len(HOSTILE_LINES), run.stdout  # "\n" in a message: still one line
    assert not RAW_CONTROL.search(run.stdout.replace("\n", "")), repr(run.stdout)
    for line in (
        "progress\\r\\x1b[2Kdone",
        "\\x1b]0;title\\x07 title set",
        "\\x1b[31mred\\x1b[0m and [bold]markup[/bold]",
        "two\\nlines\tand a tab \\x9b2J",
    ):
        assert any(ln.endswith("| " + line) for ln in lines), (line, lines)
    assert all(" app\\x1b[8m" in ln for ln in lines)


def test_json_and_csv_keep_the_raw_text(logq, hostile_warehouse: str) -> None:
    uri = hostile_warehouse
    rows = logq("tail", *RANGE, "-f", "json", "--warehouse", uri).json()
    assert sorted(r["message"] for r in rows) == sorted(HOSTILE_LINES)
    text = logq("tail", *RANGE, "-f", "csv", "--warehouse", uri).stdout
    assert sorted(r["message"] for r in csv.DictReader(io.StringIO(text))) == sorted(HOSTILE_LINES)


def test_top_user_agent_table_is_escaped(logq, hostile_warehouse: str) -> None:
    uri = hostile_warehouse
    run = logq("top", "--by", "user_agent", *RANGE, "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert not RAW_CONTROL.search(run.stdout.replace("\n", "")), repr(run.stdout)
    assert "evil\\x1b[2J\\x1b[Hfake [bold]ok[/bold]" in run.stdout
    raw = logq("top", "--by", "user_agent", *RANGE, "-f", "json", "--warehouse", uri).json()
    assert raw[0]["user_agent"] == HOSTILE_AGENT


# --- 3. the timeline without colour -------------------------------------------------------------


def test_timeline_classes_differ_without_colour() -> None:
    """ok, 4xx and 5xx each have a glyph of their own (colour alone said it before)."""
    t0 = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    rows = [
        (t0, 100, 0, 0),  # all fine
        (t0 + timedelta(minutes=1), 100, 100, 0),  # all 4xx
        (t0 + timedelta(minutes=2), 100, 0, 100),  # all 5xx
        (t0 + timedelta(minutes=3), 100, 30, 30),
    ]
    out = io.StringIO()
    render_timeline(rows, "1m", out=out, width=100)
    text = out.getvalue()
    assert "\x1b[" not in text
    bars = {}
    for line in text.splitlines():
        match = re.match(r"^\s+(\d\d:\d\d)\s+[\d,]+\s+[\d,]+ (.*)$", line)
        if match:  # eighths of a cell end the ok part
            bars[match.group(1)] = {"█" if c in BLOCKS else c for c in match.group(2)}
    assert bars["11:00"] == {"█"} and bars["11:01"] == {"▒"} and bars["11:02"] == {"X"}
    assert bars["11:03"] == {"█", "▒", "X"}
    headers = [line for line in text.splitlines() if "time UTC" in line]
    assert len(headers) == 2 and all("█ ok" in h and "▒ 4xx" in h and "X 5xx" in h for h in headers)


def test_timeline_shows_a_single_error() -> None:
    t0 = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    out = io.StringIO()
    render_timeline([(t0, 100_000, 1, 1)], "1m", out=out, width=100)
    assert "▒X" in out.getvalue()  # one request in 100,000 still gets its cell


def test_timeline_header_and_notes_are_whole_lines_in_a_pipe() -> None:
    """Into a pipe (no terminal width) the header and the partial notes are one line each, as a
    table's rows are: at Rich's default 80 columns the header broke between "one cell =" and
    its number, and a note mid-sentence."""
    t0 = datetime(2026, 11, 29, 10, 0, 30, 250_000, tzinfo=UTC)
    rows = [(t0, 1_234_567, 2_345, 34_567, 4_567), (t0 + timedelta(minutes=1), 1_000, 0, 0, 0)]
    out = io.StringIO()
    render_timeline(rows, "1m", out=out, until=t0 + timedelta(minutes=1, seconds=10), step=60)
    lines = out.getvalue().splitlines()
    header = "requests per 1m: 1,235,567 total, 34,567 5xx, 4,567 code 0 (client went away); "
    assert lines[0].startswith(header) and lines[0].endswith(" requests"), lines
    first = "the first interval is partial: the range starts at 10:00:30.250 UTC, inside the "
    assert f"{first}interval from 10:00:00 UTC" in lines, lines
    assert "the last interval is partial: the range ends at 10:01:40.250 UTC" in lines, lines


def _labels(rows: list[tuple[datetime, int, int, int]], every: str, step: int = 0) -> list[str]:
    """The time labels of the chart of ``rows`` (``step``: as the timeline command passes it;
    0: read from ``every``), and checks that the header's column ends where they do."""
    out = io.StringIO()
    render_timeline(rows, every, out=out, width=100, step=step)
    lines = out.getvalue().splitlines()
    header = next(ln for ln in lines if "time UTC" in ln)
    drawn = [ln for ln in lines[2:] if ln and ln != header][: len(rows)]
    labels = [ln[: header.index("time UTC") + len("time UTC")].strip() for ln in drawn]
    assert all(ln[header.index("time UTC") + len("time UTC")] == " " for ln in drawn), lines
    return labels


def _at(*times: datetime) -> list[tuple[datetime, int, int, int]]:
    return [(t, 10, 1, 1) for t in times]


def test_timeline_labels_have_the_precision_of_every_on_every_row() -> None:
    """`--every 1s` labelled whole minutes `10:39` among `10:38:59` and `10:39:01` (seconds
    were shown only when not 0): each chart's labels now have one precision, that of --every;
    a first interval the range starts inside (a --since at some second or millisecond) too."""
    t = datetime(2026, 11, 29, 10, 38, 59, tzinfo=UTC)
    second = timedelta(seconds=1)
    assert _labels(_at(t, t + second, t + 2 * second), "1s") == [
        "10:38:59",
        "10:39:00",
        "10:39:01",
    ]
    ninety = [
        datetime(2026, 11, 29, 10, 0, tzinfo=UTC) + timedelta(seconds=90 * i) for i in range(3)
    ]
    assert _labels(_at(*ninety), "90s", step=90) == ["10:00:00", "10:01:30", "10:03:00"]
    # --since 10:37:42.5 --every 1m: the first row is the minute the range starts inside
    # (the partial note gives the exact start), not a "10:37:42" among "10:38", "10:39".
    first = datetime(2026, 11, 29, 10, 37, 42, 500000, tzinfo=UTC)
    minutes = [datetime(2026, 11, 29, 10, m, tzinfo=UTC) for m in (38, 39)]
    assert _labels(_at(first, *minutes), "1m", step=60) == ["10:37", "10:38", "10:39"]
    # --since 08:30 --every 1h (a clock time reads HH:MM, for hours too)
    hours = [datetime(2026, 11, 29, h, m, tzinfo=UTC) for h, m in ((8, 30), (9, 0), (10, 0))]
    assert _labels(_at(*hours), "1h", step=3600) == ["08:30", "09:00", "10:00"]
    # over midnight: dated labels, seconds kept for --every 30s, and the column still lines up
    night = datetime(2026, 11, 29, 23, 59, 30, tzinfo=UTC)
    half = timedelta(seconds=30)
    assert _labels(_at(night, night + half, night + 2 * half), "30s", step=30) == [
        "11-29 23:59:30",
        "11-30 00:00:00",
        "11-30 00:00:30",
    ]
    days = [datetime(2026, 11, d, tzinfo=UTC) for d in (28, 29, 30)]
    assert _labels(_at(*days), "1d", step=86400) == ["11-28 00:00", "11-29 00:00", "11-30 00:00"]


# --- 4. a reader that quits early ---------------------------------------------------------------


class Recorder(io.StringIO):
    """Keeps the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text))
        return super().write(text)


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_large_output_is_written_in_pieces(fmt: OutputFormat) -> None:
    """One multi-megabyte write into a pipe can lose its tail silently when the reader quits;
    pieces make the next write fail instead, which ends logq."""
    rows = [(TS, f"/api/{i}", 200, i) for i in range(1_500)]
    out = Recorder()
    emit(fmt, ["timestamp", "path", "response_code", "count"], rows, out=out)
    assert sum(out.sizes) > 2 * WRITE_CHUNK and max(out.sizes) <= WRITE_CHUNK


@pytest.fixture(scope="module")
def big_warehouse(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("pipe") / "wh")
    start = utc(2026, 11, 29, 11, 0)
    write_frame(uri, "container_logs", logs_frame(1500, start, start + timedelta(hours=1),
                                                  ["svc"], seed=3))  # fmt: skip
    write_frame(uri, "envoy_access", access_frame(1500, start, start + timedelta(hours=1),
                                                  ["svc"], seed=4))  # fmt: skip
    return uri


def _into_closed_pipe(args: list[str], read: int = 0) -> tuple[int, str, bytes]:
    """Run logq with stdout a pipe whose reader reads ``read`` bytes (0: none) and quits."""
    proc = subprocess.Popen([str(LOGQ), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    got = proc.stdout.read(read) if read else b""
    proc.stdout.close()  # what `head` does
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    return code, stderr, got


PIPE_RANGE = ["--since", "2026-11-29T10:00:00Z", "--until", "2026-11-29T13:00:00Z"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [
        ["tail", *PIPE_RANGE, "--limit", "1500"],
        ["sql", "SELECT * FROM envoy_access", "-f", "json"],
        ["sql", "SELECT * FROM envoy_access", "-f", "csv"],
        ["latency", *PIPE_RANGE],
        ["timeline", *PIPE_RANGE],
        ["--help"],
    ],
    ids=["tail", "sql-json", "sql-csv", "latency-table", "timeline-chart", "help"],
)
def test_every_command_ends_the_same_into_a_closed_pipe(big_warehouse: str, args) -> None:
    """Exit 0, nothing on stderr: like `| head` reading nothing (tail, the chart, the help
    and tables exited 1 before, the status of an engine failure)."""
    warehouse = [] if args == ["--help"] else ["--warehouse", big_warehouse]
    code, stderr, _ = _into_closed_pipe([*args, *warehouse])
    assert (code, stderr) == (0, "")


@pytest.mark.integration
def test_a_reader_that_stops_mid_output(big_warehouse: str) -> None:
    """`logq sql ... -f json | head -c 10`: the reader takes a little, then quits."""
    code, stderr, got = _into_closed_pipe(
        ["sql", "SELECT * FROM envoy_access", "-f", "json", "--warehouse", big_warehouse], 10
    )
    assert (code, stderr) == (0, "") and got.startswith(b"[")


@pytest.mark.integration
def test_a_failure_into_a_closed_pipe_is_still_a_failure(
    big_warehouse: str, tmp_path: Path
) -> None:
    """The reader's going away changes nothing about an engine failure or bad input."""
    from tests.cli.test_sql_sandbox import write_damaged

    bad = write_damaged(tmp_path / "damaged")
    code, stderr, _ = _into_closed_pipe(
        ["sql", "SELECT count(*) FROM envoy_access", "--warehouse", str(tmp_path / "damaged")]
    )
    assert code == 1 and str(bad["envoy_access"]) in stderr
    code, stderr, _ = _into_closed_pipe(
        ["sql", "SELECT CAST('x' AS INTEGER) AS n", "--warehouse", big_warehouse]
    )
    assert code == 2 and "Conversion Error" in stderr  # the user's SQL: bad input
    code, stderr, _ = _into_closed_pipe(["tail", "--since", "soon", "--warehouse", big_warehouse])
    assert code == 2 and "is not a time" in stderr


def test_csv_quotes_a_bare_carriage_return() -> None:
    """A log line with a lone CR (a progress bar) stays one field: Python's writer quoted only
    the characters of its line terminator, so "a\rb" went out bare and readers split the row."""
    out = io.StringIO()
    emit(OutputFormat.csv, ["message", "n"], [("a\rb", 1), ("c\r\nd", 2), ("e\nf", 3)], out=out)
    text = out.getvalue()
    assert text.endswith("3\n") and "\r\n" not in text.replace('"c\r\nd"', "")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [["message", "n"], ["a\rb", "1"], ["c\r\nd", "2"], ["e\nf", "3"]]


def test_json_rows_still_parse_after_pieces() -> None:
    rows = [(TS, "é" * 5000 + str(i), i) for i in range(50)]
    out = io.StringIO()
    emit(OutputFormat.json, ["timestamp", "text", "n"], rows, out=out)
    assert [r["n"] for r in json.loads(out.getvalue())] == list(range(50))


# --- 7. a pipe's table is written directly, as Rich would draw it -------------------------------

#: Values a table cell can hold: text with spaces, wide and combining characters, tabs and
#: controls (escaped), numbers, times, NULL.
_CELL_VALUES = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.just(UTC)),
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.text(" ab\t界🙂é\u0301-", max_size=12),
)


def _rich_pipe_table(columns: list[str], rows: list[tuple], title: str) -> str:
    """What render_table printed into a pipe when Rich drew every table."""
    out = io.StringIO()
    cells = output._cells(columns, rows)
    titles = output.table_titles(columns)
    width = max(output.natural_width(titles, cells), len(title), 20)
    con = output.console(out, width=width, markup=False)
    output._print_table(con, columns, titles, rows, cells, title, None, wrap_titles=False)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    columns=st.lists(
        st.sampled_from(["service", "n", "response_code", "path", "message", "p99_ms", "a b",
                         "用户", "duration_ms", "error_pct", "timestamp"]),
        min_size=1, max_size=6, unique=True,
    ),
    data=st.data(),
)  # fmt: skip
def test_a_pipe_table_has_the_characters_rich_draws(columns: list[str], data) -> None:
    """The directly written table (a thousand rows took Rich ~1.3 s of CPU) is Rich's, to the
    character: box, padding, alignment of numeric columns, wide characters, escaped controls."""
    rows = data.draw(st.lists(st.tuples(*[_CELL_VALUES for _ in columns]), min_size=1, max_size=5))
    title = data.draw(st.text("ab界 ", max_size=30))
    out = io.StringIO()
    render_table(columns, rows, out=out, title=title)
    assert out.getvalue() == _rich_pipe_table(columns, rows, title)


def test_a_pipe_with_colour_forced_still_gets_rich_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORCE_COLOR makes Rich colour a pipe: the plain writer must leave that table to Rich."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    out = io.StringIO()
    render_table(["service", "response_code"], [("recipe", 503)], out=out)
    assert "\x1b[" in out.getvalue()
    assert "recipe" in out.getvalue()
