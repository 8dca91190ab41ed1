"""What the CLI adds to an answer stays true to the data and cheap: a user's own
``total_rows`` column, the stale-data note over many services and its cost (listings, pandas),
the service column in json/csv, tabs in table cells, and hints that run as printed."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from athena.freshness import MAX_FOOTERS, footer_bound, newest_files
from athena.schema import compacted_object_name
from athena.timerange import TimeRange, iso_utc
from athena.warehouse import Warehouse as OpenWarehouse
from athena.warehouse import open_warehouse
from cli.explain import STALE_LISTED_SERVICES, note_freshness, note_stale
from cli.notes import forget_notes
from cli.options import Common, EngineName
from cli.output import OutputFormat
from cli.runner import Prepared, prepare
from tests.aggregator.test_compaction_requests import counted_warehouse
from tests.athena.factory import (
    access_frame,
    recent_in_one_hour,
    utc,
    write_frame,
    write_with_writer,
)
from tests.cli.conftest import Warehouse
from tests.cli.flights import Flights

RANGE = ["--since", "2026-11-27T22:00:00Z", "--until", "2026-11-28T02:00:00Z"]
TOTALS = (
    "SELECT service, count(*) AS total_rows FROM envoy_access GROUP BY service "
    "ORDER BY service LIMIT 2"
)


def test_sql_keeps_a_total_rows_column_the_user_named(logq, warehouse: Warehouse) -> None:
    """``total_rows`` is the canned queries' helper column; in ``logq sql`` it is the user's."""
    want = warehouse.access.groupby("service").size().sort_index().head(2)
    js = logq("sql", TOTALS, *RANGE, "-f", "json", "--warehouse", warehouse.uri)
    assert js.exit_code == 0, js.stderr
    assert js.json() == [{"service": s, "total_rows": int(n)} for s, n in want.items()]
    assert "showing" not in js.stderr
    rows = list(csv.reader(io.StringIO(
        logq("sql", TOTALS, *RANGE, "-f", "csv", "--warehouse", warehouse.uri).stdout
    )))  # fmt: skip
    assert rows[0] == ["service", "total_rows"] and len(rows) == 3
    table = logq("sql", TOTALS, *RANGE, "--warehouse", warehouse.uri)
    assert "total_rows" in table.stdout and "showing" not in table.stderr  # named as written
    assert f"{int(want.iloc[0]):,}" in table.stdout


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def aggregator_named(uri: str, ages: dict[str, tuple[int, int]], code: int = 200) -> None:
    """envoy_access with one file per service in the hour of its newest row, named as the
    aggregator names them: ``node-a-<seq>-0000.parquet``; ``ages``: service -> (seconds old,
    segment number of the flush that wrote it)."""
    now = _now()
    for service, (age, seq) in ages.items():
        newest = now - timedelta(seconds=age)
        frame = access_frame(1, newest, newest + timedelta(milliseconds=1), [service])
        frame["response_code"] = code
        for path in write_frame(uri, "envoy_access", frame):
            folder = path.rsplit("/", 1)[0]
            Path(path).rename(f"{folder}/node-a-{seq:016d}-0000.parquet")


def test_stale_note_without_service_reads_the_newest_flushes(logq, tmp_path: Path) -> None:
    """A busy service flushed 5 s ago and two quiet ones whose names sort after it, last
    flushed 5 minutes ago: the table is not stale. Before, the alphabetically last files were
    read and the note said "newest data ... 5m ago"."""
    uri = str(tmp_path / "wh")
    aggregator_named(uri, {"aaa-busy": (5, 31), "yyy-quiet": (300, 2), "zzz-quiet": (300, 1)})
    run = logq("errors", "--since", "1h", "--status", "2xx", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert "newest data" not in run.stderr
    # ... and when every service is quiet, the note is still given.
    old = str(tmp_path / "old")
    aggregator_named(old, {"aaa-busy": (400, 31), "yyy-quiet": (300, 2), "zzz-quiet": (500, 1)})
    stale = logq("errors", "--since", "1h", "--status", "2xx", "--warehouse", old)
    assert "newest data in envoy_access:" in stale.stderr
    assert re.search(r"\(5m(?: \d+s)? ago\)", stale.stderr), stale.stderr  # a second or so past


def test_newest_files_prefers_each_nodes_latest_segments() -> None:
    names = [f"t/service={s}/dt=h/{n}-{q:016d}-0000.parquet"
             for s, n, q in [("a", "n1", 40), ("z", "n1", 3), ("y", "n1", 2), ("b", "n2", 7),
                             ("c", "n2", 9), ("m", "n1", 39)]]  # fmt: skip
    picked = newest_files([*names, "t/service=q/dt=h/c-1.parquet"])
    assert picked[:2] == [names[0], names[4]]  # each node's newest flush first
    assert set(picked) == {names[0], names[4], names[5], names[3], "t/service=q/dt=h/c-1.parquet"}
    many = [f"t/service=s{i:03d}/dt=h/n1-{i:016d}-0000.parquet" for i in range(100)]
    assert newest_files(many) == many[99:97:-1]  # the two newest segments only
    nodes = [f"t/service=s/dt=h/n{i:02d}-{1:016d}-0000.parquet" for i in range(20)]
    outputs = [f"t/service=s/dt=h/{compacted_object_name(f'{i:020x}')}" for i in range(20)]
    picked = newest_files([*outputs, *nodes])  # flushed files capped, no compaction output
    assert len(set(picked) & set(nodes)) == MAX_FOOTERS and set(outputs) <= set(picked)


def test_stale_note_reads_every_compaction_output_of_the_newest_hour(
    logq: Any, tmp_path: Path
) -> None:
    """A compacted hour of a busy service holds more outputs (``c-<random id>``: no order in
    their names) than MAX_FOOTERS. The note read 16 of them with the flushed files, and named
    the newest row of those: older than the truth when the newest rows were in another one.
    It reads each output's footer, as `logq services` does."""
    uri = str(tmp_path / "wh")
    hour = (_now() - timedelta(minutes=40)).replace(minute=0, second=0)
    step = timedelta(seconds=90)  # 20 slices: the hour's first 30 minutes, 10+ minutes old
    slices = [
        access_frame(5, hour + k * step, hour + (k + 1) * step, ["svc"], k) for k in range(20)
    ]
    for k, frame in enumerate(slices):  # the newest rows in c-000...0, the name sorting first
        write_with_writer(uri, "envoy_access", frame, name=compacted_object_name(f"{19 - k:020x}"))
    write_with_writer(uri, "envoy_access", slices[3], seq=7)  # a late flush of older rows
    newest = iso_utc(slices[-1]["timestamp"].max().to_pydatetime())
    for since in ("2h", "1m"):  # the hour planned; only later ones (none with files) planned
        run = logq("errors", "--since", since, "--service", "svc", "--warehouse", uri)
        assert run.exit_code == 0, run.stderr
        assert f"logq: note: newest data for svc: {newest} (" in run.stderr, run.stderr


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("stats", [True, False])
def test_footer_bound_reads_each_time_unit(tmp_path: Path, unit: str, stats: bool) -> None:
    """Raw int64 statistics converted with the column's unit (and the column read when a file
    has no statistics) give the same aware datetimes as the values written."""
    values = [datetime(2026, 11, 29, 13, 59, 58, 123000, tzinfo=UTC),
              datetime(2026, 11, 29, 14, 0, 1, 456000, tzinfo=UTC)]  # fmt: skip
    path = str(tmp_path / f"{unit}.parquet")
    table = pa.table({"timestamp": pa.array(values, pa.timestamp(unit, tz="UTC"))})
    pq.write_table(table, path, write_statistics=stats)
    wh = open_warehouse(str(tmp_path))
    assert footer_bound(wh, path) == values[1]
    assert footer_bound(wh, path, low=True) == values[0]
    assert footer_bound(wh, path).tzinfo is not None  # type: ignore[union-attr]


def test_stale_note_loads_neither_pandas_nor_numpy(tmp_path: Path) -> None:
    """The note runs with every query; pandas' import alone (~250 ms) cost more than it, and
    the console entry keeps numpy out of ``logq`` (athena/unused_imports.py)."""
    uri = str(tmp_path / "wh")
    aggregator_named(uri, {"checkout": (400, 3)}, code=503)  # an answer: no empty-answer path
    code = (
        "import sys\n"
        "from cli.launch import main\n"
        f"sys.argv = ['logq', 'errors', '-s', 'checkout', '--since', '1h', '-f', 'json', "
        f"'--warehouse', {uri!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('pandas', 'numpy') if m in sys.modules], file=sys.stderr)\n"
    )
    env = {**os.environ, "LOGQ_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=False)  # fmt: skip
    assert '"response_code": 503' in run.stdout and "newest data for checkout:" in run.stderr
    assert "LOADED []" in run.stderr, run.stderr


def test_json_and_csv_columns_do_not_depend_on_the_services_given(
    logq, warehouse: Warehouse
) -> None:
    """Scripts read json/csv columns by name: ``service`` is there with one, several or
    partly unknown ``--service`` values; only table and markdown drop the repeated name."""
    wide = [*RANGE, "--limit", "1000", "--warehouse", warehouse.uri]
    keys = set()
    for services in ("recipe", "recipe,nosuch", "recipe,billing"):
        rows = logq("errors", "-s", services, "-f", "json", *wide).json()
        assert rows and all("service" in r for r in rows), services
        keys.add(tuple(rows[0]))
        header = logq("errors", "-s", services, "-f", "csv", *wide).stdout.splitlines()[0]
        assert header.split(",")[0] == "service", services
    assert len(keys) == 1  # the same columns every time
    table = logq("errors", "-s", "recipe,nosuch", *wide).stdout
    assert "service" not in _header(table) and "│ recipe " not in table
    markdown = logq("errors", "-s", "recipe", "-f", "markdown", *wide).stdout
    assert "service" not in _header(markdown)
    both = logq("errors", "-s", "recipe,billing", *wide).stdout
    assert "service" in _header(both) and "│ billing " in both


def _header(text: str) -> str:
    """The header line of a table or markdown output (the one naming the path column)."""
    return next(line for line in text.splitlines() if " path " in line)


def test_tabs_in_table_cells_are_not_cut(logq, warehouse: Warehouse) -> None:
    """A Java stack trace's tab-indented frames: Rich measures a tab as no width and prints
    eight columns, so the cell was cut with "…"; tabs are expanded before measuring."""
    frame = "at com.example.Foo.bar(Foo.java:42)"
    statement = (
        f"SELECT 'boom' || chr(10) || chr(9) || '{frame}' || chr(9) || 'end' AS message, "
        "1 AS n FROM envoy_access LIMIT 1"
    )
    run = logq("sql", statement, *RANGE, "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert frame in run.stdout and "end" in run.stdout and "…" not in run.stdout, run.stdout
    assert "\t" not in run.stdout and "boom\\n" in run.stdout


def _common(engine: EngineName, warehouse: str, services: list[str] | None) -> Common:
    return Common(
        service=services, since="1h", until=None, path=None, method=None, limit=None,
        fmt=OutputFormat.json, engine=engine, warehouse=warehouse, dry_run=False,
        athena_database="logq", athena_workgroup=None, athena_output=None, athena_region=None,
        max_scan_bytes=None,
    )  # fmt: skip


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the listing functions called from now on (each one listing, on S3 a LIST
    request), counted around the real functions."""
    import athena.partitions as partitions

    calls: list[str] = []
    for name in ("list_services", "list_dts", "list_files"):
        real = getattr(partitions, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(partitions, name, counted)
    return calls


@pytest.mark.integration
@pytest.mark.s3
def test_stale_note_listings_are_bounded_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --service, nothing planned (Athena plans nothing) and an s3:// warehouse, the
    note would list every service, its hours and their files: 1 + 3N S3 round trips per query
    (1,501 for 500 services). It is skipped then; a --service list costs 3 per name, 10 names
    at most. The listings are counted around the real functions, over real SeaweedFS."""
    now = _now()
    services = [f"svc-{i:02d}" for i in range(12)]
    frame = access_frame(24, now - timedelta(minutes=7), now - timedelta(minutes=5), services)
    write_frame(s3_warehouse, "envoy_access", frame)
    calls = _count_listings(monkeypatch)

    def stale_note(engine: EngineName, chosen: list[str] | None) -> tuple[int, str]:
        common = _common(engine, s3_warehouse, chosen)
        prep = prepare(common, "errors", "envoy_access")  # nothing planned: scopes empty
        calls.clear()
        capsys.readouterr()
        note_stale(common, prep)
        return len(calls), capsys.readouterr().err

    assert stale_note(EngineName.athena, None) == (0, "")
    assert stale_note(EngineName.local, None) == (0, "")
    count, err = stale_note(EngineName.athena, ["svc-03"])
    assert count <= 3 and "newest data for svc-03:" in err
    count, err = stale_note(EngineName.athena, services)
    assert count <= 3 * STALE_LISTED_SERVICES and err.count("newest data for svc-") == 10


def test_tail_hint_names_the_engine_options_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suggested ``logq tail`` must run where ``trace`` ran: the engine options given on
    the command line are repeated, those its environment sets already are not."""
    from cli.commands.access import _tail_hint

    for name in ("LOGQ_ENGINE", "LOGQ_WAREHOUSE", "LOGQ_ATHENA_WORKGROUP"):
        monkeypatch.delenv(name, raising=False)
    common = _common(EngineName.athena, "s3://b/wh", None)
    common.athena_workgroup = "on call"
    hint = _tail_hint(common, "req-1")
    assert hint.endswith("--since 1h --engine athena --warehouse s3://b/wh "
                         "--athena-workgroup 'on call'`")  # fmt: skip
    monkeypatch.setenv("LOGQ_WAREHOUSE", "s3://b/wh")
    monkeypatch.setenv("LOGQ_ENGINE", "ATHENA")
    assert _tail_hint(common, "req-1").endswith("--since 1h --athena-workgroup 'on call'`")
    local = _tail_hint(_common(EngineName.local, "s3://b/wh", None), "req-1")
    assert local.endswith("--since 1h --engine local`")  # the environment names the rest


ERRORS_5XX = {"status_min": 500, "status_max": 599, "raw_paths": False}


@pytest.mark.integration
@pytest.mark.s3
def test_empty_answers_over_every_service_do_not_list_them_all_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty answer says where the data is: over every service of an s3:// warehouse that
    was 1 + 3N listings one after another (minutes for hundreds of services). It now reads
    the footers of the partitions the query planned, or points to `logq services`. Counted
    around the real listing functions, over real SeaweedFS."""
    from cli.explain import explain_empty
    from cli.runner import execute

    now = _now()
    services = [f"svc-{i:02d}" for i in range(12)]
    frame = access_frame(24, now - timedelta(minutes=7), now - timedelta(minutes=5), services)
    write_frame(s3_warehouse, "envoy_access", frame)
    calls = _count_listings(monkeypatch)

    def explained(since: str, until: str | None, path: str | None) -> tuple[int, str]:
        common = _common(EngineName.local, s3_warehouse, None)
        common.since, common.until, common.path = since, until, path
        prep = prepare(common, "errors", "envoy_access", ERRORS_5XX)
        result = execute(common, prep)
        assert result is not None and not result.rows
        calls.clear()
        text = explain_empty(common, prep)
        return len(calls), text

    # Partitions in range, no request matches --path: the newest row of what was read. (The
    # one listing left is of the table's service folders: is there any data at all.)
    count, text = explained("1h", None, "/no-such-path")
    assert count <= 1 and "no requests" in text and "newest in those partitions: " in text
    # No partition in range (a window of last week): a pointer instead of listing them all.
    count, text = explained("8d", "7d", None)
    assert count <= 1 and "`logq services --since 1d`" in text
    # One service: where its data is, as before (a few listings).
    common = _common(EngineName.local, s3_warehouse, ["svc-03"])
    common.since, common.until = "8d", "7d"
    prep = prepare(common, "errors", "envoy_access", ERRORS_5XX)
    execute(common, prep)
    calls.clear()
    assert "the data for svc-03 starts at " in explain_empty(common, prep) and 0 < len(calls) <= 10


#: Flushes in the current hour of the stale-note cost tests (a 60 s flush, one node).
FLUSHES = 40
#: "Now" of those tests: three minutes after the newest row, so the service is stale.
NOTE_NOW = utc(2026, 3, 1, 10, 40)


def _busy_hour(uri: str) -> None:
    """Service ``quiet``: one file per flush from 10:00 to 10:37, by the aggregator's writer."""
    start = utc(2026, 3, 1, 10)
    step = timedelta(seconds=37 * 60 / FLUSHES)
    for i in range(FLUSHES):
        frame = access_frame(5, start + step * i, start + step * (i + 1), ["quiet"], seed=i)
        write_with_writer(uri, "envoy_access", frame, seq=10 + i)


def _note_at_ten_forty(
    uri: str,
    capsys: pytest.CaptureFixture[str],
    wh: OpenWarehouse | None = None,
    newest: datetime = utc(2026, 3, 1, 10, 37),
) -> str:
    """The freshness note for ``quiet`` at :data:`NOTE_NOW`, its newest row ``newest`` and
    nothing seen ahead in the footers read for it (through ``wh``, None: the warehouse at
    ``uri`` opened as the CLI does); returns stderr."""
    prep = Prepared(
        name="errors", table="envoy_access", sql="", params={},
        trange=TimeRange(NOTE_NOW - timedelta(hours=1), NOTE_NOW), services=["quiet"],
    )  # fmt: skip
    common = _common(EngineName.local, uri, ["quiet"])
    forget_notes()
    capsys.readouterr()
    wh = wh or open_warehouse(uri)
    note_freshness(common, prep, wh, "quiet", newest, None)
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("newest", "words"),
    [
        (datetime(2026, 3, 1, 10, 37, 18, tzinfo=UTC), "2m 42s ago"),
        (utc(2026, 3, 1, 7, 35), "3h 5m ago"),
        (utc(2026, 2, 27, 6), "2d 4h ago"),
    ],
)
def test_the_stale_note_says_an_age_as_services_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], newest: datetime, words: str
) -> None:
    """The same age in the same words in the stale note and in the newest column of `logq
    services` (:func:`~cli.output.since_text`): the note said "2m" where services said
    "2m 42s", and "3h05m" for "3h 5m"."""
    from cli.output import since_text

    uri = str(tmp_path / "wh")
    frame = access_frame(3, utc(2026, 2, 27, 5), utc(2026, 2, 27, 5, 1), ["quiet"], seed=1)
    write_with_writer(uri, "envoy_access", frame, seq=1)
    assert since_text(newest, NOTE_NOW) == words
    err = _note_at_ten_forty(uri, capsys, newest=newest)
    assert f"newest data for quiet: {iso_utc(newest)} ({words}): rows after it" in err, err


def test_a_stale_note_reads_no_footer_of_every_file_of_the_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale service (newest row 3 minutes old: routine with a 60-300 s flush) with nothing
    seen ahead of now: looking for rows of a clock hours ahead is one listing of its hours,
    not a footer per file of its current hour (40 reads at 4f7d928, R2s18 #1). A file in a
    later hour is found so, and only then are footers read."""
    uri = str(tmp_path / "wh")
    _busy_hour(uri)
    footers = Flights(pq.read_metadata)
    monkeypatch.setattr(pq, "read_metadata", footers)
    reads = footers.firsts
    err = _note_at_ten_forty(uri, capsys)
    assert reads == [], f"{len(reads)} footers read for a stale note with nothing ahead"
    assert "newest data for quiet: 2026-03-01T10:37:00.000Z (3m ago)" in err, err
    ahead = access_frame(3, utc(2026, 3, 1, 12, 5), utc(2026, 3, 1, 12, 6), ["quiet"], seed=99)
    write_with_writer(uri, "envoy_access", ahead, seq=90)  # a clock 2 h ahead, a later hour
    err = _note_at_ten_forty(uri, capsys)
    assert "3 rows for quiet are stamped after now, up to 2026-03-01T12:" in err, err
    assert "newest data" not in err  # writing, with a clock ahead: no stall


@pytest.mark.integration
@pytest.mark.s3
def test_a_stale_note_on_s3_costs_a_listing_not_a_request_per_file(
    seaweedfs: Any,
    s3_warehouse: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on SeaweedFS (real S3), counted by the server: one stale note with nothing
    ahead of now, for a service with 40 flushes in its current hour, cost 82 requests at
    4f7d928 (a footer each, two requests per footer); now the listing of its hours. (A
    counted warehouse: a slow answer under load is not sent, and counted, again.)"""
    bucket = s3_warehouse.split("/")[2]
    _busy_hour(s3_warehouse)
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = sum(seaweedfs.requests(bucket).values())
    err = _note_at_ten_forty(s3_warehouse, capsys, wh)
    used = sum(seaweedfs.requests(bucket).values()) - before
    assert used <= 2, f"{used} S3 requests for one stale note with nothing ahead"
    assert "newest data for quiet" in err, err


def _flushes_with_a_clock_ahead(uri: str) -> None:
    """Service ``skew``: 12 flushes of the last 20 minutes, then the newest one of a source
    whose clock runs 5 minutes ahead (2 rows)."""
    now = _now()
    for i in range(12):
        at = now - timedelta(minutes=20 - i)
        frame = access_frame(4, at, at + timedelta(seconds=30), ["skew"], seed=i)
        write_with_writer(uri, "envoy_access", frame, seq=10 + i)
    at = now + timedelta(minutes=5)
    write_with_writer(uri, "envoy_access", access_frame(2, at, at + timedelta(seconds=1),
                                                        ["skew"], seed=50), seq=30)  # fmt: skip


def test_counting_rows_ahead_reads_each_footer_once(
    logq: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows seen ahead of now are counted over the hour's files; the footers read to find
    the newest row are not read again for that."""
    uri = str(tmp_path / "wh")
    _flushes_with_a_clock_ahead(uri)
    footers = Flights(pq.read_metadata)
    monkeypatch.setattr(pq, "read_metadata", footers)
    reads = footers.firsts
    run = logq("latency", "-s", "skew", "--since", "1h", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert "2 rows for skew are stamped after now" in run.stderr, run.stderr
    twice = {p for p in reads if reads.count(p) > 1}
    assert not twice, f"{len(twice)} footers read more than once: {sorted(twice)[:3]}"


def test_rows_seen_ahead_skip_the_lookup_of_the_newest_row_before_now(
    logq: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the footers show rows ahead of now, the note names them whatever the newest row
    at or before now, so that is not looked up: the note's newest-row lookup runs once (it
    ran again, capped at now), and the ``timestamp`` column of the file ahead is read once,
    to count its rows (that second lookup read it too)."""
    import athena.freshness as freshness

    uri = str(tmp_path / "wh")
    _flushes_with_a_clock_ahead(uri)
    lookups: list[Any] = []
    columns: list[str] = []
    real_newest, real_times = freshness.newest_in, freshness._read_times

    def newest(wh: Any, parts: Any, before: Any = None, tops: Any = None) -> Any:
        lookups.append(before)
        return real_newest(wh, parts, before, tops)

    def times(wh: Any, path: str) -> Any:
        columns.append(path)
        return real_times(wh, path)

    monkeypatch.setattr(freshness, "newest_in", newest)
    monkeypatch.setattr(freshness, "_read_times", times)
    run = logq("latency", "-s", "skew", "--since", "1h", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert "2 rows for skew are stamped after now, up to " in run.stderr, run.stderr
    assert lookups == [None], f"the newest row looked up {len(lookups)} times: {lookups}"
    assert len(columns) == 1 and columns[0].endswith("0030-0000.parquet"), columns


def _many_services_on_s3(uri: str, now: datetime, skewed: bool = True) -> tuple[datetime, ...]:
    """40 services, one compaction output each (every footer is read: no order in their names),
    rows up to 5 minutes before ``svc-17``'s newest rows at or before ``now`` (3 minutes
    before it or earlier: all of them in one partition-hour, :func:`recent_in_one_hour`,
    whose files the stale note reads at once; across an hour it read svc-17's file alone) and,
    ``skewed``, rows of a clock 20 minutes ahead, in the same file when the hour allows.
    Returns the newest time at or before ``now`` and the newest of all."""
    services = [f"svc-{i:02d}" for i in range(40)]
    lo, at = recent_in_one_hour(now)
    ahead_at = now + timedelta(minutes=20)
    old = access_frame(80, lo, lo + (at - lo) / 2, services)
    write_with_writer(uri, "envoy_access", old, name=compacted_object_name(f"{1:020x}"))
    skew = access_frame(3, at, at + timedelta(seconds=1), ["svc-17"], seed=5)
    if skewed:
        ahead = access_frame(2, ahead_at, ahead_at + timedelta(seconds=1), ["svc-17"], seed=6)
        skew = pd.concat([skew, ahead])
    write_with_writer(uri, "envoy_access", skew, name=compacted_object_name(f"{2:020x}"))
    ts = [t.to_pydatetime() for t in skew["timestamp"]]
    return max(t for t in ts if t <= now), max(ts)


@pytest.mark.integration
@pytest.mark.s3
def test_footers_over_every_service_on_s3_read_at_once_give_the_same_answer(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 the freshness notes read the newest files' footers a few at once
    (S3_FOOTER_THREADS), not one round trip after the other: the newest row at or before now,
    the newest ahead (its file's column read, the footer's largest time being ahead) and the
    count of rows ahead are those the one-at-a-time reading gives, over real SeaweedFS."""
    import athena.freshness as freshness
    from athena.freshness import newest_in, rows_after
    from athena.partitions import plan
    from cli.explain import newest_and_ahead

    now = _now()
    newest, ahead = _many_services_on_s3(s3_warehouse, now)
    wh = open_warehouse(s3_warehouse)
    parts = plan(wh, "envoy_access", None, None)
    assert len({p.service for p in parts}) == 40

    def answers() -> tuple[Any, ...]:
        tops: dict[str, Any] = {}
        found = newest_and_ahead(partial(newest_in, wh, parts, tops=tops))
        late = rows_after(wh, "envoy_access", None, now + timedelta(seconds=2), parts, None, tops)
        return (*found, late)

    at_once = answers()
    assert at_once[:2] == (newest, ahead)
    assert at_once[2] is not None and at_once[2].rows == 2 and at_once[2].newest == ahead
    monkeypatch.setattr(freshness, "S3_FOOTER_THREADS", 1)  # one at a time, as before
    assert answers() == at_once


@pytest.mark.integration
@pytest.mark.s3
def test_stale_note_over_every_service_on_s3_reads_footers_concurrently(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stale note of a query over every service of an s3:// warehouse (40 services, a
    footer each) names the same newest row whether the footers are read one at a time or at
    once; and they are read at once: footer reads overlap, never more than S3_FOOTER_THREADS
    of them. Overlap is shown, not timed: the first read waits (up to 10 s) for a second to
    start, which read one after the other it never does."""
    import athena.freshness as freshness
    from cli.runner import execute

    newest, _ = _many_services_on_s3(s3_warehouse, _now(), skewed=False)
    common = _common(EngineName.local, s3_warehouse, None)
    prep = prepare(common, "errors", "envoy_access", {"status_min": 200, "status_max": 599})
    execute(common, prep)  # plans every service's partitions, as the command does
    threads_at_once = freshness.S3_FOOTER_THREADS

    def note(threads: int) -> str:
        monkeypatch.setattr(freshness, "S3_FOOTER_THREADS", threads)
        forget_notes()
        capsys.readouterr()
        prep.stale_checked = False
        note_stale(common, prep)
        return capsys.readouterr().err

    one_at_a_time = note(1)
    assert f"logq: note: newest data in envoy_access: {iso_utc(newest)} (" in one_at_a_time

    reads = Flights(pq.read_metadata, first_waits=True)
    monkeypatch.setattr(pq, "read_metadata", reads)
    assert note(threads_at_once) == one_at_a_time
    assert reads.overlapped == [True], "no second footer was read while the first waited"
    assert reads.calls >= 40
    assert 2 <= reads.most <= threads_at_once, vars(reads)


@pytest.mark.integration
@pytest.mark.s3
def test_footers_read_at_once_on_s3_raise_the_error_one_at_a_time_raises(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files of another tool (times past year 9999: a ForeignFile naming the file) among
    40 services' footers: read at once, the error is the one reading them in turn raises, that
    of the first such file in reading order, also when the other fails first (its read is
    held back here until the other has failed)."""
    import threading

    import athena.freshness as freshness
    from athena.foreign import ForeignFile
    from athena.freshness import newest_files, newest_in
    from athena.partitions import plan
    from athena.timerange import dt_of

    newest, _ = _many_services_on_s3(s3_warehouse, _now(), skewed=False)
    wh = open_warehouse(s3_warehouse)
    newest_hour = dt_of(newest)  # svc-17's newest rows: the hour read
    for svc in ("svc-05", "svc-30"):
        folder = pafs.FileSelector(wh.path("envoy_access", f"service={svc}"), recursive=True)
        path = next(f.path for f in wh.fs.get_file_info(folder) if f.is_file)
        rows = pq.read_table(path, filesystem=wh.fs)
        far = pa.array([253402300800000 * 3] * len(rows), pa.int64()).cast(rows["timestamp"].type)
        changed = rows.set_column(rows.schema.get_field_index("timestamp"), "timestamp", far)
        there = wh.path("envoy_access", f"service={svc}", f"dt={newest_hour}", "0-foreign.parquet")
        pq.write_table(changed, there, filesystem=wh.fs)
    parts = plan(wh, "envoy_access", None, None)
    order = [p for p in newest_files(f.path for p in parts for f in p.files) if "foreign" in p]
    first, other = order  # the first in reading order, and the other
    other_failed = threading.Event()
    real = pq.read_metadata

    def held(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == first and freshness.S3_FOOTER_THREADS > 1:
            assert other_failed.wait(10), "the other foreign file was never read"
        try:
            return real(path, *args, **kwargs)
        finally:
            if path == other:
                threading.Timer(0.2, other_failed.set).start()  # once its time is refused

    monkeypatch.setattr(pq, "read_metadata", held)

    def error(threads: int) -> tuple[type, str]:
        monkeypatch.setattr(freshness, "S3_FOOTER_THREADS", threads)
        other_failed.clear()
        with pytest.raises(ForeignFile) as caught:
            newest_in(wh, parts, tops={})
        return type(caught.value), str(caught.value)

    at_once = freshness.S3_FOOTER_THREADS
    one_at_a_time = error(1)
    assert first in one_at_a_time[1], one_at_a_time
    assert error(at_once) == one_at_a_time


def test_rows_stamped_in_the_last_minute_of_9999_get_a_note_not_a_traceback(
    logq: Any, tmp_path: Path
) -> None:
    """A clock set to garbage: the ``--until`` the note offers, the next whole minute, is past
    the last time there is (an OverflowError from every query command). Its other rows are
    20 minutes old: a stale service, whose later hours are looked at."""
    uri = str(tmp_path / "wh")
    now = _now()
    write_with_writer(uri, "envoy_access", access_frame(3, now - timedelta(minutes=30),
                                                        now - timedelta(minutes=20), ["far"],
                                                        seed=3), seq=1)  # fmt: skip
    at = datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC)
    write_with_writer(uri, "envoy_access", access_frame(2, at, at + timedelta(seconds=10),
                                                        ["far"], seed=4), seq=2)  # fmt: skip
    run = logq("latency", "-s", "far", "--since", "1h", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert "2 rows for far are stamped after now, up to 9999-12-31T23:59:" in run.stderr
    assert "add --until 9999-12-31T23:59:59Z" in run.stderr, run.stderr
