"""``logq-aggregator`` as a process: the four Forward modes, fluent-logger, SIGTERM, kill -9."""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import time
from pathlib import Path

import msgpack
import pytest
from fluent import sender

from aggregator.state_files import SEGMENT_SUFFIX
from shipper import wire
from tests.aggregator.helpers import (
    ENVOY_IMAGE,
    envoy_line,
    read_acks,
    read_table,
    record,
    start_aggregator,
    wait_rows,
)

pytestmark = pytest.mark.integration

NOW_NS = time.time_ns()


def test_four_modes_event_time_and_int_times(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    t_ns = NOW_NS - NOW_NS % 1_000_000  # ms precision survives exactly
    t_s = NOW_NS // 1_000_000_000
    try:
        with agg.connect() as sock:
            # Message mode, EventTime and integer time, with chunk.
            sock.sendall(
                wire.encode_message("logq.msg", t_ns, record("message-et"), {"chunk": "m1"})
            )
            sock.sendall(wire.pack(["logq.msg", t_s, record("message-int"), {"chunk": "m2"}]))
            # Forward mode, classic entries and Fluent Bit >= 5.0.5 [[time, meta], record] ones.
            fwd = [
                "logq.fwd",
                [
                    [wire.EventTime.from_ns(t_ns), record("forward-et")],
                    [t_s, record("forward-int")],
                    [[wire.EventTime.from_ns(t_ns), {}], record("forward-meta")],
                ],
                {"chunk": "f1", "size": 3},
            ]
            sock.sendall(wire.pack(fwd))
            # PackedForward as bin, and as str (old clients).
            body = wire.pack_entries(
                [
                    (t_ns, record("packed-bin")),
                    (t_ns, record("packed-2", tags=["extra", "keys"])),
                    (t_ns, {"log": ["x", "y"], "service": "recipe"}),
                ]
            )
            sock.sendall(wire.pack(["logq.packed", body, {"chunk": "p1"}]))
            raw = msgpack.packb(["logq.packed", "", {"chunk": "p2"}], use_bin_type=False)
            sock.sendall(raw)  # empty str body: zero events, still acked
            # CompressedPackedForward made of two concatenated gzip members.
            part1 = gzip.compress(wire.pack_entries([(t_ns, record("gzip-1"))]))
            part2 = gzip.compress(wire.pack_entries([(t_ns, record("gzip-2"))]))
            sock.sendall(
                wire.pack(["logq.gz", part1 + part2, {"chunk": "g1", "compressed": "gzip"}])
            )
            # Envoy line through the same path.
            sock.sendall(
                wire.encode_packed_forward(
                    "logq.recipe",
                    [(t_ns, record(envoy_line(code=503, flags="UH"), image=ENVOY_IMAGE))],
                    chunk="e1",
                    compress=True,
                )
            )
            acks = read_acks(sock, 7)
        assert acks == ["m1", "m2", "f1", "p1", "p2", "g1", "e1"]
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    logs = read_table(agg.warehouse, "container_logs")
    by_message = {r["message"]: r for r in logs.to_pylist()}
    expected = {
        "message-et",
        "message-int",
        "forward-et",
        "forward-int",
        "forward-meta",
        "packed-bin",
        "packed-2",
        '["x", "y"]',
        "gzip-1",
        "gzip-2",
    }
    assert set(by_message) == expected
    assert logs.num_rows == len(expected)
    assert int(by_message["message-et"]["timestamp"].timestamp() * 1000) == t_ns // 1_000_000
    assert int(by_message["message-int"]["timestamp"].timestamp()) == t_s
    assert by_message["packed-bin"]["service"] == "recipe"
    envoy = read_table(agg.warehouse, "envoy_access")
    assert envoy.num_rows == 1
    assert envoy["response_flags"].to_pylist() == ["UH"]


@pytest.mark.parametrize("nanosecond", [False, True])
def test_fluent_logger_message_mode(tmp_path: Path, nanosecond: bool) -> None:
    agg = start_aggregator(tmp_path)
    try:
        logger = sender.FluentSender(
            "app", host="127.0.0.1", port=agg.port, nanosecond_precision=nanosecond
        )
        for i in range(5):
            assert logger.emit("checkout", {"message": f"order {i}", "level": "info"}), (
                logger.last_error
            )
        assert logger.emit("checkout", {"cart": 3})
        logger.close()
        table = wait_rows(agg.warehouse, "container_logs", 6, agg)
    finally:
        assert agg.stop() == 0
    assert set(table["service"].to_pylist()) == {"checkout"}
    messages = sorted(table["message"].to_pylist())
    assert messages == sorted([f"order {i}" for i in range(5)] + ['{"cart": 3}'])
    now = time.time()
    for ts in table["timestamp"].to_pylist():
        assert abs(ts.timestamp() - now) < 600


def _chunk(sock, tag: str, lines: list[tuple[int, str]], chunk: str) -> None:
    entries = [
        (NOW_NS, record(text, source_id="src-1", offset=offset, host="h")) for offset, text in lines
    ]
    sock.sendall(wire.encode_packed_forward(tag, entries, chunk=chunk, compress=True))


def test_kill_9_after_ack_then_restart_keeps_every_line_once(tmp_path: Path) -> None:
    # A long flush interval: nothing reaches the warehouse before the kill.
    agg = start_aggregator(tmp_path, extra=["--flush-interval", "300"])
    sent: list[str] = []
    try:
        with agg.connect() as sock:
            for c in range(20):
                lines = [(c * 100 + i + 1, f"line {c}-{i}") for i in range(50)]
                _chunk(sock, "logq.billing", lines, f"c{c}")
                assert read_acks(sock, 1) == [f"c{c}"]
                sent += [t for _, t in lines]
        assert agg.kill9() == -signal.SIGKILL
    finally:
        agg.stop()
    assert read_table(agg.warehouse, "container_logs").num_rows == 0
    again = start_aggregator(tmp_path)
    try:
        # The shipper never got the last ack (say): it resends the last chunk.
        with again.connect() as sock:
            lines = [(19 * 100 + i + 1, f"line 19-{i}") for i in range(50)]
            _chunk(sock, "logq.billing", lines, "c19-again")
            assert read_acks(sock, 1) == ["c19-again"]
        assert again.stop() == 0, again.log_text()
    finally:
        again.stop()
    table = read_table(again.warehouse, "container_logs")
    assert sorted(table["message"].to_pylist()) == sorted(sent)
    assert "replaying 1 buffer segments" in again.log_text()


def test_sigterm_flushes_everything_acknowledged(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--flush-interval", "300"])
    try:
        with agg.connect() as sock:
            for c in range(5):
                _chunk(sock, "logq.search", [(c + 1, f"s{c}")], f"k{c}")
            assert read_acks(sock, 5) == [f"k{c}" for c in range(5)]
            assert agg.stop() == 0
    finally:
        agg.stop()
    table = read_table(agg.warehouse, "container_logs")
    assert sorted(table["message"].to_pylist()) == [f"s{c}" for c in range(5)]
    assert list(agg.buffer_dir.glob(f"*{SEGMENT_SUFFIX}")) == []


def test_restarts_never_overwrite_earlier_objects(tmp_path: Path) -> None:
    """Same buffer dir, same partition, two runs: both runs' rows stay (no reused object key)."""
    for run in range(2):
        agg = start_aggregator(tmp_path)
        try:
            with agg.connect() as sock:
                lines = [(NOW_NS, record(f"run{run}-{i}", service="same")) for i in range(3)]
                sock.sendall(wire.encode_packed_forward("logq.same", lines, f"r{run}"))
                assert read_acks(sock, 1) == [f"r{run}"]
            assert agg.stop() == 0
        finally:
            agg.stop()
    table = read_table(str(tmp_path / "warehouse"), "container_logs")
    assert sorted(table["message"].to_pylist()) == [
        f"run{r}-{i}" for r in range(2) for i in range(3)
    ]


def test_json_messages_as_fluentd_accepts_them(tmp_path: Path) -> None:
    """Fluentd's in_forward also reads JSON text (``fluent-cat --json``); acks come back as JSON."""
    agg = start_aggregator(tmp_path)
    now = int(time.time())
    record_one = {"log": "json one", "service": "jsonsvc"}
    message = json.dumps(["app.json", now, record_one, {"chunk": "j1"}])
    entries = [[now, {"log": "json two"}], [now + 0.25, {"log": "json three ü"}]]
    forward = json.dumps(["app.json", entries, {"chunk": "j2"}], ensure_ascii=False).encode()
    try:
        with agg.connect() as sock:
            sock.sendall(message.encode() + b"\n")
            for i in range(0, len(forward), 7):  # split mid-string, mid-number, mid-UTF-8
                sock.sendall(forward[i : i + 7])
                time.sleep(0.01)
            got = b""
            while got.count(b"}") < 2:
                got += sock.recv(1024)
            assert [json.loads(x) for x in got.replace(b"}{", b"}\n{").splitlines()] == [
                {"ack": "j1"},
                {"ack": "j2"},
            ]
        with agg.connect() as sock:
            sock.sendall(b'["bad", 1, {"log": "x"} oops]')
            sock.settimeout(10)
            assert sock.recv(1024) == b""  # closed, nothing acked
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    table = read_table(agg.warehouse, "container_logs")
    assert sorted(table["message"].to_pylist()) == ["json one", "json three ü", "json two"]
    assert set(table["service"].to_pylist()) == {"jsonsvc", "json"}
    assert "bad JSON message" in agg.log_text()


def test_the_flush_interval_runs_from_seal_to_seal() -> None:
    """A flush that takes 7 s of a 10 s interval leaves 3 s until the next seal (it waited
    another 10 s: lines waited interval + two flushes); one slower than the interval seals at
    once."""
    from aggregator.service import seal_wait

    assert seal_wait(10.0, last_seal=100.0, now=100.0) == 10.0
    assert seal_wait(10.0, last_seal=100.0, now=107.0) == 3.0
    assert seal_wait(10.0, last_seal=100.0, now=125.0) == 0.0


def test_sigterm_while_a_client_streams_keeps_every_acked_record(tmp_path: Path) -> None:
    """A client streams chunks without waiting for each ack (as logq-shipper and Fluent Bit
    pipeline them) while SIGTERM comes: every chunk it got an ack for is in the warehouse once
    the stop and a restart on the same buffer are done (an unacked one is the client's to
    resend)."""
    agg = start_aggregator(tmp_path, extra=["--flush-interval", "0.3"])
    acked: list[str] = []
    sent = acked_before_stop = 0
    try:
        with agg.connect() as sock:
            sock.settimeout(30)
            unpacker = wire.new_unpacker()
            while True:
                if sent == 20:
                    agg.proc.send_signal(signal.SIGTERM)
                    acked_before_stop = len(acked)
                try:
                    _chunk(sock, "logq.stream", [(sent + 1, f"line {sent}")], f"s{sent}")
                    sent += 1
                    data = sock.recv(65536) if sent % 4 == 0 else b"x"
                except OSError:
                    break
                if not data:  # the server closed the connection: the stop
                    break
                if data != b"x":
                    unpacker.feed(data)
                    acked.extend(wire.decode_ack(obj) for obj in unpacker)
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    unpacker.feed(data)
                    acked.extend(wire.decode_ack(obj) for obj in unpacker)
        code = agg.proc.wait(60)
    finally:
        agg.stop()
    assert code == 0, agg.log_text()
    # Each of the 5 blocking reads before the stop returned acks. How many of the 20 chunks sent
    # before the SIGTERM are acked depends on the machine's load: those the server had not read
    # when the stop closed the connection are unacked (the client's to resend).
    assert sent > 20 and acked_before_stop >= 5, (sent, acked_before_stop, acked)
    again = start_aggregator(tmp_path)
    try:
        assert again.stop() == 0, again.log_text()
    finally:
        again.stop()
    stored = read_table(agg.warehouse, "container_logs")["message"].to_pylist()
    assert len(stored) == len(set(stored)), "nothing stored twice"
    assert {f"line {c[1:]}" for c in acked} <= set(stored)
