"""Rotations, copytruncates and containers coming and going under load: every line once.

* 100 json-file rotations the way dockerd's ``max-size``/``max-file`` does them (rename ``log`` ->
  ``.1`` -> ``.2``..., a new live file, the oldest deleted beyond ``max-file=5``). The shipper
  keeps a descriptor on every rotated file it has not finished, so deletion loses nothing while
  it runs (what a shipper that is *down* longer than the rotation window loses is documented in
  docs/operations.md, not tested here).
* 20 copytruncates (logrotate: copy to ``.1``, truncate in place) on containers of their own, as
  nobody mixes logrotate and dockerd rotation on one file. The writer is held between the copy
  and the truncation: lines written in that window are in neither file, which every tailer loses
  and logrotate documents; the shipper's job is to finish the copy from where it was and restart
  the live file at 0, which is what this checks. The truncated container gets no new lines
  from "shipper caught up with it" to "shipper logged the truncation" (``LiveHost.holding``):
  the shipper looks for a truncation only at the end of the file, so a file that grew past its
  old position by then used to be read from the middle (the last test of this module keeps it
  fixed: the shipper now checks the fingerprint when data follows an end of file) -- and content
  truncated away before the shipper reopened the live file
  after the previous truncation is never read.
* Containers appearing (new task directories mid-run) and disappearing (retired, then their
  directory removed once the shipper's checkpoint shows their last byte acknowledged).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from cli.demohost import Container
from tests.chaos.harness import (
    LiveHost,
    ShipperNode,
    assert_exact,
    drain,
    start_aggregators,
    stop_all,
    wait_caught_up,
)
from tests.support.procs import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ROTATIONS = 100
COPYTRUNCATES = 20
TASKS_ADDED = 3
CONTAINERS_REMOVED = 3
STEP_SECONDS = 0.12


def test_rotations_copytruncates_and_container_churn_lose_nothing(
    tmp_path: Path, chaos_env: dict[str, str], chaos_rng: random.Random, long_mode: bool
) -> None:
    scale = 3 if long_mode else 1
    rng = chaos_rng
    warehouse = str(tmp_path / "warehouse")
    host = LiveHost(tmp_path / "containers", seed=rng.randrange(10**6), services=3, rate=300)
    # The first task's two containers are rotated by "logrotate" (copytruncate) only.
    truncated: list[Container] = list(host.active[:2])
    (agg,) = start_aggregators(1, warehouse, tmp_path, chaos_env, flush_interval=1)
    shipper = ShipperNode([agg.address], host.root, tmp_path / "shipper", chaos_env)
    events = (
        ["rotate"] * (ROTATIONS * scale)
        + ["copytruncate"] * (COPYTRUNCATES * scale)
        + ["add"] * TASKS_ADDED
        + ["remove"] * CONTAINERS_REMOVED
    )
    rng.shuffle(events)
    truncations: dict[str, int] = {}
    done = {"rotate": 0, "copytruncate": 0, "add": 0, "remove": 0}
    try:
        shipper.start()
        # Files rotated before the shipper first saw the container are history it does not
        # read (like every tailer starting on a host): let it pick up every file first.
        wait_caught_up(shipper, host.active)
        host.start()
        services = list(host.specs)
        while events:
            event = events[-1]
            rotatable = [c for c in host.active if c not in truncated]
            ok = True
            if event == "rotate":
                ok = host.rotate(rng.choice(rotatable), max_file=5)
            elif event == "copytruncate":
                c = rng.choice(truncated)
                ok = c.log_path.stat().st_size > 0  # else truncated and not written since
                if ok:
                    with host.holding(c):  # see LiveHost.holding for why
                        wait_caught_up(shipper, [c])
                        assert host.copytruncate(c)
                        truncations[c.id] = n = truncations.get(c.id, 0) + 1
                        wait_until(
                            lambda c=c, n=n: shipper.noticed_truncation(c, n),
                            60,
                            "logq-shipper noticing a copytruncate",
                            log=shipper.log,
                        )
            elif event == "add":
                host.add_task(rng.choice(services))
            else:
                gone = rng.choice(rotatable)
                host.retire(gone)
                wait_caught_up(shipper, [gone])
                host.remove(gone)
            if ok:  # an empty live file is not rotated: try again after the next writes
                events.pop()
                done[event] += 1
            time.sleep(rng.uniform(0.5, 1.5) * STEP_SECONDS)
        drain(host, shipper, [agg])
    finally:
        stop_all(host, shipper, [agg])
    checks = assert_exact(warehouse, chaos_env, host)
    assert done == {
        "rotate": ROTATIONS * scale,
        "copytruncate": COPYTRUNCATES * scale,
        "add": TASKS_ADDED,
        "remove": CONTAINERS_REMOVED,
    }
    print(done, {t: c.counted for t, c in checks.items()}, f"lines={host.lines_written}")


def test_copytruncate_then_growth_past_the_read_position_before_the_shipper_looks(
    tmp_path: Path, chaos_env: dict[str, str]
) -> None:
    warehouse = str(tmp_path / "warehouse")
    host = LiveHost(tmp_path / "containers", seed=5, services=1)
    app = host.active[1]
    (agg,) = start_aggregators(1, warehouse, tmp_path, chaos_env, flush_interval=1)
    shipper = ShipperNode([agg.address], host.root, tmp_path / "shipper", chaos_env)
    try:
        shipper.start()
        host.write(app, 20)
        wait_caught_up(shipper, host.active)
        # The shipper is descheduled for a moment (a busy host) while logrotate runs and the
        # app keeps logging: when it runs again the file is longer than where it was.
        shipper.freeze()
        try:
            assert host.copytruncate(app)
            size = app.log_path.with_name(app.log_path.name + ".1").stat().st_size
            while app.log_path.stat().st_size <= 2 * size:
                host.write(app, 20)
        finally:
            shipper.thaw()
        drain(host, shipper, [agg])
    finally:
        stop_all(host, shipper, [agg])
    assert_exact(warehouse, chaos_env, host)
