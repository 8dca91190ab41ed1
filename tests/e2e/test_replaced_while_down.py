"""A log file replaced while the shipper is down, through a real aggregator into the warehouse.

The file keeps its inode and its first line (a fixed banner): to the shipper's checkpoint key it
is the same file, and the aggregator drops records at or below the highest offset it stored for
their ``source_id``. Every line of the new content must be stored once: read from the start
under a new id, not resumed at the old offset, and not dropped as resends.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.shipper.shipping import empty_root
from tests.support.pipeline import run_shipper_once, start_aggregator

pytestmark = pytest.mark.integration

BANNER = "=== worker log ==="


def _log(prefix: str, n: int) -> bytes:
    return "".join([f"{BANNER}\n", *(f"{prefix} line {i}\n" for i in range(1, n + 1))]).encode()


def _messages(warehouse: Path) -> list[str]:
    table = ds.dataset(warehouse / "container_logs", format="parquet", partitioning="hive")
    return table.to_table(columns=["message"]).column("message").to_pylist()


def test_rewritten_file_with_the_same_banner_is_stored_whole(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    log = tmp_path / "logs" / "worker.log"
    log.parent.mkdir()
    log.write_bytes(_log("run1", 100))
    warehouse = tmp_path / "warehouse"
    agg = start_aggregator(str(warehouse), tmp_path, subprocess_env)
    try:
        flags = ("--cri-root", str(empty_root(tmp_path)), "--path", str(log), "--hostname", "h1")
        args = (agg.address, empty_root(tmp_path), tmp_path / "state", subprocess_env, *flags)
        first = run_shipper_once(*args)
        assert first.returncode == 0, first.stderr
        with log.open("r+b") as f:  # while the shipper is down: same inode, same first line
            f.truncate(0)
            f.write(_log("run2", 300))
        second = run_shipper_once(*args)
        assert second.returncode == 0, second.stderr
        assert agg.terminate() == 0, agg.log.read_text()[-3000:]
    finally:
        agg.kill()
    counts = Counter(m.split(" ")[0] for m in _messages(warehouse))
    assert counts == {"run1": 100, "run2": 300, "===": 2}
    assert "file was replaced" in second.stderr and str(log) in second.stderr
