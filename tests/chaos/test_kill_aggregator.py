"""``kill -9`` the aggregator at random moments while a shipper follows a live host.

An aggregator killed between fsync and ack, mid-flush or mid-frame restarts on the same port and
buffer: it replays its buffer (flushes under the same keys) and the shipper resends what was not
acknowledged, which the per-source offsets deduplicate. In the end the warehouse must hold every
line written exactly once.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chaos.harness import (
    LiveHost,
    ShipperNode,
    assert_exact,
    drain,
    sleep_random,
    start_aggregators,
    stop_all,
)

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_aggregator_killed_repeatedly_loses_and_duplicates_nothing(
    tmp_path: Path, chaos_env: dict[str, str], chaos_rounds: int, chaos_rng: random.Random
) -> None:
    warehouse = str(tmp_path / "warehouse")
    host = LiveHost(tmp_path / "containers", seed=chaos_rng.randrange(10**6), services=3)
    (agg,) = start_aggregators(1, warehouse, tmp_path, chaos_env, flush_interval=1)
    shipper = ShipperNode([agg.address], host.root, tmp_path / "shipper", chaos_env)
    try:
        shipper.start()
        host.start()
        for _ in range(chaos_rounds):
            sleep_random(chaos_rng, 0.3, 2.0)
            agg.kill()
            sleep_random(chaos_rng, 0.0, 0.5)
            agg.start()
        sleep_random(chaos_rng, 0.5, 1.5)
        drain(host, shipper, [agg])
    finally:
        stop_all(host, shipper, [agg])
    checks = assert_exact(warehouse, chaos_env, host)
    assert agg.starts == chaos_rounds + 1
    print({t: c.counted for t, c in checks.items()}, f"lines={host.lines_written}")
