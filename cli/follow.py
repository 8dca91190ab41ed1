"""``logq tail --follow``: poll the warehouse for new container lines and print them once each.

Lines reach the warehouse seconds to minutes after they were written: each aggregator flushes
on its own ``--flush-interval`` (docs/operations.md suggests up to 300 s), one that restarts
replays its buffer later still, and a line's timestamp is the container's, not the flush time.
So "rows newer than the last one printed", or any fixed look-back in time, misses late lines.

On the local engine, follow therefore tracks *objects*, not times. Each poll lists the partition
hours it watches (those of the last :data:`TRACK`, from ``--since`` on) and reads only the
objects that were not there before: an object is news whatever the timestamps of its rows, so a
line is printed once however late it arrives within the watched hours (the limits are below),
and an idle poll is a listing, not a query. The objects the first answer read (those it read
in the end, after any listing again) are history. Two kinds of new objects are not news:

* a compaction output (:func:`athena.schema.is_compacted_object`) in an hour listed before:
  its rows were in the flush files it merged, printed when those arrived (compaction merges
  no file younger than :data:`athena.intents.GRACE_FLOOR`, and follow lists more often);
* an object rewritten under the same name (a replayed flush writes the same key): not new.

A new object is read alone, never its whole hour: one that vanishes before it is read
(compaction merged it) is dropped from the read. A pause (``| less``, a laptop asleep) is
caught up: the next poll lists from :data:`TRACK` before the previous listing. If it was
longer than the grace floor and an hour watched was compacted meanwhile, lines flushed into
that hour during the pause may be in the merged object only; a note says so and gives the
command that shows that hour (which of the object's rows were printed is not known).

Limits: a line whose hour is older than :data:`TRACK` when it arrives is not printed (the
listing would grow with the length of the follow); a line stamped in a later hour than the
CLI's clock is printed when that hour comes; ``compact --force`` with a grace below the
floor can merge a flush before follow lists it. Memory: the names of the objects of the
watched hours.

Athena has no listing to follow (its answer does not name the object a row came from), so there
each poll re-reads the last :data:`ATHENA_LOOKBACK` before the newest line printed and prints
the rows it has not printed yet (all columns, counted: the same line twice in one millisecond is
two lines). A line that reaches the warehouse later than that is not printed there; the start
note says so.

Between polls follow waits for the reader of stdout as well as for the clock: ``logq tail -F
| head -1`` on a quiet service printed nothing more, so no write ever failed, and it ran until
a line arrived. When stdout is a pipe, the wait (:func:`pause`) ends as soon as its reader has
gone away, and logq exits 0 as after any write into a closed pipe (:mod:`cli.errors`).

Either way a poll that gets a full page (``POLL_LIMIT`` rows, newest first) reads on, page by
page, towards older rows. If it still cannot read everything (more than ``POLL_LIMIT`` lines in
one millisecond, or more than ``MAX_PAGES`` pages), it says on stderr which lines it skipped.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from athena.intents import GRACE_FLOOR
from athena.timerange import DT_FORMAT, TimeRange, as_utc
from cli.options import Common, EngineName

if TYPE_CHECKING:
    from athena.partitions import Partition

#: Local engine: how far back from now follow watches partition hours for new objects. A line
#: is printed if it reaches the warehouse while its hour is watched: up to an hour late (twelve
#: times the longest flush interval operations.md suggests), two hours for a line early in its hour.
TRACK = timedelta(hours=1)
#: Athena: how far back each poll looks for lines that arrived late.
ATHENA_LOOKBACK = timedelta(minutes=2)
#: Shortest poll interval on Athena, where every poll is a billed query.
ATHENA_MIN_INTERVAL = 10.0
#: Most lines one query of a poll fetches (one page).
POLL_LIMIT = 10_000
#: Most pages one poll reads before it gives up on the oldest part of its window.
MAX_PAGES = 50
#: The columns printed (those of ``logq tail``); the query adds ``host`` and ``container_id``.
DISPLAY_COLUMNS = ["timestamp", "service", "container_name", "stream", "message"]
_MS = timedelta(milliseconds=1)
_HOUR = timedelta(hours=1)

Row = tuple[Any, ...]
Printer = Callable[..., None]
#: Runs the follow query over ``[since, until)`` with ``row_limit`` set; returns its rows.
Fetch = Callable[[datetime, datetime], list[Row]]


def follow_sql() -> str:
    """The ``tail`` query with ``host`` and ``container_id`` added, so each row is identified.

    Derived from ``athena/queries/tail.sql`` (same filters and order), not copied; counted as
    a canned query (:func:`athena.queries.canned_variant`): its ``"$path"`` ordering reads a
    millisecond's lines in the order they were written on the local engine too.
    """
    from athena.queries import canned_variant, load

    text = load("tail").text
    head, sep, rest = text.partition("\nFROM container_logs")
    if not sep or not head.rstrip().endswith("message"):
        raise RuntimeError("athena/queries/tail.sql changed shape: its SELECT must end in message")
    return canned_variant(f"{head.rstrip()},\n  host,\n  container_id{sep}{rest}")


def start_note(engine: EngineName) -> str | None:
    """What following cannot do on ``engine`` (said once, at the start), or None."""
    if engine is EngineName.local:
        return None
    minutes = ATHENA_LOOKBACK.total_seconds() / 60
    return (
        f"logq: note: every --follow poll is an Athena query (billed, 10 MB minimum), every "
        f"{ATHENA_MIN_INTERVAL:.0f} s at least; a line that reaches the warehouse more than "
        f"{minutes:.0f} min after its timestamp is not printed (--engine local follows the "
        "warehouse's objects and prints it)"
    )


def follow_lines(
    common: Common,
    prep: Any,
    first: list[Row],
    interval: float,
    printer: Printer,
    polls: int | None = None,
) -> None:
    """Print ``first`` (oldest first), then new lines every ``interval`` s until Ctrl-C/``polls``.

    ``prep`` ran :func:`follow_sql`; ``first`` are its rows. Lines already in the warehouse
    that ``first`` left out (older than its oldest, beyond ``--limit``) are history, not news.
    """
    result = _Rows(DISPLAY_COLUMNS)
    listed = _now()  # about when the first answer listed: printing it may block (``| less``)
    printer(common, result, prep, [r[:5] for r in first], stream=True)

    def show(rows: list[Row]) -> None:
        printer(common, result, prep, [r[:5] for r in rows], stream=True)

    try:
        if common.engine is EngineName.local:
            _follow_objects(common, prep, interval, show, polls, listed)
        else:
            _follow_window(common, prep, first, interval, show, polls)
    except KeyboardInterrupt as exc:
        from athena.engines.result import EngineStuck, Terminated

        if isinstance(exc, Terminated):  # SIGTERM/SIGHUP: not the user's "stop following"
            raise
        if isinstance(exc, EngineStuck):  # stopped following, but DuckDB's poll went on
            sys.stderr.write(f"logq: {exc}\n")
        return


def _follow_objects(
    common: Common,
    prep: Any,
    interval: float,
    show: Callable[[list[Row]], None],
    polls: int | None,
    listed: datetime,
) -> None:
    """The local engine's follow: print the rows of the objects that appear (module docstring).

    ``listed``: when the first answer's files were listed (at most)."""
    from cli import runner

    engine = runner.make_engine(common)
    floor = prep.trange.since  # lines before --since were not asked for
    objects = _Objects()
    objects.known(prep.scopes.get(prep.table, []))  # what the first answer read: history
    done = 0
    while polls is None or done < polls:
        pause(interval)
        done += 1
        now = _now()
        # From TRACK before the last listing: a pause (``| less``, a laptop asleep) longer
        # than TRACK does not leave the hours it spanned unlisted.
        watched = TimeRange(max(floor, min(now, listed) - TRACK), now + timedelta(seconds=1))
        parts = engine.plan(prep.table, prep.services, watched)
        fresh, merged = objects.new(parts)
        if now - listed > GRACE_FLOOR and merged:
            _note_merged_while_paused(common, now - listed, merged)
        listed = now
        if fresh:
            # Every row of a new object is news, however old (but not before --since), up to
            # the end of the newest hour listed (rows stamped ahead of this clock included).
            end = datetime.strptime(watched.dt_to, DT_FORMAT).replace(tzinfo=UTC)
            rows, gap = read_window(_local_fetch(engine, prep, fresh), floor, end + _HOUR)
            if rows:
                show(oldest_first(rows))
            if gap is not None:
                _note_gap(floor, gap)
        objects.forget_before(TimeRange(max(floor, now - TRACK), now).dt_from)


def pause(interval: float) -> None:
    """Wait ``interval`` seconds before the next poll; BrokenPipeError (exit 0, as any write
    into a closed pipe: :func:`cli.errors.friendly`) as soon as stdout's reader goes away.

    Only a pipe or FIFO is watched: Linux reports ``POLLERR`` on a pipe's write end once no
    reader is left (requested or not), without a write. A terminal or a file has no reader
    to lose, and where ``poll`` is missing (Windows) or reports nothing, the wait is a sleep
    and a closed pipe is found by the next write, as before. Only ``POLLERR`` ends it: the
    ``POLLHUP`` of a read end given as stdout, or a ``POLLNVAL``, is no reader gone, and the
    rest of the interval is slept (not polled again at once, in a loop)."""
    fd = _pipe_out()
    if fd is None:
        time.sleep(interval)
        return
    watch = select.poll()
    watch.register(fd, 0)  # no events asked for: POLLERR, POLLHUP and POLLNVAL still come
    start = time.monotonic()
    events = watch.poll(interval * 1000)
    if any(mask & select.POLLERR for _, mask in events):
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")
    if events:
        time.sleep(max(0.0, interval - (time.monotonic() - start)))


def _pipe_out() -> int | None:
    """stdout's file descriptor when it is a pipe or FIFO that :func:`pause` can watch."""
    if not hasattr(select, "poll"):
        return None
    try:
        fd = sys.stdout.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return None


def _now() -> datetime:
    """The wall clock (not a monotonic one: a laptop's sleep counts, as it does for the
    compaction grace, which compares the store's file times)."""
    return datetime.now(UTC)


def _note_merged_while_paused(common: Common, paused: timedelta, merged: list[str]) -> None:
    """Say that lines may have been missed: compaction merged hours follow watches while it
    was paused longer than :data:`athena.intents.GRACE_FLOOR`.

    A flush that landed in such an hour during the pause may be in the merged object only,
    which follow skips (its other rows were printed). Which of its rows are new is not known:
    the object does not say which flushes it merged once its intent is gone. The command it
    gives repeats the ``--service`` values while they are short, else a placeholder stands for
    them (a command with some of them would read only those).
    """
    from athena.timerange import iso_utc
    from cli import runner
    from cli.service_names import NAMES_ROOM

    first = datetime.strptime(min(merged), DT_FORMAT).replace(tzinfo=UTC)
    last = datetime.strptime(max(merged), DT_FORMAT).replace(tzinfo=UTC) + _HOUR
    services = "".join(f" --service {s}" for s in common.service or [])
    if len(services) > NAMES_ROOM:  # 2,000 names made the note tens of KB
        services = " --service <the --service values given>"
    hours = sorted(set(merged))
    which = f"hour {hours[0]} was" if len(hours) == 1 else f"hours {', '.join(hours)} were"
    runner.note(
        f"logq: note: follow was paused for {paused.total_seconds() / 60:.0f} min, longer than "
        f"the {GRACE_FLOOR.total_seconds() / 60:.0f} min after which compaction may merge a "
        f"flush, and the {which} compacted meanwhile: lines flushed into it during the "
        "pause may not have been printed; to see them all: logq "
        f"tail{services} --since {iso_utc(first)} --until {iso_utc(last)}"
    )


def _local_fetch(engine: Any, prep: Any, parts: list[Partition]) -> Fetch:
    """Run the follow query on the local engine over ``parts`` only (the new objects).

    ``exact``: an object that vanishes before it is read (compaction merged it) is dropped
    from the read, never replaced by a listing of its whole hour (which printed every line of
    the hour again). Its rows are in the merged object, already printed: either that object
    was (the inputs of a merge finished between listing and read, hidden until then), or the
    object was older than :data:`GRACE_FLOOR` and so read by an earlier poll, unless a pause
    that long came between (:func:`_note_merged_while_paused` then speaks).
    """

    def fetch(since: datetime, until: datetime) -> list[Row]:
        trange = TimeRange(since, until)
        params = {**prep.params, **trange.sql_params(), "row_limit": POLL_LIMIT}
        return list(engine.run(prep.sql, params, {prep.table: parts}, exact=True).rows)

    return fetch


def _follow_window(
    common: Common,
    prep: Any,
    first: list[Row],
    interval: float,
    show: Callable[[list[Row]], None],
    polls: int | None,
) -> None:
    """Athena's follow: re-read a window of :data:`ATHENA_LOOKBACK` and print what is new.

    The window is read once before polling when ``first`` was cut by ``--limit``, and those
    rows count as printed, so the first poll does not print minutes of old lines out of order.
    """
    seen = _Seen()
    floor = prep.trange.since  # lines before --since were not asked for
    newest = floor
    for row in first:
        seen.add(row)
        newest = max(newest, as_utc(row[0]))
    fetch = _query_fetch(common, prep)
    if first and len(first) >= int(prep.params["row_limit"]):
        now = datetime.now(UTC)
        since = max(floor, min(newest - ATHENA_LOOKBACK, now - ATHENA_LOOKBACK))
        rows, gap = read_window(fetch, since, newest + _MS)
        seen.new_rows(rows)
        if gap is not None:
            floor = max(floor, gap + _MS)
    done = 0
    while polls is None or done < polls:
        pause(interval)
        done += 1
        now = datetime.now(UTC)
        since = max(floor, min(newest - ATHENA_LOOKBACK, now - ATHENA_LOOKBACK))
        rows, gap = read_window(fetch, since, now + timedelta(seconds=1))
        seen.forget_before(since)
        fresh = oldest_first(seen.new_rows(rows))
        for row in fresh:
            newest = max(newest, as_utc(row[0]))
        if fresh:
            show(fresh)
        if gap is not None:
            _note_gap(since, gap)
            floor = max(floor, gap + _MS)  # said once, not again every poll


def oldest_first(rows: list[Row]) -> list[Row]:
    """Rows the follow query returned newest first, oldest first: reversed, so that the lines
    of one millisecond keep the order the query gave them (their written order, ``tail.sql``),
    then sorted by time, stably (pages of a window come newest page first, each in order).
    Sorted without the reversal, a stack trace printed upside down."""
    return sorted(reversed(rows), key=lambda r: as_utc(r[0]))


def _query_fetch(common: Common, prep: Any) -> Fetch:
    """Run the follow query through :func:`cli.runner.execute` (Athena: one query a page)."""
    from cli import runner

    def fetch(since: datetime, until: datetime) -> list[Row]:
        prep.trange = TimeRange(since, until)
        prep.params.update(prep.trange.sql_params())
        prep.params["row_limit"] = POLL_LIMIT
        fetched = runner.execute(common, prep)
        return list(fetched.rows) if fetched else []

    return fetch


def _note_gap(since: datetime, gap: datetime) -> None:
    """Say which lines a poll could not read (too many to page through)."""
    from athena.timerange import iso_utc
    from cli import runner

    runner.note(
        f"logq: note: too many lines to follow: lines from {iso_utc(since)} to "
        f"{iso_utc(gap)} that were not printed yet are skipped (narrow --service, "
        "--stream or --grep)"
    )


def read_window(
    fetch: Fetch, since: datetime, until: datetime
) -> tuple[list[Row], datetime | None]:
    """Every row ``fetch`` finds in ``[since, until)``, newest page first, and where reading
    stopped short.

    The second value is None when the window was read in full; else rows before it (and at it,
    partly) were not read.
    """
    rows: list[Row] = []
    upper = until
    for _ in range(MAX_PAGES):
        page = fetch(since, upper)
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


class _Objects:
    """The objects of the watched partition hours that follow has read or counts as history."""

    def __init__(self) -> None:
        self.by_partition: dict[tuple[str, str], set[str]] = {}

    def known(self, parts: list[Partition]) -> None:
        """Count every object of ``parts`` as already read."""
        for part in parts:
            self.by_partition.setdefault((part.service, part.dt), set()).update(
                f.path for f in part.files
            )

    def new(self, parts: list[Partition]) -> tuple[list[Partition], list[str]]:
        """``parts`` reduced to the objects not seen before (now counted as seen), partitions
        with none dropped; and the hours (``dt``) where a compaction output is among them.

        A compaction output is left out where follow listed its hour before: its rows were
        in the flush objects it merged, read when they appeared. In an hour never listed (one
        that a long pause skipped past) nothing was read, so it is news like any object."""
        from athena.partitions import Partition
        from athena.schema import is_compacted_object

        out = []
        merged = []
        for part in parts:
            key = (part.service, part.dt)
            listed = key in self.by_partition
            seen = self.by_partition.setdefault(key, set())
            fresh = tuple(f for f in part.files if f.path not in seen)
            seen.update(f.path for f in fresh)
            outputs = {f.path for f in fresh if is_compacted_object(f.path.rsplit("/", 1)[-1])}
            if outputs and listed:
                merged.append(part.dt)
            news = tuple(f for f in fresh if not (listed and f.path in outputs))
            if news:
                out.append(Partition(part.table, part.service, part.dt, news))
        return out, merged

    def forget_before(self, dt: str) -> None:
        """Drop the partition hours before ``dt``: they are no longer listed."""
        for key in [k for k in self.by_partition if k[1] < dt]:
            del self.by_partition[key]


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
        #: The Markdown table's layout (``cli.output.MarkdownLayout``), set by the first rows.
        self.markdown: Any = None

    def close(self, interrupted: bool = False) -> None:
        """Nothing to stop: the rows are all here."""
