"""``logq-aggregator compact`` says why it merged nothing: partitions with files to merge that
are not closed yet (and when they will be), hours before the lookback; the periodic pass, whose
normal state that is, stays quiet."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from aggregator import storage
from aggregator.batch import records_table, route
from aggregator.compaction import listing
from aggregator.compaction.command import compact_main
from aggregator.compaction.notes import PassNotes
from aggregator.compaction.passes import compact_warehouse
from aggregator.decode import records_batch, to_ipc
from aggregator.ledger import Ledger
from aggregator.storage import StorageError, put_table
from aggregator.writer import object_name, write_partitions
from athena.schema import DT_FORMAT, partition_path
from athena.warehouse import Warehouse, open_warehouse
from tests.aggregator.helpers import parquet_files, record
from tests.aggregator.test_compaction_requests import counted_warehouse, one_row, settled
from tests.support.seaweedfs import SeaweedFS

#: A closed hour (ended over 2 hours ago), well inside the default 48-hour lookback.
OLD_HOUR = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def flush_into(uri: str, hour: datetime, files: int, service: str = "svc1") -> None:
    """``files`` flushes of two rows each into ``hour`` (container_logs), as an aggregator
    writes them: one small file each."""
    wh = open_warehouse(uri, create=True)
    for seq in range(files):
        stamps = [int((hour + timedelta(seconds=seq * 60 + i)).timestamp() * 1e9) for i in (0, 1)]
        recs = [record(f"l{seq}-{i}", service=service) for i in (0, 1)]
        batch = records_batch("c.svc1", pa.array(stamps), recs)
        routed = route(records_table([to_ipc(batch)]))
        write_partitions(
            wh, "container_logs", routed.tables["container_logs"], object_name("n", seq)
        )


def age_files(uri: str, at: float) -> None:
    """Set every Parquet file's mtime to ``at`` (a whole second, so times print exactly)."""
    for path in Path(uri).rglob("*.parquet"):
        os.utime(path, (at, at))


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_compact_says_a_young_file_holds_a_closed_hour_back_and_until_when(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The auditor's case: a backfill into an hour that ended hours ago, then `compact --all`."""
    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=3)
    newest = float(int(time.time()) - 150)  # written 2.5 minutes ago
    age_files(uri, newest)

    assert compact_main(["--warehouse", uri, "--all"]) == 0
    err = capsys.readouterr().err
    assert "compacted 0 files" in err
    dt = OLD_HOUR.strftime("%Y-%m-%d-%H")
    assert "1 partition with files to merge is not closed yet" in err
    assert "the grace is 30 minutes" in err
    line = next(x for x in err.splitlines() if f"dt={dt}" in x)
    assert line.strip().startswith(f"container_logs/service=svc1/dt={dt}: ")
    assert "a file is younger than the grace (newest 2 min" in line
    assert f"eligible from {stamp(newest + 30 * 60)}" in line
    assert "to merge them now: --grace-minutes 2" in err
    assert "--force" not in err, "no aggregator here: no safe grace to go below"
    assert len(parquet_files(uri)) == 3, "nothing merged"

    # A live aggregator flushing every 10 s makes the safe grace 7.7 minutes: below it, the
    # hint says --force is needed too.
    Ledger(open_warehouse(uri), "node-a").heartbeat(time.time(), flush_interval=10.0)
    assert compact_main(["--warehouse", uri, "--all"]) == 0
    err = capsys.readouterr().err
    assert "--grace-minutes 2 --force (below the safe grace of 7.67 minutes" in err


def test_a_file_time_ahead_of_the_clock_never_suggests_a_negative_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Right after a flush, S3's LastModified can be a moment ahead of the local clock: the
    hint must say --grace-minutes 0 (the smallest there is), never -1."""
    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=2)
    age_files(uri, float(int(time.time()) + 30))  # the store's clock 30 s ahead of ours

    assert compact_main(["--warehouse", uri, "--all", "--force", "--grace-minutes", "0"]) == 0
    err = capsys.readouterr().err
    assert "compacted 0 files" in err
    assert "--grace-minutes -" not in err
    assert "to merge them now: --grace-minutes 0" in err
    assert "a file was written just now" in err
    assert len(parquet_files(uri)) == 2, "nothing merged"


def test_compact_keeps_quiet_about_the_running_hour_and_tells_a_backfill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hour still running has files to merge after every flush: saying so at every run
    would bury the news. A backfill into a closed hour is the news. (The command reads the wall
    clock: a run the hour turned during, whose "running" hour has ended, is run again.)"""
    for attempt in range(2):
        running = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        errs = _running_hour_then_backfill(str(tmp_path / f"wh{attempt}"), running, capsys)
        if datetime.now(UTC) < running + timedelta(hours=1):
            break
    first, second = errs
    assert [x for x in first.splitlines() if not x.startswith("compacted 0 files")] == []
    assert "1 partition with files to merge is not closed yet" in second
    assert "1 held back by a file younger than it, 0 by their hour" in second
    names = [x.split("/")[1] for x in second.splitlines() if x.startswith("  container_logs/")]
    assert names == ["service=backfill"]
    assert f"dt={running:%Y-%m-%d-%H}" not in second and "service=lone" not in second


def _running_hour_then_backfill(
    uri: str, running: datetime, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    """compact's stderr with files to merge in the running hour only, then with a backfill."""
    flush_into(uri, running, files=2)
    flush_into(uri, OLD_HOUR, files=1, service="lone")  # one file: nothing to merge, no word
    assert compact_main(["--warehouse", uri]) == 0
    first = capsys.readouterr().err
    flush_into(uri, OLD_HOUR, files=2, service="backfill")
    assert compact_main(["--warehouse", uri]) == 0
    assert len(parquet_files(uri)) == 5
    return first, capsys.readouterr().err


def test_compact_counts_the_hours_before_its_lookback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=2)
    flush_into(uri, OLD_HOUR - timedelta(hours=1), files=2)
    age_files(uri, time.time() - 3 * 3600)

    assert compact_main(["--warehouse", uri, "--lookback-hours", "1"]) == 0
    err = capsys.readouterr().err
    assert "compacted 0 files" in err
    assert "2 hour partitions that ended before" in err
    assert "--all (or a longer --lookback-hours) covers them" in err
    assert compact_main(["--warehouse", uri, "--all"]) == 0
    assert "compacted 4 files" in capsys.readouterr().err


def test_compact_says_nothing_more_when_nothing_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=3)
    age_files(uri, time.time() - 3 * 3600)
    assert compact_main(["--warehouse", uri, "--all"]) == 0
    assert "compacted 3 files" in capsys.readouterr().err

    # The merged file is young, but alone: nothing to merge, nothing to say.
    assert compact_main(["--warehouse", uri, "--all"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("compacted 0 files in ")
    assert compact_main(["--warehouse", uri]) == 0
    err = capsys.readouterr().err
    assert err.startswith("compacted 0 files in ") and len(err.splitlines()) == 1, err


def test_compact_says_when_service_names_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=2)
    assert compact_main(["--warehouse", uri, "--all", "--service", "svc-typo"]) == 0
    assert "no folder service=svc-typo in the tables looked at" in capsys.readouterr().err


def test_the_periodic_pass_stays_quiet_about_open_partitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Open hours are the periodic task's normal state: its passes log nothing about them
    above DEBUG, and print nothing."""
    import asyncio

    from aggregator.compact_loop import PeriodicCompaction
    from aggregator.config import Settings
    from aggregator.metrics import Metrics

    uri = str(tmp_path / "wh")
    flush_into(uri, OLD_HOUR, files=3)  # young files in a closed hour
    # The current hour: its two flushes' rows span 61 s, begun no later than 2 minutes ago
    # (at the hour's start when it is younger), so that none falls in the next hour (within a
    # minute of the hour's end they did: a sixth file).
    now = datetime.now(UTC)
    flush_into(
        uri,
        max(now.replace(minute=0, second=0, microsecond=0), now - timedelta(minutes=2)),
        files=2,
    )
    wh = open_warehouse(uri)
    loop = PeriodicCompaction(
        wh, Settings(compact_interval=0.05), Metrics(), Ledger(wh, "node-a", compacts=True)
    )
    recorded = Path(uri, "_compaction", "last-pass.json")

    async def one_pass() -> None:  # a completed pass over the warehouse records itself
        task = asyncio.create_task(loop.forever())
        try:
            async with asyncio.timeout(30):
                while not recorded.exists():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()

    caplog.set_level(logging.DEBUG, logger="logq")
    asyncio.run(one_pass())
    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert not any("svc1" in m or "eligible" in m or "closed" in m for m in loud), loud
    assert capsys.readouterr().err == ""
    assert len(parquet_files(uri)) == 5, "nothing merged: both hours are open"


@pytest.mark.s3
@pytest.mark.integration
def test_the_notes_cost_no_request_when_the_listing_reaches_the_open_hours(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 a service with a long history is listed from its window's first hour on: that
    listing holds the open hours too, so the command's notes cost no request. Listed hour by
    hour (--all), an hour with files that ended within the grace costs the command one LIST,
    the running hour none (it is never told)."""
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    now = hour + timedelta(minutes=20)  # the hour before ended within the grace
    for ago in [*range(4, 24), *range(60, 160)]:  # 20 hours in the window, 100 before it
        dt = (hour - timedelta(hours=ago)).strftime(DT_FORMAT)
        put_table(
            wh, wh.path(partition_path("container_logs", "old", dt), "c-x.parquet"), one_row(dt)
        )
    # The current hour; the one that ended 20 minutes ago; a closed one, backfilled just now
    # (young files).
    for ago in (0, 1, 3):
        folder = wh.path(
            partition_path(
                "container_logs", "old", (hour - timedelta(hours=ago)).strftime(DT_FORMAT)
            )
        )
        for seq in range(2):
            put_table(wh, f"{folder}/n-{seq}.parquet", one_row(f"{ago} {seq}"))

    def lists(notes: PassNotes | None, lookback: timedelta | None) -> int:
        before = settled(seaweedfs, wh)
        assert compact_warehouse(wh, now=now, lookback=lookback, notes=notes) == 0
        return settled(seaweedfs, wh)["LIST"] - before["LIST"]

    notes = PassNotes()
    assert lists(notes, timedelta(hours=48)) == lists(None, timedelta(hours=48))
    folders = sorted(p.folder.rsplit("/", 1)[-1] for p in notes.open)
    assert folders == [f"dt={(hour - timedelta(hours=a)).strftime(DT_FORMAT)}" for a in (3, 1)]
    assert notes.older_hours == 100

    every = PassNotes()
    assert lists(every, None) == lists(None, None) + 1
    assert len(every.open) == 2 and every.older_hours == 0


#: A pass's clock for the tests below that pass one: 20 minutes into HOUR, so the hour before
#: it ended within the grace (30 minutes) and HOUR itself still runs, whatever the wall clock.
HOUR = datetime(2026, 11, 28, 10, tzinfo=UTC)
PASS_NOW = HOUR + timedelta(minutes=20)


def notes_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool = False
) -> tuple[PassNotes, list[str]]:
    """A service with files to merge in the running hour and in the hour that ended within
    the grace, and one file long before the 1-hour lookback (so its hours are listed one by
    one, and the notes list the open ones themselves): one pass with notes, and the folders
    those notes listed (all refused when ``fail``)."""
    uri = str(tmp_path / "wh")
    flush_into(uri, HOUR, files=2)
    flush_into(uri, HOUR - timedelta(hours=1), files=2)
    flush_into(uri, HOUR - timedelta(hours=5), files=1)
    listed: list[str] = []

    def list_folder(wh: Warehouse, folder: str) -> list[pafs.FileInfo]:
        """The listing's LISTs of hour folders are counted (and refused when ``fail``)."""
        name = folder.rsplit("/", 1)[-1]
        if name.startswith("dt="):
            listed.append(name)
            if fail:
                raise StorageError(f"listing {folder} failed: simulated outage")
        return storage.list_folder(wh, folder)

    monkeypatch.setattr(listing, "list_folder", list_folder)
    notes = PassNotes()
    wh = open_warehouse(uri)
    assert compact_warehouse(wh, now=PASS_NOW, lookback=timedelta(hours=1), notes=notes) == 0
    return notes, listed


def test_the_running_hour_costs_the_command_no_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running hour is never told (every run would repeat it): no LIST is spent on it;
    the hour that ended within the grace is told, for one LIST."""
    notes, listed = notes_listings(tmp_path, monkeypatch)
    previous = f"dt={(HOUR - timedelta(hours=1)).strftime(DT_FORMAT)}"
    assert listed == [previous]
    assert [p.folder.rsplit("/", 1)[-1] for p in notes.open] == [previous]
    assert "its hour ended 20 min 0 s ago, less than the grace" in "\n".join(
        notes.lines(timedelta(0))
    )


def test_a_failed_listing_for_the_notes_fails_no_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notes are a courtesy to the user: their own LIST failing leaves that hour untold,
    and the pass completes."""
    notes, listed = notes_listings(tmp_path, monkeypatch, fail=True)
    assert len(listed) == 1 and notes.open == []
