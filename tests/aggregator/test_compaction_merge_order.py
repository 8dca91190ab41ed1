"""The k-way merge of :mod:`aggregator.compaction.sorted_rows` gives what a stable sort of the
concatenated inputs gives, for any inputs, batch sizes and piece sizes, and its work grows
with the rows, not with the rows times the inputs that overlap."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
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


def _files(folder: Path, spans: list[tuple[int, int]], rows: int) -> list[Path]:
    """Container log files of ``rows`` rows each over ``spans`` (ms in the hour), sorted by
    time, with ties within and across files."""
    folder.mkdir(parents=True)
    start = int(HOUR.timestamp() * 1000)
    rng = np.random.default_rng(11)
    paths = []
    for seq, (lo, hi) in enumerate(spans):
        ms = np.sort(rng.integers(start + lo, start + hi, rows) // 50 * 50)
        table = pa.table(
            {
                "timestamp": pa.array(ms, pa.timestamp("ms", tz="UTC")),
                "host": pa.array([f"host-{seq}"] * rows),
                "container_id": pa.array([f"{seq:064x}"] * rows),
                "container_name": pa.array(["app"] * rows),
                "stream": pa.array(["stdout"] * rows),
                "message": pa.array([f"{seq}-{i}" for i in range(rows)]),
            },
            schema=CONTAINER_LOGS.arrow_schema(),
        )
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


def test_only_as_many_inputs_as_needed_are_merged_in_runs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four files over the same hour with a fan-in of 3: merging the first two first leaves 3
    for the last step, so only those two are decoded twice (before: runs of 3 and of 1, every
    row decoded twice, the lone input re-encoded alone); ties still keep group order."""
    monkeypatch.setattr(runs_mod, "FAN_IN", 3)
    opened: list[str] = []
    batches = merge_mod._batches

    def counted(wh: Any, spec: Any, f: Any, *args: Any) -> Iterator[pa.Table]:
        opened.append(f.name)
        yield from batches(wh, spec, f, *args)

    monkeypatch.setattr(merge_mod, "_batches", counted)
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
