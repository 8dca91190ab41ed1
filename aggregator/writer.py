"""Routed rows -> sorted zstd Parquet objects, one per ``service=…/dt=…`` partition and segment.

Object keys come from the buffer segment the rows came from:
``<table>/service=<svc>/dt=<hour>/<node-id>-<segment seq>-<part>.parquet`` (``part`` numbers the
objects of a partition that has more rows in one segment than one object holds, see spill.py).
A flush that is retried, or replayed after a crash, produces the same rows under the same keys
and so overwrites instead of duplicating (a retry does not even write again the objects an
earlier attempt committed: see flusher.py). Within a file rows are sorted by ``timestamp`` (min/max
statistics then let engines skip row groups); the partition columns live in the path only.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.storage import put_table
from athena.schema import partition_path
from athena.timerange import dt_of
from athena.warehouse import Warehouse

_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True)
class WrittenFile:
    """One committed object: where it is and how many rows it holds."""

    table: str
    service: str
    dt: str
    path: str
    rows: int


@dataclass(frozen=True)
class PartitionObject:
    """The rows of one object to write: ``part`` numbers the objects of one partition."""

    table: str
    service: str
    dt: str
    part: int
    rows: pa.Table


def object_name(node_id: str, segment_seq: int, part: int = 0) -> str:
    """File name of one object of one buffer segment in a partition (the same on every retry)."""
    return f"{node_id}-{segment_seq:016d}-{part:04d}.parquet"


def is_segment_object(name: str, node_id: str, segment_seq: int) -> bool:
    """Whether ``name`` is an :func:`object_name` of this node's segment (any part)."""
    prefix = object_name(node_id, segment_seq)[: -len("0000.parquet")]
    return re.fullmatch(re.escape(prefix) + r"\d{4}\.parquet", name) is not None


def object_path(wh: Warehouse, table: str, service: str, dt: str, name: str) -> str:
    """Where the object ``name`` of one partition lives in the warehouse."""
    return wh.path(partition_path(table, service, dt), name)


def partitions(table: pa.Table) -> list[tuple[str, str, pa.Table]]:
    """Split a table with a ``service`` column into ``(service, dt, rows sorted by time)``."""
    if table.num_rows == 0:
        return []
    service = table["service"].combine_chunks()
    if not isinstance(service, pa.DictionaryArray):
        service = pc.dictionary_encode(service)
    ts_ms = pc.cast(table["timestamp"], pa.int64()).combine_chunks()
    svc = service.indices.to_numpy(zero_copy_only=False)
    ms = ts_ms.to_numpy(zero_copy_only=False)
    data = table.drop_columns(["service"])
    if not _in_order(svc, ms):  # the sort is stable: rows already in order would stay put
        order = pc.sort_indices(
            pa.table({"s": service.indices, "t": ts_ms}),
            sort_keys=[("s", "ascending"), ("t", "ascending")],
        )
        index = order.to_numpy()
        svc, ms = svc[index], ms[index]
        data = data.take(order)
    hour = np.floor_divide(ms, _MS_PER_HOUR)
    change = np.flatnonzero((svc[1:] != svc[:-1]) | (hour[1:] != hour[:-1])) + 1
    bounds = [0, *change.tolist(), len(svc)]
    names = service.dictionary.to_pylist()
    out = []
    for start, end in itertools.pairwise(bounds):
        dt = _dt_of_hour(int(hour[start]))
        out.append((names[int(svc[start])], dt, data.slice(start, end - start)))
    return out


def _in_order(service: np.ndarray, ms: np.ndarray) -> bool:
    """Whether the rows are sorted by service index, then time (a segment of one source's
    batches often is): then the sort and the copy of every column (``take``) are skipped."""
    same = service[1:] == service[:-1]
    return bool(((service[1:] > service[:-1]) | (same & (ms[1:] >= ms[:-1]))).all())


def _dt_of_hour(hour: int) -> str:
    from datetime import UTC, datetime

    return dt_of(datetime.fromtimestamp(hour * 3600, tz=UTC))


#: Partition objects written at once: S3 PUTs cost tens of ms each, and a flush of a hundred
#: services' rows is a hundred objects; encoding releases the GIL too.
WRITE_THREADS = 8
#: Rows of objects being written at once (in memory), unless a single object has more.
WRITE_ROWS = 200_000


def write_partitions(
    wh: Warehouse, table_name: str, table: pa.Table, file_name: str
) -> list[WrittenFile]:
    """Write every partition of ``table`` as ``file_name`` inside its folder (in parallel)."""
    objects = [
        PartitionObject(table_name, service, dt, 0, rows) for service, dt, rows in partitions(table)
    ]
    return write_objects(wh, objects, lambda _part: file_name)


def write_objects(
    wh: Warehouse,
    objects: Iterable[PartitionObject],
    file_name: Callable[[int], str],
    on_written: Callable[[WrittenFile], None] | None = None,
) -> list[WrittenFile]:
    """Write partition objects, each sorted by time, ``file_name(part)`` in its partition folder.

    Up to :data:`WRITE_THREADS` at once while their rows stay under :data:`WRITE_ROWS`. After a
    failure no new write starts; the first failure is raised once the writes in flight have
    finished. ``on_written`` hears of every object committed, also those of a call that fails:
    a retry need not write them again (see flusher.py).
    """

    def put(obj: PartitionObject) -> WrittenFile:
        path = object_path(wh, obj.table, obj.service, obj.dt, file_name(obj.part))
        rows = (
            obj.rows if _chunks_in_order(obj.rows["timestamp"]) else obj.rows.sort_by("timestamp")
        )
        put_table(wh, path, rows)  # sort_by is stable: ties keep arrival order
        return WrittenFile(obj.table, obj.service, obj.dt, path, obj.rows.num_rows)

    written: list[WrittenFile] = []
    failures: list[BaseException] = []
    running: dict[Future[WrittenFile], int] = {}

    def settle() -> None:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            running.pop(future)
            error = future.exception()
            if error is not None:
                failures.append(error)
                continue
            committed = future.result()
            written.append(committed)
            if on_written is not None:
                on_written(committed)

    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        try:
            for obj in objects:
                while running and (
                    len(running) >= WRITE_THREADS
                    or sum(running.values()) + obj.rows.num_rows > WRITE_ROWS
                ):
                    settle()
                if failures:
                    break
                running[pool.submit(put, obj)] = obj.rows.num_rows
        finally:  # also when reading the objects fails: what is in flight is still reported
            while running:
                settle()
    if failures:
        _raise_first(failures)
    return written


def _raise_first(failures: list[BaseException]) -> NoReturn:
    """Raise the first failure, keeping no reference to it in this module's frames.

    Raised from ``write_objects`` itself, the error's traceback would hold that frame, whose
    ``failures`` list holds the error: a reference cycle, freed only when Python's cycle
    collector runs, with the failed objects' rows in it (the put frames'). Those rows are
    views of the spill's files (spill.py): the deleted files would keep their disk space
    across the retry, which writes a fresh spill, for as long as the cycle lives."""
    error = failures[0]
    failures.clear()
    try:
        raise error
    finally:
        del error  # this frame is in the traceback too


def _chunks_in_order(ts: pa.ChunkedArray) -> bool:
    """True when chunks that are each sorted (spilled pieces are) follow one another in time,
    as a source's batches usually do: the whole column is sorted, no need to sort it again."""
    chunks = [c for c in ts.chunks if len(c)]
    if any(c.null_count for c in chunks):
        return False
    return all(
        prev[len(prev) - 1].value <= nxt[0].value for prev, nxt in itertools.pairwise(chunks)
    )
