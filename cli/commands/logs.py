"""``logq tail``: recent container output lines, optionally followed as they arrive."""

import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from cli.errors import friendly
from cli.options import REQUEST_FILTERS, Common, query_command

#: Seconds between ``--follow`` polls when ``--interval`` is not given.
DEFAULT_INTERVAL = 2.0


class Stream(StrEnum):
    """Values of ``tail --stream``."""

    stdout = "stdout"
    stderr = "stderr"


@query_command(without=REQUEST_FILTERS, since="15m", limit=100)
def tail(
    common: Common,
    grep: Annotated[
        str | None, typer.Option(help="Only lines matching this regular expression.")
    ] = None,
    stream: Annotated[Stream | None, typer.Option(help="Only stdout or stderr.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Keep printing new lines as they arrive (Ctrl-C stops); with -f json one "
            "JSON object per line (JSON Lines), not an array.",
        ),
    ] = False,
    interval: Annotated[
        float | None,
        # A maximum too: inf (or 1e999) passed the minimum and time.sleep() failed on it.
        # No default here: given without --follow it is refused, not silently ignored.
        typer.Option(
            min=0.2,
            max=3600.0,
            show_default=False,
            help=f"Seconds between polls with --follow (default {DEFAULT_INTERVAL:g}).",
        ),
    ] = None,
) -> None:
    """Recent container output lines (app stdout/stderr, Envoy's own lines), oldest first.

    Each line prints as TIME SERVICE CONTAINER| MESSAGE; a line the container wrote to stderr
    has !| instead of | (e.g. "recipe app!| panic: ..."), so errors stand out and grep '!|'
    finds them. json/csv carry the stream in a column instead. Times are stored to the
    millisecond: lines of the same millisecond (a stack trace) print in the order one
    aggregator wrote them with --engine local; Athena keeps those of one flush together, in
    any order among themselves.
    """
    from cli import runner

    with friendly():
        if interval is not None and not follow:
            raise ValueError(
                "--interval only applies with --follow (-F), the seconds between its polls; "
                "add --follow, or leave --interval out"
            )
        if follow and common.until:
            raise ValueError(
                "--until does not go with --follow, which prints lines up to now as they "
                "arrive; leave out --until, or -F to read a closed range"
            )
        if grep is not None:
            _check_regex(grep, common)
        extra = {"grep": grep or "", "stream": stream.value if stream else ""}
        prep = runner.prepare(common, "tail", "container_logs", extra)
        if follow:
            from cli.follow import follow_sql

            prep.sql = follow_sql()  # with host and container_id: --follow tells rows apart
        limit = int(prep.params["row_limit"])
        if not common.dry_run:  # --dry-run shows the SQL asked for, to copy as it is
            prep.params["row_limit"] = limit + 1  # one line more than shown tells a cut apart
        result = runner.execute(common, prep)
        prep.params["row_limit"] = limit
        if result is None:
            return
        cut = len(result.rows) > limit
        rows = list(reversed(result.rows[:limit]))  # the newest `limit`, oldest first
        if not follow:
            _print_log_lines(common, result, prep, rows)
        if cut:
            _note_cut(rows, prep)
        if not follow:
            return
        from cli.follow import ATHENA_MIN_INTERVAL, follow_lines, start_note
        from cli.notes import note
        from cli.options import EngineName

        limits = start_note(common.engine)
        if limits is not None:
            note(limits)
        every = DEFAULT_INTERVAL if interval is None else interval
        if common.engine is EngineName.athena:
            every = max(every, ATHENA_MIN_INTERVAL)
        follow_lines(common, prep, rows, every, _print_log_lines)


def _note_cut(rows: list[tuple[Any, ...]], prep: Any) -> None:
    """Say on stderr that ``--limit`` left out older lines of the range, and where the output
    starts: lines from 08:06 on, when --since said 06:00, must not read as "quiet until 08:06".

    The query fetched one line more than ``--limit`` to know, so how many were left out stays
    unknown: ``count(*) OVER ()``, as the grouped queries count, would make the engine hold
    every matching line, messages included, instead of the newest ``--limit`` (in DuckDB 1 GB
    more and 75 times slower over 3 million 300-byte lines)."""
    from athena.timerange import iso_utc
    from cli.notes import note

    limit = int(prep.params["row_limit"])
    start = iso_utc(rows[0][0]) if rows else "?"
    newest = "line" if limit == 1 else f"{limit:,} lines"
    note(
        f"logq: showing the newest {newest}, from {start}; older lines from "
        f"{iso_utc(prep.trange.since)} on match too (raise --limit, or narrow --since)"
    )


def _check_regex(pattern: str, common: Common) -> None:
    """Refuse a ``--grep`` the engine would refuse, in one line, before any query runs.

    The engines do not speak Python's ``re``: DuckDB uses RE2 (``\\p{L}`` works, look-arounds
    and back-references do not), Athena uses Java-style regular expressions. So the local engine
    asks DuckDB itself (an in-memory call on an empty string, a few ms); for Athena only what no
    engine takes is refused here, and Athena's own error says the rest.
    """
    from cli.notes import refuse_empty, refuse_not_utf8, shown
    from cli.options import EngineName

    refuse_empty("--grep", pattern, "give a regular expression", "take every line")
    refuse_not_utf8("--grep", pattern)
    if "\x00" in pattern:
        raise ValueError(f"--grep {shown(pattern)} contains a NUL character")
    if common.engine is not EngineName.local:
        return
    from athena.engines.local import duckdb_interrupts, load_duckdb

    duckdb = load_duckdb()

    try:
        with duckdb_interrupts(), duckdb.connect(":memory:") as con:
            con.execute("SELECT regexp_matches('', $p)", {"p": pattern}).fetchall()
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0].removeprefix("Invalid Input Error: ")
        raise ValueError(
            f"--grep {shown(pattern)} is not a regular expression the local engine (RE2) "
            f"accepts: {reason}"
        ) from None


def _print_log_lines(common: Common, result, prep, rows: list, stream: bool = False) -> None:
    """Log lines as text for people (like `tail`), rows for json/csv/markdown.

    The text, and the rows of a ``--follow`` in csv or json, go out through
    :func:`cli.output.write_all` and :func:`cli.whole_rows.flush_all`, as every other output
    does: a Ctrl-C (the way to stop ``--follow``) ends them with a whole line or row, never
    half of one (a CSV field's closing quote missing, and a reader took the rest of the file
    into it), and into a pager that does not read (``| less``) it ends logq within a second."""
    from cli import runner
    from cli.output import OutputFormat, write_all
    from cli.whole_rows import csv_row_end, flush_all

    if common.fmt is OutputFormat.table:
        if not rows and not stream:
            runner.show(common, result, prep, rows=rows)
            return
        from athena.timerange import iso_utc
        from cli.output import visible

        lines = []
        for ts, service, container, out_stream, message in rows:
            marker = "!" if out_stream == "stderr" else " "
            # Records of other Forward clients may carry no container name (nor stream).
            name = visible(container or "-")
            # Escaped: a logged "\r\x1b[2K" or "\x1b]0;...\x07" must not rewrite the terminal.
            text = visible("" if message is None else str(message))
            lines.append(f"{iso_utc(ts)} {visible(str(service))} {name}{marker}| {text}\n")
        write_all(sys.stdout, "".join(lines))
        flush_all(sys.stdout)
        return
    if stream and common.fmt is OutputFormat.csv:
        from cli.output import to_csv

        # A terminal shows a log line's ESC or CR escaped, as `logq sql -f csv` there does.
        text = to_csv(result.columns, rows, on_terminal=sys.stdout.isatty())
        if getattr(result, "header_done", False):
            text = text.split("\n", 1)[1]
        result.header_done = True
        write_all(sys.stdout, text, csv_row_end)
        flush_all(sys.stdout)
        return
    if stream and common.fmt is OutputFormat.markdown:
        _stream_markdown(result, rows)
        return
    if stream and common.fmt is OutputFormat.json:
        import json

        from cli.output import plain

        write_all(
            sys.stdout,
            "".join(
                json.dumps(dict(zip(result.columns, map(plain, row), strict=True))) + "\n"
                for row in rows
            ),
        )
        flush_all(sys.stdout)
        return
    runner.show(common, result, prep, rows=rows)


def _stream_markdown(result, rows: list) -> None:
    """The rows of a ``--follow`` poll as lines of one Markdown table: the header and its
    layout come with the first answer, later polls add rows only (a header each poll made a
    new table of every poll, and an empty poll printed a table of no rows)."""
    from cli.output import MarkdownLayout, write_all
    from cli.whole_rows import flush_all

    layout = getattr(result, "markdown", None)
    text = ""
    if layout is None:
        layout = result.markdown = MarkdownLayout(result.columns, rows)
        text = layout.header()
    text += layout.lines(rows)
    if text:
        write_all(sys.stdout, text)
        flush_all(sys.stdout)
