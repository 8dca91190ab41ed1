"""A start that reads a large buffer answers /metrics (liveness) and /healthz at once.

Reading the segments left by the previous run takes seconds per GiB (their chunk ids, see
chunks.py). An orchestrator's liveness check on /metrics must pass meanwhile, or a restart after
an S3 outage (the buffer full) is killed before it listens, again and again; /healthz (readiness)
says ``starting: ...`` with the progress until the Forward port listens.

The reading is held at its first segment by a gate (no timing): the test looks at the endpoints
and the Forward port while it is held, then lets it go on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from aggregator import buffer as buffer_mod
from aggregator import commands as commands_mod
from aggregator import service as service_mod
from aggregator.config import Settings
from aggregator.state_files import SEGMENT_SUFFIX, segment_name
from tests.aggregator.helpers import http_get, read_table
from tests.aggregator.test_flusher import write_segment

SEGMENTS = 3
GATE_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gauge(exposition: str, name: str) -> float:
    """The value of an unlabelled series in a /metrics body."""
    for line in exposition.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


class Gate:
    """Holds the reading of the segments' chunk ids at the second segment until :meth:`open`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = threading.Event()
        self._go = threading.Event()
        self._calls = 0
        real = buffer_mod.frame_chunks

        def held(frames: Iterable[bytes]) -> list[bytes]:
            self._calls += 1
            if self._calls == 2:  # the first segment is read
                self.reached.set()
                self._go.wait(GATE_SECONDS)
            return real(frames)

        monkeypatch.setattr(buffer_mod, "frame_chunks", held)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, GATE_SECONDS), "never read a segment"

    def open(self) -> None:
        self._go.set()


def left_by_a_previous_run(buffer_dir: Path) -> int:
    """Segments a previous run left (as after an S3 outage); returns their record count."""
    buffer_dir.mkdir()
    return sum(
        write_segment(buffer_dir / segment_name(seq), frames=4, per_frame=20, source=f"s{seq}")
        for seq in range(1, SEGMENTS + 1)
    )


def test_healthz_says_starting_until_the_forward_port_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = left_by_a_previous_run(tmp_path / "buf")
    gate = Gate(monkeypatch)
    forward, metrics = free_port(), free_port()
    settings = Settings(
        listen=f"127.0.0.1:{forward}",
        metrics_listen=f"127.0.0.1:{metrics}",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
        flush_interval=0.2,
    )
    agg = service_mod.Aggregator(settings)

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        try:
            await gate.wait_reached()
            status, body = await http_get(metrics, "/healthz")
            assert status == 503, body
            assert body.startswith(f"starting: reading the {SEGMENTS} buffer segments"), body
            assert ": 1 done, " in body and "the Forward port opens after the last" in body
            status, body = await http_get(metrics, "/metrics")
            assert status == 200  # liveness passes while the buffer is read
            backlog = sum(f.stat().st_size for f in (tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}"))
            assert gauge(body, "logq_aggregator_buffer_bytes") == backlog
            assert not port_open(forward), "the Forward port listens only once ready"
        finally:
            gate.open()
        while (await http_get(metrics, "/healthz"))[0] != 200:  # bounded by the wait_for below
            await asyncio.sleep(0.05)
        assert port_open(forward)
        agg.stop()
        assert await running == 0

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert (
        read_table(str(tmp_path / "wh"), "container_logs").num_rows
        + read_table(str(tmp_path / "wh"), "envoy_access").num_rows
        == records
    )


@pytest.mark.parametrize("same_metrics_port", [True, False])
def test_a_second_aggregator_on_the_buffer_dir_exits_1_and_holds_no_port(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    same_metrics_port: bool,
) -> None:
    """The buffer dir's lock comes before any port: a second aggregator there (a deployment that
    starts the new task before the old one stops) exits 1 with the lock's message (a failure
    at run time, as a port in use: the same command works once the other stops), also when
    its --metrics-listen is the first one's (not "address already in use"), and its own
    metrics port is free again at once."""
    left_by_a_previous_run(tmp_path / "buf")
    gate = Gate(monkeypatch)
    metrics = free_port()
    settings = Settings(
        listen="127.0.0.1:0",
        metrics_listen=f"127.0.0.1:{metrics}",
        warehouse=str(tmp_path / "wh"),
        buffer_dir=str(tmp_path / "buf"),
    )
    agg = service_mod.Aggregator(settings)
    second_metrics = metrics if same_metrics_port else free_port()
    argv = [
        "--listen=127.0.0.1:0",
        f"--metrics-listen=127.0.0.1:{second_metrics}",
        f"--warehouse={tmp_path / 'wh'}",
        f"--buffer-dir={tmp_path / 'buf'}",
    ]

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        try:
            await gate.wait_reached()  # the first one holds the lock and its metrics port
            return await asyncio.to_thread(commands_mod.main, argv)
        finally:
            gate.open()
            agg.stop()  # it ends its start-up (exit 0)
            assert await running == 0

    assert asyncio.run(asyncio.wait_for(scenario(), 120)) == 1
    err = capsys.readouterr().err
    assert f"--buffer-dir {tmp_path / 'buf'} is in use by another logq-aggregator" in err
    assert "--metrics-listen" not in err
    if not same_metrics_port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", second_metrics))  # not held by the exited second one


def test_a_stop_while_the_buffer_is_read_ends_the_start_up_and_leaves_the_buffer_as_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What SIGTERM does mid-read (tests/aggregator/test_stop_during_start.py runs the process):
    the read ends after its segment, the Forward port never opens, nothing is flushed, no
    empty segment is left behind and the lock is free again; 0, as nothing was acked."""
    buffer_dir = tmp_path / "buf"
    left_by_a_previous_run(buffer_dir)
    segments = sorted(p.name for p in buffer_dir.glob(f"*{SEGMENT_SUFFIX}"))
    gate = Gate(monkeypatch)
    settings = Settings(
        listen="127.0.0.1:0", warehouse=str(tmp_path / "wh"), buffer_dir=str(buffer_dir)
    )
    agg = service_mod.Aggregator(settings)

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        try:
            await gate.wait_reached()
            agg._stop_requested()  # the SIGTERM handler
        finally:
            gate.open()
        return await running

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 120)) == 0
    assert agg.port == 0, "the Forward port never opened"
    assert sorted(p.name for p in buffer_dir.glob(f"*{SEGMENT_SUFFIX}")) == segments
    assert read_table(settings.warehouse, "container_logs").num_rows == 0
    again = buffer_mod.Buffer(buffer_dir, 1 << 20, 1 << 30)
    again.lock()  # raises while the stopped aggregator still holds it
    again.unlock()
    [line] = [r.getMessage() for r in caplog.records if "stopped during start-up" in r.getMessage()]
    assert f"reading the {SEGMENTS} buffer segments left by the previous run: 1 done" in line
