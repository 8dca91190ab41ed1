"""Rendering query results: a Rich table for people, json/csv/markdown for pipes and documents.

``json``, ``csv`` and ``markdown`` are written as the rows come (a streamed result,
:attr:`~athena.engines.result.QueryResult.more`, a batch at a time): the output holds one batch,
whatever the size of the answer. ``table`` sizes its columns to every row it shows, so it shows
at most :data:`TABLE_MAX_ROWS`; :func:`emit` says when rows were left out, and the caller says
so on stderr.

``json`` and ``csv`` are for machines: nothing but the data goes to stdout (no colour, no notes,
no progress); timestamps are ISO-8601 UTC with a ``Z``. ``table`` is for a person in an incident:
status codes coloured by class, numbers right-aligned with thousands separators and units taken
from the column name (``_ms`` → ms, ``_pct`` → %, ``bytes`` → KiB/MiB).

Two rules keep the human formats truthful. A value is never broken across lines where the break
would make it read as another value (``10.0.5.7`` + ``7:8080``): numbers, hosts, timestamps, ids,
codes and flags never wrap; only prose (a log message, a user agent) wraps, and a path is cut in
its middle with an ellipsis (``/api/v1/r…/feed``: routes differ at their end). When even that
cannot fit the terminal, the table drops its bars (one space between columns), and when even
that does not fit, rows print one record at a time instead. And text from the logs is
data, never terminal control: control characters in it are shown escaped (``\x1b``, ``\r``,
``\n``), as ``journalctl`` and ``less`` do, so a user agent such as ``\x1b[2J`` cannot clear
the screen of the person reading it, nor fake output.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple, TextIO

from athena.engines.result import human_bytes
from cli.sql_text import NESTED, nonfinite_text, sql_text
from cli.textio import writes_utf8
from cli.whole_rows import RowEnd, csv_row_end, end_with, flush_all, line_end
from cli.whole_rows import write_all as chunked_write

#: Rows of one result: a whole answer, or one batch of a streamed one.
Rows = Sequence[Sequence[Any]]

#: Most rows the human table shows. It needs every row it shows at once (column widths), and
#: Rich takes ~20 KiB and several ms per row of ``SELECT *`` over envoy_access: 100,000 rows
#: took 2 GiB and 8 minutes, 5,000 rows 39 s. A person reads far fewer (psql pages them, the
#: DuckDB shell shows 40); past this the table shows the first rows, and the caller says how
#: to get the others (``--limit``, or ``-f csv``/``-f json``, which stream every row). Within
#: the window an engine fetches before it streams, so the cut never waits on a stream.
TABLE_MAX_ROWS = 1_000


class OutputFormat(StrEnum):
    """Values of ``--format``."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def unique_columns(columns: Sequence[str]) -> list[str]:
    """``columns`` with each repeated name made unique.

    A statement may name two columns alike (``SELECT 1 AS a, 2 AS a``, a join's ``*``); the
    Athena console shows both. A JSON object keeps one value per key, and CSV readers that go
    by the header (``csv.DictReader``, pandas) lose or rename one, so every format names the
    second ``a_2``, the third ``a_3`` (skipping a name the result already has), the first
    keeping its name: each value has a name of its own, the same in every format.
    """
    taken = set(columns)
    seen: set[str] = set()
    out: list[str] = []
    for name in columns:
        if name in seen:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            taken.add(f"{name}_{n}")
            out.append(f"{name}_{n}")
        else:
            seen.add(name)
            out.append(name)
    return out


def unique_columns_note(columns: Sequence[str], shown: Sequence[str]) -> str:
    """What :func:`unique_columns` changed (``columns`` to ``shown``), for stderr."""
    pairs = [f"{c!r} as {s!r}" for c, s in zip(columns, shown, strict=True) if c != s]
    names = list(dict.fromkeys(repr(c) for c, s in zip(columns, shown, strict=True) if c != s))
    more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""  # a join's `*`: dozens
    return (
        f"logq: note: the result has more than one column named {', '.join(names[:5])}"
        f"{' and others' if len(names) > 5 else ''}; showing the later ones "
        f"{', '.join(pairs[:5])}{more} so that every value is kept (name them with AS to choose)"
    )


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
    is what null says. The table, CSV and Markdown formats show them as Athena does
    (:func:`cli.sql_text.nonfinite_text`: ``NaN``, ``Infinity``, ``-Infinity``).
    """
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def to_json(columns: Sequence[str], rows: Rows) -> str:
    """A JSON array of row objects (column order kept), one object per line; strictly valid
    JSON (no NaN).

    One line per row rather than ``indent=2``: ``json.dumps`` with an indent runs its
    pure-Python encoder (`logq sql` printing 30,000 Envoy rows took 5.7 s, 3.7 s this way);
    without one it runs in C. A row per line also suits ``grep`` and line-oriented tools.
    Columns whose values are all text, integers or NULL (most of them) skip :func:`json_ready`
    altogether.
    """
    return "".join(json_pieces(columns, [rows]))


def json_pieces(
    columns: Sequence[str], batches: Iterable[Rows], ascii_only: bool = False
) -> Iterator[str]:
    """:func:`to_json`'s text a batch of rows at a time: ``[``, the rows, ``]`` (``[]`` for
    none), so a streamed result is one valid JSON document without being held whole.
    ``ascii_only``: every other character as a JSON ``\\u`` escape (for an output that is not
    UTF-8, where the stream's own backslash escapes would not be JSON)."""
    encode = json.JSONEncoder(ensure_ascii=ascii_only, allow_nan=False).encode
    opened = False
    for rows in batches:
        if not rows:
            continue
        ready = [_json_column([row[i] for row in rows]) for i in range(len(columns))]
        lines = (
            [encode(dict(zip(columns, values, strict=True))) for values in zip(*ready, strict=True)]
            if ready
            else ["{}"] * len(rows)
        )
        yield (",\n  " if opened else "[\n  ") + ",\n  ".join(lines)
        opened = True
    yield "\n]" if opened else "[]"


def _json_column(values: list[Any]) -> list[Any]:
    """``values`` through :func:`json_ready`, or as they are when JSON takes them unchanged."""
    if all(v is None or type(v) in _JSON_AS_IS for v in values):
        return values
    return [json_ready(v) for v in values]


#: Types whose every value JSON writes as is (``bool`` is not an ``int`` subclass to ``type``).
_JSON_AS_IS = frozenset({str, int, bool})


class _RowsEndingLF:
    """A file for ``csv.writer`` whose rows end in ``\n``, though the writer's terminator is
    ``\r\n``: Python's writer quotes a field only for the characters of its terminator, so with
    ``\n`` a log line holding a bare ``\r`` went out unquoted and every reader split the row
    there. The writer hands over one whole row per ``write``, terminator last."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, row: str) -> int:
        self.parts.append(row[:-2] + "\n" if row.endswith("\r\n") else row)
        return len(row)


#: Types :func:`plain` returns unchanged: most CSV fields, written without a call.
_CSV_AS_IS = frozenset({str, int, float})


#: A BOOLEAN as Athena writes it (its CSV results, its ARRAY text): ``csv`` and ``str``
#: wrote Python's ``True``, beside ``[true, false]`` in the same row.
_BOOLEAN_TEXT = {True: "true", False: "false"}


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if type(value) is bool:
        return _BOOLEAN_TEXT[value]
    if type(value) in _CSV_AS_IS:
        return nonfinite_text(value) if _is_nonfinite(value) else value
    return sql_text(value, plain) if isinstance(value, NESTED) else plain(value)


def _is_nonfinite(value: Any) -> bool:
    """A NaN or infinite double: csv, markdown and the table write it as Athena does
    (``NaN``, ``-Infinity``), as they do inside an ARRAY, not as Python does (``nan``, ``-inf``)."""
    return type(value) is float and not math.isfinite(value)


def _csv_field_shown(value: Any) -> Any:
    """:func:`_csv_field` for a terminal: text with its control characters shown escaped."""
    field = _csv_field(value)
    return visible(field) if isinstance(field, str) else field


def to_csv(columns: Sequence[str], rows: Rows, on_terminal: bool = False) -> str:
    """CSV with a header row, rows ending in ``\n``; NULL is the empty field. A field holding
    a line break (``\n`` or ``\r``) is quoted, so it stays one field. ``on_terminal``: as
    :func:`csv_pieces`."""
    return "".join(csv_pieces(columns, [rows], on_terminal))


def csv_pieces(
    columns: Sequence[str], batches: Iterable[Rows], on_terminal: bool = False
) -> Iterator[str]:
    """:func:`to_csv`'s text a batch of rows at a time (the header with the first). NULL is
    empty; ARRAY, MAP, ROW and VARBINARY values as Athena's result CSV writes them
    (:mod:`cli.sql_text`); anything else :func:`plain`.

    ``on_terminal``: the CSV is read by a person, not a program, so text is :func:`visible`
    (``\x1b``, ``\r``, ``\n`` shown escaped, as the table shows them): a log line's
    ``ESC [2J`` must not clear their screen. Piped or redirected, every field stays exact."""
    buf = _RowsEndingLF()
    writer = csv.writer(buf, lineterminator="\r\n")
    field = _csv_field_shown if on_terminal else _csv_field
    writer.writerow([visible(c) for c in columns] if on_terminal else columns)
    for rows in batches:
        for row in rows:
            writer.writerow([field(v) for v in row])
        yield "".join(buf.parts)
        buf.parts.clear()
    yield "".join(buf.parts)


#: Characters Markdown would read as formatting in a table cell, shown as themselves with a
#: backslash: ``|`` ends the cell; ``\\`` escapes; `````` ` `````` opens code, inside which no other
#: escape works; ``*`` ``~`` emphasis and strikethrough; ``<`` ``&`` HTML and entities (a user
#: agent's ``<script>``, a query string's ``&lt=``); ``[`` ``]`` links. ``_`` only where it could
#: start or end emphasis (:data:`_MD_UNDERSCORE`): ``request_id`` stays readable as it is.
_MD_SPECIAL = re.compile(r"[\\|`*~<&\[\]]")
#: An underscore without a letter or digit on both sides (``_x_``, ``__init__``): inside a word
#: (``p99_ms``) it can neither open nor close emphasis, and stays as it is.
_MD_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
#: Where GitHub makes a link of a URL as it reads the raw text (``http://``, ``https://``,
#: ``ftp://``, ``www.``): it shows the backslash of every escape inside it (a referer's
#: ``?a=1&b=2`` read ``?a=1\&b=2``). Escaping the ``:`` or the ``.`` that starts one keeps the URL
#: text, every character as it is.
_MD_AUTOLINK = re.compile(r":(?=//)|(?<=www)\.")
#: A line break in a value: ``<br>`` in the cell, the one line break a table cell can hold
#: (GitHub, GitLab and most renderers show it; a literal ``<br>`` in a value is escaped).
_MD_LINE_BREAK = re.compile(r"\r\n|\n")


def _md_text(text: str) -> str:
    """``text`` as the content of a GitHub-flavoured Markdown table cell that renders as ``text``:
    formatting characters escaped, line breaks as ``<br>``, other control characters shown
    escaped (a document read on terminals too), tabs as spaces."""
    if _MD_AS_IS.fullmatch(text) and "://" not in text and "www." not in text:
        return text  # most values (numbers, ids, paths): a fifth of the time
    lines = _MD_LINE_BREAK.split(text)
    return "<br>".join(
        _MD_AUTOLINK.sub(
            r"\\\g<0>",
            _MD_UNDERSCORE.sub(
                r"\\_", _MD_SPECIAL.sub(r"\\\g<0>", visible(line).expandtabs(TAB_SIZE))
            ),
        )
        for line in lines
    )


#: Text that needs nothing done to it in a cell: printable ASCII but the characters above (an
#: underscore inside a word, as in ``x86_64``, included).
_MD_AS_IS = re.compile(
    r"(?:[ !\"#$%'()+,\-./0-9:;=>?@A-Z^a-z{}]|(?<=[A-Za-z0-9])_(?=[A-Za-z0-9]))*"
)


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is int:
        return str(value)
    if type(value) is bool:
        return _BOOLEAN_TEXT[value]
    if isinstance(value, NESTED):
        return _md_text(sql_text(value, plain))
    if _is_nonfinite(value):
        return nonfinite_text(value)
    return _md_text(value if type(value) is str else str(plain(value)))


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal (East Asian wide characters and emoji take two)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def to_markdown(columns: Sequence[str], rows: Rows) -> str:
    """A GitHub-flavoured Markdown table: valid whatever the values (see :func:`_md_text`), its
    columns padded to their widest value (as a terminal shows it: wide characters count two)."""
    return "".join(markdown_pieces(columns, [rows]))


def markdown_pieces(columns: Sequence[str], batches: Iterable[Rows]) -> Iterator[str]:
    """:func:`to_markdown`'s text a batch of rows at a time. The first batch sets the layout
    (:class:`MarkdownLayout`); the header and the alignment row come with it."""
    batches = iter(batches)
    first = next(batches, [])
    layout = MarkdownLayout(columns, first)
    yield layout.header()
    if first:
        yield layout.lines(first)
    for batch in batches:
        if batch:
            yield layout.lines(batch)


class MarkdownLayout:
    """A Markdown table's layout, set by its first rows: numeric columns right-aligned
    (``---:``) and every cell padded to the widest of its column, since the header and the
    alignment row come before any row. For a streamed result that is its first window
    (thousands of rows), for ``tail -F`` its first answer: a wider value after it makes its
    line stick out, and the table stays valid Markdown (padding is only for people reading
    the text itself). Kept so that later rows join the same table, without a header again."""

    def __init__(self, columns: Sequence[str], first: Rows) -> None:
        self.numeric = [_is_numeric_column(first, i) for i in range(len(columns))]
        self.titles = [_md_text(c) for c in columns]
        first_cells = [[_md_cell(v) for v in row] for row in first]
        self.widths = [
            max(3, _width(self.titles[i]), *(_width(row[i]) for row in first_cells))
            for i in range(len(columns))
        ]

    def header(self) -> str:
        """The column names and the alignment row."""
        rule = (
            "-" * (w - 1) + ":" if right else "-" * w
            for w, right in zip(self.widths, self.numeric, strict=True)
        )
        return self._line(self.titles) + "| " + " | ".join(rule) + " |\n"

    def lines(self, rows: Rows) -> str:
        """The table lines of ``rows``."""
        return "".join(self._line([_md_cell(v) for v in row]) for row in rows)

    def _line(self, cells: Sequence[str]) -> str:
        padded = (
            (c.rjust(w) if right else c.ljust(w))  # ASCII, nearly every cell: in C
            if c.isascii()
            else (" " * (w - _width(c)) + c if right else c + " " * (w - _width(c)))
            for c, w, right in zip(cells, self.widths, self.numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |\n"


# --- the human table ---------------------------------------------------------------------------


def _is_numeric_column(rows: Sequence[Sequence[Any]], index: int) -> bool:
    values = [r[index] for r in rows if r[index] is not None]
    return bool(values) and all(
        isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
    )


def format_cell(column: str, value: Any) -> str:
    """Text of one value in the human table, with the unit its column name implies.

    NULL is an empty cell, as in ``markdown`` (and psql): ``-`` is a value logq stores
    (``response_flags`` '-', no flags), so a NULL shown as ``-`` could not be told from it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        from athena.timerange import iso_utc

        if column == "newest":  # freshness: how long ago, at a glance
            return f"{iso_utc(value)} ({since_text(value)})"
        return iso_utc(value)
    if isinstance(value, Decimal):  # a whole one (DECIMAL(38,0)) exact, past a float's digits
        value = int(value) if _whole(value) else float(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_nonfinite(value):  # no unit either: ``NaN ms`` or ``inf TiB`` is no measure
        return nonfinite_text(value)
    if isinstance(value, int | float):
        if column.endswith("_pct"):
            return f"{value:,.2f} %"
        if column.endswith("_ms"):
            return f"{value:,.0f} ms" if float(value).is_integer() else f"{value:,.1f} ms"
        if "bytes" in column:
            return human_bytes(value)
        return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    if isinstance(value, NESTED):
        return sql_text(value, plain)
    return str(value)


def _whole(value: Decimal) -> bool:
    """A decimal without a fraction part as written (``7``, not ``7.00``: DECIMAL(p,0))."""
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= 0


#: How far ahead of this machine's clock a time may be and still read as "0s ago": hosts'
#: clocks (NTP-kept) differ by far less; more is a clock that is wrong, worth saying.
CLOCK_TOLERANCE_SECONDS = 2


def age(ts: datetime, now: datetime | None = None) -> str:
    """``2h 5m``, ``42s``: time since ``ts`` (naive means UTC), largest two units. A time
    ahead of ``now`` reads ``0s``; :func:`since_text` says so instead."""
    from datetime import UTC

    now = now or datetime.now(UTC)
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return span_text(max(0, int((now - aware).total_seconds())))


def since_text(ts: datetime, now: datetime | None = None) -> str:
    """``26m ago``, or for a time ahead of ``now`` (past :data:`CLOCK_TOLERANCE_SECONDS`)
    ``in 1h 34m, ahead of this clock: a source clock is wrong?``. Clamping it to "0s ago" made
    rows stamped hours ahead (a host's clock off) read as perfectly fresh data."""
    from datetime import UTC

    now = now or datetime.now(UTC)
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    ahead = int((aware - now).total_seconds())
    if ahead > CLOCK_TOLERANCE_SECONDS:
        return f"in {span_text(ahead)}, ahead of this clock: a source clock is wrong?"
    return f"{age(ts, now)} ago"


def span_text(seconds: int) -> str:
    """``2h 5m``, ``42s``: a non-negative number of seconds in its largest two units."""
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


# --- terminal safety: log text is data, never control ------------------------------------------

#: C0 controls but tab, DEL, C1 controls, and the Unicode format characters that reorder or break
#: what a terminal shows (bidi overrides and isolates, line/paragraph separators).
_CONTROL = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character shown escaped (``\\x1b``, ``\\r``, ``\\n``,
    ``\\u202e``), for output a person reads on a terminal: a log line or user agent holding
    ``ESC [2J`` must not clear the screen, set the window title or fake other output. Tabs stay.
    json/csv keep the raw text (JSON escapes it itself; CSV is data for programs)."""
    return _CONTROL.sub(_escape, text)


#: Tab stops of table cells: a tab expands to the next multiple of this many columns.
TAB_SIZE = 8


def cell_text(text: str) -> str:
    """:func:`visible` text for a table cell, tabs expanded to spaces. Rich measures a tab as no
    width but prints it eight columns wide, so a cell holding tabs (a Java stack trace's
    indented frames) was sized too narrow and cut with "…"; spaces are measured as printed."""
    return visible(text).expandtabs(TAB_SIZE)


# --- writing: large output in pieces -----------------------------------------------------------

#: Largest single write to stdout. A reader that quits early (``| head -c 10``) must be noticed:
#: CPython 3.11 can report a multi-megabyte ``write`` to a pipe as done after the first 64 KiB
#: when the reader closes meanwhile, losing the rest without an error; pieces are written one by
#: one, so the next one raises ``BrokenPipeError`` and logq stops instead of rendering on.
WRITE_CHUNK = 16 * 1024


def write_all(out: TextIO, text: str, row_end: RowEnd = line_end) -> None:
    """Write ``text`` to ``out`` in pieces of at most :data:`WRITE_CHUNK` characters; a Ctrl-C
    meanwhile ends the output with the whole row it cut (:mod:`cli.whole_rows`, ``row_end``
    says where a row ends)."""
    chunked_write(out, text, WRITE_CHUNK, row_end)


class ChunkedFile:
    """A text file whose ``write`` goes through :func:`write_all` (Rich writes a whole table in
    one call); everything else (``isatty``, ``fileno``, ``encoding``) is the wrapped file's."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        write_all(self._out, text)
        return len(text)

    def flush(self) -> None:
        """Rich flushes after each print: under the guard too (:func:`cli.whole_rows.flush_all`)."""
        flush_all(self._out)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def console(out: TextIO, **options: Any) -> Any:
    """A Rich console writing to ``out`` in pieces, whose closed-pipe handling is logq's own.

    Rich ends the program itself on ``BrokenPipeError`` (``SystemExit(1)``, the status of an
    engine failure); here the error goes on to :func:`cli.errors.friendly`, which ends every
    command the same way when the reader went away."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True  # nothing more to write: the reader is gone
            raise BrokenPipeError(32, "Broken pipe")

    return _Console(file=ChunkedFile(out), highlight=False, **options)


# --- the human table: layout -------------------------------------------------------------------

#: Prose: wrapped at spaces, a word longer than the column folded (read on as one text).
PROSE_COLUMNS = frozenset({"message", "user_agent", "meaning", "check"})
#: Free text that may be cut in its middle with an ellipsis (visibly incomplete, never a wrong
#: value): :func:`_cut_paths`.
CUT_COLUMNS = frozenset({"path", "container_name"})
#: What a prose or cut column keeps at least before rows print as records.
MIN_FREE_WIDTH = 10


def _is_terminal(out: TextIO) -> bool:
    return bool(hasattr(out, "isatty") and out.isatty())


def _cells(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rich ``Text`` cells: units, status colours, control characters escaped."""
    from rich.text import Text

    out = []
    for row in rows:
        cells = []
        for col, value in zip(columns, row, strict=True):
            style = status_style(value) if col in ("response_code", "status") else ""
            if col in ("errors_5xx", "error_pct") and value:
                style = "red"
            cells.append(Text(cell_text(format_cell(col, value)), style=style))
        out.append(cells)
    return out


def _widest(texts: Sequence[Any]) -> int:
    return max((t.cell_len for t in texts), default=0)


def _header_word(title: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for w in title.split()), default=0)


def table_widths(
    columns: Sequence[str],
    cells: Sequence[Sequence[Any]],
    titles: Sequence[str],
    whole_titles: bool = False,
) -> tuple[list[int], list[bool]]:
    """(width each column needs, whether it may be narrower): a fixed column needs its widest
    value, and its whole title (``titles``, as the table shows them) with ``whole_titles`` (else
    the title wraps between words); prose and cut columns can go down to
    :data:`MIN_FREE_WIDTH` (or their widest value, if smaller)."""
    from rich.cells import cell_len

    widths, free = [], []
    for i, col in enumerate(columns):
        values = _widest([row[i] for row in cells])
        name = titles[i]
        title = cell_len(name) if whole_titles else _header_word(name)
        if col in PROSE_COLUMNS or col in CUT_COLUMNS:
            widths.append(max(min(values, MIN_FREE_WIDTH), min(title, MIN_FREE_WIDTH), 1))
            free.append(True)
        else:
            widths.append(max(values, title, 1))
            free.append(False)
    return widths, free


def frame_width(count: int, compact: bool = False) -> int:
    """Columns Rich's default box takes around ``count`` columns: a bar and a space each side;
    ``compact``, one space between columns (:func:`_print_table`)."""
    return count - 1 if compact else 3 * count + 1


def natural_width(titles: Sequence[str], cells: Sequence[Sequence[Any]]) -> int:
    """Width of the table with nothing wrapped: every value and title on one line."""
    from rich.cells import cell_len

    total = 0
    for i, title in enumerate(titles):
        total += max(_widest([row[i] for row in cells]), cell_len(title), 1)
    return total + frame_width(len(titles))


def table_titles(columns: Sequence[str], as_named: bool = False) -> list[str]:
    """The titles a table shows: :func:`header`'s for a canned answer's columns (``p99_ms`` →
    ``p99 ms``), or the names as the statement gave them (``as_named``: ``logq sql``, where
    ``a_b`` shown as ``a b`` and ``_col0`` as `` col0`` named no column of the statement)."""
    return [visible(c if as_named else header(c)) for c in columns]


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    out: TextIO | None = None,
    title: str | None = None,
    width: int | None = None,
    color: bool | None = None,
    as_named: bool = False,
) -> None:
    """Print rows for people (colour only when ``out`` is a terminal, unless ``color`` says).

    Into a file or a pipe (no ``width``) the table is as wide as its longest values: nothing is
    wrapped, whatever reads it (``grep``, ``less -S``, a ticket) sees each row on one line. On a
    terminal (or with ``width``) only prose wraps and paths are cut with "…" in their middle,
    then titles wrap between words, then the box's bars go; when the values that must stay
    whole still do not fit, every row prints as a record, one ``name value`` per line. Titles
    as :func:`table_titles` makes them.
    """
    out = out or sys.stdout
    cells = _cells(columns, rows)
    titles = table_titles(columns, as_named)
    pipe = width is None and not _is_terminal(out)
    if pipe:
        width = max(natural_width(titles, cells), len(title or ""), 20)  # never wrapped
    con = console(out, width=width, force_terminal=color, markup=False)
    if pipe and rows and _plain_box(con):
        _print_title(con, title)
        _write_plain_table(out, titles, [_is_numeric_column(rows, i) for i in range(len(titles))],
                           cells)  # fmt: skip
        return
    if pipe or not rows or natural_width(titles, cells) <= con.width:
        _print_table(con, columns, titles, rows, cells, title, None, wrap_titles=not pipe)
        return
    for compact in (False, True):
        for whole_titles in (True, False):
            need, _ = table_widths(columns, cells, titles, whole_titles)
            if sum(need) + frame_width(len(columns), compact) <= con.width:
                _print_table(con, columns, titles, rows, cells, title, need, True, compact=compact)
                return
    _print_records(con, titles, cells, title)


def _print_table(
    console: Any,
    columns: Sequence[str],
    titles: Sequence[str],
    rows: Sequence[Sequence[Any]],
    cells: Sequence[Sequence[Any]],
    title: str | None,
    fixed: list[int] | None,
    wrap_titles: bool,
    compact: bool = False,
) -> None:
    """A Rich table. With ``fixed`` (the widths of :func:`table_widths`), fixed columns are
    exactly that wide and never wrap; prose and cut columns take the rest. Without, every
    column is as wide as its widest value or title (the table fits as it is). ``compact``:
    without the box's bars, a rule under the titles and one space between columns, as
    ``kubectl get`` prints: 16 columns more for the values of a 7-column table (at 80 columns
    ``logq latency`` missed the bordered table by one, and printed every row as a record)."""
    from rich.table import Table
    from rich.text import Text

    # A prose or cut column whose values fit its least width is fixed too: Rich shrinks the
    # free columns evenly, and a short container name would take room from a long path.
    free = [
        (c in PROSE_COLUMNS or c in CUT_COLUMNS)
        and (fixed is None or _widest([row[i] for row in cells]) > fixed[i])
        for i, c in enumerate(columns)
    ]
    _print_title(console, title)
    if compact:
        from rich import box

        table = Table(
            header_style="bold", show_lines=False, box=box.SIMPLE_HEAD, padding=(0, 0),
            show_edge=False,
        )  # fmt: skip
    else:
        table = Table(header_style="bold", show_lines=False)
    if fixed is not None:
        cells, fixed = _cut_paths(console.width, columns, cells, fixed, free, compact)
        free = [f and columns[i] not in CUT_COLUMNS for i, f in enumerate(free)]
    for i, col in enumerate(columns):
        numeric = _is_numeric_column(rows, i)
        name = Text(titles[i], no_wrap=not wrap_titles, overflow="fold")
        if free[i] and fixed is not None:
            overflow = "fold" if col in PROSE_COLUMNS else "ellipsis"
            table.add_column(name, justify="left", no_wrap=False, overflow=overflow)
        else:
            table.add_column(
                name,
                justify="right" if numeric else "left",
                no_wrap=True,
                overflow="ellipsis",
                width=None if fixed is None else fixed[i],
            )
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _plain_box(console: Any) -> bool:
    """Whether the console prints Rich's default box without colour codes: no colour (a pipe,
    unless ``--color``-like settings or ``FORCE_COLOR`` give one) and an encoding that has the
    box's characters (else Rich falls back to an ASCII box)."""
    encoding = (console.encoding or "").lower()
    return console.color_system is None and encoding.startswith("utf")


def _write_plain_table(
    out: TextIO, titles: Sequence[str], numeric: Sequence[bool], cells: Sequence[Sequence[Any]]
) -> None:
    """The table :func:`_print_table` prints into a pipe, every column as wide as its widest
    value or title, written directly: the same characters as Rich's (its default box, a space
    each side of a value, numbers right-aligned), at a small part of the cost. Rich lays out
    each of a thousand rows' 20 cells through several layers of renderables: ~1.3 s of CPU for
    ``logq sql "SELECT * FROM envoy_access" | less``; plain text needs none of it. Styles are
    dropped, as Rich drops them without a colour system. A terminal still gets Rich's table
    (wrapping, cutting, colours)."""
    from rich import box
    from rich.cells import cell_len

    texts = [[cell.plain for cell in row] for row in cells]
    widths = [
        max([cell_len(title), 1, *(cell_len(row[i]) for row in texts)])
        for i, title in enumerate(titles)
    ]
    frame = box.HEAVY_HEAD
    padded = [width + 2 for width in widths]

    def line(values: Sequence[str], left: str, divider: str, right: str) -> str:
        parts = []
        for value, width, to_right in zip(values, widths, numeric, strict=True):
            room = " " * (width - cell_len(value))
            parts.append(f" {room}{value} " if to_right else f" {value}{room} ")
        return left + divider.join(parts) + right + "\n"

    head = frame.head_left, frame.head_vertical, frame.head_right
    body = frame.mid_left, frame.mid_vertical, frame.mid_right
    pieces = [
        frame.get_top(padded) + "\n",
        line(titles, *head),
        frame.get_row(padded, "head") + "\n",
    ]
    pieces.extend(line(row, *body) for row in texts)
    pieces.append(frame.get_bottom(padded) + "\n")
    write_all(out, "".join(pieces))


#: Share of a cut value's room that its end keeps (the rest is its start, then "…"): routes
#: share their start (``/api/v1/``) and differ at their end (``/feed``, ``/{id}``).
CUT_END_SHARE = 2 / 3


def _cut_paths(
    width: int,
    columns: Sequence[str],
    cells: Sequence[Sequence[Any]],
    fixed: list[int],
    free: Sequence[bool],
    compact: bool = False,
) -> tuple[list[list[Any]], list[int]]:
    """(cells, widths) with each too long path or container name cut in its middle to its
    column's width (the columns that may narrow share what the fixed ones leave, the widest
    narrowed first, as Rich shares them), and those columns' widths fixed at that.

    Rich cuts a value's end: at 80 columns ``logq errors`` showed ``/api/v1/recipe…`` for
    both ``/api/v1/recipes/feed`` and ``/api/v1/recipes/{id}``, rows that read as one route
    with two counts. Kept start and end (``/api…cipes/feed``) tell them apart, and the "…"
    still says the value is not whole."""
    from rich.cells import cell_len

    loose = [i for i, f in enumerate(free) if f]
    room = (
        width
        - frame_width(len(columns), compact)
        - sum(w for i, w in enumerate(fixed) if not free[i])
    )
    natural = [_widest([row[i] for row in cells]) for i in loose]

    def total(level: int) -> int:
        return sum(max(min(w, level), fixed[i]) for w, i in zip(natural, loose, strict=True))

    low, high = 1, max(natural, default=1)  # the widest level that fits: a binary search
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if total(middle) <= room else (low, middle - 1)
    level = low
    widths = list(fixed)
    out = [list(row) for row in cells]
    for i, w in zip(loose, natural, strict=True):
        if columns[i] not in CUT_COLUMNS:
            continue
        widths[i] = max(min(w, level), fixed[i])
        for row in out:
            if cell_len(row[i].plain) > widths[i]:
                row[i] = _cut_middle(row[i], widths[i])
    return out, widths


def _cut_middle(text: Any, width: int) -> Any:
    """``text`` (a Rich ``Text``) as its start, "…" and its end, ``width`` cells in all. The end
    starts at a ``/`` when its last segments fit (``/api/v1/r…/feed``, not ``/api/…ipes/feed``);
    else it is the last characters that fit."""
    from rich.cells import cell_len
    from rich.text import Text

    plain = text.plain
    if width < 2:
        return Text(_fitting(plain, width), style=text.style)
    end_room = round((width - 1) * CUT_END_SHARE)
    segments = [plain[i:] for i in range(1, len(plain)) if plain[i] == "/"]
    end = next((tail for tail in segments if cell_len(tail) <= end_room), "")
    if not end:
        end = _fitting(plain[::-1], end_room)[::-1]
    start = _fitting(plain, width - 1 - cell_len(end))
    return Text(start + "…" + end, style=text.style)


def _fitting(text: str, width: int) -> str:
    """The longest start of ``text`` within ``width`` cells."""
    from rich.cells import cell_len

    out, used = "", 0
    for char in text:
        used += cell_len(char)
        if used > width:
            break
        out += char
    return out


def _print_title(console: Any, title: str | None) -> None:
    """The title above a table or records: its own line, as wide as it is (a table's title
    would wrap at the width of a narrow table)."""
    from rich.text import Text

    if title:
        console.print(Text(visible(title), style="italic"), overflow="fold")


def _print_records(
    console: Any, titles: Sequence[str], cells: Sequence[Sequence[Any]], title: str | None
) -> None:
    """Rows too wide for the terminal, one record per row (like ``psql``'s expanded display):
    ``name  value`` lines, a value that does not fit beside its name on its own line below."""
    from rich.text import Text

    _print_title(console, title)
    names = list(titles)
    label = max(len(n) for n in names)
    for number, row in enumerate(cells, 1):
        rule = f"── {number} of {len(cells)} "
        console.print(Text(rule + "─" * max(0, min(console.width, 40) - len(rule)), style="dim"))
        for name, cell in zip(names, row, strict=True):
            if label + 2 + cell.cell_len <= console.width:
                line = Text()
                line.append(f"{name:<{label}}  ", style="bold")
                line.append_text(cell)
                console.print(line, no_wrap=True, overflow="ellipsis")
            else:  # prose wraps between words; only a longer word is folded
                console.print(Text(name, style="bold"))
                for piece in cell.wrap(console, max(1, console.width - 2), overflow="fold"):
                    piece.rstrip()
                    console.print(Text("  ") + piece, no_wrap=True, overflow="ellipsis")


class Written(NamedTuple):
    """What :func:`emit` wrote."""

    rows: int
    """Rows written (or shown, for the table)."""
    complete: bool
    """False when the table stopped at :data:`TABLE_MAX_ROWS` and rows were left out."""


def emit(
    fmt: OutputFormat,
    columns: Sequence[str],
    rows: Rows,
    out: TextIO | None = None,
    title: str | None = None,
    more: Iterable[Rows] = (),
    as_named: bool = False,
) -> Written:
    """Write the result in ``fmt`` to ``out`` (stdout by default), in pieces (see WRITE_CHUNK).
    ``as_named``: the table's titles are the column names as given (:func:`table_titles`).

    ``more``: batches of rows after ``rows`` (a streamed result), read one at a time and
    written as they come for json, csv and markdown; the table reads them only up to
    :data:`TABLE_MAX_ROWS` rows and shows those (:attr:`Written.complete` False when rows were
    left out). Closing ``more`` is the caller's business.
    """
    out = out or sys.stdout
    if fmt is OutputFormat.table:
        shown, complete = _table_rows(rows, more)
        render_table(columns, shown, out=out, title=title, as_named=as_named)
        flush_all(out)
        return Written(len(shown), complete)
    counted = _Counted([rows], more)
    if fmt is OutputFormat.json:
        pieces = json_pieces(columns, counted, ascii_only=not writes_utf8(out))
    elif fmt is OutputFormat.csv:
        pieces = csv_pieces(columns, counted, on_terminal=_is_terminal(out))
    else:
        pieces = markdown_pieces(columns, counted)
    row_end = csv_row_end if fmt is OutputFormat.csv else line_end
    ended = True  # the output so far ends with a line break
    try:
        for text in pieces:
            if text:
                ended = True  # a Ctrl-C in write_all ends the row it cut
                write_all(out, text, row_end)
                ended = text.endswith("\n")
    except KeyboardInterrupt:  # between pieces: fetching or encoding the next batch
        end_with(out, "" if ended else "\n")
        raise
    if fmt is OutputFormat.json:
        out.write("\n")
    flush_all(out)
    return Written(counted.rows, True)


class _Counted:
    """Batches of rows, counted as they are read."""

    def __init__(self, *parts: Iterable[Rows]) -> None:
        self._parts = parts
        self.rows = 0

    def __iter__(self) -> Iterator[Rows]:
        for part in self._parts:
            for batch in part:
                self.rows += len(batch)
                yield batch


def _table_rows(rows: Rows, more: Iterable[Rows]) -> tuple[list[Sequence[Any]], bool]:
    """The rows the table shows, at most :data:`TABLE_MAX_ROWS` (batches of ``more`` read only
    until then), and whether they are all of them."""
    shown = list(rows[:TABLE_MAX_ROWS])
    complete = len(rows) <= TABLE_MAX_ROWS
    batches = iter(more)
    while complete:  # no batch is fetched once the table is full
        batch = next(batches, None)
        if batch is None:
            break
        room = TABLE_MAX_ROWS - len(shown)
        shown.extend(batch[:room])
        complete = len(batch) <= room
    return shown, complete
