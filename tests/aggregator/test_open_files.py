"""The open-files limit: raised at start-up, named when reached, its accept errors rate-limited
(A2s19 #3: at systemd's soft limit of 1024, 1,100 idle connections wrote 444 MB of asyncio
tracebacks in a minute, and a buffer write failing with EMFILE said "free space")."""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import resource
import socket
import sys
import time
from pathlib import Path

import pytest

from aggregator.open_files import AcceptErrorFilter
from aggregator.server import _buffer_error
from shipper import wire
from tests.aggregator.helpers import AggregatorProc, read_acks, record, start_aggregator
from tests.support.procs import wait_until

#: Run the rest of argv under a soft (argv[1]) and hard (argv[2]) open-files limit.
_NOFILE = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)
pytestmark = pytest.mark.integration


def good_chunk_acked(agg: AggregatorProc, name: str) -> None:
    """One message from a new connection, acked."""
    frame = wire.encode_packed_forward("logq.fd", [(time.time_ns(), record(name))], name)
    with agg.connect() as sock:
        sock.sendall(frame)
        assert read_acks(sock, 1) == [name]


def _limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-files limits of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


def test_the_soft_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"needs a finite hard open-files limit of 2048 or more, got {hard}")
    wrapper = [sys.executable, "-c", _NOFILE, "64", str(hard)]
    agg = start_aggregator(tmp_path, wrapper=wrapper)
    try:
        assert _limits(agg.proc.pid) == (hard, hard)
        good_chunk_acked(agg, "after-raise")
    finally:
        assert agg.stop() == 0
    log = agg.log_text()
    assert f"open files limit raised soft={hard} was=64" in log
    assert "below what --max-connections" not in log


def test_a_limit_too_low_is_said_and_an_exhausted_accept_loop_logs_a_line_per_10_s(
    tmp_path: Path,
) -> None:
    """A hard limit of 128: a WARNING at start with the numbers; then 200 idle connections use
    every descriptor, and asyncio's accept errors (hundreds a second without the filter) come
    as one line per listener every 10 s, naming the limit."""
    wrapper = [sys.executable, "-c", _NOFILE, "128", "128"]
    agg = start_aggregator(tmp_path, wrapper=wrapper)
    accept_errors = re.compile(r"logger=asyncio .*accept", re.IGNORECASE)
    idle: list[socket.socket] = []
    try:
        log = agg.log_text()
        assert "the open files limit (128, after raising" in log
        assert "below what --max-connections 1024 needs (1104:" in log
        assert "lower --max-connections to 48" in log
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", agg.port), timeout=15))
        wait_until(
            lambda: accept_errors.search(agg.log_text()) is not None,
            60,
            "an accept error in the log",
            proc=agg.proc,
            log=agg.log,
        )
        # Descriptors stay exhausted for a while: without the filter, this logs hundreds of
        # lines (one per try, up to the listen backlog per event loop turn).
        time.sleep(3)
        lines = [line for line in agg.log_text().splitlines() if accept_errors.search(line)]
        assert 1 <= len(lines) <= 2, f"{len(lines)} accept error lines"
        assert "the process reached its open files limit (EMFILE, 128)" in lines[0]
        assert "Traceback" not in agg.log_text()
        for sock in idle:
            sock.close()
        idle.clear()
        good_chunk_acked(agg, "after-exhaustion")
    finally:
        for sock in idle:
            with contextlib.suppress(OSError):
                sock.close()
        assert agg.stop() == 0


def test_a_buffer_write_failing_at_the_fd_limit_names_the_limit_not_free_space() -> None:
    emfile = _buffer_error(OSError(errno.EMFILE, "Too many open files"))
    assert "open files limit (EMFILE" in str(emfile) and "free space" not in str(emfile)
    enfile = _buffer_error(OSError(errno.ENFILE, "Too many open files in system"))
    assert "ENFILE" in str(enfile) and "fs.file-max" in str(enfile)
    assert "free space under --buffer-dir" in str(_buffer_error(OSError(errno.ENOSPC, "full")))


def _accept_error(port: int) -> logging.LogRecord:
    """A record as asyncio's default exception handler logs a failed accept() (Python 3.11)."""
    exc = OSError(errno.EMFILE, "Too many open files")
    message = (
        "socket.accept() out of system resource\nsocket: <asyncio.TransportSocket fd=6, "
        f"family=2, type=1, proto=6, laddr=('127.0.0.1', {port})>"
    )
    return logging.LogRecord("asyncio", logging.ERROR, "x", 1, message, (), (OSError, exc, None))


def test_accept_errors_pass_once_per_listener_every_10_s_with_the_count_held_back() -> None:
    now = [0.0]
    accept_filter = AcceptErrorFilter(clock=lambda: now[0])
    first = _accept_error(24224)
    assert accept_filter.filter(first)
    assert first.exc_info is None, "no traceback"
    assert first.getMessage().startswith("cannot accept connections on 127.0.0.1:24224")
    assert "0 more since the last one" in first.getMessage()
    assert [accept_filter.filter(_accept_error(24224)) for _ in range(500)] == [False] * 500
    assert accept_filter.filter(_accept_error(9880)), "another listener has its own line"
    now[0] = 10.0
    again = _accept_error(24224)
    assert accept_filter.filter(again)
    assert "500 more since the last one" in again.getMessage()
    other = logging.LogRecord("asyncio", logging.ERROR, "x", 1, "Task was destroyed", (), None)
    assert accept_filter.filter(other), "other asyncio errors pass"
