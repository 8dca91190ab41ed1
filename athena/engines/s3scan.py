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

pyarrow casts each file's columns to the table's types as it reads them, and some casts change
what a value means without failing (integers to times). A ``check`` given to
:func:`chunked_dataset` sees the schema of each file the scan opened, before any of its rows
go out, and may raise to refuse the file: pyarrow read that footer to scan the file, so the
check reads nothing more.

With ``positions`` (two column names), the table has two more columns: the path of the file a
row came from and a number that grows with the row's place in that file, both filled in here
from the batches as they are read (pyarrow has no row-in-file column). The number counts the
rows the scan handed out (the filter may have skipped some), enough to order a file's rows as
they stand in it, as the local engine's ``"$path"`` ordering needs (:mod:`athena.engines.local`).
"""

from __future__ import annotations

import re
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
#: Looks at a file the scan opened: its path, its own schema (as the file holds it) and whether
#: the scan reads a column of a name; raises to refuse the file, before any of its rows go out.
Check = Callable[[str, pa.Schema, Callable[[str], bool]], None]


class ChunkedScan(ds.FileSystemDataset):
    """Every file of ``paths`` as one dataset, scanned :data:`FILES_PER_SCAN` files at a time
    (see the module docstring). Build it with :func:`chunked_dataset`."""

    def __init__(
        self,
        whole: ds.FileSystemDataset,
        dataset_of: DatasetOf,
        paths: list[str],
        check: Check | None = None,
        positions: tuple[str, str] | None = None,
    ):
        super().__init__(list(whole.get_fragments()), whole.schema, whole.format, whole.filesystem)
        self._dataset_of = dataset_of
        self._paths = paths
        self._check = check
        self._positions = positions

    def scanner(self, columns: Any = None, filter: Any = None, **options: Any) -> ChunkScan:
        """What DuckDB asks for: the rows of every file, ``columns`` and ``filter`` applied,
        read one chunk of files after the other. The schema comes from a scanner over this
        dataset (no file is read for it), so bad columns or filters fail here, as before."""
        projected = super().scanner(columns=columns, filter=filter, **options).projected_schema
        tagged = _chunks(
            self._dataset_of,
            self._paths,
            FILES_PER_SCAN,
            columns,
            filter,
            options,
            self._check,
            with_paths=self._positions is not None,
        )
        if self._positions is not None:
            batches = _placed(tagged, projected, self._positions)
        else:
            batches = (batch for _, batch in tagged)
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


def _placed(
    tagged: Iterator[tuple[str, pa.RecordBatch]], schema: pa.Schema, names: tuple[str, str]
) -> Iterator[pa.RecordBatch]:
    """The batches with the columns ``names`` (those of them the scan reads) filled in: the
    path of the batch's file, and the place of each row among the file's rows read so far."""
    path_name, row_name = names
    counts: dict[str, int] = {}
    for path, batch in tagged:
        start = counts.get(path, 0)
        counts[path] = start + batch.num_rows
        for name, value in (
            (path_name, pa.array([path] * batch.num_rows, pa.string())),
            (row_name, pa.array(range(start, start + batch.num_rows), pa.int64())),
        ):
            at = schema.get_field_index(name)
            if at >= 0:
                batch = batch.set_column(at, schema.field(at), value)
        yield batch


def _chunks(
    dataset_of: DatasetOf,
    paths: list[str],
    size: int,
    columns: Any,
    where: Any,
    options: dict[str, Any],
    check: Check | None = None,
    with_paths: bool = False,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The batches of ``paths``, ``size`` files per dataset, each with its file's path
    (``""`` unless ``check`` or ``with_paths``); each chunk's dataset is released (by
    :func:`_chunk` returning) before the next is built."""
    reads = _reads(columns, where)
    for start in range(0, len(paths), size):
        chunk = paths[start : start + size]
        yield from _chunk(dataset_of, chunk, columns, where, options, check, reads, with_paths)


def _chunk(
    dataset_of: DatasetOf,
    paths: Sequence[str],
    columns: Any,
    where: Any,
    options: dict[str, Any],
    check: Check | None,
    reads: Callable[[str], bool],
    with_paths: bool = False,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The batches of one chunk of files; its dataset lives only as long as this generator.
    With ``check``, each file is checked before its first batch goes out (pyarrow hands out
    an empty batch for a file whose row groups the filter skipped, so every file is seen; one
    it handed out nothing for, though its partition is in the filter, is checked at the end,
    its footer read then if the scan did not)."""
    dataset = dataset_of(paths)
    scanner = dataset.scanner(columns=columns, filter=where, **options)
    if check is None and not with_paths:
        yield from (("", batch) for batch in scanner.to_batches())
        return
    seen: set[str] = set()
    for tagged in scanner.scan_batches():
        fragment = tagged.fragment
        if fragment.path not in seen:
            seen.add(fragment.path)
            if check is not None:  # (its footer: read already)
                check(fragment.path, fragment.physical_schema, reads)
        yield fragment.path, tagged.record_batch
    for fragment in dataset.get_fragments(filter=where):  # (not those its dt rules out)
        if check is not None and fragment.path not in seen:
            check(fragment.path, fragment.physical_schema, reads)


def _reads(columns: Any, where: Any) -> Callable[[str], bool]:
    """Whether a scan of ``columns`` (names; None: all) filtered by ``where`` reads a column of
    a name. DuckDB leaves out of ``columns`` those only its filter needs: they are named in the
    filter's text (a literal holding the name counts too: a check then looks at a column the
    scan may not need, never the other way round)."""
    text = "" if where is None else str(where)

    def reads(name: str) -> bool:
        if columns is None or not isinstance(columns, list) or name in columns:
            return True
        return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None

    return reads


def chunked_dataset(
    paths: list[str],
    schema: pa.Schema,
    filesystem: Any,
    base_dir: str,
    partitioning: ds.Partitioning,
    check: Check | None = None,
    positions: tuple[str, str] | None = None,
) -> ChunkedScan:
    """The Parquet files ``paths`` (on ``filesystem``, Hive partitions under ``base_dir``) as one
    table of ``schema`` for DuckDB (files lacking a column read it as NULL); ``check`` looks at
    each file a scan opens; ``positions`` names the columns of a row's file and place in it,
    added to ``schema`` (see the module docstring)."""
    if positions is not None:
        path_name, row_name = positions
        schema = schema.append(pa.field(path_name, pa.string()))
        schema = schema.append(pa.field(row_name, pa.int64()))

    def dataset_of(some: Sequence[str]) -> ds.FileSystemDataset:
        return ds.dataset(
            list(some),
            schema=schema,
            format="parquet",
            filesystem=filesystem,
            partitioning=partitioning,
            partition_base_dir=base_dir,
        )

    return ChunkedScan(dataset_of(paths), dataset_of, paths, check, positions)
