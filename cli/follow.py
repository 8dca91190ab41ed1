"""``logq tail --follow``: poll the warehouse for new container lines and print them once each.

Lines reach the warehouse seconds after they were written (the aggregator flushes on an
interval), and their timestamps are the container's, not the flush time. So each poll re-reads a
window reaching back before the newest line already shown and prints only the rows it has not
printed, instead of asking only for "after the last timestamp", which would miss late arrivals.

Two things keep that exact:

* A row is known by all of its columns, host and container id included (the same line at the
  same millisecond from two hosts is two lines), and counted: a container that writes the same
  line twice in one millisecond printed it twice, so both are shown.
* A poll that gets a full page (``POLL_LIMIT`` rows, newest first) reads on, page by page,
  towards older rows, until it has the whole window. On a quiet service a poll is one query;
  only a burst costs more. If it still cannot read everything (more than ``POLL_LIMIT`` lines in
  one millisecond, or more than ``MAX_PAGES`` pages), it says on stderr which lines it skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from athena.timerange import as_utc
from cli.options import Common

#: How far back each poll looks for lines that arrived late.
LOOKBACK = timedelta(minutes=2)
#: Shortest poll interval on Athena, where every poll is a billed query.
ATHENA_MIN_INTERVAL = 10.0
#: Most lines one query of a poll fetches (one page).
POLL_LIMIT = 10_000
#: Most pages one poll reads before it gives up on the oldest part of its window.
MAX_PAGES = 50
#: The columns printed (those of ``logq tail``); the query adds ``host`` and ``container_id``.
DISPLAY_COLUMNS = ["timestamp", "service", "container_name", "stream", "message"]
_MS = timedelta(milliseconds=1)

Row = tuple[Any, ...]
Printer = Callable[..., None]


def follow_sql() -> str:
    """The ``tail`` query with ``host`` and ``container_id`` added, so each row is identified.

    Derived from ``athena/queries/tail.sql`` (same filters and order), not copied.
    """
    from athena.queries import load

    text = load("tail").text
    head, sep, rest = text.partition("\nFROM container_logs")
    if not sep or not head.rstrip().endswith("message"):
        raise RuntimeError("athena/queries/tail.sql changed shape: its SELECT must end in message")
    return f"{head.rstrip()},\n  host,\n  container_id{sep}{rest}"


def follow_lines(
    common: Common,
    prep: Any,
    first: list[Row],
    interval: float,
    printer: Printer,
    polls: int | None = None,
) -> None:
    """Print ``first`` (oldest first), then new lines every ``interval`` s until Ctrl-C/``polls``.

    ``prep`` runs :func:`follow_sql`; ``first`` are its rows. Lines already in the warehouse
    that ``first`` left out (older than its oldest, beyond ``--limit``) are history, not news:
    the window is read once before polling and those rows count as printed, so the first poll
    does not print minutes of old lines out of order, and a line that arrives late is still new.
    """
    from cli import runner

    result = _Rows(DISPLAY_COLUMNS)
    seen = _Seen()
    printer(common, result, prep, [r[:5] for r in first], stream=True)
    floor = prep.trange.since  # lines before --since were not asked for
    newest = floor
    for row in first:
        seen.add(row)
        newest = max(newest, as_utc(row[0]))
    done = 0
    try:
        if first and len(first) >= int(prep.params["row_limit"]):
            now = datetime.now(UTC)
            since = max(floor, min(newest - LOOKBACK, now - LOOKBACK))
            rows, gap = read_window(common, prep, since, newest + _MS)
            seen.new_rows(rows)
            if gap is not None:
                floor = max(floor, gap + _MS)
        while polls is None or done < polls:
            time.sleep(interval)
            done += 1
            now = datetime.now(UTC)
            since = max(floor, min(newest - LOOKBACK, now - LOOKBACK))
            rows, gap = read_window(common, prep, since, now + timedelta(seconds=1))
            seen.forget_before(since)
            fresh = sorted(seen.new_rows(rows), key=lambda r: as_utc(r[0]))
            for row in fresh:
                newest = max(newest, as_utc(row[0]))
            if fresh:
                printer(common, result, prep, [r[:5] for r in fresh], stream=True)
            if gap is not None:
                from athena.timerange import iso_utc

                runner.note(
                    f"logq: note: too many lines to follow: lines from {iso_utc(since)} to "
                    f"{iso_utc(gap)} that were not printed yet are skipped (narrow --service, "
                    "--stream or --grep)"
                )
                floor = max(floor, gap + _MS)  # said once, not again every poll
    except KeyboardInterrupt as exc:
        from athena.engines.result import Terminated

        if isinstance(exc, Terminated):  # SIGTERM/SIGHUP: not the user's "stop following"
            raise
        return


def read_window(
    common: Common, prep: Any, since: datetime, until: datetime
) -> tuple[list[Row], datetime | None]:
    """Every row in ``[since, until)``, newest page first, and where reading stopped short.

    The second value is None when the window was read in full; else rows before it (and at it,
    partly) were not read.
    """
    from athena.timerange import TimeRange
    from cli import runner

    rows: list[Row] = []
    upper = until
    for _ in range(MAX_PAGES):
        prep.trange = TimeRange(since, upper)
        prep.params.update(prep.trange.sql_params())
        prep.params["row_limit"] = POLL_LIMIT
        fetched = runner.execute(common, prep)
        page = list(fetched.rows) if fetched else []
        if len(page) < POLL_LIMIT:
            rows.extend(page)
            return rows, None
        # A full page may stop in the middle of its oldest millisecond: keep what is newer and
        # read that millisecond again with the next page (whose end is exclusive).
        oldest = min(as_utc(r[0]) for r in page)
        newer = [r for r in page if as_utc(r[0]) > oldest]
        if not newer:  # more than POLL_LIMIT lines in one millisecond: cannot page past it
            rows.extend(page)
            return rows, oldest
        rows.extend(newer)
        upper = oldest + _MS
    return rows, upper - _MS


class _Seen:
    """How many times each row (all columns) was printed, for rows still inside the window."""

    def __init__(self) -> None:
        self.counts: dict[Row, int] = {}

    def add(self, row: Row) -> None:
        self.counts[row] = self.counts.get(row, 0) + 1

    def new_rows(self, rows: list[Row]) -> list[Row]:
        """The rows of a fresh read of the window beyond those printed; they count as printed."""
        found: dict[Row, int] = {}
        fresh: list[Row] = []
        for row in rows:
            found[row] = found.get(row, 0) + 1
            if found[row] > self.counts.get(row, 0):
                fresh.append(row)
        for row in fresh:
            self.add(row)
        return fresh

    def forget_before(self, since: datetime) -> None:
        """Drop rows older than the window: later polls never read them again."""
        for key in [k for k in self.counts if as_utc(k[0]) < since]:
            del self.counts[key]


class _Rows:
    """The bit of a result the printer needs when following (column names)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.rows: list[Row] = []
        self.engine = "local"
        self.header_done = False
