"""Fluent Bit's forward output sends what its ``Match`` catches: with a metrics input
(``node_exporter_metrics``, ``fluentbit_metrics``) or traces (``opentelemetry``) on a ``Match *``
it sends ``[tag, <cmetrics / ctraces msgpack>, {"fluent_signal": 1 or 2, "chunk": ...}]``
(plugins/out_forward/forward_format.c; ``FLB_INPUT_CHUNK_TYPE_*`` of flb_input_chunk.h: 0 logs,
1 metrics, 2 traces, 3 blobs, 4 profiles). They are no log lines: the aggregator acks them
(so that Fluent Bit does not resend them forever) and stores nothing, and says why."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from shipper import wire
from tests.aggregator.helpers import (
    AggregatorProc,
    read_acks,
    read_table,
    start_aggregator,
    wait_rows,
)
from tests.support.metrics import by_label, metrics_base

#: The shape of a cmetrics payload (its msgpack encoding: a map of ``meta`` and ``metrics``).
CMETRICS = {
    "meta": {"cmetrics": {}, "external": {}, "processing": {}},
    "metrics": [
        {
            "meta": {"ver": 2, "type": 0, "opts": {"ns": "node", "ss": "cpu", "name": "seconds"}},
            "values": [{"ts": 1, "value": 1.0}],
        }
    ],
}


def _signals_dropped(agg: AggregatorProc) -> dict[str, float]:
    """``logq_aggregator_signal_messages_dropped_total`` by signal, from /metrics."""
    name = "logq_aggregator_signal_messages_dropped_total"
    return by_label(metrics_base(agg.log_text()), name, "signal")


@pytest.mark.integration
def test_metrics_and_traces_from_fluent_bit_are_acked_not_stored(tmp_path: Path) -> None:
    """Acked, not stored, said in the log and counted per signal in /metrics (a signal number
    Fluent Bit may add later counts as ``other``: no series per value a client sends)."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    payload = wire.pack(CMETRICS)
    chunks = [hashlib.sha512(payload + bytes([n])).hexdigest()[:32] for n in (1, 2, 3, 4)]
    log_line = wire.pack_entries([(time.time_ns(), {"log": "a log line"})])
    try:
        with agg.connect() as sock:
            for signal, chunk in zip((1, 2, 1, 99), chunks, strict=True):
                sock.sendall(
                    wire.pack(["node_metrics", payload, {"chunk": chunk, "fluent_signal": signal}])
                )
            sock.sendall(wire.pack(["app.web", log_line, {"chunk": "c-log", "fluent_signal": 0}]))
            assert read_acks(sock, 5) == [*chunks, "c-log"]
        wait_rows(agg.warehouse, "container_logs", 1, agg)
        dropped = _signals_dropped(agg)
        assert agg.stop() == 0
        table = read_table(agg.warehouse, "container_logs")
        log_text = agg.log_text()
    finally:
        agg.stop()
    assert table["message"].to_pylist() == ["a log line"]
    assert dropped == {"metrics": 2.0, "traces": 1.0, "other": 1.0}
    assert "fluent_signal=1 (metrics)" in log_text
    assert "fluent_signal=2 (traces)" in log_text
