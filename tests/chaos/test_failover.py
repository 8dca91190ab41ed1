"""One of two aggregators dies for good (``kill -9``, never restarted) while a host ships.

The shipper's sources that stuck to the dead aggregator fail over to the other one, resending
every batch it had not acknowledged. What the dead one had acknowledged but not yet flushed is
in its buffer: the operator re-attaches that disk and runs ``logq-aggregator drain`` on it, which
skips the lines the survivor already committed (the offset ledger). The warehouse must then hold
every line exactly once.
"""

from __future__ import annotations

import random
import re
import subprocess
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
from tests.support.procs import console_script

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _connected(shipper: ShipperNode) -> set[str]:
    """The aggregators the shipper has connected to so far, from its log."""
    text = shipper.log.read_text(errors="replace")
    return set(re.findall(r'"connected to aggregator" endpoint=(\S+)', text))


def test_one_aggregator_dies_for_good_shippers_fail_over_nothing_lost(
    tmp_path: Path, chaos_env: dict[str, str], chaos_rng: random.Random, long_mode: bool
) -> None:
    warehouse = str(tmp_path / "warehouse")
    host = LiveHost(tmp_path / "containers", seed=chaos_rng.randrange(10**6), services=4, rate=400)
    aggs = start_aggregators(2, warehouse, tmp_path, chaos_env, flush_interval=1)
    dead, alive = aggs
    shipper = ShipperNode([a.address for a in aggs], host.root, tmp_path / "shipper", chaos_env)
    try:
        shipper.start()
        host.start()
        sleep_random(chaos_rng, 2.0, 6.0 if long_mode else 4.0)
        # The one that has sources: rendezvous hashing over random ports may give one
        # aggregator every source of a small host (8 sources: 1 run in 128), and killing the
        # idle one then tested no failover.
        dead, alive = sorted(aggs, key=lambda a: a.address not in _connected(shipper))
        dead.kill()  # for good: never restarted
        sleep_random(chaos_rng, 3.0, 10.0 if long_mode else 5.0)
        drain(host, shipper, [alive])
    finally:
        stop_all(host, shipper, [dead, alive])
    assert "connection refused" in shipper.log.read_text(errors="replace"), "no failover seen"
    drained = subprocess.run(
        [
            str(console_script("logq-aggregator")),
            "drain",
            "--buffer-dir",
            str(dead.buffer_dir),
            "--warehouse",
            warehouse,
        ],
        env=chaos_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert drained.returncode == 0, drained.stderr[-3000:]
    checks = assert_exact(warehouse, chaos_env, host)
    print({t: c.counted for t, c in checks.items()}, f"lines={host.lines_written}")
