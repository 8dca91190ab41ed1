"""Fluentd's UDP heartbeat, answered on the Forward port.

Fluentd's ``out_forward`` with ``heartbeat_type udp`` sends a datagram, ``"\\0"``, to each
server's port every ``heartbeat_interval`` (1 s) and counts the node down when nothing comes
back (its phi accrual failure detector): it then sends nothing at all ("no nodes are
available"). Fluentd's ``in_forward`` answers on UDP on its TCP port with one byte, ``"\\0"``
(``HEARTBEAT_UDP_PAYLOAD``); so does this, but only to that one-byte heartbeat: any other
datagram (junk, a scan, a spoofed source) gets nothing, so the port reflects no more bytes than
it is sent and cannot amplify. With ``--allow-network``, only a heartbeat from an allowed address
is answered, as only such a client's connection is taken: a Fluentd outside them counts the node
down instead of sending to a port that would close its connection. Answers are dropped, not
queued, while the socket's send buffer is full (a flood of spoofed heartbeats must not grow the
transport's buffer without bound).
``heartbeat_type transport`` (Fluentd's default) and ``none`` need nothing here.

The UDP sockets bind exactly the TCP listeners' addresses, on the same port number (the one
the kernel picked for ``:0`` too). A UDP address that cannot be bound (its port held by another
process) is left unanswered with a WARNING and the Forward server starts anyway: only a Fluentd
with ``heartbeat_type udp`` needs it, and refusing to receive logs over it would lose more.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import Any, cast

from aggregator.allowed import Network, allowed

log = logging.getLogger("logq.aggregator.udp_heartbeat")

#: What Fluentd's out_forward sends as a heartbeat, and what its in_forward answers.
HEARTBEAT = b"\0"
ANSWER = b"\0"


class _Answer(asyncio.DatagramProtocol):
    """Answers each heartbeat datagram (:data:`HEARTBEAT`) from an address in ``networks``
    (none: every address) with :data:`ANSWER`."""

    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self.networks = networks
        self.transport: asyncio.DatagramTransport | None = None
        self.paused = False
        """The transport's send buffer is full: answers are dropped until it drains."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is no subclass of DatagramTransport: cast, not checked.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if data != HEARTBEAT or self.paused or self.transport is None:
            return
        if allowed(addr, self.networks):
            self.transport.sendto(ANSWER, addr)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("UDP heartbeat answer failed: %s", exc)


def _udp_socket(family: int, sockaddr: tuple[Any, ...]) -> socket.socket:
    """A UDP socket bound to ``sockaddr`` (a TCP listener's ``getsockname()``, with its IPv6
    scope); IPv6 ones IPv6 only, as the TCP listeners are (the IPv4 address has its own
    socket on the same port). No ``SO_REUSEADDR``: on UDP it would share the port with another
    process's socket instead of failing to bind."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def answer_heartbeats(
    listening: Iterable[socket.socket], networks: tuple[Network, ...] = ()
) -> list[asyncio.BaseTransport]:
    """Answer UDP heartbeats on the address and port of each listening TCP socket of the
    Forward server, from the addresses in ``networks`` (``--allow-network``; none: from every
    address); an address whose UDP port cannot be bound is said and skipped."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    try:
        for tcp in listening:
            sockaddr = tcp.getsockname()
            try:
                sock = _udp_socket(tcp.family, sockaddr)
            except OSError as exc:
                log.warning(
                    "not answering Fluentd's UDP heartbeat on %s UDP port %d: %s (the Forward "
                    "port listens on TCP as usual; only a Fluentd out_forward with "
                    "heartbeat_type udp needs it: free that UDP port, or use heartbeat_type "
                    "transport)",
                    sockaddr[0],
                    sockaddr[1],
                    exc.strerror or exc,
                )
                continue
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Answer(networks), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            transports.append(transport)
    except BaseException:
        for transport in transports:
            transport.close()
        raise
    return transports
