"""``logq sql`` on Athena: the flags scope the statement as they scope the local engine's tables.

Locally ``--service``/``--since``/``--until`` restrict the rows the tables show; on Athena the
same flags wrap each table reference of the statement in a subquery with ``dt``, ``service``
and ``timestamp`` conditions (:mod:`athena.scoped`), so both engines answer the same and Athena
prunes partitions. Without the flags the statement is sent as typed, with a note when it would
make Athena consider every hour of the ``dt`` projection; ``--max-scan-bytes`` is checked
against the partitions in scope before the statement starts.
"""

from __future__ import annotations

import sys
from typing import Any

from cli.commands.tables import flag_scope, split_explain
from cli.options import Common


def run_on_athena(common: Common, statement: str) -> tuple[Any, str | None]:
    """``logq sql`` on Athena: the statement with its table references scoped by the flags
    (:mod:`athena.scoped`, the local engine's meaning), sent as typed when no flag is given;
    a note when Athena may consider every partition; ``--max-scan-bytes`` checked before it
    starts; ``--service`` names compared with each table's service enum, as the canned
    commands do. The result (None after ``--dry-run``, which needs no connection), and why
    the question has no answer when no ``--service`` is in the enum of any table read (None
    otherwise: the caller exits :data:`cli.explain.NO_DATA_EXIT` when the answer is empty)."""
    from athena.scoped import Scope, scope_statement
    from cli import runner

    services, trange = flag_scope(common)
    scope = Scope(services, trange)
    explain, query = split_explain(statement)
    scoped = scope_statement(query, scope)
    sent = statement if scope.empty else "\n".join(filter(None, [explain, scoped.sql]))
    if scoped.tables and not scoped.dt_condition and not common.since:
        _note_every_partition(sorted(scoped.tables), services)
    if common.dry_run:
        sys.stdout.write(f"-- engine: athena (database {common.athena_database})\n")
        if scoped.tables:
            tables = ", ".join(sorted(scoped.tables))
            sys.stdout.write(f"-- {tables}: {scope.describe()}\n")
        sys.stdout.write(sent.strip() + "\n")
        return None, None
    _check_athena_budget(common, sorted(scoped.tables), services, trange)
    engine = runner.make_engine(common)
    no_answer = _outside_enum(common, engine, sorted(scoped.tables), services)
    max_rows, stream = runner.sql_fetch(common)
    return engine.run(sent, {}, max_rows=max_rows, stream=stream), no_answer


def _outside_enum(
    common: Common, engine: Any, tables: list[str], services: list[str] | None
) -> str | None:
    """Note the ``--service`` names missing from the service enum of each table the statement
    reads (:func:`cli.explain.note_outside_enum`, one cached Glue lookup per table): Athena
    reads none of their partitions, and the scoped statement's ``service IN (...)`` would
    answer ``[]`` without a word. The "no results" reason when every name is missing from
    every table's enum (None when any is there, or an enum could not be read)."""
    if not services or not tables:
        return None
    from cli.explain import note_outside_enum, outside_enum_reason

    missing = [
        note_outside_enum(common, engine.database, engine.region, t, services) for t in tables
    ]
    if all(m is not None and len(m) == len(services) for m in missing):
        return outside_enum_reason(engine.database, tables, services)
    return None


def _note_every_partition(tables: list[str], services: list[str] | None) -> None:
    """Say that Athena will enumerate every hour of the ``dt`` projection since it starts
    (times every service of the enum without --service): a slow, costly listing, and past a
    million partitions a failed query. How to narrow it, with a real hour as the example."""
    from datetime import UTC, datetime, timedelta

    from athena.ddl import PROJECTION_START
    from athena.timerange import dt_of
    from cli.notes import note

    whose = f"of the {len(services)} services given" if services else "of every service"
    day_ago = dt_of(datetime.now(UTC) - timedelta(days=1))
    note(
        f"logq: note: the statement reads {', '.join(tables)} with no condition on dt and no "
        f"--since: Athena will consider every hour partition since {PROJECTION_START} {whose} "
        "(slow and billed; over 1,000,000 partitions it fails); narrow it with --since "
        f"(e.g. --since 1d) or WHERE dt >= '{day_ago}' (dt is the UTC hour, YYYY-MM-DD-HH)"
    )


def _check_athena_budget(
    common: Common, tables: list[str], services: list[str] | None, trange: Any
) -> None:
    """Refuse a statement whose scope holds more bytes than ``--max-scan-bytes``, before it
    starts, as the canned queries do (:func:`cli.runner.check_athena_budget`).

    It applies because the scoped statement cannot read outside the partitions the flags
    allow: their files bound what Athena scans (a table read twice, as in a self-join, may scan
    twice that; Athena's running figure is checked too). Like the canned check it needs the
    warehouse Athena reads (--warehouse or LOGQ_WAREHOUSE) to list. logq does not read the
    statement's own ``dt`` conditions, so without --since/--until the bound is the whole
    table: the refusal says to give the range as flags.
    """
    if common.max_scan_bytes is None or not common.warehouse or not tables:
        return
    from athena.engines.result import ScanBudgetError
    from cli.runner import partition_bytes

    size = partition_bytes(common, tables, services, trange)
    if size > common.max_scan_bytes:
        scope = "in range" if trange is not None else "of every hour (no --since/--until)"
        raise ScanBudgetError(
            f"the partitions {scope} of {', '.join(tables)} hold {size:,} bytes, over "
            f"--max-scan-bytes {common.max_scan_bytes:,}; the query was not started. Narrow "
            "--since/--until or --service (logq bounds the scan by these flags, not by the "
            "statement's own WHERE)"
        )
