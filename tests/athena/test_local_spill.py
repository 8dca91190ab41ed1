"""Where the local engine's DuckDB spills a query larger than memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from athena.engines import spill as spill_mod
from athena.engines.local import LocalEngine


def test_spills_under_tmpdir_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's default is ``./.tmp``: logq wrote in whatever folder it was started from, and a
    read-only one (``readOnlyRootFilesystem``, a cwd of ``/``) failed such a query with
    "Failed to create directory .tmp"."""
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(spill_root))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read $TMPDIR again
    (tmp_path / "wh").mkdir()
    con = LocalEngine(str(tmp_path / "wh"))._connect()
    try:
        [(spill,)] = con.sql("SELECT current_setting('temp_directory')").fetchall()
    finally:
        con.close()
    assert Path(spill).parent == spill_root and Path(spill).is_dir()
    assert Path(spill).name.startswith(f"logq-duckdb-{os.getpid()}-")


def test_no_writable_temporary_folder_turns_spilling_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only root without a writable /tmp: ``tempfile.gettempdir()`` raises "No usable
    temporary directory found", and every query failed with it, even one that never spills
    (it ran before the spill folder was moved there). Now only spilling is off."""

    def none_usable() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    (tmp_path / "wh").mkdir()
    con = LocalEngine(str(tmp_path / "wh"))._connect()
    try:
        [(spill,)] = con.sql("SELECT current_setting('temp_directory')").fetchall()
        assert con.sql("SELECT count(*) FROM range(10)").fetchall() == [(10,)]
    finally:
        con.close()
    assert spill == ""


#: A logq's start as far as its spill folder goes: the folder made, a spilled file in it, then
#: (with an argument) waiting to be killed, else exiting normally.
CHILD = """
import pathlib, sys, time
from athena.engines.spill import spill_directory
folder = pathlib.Path(spill_directory())
(folder / "duckdb_temp_storage-0.tmp").write_bytes(b"spilled" * 1000)
print(folder, flush=True)
if len(sys.argv) > 1:
    time.sleep(120)
"""


def _child(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(root), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture
def spill_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of temporary files of its own, as ``$TMPDIR`` for this process too."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return root


def test_a_killed_logqs_spill_folder_is_deleted_by_the_next_one(spill_root: Path) -> None:
    """SIGKILL (the OOM killer) left ``logq-duckdb-<pid>`` and its spilled gigabytes for good.
    A live logq's folder is locked, and stays; once its owner is killed, the next logq's
    first spill folder deletes it. A logq that exits removes its own."""
    live = _child(spill_root, "wait")
    try:
        live_folder = Path(live.stdout.readline().strip())  # type: ignore[union-attr]
        assert live_folder.is_dir() and live_folder.parent == spill_root
        ended = _child(spill_root)
        ended_folder = Path(ended.communicate(timeout=60)[0].strip())
        assert ended.returncode == 0 and ended_folder.parent == spill_root
        assert not ended_folder.exists()  # removed at exit
        assert spill_mod.sweep(str(spill_root)) == [] and live_folder.is_dir()
    finally:
        live.send_signal(signal.SIGKILL)
        live.communicate(timeout=60)
    assert live_folder.is_dir()  # what a kill leaves
    mine = Path(spill_mod.spill_directory())  # the next logq
    assert not live_folder.exists()
    assert [p.name for p in spill_root.iterdir()] == [mine.name]


def test_an_older_logqs_unlocked_folder_goes_only_when_idle_for_a_day(spill_root: Path) -> None:
    """An older logq made ``logq-duckdb-<pid>`` without a lock: it may still be spilling (a
    long query), so only a folder where nothing changed for a day is taken for a dead one's."""
    recent, idle = spill_root / "logq-duckdb-41", spill_root / "logq-duckdb-42"
    for folder in (recent, idle):
        folder.mkdir()
        (folder / "duckdb_temp_block-1.block").write_bytes(b"x")
    old = time.time() - (spill_mod.UNLOCKED_AGE_HOURS + 1) * 3600
    for path in (idle / "duckdb_temp_block-1.block", idle):
        os.utime(path, (old, old))
    os.utime(recent, (old, old))  # the folder is old, but a file in it was just written
    assert spill_mod.sweep(str(spill_root)) == [str(idle)]
    assert recent.is_dir() and not idle.exists()


def test_the_sweep_leaves_what_is_not_a_spill_folder(spill_root: Path) -> None:
    """Only folders named ``logq-duckdb-*``, never through a symbolic link; the sweep of a
    folder that cannot be listed finds nothing (and raises nothing)."""
    target = spill_root / "precious"
    target.mkdir()
    (target / spill_mod.LOCK_NAME).write_text("")  # unlocked: would read as a dead one's
    (spill_root / "logq-duckdb-7-link").symlink_to(target)
    (spill_root / "logq-duckdb-8-file").write_text("not a folder")
    other = spill_root / "other-logq-duckdb-9"
    other.mkdir()
    (other / spill_mod.LOCK_NAME).write_text("")
    assert spill_mod.sweep(str(spill_root)) == []
    assert (target / spill_mod.LOCK_NAME).exists() and other.is_dir()
    assert spill_mod.sweep(str(spill_root / "missing")) == []
