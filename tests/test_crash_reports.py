"""tests/support/crashes.py: a worker that dies of a signal leaves its stacks to the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.crashes import innermost_frames

ROOT = Path(__file__).resolve().parents[1]

DYING = """
import ctypes


def deep(n: int) -> None:
    if n == 0:
        ctypes.string_at(0)  # a segfault, as a C extension's
    deep(n - 1)


def test_dies() -> None:
    deep(20)


def test_lives() -> None:
    assert True
"""


@pytest.mark.integration
def test_a_crashed_worker_shows_where_each_thread_was(tmp_path: Path) -> None:
    """xdist says only "worker 'gw0' crashed while running ...": the summary now holds the
    fault handler's stacks, innermost frames first, and the other tests still run."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.support.crashes"]\n')
    (tmp_path / "test_dying.py").write_text(DYING)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    env.pop("LOGQ_TEST_FAULTS_DIR", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "1", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = run.stdout
    assert "worker 'gw0' crashed while running" in out, out[-3000:]
    assert "fault handler output of worker gw0-" in out, out[-3000:]
    summary = out.split("fault handler output of worker gw0-", 1)[1]
    assert "Fatal Python error: Segmentation fault" in summary, out[-3000:]
    assert 'test_dying.py", line 7 in deep' in summary  # where it died
    # 8 frames a thread: ctypes' string_at, deep at line 7, then 6 of the 20 deeps at line 8.
    assert summary.count("line 8 in deep") == 6, summary
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert list((tmp_path / "tmp").glob("logq-test-faults-*")) == []  # removed at the end


def test_only_the_innermost_frames_of_each_thread_are_kept() -> None:
    lines = [
        "Fatal Python error: Aborted",
        "",
        "Thread 0x1 (most recent call first):",
        *[f'  File "a.py", line {i} in f' for i in range(5)],
        "",
        "Current thread 0x2 (most recent call first):",
        *[f'  File "b.py", line {i} in g' for i in range(5)],
    ]
    kept = innermost_frames(lines, 2)
    assert kept == [
        "Fatal Python error: Aborted",
        "",
        "Thread 0x1 (most recent call first):",
        '  File "a.py", line 0 in f',
        '  File "a.py", line 1 in f',
        "",
        "Current thread 0x2 (most recent call first):",
        '  File "b.py", line 0 in g',
        '  File "b.py", line 1 in g',
    ]
