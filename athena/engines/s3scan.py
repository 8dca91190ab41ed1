"""An S3 table for DuckDB whose scans hold a bounded number of Parquet footers.

DuckDB scans a registered ``pyarrow.dataset`` by calling its ``scanner(columns=..., filter=...)``
(projection and filter pushdown) and reading the result. A ``FileSystemDataset`` keeps every
fragment it has scanned with that file's footer decoded (``ParquetFileFragment`` caches its
metadata for the dataset's life): over the thousands of small files flushes leave, a query
kept them all, ~50 KB a file (``logq errors --since 1d`` over 500 services: ~855 MiB).

:class:`ChunkedScan` is that dataset, but its ``scanner`` reads the files through a fresh dataset
of at most :data:`FILES_PER_SCAN` files at a time, each dropped (footers and all) before the
next one opens. DuckDB still pushes the same columns and filter into every chunk, so only the
columns a query reads are fetched. Its own fragments are never scanned by DuckDB; they are there
so that anything reading it as a plain dataset still sees every file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

#: Files one pyarrow dataset reads at a time. Their footers (~50 KB each for our tables) are
#: what a scan holds: 256 files, ~13 MB per table reference. Smaller chunks cost time: pyarrow
#: reads a few files ahead only within a chunk, and refills at each chunk's start.
FILES_PER_SCAN = 256

#: Builds the dataset of some of the files (same schema, format, filesystem, partitioning).
DatasetOf = Callable[[Sequence[str]], ds.FileSystemDataset]


class ChunkedScan(ds.FileSystemDataset):
    """Every file of ``paths`` as one dataset, scanned :data:`FILES_PER_SCAN` files at a time
    (see the module docstring). Build it with :func:`chunked_dataset`."""

    def __init__(self, whole: ds.FileSystemDataset, dataset_of: DatasetOf, paths: list[str]):
        super().__init__(list(whole.get_fragments()), whole.schema, whole.format, whole.filesystem)
        self._dataset_of = dataset_of
        self._paths = paths

    def scanner(self, columns: Any = None, filter: Any = None, **options: Any) -> ChunkScan:
        """What DuckDB asks for: the rows of every file, ``columns`` and ``filter`` applied,
        read one chunk of files after the other. The schema comes from a scanner over this
        dataset (no file is read for it), so bad columns or filters fail here, as before."""
        projected = super().scanner(columns=columns, filter=filter, **options).projected_schema
        batches = _chunks(self._dataset_of, self._paths, FILES_PER_SCAN, columns, filter, options)
        return ChunkScan(pa.RecordBatchReader.from_batches(projected, batches))


class ChunkScan:
    """One scan of a :class:`ChunkedScan`: what DuckDB uses of a ``pyarrow.dataset.Scanner``
    (``to_reader()``, ``projected_schema``).

    Not a real ``Scanner`` (``Scanner.from_batches``): that one pulls the Python generator on
    pyarrow's I/O threads, ahead of the reader. A Ctrl-C then left such a thread waiting for
    the GIL while Python exited, and pyarrow's exit handler waited for that thread for ever
    (``logq`` hung after "interrupted"). This reader runs the generator on the thread that
    reads it, when it reads: DuckDB's, which stops at the interrupt."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader = reader

    @property
    def projected_schema(self) -> pa.Schema:
        return self._reader.schema

    def to_reader(self) -> pa.RecordBatchReader:
        return self._reader


def _chunks(
    dataset_of: DatasetOf,
    paths: list[str],
    size: int,
    columns: Any,
    where: Any,
    options: dict[str, Any],
) -> Iterator[pa.RecordBatch]:
    """The batches of ``paths``, ``size`` files per dataset; each chunk's dataset is released
    (by :func:`_chunk` returning) before the next is built."""
    for start in range(0, len(paths), size):
        yield from _chunk(dataset_of, paths[start : start + size], columns, where, options)


def _chunk(
    dataset_of: DatasetOf,
    paths: Sequence[str],
    columns: Any,
    where: Any,
    options: dict[str, Any],
) -> Iterator[pa.RecordBatch]:
    """The batches of one chunk of files; its dataset lives only as long as this generator."""
    scanner = dataset_of(paths).scanner(columns=columns, filter=where, **options)
    yield from scanner.to_batches()


def chunked_dataset(
    paths: list[str],
    schema: pa.Schema,
    filesystem: Any,
    base_dir: str,
    partitioning: ds.Partitioning,
) -> ChunkedScan:
    """The Parquet files ``paths`` (on ``filesystem``, Hive partitions under ``base_dir``) as one
    table of ``schema`` for DuckDB (files lacking a column read it as NULL)."""

    def dataset_of(some: Sequence[str]) -> ds.FileSystemDataset:
        return ds.dataset(
            list(some),
            schema=schema,
            format="parquet",
            filesystem=filesystem,
            partitioning=partitioning,
            partition_base_dir=base_dir,
        )

    return ChunkedScan(dataset_of(paths), dataset_of, paths)
