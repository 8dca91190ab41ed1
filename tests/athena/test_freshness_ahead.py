"""Freshness with rows stamped ahead of the clock: the newest row at or before a time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from athena.freshness import _file_times, newest_data, newest_data_quick, newest_in
from athena.partitions import plan
from athena.warehouse import Warehouse, open_warehouse
from tests.aggregator.helpers import LocalPassThrough
from tests.athena.factory import access_frame, utc, write_frame, write_with_writer

NOW = utc(2026, 3, 1, 10, 30)


def _warehouse(tmp_path: Path) -> tuple[str, datetime]:
    """One service: rows up to 10:20 and, in the same hour's file, rows at 10:50 (ahead of
    NOW), and rows in a later hour (12:00). Returns the URI and the newest row before NOW."""
    uri = str(tmp_path / "wh")
    frame = access_frame(50, utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 20), ["svc"], seed=1)
    ahead = access_frame(5, utc(2026, 3, 1, 10, 50), utc(2026, 3, 1, 10, 51), ["svc"], seed=2)
    later = access_frame(5, utc(2026, 3, 1, 12, 0), utc(2026, 3, 1, 12, 1), ["svc"], seed=3)
    write_frame(uri, "envoy_access", pd.concat([frame, ahead, later], ignore_index=True))
    return uri, frame["timestamp"].max().to_pydatetime()


def test_rows_after_the_bound_are_not_counted(tmp_path: Path) -> None:
    """Footers give a file's largest time only: a file whose largest is ahead has its column
    read, and the hours after the bound are not read at all."""
    uri, newest_ok = _warehouse(tmp_path)
    wh = open_warehouse(uri)
    parts = plan(wh, "envoy_access", ["svc"], None)
    assert newest_in(wh, parts).hour == 12  # unbounded: the newest row, ahead or not
    assert newest_in(wh, parts, NOW) == newest_ok
    assert newest_data_quick(wh, "envoy_access", ["svc"], NOW) == newest_ok
    assert newest_data(wh, "envoy_access", ["svc"], NOW) == newest_ok
    assert newest_in(wh, parts, utc(2026, 3, 1, 9, 0)) is None
    assert newest_data_quick(wh, "envoy_access", ["svc"], NOW + timedelta(hours=5)).hour == 12


class _CountedOpens(LocalPassThrough):
    """The local filesystem, counting the files opened for reading (a footer or a column)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []
        self.files: list[pa.NativeFile] = []

    def open_input_file(self, path: str) -> pa.NativeFile:
        self.opened.append(path)
        self.files.append(super().open_input_file(path))
        return self.files[-1]

    def open_input_stream(self, path: str) -> pa.NativeFile:
        self.opened.append(path)
        return super().open_input_stream(path)


def _flushes(uri: str, segments: list[pd.DataFrame]) -> list[str]:
    """One file per flushed segment (node-a, segment numbers 1, 2, ...), as an uncompacted
    hour holds them; returns their paths, oldest first."""
    return [
        path
        for seq, frame in enumerate(segments, start=1)
        for path in write_with_writer(uri, "envoy_access", frame, seq=seq)
    ]


def _counted(uri: str) -> tuple[Warehouse, _CountedOpens]:
    handler = _CountedOpens()
    return Warehouse(uri, pafs.PyFileSystem(handler), open_warehouse(uri).base), handler


def test_services_reads_the_footers_of_an_hours_newest_files_only(tmp_path: Path) -> None:
    """`logq services` read the `timestamp` column of every file of each service's newest hour
    (360 files an hour at a 10 s flush): minutes locally, thousands of requests on S3. With no
    row ahead of the clock, the footers of the newest files answer, the same newest line."""
    from cli.commands.tables import _freshness

    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    ten = timedelta(seconds=10)
    segments = [
        access_frame(6, base + k * ten, base + (k + 1) * ten, ["svc"], k) for k in range(40)
    ]
    uri = str(tmp_path / "wh")
    paths = _flushes(uri, segments)
    wh, handler = _counted(uri)
    [fresh], ahead = _freshness(wh, ["svc"], None)
    assert fresh.newest == pd.concat(segments)["timestamp"].max().to_pydatetime()
    assert ahead == {}
    assert (fresh.access_hours, fresh.log_hours) == (1, 0)
    assert sorted(handler.opened) == sorted(paths[-2:])  # of 40: the two newest segments


def test_services_newest_line_with_rows_ahead_in_the_newest_files(tmp_path: Path) -> None:
    """A footer whose largest time is ahead of the clock hides the file's newest row at or
    before it: that file's column is read. When an hour's newest files hold rows ahead only,
    the hour's other files answer (not the hour before). The answers are the column's."""
    from athena.freshness import freshness_in, service_hours

    start = utc(2026, 3, 1, 10, 0)
    minute = timedelta(minutes=1)
    older = [
        access_frame(5, start + k * minute, start + (k + 1) * minute, ["svc"], k) for k in range(20)
    ]
    before_now = access_frame(3, utc(2026, 3, 1, 10, 25), utc(2026, 3, 1, 10, 26), ["svc"], seed=7)
    ahead = access_frame(3, utc(2026, 3, 1, 10, 50), utc(2026, 3, 1, 10, 51), ["svc"], seed=8)
    uri = str(tmp_path / "mixed")
    paths = _flushes(uri, [*older, pd.concat([before_now, ahead])])
    wh, handler = _counted(uri)
    hours = service_hours(wh, "svc")
    tops: dict[str, datetime | None] = {}
    assert freshness_in(wh, "svc", hours, tops=tops).newest == ahead["timestamp"].max()
    got = freshness_in(wh, "svc", hours, NOW, tops).newest
    column = newest_data(open_warehouse(uri), "envoy_access", ["svc"], NOW)  # every column
    assert got == before_now["timestamp"].max() == column
    # The footers of the two newest, then the column of the newest; the other footer once.
    assert set(handler.opened) == set(paths[-2:]) and handler.opened.count(paths[-2]) == 1

    uri = str(tmp_path / "only-ahead")  # the two newest segments: rows ahead only
    paths = _flushes(uri, [*older, ahead, ahead])
    wh, handler = _counted(uri)
    got = freshness_in(wh, "svc", service_hours(wh, "svc"), NOW).newest
    assert got == pd.concat(older)["timestamp"].max()
    assert got == newest_data(open_warehouse(uri), "envoy_access", ["svc"], NOW)
    assert set(handler.opened) == set(paths)


def test_services_reads_every_compaction_output_of_a_compacted_hour(tmp_path: Path) -> None:
    """A compacted hour holds outputs named ``c-<random id>`` (one per 128 MB: more than
    MAX_FOOTERS for a busy service), and later flushes of late rows. The outputs' names carry
    no order: capped with the flushes' files, the one holding the newest row was left out at
    random. Each output's footer is read, and the newest line is the columns'."""
    from aggregator.compaction.partition import compact_partition
    from athena.schema import ENVOY_ACCESS, is_compacted_object
    from cli.commands.tables import _freshness

    start = utc(2026, 3, 1, 10, 0)
    step = timedelta(seconds=80)
    segments = [
        access_frame(6, start + k * step, start + (k + 1) * step, ["svc"], k) for k in range(44)
    ]
    uri = str(tmp_path / "wh")
    flushed = _flushes(uri, segments)
    folder = flushed[0].rsplit("/", 1)[0]
    target = int(max(Path(p).stat().st_size for p in flushed) * 2.5)  # two files a group
    assert compact_partition(open_warehouse(uri), ENVOY_ACCESS, folder, target) == 44
    late = access_frame(4, start + 5 * step, start + 6 * step, ["svc"], seed=99)  # one node late
    write_with_writer(uri, "envoy_access", late, seq=45)
    outputs = [p.as_posix() for p in Path(folder).iterdir() if is_compacted_object(p.name)]
    assert len(outputs) > 16

    wh, handler = _counted(uri)
    [fresh], ahead = _freshness(wh, ["svc"], None)
    assert fresh.newest == pd.concat(segments)["timestamp"].max().to_pydatetime()
    assert fresh.newest == newest_data(open_warehouse(uri), "envoy_access", ["svc"])
    assert set(outputs) <= set(handler.opened) and ahead == {}


def test_services_newest_line_of_hand_named_outputs_beyond_the_cap(tmp_path: Path) -> None:
    """The same with the names fixed: the output whose id sorts last holds the newest rows,
    which a cap of MAX_FOOTERS over the late flush and 20 outputs would leave out."""
    from athena.schema import compacted_object_name
    from cli.commands.tables import _freshness

    start = utc(2026, 3, 1, 10, 0)
    step = timedelta(minutes=3)
    uri = str(tmp_path / "wh")
    slices = [
        access_frame(5, start + k * step, start + (k + 1) * step, ["svc"], k) for k in range(20)
    ]
    for k, frame in enumerate(slices):  # the newest rows: c-000...0, the last name
        write_with_writer(uri, "envoy_access", frame, name=compacted_object_name(f"{19 - k:020x}"))
    write_with_writer(uri, "envoy_access", slices[3], seq=7)  # a late flush: old rows
    [fresh], _ = _freshness(open_warehouse(uri), ["svc"], None)
    assert fresh.newest == slices[-1]["timestamp"].max().to_pydatetime()


def test_a_column_read_closes_its_file_also_when_it_is_damaged(tmp_path: Path) -> None:
    """A file whose column is read (rows ahead of the clock, no statistics) is closed when the
    read returns; a damaged one too, while the error naming it is still held (ParquetFile
    opened by path kept it open from the error's traceback: a file descriptor per error)."""
    from athena.engines.result import EngineError
    from athena.freshness import footer_bound

    uri = str(tmp_path / "wh")
    [good] = write_with_writer(
        uri, "envoy_access", access_frame(3, NOW, NOW + timedelta(minutes=20), ["svc"])
    )
    bad = good.replace("node-a-", "node-b-")
    Path(bad).write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    wh, handler = _counted(uri)
    footer_bound(wh, good, before=NOW)  # every row ahead of it: the column is read
    assert handler.opened == [good, good]  # the footer, then the column
    with pytest.raises(EngineError, match=re.escape(bad)) as caught:
        _file_times(wh, bad)
    assert caught.value is not None and handler.files
    assert all(f.closed for f in handler.files)


def test_stale_note_newest_when_the_newest_flushes_hold_rows_ahead_only(tmp_path: Path) -> None:
    """The stale note and an empty answer (:func:`newest_in`) read the footers of an hour's
    newest flushes only; when those hold rows ahead of the clock only, the hour's other files
    answer, as in `logq services`. It fell back to the hour before: "newest 09:10" for data of
    10:20, an older time than the truth, named beside the rows ahead."""
    start = utc(2026, 3, 1, 10, 0)
    minute = timedelta(minutes=1)
    hour_before = access_frame(4, utc(2026, 3, 1, 9, 10), utc(2026, 3, 1, 9, 11), ["svc"], 40)
    older = [
        access_frame(5, start + k * minute, start + (k + 1) * minute, ["svc"], k) for k in range(20)
    ]
    ahead = access_frame(3, utc(2026, 3, 1, 10, 50), utc(2026, 3, 1, 10, 51), ["svc"], seed=8)
    uri = str(tmp_path / "wh")
    _flushes(uri, [hour_before, *older, ahead, ahead])  # the two newest segments: ahead only
    wh = open_warehouse(uri)
    parts = plan(wh, "envoy_access", ["svc"], None)
    tops: dict[str, datetime | None] = {}
    assert newest_in(wh, parts, tops=tops) == ahead["timestamp"].max()
    got = newest_in(wh, parts, NOW, tops)
    assert got == pd.concat(older)["timestamp"].max()
    assert got == newest_data(wh, "envoy_access", ["svc"], NOW)  # every column read


def test_counting_rows_ahead_raises_an_hours_file_error_before_listing_the_next_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting rows ahead reads each hour's footers before the next hour is listed, as one
    loop did: a foreign file in the first hour (a ForeignFile, which the note names) is the
    error, not a failed listing of the hour after it (an OSError, which the note keeps quiet
    about). Reading the footers of every hour at once, after all the listings, swapped them."""
    import athena.partitions as partitions
    from athena.foreign import ForeignFile
    from athena.freshness import rows_after

    uri, _ = _warehouse(tmp_path)
    wh = open_warehouse(uri)
    [ahead_file] = list(Path(uri, "envoy_access", "service=svc", "dt=2026-03-01-10").iterdir())
    rows = pq.read_table(ahead_file)
    far = pa.array([253402300800000 * 3] * len(rows), pa.int64()).cast(rows["timestamp"].type)
    pq.write_table(rows.set_column(rows.schema.get_field_index("timestamp"), "timestamp", far),
                   ahead_file)  # fmt: skip
    real = partitions.list_files

    def failing(wh: Warehouse, path: str, *args: object, **kwargs: object) -> object:
        if "dt=2026-03-01-12" in path:
            raise OSError(f"listing {path} failed")
        return real(wh, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(partitions, "list_files", failing)
    with pytest.raises(ForeignFile, match="past year 9999"):
        rows_after(wh, "envoy_access", ["svc"], NOW)


def test_a_local_warehouse_reads_footers_in_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pool on a local folder: its footers cost microseconds, threads would only take turns
    (the GIL). Only an s3:// warehouse reads S3_FOOTER_THREADS at once."""
    import athena.threads as threads
    from athena.freshness import oldest_data, rows_after

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a thread pool was made for a local warehouse")

    uri, _ = _warehouse(tmp_path)
    write_frame(uri, "envoy_access", access_frame(9, NOW - timedelta(minutes=9), NOW, ["b", "c"]))
    wh = open_warehouse(uri)
    parts = plan(wh, "envoy_access", None, None)
    monkeypatch.setattr(threads, "ThreadPoolExecutor", no_pool)
    assert newest_in(wh, parts, NOW) is not None
    assert oldest_data(wh, "envoy_access", None) is not None
    assert rows_after(wh, "envoy_access", None, NOW, parts) is not None
