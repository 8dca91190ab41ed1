"""Connections to ``--metrics-listen`` that send no request must not be held for ever.

The shipper's metrics server serves each connection on a thread of its own; with no timeout, a
client that connected and sent nothing (a port scanner, a probe that leaks connections, a
slowloris) kept its thread and its descriptor for the life of the process. Those descriptors come
out of the reserve that :mod:`shipper.fd_budget` keeps for the sockets to the aggregators and
the checkpoint saves, so enough of them stopped the shipper from reconnecting or saving its
checkpoints. Found by holding 1,500 silent connections on a running shipper: 1,504 threads and
1,513 descriptors, still there 15 s later.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from shipper import metric_bounds as bounds_mod
from shipper import metrics as metrics_mod
from shipper.config import Endpoint
from shipper.metric_bounds import MetricsSlots
from shipper.metrics import Metrics
from tests.shipper.receiver import free_port
from tests.support.procs import closed_unanswered


@contextlib.contextmanager
def _serving(
    silent: int = 0, metrics: Metrics | None = None
) -> Iterator[tuple[int, list[socket.socket]]]:
    """A shipper metrics server on a free port (of ``metrics``, if given) and ``silent``
    connections to it that send nothing: (the port, those connections); all closed and the
    server shut down at the end."""
    port = free_port()
    server = (metrics or Metrics()).serve(Endpoint("127.0.0.1", port))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(silent)]
    try:
        yield port, socks
    finally:
        for sock in socks:
            sock.close()
        server.shutdown()
        server.server_close()


def _assert_live(port: int) -> None:
    """A probe gets its answer."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=10) as resp:
        assert resp.status == 200


def test_a_connection_that_sends_nothing_is_closed_and_scrapes_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_SECONDS", 0.5)
    with _serving(silent=5) as (port, silent):
        assert all(closed_unanswered(sock, within=10) for sock in silent)
        _assert_live(port)


def _closed_while_trickling(sock: socket.socket, within: float) -> bool:
    """Send a request head a byte at a time (every 0.1 s, never finishing it): whether the
    server closed the connection within ``within`` seconds."""
    sock.setblocking(False)
    head = b"GET /livez HTTP/1.0\r\n" + b"X-Slow: " + b"x" * 10_000
    deadline = time.monotonic() + within
    for byte in head:
        if time.monotonic() > deadline:
            return False
        try:
            if sock.recv(1) == b"":
                return True
        except BlockingIOError:
            pass
        except ConnectionResetError:
            return True
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(0.1)
    return False


def test_a_client_that_trickles_its_request_is_closed_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timeout is for the whole request, not for each read: a client sending a byte every
    0.1 s (a slowloris) kept its thread and descriptor for as long as it went on, as each read
    waited less than the timeout."""
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_SECONDS", 0.5)
    with _serving() as (port, _):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert _closed_while_trickling(sock, within=10)
        _assert_live(port)


def test_connections_over_the_limit_are_closed_and_probes_still_get_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each connection took a thread and a descriptor of the reserve kept for the aggregator
    sockets until it timed out: a client opening connections faster than that (a flood)
    took thousands. At most MAX_METRICS_CONNECTIONS are served; past it a newcomer takes the
    slot of one silent for SILENT_EVICT_SECONDS, else it is closed, so a probe still gets in."""
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_SECONDS", 60.0)
    monkeypatch.setattr(bounds_mod, "MAX_METRICS_CONNECTIONS", 4)
    monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 0.5)
    with _serving(silent=20) as (port, silent):
        closed = sum(closed_unanswered(sock, within=2) for sock in silent)
        assert closed >= 16, f"{20 - closed} silent connections still held"
        time.sleep(0.6)  # the ones left have been silent long enough to make room
        _assert_live(port)


def test_connections_closed_unanswered_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused or evicted, a connection closed unanswered was counted nowhere: a flood or a
    leaking probe holding the slots showed only as failed scrapes. It is counted in
    ``logq_shipper_metrics_connections_refused_total``, named as the aggregator's."""
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_SECONDS", 60.0)
    monkeypatch.setattr(bounds_mod, "MAX_METRICS_CONNECTIONS", 4)
    monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 3600.0)
    metrics = Metrics()
    name = "logq_shipper_metrics_connections_refused_total"
    assert metrics.registry.get_sample_value(name) == 0.0  # listed at 0 from the start

    def counted(n: float) -> bool:
        deadline = time.monotonic() + 10
        while metrics.registry.get_sample_value(name) != n and time.monotonic() < deadline:
            time.sleep(0.05)
        return metrics.registry.get_sample_value(name) == n

    with _serving(silent=10, metrics=metrics) as (port, silent):
        assert counted(6.0)  # refused: none of the 4 served was silent for long
        assert all(closed_unanswered(sock, within=10) for sock in silent[4:])
        monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 0.0)
        _assert_live(port)  # takes the slot of the one silent longest, closed unanswered
        assert counted(7.0)
        assert closed_unanswered(silent[0], within=10)


def test_a_connection_closed_for_a_newcomer_mid_request_is_not_answered(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A connection whose slot goes to a newcomer is shut down; one that had sent part of its
    request head then read end of file, took the head as complete and was answered: the page
    rendered for nothing and the write to the closed socket printed a traceback on stderr, one
    per connection evicted (a client could fill the shipper's log with them)."""
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT_SECONDS", 60.0)
    monkeypatch.setattr(bounds_mod, "MAX_METRICS_CONNECTIONS", 1)
    monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 0.2)
    earlier = set(_handler_threads())  # other tests' servers of this process may still end theirs
    with _serving() as (port, _):
        # Cut in its request line, then in its headers.
        for head in (b"GET /metrics HTTP/1", b"GET /metrics HTTP/1.0\r\nX-Slow: y\r\n"):
            with socket.create_connection(("127.0.0.1", port)) as partial:
                partial.sendall(head)
                time.sleep(0.3)  # silent long enough to give way
                _assert_live(port)
                assert closed_unanswered(partial, within=10)
        deadline = time.monotonic() + 10
        while set(_handler_threads()) - earlier and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(_handler_threads()) - earlier
    assert "Traceback" not in capfd.readouterr().err


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request" in t.name]


def test_the_slots_of_both_daemons_keep_one_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """:class:`~shipper.metric_bounds.MetricsSlots`, the books of the shipper's threads and of
    the aggregator's event loop alike: a newcomer over the limit takes the slot of the
    connection silent the longest (since the eviction time), never of one being answered;
    with none silent that long, the newcomer is the one closed."""
    monkeypatch.setattr(bounds_mod, "MAX_METRICS_CONNECTIONS", 2)
    monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 3600.0)
    slots: MetricsSlots[str] = MetricsSlots()
    assert (slots.admit("a"), slots.admit("b"), len(slots)) == (None, None, 2)
    assert slots.admit("c") == "c"  # neither is silent for long enough: c has no slot
    assert slots.answering("a") and not slots.holds("c")
    monkeypatch.setattr(bounds_mod, "SILENT_EVICT_SECONDS", 0.0)
    assert slots.admit("d") == "b"  # b, silent, gives its slot; a is being answered
    assert not slots.holds("b") and not slots.answering("b")  # b answers nothing
    assert slots.admit("e") == "d"  # the silent one of those left
    assert slots.answering("e") and slots.admit("f") == "f"  # all answering: f is closed
    slots.release("a")
    assert (slots.admit("f"), len(slots)) == (None, 2)
