"""Which partitions and files a query reads: the local engine's partition pruning.

Athena prunes by the ``dt``/``service`` predicates through partition projection; the local engine
does the same by listing only the folders in range, through the warehouse's ``pyarrow.fs``
filesystem (so it works the same for a local directory and for S3). The files listed here are the
only ones DuckDB is given; tests assert on them to show the pruning.

Reader rule shared with every writer: read every object ending in ``.parquet`` whose name does not
start with ``_`` or ``.`` (writers expose only complete files under such names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from athena.timerange import TimeRange
    from athena.warehouse import Warehouse


@dataclass(frozen=True)
class DataFile:
    """One Parquet object of a partition."""

    path: str
    """Path inside the warehouse filesystem."""
    size: int
    """Size in bytes (what a scan may read at most)."""


@dataclass(frozen=True)
class Partition:
    """One ``<table>/service=<s>/dt=<h>`` folder and its data files."""

    table: str
    service: str
    dt: str
    files: tuple[DataFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def relative(self) -> str:
        return f"{self.table}/service={self.service}/dt={self.dt}"


def is_data_file(name: str) -> bool:
    """The reader rule: ``*.parquet`` not starting with ``_`` or ``.``."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def _subdirs(wh: Warehouse, path: str, key: str) -> dict[str, str]:
    """``value -> path`` of the ``key=value`` folders directly under ``path`` (missing: none)."""
    import pyarrow.fs as pafs

    infos = wh.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    prefix = key + "="
    out = {}
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(prefix):
            value = name[len(prefix) :]
            if value:
                out[value] = info.path
    return out


def list_services(wh: Warehouse, table: str) -> list[str]:
    """Services that have a folder under ``table`` (sorted)."""
    return sorted(_subdirs(wh, wh.table_root(table), "service"))


def list_dts(wh: Warehouse, table: str, service: str) -> list[str]:
    """The ``dt`` partitions one service has (sorted, oldest first)."""
    return sorted(_subdirs(wh, wh.path(table, f"service={service}"), "dt"))


def list_files(wh: Warehouse, path: str) -> tuple[DataFile, ...]:
    """The data files of one partition folder, by the reader rule, in name order."""
    import pyarrow.fs as pafs

    infos = wh.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    files = [
        DataFile(i.path, i.size or 0)
        for i in infos
        if i.type == pafs.FileType.File and is_data_file(i.base_name)
    ]
    return tuple(sorted(files, key=lambda f: f.path))


#: Ranges of at most this many hours look their ``dt`` folders up by name (one listing each)
#: instead of listing every hour a service has: on S3 a service with a year of data takes ~9
#: sequential LIST calls, where ``--since 1h`` needs its two hours.
PROBE_MAX_HOURS = 6


def plan(
    wh: Warehouse,
    table: str,
    services: list[str] | None,
    trange: TimeRange | None,
) -> list[Partition]:
    """Partitions (with files) a query over ``table`` reads.

    ``services`` None means every service; names are matched as sanitised partition values.
    ``trange`` None means every hour. Partitions without data files are left out.
    """
    from athena.schema import sanitize_service

    present = _subdirs(wh, wh.table_root(table), "service")
    if services is None:
        chosen = sorted(present)
    else:
        chosen = sorted({sanitize_service(s) for s in services} & set(present))
    probe = trange is not None and trange.hour_count() <= PROBE_MAX_HOURS
    hours = trange.hours() if probe and trange is not None else []
    out = []
    for svc in chosen:
        if probe:
            folders = {dt: f"{present[svc]}/dt={dt}" for dt in hours}
        else:
            folders = _subdirs(wh, present[svc], "dt")
        for dt, path in sorted(folders.items()):
            if trange is not None and not trange.contains_dt(dt):
                continue
            files = list_files(wh, path)
            if files:
                out.append(Partition(table, svc, dt, files))
    return out
