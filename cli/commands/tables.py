"""Commands about the tables themselves: ad-hoc ``sql``, the Athena ``ddl``, the ``services``."""

import sys
from typing import Annotated

import typer

from cli.errors import friendly
from cli.options import Common, EngineName, query_command


@query_command
def sql(
    common: Common,
    statement: Annotated[str, typer.Argument(help="One Athena (Trino) SQL statement.")],
) -> None:
    """Ad-hoc Athena SQL against envoy_access and container_logs.

    Locally, --service/--since/--until restrict which partitions the tables show (all when
    absent); on Athena the statement runs exactly as written.
    """
    from cli import runner

    with friendly():
        if common.engine is EngineName.athena:
            if common.service or common.since or common.until:
                runner.note(
                    "logq: note: on Athena the statement runs as written; --service/--since/"
                    "--until apply only to the local engine (put them in the WHERE clause)"
                )
            if common.dry_run:
                sys.stdout.write("-- engine: athena (runs as written)\n" + statement.strip() + "\n")
                return
            result = runner.make_engine(common).run(statement, {})
        else:
            from athena.queries import tables_of
            from athena.schema import TABLES
            from athena.timerange import TimeRange

            engine = runner.make_engine(common)
            services = runner.normalise_services(common.service)
            trange = (
                TimeRange.parse(common.since, common.until)
                if common.since or common.until
                else None
            )
            scopes = {
                t: engine.plan(t, services, trange) for t in tables_of(statement) & set(TABLES)
            }
            if common.dry_run:
                for t, parts in scopes.items():
                    sys.stdout.write(f"-- {t}: {len(parts)} partitions\n")
                    for p in parts:
                        sys.stdout.write(f"--   {p.relative}\n")
                sys.stdout.write(engine.prepare(statement, {}, scopes)[0] + "\n")
                return
            result = engine.run(statement, {}, scopes)
        rows = result.rows[: common.limit] if common.limit else result.rows
        runner.show(common, result, rows=rows)


def ddl(
    warehouse: Annotated[
        str | None,
        typer.Option(envvar="LOGQ_WAREHOUSE", help="s3://bucket/prefix the tables live in."),
    ] = None,
    athena_database: Annotated[
        str | None,
        typer.Option(envvar="LOGQ_ATHENA_DATABASE", help="Qualify table names with a database."),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", help="Service names for the projection enum (repeatable)."),
    ] = None,
) -> None:
    """Print Athena CREATE EXTERNAL TABLE statements for both tables (partition projection).

    The service enum lists --service values, else the services found in the warehouse.
    """
    with friendly():
        from athena.ddl import create_all
        from athena.partitions import list_services
        from athena.warehouse import open_warehouse, resolve_uri

        uri = resolve_uri(warehouse)
        names = list(service or [])
        if not names:
            try:
                wh = open_warehouse(uri)
                names = sorted(
                    set(list_services(wh, "envoy_access"))
                    | set(list_services(wh, "container_logs"))
                )
                uri = wh.uri
            except OSError:
                names = []
        if not uri.startswith("s3://"):
            sys.stderr.write(
                f"logq: note: {uri} is not an s3:// location; Athena reads only S3 "
                "(pass --warehouse s3://bucket/prefix)\n"
            )
        sys.stdout.write(";\n\n".join(create_all(uri, names, athena_database)) + ";\n")


@query_command
def services(common: Common) -> None:
    """Known services, the hours of data each has and the newest line (freshness)."""
    from cli import runner

    with friendly():
        if common.engine is EngineName.athena:
            prep = runner.prepare(common, "services", "envoy_access", default_since="1d")
            result = runner.execute(common, prep)
            if result is not None:
                runner.show(common, result, prep, title="services")
            return
        from athena.engines.result import QueryResult
        from athena.freshness import known_services, service_freshness
        from athena.warehouse import open_warehouse

        wh = open_warehouse(common.warehouse)
        wanted = runner.normalise_services(common.service)
        names = known_services(wh)
        rows = [
            tuple(service_freshness(wh, svc)) for svc in names if wanted is None or svc in wanted
        ]
        columns = ["service", "access_hours", "log_hours", "newest"]
        result = QueryResult(columns=columns, rows=rows, engine="local")
        if not rows:
            reason = (
                f"no service matches {', '.join(wanted)}; known: {', '.join(names)}"
                if wanted and names
                else f"the warehouse {wh.uri} holds no data yet"
            )
            runner.note(f"logq: no results: {reason}")
        runner.show(common, result, title="services")
