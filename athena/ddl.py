"""Athena DDL for the warehouse tables, rendered from :mod:`athena.schema`.

Partition projection keeps new data queryable with no ``MSCK REPAIR``: ``dt`` is a ``date``
projection by the hour, ``service`` an ``enum`` whose values the aggregator extends whenever a new
service appears (so a query without ``--service`` still prunes by ``dt``, and one with it reads one
folder). See the Athena docs, "Partition projection with Amazon Athena".
"""

from __future__ import annotations

from collections.abc import Iterable

from athena.schema import (
    DT_PROJECTION_FORMAT,
    TABLES,
    Table,
    sanitize_service,
)

#: The ``service`` enum's only value while no service is known (see :func:`service_enum`).
PLACEHOLDER_SERVICE = "unknown"

#: First hour the ``dt`` projection covers; Athena only enumerates within the query's own range.
PROJECTION_START = "2020-01-01-00"
#: Athena refuses a query string longer than this (its service quota, not adjustable).
ATHENA_QUERY_MAX_BYTES = 262_144
#: Rows this far ahead of the aggregator's clock count as out of the projection (``..NOW``):
#: a few minutes of skew between hosts is normal, and such rows become visible as time passes.
FUTURE_SLACK_SECONDS = 15 * 60


def outside_projection(dt: str, now: float) -> bool:
    """Whether Athena's ``dt`` projection (:data:`PROJECTION_START` to ``NOW``) misses the hour
    ``dt`` (``YYYY-MM-DD-HH``) at ``now`` (epoch seconds), beyond :data:`FUTURE_SLACK_SECONDS`:
    rows stamped by a broken clock, before 2020 or well in the future. They are stored, and
    only the local engine finds them."""
    from datetime import UTC, datetime

    from athena.timerange import dt_of

    latest = dt_of(datetime.fromtimestamp(now + FUTURE_SLACK_SECONDS, tz=UTC))
    return dt < PROJECTION_START or dt > latest


def quote_ident(name: str) -> str:
    """Quote an identifier for Athena DDL (backticks; a backtick inside is doubled)."""
    return "`" + name.replace("`", "``") + "`"


def quote_string(value: str) -> str:
    """Quote a string literal for Athena DDL, which Hive parses: C-style escapes (``\\'``,
    ``\\\\``). Doubling a quote is wrong there: Hive reads ``'a''b'`` as two adjacent
    literals, ``ab``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_location(warehouse_uri: str, table: Table) -> str:
    """S3 location of a table (Athena wants a trailing slash)."""
    return warehouse_uri.rstrip("/") + "/" + table.name + "/"


def service_enum(services: Iterable[str]) -> str:
    """Comma-joined, sanitised, sorted service names for ``projection.service.values``.

    With no services the enum holds the placeholder ``unknown`` (an enum projection needs a
    value): the DDL is valid but Athena finds no rows until the list is extended, so callers
    that can have no services (``logq ddl`` on an empty warehouse) must say so.
    """
    values = sorted({sanitize_service(s) for s in services})
    return ",".join(values) or PLACEHOLDER_SERVICE


def create_table(
    table: Table,
    warehouse_uri: str,
    services: Iterable[str] = (),
    database: str | None = None,
) -> str:
    """``CREATE EXTERNAL TABLE IF NOT EXISTS`` for one table, with partition projection."""
    name = (
        quote_ident(table.name)
        if database is None
        else f"{quote_ident(database)}.{quote_ident(table.name)}"
    )
    columns = ",\n".join(
        f"  {quote_ident(c.name)} {c.athena} COMMENT {quote_string(c.comment)}"
        for c in table.data_columns
    )
    location = table_location(warehouse_uri, table)
    props = {
        "parquet.compression": "ZSTD",
        "projection.enabled": "true",
        "projection.service.type": "enum",
        "projection.service.values": service_enum(services),
        "projection.dt.type": "date",
        "projection.dt.format": DT_PROJECTION_FORMAT,
        "projection.dt.range": f"{PROJECTION_START},NOW",
        "projection.dt.interval": "1",
        "projection.dt.interval.unit": "HOURS",
        "storage.location.template": location + "service=${service}/dt=${dt}",
    }
    rendered_props = ",\n".join(
        f"  {quote_string(k)} = {quote_string(v)}" for k, v in props.items()
    )
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {name} (\n{columns}\n)\n"
        f"COMMENT {quote_string(table.comment)}\n"
        "PARTITIONED BY (\n"
        "  `service` string COMMENT 'service name',\n"
        "  `dt` string COMMENT 'UTC hour, YYYY-MM-DD-HH'\n"
        ")\n"
        "STORED AS PARQUET\n"
        f"LOCATION {quote_string(location)}\n"
        f"TBLPROPERTIES (\n{rendered_props}\n)"
    )


def set_service_values(table: Table, services: Iterable[str], database: str | None = None) -> str:
    """``ALTER TABLE … SET TBLPROPERTIES`` extending the ``service`` enum (new services appear)."""
    name = (
        quote_ident(table.name)
        if database is None
        else f"{quote_ident(database)}.{quote_ident(table.name)}"
    )
    values = quote_string(service_enum(services))
    return f"ALTER TABLE {name} SET TBLPROPERTIES ('projection.service.values' = {values})"


def add_columns(table: Table, names: Iterable[str], database: str | None = None) -> str:
    """``ALTER TABLE … ADD COLUMNS`` for columns the schema gained since the table was created."""
    wanted = set(names)
    cols = [c for c in table.data_columns if c.name in wanted]
    if not cols:
        raise ValueError(f"none of {sorted(wanted)} is a column of {table.name}")
    name = (
        quote_ident(table.name)
        if database is None
        else f"{quote_ident(database)}.{quote_ident(table.name)}"
    )
    rendered = ", ".join(f"{quote_ident(c.name)} {c.athena}" for c in cols)
    return f"ALTER TABLE {name} ADD COLUMNS ({rendered})"


def create_all(
    warehouse_uri: str, services: Iterable[str] = (), database: str | None = None
) -> list[str]:
    """DDL for every table, in a stable order."""
    services = list(services)
    return [create_table(t, warehouse_uri, services, database) for t in TABLES.values()]


def longest_bytes(statements: Iterable[str]) -> int:
    """The size in UTF-8 bytes of the longest of ``statements`` (0 when there is none), as
    Athena counts it against :data:`ATHENA_QUERY_MAX_BYTES`."""
    return max((len(sql.encode("utf-8")) for sql in statements), default=0)


def too_long(longest: int, services: int, consequence: str) -> str | None:
    """Why Athena would refuse DDL whose longest statement is of ``longest`` bytes
    (:func:`longest_bytes`; None when it would not): its size, :data:`ATHENA_QUERY_MAX_BYTES`,
    ``consequence`` (what that means where it is said) and what to do. The service enum lists
    every name ever seen: past the limit (about 13,000 names of 20 characters) the DDL cannot be
    applied at all. A size, not the statements: a caller that has it does not encode a few
    hundred KB of DDL again."""
    if longest <= ATHENA_QUERY_MAX_BYTES:
        return None
    return (
        f"the service enum of {services:,} names makes a DDL statement of {longest:,} bytes, "
        f"over Athena's {ATHENA_QUERY_MAX_BYTES:,}-byte query limit: {consequence}; label "
        "containers (logq.service) so that names do not multiply, and let retired services' "
        "folders leave the warehouse (an S3 lifecycle rule)"
    )
