"""How fresh the data is: the newest row of a service (for `services` and empty-result notes)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from athena.warehouse import Warehouse


def newest_in_partition(wh: Warehouse, table: str, service: str, dt: str) -> datetime | None:
    """Largest ``timestamp`` in one partition (reads only that column of its files); None when
    it holds no rows. A file that is not readable Parquet is an EngineError naming it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from athena.engines.local import unreadable_file
    from athena.partitions import list_files

    newest = None
    for f in list_files(wh, wh.path(table, f"service={service}", f"dt={dt}")):
        try:
            col = pq.read_table(f.path, columns=["timestamp"], filesystem=wh.fs)["timestamp"]
        except (pa.ArrowException, OSError) as exc:
            raise unreadable_file(f.path, exc) from exc
        value = pc.max(col).as_py() if len(col) else None
        if value is not None and (newest is None or value > newest):
            newest = value
    return newest


def _newest_of(wh: Warehouse, table: str, pairs: list[tuple[str, str]]) -> datetime | None:
    """Newest ``timestamp`` over ``(dt, service)`` partitions, read newest hour first: the first
    hour with rows answers (an hour folder can be empty, e.g. after its files were moved)."""
    by_dt: dict[str, list[str]] = {}
    for dt, svc in pairs:
        by_dt.setdefault(dt, []).append(svc)
    for dt in sorted(by_dt, reverse=True):
        values = [newest_in_partition(wh, table, svc, dt) for svc in by_dt[dt]]
        found = [v for v in values if v is not None]
        if found:
            return max(found)
    return None


def newest_data(wh: Warehouse, table: str, services: list[str] | None = None) -> datetime | None:
    """Newest ``timestamp`` in ``table`` over ``services`` (None: all), from their newest hour."""
    from athena.partitions import list_dts, list_services

    chosen = list_services(wh, table) if services is None else services
    return _newest_of(wh, table, [(dt, svc) for svc in chosen for dt in list_dts(wh, table, svc)])


class Freshness(NamedTuple):
    """How much data one service has and how new it is (a row of ``logq services``)."""

    service: str
    access_hours: int
    """Hours (``dt`` partitions) of envoy_access data."""
    log_hours: int
    """Hours of container_logs data."""
    newest: datetime | None
    """Newest line over both tables."""


def known_services(wh: Warehouse) -> list[str]:
    """Every service with a folder in either table, sorted."""
    from athena.partitions import list_services

    return sorted(set(list_services(wh, "envoy_access")) | set(list_services(wh, "container_logs")))


def service_freshness(
    wh: Warehouse, service: str, hours_between: tuple[str, str] | None = None
) -> Freshness:
    """Hours of data per table and the newest line (read from each table's newest hour with rows).

    ``hours_between``: only the ``dt`` hours from the first to the second (inclusive) count.
    """
    from athena.partitions import list_dts

    lo, hi = hours_between or ("", "~")
    hours = {
        t: [dt for dt in list_dts(wh, t, service) if lo <= dt <= hi]
        for t in ("envoy_access", "container_logs")
    }
    values = [_newest_of(wh, t, [(dt, service) for dt in dts]) for t, dts in hours.items()]
    newest = max((v for v in values if v is not None), default=None)
    return Freshness(service, len(hours["envoy_access"]), len(hours["container_logs"]), newest)
