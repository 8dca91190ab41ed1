"""The Parquet encodings chosen per column, and that every reader reads them back the same; what
the warehouse's reads and deletes cost on S3, counted by the real server."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import duckdb
import fastparquet
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aggregator import storage as storage_mod
from aggregator.batch import records_table, route
from aggregator.compaction.merge import _writer_options
from aggregator.decode import records_batch, to_ipc
from aggregator.ledger import Ledger, entry_name
from aggregator.storage import (
    INT_DICTIONARY_MAX,
    delete_object,
    fetch_object,
    put_bytes,
    put_table,
    write_options,
)
from athena.schema import TIMESTAMP
from athena.warehouse import open_warehouse
from tests.aggregator.helpers import ENVOY_IMAGE, envoy_line, record
from tests.aggregator.test_compaction_requests import (
    bucket_of,
    counted_warehouse,
    requests_after,
    settled,
)
from tests.support.parquet import assert_fastparquet_reads
from tests.support.seaweedfs import SeaweedFS

T0 = 1_795_860_000_000_000_000


def envoy_rows(n: int) -> pa.Table:
    """``n`` Envoy access rows as the router makes them, from one message of ``n`` records
    (one message per record made the very same table 25 times slower: 7.8 s, not 0.3 s)."""
    rng = random.Random(5)
    records = []
    for i in range(n):
        line = envoy_line(
            when=f"2026-11-28T14:{i // 6000:02d}:{i // 100 % 60:02d}.{i % 100:03d}Z",
            code=rng.choice([200, 200, 404, 503]),
            tx=rng.randint(0, 10**7),  # many distinct values
            duration=rng.randint(1, 300),
            rid=f"{rng.getrandbits(128):032x}",
        )
        records.append(record(line, image=ENVOY_IMAGE))
    times = pa.array([T0 + i for i in range(n)])
    batch = to_ipc(records_batch("logq.recipe", times, records))
    return route(records_table([batch])).tables["envoy_access"].drop_columns(["service"])


def encodings(path: Path) -> dict[str, set[str]]:
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(0)
    return {rg.column(c).path_in_schema: set(rg.column(c).encodings) for c in range(rg.num_columns)}


def test_encodings_follow_the_values_and_every_reader_agrees(tmp_path: Path) -> None:
    table = envoy_rows(INT_DICTIONARY_MAX + 2000)
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "one.parquet"
    put_table(wh, str(path), table)
    enc = encodings(path)
    assert "RLE_DICTIONARY" in enc["response_code"]  # few distinct values
    assert "RLE_DICTIONARY" in enc["duration_ms"]
    assert "RLE_DICTIONARY" not in enc["bytes_sent"]  # more than INT_DICTIONARY_MAX distinct
    assert "PLAIN" in enc["bytes_sent"]
    assert "DELTA_BINARY_PACKED" in enc["timestamp"]
    assert "RLE_DICTIONARY" not in enc["request_id"]
    assert "RLE_DICTIONARY" in enc["path"]
    rg = pq.ParquetFile(path).metadata.row_group(0)
    stats = {rg.column(c).path_in_schema: rg.column(c).is_stats_set for c in range(rg.num_columns)}
    assert stats["timestamp"] and stats["response_code"] and stats["bytes_sent"]
    assert not stats["request_id"] and not stats["user_agent"], "no min/max on strings"

    expected = table.to_pydict()
    assert pq.read_table(path).to_pydict() == expected
    frame = fastparquet.ParquetFile(str(path)).to_pandas()
    for name in ("response_code", "bytes_sent", "duration_ms", "request_id", "path"):
        assert frame[name].tolist() == expected[name], name
    stamps = [t.tz_localize("UTC") if t.tzinfo is None else t for t in frame["timestamp"]]
    assert [t.to_pydatetime() for t in stamps] == expected["timestamp"]
    query = f"select sum(bytes_sent), count(distinct duration_ms) from '{path}'"
    got = duckdb.connect().execute(query)
    assert got.fetchone() == (sum(expected["bytes_sent"]), len(set(expected["duration_ms"])))


def test_ascending_offsets_are_delta_encoded(tmp_path: Path) -> None:
    n = INT_DICTIONARY_MAX * 3
    offsets = [300 + 2400 * i for i in range(n)]
    table = pa.table({"source_id": ["src-1"] * n, "offset": pa.array(offsets, pa.int64())})
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "ledger.parquet"
    put_table(wh, str(path), table)
    assert "DELTA_BINARY_PACKED" in encodings(path)["offset"]
    assert path.stat().st_size < n // 10  # a fixed step costs next to nothing
    assert fastparquet.ParquetFile(str(path)).to_pandas()["offset"].tolist() == offsets


def test_a_column_of_distinct_messages_reads_back_in_fastparquet(tmp_path: Path) -> None:
    """150,000 distinct log lines in one object (one flush of a busy service): once their
    dictionary outgrew 1 MiB, pyarrow went on in PLAIN inside the same column chunk, and
    fastparquet read every value after the switch as null (122,832 of them). Mostly distinct
    strings are PLAIN from the start; repeating ones keep their dictionary."""
    n = 150_000
    messages = [f"user {i} signed in from 10.{i % 256}.{i // 256 % 256}.7" for i in range(n)]
    levels = ["INFO", "WARN", "ERROR"] * (n // 3)
    table = pa.table({"message": messages, "level": levels})
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "logs.parquet"
    put_table(wh, str(path), table)
    enc = encodings(path)
    assert "RLE_DICTIONARY" not in enc["message"] and "RLE_DICTIONARY" in enc["level"]
    frame = fastparquet.ParquetFile(str(path)).to_pandas()
    assert frame["message"].tolist() == messages
    assert frame["level"].tolist() == levels


def test_a_dictionary_never_switches_to_plain_inside_a_column_chunk(tmp_path: Path) -> None:
    """A merge chooses the encodings from its first row group (aggregator/compaction/merge.py)
    and a later one may hold far more distinct values: their dictionary grows past pyarrow's
    1 MiB default instead of switching to PLAIN in mid-chunk, which fastparquet misreads."""
    first = pa.table({"path": ["/healthz"] * 1000})
    rows = 120_000
    paths = [f"/api/orders/{i:08d}/items" if i % 3 == 0 else "/healthz" for i in range(rows)]
    later = pa.table({"path": paths})  # 40,000 distinct paths: a 1.2 MB dictionary
    out = tmp_path / "merged.parquet"
    options = write_options(first)
    options.pop("row_group_size")
    with pq.ParquetWriter(out, first.schema, **options) as writer:
        writer.write_table(first)
        writer.write_table(later, row_group_size=rows)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == 2 and meta.row_group(1).column(0).has_dictionary_page
    got = fastparquet.ParquetFile(str(out)).to_pandas()["path"].tolist()
    assert got == ["/healthz"] * 1000 + paths


def test_a_dictionary_column_of_chunks_with_their_own_dictionaries_reads_back(
    tmp_path: Path,
) -> None:
    """A ledger entry's ``source_id`` is one dictionary per slice of its segment: Arrow's
    writer switched the column chunk to PLAIN where the dictionary changed, and fastparquet
    read every ``source_id`` after the first slice as null."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    slices = [["src-a"] * 3 + ["src-b"] * 2, ["src-c"] * 4, ["src-a", "src-d"]]
    source_id = pa.chunked_array(
        [pc.dictionary_encode(pa.array(s)) for s in slices], pa.dictionary(pa.int32(), pa.string())
    )
    offsets = pa.chunked_array([pa.array(range(len(s)), pa.int64()) for s in slices])
    Ledger(wh, "n1").record(entry_name("n1", 7), source_id, offsets)
    (path,) = (tmp_path / "wh").rglob("*.parquet")
    frame = fastparquet.ParquetFile(str(path)).to_pandas()
    assert frame["source_id"].tolist() == [v for s in slices for v in s]
    assert frame["offset"].tolist() == offsets.to_pylist()


def test_a_small_dictionary_against_many_rows_is_written_whole(tmp_path: Path) -> None:
    """The usual flush (a few services, objects of thousands of rows) must not pay for cutting
    a dictionary of a few names per object (~6 ns a row per column, for ~400 bytes): it is
    written whole. A dictionary large against the rows (many services' names) is still cut."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    dictionary = pa.array([f"{i:064x}" for i in range(8)])  # 8 services' container ids
    for rows, kept in [(20_000, 8), (100, 1)]:
        ids = pa.DictionaryArray.from_arrays(pa.array([3] * rows, pa.int32()), dictionary)
        path = tmp_path / f"{rows}.parquet"
        put_table(wh, str(path), pa.table({"container_id": ids}))
        stored = pq.ParquetFile(path, read_dictionary=["container_id"]).read()["container_id"]
        assert len(stored.chunk(0).dictionary) == kept
        assert stored.to_pylist() == [f"{3:064x}"] * rows


def test_a_string_column_larger_than_the_dictionary_limit_is_plain(tmp_path: Path) -> None:
    """A sample of repeating values does not keep a column whose bytes could outgrow the
    dictionary limit from switching to PLAIN in mid-chunk (which fastparquet misreads): such
    a column is PLAIN from the start (here a limit of 64 KiB stands for the 1 GiB)."""
    n = 4096  # every 4th value (the sample) repeats; the others are distinct: 300 KB
    paths = ["/healthz" if i % 4 == 0 else f"/api/items/{i:08d}/{'x' * 80}" for i in range(n)]
    table = pa.table({"path": paths})
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "big.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage_mod, "DICTIONARY_PAGE_LIMIT", 64 * 1024)
        assert not storage_mod._mostly_distinct(table["path"])
        put_table(wh, str(path), table)
    assert "RLE_DICTIONARY" not in encodings(path)["path"]
    assert fastparquet.ParquetFile(str(path)).to_pandas()["path"].tolist() == paths


def test_no_column_with_nulls_is_delta_encoded(tmp_path: Path) -> None:
    """fastparquet writes past the end of its buffer when it decodes a DELTA_BINARY_PACKED page
    of nulls only (under glibc's malloc checks the reader crashed; otherwise the heap is
    silently corrupt): a column holding nulls is PLAIN, in a flush and in a merge, whose
    options come from its first row group (here without a null)."""
    n = 30
    times = pa.array([None if i % 4 == 1 else 1_700_000_000_000 + i for i in range(n)], TIMESTAMP)
    offsets = pa.array([None if i % 10 == 9 else 100 * i for i in range(n)], pa.int64())
    table = pa.table({"timestamp": times, "offset": offsets})
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "nulls.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage_mod, "ROW_GROUP_ROWS", 2)  # row groups of a null and a value
        put_table(wh, str(path), table)
    enc = encodings(path)
    assert "DELTA_BINARY_PACKED" not in enc["timestamp"] | enc["offset"]
    assert assert_fastparquet_reads(path) == n

    first = pa.table({"n": pa.array(range(0, 90_000, 9), pa.int64())})  # ascending, no null
    assert write_options(first)["column_encoding"] == {"n": "DELTA_BINARY_PACKED"}
    assert _writer_options(first)["column_encoding"] == {"n": "PLAIN"}


def test_offsets_that_jump_between_sources_read_back_in_fastparquet(tmp_path: Path) -> None:
    """A ledger entry's offsets ascend within each source's frames and jump between sources'
    files (here one 6 GB into its file, one at its start): still "mostly ascending", but
    fastparquet decoded the DELTA miniblocks holding a jump (29 bits and more) to wrong
    values. Such offsets are PLAIN; a fixed step stays DELTA (see above)."""
    frames = [
        ("big", 6_000_000_000 + 3000 * i) if i % 2 else ("small", 3000 * i) for i in range(400)
    ]
    rows = [(src, start + 120 * k) for src, start in frames for k in range(25)]
    table = pa.table(
        {
            "source_id": [src for src, _ in rows],
            "offset": pa.array([offset for _, offset in rows], pa.int64()),
        }
    )
    assert storage_mod._int_encoding(table["offset"]) == "DELTA_BINARY_PACKED"
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    path = tmp_path / "wh" / "ledger.parquet"
    put_table(wh, str(path), table)
    assert "DELTA_BINARY_PACKED" not in encodings(path)["offset"]
    assert assert_fastparquet_reads(path) == len(rows)


BASE_POOL = pa.default_memory_pool()
#: Counts what the samples allocate (its peak over all of them); never freed, since buffers
#: allocated through it must not outlive it.
SAMPLE_POOL = pa.proxy_memory_pool(BASE_POOL)


@given(st.lists(st.integers(0, 3000), max_size=5), st.integers(1, 9))
@settings(max_examples=60, deadline=None)
def test_the_sample_takes_evenly_spaced_values_without_copying_the_column(
    cuts: list[int], rows: int
) -> None:
    """The sample is every ``len // rows``-th value from the first, however the column is
    chunked (empty chunks too), and costs its own values only: a take from the chunked array
    copied the whole column first (82 MB for 200,000 messages of a flushed object)."""
    values = [f"{i:05d}{'m' * 400}" for i in range(3000)]
    bounds = [0, *sorted(cuts), len(values)]
    column = pa.chunked_array(
        [pa.array(values[a:b], pa.string()) for a, b in itertools.pairwise(bounds)]
    )
    pa.set_memory_pool(SAMPLE_POOL)
    try:
        sample = storage_mod._sample(column, rows)
    finally:
        pa.set_memory_pool(BASE_POOL)
    step = max(1, len(values) // rows)
    assert sample.to_pylist() == values[::step][:rows]
    assert SAMPLE_POOL.max_memory() < column.nbytes // 10


def spread_column(distinct: int, rows: int, step: int, dtype: pa.DataType) -> pa.ChunkedArray:
    """``distinct`` different values ``step`` apart around 0, every one at least once, in a
    shuffled order with some nulls, in three chunks (as an object's spilled pieces are)."""
    rng = random.Random(distinct * 31 + step)
    values: list[int | None] = [(i - distinct // 2) * step for i in range(distinct)]
    values += [rng.choice(values) for _ in range(rows - distinct)]
    rng.shuffle(values)
    values = [x for i, v in enumerate(values) for x in ([None, v] if i % 97 == 5 else [v])]
    third = len(values) // 3
    return pa.chunked_array(
        [
            pa.array(values[a:b], dtype)
            for a, b in [(0, third), (third, 2 * third), (2 * third, None)]
        ]
    )


@pytest.mark.parametrize(
    ("dtype", "step"),
    [
        (pa.int16(), 5),  # close together (a bitmap counts them), over half int16's range
        (pa.int32(), 1),
        (pa.int64(), 3),
        (pa.int64(), 1_000_003),  # far apart (hashed)
        (pa.int32(), 100_003),
    ],
)
@pytest.mark.parametrize("extra", [0, 1])
def test_the_integer_dictionary_limit_is_exact(dtype: pa.DataType, step: int, extra: int) -> None:
    """Exactly :data:`INT_DICTIONARY_MAX` distinct values get a dictionary, one more do not,
    however the values are spread, chunked or interleaved with nulls (which do not count): the
    choice must not depend on anything but the values, since a retried flush overwrites the
    same key and its bytes should be the same."""
    distinct = INT_DICTIONARY_MAX + extra
    column = spread_column(distinct, distinct + 2000, step, dtype)
    assert pc.count_distinct(column).as_py() == distinct and column.null_count > 0
    options = write_options(pa.table({"n": column}))
    assert ("n" in options["use_dictionary"]) == (extra == 0)
    assert options["column_encoding"].get("n") == (None if extra == 0 else "PLAIN")


@pytest.mark.integration
@pytest.mark.s3
def test_delete_objects_on_s3_deletes_every_one_and_skips_missing_ones(s3_warehouse: str) -> None:
    from aggregator.storage import delete_objects

    wh = open_warehouse(s3_warehouse)
    paths = [f"{wh.base}/t/f-{i}.parquet" for i in range(40)]
    for p in paths:
        with wh.fs.open_output_stream(p) as out:
            out.write(b"x")
    delete_objects(wh, [*paths, f"{wh.base}/t/never-written.parquet"])
    left = wh.fs.get_file_info(pafs.FileSelector(f"{wh.base}/t", allow_not_found=True))
    assert [i.path for i in left if i.type == pafs.FileType.File] == []


@pytest.mark.integration
@pytest.mark.s3
def test_delete_object_on_s3_is_one_request_and_a_gone_one_is_fine(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One DELETE, whether the object is there or gone already (pyarrow's ``delete_file`` sent
    a HEAD, the DELETE and a PUT re-creating the folder marker; a HEAD alone for a gone one)."""
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    path = f"{wh.base}/t/intent.json"
    put_bytes(wh, path, b"{}")
    for _ in range(2):  # there, then gone
        before = settled(seaweedfs, wh)
        delete_object(wh, path)
        assert requests_after(seaweedfs, wh, before, None, 1) == 1
        assert seaweedfs.requests(bucket_of(wh))["DELETE"] - before["DELETE"] == 1
        assert wh.fs.get_file_info(path).type == pafs.FileType.NotFound


@pytest.mark.integration
@pytest.mark.s3
def test_fetch_object_on_s3_is_one_get(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole object in one GET (pyarrow opened it with a HEAD first, even given its size);
    a gone one raises FileNotFoundError, as pyarrow does; a local warehouse: None (read it
    through pyarrow)."""
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    path = f"{wh.base}/t/f.parquet"
    body = bytes(range(256)) * 40
    put_bytes(wh, path, body)
    before = settled(seaweedfs, wh)
    data = fetch_object(wh, path)
    assert data is not None and data.to_pybytes() == body
    assert requests_after(seaweedfs, wh, before, None, 1) == 1
    assert seaweedfs.requests(bucket_of(wh))["GET"] - before["GET"] == 1
    with pytest.raises(FileNotFoundError, match=r"t/gone\.parquet is no longer in s3://"):
        fetch_object(wh, f"{wh.base}/t/gone.parquet")


def test_fetch_object_leaves_a_local_warehouse_to_pyarrow(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    put_bytes(wh, wh.path("f.bin"), b"x")
    assert fetch_object(wh, wh.path("f.bin")) is None


INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()]


@st.composite
def int_columns(draw: st.DrawFn) -> pa.ChunkedArray:
    """An integer column of any width and sign, with nulls, extreme values, runs that ascend or
    descend, and empty chunks among its pieces."""
    dtype = draw(st.sampled_from(INT_TYPES))
    bounds = np.iinfo(dtype.to_pandas_dtype())
    low, high = int(bounds.min), int(bounds.max)
    value = st.one_of(
        st.integers(low, high), st.sampled_from([low, high]), st.integers(max(low, -20), 20)
    )
    values = draw(st.lists(st.none() | value, max_size=60))
    if draw(st.booleans()):
        values = sorted(values, key=lambda v: (v is None, v or 0), reverse=draw(st.booleans()))
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=4)))
    pieces = [values[a:b] for a, b in itertools.pairwise([0, *cuts, len(values)])]
    return pa.chunked_array([pa.array(piece, dtype) for piece in pieces], dtype)


@given(int_columns(), st.sampled_from([0, 1, 3, 10]), st.sampled_from([1, 4, 25, 10_000]))
# the head holds every distinct value, as many as the limit; the one over it comes after the head
@example(pa.chunked_array([pa.array([0, 100, 50, 0, 100, 100, 50], pa.int64())]), 3, 4)
@example(pa.chunked_array([pa.array([0, 100, 50, 0, 100, 7, 50], pa.int64())]), 3, 4)
@settings(max_examples=400, deadline=None)
def test_the_integer_encoding_follows_the_values_only(
    column: pa.ChunkedArray, limit: int, head: int
) -> None:
    """The choice for any integer column (narrow, unsigned, all null, one row, chunked with
    empty chunks) is what the values say, computed here the plain way: a dictionary for at most
    the limit of distinct values, DELTA when at least 90% of neighbours ascend, else PLAIN.
    Never an error (compaction runs the same choice over whatever the files hold), never an
    answer bent by wrap-around (an unsigned difference is never negative), whatever the rows
    counted first (``DISTINCT_HEAD_ROWS``: a head of nulls only, one shorter than the column,
    or none)."""
    values = column.to_pylist()
    present = [v for v in values if v is not None]
    if len(set(present)) <= limit:
        expected = None
    else:
        pairs = itertools.pairwise(values)
        ascending = sum(1 for a, b in pairs if a is not None and b is not None and b >= a)
        expected = "DELTA_BINARY_PACKED" if ascending >= 0.9 * (len(values) - 1) else "PLAIN"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage_mod, "INT_DICTIONARY_MAX", limit)
        patch.setattr(storage_mod, "DISTINCT_HEAD_ROWS", head)
        assert storage_mod._int_encoding(column) == expected
