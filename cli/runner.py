"""Running one query for a CLI command: parameters, engine choice, dry-run, execution, output.

The commands in :mod:`cli.app` only say *which* query with *which* extra parameters; everything
they share (time range, services, pruning, engines, output, errors) is here. Why an answer is
empty or may be stale is in :mod:`cli.explain`; how new the data is, in :mod:`athena.freshness`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from cli.explain import (
    NO_DATA_EXIT,
    explain_empty,
    no_data_reason,
    note_outside_enum,
    note_stale,
    note_unknown_services,
)
from cli.notes import forget_notes, note, plural, refuse_empty, refuse_not_utf8, shown
from cli.options import Common, EngineName
from cli.output import OutputFormat
from cli.service_names import normalise_services

if TYPE_CHECKING:
    from athena.engines.result import QueryResult
    from athena.partitions import Partition
    from athena.projection import Projected
    from athena.timerange import TimeRange
    from athena.warehouse import Warehouse


def normalise_method(value: str | None) -> str:
    """``--method`` upper-cased; only letters (an HTTP token) are accepted."""
    if not value:
        return ""
    method = value.strip().upper()
    if not method.isascii() or not method.isalpha() or len(method) > 32:
        raise ValueError(
            f"--method {shown(value)} is not an HTTP method; use e.g. GET, POST, DELETE"
        )
    return method


def check_filters(common: Common) -> None:
    """Refuse ``--path ""``, ``--method ""``, ``--since ""`` and ``--until ""`` as ``--service
    ""`` is refused: from an unset shell variable, they took every path or method, or the
    default range, answering another question unnoticed; and a ``--path`` that is not UTF-8."""
    refuse_empty(
        "--path", common.path, "give a path prefix (/api) or a route (/api/v1/items/{id})",
        "take every path",
    )  # fmt: skip
    refuse_empty("--method", common.method, "give an HTTP method (GET, POST)", "take every method")
    when = "give a time (15m, 1h, 2026-11-30T08:00:00Z)"
    refuse_empty("--since", common.since, when, "use the default (see --help)", blank=True)
    refuse_empty("--until", common.until, when, "end now", blank=True)
    refuse_not_utf8("--path", common.path)


@dataclass
class Prepared:
    """A canned query ready to run: its SQL, parameters and scope."""

    name: str
    table: str
    sql: str
    params: dict[str, Any]
    trange: TimeRange
    services: list[str] | None
    scopes: dict[str, list[Partition]] = field(default_factory=dict)
    services_checked: bool = False
    """Unknown ``--service`` names were noted (once: ``tail --follow`` runs it every poll)."""
    stale_checked: bool = False
    """The newest data was checked for staleness (once per preparation)."""
    empty_hint: str = ""
    """What to try next when the answer is empty, after the reason (e.g. ``trace``'s tail)."""
    outside_enum: list[str] | None = None
    """On Athena, the ``--service`` names the table's ``service`` enum lacks (None: not looked
    up, or the lookup failed)."""


def prepare(
    common: Common,
    name: str,
    table: str,
    extra: dict[str, Any] | None = None,
    default_since: str | None = None,
    default_limit: int | None = None,
) -> Prepared:
    """Load canned query ``name`` and fill the common parameters from the options.

    The command's own defaults for ``--since``/``--limit`` come in ``common`` (declared with
    the command, so its --help shows them); ``default_since``/``default_limit`` override them.
    """
    from athena.queries import load
    from athena.routes import path_filter
    from athena.timerange import TimeRange

    forget_notes()  # a new invocation (tests run many in one process) notes afresh
    check_filters(common)  # first: an empty --since is named before the range is read
    trange = TimeRange.parse(
        common.since, common.until, default=default_since or common.default_since
    )
    services = normalise_services(common.service, common.warehouse)
    paths = path_filter(common.path)
    params: dict[str, Any] = {
        **trange.sql_params(),
        "all_services": services is None,
        "services": services or [""],
        "path_prefix": paths.prefix,
        "path_route": paths.route,
        "method": normalise_method(common.method),
        "row_limit": common.limit or default_limit or common.default_limit,
        "raw_paths": False,
    }
    params.update(extra or {})
    return Prepared(name, table, load(name).text, params, trange, services)


def make_engine(common: Common) -> Any:
    """The engine ``--engine`` names, configured from the options."""
    if common.engine is EngineName.athena:
        from athena.engines.athena import AthenaEngine

        check_athena_options(common)
        return AthenaEngine(
            database=common.athena_database,
            workgroup=common.athena_workgroup,
            output=common.athena_output,
            region=common.athena_region,
            max_scan_bytes=common.max_scan_bytes,
            progress=sys.stderr.isatty(),
        )
    from athena.engines.local import LocalEngine

    engine = LocalEngine(common.warehouse, max_scan_bytes=common.max_scan_bytes)
    check_local(engine.warehouse)
    return engine


def check_athena_options(common: Common) -> None:
    """The Athena options, refused with what to do: one given empty (``--athena-database ""``
    put "database )" in a dry run and a query to no database; ``--athena-region ""`` was taken
    for no option at all), and an ``--athena-output`` that is not on S3."""
    given = {
        "--athena-database": common.athena_database,
        "--athena-workgroup": common.athena_workgroup,
        "--athena-region": common.athena_region,
    }
    for flag, value in given.items():
        if value is not None and not value.strip():
            raise ValueError(f"{flag} is empty (an unset variable?); give a value or leave it out")
    region = common.athena_region
    if region is not None and not AWS_REGION.fullmatch(region):
        raise ValueError(
            f"--athena-region (or LOGQ_ATHENA_REGION) {shown(region)} is not an AWS region "
            "name; give one such as us-east-1 or eu-west-1, or leave it out for AWS_REGION"
        )
    if region is None:  # the region boto3 falls back to: its variables, said by name
        import os

        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            value = os.environ.get(name)
            if value and not AWS_REGION.fullmatch(value):
                raise ValueError(
                    f"{name} {shown(value)} is not an AWS region name; set it to one such as "
                    "us-east-1, or give --athena-region"
                )
            if value:
                break
    check_athena_output(common.athena_output)


#: What botocore takes for a region name (``botocore.utils.validate_region_name``: a host
#: label); it refused others in words that named no option ("Provided region_name ''; drop'
#: doesn't match a supported format").
AWS_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")


def check_athena_output(output: str | None) -> None:
    """``--athena-output`` must be an ``s3://bucket/...`` location: Athena writes results only
    to S3, and a local path would fail later with an error that does not name the option."""
    if output is None:
        return
    from athena.warehouse import is_s3_location

    if not is_s3_location(output):
        raise ValueError(
            f"--athena-output {shown(output)} is not an S3 location; Athena writes its results "
            "to S3: use s3://bucket/prefix/ (or leave it out when the workgroup sets one)"
        )


def check_local(wh: Warehouse) -> Warehouse:
    """A local warehouse must be a folder this user can read (:func:`athena.warehouse.
    check_folder`): a missing one is most likely a typo, better said than answered with "no
    results" (ValueError: exit 2, one line)."""
    from athena.warehouse import check_folder

    if wh.is_s3:
        return wh
    problem = check_folder(
        wh.base, "check --warehouse / LOGQ_WAREHOUSE", missing=", or run `logq demo` to make one"
    )
    if problem is not None:
        raise ValueError(problem)
    return wh


#: Partitions --dry-run lists one by one on Athena; past that, a range per service.
DRY_RUN_HOURS = 48


def athena_partitions(prep: Prepared) -> list[str]:
    """The partitions Athena's projection will read for a prepared query (for --dry-run): the
    hours of the range its ``dt`` projection holds (2020 to now), as the count above them."""
    from athena.projection import PROJECTION_START, projected_range

    svcs = prep.services or ["*"]
    inside = projected_range(prep.trange)
    if inside is None:
        return [f"none: the range is outside the dt projection ({PROJECTION_START} to now)"]
    count = inside.hour_count()
    if count > DRY_RUN_HOURS:
        span = f"{inside.dt_from}..{inside.dt_to} ({count:,} hours)"
        return [f"{prep.table}/service={s}/dt={span}" for s in svcs]
    hours = inside.hours()
    return [f"{prep.table}/service={s}/dt={h}" for s in svcs for h in hours]


def dry_run(
    common: Common, engine: Any, prep: Prepared, projected: list[Projected] | None = None
) -> None:
    """Print the final SQL for the engine and the partitions it would read (on Athena, with
    ``projected``: how many partitions its projection makes, services counted)."""
    import json

    out = sys.stdout
    if common.engine is EngineName.athena:
        from athena.queries import athena_literal_sql

        parts = athena_partitions(prep)
        out.write(f"-- engine: athena (database {common.athena_database})\n")
        main, *others = projected or [None]
        shown = f"{main.describe()}, " if main else ""
        out.write(f"-- partitions ({shown}pruned by partition projection):\n")
        for part in parts:
            out.write(f"--   {part}\n")
        for other in others:
            out.write(f"-- {other.table} too: {other.describe()}\n")
        if main is not None and main.count is None:
            out.write(
                f"-- services not counted: {main.unknown}; with --service they need no lookup\n"
            )
        out.write(athena_literal_sql(prep.sql, prep.params).strip() + "\n")
        return
    for table in prep.scopes:
        parts = prep.scopes[table]
        files = sum(len(p.files) for p in parts)
        size = sum(p.bytes for p in parts)
        out.write(
            f"-- engine: local (DuckDB) over {engine.warehouse.uri}\n"
            f"-- {table}: {plural(len(parts), 'partition')}, {plural(files, 'file')}, "
            f"{plural(size, 'byte')}\n"
        )
        for p in parts:
            out.write(
                f"--   {p.relative} ({plural(len(p.files), 'file')}, {plural(p.bytes, 'byte')})\n"
            )
    sql, bound = engine.prepare(prep.sql, prep.params, prep.scopes)
    out.write(sql + "\n")
    out.write("-- parameters: " + json.dumps(bound, default=str) + "\n")


def execute(common: Common, prep: Prepared) -> QueryResult | None:
    """Run a prepared canned query (or print it for --dry-run, returning None)."""
    if common.dry_run and common.engine is EngineName.athena:
        check_athena_options(common)
        projected = athena_projection(common, prep)
        check_projection(projected)
        dry_run(common, None, prep, projected)  # needs no output location or credentials
        return None
    engine = make_engine(common)
    if common.engine is EngineName.local:
        prep.scopes = {prep.table: engine.plan(prep.table, prep.services, prep.trange)}
        if not prep.services_checked:
            note_unknown_services(engine.warehouse, prep.table, prep.services)
            prep.services_checked = True
    if common.dry_run:
        dry_run(common, engine, prep)
        return None
    if common.engine is EngineName.local:
        result = engine.run(prep.sql, prep.params, prep.scopes)
        prep.scopes = result.scopes or prep.scopes  # as read: a vanished file meant a relisting
    else:
        check_projection(athena_projection(common, prep))
        if common.max_scan_bytes is not None and common.warehouse:
            check_athena_budget(common, prep)
        if not prep.services_checked:
            prep.outside_enum = note_outside_enum(
                common, engine.database, engine.region, prep.table, prep.services
            )
            prep.services_checked = True
        result = engine.run(prep.sql, prep.params)
    note_stale(common, prep)
    return result


def athena_projection(common: Common, prep: Prepared) -> list[Projected]:
    """The partitions Athena projects of each table the query reads (the main one first).

    With ``--service`` the names are counted; without, the size of the table's service enum,
    which takes one API call (:func:`athena.projection.service_enum_size`): when that fails
    (no credentials for a dry run, no such table) the count is unknown and nothing is refused
    on it."""
    from athena.engines.athena import default_region
    from athena.engines.result import EngineError
    from athena.projection import Projected, projected_hours, service_enum_size
    from athena.queries import tables_of
    from athena.schema import TABLES

    read = tables_of(prep.sql) & set(TABLES)
    tables = [prep.table, *sorted(read - {prep.table})]
    hours = projected_hours(prep.trange)
    out = []
    for table in tables:
        if prep.services:
            out.append(Projected(table, hours, len(prep.services)))
            continue
        try:
            region = common.athena_region or default_region()
            if not region:
                raise LookupError("no AWS region to ask Athena")
            out.append(
                Projected(table, hours, service_enum_size(common.athena_database, table, region))
            )
        except (LookupError, EngineError) as exc:
            out.append(Projected(table, hours, None, str(exc)))
    return out


def check_projection(projected: list[Projected]) -> None:
    """Refuse (exit 2) a query that Athena would fail for projecting more than its
    :data:`~athena.projection.PARTITION_LIMIT` partitions of a table, after queueing and
    planning it; warn past :data:`~athena.projection.PARTITION_WARNING`."""
    from athena.projection import PARTITION_LIMIT, PARTITION_WARNING
    from cli.notes import note_once

    known = [p for p in projected if p.count is not None and p.services]
    if not known:
        return
    worst = max(known, key=lambda p: p.count or 0)
    assert worst.count is not None and worst.services
    most_hours = PARTITION_LIMIT // worst.services
    narrow = (
        f"narrow --since/--until (at most {most_hours:,} hours, about {most_hours // 24:,} days, "
        f"for {worst.services:,} services) or add --service"
    )
    if worst.count > PARTITION_LIMIT:
        raise ValueError(
            f"Athena would project {worst.describe()} partitions of {worst.table}, over its "
            f"limit of {PARTITION_LIMIT:,} (the query would fail with "
            f"HIVE_EXCEEDED_PARTITION_LIMIT); {narrow}"
        )
    if worst.count > PARTITION_WARNING:
        note_once(
            f"logq: warning: Athena projects {worst.describe()} partitions of {worst.table}; "
            f"planning that many is slow: {narrow}"
        )


def check_athena_budget(common: Common, prep: Prepared) -> None:
    """Refuse an Athena query whose partitions hold more bytes than ``--max-scan-bytes``.

    The files in range are an upper bound of what Athena scans (columnar reads scan less), so
    this never lets an over-budget query start; Athena's own figure is checked again while the
    query runs.
    """
    from athena.engines.result import ScanBudgetError
    from athena.queries import tables_of
    from athena.schema import TABLES

    # Every table the statement reads (``services`` reads both), not only the main one.
    tables = sorted(tables_of(prep.sql) & set(TABLES)) or [prep.table]
    size = partition_bytes(common, tables, prep.services, prep.trange)
    if common.max_scan_bytes is not None and size > common.max_scan_bytes:
        raise ScanBudgetError(
            f"the partitions in range hold {size:,} bytes, over --max-scan-bytes "
            f"{common.max_scan_bytes:,}; the query was not started. Narrow --since/--until or "
            "--service"
        )


def partition_bytes(
    common: Common, tables: list[str], services: list[str] | None, trange: Any
) -> int:
    """Bytes of the files of ``tables`` in the partitions of ``services`` and ``trange`` (all
    when None), listed in ``--warehouse``: what bounds an Athena scan of them."""
    from athena.partitions import plan
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    return sum(p.bytes for t in tables for p in plan(wh, t, services, trange, every_file=True))


#: The canned queries that group by service: in a table (or markdown) the service column is
#: dropped when exactly one ``--service`` is given (it would repeat that one name on every row).
BY_SERVICE = frozenset({"errors", "latency", "top", "flags"})


def show(
    common: Common,
    result: QueryResult,
    prep: Prepared | None = None,
    title: str | None = None,
    columns: list[str] | None = None,
    rows: list[tuple[Any, ...]] | None = None,
    as_named: bool | None = None,
    total: int | None = None,
) -> None:
    """Print a result in ``--format``; empty results get a reason (stderr for json/csv).
    ``total``: how many rows the answer has in all, when the caller knows it (``logq services``
    lists them all), for "showing 2 of 12 rows" where --limit cuts.

    A canned query's ``total_rows`` column (they count their rows before the LIMIT) is dropped
    and turns into "showing 50 of 124 rows" when the limit cut rows; ``logq sql`` (no ``prep``)
    prints its columns as the user named them, ``total_rows`` included (``as_named``, when
    given, says which: ``services`` has no ``prep`` locally, and its titles are words, as on
    Athena). The service column of
    the queries that group by service is dropped from table and markdown output when exactly
    one ``--service`` was given (json and csv keep it: their columns never depend on the
    arguments). When the question had no possible answer (:func:`no_data_reason`), the exit
    status is :data:`NO_DATA_EXIT`.

    A streamed result (:attr:`QueryResult.more`) is written as it comes, the same columns
    dropped from every batch; the table shows at most :data:`cli.output.TABLE_MAX_ROWS` rows
    and says on stderr how to see the rest. The result is closed in the end, read or not
    (a closed pipe, Ctrl-C, an error: the engine stops the query; after a Ctrl-C the local
    engine leaves what it held to the end of the process, which comes at once).
    """
    interrupted = False
    try:
        named = prep is None if as_named is None else as_named
        _show(common, result, prep, title, columns, rows, named, total)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        result.close(interrupted)


def _show(
    common: Common,
    result: QueryResult,
    prep: Prepared | None,
    title: str | None,
    columns: list[str] | None,
    rows: list[tuple[Any, ...]] | None,
    as_named: bool,
    total: int | None = None,
) -> None:
    from cli.output import emit, unique_columns, unique_columns_note

    more = result.more if rows is None else None
    columns = list(columns if columns is not None else result.columns)
    rows = list(rows if rows is not None else result.rows)
    dropped: list[int] = []  # columns left out, in order: the same for every streamed batch
    if prep is not None and "total_rows" in columns:  # a canned query's count, not a user's
        at = columns.index("total_rows")
        total = int(rows[0][at]) if rows else 0
        columns, rows = _without(columns, rows, at)
        dropped.append(at)
    human = common.fmt in (OutputFormat.table, OutputFormat.markdown)
    if (
        human  # json/csv keep every column whatever the arguments: scripts read them by name
        and prep is not None
        and prep.name in BY_SERVICE
        and "service" in columns
        and one_service(common, prep)
    ):
        dropped.append(columns.index("service"))
        columns, rows = _without(columns, rows, dropped[-1])
    named = unique_columns(columns)  # JSON keeps one value per key: `a`, `a_2`
    if named != columns:
        note(unique_columns_note(columns, named))
        columns = named
    over = False  # rows past --limit were fetched (`logq sql` asks for one more, to know)
    if common.limit:  # most queries LIMIT in SQL; this holds --limit for every command
        over = len(rows) > common.limit
        rows = rows[: common.limit]
    exit_code = 0
    if not rows and prep is not None:
        reason = no_data_reason(common, prep)
        if reason is not None:
            exit_code = NO_DATA_EXIT
        else:
            reason = explain_empty(common, prep, data_known=True)
        if human:
            sys.stdout.write(f"No results: {reason}\n")
            if exit_code:
                raise typer.Exit(exit_code)
            return
        note(f"logq: no results: {reason}")
    elif prep is not None and not result.rows:  # filled rows (timeline) of an empty answer
        reason = no_data_reason(common, prep)
        if reason is not None:
            note(f"logq: no results: {reason}")
            exit_code = NO_DATA_EXIT
    rest = _Rest(() if more is None else more, dropped, common.limit, len(rows))
    table_title = title if common.fmt is OutputFormat.table else None
    written = emit(common.fmt, columns, rows, title=table_title, more=rest, as_named=as_named)
    if not written.complete:
        note(_cut_text(written.rows, total))
    elif total is not None and total > written.rows:
        note(f"logq: showing {written.rows:,} of {total:,} rows (raise --limit)")
    elif prep is None and (over or rest.over):  # `logq sql`: uncounted (that would run it all)
        first = "row" if written.rows == 1 else plural(written.rows, "row")
        note(f"logq: showing the first {first}; the result has more (raise --limit)")
    if result.engine == "athena":
        from athena.engines.athena import cost_line

        note(cost_line(result))
    if exit_code:
        raise typer.Exit(exit_code)


class _Rest:
    """The batches of a streamed result after the ``shown`` first rows: the ``dropped``
    columns left out, and no more rows than ``--limit`` (None or 0: every row). ``over`` says,
    once read, whether rows past the limit came (``logq sql`` fetches one more to know)."""

    def __init__(
        self,
        more: Iterable[list[tuple[Any, ...]]],
        dropped: list[int],
        limit: int | None,
        shown: int,
    ) -> None:
        self.more, self.dropped = more, dropped
        self.left = None if not limit else limit - shown
        self.over = False

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        for batch in self.more:
            if self.left is not None and len(batch) > self.left:
                self.over = True
                batch = batch[: self.left]
            for at in self.dropped:
                batch = [r[:at] + r[at + 1 :] for r in batch]
            if self.left is not None:
                self.left -= len(batch)
            if batch:
                yield batch
            if self.over:
                return


def sql_fetch(common: Common) -> tuple[int | None, bool]:
    """``(max_rows, stream)`` for ``logq sql``'s engine: json, csv and markdown stream every
    row (up to ``--limit``); the table shows at most :data:`cli.output.TABLE_MAX_ROWS` and never
    streams. Either fetches one row more than it shows, to know that others were left out (and
    say so: ``--limit`` cut silently). A streamed
    local result reads every file's footer before its first row and fetches a window of 10,000+
    rows: the default format paid both (7 s of footers over 9,600 files) to show 1,000 rows."""
    from cli.output import TABLE_MAX_ROWS

    if common.fmt is not OutputFormat.table:
        return (common.limit + 1 if common.limit else None), True
    return min(common.limit + 1 if common.limit else TABLE_MAX_ROWS + 1, TABLE_MAX_ROWS + 1), False


def _cut_text(shown: int, total: int | None) -> str:
    """The note for a table cut at :data:`cli.output.TABLE_MAX_ROWS` rows: how to see the
    others. The remaining rows are not counted: that would run the rest of the query."""
    of = f"first {shown:,}" + (f" of {total:,}" if total is not None else "")
    return (
        f"logq: showing the {of} rows: a table holds every row it shows in memory, so it "
        f"stops at {shown:,}; use -f csv or -f json for every row, or --limit for fewer"
    )


def one_service(common: Common, prep: Prepared) -> bool:
    """Whether the ``--service`` values name exactly one service (locally: one that the table
    has; ``-s recipe,recipee`` is recipe alone, with a note on the unknown name; on Athena: one
    in the table's service enum, when it was read)."""
    if not prep.services:
        return False
    if len(prep.services) == 1 or common.engine is not EngineName.local:
        return len([s for s in prep.services if s not in (prep.outside_enum or [])]) == 1
    from athena.partitions import list_services
    from athena.warehouse import open_warehouse

    known = set(list_services(open_warehouse(common.warehouse), prep.table))
    return len([s for s in prep.services if s in known]) == 1


def _without(
    columns: list[str], rows: list[tuple[Any, ...]], at: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``columns`` and ``rows`` without column ``at``."""
    return columns[:at] + columns[at + 1 :], [r[:at] + r[at + 1 :] for r in rows]
