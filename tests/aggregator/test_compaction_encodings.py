"""A merge's Parquet settings are decided for all of its inputs, not for its first row group
alone (aggregator/compaction/encodings.py).

The writer takes its settings before the first row group: they were those of the first
(the earliest rows of the partition-hour), and a column whose first rows were unlike the rest
(repeated lines then distinct ones, the reverse, or all null) was encoded badly in every row
group after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.merge as merge_mod
from aggregator.compaction.inputs import _readable
from aggregator.storage import write_options
from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import HOUR

ROWS = 4_000


def _messages(kind: str, rows: int, rng: np.random.Generator) -> list[str | None]:
    if kind == "repeated":  # a few request lines over and over
        lines = [f"GET /api/v1/items/{k} 200 in {k % 7} ms from pool-{k % 3}" for k in range(40)]
        return [lines[i] for i in rng.integers(0, len(lines), rows)]
    if kind == "null":
        return [None] * rows
    return [  # distinct lines: ids and numbers
        f"request {rng.integers(1 << 62):x} user={rng.integers(1 << 40):x} took "
        f"{rng.integers(1000)} ms"
        for _ in range(rows)
    ]


def _inputs(folder: Path, kinds: list[str]) -> list[Path]:
    """One flushed-like file per kind, following each other in the hour, written as a flush
    writes them (:func:`.storage.write_options` of the whole file)."""
    rng = np.random.default_rng(5)
    paths = []
    for seq, kind in enumerate(kinds):
        start = int(HOUR.timestamp() * 1000) + seq * 900_000
        times = np.sort(rng.integers(start, start + 900_000, ROWS))
        table = pa.table(
            {
                "timestamp": pa.array(times, pa.timestamp("ms", tz="UTC")),
                "host": pa.array(["h"] * ROWS),
                "container_id": pa.array([f"{seq:064x}"] * ROWS),
                "container_name": pa.array(["app"] * ROWS),
                "stream": pa.array(["stdout"] * ROWS),
                "message": pa.array(_messages(kind, ROWS, rng), pa.string()),
            },
            schema=CONTAINER_LOGS.arrow_schema(),
        )
        paths.append(folder / f"n-{seq}.parquet")
        pq.write_table(table, paths[-1], **write_options(table))
    return paths


@pytest.mark.parametrize(
    ("first", "rest", "dictionary"),
    [("repeated", "distinct", False), ("distinct", "repeated", True), ("null", "distinct", False)],
)
def test_a_merge_encodes_a_column_as_most_of_its_inputs_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, rest: str, dictionary: bool
) -> None:
    """Four inputs, the first one's ``message`` unlike the other three's: the output's row
    groups (the first one holds the first input's rows) all encode ``message`` as the three
    do, and the output is smaller than with the first row group's settings."""
    monkeypatch.setattr(merge_mod, "ROW_GROUP_BYTES", 1)  # a row group per piece
    monkeypatch.setattr(merge_mod, "READ_BYTES", 8 * ROWS * 100)  # a piece: ~an input
    paths = _inputs(tmp_path, [first, rest, rest, rest])
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = tmp_path / "merged.parquet"
    assert merge_mod._merge(wh, CONTAINER_LOGS, group, str(output)) == 4 * ROWS

    merged = pq.ParquetFile(output)
    meta = merged.metadata
    column = meta.schema.names.index("message")
    chunks = [meta.row_group(i).column(column) for i in range(meta.num_row_groups)]
    assert meta.num_row_groups > 1 and {c.has_dictionary_page for c in chunks} == {dictionary}

    # The same row groups written with the first one's settings (the writer's before).
    groups = [merged.read_row_group(i) for i in range(meta.num_row_groups)]
    before = tmp_path / "first-row-group.parquet"
    options = write_options(groups[0])
    options.pop("row_group_size")
    with pq.ParquetWriter(before, groups[0].schema, **options) as writer:
        for table in groups:
            writer.write_table(table, row_group_size=table.num_rows)
    assert output.stat().st_size < before.stat().st_size, (
        output.stat().st_size,
        before.stat().st_size,
    )


def test_small_inputs_do_not_vote_integers_into_a_dictionary(tmp_path: Path) -> None:
    """Flushed objects of a few thousand rows dictionary-encode every integer column (at most
    ``INT_DICTIONARY_MAX`` distinct values: :func:`.storage._int_encoding`), whatever it holds:
    those choices are no vote. Response sizes distinct across the hour stay PLAIN in the
    merge, as its first row group decides; status codes keep their dictionary."""
    rng = np.random.default_rng(7)
    rows, start = 1_000, int(HOUR.timestamp() * 1000)
    paths = []
    for seq in range(20):
        times = np.sort(rng.integers(start + seq * 60_000, start + (seq + 1) * 60_000, rows))
        columns: dict[str, pa.Array] = {}
        for f in ENVOY_ACCESS.arrow_schema():
            if f.name == "timestamp":
                columns[f.name] = pa.array(times, f.type)
            elif f.name == "bytes_sent":
                columns[f.name] = pa.array(rng.integers(0, 50_000_000, rows), f.type)
            elif f.name == "response_code":
                columns[f.name] = pa.array(rng.choice([200, 404, 503], rows), f.type)
            elif pa.types.is_integer(f.type):
                columns[f.name] = pa.nulls(rows, f.type)
            else:
                columns[f.name] = pa.array(rng.choice(["a", "b"], rows).tolist(), f.type)
        table = pa.table(columns, schema=ENVOY_ACCESS.arrow_schema())
        paths.append(tmp_path / f"n-{seq:02d}.parquet")
        pq.write_table(table, paths[-1], **write_options(table))
    assert (
        pq.ParquetFile(paths[0])
        .metadata.row_group(0)
        .column(ENVOY_ACCESS.arrow_schema().names.index("bytes_sent"))
        .has_dictionary_page
    )  # (each input's own choice: a dictionary)
    wh = open_warehouse(str(tmp_path))
    group = _readable(wh, [wh.fs.get_file_info(str(p)) for p in paths])
    output = tmp_path / "merged.parquet"
    assert merge_mod._merge(wh, ENVOY_ACCESS, group, str(output)) == 20 * rows

    meta = pq.ParquetFile(output).metadata
    names = meta.schema.names
    assert meta.num_row_groups == 1
    merged = meta.row_group(0)
    assert not merged.column(names.index("bytes_sent")).has_dictionary_page
    assert merged.column(names.index("response_code")).has_dictionary_page
