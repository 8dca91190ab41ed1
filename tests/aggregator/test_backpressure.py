"""--buffer-limit-bytes: while the warehouse refuses writes the buffer fills, then acks stop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration


def test_acks_withheld_while_buffer_full_then_resume(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    blocker = warehouse / "container_logs"
    blocker.write_text("a file where the table folder should be: every flush fails")
    agg = start_aggregator(
        tmp_path, warehouse=str(warehouse), extra=["--buffer-limit-bytes", "150000"]
    )
    chunks = 20
    acked: list[str] = []
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            with agg.connect() as sock:
                sock.settimeout(120)
                for c in range(chunks):
                    lines = [
                        (time.time_ns(), record(f"{c}-{i}-{os.urandom(100).hex()}"))
                        for i in range(200)
                    ]
                    sock.sendall(wire.encode_packed_forward("logq.bp", lines, str(c)))
                    acked.extend(read_acks(sock, 1, timeout=120))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    try:
        thread.start()
        wait_until(lambda: "failed" in agg.log_text(), 30, "a failed flush", proc=agg.proc)
        time.sleep(3)
        stalled = len(acked)
        assert 0 < stalled < chunks, "acks should stop once the buffer is over its limit"
        time.sleep(2)
        assert len(acked) == stalled, "no ack while the buffer is full"
        blocker.unlink()  # the warehouse is back
        thread.join(timeout=90)
        assert not thread.is_alive() and not errors, errors
        assert acked == [str(c) for c in range(chunks)]
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    assert read_table(str(warehouse), "container_logs").num_rows == chunks * 200
