"""``--buffer-dir`` and a local ``--warehouse`` in one another (aggregator/folders_apart.py).

Tried by hand before the check: a warehouse at ``<buffer-dir>/spill`` lost every flushed row
(each flush empties that folder, its Parquet objects with it) while the stop said "every
acknowledged record is in <warehouse>": refused at start (exit 2: the command must change). A
warehouse that is the buffer dir, or elsewhere inside it, works (a deployment set up so keeps
starting after an upgrade) but goes with the buffer dir when that is deleted after a drain or
as a refused copy (docs/operations.md): a WARNING; so does a buffer dir inside the warehouse,
which travels with the warehouse (``logq``, compaction and the replay each read their own names
only).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
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


@pytest.mark.parametrize("where", ["spill", "below-spill"])
def test_a_warehouse_in_the_buffer_dirs_spill_folder_is_refused_at_start(
    tmp_path: Path, subprocess_env: dict[str, str], where: str
) -> None:
    buffer = tmp_path / "buffer"
    warehouse = buffer / "spill" if where == "spill" else buffer / "spill" / "warehouse"
    done = _serve(subprocess_env, f"--warehouse={warehouse}", f"--buffer-dir={buffer}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logq-aggregator: --warehouse {warehouse} "), last
    assert f"--buffer-dir {buffer}" in last and f"{buffer / 'spill'}" in last, last
    assert "give each a folder of its own" in last, last
    assert not buffer.exists()  # refused before anything was made


@pytest.mark.parametrize("where", ["same", "inside", "linked"])
def test_a_warehouse_in_the_buffer_dir_works_with_a_warning(tmp_path: Path, where: str) -> None:
    """The same folder (also through a link) or a sub-folder: the lines sent are stored once,
    also after a restart that replays the buffer, and the start warns of deleting the buffer."""
    buffer = tmp_path / "agg-buffer"  # start_aggregator's buffer dir for name="agg"
    warehouse = {
        "same": buffer,
        "inside": buffer / "warehouse",
        "linked": tmp_path / "warehouse-link",
    }[where]
    if where == "linked":
        buffer.mkdir()
        warehouse.symlink_to(buffer)
    now = time.time_ns()
    entries = [(now + i, record(f"line-{i}")) for i in range(20)]
    message = wire.pack(["logq.recipe", wire.pack_entries(entries), {"chunk": "c0"}])
    agg = start_aggregator(tmp_path, warehouse=str(warehouse), extra=["--flush-interval", "3600"])
    try:
        with agg.connect() as sock:
            sock.sendall(message)
            assert read_acks(sock, 1) == ["c0"]
        agg.kill9()  # acked, not flushed: the restart replays the buffer into the warehouse
        first_log = agg.log_text()
        agg = start_aggregator(tmp_path, warehouse=str(warehouse))
        wait_rows(str(warehouse), "container_logs", 20, agg, timeout=120)
        assert agg.stop() == 0
        table = read_table(str(warehouse), "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == sorted(f"line-{i}" for i in range(20))
    said = "is the same folder as" if where in ("same", "linked") else "is inside"
    assert f"{said} --buffer-dir {buffer}: deleting the buffer dir" in first_log, first_log


def test_drain_into_a_warehouse_in_the_buffer_dir_is_refused(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    (buffer / "node-id").write_text("0123456789ab\n")
    done = _serve(
        subprocess_env, "drain", f"--warehouse={buffer / 'spill'}", f"--buffer-dir={buffer}"
    )  # the spill folder: refused
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
