"""Merging many small flush files: each is decoded once, on the merge's thread, to the same
rows in the same batches as before; and a failure fetching one of the inputs read at once
aborts its merge with every input left in place (on a local disk and on S3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.inputs as inputs_mod
from aggregator.compaction.inputs import PROBE_ROWS, _batches, _readable
from aggregator.compaction.partition import compact_partition
from aggregator.compaction.runs import most_open, open_at_once
from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS, partition_path
from athena.warehouse import Warehouse, open_warehouse
from tests.aggregator.test_compaction import HOUR

TARGET = 64 * 1024 * 1024


def _flush_table(seq: int, rows: int, width: int = 20) -> pa.Table:
    """A flush file's rows: sorted by time, ties across files (every file over the same
    seconds), messages naming their file and row."""
    start = int(HOUR.timestamp() * 1000)
    times = [start + ((k * 7 + seq) % 30) * 1000 for k in range(rows)]
    table = pa.table(
        {
            "timestamp": pa.array(sorted(times), pa.timestamp("ms", tz="UTC")),
            "host": [f"host-{seq % 3}"] * rows,
            "container_id": [f"{seq % 5:064x}"] * rows,
            "container_name": ["svc"] * rows,
            "stream": ["stdout"] * rows,
            "message": [f"f{seq}-r{k}-" + "x" * width for k in range(rows)],
        },
        schema=CONTAINER_LOGS.arrow_schema(),
    )
    return table


def _put(wh: Warehouse, path: str, table: pa.Table) -> None:
    with wh.fs.open_output_stream(path) as out:
        pq.write_table(table, out, **write_options(table))


def _partition(wh: Warehouse, files: int, rows: int) -> tuple[str, pa.Table]:
    """A partition-hour of ``files`` flush files; its folder and the stable sort of its rows."""
    folder = wh.path(partition_path("container_logs", "svc", HOUR.strftime("%Y-%m-%d-%H")))
    wh.fs.create_dir(folder, recursive=True)
    tables = [_flush_table(seq, rows) for seq in range(files)]
    for seq, table in enumerate(tables):
        _put(wh, f"{folder}/n0-{seq:016d}-0000.parquet", table)
    return folder, pa.concat_tables(tables).sort_by("timestamp")


def _visible(wh: Warehouse, folder: str) -> list[str]:
    infos = wh.fs.get_file_info(pafs.FileSelector(folder))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def _merged(wh: Warehouse, folder: str) -> pa.Table:
    (name,) = _visible(wh, folder)
    return pq.read_table(f"{folder}/{name}", filesystem=wh.fs)


def test_a_small_input_is_decoded_once_on_the_merges_thread(tmp_path: Path) -> None:
    """40 flush files of 10 rows: one read of each (its first rows, measuring its row size,
    are all its rows and are its batch), none handed to Arrow's thread pool. Before: two
    reads each (the probe, then the same rows again) through the pool, ~4x the CPU and
    more in waits on a busy machine. The merged file is still the stable sort of the rows."""
    reads: list[bool] = []
    iter_batches = pq.ParquetFile.iter_batches

    def counted(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        reads.append(kwargs.get("use_threads", True))
        return iter_batches(self, *args, **kwargs)

    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    folder, expected = _partition(wh, files=40, rows=10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq.ParquetFile, "iter_batches", counted)
        assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 40
    assert len(reads) == 40, reads
    assert not any(reads)
    assert _merged(wh, folder).equals(expected)


def test_a_small_input_of_wide_rows_keeps_its_batches_of_its_share(tmp_path: Path) -> None:
    """An input whose rows are wider than its share allows is still read a few rows at a
    time, though its first rows (the probe) were all of them: the probe is its batch only
    when the batch would have held them all."""
    path = tmp_path / "f.parquet"
    table = _flush_table(0, 10, width=10_000)
    pq.write_table(table, path, **write_options(table))
    wh = open_warehouse(str(tmp_path))
    (f,) = _readable(wh, [wh.fs.get_file_info(str(path))])
    with contextlib.ExitStack() as closing:
        batches = list(
            _batches(wh, CONTAINER_LOGS, f, lambda _: pa.py_buffer(b""), 25_000, closing, 64)
        )
        assert [b.num_rows for b in batches] == [2] * 5
        assert pa.concat_tables(batches).equals(table)
        whole = list(
            _batches(wh, CONTAINER_LOGS, f, lambda _: pa.py_buffer(b""), 1 << 20, closing, 64)
        )
        assert [b.num_rows for b in whole] == [10]


def _held_at(batches: Iterator[pa.Table], k: int) -> int:
    """Bytes allocated from Arrow's pool while the ``k``-th of ``batches`` is read (those
    before it dropped, the reader still open)."""
    for n, batch in enumerate(batches):
        del batch
        if n == k:
            return pa.total_allocated_bytes()
    raise AssertionError(f"fewer than {k + 1} batches")


def test_an_input_read_past_its_first_rows_no_longer_holds_them(tmp_path: Path) -> None:
    """An input of 300 rows of 100 KB lines, read 10 rows a batch: once past its first rows
    (the probe that measured its row size: 64 rows, ~6 MiB), it holds what pyarrow's reader
    of 10-row batches holds, not the probe as well (before, the probe's decoded rows were
    held until the input was read to its end: ~6 MiB more per input open)."""
    path = tmp_path / "f.parquet"
    table = _flush_table(0, 300, width=100_000)
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    probe_bytes = table.slice(0, PROBE_ROWS).nbytes
    del table
    wh = open_warehouse(str(tmp_path))
    (f,) = _readable(wh, [wh.fs.get_file_info(str(path))])
    assert f.data is not None
    base = pa.total_allocated_bytes()
    reader = pq.ParquetFile(pa.BufferReader(f.data)).iter_batches(10, use_threads=False)
    plain = _held_at(reader, 20) - base
    del reader
    base = pa.total_allocated_bytes()
    with contextlib.ExitStack() as closing:
        batches = _batches(wh, CONTAINER_LOGS, f, lambda _: f.data, 1 << 20, closing, 65_536)
        assert next(batches).num_rows == 10
        held = _held_at(batches, 20) - base
    assert held < plain + probe_bytes // 2, (held, plain, probe_bytes)


def _failing_fetch(monkeypatch: pytest.MonkeyPatch, victim: str) -> list[str]:
    """Merges fetch their small inputs (none kept from the footer reads); the fetch of the
    input named ``victim`` fails as a GET that S3 refused. Returns the names fetched."""
    monkeypatch.setattr(inputs_mod, "PREFETCH_BYTES", 0)
    fetched: list[str] = []
    fetch_whole = inputs_mod._fetch_whole

    def fetch(wh: Warehouse, path: str) -> pa.Buffer:
        fetched.append(path.rsplit("/", 1)[-1])
        if path.endswith(victim):
            raise OSError(f"GET {path}: 503 Slow Down")
        return fetch_whole(wh, path)

    monkeypatch.setattr(inputs_mod, "_fetch_whole", fetch)
    return fetched


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_failed_fetch_among_concurrent_ones_aborts_the_merge_and_keeps_every_input(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """30 flush files fetched 8 at a time while merged; one's GET fails. The merge
    raises, no output or intent is left, every input is where it was (readers see every row
    once), and the next pass merges them all, each row once."""
    uri = request.getfixturevalue("s3_warehouse") if backend == "s3" else str(tmp_path / "wh")
    wh = open_warehouse(uri, create=True)
    folder, expected = _partition(wh, files=30, rows=10)
    before = _visible(wh, folder)
    victim = before[16]
    with pytest.MonkeyPatch.context() as patch:
        fetched = _failing_fetch(patch, victim)
        with pytest.raises(OSError, match="503 Slow Down"):
            compact_partition(wh, CONTAINER_LOGS, folder, TARGET)
    assert victim in fetched
    assert len(fetched) > 1  # (fetched 8 at a time, in the order the merge reaches them)
    assert _visible(wh, folder) == before
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 30
    assert _merged(wh, folder).equals(expected)


def test_the_most_open_of_the_runs_is_the_most_open_in_any_run(tmp_path: Path) -> None:
    """:func:`.runs.most_open` (each footer's span worked out once) says what
    :func:`.runs.open_at_once` of each run says, at most: the share of a merge's batches."""
    folder = tmp_path / "p"
    folder.mkdir()
    for seq in range(6):
        table = _flush_table(seq, 5) if seq % 2 else _flush_table(seq, 5).slice(0, 1)
        pq.write_table(table, folder / f"n-{seq}.parquet", **write_options(table))
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in sorted(folder.iterdir())])
    for runs in ([[0, 1, 2, 3, 4, 5]], [[0, 1], [2], [3, 4, 5]], [[5]]):
        expected = max(open_at_once([group[i] for i in run]) for run in runs)
        assert most_open(group, runs) == expected
