"""Commands about the tables themselves: ad-hoc ``sql``, the Athena ``ddl``, the ``services``."""

import re
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from cli.errors import friendly
from cli.options import REQUEST_FILTERS, Common, EngineName, query_command, service_option


@query_command(
    without=REQUEST_FILTERS, since_text="every row (no time restriction)", limit_text="every row"
)
def sql(
    common: Common,
    statement: Annotated[str, typer.Argument(help="One Athena (Trino) SQL statement.")],
) -> None:
    """Ad-hoc Athena SQL against envoy_access and container_logs.

    On either engine --service/--since/--until restrict the rows the tables show (all when
    absent; --since 15m is the last 15 minutes, by each row's timestamp). On Athena each
    reference to a table becomes a subquery with dt, service and timestamp conditions, so that
    Athena reads only those partitions (--dry-run shows the SQL sent). Without --since, a
    statement with no condition on dt makes Athena consider every hour since 2020 of every
    service: add --since, or WHERE dt >= '2026-01-31-00' (dt is the UTC hour, YYYY-MM-DD-HH).
    Athena's hidden columns ("$path", "$file_size", ...) work there, flags or not; the local
    engine has none. With the flags, a statement that is no query but names a table (PREPARE,
    SHOW STATS FOR, CREATE TABLE AS) is refused: put the conditions in the statement. A
    --service missing from a table's service list on Athena is named (exit 3 if the answer is
    empty and no --service is in the list).
    Locally only queries run (SELECT, WITH, VALUES, EXPLAIN [ANALYZE] of a query, DESCRIBE)
    over the warehouse tables: DuckDB would otherwise let a statement write or read any file
    (COPY ... TO, read_text) or change settings, so functions of the DuckDB extensions it
    does not load (read_xlsx, st_point, ...) are refused too (its JSON and time zone functions
    work). SHOW TABLES and SHOW COLUMNS FROM <table>
    answer as on Athena (tab_name, field); other SHOW statements need --engine athena. To
    filter by path or method, say so in the statement (WHERE starts_with(path, '/api') AND
    method = 'GET'). Every row by default: -f json, csv and markdown write rows as they come,
    in bounded memory; the table shows at most the first 1,000 and says how to get the rest.
    --limit N stops after N rows; when the result has more, stderr says "logq: showing the
    first N rows; the result has more (raise --limit)". In the table format an EXPLAIN prints
    its plan as the lines of text it is.
    """
    from cli import runner
    from cli.explain import NO_DATA_EXIT, note_unknown_services
    from cli.notes import note, refuse_not_utf8

    no_answer: str | None = None  # no --service has data in (Athena: is listed for) any table
    with friendly(user_sql=True):  # the engine refusing the statement is bad input: exit 2
        refuse_not_utf8("the statement", statement)
        if common.engine is EngineName.athena:
            from cli.commands.sql_athena import run_on_athena

            result, no_answer = run_on_athena(common, statement)
            if result is None:
                return
        else:
            from athena.queries import tables_of
            from athena.schema import TABLES
            from cli.commands.sql_show import show_answer

            catalog = show_answer(statement)  # SHOW TABLES / COLUMNS: DuckDB has no catalog
            if catalog is not None:
                if common.dry_run:
                    sys.stdout.write("-- answered from the table definitions: no query runs\n")
                else:
                    runner.show(common, catalog)
                return

            explain, query = split_explain(statement)
            check_read_only(query, inner=explain is not None)
            engine = runner.make_engine(common)
            services, trange = flag_scope(common)
            scopes = {t: engine.plan(t, services, trange) for t in tables_of(query) & set(TABLES)}
            if scopes and not any(scopes.values()):
                from cli.storage import check_bucket

                check_bucket(engine.warehouse)  # a missing bucket lists as empty
            unknown = [
                note_unknown_services(engine.warehouse, t, services, all_too=True)
                for t in sorted(scopes)
            ]
            if services and unknown and all(len(u) == len(services) for u in unknown):
                from cli.service_names import counted

                no_answer = (  # as on Athena with names outside every table's service list
                    f"no data of {counted(services)} in {', '.join(sorted(scopes))}"
                )
            if common.dry_run:
                for t, parts in scopes.items():
                    sys.stdout.write(f"-- {t}: {len(parts)} partitions\n")
                    for p in parts:
                        sys.stdout.write(f"--   {p.relative}\n")
                if trange is not None:
                    from athena.timerange import iso_utc

                    # As every other time logq prints (was 10:39:28.068000+00:00 here).
                    sys.stdout.write(
                        f"-- rows with {iso_utc(trange.since)} <= timestamp < "
                        f"{iso_utc(trange.until)}\n"
                    )
                sys.stdout.write(engine.prepare(query, {}, scopes, explain)[0] + "\n")
                return
            max_rows, stream = runner.sql_fetch(common)
            result = run_local(engine, query, scopes, trange, explain, max_rows, stream)
        no_answer = no_answer if not result.rows else None
        if no_answer is not None:
            note(f"logq: no results: {no_answer}")
        if split_explain(statement)[0] and show_plan(common, result):
            return
        runner.show(common, result)
    if no_answer is not None:
        raise typer.Exit(NO_DATA_EXIT)


def show_plan(common: Common, result: Any) -> bool:
    """Print an EXPLAIN's plan in the table format as the lines of text it is; False (nothing
    printed) for another format or a result that is no plan.

    A plan is one text value of many lines (DuckDB's ``explain_key``, ``explain_value``;
    Athena's ``Query Plan``), drawn as boxes: in a table cell its line breaks showed as
    ``\\n``, and DuckDB's boxes ran together on one line. Its lines are the engine's, not the
    logs': each is still shown with its control characters escaped, as every table cell is."""
    from cli.output import OutputFormat, visible, write_all

    if common.fmt is not OutputFormat.table or result.more is not None or not result.rows:
        return False
    text = [row[-1] for row in result.rows]
    if not all(isinstance(t, str) for t in text) or len(result.columns) > 2:
        return False
    keys = [str(row[0]) for row in result.rows] if len(result.columns) == 2 else []
    out = []
    for i, plan in enumerate(text):
        if keys:
            out.append(visible(keys[i]))
        out.extend(visible(line) for line in plan.rstrip("\n").split("\n"))
    write_all(sys.stdout, "\n".join(out) + "\n")
    result.close()
    return True


def flag_scope(common: Common) -> tuple[list[str] | None, Any]:
    """``--service`` and ``--since``/``--until`` as the rows the tables show, on either engine:
    the stored service names (None: all) and the time range (None: every row; without --since
    it starts at the epoch)."""
    from athena.timerange import TimeRange
    from cli import runner

    services = runner.normalise_services(common.service, common.warehouse)
    runner.check_filters(common)
    if not (common.since or common.until):
        return services, None
    return services, TimeRange.parse(common.since, common.until, open_start=True)


#: Statement kinds ``logq sql`` runs locally (sqlglot's names); ``Command`` is checked by word.
_QUERY_KINDS = ("Select", "Union", "Intersect", "Except", "Values", "Subquery", "Describe")
_QUERY_COMMANDS = ("SHOW",)
_QUERIES = "SELECT, WITH, VALUES, EXPLAIN [ANALYZE] <query>, DESCRIBE, SHOW"

#: ``EXPLAIN``, ``EXPLAIN ANALYZE`` and DuckDB's option list (``EXPLAIN (FORMAT json)``) before
#: a statement. DuckDB's EXPLAIN ANALYZE *runs* the statement, so what follows is checked too.
_EXPLAIN = re.compile(
    r"\s*(EXPLAIN(?:\s+ANALY[SZ]E)?(?:\s*\(\s*(?:FORMAT|ANALY[SZ]E)\b[^()]*\))?)\s+",
    re.IGNORECASE,
)


def split_explain(statement: str) -> tuple[str | None, str]:
    """``(prefix, query)``: a leading ``EXPLAIN [ANALYZE]`` apart from the statement it explains
    (so the query is checked, scoped and transpiled like any other), or ``(None, statement)``."""
    match = _EXPLAIN.match(statement)
    if match is None:
        return None, statement
    return " ".join(match.group(1).split()), statement[match.end() :]


def _refused(word: str) -> ValueError:
    return ValueError(
        f"logq sql runs queries only ({_QUERIES}); {word[:30]!r} statements are refused"
    )


def check_read_only(statement: str, inner: bool = False) -> None:
    """Refuse anything but a query on the local engine (ValueError: exit 2, one line).

    ``inner``: ``statement`` follows an EXPLAIN. A top-level statement sqlglot cannot parse is
    left to the engine (which parses it the same way, so it never reaches DuckDB); after EXPLAIN
    it must be a query sqlglot recognises, as the rest would reach DuckDB verbatim.
    """
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    from athena.queries import parse_statements

    word = (statement.split(None, 1) or ["(empty)"])[0].upper()
    try:
        trees = parse_statements(statement)
    except (ParseError, TokenError):  # an unclosed quote or comment is a TokenError
        if inner:
            raise _refused(f"EXPLAIN {word}") from None
        return  # the engine reports the parse error with its position
    if len(trees) != 1:
        if inner:
            raise ValueError("EXPLAIN takes one query; the SQL holds several statements")
        return  # the engine refuses anything but one statement, and says so
    tree = trees[0]
    into = isinstance(tree, exp.Select) and tree.args.get("into")
    if type(tree).__name__ in _QUERY_KINDS and not into:
        if isinstance(tree, exp.Describe) and not isinstance(
            tree.this, exp.Table | exp.Query | exp.Subquery
        ):
            raise _refused(f"DESCRIBE {type(tree.this).__name__.upper()}")
        return
    if not inner and isinstance(tree, exp.Command) and str(tree.this).upper() in _QUERY_COMMANDS:
        return
    if into:
        word = "SELECT ... INTO"
    raise _refused(f"EXPLAIN {word}" if inner else word)


def run_local(
    engine: Any,
    statement: str,
    scopes: dict[str, Any],
    rows: Any = None,
    explain: str | None = None,
    max_rows: int | None = None,
    stream: bool = True,
) -> Any:
    """Run on DuckDB (the tables showing only ``rows``' time range when given; ``explain`` put
    before the query; only the first ``max_rows`` fetched); an unknown table is named in one
    line with the tables that exist. With ``stream``, a large result streams
    (:attr:`QueryResult.more`)."""
    from athena.engines.result import StatementError
    from athena.schema import TABLES

    try:
        return engine.run(statement, {}, scopes, rows, explain, max_rows, stream=stream)
    except StatementError as exc:
        missing = re.search(r"Table with name (\S+) does not exist", str(exc))
        if missing is None:
            raise
        name = missing.group(1)
        if name.lower() in TABLES:
            # Named inside a string (DuckDB's query(), query_table()): logq binds the tables
            # where the statement names them, and DuckDB never sees that name as a table.
            raise StatementError(
                f"{name!r} is a warehouse table, but the local engine reads it only where the "
                f"statement names it (FROM {name.lower()}), not by a name in a string such as "
                "DuckDB's query() or query_table(): name the table in the statement"
            ) from None
        raise StatementError(
            f"unknown table {name!r}; the tables are {', '.join(TABLES)}"
        ) from None


def ddl(
    warehouse: Annotated[
        str | None,
        typer.Option(envvar="LOGQ_WAREHOUSE", help="s3://bucket/prefix the tables live in."),
    ] = None,
    athena_database: Annotated[
        str,
        typer.Option(
            envvar="LOGQ_ATHENA_DATABASE",
            help="Database of the tables: the one `logq --engine athena` queries.",
        ),
    ] = "logq",
    service: Annotated[
        list[str] | None,
        service_option("Service names for the projection enum (repeatable, or comma-separated)."),
    ] = None,
) -> None:
    """Print Athena DDL for both tables (partition projection): CREATE DATABASE IF NOT EXISTS,
    CREATE EXTERNAL TABLE IF NOT EXISTS, then ALTER TABLE ... SET TBLPROPERTIES with the service
    list, so that applying the statements again also updates a table that exists (run them one
    at a time in Athena). Table names are qualified with --athena-database, the database the
    query commands use (default logq), whatever database the Athena console has selected.

    The service enum lists --service values, else the services found in the warehouse (a
    warehouse that cannot be listed is an error, not an empty list). With no services yet the
    enum holds a placeholder and Athena finds no rows: apply the DDL again once data arrives, or
    let the aggregator keep it current (--athena-database).
    """
    with friendly():
        from athena.ddl import (
            create_all,
            longest_bytes,
            quote_ident,
            set_service_values,
            too_long,
        )
        from athena.schema import TABLES
        from athena.warehouse import open_warehouse, resolve_uri
        from cli.runner import check_local, normalise_services

        if not athena_database.strip():
            raise ValueError("--athena-database is empty; name a database (default: logq)")
        uri = resolve_uri(warehouse)
        # The names as the query commands take them: a list split at commas, refused (with the
        # stored spelling) where the writer would have rewritten them.
        names = normalise_services(service, uri) or []
        if not names:
            from athena.freshness import known_services
            from cli.storage import check_bucket

            # A local folder that is missing or a file listed as empty: "holds no services yet"
            # and the placeholder DDL, exit 0, for a typo in --warehouse.
            wh = check_local(open_warehouse(uri))
            names = known_services(wh)  # OSError (denied, unreachable): exit 1 with advice
            if not names:
                check_bucket(wh)
                from athena.ddl import PLACEHOLDER_SERVICE

                sys.stderr.write(
                    f"logq: warning: {wh.uri} holds no services yet, so the DDL's service list "
                    f"is only the placeholder {PLACEHOLDER_SERVICE!r} and Athena will find no "
                    "rows; apply `logq ddl` again "
                    "once data arrives (or run the aggregator with --athena-database, which "
                    "keeps the list current)\n"
                )
            uri = wh.uri
        if not uri.startswith("s3://"):
            sys.stderr.write(_local_ddl_note(uri, athena_database, service) + "\n")
        statements = [f"CREATE DATABASE IF NOT EXISTS {quote_ident(athena_database)}"]
        for table, create in zip(
            TABLES.values(), create_all(uri, names, athena_database), strict=True
        ):
            statements += [create, set_service_values(table, names, athena_database)]
        why = too_long(longest_bytes(statements), len(names), "Athena refuses it")
        if why is not None:
            sys.stderr.write(f"logq: warning: {why}\n")
        sys.stdout.write(";\n\n".join(statements) + ";\n")


def _local_ddl_note(uri: str, database: str, service: list[str] | None) -> str:
    """Why the DDL of a local warehouse is of no use to Athena (its LOCATION is this folder,
    and Athena reads only S3), and the two commands that give the DDL to apply: copy the
    folder to S3, then print the DDL of the copy (the options given carried over). The folder
    to copy is the one :func:`~athena.warehouse.open_warehouse` opens: with ``--service`` the
    URI is as given, and ``aws s3 sync file:///data/wh`` (or a quoted ``'~/wh'``) names no
    folder."""
    import shlex

    from athena.warehouse import open_warehouse

    folder = open_warehouse(uri).base
    again = ["logq", "ddl", "--warehouse", "s3://BUCKET/PREFIX"]
    if database != "logq":
        again += ["--athena-database", database]
    for value in service or []:
        again += ["--service", value]
    return (
        f"logq: note: {uri} is a local folder and Athena reads only S3, so the LOCATION "
        "printed is of no use to Athena; copy the folder to S3 "
        f"(aws s3 sync {shlex.quote(folder)} s3://BUCKET/PREFIX) and print the DDL to apply with "
        f"`{shlex.join(again)}`"
    )


#: ``logq services`` on Athena, the same columns with the same meaning as the local engine's:
#: per service, the hour partitions with rows in the range (``dt_from``..``dt_to``, whole hours)
#: of each table, and the newest line among them. Hours rather than line counts because the
#: local engine answers from folder listings (a line count would read every file), and so that
#: a service's row reads the same whichever engine answered it.
SERVICES_COLUMNS = ["service", "access_hours", "log_hours", "newest"]


@query_command(
    without=REQUEST_FILTERS,
    since="1d",
    since_text="every hour locally (a folder listing), 1d on Athena (a billed scan)",
    limit_text="every service",
)
def services(common: Common) -> None:
    """Known services: the hours of data each has per table and its newest line (freshness).

    Columns, on either engine: service, access_hours and log_hours (UTC hours within the range
    with data, a Parquet file, in envoy_access and container_logs), newest (the newest line of
    either table in those hours). Default range: every hour locally (it
    only lists folders), the last 1d on Athena (where it is a billed scan).
    """

    with friendly():
        if common.engine is EngineName.athena:
            _services_athena(common)
            return
        _services_local(common)


def _services_athena(common: Common) -> None:
    """``logq services`` on Athena: the canned query, whose ``newest`` is the newest line not
    stamped ahead of this clock, as locally; its ``ahead`` column becomes a note per service."""
    from datetime import UTC, datetime, timedelta

    from athena.timerange import sql_timestamp
    from cli import runner
    from cli.explain import note_ahead
    from cli.output import CLOCK_TOLERANCE_SECONDS

    cap = datetime.now(UTC) + timedelta(seconds=CLOCK_TOLERANCE_SECONDS)
    prep = runner.prepare(common, "services", "envoy_access", {"now": sql_timestamp(cap)})
    result = runner.execute(common, prep)
    if result is None:
        return
    ahead = split_ahead(result)
    runner.show(common, result, prep, title="services")
    note_ahead(ahead)


def split_ahead(result: Any) -> dict[str, Any]:
    """Take the ``ahead`` column out of a ``services`` answer: the newest time of the rows
    stamped ahead of the clock, by service (services without such rows left out)."""
    at = result.columns.index("ahead")
    ahead = {row[0]: row[at] for row in result.rows if row[at] is not None}
    result.columns = [c for i, c in enumerate(result.columns) if i != at]
    result.rows = [row[:at] + row[at + 1 :] for row in result.rows]
    return ahead


def _services_local(common: Common) -> None:
    """``logq services`` on the local engine: folder listings, plus the Parquet footers of the
    newest files of each service's newest hour with rows (``athena.freshness.newest_in_hour``)."""
    from athena.engines.result import QueryResult
    from athena.freshness import known_services
    from athena.warehouse import open_warehouse
    from cli import runner
    from cli.explain import NO_DATA_EXIT, one_level_off, showing_text, unknown_services_text
    from cli.notes import note
    from cli.output import OutputFormat

    runner.check_filters(common)
    hours = None  # every hour, unless --since/--until narrow it
    if common.since or common.until:
        from athena.timerange import TimeRange

        span = TimeRange.parse(common.since, common.until, open_start=True)
        hours = (span.dt_from, span.dt_to)
    wh = runner.check_local(open_warehouse(common.warehouse))
    wanted = runner.normalise_services(common.service, common.warehouse)
    names = known_services(wh)
    unknown = [s for s in wanted or [] if s not in names]
    if names and wanted and unknown and len(unknown) < len(wanted):
        rest = showing_text([s for s in wanted if s in names])
        note("logq: note: " + unknown_services_text("the warehouse", unknown, names, rest))
    chosen = [svc for svc in names if wanted is None or svc in wanted]
    if common.dry_run:
        _services_dry_run(wh, chosen, hours)
        return
    found, ahead = _freshness(wh, chosen, hours)
    rows = [tuple(f) for f in found if f.access_hours or f.log_hours]
    result = QueryResult(columns=list(SERVICES_COLUMNS), rows=rows, engine="local")
    nothing = False  # nothing to ask: every --service unknown, or no data at all (exit 3)
    if not rows:
        if found:
            reason = f"no data between {hours[0]}h and {hours[1]}h UTC" if hours else ""
        elif wanted and names:
            reason = unknown_services_text("the warehouse", wanted, names)
            nothing = True
        else:
            from cli.storage import check_bucket

            check_bucket(wh)  # a missing bucket lists as empty: say so, not "no data"
            off = one_level_off(wh)
            reason = f"the warehouse {wh.uri} holds no data yet" + (f"; {off}" if off else "")
            nothing = True
        reason = reason or "no data in the warehouse's partitions"
    if not rows and common.fmt in (OutputFormat.table, OutputFormat.markdown):
        sys.stdout.write(f"No results: {reason}\n")  # one line, as the canned queries say it
    else:
        if not rows:
            note(f"logq: no results: {reason}")
        runner.show(common, result, title="services", as_named=False, total=len(rows))
    from cli.explain import note_ahead

    note_ahead(ahead)
    if nothing:
        raise typer.Exit(NO_DATA_EXIT)


def _freshness(
    wh: Any, chosen: list[str], hours: tuple[str, str] | None
) -> tuple[list[Any], dict[str, Any]]:
    """Each service's :class:`~athena.freshness.Freshness`, its newest line being the newest
    not stamped in the future (as the stale note and empty answers count it: rows from a clock
    that is ahead would hide a stall), and the newest time of those ahead, by service.

    On S3 a few services at once (:data:`athena.freshness.S3_SERVICE_THREADS`), their rows in
    ``chosen`` order and the error the loop would raise (the first failing service's); a
    local warehouse goes through them in turn, in this thread, as before."""
    from athena.freshness import S3_SERVICE_THREADS
    from athena.threads import ordered_list

    workers = S3_SERVICE_THREADS if wh.is_s3 else 1
    each = ordered_list(
        lambda svc: _service_freshness(wh, svc, hours), chosen, workers, name="logq-services"
    )
    found = [fresh for fresh, _ in each]
    ahead = {fresh.service: later for fresh, later in each if later is not None}
    return found, ahead


def _service_freshness(
    wh: Any, svc: str, hours: tuple[str, str] | None
) -> tuple[Any, datetime | None]:
    """One service's :class:`~athena.freshness.Freshness` (its newest line at or before now)
    and the newest time of its rows stamped ahead of now (None: none). Reads only: services
    can be asked at once (:func:`_freshness`)."""
    from athena.freshness import Tops, freshness_in, service_hours
    from cli.explain import newest_and_ahead

    listed = service_hours(wh, svc, hours)  # once: asked again below with rows ahead
    tops: Tops = {}  # footers read once: asked again below, only columns are read
    fresh = freshness_in(wh, svc, listed, tops=tops)

    def newest(before: datetime | None) -> datetime | None:
        if before is None:
            return fresh.newest
        return freshness_in(wh, svc, listed, before, tops).newest

    last, later = newest_and_ahead(newest)
    if later is not None:
        fresh = fresh._replace(newest=last)
    return fresh, later


def _services_dry_run(wh: Any, chosen: list[str], hours: tuple[str, str] | None) -> None:
    """What ``services`` would read locally: no SQL, folder listings and newest hours.

    Each service's hours are a listing, a round trip each on S3: there a few are listed at
    once (:data:`athena.freshness.S3_SERVICE_THREADS`, as :func:`_freshness` does), the lines
    in the same order; a local warehouse lists them in turn, in this thread."""
    from athena.freshness import S3_SERVICE_THREADS
    from athena.partitions import hours_with_data
    from athena.threads import ordered_list

    out = sys.stdout
    out.write(
        f"-- engine: local over {wh.uri}: no SQL; lists the service=/dt= folders of both tables "
        "and reads the Parquet footers of the newest files of each service's newest hour with "
        "rows\n"
    )
    pairs = [(table, svc) for table in ("envoy_access", "container_logs") for svc in chosen]
    each = ordered_list(
        lambda pair: hours_with_data(wh, *pair, hours),
        pairs,
        S3_SERVICE_THREADS if wh.is_s3 else 1,
        name="logq-services",
    )
    for (table, svc), dts in zip(pairs, each, strict=True):
        if dts:
            out.write(f"--   {table}/service={svc}: {len(dts)} hours, newest dt={dts[-1]}\n")
