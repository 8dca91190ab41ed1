"""Freshness with rows stamped ahead of the clock: the newest row at or before a time."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from athena.freshness import newest_data, newest_data_quick, newest_in
from athena.partitions import plan
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, utc, write_frame

NOW = utc(2026, 3, 1, 10, 30)


def _warehouse(tmp_path: Path) -> tuple[str, datetime]:
    """One service: rows up to 10:20 and, in the same hour's file, rows at 10:50 (ahead of
    NOW), and rows in a later hour (12:00). Returns the URI and the newest row before NOW."""
    uri = str(tmp_path / "wh")
    frame = access_frame(50, utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 20), ["svc"], seed=1)
    ahead = access_frame(5, utc(2026, 3, 1, 10, 50), utc(2026, 3, 1, 10, 51), ["svc"], seed=2)
    later = access_frame(5, utc(2026, 3, 1, 12, 0), utc(2026, 3, 1, 12, 1), ["svc"], seed=3)
    write_frame(uri, "envoy_access", pd.concat([frame, ahead, later], ignore_index=True))
    return uri, frame["timestamp"].max().to_pydatetime()


def test_rows_after_the_bound_are_not_counted(tmp_path: Path) -> None:
    """Footers give a file's largest time only: a file whose largest is ahead has its column
    read, and the hours after the bound are not read at all."""
    uri, newest_ok = _warehouse(tmp_path)
    wh = open_warehouse(uri)
    parts = plan(wh, "envoy_access", ["svc"], None)
    assert newest_in(wh, parts).hour == 12  # unbounded: the newest row, ahead or not
    assert newest_in(wh, parts, NOW) == newest_ok
    assert newest_data_quick(wh, "envoy_access", ["svc"], NOW) == newest_ok
    assert newest_data(wh, "envoy_access", ["svc"], NOW) == newest_ok
    assert newest_in(wh, parts, utc(2026, 3, 1, 9, 0)) is None
    assert newest_data_quick(wh, "envoy_access", ["svc"], NOW + timedelta(hours=5)).hour == 12
