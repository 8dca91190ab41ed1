"""Commands over ``envoy_access``: errors, latency, flags, upstreams, top, timeline, trace."""

from enum import StrEnum
from typing import Annotated, Any

import typer

from cli.errors import friendly
from cli.options import REQUEST_FILTERS, Common, EngineName, query_command

#: ``--raw-paths``: by default paths are grouped as routes (no query string, id-like segments
#: folded to ``{id}``), so one slow endpoint is one row, not thousands of single-request rows.
RawPaths = Annotated[
    bool,
    typer.Option(
        "--raw-paths",
        help="Group by the path exactly as logged (query string, ids) instead of by route: "
        "by default the query string is dropped and id-like segments (all digits, UUIDs, 16+ "
        "hex digits, or a run of 4+ digits as in SKU-99880) become {id}.",
    ),
]


def parse_status(value: str) -> tuple[int, int]:
    """``--status``: ``5xx``, ``4xx`` (any ``Nxx``), a code such as ``503``, or ``4xx-5xx``.

    A range must run low to high (``5xx-1xx`` or ``503-500`` would match nothing, and a silent
    "no results" reads as "no errors"); every error quotes the value as typed.
    """
    text = value.strip().lower()
    if "-" in text:
        lo_text, hi_text = text.split("-", 1)
        lo, hi = _status_bounds(lo_text, value), _status_bounds(hi_text, value)
        if lo[0] > hi[1]:
            raise ValueError(
                f"--status {_shown(value)}: the range runs backwards (it would match nothing); "
                f"write the lower end first, e.g. {hi_text}-{lo_text}"
            )
        return lo[0], hi[1]
    return _status_bounds(text, value)


def status_label(value: str) -> str:
    """A ``--status`` value :func:`parse_status` took, as the title shows it: as logq reads it,
    lower case, without blanks or leading zeros (``5XX`` -> ``5xx``, `` 0503`` -> ``503``)."""
    sides = value.strip().lower().split("-", 1)
    return "-".join(side if side.endswith("xx") else str(int(side)) for side in sides)


def _status_bounds(text: str, value: str) -> tuple[int, int]:
    """One side of ``--status`` (``5xx`` or ``503``) as a code range; errors quote ``value``."""
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        base = int(text[0]) * 100
        return base, base + 99
    if text.isascii() and text.isdigit() and (int(text) == 0 or 100 <= int(text) <= 599):
        return int(text), int(text)
    raise ValueError(  # a code out of range (999) was told "use ... a code such as 503"
        f"--status {_shown(value)}: use 5xx, 4xx (classes 1xx to 5xx), a code from 100 to 599 "
        "such as 503, 0 (the client went away), or a range 4xx-5xx"
    )


def _shown(value: str) -> str:
    from cli.notes import shown

    return shown(value)


@query_command
def errors(
    common: Common,
    status: Annotated[
        str,
        typer.Option(
            help="Status class, code or range: 5xx, 4xx, 503, 0 (client went away), 4xx-5xx."
        ),
    ] = "5xx",
    raw_paths: RawPaths = False,
) -> None:
    """Error responses by service, route, status code and Envoy response flags, most frequent
    first.

    Routes are paths without the query string, with id-like segments as {id} (--raw-paths
    keeps them as logged). Tables leave the service column out when exactly one --service is
    given; json and csv always have it.
    """
    from cli import runner

    with friendly():
        lo, hi = parse_status(status)
        extra = {"status_min": lo, "status_max": hi, "raw_paths": raw_paths}
        prep = runner.prepare(common, "errors", "envoy_access", extra)
        result = runner.execute(common, prep)
        if result is not None:
            runner.show(common, result, prep, title=f"{status_label(status)} responses")


class LatencyBy(StrEnum):
    """Values of ``latency --by``."""

    path = "path"
    upstream = "upstream"
    method = "method"


class TopBy(StrEnum):
    """Values of ``top --by``."""

    path = "path"
    user_agent = "user_agent"
    client = "client"


def _rename(columns: list[str], old: str, new: str) -> list[str]:
    return [new if c == old else c for c in columns]


@query_command
def latency(
    common: Common,
    by: Annotated[
        LatencyBy, typer.Option(help="Group by route (path), upstream host or method.")
    ] = LatencyBy.path,
    raw_paths: RawPaths = False,
) -> None:
    """p50/p90/p99/max request duration and count per service and route (or --by upstream
    host, method), slowest p99 first.

    --by path groups by route: the path without its query string, id-like segments as {id}
    (--raw-paths keeps paths as logged).

    Percentiles are exact on both engines (nearest rank: the smallest value with at least that
    share of requests at or below it), so Athena and the local engine rank alike.
    """
    from cli import runner

    with friendly():
        extra = {"group_by": by.value, "raw_paths": raw_paths}
        prep = runner.prepare(common, "latency", "envoy_access", extra)
        result = runner.execute(common, prep)
        if result is not None:
            name = {"path": "path", "upstream": "upstream_host", "method": "method"}[by.value]
            runner.show(
                common, result, prep, f"latency by {by.value}", _rename(result.columns, "key", name)
            )


@query_command
def flags(common: Common) -> None:
    """Envoy response flags (UH, UF, URX, UT, NR, DC, ...) per service, counted and explained.

    request_share_pct is the flag's share of that service's requests in range.
    """
    from athena.flags import check_next, explain
    from cli import runner

    with friendly():
        prep = runner.prepare(common, "flags", "envoy_access")
        result = runner.execute(common, prep)
        if result is None:
            return
        columns = [*result.columns, "meaning", "check"]
        at = result.columns.index("flag")
        rows = [(*r, explain(str(r[at])), check_next(str(r[at]))) for r in result.rows]
        runner.show(common, result, prep, "response flags", columns, rows)


@query_command
def upstreams(common: Common) -> None:
    """Per upstream host: requests, 5xx count and rate, p99 — find the one bad instance.

    p99 is exact on both engines (nearest rank: the smallest duration with at least 99% of the
    host's requests at or below it), as latency's percentiles are: a host's p99 here is its
    p99 in latency --by upstream for the same requests.
    """
    from cli import runner

    with friendly():
        prep = runner.prepare(common, "upstreams", "envoy_access")
        result = runner.execute(common, prep)
        if result is not None:
            runner.show(common, result, prep, "upstream hosts")


@query_command(limit=20)
def top(
    common: Common,
    by: Annotated[
        TopBy, typer.Option(help="path, user_agent or client (first X-Forwarded-For address).")
    ] = TopBy.path,
    raw_paths: RawPaths = False,
) -> None:
    """The most frequent routes, user agents or client addresses per service, with 5xx counts.

    Routes are paths without the query string, id-like segments as {id} (--raw-paths keeps
    them as logged); request_share_pct is of every request in range.
    """
    from cli import runner

    with friendly():
        extra = {"top_by": by.value, "raw_paths": raw_paths}
        prep = runner.prepare(common, "top", "envoy_access", extra)
        result = runner.execute(common, prep)
        if result is not None:
            runner.show(
                common, result, prep, f"top {by.value}", _rename(result.columns, "key", by.value)
            )


#: Most intervals a timeline draws or returns.
MAX_INTERVALS = 5000
#: ``--every`` when not given: the first of these that keeps the range within
#: :data:`MAX_INTERVALS` (1m up to about 3.5 days, 15m over 30d). Each one ``--every``
#: accepts (s, m, h, d: a week is 7d).
AUTO_EVERY = ("1m", "5m", "15m", "1h", "6h", "1d", "7d")


@query_command(limit_text="every interval of the range")
def timeline(
    common: Common,
    every: Annotated[
        str | None,
        typer.Option(
            help="Interval: 30s, 1m, 5m, 1h, 1d (or several units: 1h30m). Default: 1m, or the "
            "first of 5m, 15m, 1h, 6h, 1d, 7d that keeps the range within 5,000 intervals "
            "(said in the output).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Requests and errors per interval: a chart in the terminal, rows in json/csv/markdown.

    Intervals start on --every boundaries (UTC), but only requests in [--since, --until) are
    counted: when --since falls inside an interval (--since 08:30 --every 1h), that first
    interval is labelled with --since and is partial, as is a last one that --until (or now)
    cuts; the chart says so below it, other formats on stderr. Columns: bucket, requests,
    errors_4xx, errors_5xx, no_response (response code 0: the client went away before Envoy
    answered; drawn as 0 in the chart). With --limit N, the newest N intervals of the range.
    """
    from cli import runner
    from cli.output import OutputFormat

    with friendly():
        from athena.timerange import parse_interval
        from cli.notes import note, refuse_empty

        # `every is None`, not falsy: an empty --every is refused, not taken for the default,
        # in the words of the other empty options (runner.check_filters).
        default = "use the default (1m, coarser for a long range)"
        refuse_empty("--every", every, "give an interval (30s, 5m, 1h)", default, blank=True)
        step = int(parse_interval(AUTO_EVERY[0] if every is None else every).total_seconds())
        prep = runner.prepare(common, "timeline", "envoy_access", {"every_seconds": step})
        auto = every is None
        if every is None:  # not given: the default, or a coarser one that the range allows
            every = _auto_every(prep)
            step = int(parse_interval(every).total_seconds())
            prep.params["every_seconds"] = step
        _check_intervals(prep, step, every, chosen=auto)
        if auto and every != AUTO_EVERY[0]:
            note(f"logq: --every {every} (the default 1m would make over 5,000 intervals)")
        result = runner.execute(common, prep)
        if result is None:
            return
        from cli.chart import fill_intervals, partial_notes, render_timeline

        rows = fill_intervals(result.rows, prep.trange.since, prep.trange.until, step)
        cut = len(rows)
        if common.limit:
            rows = rows[-common.limit :]  # the newest intervals: where an incident is
        if common.fmt is OutputFormat.table and rows:
            render_timeline(rows, every, until=prep.trange.until, step=step)
        else:
            runner.show(common, result, prep, "timeline", rows=rows)
            for text in partial_notes(rows, prep.trange.until, step):
                note(f"logq: {text}")
        if cut > len(rows):
            note(f"logq: showing the newest {len(rows):,} of {cut:,} intervals (raise --limit)")


def _interval_count(prep: Any, step: int) -> float:
    """Intervals of ``step`` seconds in the range, counted from the one --since falls in."""
    since = int(prep.trange.since.timestamp()) // step * step
    return (prep.trange.until.timestamp() - since) / step


def _auto_every(prep: Any) -> str:
    """The first of :data:`AUTO_EVERY` within :data:`MAX_INTERVALS` over the range (the last
    one when none is: :func:`_check_intervals` then refuses the range)."""
    from athena.timerange import parse_interval

    for every in AUTO_EVERY:
        if _interval_count(prep, int(parse_interval(every).total_seconds())) <= MAX_INTERVALS:
            return every
    return AUTO_EVERY[-1]


def _check_intervals(prep: Any, step: int, every: str, chosen: bool = False) -> None:
    """Refuse a range of over 5,000 intervals (counted from the interval --since falls in);
    ``chosen``: ``every`` is the coarsest of :data:`AUTO_EVERY`, the user gave none."""
    buckets = _interval_count(prep, step)
    if buckets > MAX_INTERVALS and chosen:
        raise ValueError(
            f"this range makes {buckets:,.0f} intervals (max 5,000) even {every} wide; "
            "use a shorter range or a larger --every"
        )
    if buckets > MAX_INTERVALS:
        raise ValueError(
            f"--every {every} over this range makes {buckets:,.0f} intervals (max 5,000); "
            "use a larger --every or a shorter range"
        )


@query_command(without=REQUEST_FILTERS, since="1d", limit=500)
def trace(
    common: Common,
    request_id: Annotated[str, typer.Argument(help="The x-request-id to follow.")],
) -> None:
    """Every hop of one request across services (same x-request-id), in time order.

    The id is matched without surrounding blanks and without regard to case (Envoy writes
    lower-case UUIDs; a copy from an upper-casing tool still matches).
    """
    from cli import runner

    with friendly():
        from cli.notes import refuse_not_utf8

        refuse_not_utf8("REQUEST_ID", request_id)
        request_id = request_id.strip()
        if not request_id or len(request_id) > 256:
            raise ValueError("REQUEST_ID must be 1-256 characters (the x-request-id header)")
        prep = runner.prepare(
            common,
            "trace",
            "envoy_access",
            {"request_id": request_id},
        )
        if common.dry_run:
            runner.execute(common, prep)
            return
        result, prep, rest = _recent_first(common, prep, request_id)
        prep.empty_hint = _tail_hint(common, request_id)
        runner.show(common, result, prep, f"request {request_id}")
        if rest is not None:
            from cli.notes import note

            note(_unsearched_note(common, request_id, rest, _first_hop(result)))


def _tail_hint(common: Common, request_id: str) -> str:
    """``try `logq tail --grep ID --since 1d```: an id that no access line carries may still be
    in container_logs (an application that logs it, an access line that did not parse)."""
    import re
    import shlex

    window = f" --since {shlex.quote(common.since or common.default_since)}"
    if common.until:
        window += f" --until {shlex.quote(common.until)}"
    grep = shlex.quote("(?i)" + re.escape(request_id))
    where = engine_options(common)
    return f"the id may be in the container logs: try `logq tail --grep {grep}{window}{where}`"


def engine_options(common: Common) -> str:
    """`` --engine athena --warehouse s3://b/wh``: the engine options of this invocation that its
    environment does not already set, so a suggested command runs where this one ran."""
    import os
    import shlex

    given = [
        ("--engine", "LOGQ_ENGINE", common.engine.value, EngineName.local.value),
        ("--warehouse", "LOGQ_WAREHOUSE", common.warehouse, None),
    ]
    if common.engine is EngineName.athena:
        given += [
            ("--athena-database", "LOGQ_ATHENA_DATABASE", common.athena_database, "logq"),
            ("--athena-workgroup", "LOGQ_ATHENA_WORKGROUP", common.athena_workgroup, None),
            ("--athena-output", "LOGQ_ATHENA_OUTPUT", common.athena_output, None),
            ("--athena-region", "LOGQ_ATHENA_REGION", common.athena_region, None),
        ]
    out = ""
    for flag, env, value, default in given:
        unsaid = os.environ.get(env) or default  # what the suggested command gets without it
        if flag == "--engine" and value:  # LOGQ_ENGINE is read case-insensitively
            value, unsaid = value.lower(), (unsaid or "").lower()
        if value and value != unsaid:
            out += f" {flag} {shlex.quote(value)}"
    return out


#: ``trace`` looks in the newest hour of its range first: a request's hops start within seconds
#: of each other, and most traces are of recent requests. On Athena that scans 2 of the default
#: day's 25 partition-hours (about USD 0.04 instead of 0.5 at 100,000 lines/s); the whole range
#: is read only when the id is not there, or when its first hop is so close to the hour's start
#: that earlier hops may lie before it. When the newest hour answers, the rest of the range is
#: not read: the same id used again hours earlier (a client-supplied id, a retry with the same
#: id), or a request whose hops span more than the margin, would be missed. Checking the rest
#: would cost as much as reading it (ids are random: no Parquet statistics prune them), which
#: is the whole-range query the shortcut exists to avoid; so ``trace`` says on stderr what it
#: searched and gives the command that searches the rest (:func:`_unsearched_note`).
TRACE_FIRST_LOOK_SECONDS = 3600
TRACE_MARGIN_SECONDS = 300


def _recent_first(common: Common, prep: Any, request_id: str) -> tuple[Any, Any, Any]:
    """(result, prepared query, range not searched) of ``trace``: the newest hour, else the
    whole range. The last is None when the whole range was searched, else the
    :class:`~athena.timerange.TimeRange` before the newest hour, which was not."""
    from dataclasses import replace
    from datetime import timedelta

    from athena.timerange import TimeRange, as_utc
    from cli import runner

    trange = prep.trange
    first_look = timedelta(seconds=TRACE_FIRST_LOOK_SECONDS)
    margin = timedelta(seconds=TRACE_MARGIN_SECONDS)
    if trange.until - trange.since <= first_look + margin:
        return runner.execute(common, prep), prep, None
    start = trange.until - first_look
    near = replace(common, since=start.isoformat(), until=trange.until.isoformat())
    recent = runner.prepare(near, "trace", "envoy_access", {"request_id": request_id})
    found = runner.execute(near, recent)
    if found.rows:
        at = found.columns.index("timestamp")
        if as_utc(min(row[at] for row in found.rows)) - start >= margin:
            return found, recent, TimeRange(trange.since, start)
    whole = runner.execute(common, prep)
    whole.elapsed_s += found.elapsed_s
    if whole.scanned_bytes is not None and found.scanned_bytes is not None:
        whole.scanned_bytes += found.scanned_bytes  # both are billed
    return whole, prep, None


def _first_hop(result: Any) -> Any:
    """The earliest ``timestamp`` of a trace answer that has rows."""
    from athena.timerange import as_utc

    at = result.columns.index("timestamp")
    return as_utc(min(row[at] for row in result.rows))


def _unsearched_note(common: Common, request_id: str, rest: Any, first: Any) -> str:
    """What a newest-hour answer did not search, and the command that searches it: hops
    before ``rest.until`` are not in the answer (``first``: its earliest hop).

    The times are exact (milliseconds when the range has them, as ``--since``/``--until``
    take them): rounded out to whole seconds, the command overlapped the hour searched."""
    import shlex

    from athena.timerange import iso_utc

    def iso(t: Any) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t.microsecond == 0 else iso_utc(t)

    since, until = rest.since, rest.until
    span = max(1, int((first - rest.until).total_seconds() // 60))
    command = f"logq trace {shlex.quote(request_id)} --since {iso(since)} --until {iso(until)}"
    for name in common.service or []:
        command += f" -s {shlex.quote(name)}"
    command += engine_options(common)
    return (
        f"logq: searched only the newest hour of the range (from {iso(rest.until)}), where "
        f"the id was found; hops logged before it (the same id used earlier, or a request "
        f"whose hops span over {span} minutes) are not shown: `{command}` searches the rest"
    )
