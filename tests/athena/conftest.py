"""Keep the transpile cache of every test in a temp dir (never the user's ~/.cache)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _sql_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path_factory.getbasetemp() / "sqlcache"
    monkeypatch.setenv("LOGQ_CACHE_DIR", str(folder))
    return folder
