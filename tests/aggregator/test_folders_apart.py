"""``--buffer-dir`` and a local ``--warehouse`` in one another (aggregator/folders_apart.py).

Tried by hand before the check: a warehouse at ``<buffer-dir>/spill`` lost every flushed row
(each flush empties that folder, its Parquet objects with it) while the stop said "every
acknowledged record is in <warehouse>"; a warehouse that is the buffer dir, or inside it, goes
with the buffer dir when that is deleted after a drain or as a refused copy (docs/operations.md).
Both are refused at start (exit 2: the command must change). A buffer dir inside the warehouse
breaks nothing (``logq``, compaction and the replay each read their own names only) but travels
with the warehouse: a WARNING.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.aggregator.helpers import start_aggregator
from tests.support.procs import console_script


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script("logq-aggregator")), *args, "--listen=127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("where", ["same", "spill", "inside", "linked"])
def test_a_warehouse_in_the_buffer_dir_is_refused_at_start(
    tmp_path: Path, subprocess_env: dict[str, str], where: str
) -> None:
    buffer = tmp_path / "buffer"
    warehouse = {
        "same": buffer,
        "spill": buffer / "spill",
        "inside": buffer / "warehouse",
        "linked": tmp_path / "warehouse-link",  # a link to the buffer dir: the same folder
    }[where]
    if where == "linked":
        buffer.mkdir()
        warehouse.symlink_to(buffer)
    done = _serve(subprocess_env, f"--warehouse={warehouse}", f"--buffer-dir={buffer}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logq-aggregator: --warehouse {warehouse} "), last
    assert f"--buffer-dir {buffer}" in last and f"{buffer / 'spill'}" in last, last
    assert "give each a folder of its own" in last, last
    assert where == "linked" or not buffer.exists()  # refused before anything was made


def test_drain_into_a_warehouse_in_the_buffer_dir_is_refused(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    (buffer / "node-id").write_text("0123456789ab\n")
    done = _serve(
        subprocess_env, "drain", f"--warehouse={buffer / 'spill'}", f"--buffer-dir={buffer}"
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "give each a folder of its own" in done.stderr
    assert sorted(p.name for p in buffer.iterdir()) == ["node-id"]


def test_a_buffer_dir_inside_the_warehouse_is_warned_about(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()  # where the helper writes the log too
    proc = start_aggregator(tmp_path, warehouse=str(warehouse), name="warehouse/agg")
    assert proc.stop() == 0
    text = proc.log_text()
    buffer = warehouse / "agg-buffer"
    said = f'level=warning logger=logq.aggregator msg="--buffer-dir {buffer} is inside'
    assert said in text, text
    assert f"the local --warehouse {warehouse}" in text


def test_folders_side_by_side_start_without_a_word(tmp_path: Path) -> None:
    """``warehouse`` and ``warehouse-buffer``: one name the start of the other, not inside it."""
    proc = start_aggregator(tmp_path, warehouse=str(tmp_path / "agg"), name="agg")
    assert proc.stop() == 0
    assert "inside the local --warehouse" not in proc.log_text()
