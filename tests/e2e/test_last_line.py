"""A crashed container's last line, written without a newline, reaches the warehouse once.

Docker writes such a line as a partial json-file entry (no ``\\n`` in ``log``). ``logq-shipper
--once`` ships it as it is at the end of its run; the next runs, through the same real
aggregator, neither send it again nor store it twice, and a next part the container writes later
is a row of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shipper.hostgen import docker_line, make_container
from tests.support.pipeline import logq_json_in_process, run_shipper_once, start_aggregator

pytestmark = pytest.mark.integration

PANIC = "panic: runtime error: index out of range"


def test_a_trailing_partial_entry_is_stored_once(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = subprocess_env
    root = tmp_path / "containers"
    log = make_container(root, "9" * 64, "crash", labels={"logq.service": "crash"})
    log.write_bytes(docker_line("starting", 0) + docker_line(PANIC, 1, "stderr", nl=False))
    warehouse = str(tmp_path / "wh")
    state = tmp_path / "state"
    agg = start_aggregator(warehouse, tmp_path, env, flush_interval=60)
    try:
        for _ in range(2):  # the second run finds nothing new
            done = run_shipper_once(agg.address, root, state, env)
            assert done.returncode == 0, done.stdout + done.stderr
        with open(log, "ab") as f:
            f.write(docker_line(" (continued)", 2, "stderr") + docker_line("after", 3))
        done = run_shipper_once(agg.address, root, state, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    sql = "SELECT message, stream FROM container_logs WHERE service = 'crash' ORDER BY timestamp"
    rows = logq_json_in_process(["sql", sql, "--warehouse", warehouse], env)
    assert [(r["message"], r["stream"]) for r in rows] == [
        ("starting", "stdout"),
        (PANIC, "stderr"),
        (" (continued)", "stderr"),
        ("after", "stdout"),
    ]
