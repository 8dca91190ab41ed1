"""Event times the aggregator cannot keep as sent are replaced, never a reason to refuse a message.

A time of 0 (Fluentd's in_forward stamps such an event on receipt), NaN, infinite, beyond what
the int64 ``time_ns`` column holds (milliseconds sent as seconds, 2^62...), or an EventTime
whose nanoseconds exceed 999,999,999: the event is stored with the receive time, the good
events beside it keep theirs, the message is acked, and the replacement is counted per service
(``logq_aggregator_event_times_replaced_total``) and logged once per service.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from shipper import wire
from tests.aggregator.helpers import read_acks, record, start_aggregator, wait_rows
from tests.support.metrics import metrics_base, metrics_text

GOOD_S = 1_795_860_000
"""A good event time (seconds), kept exactly as sent."""
NS = 10**9
MAX_S = (2**63 - 1) // NS
"""The largest time in seconds whose nanoseconds fit the int64 ``time_ns`` column."""


def event_time(seconds: int, nanoseconds: int = 0) -> msgpack.ExtType:
    return msgpack.ExtType(wire.EVENT_TIME_EXT, struct.pack(">II", seconds, nanoseconds))


#: Times that cannot be kept as sent, with the text the warning shows for them.
BAD_TIMES: dict[str, tuple[Any, str]] = {
    "int 0": (0, "0"),
    "ms sent as seconds": (1_700_000_000_000, "1700000000000"),
    "2^62": (2**62, str(2**62)),
    "-2^62": (-(2**62), str(-(2**62))),
    "2^64-1": (2**64 - 1, str(2**64 - 1)),
    "float 1e20": (1e20, "1e+20"),
    "float 0.5": (0.5, "0.5"),
    # Whole seconds within the int64 nanoseconds, the fraction past them (it raised
    # OverflowError out of decode: the connection closed, durable messages unacked).
    "float int64 max + 0.9 s": (MAX_S + 0.9, repr(MAX_S + 0.9)),
    "float int64 min - 0.9 s": (-MAX_S - 0.9, repr(-MAX_S - 0.9)),
    "NaN": (float("nan"), "nan"),
    "inf": (float("inf"), "inf"),
    "-inf": (float("-inf"), "-inf"),
    "EventTime(0, 0)": (event_time(0), "EventTime(0, 0)"),
    "EventTime(0, 5)": (event_time(0, 5), "EventTime(0, 5)"),
    "EventTime nanoseconds 2^32-1": (
        event_time(1_700_000_000, 0xFFFFFFFF),
        "EventTime(1700000000, 4294967295)",
    ),
    "EventTime nanoseconds 10^9": (
        event_time(1_700_000_000, 1_000_000_000),
        "EventTime(1700000000, 1000000000)",
    ),
}
MODES = ("message", "forward", "forward-headed", "packed", "packed-sized", "packed-gzip")


def frame(mode: str, bad: Any, tag: str = "x.skew", chunk: str | None = None) -> bytes:
    """One Forward message: a good entry, the ``bad`` one, a good one (Message mode: the bad
    one alone)."""
    opts: dict[str, Any] = {"chunk": chunk} if chunk else {}
    good = event_time(GOOD_S, 7)
    entries = [
        [good, record("good before", service="skew")],
        [bad, record("bad", service="skew")],
        [good, record("good after", service="skew")],
    ]
    if mode == "message":
        return msgpack.packb([tag, bad, record("bad", service="skew"), opts])
    if mode == "forward":
        return msgpack.packb([tag, entries, opts])
    if mode == "forward-headed":  # Fluent Bit >= 5.0.5: [[time, metadata], record]
        return msgpack.packb([tag, [[[t, {}], r] for t, r in entries], opts])
    blob = b"".join(msgpack.packb(e) for e in entries)
    if mode == "packed-sized":
        opts["size"] = len(entries)
    if mode == "packed-gzip":
        blob, opts["compressed"] = gzip.compress(blob), "gzip"
    return msgpack.packb([tag, blob, opts])


def unpacked(data: bytes) -> Any:
    """The message as the server's unpacker builds it."""
    unpacker = wire.new_unpacker()
    unpacker.feed(data)
    (obj,) = list(unpacker)
    return obj


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(BAD_TIMES))
def test_a_time_that_cannot_be_kept_gets_the_receive_time(name: str, mode: str) -> None:
    bad, shown = BAD_TIMES[name]
    heard: list[tuple[pa.RecordBatch, str]] = []
    before = time.time_ns()
    batch, _ = dec.decode(unpacked(frame(mode, bad)), 1 << 30, on_replaced_times=_append(heard))
    after = time.time_ns()
    logs = batch.column(wire.KEY_LOG).to_pylist()
    times = batch.column("time_ns").to_pylist()
    if mode == "message":
        assert logs == ["bad"]
    else:
        assert logs == ["good before", "bad", "good after"]
        good_ns = GOOD_S * NS + 7
        assert times[0] == times[2] == good_ns  # the good entries keep their times
    bad_ns = times[logs.index("bad")]
    assert before <= bad_ns <= after
    assert len(heard) == 1
    rows, example = heard[0]
    assert rows.column(wire.KEY_LOG).to_pylist() == ["bad"]
    assert rows.column(wire.KEY_SERVICE).to_pylist() == ["skew"]
    if mode.startswith("packed") and isinstance(bad, float):
        assert example == "a time inside a PackedForward blob"  # floats: the general path
    else:
        assert example == shown


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kept",
    [
        (event_time(1, 0), 10**9),
        (event_time(0xFFFFFFFF, 999_999_999), (2**32 - 1) * 10**9 + 999_999_999),
        (-1, -(10**9)),
        (-1.5, -1_500_000_000),
        (MAX_S, MAX_S * NS),
        (-MAX_S, -MAX_S * NS),
        # Ruby's Time#to_f, as Fluentd clients send it: the nearest float to the time, which
        # may lie just below it; the millisecond must not be lost on the way.
        (GOOD_S + 0.001, GOOD_S * NS + 1_000_000),
        (GOOD_S + 0.123456, GOOD_S * NS + 123_456_000),
        # Its nearest microsecond, not that of the float product value * 1e6 (itself rounded
        # to 0.25 µs): these floats lie at +1,430.5 ns and +784,752,607.3 ns.
        (GOOD_S + 0.0000014, GOOD_S * NS + 1_000),
        (GOOD_S + 0.7847526, GOOD_S * NS + 784_753_000),
    ],
    ids=[
        "EventTime(1, 0)",
        "EventTime max",
        "int -1",
        "float -1.5",
        "int max",
        "int min",
        "float .001",
        "float .123456",
        "float .0000014",
        "float .7847526",
    ],
)
def test_odd_times_that_can_be_kept_are_kept(kept: tuple[Any, int], mode: str) -> None:
    """Before 1970 or far ahead is the broken-clock case (stored, counted at flush when outside
    Athena's projection): such times are kept as sent, and nothing is reported here."""
    sent, ns = kept
    heard: list[tuple[pa.RecordBatch, str]] = []
    batch, _ = dec.decode(unpacked(frame(mode, sent)), 1 << 30, on_replaced_times=_append(heard))
    logs = batch.column(wire.KEY_LOG).to_pylist()
    assert batch.column("time_ns").to_pylist()[logs.index("bad")] == ns
    assert heard == []


def test_a_float_time_is_its_nearest_microsecond() -> None:
    """Every float kept is within half a microsecond of its exact value (times of today, and
    seconds either side of 1970, where a float holds fractions of a nanosecond)."""
    rng = random.Random(17)
    floats = [rng.uniform(1.5e9, 2.2e9) for _ in range(2_000)]
    floats += [rng.choice((1, -1)) * rng.uniform(1.0, 5.0) for _ in range(500)]
    for value in floats:
        ns = wire.time_to_ns(value)
        assert ns is not None and ns % 1_000 == 0, value
        assert abs(Fraction(ns) - Fraction(value) * NS) <= 500, value


#: Times that are no number, which Fluentd's in_forward stamps with the receive time
#: (``time.nil? || time.to_i == 0``; a string that is not a number has ``to_i == 0``), with
#: the text the warning shows for them. A string second in a message is a PackedForward blob,
#: so a string time exists in entries only; nil is also a Message-mode time.
NOT_NUMBERS: dict[str, tuple[Any, str]] = {
    "nil": (None, "None"),
    "ISO-8601 string": ("2026-01-01T00:00:00Z", "'2026-01-01T00:00:00Z'"),
    "numeric string": ("1700000000", "'1700000000'"),
    "empty string": ("", "''"),
    "bin": (b"\x00\x01\x02", "b'\\x00\\x01\\x02'"),
    # As long as an EventTime's ext data, and holding a good one: the PackedForward fast path
    # took it for one (both arrived as 8 bytes), stored GOOD_S + 7 ns and counted nothing.
    "bin of 8 bytes": (struct.pack(">II", GOOD_S, 7), repr(struct.pack(">II", GOOD_S, 7))),
}


@pytest.mark.parametrize(
    ("name", "mode"),
    [(n, m) for n in NOT_NUMBERS for m in MODES if m != "message" or n == "nil"],
)
def test_nil_and_string_times_get_the_receive_time(name: str, mode: str) -> None:
    """They refused the whole message (every entry beside them lost, every resend refused)."""
    bad, shown = NOT_NUMBERS[name]
    heard: list[tuple[pa.RecordBatch, str]] = []
    before = time.time_ns()
    message = unpacked(frame(mode, bad, chunk="c1"))
    batch, chunk = dec.decode(message, 1 << 30, on_replaced_times=_append(heard))
    after = time.time_ns()
    assert chunk == "c1" and dec.has_chunk(message)
    logs = batch.column(wire.KEY_LOG).to_pylist()
    times = batch.column("time_ns").to_pylist()
    assert logs == (["bad"] if mode == "message" else ["good before", "bad", "good after"])
    if mode != "message":
        assert times[0] == times[2] == GOOD_S * NS + 7
    assert before <= times[logs.index("bad")] <= after
    [(rows, example)] = heard
    assert rows.column(wire.KEY_LOG).to_pylist() == ["bad"]
    in_blob = mode.startswith("packed") and not isinstance(bad, bytes)  # bin: the fast path's
    assert example == ("a time inside a PackedForward blob" if in_blob else shown)


def test_a_json_message_with_a_null_time_is_stamped() -> None:
    """Fluentd's in_forward also takes JSON text: ``null`` is its nil."""
    heard: list[tuple[pa.RecordBatch, str]] = []
    message = json.loads('["x.skew", null, {"log": "bad", "service": "skew"}, {"chunk": "j"}]')
    batch, chunk = dec.decode(message, 1 << 30, on_replaced_times=_append(heard))
    assert chunk == "j" and batch.column(wire.KEY_LOG).to_pylist() == ["bad"]
    assert [example for _, example in heard] == ["None"]


def test_another_ext_type_is_not_taken_for_a_fluent_bit_header() -> None:
    """msgpack's ExtType is a tuple: its code must not pass for the time of a
    ``[[time, metadata], record]`` header (an ext type 5 read as 5 seconds)."""
    batch, _ = dec.decode(unpacked(frame("packed", msgpack.ExtType(5, b"abcd"))), 1 << 30)
    good, bad, after = batch.column(wire.KEY_LOG).to_pylist()
    assert (good, after) == ("good before", "good after")
    assert bad.startswith(f"{dec.BAD_ENTRY_MARKER}: unknown ext type 5 as event time]")


def _append(
    heard: list[tuple[pa.RecordBatch, str]],
) -> Callable[[pa.RecordBatch, str], None]:
    def on_replaced(rows: pa.RecordBatch, example: str) -> None:
        heard.append((rows, example))

    return on_replaced


@pytest.mark.integration
def test_messages_with_bad_times_are_acked_stored_and_counted(tmp_path: Path) -> None:
    """Through a running aggregator: every mode, good entries beside bad times, acked; every
    record stored; the counter holds one per bad time; one warning for the service."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    cases = [(m, n) for m in MODES for n in ("int 0", "ms sent as seconds", "NaN", "2^64-1")]
    cases += [("forward", "EventTime nanoseconds 2^32-1"), ("packed", "EventTime(0, 0)")]
    try:
        with agg.connect() as sock:
            for i, (mode, name) in enumerate(cases):
                sock.sendall(frame(mode, BAD_TIMES[name][0], chunk=f"c{i}"))
            assert read_acks(sock, len(cases)) == [f"c{i}" for i in range(len(cases))]
        rows = sum(1 if mode == "message" else 3 for mode, _ in cases)
        table = wait_rows(agg.warehouse, "container_logs", rows, agg)
        metrics = metrics_text(metrics_base(agg.log_text()))
    finally:
        agg.stop()
    messages = table["message"].to_pylist()
    assert messages.count("bad") == len(cases)
    assert len(messages) == rows
    assert "not the Forward protocol" not in agg.log_text()
    counted = f'logq_aggregator_event_times_replaced_total{{service="skew"}} {len(cases)}.0'
    assert counted in metrics
    warnings = [line for line in agg.log_text().splitlines() if "cannot be kept as sent" in line]
    assert len(warnings) == 1, warnings
    assert "service=skew" in warnings[0] and "sent=0" in warnings[0]


@pytest.mark.integration
def test_a_resend_of_a_message_with_replaced_times_is_recognised(tmp_path: Path) -> None:
    """A resend (its ack was lost) gets another receive time for the times it replaces: its
    chunk key cannot use them, or the resend would be stored twice."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    try:
        for mode in ("message", "packed"):
            for _ in range(2):  # the first copy, then the resend on a new connection
                with agg.connect() as sock:
                    sock.sendall(frame(mode, BAD_TIMES["int 0"][0], chunk=f"resent-{mode}"))
                    assert read_acks(sock, 1) == [f"resent-{mode}"]
        table = wait_rows(agg.warehouse, "container_logs", 1 + 3, agg)
        metrics = metrics_text(metrics_base(agg.log_text()))
    finally:
        agg.stop()
    assert sorted(table["message"].to_pylist()) == ["bad", "bad", "good after", "good before"]
    assert "logq_aggregator_duplicate_chunks_total 2.0" in metrics


@pytest.mark.integration
def test_messages_with_nil_and_string_times_are_acked_stored_and_counted(tmp_path: Path) -> None:
    """Through a running aggregator: a nil time (Message, Forward, PackedForward, JSON) or a
    string one no longer refuses the message (the connection closed, the client resending it
    in vain): every entry is stored and acked, the stamped ones counted, the reason logged."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    cases = [
        ("message", "nil"),
        ("forward", "nil"),
        ("forward-headed", "ISO-8601 string"),
        ("packed", "nil"),
        ("packed-sized", "numeric string"),
        ("packed-gzip", "empty string"),
        ("forward", "bin"),
        ("forward", "bin of 8 bytes"),
        ("packed", "bin of 8 bytes"),
    ]
    json_message = {"chunk": "j1"}
    try:
        with agg.connect() as sock:
            for i, (mode, name) in enumerate(cases):
                sock.sendall(frame(mode, NOT_NUMBERS[name][0], chunk=f"c{i}"))
            assert read_acks(sock, len(cases)) == [f"c{i}" for i in range(len(cases))]
        with agg.connect() as sock:  # JSON text, as Fluentd's in_forward also takes
            text = ["x.skew", None, record("bad", service="skew"), json_message]
            sock.sendall(json.dumps(text).encode())
            assert json.loads(sock.recv(4096)) == {"ack": "j1"}
        rows = sum(1 if mode == "message" else 3 for mode, _ in cases) + 1
        table = wait_rows(agg.warehouse, "container_logs", rows, agg)
        metrics = metrics_text(metrics_base(agg.log_text()))
    finally:
        agg.stop()
    messages = table["message"].to_pylist()
    assert messages.count("bad") == len(cases) + 1 and len(messages) == rows
    assert "not the Forward protocol" not in agg.log_text()
    counted = f'logq_aggregator_event_times_replaced_total{{service="skew"}} {len(cases) + 1}.0'
    assert counted in metrics
    warnings = [line for line in agg.log_text().splitlines() if "cannot be kept as sent" in line]
    assert len(warnings) == 1 and "service=skew" in warnings[0] and "sent=None" in warnings[0]
