"""Running one query for a CLI command: engine choice, parameters, dry-run, empty-result notes.

The commands in :mod:`cli.app` only say *which* query with *which* extra parameters; everything
they share (time range, services, pruning, engines, output, errors) is here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

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
    stale_checked: bool = False
    """The newest data was checked for staleness (once per preparation)."""
    empty_hint: str = ""
    """What to try next when the answer is empty, after the reason (e.g. ``trace``'s tail)."""


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

    _noted.clear()  # a new invocation (tests run many in one process) notes afresh
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
        "raw_paths": False,
    }
    params.update(extra or {})
    return Prepared(name, table, load(name).text, params, trange, services)


def make_engine(common: Common) -> Any:
    """The engine ``--engine`` names, configured from the options."""
    if common.engine is EngineName.athena:
        from athena.engines.athena import AthenaEngine

        check_athena_output(common.athena_output)
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


def check_athena_output(output: str | None) -> None:
    """``--athena-output`` must be an ``s3://bucket/...`` location: Athena writes results only
    to S3, and a local path would fail later with an error that does not name the option."""
    if output is None:
        return
    if not output.startswith("s3://") or len(output) <= len("s3://") or output[5] == "/":
        raise ValueError(
            f"--athena-output {shown(output)} is not an S3 location; Athena writes its results "
            "to S3: use s3://bucket/prefix/ (or leave it out when the workgroup sets one)"
        )


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
        result = engine.run(prep.sql, prep.params, prep.scopes)
    else:
        if common.max_scan_bytes is not None and common.warehouse:
            check_athena_budget(common, prep)
        result = engine.run(prep.sql, prep.params)
    note_stale(common, prep)
    return result


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


#: Known services listed in full by an unknown-service message; with more, only the closest
#: names are (a list of 200 hides the one that was meant).
LIST_KNOWN_MAX = 10


def unknown_services_text(table: str, unknown: list[str], known: list[str], rest: str = "") -> str:
    """``unknown service 'chekout' in <table>; known: a, b; did you mean 'checkout'?``.

    The closest known names (difflib) end the message; the known names are listed when there
    are few (or when none is close), else counted. ``rest`` goes before the suggestion.
    """
    import difflib

    close: list[str] = []
    for name in unknown:
        for match in difflib.get_close_matches(name, known, n=3, cutoff=0.6):
            if match not in close:
                close.append(match)
    text = f"unknown service {', '.join(map(repr, unknown))} in {table}"
    if len(known) <= LIST_KNOWN_MAX or not close:
        listed = ", ".join(known[:30]) + (f" ... ({len(known)} in all)" if len(known) > 30 else "")
        text += f"; known: {listed}"
    else:
        text += f" ({len(known)} known services; `logq services` lists them)"
    text += rest
    if close:
        text += f"; did you mean {' or '.join(map(repr, close))}?"
    return text


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
    note_once(f"logq: note: {unknown_services_text(table, unknown, known, rest)}")


#: Notes printed by :func:`note_once` since the last :func:`prepare`.
_noted: set[str] = set()

#: Exit status when the question cannot have an answer: every ``--service`` is unknown, or the
#: warehouse holds no data of the table at all (a typo, or a path one level off). The empty
#: answer is still printed; 3 lets a script tell it from "no matching rows" (0).
NO_DATA_EXIT = 3

#: The canned queries that group by service: the service column is dropped when exactly one
#: ``--service`` is given (it would repeat that one name on every row).
BY_SERVICE = frozenset({"errors", "latency", "top", "flags"})

#: Canned queries over envoy_access whose empty answer is explained by how many requests the
#: window held (one ``requests`` query on the same partitions, locally).
COUNTED = frozenset({"errors", "latency", "top", "flags", "upstreams", "timeline"})


def no_data_reason(common: Common, prep: Prepared) -> str | None:
    """Why the question has no answer at all (locally): the table has no data, or every
    ``--service`` is unknown. None when the data is there (an empty answer is then a real one)."""
    if common.engine is not EngineName.local:
        return None
    from athena.partitions import list_services
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    known = list_services(wh, prep.table)
    if not known:
        from cli.storage import check_bucket

        check_bucket(wh)  # a missing bucket lists as empty: say so, not "no data"
        off = one_level_off(wh)
        return f"the warehouse {wh.uri} has no {prep.table} data at all; " + (
            off or "check --warehouse / LOGQ_WAREHOUSE, or run `logq demo` to make some"
        )
    if prep.services:
        unknown = [s for s in prep.services if s not in known]
        if len(unknown) == len(prep.services):
            return unknown_services_text(prep.table, unknown, known)
    return None


def one_level_off(wh: Warehouse) -> str | None:
    """``did you mean --warehouse X?`` when ``wh`` is one folder off a real warehouse: its parent
    (a folder holding a warehouse), or a table or partition folder inside one."""
    import pyarrow.fs as pafs

    from athena.schema import TABLES

    root = wh.base.rstrip("/")
    prefix = "s3://" if wh.is_s3 else ""
    name = root.rsplit("/", 1)[-1]
    if _inside(name):
        parts = root.split("/")
        while parts and _inside(parts[-1]):
            parts.pop()
        if parts and parts != [""]:
            up = "/".join(parts)
            return (
                f"{wh.uri} is a folder inside a warehouse: did you mean --warehouse {prefix}{up}?"
            )
    try:
        infos = wh.fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.Directory:
                continue
            inner = wh.fs.get_file_info(pafs.FileSelector(info.path, allow_not_found=True))
            if any(i.base_name in TABLES for i in inner):
                return (
                    f"{info.base_name}/ inside it is a warehouse: did you mean --warehouse "
                    f"{prefix}{info.path}?"
                )
    except OSError:
        return None
    return None


def _inside(name: str) -> bool:
    """Whether a folder name is one a warehouse has inside it (a table or a partition)."""
    from athena.schema import TABLES

    return name in TABLES or name.startswith(("service=", "dt="))


def explain_empty(common: Common, prep: Prepared, data_known: bool = False) -> str:
    """Why a query returned nothing, in words that say what to try next (``data_known``: the
    caller found :func:`no_data_reason` None already)."""
    from athena.timerange import iso_utc

    span = f"between {iso_utc(prep.trange.since)} and {iso_utc(prep.trange.until)}"
    hint = f"; {prep.empty_hint}" if prep.empty_hint else ""
    if common.engine is not EngineName.local:
        where = f" for {', '.join(prep.services)}" if prep.services else ""
        return (
            f"no matching rows {span}{where}; `logq services --engine athena --since 1d` lists "
            f"the services with recent data{hint}"
        )
    reason = None if data_known else no_data_reason(common, prep)
    if reason is not None:
        return reason
    return explain_no_rows(common, prep, span, hint)


def explain_no_rows(common: Common, prep: Prepared, span: str, hint: str) -> str:
    """The local reason for an empty answer over data that exists: where the data is when the
    window has none, else how many requests the window had."""
    from athena.timerange import iso_utc
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    where = f" for {', '.join(prep.services)}" if prep.services else ""
    if not prep.scopes.get(prep.table):
        return no_partitions_reason(wh, prep, span, where) + hint
    files = sum(len(p.files) for p in prep.scopes[prep.table])
    read = f"{len(prep.scopes[prep.table])} partitions, {files} files read"
    if prep.table == "envoy_access" and prep.name in COUNTED:
        requests = count_requests(common, prep)
        if requests:
            return f"{requests:,} requests {span}{where}, none matched ({read}){hint}"
        newest = newest_data_quick(wh, prep.table, prep.services)
        tail = f"; newest data{where}: {iso_utc(newest)}" if newest else ""
        return f"no requests {span}{where}{filters_text(common)} ({read}){tail}{hint}"
    return f"no matching rows {span} ({read}){hint}"


def filters_text(common: Common) -> str:
    """`` matching --path /x --method GET`` for the filters given (empty without any)."""
    given = [f"--{n} {v}" for n, v in (("path", common.path), ("method", common.method)) if v]
    return f" matching {' '.join(given)}" if given else ""


def count_requests(common: Common, prep: Prepared) -> int:
    """Requests in the window with the common filters (one local query, same partitions)."""
    from athena.queries import load

    engine = make_engine(common)
    result = engine.run(load("requests").text, prep.params, {prep.table: prep.scopes[prep.table]})
    return int(result.rows[0][0]) if result.rows else 0


def no_partitions_reason(wh: Warehouse, prep: Prepared, span: str, where: str) -> str:
    """No partition in range: say where the data is, and which way to move the window."""
    from athena.freshness import newest_data
    from athena.timerange import as_utc, iso_utc

    newest = newest_data(wh, prep.table, prep.services)
    text = f"no {prep.table} data {span}{where}"
    if newest is None:
        return f"{text}; widen --since"
    oldest = oldest_data(wh, prep.table, prep.services)
    if oldest is not None and prep.trange.until <= as_utc(oldest):
        return (
            f"{text}; the data{where} starts at {iso_utc(oldest)}: move --since/--until later "
            f"(newest: {iso_utc(newest)})"
        )
    if prep.trange.since > as_utc(newest):
        return f"{text}; newest data{where}: {iso_utc(newest)}; start --since before it"
    return f"{text} (a gap in the data); newest data{where}: {iso_utc(newest)}"


def oldest_data(wh: Warehouse, table: str, services: list[str] | None) -> datetime | None:
    """Oldest ``timestamp`` of ``services`` (None: all) from their oldest hour with files."""
    from athena.partitions import list_dts, list_files, list_services

    chosen = list_services(wh, table) if services is None else services
    firsts = []
    for svc in chosen:
        for dt in list_dts(wh, table, svc):
            files = list_files(wh, wh.path(table, f"service={svc}", f"dt={dt}"))
            if files:
                firsts.append((dt, files))
                break
    if not firsts:
        return None
    dt0 = min(dt for dt, _ in firsts)
    found = [footer_bound(wh, f.path, low=True) for dt, fs in firsts if dt == dt0 for f in fs]
    values = [v for v in found if v is not None]
    return min(values) if values else None


#: A newest row older than this, with ``--until`` now, gets a note: the aggregator flushes every
#: 10 s by default and docs/operations.md suggests 60-300 s in production, so up to five minutes
#: of lag is routine there; 2 minutes flags it early, and the note says both readings ("not
#: flushed yet" or "stalled") instead of guessing. A note, never an error: the answer stands.
STALE_AFTER_SECONDS = 120

#: Footers read per partition at most when looking for the newest row (the newest files of
#: each writer node, by name: names carry a per-node increasing segment number).
MAX_FOOTERS = 16


def note_once(message: str) -> None:
    """:func:`note` a message once per command (``trace`` and ``tail --follow`` run their query
    more than once); :func:`prepare` starts each command with none noted."""
    if message not in _noted:
        _noted.add(message)
        note(message)


def note_stale(common: Common, prep: Prepared) -> None:
    """With ``--until`` now, say on stderr when the newest row of the selected services is old:
    rows after it may not be flushed yet, or the pipeline stalled. "No errors" read from a
    window the pipeline never filled is the trap this closes.

    Cost: none beyond Parquet footers when the window has data: the newest partition the query
    already planned holds the newest row (``--until`` is now), and the footers of its newest
    files give it (row-group statistics; no data pages). A service with nothing in the window
    costs one listing of its hours. On Athena no query is run: the check uses the warehouse
    listing when ``--warehouse`` names the s3:// location, and is skipped otherwise (a second
    Athena query would add seconds and a 10 MB minimum charge to every call).
    """
    if common.until is not None or common.dry_run or prep.stale_checked:
        return
    prep.stale_checked = True  # once: ``tail --follow`` runs the query every poll
    if common.engine is EngineName.athena and not (common.warehouse or "").startswith("s3://"):
        return
    from athena.engines.result import EngineError
    from athena.timerange import as_utc, iso_utc
    from athena.warehouse import open_warehouse

    try:
        wh = open_warehouse(common.warehouse)
        planned = prep.scopes.get(prep.table) or []
        for name in (prep.services or [None])[:10]:
            parts = [p for p in planned if name is None or p.service == name]
            if parts:
                newest = newest_in(wh, parts)
            else:
                newest = newest_data_quick(wh, prep.table, None if name is None else [name])
            if newest is None:
                continue
            age = (prep.trange.until - as_utc(newest)).total_seconds()
            if age > STALE_AFTER_SECONDS:
                who = f"for {name}" if name else f"in {prep.table}"
                note_once(
                    f"logq: note: newest data {who}: {iso_utc(newest)} ({human_age(age)} ago): "
                    "rows after it may not be flushed yet or the pipeline is stalled (or there "
                    "was no traffic since)"
                )
    except (OSError, EngineError):
        return  # a note is best effort; the query itself reports storage failures


def human_age(seconds: float) -> str:
    """``45s``, ``9m``, ``3h05m``, ``2d04h``."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def newest_data_quick(wh: Warehouse, table: str, services: list[str] | None) -> datetime | None:
    """Newest ``timestamp`` of ``services`` (None: all) from the Parquet footers of their newest
    hours: one listing per service finds its hours, then :func:`newest_in`."""
    from athena.partitions import Partition, list_dts, list_files, list_services

    chosen = list_services(wh, table) if services is None else services
    parts = [
        Partition(table, svc, dt, list_files(wh, wh.path(table, f"service={svc}", f"dt={dt}")))
        for svc in chosen
        for dt in list_dts(wh, table, svc)[-2:]
    ]
    return newest_in(wh, parts)


def newest_in(wh: Warehouse, parts: list[Partition]) -> datetime | None:
    """Newest ``timestamp`` in ``parts``, read from the footers of the newest files of their
    newest hour; an hour whose files hold no rows falls back to the hour before it."""
    for dt in sorted({p.dt for p in parts}, reverse=True):
        files = [f.path for p in parts if p.dt == dt for f in p.files]
        values = [footer_bound(wh, path) for path in newest_files(files)]
        found = [v for v in values if v is not None]
        if found:
            return max(found)
    return None


def newest_files(paths: Iterable[str]) -> list[str]:
    """The last files by name of each writer node (``<node>-<seq>-<part>.parquet``), at most
    :data:`MAX_FOOTERS` in all; other names count as one node each."""
    import re

    groups: dict[str, list[str]] = {}
    for path in paths:
        match = re.fullmatch(r"(.*)-\d{16}-\d{4}\.parquet", path.rsplit("/", 1)[-1])
        groups.setdefault(match.group(1) if match else path, []).append(path)
    picked = [p for g in groups.values() for p in sorted(g)[-2:]]
    return sorted(picked)[-MAX_FOOTERS:]


def footer_bound(wh: Warehouse, path: str, low: bool = False) -> datetime | None:
    """Max (or min, ``low``) ``timestamp`` of one file from its footer's row-group statistics;
    the column itself is read only when a row group has none. None for a file with no rows."""
    from datetime import UTC
    from datetime import datetime as dt_type

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from athena.engines.local import unreadable_file

    try:
        meta = pq.read_metadata(path, filesystem=wh.fs)
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        col = names.index("timestamp")
        bounds = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if group.num_rows == 0:
                continue
            stats = group.column(col).statistics
            if stats is None or not stats.has_min_max:
                table = pq.read_table(path, columns=["timestamp"], filesystem=wh.fs)
                value = (pc.min if low else pc.max)(table["timestamp"]).as_py()
                return None if value is None else _utc(value)
            bounds.append(stats.min if low else stats.max)
    except (pa.ArrowException, ValueError) as exc:
        raise unreadable_file(path, exc) from exc
    if not bounds:
        return None
    values = [
        dt_type.fromtimestamp(v / 1000, UTC) if isinstance(v, int) else _utc(v) for v in bounds
    ]
    return min(values) if low else max(values)


def _utc(value: datetime) -> datetime:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def show(
    common: Common,
    result: QueryResult,
    prep: Prepared | None = None,
    title: str | None = None,
    columns: list[str] | None = None,
    rows: list[tuple[Any, ...]] | None = None,
) -> None:
    """Print a result in ``--format``; empty results get a reason (stderr for json/csv).

    A ``total_rows`` column (the canned queries count their rows before the LIMIT) is dropped
    and turns into "showing 50 of 124 rows" when the limit cut rows. The service column of the
    queries that group by service is dropped when exactly one ``--service`` was given. When the
    question had no possible answer (:func:`no_data_reason`), the exit status is
    :data:`NO_DATA_EXIT`.
    """
    from cli.output import emit

    columns = list(columns if columns is not None else result.columns)
    rows = list(rows if rows is not None else result.rows)
    total = None
    if "total_rows" in columns:
        at = columns.index("total_rows")
        total = int(rows[0][at]) if rows else 0
        columns, rows = _without(columns, rows, at)
    if (
        prep is not None
        and prep.name in BY_SERVICE
        and "service" in columns
        and one_service(common, prep)
    ):
        columns, rows = _without(columns, rows, columns.index("service"))
    if common.limit:  # most queries LIMIT in SQL; this holds --limit for every command
        rows = rows[: common.limit]
    human = common.fmt in (OutputFormat.table, OutputFormat.markdown)
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
    emit(common.fmt, columns, rows, title=title if common.fmt is OutputFormat.table else None)
    if total is not None and total > len(rows):
        note(f"logq: showing {len(rows):,} of {total:,} rows (raise --limit)")
    if result.engine == "athena":
        from athena.engines.athena import cost_line

        note(cost_line(result))
    if exit_code:
        raise typer.Exit(exit_code)


def one_service(common: Common, prep: Prepared) -> bool:
    """Whether the ``--service`` values name exactly one service (locally: one that the table
    has; ``-s recipe,recipee`` is recipe alone, with a note on the unknown name)."""
    if not prep.services:
        return False
    if len(prep.services) == 1 or common.engine is not EngineName.local:
        return len(prep.services) == 1
    from athena.partitions import list_services
    from athena.warehouse import open_warehouse

    known = set(list_services(open_warehouse(common.warehouse), prep.table))
    return len([s for s in prep.services if s in known]) == 1


def _without(
    columns: list[str], rows: list[tuple[Any, ...]], at: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``columns`` and ``rows`` without column ``at``."""
    return columns[:at] + columns[at + 1 :], [r[:at] + r[at + 1 :] for r in rows]
