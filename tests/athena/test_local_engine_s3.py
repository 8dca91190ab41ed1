"""The local engine over an S3 warehouse (SeaweedFS): scans hold a bounded number of footers.

DuckDB reads S3 tables through a pyarrow dataset. A plain ``FileSystemDataset`` keeps the decoded
footer of every file it has scanned for as long as it lives (the whole query): ~50 KB a file,
~855 MiB for ``logq errors --since 1d`` over 500 services. These tests check that the table the
engine registers keeps none, that its files are read a few at a time with the query's columns
and filter pushed into each read, with the same answers as a plain dataset, and that a file
compacted away mid-query is still found again by the relisting retry.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import athena.engines.s3scan as s3scan
from athena.engines.local import LocalEngine, full_schema
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, utc, write_frame
from tests.cli.flights import Flights

pytestmark = [pytest.mark.s3, pytest.mark.integration]

START, END = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 13, 0)
#: 2 services x 3 hours x 2 files a partition: 12 files, read 4 (then 2) at a time.
FILES_PER_PARTITION = 2


@pytest.fixture
def s3_access(s3_warehouse: str) -> tuple[str, pd.DataFrame, list[str]]:
    """An S3 warehouse of 12 envoy_access files; its URI, the rows, the file paths."""
    frame = access_frame(300, START, END, ["a", "b"], seed=21)
    files = write_frame(s3_warehouse, "envoy_access", frame, FILES_PER_PARTITION)
    assert len(files) == 12
    return s3_warehouse, frame, files


class _Recording:
    """A DuckDB connection that keeps every Python object registered on it (the tables)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.registered: dict[str, Any] = {}

    def register(self, name: str, obj: Any) -> Any:
        self.registered[name] = obj
        return self.con.register(name, obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def _footer_kept(fragment: ds.ParquetFileFragment) -> bool:
    """Whether ``fragment`` holds its file's decoded footer: pyarrow lists a Parquet fragment's
    row groups (in what it pickles) only once it has read the footer and kept it."""
    return fragment.__reduce__()[1][3] is not None


def test_an_s3_query_keeps_no_footer_of_the_files_it_read(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is right, and the table DuckDB scanned holds no file's footer afterwards
    (a plain dataset held all 12: memory grew with every file a query read)."""
    uri, frame, files = s3_access
    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 4)
    connections: list[_Recording] = []
    connect = LocalEngine._connect

    def recording(engine: LocalEngine) -> Any:
        connections.append(_Recording(connect(engine)))
        return connections[-1]

    monkeypatch.setattr(LocalEngine, "_connect", recording)
    engine = LocalEngine(uri)
    parts = engine.plan("envoy_access", None, None)
    sql = (
        "SELECT service, count(*) AS n, sum(bytes_sent) AS sent FROM envoy_access "
        "WHERE response_code >= 500 GROUP BY service ORDER BY service"
    )
    result = engine.run(sql, {}, {"envoy_access": parts})
    errors = frame[frame["response_code"] >= 500].groupby("service")["bytes_sent"]
    assert result.rows == [(s, int(g.count()), int(g.sum())) for s, g in errors]
    [con] = connections
    [table] = con.registered.values()
    fragments = list(table.get_fragments())
    assert sorted(f.path for f in fragments) == sorted(files)
    assert [f.path for f in fragments if _footer_kept(f)] == []


class _Spying(s3scan.ChunkedScan):
    """A :class:`ChunkedScan` that records what DuckDB asks of it and the files of each read."""

    asked: list[tuple[set[str] | None, str | None]]
    chunks: list[list[str]]
    threads: set[int]

    def scanner(self, columns: Any = None, filter: Any = None, **options: Any) -> s3scan.ChunkScan:
        self.asked.append((None if columns is None else set(columns), _text(filter)))
        return super().scanner(columns=columns, filter=filter, **options)


def _text(expression: Any) -> str | None:
    return None if expression is None else str(expression)


def _tables(uri: str, files: list[str]) -> tuple[_Spying, ds.Dataset]:
    """The files as the engine's chunked table (spied on) and as one plain dataset."""
    wh = open_warehouse(uri)
    schema = full_schema("envoy_access")
    partitioning = ds.partitioning(
        pa.schema([("service", pa.string()), ("dt", pa.string())]), flavor="hive"
    )
    base = wh.table_root("envoy_access")
    built = s3scan.chunked_dataset(files, schema, wh.fs, base, partitioning)
    plain = ds.dataset(
        files, schema=schema, format="parquet", filesystem=wh.fs,
        partitioning=partitioning, partition_base_dir=base,
    )  # fmt: skip
    spying = _Spying(built, built._dataset_of, files)
    spying.asked, spying.chunks, spying.threads = [], [], set()
    dataset_of = spying._dataset_of

    def recorded(paths: Any) -> ds.FileSystemDataset:
        spying.chunks.append(list(paths))
        spying.threads.add(threading.get_ident())
        return dataset_of(paths)

    spying._dataset_of = recorded
    return spying, plain


QUERIES = [
    "SELECT count(*) AS n FROM t",
    "SELECT service, dt, count(*) AS n FROM t GROUP BY ALL ORDER BY ALL",
    "SELECT request_id, upstream_host FROM t WHERE service = 'b' AND response_code = 503 "
    "ORDER BY request_id",
    "SELECT * FROM t WHERE dt = '2026-11-28-11' ORDER BY request_id",
    "SELECT count(*) FILTER (WHERE x_forwarded_for IS NULL) AS no_xff FROM t",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_chunked_reads_answer_as_one_dataset_with_pushdown(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    """Same rows as one plain dataset, one file of an older schema version (without
    ``x_forwarded_for`` and ``upstream_host``: NULL) included; every file read exactly once,
    at most 2 per dataset; DuckDB still hands the scan only the columns and filter the query
    needs."""
    uri, _, files = s3_access
    target = files[5]
    wh = open_warehouse(uri)
    older = pq.read_table(target, filesystem=wh.fs).drop_columns(
        ["x_forwarded_for", "upstream_host"]
    )
    pq.write_table(older, target, filesystem=wh.fs)
    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 2)
    chunked, plain = _tables(uri, files)
    got, want = duckdb.connect(), duckdb.connect()
    got.register("t", chunked)
    want.register("t", plain)
    assert got.sql(sql).fetchall() == want.sql(sql).fetchall()
    [(columns, where)] = chunked.asked
    assert sorted(f for chunk in chunked.chunks for f in chunk) == sorted(files)
    assert max(len(chunk) for chunk in chunked.chunks) == 2
    if sql.startswith("SELECT *"):
        assert columns is None  # all of them
        assert where is not None and "dt" in where
    elif "request_id, upstream_host" in sql:
        assert columns == {"request_id", "upstream_host"}  # the filter's columns stay in it
        assert where is not None and "service" in where and "response_code" in where
    elif "x_forwarded_for" in sql:
        assert columns == {"x_forwarded_for"}


def test_chunks_are_opened_by_the_reader_of_the_scan_only(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing reads ahead of the reader on other threads: each chunk opens when the one before
    it is used up, on the reading thread. (``Scanner.from_batches`` ran the chunks on pyarrow's
    I/O threads: after a Ctrl-C one of them could wait for the GIL while Python exited, and
    pyarrow's exit handler waited for it for ever.)"""
    uri, frame, files = s3_access
    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 4)
    chunked, _ = _tables(uri, files)
    reader = chunked.scanner(columns=["request_id"]).to_reader()
    assert chunked.chunks == []
    rows = 0
    while len(chunked.chunks) < 2:
        rows += reader.read_next_batch().num_rows
    assert len(chunked.chunks) == 2  # the second chunk opened only once the first was read
    rows += sum(batch.num_rows for batch in reader)
    assert rows == len(frame) and len(chunked.chunks) == 3
    assert chunked.threads == {threading.get_ident()}


def test_a_file_compacted_away_mid_query_is_relisted_on_s3(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition's two files merged into one after the query listed them: the read of the
    gone file fails inside a chunk, the engine lists again and answers over the merged file."""
    uri, frame, files = s3_access
    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 4)
    engine = LocalEngine(uri)
    parts = engine.plan("envoy_access", None, None)
    wh = open_warehouse(uri)
    pair = sorted(f for f in files if "service=b/dt=2026-11-28-12" in f)
    merged = pa.concat_tables([pq.read_table(f, filesystem=wh.fs) for f in pair])
    pq.write_table(merged, pair[0].replace("part-0000", "merged"), filesystem=wh.fs)
    for f in pair:
        wh.fs.delete_file(f)
    result = engine.run(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS ids FROM envoy_access",
        {},
        {"envoy_access": parts},
    )
    assert result.rows == [(len(frame), len(frame))]
    assert result.files == len(files) - 1


def test_an_exact_read_drops_a_vanished_file_and_adds_none_on_s3(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``exact`` (``tail --follow``, which reads only the objects it has not read): a chosen
    file that vanished is dropped; the relisting adds nothing of what else the partition holds
    (a merged output, the files not chosen), and the answer says what it read."""
    uri, _, files = s3_access
    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 4)
    engine = LocalEngine(uri)
    wh = open_warehouse(uri)
    pair = sorted(f for f in files if "service=b/dt=2026-11-28-12" in f)
    parts = [p for p in engine.plan("envoy_access", ["b"], None) if p.dt == "2026-11-28-12"]
    chosen = [replace(p, files=tuple(f for f in p.files if f.path == pair[1])) for p in parts]
    merged = pa.concat_tables([pq.read_table(f, filesystem=wh.fs) for f in pair])
    pq.write_table(merged, pair[0].replace("part-0000", "merged"), filesystem=wh.fs)
    wh.fs.delete_file(pair[1])
    sql = "SELECT count(*) AS n FROM envoy_access"
    result = engine.run(sql, {}, {"envoy_access": chosen}, exact=True)
    assert result.rows == [(0,)] and result.files == 0
    assert result.scopes == {"envoy_access": []}
    relisted = engine.run(sql, {}, {"envoy_access": chosen})  # a whole-partition read
    assert relisted.rows == [(len(merged) + pq.read_metadata(pair[0], filesystem=wh.fs).num_rows,)]


def test_a_file_that_fails_its_cast_is_one_line_without_python_traceback(
    s3_access: tuple[str, pd.DataFrame, list[str]],
) -> None:
    """The files are read by Python code between DuckDB and pyarrow, and pyarrow appends the
    Python traceback to errors passing through it: the user gets one line, which names the file
    whose column does not convert (:class:`athena.foreign.ForeignFile`)."""
    import pyarrow.compute as pc

    from athena.engines.result import EngineError

    uri, _, files = s3_access
    wh = open_warehouse(uri)
    table = pq.read_table(files[3], filesystem=wh.fs)
    i = table.schema.get_field_index("response_code")
    codes = pc.binary_join_element_wise(pc.cast(table["response_code"], pa.string()), "x", "")
    pq.write_table(table.set_column(i, "response_code", codes), files[3], filesystem=wh.fs)
    with pytest.raises(EngineError) as failed:
        LocalEngine(uri).run("SELECT sum(response_code) AS n FROM envoy_access", {}, None)
    message = str(failed.value)
    assert message.startswith(f"the Parquet file {files[3]} holds column response_code as string")
    assert "\n" not in message and "Traceback" not in message and "Python" not in message


def _epoch_ms_copy(uri: str, source: str, one_time: bool) -> str:
    """A foreign file beside ``source``: its rows with ``timestamp`` as int64 epoch
    milliseconds (``one_time``: the first time in every row, so that the footer's statistics
    hold one value). Named to list last in its partition."""
    wh = open_warehouse(uri)
    rows = pq.read_table(source, filesystem=wh.fs)
    times = rows["timestamp"].cast(pa.int64())
    if one_time:
        times = pa.array([times[0].as_py()] * len(rows), pa.int64())
    foreign = f"{source.rsplit('/', 1)[0]}/z-foreign.parquet"
    changed = rows.set_column(rows.schema.get_field_index("timestamp"), "timestamp", times)
    pq.write_table(changed, foreign, filesystem=wh.fs)
    return foreign


@pytest.mark.parametrize("one_time", [False, True])
def test_a_file_of_epoch_integer_times_is_named_from_one_footer(
    s3_access: tuple[str, pd.DataFrame, list[str]], monkeypatch: pytest.MonkeyPatch, one_time: bool
) -> None:
    """pyarrow cast int64 times to the declared timestamps as epoch milliseconds: a query that
    does not filter on time (or whose filter pyarrow could compare with one value) answered
    from them. The scan refuses the file as it opens it, and the error names it: the one
    footer read after the failure is that file's. A query that reads no time answers, as over
    a local warehouse."""
    from athena.foreign import ForeignFile

    uri, frame, files = s3_access
    foreign = _epoch_ms_copy(uri, files[7], one_time)
    footers = Flights(pq.read_metadata)  # the paths whose footers are read from now on
    monkeypatch.setattr(pq, "read_metadata", footers)
    reads = footers.firsts
    with pytest.raises(ForeignFile) as named:
        LocalEngine(uri).run("SELECT min(timestamp) AS t FROM envoy_access", {}, None)
    assert named.value.path == foreign, str(named.value)
    assert "holds column timestamp as int64 where the table has timestamp" in str(named.value)
    assert reads == [foreign]
    # (count(response_code): for count(*) DuckDB has the scan read the first column, time)
    sql = "SELECT count(response_code) AS n FROM envoy_access WHERE response_code >= 500"
    copied = pq.read_table(foreign, filesystem=open_warehouse(uri).fs)
    counted = LocalEngine(uri).run(sql, {}, None)
    want = (
        int((frame["response_code"] >= 500).sum())
        + pc.sum(pc.greater_equal(copied["response_code"], 500)).as_py()
    )
    assert counted.rows == [(want,)]


class _CountingOpens(pafs.FileSystemHandler):
    """A filesystem over another that records every file opened for reading."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs, self.opened = fs, []

    def open_input_file(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_file(path)

    def open_input_stream(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_stream(path)

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: Any) -> Any:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self.fs.get_file_info(selector)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def _writes(self, *args: Any) -> Any:
        raise NotImplementedError("read only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _writes
    delete_file = move = copy_file = open_output_stream = open_append_stream = _writes


def test_the_check_of_each_file_opens_nothing_more(
    s3_access: tuple[str, pd.DataFrame, list[str]],
) -> None:
    """Each file's schema, checked before its rows go out, is the footer the scan read: with
    the check, every file the scan reads is opened once, as without it, and the check saw
    each of them (those whose row groups the filter skips too), and no file of another hour."""
    uri, frame, files = s3_access
    wh = open_warehouse(uri)
    schema = full_schema("envoy_access")
    partitioning = ds.partitioning(
        pa.schema([("service", pa.string()), ("dt", pa.string())]), flavor="hive"
    )
    checked: list[tuple[str, str]] = []
    scanned = sorted(f for f in files if "/dt=2026-11-28-12/" in f)  # (the others: pruned)

    def check(path: str, found: pa.Schema, reads: Any) -> None:
        checked.append((path, str(found.field("timestamp").type)))

    for with_check in (None, check):
        counting = _CountingOpens(wh.fs)
        table = s3scan.chunked_dataset(
            files, schema, pafs.PyFileSystem(counting), wh.table_root("envoy_access"),
            partitioning, with_check,
        )  # fmt: skip
        con = duckdb.connect()
        con.register("t", table)
        sql = "SELECT count(*) FROM t WHERE dt = '2026-11-28-12' AND response_code >= 0"
        [(n,)] = con.sql(sql).fetchall()
        assert n == int((frame["timestamp"] >= pd.Timestamp(utc(2026, 11, 28, 12, 0))).sum())
        assert sorted(counting.opened) == scanned, with_check
    assert sorted(path for path, _ in checked) == scanned
