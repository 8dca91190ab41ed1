"""``logq demo`` on the embedded (local directory) warehouse, through real processes."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cli.demo import run_demo
from tests.support.procs import console_script

pytestmark = pytest.mark.integration


def _rows(warehouse: Path, table: str) -> int:
    dataset = ds.dataset(warehouse / table, format="parquet", partitioning="hive")
    return dataset.count_rows()


def test_run_demo_ships_every_line_and_answers(tmp_path: Path, subprocess_env) -> None:
    out = io.StringIO()
    status = run_demo(workdir=tmp_path / "demo", out=out, extra_env=subprocess_env)
    text = out.getvalue()
    assert status == 0, text
    for n in range(1, 6):
        assert f"[{n}/5]" in text
    written = int(re.search(r"([\d,]+) log lines", text).group(1).replace(",", ""))  # type: ignore[union-attr]
    landed = re.search(r"([\d,]+) envoy_access rows, ([\d,]+) container_logs rows", text)
    assert landed, text
    access, logs = (int(g.replace(",", "")) for g in landed.groups())
    assert access + logs == written
    warehouse = tmp_path / "demo" / "warehouse"
    assert _rows(warehouse, "envoy_access") == access
    assert _rows(warehouse, "container_logs") == logs
    # The errors table names the route the incident hit, and the next steps use this warehouse.
    assert "/api/v1/recipes/feed" in text
    assert f"export LOGQ_WAREHOUSE={warehouse}" in text
    assert "logq errors --service recipe" in text


def test_logq_demo_command(tmp_path: Path, subprocess_env) -> None:
    """The user's entry point: ``logq demo`` (work directory under $TMPDIR, kept afterwards)."""
    env = {**subprocess_env, "TMPDIR": str(tmp_path), "COLUMNS": "160"}
    done = subprocess.run(
        [str(console_script("logq")), "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Demo finished" in done.stdout
    (work,) = tmp_path.glob("logq-demo-*")
    assert _rows(work / "warehouse", "envoy_access") > 0


def test_a_failing_step_is_named_with_its_reason(tmp_path: Path, subprocess_env) -> None:
    work = tmp_path / "demo"
    work.mkdir()
    # The warehouse cannot be a directory: the aggregator must fail and the demo say so.
    (work / "warehouse").write_text("not a directory")
    out = io.StringIO()
    status = run_demo(workdir=work, out=out, extra_env=subprocess_env)
    text = out.getvalue()
    assert status == 1, text
    assert re.search(r"logq demo failed at step [2-4]: logq-aggregator", text), text
    assert f"work directory kept for inspection: {work}" in text


def test_unknown_service_is_refused_before_anything_starts(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(workdir=tmp_path / "demo", service="nope", out=out) == 1
    assert "step 1: no service 'nope' in the demo; pick one of" in out.getvalue()
    assert not (tmp_path / "demo" / "aggregator.log").exists()
