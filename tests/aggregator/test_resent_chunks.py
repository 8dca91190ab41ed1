"""Clients other than logq-shipper (Fluent Bit, Fluentd) resend a message whose ack they did not
get, under the same ``chunk`` id. Their records carry no source offsets: the chunk id is what
tells the aggregator that it has them already."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.request
from pathlib import Path

import pytest

from aggregator.chunks import RecentChunks
from shipper import wire
from tests.aggregator.helpers import read_acks, start_aggregator, wait_rows


def fluent_bit_message(tag: str, texts: list[str]) -> tuple[bytes, str]:
    """A PackedForward message as Fluent Bit's forward output sends it with
    ``Require_ack_response``: the chunk id is the hex of the first 16 bytes of the SHA-512 of
    the entries, so a resend carries the same id. No source id or offset in the records."""
    now = time.time_ns()
    body = wire.pack_entries(
        [(now + i, {"log": t, "container_name": "/web"}) for i, t in enumerate(texts)]
    )
    chunk = hashlib.sha512(body).hexdigest()[:32]
    return wire.pack([tag, body, {"chunk": chunk, "size": len(texts)}]), chunk


@pytest.mark.integration
def test_a_message_resent_after_a_lost_ack_is_acked_and_stored_once(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    first, first_id = fluent_bit_message("kube.web", ["a-1", "a-2", "a-3"])
    second, second_id = fluent_bit_message("kube.web", ["b-1"])
    try:
        with agg.connect() as sock:
            sock.sendall(first)
            # The connection breaks before the client reads its ack.
        with agg.connect() as sock:
            sock.sendall(first)  # Fluent Bit's retry, on a new connection
            sock.sendall(second)
            assert read_acks(sock, 2) == [first_id, second_id]
        with agg.connect() as sock:
            sock.sendall(first)  # once more, after the first copy was acked
            assert read_acks(sock, 1) == [first_id]
        table = wait_rows(agg.warehouse, "container_logs", 4, agg)
        port = int(re.search(r"metrics on http://[^:]+:(\d+)/", agg.log_text()).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert agg.stop() == 0
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == ["a-1", "a-2", "a-3", "b-1"]
    assert "logq_aggregator_duplicate_chunks_total 2.0" in metrics
    assert "logq_aggregator_duplicates_dropped_total 6.0" in metrics


@pytest.mark.integration
def test_new_data_under_a_reused_chunk_id_is_stored(tmp_path: Path) -> None:
    """A client that numbers its chunks and starts again at 1 after a restart: same id, other
    entries. Taken for a resend, they would be acked and lost."""
    agg = start_aggregator(tmp_path)
    try:
        with agg.connect() as sock:
            for texts in (["run-1 a", "run-1 b"], ["run-2 a", "run-2 b"], ["run-3 a"]):
                now = time.time_ns()
                body = wire.pack_entries([(now + i, {"log": t}) for i, t in enumerate(texts)])
                sock.sendall(wire.pack(["app.web", body, {"chunk": "1"}]))
                assert read_acks(sock, 1) == ["1"]
                time.sleep(0.01)
        table = wait_rows(agg.warehouse, "container_logs", 5, agg)
        assert agg.stop() == 0
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == [
        "run-1 a", "run-1 b", "run-2 a", "run-2 b", "run-3 a"
    ]  # fmt: skip


def test_a_chunk_whose_write_failed_is_forgotten_and_old_ones_age_out() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        chunks = RecentChunks(limit=2)
        failed: asyncio.Future[None] = loop.create_future()
        chunks.add("failed", failed)
        assert chunks.earlier("failed") == (True, failed)  # pending: wait for that write
        failed.set_exception(OSError("disk full"))
        failed.exception()
        await asyncio.sleep(0)
        assert chunks.earlier("failed") == (False, None)  # never acked: store the resend
        done: asyncio.Future[None] = loop.create_future()
        chunks.add("done", done)
        done.set_result(None)
        await asyncio.sleep(0)
        assert chunks.earlier("done") == (True, None)
        chunks.add("x", None)
        chunks.add("y", None)
        assert chunks.earlier("done") == (False, None)  # beyond the limit: forgotten
        assert len(chunks) == 2

    asyncio.run(go())
