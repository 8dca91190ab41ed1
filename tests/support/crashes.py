"""What a crashed pytest-xdist worker printed as it died, shown in the run's summary.

A worker that dies of a signal (a segfault or an abort in a C extension) is reported by xdist
only as "worker 'gw2' crashed while running T". Python's fault handler prints the stack of
every thread as the process dies, but into the worker's stderr, where it is mixed into the
progress dots or cut from a CI log that keeps only the tail. Here each worker's fault handler
writes to a file of its own instead, and the controller prints whatever such files hold at the
end of the run, next to the failure it explains.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import pytest

#: The folder of this run's fault files (set by the controller; workers inherit it).
FAULTS_DIR = "LOGQ_TEST_FAULTS_DIR"
#: The frames of each thread's stack that the summary shows (the innermost: where it was).
SHOWN_FRAMES = 8

#: This worker's fault file, open while the fault handler writes to it.
_fault_file: IO[str] | None = None
#: The folder this controller made (removed at the end); None when it was given.
_made: str | None = None


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin, which takes stderr
def pytest_configure(config: pytest.Config) -> None:
    global _fault_file, _made
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        if FAULTS_DIR not in os.environ:  # set before xdist starts the workers
            _made = tempfile.mkdtemp(prefix="logq-test-faults-")
            os.environ[FAULTS_DIR] = _made
        return
    folder = os.environ.get(FAULTS_DIR)
    if not folder or not os.path.isdir(folder):
        return
    _fault_file = open(Path(folder) / f"{worker}-{os.getpid()}.log", "w", encoding="utf-8")  # noqa: SIM115
    faulthandler.enable(_fault_file, all_threads=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        return
    folder = os.environ.get(FAULTS_DIR)
    if not folder or not os.path.isdir(folder):
        return
    for path in sorted(Path(folder).glob("*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines:
            continue
        terminalreporter.section(f"fault handler output of worker {path.stem}", sep="-")
        for line in innermost_frames(lines, SHOWN_FRAMES):
            terminalreporter.write_line(line)


def innermost_frames(lines: list[str], frames: int) -> list[str]:
    """A fault handler's output with only the first ``frames`` frames of each thread's stack
    (most recent call first: the lines that say where it was; the rest is pytest's own)."""
    kept: list[str] = []
    shown = 0
    for line in lines:
        if not line.startswith("  File "):
            kept.append(line)  # the fatal error, a thread's heading, a blank line
            shown = 0
        elif shown < frames:
            kept.append(line)
            shown += 1
    return kept


def pytest_unconfigure(config: pytest.Config) -> None:
    global _fault_file, _made
    if _made is not None:
        shutil.rmtree(_made, ignore_errors=True)
        os.environ.pop(FAULTS_DIR, None)
        _made = None
    if _fault_file is not None:
        faulthandler.disable()
        _fault_file.close()
        _fault_file = None
