"""A client that keeps being closed for the same reason is said once every 10 s per address,
not once per connection: a load balancer's TCP or HTTP probe, or an HTTP client pointed at the
Forward port, made one WARNING ``closing connection from ...: not the Forward protocol`` per
connection (200 probes, 200 lines), and a client retrying a message over ``--max-frame-bytes``
one per retry. The counter ``connections_closed_total{reason}`` still counts every closure; a
different reason from the same address is still said at once.

The server runs in the test's event loop with tests/aggregator/test_inflight.py's buffer.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from aggregator.metrics import Metrics
from aggregator.server import WARN_EVERY_SECONDS, ServerLimits
from tests.aggregator.helpers import serving
from tests.aggregator.test_inflight import HeldBuffer, _rejected, _run

#: What an HTTP probe sends to the Forward port.
PROBE = b"GET /healthz HTTP/1.1\r\nHost: aggregator\r\n\r\n"
#: Not msgpack at all: another reason, said on its own.
JUNK = b"\xc1\xc1\xc1 junk"


async def _closed_after(host: str, port: int, payload: bytes) -> None:
    """Send ``payload`` on a new connection and wait for the server to close it."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()


def test_repeated_closures_of_one_address_are_said_once_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Metrics:
        metrics = Metrics()
        async with serving(HeldBuffer(), metrics, ServerLimits(1 << 20)) as (_, host, port):
            for _ in range(20):
                await _closed_after(host, port, PROBE)
            await _closed_after(host, port, JUNK)
            await _closed_after(host, port, JUNK)
        return metrics

    caplog.set_level(logging.WARNING, logger="logq.aggregator.server")
    metrics = _run(scenario())
    assert _rejected(metrics, "protocol_error") == 22  # every closure counted
    said = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert len(said) == 2, said  # one per reason and address, not 22
    probe, junk = said
    assert "got first byte 0x47" in probe and "got first byte 0x47" not in junk
    assert f"at most once every {WARN_EVERY_SECONDS:.0f}s" in probe
    assert 'connections_closed_total{reason="protocol_error"} counts them all' in probe
