"""The shipper's ``/healthz``: alive while its event loop ticks, 503 once the loop is stuck."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from shipper import metrics as metrics_mod
from shipper.config import Endpoint
from shipper.metrics import Metrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_follows_the_event_loop_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics()
    m.lines_read.labels("svc").inc(2)
    server = m.serve(Endpoint("127.0.0.1", 0))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        m.tick()
        assert get(base + "/healthz") == (200, "ok\n")
        status, text = get(base + "/metrics")
        assert status == 200 and 'logq_shipper_lines_read_total{service="svc"} 2.0' in text
        # No tick for longer than STALL_SECONDS: the loop is stuck (the server thread is not).
        monkeypatch.setattr(metrics_mod, "STALL_SECONDS", 0.0)
        m.last_tick -= 5
        status, text = get(base + "/healthz")
        assert status == 503 and text.startswith("event loop stalled for 5s")
        m.tick()
        monkeypatch.setattr(metrics_mod, "STALL_SECONDS", 30.0)
        assert get(base + "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
