"""What Athena's partition projection makes of a table: its ``service`` enum, read from Glue,
and how many partitions a query projects, before it runs.

Athena reads only the partitions its projection enumerates: a service missing from
``projection.service.values`` (a DDL applied by hand before the service existed) has its data
in S3 but none of it in Athena's answers, silently; the CLI compares ``--service`` with the list
to say so. And Athena projects every ``service`` x ``dt`` pair a query's predicates allow: a
query without ``--service`` takes every value of the enum, so ``--since 100d`` over 120 services
is 2,401 hours x 120 = 288,120 partitions, not 2,401. Past :data:`PARTITION_LIMIT` Athena fails
the query (``HIVE_EXCEEDED_PARTITION_LIMIT``) after it was queued and planned; logq counts
first and refuses.

The list is a table property; Athena keeps its tables in the Glue Data Catalog, so one Glue
``GetTable`` call reads it (the permission Athena itself needs to query the table), once per
table and process (``tail --follow`` asks every poll). Any failure to read it (permissions, a
table created elsewhere, no network) gives None, or the reason: the comparison and the count
are courtesies and must never fail or slow down the query much.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from athena.ddl import PROJECTION_START
from athena.schema import parse_dt
from athena.timerange import TimeRange

#: Seconds to connect to / wait for Glue; the lookup is given up (None) past them.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 5
#: Partitions Athena projects for one table scan at most (its documented cap; past it the query
#: fails with ``HIVE_EXCEEDED_PARTITION_LIMIT``).
PARTITION_LIMIT = 1_000_000
#: Past this many, logq warns: Athena plans that many locations slowly, and most are empty.
PARTITION_WARNING = 100_000


@dataclass(frozen=True)
class ServiceEnum:
    """What a table's projection lets Athena see of the ``service`` partitions."""

    values: tuple[str, ...]
    """``projection.service.values``, in the table's order."""
    warehouse: str | None
    """The warehouse the table's LOCATION points into (``s3://bucket/prefix``), when it ends
    in the table's own folder as :func:`athena.ddl.table_location` writes it."""


@dataclass(frozen=True)
class Projected:
    """The partitions Athena projects of one table for a query."""

    table: str
    hours: int
    """``dt`` values in the query's range that the ``dt`` projection covers (2020 to now)."""
    services: int | None
    """``service`` values: the ``--service`` names, else the enum's size (None: unknown)."""
    unknown: str = ""
    """Why the enum's size is unknown (when ``services`` is None)."""

    @property
    def count(self) -> int | None:
        return None if self.services is None else self.hours * self.services

    def describe(self) -> str:
        """``288,120 = 2,401 hours x 120 services``, or ``2,401 hours x ? services``."""
        noun = "service" if self.services == 1 else "services"
        if self.count is None:
            return f"{self.hours:,} hours x ? services"
        return f"{self.count:,} = {self.hours:,} hours x {self.services:,} {noun}"


def projected_hours(trange: TimeRange, now: datetime | None = None) -> int:
    """The ``dt`` values of ``trange`` that the projection (``PROJECTION_START,NOW``) holds:
    hours before 2020 or after the current one are never projected, so ``--since 0001-01-01``
    is not 18 million."""
    inside = projected_range(trange, now)
    return 0 if inside is None else inside.hour_count()


def projected_range(trange: TimeRange, now: datetime | None = None) -> TimeRange | None:
    """The part of ``trange`` the ``dt`` projection covers (None: none of it), so that what
    ``--dry-run`` lists and the count it prints are the same hours."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    first = parse_dt(PROJECTION_START)
    after_now = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start, end = max(trange.since, first), min(trange.until, after_now)
    return TimeRange(start, end) if start < end else None


def service_enum(database: str, table: str, region: str | None) -> ServiceEnum | None:
    """The ``service`` enum of ``database.table``, or None when it cannot be read or the table
    has no such enum (projection off, or another projection type: then Athena is not limited
    to a list)."""
    return _read_enum(database, table, region)[0]


def service_enum_size(database: str, table: str, region: str | None) -> int:
    """How many values the table's ``projection.service.values`` enum holds, as Athena has it.
    Raises ``LookupError`` saying why when the table, or an enum on it, cannot be read."""
    found, why = _read_enum(database, table, region)
    if found is None:
        raise LookupError(why)
    return len(found.values)


def forget_enums() -> None:
    """Drop the enums read so far (tests change a table's enum between commands)."""
    _read_enum.cache_clear()


@functools.lru_cache(maxsize=16)
def _read_enum(database: str, table: str, region: str | None) -> tuple[ServiceEnum | None, str]:
    """(the enum, "") or (None, why it could not be read): one Glue GetTable, failures cached
    too."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    name = f"{database}.{table}"
    try:
        glue = boto3.session.Session().client("glue", region_name=region, config=config)
        found = glue.get_table(DatabaseName=database, Name=table)["Table"]
    except (BotoCoreError, ClientError) as exc:
        return None, f"table {name} not read: {exc}"
    params = {k.lower(): v for k, v in (found.get("Parameters") or {}).items()}
    if params.get("projection.enabled", "").strip().lower() != "true":
        return None, f"table {name} has no partition projection"
    if params.get("projection.service.type", "").strip().lower() != "enum":
        return None, f"table {name} does not project service as an enum"
    raw = params.get("projection.service.values")
    if raw is None:
        return None, f"table {name} has no projection.service.values"
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    location = (found.get("StorageDescriptor") or {}).get("Location") or ""
    return ServiceEnum(values, _warehouse_of(location, table)), ""


def _warehouse_of(location: str, table: str) -> str | None:
    """``s3://b/p`` from a table LOCATION ``s3://b/p/<table>/`` (None for any other shape)."""
    trimmed = location.rstrip("/")
    suffix = "/" + table
    if not trimmed.startswith("s3://") or not trimmed.endswith(suffix):
        return None
    base = trimmed[: -len(suffix)]
    return base if len(base) > len("s3://") else None
