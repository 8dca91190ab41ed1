"""A segment's parsed rows, parked on local disk by partition until the segment is written.

A segment is parsed a slice at a time (memory), but its objects are written once for the whole
segment (S3 requests, small files): each parsed part is split by partition
(:func:`aggregator.writer.partitions`) and appended to an Arrow IPC file in the spill folder,
one record batch per partition. When the segment is parsed, :meth:`Spill.objects` reads each
partition's batches back -- only those -- in arrival order, at most :data:`PART_ROWS` rows per
object. So memory holds one slice being parsed and the objects being written, whatever the
segment size, and the disk holds about one segment of parsed rows for the length of a flush.

The cut into objects depends only on the segment's contents: a retried or replayed flush writes
the same rows under the same keys.

The spill is scratch space, never the only copy (the segment is): when the buffer disk cannot
take it (full, over quota, an I/O error), the rows of the part being added and of every later
one are held in memory instead, with one WARNING that names the folder. A flush then needs
about one segment of parsed rows in memory (``--segment-bytes`` bounds it), but it goes on:
a full buffer disk must never block the one thing that frees it (committing and deleting
segments).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Container, Iterator
from pathlib import Path

import pyarrow as pa

from aggregator.writer import PartitionObject, partitions

#: Most rows in one flushed object (a partition with more in one segment gets several objects).
#: Bounds the memory of writing: an object's rows are read back, sorted and encoded at once.
PART_ROWS = 200_000

_Key = tuple[str, str, str]  # (table, service, dt)
#: ``(table, service, dt, part)``: one object of a segment.
ObjectKey = tuple[str, str, str, int]

log = logging.getLogger("logq.aggregator.spill")


class Spill:
    """Parsed rows of one segment by partition, in IPC files under ``folder`` (emptied first)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._files: list[Path | list[pa.RecordBatch]] = []
        """Per part added: its IPC file, or its batches when the disk refused them."""
        self._batches: dict[_Key, list[tuple[int, int, int]]] = {}
        """Per partition, in arrival order: (part number, batch number, rows)."""
        self.in_memory = False
        """True once the disk refused a part: it and every later one are held in memory."""
        shutil.rmtree(folder, ignore_errors=True)  # a crashed flush's leftovers
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            self._refused(exc)

    def add(self, table_name: str, table: pa.Table) -> None:
        """Append ``table``'s rows (one schema, one set of dictionaries) by partition."""
        pieces = partitions(table)
        if not pieces:
            return
        number = len(self._files)
        batches = [
            ((table_name, service, dt), batch)
            for service, dt, rows in pieces
            for batch in rows.to_batches()
        ]
        part: Path | list[pa.RecordBatch] = [batch for _, batch in batches]
        if not self.in_memory:
            path = self.folder / f"{number:06d}.arrow"
            try:
                _write_ipc(path, pieces[0][2].schema, part)
                part = path
            except OSError as exc:
                path.unlink(missing_ok=True)  # give back what the partial file took
                self._refused(exc)
        for batch_no, (key, batch) in enumerate(batches):
            self._batches.setdefault(key, []).append((number, batch_no, batch.num_rows))
        self._files.append(part)

    def _refused(self, exc: OSError) -> None:
        if not self.in_memory:
            log.warning(
                "cannot spill parsed rows to %s (%s); holding this segment's rows in memory "
                "instead. The buffer disk (--buffer-dir) needs free space: the flush goes on "
                "and deleting flushed segments frees some, but give the volume more room or "
                "lower --buffer-limit-bytes",
                self.folder,
                exc.strerror or exc,
            )
        self.in_memory = True

    def objects(self, skip: Container[ObjectKey] = ()) -> Iterator[PartitionObject]:
        """Every object to write, partition by partition (sorted keys), rows in arrival order,
        at most :data:`PART_ROWS` rows each; those whose key is in ``skip`` are not read."""
        for (table, service, dt), part, refs, _ in self._cuts():
            if (table, service, dt, part) not in skip:
                yield PartitionObject(table, service, dt, part, self._table(refs))

    def object_keys(self) -> list[ObjectKey]:
        """``(table, service, dt, part)`` of every object :meth:`objects` yields (no data read)."""
        return [(*key, part) for key, part, _, _ in self._cuts()]

    def object_rows(self) -> dict[ObjectKey, int]:
        """The rows of every object :meth:`objects` yields, by key (no data read)."""
        return {(*key, part): rows for key, part, _, rows in self._cuts()}

    def partition_rows(self) -> dict[_Key, int]:
        """The rows of every ``(table, service, dt)`` partition, all its objects together."""
        return {key: sum(b[2] for b in batches) for key, batches in self._batches.items()}

    def _cuts(self) -> Iterator[tuple[_Key, int, list[tuple[int, int]], int]]:
        for key in sorted(self._batches):
            part, pending, count = 0, [], 0
            for number, batch_no, rows in self._batches[key]:
                if pending and count + rows > PART_ROWS:
                    yield key, part, pending, count
                    part, pending, count = part + 1, [], 0
                pending.append((number, batch_no))
                count += rows
            if pending:
                yield key, part, pending, count

    def _table(self, refs: list[tuple[int, int]]) -> pa.Table:
        batches = []
        for number, part_refs in itertools.groupby(refs, key=lambda ref: ref[0]):
            batches += self._read(number, [batch_no for _, batch_no in part_refs])
        return pa.Table.from_batches(batches).unify_dictionaries()

    def _read(self, number: int, batch_nos: list[int]) -> list[pa.RecordBatch]:
        """Batches of one part, their columns views of its file's pages (memory-mapped).

        Read into memory instead, every batch took fresh pages (faulted in and zeroed by the
        kernel) and a copy of bytes the page cache holds anyway. The file is mapped for this
        object only: Arrow unmaps it once the object's rows are dropped, so the process maps
        the objects being written, not the whole spill. The views outlive the closed file
        (Arrow keeps the mapping while a buffer refers to it) and even its deletion by
        :meth:`close`; a spill file is never shortened, so no view points past its end."""
        part = self._files[number]
        if isinstance(part, list):
            return [part[batch_no] for batch_no in batch_nos]
        with pa.memory_map(str(part)) as source:
            reader = pa.ipc.open_file(source)
            return [reader.get_batch(batch_no) for batch_no in batch_nos]

    def close(self) -> None:
        """Delete the files (rows already read back stay readable)."""
        self._batches.clear()
        self._files.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_ipc(path: Path, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
        for batch in batches:
            out.write_batch(batch)
