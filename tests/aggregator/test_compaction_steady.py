"""A compaction pass over an already compacted warehouse costs one listing per partition and no
footer read; the periodic pass resumes from the last completed one after a long pause; the
ledger is expired without compaction, under the rule that guards compaction."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import aggregator.compaction.listing as listing_mod
from aggregator.batch import records_table, route
from aggregator.compaction.attempt import _Attempt
from aggregator.compaction.command import compact_main
from aggregator.compaction.last_pass import MAX_RESUME_LOOKBACK, last_pass, resume_lookback
from aggregator.compaction.listing import DEFAULT_LOOKBACK
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from aggregator.decode import records_batch, to_ipc
from aggregator.ledger import (
    LEDGER_DIR,
    RETENTION,
    STALE_GRACE_S,
    Ledger,
    compaction_blocker,
    expire_unless_held,
    read_heartbeats,
)
from aggregator.storage import StorageError
from aggregator.writer import object_name, write_partitions
from athena.schema import DT_FORMAT
from athena.warehouse import Warehouse, open_warehouse
from tests.aggregator.helpers import LocalPassThrough, backdate, read_table, record

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
OLD = time.time() - 3 * 86400  # mtime of every file: long past any grace period


class CountingHandler(LocalPassThrough):
    """A real local filesystem that counts folder listings (and the recursive ones) and file
    opens, per path, and keeps every path a listing returned."""

    def __init__(self) -> None:
        super().__init__()
        self.listings: Counter[str] = Counter()
        self.recursive: Counter[str] = Counter()
        self.listed: list[str] = []
        self.opens: Counter[str] = Counter()

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        self.listings[selector.base_dir.rstrip("/")] += 1
        self.recursive[selector.base_dir.rstrip("/")] += selector.recursive
        infos = self.fs.get_file_info(selector)
        self.listed += [info.path for info in infos]
        return infos

    def open_input_stream(self, path: str) -> pa.NativeFile:
        self.opens[path] += 1
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        self.opens[path] += 1
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None = None) -> pa.NativeFile:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return self.fs.open_output_stream(path)


def counting_warehouse(root: Path) -> tuple[Warehouse, CountingHandler]:
    handler = CountingHandler()
    return Warehouse(str(root), pafs.PyFileSystem(handler), str(root)), handler


def write_hour(root: Path, hours_ago: int, files: int, service: str = "web") -> str:
    """``files`` flushes of 10 rows each into the hour ``hours_ago`` hours before NOW, written
    long ago (mtime); returns the partition folder."""
    wh = open_warehouse(str(root), create=True)
    hour = NOW - timedelta(hours=hours_ago)
    for seq in range(files):
        events = [
            (
                int((hour + timedelta(seconds=i * 60 + seq)).timestamp() * 1e9),
                record(f"{seq}-{i}", service=service),
            )
            for i in range(10)
        ]
        batch = records_batch("logq.x", pa.array([t for t, _ in events]), [r for _, r in events])
        routed = route(records_table([to_ipc(batch)]))
        name = object_name(f"n{hours_ago}", seq)
        write_partitions(wh, "container_logs", routed.tables["container_logs"], name)
    folder = root / "container_logs" / f"service={service}" / f"dt={hour.strftime(DT_FORMAT)}"
    for path in folder.iterdir():
        os.utime(path, (OLD, OLD))
    return str(folder)


def parquet_count(folder: str) -> int:
    return len([p for p in Path(folder).iterdir() if p.name.endswith(".parquet")])


def rows(root: Path) -> int:
    return read_table(str(root), "container_logs").num_rows


# --- one listing per partition, no footer read where nothing can merge ----------------------------


def test_an_idle_pass_lists_each_young_service_whole_and_reads_no_footer(tmp_path: Path) -> None:
    """A service whose hours are all in the window (a young one) is listed whole, once (on S3 a
    request per 1,000 objects), after its hour folders, instead of once per partition-hour; a
    partition with something to merge is listed again, fresh."""
    root = tmp_path / "wh"
    single = [write_hour(root, h, 1, service=s) for h in (2, 5, 30) for s in ("a", "b")]
    busy = write_hour(root, 7, 4, service="a")
    services = sorted({str(Path(f).parent) for f in single})
    before = rows(root)
    wh, fs = counting_warehouse(root)

    assert compact_warehouse(wh, now=NOW) == 4
    assert rows(root) == before  # exact: nothing lost, nothing twice
    assert parquet_count(busy) == 1
    assert [fs.listings[s] for s in services] == [2, 2]  # its hour folders, then all of it
    assert [fs.recursive[s] for s in services] == [1, 1]
    for folder in single:
        assert fs.listings[folder] == 0, folder  # its service's listing showed it compacted
        assert not [p for p in fs.opens if p.startswith(folder + "/")], folder  # no footer
    # The partition with something to merge: its own fresh listing, and the intent check.
    assert fs.listings[busy] == 2

    fs.listings.clear()
    fs.opens.clear()
    assert compact_warehouse(wh, now=NOW) == 0  # steady state: now every partition is single
    assert [fs.listings[s] for s in services] == [2, 2]
    for folder in [*single, busy]:
        assert fs.listings[folder] == 0, folder
    assert not [p for p in fs.opens if p.endswith(".parquet")]
    assert rows(root) == before


def test_a_pass_lists_only_the_hours_within_its_lookback(tmp_path: Path) -> None:
    """Hours past the lookback (a service's history, uncompacted if compaction was enabled
    late) are neither listed nor held: the service's folder is listed for its hour folders,
    then only the hours in the window, one by one; a late file there is still merged."""
    root = tmp_path / "wh"
    old = [write_hour(root, h, 2, service="old") for h in range(60, 72)]
    compacted = write_hour(root, 3, 1, service="old")
    late = write_hour(root, 10, 3, service="old")
    service = str(Path(late).parent)
    wh, fs = counting_warehouse(root)

    assert compact_warehouse(wh, now=NOW) == 3  # the window's hour of small files
    assert fs.recursive[service] == 0 and fs.listings[service] == 1
    assert fs.listings[compacted] == 1  # listed on its own, then left: compacted
    for folder in old:
        assert fs.listings[folder] == 0, folder
        assert not [p for p in fs.listed if p.startswith(folder + "/")], folder
        assert parquet_count(folder) == 2, folder  # outside the lookback: left as it is

    write_hour(root, 10, 1, service="old")  # a late flush into the compacted hour
    before = rows(root)
    fs.listings.clear()
    fs.listed.clear()
    assert compact_warehouse(wh, now=NOW) == 2
    assert parquet_count(late) == 1 and rows(root) == before
    assert not [p for p in fs.listed if any(p.startswith(f + "/") for f in old)]
    assert sum(n for path, n in fs.listings.items() if path in old) == 0


def test_a_long_window_lists_hour_by_hour_never_the_whole_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--all`` (no lookback) or a long resumed window: a folder with more hours than
    RECURSIVE_MAX_HOURS is listed hour by hour (a few hours' entries held at a time), and every
    hour is still compacted."""
    monkeypatch.setattr(listing_mod, "RECURSIVE_MAX_HOURS", 4)
    root = tmp_path / "wh"
    hours = [write_hour(root, h, 2) for h in (2, 3, 5, 100, 200, 300)]
    service = str(Path(hours[0]).parent)
    before = rows(root)
    wh, fs = counting_warehouse(root)
    assert compact_warehouse(wh, now=NOW, lookback=None) == 12
    assert fs.recursive[service] == 0
    assert [parquet_count(f) for f in hours] == [1] * 6 and rows(root) == before


def test_a_file_landing_in_a_compacted_hour_is_merged_by_the_next_pass(tmp_path: Path) -> None:
    """Late data in an hour an earlier pass compacted (a replay, a slow shipper): the hour is
    not skipped for having been compacted; the next pass merges the newcomer."""
    root = tmp_path / "wh"
    folder = write_hour(root, 5, 3)
    wh = open_warehouse(str(root))
    assert compact_warehouse(wh, now=NOW) == 3
    write_hour(root, 5, 1)  # a late flush into that hour (written "long ago" too: not young)
    assert parquet_count(folder) == 2
    before = rows(root)
    assert compact_warehouse(wh, now=NOW) == 2
    assert parquet_count(folder) == 1 and rows(root) == before


def test_a_merge_opens_each_input_once(tmp_path: Path) -> None:
    """The audit's 4 opens per input (footer check, footer again, rows, ...) on S3 each cost a
    round trip: a small input is now read whole with its footer, once."""
    root = tmp_path / "wh"
    busy = write_hour(root, 7, 6)
    inputs = sorted(str(p) for p in Path(busy).iterdir())
    before = rows(root)
    wh, fs = counting_warehouse(root)
    assert compact_warehouse(wh, now=NOW) == 6
    assert {path: fs.opens[path] for path in inputs} == dict.fromkeys(inputs, 1)
    assert rows(root) == before and parquet_count(busy) == 1


def test_a_partition_with_an_intent_is_still_finished(tmp_path: Path) -> None:
    """The shortcut for single-file partitions does not skip a crashed merge's intent."""
    root = tmp_path / "wh"
    folder = write_hour(root, 3, 1)
    intent = {"inputs": ["gone.parquet"], "output": "c-missing.parquet", "rows": 5}
    Path(folder, "_compact-crashed.json").write_text(json.dumps(intent))
    os.utime(Path(folder, "_compact-crashed.json"), (OLD, OLD))
    wh, _ = counting_warehouse(root)
    assert compact_warehouse(wh, now=NOW) == 0
    assert not Path(folder, "_compact-crashed.json").exists()
    assert parquet_count(folder) == 1


# --- resuming after a pause longer than the lookback ----------------------------------------------


def test_the_next_pass_after_a_long_pause_compacts_the_paused_hours(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    # The last pass completed 61 hours ago; then compaction paused (a stale heartbeat).
    assert compact_warehouse(wh, now=NOW - timedelta(hours=61), resume=True) == 0
    assert last_pass(wh) == NOW - timedelta(hours=61)
    hours = {h: write_hour(root, h, 3) for h in (10, 49, 60)}
    before = rows(root)

    assert compact_warehouse(wh, now=NOW, resume=True) == 9
    assert {h: parquet_count(f) for h, f in hours.items()} == {10: 1, 49: 1, 60: 1}
    assert rows(root) == before
    assert last_pass(wh) == NOW
    # Caught up: the next pass looks back the usual 48 hours again.
    assert resume_lookback(wh, NOW) == DEFAULT_LOOKBACK


def test_without_a_record_a_pass_looks_back_48_hours(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    hours = {h: write_hour(root, h, 3) for h in (10, 50)}
    assert compact_warehouse(wh, now=NOW, resume=True) == 3
    assert {h: parquet_count(f) for h, f in hours.items()} == {10: 1, 50: 3}


def test_a_resumed_lookback_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    compact_warehouse(wh, now=NOW - timedelta(days=90), resume=True)
    assert resume_lookback(wh, NOW) == MAX_RESUME_LOOKBACK
    assert "are not compacted (run `logq-aggregator compact --all`" in caplog.text


def test_a_failed_or_stopped_pass_does_not_move_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    start = NOW - timedelta(hours=61)
    compact_warehouse(wh, now=start, resume=True)
    folder = write_hour(root, 60, 3)
    before = rows(root)

    assert compact_warehouse(wh, now=NOW, resume=True, hold=lambda: "a peer went down") == 0
    assert last_pass(wh) == start  # stopped

    real = _Attempt.run

    def failing(self: _Attempt) -> bool:
        raise StorageError("the warehouse refused the write")

    monkeypatch.setattr(_Attempt, "run", failing)
    with pytest.raises(CompactionFailed):
        compact_warehouse(wh, now=NOW, resume=True)
    assert last_pass(wh) == start  # failed
    assert parquet_count(folder) == 3

    monkeypatch.setattr(_Attempt, "run", real)
    assert compact_warehouse(wh, now=NOW, resume=True) == 3  # the hour is still in reach
    assert last_pass(wh) == NOW
    assert rows(root) == before


def test_one_partition_that_always_fails_does_not_hold_the_record_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged partition fails every pass; the others compact. Holding the record back for
    it would make every later pass look back further (up to 30 days) to fail on it again."""
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    compact_warehouse(wh, now=NOW - timedelta(hours=61), resume=True)
    good = write_hour(root, 60, 3)
    bad = write_hour(root, 50, 3)
    real = _Attempt.run

    def damaged(self: _Attempt) -> bool:
        if self.folder == bad:
            raise OSError("ZSTD decompression failed")
        return real(self)

    monkeypatch.setattr(_Attempt, "run", damaged)
    with pytest.raises(CompactionFailed):
        compact_warehouse(wh, now=NOW, resume=True)
    assert last_pass(wh) == NOW
    assert parquet_count(good) == 1 and parquet_count(bad) == 3


def test_a_partial_pass_does_not_move_the_record(tmp_path: Path) -> None:
    """A pass over one service, or with an explicit lookback, covers less than a resumed one."""
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    start = NOW - timedelta(hours=61)
    compact_warehouse(wh, now=start, resume=True)
    write_hour(root, 60, 3)
    compact_warehouse(wh, now=NOW, service="web", resume=True)
    compact_warehouse(wh, now=NOW)
    assert last_pass(wh) == start


def test_the_compact_command_resumes_unless_given_a_lookback(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    start = NOW - timedelta(hours=61)
    compact_warehouse(wh, now=start, resume=True)
    folder = write_hour(root, 60, 3)
    assert compact_main(["--warehouse", str(root), "--lookback-hours", "48"]) == 0
    assert parquet_count(folder) == 3 and last_pass(wh) == start
    assert compact_main(["--warehouse", str(root)]) == 0
    assert parquet_count(folder) == 1 and last_pass(wh) > start


# --- ledger expiry without compaction -------------------------------------------------------------


def _ledger_hours(root: Path) -> list[str]:
    return sorted(p.name for p in (root / LEDGER_DIR).iterdir() if p.name.startswith("written="))


def test_the_ledger_is_expired_without_compaction_unless_a_peer_is_down(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = open_warehouse(str(root), create=True)
    old = (NOW - RETENTION - timedelta(hours=2)).strftime(DT_FORMAT)
    new = (NOW - timedelta(hours=2)).strftime(DT_FORMAT)
    for hour in (old, new):
        entry = root / LEDGER_DIR / f"written={hour}" / "node-b-0000000000000001.parquet"
        entry.parent.mkdir(parents=True)
        entry.write_bytes(b"PAR1")
    now = time.time()
    Ledger(wh, "node-a", compacts=False).heartbeat(now, 10.0)
    down = Ledger(wh, "node-c", compacts=False)
    down.heartbeat(now, 10.0)
    path = root / LEDGER_DIR / "_nodes" / "node-c.json"
    doc = json.loads(path.read_text())
    doc["updated"] = now - 10 * 10.0 - STALE_GRACE_S - 60
    path.write_text(json.dumps(doc))
    backdate(path, doc["updated"])

    # node-c stopped without writing out its buffer: its replay may need every entry.
    assert expire_unless_held(wh, "node-a", now) is None
    assert _ledger_hours(root) == [f"written={old}", f"written={new}"]

    down.forget()  # drained
    Ledger(wh, "node-0", compacts=False).heartbeat(now, 10.0)  # a smaller live id does it
    assert expire_unless_held(wh, "node-a", now) is None
    assert _ledger_hours(root) == [f"written={old}", f"written={new}"]
    assert expire_unless_held(wh, "node-0", now) == 1
    assert _ledger_hours(root) == [f"written={new}"]

    # A live node that compacts expires the ledger in its passes: nobody else does, whatever
    # its id (else two nodes would delete the same hours).
    Ledger(wh, "node-z", compacts=True).heartbeat(now, 10.0)
    hold = compaction_blocker(read_heartbeats(wh), "node-0", now, compacts=False)
    assert hold is not None and "node-z compacts" in hold.reason
