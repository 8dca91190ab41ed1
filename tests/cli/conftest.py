"""Fixtures for CLI tests: a warehouse across an hour and a day boundary, and a runner."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer.testing
from typer.testing import CliRunner

from cli.app import app
from tests.athena.athena_moto import shared_botocore_loader
from tests.athena.factory import access_frame, logs_frame, utc, write_frame

START = utc(2026, 11, 27, 22, 30)
END = utc(2026, 11, 28, 1, 30)
SERVICES = ["recipe", "users", "billing"]


@dataclass
class Warehouse:
    """A written test warehouse and the frames it holds (the independent truth)."""

    uri: str
    access: pd.DataFrame
    logs: pd.DataFrame


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    root = tmp_path_factory.mktemp("wh") / "warehouse"
    access = access_frame(4000, START, END, SERVICES, seed=7)
    logs = logs_frame(1500, START, END, SERVICES, seed=8)
    write_frame(str(root), "envoy_access", access, files_per_partition=2)
    write_frame(str(root), "container_logs", logs)
    # Files every reader must skip: temp/hidden names and non-Parquet objects.
    part = root / "envoy_access" / "service=recipe" / "dt=2026-11-28-00"
    (part / ".part-tmp.parquet").write_bytes(b"not parquet")
    (part / "_SUCCESS").write_bytes(b"")
    (part / "_tmp.parquet").write_bytes(b"garbage")
    (part / "notes.txt").write_text("ignore me")
    return Warehouse(str(root), access, logs)


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> list[dict]:
        return json.loads(self.stdout)


@pytest.fixture(scope="module", autouse=True)
def _one_botocore_loader() -> Iterator[None]:
    """A module's in-process commands (Athena's, over S3) read botocore's model files once, as
    one process does, not once per command (0.2-0.4 CPU-s each)."""
    with shared_botocore_loader():
        yield


@pytest.fixture(autouse=True)
def _sql_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the transpile cache in a temp dir (never the user's ~/.cache)."""
    monkeypatch.setenv("LOGQ_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sqlcache"))


@pytest.fixture
def logq(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """Run ``logq ARGS`` in-process; stdout and stderr kept apart."""
    monkeypatch.delenv("LOGQ_WAREHOUSE", raising=False)
    monkeypatch.delenv("LOGQ_ENGINE", raising=False)
    # typer's runner builds the click command from the app at each call (~15 ms, most of a
    # short command's cost); a ``logq`` process builds it once too, and the command keeps no
    # state between calls (each has its own click context). What typer reads from the
    # environment as it builds it (the completion options read a variable) is the key.
    monkeypatch.setattr(typer.testing, "_get_command", lambda app: _app_command(app, _environ()))
    runner = CliRunner()

    def run(*args: str) -> Run:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


def _environ() -> tuple[tuple[str, str], ...]:
    """The environment, but the name of the test pytest is running (new at each test)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"))


@functools.lru_cache(maxsize=8)
def _app_command(typer_app: typer.Typer, environ: tuple[tuple[str, str], ...]) -> Any:
    """The click command (of typer's own click) of ``typer_app`` in the environment
    ``environ``, built once."""
    return typer.main.get_command(typer_app)


@pytest.fixture
def empty_warehouse(tmp_path: Path) -> str:
    path = tmp_path / "empty"
    path.mkdir()
    return str(path)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The values difflib was asked to find close names for (the real search still runs):
    suggestions are looked for only for the values a note names, not every one given."""
    import difflib

    seen: list[str] = []
    real = difflib.get_close_matches

    def get_close_matches(word: str, *args: object, **kwargs: object) -> list[str]:
        seen.append(word)
        return real(word, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(difflib, "get_close_matches", get_close_matches)
    return seen
