"""Compaction and text columns stored as Parquet BINARY without the UTF8 annotation (Spark,
Hive, Impala and older writers; pyarrow reads them as ``binary``).

Athena reads such a column as varchar; compaction left the file out of its merges as foreign
("holds column message as binary where the table has string"), at every pass. Now it is merged
and its text written as strings, so the merged file is a logq one. A file whose bytes are not
UTF-8 text is left out, in place and named, before any merge: the merge's cast would fail on
them, and the partition's merge with it, at every pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregator.compaction import inputs
from aggregator.compaction.passes import compact_warehouse
from athena.schema import table as table_spec
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import LATER, flush_files
from tests.aggregator.test_compaction_foreign import ADVICE, add_file, folder_of, messages


def as_binary(last: bytes | None = None) -> Callable[[pa.Table], pa.Table]:
    """The rows with ``message`` and ``stream`` as raw bytes; with ``last``, the last message
    is those bytes."""

    def change(t: pa.Table) -> pa.Table:
        for name in ("message", "stream"):
            values = t[name].cast(pa.binary())
            if name == "message" and last is not None:
                values = pa.array([*values.to_pylist()[:-1], last], pa.binary())
            t = t.set_column(t.schema.get_field_index(name), name, values)
        return t

    return change


@pytest.fixture(params=["whole", "opened"])
def read_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Inputs read whole with their footer (small files), or opened when merged (larger)."""
    if request.param == "opened":
        monkeypatch.setattr(inputs, "WHOLE_READ_BYTES", 0)
    return str(request.param)


def test_binary_text_is_merged_as_strings(tmp_path: Path, read_as: str) -> None:
    """Its rows are merged, row for row (the copy's messages twice), and the merged file has
    the table's types: it is no foreign file afterwards."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=20)
    folder = folder_of(uri)
    truth = messages(folder)
    odd = add_file(folder, "z-spark.parquet", as_binary())
    assert pq.read_schema(odd).field("message").type == pa.binary()
    copied = pq.read_table(odd)["message"].to_pylist()

    wh = open_warehouse(uri)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 7  # 6 flush files and the copy
    [merged] = folder.glob("*.parquet")
    assert merged.name.startswith("c-")
    schema = pq.read_schema(merged)
    assert schema.remove_metadata() == table_spec("container_logs").arrow_schema()
    want = truth.copy()
    want.update(m.decode() for m in copied)
    assert messages(folder) == want
    assert pq.read_metadata(merged).num_rows == sum(want.values())


def test_binary_text_not_utf8_is_left_out_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, read_as: str
) -> None:
    """One message of bytes that are no UTF-8 text: the file stays as it was, named in an
    ERROR; the rest of the partition is merged, no row lost. A binary file of UTF-8 text
    beside it is merged."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=20)
    folder = folder_of(uri)
    truth = messages(folder)
    good = add_file(folder, "a-spark.parquet", as_binary())
    added = [m.decode() for m in pq.read_table(good)["message"].to_pylist()]
    odd = add_file(folder, "z-spark.parquet", as_binary(b"caf\xe9"))
    data = odd.read_bytes()

    caplog.set_level(logging.INFO, "logq.aggregator.compaction")
    wh = open_warehouse(uri)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 7  # 6 flush files and good
    named = [r for r in caplog.records if str(odd) in r.getMessage()]
    assert len(named) == 1 and named[0].levelno == logging.ERROR, caplog.text
    assert (
        named[0]
        .getMessage()
        .startswith(
            f"the Parquet file {odd} holds column message as binary with bytes that are not UTF-8 "
            f"text: {ADVICE} with that column as UTF-8 text; compaction merges the rest"
        )
    ), named[0].getMessage()
    assert odd.read_bytes() == data
    assert sorted(p.name[:2] for p in folder.glob("*.parquet")) == ["c-", "z-"]
    want = truth.copy()
    want.update(added)
    assert messages(folder, skip=odd) == want  # no row lost, none twice
