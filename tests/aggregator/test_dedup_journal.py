"""The per-source offsets on disk: a snapshot plus a journal of each flush's changed marks.

A flush must write only the marks it changed (not every source remembered for 14 days), a
crash mid-save must leave a loadable state with the older marks, a directory written by the
version that kept only ``offsets.json`` must load, and a fork must not copy the map.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.dedup import OFFSETS_JOURNAL_NAME, OFFSETS_NAME, OffsetState, journal_path
from shipper import wire
from tests.aggregator.helpers import (
    AggregatorProc,
    read_acks,
    read_table,
    record,
    start_aggregator,
    wait_rows,
)
from tests.support.procs import wait_until


def _advance(state: OffsetState, marks: dict[str, int]) -> None:
    state.advance(pa.array(list(marks), pa.string()), pa.array(list(marks.values()), pa.int64()))


def _marks(state: OffsetState, sources: list[str]) -> dict[str, int | None]:
    return {s: state.get(s) for s in sources}


def _many(n: int) -> dict[str, int]:
    return {f"host:{i}:fp{i:08x}": 1000 + i for i in range(n)}


def test_a_save_appends_only_the_changed_marks(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path)
    _advance(state, _many(2000))
    state.snapshot()
    snapshot = path.read_bytes()
    journal = journal_path(path)

    _advance(state, {"host:7:fp00000007": 99_999})
    state.save()

    assert path.read_bytes() == snapshot  # not rewritten
    record = journal.read_bytes()
    assert 0 < len(record) < 200, len(record)  # one source, not 2,000
    (entry,) = json.loads(record[8:])
    assert entry[:2] == ["host:7:fp00000007", 99_999]
    again = OffsetState(path).load()
    assert len(again) == 2000
    assert again.get("host:7:fp00000007") == 99_999
    assert again.get("host:8:fp00000008") == 1008


def test_a_torn_last_journal_record_is_cut_off_and_the_older_marks_load(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path)
    _advance(state, {"a": 10, "b": 20})
    state.save()
    _advance(state, {"a": 30})
    state.save()
    journal = journal_path(path)
    whole = journal.read_bytes()
    # A third save cut by a crash: its record is only partly on disk.
    payload = json.dumps([["a", 50, time.time()], ["c", 5, time.time()]]).encode()
    record = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    journal.write_bytes(whole + record[: len(record) - 7])

    again = OffsetState(path).load()
    assert _marks(again, ["a", "b", "c"]) == {"a": 30, "b": 20, "c": None}
    assert journal.read_bytes() == whole  # the torn bytes are gone
    # The next save appends after the good records and loads whole.
    _advance(again, {"c": 7})
    again.save()
    third = OffsetState(path).load()
    assert _marks(third, ["a", "b", "c"]) == {"a": 30, "b": 20, "c": 7}


def test_a_torn_record_with_a_bad_checksum_at_the_end_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path)
    _advance(state, {"a": 10})
    state.save()
    journal = journal_path(path)
    payload = json.dumps([["a", 99, time.time()]]).encode()
    bad = struct.pack(">II", len(payload), zlib.crc32(payload) ^ 1) + payload
    journal.write_bytes(journal.read_bytes() + bad)
    assert OffsetState(path).load().get("a") == 10


def test_a_damaged_record_followed_by_good_ones_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path)
    for marks in ({"a": 10}, {"b": 20}, {"c": 30}):
        _advance(state, marks)
        state.save()
    journal = journal_path(path)
    data = bytearray(journal.read_bytes())
    first_len = struct.unpack(">I", data[:4])[0]
    second = 8 + first_len
    data[second + 10] ^= 0xFF  # inside the second record's payload
    journal.write_bytes(bytes(data))
    again = OffsetState(path).load()
    assert _marks(again, ["a", "b", "c"]) == {"a": 10, "b": None, "c": 30}


def test_an_offsets_json_written_by_the_previous_version_loads(tmp_path: Path) -> None:
    """Upgrade: a buffer dir holding only the old whole-map file (float times)."""
    path = tmp_path / OFFSETS_NAME
    now = time.time()
    path.write_text(json.dumps({"a": [10, now], "b": [20, now - 5.5]}))
    state = OffsetState(path).load()
    assert _marks(state, ["a", "b"]) == {"a": 10, "b": 20}
    _advance(state, {"b": 25, "c": 3})
    state.save()
    assert json.loads(path.read_text()) == {"a": [10, now], "b": [20, now - 5.5]}
    assert journal_path(path).exists()
    again = OffsetState(path).load()
    assert _marks(again, ["a", "b", "c"]) == {"a": 10, "b": 25, "c": 3}
    # And the snapshot a clean stop writes is still the same JSON object (a downgrade reads it).
    again.close()
    doc = json.loads(path.read_text())
    assert {k: v[0] for k, v in doc.items()} == {"a": 10, "b": 25, "c": 3}
    assert journal_path(path).stat().st_size == 0


def test_the_journal_is_folded_into_a_new_snapshot_once_it_outgrows_it(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path, journal_min_bytes=2000)
    journal = journal_path(path)
    snapshots = 0
    for i in range(200):
        _advance(state, {f"s{i}": i + 1})
        before = path.stat().st_mtime_ns if path.exists() else None
        state.save()
        if path.exists() and path.stat().st_mtime_ns != before:
            snapshots += 1
            assert journal.stat().st_size == 0
        # Bounded by the snapshot's size (or the minimum), not by the number of saves.
        assert journal.stat().st_size <= max(2000, path.stat().st_size if path.exists() else 0)
    assert snapshots >= 2
    again = OffsetState(path).load()
    assert len(again) == 200
    assert all(again.get(f"s{i}") == i + 1 for i in range(200))


def test_a_crash_between_snapshot_and_journal_truncation_replays_idempotently(
    tmp_path: Path,
) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path)
    _advance(state, {"a": 10, "b": 20})
    state.save()
    _advance(state, {"a": 40})
    state.save()
    journal = journal_path(path).read_bytes()
    state.snapshot()
    journal_path(path).write_bytes(journal)  # as if the truncation never happened
    again = OffsetState(path).load()
    assert _marks(again, ["a", "b"]) == {"a": 40, "b": 20}


def test_sources_unseen_for_the_retention_are_forgotten_at_snapshot_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / OFFSETS_NAME
    old = time.time() - 3600
    path.write_text(json.dumps({"stale": [10, old], "fresh": [20, time.time()]}))
    state = OffsetState(path, retention_s=600).load()
    _advance(state, {"new": 1})
    state.save()  # a journal append: no scan of the map
    assert state.get("stale") == 10
    state.snapshot()
    assert _marks(state, ["stale", "fresh", "new"]) == {"stale": None, "fresh": 20, "new": 1}
    assert set(json.loads(path.read_text())) == {"fresh", "new"}
    assert OffsetState(path, retention_s=600).load().get("stale") is None


def test_a_fork_holds_only_its_changes_and_adopting_two_keeps_both(tmp_path: Path) -> None:
    """Adopting merges the overlay (highest offset wins): a fork adopted after another cannot
    lower or drop the marks the first one raised (replacing the map with the fork's did)."""
    state = OffsetState(tmp_path / OFFSETS_NAME)
    _advance(state, _many(1000))
    first, second = state.fork(), state.fork()
    assert len(first._marks) == 0  # an overlay, not a copy
    _advance(first, {"host:1:fp00000001": 5000, "x": 7})
    _advance(second, {"host:2:fp00000002": 6000})
    assert first.get("host:2:fp00000002") == 1002  # reads through to the base
    assert state.get("x") is None  # not adopted yet
    assert len(first._marks) == 2
    state.adopt(first)
    state.adopt(second)
    state.save()
    again = OffsetState(tmp_path / OFFSETS_NAME).load()
    assert _marks(again, ["host:1:fp00000001", "host:2:fp00000002", "x"]) == {
        "host:1:fp00000001": 5000,
        "host:2:fp00000002": 6000,
        "x": 7,
    }
    assert len(again) == 1001


def test_a_fork_reads_its_base_only_while_no_adopt_moves_a_mark(tmp_path: Path) -> None:
    """adopt() pops a mark and puts it back at the end (last-seen order) under the base's lock:
    a fork's keep_mask read between the two would take a resent line's source as unknown and
    keep the line twice. So the fork reads under that lock: held here as adopt() holds it."""
    state = OffsetState(tmp_path / OFFSETS_NAME)
    _advance(state, {"a": 5})
    fork = state.fork()
    masks: list[list[bool]] = []

    def read() -> None:
        masks.append(fork.keep_mask(pa.array(["a"]), pa.array([5], pa.int64())).to_pylist())

    with state._lock:
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and masks == []  # waits for the base's lock
    reader.join(5)
    assert masks == [[False]]  # offset 5 is stored already: a resend, dropped


def test_a_fork_is_not_saved_and_adopts_only_its_own(tmp_path: Path) -> None:
    state = OffsetState(tmp_path / OFFSETS_NAME)
    other = OffsetState(tmp_path / "other.json")
    with pytest.raises(ValueError):
        state.fork().save()
    with pytest.raises(ValueError):
        state.adopt(other.fork())


def test_an_unreadable_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    path.write_text("{not json")
    with pytest.raises(OSError, match=r"offsets\.json is unreadable"):
        OffsetState(path).load()


@pytest.mark.integration
def test_the_aggregator_journals_each_flush_and_folds_the_journal_at_a_clean_stop(
    tmp_path: Path,
) -> None:
    """Flushes append to offsets.journal; SIGTERM leaves one offsets.json; the next run loads
    it and still drops a resent line."""

    def send(agg: AggregatorProc, offsets: list[int], chunk: str) -> None:
        entries = [
            [int(time.time()), record(f"line {o}", source_id="host:1:fp", offset=o)]
            for o in offsets
        ]
        with agg.connect() as sock:
            sock.sendall(wire.pack(["logq.app", entries, {"chunk": chunk}]))
            assert read_acks(sock, 1) == [chunk]

    agg = start_aggregator(tmp_path)
    snapshot = agg.buffer_dir / OFFSETS_NAME
    journal = agg.buffer_dir / OFFSETS_JOURNAL_NAME
    try:
        send(agg, [10, 20, 30], "c1")
        wait_rows(agg.warehouse, "container_logs", 3, agg)
        wait_until(lambda: journal.exists() and journal.stat().st_size > 0, 60, "a journal")
        assert not snapshot.exists()  # a flush does not rewrite the whole map
    finally:
        assert agg.stop() == 0, agg.log_text()
    assert {k: v[0] for k, v in json.loads(snapshot.read_text()).items()} == {"host:1:fp": 30}
    assert journal.stat().st_size == 0

    agg = start_aggregator(tmp_path)
    try:
        send(agg, [20, 40], "c2")  # 20 is a resend
        table = wait_rows(agg.warehouse, "container_logs", 4, agg)
    finally:
        assert agg.stop() == 0, agg.log_text()
    table = read_table(agg.warehouse, "container_logs")
    assert sorted(table["message"].to_pylist()) == ["line 10", "line 20", "line 30", "line 40"]


def test_keep_mask_keeps_a_known_source_s_row_without_offset(tmp_path: Path) -> None:
    """A row of a source with a mark but a NULL offset cannot be a resent line: kept, and
    the keyed rows of that source still compared with the mark (one hash of the sources)."""
    state = OffsetState(tmp_path / OFFSETS_NAME)
    _advance(state, {"a": 10})
    sources = pa.array(["a", "a", "a", None, "b", "a"])
    offsets = pa.array([None, 5, 11, 3, None, 11], pa.int64())
    assert state.keep_mask(sources, offsets).to_pylist() == [True, False, True, True, True, False]


def test_keep_mask_of_a_dictionary_column_is_that_of_its_values(tmp_path: Path) -> None:
    """A dictionary holding a source twice (as concatenated batches' can) is one source: its
    repeated (source, offset) is dropped as in the plain column."""
    state = OffsetState(tmp_path / OFFSETS_NAME)
    _advance(state, {"b": 3})
    indices = pa.array([0, 1, 2, 3], pa.int32())
    sources = pa.DictionaryArray.from_arrays(indices, pa.array(["a", "a", "b", "b"]))
    offsets = pa.array([5, 5, 1, 4], pa.int64())
    plain = state.keep_mask(sources.dictionary_decode(), offsets).to_pylist()
    assert plain == [True, False, False, True]
    assert state.keep_mask(sources, offsets).to_pylist() == plain


# --- the bound on the sources remembered ----------------------------------------------------


def test_past_the_bound_the_least_recently_seen_sources_are_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: nothing but the 14-day retention bounded the sources: 20,000 made-up ids in 20
    messages were all kept, in memory and in offsets.json. Past the bound the least recently
    seen are forgotten, down to a tenth below it, counted and said (rate-limited)."""
    path = tmp_path / OFFSETS_NAME
    now = time.time()
    path.write_text(json.dumps({f"old-{i}": [10, now - 100 + i] for i in range(6)}))
    with caplog.at_level("WARNING", logger="logq.aggregator.dedup"):
        state = OffsetState(path, max_sources=5, evict_to=3).load()
        assert sorted(_marks(state, [f"old-{i}" for i in range(6)]).items()) == [
            *[(f"old-{i}", None) for i in range(3)],
            *[(f"old-{i}", 10) for i in range(3, 6)],
        ]
        assert state.evicted == 3
        _advance(state, {"new-a": 5, "new-b": 5})  # 5 sources: within the bound
        assert len(state) == 5 and state.evicted == 3
        fork = state.fork()
        _advance(fork, {"new-c": 7})
        state.adopt(fork)  # 6: the three seen least recently go
        assert len(state) == 3 and state.evicted == 6
        assert sorted(_marks(state, ["new-a", "new-b", "new-c"]).values()) == [5, 5, 7]
    said = [r.getMessage() for r in caplog.records if "sources for the offset dedup" in r.message]
    assert len(said) == 1 and said[0].startswith("remembering over 5 sources"), said
    # A forgotten source is new again: its lines are kept (a resend may be stored twice).
    mask = state.keep_mask(pa.array(["old-5"]), pa.array([10], pa.int64()))
    assert mask.to_pylist() == [True]
    state.close()
    assert sorted(json.loads(path.read_text())) == ["new-a", "new-b", "new-c"]


def test_made_up_sources_by_the_thousand_stay_within_the_bound(tmp_path: Path) -> None:
    path = tmp_path / OFFSETS_NAME
    state = OffsetState(path, max_sources=1000, evict_to=900).load()
    for part in range(20):
        _advance(state, {f"made-up-{part}-{i}": 1 for i in range(1000)})
        state.save()
        assert len(state) <= 1000
    state.close()
    assert len(json.loads(path.read_text())) <= 1000
    assert len(OffsetState(path, max_sources=1000, evict_to=900).load()) <= 1000


@pytest.mark.parametrize("stop", ["save", "close"])
def test_sources_forgotten_at_load_leave_offsets_json_at_the_next_save(
    tmp_path: Path, stop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: sources forgotten for the bound stayed in offsets.json until the journal
    outgrew it (an idle aggregator's clean stop did not rewrite it): every start forgot them
    again, counted them again and warned again. Now the next save, or the stop, writes the
    snapshot without them."""
    path = tmp_path / OFFSETS_NAME
    now = time.time()
    path.write_text(json.dumps({f"old-{i}": [10, now - 100 + i] for i in range(6)}))
    state = OffsetState(path, max_sources=5, evict_to=3).load()
    assert state.evicted == 3
    if stop == "save":
        _advance(state, {"old-5": 11})
        state.save()
    else:
        state.close()
    assert sorted(json.loads(path.read_text())) == ["old-3", "old-4", "old-5"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="logq.aggregator.dedup"):
        again = OffsetState(path, max_sources=5, evict_to=3).load()
    assert again.evicted == 0 and len(again) == 3
    assert not [r for r in caplog.records if "sources for the offset dedup" in r.message]
    assert again.get("old-5") == (11 if stop == "save" else 10)


def test_the_map_is_kept_and_saved_in_the_order_the_sources_were_last_seen(
    tmp_path: Path,
) -> None:
    """Defect: forgetting sources for the bound scanned and partitioned every mark under the
    lock (~0.15 s for 1,000,000, stalling every connection). The map is now kept in the order
    the sources were last seen, so the first ones are forgotten: an ``offsets.json`` in another
    order (an earlier version wrote first-seen order) is put in order at load, a raised mark
    moves to the end, and the snapshot is written in that order for the next start."""
    path = tmp_path / OFFSETS_NAME
    now = time.time()
    hour = 3600
    path.write_text(
        json.dumps({"a": [1, now - hour], "b": [1, now - 3 * hour], "c": [1, now - 2 * hour]})
    )
    state = OffsetState(path).load()
    _advance(state, {"b": 2})  # seen last now
    state.save()  # in the journal
    replayed = OffsetState(path, max_sources=2, evict_to=1).load()
    assert _marks(replayed, ["a", "b", "c"]) == {"a": None, "b": 2, "c": None}
    state.close()
    assert list(json.loads(path.read_text())) == ["c", "a", "b"]
    bounded = OffsetState(path, max_sources=2, evict_to=2).load()
    assert _marks(bounded, ["a", "b", "c"]) == {"a": 1, "b": 2, "c": None}
