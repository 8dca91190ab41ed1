"""Fluentd's ``out_forward`` with ``heartbeat_type udp`` sends a datagram to the server's port
every ``heartbeat_interval`` and counts the node down when nothing comes back: Fluentd's own
``in_forward`` answers ``"\\0"`` on UDP on its port (``HEARTBEAT_UDP_PAYLOAD``,
lib/fluent/plugin/in_forward.rb). Without an answer, that Fluentd sent nothing at all ("no nodes
are available")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import listen
from aggregator.allowed import Network, parse_networks
from aggregator.udp_heartbeat import _Answer, answer_heartbeats
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, start_aggregator


@pytest.mark.integration
def test_a_udp_heartbeat_is_answered_on_the_forward_port(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            for _ in range(2):  # Fluentd's heartbeat, as often as it likes
                udp.sendto(b"\0", ("127.0.0.1", agg.port))
                data, sender = udp.recvfrom(128)
                assert (data, sender) == (b"\0", ("127.0.0.1", agg.port))
    finally:
        assert agg.stop() == 0


def _answers(udp: socket.socket, wait: float) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram that comes within ``wait`` seconds of the last one."""
    udp.settimeout(wait)
    got: list[tuple[bytes, tuple[str, int]]] = []
    try:
        while True:
            got.append(udp.recvfrom(65536))
    except TimeoutError:
        return got


async def _listening(
    host: str = "127.0.0.1", networks: tuple[Network, ...] = ()
) -> tuple[listen.Listeners, list[asyncio.BaseTransport]]:
    tcp = await listen.start_server(lambda r, w: w.close(), host, 0)
    return tcp, await answer_heartbeats(tcp.sockets, networks)


def _answered(datagrams: list[bytes], networks: tuple[Network, ...] = ()) -> list[bytes]:
    """What comes back to 127.0.0.1 for ``datagrams`` sent to heartbeat answers on a Forward
    port of 127.0.0.1 (``networks``: its ``--allow-network``)."""

    async def run() -> list[tuple[bytes, tuple[str, int]]]:
        tcp, heartbeats = await _listening(networks=networks)
        port = tcp.sockets[0].getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", 0))
                for datagram in datagrams:
                    udp.sendto(datagram, ("127.0.0.1", port))
                return await asyncio.to_thread(_answers, udp, 1.0)
        finally:
            for heartbeat in heartbeats:
                heartbeat.close()
            tcp.close()

    return [data for data, _ in asyncio.run(run())]


def test_only_a_heartbeat_is_answered_and_never_with_more_bytes() -> None:
    """Junk, a scan, an empty or a large datagram (a spoofed source's request to reflect): no
    answer, and the heartbeats after them are still answered."""

    junk = [b"", b"x", b"\0\0", b"\x92\xa0\x90", b"\0" * 60_000]
    assert _answered([*junk, b"\0"]) == [b"\0"]


@pytest.mark.parametrize(
    ("allow", "answered"),
    [
        ("10.0.0.0/8", False),
        ("127.0.0.2", False),
        ("127.0.0.0/8", True),
        ("::ffff:127.0.0.1", True),  # the IPv4 address, in its IPv6 spelling
    ],
)
def test_with_allow_network_only_an_allowed_address_is_answered(allow: str, answered: bool) -> None:
    """``--allow-network``: a heartbeat from outside the networks gets no answer (its Fluentd
    counts the node down, as the TCP connection would be closed); one from inside does."""

    got = _answered([b"\0", b"\0"], parse_networks([allow]))
    assert got == ([b"\0", b"\0"] if answered else [])


@pytest.mark.integration
def test_an_aggregator_with_allow_network_answers_no_heartbeat_from_outside(
    tmp_path: Path,
) -> None:
    """The server passes its ``--allow-network`` to the UDP answers: 127.0.0.1 outside
    10.0.0.0/8 gets none."""
    agg = start_aggregator(tmp_path, extra=["--allow-network", "10.0.0.0/8"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"\0", ("127.0.0.1", agg.port))
            assert _answers(udp, 1.0) == []
    finally:
        assert agg.stop() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_udp_binds_the_tcp_listeners_addresses_and_port_and_is_freed_on_close(host: str) -> None:
    """``--listen :0`` binds IPv4 and IPv6 on one kernel-picked port (aggregator/listen.py):
    the heartbeat is answered on exactly those addresses, on that port."""

    async def run() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        tcp, heartbeats = await _listening(host)
        tcp_names = [s.getsockname()[:2] for s in tcp.sockets]
        udp_names = [h.get_extra_info("sockname")[:2] for h in heartbeats]
        for heartbeat in heartbeats:
            heartbeat.close()
        tcp.close()
        await asyncio.sleep(0)  # the transports close their sockets on the next loop turn
        return tcp_names, udp_names

    tcp_names, udp_names = asyncio.run(run())
    assert udp_names == tcp_names
    assert len({port for _, port in udp_names}) == 1
    for name in udp_names:  # closed: each port is free again
        family = socket.AF_INET6 if ":" in name[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as again:
            if family == socket.AF_INET6:
                again.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            again.bind(name)


@contextlib.contextmanager
def _udp_held_where_tcp_is_free() -> Iterator[int]:
    """Hold the UDP side of a port whose TCP side no one listens on, and give that port. A UDP
    port the kernel picks alone may be another test's TCP listening port: the aggregator then
    could not start at all, a collision and not what the test is about."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                continue
        with udp:
            yield port
        return
    raise RuntimeError("no port free for both TCP and UDP in 50 tries")


@pytest.mark.integration
def test_a_udp_port_held_elsewhere_leaves_the_tcp_forward_port_serving(tmp_path: Path) -> None:
    """Another process holds the UDP side of the port: the aggregator still starts and takes
    logs over TCP, and says why heartbeats go unanswered."""
    with _udp_held_where_tcp_is_free() as port:
        agg = start_aggregator(tmp_path, extra=["--listen", f"127.0.0.1:{port}"])
        try:
            assert agg.port == port
            with agg.connect() as sock:
                entries = wire.pack_entries([(time.time_ns(), {"log": "over TCP"})])
                sock.sendall(wire.pack(["app.web", entries, {"chunk": "c1"}]))
                assert read_acks(sock, 1) == ["c1"]
            assert agg.stop() == 0
            text = agg.log_text()
        finally:
            agg.stop()
    assert f"not answering Fluentd's UDP heartbeat on 127.0.0.1 UDP port {port}" in text
    assert read_table(agg.warehouse, "container_logs")["message"].to_pylist() == ["over TCP"]


class _Recording(asyncio.DatagramTransport):
    """Keeps what is sent: the answers of :class:`_Answer`, without a network."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append(bytes(data))


def test_answers_are_dropped_not_queued_while_the_send_buffer_is_full() -> None:
    """A flood of (spoofed) heartbeats must not grow the transport's buffer without bound."""
    answer, transport = _Answer(), _Recording()
    answer.connection_made(transport)
    answer.datagram_received(b"\0", ("192.0.2.1", 24224))
    answer.pause_writing()
    for _ in range(1000):
        answer.datagram_received(b"\0", ("192.0.2.1", 24224))
    answer.resume_writing()
    answer.datagram_received(b"\0", ("192.0.2.1", 24224))
    assert transport.sent == [b"\0", b"\0"]
