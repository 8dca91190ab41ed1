"""``LOGQ_WAREHOUSE`` is the default warehouse of every program; ``--warehouse`` overrides it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.demohost import write_host
from tests.support.pipeline import logq_json, run_shipper_once, start_aggregator

pytestmark = pytest.mark.integration

COUNT = "SELECT count(*) AS n FROM envoy_access"


def test_logq_warehouse_is_the_default_and_the_flag_wins(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    manifest = write_host(tmp_path / "containers", seed=12, requests=30, long_line=False)
    warehouse = tmp_path / "from-env"
    env = {**subprocess_env, "LOGQ_WAREHOUSE": str(warehouse)}
    agg = start_aggregator(None, tmp_path, env)  # no --warehouse flag
    try:
        done = run_shipper_once(agg.address, manifest.root, tmp_path / "state", env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    assert list((warehouse / "envoy_access").rglob("*.parquet")), "nothing written to the env dir"
    # The CLI reads the same default...
    assert logq_json(["sql", COUNT], env) == [{"n": len(manifest.access)}]
    # ...and --warehouse overrides it.
    other = {**subprocess_env, "LOGQ_WAREHOUSE": str(tmp_path / "elsewhere")}
    rows = logq_json(["sql", COUNT, "--warehouse", str(warehouse)], other)
    assert rows == [{"n": len(manifest.access)}]
