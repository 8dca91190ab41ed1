"""--buffer-limit-bytes: while the warehouse refuses writes the buffer fills, then acks stop."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aggregator.server import BACKPRESSURE_CLOSE_SECONDS
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration

RETRY_MAX = 1.5
"""--retry-max-interval of the blocked aggregators (the default, 60 s, would make each test wait
up to a minute for the warehouse to come back)."""
RETRYING = re.compile(r"retrying in (\d+\.\d)s")


def _blocked_aggregator(tmp_path: Path, retry_max: float = RETRY_MAX) -> tuple[Any, Path, Path]:
    """An aggregator with a 150 KB buffer limit whose every flush fails until ``blocker`` (a
    file where the container_logs folder should be) is removed. Failing flushes are retried at
    least every ``retry_max`` seconds, so the warehouse's return is seen within that."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    blocker = warehouse / "container_logs"
    blocker.write_text("a file where the table folder should be: every flush fails")
    agg = start_aggregator(
        tmp_path,
        warehouse=str(warehouse),
        extra=["--buffer-limit-bytes", "150000", "--retry-max-interval", str(retry_max)],
    )
    return agg, warehouse, blocker


def test_acks_withheld_while_buffer_full_then_resume(tmp_path: Path) -> None:
    """Acks stop while the buffer is over its limit; a connection left unread for
    BACKPRESSURE_CLOSE_SECONDS is closed unread, and the client's resend (as every Forward
    client does without an ack) is stored once when the warehouse is back."""
    agg, warehouse, blocker = _blocked_aggregator(tmp_path)
    chunks = 20
    acked: list[str] = []
    reconnects: list[int] = []
    errors: list[BaseException] = []

    def batch(c: int) -> bytes:
        lines = [(time.time_ns(), record(f"{c}-{i}-{os.urandom(100).hex()}")) for i in range(200)]
        return wire.encode_packed_forward("logq.bp", lines, str(c))

    def sender() -> None:
        try:
            c, payload = 0, batch(0)
            while c < chunks:
                with agg.connect() as sock:
                    sock.settimeout(120)
                    try:
                        while c < chunks:
                            sock.sendall(payload)
                            acked.extend(read_acks(sock, 1, timeout=120))
                            c += 1
                            payload = batch(c)
                    except (ConnectionError, OSError):
                        reconnects.append(c)  # no ack: resend the same batch
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    try:
        thread.start()
        wait_until(lambda: "failed" in agg.log_text(), 30, "a failed flush", proc=agg.proc)
        time.sleep(3)
        stalled = len(acked)
        assert 0 < stalled < chunks, "acks should stop once the buffer is over its limit"
        wait_until(
            lambda: f"buffer full for {BACKPRESSURE_CLOSE_SECONDS:.0f}s" in agg.log_text(),
            BACKPRESSURE_CLOSE_SECONDS + 20,
            "the paused connection closed",
            proc=agg.proc,
        )
        assert len(acked) == stalled, "no ack while the buffer is full"
        blocker.unlink()  # the warehouse is back
        thread.join(timeout=120)
        assert not thread.is_alive() and not errors, errors
        assert acked == [str(c) for c in range(chunks)]
        assert reconnects, "the client should have been closed and have resent"
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    waits = [float(w) for w in RETRYING.findall(agg.log_text())]
    assert max(waits) == RETRY_MAX, f"the retry waits double up to --retry-max-interval: {waits}"
    messages = read_table(str(warehouse), "container_logs")["message"].to_pylist()
    assert len(messages) == chunks * 200 and len(set(messages)) == chunks * 200


#: Runs the rest of the command with files capped at argv[1] bytes (a disk that fills up):
#: writes past it fail with EFBIG (CPython ignores SIGXFSZ).
_FSIZE_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


def test_a_failing_buffer_write_closes_only_that_connection_and_acks_nothing_after_it(
    tmp_path: Path,
) -> None:
    agg = start_aggregator(
        tmp_path,
        extra=["--flush-interval", "300", "--segment-bytes", "100000000"],
        wrapper=[sys.executable, "-c", _FSIZE_LIMIT, "400000"],
    )
    acked: list[str] = []
    sent: dict[str, list[str]] = {}
    try:
        with agg.connect() as sock, pytest.raises((ConnectionError, OSError)):
            for c in range(100):
                lines = [f"{c}-{i}-{os.urandom(60).hex()}" for i in range(200)]
                sent[str(c)] = lines
                entries = [(time.time_ns(), record(line)) for line in lines]
                sock.sendall(wire.encode_packed_forward("logq.full", entries, str(c)))
                acked.extend(read_acks(sock, 1, timeout=30))
        assert 0 < len(acked) < 100, "the 400 kB file limit should stop the buffer early"
        assert agg.proc.poll() is None, "the server must survive a failed buffer write"
        log_text = agg.log_text()
        assert "level=error" in log_text and "could not write to the buffer" in log_text
        # Another client still gets in (and is refused at the same write, not crashed).
        with agg.connect() as sock:
            sock.sendall(wire.encode_packed_forward("logq.full", [], "empty"))
            assert read_acks(sock, 1) == ["empty"]
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    stored = sorted(read_table(agg.warehouse, "container_logs")["message"].to_pylist())
    assert stored == sorted(line for c in acked for line in sent[c])  # acked: all, once


def test_clients_without_acks_wait_while_the_buffer_is_full_and_lose_nothing(
    tmp_path: Path,
) -> None:
    """A client that never asks for acks (fluent-logger, Fluent Bit or Fluentd without
    require_ack_response) cannot resend what it wrote: its connection is paused by TCP
    backpressure for as long as the buffer is full, never closed unread. A connection opened
    while the buffer is full is told apart by its first message: without a chunk it waits too;
    with one it is closed after BACKPRESSURE_CLOSE_SECONDS and nothing of it is stored (its
    client resends elsewhere: a copy stored here later would be a duplicate)."""
    agg, warehouse, blocker = _blocked_aggregator(tmp_path, retry_max=0.2)  # below the first
    total = 3000
    done = threading.Event()
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            with agg.connect() as sock:
                sock.settimeout(300)
                for i in range(total):  # Message mode, no chunk: fire and forget
                    line = f"noack-{i}-{os.urandom(60).hex()}"
                    sock.sendall(wire.encode_message("logq.na", time.time_ns(), record(line)))
            done.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    try:
        thread.start()
        wait_until(lambda: "failed" in agg.log_text(), 30, "a failed flush", proc=agg.proc)
        time.sleep(2)  # the buffer fills
        with agg.connect() as late_noack, agg.connect() as late_acked:
            for i in range(20):
                late = wire.encode_message("logq.na", time.time_ns(), record(f"late-noack-{i}"))
                late_noack.sendall(late)
            lines = [(time.time_ns(), record(f"late-acked-{i}")) for i in range(20)]
            late_acked.sendall(wire.encode_packed_forward("logq.la", lines, "late"))
            time.sleep(BACKPRESSURE_CLOSE_SECONDS + 3)
            # Unread bytes, 5x the buffer limit, from clients without acks: not closed.
            assert agg.log_text().count(f"buffer full for {BACKPRESSURE_CLOSE_SECONDS:.0f}s") == 1
            late_acked.settimeout(10)
            assert late_acked.recv(100) == b"", "the late client with acks is closed, unacked"
            blocker.unlink()  # the warehouse is back
            thread.join(timeout=120)
            assert done.is_set() and not errors, errors
            # Without acks only the warehouse tells when everything sent has been read.
            wait_rows(str(warehouse), "container_logs", total + 20, agg, timeout=120)
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    messages = read_table(str(warehouse), "container_logs")["message"].to_pylist()
    assert len(messages) == total + 20 and len(set(messages)) == total + 20
    assert sum(m.startswith("late-noack-") for m in messages) == 20
    waits = {float(w) for w in RETRYING.findall(agg.log_text())}
    assert waits == {0.2}, f"a --retry-max-interval under 0.5 s is the first wait too: {waits}"
    assert not any(m.startswith("late-acked-") for m in messages)
