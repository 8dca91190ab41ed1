"""How fresh the data is: the newest row of a service (for `services` and empty-result notes)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from athena.warehouse import Warehouse


def newest_in_partition(wh: Warehouse, table: str, service: str, dt: str) -> datetime | None:
    """Largest ``timestamp`` in one partition (reads only that column of its files)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from athena.partitions import list_files

    newest = None
    for f in list_files(wh, wh.path(table, f"service={service}", f"dt={dt}")):
        col = pq.read_table(f.path, columns=["timestamp"], filesystem=wh.fs)["timestamp"]
        value = pc.max(col).as_py() if len(col) else None
        if value is not None and (newest is None or value > newest):
            newest = value
    return newest


def newest_data(wh: Warehouse, table: str, services: list[str] | None = None) -> datetime | None:
    """Newest ``timestamp`` in ``table`` over ``services`` (None: all), from their newest hour."""
    from athena.partitions import list_dts, list_services

    chosen = list_services(wh, table) if services is None else services
    best: tuple[str, str] | None = None
    for svc in chosen:
        dts = list_dts(wh, table, svc)
        if dts and (best is None or dts[-1] > best[0]):
            best = (dts[-1], svc)
    if best is None:
        return None
    newest = None
    for svc in chosen:
        dts = list_dts(wh, table, svc)
        if dts and dts[-1] == best[0]:
            value = newest_in_partition(wh, table, svc, best[0])
            if value is not None and (newest is None or value > newest):
                newest = value
    return newest


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
    """Hours of data per table and the newest line (read from the newest hour only).

    ``hours_between``: only the ``dt`` hours from the first to the second (inclusive) count.
    """
    from athena.partitions import list_dts

    lo, hi = hours_between or ("", "~")
    hours = {
        t: [dt for dt in list_dts(wh, t, service) if lo <= dt <= hi]
        for t in ("envoy_access", "container_logs")
    }
    newest_dt = max((h[-1] for h in hours.values() if h), default=None)
    newest = None
    for table, dts in hours.items():
        if dts and dts[-1] == newest_dt:
            value = newest_in_partition(wh, table, service, dts[-1])
            if value is not None and (newest is None or value > newest):
                newest = value
    return Freshness(service, len(hours["envoy_access"]), len(hours["container_logs"]), newest)
