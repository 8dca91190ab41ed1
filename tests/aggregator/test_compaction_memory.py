"""A merge holds what its settings allow, not what its group decodes to, and still writes
every row once, sorted by time, in files that other readers read."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.attempt as attempt_mod
import aggregator.compaction.merge as merge_mod
import aggregator.multipart as multipart_mod
import aggregator.storage as storage_mod
from aggregator.compaction.inputs import Input, _readable
from aggregator.compaction.partition import compact_partition
from aggregator.compaction.sorted_rows import _Source, sorted_rows
from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS, Table, partition_path
from athena.warehouse import Warehouse, open_warehouse, s3_client
from tests.aggregator.test_compaction import DT, HOUR, flush_files, service_rows
from tests.aggregator.test_compaction_requests import entries
from tests.support.parquet import assert_fastparquet_reads

#: Rows per input file of the memory test, and their message size: ~8 MiB of Arrow per file
#: from ~100 KiB of Parquet (a few distinct messages: dictionary-encoded, as Envoy's columns).
ROWS = 8_000
MESSAGE = 1_000


def _table(seq: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """Container log rows spread over the hour, sorted by time (as a flush file is)."""
    start = int(HOUR.timestamp() * 1000)
    ms = np.sort(rng.integers(start, start + 3_600_000, rows))
    messages = pa.array([f"{k:04d}" + "x" * MESSAGE for k in range(16)])
    message = messages.take(pa.array(rng.integers(0, 16, rows)))
    return pa.table(
        {
            "timestamp": pa.array(ms, pa.timestamp("ms", tz="UTC")),
            "host": pa.array([f"host-{seq}"] * rows),
            "container_id": pa.array([f"{seq:064x}"] * rows),
            "container_name": pa.array(["app"] * rows),
            "stream": pa.array(["stdout"] * rows),
            "message": message,
        },
        schema=CONTAINER_LOGS.arrow_schema(),
    )


def _group(folder: Path, files: int) -> list[Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    paths = []
    for seq in range(files):
        table = _table(seq, ROWS, rng)
        path = folder / f"n-{seq:04d}.parquet"
        pq.write_table(table, path, **write_options(table))
        paths.append(path)
    return paths


def test_a_merge_holds_its_bound_not_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight files of ~100 KiB that decode to ~8 MiB each (64 MiB in all; Parquet's own
    uncompressed sizes say ~2 MiB), all spanning the whole hour, merged with a bound of 2 MiB
    of input batches and 4 MiB row groups: Arrow's allocations peak far below the group's
    decoded size (reading it whole, then sorting it into a copy, took twice that), the rows
    come out exact and sorted, and fastparquet and DuckDB read the file."""
    paths = _group(tmp_path / "part", files=8)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 2 << 20, raising=False)
    monkeypatch.setattr(merge_mod, "ROW_GROUP_BYTES", 4 << 20, raising=False)
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    decoded = sum(pq.read_table(p).nbytes for p in paths)
    assert decoded > 60 << 20
    output = str(tmp_path / "c-out.parquet")

    rows, peak = _merge_measured(wh, group, output)
    # About twice each bound (measured 14 MiB); reading the group whole took over 120 MiB.
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB"

    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    merged = pq.read_table(output)
    assert rows == merged.num_rows == 8 * ROWS
    assert merged.equals(expected)  # rows, order and ties as a sort of the whole group
    meta = pq.read_metadata(output)
    assert meta.num_row_groups > 1
    assert all(meta.row_group(i).num_rows < ROWS for i in range(meta.num_row_groups))
    assert assert_fastparquet_reads(output) == 8 * ROWS
    query = f"SELECT count(*), count(DISTINCT message) FROM '{output}'"
    count = duckdb.connect().execute(query).fetchone()
    assert count == (8 * ROWS, 16)


def _merge_measured(wh: Any, group: list[Input], output: str) -> tuple[int, int]:
    """``merge_mod._merge`` of ``group`` into ``output``: its row count and the peak bytes
    Arrow allocated meanwhile."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        rows = merge_mod._merge(wh, CONTAINER_LOGS, group, output)
    finally:
        pa.set_memory_pool(before)
    return rows, pool.max_memory()


def _batches(table: pa.Table, size: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


def _source(table: pa.Table, size: int, name: str = "in") -> _Source:
    first = int(pa.compute.min(table["timestamp"]).cast(pa.int64()).as_py() or 0)
    return _Source(name, first, lambda: _batches(table, size))


def _ties(seq: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """Rows over 40 distinct milliseconds: most ties span batches and inputs."""
    ms = np.sort(rng.integers(0, 40, rows))
    return pa.table(
        {
            "timestamp": pa.array(ms, pa.timestamp("ms", tz="UTC")),
            "message": pa.array([f"{seq}-{i}" for i in range(rows)]),
        }
    )


@pytest.mark.parametrize("batch", [1, 3, 7, 1000])
def test_sorted_rows_equal_a_stable_sort_of_the_whole_group(batch: int) -> None:
    """Inputs full of ties, read in batches of any size: the same rows in the same order as
    sorting their concatenation (in group order), which is what a merge wrote before."""
    rng = np.random.default_rng(batch)
    tables = [_ties(seq, int(rng.integers(0, 60)), rng) for seq in range(6)]
    pieces = list(sorted_rows([_source(t, batch, str(i)) for i, t in enumerate(tables)]))
    merged = pa.concat_tables(pieces) if pieces else tables[0].slice(0, 0)
    assert merged.equals(pa.concat_tables(tables).sort_by("timestamp"))


def test_an_unsorted_input_loses_no_row(caplog: pytest.LogCaptureFixture) -> None:
    """A file not sorted by time (from elsewhere) still gives every row once; a batch of it
    is sorted when read; the INFO names it."""
    rng = np.random.default_rng(3)
    sorted_input = _ties(0, 50, rng)
    shuffled = _ties(1, 50, rng)
    shuffled = shuffled.take(pa.array(rng.permutation(50)))
    sources = [_source(sorted_input, 8, "a"), _source(shuffled, 8, "b")]
    sources[1].bound = int(np.iinfo(np.int64).min)  # its footer's first timestamp is no bound
    caplog.set_level("INFO")
    merged = pa.concat_tables(list(sorted_rows(sources)))
    both = pa.concat_tables([sorted_input, shuffled])
    assert sorted(merged["message"].to_pylist()) == sorted(both["message"].to_pylist())
    assert "b is not sorted by time" in caplog.text


def test_sources_read_nothing_before_the_frontier_reaches_them() -> None:
    """An input whose first row is later than every other input's rows is opened only once
    those are written out: flush files of successive minutes are read one after another."""
    opened: list[str] = []
    step = timedelta(minutes=1) // timedelta(milliseconds=1)

    def source(k: int) -> _Source:
        ms = np.arange(k * step, k * step + 10)
        table = pa.table({"timestamp": pa.array(ms, pa.timestamp("ms", tz="UTC"))})

        def batches() -> Iterator[pa.Table]:
            opened.append(f"open {k}")
            yield from _batches(table, 4)

        return _Source(str(k), k * step, batches)

    for piece in sorted_rows([source(k) for k in range(3)]):
        opened.append(f"rows {piece['timestamp'][0].value // step}")
    assert opened[:2] == ["open 0", "rows 0"]
    assert opened.index("open 2") > opened.index("rows 1")


def test_a_group_of_empty_files_makes_an_empty_file(tmp_path: Path) -> None:
    """No rows at all still make a valid file of no rows (what the attempt checks), not an
    empty object that no reader opens."""
    empty = CONTAINER_LOGS.arrow_schema().empty_table()
    paths = [tmp_path / f"n-{i}.parquet" for i in range(2)]
    for path in paths:
        pq.write_table(empty, path, **write_options(empty))
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = str(tmp_path / "c-out.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 0
    assert pq.read_metadata(output).num_rows == 0


def _rows(rows: int, start_ms: int, message: pa.Array) -> pa.Table:
    """``rows`` container log rows a millisecond apart from ``start_ms``, with ``message``."""
    ms = np.arange(start_ms, start_ms + rows)
    return pa.table(
        {
            "timestamp": pa.array(ms, pa.timestamp("ms", tz="UTC")),
            "host": pa.array(["host"] * rows),
            "container_id": pa.array(["c" * 64] * rows),
            "container_name": pa.array(["app"] * rows),
            "stream": pa.array(["stdout"] * rows),
            "message": message,
        },
        schema=CONTAINER_LOGS.arrow_schema(),
    )


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path, **write_options(table))
    return path


def test_one_file_of_huge_lines_leaves_the_other_inputs_batches_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of a few lines of 512 KiB (the earliest of the hour, so read first) beside a
    file of 4,000 short lines: each input's batches are sized by its own rows. Sized by the
    widest rows of the whole merge, the short lines came one per batch (4,000 batches, ~2 ms
    each in pyarrow: hours for a partition-hour of millions of rows)."""
    monkeypatch.setattr(merge_mod, "READ_BYTES", 1 << 20)
    start = int(HOUR.timestamp() * 1000)
    huge = pa.array([f"{k}" * (512 << 10) for k in range(3)])
    paths = [
        _write(tmp_path / "n-huge.parquet", _rows(3, start, huge)),
        _write(tmp_path / "n-short.parquet", _rows(4000, start + 10, pa.array(["ok"] * 4000))),
    ]
    real = merge_mod._batches
    batches: dict[str, int] = {}

    def counted(wh: Warehouse, spec: Table, f: Input, *rest: object) -> Iterator[pa.Table]:
        for table in real(wh, spec, f, *rest):
            batches[f.name] = batches.get(f.name, 0) + 1
            yield table

    monkeypatch.setattr(merge_mod, "_batches", counted)
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = str(tmp_path / "c-out.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 4003
    assert batches["n-short.parquet"] == 1, batches
    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    assert pq.read_table(output).equals(expected)


def test_a_long_line_repeated_is_read_in_batches_of_its_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush file of one 16 KiB line repeated 4,000 times (a few KiB of Parquet, its footer's
    uncompressed size counting the dictionary index: 64 MiB decoded), after a file of short
    lines: its first batch is sized by its own first rows, not by the short lines read before,
    which made it one batch of the whole 64 MiB."""
    monkeypatch.setattr(merge_mod, "READ_BYTES", 2 << 20)
    monkeypatch.setattr(merge_mod, "ROW_GROUP_BYTES", 4 << 20)
    start = int(HOUR.timestamp() * 1000)
    short = pa.array([f"short {i}" for i in range(1000)])
    repeated = pa.array(["E" * (16 << 10)]).take(pa.array(np.zeros(4000, dtype=np.int32)))
    paths = [
        _write(tmp_path / "n-short.parquet", _rows(1000, start, short)),
        _write(tmp_path / "n-long.parquet", _rows(4000, start + 2000, repeated)),
    ]
    assert paths[1].stat().st_size < 64 << 10
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = str(tmp_path / "c-out.parquet")

    rows, peak = _merge_measured(wh, group, output)
    # Measured ~12 MiB; the whole file in one batch: over 64 MiB.
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert rows == 5000
    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    assert pq.read_table(output).equals(expected)


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_failing_half_way_on_s3_keeps_its_inputs(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every merge writes while it reads: a read that fails half way, after row groups (and
    parts) are out, aborts the output's multipart upload. No output ever shows (pyarrow's
    stream, which cannot abort, published a short but valid file that Athena counted beside
    the inputs until the rollback), no upload is left in progress (its parts billed): the
    inputs stay, every row once, and the next pass merges them exactly."""
    flush_files(s3_warehouse, files=6, rows_per_file=300, service="svc")
    wh = open_warehouse(s3_warehouse)
    folder = wh.path(partition_path("container_logs", "svc", DT))
    rows_before, names_before = service_rows(s3_warehouse), entries(wh, folder)
    monkeypatch.setattr(merge_mod, "ROW_GROUP_BYTES", 8 << 10)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 16 << 10)
    monkeypatch.setattr(multipart_mod, "PART_BYTES", 1 << 10)
    sent = _count_parts(monkeypatch)
    real = merge_mod._batches
    read = [0]

    def failing(*args: Any) -> Iterator[pa.Table]:
        for table in real(*args):
            read[0] += 1
            if read[0] == 8:
                raise OSError("injected read failure")
            yield table

    short: list[int] = []
    roll_back = attempt_mod._Attempt._roll_back

    def watched(self: attempt_mod._Attempt) -> None:
        if self.output_name in entries(wh, folder):
            short.append(pq.read_metadata(self.output, filesystem=wh.fs).num_rows)
        roll_back(self)

    monkeypatch.setattr(merge_mod, "_batches", failing)
    monkeypatch.setattr(attempt_mod._Attempt, "_roll_back", watched)
    with pytest.raises(OSError, match="injected"):
        compact_partition(wh, CONTAINER_LOGS, folder, 128 << 20)
    assert sent[0] > 0  # parts were out when it failed
    assert short == []  # never published
    assert _uploads_in_progress(wh) == []
    assert entries(wh, folder) == names_before
    assert service_rows(s3_warehouse) == rows_before
    monkeypatch.setattr(merge_mod, "_batches", real)
    monkeypatch.setattr(multipart_mod, "PART_BYTES", 5 << 20)  # (S3's least, but for the last)
    assert compact_partition(wh, CONTAINER_LOGS, folder, 128 << 20) == 6
    assert service_rows(s3_warehouse) == rows_before
    assert [n for n in entries(wh, folder) if not n.startswith("c-")] == []


def _count_parts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the parts that multipart uploads send (UploadPart requests, counted as the writer
    hands them to the upload threads). Clears the S3 settings whose boto3 requests an earlier
    test made fail (those write through pyarrow's stream instead)."""
    monkeypatch.setattr(storage_mod, "_FELL_BACK", set())
    monkeypatch.setattr(storage_mod, "_UNANSWERED", set())
    sent = [0]
    real = multipart_mod.MultipartUpload._send

    def counted(self: multipart_mod.MultipartUpload, part: bytes) -> None:
        sent[0] += 1
        real(self, part)

    monkeypatch.setattr(multipart_mod.MultipartUpload, "_send", counted)
    return sent


def _uploads_in_progress(wh: Warehouse) -> list[str]:
    """The keys of the warehouse bucket's multipart uploads neither completed nor aborted."""
    assert wh.s3 is not None
    bucket = wh.base.partition("/")[0]
    answer = s3_client(wh.s3).list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in answer.get("Uploads", [])]


def _random_rows(seq: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """Container log rows whose messages barely compress (random base64): ~160 bytes each in
    Parquet too, so a few MiB of output take little merging."""
    table = _table(seq, rows, rng)
    noise = base64.b64encode(rng.bytes(rows * 120)).decode()
    messages = pa.array([noise[k * 160 : (k + 1) * 160] for k in range(rows)])
    return table.set_column(table.schema.get_field_index("message"), "message", messages)


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_of_many_parts_on_s3_reads_back_whole(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge whose output spans parts (S3's smallest, 5 MiB, uploaded while the merge writes)
    completes into one object that pyarrow and fastparquet read whole, every row once, in
    order; one that fails after a part is out is aborted: no object, no upload left."""
    wh = open_warehouse(s3_warehouse, create=True)
    rng = np.random.default_rng(5)
    tables = [_random_rows(seq, 16_000, rng) for seq in range(3)]
    paths = [wh.path("in", f"n-{seq}.parquet") for seq in range(3)]
    for path, table in zip(paths, tables, strict=True):
        pq.write_table(table, path, filesystem=wh.fs, **write_options(table))
    group = _readable(wh, wh.fs.get_file_info(paths))
    monkeypatch.setattr(merge_mod, "ROW_GROUP_BYTES", 1 << 20)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 1 << 20)
    monkeypatch.setattr(multipart_mod, "PART_BYTES", 5 << 20)
    sent = _count_parts(monkeypatch)
    real = merge_mod._batches

    def failing(*args: Any) -> Iterator[pa.Table]:
        for table in real(*args):
            if sent[0]:
                raise OSError("injected read failure")
            yield table

    monkeypatch.setattr(merge_mod, "_batches", failing)
    failed = wh.path("out", "c-failed.parquet")
    with pytest.raises(OSError, match="injected"):
        merge_mod._merge(wh, CONTAINER_LOGS, group, failed)
    assert sent[0] == 1
    assert not wh.fs.get_file_info(failed).is_file
    assert _uploads_in_progress(wh) == []

    monkeypatch.setattr(merge_mod, "_batches", real)
    sent[0] = 0
    output = wh.path("out", "c-whole.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 48_000
    assert sent[0] == 2
    assert _uploads_in_progress(wh) == []
    with wh.fs.open_input_file(output) as fh:
        data = fh.read()
    expected = pa.concat_tables(tables).sort_by("timestamp")
    got = pq.read_table(pa.BufferReader(data))
    assert got.num_rows == expected.num_rows
    assert got["timestamp"].to_pylist() == expected["timestamp"].to_pylist()
    assert sorted(got["message"].to_pylist()) == sorted(expected["message"].to_pylist())
    assert assert_fastparquet_reads(data) == 48_000
