"""How fresh the data is: the newest (and oldest) row of a service or of planned partitions.

Two ways to find it: reading a partition's ``timestamp`` column (the newest data an empty answer
names), or only the Parquet footers' row-group statistics of the newest files of an hour (the
stale-data note, which runs with every query and must cost next to nothing, and ``logq
services``, which reads the newest hour of every service). Both read the warehouse, never run a
query.

``before``: rows stamped after it are not counted. A source whose clock is ahead writes rows
"from the future"; the newest row overall then says nothing about how far behind the pipeline
is, and as long as those rows are the newest, a stalled pipeline would never look stale. So the
freshness figures (the stale-data note, the newest data an empty answer names) take the newest
row at or before now, and say separately that rows are stamped ahead. Footers give only a
file's largest time: a file whose largest is after ``before`` has its ``timestamp`` column read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from athena.arrow_values import scalar_value
from athena.timerange import dt_of

if TYPE_CHECKING:
    import pyarrow as pa

    from athena.partitions import DataFile, Partition
    from athena.warehouse import Warehouse

T = TypeVar("T")


def newest_in_partition(
    wh: Warehouse, table: str, service: str, dt: str, before: datetime | None = None
) -> datetime | None:
    """Largest ``timestamp`` in one partition (reads only that column of its files), at or
    before ``before`` when given; None when it holds no such rows. A file that is not readable
    Parquet, or holds no times (:func:`_checked_times`), is an EngineError naming it."""
    from athena.partitions import list_files

    newest = None
    for f in list_files(wh, wh.path(table, f"service={service}", f"dt={dt}")):
        col = _file_times(wh, f.path)
        if before is not None:
            value = _newest_at_or_before(f.path, col, before)
        else:
            value = _max_time(f.path, col)
        if value is not None and (newest is None or value > newest):
            newest = value
    return newest


def _newest_of(
    wh: Warehouse, table: str, pairs: list[tuple[str, str]], before: datetime | None = None
) -> datetime | None:
    """Newest ``timestamp`` over ``(dt, service)`` partitions, read newest hour first: the first
    hour with rows answers (an hour folder can be empty, e.g. after its files were moved)."""
    by_dt: dict[str, list[str]] = {}
    for dt, svc in pairs:
        if before is None or dt <= dt_of(before):
            by_dt.setdefault(dt, []).append(svc)
    for dt in sorted(by_dt, reverse=True):
        values = [newest_in_partition(wh, table, svc, dt, before) for svc in by_dt[dt]]
        found = [v for v in values if v is not None]
        if found:
            return max(found)
    return None


def newest_data(
    wh: Warehouse, table: str, services: list[str] | None = None, before: datetime | None = None
) -> datetime | None:
    """Newest ``timestamp`` in ``table`` over ``services`` (None: all), from their newest hour
    (at or before ``before``: see the module docstring)."""
    from athena.partitions import list_dts, list_services

    chosen = list_services(wh, table) if services is None else services
    pairs = [(dt, svc) for svc in chosen for dt in list_dts(wh, table, svc)]
    return _newest_of(wh, table, pairs, before)


class Freshness(NamedTuple):
    """How much data one service has and how new it is (a row of ``logq services``)."""

    service: str
    access_hours: int
    """Hours (``dt`` partitions with a data file: :func:`athena.partitions.hours_with_data`)
    of envoy_access data."""
    log_hours: int
    """Hours of container_logs data."""
    newest: datetime | None
    """Newest line over both tables."""


def known_services(wh: Warehouse) -> list[str]:
    """Every service with a folder in either table, sorted."""
    from athena.partitions import list_services

    return sorted(set(list_services(wh, "envoy_access")) | set(list_services(wh, "container_logs")))


def service_hours(
    wh: Warehouse, service: str, hours_between: tuple[str, str] | None = None
) -> dict[str, list[str]]:
    """The hours with data of ``service`` by table (:func:`athena.partitions.hours_with_data`),
    listed once for :func:`freshness_in` to be asked more than once."""
    from athena.partitions import hours_with_data

    return {
        t: hours_with_data(wh, t, service, hours_between)
        for t in ("envoy_access", "container_logs")
    }


def freshness_in(
    wh: Warehouse,
    service: str,
    hours: dict[str, list[str]],
    before: datetime | None = None,
    tops: Tops | None = None,
) -> Freshness:
    """Hours of data per table and the newest line of ``service`` (from each table's newest
    hour with rows: :func:`newest_in_hour`), over the ``hours`` :func:`service_hours` listed.
    ``before``: the newest line at or before it (see the module docstring); asked again with
    it (rows stamped ahead of the clock), the newest hours are read again but no hour folder is
    listed again (a year of hours of both tables is 17,520 listings), nor a footer ``tops``
    (:func:`footer_bound`) holds from the first time."""
    values = [_newest_of_hours(wh, t, service, dts, before, tops) for t, dts in hours.items()]
    newest = max((v for v in values if v is not None), default=None)
    return Freshness(service, len(hours["envoy_access"]), len(hours["container_logs"]), newest)


def _newest_of_hours(
    wh: Warehouse,
    table: str,
    service: str,
    dts: list[str],
    before: datetime | None,
    tops: Tops | None,
) -> datetime | None:
    """Newest ``timestamp`` of ``service`` in ``table`` over its hours ``dts``, newest hour
    first: the first hour with rows (at or before ``before``) answers."""
    last = "~" if before is None else dt_of(before)
    for dt in sorted((dt for dt in dts if dt <= last), reverse=True):
        found = newest_in_hour(wh, table, service, dt, before, tops)
        if found is not None:
            return found
    return None


def newest_in_hour(
    wh: Warehouse,
    table: str,
    service: str,
    dt: str,
    before: datetime | None = None,
    tops: Tops | None = None,
) -> datetime | None:
    """Newest ``timestamp`` of one hour folder (at or before ``before``), from the footers of
    the files :func:`newest_files` picks, as the stale note finds it: an uncompacted hour
    holds a file per flush per writer node (360 at a 10 s flush), and reading the column of
    each made ``logq services`` take minutes locally and thousands of requests on S3. A column
    is read only where a footer cannot tell (:func:`footer_bound`: no statistics, or a largest
    time after ``before``, which may hide a row at or before it). Only when those files hold
    no such row are the hour's other flushed files read, so an hour with rows is never passed
    over for an older one. None when the hour holds no such rows."""
    from athena.partitions import list_files

    paths = [f.path for f in list_files(wh, wh.path(table, f"service={service}", f"dt={dt}"))]
    return _newest_of_hour(wh, paths, before, tops)


def _newest_of_hour(
    wh: Warehouse, paths: list[str], before: datetime | None, tops: Tops | None
) -> datetime | None:
    """The newest row (at or before ``before``) of one hour's files ``paths``: the footers of
    :func:`newest_files`, then, only when those hold no such row (the newest flushes hold rows
    of a clock ahead only), the other files' (:func:`newest_in_hour`)."""
    first = newest_files(paths)
    found = _largest_bound(wh, first, before, tops)
    if found is None:
        taken = set(first)
        found = _largest_bound(wh, [p for p in paths if p not in taken], before, tops)
    return found


def _largest_bound(
    wh: Warehouse, paths: list[str], before: datetime | None, tops: Tops | None
) -> datetime | None:
    """The largest :func:`footer_bound` of ``paths`` (None: none has such rows), the footers
    read a few at once on S3 (:func:`_per_file`)."""
    values = _per_file(wh, lambda path: footer_bound(wh, path, before=before, tops=tops), paths)
    return max((v for v in values if v is not None), default=None)


#: Footers (and the odd ``timestamp`` column) the freshness notes read at once on S3. Each is
#: a round trip or two (20-30 ms on AWS): one after the other, the stale note over a query of
#: every service (a footer per compaction output of the newest hour, 50 services: 50) waited
#: on each in turn. 8 is pyarrow's own IO pool and enough to overlap a note's reads; a local
#: warehouse reads one at a time, in the calling thread, as before (see
#: :func:`athena.threads.ordered_list`).
S3_FOOTER_THREADS = 8

#: Services ``logq services`` works on at once on S3 (``cli.commands.tables``): each is a
#: listing of its hours per table, then its newest hours' footers, a round trip or two each;
#: one after the other, 100 services took 12 s behind a 20 ms round trip, 8 at once 1.9 s
#: (``bench/logq_services.py``). 8, like the footers: the footer reads of
#: the services in flight share those 8 (:mod:`athena.threads`: 8 services read theirs one
#: at a time each, 2 services 4 at a time), never 8 x 8 requests at once. A local warehouse
#: works on them in turn, in the calling thread, as before. ``logq services --dry-run`` lists
#: the services' hours as many at once.
S3_SERVICE_THREADS = 8


def _per_file(wh: Warehouse, read: Callable[[str], T], paths: list[str]) -> list[T]:
    """``[read(p) for p in paths]``, up to :data:`S3_FOOTER_THREADS` at once on S3; the same
    results, in the same order, and the first failing file's error, as the loop gives. The
    ``tops`` a read adds to (:func:`footer_bound`) take each path once: ``paths`` hold no
    path twice, so no two threads write the same key. A local warehouse reads them in turn
    in the calling thread, with no pool, as before."""
    from athena.threads import ordered_list

    workers = S3_FOOTER_THREADS if wh.is_s3 else 1
    return ordered_list(read, paths, workers, name="logq-footers")


#: Footers of flushed files read per hour at most when looking for the newest row (the newest
#: files of each writer node, by name: names carry a per-node increasing segment number).
MAX_FOOTERS = 16


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
    paths = [f.path for dt, fs in firsts if dt == dt0 for f in fs]
    found = _per_file(wh, lambda path: footer_bound(wh, path, low=True), paths)
    values = [v for v in found if v is not None]
    return min(values) if values else None


def newest_data_quick(
    wh: Warehouse,
    table: str,
    services: list[str] | None,
    before: datetime | None = None,
    tops: Tops | None = None,
) -> datetime | None:
    """Newest ``timestamp`` of ``services`` (None: all) from the Parquet footers of their newest
    hours (at or before ``before``): one listing per service finds its hours, then
    :func:`newest_in` (``tops``: see :func:`footer_bound`)."""
    from athena.partitions import Partition, list_dts, list_files, list_services

    chosen = list_services(wh, table) if services is None else services
    last = "~" if before is None else dt_of(before)
    parts = [
        Partition(table, svc, dt, list_files(wh, wh.path(table, f"service={svc}", f"dt={dt}")))
        for svc in chosen
        for dt in [dt for dt in list_dts(wh, table, svc) if dt <= last][-2:]
    ]
    return newest_in(wh, parts, before, tops)


def newest_in(
    wh: Warehouse, parts: list[Partition], before: datetime | None = None, tops: Tops | None = None
) -> datetime | None:
    """Newest ``timestamp`` in ``parts`` (at or before ``before``), read from the footers of the
    newest files of their newest hour (:func:`_newest_of_hour`: the hour's other files only
    when those hold no such row; else the note named an hour-old time when the newest flushes
    held rows of a clock ahead only); an hour whose files hold no rows falls back to the hour
    before it. ``tops``: footers read already, and where to keep those read
    (:func:`footer_bound`)."""
    last = "~" if before is None else dt_of(before)
    for dt in sorted({p.dt for p in parts if p.dt <= last}, reverse=True):
        files = [f.path for p in parts if p.dt == dt for f in p.files]
        found = _newest_of_hour(wh, files, before, tops)
        if found is not None:
            return found
    return None


def newest_files(paths: Iterable[str]) -> list[str]:
    """The files whose footers find the newest row: at most :data:`MAX_FOOTERS` flushed files,
    then every other file. The stale-data note (:func:`newest_in`) and ``logq services``
    (:func:`newest_in_hour`) both read these.

    The writer names files ``<node>-<seq>-<part>.parquet`` with a segment number that grows per
    node across every service folder (one segment is flushed into each service it holds), so
    per node the highest numbers are its latest flushes whichever folder they are in; the files
    of each node's two newest segments are taken newest first, one node after the other, so a
    busy service is read before services whose last rows came many segments ago. Other names
    (compaction outputs ``c-<random id>``, hand-written files) carry no order: a compacted hour
    of a busy service holds more outputs than :data:`MAX_FOOTERS` (one per 128 MB), and a cap
    would leave out the one with the newest row at random (the note named an older time than
    the truth). There are few of them, a footer each: all are read, after the flushed ones.
    """
    by_node: dict[str, list[tuple[int, int, str]]] = {}
    others: list[str] = []
    for path in paths:
        match = _flush_name(path)
        if match:
            key = (int(match.group(2)), int(match.group(3)), path)
            by_node.setdefault(match.group(1), []).append(key)
        else:
            others.append(path)
    queues: list[list[str]] = []
    for files in by_node.values():
        files.sort(reverse=True)
        keep = sorted({seq for seq, _, _ in files}, reverse=True)[:2]
        queues.append([path for seq, _, path in files if seq in keep])
    picked: list[str] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picked.extend(q[rank] for q in queues if rank < len(q))
        if len(picked) >= MAX_FOOTERS:
            break
    return picked[:MAX_FOOTERS] + sorted(others, reverse=True)


def _flush_name(path: str) -> re.Match[str] | None:
    """The node, segment number and part of a file the writer named (``<node>-<seq>-<part>``,
    :func:`aggregator.writer.object_name`); None for any other name."""
    return _FLUSH_NAME.fullmatch(path.rsplit("/", 1)[-1])


_FLUSH_NAME = re.compile(r"(.*)-(\d{16})-(\d{4})\.parquet")


#: Files' largest ``timestamp`` as their footers gave it, by path: what one note has read, so
#: that counting rows ahead of now does not read again the footers finding the newest row did.
Tops = dict[str, datetime | None]


def footer_bound(
    wh: Warehouse,
    path: str,
    low: bool = False,
    before: datetime | None = None,
    tops: Tops | None = None,
) -> datetime | None:
    """Max (or min, ``low``) ``timestamp`` of one file from its footer's row-group statistics;
    the column itself is read only when a row group has none, or (``before``) when the max is
    after ``before``: then the max at or before it. None for a file with no such rows.
    ``tops``: maxima read already (taken from it, and what is read is added to it).
    """
    if low or tops is None or path not in tops:
        bound = _footer_bound(wh, path, low)
        if not low and tops is not None:
            tops[path] = bound
    else:
        bound = tops[path]
    if before is not None and not low and bound is not None and bound > before:
        return _max_before(wh, path, before)
    return bound


def _checked_times(path: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """``col``, the ``timestamp`` column of ``path``, if it holds times: a timestamp, or plain
    integers (epoch milliseconds, as the first writers stored them). Text or any other type
    (a file another tool wrote) is a :class:`~athena.foreign.ForeignFile` naming it: taken
    for times, it failed deep inside the arithmetic with a traceback."""
    import pyarrow as pa

    from athena.foreign import wrong_type

    if pa.types.is_timestamp(col.type) or pa.types.is_integer(col.type):
        return col
    raise wrong_type(path, "timestamp", col.type, "timestamp")


def _footer_bound(wh: Warehouse, path: str, low: bool) -> datetime | None:
    """:func:`footer_bound` without ``before``: the file's max (or min) ``timestamp``.

    The statistics are read raw (int64) and converted with the column's Parquet time unit:
    pyarrow's ``statistics.max`` converts timestamps through pandas, whose import alone costs
    more than the whole note (it runs with every query). For the same reason pyarrow.compute
    is left to :func:`_column_bound`, for files whose footers do not tell.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from athena.engines.local import unreadable_file
    from athena.foreign import wrong_type

    try:
        meta = pq.read_metadata(path, filesystem=wh.fs)
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        col = names.index("timestamp")
        unit = time_unit(meta.schema.column(col))
        if unit is None and meta.schema.column(col).physical_type not in ("INT96", "INT32"):
            # Not a time at all (text, a float): no statistics tell, and the column neither.
            found = meta.schema.to_arrow_schema().field("timestamp").type
            raise wrong_type(path, "timestamp", found, "timestamp")
        bounds: list[int] = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if group.num_rows == 0:
                continue
            stats = group.column(col).statistics
            raw = None
            if stats is not None and stats.has_min_max and unit is not None:
                raw = stats.min_raw if low else stats.max_raw
            if not isinstance(raw, int):  # no statistics, or not an int64 time (e.g. INT96)
                return _column_bound(wh, path, low, unit)
            bounds.append(raw)
    except (pa.ArrowException, ValueError) as exc:
        raise unreadable_file(path, exc) from exc
    if not bounds or unit is None:
        return None
    return checked_epoch(path, min(bounds) if low else max(bounds), unit)


def _column_bound(wh: Warehouse, path: str, low: bool, unit: str | None) -> datetime | None:
    """Max (or min, ``low``) ``timestamp`` of one file whose footer has no usable statistics,
    from the column itself (``unit``: the footer's, for a column of plain integers). Its
    errors are :func:`_footer_bound`'s to name the file. pyarrow.compute is imported here
    only: it builds a wrapper and docstring for each of its hundreds of functions on import
    (0.05-0.15 s), a cost the footers' note, run with every query, need not pay."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = _checked_times(path, _read_times(wh, path))
    if pa.types.is_timestamp(ts.type):
        unit, ts = ts.type.unit, pc.cast(ts, pa.int64())
    value = scalar_value((pc.min if low else pc.max)(ts))
    return None if value is None else checked_epoch(path, value, unit or "ms")


def _max_before(wh: Warehouse, path: str, before: datetime) -> datetime | None:
    """The largest ``timestamp`` of one file at or before ``before`` (reads that column)."""
    return _newest_at_or_before(path, _file_times(wh, path), before)


def _file_times(wh: Warehouse, path: str) -> pa.ChunkedArray:
    """One file's ``timestamp`` column (an unreadable file: the error that names it)."""
    import pyarrow as pa

    from athena.engines.local import unreadable_file

    try:
        col = _read_times(wh, path)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable_file(path, exc) from exc
    return _checked_times(path, col)


def _read_times(wh: Warehouse, path: str) -> pa.ChunkedArray:
    """One file's ``timestamp`` column, opened once. ParquetFile, not ``pq.read_table``: that
    opens the file twice and imports pyarrow.dataset, and with it pandas (half a second of
    every `logq services` whose newest files hold rows stamped ahead)."""
    import pyarrow.parquet as pq

    with wh.fs.open_input_file(path) as source:  # closed here, also when it is no Parquet
        return pq.ParquetFile(source).read(columns=["timestamp"])["timestamp"]


def _newest_at_or_before(path: str, col: pa.ChunkedArray, before: datetime) -> datetime | None:
    """The largest time of a ``timestamp`` column (of ``path``) at or before ``before``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = _utc_times(col)
    return _max_time(path, col.filter(pc.less_equal(col, pa.scalar(before, col.type))))


def _max_time(path: str, col: pa.ChunkedArray) -> datetime | None:
    """The largest time of a ``timestamp`` column of ``path`` as an aware UTC datetime, None
    when it is empty; one past year 9999 is a :class:`~athena.foreign.ForeignFile`."""
    import pyarrow.compute as pc

    from athena.foreign import times_out_of_range

    if not len(col):
        return None
    try:
        value = scalar_value(pc.max(_utc_times(col)))
    except (OverflowError, ValueError):  # beyond Python's datetime
        raise times_out_of_range(path) from None
    return None if value is None else value.astimezone(UTC)


def _utc_times(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A ``timestamp`` column as aware UTC times, comparable with an aware datetime (the first
    writers stored plain epoch milliseconds; a naive timestamp is UTC)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.int64()), pa.timestamp("ms", tz="UTC"))
    if col.type.tz is None:
        return pc.cast(col, pa.timestamp(col.type.unit, tz="UTC"))
    return col


#: Parquet's ``timeUnit`` names and Arrow's, as Arrow's unit strings.
_UNITS = {"milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns", "ms": "ms", "us": "us",
          "ns": "ns", "s": "s"}  # fmt: skip


def time_unit(column: object) -> str | None:
    """``ms``/``us``/``ns`` of a Parquet INT64 TIMESTAMP column; ``ms`` for a plain INT64 (epoch
    milliseconds, as the first writers stored it); None for any other physical type."""
    import json

    if getattr(column, "physical_type", None) != "INT64":
        return None
    logical = json.loads(column.logical_type.to_json())  # type: ignore[attr-defined]
    if logical.get("Type") != "Timestamp":
        return "ms"
    return _UNITS.get(str(logical.get("timeUnit")))


def checked_epoch(path: str, value: int, unit: str) -> datetime:
    """:func:`from_epoch` of a time read from ``path``; one past year 9999 (beyond Python's
    datetime) is a :class:`~athena.foreign.ForeignFile` naming the file, not a traceback."""
    from athena.foreign import times_out_of_range

    try:
        return from_epoch(value, unit)
    except OverflowError:
        raise times_out_of_range(path) from None


def from_epoch(value: int, unit: str) -> datetime:
    """An aware UTC datetime from an integer count of ``unit`` since the epoch (integer
    arithmetic: no float rounding; nanoseconds are cut to the microsecond)."""
    from datetime import UTC, timedelta

    micros = {"s": value * 1_000_000, "ms": value * 1000, "us": value, "ns": value // 1000}[unit]
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


class Ahead(NamedTuple):
    """Rows stamped after a time (a source whose clock runs ahead): how many, and the latest."""

    rows: int
    newest: datetime


def rows_after(
    wh: Warehouse,
    table: str,
    services: list[str] | None,
    after: datetime,
    planned: list[Partition] | None = None,
    read_up_to: str | None = None,
    tops: Tops | None = None,
) -> Ahead | None:
    """The rows of ``services`` (None: all) stamped after ``after``; None when there are none.

    Only the hours from ``after``'s on can hold such rows: one listing per service finds them,
    and only a file whose footer says it reaches past ``after`` has its ``timestamp`` column
    read. ``planned`` (partitions a query already listed) gives the files of its hours without
    a second listing, and stands in for the listing of every service's hours on S3 without
    ``services`` (1 + 2N round trips), at the price of missing hours not yet planned.

    ``read_up_to``: the hour up to which the newest files' footers were read already and
    showed no row ahead (the stale note, which runs with every query against a stale
    service). Then only the later hours are looked at first, and nothing more is read unless
    they hold rows ahead: a service with no later hour costs that one listing, not a footer
    per file of its current hour (a request or two each on S3). ``tops``: the footers the
    note read already (:func:`footer_bound`), not read again.
    """
    from athena.partitions import list_dts, list_services

    first = dt_of(after)
    known = {(p.service, p.dt): p.files for p in planned or []}
    if services is None and wh.is_s3:
        hours = [(svc, dt) for svc, dt in known if dt >= first]
    else:
        chosen = list_services(wh, table) if services is None else services
        hours = [(svc, dt) for svc in chosen for dt in list_dts(wh, table, svc) if dt >= first]
    tops = {} if tops is None else tops
    if read_up_to is None:
        return _after_in_hours(wh, table, hours, after, known, tops)
    later = [h for h in hours if h[1] > read_up_to]
    found = _after_in_hours(wh, table, later, after, known, tops)
    if found is None:
        return None
    rest = [h for h in hours if h[1] <= read_up_to]
    return _merged(found, _after_in_hours(wh, table, rest, after, known, tops))


def _merged(one: Ahead, other: Ahead | None) -> Ahead:
    """Both counts as one."""
    if other is None:
        return one
    return Ahead(one.rows + other.rows, max(one.newest, other.newest))


def _after_in_hours(
    wh: Warehouse,
    table: str,
    hours: list[tuple[str, str]],
    after: datetime,
    known: dict[tuple[str, str], tuple[DataFile, ...]],
    tops: Tops,
) -> Ahead | None:
    """Rows stamped after ``after`` in the ``(service, dt)`` hours (files listed unless
    ``known`` has them). The footers of the hours before one that is listed are read before
    that listing, as one loop would: a damaged file there is the error raised, not a failed
    listing of a later hour (the note tells a ForeignFile, and says nothing of an OSError);
    known hours in a row (the S3 case) are read together (:func:`_per_file`)."""
    from athena.partitions import list_files

    def count(paths: list[str]) -> list[Ahead | None]:
        return _per_file(wh, lambda path: _after_in_file(wh, path, after, tops), paths)

    counted: list[Ahead | None] = []
    pending: list[str] = []
    for svc, dt in hours:
        files = known.get((svc, dt))
        if files is None:
            counted.extend(count(pending))
            pending = []
            files = list_files(wh, wh.path(table, f"service={svc}", f"dt={dt}"))
        pending.extend(f.path for f in files)
    counted.extend(count(pending))
    found = [c for c in counted if c is not None]
    if not found:
        return None
    return Ahead(sum(c.rows for c in found), max(c.newest for c in found))


def _after_in_file(wh: Warehouse, path: str, after: datetime, tops: Tops) -> Ahead | None:
    """Rows of one file stamped after ``after`` (its column read only when its footer's
    largest time is after it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    top = footer_bound(wh, path, tops=tops)
    if top is None or top <= after:
        return None
    col = _utc_times(_file_times(wh, path))
    late = col.filter(pc.greater(col, pa.scalar(after, col.type)))
    newest = _max_time(path, late)
    return None if newest is None else Ahead(len(late), newest)
