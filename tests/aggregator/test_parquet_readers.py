"""Differential fuzz of the files the aggregator writes: random tables of the shapes a flush and
a merge produce, written by :func:`aggregator.storage.put_table` and by the merge's
``ParquetWriter`` path, must read back exactly the same in pyarrow, fastparquet and DuckDB
(Athena reads them in production; fastparquet is the strictest independent reader we run).

A few seconds in the suite; run longer by hand with ``LOGQ_PARQUET_FUZZ_EXAMPLES=500``, and
under glibc's heap checks to see fastparquet's out-of-bounds writes as crashes
(``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0 MALLOC_CHECK_=3``; a plain
run may read them back right and crash a later test).
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import storage as storage_mod
from aggregator.compaction.merge import _writer_options
from aggregator.decode import DICT_STRING
from aggregator.storage import put_table
from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS, Table
from athena.warehouse import open_warehouse
from tests.support.parquet import arrow_values, assert_same_values, fastparquet_values

#: Examples per run: the suite's default keeps the test to a few seconds.
EXAMPLES = int(os.environ.get("LOGQ_PARQUET_FUZZ_EXAMPLES", "12"))
#: Columns the flusher hands over as ``dictionary<int32, string>`` (the buffer's DICT_KEYS that
#: reach a table); the merge reads every column back as its schema type.
DICTIONARY_COLUMNS = frozenset({"host", "container_id", "container_name", "stream"})
#: Lengths of the filler in a string's values: empty to a log line's.
SHORT_LENGTHS = [0, 1, 7, 120]
#: ... and in the one column of a table with long values: a data page's worth, a long log line
#: (the shipper cuts lines at 256 KiB): a few distinct ones outgrow pyarrow's 1 MiB dictionary.
LONG_LENGTHS = [70_000, 300_000]


@st.composite
def string_values(draw: st.DrawFn, rows: int, long: bool) -> list[str | None]:
    """``rows`` strings: all distinct or drawn from a small pool, short and arbitrary Unicode
    (non-ASCII, NUL, empty) or long, with no, some or only nulls."""
    short = st.text(max_size=12)
    distinct = draw(st.booleans())
    pool_size = max(1, rows) if distinct else draw(st.integers(1, max(1, min(rows, 6))))
    seeds = draw(st.lists(short, min_size=1, max_size=3))
    length = draw(st.sampled_from(LONG_LENGTHS if long else SHORT_LENGTHS))
    fill = draw(st.sampled_from(["x", "é", "日", "\U0001f600"]))
    pool = [f"{seeds[i % len(seeds)]}{fill * length}{i}" for i in range(pool_size)]
    if draw(st.booleans()):
        pool[0] = ""  # an empty string is a value, not a null
    nulls = draw(st.sampled_from([0.0, 0.2, 1.0]))
    pick = np.random.default_rng(draw(st.integers(0, 2**16)))
    values: list[str | None] = [
        pool[i % pool_size] if distinct else pool[int(pick.integers(pool_size))]
        for i in range(rows)
    ]
    return [None if pick.random() < nulls else v for v in values]


@st.composite
def int_values(draw: st.DrawFn, rows: int, dtype: pa.DataType) -> list[int | None]:
    """Few distinct (codes, durations: a dictionary), many (sizes: PLAIN) or ascending (DELTA)."""
    high = 2**31 - 1 if dtype == pa.int32() else 2**62
    kind = draw(st.sampled_from(["few", "many", "ascending"]))
    pick = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "few":
        pool = [int(v) for v in pick.integers(0, 600, 5)]
        values = [pool[int(pick.integers(5))] for _ in range(rows)]
    elif kind == "many":
        values = [int(v) for v in pick.integers(-high, high, rows)]
    else:
        values = [int(v) for v in np.cumsum(pick.integers(0, 10_000, rows))]
    nulls = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return [None if pick.random() < nulls else v for v in values]


@st.composite
def timestamps(draw: st.DrawFn, rows: int) -> list[int | None]:
    """Milliseconds, sorted as a flush writes them, sometimes with nulls."""
    start = draw(st.integers(0, 4_000_000_000_000))
    steps = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 5_000, rows)
    values: list[int | None] = [int(v) for v in start + np.cumsum(steps)]
    if draw(st.booleans()):
        values = [None if i % 7 == 3 else v for i, v in enumerate(values)]
    return values


def chunked(
    values: list[Any], dtype: pa.DataType, cuts: list[int], unused: int = 0
) -> pa.ChunkedArray:
    """``values`` in pieces (a flushed object's spilled batches), each its own dictionary for
    dictionary columns (Arrow's writer must unify or materialize them), holding ``unused``
    values no row uses as well (a partition's rows keep the segment's dictionary: the other
    services' names, which :func:`put_table` cuts)."""
    bounds = [0, *sorted(c for c in cuts if c <= len(values)), len(values)]
    pieces = [values[a:b] for a, b in itertools.pairwise(bounds)]
    if pa.types.is_dictionary(dtype):
        others = pa.array([f"other service {i}" for i in range(unused)], pa.string())
        arrays = []
        for piece in pieces:
            own = pa.array(piece, pa.string()).dictionary_encode()
            arrays.append(
                pa.DictionaryArray.from_arrays(
                    pc.add(own.indices, len(others)), pa.concat_arrays([others, own.dictionary])
                )
            )
        return pa.chunked_array([a.cast(dtype) for a in arrays], dtype)
    return pa.chunked_array([pa.array(p, dtype) for p in pieces], dtype)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """A table of ``envoy_access`` or ``container_logs`` rows, as the flusher passes it to
    :func:`put_table` (no ``service``: it is the partition)."""
    spec: Table = draw(st.sampled_from([ENVOY_ACCESS, CONTAINER_LOGS]))
    rows = draw(st.integers(0, 40))
    strings = [c.name for c in spec.data_columns if pa.types.is_string(c.arrow)]
    long = draw(st.sampled_from([None, *strings]))  # one column at most: a test of seconds
    cuts = draw(st.lists(st.integers(0, rows), max_size=3))
    unused = draw(st.sampled_from([0, 3]))
    columns = {}
    for col in spec.data_columns:
        dtype = col.arrow
        if col.name == "timestamp":
            values: list[Any] = draw(timestamps(rows))
        elif pa.types.is_integer(dtype):
            values = draw(int_values(rows, dtype))
        else:
            values = draw(string_values(rows, col.name == long))
            if col.name in DICTIONARY_COLUMNS:
                dtype = DICT_STRING
        columns[col.name] = chunked(values, dtype, cuts, unused)
    return pa.table(columns)


@functools.cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for every read: a new database for each file was a third of the
    readers' time (the files are read the same through either)."""
    return duckdb.connect()


def read_back(path: Path) -> dict[str, dict[str, list[Any]]]:
    """What each reader makes of ``path``."""
    return {
        "pyarrow": arrow_values(pq.read_table(path)),
        "duckdb": arrow_values(_duckdb().read_parquet(str(path)).to_arrow_table()),
        "fastparquet": fastparquet_values(path),
    }


def assert_every_reader_reads(path: Path, table: pa.Table) -> None:
    expected = arrow_values(table)
    for reader, got in read_back(path).items():
        assert_same_values(reader, got, expected)


def merge_times(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """``times`` as a merge's rows hold them: each null is the time before it (or after)."""
    filled = pc.fill_null_backward(pc.fill_null_forward(times))
    return pc.fill_null(filled, pa.scalar(0, times.type))


def merge_write(path: Path, table: pa.Table, sizes: list[int]) -> None:
    """Write ``table`` as a merge does (aggregator/compaction/merge.py): plain schema types,
    the options chosen from the first row group, then one row group per slice."""
    plain = pa.table(
        {
            name: pc.cast(col, pa.string()) if pa.types.is_dictionary(col.type) else col
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
    )
    # A merge's inputs are flush files of one hour: event times never null, sorted.
    plain = plain.set_column(0, "timestamp", merge_times(plain["timestamp"]))
    bounds = [0, *sorted(s for s in sizes if 0 < s < plain.num_rows), plain.num_rows]
    groups = [plain.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    with pq.ParquetWriter(path, plain.schema, **_writer_options(groups[0])) as writer:
        for group in groups:
            writer.write_table(group, row_group_size=max(1, group.num_rows))


@given(
    table=tables(),
    row_group_rows=st.sampled_from([1, 3, 17, 1_000_000]),
    merge_cuts=st.lists(st.integers(1, 40), max_size=3),
)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_every_reader_reads_our_files_exactly(
    tmp_path_factory: Any, table: pa.Table, row_group_rows: int, merge_cuts: list[int]
) -> None:
    """pyarrow, fastparquet and DuckDB read back the same values, null for null, from a flushed
    object (any row group size) and from a merge's output (options of its first row group)."""
    folder = tmp_path_factory.mktemp("fuzz")
    wh = open_warehouse(str(folder), create=True)
    flushed = folder / "flushed.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage_mod, "ROW_GROUP_ROWS", row_group_rows)
        put_table(wh, str(flushed), table)
    assert_every_reader_reads(flushed, table)
    merged = folder / "merged.parquet"
    merge_write(merged, table, merge_cuts)
    times = merge_times(table["timestamp"])
    assert_every_reader_reads(merged, table.set_column(0, "timestamp", times))
