"""End to end for a Kubernetes node: CRI log files under ``--cri-root``, local warehouse.

Same truth as the Docker test (the generator's manifest), other runtime: pod directories
``<namespace>_<pod>_<uid>/<container>/0.log`` in the CRI format with ``P``/``F`` partial lines,
the service taken from the pod's owner (the Deployment name), ``container_id`` as
``<pod uid>/<container>``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cli.demohost import write_host
from tests.support.expect import assert_tables_match
from tests.support.pipeline import run_shipper_once, start_aggregator

pytestmark = pytest.mark.integration


def test_cri_node_ships_every_line_once(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    manifest = write_host(tmp_path / "pods", seed=42, requests=150, layout="cri")
    assert manifest.services == ["auth", "catalog", "checkout", "recipe", "search"]
    warehouse = str(tmp_path / "warehouse")
    no_docker = tmp_path / "no-docker"
    no_docker.mkdir()
    agg = start_aggregator(warehouse, tmp_path, subprocess_env)
    try:
        done = run_shipper_once(
            agg.address, no_docker, tmp_path / "state", subprocess_env,
            "--cri-root", str(manifest.root),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    tables = assert_tables_match(manifest, warehouse, subprocess_env, socket.gethostname())
    long_line = max(tables["container_logs"], key=lambda r: len(r["message"]))
    assert len(long_line["message"]) > 16 * 1024  # written as P, P, F parts; joined again


def test_two_aggregators_share_one_warehouse(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A shipper spreading over two aggregators: both write, neither overwrites the other."""
    manifest = write_host(tmp_path / "pods", seed=43, requests=150, layout="cri")
    warehouse = str(tmp_path / "warehouse")
    (tmp_path / "no-docker").mkdir()  # a --docker-root given must exist
    aggs = [
        start_aggregator(warehouse, tmp_path, subprocess_env, buffer_dir=tmp_path / f"buf{i}")
        for i in range(2)
    ]
    try:
        targets = [arg for a in aggs for arg in ("--aggregator", a.address)]
        done = run_shipper_once(
            aggs[0].address, tmp_path / "no-docker", tmp_path / "state", subprocess_env,
            "--cri-root", str(manifest.root), *targets[2:],
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        for agg in aggs:
            assert agg.terminate() == 0, agg.log.read_text()
    finally:
        for agg in aggs:
            agg.kill()
    assert_tables_match(manifest, warehouse, subprocess_env, socket.gethostname())
    # Both instances really wrote (object names start with the writer's node id).
    writers = {p.name.split("-")[0] for p in Path(warehouse).rglob("*.parquet")}
    assert len(writers) == 2, writers
