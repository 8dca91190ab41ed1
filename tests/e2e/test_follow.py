"""The shipper as a daemon (follow mode): live appends, a Docker rotation, a new container.

These are the moments users of log shippers report losses and duplicates at. The shipper runs
as it would on a host; the test appends lines, rotates one container's log twice the way dockerd
does (``.1`` -> ``.2``, live -> ``.1``, a new live file) while the shipper is frozen, so that
unread lines sit in both rotated files, starts a new container, then stops both daemons with
SIGTERM and compares the whole warehouse with the manifest, which the writer kept up to date.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cli.demohost import HostWriter, Manifest, write_host
from cli.demoservices import SERVICES
from cli.demotraffic import AccessRow, LogRow, TrafficModel
from tests.support.expect import assert_tables_match
from tests.support.pipeline import start_aggregator, start_shipper

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60.0


def _stored_rows(warehouse: Path) -> int:
    total = 0
    for table in ("envoy_access", "container_logs"):
        if (warehouse / table).exists():
            total += ds.dataset(
                warehouse / table, format="parquet", partitioning="hive"
            ).count_rows()
    return total


def _wait_for_rows(warehouse: Path, manifest: Manifest, logs: list[Path]) -> None:
    """Bounded wait until the warehouse holds as many rows as the manifest (a readiness wait,
    not a speed assertion: the daemons flush every half second here)."""
    want = len(manifest.access) + len(manifest.logs)
    deadline = time.monotonic() + WAIT_SECONDS
    while (got := _stored_rows(warehouse)) < want:
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise AssertionError(f"{got} of {want} rows after {WAIT_SECONDS:.0f}s\n{tails}")
        time.sleep(0.2)


def _fresh_traffic(seed: int, service: str, now: datetime) -> tuple[list[AccessRow], list[LogRow]]:
    """A few seconds of new traffic for one service."""
    model = TrafficModel(random.Random(seed))
    traffic = model.generate(now - timedelta(seconds=3), now, 40, None)
    access = [r for r in traffic.access if r.service == service]
    logs = [r for r in traffic.logs if r.service == service]
    return access, logs


def test_follow_mode_survives_appends_rotation_and_new_containers(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    manifest = write_host(tmp_path / "containers", seed=77, now=now, requests=60, long_line=False)
    warehouse = tmp_path / "warehouse"
    env = subprocess_env
    agg = start_aggregator(str(warehouse), tmp_path, env, flush_interval=0.5)
    shipper = start_shipper(
        agg.address, manifest.root, tmp_path / "state", env,
        "--poll-interval", "0.1", "--discover-interval", "0.3",
    )  # fmt: skip
    logs = [agg.log, shipper.log]
    try:
        _wait_for_rows(warehouse, manifest, logs)
        writer = HostWriter.resume(manifest, seed=1)
        recipe_envoy = next(
            c for c in manifest.containers if c.service == "recipe" and c.role == "envoy"
        )
        # 1. Lines appended to a live file.
        access, _ = _fresh_traffic(2, "recipe", datetime.now(UTC))
        writer.write_log(recipe_envoy, access, [], append=True)
        # 2. Two rotations while the shipper is frozen (SIGSTOP), so lines it has not read
        #    yet sit in ".2" and ".1" when it wakes up: it must finish those, then go live.
        os.kill(shipper.proc.pid, signal.SIGSTOP)
        try:
            before, _ = _fresh_traffic(3, "recipe", datetime.now(UTC))
            writer.write_log(recipe_envoy, before, [], append=True)
            writer.rotate(recipe_envoy)
            middle, _ = _fresh_traffic(4, "recipe", datetime.now(UTC))
            writer.write_log(recipe_envoy, middle, [], append=True)
            writer.rotate(recipe_envoy)
            after, _ = _fresh_traffic(5, "recipe", datetime.now(UTC))
            writer.write_log(recipe_envoy, after, [], append=True)
        finally:
            os.kill(shipper.proc.pid, signal.SIGCONT)
        assert recipe_envoy.log_path.with_name(recipe_envoy.log_path.name + ".2").exists()
        # 3. A container that did not exist when the shipper started.
        search = next(s for s in SERVICES if s.name == "search")
        new = writer.container(search, "app", 99, datetime.now(UTC))
        _, app_lines = _fresh_traffic(6, "search", datetime.now(UTC))
        writer.write_log(new, [], app_lines)
        assert access and before and middle and after and app_lines
        _wait_for_rows(warehouse, manifest, logs)
        assert shipper.terminate() == 0, shipper.log.read_text()[-3000:]
        assert agg.terminate() == 0, agg.log.read_text()[-3000:]
    finally:
        shipper.kill()
        agg.kill()
    assert_tables_match(manifest, str(warehouse), env, socket.gethostname())
