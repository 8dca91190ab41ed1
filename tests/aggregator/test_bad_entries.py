"""A bad entry in a well-formed Forward message is a counted, visible row of its own: the good
entries beside it are stored and the message is acked (before, the whole message was refused and
the connection closed, so a client resending it stalled forever behind it)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from aggregator import decode as dec
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.support.metrics import by_label, metrics_base

T = 1_795_860_000
"""A good event time (seconds)."""

#: A bad entry, its reason label and a piece of the reason in its row.
BAD: dict[str, tuple[Any, str, str]] = {
    "record is an int": ([T, 5], wire.BAD_RECORD, "record must be a map, got int"),
    "record is a string": ([T, "text"], wire.BAD_RECORD, "record must be a map, got str"),
    "record is a list": ([T, [1, 2]], wire.BAD_RECORD, "record must be a map, got list"),
    "entry is [time]": ([T], wire.BAD_SHAPE, "entry must be [time, record]"),
    "entry is nil": (None, wire.BAD_SHAPE, "entry must be [time, record]"),
    "empty header": ([[], {"log": "x"}], wire.BAD_SHAPE, "entry header is empty"),
    "ext type 5 time": (
        [msgpack.ExtType(5, b"abcd"), {"log": "x"}],
        wire.BAD_TIME,
        "unknown ext type 5 as event time",
    ),
    "EventTime of 5 bytes": (
        [msgpack.ExtType(0, b"abcde"), {"log": "x"}],
        wire.BAD_TIME,
        "an EventTime (ext type 0) of 5 bytes, not 8",
    ),
    "boolean time": ([True, {"log": "x"}], wire.BAD_TIME, "event time is a boolean"),
    "map time": ([{"t": 1}, {"log": "x"}], wire.BAD_TIME, "got dict"),
}
MODES = ("forward", "packed", "packed-sized", "packed-gzip")


def _message(mode: str, entries: list[Any], chunk: str | None = "c1") -> Any:
    """The message as the server's unpacker builds it."""
    opts: dict[str, Any] = {"chunk": chunk} if chunk else {}
    if mode == "forward":
        obj: list[Any] = ["app.bad", entries, opts]
    else:
        blob = b"".join(msgpack.packb(e) for e in entries)
        if mode == "packed-sized":
            opts["size"] = len(entries)
        if mode == "packed-gzip":
            blob, opts["compressed"] = gzip.compress(blob), "gzip"
        obj = ["app.bad", blob, opts]
    unpacker = wire.new_unpacker()
    unpacker.feed(msgpack.packb(obj))
    (got,) = list(unpacker)
    return got


def _decode(obj: Any) -> tuple[Any, list[tuple[str, dict[str, int]]]]:
    heard: list[tuple[str, dict[str, int]]] = []
    batch, chunk = dec.decode(obj, 1 << 30, on_bad_entries=lambda t, r: heard.append((t, r)))
    assert chunk == ("c1" if isinstance(obj[-1], dict) and obj[-1].get("chunk") else None)
    return batch, heard


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_entry_becomes_its_own_row_and_the_good_ones_are_kept(name: str, mode: str) -> None:
    bad, reason, why = BAD[name]
    entries = [[T, record("good before", service="shop")], bad, [T, record("good after")]]
    before = time.time_ns()
    batch, heard = _decode(_message(mode, entries))
    after = time.time_ns()
    logs = batch.column(wire.KEY_LOG).to_pylist()
    assert logs[0] == "good before" and logs[2] == "good after"
    assert logs[1].startswith(f"{dec.BAD_ENTRY_MARKER}: ") and why in logs[1], logs[1]
    assert heard == [("app.bad", {reason: 1})]
    times = batch.column("time_ns").to_pylist()
    assert times[0] == times[2] == T * 10**9
    assert before <= times[1] <= after  # the receive time
    assert batch.column("tag").to_pylist() == ["app.bad"] * 3
    assert batch.column(wire.KEY_SERVICE).to_pylist()[0] == "shop"


def test_the_row_holds_the_entry_as_json_cut_when_long() -> None:
    batch, _ = _decode(_message("forward", [[T, 5], [T, ["x" * 100_000]]]))
    small, big = batch.column(wire.KEY_LOG).to_pylist()
    assert small == f"{dec.BAD_ENTRY_MARKER}: record must be a map, got int] [{T}, 5]"
    assert len(big) < dec.BAD_ENTRY_CHARS + 200
    cut = len(json.dumps([T, ["x" * 100_000]])) - dec.BAD_ENTRY_CHARS
    assert big.endswith(f"... (cut: {cut} more characters)")


@pytest.mark.parametrize(
    ("time_value", "why"),
    [(msgpack.ExtType(0, b"abcde"), "of 5 bytes, not 8"), (T, "got str")],
)
def test_message_mode_with_a_bad_record_or_time_is_one_bad_row(time_value: Any, why: str) -> None:
    record_value = "not a map" if time_value == T else {"log": "x"}
    unpacker = wire.new_unpacker()
    unpacker.feed(msgpack.packb(["app.bad", time_value, record_value, {"chunk": "c1"}]))
    batch, heard = _decode(next(unpacker))
    (line,) = batch.column(wire.KEY_LOG).to_pylist()
    assert line.startswith(dec.BAD_ENTRY_MARKER) and why in line
    assert len(heard) == 1


def test_items_after_the_record_are_ignored_as_fluentd_does() -> None:
    for mode in MODES:
        batch, heard = _decode(_message(mode, [[T, {"log": "kept"}, "extra", 7]]))
        assert batch.column(wire.KEY_LOG).to_pylist() == ["kept"] and heard == []


@pytest.mark.parametrize(
    "obj",
    [
        ["app.bad", msgpack.ExtType(5, b"abcd"), {"log": "x"}],  # no mode has an ext there
        ["app.bad", True, {"log": "x"}],
        [5, [[T, {"log": "x"}]]],
        ["app.bad", [[T, {"log": "x"}]], "options"],
    ],
)
def test_what_is_not_a_forward_message_is_still_refused(obj: Any) -> None:
    unpacker = wire.new_unpacker()
    unpacker.feed(msgpack.packb(obj))
    with pytest.raises(wire.ProtocolError):
        dec.decode(next(unpacker), 1 << 30)


def test_the_bulk_path_is_taken_when_no_entry_is_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-entry check lives on the general path only: messages without a bad entry never
    reach it (the fast paths cost what they did)."""

    def refuse(*args: Any) -> Any:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(dec, "_general", refuse)
    entries = [[T, record(f"line {i}")] for i in range(50)]
    for mode in MODES:
        batch, heard = _decode(_message(mode, entries))
        assert batch.num_rows == 50 and heard == []


@pytest.mark.integration
def test_the_server_stores_and_acks_a_message_with_bad_entries(tmp_path: Path) -> None:
    """One bad entry among good ones: the message is acked, the good lines and a marked row
    are stored, the connection stays open, the metric counts it; a resend of the same chunk
    (its ack lost) is not stored twice."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    base = metrics_base(agg.log_text())
    now = time.time_ns()
    good = [wire.pack([now // 10**9, record(f"good-{i}", service="shop")]) for i in range(2)]
    bad = [wire.pack([now // 10**9, 5]), wire.pack([True, {"log": "x"}])]
    blob = good[0] + bad[0] + bad[1] + good[1]
    message = wire.pack(["app.shop", blob, {"chunk": "bad-1"}])
    try:
        with agg.connect() as sock:
            sock.sendall(message)
            assert read_acks(sock, 1) == ["bad-1"]
            sock.sendall(message)  # a resend after a lost ack
            assert read_acks(sock, 1) == ["bad-1"]
            after = wire.encode_packed_forward("app.shop", [(now, record("after"))], "after")
            sock.sendall(after)  # the same connection goes on
            assert read_acks(sock, 1) == ["after"]
        wait_rows(agg.warehouse, "container_logs", 5, agg)
        counts = by_label(base, "logq_aggregator_bad_entries_total", "reason")
    finally:
        assert agg.stop() == 0
    lines = sorted(read_table(agg.warehouse, "container_logs")["message"].to_pylist())
    assert lines[:2] == [
        f'{dec.BAD_ENTRY_MARKER}: event time is a boolean] [true, {{"log": "x"}}]',
        f"{dec.BAD_ENTRY_MARKER}: record must be a map, got int] [{now // 10**9}, 5]",
    ]
    assert lines[2:] == ["after", "good-0", "good-1"]
    assert counts == {wire.BAD_RECORD: 1.0, wire.BAD_TIME: 1.0}
    log = agg.log_text()
    assert "closing connection" not in log
    warnings = [line for line in log.splitlines() if "bad Forward entries" in line]
    assert len(warnings) == 2 and all("level=warning" in line for line in warnings), warnings
