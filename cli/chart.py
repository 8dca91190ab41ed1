"""The terminal chart of ``logq timeline``: one bar per interval, errors in red inside it.

A bar chart per row reads well in any terminal width and in scrollback, which matters more in an
incident than a pretty plot: the spike is the long red bar, with its time and counts beside it.
Colour is not the only cue: each class has its own glyph (█ ok, ▒ 4xx, X 5xx, 0 for response
code 0, the client gone before Envoy answered: no success, and not an upstream error), so the chart
reads the same with ``NO_COLOR``, in a pipe, a ticket or on a monochrome screen. Times are UTC,
as everywhere in logq, and the column header says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

BLOCKS = " ▏▎▍▌▋▊▉█"
#: Glyphs of the classes: requests that did not fail, 4xx, 5xx, code 0 (whole cells each).
OK_GLYPH, E4_GLYPH, E5_GLYPH, GONE_GLYPH = "█", "▒", "X", "0"
LEGEND = f"{OK_GLYPH} ok  {E4_GLYPH} 4xx  {E5_GLYPH} 5xx  {GONE_GLYPH} code 0"


def fill_intervals(
    rows: Sequence[Sequence[Any]], since: datetime, until: datetime, step: int
) -> list[tuple[Any, ...]]:
    """Every ``step``-second interval of ``[since, until)`` in order, zeros where ``rows`` has none.

    ``rows`` are ``(interval start, count, count, ...)`` as the timeline query returns them
    (aware from DuckDB, naive UTC from Athena). Intervals stay on ``step`` boundaries (as in
    Grafana), but the query counts only rows from ``since`` on: a ``since`` inside an interval
    labels that first one, so its row says where its counts begin (``--since 08:30 --every 1h``
    is one row, 08:30, not an 08:00 that would claim the half hour before). No rows at all
    stays no rows, so an empty range still gets its "why" note instead of a chart of zeros.
    """
    if not rows:
        return []

    def key(ts: datetime) -> int:
        aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        return int(aware.timestamp()) // step * step

    width = len(rows[0]) - 1
    got = {key(r[0]): tuple(int(v or 0) for v in r[1:]) for r in rows}
    out: list[tuple[Any, ...]] = []
    t = key(since)
    while t < until.timestamp():
        start = max(datetime.fromtimestamp(t, UTC), since.astimezone(UTC))
        out.append((start, *got.get(t, (0,) * width)))
        t += step
    return out


def partial_notes(rows: Sequence[Sequence[Any]], until: datetime, step: int) -> list[str]:
    """What says the first or last of ``rows`` (:func:`fill_intervals`'s) is an interval cut
    short by the range: a shorter bar or a smaller count there is the range, not the traffic.

    The first is partial when it starts off a ``step`` boundary (the range began inside it),
    the last when it would end after ``until`` (the range ends inside it, e.g. now). Times
    print as :func:`note_time` does, so a note never says "starts at 10:00:00, inside the
    interval from 10:00:00" for a range starting at 10:00:00.500.
    """
    if not rows or not step:
        return []
    notes = []
    first = _aware(rows[0][0])
    end = until.astimezone(UTC)
    dated = step >= 86400 or first.date() != (end - timedelta(microseconds=1)).date()
    if int(first.timestamp() * 1000) % (step * 1000):
        notes.append(
            f"the first interval is partial: the range starts at {note_time(first, dated)}, "
            f"inside the interval from {note_time(_boundary(first, step), dated)}"
        )
    last = _aware(rows[-1][0])
    if _boundary(last, step).timestamp() + step > until.timestamp():
        notes.append(f"the last interval is partial: the range ends at {note_time(end, dated)}")
    return notes


def note_time(ts: datetime, dated: bool) -> str:
    """``10:00:00 UTC``, ``10:00:00.500 UTC`` (milliseconds only when not zero, as the range
    may start there), or with ``dated`` (a day's step, a range over days) ISO-8601:
    ``2026-11-30T00:00:00Z``, where a time alone would not say which day."""
    ts = ts.astimezone(UTC)
    ms = ts.microsecond // 1000
    clock = f"{ts:%H:%M:%S}" + (f".{ms:03d}" if ms else "")
    return f"{ts:%Y-%m-%d}T{clock}Z" if dated else f"{clock} UTC"


def _aware(ts: datetime) -> datetime:
    """``ts`` in UTC (Athena's timestamps are naive UTC)."""
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _boundary(ts: datetime, step: int) -> datetime:
    """The start of the ``step``-second interval holding ``ts``."""
    return datetime.fromtimestamp(int(ts.timestamp()) // step * step, UTC)


def bar(value: float, scale: float, width: int) -> str:
    """A bar of ``value`` where ``scale`` fills ``width`` cells, with eighth-cell precision."""
    if scale <= 0 or value <= 0:
        return ""
    eighths = round(value / scale * width * 8)
    full, rest = divmod(max(eighths, 1), 8)
    return "█" * full + (BLOCKS[rest] if rest else "")


def cells(value: float, scale: float, width: int, glyph: str) -> str:
    """A run of ``glyph`` for ``value`` where ``scale`` fills ``width`` cells: whole cells (a
    shade has no eighths), at least one for any non-zero count so a single error shows."""
    if scale <= 0 or value <= 0:
        return ""
    return glyph * max(1, round(value / scale * width))


def render_timeline(
    rows: Sequence[tuple[Any, ...]],
    every_label: str,
    out: TextIO | None = None,
    width: int | None = None,
    until: datetime | None = None,
    step: int = 0,
) -> None:
    """Print ``(bucket, requests, errors_4xx, errors_5xx[, no_response])`` rows as a bar chart.

    ``no_response`` (code 0: the downstream went away first, Envoy's way of logging a client
    that gave up, often on a slow upstream) is neither ok nor an HTTP error: it gets its own
    cells, so a wave of clients timing out does not draw as healthy traffic.

    ``every_label``: the --every text, in the header; its interval (``step`` when given) sets
    the labels' precision (:func:`label_format`). With ``until`` and ``step``: a first
    interval the range starts inside, and a last one that ends after ``until`` (the range
    ends inside it, e.g. now), are marked (:func:`partial_notes`), so that a shorter bar does
    not read as a drop.

    Into a file or a pipe (no ``width``), as :func:`cli.output.render_table` does, the header
    and the notes are never wrapped: Rich's default 80 columns there broke the header between
    "one cell =" and its number, and a note mid-sentence, for ``grep`` or a ticket to read."""
    from rich.text import Text

    from athena.timerange import parse_interval
    from cli.output import console as make_console

    out = out or sys.stdout
    console = make_console(out, width=width)
    whole = width is None and not (hasattr(out, "isatty") and out.isatty())
    day_changes = len({r[0].date() for r in rows}) > 1
    interval = step or int(parse_interval(every_label).total_seconds())
    labels = [r[0].strftime(label_format(interval, day_changes)) for r in rows]
    wide = max([11, *(len(label) for label in labels)])  # 11: "time UTC" and "MM-DD HH:MM"
    bar_width = max(10, min(60, console.width - 33 - wide))  # 33: the counts, a margin
    peak = max((r[1] for r in rows), default=0)
    total = sum(r[1] for r in rows)
    errors = sum(r[3] for r in rows)
    gone = sum(_no_response(r) for r in rows)
    gone_text = f", {gone:,} code 0 (client went away)" if gone else ""
    console.print(
        Text(
            f"requests per {every_label}: {total:,} total, {errors:,} 5xx{gone_text}; "
            f"one cell = {peak / bar_width:,.1f} requests",
            style="bold",
        ),
        soft_wrap=whole,
    )
    columns = Text(f"{'time UTC':>{wide}} {'requests':>8} {'5xx':>6} {LEGEND}", style="dim")
    console.print(columns)
    for row, label in zip(rows, labels, strict=True):
        requests, e4, e5 = row[1:4]
        gone = _no_response(row)
        ok = requests - e4 - e5 - gone
        line = Text(f"{label:>{wide}} {requests:>8,} {e5:>6,} ")
        line.append(bar(ok, peak, bar_width), style="green")
        line.append(cells(e4, peak, bar_width, E4_GLYPH), style="yellow")
        line.append(cells(e5, peak, bar_width, E5_GLYPH), style="bold red")
        line.append(cells(gone, peak, bar_width, GONE_GLYPH), style="magenta")
        console.print(line, overflow="crop", no_wrap=True)
    console.print(columns)  # again below: the end of a long chart is where one reads it
    if until is not None:
        for text in partial_notes(rows, until, step):
            console.print(Text(text, style="dim"), soft_wrap=whole)


def label_format(step: int, dated: bool) -> str:
    """The strftime format of every time label of a chart of ``step``-second intervals: the
    precision of --every, the same on every row. Seconds when ``step`` is not whole minutes
    (``--every 1s``, ``90s``): seconds shown only where not 0 made whole minutes read ``10:39``
    among ``10:38:59`` and ``10:39:01``. Else hours and minutes, for an hour's or a day's step
    too (a clock time reads so); with ``dated`` (the chart spans days) the month and day first.
    A first interval the range starts inside is labelled at the same precision: the partial
    note under the chart gives its exact start (``--since 1h`` starts at some second)."""
    clock = "%H:%M" if step % 60 == 0 else "%H:%M:%S"
    return f"%m-%d {clock}" if dated else clock


def _no_response(row: Sequence[Any]) -> int:
    """The code-0 count of a timeline row (0 for a row of the four counted columns only)."""
    return int(row[4] or 0) if len(row) > 4 else 0
