"""Running one query for a CLI command: engine choice, parameters, dry-run, empty-result notes.

The commands in :mod:`cli.app` only say *which* query with *which* extra parameters; everything
they share (time range, services, pruning, engines, output, errors) is here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cli.options import Common, EngineName
from cli.output import OutputFormat

if TYPE_CHECKING:
    from athena.engines.result import QueryResult
    from athena.partitions import Partition
    from athena.timerange import TimeRange
    from athena.warehouse import Warehouse


def note(message: str) -> None:
    """A line for the person at the terminal: always stderr, so pipes stay clean."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def shown(value: str, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut when long (a 100 KB value is not echoed)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def normalise_services(values: list[str] | None) -> list[str] | None:
    """``--service`` values as stored partition values (None: all services).

    Case is folded (the writer stores lower case); anything else the writer would have rewritten
    is refused with the name it would be stored as, so a quote or a ``..`` never reaches a query.
    """
    if not values:
        return None
    from athena.schema import sanitize_service

    out: list[str] = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                name = sanitize_service(part)
                if name != part.strip().lower():
                    raise ValueError(
                        f"--service {shown(part)} is not a service name (service names are "
                        "stored as lower-case letters, digits, '_', '.', '-'); did you mean "
                        f"{shown(name)}?"
                    )
                if name not in out:
                    out.append(name)
    return out or None


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
    from athena.timerange import TimeRange

    trange = TimeRange.parse(
        common.since, common.until, default=default_since or common.default_since
    )
    services = normalise_services(common.service)
    params: dict[str, Any] = {
        **trange.sql_params(),
        "all_services": services is None,
        "services": services or [""],
        "path_prefix": common.path or "",
        "method": normalise_method(common.method),
        "row_limit": common.limit or default_limit or common.default_limit,
    }
    params.update(extra or {})
    return Prepared(name, table, load(name).text, params, trange, services)


def make_engine(common: Common) -> Any:
    """The engine ``--engine`` names, configured from the options."""
    if common.engine is EngineName.athena:
        from athena.engines.athena import AthenaEngine

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


def check_local(wh: Warehouse) -> Warehouse:
    """A local warehouse must be an existing directory: a missing one is most likely a typo,
    better said than answered with "no results" (ValueError: exit 2, one line)."""
    from pathlib import Path

    if wh.uri.startswith("s3://"):
        return wh
    path = Path(wh.base)
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(
            f"the warehouse {wh.base} {problem}; check --warehouse / LOGQ_WAREHOUSE, or run "
            "`logq demo` to make one"
        )
    return wh


#: Partitions --dry-run lists one by one on Athena; past that, a range per service.
DRY_RUN_HOURS = 48


def athena_partitions(prep: Prepared) -> list[str]:
    """The partitions Athena's projection will read for a prepared query (for --dry-run)."""
    svcs = prep.services or ["*"]
    count = prep.trange.hour_count()
    if count > DRY_RUN_HOURS:
        span = f"{prep.trange.dt_from}..{prep.trange.dt_to} ({count:,} hours)"
        return [f"{prep.table}/service={s}/dt={span}" for s in svcs]
    hours = prep.trange.hours()
    return [f"{prep.table}/service={s}/dt={h}" for s in svcs for h in hours]


def dry_run(common: Common, engine: Any, prep: Prepared) -> None:
    """Print the final SQL for the engine and the partitions it would read."""
    import json

    out = sys.stdout
    if common.engine is EngineName.athena:
        from athena.queries import athena_literal_sql

        parts = athena_partitions(prep)
        out.write(f"-- engine: athena (database {common.athena_database})\n")
        count = prep.trange.hour_count() * len(prep.services or ["*"])
        out.write(f"-- partitions ({count:,}, pruned by partition projection):\n")
        for p in parts:
            out.write(f"--   {p}\n")
        out.write(athena_literal_sql(prep.sql, prep.params).strip() + "\n")
        return
    for table in prep.scopes:
        parts = prep.scopes[table]
        files = sum(len(p.files) for p in parts)
        size = sum(p.bytes for p in parts)
        out.write(
            f"-- engine: local (DuckDB) over {engine.warehouse.uri}\n"
            f"-- {table}: {len(parts)} partitions, {files} files, {size:,} bytes\n"
        )
        for p in parts:
            out.write(f"--   {p.relative} ({len(p.files)} files, {p.bytes:,} bytes)\n")
    sql, bound = engine.prepare(prep.sql, prep.params, prep.scopes)
    out.write(sql + "\n")
    out.write("-- parameters: " + json.dumps(bound, default=str) + "\n")


def execute(common: Common, prep: Prepared) -> QueryResult | None:
    """Run a prepared canned query (or print it for --dry-run, returning None)."""
    if common.dry_run and common.engine is EngineName.athena:
        dry_run(common, None, prep)  # needs no connection, region or credentials
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
        return engine.run(prep.sql, prep.params, prep.scopes)
    if common.max_scan_bytes is not None and common.warehouse:
        check_athena_budget(common, prep)
    return engine.run(prep.sql, prep.params)


def check_athena_budget(common: Common, prep: Prepared) -> None:
    """Refuse an Athena query whose partitions hold more bytes than ``--max-scan-bytes``.

    The files in range are an upper bound of what Athena scans (columnar reads scan less), so
    this never lets an over-budget query start; Athena's own figure is checked again while the
    query runs.
    """
    from athena.engines.result import ScanBudgetError
    from athena.partitions import plan
    from athena.queries import tables_of
    from athena.schema import TABLES
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    # Every table the statement reads (``services`` reads both), not only the main one.
    tables = sorted(tables_of(prep.sql) & set(TABLES)) or [prep.table]
    size = sum(p.bytes for t in tables for p in plan(wh, t, prep.services, prep.trange))
    if common.max_scan_bytes is not None and size > common.max_scan_bytes:
        raise ScanBudgetError(
            f"the partitions in range hold {size:,} bytes, over --max-scan-bytes "
            f"{common.max_scan_bytes:,}; the query was not started. Narrow --since/--until or "
            "--service"
        )


def unknown_services_text(table: str, unknown: list[str], known: list[str]) -> str:
    """``unknown service 'x' in <table>; known: a, b`` (at most 30 known names)."""
    shown = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
    return f"unknown service {', '.join(map(repr, unknown))} in {table}; known: {shown}"


def note_unknown_services(
    wh: Warehouse, table: str, services: list[str] | None, all_too: bool = False
) -> None:
    """Name the ``--service`` values ``table`` has no folder for, on stderr, with the known ones.

    A name that matches nothing is dropped by the query's ``IN (...)`` without a word; with
    ``recipe,recipee`` the answer would look complete. When *every* name is unknown the
    canned queries say so in their "no results" reason instead (``all_too`` False); ``logq
    sql``, which has no such reason, asks for that case too. Like that reason, this is a note:
    the answer (possibly empty) is still printed and the exit code stays 0.
    """
    if not services:
        return
    from athena.partitions import list_services

    known = list_services(wh, table)
    unknown = [s for s in services if s not in known]
    if not unknown or (len(unknown) == len(services) and not all_too):
        return
    if not known:
        return  # an empty table is explained by the "no data at all" reason, not per name
    found = [s for s in services if s in known]
    rest = f"; showing {', '.join(found)} only" if found else ""
    note(f"logq: note: {unknown_services_text(table, unknown, known)}{rest}")


def explain_empty(common: Common, prep: Prepared) -> str:
    """Why a query returned nothing, in words that say what to try next."""
    from athena.timerange import iso_utc

    span = f"between {iso_utc(prep.trange.since)} and {iso_utc(prep.trange.until)}"
    if common.engine is not EngineName.local:
        hint = f" for {', '.join(prep.services)}" if prep.services else ""
        return (
            f"no matching rows {span}{hint}; `logq services --engine athena --since 1d` lists "
            "the services with recent data"
        )
    from athena.freshness import newest_data
    from athena.partitions import list_services
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    known = list_services(wh, prep.table)
    if not known:
        from cli.storage import check_bucket

        check_bucket(wh)  # a missing bucket lists as empty: say so, not "no data"
        return (
            f"the warehouse {wh.uri} has no {prep.table} data at all; check --warehouse / "
            "LOGQ_WAREHOUSE, or run `logq demo` to make some"
        )
    if prep.services:
        unknown = [s for s in prep.services if s not in known]
        if len(unknown) == len(prep.services):
            return unknown_services_text(prep.table, unknown, known)
    if not prep.scopes.get(prep.table):
        newest = newest_data(wh, prep.table, prep.services)
        where = f" for {', '.join(prep.services)}" if prep.services else ""
        tail = f"; newest data{where}: {iso_utc(newest)}" if newest else ""
        return f"no {prep.table} data {span}{where}{tail}; widen --since"
    files = sum(len(p.files) for p in prep.scopes[prep.table])
    return (
        f"no matching rows {span} ({len(prep.scopes[prep.table])} partitions, {files} files read)"
    )


def show(
    common: Common,
    result: QueryResult,
    prep: Prepared | None = None,
    title: str | None = None,
    columns: list[str] | None = None,
    rows: list[tuple[Any, ...]] | None = None,
) -> None:
    """Print a result in ``--format``; empty results get a reason (stderr for json/csv)."""
    from cli.output import emit

    columns = columns if columns is not None else result.columns
    rows = rows if rows is not None else result.rows
    if common.limit:  # most queries LIMIT in SQL; this holds --limit for every command
        rows = rows[: common.limit]
    human = common.fmt in (OutputFormat.table, OutputFormat.markdown)
    if not rows and prep is not None:
        reason = explain_empty(common, prep)
        if human:
            sys.stdout.write(f"No results: {reason}\n")
            return
        note(f"logq: no results: {reason}")
    emit(common.fmt, columns, rows, title=title if common.fmt is OutputFormat.table else None)
    if result.engine == "athena":
        from athena.engines.athena import cost_line

        note(cost_line(result))
