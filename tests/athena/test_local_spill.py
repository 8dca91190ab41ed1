"""Where the local engine's DuckDB spills a query larger than memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
    assert spill == str(spill_root / f"logq-duckdb-{os.getpid()}")


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
