"""``logq demo`` on the embedded (local directory) warehouse, through real processes."""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cli.demo import run_demo
from tests.support.procs import console_script
from tests.support.seaweedfs import program_env

pytestmark = pytest.mark.integration


def _rows(warehouse: Path, table: str) -> int:
    dataset = ds.dataset(warehouse / table, format="parquet", partitioning="hive")
    return dataset.count_rows()


@dataclass
class DemoRun:
    """What one ``logq demo`` printed, and its kept work directory."""

    done: subprocess.CompletedProcess[str]
    work: Path


@pytest.fixture(scope="module")
def logq_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``logq demo``, the user's entry point (work directory under $TMPDIR, kept afterwards),
    run once for the two tests below: a demo is a host of 3,000 requests, an aggregator, a
    shipper and a ``logq`` (about 6 CPU-s), and both read the same run. ``run_demo`` with a
    work directory given, in this process, is the failing-step test's. ``LOGQ_ENGINE=athena``,
    as in the shell of a user set up for Athena: the demo's warehouse is local whatever it says
    (its query failed, "Athena needs a place for results")."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**program_env(), "TMPDIR": str(tmp), "COLUMNS": "160", "LOGQ_ENGINE": "athena"}
    done = subprocess.run(
        [str(console_script("logq")), "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    (work,) = tmp.glob("logq-demo-*")
    return DemoRun(done, work)


def test_run_demo_ships_every_line_and_answers(logq_demo: DemoRun) -> None:
    text = logq_demo.done.stdout
    assert logq_demo.done.returncode == 0, text + logq_demo.done.stderr
    for n in range(1, 6):
        assert f"[{n}/5]" in text
    written = int(re.search(r"([\d,]+) log lines", text).group(1).replace(",", ""))  # type: ignore[union-attr]
    landed = re.search(r"([\d,]+) envoy_access rows, ([\d,]+) container_logs rows", text)
    assert landed, text
    access, logs = (int(g.replace(",", "")) for g in landed.groups())
    assert access + logs == written
    warehouse = logq_demo.work / "warehouse"
    assert _rows(warehouse, "envoy_access") == access
    assert _rows(warehouse, "container_logs") == logs
    # The errors table names the route the incident hit, and the next steps use this warehouse.
    assert "/api/v1/recipes/feed" in text
    assert f"export LOGQ_WAREHOUSE={warehouse}" in text
    assert "  export LOGQ_ENGINE=local    # was athena; Athena reads S3\n" in text, text
    assert "logq errors --service recipe" in text


def test_logq_demo_command(logq_demo: DemoRun) -> None:
    """The user's entry point: ``logq demo`` (work directory under $TMPDIR, kept afterwards)."""
    done = logq_demo.done
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Demo finished" in done.stdout
    assert _rows(logq_demo.work / "warehouse", "envoy_access") > 0


def test_a_failing_step_is_named_with_its_reason(tmp_path: Path, subprocess_env) -> None:
    work = tmp_path / "demo"
    work.mkdir()
    # The warehouse cannot be a directory: the aggregator must fail and the demo say so.
    (work / "warehouse").write_text("not a directory")
    out = io.StringIO()
    # A host of 100 requests, not the demo's 3,000 (1.2 CPU-s to write): the run ends at step 2.
    status = run_demo(workdir=work, out=out, extra_env=subprocess_env, requests=100)
    text = out.getvalue()
    assert status == 1, text
    assert re.search(r"logq demo failed at step [2-4]: logq-aggregator", text), text
    assert f"work directory kept for inspection: {work}" in text


def test_unknown_service_is_refused_before_anything_starts(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(workdir=tmp_path / "demo", service="nope", out=out) == 1
    assert "step 1: no service 'nope' in the demo; pick one of" in out.getvalue()
    assert not (tmp_path / "demo" / "aggregator.log").exists()
