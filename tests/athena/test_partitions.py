"""Partition pruning and the reader rule, on a local warehouse and on real S3 (SeaweedFS)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from athena.engines.local import LocalEngine
from athena.partitions import (
    Partition,
    hours_with_data,
    is_data_file,
    is_dt,
    list_dts,
    list_files,
    list_services,
    plan,
)
from athena.timerange import TimeRange, dt_of
from athena.warehouse import Warehouse, open_warehouse
from tests.athena.factory import access_frame, utc, write_frame

START, END = utc(2026, 11, 27, 22, 0), utc(2026, 11, 28, 2, 0)


def test_reader_rule() -> None:
    assert is_data_file("part-0001.parquet")
    for name in (".part.parquet", "_tmp.parquet", "part.parquet.tmp", "_SUCCESS", "x.json"):
        assert not is_data_file(name)


@pytest.fixture(scope="module")
def local_wh(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    uri = str(tmp_path_factory.mktemp("p") / "wh")
    frame = access_frame(800, START, END, ["a", "b", "c"], seed=5)
    write_frame(uri, "envoy_access", frame, files_per_partition=2)
    Path(uri, "envoy_access", "service=a", "dt=2026-11-27-23", ".inflight.parquet").write_bytes(
        b"x"
    )
    Path(uri, "envoy_access", "service=a", "not-a-partition").mkdir()
    return uri, frame


def test_plan_prunes_by_service_and_hour(local_wh) -> None:
    uri, _ = local_wh
    wh = open_warehouse(uri)
    r = TimeRange.parse("2026-11-27T23:30:00Z", "2026-11-28T00:10:00Z")
    parts = plan(wh, "envoy_access", ["a", "c"], r)
    assert [p.relative for p in parts] == [
        "envoy_access/service=a/dt=2026-11-27-23",
        "envoy_access/service=a/dt=2026-11-28-00",
        "envoy_access/service=c/dt=2026-11-27-23",
        "envoy_access/service=c/dt=2026-11-28-00",
    ]
    assert all(len(p.files) == 2 for p in parts)
    assert not any(".inflight" in f.path for p in parts for f in p.files)
    assert len(plan(wh, "envoy_access", None, None)) == 12
    assert plan(wh, "envoy_access", ["zzz"], r) == []
    assert plan(wh, "container_logs", None, r) == []


@pytest.mark.parametrize(
    ("since", "until", "lists_hours"),
    [
        ("2026-11-27T23:30:00Z", "2026-11-28T00:10:00Z", False),  # 2 hours: looked up by name
        ("2026-11-27T20:00:00Z", "2026-11-28T02:00:00Z", False),  # 6 hours
        ("2026-11-27T19:00:00Z", "2026-11-28T02:00:00Z", True),  # 7 hours: listed
    ],
)
def test_short_ranges_look_hours_up_instead_of_listing_them(
    local_wh, monkeypatch: pytest.MonkeyPatch, since: str, until: str, lists_hours: bool
) -> None:
    """A service's ``dt`` folders are listed only for long ranges (on S3 a year of hours is
    many LIST calls); either way the same partitions come out."""
    from athena import partitions

    uri, _ = local_wh
    wh = open_warehouse(uri)
    r = TimeRange.parse(since, until)
    listed: list[str] = []
    real = partitions._subdirs

    def counting(wh, path, key):  # type: ignore[no-untyped-def]
        listed.append(key)
        return real(wh, path, key)

    monkeypatch.setattr(partitions, "_subdirs", counting)
    parts = plan(wh, "envoy_access", None, r)
    assert ("dt" in listed) is lists_hours
    every = [p for p in plan(wh, "envoy_access", None, None) if r.contains_dt(p.dt)]
    assert parts == every and parts


def test_a_range_of_centuries_is_planned_without_listing_its_hours(
    local_wh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--since 0001-01-01`` spans 17.7 million hours: building their list to learn that it
    is long took 86 s and 1.3 GB before the query started."""
    uri, _ = local_wh
    wh = open_warehouse(uri)
    r = TimeRange.parse("0001-01-01T00:00:00Z", "2026-11-28T02:00:00Z")
    assert r.hour_count() == (r.until - r.since).total_seconds() // 3600
    assert TimeRange.parse("2026-11-27T23:30:00Z", "2026-11-28T00:10:00Z").hour_count() == 2

    def never(self: TimeRange) -> list[str]:
        raise AssertionError("hours() listed for a long range")

    monkeypatch.setattr(TimeRange, "hours", never)
    assert len(plan(wh, "envoy_access", None, r)) == 12


def test_engine_reads_only_planned_files(local_wh) -> None:
    uri, frame = local_wh
    engine = LocalEngine(uri)
    r = TimeRange.parse("2026-11-28T00:00:00Z", "2026-11-28T01:00:00Z")
    scopes = {"envoy_access": engine.plan("envoy_access", ["b"], r)}
    res = engine.run(
        "SELECT count(*) AS n, min(dt) AS lo, max(dt) AS hi FROM envoy_access", {}, scopes
    )
    want = frame[(frame["service"] == "b") & (frame["timestamp"].dt.hour == 0)]
    assert res.rows == [(len(want), "2026-11-28-00", "2026-11-28-00")]
    assert res.files == 2 and res.partitions == ["envoy_access/service=b/dt=2026-11-28-00"]


def test_scan_budget(local_wh) -> None:
    from athena.engines.result import ScanBudgetError

    uri, _ = local_wh
    engine = LocalEngine(uri, max_scan_bytes=10)
    with pytest.raises(ScanBudgetError, match="max-scan-bytes"):
        engine.run("SELECT count(*) FROM envoy_access", {})


@pytest.mark.s3
@pytest.mark.integration
def test_s3_warehouse_pruned_and_queried(s3_warehouse: str) -> None:
    frame = access_frame(600, START, END, ["a", "b"], seed=9)
    write_frame(s3_warehouse, "envoy_access", frame, files_per_partition=2)
    wh = open_warehouse(s3_warehouse)
    # Objects a reader must skip, written straight to S3.
    with wh.fs.open_output_stream(
        wh.path("envoy_access/service=a/dt=2026-11-27-23/_part.parquet")
    ) as f:
        f.write(b"garbage")
    engine = LocalEngine(s3_warehouse)
    r = TimeRange.parse("2026-11-27T23:00:00Z", "2026-11-28T01:00:00Z")
    scopes = {"envoy_access": engine.plan("envoy_access", ["a"], r)}
    assert [p.dt for p in scopes["envoy_access"]] == ["2026-11-27-23", "2026-11-28-00"]
    res = engine.run(
        "SELECT service, count(*) AS n, sum(bytes_sent) AS b FROM envoy_access GROUP BY 1",
        {},
        scopes,
    )
    want = frame[
        (frame["service"] == "a")
        & (frame["timestamp"] >= pd.Timestamp("2026-11-27T23:00Z"))
        & (frame["timestamp"] < pd.Timestamp("2026-11-28T01:00Z"))
    ]
    assert res.rows == [("a", len(want), int(want["bytes_sent"].sum()))]


def test_files_compacted_away_during_a_query_are_read_again_not_called_damaged(
    tmp_path: Path,
) -> None:
    """Compaction may replace a partition's files between the listing and the read: the query
    runs again over a fresh listing (same answer), while a damaged file is still named."""
    import pyarrow.parquet as pq

    from athena.engines.result import EngineError

    uri = str(tmp_path / "wh")
    frame = access_frame(300, START, END, ["a"], seed=3)
    write_frame(uri, "envoy_access", frame, files_per_partition=3)
    engine = LocalEngine(uri)
    scopes = {"envoy_access": engine.plan("envoy_access", None, None)}  # listed now
    part = scopes["envoy_access"][0]
    folder = Path(part.files[0].path).parent
    merged = pq.read_table([f.path for f in part.files])  # what a compactor writes ...
    for f in part.files:  # ... and the inputs it then deletes
        Path(f.path).unlink()
    pq.write_table(merged.drop_columns([c for c in ("service", "dt") if c in merged.column_names]),
                   folder / "c-merged.parquet")  # fmt: skip
    res = engine.run("SELECT count(*) AS n FROM envoy_access", {}, scopes)
    assert res.rows == [(len(frame),)]
    (folder / "c-merged.parquet").write_bytes(b"not parquet at all")
    scopes = {"envoy_access": engine.plan("envoy_access", None, None)}
    with pytest.raises(EngineError, match=r"cannot read the Parquet file .*c-merged\.parquet"):
        engine.run("SELECT count(*) AS n FROM envoy_access", {}, scopes)


# --- Concurrent and recursive listing: the same plan as one listing after the other -----------

#: Hours of the layout below: "long" has 30 (two files each), "short" 5, "odd" 8 with junk.
LONG_END = utc(2026, 11, 28, 3, 0)


def _put(wh: Warehouse, rel: str, data: bytes = b"x") -> None:
    path = wh.path("envoy_access", rel)
    if not wh.is_s3:
        wh.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with wh.fs.open_output_stream(path) as f:
        f.write(data)


def _layout(wh: Warehouse) -> None:
    """Services with short and long histories, several files per hour (written out of name
    order) and everything a reader must skip: temporary names, deeper folders, folders that are
    not partitions, an empty ``dt=`` value, an hour holding only such files."""
    for h in range(30):
        dt = dt_of(LONG_END - timedelta(hours=h + 1))
        _put(wh, f"service=long/dt={dt}/c-b.parquet", b"bb")
        _put(wh, f"service=long/dt={dt}/c-a.parquet", b"a")
    for h in range(5):
        _put(wh, f"service=short/dt={dt_of(LONG_END - timedelta(hours=h + 1))}/c.parquet")
    for h in range(8):
        dt = dt_of(LONG_END - timedelta(hours=h + 1))
        if h != 3:
            _put(wh, f"service=odd/dt={dt}/c-{h}.parquet", b"o" * h)
        _put(wh, f"service=odd/dt={dt}/.inflight.parquet")
        _put(wh, f"service=odd/dt={dt}/_tmp.parquet")
        _put(wh, f"service=odd/dt={dt}/x.json")
        _put(wh, f"service=odd/dt={dt}/sub/deep.parquet")
    _put(wh, "service=odd/not-a-partition/f.parquet")
    _put(wh, "service=odd/dt=/f.parquet")
    _put(wh, "service=odd/stray.parquet")


def _sequential(
    wh: Warehouse, services: list[str] | None, trange: TimeRange | None
) -> list[Partition]:
    """The plain plan, one listing after the other: every service folder, every ``dt`` folder
    of it in range, that folder's files."""
    out = []
    for svc in list_services(wh, "envoy_access"):
        if services is not None and svc not in services:
            continue
        for dt in list_dts(wh, "envoy_access", svc):
            if trange is None or trange.contains_dt(dt):
                path = wh.path("envoy_access", f"service={svc}", f"dt={dt}")
                files = list_files(wh, path)
                if files:
                    out.append(Partition("envoy_access", svc, dt, files))
    return out


class _Recording:
    """The warehouse filesystem, recording each listing: (base folder, recursive, thread)."""

    def __init__(self, fs: Any, fail: dict[str, tuple[float, str]] | None = None) -> None:
        self.fs = fs
        self.calls: list[tuple[str, bool, str]] = []
        self.fail = fail or {}

    def get_file_info(self, what: Any) -> Any:
        base = getattr(what, "base_dir", None)
        if base is not None:
            self.calls.append((base, what.recursive, threading.current_thread().name))
            for part, (delay, message) in self.fail.items():
                if f"/{part}" in base + "/":
                    time.sleep(delay)
                    raise OSError(message)
        return self.fs.get_file_info(what)


def _recorded(wh: Warehouse, fail: dict[str, tuple[float, str]] | None = None) -> Warehouse:
    return Warehouse(uri=wh.uri, fs=_Recording(wh.fs, fail), base=wh.base)  # type: ignore[arg-type]


RANGES = [
    None,  # every hour
    ("2026-11-28T00:30:00Z", "2026-11-28T02:10:00Z"),  # 3 hours: each looked up by name
    ("2026-11-27T20:00:00Z", "2026-11-28T03:00:00Z"),  # 7 hours: all of short, 7/30 of long
    ("2026-11-27T06:00:00Z", "2026-11-28T03:00:00Z"),  # 21 hours: 21/30 of long
    ("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"),  # before everything
]


def _check_same_plans(wh: Warehouse) -> list[tuple[str, bool, str]]:
    """Every range, all services and two of them: the plan equals the sequential one (files,
    sizes and order); returns the listings made."""
    calls = []
    for bounds in RANGES:
        r = TimeRange.parse(*bounds) if bounds else None
        for services in (None, ["odd", "long"]):
            want = _sequential(wh, services, r)
            recorded = _recorded(wh)
            assert plan(recorded, "envoy_access", services, r) == want, (bounds, services)
            calls += recorded.fs.calls  # type: ignore[attr-defined]
    every = _sequential(wh, None, None)
    assert [p.relative.split("/", 1)[1] for p in every if p.service != "long"] == [
        *(f"service=odd/dt={dt_of(LONG_END - timedelta(hours=h))}" for h in (8, 7, 6, 5, 3, 2, 1)),
        *(f"service=short/dt={dt_of(LONG_END - timedelta(hours=h))}" for h in (5, 4, 3, 2, 1)),
    ]
    long_hour = next(p for p in every if p.service == "long")
    assert [f.path.rsplit("/", 1)[1] for f in long_hour.files] == ["c-a.parquet", "c-b.parquet"]
    assert [f.size for f in long_hour.files] == [1, 2]
    return calls


def test_local_plans_equal_the_sequential_listing(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    calls = _check_same_plans(wh)
    assert not any(recursive for _, recursive, _ in calls)  # symlinks: never walked locally
    assert {thread for _, _, thread in calls} == {threading.current_thread().name}


@pytest.mark.s3
@pytest.mark.integration
def test_s3_plans_equal_the_sequential_listing(s3_warehouse: str) -> None:
    """On S3 the listings run concurrently, and a service whose history the range mostly
    covers is listed in one recursive listing: same partitions, files, sizes and order."""
    import pyarrow as pa

    wh = open_warehouse(s3_warehouse)
    _layout(wh)
    io_threads = pa.io_thread_count()
    calls = _check_same_plans(wh)
    assert pa.io_thread_count() == io_threads  # raised while listing only
    walked = {base.rsplit("/", 1)[1] for base, recursive, _ in calls if recursive}
    assert walked == {"service=long", "service=short", "service=odd"}
    hours_listed = {base.rsplit("/", 2)[1] for base, recursive, _ in calls if "/dt=" in base}
    assert "service=long" in hours_listed  # 7 of its 30 hours: listed one by one
    assert len({thread for _, _, thread in calls if thread.startswith("logq-listing")}) > 1


def _failures(wh: Warehouse, bounds: tuple[str, str] | None) -> None:
    """A listing failing in the middle of the plan raises that listing's own error, and the
    first one in (service, dt) order when several fail, whichever fails first in time."""
    r = TimeRange.parse(*bounds) if bounds else None
    denied = "AWS Error ACCESS_DENIED during ListObjectsV2 operation: Access Denied"
    fail = {"service=odd": (0.3, f"{denied} (odd)"), "service=short": (0.0, f"{denied} (short)")}
    for failing in (fail, {"service=short": fail["service=short"]}):
        with pytest.raises(OSError) as sequential:
            _sequential(_recorded(wh, failing), None, r)
        with pytest.raises(OSError) as concurrent:
            plan(_recorded(wh, failing), "envoy_access", None, r)
        assert str(concurrent.value) == str(sequential.value) == failing[min(failing)][1]
        assert type(concurrent.value) is type(sequential.value)


@pytest.mark.parametrize("bounds", [RANGES[1], RANGES[2], None])
def test_local_listing_errors_are_raised_as_one_after_the_other(
    tmp_path: Path, bounds: tuple[str, str] | None
) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    _failures(wh, bounds)


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize("bounds", [RANGES[1], RANGES[2], None])
def test_s3_listing_errors_are_raised_as_one_after_the_other(
    s3_warehouse: str, bounds: tuple[str, str] | None
) -> None:
    wh = open_warehouse(s3_warehouse)
    _layout(wh)
    _failures(wh, bounds)


def test_a_real_listing_error_is_the_same_error(tmp_path: Path) -> None:
    """A folder pyarrow cannot list (a symbolic link to itself, listed by name for a short
    range) fails the plan with pyarrow's own error, as before."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    r = TimeRange.parse(*RANGES[1])
    Path(wh.path("envoy_access", f"service=short/dt={r.dt_from}")).rename(tmp_path / "away")
    Path(wh.path("envoy_access", f"service=short/dt={r.dt_from}")).symlink_to(f"dt={r.dt_from}")
    with pytest.raises(OSError, match="Too many levels of symbolic links") as sequential:
        list_files(wh, wh.path("envoy_access", f"service=short/dt={r.dt_from}"))
    with pytest.raises(OSError) as planned:
        plan(wh, "envoy_access", None, r)
    assert str(planned.value) == str(sequential.value)


def test_hours_with_data_are_the_hours_the_readers_read(tmp_path: Path) -> None:
    """``logq services`` counts the hours whose files a query reads: not an hour holding only
    an in-flight ``.tmp`` write or files the reader rule skips (``odd``'s fourth hour), nor a
    ``dt=`` that is no hour; a compaction output counts. Its folders are listed one by one,
    not walked: a walk follows symbolic links (a link to the service folder in two hours made
    ``logq services`` list for ever)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    inflight = dt_of(LONG_END + timedelta(hours=1))
    _put(wh, f"service=short/dt={inflight}/.c-x.parquet.0123abcd.tmp")
    _put(wh, "service=short/dt=garbage/c.parquet")
    _put(wh, "service=short/dt=2026-1-1-1/c.parquet")
    loop = Path(wh.path("envoy_access", f"service=long/dt={dt_of(LONG_END - timedelta(hours=1))}"))
    (loop / "up").symlink_to("..")
    odd = Path(wh.path("envoy_access", "service=odd"))
    (odd / f"dt={dt_of(LONG_END + timedelta(hours=1))}").symlink_to(loop)  # a linked hour
    (odd / f"dt={dt_of(LONG_END + timedelta(hours=2))}").symlink_to("nowhere")
    (odd / f"dt={dt_of(LONG_END + timedelta(hours=3))}").symlink_to(f"dt={dt_of(LONG_END)}")
    gone = odd / f"dt={dt_of(LONG_END + timedelta(hours=4))}"
    gone.mkdir()
    (gone / "c.parquet").symlink_to("nowhere.parquet")  # no file to read
    (gone / "d.parquet").mkdir()  # a folder, not a file
    for svc in ("long", "short", "odd"):
        read = [p.dt for p in plan(wh, "envoy_access", [svc], None) if is_dt(p.dt)]
        recorded = _recorded(wh)
        assert hours_with_data(recorded, "envoy_access", svc) == read, svc
        assert not any(recursive for _, recursive, _ in recorded.fs.calls)  # type: ignore[attr-defined]
        assert hours_with_data(wh, "envoy_access", svc) == read, svc  # os.scandir's answer
    assert len(read) == 8  # odd: 7 hours and the linked one
    assert len(hours_with_data(wh, "envoy_access", "odd")) == 8
    assert hours_with_data(wh, "envoy_access", "short") == [
        dt_of(LONG_END - timedelta(hours=h)) for h in (5, 4, 3, 2, 1)
    ]
    between = (dt_of(LONG_END - timedelta(hours=3)), dt_of(LONG_END - timedelta(hours=2)))
    assert hours_with_data(wh, "envoy_access", "short", between) == list(between)
    assert hours_with_data(wh, "container_logs", "short") == []


def test_hours_with_data_fails_on_a_link_it_cannot_follow_as_the_readers_do(
    tmp_path: Path,
) -> None:
    """A link that leads nowhere is no hour, but one that cannot be followed for another
    reason (permission denied on a folder closed to this user; here, a target name too long,
    which root cannot bypass) is an error, as pyarrow's listing and the readers say: the
    os.scandir listing took it as no folder or file, and ``logq services`` counted one hour
    less without a word. And a table folder that is a file holds no hours, as before."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    too_long = f"/{'a' * 300}"
    short = Path(wh.path("envoy_access", "service=short"))
    (short / f"dt={dt_of(LONG_END)}").symlink_to(too_long)
    hour = Path(wh.path("envoy_access", "service=long", f"dt={dt_of(LONG_END)}"))
    hour.mkdir()
    (hour / "c.parquet").symlink_to(too_long)
    for svc in ("short", "long"):
        with pytest.raises(OSError, match="too long") as read:
            plan(wh, "envoy_access", [svc], None)
        with pytest.raises(OSError, match="too long") as listed:
            hours_with_data(_recorded(wh), "envoy_access", svc)
        with pytest.raises(OSError, match="too long") as scanned:
            hours_with_data(wh, "envoy_access", svc)
        assert scanned.value.errno == listed.value.errno == read.value.errno, svc
    # Out of the range asked, the link is not looked at (its name is enough to leave it out).
    before = (dt_of(LONG_END - timedelta(hours=2)), dt_of(LONG_END - timedelta(hours=1)))
    assert hours_with_data(wh, "envoy_access", "short", before) == list(before)
    Path(wh.path("container_logs")).write_bytes(b"not a folder")
    assert hours_with_data(_recorded(wh), "container_logs", "short") == []
    assert hours_with_data(wh, "container_logs", "short") == []


#: ``dt`` folder names no writer writes: ``strptime`` takes some, a range selects none.
NOT_HOURS = [
    "garbage",
    "2026-1-1-1",
    "2026-02-29-00",
    "2026-11-28-24",
    "0000-01-01-00",
    "2026-11-28",
    "2026-11-28-05-00",
    " 2026-11-28-05",
    "\uff12\uff10\uff12\uff16-11-28-05",  # full-width digits: int() reads them
    "",
]


def test_is_dt_takes_every_hour_the_writer_names_and_nothing_else() -> None:
    for when in (utc(1, 1, 1, 0), utc(2024, 2, 29, 23), LONG_END, utc(9999, 12, 31, 23)):
        assert is_dt(dt_of(when)), when
    for value in NOT_HOURS:
        assert not is_dt(value), value


#: Folders a hand copy or another tool leaves, none named as the aggregator names them: a
#: ``service`` :func:`athena.schema.sanitize_service` would rewrite (DuckDB failed every query
#: on ``svc=x``, read ``%2F..`` as ``/..``; ``odd `` was a second ``odd``), a ``dt`` that is no
#: hour (read by long ranges and ``logq sql``, not by short ranges or ``logq services``).
STRAY_SERVICES = ["svc=x", "%2F..", "Odd", "odd ", "a'b", ""]
STRAY_HOURS = [
    "garbage",
    "2026-11-28-24",
    "2026-13-45-99",
    f"{dt_of(LONG_END - timedelta(hours=2))} ",
]


def _stray_folders(wh: Warehouse) -> None:
    """A data file in each folder of :data:`STRAY_SERVICES` (in an hour the ranges read) and
    of :data:`STRAY_HOURS` (in service ``odd``)."""
    hour = dt_of(LONG_END - timedelta(hours=1))
    for svc in STRAY_SERVICES:
        _put(wh, f"service={svc}/dt={hour}/c.parquet")
    for dt in STRAY_HOURS:
        _put(wh, f"service=odd/dt={dt}/c.parquet")


def _check_strays_left_out(wh: Warehouse, capsys: pytest.CaptureFixture[str]) -> None:
    """Every plan, listing and hour count is what it is without the stray folders, and each
    listing that met them said so once, naming them (notes are said once per command: the
    warehouse path in them is this test's own)."""
    _layout(wh)
    want = {
        (bounds, tuple(svcs or ())): plan(wh, "envoy_access", svcs, TimeRange.parse(*bounds))
        for bounds in RANGES[1:]
        for svcs in (None, ["odd"])
    }
    hours = hours_with_data(wh, "envoy_access", "odd")
    folders = list_dts(wh, "envoy_access", "odd")
    _stray_folders(wh)
    capsys.readouterr()
    for (bounds, svcs), parts in want.items():
        assert plan(wh, "envoy_access", list(svcs) or None, TimeRange.parse(*bounds)) == parts
    every = plan(wh, "envoy_access", None, None)
    assert {p.service for p in every} == {"long", "short", "odd"}
    assert all(is_dt(p.dt) for p in every)
    assert list_services(wh, "envoy_access") == ["long", "odd", "short"]
    assert list_dts(wh, "envoy_access", "odd") == folders
    assert hours_with_data(wh, "envoy_access", "odd") == hours
    lines = capsys.readouterr().err.splitlines()
    root = f"s3://{wh.path('envoy_access')}" if wh.is_s3 else wh.path("envoy_access")
    services, odd = (
        f"logq: note: skipped {len(STRAY_SERVICES)} folders in {root} (",
        f"logq: note: skipped {len(STRAY_HOURS) + 1} folders in {root}/service=odd (",  # + dt=
    )
    assert [ln for ln in lines if ln.startswith(services)] == [lines[0]], lines
    assert len([ln for ln in lines if ln.startswith(odd)]) == 1, lines
    assert len(lines) == 2, lines  # once each, however many listings met them
    assert all(ln.endswith("; move them out of the warehouse") for ln in lines), lines
    assert "('service=', 'service=%2F..', 'service=Odd' and 3 more)" in lines[0]


def test_folders_no_writer_names_are_left_out_everywhere_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _check_strays_left_out(open_warehouse(str(tmp_path / "wh"), create=True), capsys)


@pytest.mark.s3
@pytest.mark.integration
def test_s3_folders_no_writer_names_are_left_out_everywhere_with_a_note(
    s3_warehouse: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On S3 too, where a range covering most of a service's hours walks its folder."""
    _check_strays_left_out(open_warehouse(s3_warehouse), capsys)
