"""Clients other than logq-shipper (Fluent Bit, Fluentd) resend a message whose ack they did not
get, under the same ``chunk`` id. Their records carry no source offsets: the chunk id is what
tells the aggregator that it has them already."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import time
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.chunks import RecentChunks
from aggregator.state_files import SEGMENT_SUFFIX
from shipper import wire
from tests.aggregator.helpers import (
    AggregatorProc,
    read_acks,
    read_table,
    start_aggregator,
    wait_rows,
)
from tests.support.metrics import metrics_base, metrics_text, sample
from tests.support.procs import wait_until


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
            # Stored and acked, but the ack is lost on the way: the client never takes it (here
            # it waits for it to be sent, then ignores it: a client that closes before its
            # message is read has given it up, and it is not stored, test_given_up_messages.py).
            read_acks(sock, 1)
        with agg.connect() as sock:
            sock.sendall(first)  # Fluent Bit's retry, on a new connection
            sock.sendall(second)
            assert read_acks(sock, 2) == [first_id, second_id]
        with agg.connect() as sock:
            sock.sendall(first)  # once more, after the first copy was acked
            assert read_acks(sock, 1) == [first_id]
        table = wait_rows(agg.warehouse, "container_logs", 4, agg)
        metrics = metrics_text(metrics_base(agg.log_text()))
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


@pytest.mark.integration
def test_fluent_bit_message_mode_acks_are_not_taken_for_resends(tmp_path: Path) -> None:
    """Fluent Bit's forward output in Message mode (a Tag built from record fields) with
    ``Require_ack_response`` hashes zero bytes for every message (``record_size = off - pre``
    with ``off`` never advanced, plugins/out_forward/forward_format.c): each one's chunk is
    ``cf83e1357eefb8bdf1542850d66d8007``. Lines of one tag in the same second (a parser's
    ``Time_Key`` of second precision) were taken for resends of the first: acked, and lost."""
    agg = start_aggregator(tmp_path)
    chunk = hashlib.sha512(b"").hexdigest()[:32]
    second = wire.EventTime(int(time.time()), 0)
    texts = ["GET /a 200", "GET /b 500", "GET /c 200"]
    try:
        with agg.connect() as sock:
            for text in texts:
                record = {"log": text}
                sock.sendall(
                    wire.pack(["web", second, record, {"chunk": chunk, "fluent_signal": 0}])
                )
                assert read_acks(sock, 1) == [chunk]
        table = wait_rows(agg.warehouse, "container_logs", 3, agg)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == texts


def _raw_acks(sock: socket.socket, count: int) -> list[object]:
    """The next ``count`` replies as decoded, ``bin`` as bytes (not :func:`read_acks`' text)."""
    unpacker = wire.new_unpacker()
    replies: list[object] = []
    sock.settimeout(30)
    while len(replies) < count:
        data = sock.recv(65536)
        assert data, f"closed after {len(replies)} of {count} replies"
        unpacker.feed(data)
        replies += list(unpacker)
    return replies


@pytest.mark.integration
def test_chunk_ids_and_tags_are_told_apart_by_their_bytes(tmp_path: Path) -> None:
    """A ``bin`` chunk id is echoed as sent; ids or tags that differ only in bytes that are no
    UTF-8 (read as the same text) are other messages, not resends; and a ``chunk`` key sent as
    ``bin`` asks for an ack like a ``str`` one (unacked, its client resent it: stored again)."""
    agg = start_aggregator(tmp_path)
    second = int(time.time())

    def message(tag: bytes, text: str, options: dict[object, object]) -> bytes:
        return wire.pack([tag, [[second, {"log": text}]], options])

    try:
        with agg.connect() as sock:
            sock.sendall(message(b"ids", "under id 80", {"chunk": b"\x80id"}))
            sock.sendall(message(b"ids", "under id 81", {"chunk": b"\x81id"}))
            assert _raw_acks(sock, 2) == [{"ack": b"\x80id"}, {"ack": b"\x81id"}]
            for tag in (b"tag.\xff", b"tag.\xfe"):  # the same entries and id: Fluent Bit's hash
                sock.sendall(message(tag, "same entries", {"chunk": "c1"}))
            sock.sendall(message(b"tag.\xff", "same entries", {"chunk": "c1"}))  # a resend
            assert _raw_acks(sock, 3) == [{"ack": "c1"}] * 3
            for _ in range(3):  # the first copy and two resends
                sock.sendall(message(b"keys", "bin option key", {b"chunk": "c2", b"size": 1}))
                assert _raw_acks(sock, 1) == [{"ack": "c2"}]
        table = wait_rows(agg.warehouse, "container_logs", 5, agg)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == [
        "bin option key",
        "same entries",
        "same entries",
        "under id 80",
        "under id 81",
    ]


def test_keys_are_small_whatever_the_chunk_id() -> None:
    """A client's chunk id may be megabytes: the remembered key is a 16-byte digest."""
    import pyarrow as pa

    from aggregator.chunks import chunk_key
    from aggregator.decode import BUFFER_SCHEMA

    batch = pa.RecordBatch.from_pylist(
        [{"tag": "t", "time_ns": 1, "log": "x"}], schema=BUFFER_SCHEMA
    )
    key = chunk_key("c" * (1 << 20), "t", batch, "10.0.0.1")
    assert len(key) == 16
    assert key == chunk_key("c" * (1 << 20), "t", batch, "10.0.0.1")
    assert key != chunk_key("c" * (1 << 20), "t", batch, "10.0.0.2")


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


# --- across a restart ------------------------------------------------------------------------


def _metric(agg: AggregatorProc, name: str) -> float:
    return sample(metrics_base(agg.log_text()), name, default=0.0)


def _send_unread(agg: AggregatorProc, messages: list[bytes]) -> socket.socket:
    """Send ``messages`` and never read the acks; return once the aggregator has written them
    (the records are fsync'd), with the connection still open: the kill -9 that follows cuts it
    off, so for the client those acks are lost."""
    sock = agg.connect()
    for message in messages:
        sock.sendall(message)
    wait_until(
        lambda: _metric(agg, "logq_aggregator_acks_total") >= len(messages),
        120,
        "acks written",
        proc=agg.proc,
        log=agg.log,
    )
    return sock


def _segments_with_data(agg: AggregatorProc) -> list[Path]:
    return [p for p in agg.buffer_dir.glob(f"*{SEGMENT_SUFFIX}") if p.stat().st_size > 0]


def _restart(tmp_path: Path, agg: AggregatorProc) -> AggregatorProc:
    agg.kill9()
    return start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])


@pytest.mark.integration
@pytest.mark.parametrize("flushed", [False, True], ids=["in-the-buffer", "flushed"])
def test_a_resend_after_a_kill_9_between_fsync_and_ack_is_stored_once(
    tmp_path: Path, flushed: bool
) -> None:
    """The aggregator dies after fsync'ing a message but before its ack reaches the client,
    which resends it to the restarted aggregator: the rows are stored once. Whether the first
    copy was still in the buffer at the kill (replayed at start) or already flushed (its segment
    deleted: the chunk ids are kept in ``chunks.journal``)."""
    interval = "0.5" if flushed else "3600"
    first, first_id = fluent_bit_message("kube.web", ["a-1", "a-2", "a-3"])
    second, second_id = fluent_bit_message("kube.web", ["b-1", "b-2"])
    agg = start_aggregator(
        tmp_path, extra=["--metrics-listen", "127.0.0.1:0", "--flush-interval", interval]
    )
    try:
        sock = _send_unread(agg, [first, second])
        if flushed:
            wait_rows(agg.warehouse, "container_logs", 5, agg, timeout=120)
            wait_until(lambda: not _segments_with_data(agg), 120, "segments deleted")
        else:
            assert _segments_with_data(agg)
        agg = _restart(tmp_path, agg)
        sock.close()
        with agg.connect() as again:
            again.sendall(first)  # the client's retry, to the restarted aggregator
            again.sendall(second)
            assert read_acks(again, 2) == [first_id, second_id]
        wait_rows(agg.warehouse, "container_logs", 5, agg, timeout=120)
        duplicate_chunks = _metric(agg, "logq_aggregator_duplicate_chunks_total")
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == ["a-1", "a-2", "a-3", "b-1", "b-2"]
    assert duplicate_chunks == 2


@pytest.mark.integration
def test_new_data_under_a_reused_chunk_id_after_a_restart_is_stored(tmp_path: Path) -> None:
    """A client that numbers its chunks restarts with the aggregator and sends other entries
    under id "1": not a resend (the key holds row count and event times), so stored; a real
    resend of the first message is still recognised."""

    def numbered(texts: list[str], start: int) -> bytes:
        body = wire.pack_entries([(start + i, {"log": t}) for i, t in enumerate(texts)])
        return wire.pack(["app.web", body, {"chunk": "1"}])

    now = time.time_ns()
    before = numbered(["before a", "before b"], now)
    agg = start_aggregator(
        tmp_path, extra=["--metrics-listen", "127.0.0.1:0", "--flush-interval", "3600"]
    )
    try:
        sock = _send_unread(agg, [before])
        agg = _restart(tmp_path, agg)
        sock.close()
        with agg.connect() as again:
            again.sendall(numbered(["after a", "after b"], now + 10_000))  # other times
            again.sendall(numbered(["after c", "after d", "after e"], now))  # other count
            again.sendall(before)  # a resend
            assert read_acks(again, 3) == ["1", "1", "1"]
        wait_rows(agg.warehouse, "container_logs", 7, agg, timeout=120)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == [
        "after a", "after b", "after c", "after d", "after e", "before a", "before b"
    ]  # fmt: skip


@pytest.mark.integration
def test_a_segment_of_the_previous_version_still_replays(tmp_path: Path) -> None:
    """Frames without a chunk key (written before keys were kept) replay as before; they only
    bring no chunk ids, so their resends are stored (the previous behaviour)."""
    import pyarrow as pa

    from aggregator.buffer import Buffer
    from aggregator.decode import BUFFER_SCHEMA, to_ipc

    batch = pa.RecordBatch.from_pylist(
        [{"tag": "app.old", "time_ns": time.time_ns() + i, "log": f"old-{i}"} for i in range(3)],
        schema=BUFFER_SCHEMA,
    )

    async def write_old_segment() -> None:
        buffer = Buffer(tmp_path / "agg-buffer", 1 << 20, 1 << 30)
        buffer.open()
        buffer.start()
        await buffer.append(to_ipc(batch))  # what the previous version wrote, no key
        await buffer.close()

    asyncio.run(write_old_segment())
    agg = start_aggregator(tmp_path)
    try:
        wait_rows(agg.warehouse, "container_logs", 3, agg, timeout=120)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == ["old-0", "old-1", "old-2"]
    assert "Traceback" not in agg.log_text()


# --- the pieces, in process ---------------------------------------------------------------------


def _batch(texts: list[str], start: int = 1) -> pa.RecordBatch:
    from aggregator.decode import BUFFER_SCHEMA

    return pa.RecordBatch.from_pylist(
        [{"tag": "t", "time_ns": start + i, "log": t} for i, t in enumerate(texts)],
        schema=BUFFER_SCHEMA,
    )


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_a_keyed_frame_reads_as_the_same_table_for_old_and_new_readers(compression: str) -> None:
    """The key of a message too big for a small frame (aggregator/small_frames.py: those carry
    it as a field) rides as custom metadata of the record batch: ``from_ipc`` (and so the
    previous version, after a downgrade) reads the very table ``to_ipc`` would have written."""
    from aggregator.batch import records_table
    from aggregator.chunks import frame_chunk, frame_payload
    from aggregator.decode import from_ipc, ipc_rows, to_ipc
    from aggregator.small_frames import MAX_ROWS

    batch = _batch(["x", "y", "logq.chunk"] * MAX_ROWS)
    key = bytes(range(16))
    keyed = frame_payload(batch, compression, key)
    plain = to_ipc(batch, compression)
    assert frame_payload(batch, compression, None) == plain
    assert ipc_rows(keyed) == 3 * MAX_ROWS
    assert from_ipc(keyed).equals(from_ipc(plain), check_metadata=True)
    assert records_table([keyed, plain]).equals(records_table([plain, plain]), check_metadata=True)
    assert frame_chunk(keyed) == key
    assert frame_chunk(plain) is None  # even with "logq.chunk" among its lines
    assert frame_chunk(b"\x00\x00\x00\x01logq.chunk garbage") is None
    # Lines that spell the key-value's bytes forge no key: only the batch header is read.
    value = (struct.pack("<I", 32) + b"f" * 32 + b"\x00").decode("latin-1")
    forged = _batch([f"\n\x00\x00\x00logq.chunk\x00{value}"] * (MAX_ROWS + 1))
    assert frame_chunk(to_ipc(forged, compression)) is None
    assert frame_chunk(frame_payload(forged, compression, key)) == key


def test_a_reopened_buffer_knows_the_chunks_of_its_segments_and_of_flushed_ones(
    tmp_path: Path,
) -> None:
    """In process: keys of a buffer left by a crash (no close) come back from its segments; those
    of a segment deleted after its flush from ``chunks.journal``."""
    from aggregator.buffer import Buffer
    from aggregator.chunks import frame_payload

    keys = [bytes([i]) * 16 for i in range(4)]

    async def crash_with_two_segments() -> None:
        buffer = Buffer(tmp_path, 1 << 20, 1 << 30)
        buffer.open()
        buffer.start()
        await buffer.write(frame_payload(_batch(["a"]), "none", keys[0]), chunk=keys[0])
        await buffer.write(frame_payload(_batch(["plain"]), "none", None))
        await buffer.seal()
        await buffer.write(frame_payload(_batch(["b"]), "zstd", keys[1]), chunk=keys[1])
        buffer.unlock()  # the process dies: no seal, nothing closed

    async def flush_one_then_crash() -> None:
        buffer = Buffer(tmp_path, 1 << 20, 1 << 30)
        replay = buffer.open()
        assert buffer.recent_chunks() == keys[:2]
        buffer.start()
        buffer.retire_chunks(replay[0])
        buffer.delete(replay[0])  # flushed: its key goes to the journal
        await buffer.write(frame_payload(_batch(["c"]), "none", keys[2]), chunk=keys[2])
        buffer.unlock()

    asyncio.run(crash_with_two_segments())
    asyncio.run(flush_one_then_crash())
    buffer = Buffer(tmp_path, 1 << 20, 1 << 30)
    buffer.open()
    assert buffer.recent_chunks() == [keys[0], keys[1], keys[2]]
    buffer.unlock()


def test_the_journal_keeps_recent_keys_within_its_limit_and_survives_a_torn_tail(
    tmp_path: Path,
) -> None:
    from aggregator.chunks import FlushedChunks

    path = tmp_path / "chunks.journal"
    journal = FlushedChunks(path, window=600, limit=5)
    key = [bytes([i]) * 16 for i in range(10)]
    journal.add(key[0:2], now=1000)
    journal.add(key[2:4], now=1500)
    assert FlushedChunks(path, window=600, limit=5).load(now=1550) == key[0:4]
    assert FlushedChunks(path, window=600, limit=5).load(now=1700) == key[2:4]  # aged out
    journal = FlushedChunks(path, window=600, limit=5)
    journal.add(key[4:8], now=1800)  # 6 live keys: the oldest goes
    assert journal.load(now=1800) == key[3:8]
    with open(path, "ab") as fh:  # a crash in the middle of an append
        fh.write(b"\x00\x00\x00\x30\x12\x34")
    journal = FlushedChunks(path, window=600, limit=5)
    assert journal.load(now=1800) == key[3:8]
    journal.add(key[8:9], now=1801)
    assert FlushedChunks(path, window=600, limit=5).load(now=1802) == key[4:9]
    assert FlushedChunks(path, window=600, limit=5).load(now=5000) == []
    assert not path.exists()


def test_the_journal_is_rewritten_once_mostly_dead(tmp_path: Path) -> None:
    """Appends only, until dead frames (out of the window) take more than half the file."""
    from aggregator.chunks import FlushedChunks

    path = tmp_path / "chunks.journal"
    journal = FlushedChunks(path, window=10, limit=100_000)
    sizes = []
    for i in range(100):  # 64 KB a segment: 6.4 MB appended, ~700 KB live at any time
        journal.add([i.to_bytes(16, "big")] * 4_000, now=float(i))
        sizes.append(path.stat().st_size)
    assert max(sizes) < 3 * (1 << 20)
    assert journal.load(now=99.0) == [
        i.to_bytes(16, "big") for i in range(89, 100) for _ in range(4_000)
    ]
