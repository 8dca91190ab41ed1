"""The aggregator's own Parquet writer and this reader agree on the layout (contract test)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from athena.engines.local import LocalEngine
from athena.schema import ENVOY_ACCESS
from athena.timerange import TimeRange
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, utc

writer = pytest.importorskip("aggregator.writer")


def test_files_from_the_aggregator_writer_query_exactly(tmp_path: Path) -> None:
    frame = access_frame(700, utc(2026, 3, 1, 23, 10), utc(2026, 3, 2, 1, 50), ["a", "b"], seed=21)
    schema = pa.schema([pa.field("service", pa.string()), *ENVOY_ACCESS.arrow_schema()])
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    uri = str(tmp_path / "wh")
    wh = open_warehouse(uri, create=True)
    written = writer.write_partitions(wh, "envoy_access", table, "node-0000000000000001.parquet")
    assert {(w.service, w.dt) for w in written} == {
        (s, d) for s in ("a", "b") for d in ("2026-03-01-23", "2026-03-02-00", "2026-03-02-01")
    }
    engine = LocalEngine(uri)
    r = TimeRange.parse("2026-03-02T00:00:00Z", "2026-03-02T02:00:00Z")
    scopes = {"envoy_access": engine.plan("envoy_access", ["b"], r)}
    res = engine.run(
        'SELECT request_id, "timestamp", response_code, upstream_host, dt FROM envoy_access '
        "ORDER BY request_id",
        {},
        scopes,
    )
    midnight = pd.Timestamp("2026-03-02T00:00:00Z")
    want = frame[(frame["service"] == "b") & (frame["timestamp"] >= midnight)]
    want = want.sort_values("request_id")
    assert [r[0] for r in res.rows] == list(want["request_id"])
    assert [r[1] for r in res.rows] == [t.to_pydatetime() for t in want["timestamp"]]
    assert [r[3] for r in res.rows] == [None if pd.isna(v) else v for v in want["upstream_host"]]
    assert {r[4] for r in res.rows} == {"2026-03-02-00", "2026-03-02-01"}
