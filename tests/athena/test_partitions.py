"""Partition pruning and the reader rule, on a local warehouse and on real S3 (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from athena.engines.local import LocalEngine
from athena.partitions import is_data_file, plan
from athena.timerange import TimeRange
from athena.warehouse import open_warehouse
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
