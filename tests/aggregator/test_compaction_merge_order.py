"""The k-way merge of :mod:`aggregator.compaction.sorted_rows` gives what a stable sort of the
concatenated inputs gives, for any inputs, batch sizes and piece sizes, and its work grows
with the rows, not with the rows times the inputs that overlap."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aggregator.compaction.inputs as inputs_mod
import aggregator.compaction.merge as merge_mod
import aggregator.compaction.runs as runs_mod
from aggregator.compaction import sorted_rows as sorted_rows_mod
from aggregator.compaction.inputs import _readable
from aggregator.compaction.runs import open_at_once
from aggregator.compaction.sorted_rows import _Source, sorted_rows
from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import HOUR

LOWEST = int(np.iinfo(np.int64).min)


def _input(seq: int, times: list[int | None]) -> pa.Table:
    """An input as a flush file is: sorted by time, null times last (as ``sort_by`` puts them)."""
    table = pa.table(
        {
            "timestamp": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "message": pa.array([f"{seq}-{i}" for i in range(len(times))], pa.string()),
        }
    )
    return table.sort_by("timestamp")


def _source(seq: int, table: pa.Table, batch: int, exact_bound: bool) -> _Source:
    def batches() -> Iterator[pa.Table]:
        for start in range(0, table.num_rows, batch):
            yield table.slice(start, batch)

    first = pa.compute.min(table["timestamp"]).cast(pa.int64()).as_py()
    # A footer's first timestamp is a lower bound (a millisecond less), or none at all.
    bound = first - 1 if exact_bound and first is not None else LOWEST
    return _Source(str(seq), bound, batches)


#: Times from a narrow range (ties within and across inputs and batches), some null.
TIMES = st.lists(st.one_of(st.integers(0, 30), st.none()), max_size=40)
INPUTS = st.lists(
    st.tuples(TIMES, st.integers(1, 9), st.booleans(), st.booleans()), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(inputs=INPUTS, piece_bytes=st.integers(1, 3000))
def test_the_merge_is_a_stable_sort_of_the_concatenated_inputs(
    inputs: list[tuple[list[int | None], int, bool, bool]], piece_bytes: int
) -> None:
    """Sorted inputs: exactly the rows and order of ``concat_tables(inputs).sort_by("timestamp")``
    (ties in group order, null times last), whatever the batches and the pieces. Unsorted ones
    (a file from elsewhere): every row exactly once."""
    tables, sources = [], []
    any_unsorted = False
    for seq, (times, batch, exact_bound, shuffle) in enumerate(inputs):
        table = _input(seq, times)
        if shuffle and table.num_rows > 1:
            table = table.take(pa.array(np.random.default_rng(seq).permutation(table.num_rows)))
            any_unsorted = True
        tables.append(table)
        sources.append(_source(seq, table, batch, exact_bound and not shuffle))
    pieces = list(sorted_rows(sources, piece_bytes))
    merged = pa.concat_tables([tables[0].slice(0, 0), *pieces])
    expected = pa.concat_tables(tables).sort_by("timestamp")
    if not any_unsorted:
        assert merged.equals(expected)
    else:
        assert sorted(merged["message"].to_pylist()) == sorted(expected["message"].to_pylist())
        for piece in pieces:  # each piece is sorted: the output is sorted in runs
            ms = piece["timestamp"].cast(pa.int64()).fill_null(np.iinfo(np.int64).max)
            assert ms.to_numpy().tolist() == sorted(ms.to_numpy().tolist())


def test_many_overlapping_inputs_give_few_pieces_and_touch_only_the_frontier(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """300 inputs over the same span, read 4 rows a batch: the rows go out in pieces of about
    the piece size, not a piece of a few rows per step, and a step takes rows only from heads
    that have some before the frontier (before: every live input, every step: ~4,500 steps of
    300 inputs)."""
    rng = np.random.default_rng(5)
    tables = [_input(seq, sorted(rng.integers(0, 100_000, 60).tolist())) for seq in range(300)]
    calls = 0
    take_before = _Source.take_before

    def counted(self: _Source, frontier: float) -> pa.Table | None:
        nonlocal calls
        calls += 1
        return take_before(self, frontier)

    monkeypatch.setattr(sorted_rows_mod._Source, "take_before", counted)
    sources = [_source(seq, t, 4, True) for seq, t in enumerate(tables)]
    total = sum(t.nbytes for t in tables)
    caplog.set_level(logging.INFO)
    pieces = list(sorted_rows(sources, total // 10))
    assert pa.concat_tables(pieces).equals(pa.concat_tables(tables).sort_by("timestamp"))
    batches = 300 * 60 // 4
    # A piece before each input is opened, and one per tenth of the rows read after that.
    assert len(pieces) <= 300 + 10 + 1, len(pieces)
    # Each batch's rows go out in a few slices: the take_befores are a few per batch.
    assert calls <= 4 * batches, calls
    assert "not sorted" not in caplog.text


def _file_table(seq: int, times: pa.Array) -> pa.Table:
    """The rows of input file ``seq``: one per time, messages ``"<seq>-<i>"``."""
    rows = len(times)
    return pa.table(
        {
            "timestamp": times,
            "host": pa.array([f"host-{seq}"] * rows),
            "container_id": pa.array([f"{seq:064x}"] * rows),
            "container_name": pa.array(["app"] * rows),
            "stream": pa.array(["stdout"] * rows),
            "message": pa.array([f"{seq}-{i}" for i in range(rows)]),
        },
        schema=CONTAINER_LOGS.arrow_schema(),
    )


def _files(folder: Path, spans: list[tuple[int, int]], rows: int) -> list[Path]:
    """Container log files of ``rows`` rows each over ``spans`` (ms in the hour), sorted by
    time, with ties within and across files."""
    folder.mkdir(parents=True)
    start = int(HOUR.timestamp() * 1000)
    rng = np.random.default_rng(11)
    paths = []
    for seq, (lo, hi) in enumerate(spans):
        ms = np.sort(rng.integers(start + lo, start + hi, rows) // 50 * 50)
        table = _file_table(seq, pa.array(ms, pa.timestamp("ms", tz="UTC")))
        paths.append(folder / f"n-{seq:04d}.parquet")
        pq.write_table(table, paths[-1], **write_options(table))
    return paths


def test_inputs_that_overlap_more_than_the_fan_in_are_merged_in_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten files over the same hour with a fan-in of 3: at most 3 read at once (each open
    reader holds its decoded column chunks: a thousand such flush files held ~750 MiB), and
    the output is still exactly the stable sort of the group; ten files one after another in
    time are merged in one step."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 64 << 10)
    reading = most = 0

    def counted(*args: Any) -> Iterator[pa.Table]:
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        try:
            yield from batches(*args)
        finally:
            reading -= 1

    batches = merge_mod._batches
    monkeypatch.setattr(merge_mod, "_batches", counted)
    wh = open_warehouse(str(tmp_path))
    hour = 3_600_000
    for kind, spans in (
        ("overlapping", [(0, hour)] * 10),
        ("sequential", [(k * hour // 10, (k + 1) * hour // 10) for k in range(10)]),
    ):
        paths = _files(tmp_path / kind, spans, 500)
        group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
        assert open_at_once(group) == (10 if kind == "overlapping" else 1)
        most = 0
        output = str(tmp_path / f"c-{kind}.parquet")
        assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 10 * 500
        expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
        assert pq.read_table(output).equals(expected), kind
        assert most <= (3 if kind == "overlapping" else 2), (kind, most)


def _count_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the inputs the merges read from here on (runs included), in the order
    they are opened."""
    opened: list[str] = []
    batches = merge_mod._batches

    def counted(wh: Any, spec: Any, f: Any, *args: Any) -> Iterator[pa.Table]:
        opened.append(f.name)
        yield from batches(wh, spec, f, *args)

    monkeypatch.setattr(merge_mod, "_batches", counted)
    return opened


def test_only_as_many_inputs_as_needed_are_merged_in_runs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four files over the same hour with a fan-in of 3: merging the first two first leaves 3
    for the last step, so only those two are decoded twice (before: runs of 3 and of 1, every
    row decoded twice, the lone input re-encoded alone); ties still keep group order."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    opened = _count_opened(monkeypatch)
    fetched: list[str] = []
    fetch_whole = inputs_mod._fetch_whole

    def fetch(wh: Any, path: str) -> pa.Buffer:
        fetched.append(path)
        return fetch_whole(wh, path)

    monkeypatch.setattr(inputs_mod, "_fetch_whole", fetch)
    wh = open_warehouse(str(tmp_path))
    paths = _files(tmp_path / "p", [(0, 3_600_000)] * 4, 300)
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    group = [dataclasses.replace(f, data=None) for f in group]  # (fetched when merged)
    fetched.clear()
    assert runs_mod.plan_runs(group) == [[0, 1], [2], [3]]
    output = str(tmp_path / "c-out.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 4 * 300
    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    assert pq.read_table(output).equals(expected)
    names = [f.name for f in group]
    assert sorted(opened) == sorted([*names, f"{names[0]}..{names[1]}"]), opened
    # The two read in the last step only are fetched for it, not ahead of the first (once).
    assert sorted(fetched) == sorted(f.path for f in group), fetched


def test_a_merge_in_runs_reserves_the_memory_of_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs of a group whose inputs overlap more than the fan-in are kept in memory (about
    their inputs' size): the merge's reservation in the pass's memory budget counts them, so
    that four such merges at once do not pass the budget by four groups' size unseen."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    wh = open_warehouse(str(tmp_path))
    hour = 3_600_000
    for kind, spans in (
        ("overlapping", [(0, hour)] * 4),
        ("sequential", [(k * hour // 4, (k + 1) * hour // 4) for k in range(4)]),
    ):
        paths = _files(tmp_path / kind, spans, 300)
        group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
        extra = group[0].size + group[1].size if kind == "overlapping" else 0
        assert merge_mod._memory_cost(group) == merge_mod.MERGE_BYTES + extra, kind


def _merge_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spans: list[tuple[int, int]], rows: int
) -> tuple[list[inputs_mod.Input], list[str]]:
    """Merge files over ``spans`` (in group order); check the output is the stable sort of
    the group; return the group and the names of the inputs read (runs included)."""
    opened = _count_opened(monkeypatch)
    wh = open_warehouse(str(tmp_path))
    paths = _files(tmp_path / "p", spans, rows)
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = str(tmp_path / "c-out.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == len(spans) * rows
    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    assert pq.read_table(output).equals(expected)
    return group, opened


def test_a_mostly_sequential_group_merges_first_only_the_inputs_that_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight files one after another in time and then four late ones over the whole hour, with
    a fan-in of 3: at most 5 are open at once, so 3 of the late ones are merged first and
    every other input is read once (before: the group counted 12 inputs, and all 12 were
    merged in runs first, every row decoded twice); ties keep group order."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    hour = 3_600_000
    spans = [(k * hour // 8, (k + 1) * hour // 8) for k in range(8)] + [(0, hour)] * 4
    group, opened = _merge_counting(tmp_path, monkeypatch, spans, 200)
    assert open_at_once(group) == 5
    runs = [r for r in runs_mod.plan_runs(group) if len(r) > 1]
    assert len(runs) == 1 and len(runs[0]) == 3 and set(runs[0]) <= {8, 9, 10, 11}, runs
    names = [f.name for f in group]
    # Each input read once; the rows of the run's 3 read again from it, no other's.
    assert sorted(opened) == sorted([*names, f"{names[runs[0][0]]}..{names[runs[0][-1]]}"])


@pytest.mark.parametrize(
    "spans",
    [
        # most open at once from 1.6 M ms on: the 1st and the last three, but a run of the
        # 1st with the 3rd may not skip the 2nd, which shares times with the 3rd (the 2nd's
        # tied rows would go after the 3rd's)
        [(0, 3_600_000), (1_000_000, 1_200_000), (1_000_000, 3_600_000)]
        + [(1_600_000, 3_600_000)] * 2,
        # late files between sequential ones (three aggregators' flush files)
        [
            *[(k * 600_000, (k + 1) * 600_000) for k in range(2)],
            *[(0, 3_600_000)] * 2,
            *[(k * 600_000, (k + 1) * 600_000) for k in range(2, 4)],
            *[(0, 3_600_000)] * 2,
            *[(k * 600_000, (k + 1) * 600_000) for k in range(4, 6)],
            *[(0, 3_600_000)] * 2,
        ],
    ],
    ids=["overlapping-between", "three-nodes"],
)
def test_runs_of_inputs_that_overlap_keep_ties_in_group_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spans: list[tuple[int, int]]
) -> None:
    """Whatever inputs the runs take (some skip inputs between them in group order), the
    output is exactly the stable sort of the group (rows every 50 ms: ties across files),
    and at most a fan-in of 2 inputs is read at once."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 2)
    group, _ = _merge_counting(tmp_path, monkeypatch, spans, 1000)
    assert len(runs_mod.plan_runs(group)) > 1


def test_a_merge_in_two_rounds_of_runs_reserves_what_both_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """27 files over the same hour with a fan-in of 3: 9 runs of 3, then 3 runs of 3 of
    those (past about ``FAN_IN ** 2`` inputs), built while the first round's runs are still
    in memory. The merge's reservation covers the most bytes of runs alive at once (before:
    the first round's only), and a second-round run's members are dropped once it is built:
    at most the 9 first-round runs and one being built are alive at once (before: all 9 and
    the 3 second-round ones at the end, which the reservation does not count)."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    alive: list[tuple[weakref.ref[pa.Buffer], int]] = []
    runs_alive: list[int] = []
    most = 0
    merge_run = merge_mod.merge_run

    def counted(*args: Any) -> inputs_mod.Input | None:
        nonlocal most
        run = merge_run(*args)
        assert run is not None and run.data is not None
        alive.append((weakref.ref(run.data), run.size))
        most = max(most, sum(size for ref, size in alive if ref() is not None))
        runs_alive.append(sum(ref() is not None for ref, _ in alive))
        return run

    monkeypatch.setattr(merge_mod, "merge_run", counted)
    wh = open_warehouse(str(tmp_path))
    paths = _files(tmp_path / "p", [(0, 3_600_000)] * 27, 200)
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = str(tmp_path / "c-out.parquet")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == 27 * 200
    assert len(alive) == 9 + 3, "two rounds of runs, three runs in the second"
    assert max(runs_alive) == 9 + 1, runs_alive
    assert most <= merge_mod._memory_cost(group) - merge_mod.MERGE_BYTES, most


def test_an_unsorted_input_merged_in_a_run_is_named_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file not sorted by time, merged first in a run: the INFO names it once (before: once
    more for the run, which is not sorted either, under a name no file has)."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 8 << 10)  # (batches of a few dozen rows)
    wh = open_warehouse(str(tmp_path))
    paths = _files(tmp_path / "p", [(0, 3_600_000)] * 4, 200)
    table = pq.read_table(paths[0])
    table = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    pq.write_table(table, paths[0], **write_options(table))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    assert [r for r in runs_mod.plan_runs(group) if len(r) > 1] == [[0, 1]]
    caplog.set_level(logging.INFO, logger="logq.aggregator.compaction")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, str(tmp_path / "c-out.parquet")) == 800
    named = [r.getMessage() for r in caplog.records if "not sorted by time" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(f"{paths[0]} is not sorted"), named


def test_inputs_that_follow_each_other_are_read_in_batches_of_the_read_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten files one after another in time: one is open at a time (their footers' spans), so
    each is read in batches of the read bytes shared by the inputs open at once, not a tenth
    of them (360 flush files were read ~200 rows a batch: twice the merge's time)."""
    monkeypatch.setattr(merge_mod, "READ_BYTES", 2 << 20)
    shares: list[int] = []
    batches = merge_mod._batches

    def counted(wh: Any, spec: Any, f: Any, fetch: Any, share: int, *args: Any) -> Any:
        shares.append(share)
        return batches(wh, spec, f, fetch, share, *args)

    monkeypatch.setattr(merge_mod, "_batches", counted)
    wh = open_warehouse(str(tmp_path))
    hour = 3_600_000
    paths = _files(tmp_path / "p", [(k * hour // 10, (k + 1) * hour // 10) for k in range(10)], 50)
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, str(tmp_path / "c-out.parquet")) == 500
    assert shares == [(2 << 20) // open_at_once(group)] * 10, shares


#: Spans (in group order) where, with a fan-in of 2, the runs taken at the deepest instants
#: are all that is open at the next deepest one: the planner had no input to take there and
#: raised ValueError (from ``max`` of nothing), which failed the partition's merge every pass.
ONLY_RUNS_OPEN = [(7, 10), (3, 7), (1, 4), (8, 8), (1, 8), (8, 10)]
#: Spans over a few instants: many overlap, touch (a shared instant: a tie) or nest.
SPANS = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 6)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=16,
)


@settings(max_examples=400, deadline=None)
@example(spans=ONLY_RUNS_OPEN, fan_in=2)
@given(spans=SPANS, fan_in=st.integers(2, 4))
def test_a_plan_keeps_ties_in_group_order_and_leaves_at_most_the_fan_in(
    spans: list[tuple[int, int]], fan_in: int
) -> None:
    """Whatever the spans: every input in one run; runs of at most the fan-in, in order of
    their first input; no two inputs that share an instant change order (a run takes its
    first input's place: an input it skips must not share one with a later member); and the
    rounds (a run counted over its members' spans) end with at most the fan-in open at once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs_mod, "FAN_IN", fan_in)
        level = [(float(a), float(b)) for a, b in spans]
        for _ in range(len(spans) + 1):
            runs = runs_mod.plan_spans(level)
            assert sorted(i for r in runs for i in r) == list(range(len(level))), runs
            if len(runs) == 1:
                break
            assert all(r == sorted(r) and len(r) <= fan_in for r in runs), runs
            assert [r[0] for r in runs] == sorted(r[0] for r in runs), runs
            place = {i: r[0] for r in runs for i in r}
            for a, b in itertools.combinations(range(len(level)), 2):
                if place[a] != place[b] and runs_mod._overlaps(level[a], level[b]):
                    assert place[a] < place[b], (a, b, runs)
            level = [(min(level[i][0] for i in r), max(level[i][1] for i in r)) for r in runs]
        else:
            raise AssertionError(f"no end to the rounds: {runs}")
        assert len(level) <= fan_in or runs_mod._deepest(level)[0] <= fan_in


def _nodes_layout(seed: int) -> list[tuple[int, int]]:
    """Spans (ms in the hour, in group order) of 2-3 aggregators' flush files: each node's
    slices of the hour one after another, then 3-5 late files of its own over all or most of
    it (named after its sequential ones)."""
    rng = np.random.default_rng(seed)
    hour = 3_600_000
    spans: list[tuple[int, int]] = []
    for _ in range(int(rng.integers(2, 4))):
        seq = int(rng.integers(3, 9))
        spans += [(k * hour // seq + 1000, (k + 1) * hour // seq - 1000) for k in range(seq)]
        for _ in range(int(rng.integers(3, 6))):
            lo = int(rng.choice([0, rng.integers(0, hour // 4)]))
            spans.append((lo, int(rng.choice([hour, hour - lo]))))
    return spans


def _files_over(folder: Path, spans: list[tuple[int, int]], seed: int) -> list[Path]:
    """Files over exactly ``spans`` (their first and last rows at its ends), sorted by time,
    with ties within and across files (whole seconds), some with null times (last) and some
    in several row groups."""
    folder.mkdir(parents=True)
    start = int(HOUR.timestamp() * 1000)
    rng = np.random.default_rng(seed)
    paths = []
    for seq, (lo, hi) in enumerate(spans):
        rows = int(rng.integers(2, 60))
        inside = rng.integers(lo, hi + 1, rows - 2) // 1000 * 1000
        ms = np.sort(np.concatenate([[lo, hi], np.clip(inside, lo, hi)])) + start
        times = pa.array(ms, pa.timestamp("ms", tz="UTC"))
        if rng.random() < 0.1:
            times = pa.concat_arrays([times.slice(0, rows - 1), pa.nulls(1, times.type)])
        table = _file_table(seq, times)
        options = write_options(table)
        if rng.random() < 0.3:
            options["row_group_size"] = int(rng.integers(1, rows))
        paths.append(folder / f"n-{seq:04d}.parquet")
        pq.write_table(table, paths[-1], **options)
    return paths


@pytest.mark.parametrize(
    ("fan_in", "spans", "by_overlap"),
    [
        (2, [(a * 300_000, b * 300_000) for a, b in ONLY_RUNS_OPEN], False),
        *((4, _nodes_layout(seed), True) for seed in (14, 62, 68)),
        (4, _nodes_layout(0), False),
    ],
    ids=["only-runs-open", "nodes-14", "nodes-62", "nodes-68", "nodes-0"],
)
def test_a_merge_in_runs_is_the_stable_sort_of_the_group(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fan_in: int,
    spans: list[tuple[int, int]],
    by_overlap: bool,
) -> None:
    """Mostly sequential groups with late files (and the spans that made the planner raise),
    merged with a small fan-in and read a few rows a batch, in runs of the inputs open at the
    deepest instants or (where those cannot do) of consecutive ones: every row once, exactly
    in the order of the stable sort of the group (ties in group order, null times last)."""
    monkeypatch.setattr(runs_mod, "FAN_IN", fan_in)
    monkeypatch.setattr(merge_mod, "READ_BYTES", 16 << 10)
    wh = open_warehouse(str(tmp_path))
    paths = _files_over(tmp_path / "p", spans, len(spans))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    spans_read = [runs_mod._span(f.meta) for f in group]
    assert len(runs_mod.plan_spans(spans_read)) > 1
    assert (runs_mod._overlap_runs(spans_read, fan_in) is not None) == by_overlap
    output = str(tmp_path / "c-out.parquet")
    expected = pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("timestamp")
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, output) == expected.num_rows
    assert pq.read_table(output).equals(expected)


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_footer_bounds_read_times_without_a_zone_as_utc_on_any_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zone: str | None
) -> None:
    """A foreign file's ``timestamp`` without a time zone is merged as UTC (Arrow's cast), so its
    footer bounds must be too: read as this host's local time, on a host west of UTC they came
    out hours late, and the merge could put the file's rows after later ones."""
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        first, last = 1_700_000_000_005, 1_700_000_009_000
        times = pa.array([first, last], pa.timestamp("ms", tz=zone))
        path = tmp_path / "f.parquet"
        pq.write_table(pa.table({"timestamp": times}), path)
        meta = pq.read_metadata(path)
        assert sorted_rows_mod.first_ts(meta) in (first - 1, first - 2)
        assert runs_mod._span(meta) == (float(sorted_rows_mod.first_ts(meta)), last + 1)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
