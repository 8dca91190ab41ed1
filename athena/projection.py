"""The ``service`` values an Athena table's partition projection enumerates, read from Glue.

Athena reads only the partitions its projection enumerates: a service missing from
``projection.service.values`` (a DDL applied by hand before the service existed) has its data
in S3 but none of it in Athena's answers, silently. The CLI compares ``--service`` with this
list to say so. The list is a table property; Athena keeps its tables in the Glue Data Catalog,
so one Glue ``GetTable`` call reads it (the permission Athena itself needs to query the table).
Any failure to read it (permissions, a table created elsewhere, no network) gives None: the
comparison is a courtesy and must never fail or slow down the query much.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds to connect to / wait for Glue; the lookup is given up (None) past them.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 5


@dataclass(frozen=True)
class ServiceEnum:
    """What a table's projection lets Athena see of the ``service`` partitions."""

    values: tuple[str, ...]
    """``projection.service.values``, in the table's order."""
    warehouse: str | None
    """The warehouse the table's LOCATION points into (``s3://bucket/prefix``), when it ends
    in the table's own folder as :func:`athena.ddl.table_location` writes it."""


def service_enum(database: str, table: str, region: str | None) -> ServiceEnum | None:
    """The ``service`` enum of ``database.table`` (Glue GetTable), or None when it cannot be
    read or the table has no such enum (projection off, or another projection type: then Athena
    is not limited to a list)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    try:
        glue = boto3.client("glue", region_name=region, config=config)
        found = glue.get_table(DatabaseName=database, Name=table)["Table"]
    except (BotoCoreError, ClientError):
        return None
    params = {k.lower(): v for k, v in (found.get("Parameters") or {}).items()}
    if params.get("projection.enabled", "").strip().lower() != "true":
        return None
    if params.get("projection.service.type", "").strip().lower() != "enum":
        return None
    raw = params.get("projection.service.values")
    if raw is None:
        return None
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    location = (found.get("StorageDescriptor") or {}).get("Location") or ""
    return ServiceEnum(values, _warehouse_of(location, table))


def _warehouse_of(location: str, table: str) -> str | None:
    """``s3://b/p`` from a table LOCATION ``s3://b/p/<table>/`` (None for any other shape)."""
    trimmed = location.rstrip("/")
    suffix = "/" + table
    if not trimmed.startswith("s3://") or not trimmed.endswith(suffix):
        return None
    base = trimmed[: -len(suffix)]
    return base if len(base) > len("s3://") else None
