"""Compaction end to end on S3: small files of closed hours become one, and no row moves.

Two hosts ship through two aggregator instances, so every partition of the past hours holds
several small objects (Athena's small-files problem). ``logq-aggregator compact`` then merges the
closed hours; the tables must hold exactly the same rows before and after (a merged file visible
next to its inputs would double them), and each closed partition must be down to one object.
"""

from __future__ import annotations

import socket
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from athena.schema import dt_of
from cli.demohost import Manifest, write_host
from tests.support.expect import assert_tables_match
from tests.support.pipeline import run_shipper_once, start_aggregator
from tests.support.procs import console_script

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def _objects(seaweedfs, warehouse: str) -> Counter[str]:
    """Parquet objects per partition folder (``table/service=…/dt=…``; not ``_ledger/``)."""
    bucket, _, prefix = warehouse.removeprefix("s3://").partition("/")
    pages = seaweedfs.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"].removeprefix(prefix + "/") for p in pages for o in p.get("Contents", [])]
    return Counter(
        k.rsplit("/", 1)[0]
        for k in keys
        if k.endswith(".parquet") and not any(p.startswith((".", "_")) for p in k.split("/"))
    )


def test_compaction_merges_closed_hours_without_losing_or_doubling_rows(
    tmp_path: Path, s3_warehouse: str, s3_env: dict[str, str], subprocess_env, seaweedfs
) -> None:
    env = {**subprocess_env, **s3_env}
    now = datetime.now(UTC)
    hosts = [
        write_host(tmp_path / f"host{i}", seed=60 + i, now=now, requests=120, long_line=False)
        for i in range(2)
    ]
    for i, host in enumerate(hosts):
        agg = start_aggregator(s3_warehouse, tmp_path, env, buffer_dir=tmp_path / f"buf{i}")
        try:
            done = run_shipper_once(agg.address, host.root, tmp_path / f"state{i}", env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert agg.terminate() == 0, agg.log.read_text()
        finally:
            agg.kill()
    both = Manifest(
        root=tmp_path,
        containers=hosts[0].containers + hosts[1].containers,
        access=hosts[0].access + hosts[1].access,
        logs=hosts[0].logs + hosts[1].logs,
    )
    before = _objects(seaweedfs, s3_warehouse)
    current = f"dt={dt_of(now)}"
    closed = {part for part in before if not part.endswith(current)}
    assert any(before[p] > 1 for p in closed), "the setup should leave several files per hour"
    assert_tables_match(both, s3_warehouse, env, socket.gethostname())

    # --grace-minutes 0: the files were written seconds ago; the hours themselves are closed.
    compact = [str(console_script("logq-aggregator")), "compact", "--warehouse", s3_warehouse]
    done = subprocess.run(
        [*compact, "--all", "--grace-minutes", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    after = _objects(seaweedfs, s3_warehouse)
    assert set(after) == set(before)
    assert {p: after[p] for p in closed} == dict.fromkeys(closed, 1)
    assert_tables_match(both, s3_warehouse, env, socket.gethostname())
