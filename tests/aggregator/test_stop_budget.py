"""A stop (SIGTERM) bounded by ``--stop-timeout`` when the warehouse takes requests and never
answers (aggregator/stop_budget.py, O1s22 finding 1).

The flushes run in worker threads, which Python cannot stop, and the process did not exit
while one was in a request: on a black-holed S3 endpoint a stop took 71 s for one buffer
segment (each PUT: pyarrow's 3 s without a byte, 3 attempts; the shutdown flush retried them
for 60 s), more with a compaction pass or a catalog update under way, and the service
manager's SIGKILL came first where its grace period is the default 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import stop_budget
from aggregator.config import Settings
from aggregator.ledger import Ledger
from aggregator.service import Aggregator
from aggregator.state_files import NODE_ID_NAME, SEGMENT_SUFFIX, segment_name
from aggregator.stop_budget import WorkerCalls
from shipper import wire
from tests.aggregator.black_hole import BlackHoleProxy
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator, wait_rows
from tests.aggregator.test_stop_drain import HeldFsync
from tests.support.procs import closed_unanswered
from tests.support.seaweedfs import SeaweedFS

#: The stop's budget in the test: seconds, so that the test takes seconds.
STOP_TIMEOUT = 3.0
#: Far longer than the budget, far shorter than the stop took without it (71 s): a hang
#: detector, not a timing.
EXIT_WITHIN = 40.0


@pytest.fixture
def black_hole(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> Iterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


def _send(agg, message: str, chunk: str) -> None:  # type: ignore[no-untyped-def]
    with agg.connect() as sock:
        _ack(sock, message, chunk)


def _send_to(port: int, message: str, chunk: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        _ack(sock, message, chunk)


def _ack(sock: socket.socket, message: str, chunk: str) -> None:
    entries = [(time.time_ns(), record(message, service="hung"))]
    sock.sendall(wire.encode_packed_forward("logq.hung", entries, chunk))
    assert read_acks(sock, 1) == [chunk]


def _settings(tmp_path: Path, **options: Any) -> Settings:
    """An aggregator's settings: its warehouse ``tmp_path/wh``, its buffer ``tmp_path/buffer``."""
    return Settings(warehouse=str(tmp_path / "wh"), buffer_dir=str(tmp_path / "buffer"), **options)


def _listening(tmp_path: Path) -> Settings:
    """A server on a free port of 127.0.0.1, ``--stop-timeout 1``, no flush before the stop's."""
    return _settings(tmp_path, listen="127.0.0.1:0", flush_interval=300, stop_timeout=1.0)


def _exits_recorded(settings: Settings) -> tuple[Aggregator, list[int], threading.Event]:
    """An aggregator whose exit (``os._exit`` in the real process) is recorded instead: its
    codes in the list, the event set at the first."""
    agg = Aggregator(settings)
    exits: list[int] = []
    exited = threading.Event()
    agg._exit_now = lambda code: (exits.append(code), exited.set())
    return agg, exits, exited


async def _running(agg: Aggregator) -> asyncio.Future[int]:
    """``agg.run()`` started, once it listens."""
    running = asyncio.ensure_future(agg.run())
    while not agg.port:
        assert not running.done()
        await asyncio.sleep(0.02)
    return running


async def _stop_until_the_watchdog_exits(
    agg: Aggregator, exited: threading.Event, release: threading.Event
) -> None:
    """Stop ``agg``, held, until its watchdog exits; then ``release`` the hold."""
    agg.stop()
    try:
        assert await asyncio.to_thread(exited.wait, 30), "no exit at --stop-timeout"
    finally:
        release.set()


@contextlib.contextmanager
def _logged() -> Iterator[list[str]]:
    """The messages ``logq.aggregator`` logs meanwhile, at every level it lets through."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("logq.aggregator")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


@pytest.mark.s3
@pytest.mark.integration
def test_a_stop_on_a_hung_warehouse_ends_within_its_budget_and_loses_nothing(
    tmp_path: Path,
    s3_warehouse: str,
    s3_env: dict[str, str],
    subprocess_env: dict[str, str],
    black_hole: BlackHoleProxy,
) -> None:
    direct = {**subprocess_env, **s3_env}
    env = {**direct, "AWS_ENDPOINT_URL": black_hole.endpoint}
    extra = ["--stop-timeout", str(STOP_TIMEOUT)]
    agg = start_aggregator(tmp_path, warehouse=s3_warehouse, env=env, extra=extra)
    try:
        _send(agg, "before", "c1")
        wait_rows(s3_warehouse, "container_logs", 1, agg)
        black_hole.hang()  # from here on no request is answered, pooled connections included
        _send(agg, "during", "c2")  # acknowledged: fsync'd in the buffer
        agg.proc.send_signal(signal.SIGTERM)
        try:
            code = agg.proc.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the stop still waits on the hung warehouse after {EXIT_WITHIN:.0f}s")
    finally:
        agg.stop()
    log = agg.log_text()
    assert code == 1, log
    line = next(ln for ln in log.splitlines() if "ran out of --stop-timeout" in ln)
    assert f"--stop-timeout ({STOP_TIMEOUT:g}s)" in line, line
    assert re.search(r": [1-9]\d* buffer segments \(", line), line
    # What hangs when the stop runs out: the flush of the last line's segment, or the calls
    # after the first line's flush (its heartbeat, the DDL update), whichever the hang caught.
    assert re.search(r"abandoning: [a-z][^;]* \(for \d+ s\)", line), line
    assert f"the data is safe in {agg.buffer_dir}" in line, line
    assert list(agg.buffer_dir.glob(f"*{SEGMENT_SUFFIX}")), (
        "the acknowledged line stays in the buffer"
    )

    # The next start, on a warehouse that answers, writes it; nothing twice.
    again = start_aggregator(tmp_path, warehouse=s3_warehouse, env=direct)
    try:
        assert again.stop() == 0, again.log_text()
    finally:
        again.stop()
    messages = read_table(s3_warehouse, "container_logs")["message"].to_pylist()
    assert sorted(messages) == ["before", "during"]


def test_the_watchdog_ends_a_stop_still_held_at_its_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort, for a stop held where no step is cut short (the event loop itself):
    exit 1 at ``--stop-timeout``, saying so; a stop that ends first disarms it."""
    agg, exits, exited = _exits_recorded(_settings(tmp_path, stop_timeout=0.2))
    with caplog.at_level(logging.ERROR, logger="logq.aggregator"):
        agg.stop()  # and nothing ends it
        assert exited.wait(30), "no exit at --stop-timeout"
    assert exits == [1]
    line = next(r.getMessage() for r in caplog.records if "did not end within" in r.getMessage())
    assert f"the data is safe in {agg.settings.buffer_dir}" in line, line


def test_a_stop_cut_short_by_a_large_buffer_does_not_blame_the_warehouse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A warehouse that answers every request, and more buffered than the budget writes (a
    backlog after an outage): the stop is cut short all the same, exit 1, and its line says
    how much is left rather than that the warehouse did not answer (an operator would look for
    an outage that is not there)."""
    agg, _, _ = _exits_recorded(_listening(tmp_path))  # its exit recorded, not taken
    real_flush = agg._flush_segment

    def slow_flush(segment, deadline=None):  # type: ignore[no-untyped-def]
        time.sleep(0.4)  # a large segment: every request answered, it takes its time
        return real_flush(segment, deadline)

    agg._flush_segment = slow_flush  # type: ignore[method-assign]

    async def scenario() -> int:
        running = await _running(agg)
        for n in range(4):
            await asyncio.to_thread(_send_to, agg.port, f"line {n}", f"c{n}")
            await agg._seal()  # one segment each: a backlog of four
        agg.stop()
        return await asyncio.wait_for(running, 60)

    with caplog.at_level(logging.INFO, logger="logq.aggregator"):
        assert asyncio.run(asyncio.wait_for(scenario(), 120)) == 1
    line = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "did not answer within" not in line, line
    assert re.search(r"ran out of --stop-timeout \(1s\).*: [1-4] buffer segments", line), line
    assert f"the data is safe in {agg.settings.buffer_dir}" in line, line


def test_a_connection_slow_to_finish_gets_a_share_of_the_stop_and_the_flush_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection still making its chunk durable at the stop (its fsync held: a slow disk)
    gets a quarter of what is left of --stop-timeout (8 s here: 1.6 s), then is closed
    unacknowledged, and the stop's flush has the rest: exit 0 without the watchdog, the
    acked line written. It got a fixed 10 s, more than the whole --stop-timeout: the
    watchdog exited 1 with the buffer unwritten."""
    agg, exits, _ = _exits_recorded(_settings(tmp_path, listen="127.0.0.1:0", stop_timeout=8.0))
    disk = HeldFsync(monkeypatch)
    entries = [(time.time_ns(), record("slow", service="hung"))]

    async def scenario() -> int:
        running = await _running(agg)
        await asyncio.to_thread(_send_to, agg.port, "acked", "c1")
        with socket.create_connection(("127.0.0.1", agg.port), timeout=30) as slow:
            disk.armed = True
            slow.sendall(wire.encode_packed_forward("logq.hung", entries, "c2"))
            try:
                assert await asyncio.to_thread(disk.entered.wait, 30), "the chunk not read"
                agg.stop()
                assert await asyncio.to_thread(closed_unanswered, slow, 30), "not closed"
            finally:
                disk.release.set()
        return await asyncio.wait_for(running, 60)

    assert asyncio.run(asyncio.wait_for(scenario(), 120)) == 0
    assert exits == []
    assert "acked" in read_table(str(tmp_path / "wh"), "container_logs")["message"].to_pylist()


def test_open_connections_get_a_quarter_of_what_is_left_at_most_10_s() -> None:
    assert stop_budget.connections_grace(87.0) == 10.0  # the default --stop-timeout, 90 s
    assert stop_budget.connections_grace(20.0) == 5.0
    assert stop_budget.connections_grace(-1.0) == 0.0  # spent


class _StuckHandler(logging.Handler):
    """A log handler whose writes block: stderr a full pipe (a log collector that stopped
    reading), or a handler's lock held by a thread stuck in a write."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.release.wait(60)


def test_the_watchdog_exits_even_when_its_log_line_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort must not wait on what may hold the stop itself: a log write that blocks.
    The line is given a moment, then the process exits 1 without it."""
    monkeypatch.setattr(stop_budget, "SAY_SECONDS", 0.1)
    agg, exits, exited = _exits_recorded(_settings(tmp_path, stop_timeout=0.2))
    stuck = _StuckHandler()
    logger = logging.getLogger("logq.aggregator")
    logger.addHandler(stuck)
    try:
        agg.stop()  # and nothing ends it
        assert exited.wait(20), "the watchdog waited for its log line: no exit"
    finally:
        stuck.release.set()
        logger.removeHandler(stuck)
    assert exits == [1]


def test_the_watchdog_says_why_when_its_status_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit status is read from the buffer dir; on a disk that stopped answering (what may
    hold the stop itself) that listing hangs: the status is 1 after a moment, and the line is
    still said (the watchdog exited 1 without a word, its line waiting for the status)."""
    monkeypatch.setattr(stop_budget, "STATUS_SECONDS", 0.05)
    monkeypatch.setattr(stop_budget, "SAY_SECONDS", 5.0)
    hung = threading.Event()
    said: list[int] = []
    exits: list[int] = []
    exited = threading.Event()

    def status() -> int:
        hung.wait(30)
        return 0

    watchdog = stop_budget.StopWatchdog(
        0.01, said.append, lambda code: (exits.append(code), exited.set()), status=status
    )
    watchdog.start()
    try:
        assert exited.wait(20), "no exit"
    finally:
        hung.set()
    assert said == [1] and exits == [1], (said, exits)


def test_a_watchdog_of_a_huge_budget_waits_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--stop-timeout 1e308`` (valid: finite and positive) is a watchdog that waits, not a
    timer thread that died of an OverflowError at the stop (a traceback, and no last resort)."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    exits: list[int] = []
    watchdog = stop_budget.StopWatchdog(1e308, lambda code: None, exits.append)
    watchdog.start()
    try:
        timer = watchdog._timer
        assert timer is not None
        timer.join(0.3)
        assert timer.is_alive() and not failures and not exits
    finally:
        watchdog.cancel()


def test_the_watchdog_of_a_drain_says_to_run_drain_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``drain`` is for a buffer whose aggregator is gone for good: no next start writes it."""
    agg, _, exited = _exits_recorded(_settings(tmp_path, stop_timeout=0.2))
    agg._draining = True
    with caplog.at_level(logging.ERROR, logger="logq.aggregator"):
        agg.stop()
        assert exited.wait(30), "no exit at --stop-timeout"
    line = next(r.getMessage() for r in caplog.records if "did not end within" in r.getMessage())
    assert "running logq-aggregator drain again" in line, line
    assert "next start" not in line, line


def test_a_call_whose_caller_was_cancelled_counts_until_its_thread_returns() -> None:
    """A stop cancels the tasks that wait on worker threads; the calls in them go on, and are
    what the stop abandons (named in its log line) or waits for."""
    calls = WorkerCalls()
    began, release = threading.Event(), threading.Event()

    def hung() -> None:
        began.set()
        release.wait(30)

    async def scenario() -> None:
        task = asyncio.ensure_future(calls.run("a hung request", hung))
        await asyncio.to_thread(began.wait, 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [c.split(" (")[0] for c in calls.running()] == ["a hung request"]
        assert not await calls.wait_idle(time.monotonic() + 0.05)
        release.set()
        assert await calls.wait_idle(time.monotonic() + 30)
        assert calls.running() == []

    asyncio.run(scenario())


def _stop_held_after_the_flush(tmp_path: Path, flush_fails: bool) -> tuple[int | None, str]:
    """One record acknowledged, then a stop held after its flush (the offsets journal's fold
    hangs: a disk that stopped answering) past ``--stop-timeout``: the watchdog's exit status
    and its log line. ``flush_fails``: the warehouse refuses the flush (the segment stays)."""
    agg, exits, exited = _exits_recorded(_listening(tmp_path))
    release = threading.Event()

    def refused(segment, deadline=None):  # type: ignore[no-untyped-def]
        raise OSError("the warehouse refused the write")

    if flush_fails:
        agg._flush_segment = refused  # type: ignore[method-assign]

    async def scenario() -> None:
        running = await _running(agg)
        assert agg.flusher is not None
        agg.flusher.offsets.close = lambda: release.wait(30)  # type: ignore[method-assign]
        await asyncio.to_thread(_send_to, agg.port, "a line", "c1")
        await _stop_until_the_watchdog_exits(agg, exited, release)
        await asyncio.wait_for(running, 30)

    with _logged() as lines:
        asyncio.run(scenario())
    watchdog = [line for line in lines if "--stop-timeout (1s): exiting" in line]
    assert len(watchdog) == 1, lines
    return exits[0], watchdog[0]


def test_a_stop_held_after_its_flush_committed_exits_0(tmp_path: Path) -> None:
    """The watchdog fires after the stop's flush committed the buffer (its segment deleted):
    exit 0, "stopped", as the stop would have said; it exited 1 ("the data is safe in ..."),
    and an operator looked for data that was in the warehouse already."""
    code, line = _stop_held_after_the_flush(tmp_path, flush_fails=False)
    assert code == 0, line
    assert line.startswith("stopped: every acknowledged record is in "), line
    assert read_table(str(tmp_path / "wh"), "container_logs")["message"].to_pylist() == ["a line"]


def test_a_stop_that_exits_0_with_its_heartbeat_left_says_what_it_holds(tmp_path: Path) -> None:
    """The same exit 0 comes before the stop's last step, the removal of the node's ledger
    heartbeat: the file stays, and once stale it holds compaction and the ledger's expiry back
    on every aggregator (a node that stopped without writing out its buffer, to them). The
    line names the file and how to end that (a restart, or a drain of the written buffer);
    it said only "stopped: every acknowledged record is in ...", and a scale-in whose volume
    was retired on that exit 0 stopped compaction until someone found the heartbeat."""
    code, line = _stop_held_after_the_flush(tmp_path, flush_fails=False)
    assert code == 0, line
    node = (tmp_path / "buffer" / NODE_ID_NAME).read_text().strip()
    beat = tmp_path / "wh" / "_ledger" / "_nodes" / f"{node}.json"
    assert f"its ledger heartbeat {beat} stays" in line, line
    assert f"logq-aggregator drain --buffer-dir {tmp_path / 'buffer'}" in line, line


def test_a_stop_held_with_the_buffer_unwritten_exits_1(tmp_path: Path) -> None:
    """The same hold with the segment still in the buffer (the warehouse refused it): exit 1,
    and the line says where the data is."""
    code, line = _stop_held_after_the_flush(tmp_path, flush_fails=True)
    assert code == 1, line
    assert f"the data is safe in {tmp_path / 'buffer'}" in line, line
    assert any(p.stat().st_size for p in (tmp_path / "buffer").glob(f"*{SEGMENT_SUFFIX}"))


def test_a_stop_held_after_its_flush_by_the_heartbeat_exits_0(tmp_path: Path) -> None:
    """The flush cycle committed the buffer, then its ledger heartbeat hangs (a warehouse that
    stopped answering right after): the stop gives up on the flush loop at its step deadline,
    without the watchdog. The buffer is written (its directory holds no segment): exit 0,
    "stopped"; it exited 1 with "0 buffer segments (0.0 MB) not written"."""
    agg, exits, _ = _exits_recorded(_listening(tmp_path))
    held, release = threading.Event(), threading.Event()
    asked = float("inf")  # when the flush cycle was asked for

    async def scenario() -> int:
        nonlocal asked
        running = await _running(agg)
        assert agg.ledger is not None
        real_heartbeat = agg.ledger.heartbeat

        def hung_heartbeat(committed_through: float, flush_interval: float) -> None:
            if committed_through < asked:  # the start's (replay) heartbeat, maybe running late
                real_heartbeat(committed_through, flush_interval)  # on a busy machine
                return
            held.set()
            release.wait(30)

        agg.ledger.heartbeat = hung_heartbeat  # type: ignore[method-assign]
        await asyncio.to_thread(_send_to, agg.port, "a line", "c1")
        asked = time.time()
        agg._flush_now.set()  # a flush cycle now: commits the segment, then the heartbeat
        assert await asyncio.to_thread(held.wait, 30), "no heartbeat after the flush"
        agg.stop()
        try:
            return await asyncio.wait_for(running, 30)
        finally:
            release.set()

    with _logged() as lines:
        code = asyncio.run(scenario())
    assert code == 0 and exits in ([], [0]), (code, exits, lines)
    assert any(line.startswith("stopped: every acknowledged record is in ") for line in lines)
    assert not any("not written" in line for line in lines), lines
    assert read_table(str(tmp_path / "wh"), "container_logs")["message"].to_pylist() == ["a line"]


def test_a_drain_held_while_it_sets_a_segment_aside_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain stopped (SIGTERM) while a segment that fails with a data error is being set
    aside: moved to the quarantine, the volume then hangs on its fsync, and the watchdog fires
    before the drain counted the segment. Nothing is left in the buffer dir, but the drain set
    a segment aside: exit 1, as a drain that ends says (it exited 0, "every acknowledged
    record is in", and a runbook retired the volume)."""
    from aggregator import buffer as buffer_mod
    from aggregator import writer as writer_mod
    from tests.aggregator.test_flusher import write_segment

    buffer_dir = tmp_path / "buffer"
    buffer_dir.mkdir()
    write_segment(buffer_dir / segment_name(1), 2, 5)

    def poisoned(*args: object) -> None:
        raise ValueError("simulated encoder bug")

    monkeypatch.setattr(writer_mod, "put_table", poisoned)
    quarantine = buffer_dir / "quarantine"
    moved, release = threading.Event(), threading.Event()
    real_fsync_dir = buffer_mod.fsync_dir

    def fsync_dir(path: Path) -> None:
        if Path(path) == quarantine:  # right after the segment's move: the volume hangs
            moved.set()
            release.wait(30)
        real_fsync_dir(path)

    monkeypatch.setattr(buffer_mod, "fsync_dir", fsync_dir)
    agg, exits, exited = _exits_recorded(
        _settings(tmp_path, stop_timeout=1.0, retry_max_interval=0.01)
    )

    async def scenario() -> int:
        draining = asyncio.ensure_future(agg.drain())
        assert await asyncio.to_thread(moved.wait, 30), "the segment was not set aside"
        await _stop_until_the_watchdog_exits(agg, exited, release)
        return await asyncio.wait_for(draining, 30)

    assert asyncio.run(scenario()) == 1  # (the drain itself, once the volume answered)
    assert exits == [1], exits
    assert [p.name for p in quarantine.glob(f"*{SEGMENT_SUFFIX}")] == [segment_name(1)]


def test_a_drain_held_after_its_flush_exits_1_until_the_node_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain (of a node gone for good) that wrote every segment, then hangs removing the
    node's heartbeat from the ledger (a warehouse that stopped answering): the watchdog exits
    1, "run logq-aggregator drain again". It exited 0, and the heartbeat left behind held
    compaction back on every aggregator (a stale node) while the runbook took the drain as
    done."""
    from tests.aggregator.test_flusher import write_segment

    buffer_dir = tmp_path / "buffer"
    buffer_dir.mkdir()
    write_segment(buffer_dir / segment_name(1), 2, 5)
    agg, exits, exited = _exits_recorded(_settings(tmp_path, stop_timeout=1.0))
    held, release = threading.Event(), threading.Event()

    def hung_forget(ledger: Ledger) -> None:
        held.set()
        release.wait(30)

    monkeypatch.setattr(Ledger, "forget", hung_forget)

    async def scenario() -> int:
        draining = asyncio.ensure_future(agg.drain())
        assert await asyncio.to_thread(held.wait, 30), "the drain did not get to the ledger"
        await _stop_until_the_watchdog_exits(agg, exited, release)
        return await asyncio.wait_for(draining, 30)

    with _logged() as lines:
        asyncio.run(scenario())
    assert exits == [1], (exits, lines)
    assert not list(buffer_dir.glob(f"*{SEGMENT_SUFFIX}")), "the segment was written"
    assert any("is written by running logq-aggregator drain again" in line for line in lines)
