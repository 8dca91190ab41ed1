"""Two compactors on one partition (cron plus the periodic task, a leadership handover, a merge
slower than the staleness limit) and the leftovers of a crashed one never lose a row.

Each test runs the second compactor at a chosen step of the first (a patched module function),
so the interleaving is the same on every run. Rows are compared as exact multisets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.attempt as attempt_mod
import aggregator.compaction.intents as intents_mod
import aggregator.compaction.merge as merge_mod
import aggregator.compaction.partition as partition_mod
import aggregator.storage as storage
from aggregator.compaction.attempt import _Attempt
from aggregator.compaction.intents import finish_intents
from aggregator.compaction.partition import compact_partition
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from athena.intents import INTENT_PREFIX
from athena.schema import CONTAINER_LOGS, partition_path
from athena.warehouse import Warehouse, open_warehouse
from tests.aggregator.helpers import read_table
from tests.aggregator.test_compaction import DT, LATER, flush_files

TARGET = 1 << 30


def rows(uri: str) -> Counter[str]:
    """What a reader of the warehouse sees: every visible file's rows, as a multiset."""
    table = read_table(uri, "container_logs")
    return Counter(table["message"].to_pylist()) if table.num_rows else Counter()


def folder_rows(wh: Warehouse, folder: str) -> Counter[str]:
    """The rows a reader sees in one partition folder, as a multiset."""
    out: Counter[str] = Counter()
    for info in wh.fs.get_file_info(pafs.FileSelector(folder)):
        if info.base_name.endswith(".parquet") and not info.base_name.startswith((".", "_")):
            out.update(pq.read_table(info.path, filesystem=wh.fs)["message"].to_pylist())
    return out


def partition(tmp_or_uri: Path | str, files: int = 5) -> tuple[str, Warehouse, str]:
    """``files`` flushes into a closed hour (one row each into the next): (uri, wh, folder)."""
    uri = tmp_or_uri if isinstance(tmp_or_uri, str) else str(tmp_or_uri / "wh")
    flush_files(uri, files=files, rows_per_file=20)
    wh = open_warehouse(uri)
    return uri, wh, wh.path(partition_path("container_logs", "recipe", DT))


def names(wh: Warehouse, folder: str) -> list[str]:
    """Every name in the partition folder, hidden ones (intents, temporary files) too."""
    selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
    return sorted(i.base_name for i in wh.fs.get_file_info(selector))


def merged_only(wh: Warehouse, folder: str) -> bool:
    """One merged file, no inputs, no intent, no temporary file left."""
    left = names(wh, folder)
    return len(left) == 1 and left[0].startswith("c-") and left[0].endswith(".parquet")


def patch_merge(monkeypatch: pytest.MonkeyPatch, before: Any = None, after: Any = None) -> None:
    """Run ``before``/``after`` around the first compactor's merge (once)."""
    real = attempt_mod._merge
    calls: list[int] = []

    def merge(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        first = len(calls) == 1
        if first and before is not None:
            before()
        out = real(*args, **kwargs)
        if first and after is not None:
            after()
        return out

    monkeypatch.setattr(attempt_mod, "_merge", merge)


def test_second_compactor_during_the_first_ones_merge_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A has written its intent and is about to merge when B runs a whole pass over the same
    partition: B takes A's fresh intent for a merge under way and leaves the partition alone."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    seen: list[Counter[str]] = []

    def other_pass() -> None:
        compact_partition(wh, CONTAINER_LOGS, folder, TARGET)
        seen.append(rows(uri))

    patch_merge(monkeypatch, before=other_pass)
    compact_partition(wh, CONTAINER_LOGS, folder, TARGET)
    assert seen == [before]
    assert rows(uri) == before
    assert merged_only(wh, folder)


def test_first_compactor_whose_files_were_merged_after_it_listed_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's data loss (partition empty in 10 of 16 trials): A's pass lists the
    partition; B merges it and commits; A then merges its stale listing. Both named the output
    ``c-<hash of the inputs>``, so A's failure on a missing input deleted B's output. Now A's
    output is its own: A finds its inputs gone, withdraws, and deletes nothing of B's."""
    uri, wh, folder = partition(tmp_path)
    before, here = rows(uri), folder_rows(wh, folder)
    real_groups = partition_mod._groups
    calls: list[int] = []

    def groups(files: list[Any], target_bytes: int) -> list[list[Any]]:
        if files and files[0].path.startswith(folder + "/"):
            calls.append(1)
            if len(calls) == 1:  # A has listed the partition; B runs its whole pass now
                assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
                # (that partition alone: A may be merging the next hour at the same time)
                assert folder_rows(wh, folder) == here
        return real_groups(files, target_bytes)

    monkeypatch.setattr(partition_mod, "_groups", groups)
    try:
        merged: int | None = compact_warehouse(wh, now=LATER, lookback=None)
    except CompactionFailed:
        merged = None
    assert rows(uri) == before, "rows lost"
    assert merged == 5, "the next hour's 5 files; the partition B merged is no failure"
    assert merged_only(wh, folder)


def test_intents_written_at_the_same_time_let_only_one_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B has listed the partition and is writing its intent while A starts, lists and writes
    its own: A checks after B's intent landed and withdraws; B's check finds A's gone and B
    merges. Whatever the order of the four writes and lists, at most one merges."""
    uri, wh, folder = partition(tmp_path)
    before, files = rows(uri), names(wh, folder)
    real_put = attempt_mod._put_intent
    calls: list[tuple[str, dict]] = []

    def put(wh_: Warehouse, path: str, body: dict) -> None:
        calls.append((path, body))
        if len(calls) == 1:  # B's intent, not written yet: A runs its pass now
            assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0
            b_intent = calls[0][0].rsplit("/", 1)[1]
            assert names(wh, folder) == sorted([*files, b_intent]), "A left nothing behind"
        elif len(calls) == 2:  # A's intent; B's lands right after it, before A lists
            real_put(wh_, path, body)
            path, body = calls[0]
        real_put(wh_, path, body)

    monkeypatch.setattr(attempt_mod, "_put_intent", put)
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert len(calls) == 2
    assert rows(uri) == before and merged_only(wh, folder)


def before_names(folder: str) -> list[str]:
    return [p.name for p in Path(folder).glob("*.parquet")]


class Crash(BaseException):
    """A kill -9 at this point (nothing in the compactor catches it)."""


def crash_on_first_input_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    real = attempt_mod.delete_object

    def delete(wh: Warehouse, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        if not name.startswith((INTENT_PREFIX, "c-")):
            raise Crash(path)
        real(wh, path)

    monkeypatch.setattr(attempt_mod, "delete_object", delete)  # a merge's own deletes
    monkeypatch.setattr(intents_mod, "delete_object", delete)  # those finishing a merge
    monkeypatch.setattr(storage, "delete_object", delete)  # what delete_objects calls


def test_a_crash_after_the_output_is_finished_by_the_next_pass_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing the merged file and deleting the inputs: rows show twice (the
    documented window, never fewer) until the next pass, which finishes the merge at once
    instead of waiting 15 minutes for the intent to go stale."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    crash_on_first_input_delete(monkeypatch)
    with pytest.raises(Crash):
        compact_partition(wh, CONTAINER_LOGS, folder, TARGET)
    monkeypatch.undo()
    doubled = Counter({m: 2 for m in before if not m.startswith("next-")})  # not the next hour
    assert rows(uri) == before | doubled, "the documented worst case: each row twice"
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0  # nothing left to merge
    assert rows(uri) == before
    assert merged_only(wh, folder)


def test_an_input_rewritten_after_it_was_read_makes_the_merge_withdraw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small inputs are read whole before the intent is written: one rewritten after that
    read (a replayed flush) is caught by the check after the intent, and the merge withdraws
    rather than store the old bytes; the next pass merges the new ones."""
    uri, wh, folder = partition(tmp_path)
    inputs = names(wh, folder)
    before = rows(uri)
    real_groups = partition_mod._groups
    calls: list[int] = []

    def groups(files: list[Any], target_bytes: int) -> list[list[Any]]:
        calls.append(1)
        if len(calls) == 1:  # read; now a flush rewrites the first input, one row longer
            path = Path(files[0].path)
            table = pq.read_table(path)
            pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path)
        return real_groups(files, target_bytes)

    monkeypatch.setattr(partition_mod, "_groups", groups)
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0
    assert names(wh, folder) == inputs  # no intent, no output left
    after = rows(uri)
    assert sum(after.values()) == sum(before.values()) + 1  # the rewritten file's rows
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == after
    assert merged_only(wh, folder)


def test_an_intent_finished_by_another_pass_before_its_writer_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's output is complete; before A deletes its inputs, B finishes A's intent (deletes the
    inputs and the intent). A must keep its output: it is the only copy of those rows now."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    patch_merge(monkeypatch, after=lambda: finish_intents(wh, folder))
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before
    assert merged_only(wh, folder)


def test_a_crashed_merge_without_output_waits_until_stale_then_rolls_back(
    tmp_path: Path,
) -> None:
    """An intent whose output is missing may be a merge still running: skip the partition
    while it is young; once stale, drop it (the inputs are the truth) and merge."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    intent = {"inputs": before_names(folder), "output": "c-gone.parquet", "rows": 100}
    Path(folder, "_compact-gone.json").write_text(json.dumps(intent))
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0
    assert rows(uri) == before
    assert Path(folder, "_compact-gone.json").exists()
    assert finish_intents(wh, folder) == 1  # as a pass 15 minutes later sees it
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before and merged_only(wh, folder)


@pytest.mark.parametrize("row_group_rows", [1_000_000, 10], ids=["one-row-group", "written"])
def test_a_long_merge_whose_intent_was_taken_for_stale_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, row_group_rows: int
) -> None:
    """A merge that ran past the staleness limit (another pass dropped its intent as a crashed
    one's) notices when it next refreshes its intent, drops its own output and keeps the
    inputs; the other pass merges them, whether the merge had filled a row group yet or (row
    groups of 10 rows) written some of its output."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    monkeypatch.setattr(attempt_mod, "INTENT_REFRESH", timedelta(0))
    monkeypatch.setattr(merge_mod, "ROW_GROUP_ROWS", row_group_rows)
    real_progress = _Attempt.progress
    calls: list[int] = []

    def progress(self: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # two inputs read: the other pass takes the intent for stale
            assert finish_intents(wh, folder) == 1
            assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
        real_progress(self)

    monkeypatch.setattr(_Attempt, "progress", progress)
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0
    assert rows(uri) == before
    assert merged_only(wh, folder)


def test_a_stalled_merge_dropped_as_stale_still_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A merge stalled for over 15 minutes where it cannot refresh its intent (before its first
    input), which another pass dropped as a crashed one's. Its output, once complete, may be
    what a finisher deletes inputs for, so it is never deleted: the merge commits (WARNING)."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    patch_merge(monkeypatch, before=lambda: finish_intents(wh, folder))
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before
    assert merged_only(wh, folder)
    assert "was dropped as stale while it ran" in caplog.text


def test_a_failed_merge_deletes_only_its_own_incomplete_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that fails removes its own (incomplete) output and intent, nothing else, and
    the pass reports it."""
    uri, wh, folder = partition(tmp_path)
    before, files = rows(uri), names(wh, folder)

    def fail(*args: Any, **kwargs: Any) -> int:
        raise OSError("injected read failure")

    monkeypatch.setattr(attempt_mod, "_merge", fail)
    with pytest.raises(OSError, match="injected"):
        compact_partition(wh, CONTAINER_LOGS, folder, TARGET)
    assert rows(uri) == before
    assert names(wh, folder) == files


@pytest.mark.s3
@pytest.mark.integration
def test_second_compactor_during_the_first_ones_merge_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's loss on SeaweedFS S3 (no conditional put needed): list-after-write is
    enough for the intents to exclude each other."""
    uri, wh, folder = partition(s3_warehouse)
    before = rows(uri)
    patch_merge(monkeypatch, before=lambda: compact_partition(wh, CONTAINER_LOGS, folder, TARGET))
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before
    assert merged_only(wh, folder)

    uri2, wh2, folder2 = partition(s3_warehouse.replace("/wh", "/wh2"))
    before2 = rows(uri2)
    real_groups = partition_mod._groups
    calls: list[int] = []

    def groups(files: list[Any], target_bytes: int) -> list[list[Any]]:
        calls.append(1)
        if len(calls) == 1:
            assert compact_partition(wh2, CONTAINER_LOGS, folder2, TARGET) == 5
        return real_groups(files, target_bytes)

    monkeypatch.setattr(partition_mod, "_groups", groups)
    assert compact_partition(wh2, CONTAINER_LOGS, folder2, TARGET) == 0
    assert rows(uri2) == before2
    assert merged_only(wh2, folder2)


def test_an_unreadable_intent_blocks_only_until_stale(tmp_path: Path) -> None:
    """A ``_compact-*.json`` that does not parse (a stray, one an older version cut short)
    would make every merge there withdraw: it is a merge under way while young, then dropped."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    Path(folder, "_compact-torn.json").write_text('{"inputs": ["n-')
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 0
    assert Path(folder, "_compact-torn.json").exists()
    assert finish_intents(wh, folder) == 0  # as a pass 15 minutes later sees it
    assert not Path(folder, "_compact-torn.json").exists()
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before and merged_only(wh, folder)


COMPACT_AT = """
import sys, time
at, delay = float(sys.argv[1]), float(sys.argv[2])
from aggregator.compaction.command import compact_main
while time.time() < at:
    time.sleep(0.0005)
time.sleep(delay)
sys.exit(compact_main(sys.argv[3:]))
"""


@pytest.mark.integration
def test_two_compactor_processes_at_once(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """Two compactor processes (cron plus the periodic task) start their pass on the same
    partition 0 and 2 ms apart, as in the audit that lost the partition in 10 of 16 trials:
    every row stays, once, and both exit 0. Timing decides which steps interleave (the tests
    above pin each interleaving down); this is the end-to-end check."""
    for trial in range(3):
        uri = str(tmp_path / f"wh{trial}")
        flush_files(uri, files=30, rows_per_file=100)
        before = rows(uri)
        at = time.time() + 1.5
        args = ["--warehouse", uri, "--all", "--grace-minutes", "0"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", COMPACT_AT, str(at), delay, *args],
                env=subprocess_env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for delay in ("0", "0.002")
        ]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        assert rows(uri) == before, errs
        leftovers = [
            p.name for p in Path(uri).rglob("*") if p.name.startswith((INTENT_PREFIX, "."))
        ]
        assert leftovers == [], errs


def test_an_output_written_whole_despite_an_error_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload completed but its reply was lost (the merge raised): another pass may already
    be finishing the intent on the strength of that complete output, so it must not be
    deleted; the merge commits."""
    uri, wh, folder = partition(tmp_path)
    before = rows(uri)
    real = attempt_mod._merge

    def merge(*args: Any, **kwargs: Any) -> int:
        real(*args, **kwargs)
        raise OSError("connection reset after the upload completed")

    monkeypatch.setattr(attempt_mod, "_merge", merge)
    assert compact_partition(wh, CONTAINER_LOGS, folder, TARGET) == 5
    assert rows(uri) == before and merged_only(wh, folder)
