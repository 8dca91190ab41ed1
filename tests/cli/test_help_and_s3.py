"""Help texts, light start-up, shell completion, and the CLI over an S3 warehouse."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.athena.factory import access_frame, logs_frame, utc, write_frame

COMMANDS = [
    "errors", "sql", "latency", "flags", "upstreams", "top", "timeline", "trace", "tail", "ddl",
    "services", "demo",
]  # fmt: skip
COMMON_OPTIONS = (
    "--service", "--since", "--until", "--limit", "--format", "--engine", "--warehouse",
    "--dry-run", "--path", "--method", "--max-scan-bytes",
)  # fmt: skip
HEAVY = ("pyarrow", "duckdb", "pandas", "sqlglot", "boto3", "pyathena", "numpy")


def test_help_imports_no_heavy_library() -> None:
    """`logq --help` must start fast: the heavy libraries load only inside commands."""
    code = (
        "import sys; from cli.app import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


#: Libraries a local query that prints no sum (DuckDB's HUGEINT, cast with pyarrow.compute)
#: runs without: the Athena engine's, pandas, sqlglot once the canned query's transpilation is
#: cached, pyarrow.compute (its import builds a wrapper per function: 0.05-0.15 s) and pydantic
#: (typer's coercion of option values: plain ones are taken without it, see cli.plain_params).
NOT_FOR_A_LOCAL_QUERY = ("pandas", "pyarrow.compute", "sqlglot", "boto3", "pyathena", "pydantic")


def test_a_repeated_local_query_imports_only_what_it_needs(tmp_path: Path) -> None:
    """`logq errors` and `logq tail`, run again as engineers do (transpile cache warm), import
    none of :data:`NOT_FOR_A_LOCAL_QUERY`: start-up is most of such a command's time. The
    stale-data note (run with every query) and tail's zoned times imported pyarrow.compute."""
    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=50), now - timedelta(minutes=1)
    write_frame(uri, "envoy_access", access_frame(300, start, end, ["recipe"], seed=3))
    write_frame(uri, "container_logs", logs_frame(30, start, end, ["recipe"], seed=4))
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.app import app\n"
        "for args, seen in ((['errors', '-s', 'recipe'], '503'),\n"
        "                   (['tail', '-s', 'recipe'], 'line')):\n"
        f"    done = CliRunner().invoke(app, [*args, '--since', '1h', '--warehouse', {uri!r}])\n"
        "    assert done.exit_code == 0 and seen in done.output, done.output\n"
        f"print(','.join(m for m in {NOT_FOR_A_LOCAL_QUERY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "LOGQ_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("LOGQ_WAREHOUSE", None)

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert "sqlglot" in run()  # the cache was empty: this run transpiled, and fills it
    assert run() == ""


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_help_has_an_example(logq, cmd: str) -> None:
    run = logq(cmd, "--help")
    assert run.exit_code == 0
    assert "Example: logq " + cmd in " ".join(run.stdout.split())


#: Commands that do not filter requests by path or method, so do not offer the options.
NO_REQUEST_FILTERS = ("sql", "trace", "tail", "services")


def test_common_options_on_every_query_command(logq) -> None:
    for cmd in (
        "errors",
        "sql",
        "latency",
        "flags",
        "upstreams",
        "top",
        "timeline",
        "trace",
        "tail",
        "services",
    ):
        text = logq(cmd, "--help").stdout
        for opt in COMMON_OPTIONS:
            if cmd in NO_REQUEST_FILTERS and opt in ("--path", "--method"):
                assert opt not in text, (cmd, opt)
            else:
                assert opt in text, (cmd, opt)


def test_service_completion(warehouse, monkeypatch) -> None:
    from cli.options import _complete_service

    monkeypatch.setenv("LOGQ_WAREHOUSE", warehouse.uri)
    assert _complete_service("") == ["billing", "recipe", "users"]
    assert _complete_service("re") == ["recipe"]
    monkeypatch.setenv("LOGQ_WAREHOUSE", "gopher://nowhere")
    assert _complete_service("") == []


def test_service_completion_offers_no_folder_the_queries_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only names a query reads (``-s Recipe`` would be refused, ``svc=x`` is never read), and
    no note about the others: it would land amid the command line being typed."""
    from cli.options import _complete_service

    for name in ("recipe", "Recipe", "recipe ", "svc=x"):
        (tmp_path / "envoy_access" / f"service={name}" / "dt=2026-11-28-00").mkdir(parents=True)
    monkeypatch.setenv("LOGQ_WAREHOUSE", str(tmp_path))
    assert _complete_service("") == ["recipe"]
    assert capsys.readouterr().err == ""


def test_show_completion_script(logq, monkeypatch: pytest.MonkeyPatch) -> None:
    # Name the shell rather than let typer detect it from the parent processes, which fails
    # when the test runs detached from a shell (a CI runner, a background job).
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    run = logq("--show-completion", "bash")
    assert run.exit_code == 0 and "_LOGQ_COMPLETE" in run.stdout


@pytest.mark.s3
@pytest.mark.integration
def test_cli_over_s3_warehouse(logq, s3_warehouse: str) -> None:
    start, end = utc(2026, 11, 27, 23, 0), utc(2026, 11, 28, 1, 0)
    access = access_frame(900, start, end, ["recipe", "users"], seed=11)
    write_frame(s3_warehouse, "envoy_access", access, files_per_partition=2)
    write_frame(s3_warehouse, "container_logs", logs_frame(50, start, end, ["recipe"], seed=12))
    rng = ["--since", "2026-11-27T23:30:00Z", "--until", "2026-11-28T00:30:00Z"]
    run = logq(
        "errors", "-s", "recipe", *rng, "-f", "json", "--limit", "1000", "--warehouse", s3_warehouse
    )
    assert run.exit_code == 0, run.stderr
    df = access[
        (access["service"] == "recipe")
        & (access["timestamp"] >= pd.Timestamp(rng[1]))
        & (access["timestamp"] < pd.Timestamp(rng[3]))
        & (access["response_code"] >= 500)
    ]
    assert sum(r["count"] for r in run.json()) == len(df)
    dry = logq("errors", "-s", "recipe", *rng, "--dry-run", "--warehouse", s3_warehouse)
    listed = [ln.split()[1] for ln in dry.stdout.splitlines() if ln.startswith("--   ")]
    assert listed == [
        "envoy_access/service=recipe/dt=2026-11-27-23",
        "envoy_access/service=recipe/dt=2026-11-28-00",
    ]
    sql = logq("sql", "SELECT count(*) AS n FROM envoy_access", *rng, "-f", "json",
               "--warehouse", s3_warehouse)  # fmt: skip
    assert sql.exit_code == 0, sql.stderr
    in_range = (access["timestamp"] >= pd.Timestamp(rng[1])) & (
        access["timestamp"] < pd.Timestamp(rng[3])
    )
    assert sql.json() == [{"n": int(in_range.sum())}]
    services = logq("services", "-f", "json", "--warehouse", s3_warehouse).json()
    assert [s["service"] for s in services] == ["recipe", "users"]
    tail = logq("tail", "-s", "recipe", "--since", "2026-11-27T00:00:00Z", "-f", "json",
                "--until", "2026-11-29T00:00:00Z", "--warehouse", s3_warehouse)  # fmt: skip
    assert len(tail.json()) == 50
    ddl = logq("ddl", "--warehouse", s3_warehouse)
    assert f"LOCATION '{s3_warehouse}/envoy_access/'" in ddl.stdout
    assert "'projection.service.values' = 'recipe,users'" in ddl.stdout
