"""`logq` meets the aggregator making a folder while it lists, and a folder it may not read.

The aggregator's first flush into a new warehouse makes ``container_logs/`` (and a service's
or an hour's folder) at any moment: a ``logq`` listing that folder right then failed once with
"Cannot list directory" (Arrow forgives a missing folder only if it is still missing when it
looks again; see ``tests/support/listing.py``). A folder ``logq`` may not read stays an error
that names it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from athena.timerange import dt_of
from tests.athena.factory import access_frame, utc, write_frame
from tests.cli.conftest import Run
from tests.support.listing import folders_appear, without_override
from tests.support.procs import console_script

START = utc(2026, 3, 1, 10, 0)


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    """envoy_access of two services; no container_logs yet (an aggregator's first hours)."""
    uri = str(tmp_path / "wh")
    write_frame(
        uri, "envoy_access", access_frame(40, START, START + timedelta(hours=2), ["a", "b"])
    )
    return uri


def _hours_about_now() -> list[str]:
    """This hour's ``dt`` and its neighbours' (the hour may turn while the test runs)."""
    now = datetime.now(UTC)
    return [dt_of(now + timedelta(hours=h)) for h in (-1, 0, 1)]


@pytest.mark.parametrize(
    ("args", "table"),
    [
        (["services", "-f", "json"], "container_logs"),  # the table's folder, as services are
        (["tail", "--since", "1h"], "container_logs"),  # ... while a query plans it
        (["errors", "--since", "1h"], "envoy_access"),  # this hour's, looked up by name
    ],
)
def test_a_folder_made_during_the_listing_is_no_error(
    logq: Callable[..., Run],
    warehouse: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    table: str,
) -> None:
    made = [f"{warehouse}/{table}/service=a/dt={dt}" for dt in _hours_about_now()]
    fs = folders_appear(monkeypatch, made)
    run = logq(*args, "--warehouse", warehouse)
    assert fs.appeared, fs.listings  # the race was met...
    assert run.exit_code == 0, run.stderr  # ... and listed again
    assert "Cannot list directory" not in run.stderr
    if args[0] == "services":
        assert [(s["service"], s["access_hours"]) for s in run.json()] == [("a", 2), ("b", 2)]


def _logq_denied(
    args: list[str], tmp_path: Path, subprocess_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``logq ARGS`` run as root without the capability to read what its mode denies."""
    env = subprocess_env | {"LOGQ_CACHE_DIR": str(tmp_path / "cache")}
    command = [*without_override(), str(console_script("logq")), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_a_folder_logq_may_not_read_is_an_error_naming_it(
    warehouse: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Permission denied on a table's folder: exit 1 and Arrow's error naming the folder, at
    the first listing (it is no folder that appeared: nothing to list again)."""
    table = Path(warehouse) / "envoy_access"
    table.chmod(0)
    try:
        done = _logq_denied(["services", "--warehouse", warehouse], tmp_path, subprocess_env)
    finally:
        table.chmod(0o755)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("logq: error: "), done.stderr
    assert f"Cannot list directory '{table}'" in done.stderr, done.stderr
    assert "Permission denied" in done.stderr, done.stderr
    assert "let the user running logq read it (chmod/chown)" in done.stderr, done.stderr


def test_a_file_logq_may_not_read_is_an_error_naming_it_and_what_to_do(
    warehouse: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Permission denied on one Parquet file: DuckDB's reason had the path cut out of its
    quotes ("Cannot open file "": Permission denied"), and the advice was for a damaged file."""
    denied = sorted((Path(warehouse) / "envoy_access").rglob("*.parquet"))[0]
    denied.chmod(0)
    sql = "SELECT count(*) AS n FROM envoy_access"
    try:
        done = _logq_denied(["sql", sql, "--warehouse", warehouse], tmp_path, subprocess_env)
    finally:
        denied.chmod(0o644)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == (
        f"logq: error: cannot read the Parquet file {denied} (IO Error: Cannot open file: "
        "Permission denied): let the user running logq read it (chmod/chown), or move it out "
        "of the warehouse, and run the command again\n"
    )
