"""Run our three programs as real processes, the way an operator would, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import (
    LOCALHOST,
    console_script,
    free_port,
    log_tail,
    port_open,
    start_group,
    stop_group,
    wait_until,
)


@dataclass
class Daemon:
    """A running daemon process (its own process group) and its log file."""

    proc: subprocess.Popen
    log: Path

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (the contract: finish what was acknowledged, exit 0); returns the status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, timeout=0)
            name = Path(str(self.proc.args[0])).name
            raise AssertionError(
                f"{name} ignored SIGTERM for {timeout:.0f}s{log_tail(self.log)}"
            ) from None

    def kill(self) -> None:
        stop_group(self.proc, timeout=0, sig=signal.SIGKILL)


@dataclass
class Aggregator(Daemon):
    """A running ``logq-aggregator`` process."""

    port: int = 0

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"


def start_aggregator(
    warehouse: str | None,
    work: Path,
    env: dict[str, str],
    *extra: str,
    flush_interval: float = 1,
    buffer_dir: Path | None = None,
) -> Aggregator:
    """Start ``logq-aggregator`` on a free port and wait until it accepts connections.

    The buffer defaults to ``work/buffer``: a restarted aggregator given the same ``work``
    replays what its predecessor left there. ``warehouse=None`` passes no ``--warehouse`` (the
    program then takes ``$LOGQ_WAREHOUSE``).
    """
    port = free_port()
    log = work / f"aggregator-{port}.log"
    cmd = [
        str(console_script("logq-aggregator")),
        "--listen", f"{LOCALHOST}:{port}",
        *(["--warehouse", warehouse] if warehouse is not None else []),
        "--buffer-dir", str(buffer_dir or work / "buffer"),
        "--flush-interval", str(flush_interval),
        *extra,
    ]  # fmt: skip
    proc = start_group(cmd, log, env=env)
    agg = Aggregator(proc, log, port)
    try:
        wait_until(lambda: port_open(LOCALHOST, port), 30, "logq-aggregator", proc=proc, log=log)
    except BaseException:
        agg.kill()
        raise
    return agg


def run_shipper_once(
    aggregator: str, docker_root: Path, state_dir: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """``logq-shipper --once``; the result carries its output for assertion messages."""
    cmd = [
        str(console_script("logq-shipper")),
        "--aggregator", aggregator,
        "--docker-root", str(docker_root),
        "--state-dir", str(state_dir),
        "--once",
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def start_shipper(
    aggregator: str, docker_root: Path, state_dir: Path, env: dict[str, str], *extra: str
) -> Daemon:
    """``logq-shipper`` in follow mode (no ``--once``), logging to ``state_dir/../shipper.log``."""
    log = state_dir.parent / "shipper.log"
    cmd = [
        str(console_script("logq-shipper")),
        "--aggregator", aggregator,
        "--docker-root", str(docker_root),
        "--state-dir", str(state_dir),
        *extra,
    ]  # fmt: skip
    return Daemon(start_group(cmd, log, env=env), log)


def logq_json(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """Run ``logq ARGS --format json`` and return the parsed JSON array of row objects."""
    cmd = [str(console_script("logq")), *args, "--format", "json"]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    return _json_rows(args, done.returncode, done.stdout, done.stderr)


def logq_json_in_process(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """:func:`logq_json` run in this process (typer's test runner), with ``env`` as the whole
    environment while it runs: the same command code, without a new Python importing pyarrow,
    DuckDB and sqlglot first (about a CPU-second of each ``logq`` process). For reading back
    what a test wrote; a test of the program itself runs :func:`logq_json`."""
    from typer.testing import CliRunner

    from cli.app import app

    unset: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    done = CliRunner().invoke(
        app, [*args, "--format", "json"], env={**unset, **env}, catch_exceptions=False
    )
    return _json_rows(args, done.exit_code, done.stdout, done.stderr)


def _json_rows(args: list[str], status: int, stdout: str, stderr: str) -> list[dict[str, Any]]:
    assert status == 0, f"{' '.join(args)} exited {status}:\n{stderr}"
    rows = json.loads(stdout)
    assert isinstance(rows, list), stdout[:500]
    return rows
