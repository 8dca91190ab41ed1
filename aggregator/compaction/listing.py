"""The closed partitions within a compaction pass's window, listed with few requests.

A pass lists what its window holds, never a service's whole history. Each service folder is
listed without recursion for its hour folders first (pyarrow; on S3 one request per 1,000
hours). A young service, whose hours are nearly all within the window (at most 96 hours in
all), is then listed whole, recursively (one request per 1,000 objects: an idle pass over 200
young services x 48 hours x 2 tables is 800 LISTs, not 19,200). A longer history is listed, on
S3 with a window of at most 96 hours (the usual 48-hour lookback), from the window's first hour
on (ListObjectsV2 ``StartAfter``, through boto3: one request per 1,000 objects, whatever the
history before it: 2 LISTs per service folder, not 49); otherwise only the hours within the
window are listed, 32 at a time. (botocore parses a listing in Python, several times pyarrow's
cost per object: young services, where it would save no request, stay on pyarrow.) Entries of hours
outside the window are dropped as soon as they are listed. For ``logq-aggregator compact`` the
listing also tells :class:`.notes.PassNotes` what it skips: hours before the window (counted from
the hour folders) and those that ended but are not closed yet (with their entries, from the
service's listing when it reached them, else one LIST each: only the command pays it, the periodic
pass passes no notes; the running hour, no news, costs none).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.fs as pafs

from aggregator.compaction.grace import DEFAULT_GRACE
from aggregator.compaction.notes import PassNotes
from aggregator.storage import StorageError, list_folder, list_tree_after
from athena.schema import DT_FORMAT, TABLES, Table, parse_dt
from athena.stray_folders import is_service
from athena.threads import ordered_map
from athena.warehouse import Warehouse, list_entries

log = logging.getLogger("logq.aggregator.compaction")

DEFAULT_LOOKBACK = timedelta(hours=48)

# --- concurrency (see "Throughput" in :mod:`.passes`) ---------------------------------------------
#: Service folders listed at once (each one LIST request per 1,000 of its hour folders, and,
#: for a young service, one per 1,000 objects; a round trip of tens of milliseconds on S3).
LIST_THREADS = 16
#: Partition-hours listed at once, for services whose folder is not listed whole.
PARTITION_LIST_THREADS = 32
#: A service folder with more hour folders than this is never listed whole (recursively): its
#: hours within the window are listed one by one (see :func:`_recurse`). On S3, a window of at
#: most this many hours is listed in one go from its first hour (see :func:`_list_window`):
#: either way a listing holds at most this many hours' entries.
RECURSIVE_MAX_HOURS = 96


def closed_partitions(
    wh: Warehouse,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    lookback: timedelta | None = DEFAULT_LOOKBACK,
    tables: list[str] | None = None,
    service: str | None = None,
) -> Iterator[tuple[Table, str]]:
    """``(table, folder)`` of every partition whose hour ended more than ``grace`` ago."""
    for spec, folder, _ in _closed_partitions_listed(wh, now, grace, lookback, tables, service):
        yield spec, folder


def _closed_partitions_listed(
    wh: Warehouse,
    now: datetime,
    grace: timedelta,
    lookback: timedelta | None,
    tables: list[str] | None,
    service: str | None,
    notes: PassNotes | None = None,
) -> Iterator[tuple[Table, str, list[pafs.FileInfo]]]:
    """:func:`closed_partitions`, each with what its folder held when it was listed.

    On S3 with a window of at most :data:`RECURSIVE_MAX_HOURS` hours, each service folder is
    listed from the window's first hour on (:func:`_list_window`), :data:`LIST_THREADS`
    services at a time. Otherwise each service folder is listed without recursion first (its
    ``dt=`` hour folders: on S3 one request per 1,000 hours); only its hours within
    the window are then listed, :data:`PARTITION_LIST_THREADS` at a time, or, when they are
    nearly all its hours (a young service, see :func:`_recurse`), the whole folder at once (one
    request per 1,000 objects). Either way a pass lists, and holds, what the window holds, not
    the service's history. Results come in order, a few ahead of the caller.

    ``notes``: told the hours it skips (see :func:`_note_skipped`)."""
    for name in tables or list(TABLES):
        spec = TABLES[name]
        services = [
            svc.path
            for svc in list_folder(wh, wh.table_root(name))
            if svc.type == pafs.FileType.Directory
            and svc.base_name.startswith("service=")
            and is_service(svc.base_name[len("service=") :])  # what readers read (stray_folders)
            and (service is None or svc.base_name == f"service={service}")
        ]
        if notes is not None:
            notes.add_services(len(services))
        listed = ordered_map(
            lambda path: _list_service(wh, path, now, grace, lookback, notes),
            services,
            LIST_THREADS,
            name="compact-list",
        )
        parts = ordered_map(
            _list_partition(wh), _flatten(listed), PARTITION_LIST_THREADS, name="compact-list"
        )
        with contextlib.closing(listed), contextlib.closing(parts):
            for folder, infos in parts:
                yield spec, folder, infos


#: (partition folder, its entries, or None: not listed yet).
_Partition = tuple[str, list[pafs.FileInfo] | None]


def _flatten(services: Iterator[list[_Partition]]) -> Iterator[_Partition]:
    for partitions in services:
        yield from partitions


def _list_partition(wh: Warehouse) -> Callable[[_Partition], tuple[str, list[pafs.FileInfo]]]:
    def listed(part: _Partition) -> tuple[str, list[pafs.FileInfo]]:
        folder, infos = part
        return folder, (list_folder(wh, folder) if infos is None else infos)

    return listed


def _list_service(
    wh: Warehouse,
    folder: str,
    now: datetime,
    grace: timedelta,
    lookback: timedelta | None,
    notes: PassNotes | None = None,
) -> list[_Partition]:
    """The closed partitions of the service ``folder`` within ``lookback``, in order: with
    their entries when the folder was listed whole (:func:`_recurse`) or from the window's
    first hour on (:func:`_list_window`), else to be listed.

    The hour folders are listed first (pyarrow: one request per 1,000 hours). A young service
    is then listed whole, also by pyarrow; only a longer history is listed from the window's
    first hour with boto3 (one request instead of one per hour; botocore parses each object
    listed in Python, several times pyarrow's cost, which the young ones need not pay)."""
    hours = [
        info.base_name
        for info in list_folder(wh, folder)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("dt=")
    ]
    wanted = sorted(h for h in hours if _in_window(h, now, grace, lookback))
    infos = None
    if not wanted:
        parts: list[_Partition] = []
    elif not _recurse(len(wanted), len(hours)):
        infos = _list_window(wh, folder, now, lookback)
        if infos is not None:
            found = {p for p in _hours_of(folder, infos) if _in_window(p, now, grace, lookback)}
            entries = _by_partition(folder, infos, found)
            parts = [(f"{folder}/{part}", entries[part]) for part in sorted(found)]
        else:
            parts = [(f"{folder}/{part}", None) for part in wanted]
    else:
        # Entries of the other hours are dropped at once: only the window's are kept.
        infos = list_tree(wh, folder)
        entries = _by_partition(folder, infos, set(wanted))
        parts = [(f"{folder}/{part}", entries.get(part, [])) for part in wanted]
    if notes is not None:
        _note_skipped(wh, folder, hours, infos, now, grace, lookback, notes)
    return parts


def _note_skipped(
    wh: Warehouse,
    folder: str,
    hours: list[str],
    infos: list[pafs.FileInfo] | None,
    now: datetime,
    grace: timedelta,
    lookback: timedelta | None,
    notes: PassNotes,
) -> None:
    """Tell ``notes`` the hours of ``folder`` the pass skips: how many ended before the
    lookback, and each that ended but is not closed yet with what it holds (the running hour
    is no news, :meth:`PassNotes.lines`, so it is not looked at). Its entries come from the
    service's listing when that covered it (``infos``: the folder listed whole, or from the
    window's first hour on, which reaches the open hours), else from a LIST of its own (the
    command only: the periodic pass passes no ``notes``), whose failure fails no pass."""
    if lookback is not None:
        notes.add_older(sum(1 for h in hours if _before_window(h, now, lookback)))
    recent = {h for h in hours if _ended_not_closed(h, now, grace)}
    if infos is not None:
        recent |= {h for h in _hours_of(folder, infos) if _ended_not_closed(h, now, grace)}
    if not recent:
        return
    entries = _by_partition(folder, infos, recent) if infos is not None else {}
    for part in sorted(recent):
        path = f"{folder}/{part}"
        try:
            held = entries[part] if part in entries else list_folder(wh, path)
        except StorageError as exc:  # a note is not worth failing the pass's merges for
            log.info("not saying whether %s waits to be merged: %s", path, exc)
            continue
        notes.hour_open(path, held)


def _list_window(
    wh: Warehouse, folder: str, now: datetime, lookback: timedelta | None
) -> list[pafs.FileInfo] | None:
    """On S3, a window of at most :data:`RECURSIVE_MAX_HOURS` hours is listed in one go from
    its first hour on (:func:`list_tree_after`: the hours before it are skipped by the server,
    the few after it, still open, are dropped by the caller): one LIST request for a service
    whose window is compacted, instead of one for its hour folders and one per hour. None: list
    otherwise (a local disk, no lookback or a longer one, whose entries are not held at once).
    """
    if lookback is None or lookback > timedelta(hours=RECURSIVE_MAX_HOURS):
        return None
    # The window's first hour starts at most an hour before ``now - lookback`` (its end is
    # within). Start after the hour before that one: S3 lists from "dt=<that hour>/…" on (keys
    # sort after their own prefix), SeaweedFS from the next folder (it skips the one named):
    # either way no hour of the window is missed, and at most one more hour is listed.
    first = (now - lookback - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return list_tree_after(wh, folder, f"dt={(first - timedelta(hours=1)).strftime(DT_FORMAT)}")


def _hours_of(folder: str, infos: list[pafs.FileInfo]) -> set[str]:
    """The ``dt=`` folder names the entries of ``folder`` (listed at any depth) are in."""
    prefix = folder.rstrip("/") + "/"
    return {
        i.path[len(prefix) :].partition("/")[0]
        for i in infos
        if i.path.startswith(prefix) and i.path[len(prefix) :].startswith("dt=")
    }


def _in_window(part: str, now: datetime, grace: timedelta, lookback: timedelta | None) -> bool:
    """``part`` (``dt=...``) is an hour that ended over ``grace`` ago and within ``lookback``."""
    end = _hour_end(part)
    return end is not None and end + grace <= now and (lookback is None or end >= now - lookback)


def _hour_end(part: str) -> datetime | None:
    """The end of the hour ``part`` (``dt=...``) names; None for another name."""
    try:
        return parse_dt(part[3:]) + timedelta(hours=1)
    except ValueError:
        return None


def _ended_not_closed(part: str, now: datetime, grace: timedelta) -> bool:
    """``part`` is an hour that has ended by ``now``, but not plus ``grace``."""
    end = _hour_end(part)
    return end is not None and end <= now < end + grace


def _before_window(part: str, now: datetime, lookback: timedelta) -> bool:
    """``part`` is an hour that ended before the window of ``lookback`` from ``now``."""
    end = _hour_end(part)
    return end is not None and end < now - lookback


def _recurse(wanted: int, hours: int) -> bool:
    """List a service folder whole rather than hour by hour: when the hours to look at are
    nearly all of its hours (the others, at most a quarter of these, are the open ones and a
    few just past the window), and not more than :data:`RECURSIVE_MAX_HOURS` in all (a pass
    over a long window, ``--all`` or a resumed one, lists hour by hour and so holds a few
    hours' entries at a time, not the whole folder's)."""
    return hours <= RECURSIVE_MAX_HOURS and hours - wanted <= max(2, wanted // 4)


def list_tree(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
    """Everything under ``folder``, at any depth (nothing if it does not exist). On S3 one
    request per 1,000 objects (pyarrow lists a recursive selector without a delimiter)."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    try:
        return list_entries(wh.fs, selector)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"listing {folder} in {wh.uri} failed: {exc}") from exc


def _by_partition(
    folder: str, infos: list[pafs.FileInfo], wanted: set[str]
) -> dict[str, list[pafs.FileInfo]]:
    """The entries directly in each ``wanted`` ``dt=`` folder of ``folder`` (a service's)."""
    parts: dict[str, list[pafs.FileInfo]] = {part: [] for part in wanted}
    prefix = folder.rstrip("/") + "/"
    for info in infos:
        if not info.path.startswith(prefix):
            continue
        part, sep, rest = info.path[len(prefix) :].partition("/")
        entries = parts.get(part)
        if entries is not None and sep and rest and "/" not in rest:
            entries.append(info)
    return parts
