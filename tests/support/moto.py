"""moto's standalone server for Athena API tests: Athena cannot run offline, its client path can.

Only the AWS *API* is emulated (StartQueryExecution, GetQueryExecution, GetQueryResults...); the
SQL itself is tested for real through DuckDB elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import (
    LOCALHOST,
    console_script,
    free_port,
    start_group,
    stop_group,
    wait_until,
)

STARTUP_TIMEOUT = 30.0


@dataclass
class MotoServer:
    """A running ``moto_server``; point boto3/pyathena at :attr:`endpoint`."""

    endpoint: str
    proc: subprocess.Popen
    log_dir: Path

    def stop(self) -> None:
        stop_group(self.proc, timeout=3.0)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def reset(self) -> None:
        """Forget every resource moto holds (``POST /moto-api/reset``), between tests."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_moto() -> MotoServer:
    """Start ``moto_server -H 127.0.0.1 -p PORT`` and wait until it answers HTTP."""
    exe = console_script("moto_server")
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="logq-moto-"))
    log = log_dir / "moto.log"
    proc = start_group([str(exe), "-H", LOCALHOST, "-p", str(port)], log)
    endpoint = f"http://{LOCALHOST}:{port}"
    try:
        wait_until(lambda: _answers(endpoint), STARTUP_TIMEOUT, "moto_server", proc=proc, log=log)
    except (RuntimeError, TimeoutError):
        stop_group(proc, timeout=1.0)
        raise
    return MotoServer(endpoint=endpoint, proc=proc, log_dir=log_dir)
