"""``kill -9`` the shipper at random moments while containers keep writing.

A shipper killed with batches in flight restarts on the same ``--state-dir``: it resumes at the
last acknowledged line of every file and sends again what was sent but not acknowledged (or
acknowledged after the checkpoint was last saved); the aggregator drops those resent lines by
their source offsets. In the end the warehouse must hold every line written exactly once.
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


def test_shipper_killed_repeatedly_loses_and_duplicates_nothing(
    tmp_path: Path, chaos_env: dict[str, str], chaos_rounds: int, chaos_rng: random.Random
) -> None:
    warehouse = str(tmp_path / "warehouse")
    host = LiveHost(tmp_path / "containers", seed=chaos_rng.randrange(10**6), services=3)
    (agg,) = start_aggregators(1, warehouse, tmp_path, chaos_env, flush_interval=1)
    # Small batches: several are in flight at any moment, so a kill lands between send and ack.
    shipper = ShipperNode(
        [agg.address], host.root, tmp_path / "shipper", chaos_env, ("--batch-lines", "64")
    )
    try:
        shipper.start()
        host.start()
        for _ in range(chaos_rounds):
            sleep_random(chaos_rng, 0.5, 2.0)
            shipper.kill()
            sleep_random(chaos_rng, 0.0, 0.5)
            shipper.start()
        sleep_random(chaos_rng, 0.5, 1.5)
        drain(host, shipper, [agg])
    finally:
        stop_all(host, shipper, [agg])
    checks = assert_exact(warehouse, chaos_env, host)
    assert shipper.starts == chaos_rounds + 1
    print({t: c.counted for t, c in checks.items()}, f"lines={host.lines_written}")
