"""Which partitions and files a query reads: the local engine's partition pruning.

Athena prunes by the ``dt``/``service`` predicates through partition projection; the local engine
does the same by listing only the folders in range, through the warehouse's ``pyarrow.fs``
filesystem (so it works the same for a local directory and for S3). The files listed here are the
only ones DuckDB is given; tests assert on them to show the pruning. On S3 the listings run
concurrently and a service mostly in range is listed in one recursive listing (see :func:`plan`):
the plan is the same as listing each folder in turn, only sooner.

Reader rule shared with every writer: read every object ending in ``.parquet`` whose name does not
start with ``_`` or ``.`` (writers expose only complete files under such names), except the inputs
of a compaction merge whose complete output is already there (or a short output of one that is
not): :mod:`athena.intents`, the rule compaction's own recovery applies. A listing that may
have taken more than one request (S3 pages of 1,000 keys) is no snapshot, so it is listed again
until two agree (:func:`_settled_listing`): a merge committed between two pages is never missed.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from pyarrow.fs import FileInfo

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
    """``value -> path`` of the ``key=value`` folders directly under ``path`` (missing: none)
    whose value a writer writes (:func:`is_partition_value`); the others are noted
    (:func:`athena.stray_folders.note_strays`) and left out."""
    import pyarrow.fs as pafs

    from athena.stray_folders import note_strays
    from athena.warehouse import list_entries

    infos = list_entries(wh.fs, pafs.FileSelector(path, allow_not_found=True))
    prefix = key + "="
    out = {}
    strays = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(prefix):
            value = name[len(prefix) :]
            if is_partition_value(key, value):
                out[value] = info.path
            else:
                strays.append(name)
    note_strays(shown_path(wh, path), key, strays)
    return out


def is_partition_value(key: str, value: str) -> bool:
    """Whether a ``key=value`` folder (``service`` or ``dt``) is one the aggregator writes,
    and so one Athena's partition projection reads: a sanitised service name
    (:func:`athena.stray_folders.is_service`), an hour (:func:`is_dt`). No reader reads
    another (:mod:`athena.stray_folders`)."""
    from athena.stray_folders import is_service

    return is_dt(value) if key == "dt" else is_service(value)


def shown_path(wh: Warehouse, path: str) -> str:
    """``path`` inside the warehouse filesystem as a message names it (``s3://`` on S3)."""
    return f"s3://{path}" if wh.is_s3 else path


def list_services(wh: Warehouse, table: str) -> list[str]:
    """Services that have a folder under ``table`` (sorted); a ``service=`` folder whose name
    the aggregator never writes is noted, not listed (:mod:`athena.stray_folders`)."""
    return sorted(_subdirs(wh, wh.table_root(table), "service"))


def list_dts(wh: Warehouse, table: str, service: str) -> list[str]:
    """The ``dt`` partitions one service has (sorted, oldest first); a ``dt=`` folder that is
    no hour is noted, not listed (:mod:`athena.stray_folders`)."""
    return sorted(_subdirs(wh, wh.path(table, f"service={service}"), "dt"))


#: What :func:`athena.timerange.dt_of` writes: four year digits, then two each (ASCII only:
#: ``\d`` would take other scripts' digits, which ``int`` reads but no writer writes).
_DT_SHAPE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})-([0-9]{2})")


@lru_cache(maxsize=1 << 16)
def is_dt(value: str) -> bool:
    """``value`` is an hour as the writers name it (``2026-11-28-05``): not ``garbage``, nor
    ``2026-1-1-1``, which ``strptime`` would take but no writer writes and no range selects,
    nor ``2026-02-30-05``. The same answer as ``dt_of(parse_dt(value)) == value``, without
    ``strptime`` (30 us a call: a second for a warehouse of 30,000 hours), and once per
    value (``logq services`` asks of the same hours for each of hundreds of services)."""
    match = _DT_SHAPE.fullmatch(value)
    if match is None:
        return False
    try:
        datetime(*map(int, match.groups()))
    except ValueError:
        return False
    return True


def hours_with_data(
    wh: Warehouse, table: str, service: str, between: tuple[str, str] | None = None
) -> list[str]:
    """The hours (``dt`` values, oldest first, from ``between[0]`` to ``between[1]`` when
    given) of one service that hold data: a valid ``dt`` and, locally, a file the readers read
    (:func:`is_data_file`), so that a folder emptied by hand, one holding only an in-flight
    ``.tmp`` write or a ``dt=garbage`` left by a copy is no hour of data (``logq services``).
    Locally one listing of the service's folder, then one of each hour in range: not one
    recursive listing, which follows symbolic links (a link to a parent folder in two hours'
    folders made it list for ever); on S3, where a folder exists only while it holds an
    object, the one listing of its ``dt=`` folders, no request added.

    A local directory is read with :func:`os.scandir` (:func:`_local_hours`): pyarrow's listing
    stats every entry and reads a folder to its end, where the names and their types are
    enough and the first data file answers (CPU a service: a year of hours of one file each,
    190 ms, now 94; a month of 30 files an hour, 69 ms, now 13; what is left is mostly the
    kernel opening and reading each hour's folder, which an exact count cannot skip).
    """
    lo, hi = between or ("", "~")
    path = wh.path(table, f"service={service}")
    if _is_local(wh):
        return _local_hours(path, lo, hi)
    folders = _subdirs(wh, path, "dt")
    hours = sorted(dt for dt in folders if lo <= dt <= hi and is_dt(dt))
    if wh.is_s3:
        return hours
    return [dt for dt in hours if _holds_data_file(wh, folders[dt])]


def _holds_data_file(wh: Warehouse, folder: str) -> bool:
    """Whether the readers read a file of ``folder``: one listing, no intents read (what
    :func:`list_files` would leave out is there only beside a data file it keeps: a merge's
    inputs beside its output, or that output beside its inputs)."""
    import pyarrow.fs as pafs

    from athena.warehouse import list_entries

    infos = list_entries(wh.fs, pafs.FileSelector(folder, allow_not_found=True))
    return any(i.type == pafs.FileType.File and is_data_file(i.base_name) for i in infos)


def _is_local(wh: Warehouse) -> bool:
    """Whether ``wh`` is a directory of this machine, its paths the operating system's."""
    import pyarrow.fs as pafs

    return not wh.is_s3 and isinstance(wh.fs, pafs.LocalFileSystem)


def _local_hours(path: str, lo: str, hi: str) -> list[str]:
    """:func:`hours_with_data` of the local service folder ``path``: its ``dt=`` folders from
    ``lo`` to ``hi`` that hold a data file, as pyarrow's listing answers (a link is followed;
    one that leads nowhere, or in a circle, is no folder or file). Names are pruned before
    anything else is looked at: the range is one comparison of the whole name. ``path`` is
    text as pyarrow takes it, given to :func:`os.scandir` as :func:`os_path` makes it (under
    ``LC_ALL=C PYTHONUTF8=0`` a warehouse in ``/data/wärehouse`` failed with "'ascii' codec
    can't encode character")."""
    from athena.stray_folders import note_strays
    from athena.warehouse import os_path

    shown, path = path, os_path(path)
    first, last = f"dt={lo}", f"dt={hi}"  # between them: names starting with "dt="
    entries = _scan(path)
    note_strays(shown, "dt", [e.name for e in entries if _stray_hour(e)])
    inside = {e.name[3:]: e for e in entries if first <= e.name <= last}
    hours = sorted(dt for dt, e in inside.items() if is_dt(dt) and _entry_is(e, folder=True))
    return [dt for dt in hours if _local_data_file(f"{path}/dt={dt}")]


def _stray_hour(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a ``dt=`` folder whose name is no hour, as :func:`_subdirs` notes
    one (a link that cannot be followed is not looked into: this is only for the note)."""
    if not entry.name.startswith("dt=") or is_dt(entry.name[3:]):
        return False
    try:
        return entry.is_dir()
    except OSError:
        return False


def _local_data_file(folder: str) -> bool:
    """:func:`_holds_data_file` for a local folder, stopping at the first data file (an hour
    of a warehouse not compacted holds hundreds)."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return False
    with entries:
        return any(is_data_file(e.name) and _entry_is(e, folder=False) for e in entries)


def _scan(folder: str) -> list[os.DirEntry[str]]:
    """The entries of a local folder: none when it does not exist, a folder above it being a
    file too (``envoy_access`` a file: pyarrow's ``allow_not_found`` answers no entries); a
    folder that is a file, or denied, is an error, as in pyarrow's listing."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        if os.path.exists(folder):  # the folder itself is a file
            raise
        return []


#: What makes a link one that leads nowhere: pyarrow's listing leaves those entries out (it
#: raises on any other error, such as a link into a folder this user may not enter).
_NO_TARGET = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def _entry_is(entry: os.DirEntry[str], folder: bool) -> bool:
    """Whether ``entry`` is a folder (``folder``) or a file, a link followed; False for a link
    that leads nowhere or in a circle (:data:`_NO_TARGET`). A link that cannot be followed for
    another reason (permission denied) is an error, as in pyarrow's listing: taken as no
    folder, a ``dt=`` link into a folder closed to this user made ``logq services`` count one
    hour less, where the readers fail on it."""
    try:
        return entry.is_dir() if folder else entry.is_file()
    except OSError as exc:
        if exc.errno in _NO_TARGET:
            return False
        raise


def list_files(wh: Warehouse, path: str, every_file: bool = False) -> tuple[DataFile, ...]:
    """The data files of one partition folder, by the reader rule, in name order (with
    ``every_file``, the inputs of an unfinished compaction too: Athena reads them)."""
    import pyarrow.fs as pafs

    infos = _settled_listing(wh, pafs.FileSelector(path, allow_not_found=True))
    return _data_files(wh, path, [i for i in infos if i.type == pafs.FileType.File], every_file)


#: Entries one S3 LIST request returns (AWS and SeaweedFS: 1,000). A longer listing took several
#: requests, and is no snapshot: see :func:`_settled_listing`.
S3_PAGE_ENTRIES = 1000
#: The same for a local folder, which is read in chunks too (``getdents``, 32 KiB: about 500 of
#: the writer's names); POSIX leaves a file added or removed during the read unspecified.
LOCAL_PAGE_ENTRIES = 256
#: Listings of one folder before :class:`ListingUnsettled`: a merge takes seconds to read and
#: write its group, a listing of a few pages well under one, so the second almost always agrees.
SETTLE_LISTINGS = 6


class ListingUnsettled(OSError):
    """A folder's listing kept changing under the reader (compaction merging it right then)."""


def _settled_listing(wh: Warehouse, selector: pafs.FileSelector) -> list[FileInfo]:
    """``wh.fs.get_file_info(selector)``, as of one moment as far as compaction is concerned.

    A listing of more than one page is not a snapshot: a merge that commits between two page
    requests, its output ``c-<id>`` on a page listed before it was written and its inputs on
    one listed after they were deleted, is missed whole (rows missing, no error: the files
    read are all there), and one whose inputs are listed but not its intent is read twice. So
    a listing that may have taken several pages is taken only when the next one agrees with it
    (:func:`_agrees`); otherwise the next one is checked the same way. Each listing is
    :func:`athena.warehouse.list_entries`'s: the hour folder a flush makes right then is listed.
    """
    from athena.warehouse import list_entries

    infos = list_entries(wh.fs, selector)
    page = S3_PAGE_ENTRIES if wh.is_s3 else LOCAL_PAGE_ENTRIES
    if len(infos) < page:
        return infos
    for _ in range(SETTLE_LISTINGS - 1):
        again = list_entries(wh.fs, selector)
        if _agrees(infos, again, _hidden(wh, infos)):
            return infos
        infos = again
    raise ListingUnsettled(
        f"the files under {selector.base_dir} changed between each of {SETTLE_LISTINGS} "
        "listings (compaction merging them right now?); run the command again in a minute"
    )


def _agrees(first: list[FileInfo], then: list[FileInfo], hidden: frozenset[str]) -> bool:
    """Whether the listing ``first`` saw every merge as before or as after it, as shown by the
    later listing ``then``: each data file that ``first`` reads (less ``hidden``, the paths
    its intents hide: :func:`_hidden`) is still there (none was deleted as a merge's input),
    and ``then`` has no compaction output or intent that ``first`` lacks (no merge was started
    or written meanwhile). New flush files are fine: data that arrived meanwhile.

    A new intent counts: a merge that starts while ``first`` is listed can have its intent
    on a page listed before it was written and its output on one listed after, its inputs
    listed too. Its inputs then stay until the deletes (for good when they fail, or the
    compactor is killed there), so nothing of ``first`` is gone from ``then``, and only the
    intent shows that ``first`` would read those rows twice (no intent: none hidden).

    Inputs that ``first`` hides (its intent and complete output listed) and intents may go:
    ``first`` already reads that merge as done. A merge deleting its inputs in batches (one
    S3 request per 1,000) would otherwise make each listing of the folder differ from the
    next for seconds, and readers fail with :class:`ListingUnsettled` where ``first`` was right.
    """
    from athena.intents import is_intent
    from athena.schema import is_compacted_object

    def started(name: str) -> bool:
        return is_compacted_object(name) or is_intent(name)

    def kept(info: FileInfo) -> bool:
        return is_data_file(info.base_name) or is_intent(info.base_name)

    read = {i.path for i in first if is_data_file(i.base_name) and i.path not in hidden}
    before = {i.path for i in first if kept(i)}
    after = {i.path for i in then if kept(i)}
    return read <= after and not any(started(p.rpartition("/")[2]) for p in after - before)


def _hidden(wh: Warehouse, infos: list[FileInfo]) -> frozenset[str]:
    """The paths among ``infos`` (a listing) that the intents listed beside them hide
    (:func:`athena.intents.superseded`, folder by folder); no request without an intent."""
    from athena.intents import is_intent, superseded

    names: dict[str, list[str]] = {}
    for info in infos:
        folder, _, name = info.path.rpartition("/")
        names.setdefault(folder, []).append(name)
    return frozenset(
        f"{folder}/{name}"
        for folder, listed in names.items()
        if any(map(is_intent, listed))
        for name in superseded(wh.fs, folder, listed)
    )


def _data_files(
    wh: Warehouse, folder: str, infos: list[FileInfo], every_file: bool = False
) -> tuple[DataFile, ...]:
    """The data files among ``infos`` (the files of one listing of ``folder``), in name order,
    less (unless ``every_file``) those a compaction intent there says are replaced
    (:func:`athena.intents.superseded`: a merge whose input deletes failed, or were cut by a
    kill, would count its rows twice until the next compaction pass). Reading the intents is
    the only cost, and only when there is one.
    """
    from athena.intents import is_intent, superseded

    names = [i.base_name for i in infos]
    skip = not every_file and any(map(is_intent, names))
    skipped = superseded(wh.fs, folder, names) if skip else frozenset()
    files = [
        DataFile(i.path, i.size or 0)
        for i in infos
        if is_data_file(i.base_name) and i.base_name not in skipped
    ]
    return tuple(sorted(files, key=lambda f: f.path))


#: Ranges of at most this many hours look their ``dt`` folders up by name (one listing each)
#: instead of listing every hour a service has: on S3 a service with a year of data takes ~9
#: sequential LIST calls, where ``--since 1h`` needs its two hours.
PROBE_MAX_HOURS = 6

#: S3 LISTs in flight at once. Each is a round trip (20-30 ms on AWS): one after the other,
#: ``--since 1d`` over 500 services spent minutes listing before the query started. A local
#: folder listing is a few system calls and tens of microseconds of Python that threads would
#: only take turns at (the GIL; 2 cores measured no faster with 2-8 threads): one at a time.
S3_LISTING_THREADS = 32


def plan(
    wh: Warehouse,
    table: str,
    services: list[str] | None,
    trange: TimeRange | None,
    every_file: bool = False,
) -> list[Partition]:
    """Partitions (with files) a query over ``table`` reads, in (service, dt) order.

    ``services`` None means every service; names are matched as sanitised partition values.
    ``trange`` None means every hour. Partitions without data files are left out, and so are
    folders whose ``service`` or ``dt`` no writer writes (:func:`is_partition_value`), as
    Athena's projection never reads them: the listings that meet them note them.
    ``every_file``: what Athena reads, which cannot skip the inputs of an unfinished compaction
    (see :func:`list_files`), rather than what the local engine reads.

    How each service's files are found (on S3 :data:`S3_LISTING_THREADS` listings at once,
    :func:`_ordered`; the result is the same either way):

    * ranges of at most :data:`PROBE_MAX_HOURS` hours: each hour's folder, by name;
    * longer ranges (or ``trange`` None): the service's ``dt`` folders, then each one in range;
    * except on S3 when the range holds at least half of those folders: one recursive listing
      of the service folder instead (:func:`_walk_service`), one request per 1,000 files rather
      than one per hour, and never more than twice the keys of the files the query then reads
      anyway (a walk of more than one page is listed twice and settled hour by hour,
      :func:`_walk_service`; an hour's folder of over 1,000 files is listed until two listings
      agree, :func:`_settled_listing`). A short range over a long history keeps the
      per-hour listings: a recursive one would page through every file of the history
      (hundreds per hour when compaction is off).
      Local folders are never walked recursively: pyarrow's walk follows symbolic links (into
      anything linked from a partition, in circles for a link to a parent folder).
    """
    from athena.schema import sanitize_service

    present = _subdirs(wh, wh.table_root(table), "service")
    if services is None:
        chosen = sorted(present)
    else:
        chosen = sorted({sanitize_service(s) for s in services} & set(present))
    workers = S3_LISTING_THREADS if wh.is_s3 else 1
    with _io_threads(workers):
        jobs = _jobs(wh, present, chosen, trange, workers)

        def files_of(job: _Job) -> tuple[DataFile, ...] | dict[str, tuple[DataFile, ...]]:
            svc, dt = job
            if dt is None:
                wanted = trange.contains_dt if trange is not None else None
                return _walk_service(wh, present[svc], every_file, wanted)
            return list_files(wh, f"{present[svc]}/dt={dt}", every_file)

        listed = _ordered(files_of, jobs, workers)
    out = []
    # Jobs come in (service, dt) order, a walked service's hours are sorted here.
    for (svc, dt), files in zip(jobs, listed, strict=True):
        hours = sorted(files.items()) if isinstance(files, dict) else [(dt or "", files)]
        for hour, found in hours:
            if found and (trange is None or trange.contains_dt(hour)):
                out.append(Partition(table, svc, hour, found))
    return out


#: What to list: (service, dt) that hour's folder, (service, None) the whole service folder.
_Job = tuple[str, str | None]


def _jobs(
    wh: Warehouse,
    present: dict[str, str],
    chosen: list[str],
    trange: TimeRange | None,
    workers: int,
) -> list[_Job]:
    """The listings that find the files of the ``chosen`` services (folders in ``present``),
    as :func:`plan` says, in (service, dt) order."""
    if trange is not None and trange.hour_count() <= PROBE_MAX_HOURS:
        return [(svc, dt) for svc in chosen for dt in trange.hours()]
    listed = _ordered(lambda svc: _subdirs(wh, present[svc], "dt"), chosen, workers)
    jobs: list[_Job] = []
    for svc, folders in zip(chosen, listed, strict=True):
        inside = sorted(dt for dt in folders if trange is None or trange.contains_dt(dt))
        if wh.is_s3 and inside and 2 * len(inside) >= len(folders):
            jobs.append((svc, None))
        else:
            jobs.extend((svc, dt) for dt in inside)
    return jobs


@contextmanager
def _io_threads(count: int) -> Iterator[None]:
    """pyarrow's IO thread pool at least ``count`` threads while planning: its S3 listings run
    there, not in the calling thread, and its default 8 held 32 concurrent listings to 8 (129
    LISTs at 50 ms each: 1.0 s, 0.52 s with 32). Restored afterwards, so the query's own reads
    are left as they were."""
    import pyarrow as pa

    before = pa.io_thread_count()
    if before >= count:
        yield
        return
    pa.set_io_thread_count(count)
    try:
        yield
    finally:
        pa.set_io_thread_count(before)


def _walk_service(
    wh: Warehouse,
    path: str,
    every_file: bool = False,
    wanted: Callable[[str], bool] | None = None,
) -> dict[str, tuple[DataFile, ...]]:
    """``dt -> data files`` of every ``dt=`` folder directly under the S3 service folder
    ``path`` (only those whose ``dt`` is ``wanted``, when given), from one recursive listing
    (one request per 1,000 keys, no delimiter). The same files :func:`list_files` finds in each
    folder: files nested deeper, or in folders that are not ``dt=`` partitions, are not read.

    A walk of several pages is listed a second time and settled folder by folder
    (:func:`_settled_folders`): a merge never spans two folders, so a change in one hour (a
    merge, an S3 lifecycle rule expiring the oldest hour) says nothing of the others, and an
    hour the query does not read needs no settling at all.
    """
    import pyarrow.fs as pafs

    from athena.warehouse import list_entries

    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    infos = list_entries(wh.fs, selector)
    folders = _dt_folders(path, infos, wanted)
    if len(infos) >= S3_PAGE_ENTRIES:
        again = _dt_folders(path, list_entries(wh.fs, selector), wanted)
        folders = _settled_folders(wh, path, folders, again)
    hours = {
        folder[3:]: _data_files(wh, f"{path}/{folder}", got, every_file)
        for folder, got in folders.items()
    }
    return {dt: files for dt, files in hours.items() if files}


def _dt_folders(
    path: str, infos: list[FileInfo], wanted: Callable[[str], bool] | None
) -> dict[str, list[FileInfo]]:
    """The files of a recursive listing of the service folder ``path``, by ``dt=`` folder
    directly under it whose ``dt`` is an hour (:func:`is_dt`; and ``wanted``, when given)."""
    import pyarrow.fs as pafs

    start = len(path) + 1
    found: dict[str, list[FileInfo]] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(path + "/"):
            continue
        folder = info.path[start:].rpartition("/")[0]
        if not folder.startswith("dt=") or "/" in folder or not is_dt(folder[3:]):
            continue  # (a dt= folder that is no hour: noted by the listing that chose the walk)
        if wanted is None or wanted(folder[3:]):
            found.setdefault(folder, []).append(info)
    return found


def _settled_folders(
    wh: Warehouse,
    path: str,
    first: dict[str, list[FileInfo]],
    then: dict[str, list[FileInfo]],
) -> dict[str, list[FileInfo]]:
    """Each folder's files as ``first`` (a walk of several pages) saw them when ``then`` (the
    next walk) agrees with it there (:func:`_agrees`); a folder where they disagree is listed
    again on its own (:func:`_settled_listing`, one request unless it holds 1,000 files)."""
    import pyarrow.fs as pafs

    settled: dict[str, list[FileInfo]] = {}
    for folder in sorted(first.keys() | then.keys()):
        seen = first.get(folder, [])
        if _agrees(seen, then.get(folder, []), _hidden(wh, seen)):
            if seen:
                settled[folder] = seen
            continue
        selector = pafs.FileSelector(f"{path}/{folder}", allow_not_found=True)
        files = [i for i in _settled_listing(wh, selector) if i.type == pafs.FileType.File]
        if files:
            settled[folder] = files
    return settled


T = TypeVar("T")
R = TypeVar("R")


def _ordered(work: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[work(i) for i in items]``, up to ``workers`` listings at once
    (:func:`athena.threads.ordered_list`)."""
    from athena.threads import ordered_list

    return ordered_list(work, items, workers, name="logq-listing")
