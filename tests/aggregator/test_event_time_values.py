"""An EventTime inside a record reads the same in Forward and PackedForward mode."""

from __future__ import annotations

import msgpack

import aggregator.decode as dec
from shipper import wire


def test_an_event_time_in_a_record_is_stored_alike_in_every_mode() -> None:
    """A record without ``log`` is stored as its JSON. Forward mode gives an EventTime field
    as its ns; PackedForward (the _unpack_entries path) gave its 8 raw bytes as mojibake."""
    et = wire.EventTime(1_700_000_000, 5)
    record = {"msg_ts": et, "level": "info"}
    forward = ["app.x", [[et, record]], {"chunk": "c1"}]
    blob = msgpack.packb([et.to_ext(), {"msg_ts": et.to_ext(), "level": "info"}])
    packed = ["app.x", blob, {"chunk": "c1"}]
    logs = [
        dec.decode(obj, 1 << 20)[0].column(wire.KEY_LOG)[0].as_py() for obj in (forward, packed)
    ]
    assert logs == ['{"level": "info", "msg_ts": 1700000000000000005}'] * 2
