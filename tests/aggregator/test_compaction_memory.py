"""A merge holds what its settings allow, not what its group decodes to, and still writes
every row once, sorted by time, in files that other readers read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import fastparquet
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.merge as merge_mod
from aggregator.compaction.inputs import _readable
from aggregator.compaction.sorted_rows import _Source, sorted_rows
from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import HOUR

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

    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        rows = merge_mod._merge(wh, CONTAINER_LOGS, group, output)
    finally:
        pa.set_memory_pool(before)
    # About twice each bound (measured 14 MiB); reading the group whole took over 120 MiB.
    assert pool.max_memory() < 24 << 20, f"peak {pool.max_memory() / 2**20:.1f} MiB"

    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    merged = pq.read_table(output)
    assert rows == merged.num_rows == 8 * ROWS
    assert merged.equals(expected)  # rows, order and ties as a sort of the whole group
    meta = pq.read_metadata(output)
    assert meta.num_row_groups > 1
    assert all(meta.row_group(i).num_rows < ROWS for i in range(meta.num_row_groups))
    assert len(fastparquet.ParquetFile(output).to_pandas()) == 8 * ROWS
    query = f"SELECT count(*), count(DISTINCT message) FROM '{output}'"
    count = duckdb.connect().execute(query).fetchone()
    assert count == (8 * ROWS, 16)


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
