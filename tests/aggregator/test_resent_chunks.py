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
from tests.aggregator.helpers import read_acks, read_table, start_aggregator, wait_rows


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


@pytest.mark.integration
def test_the_same_entries_from_another_host_or_tag_are_not_a_resend(tmp_path: Path) -> None:
    """Fluent Bit's chunk id is a hash of the entries: two replicas that log the same line in
    the same millisecond (time taken from the line, no metadata) send the same id. Only a
    resend from the same host under the same tag is one."""
    import socket

    agg = start_aggregator(tmp_path)
    when = time.time_ns()
    body = wire.pack_entries([(when, {"log": "GET /healthz 200"})])
    chunk = hashlib.sha512(body).hexdigest()[:32]

    def send(tag: str, source: str) -> None:
        with socket.socket() as sock:
            sock.bind((source, 0))  # the loopback answers every 127.x address
            sock.settimeout(15)
            sock.connect(("127.0.0.1", agg.port))
            sock.sendall(wire.pack([tag, body, {"chunk": chunk}]))
            assert read_acks(sock, 1) == [chunk]

    try:
        send("kube.web-1", "127.0.0.1")
        send("kube.web-2", "127.0.0.1")  # another tag
        send("kube.web-1", "127.0.0.2")  # another host
        send("kube.web-1", "127.0.0.1")  # a resend
        table = wait_rows(agg.warehouse, "container_logs", 3, agg)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert table["message"].to_pylist() == ["GET /healthz 200"] * 3


def test_keys_are_small_whatever_the_chunk_id() -> None:
    """A client's chunk id may be megabytes: the remembered key is a 16-byte digest."""
    import pyarrow as pa

    from aggregator.chunks import chunk_key
    from aggregator.decode import BUFFER_SCHEMA

    batch = pa.RecordBatch.from_pylist(
        [{"tag": "t", "time_ns": 1, "log": "x"}], schema=BUFFER_SCHEMA
    )
    key = chunk_key("c" * (1 << 20), batch, "10.0.0.1")
    assert len(key) == 16
    assert key == chunk_key("c" * (1 << 20), batch, "10.0.0.1")
    assert key != chunk_key("c" * (1 << 20), batch, "10.0.0.2")


def test_a_chunk_whose_write_failed_is_forgotten_and_old_ones_age_out() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        chunks = RecentChunks(limit=2)
        failed: asyncio.Future[None] = loop.create_future()
        chunks.add(b"failed", failed)
        assert chunks.earlier(b"failed") == (True, failed)  # pending: wait for that write
        failed.set_exception(OSError("disk full"))
        failed.exception()
        await asyncio.sleep(0)
        assert chunks.earlier(b"failed") == (False, None)  # never acked: store the resend
        done: asyncio.Future[None] = loop.create_future()
        chunks.add(b"done", done)
        done.set_result(None)
        await asyncio.sleep(0)
        assert chunks.earlier(b"done") == (True, None)
        chunks.add(b"x", None)
        chunks.add(b"y", None)
        assert chunks.earlier(b"done") == (False, None)  # beyond the limit: forgotten
        assert len(chunks) == 2

    asyncio.run(go())
