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
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from aggregator.writer import PartitionObject, partitions

#: Most rows in one flushed object (a partition with more in one segment gets several objects).
#: Bounds the memory of writing: an object's rows are read back, sorted and encoded at once.
PART_ROWS = 200_000

_Key = tuple[str, str, str]  # (table, service, dt)


class Spill:
    """Parsed rows of one segment by partition, in IPC files under ``folder`` (emptied first)."""

    def __init__(self, folder: Path):
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)  # a crashed flush's leftovers
        folder.mkdir(parents=True)
        self._files: list[Path] = []
        self._readers: dict[int, tuple[pa.OSFile, pa.ipc.RecordBatchFileReader]] = {}
        self._batches: dict[_Key, list[tuple[int, int, int]]] = {}
        """Per partition, in arrival order: (file number, batch number, rows)."""

    def add(self, table_name: str, table: pa.Table) -> None:
        """Append ``table``'s rows (one schema, one set of dictionaries) by partition."""
        pieces = partitions(table)
        if not pieces:
            return
        number = len(self._files)
        path = self.folder / f"{number:06d}.arrow"
        batch_no = 0
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, pieces[0][2].schema) as out:
            for service, dt, rows in pieces:
                for batch in rows.to_batches():
                    out.write_batch(batch)
                    key = (table_name, service, dt)
                    self._batches.setdefault(key, []).append((number, batch_no, batch.num_rows))
                    batch_no += 1
        self._files.append(path)

    def objects(self) -> Iterator[PartitionObject]:
        """Every object to write, partition by partition (sorted keys), rows in arrival order,
        at most :data:`PART_ROWS` rows each."""
        for (table, service, dt), part, refs in self._cuts():
            yield PartitionObject(table, service, dt, part, self._table(refs))

    def object_keys(self) -> list[tuple[str, str, str, int]]:
        """``(table, service, dt, part)`` of every object :meth:`objects` yields (no data read)."""
        return [(*key, part) for key, part, _ in self._cuts()]

    def _cuts(self) -> Iterator[tuple[_Key, int, list[tuple[int, int]]]]:
        for key in sorted(self._batches):
            part, pending, count = 0, [], 0
            for number, batch_no, rows in self._batches[key]:
                if pending and count + rows > PART_ROWS:
                    yield key, part, pending
                    part, pending, count = part + 1, [], 0
                pending.append((number, batch_no))
                count += rows
            if pending:
                yield key, part, pending

    def _table(self, refs: list[tuple[int, int]]) -> pa.Table:
        batches = [self._reader(number).get_batch(batch_no) for number, batch_no in refs]
        return pa.Table.from_batches(batches).unify_dictionaries()

    def _reader(self, number: int) -> pa.ipc.RecordBatchFileReader:
        if number not in self._readers:
            source = pa.OSFile(str(self._files[number]), "rb")
            self._readers[number] = (source, pa.ipc.open_file(source))
        return self._readers[number][1]

    def close(self) -> None:
        """Close the files and delete them."""
        for source, _ in self._readers.values():
            source.close()
        self._readers.clear()
        self._batches.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
