"""SIGTERM while the aggregator reads the buffer a previous run left: a clean stop, exit 0.

Audit: the start-up reads every segment left behind (their chunk ids, seconds per GiB) before
the Forward port opens, and the signal handlers were installed only after that: a SIGTERM
meanwhile (a rolling deploy, an orchestrator giving up on a slow start) killed the process with
the default action (exit -15, no log line). Now the stop ends the start-up: one line saying so,
exit 0 (nothing was acknowledged in this run), the buffer left as found for the next start.

A real process; its read is held at the second segment by a ``sitecustomize`` hook (on
``PYTHONPATH``, as in tests/test_interrupt_at_start.py), so the signal lands mid-read without
depending on the machine's speed.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from pathlib import Path

import pytest

from aggregator.state_files import SEGMENT_SUFFIX, segment_name
from tests.aggregator.helpers import read_table, start_aggregator
from tests.aggregator.test_flusher import write_segment
from tests.support.procs import console_script, start_group, stop_group, wait_until

pytestmark = pytest.mark.integration

SEGMENTS = 3

SITECUSTOMIZE = '''\
"""Test hook of tests/aggregator/test_stop_during_start.py: once aggregator.buffer is imported,
its reading of chunk ids stops before the second segment, touches $LOGQ_TEST_REACHED and waits
for the file $LOGQ_TEST_GO. The stop's watchdog takes 0.3 s to start (a busy host): the stop
must be in force before "stop requested" is logged, or the read went on past the next segment."""
import importlib.util
import os
import sys
import time


def _hold_the_read(module):
    real, calls = module.frame_chunks, []

    def held(frames):
        calls.append(1)
        if len(calls) == 2:
            open(os.environ["LOGQ_TEST_REACHED"], "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.environ["LOGQ_TEST_GO"]):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        return real(frames)

    module.frame_chunks = held


def _slow_watchdog(module):
    start = module.StopWatchdog.start

    def slow_start(self):
        start(self)
        time.sleep(0.3)

    module.StopWatchdog.start = slow_start


PATCHES = {"aggregator.buffer": _hold_the_read, "aggregator.stop_budget": _slow_watchdog}


class _Patch:
    """Runs a module of PATCHES, then its patch; leaves sys.meta_path after the last."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        patch = PATCHES.pop(name, None)
        if patch is None:
            return None
        if not PATCHES:
            sys.meta_path.remove(_Patch)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch)
'''


def _digests(buffer_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in buffer_dir.glob(f"*{SEGMENT_SUFFIX}")
    }


def test_sigterm_while_the_buffer_is_read_stops_cleanly_with_exit_0(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    buffer_dir = tmp_path / "agg-buffer"
    buffer_dir.mkdir()
    records = sum(
        write_segment(buffer_dir / segment_name(seq), frames=4, per_frame=20, source=f"s{seq}")
        for seq in range(1, SEGMENTS + 1)
    )
    before = _digests(buffer_dir)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    reached, go = tmp_path / "reached", tmp_path / "go"
    env = {
        **subprocess_env,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(hook), subprocess_env.get("PYTHONPATH", "")) if p
        ),
        "LOGQ_TEST_REACHED": str(reached),
        "LOGQ_TEST_GO": str(go),
    }
    log = tmp_path / "first.log"
    warehouse = str(tmp_path / "warehouse")
    args = [
        str(console_script("logq-aggregator")),
        *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        *("--warehouse", warehouse, "--buffer-dir", str(buffer_dir)),
    ]
    proc = start_group(args, log, env=env)
    try:
        wait_until(reached.exists, 60, "the read of the second segment", proc=proc, log=log)
        proc.send_signal(signal.SIGTERM)

        def stop_heard() -> bool:
            return "stop requested during start-up" in log.read_text(errors="replace")

        wait_until(stop_heard, 30, "the stop request logged", proc=proc, log=log)
        go.touch()  # the read goes on, and ends after this segment
        status = proc.wait(60)
    finally:
        stop_group(proc, timeout=0, sig=signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert status == 0, output
    assert "Traceback" not in output and "listening on" not in output, output
    [line] = [x for x in output.splitlines() if "stopped during start-up" in x]
    assert re.search(rf"reading the {SEGMENTS} buffer segments .*: 1 done", line), line
    assert str(buffer_dir) in line and "next start" in line
    assert _digests(buffer_dir) == before, "the buffer is left as found"

    agg = start_aggregator(tmp_path, warehouse=warehouse)  # the lock is free, nothing is lost
    try:

        def all_written() -> bool:
            tables = [read_table(warehouse, t) for t in ("container_logs", "envoy_access")]
            return sum(t.num_rows for t in tables) == records

        wait_until(all_written, 60, f"{records} records replayed", proc=agg.proc, log=agg.log)
    finally:
        assert agg.stop() == 0
