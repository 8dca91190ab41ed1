"""Stopping ``logq-aggregator``, and its background tasks failing while it runs.

A second SIGTERM/Ctrl-C exits at once (as the shipper's does), exit 1 with the line that says
where the data is; a background loop never dies silently: a failed flush cycle is retried at the
next interval, and a loop that ends anyway fails /healthz and logs its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aggregator import service as service_mod
from aggregator.config import Settings
from aggregator.state_files import SEGMENT_SUFFIX
from shipper import wire
from tests.aggregator.helpers import http_get, read_acks, read_table, record, start_aggregator
from tests.aggregator.test_disk_full import _ack, _wait_for
from tests.support.procs import free_port, wait_until


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "warehouse": str(tmp_path / "wh"),
        "buffer_dir": str(tmp_path / "buf"),
        "flush_interval": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def _stored(settings: Settings) -> list[str]:
    if not list(Path(settings.warehouse, "container_logs").rglob("*.parquet")):
        return []
    return sorted(read_table(settings.warehouse, "container_logs")["message"].to_pylist())


def _exits_and_clock_recorded(
    tmp_path: Path,
) -> tuple[Settings, service_mod.Aggregator, list[int], list[float]]:
    """An aggregator whose exits are recorded (not made) and whose stop-request clock is the
    returned one-element list, to move by hand."""
    settings = _settings(tmp_path, flush_interval=300)
    agg = service_mod.Aggregator(settings)
    exits: list[int] = []
    agg._exit_now = exits.append
    now = [1000.0]
    agg._clock = lambda: now[0]
    return settings, agg, exits, now


def test_a_second_stop_request_exits_at_once_saying_where_the_data_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stop's flush hangs (a warehouse write that does not return): the second request
    ends the process with 1 without waiting for it. It used to be ignored."""
    settings, agg, exits, now = _exits_and_clock_recorded(tmp_path)
    release = threading.Event()
    real_flush = agg._flush_segment

    def hanging_flush(segment: Any) -> Any:
        release.wait(120)
        return real_flush(segment)

    agg._flush_segment = hanging_flush  # type: ignore[method-assign]

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        assert await _ack(agg.port, "c1", "acked") == {"ack": "c1"}
        agg._stop_requested()
        await _wait_for(lambda: "stopping:" in caplog.text, running, "the stop")
        assert not exits
        now[0] += 0.2  # the same signal delivered twice (a wrapper and the process group)
        agg._stop_requested()
        assert not exits
        now[0] += 1.0
        agg._stop_requested()
        assert exits == [1]  # os._exit(1) in the real process
        release.set()  # here the process goes on: let it finish
        return await asyncio.wait_for(running, 120)

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    assert "stop again to exit at once" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "second stop request" in r.getMessage())
    assert f"the data is safe in {settings.buffer_dir}" in line


def test_a_second_stop_after_the_flush_exits_with_the_stops_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything is written ("stopped cleanly") and the stop waits only for a call in a worker
    thread (a compaction pass ending): a second request exits with the stop's status, 0. It
    said "second stop request: exiting now without finishing the flush" and exited 1."""
    settings, agg, exits, now = _exits_and_clock_recorded(tmp_path)
    began, release = threading.Event(), threading.Event()

    def compaction_pass() -> None:
        began.set()
        release.wait(120)

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        assert await _ack(agg.port, "c1", "acked") == {"ack": "c1"}
        call = asyncio.ensure_future(agg._calls.run("a compaction pass", compaction_pass))
        await asyncio.to_thread(began.wait, 30)
        agg._stop_requested()
        await _wait_for(lambda: "stopped cleanly" in caplog.text, running, "the stop's flush")
        now[0] += 5.0
        agg._stop_requested()
        assert exits == [0]  # os._exit(0) in the real process
        release.set()  # here the process goes on: let it finish
        await call
        return await asyncio.wait_for(running, 120)

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 0
    assert "stop requested again after the stop's flush: exiting now (status 0)" in caplog.text
    assert "second stop request" not in caplog.text
    assert _stored(settings) == ["acked"]


def test_healthz_says_stopping_from_the_stop_request_until_the_exit(tmp_path: Path) -> None:
    """Defect: /healthz answered 200 while the stop's last flush ran and the Forward port was
    closed, so a load balancer kept sending shippers to it. From the stop request on it answers
    503 ``stopping: ...``; /metrics (liveness) stays 200; the acked line is written."""
    settings = _settings(tmp_path, flush_interval=300)
    agg = service_mod.Aggregator(settings)
    in_stop_flush = threading.Event()
    release = threading.Event()
    real_flush = agg._flush_segment

    def held_flush(segment: Any, deadline: float | None = None) -> Any:
        in_stop_flush.set()
        release.wait(120)
        return real_flush(segment, deadline)

    agg._flush_segment = held_flush  # type: ignore[method-assign]

    async def refused(port: int) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    async def scenario() -> tuple[int, list[tuple[int, str]], bool]:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port and agg.metrics_server, running, "start")
        assert agg.metrics_server is not None
        mport, fport = agg.metrics_server.port, agg.port
        assert await http_get(mport, "/healthz") == (200, "ok\n")
        assert await _ack(fport, "c1", "acked before the stop") == {"ack": "c1"}
        agg._stop_requested()
        await _wait_for(in_stop_flush.is_set, running, "the stop's flush")
        answers = [await http_get(mport, "/healthz"), await http_get(mport, "/metrics")]
        port_refused = await refused(fport)
        release.set()
        return await asyncio.wait_for(running, 120), answers, port_refused

    code, (healthz, page), port_refused = asyncio.run(asyncio.wait_for(scenario(), 240))
    assert code == 0
    assert port_refused, "the Forward port takes no new connection while stopping"
    assert healthz[0] == 503
    assert healthz[1].startswith("stopping:"), healthz
    assert page[0] == 200 and "logq_aggregator_acks_total" in page[1]
    assert _stored(settings) == ["acked before the stop"]


@pytest.mark.integration
def test_a_second_sigterm_ends_a_stalled_stop_with_exit_1_and_the_data_stays(
    tmp_path: Path,
) -> None:
    """The process: the warehouse refuses writes (a file where a table folder goes), so the stop
    retries for up to a minute; a second SIGTERM exits 1 at once and the buffer keeps the
    acked lines, which the next start writes once the warehouse takes them."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    (warehouse / "container_logs").write_text("in the way\n")
    agg = start_aggregator(tmp_path, warehouse=str(warehouse))
    try:
        with agg.connect() as sock:
            entries = [(time.time_ns(), record("kept", service="stop"))]
            sock.sendall(wire.encode_packed_forward("logq.stop", entries, "k1"))
            assert read_acks(sock, 1) == ["k1"]
        wait_until(lambda: "flush of segment" in agg.log_text(), 30, "a refused flush", agg.proc)
        agg.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping:" in agg.log_text(), 30, "the stop", agg.proc)
        time.sleep(1.2)  # a repeat within STOP_REPEAT_IGNORED_SECONDS is the same request
        agg.proc.send_signal(signal.SIGTERM)
        code = agg.proc.wait(30)  # the stop alone would retry for SHUTDOWN_FLUSH_SECONDS (60)
    finally:
        agg.stop()
    assert code == 1, agg.log_text()
    assert f"the data is safe in {agg.buffer_dir}" in agg.log_text()
    assert list(agg.buffer_dir.glob(f"*{SEGMENT_SUFFIX}")), "the acked line stays in the buffer"
    (warehouse / "container_logs").unlink()
    again = start_aggregator(tmp_path, warehouse=str(warehouse))
    try:
        assert again.stop() == 0, again.log_text()
    finally:
        again.stop()
    assert read_table(str(warehouse), "container_logs")["message"].to_pylist() == ["kept"]


#: Log words of a traceback or of asyncio's own error reports: none belongs in a normal stop.
TRACEBACK_WORDS = ("Traceback", "Exception in callback", "CancelledError", "level=error")


@pytest.mark.integration
def test_a_stop_with_clients_connected_logs_no_traceback(tmp_path: Path) -> None:
    """SIGTERM with Forward clients connected (idle, after an ack, mid-message, one whose
    connection the server is closing: junk sent just before) and metrics clients (kept alive
    after a reply, silent, mid-request). Python 3.11 logged ``Exception in callback ...
    CancelledError`` with a traceback for each connection task the loop's end cancelled."""
    metrics_port = free_port()
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    clients: list[socket.socket] = []
    try:
        idle, acked, mid, closing = (agg.connect() for _ in range(4))
        clients += [idle, acked, mid, closing]
        now = time.time_ns()
        acked.sendall(wire.encode_packed_forward("logq.stop", [(now, record("a"))], "a1"))
        assert read_acks(acked, 1) == ["a1"]
        frame = wire.encode_packed_forward("logq.stop", [(now, record("b" * 500))] * 40, "b1")
        mid.sendall(frame[: len(frame) // 2])
        kept = socket.create_connection(("127.0.0.1", metrics_port), timeout=15)
        silent = socket.create_connection(("127.0.0.1", metrics_port), timeout=15)
        partial = socket.create_connection(("127.0.0.1", metrics_port), timeout=15)
        clients += [kept, silent, partial]
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        partial.sendall(b"GET /metr")
        time.sleep(0.5)  # every connection read by the server
        closing.sendall(b"\xc1 not msgpack")
        code = agg.stop()
    finally:
        for client in clients:
            client.close()
        agg.stop()
    log = agg.log_text()
    assert code == 0, log
    assert "stopped cleanly" in log
    bad = [line for line in log.splitlines() if any(w in line for w in TRACEBACK_WORDS)]
    assert bad == [], "\n".join(bad)


@pytest.mark.integration
def test_sighup_is_a_warning_and_the_aggregator_goes_on(tmp_path: Path) -> None:
    """SIGHUP (a Fluentd user's reload, a closed terminal) killed the aggregator with the
    default action. It now says there is no reload, and keeps acking and writing."""
    agg = start_aggregator(tmp_path)
    try:
        agg.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP received" in agg.log_text(), 30, "the warning", agg.proc)
        with agg.connect() as sock:
            entries = [(time.time_ns(), record("after the hang-up", service="hup"))]
            sock.sendall(wire.encode_packed_forward("logq.hup", entries, "h1"))
            assert read_acks(sock, 1) == ["h1"]
        assert agg.proc.poll() is None
        code = agg.stop()
    finally:
        agg.stop()
    assert code == 0, agg.log_text()
    assert "does not reload its configuration" in agg.log_text()
    messages = read_table(agg.warehouse, "container_logs")["message"].to_pylist()
    assert messages == ["after the hang-up"]


def test_a_failed_flush_cycle_is_logged_counted_and_retried_at_the_next_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error nobody foresaw inside a cycle (here the heartbeat raising a non-OSError) used
    to end the flush loop silently; now the next interval flushes again."""
    settings = _settings(tmp_path)
    agg = service_mod.Aggregator(settings)
    failures = [1]
    real_heartbeat = agg._heartbeat

    async def heartbeat(committed_through: float) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("unforeseen")
        await real_heartbeat(committed_through)

    agg._heartbeat = heartbeat  # type: ignore[method-assign]

    async def scenario() -> None:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port, running, "start")
        assert await _ack(agg.port, "c1", "first") == {"ack": "c1"}  # the replay's heartbeat
        await _wait_for(lambda: _stored(settings) == ["first"], running, "the first flush")
        assert await _ack(agg.port, "c2", "second") == {"ack": "c2"}
        await _wait_for(lambda: "second" in _stored(settings), running, "a flush after it")
        assert agg.metrics.storage_errors._value.get() == 1
        agg.stop()
        assert await asyncio.wait_for(running, 120) == 0

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        asyncio.run(asyncio.wait_for(scenario(), 240))
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "flush cycle failed (RuntimeError: unforeseen)" in error.getMessage()
    assert error.exc_info is not None, "the traceback is logged"


def test_a_background_loop_that_dies_stops_the_aggregator_with_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Audit: tasks made by asyncio.create_task and never awaited until the stop died without
    a word; then an aggregator without its flusher only failed /healthz, and the deploy files'
    liveness check (/metrics) never restarted it. Now it logs the traceback, says so on
    /healthz, and stops as on SIGTERM (the acked lines are written) with exit 1, for the
    service manager to restart it. The compaction loop stands for every supervised loop."""
    settings = _settings(tmp_path, compact_interval=0.05)
    agg = service_mod.Aggregator(settings)
    die = asyncio.Event()
    healthz: list[tuple[int, str]] = []

    async def dying() -> None:
        await die.wait()
        assert agg.metrics_server is not None
        healthz.append(await http_get(agg.metrics_server.port, "/healthz"))
        raise ValueError("a bug outside the pass")

    agg._compact_forever = dying  # type: ignore[method-assign]
    real_shutdown = agg._shutdown

    async def shutdown(*tasks: Any) -> int:
        assert agg.metrics_server is not None
        healthz.append(await http_get(agg.metrics_server.port, "/healthz"))
        return await real_shutdown(*tasks)

    agg._shutdown = shutdown  # type: ignore[method-assign]

    async def scenario() -> int:
        running = asyncio.ensure_future(agg.run())
        await _wait_for(lambda: agg.port and agg.metrics_server, running, "start")
        assert await _ack(agg.port, "c1", "acked before the bug") == {"ack": "c1"}
        die.set()
        return await asyncio.wait_for(running, 120)  # no stop() from the test

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 240)) == 1
    assert healthz[0][0] == 200
    status, body = healthz[1]
    assert status == 503
    assert "compaction loop stopped on an internal error" in body
    assert f"safe in {settings.buffer_dir}" in body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "ValueError: a bug outside the pass" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert "so that the service manager restarts the aggregator" in errors[1].getMessage()
    assert _stored(settings) == ["acked before the bug"]
