"""Listening on every address of one ``HOST:PORT`` flag, on one port (``--listen``,
``--metrics-listen``).

``asyncio.start_server`` binds each address that ``HOST`` resolves to on its own: with port 0
(the kernel picks one) each got a port of its own, ``:0`` one for ``0.0.0.0`` and another for
``::``, ``localhost:0`` one for ``127.0.0.1`` and another for ``::1``; the ``listening on`` line
named two ports, and a client that resolved the name to the other family reached another port
than the one announced. Here the first address is bound (IPv4 first), and the others take its
port (Fluent Bit's listeners: one port); another process that holds that port on a later
address makes the whole set be bound again, on a new port, up to :data:`PORT_TRIES` times.
An address of a family this host has not enabled (no IPv6 socket, or ``::1`` missing) is left
out as asyncio leaves it out, as long as another one is listened on (:func:`_bound`).

A connection's task that is cancelled (the loop ending with the connection still open or
closing, a stop past its grace) ends quietly, its socket dropped (:func:`ends_quietly`).

A host name is resolved once at start-up, before the buffer is read (:func:`resolved`):
a name that does not exist is a usage error (:class:`UnresolvableHost`, exit 2), a resolver
that fails for now (``EAI_AGAIN``) a failure at run time (exit 1: start again), both said at
once, not after the seconds per GiB that reading a large buffer takes. Its addresses are the
ones bound then (:func:`start_server`'s ``addresses``): resolved again at the bind, after
that read, the name could fail for now there, ending a start that had taken those seconds.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shipper.errors import listen_error

#: A connection handler of ``asyncio.start_server``.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Bindings of a ``HOST:0`` tried before giving up, each on a new port, when another process
#: holds the port picked for the first address on one of the others.
PORT_TRIES = 20

#: asyncio's default StreamReader limit (``asyncio.start_server``'s ``limit``).
STREAM_LIMIT = 64 * 1024

#: An address to bind: (family, sockaddr) as ``getaddrinfo`` gives it.
Address = tuple[int, tuple[Any, ...]]


class Listeners:
    """The servers of one flag's sockets, seen as one ``asyncio.Server``: its sockets, close
    and wait_closed."""

    def __init__(self, servers: Sequence[asyncio.AbstractServer]) -> None:
        self._servers = list(servers)

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for server in self._servers for s in getattr(server, "sockets", ())]

    def close(self) -> None:
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()


def ends_quietly(callback: Handler) -> Handler:
    """``callback``, whose task ends (not cancelled) when it is cancelled, the connection's
    socket dropped: the connection is over either way. A task of ``asyncio.start_server``
    that ends cancelled made Python 3.11 log ``Exception in callback
    StreamReaderProtocol.connection_made.<locals>.callback ... CancelledError`` with a
    traceback (its done callback asks ``task.exception()`` of a cancelled task; 3.12 checks
    first): at every SIGTERM with a client connected to ``--metrics-listen`` (its task still
    open when ``asyncio.run`` cancels what is left) or a Forward connection closing then."""

    @functools.wraps(callback)
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await callback(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()

    return handle


async def start_server(
    callback: Handler,
    host: str,
    port: int,
    *,
    limit: int = STREAM_LIMIT,
    reader: type[asyncio.StreamReader] = asyncio.StreamReader,
    addresses: Sequence[Address] | None = None,
    **kwargs: Any,
) -> Listeners:
    """``asyncio.start_server(callback, host, port, limit=limit, **kwargs)``, with every
    address of ``host`` on one port (``""``: every address of this host, as asyncio reads it);
    each connection's task :func:`ends_quietly`. ``reader``: the class of each connection's
    StreamReader (the Forward server's counts what it receives, :mod:`.stop_reads`).
    ``addresses``: those of ``host``, :func:`resolved` already (None: resolved here)."""
    callback = ends_quietly(callback)
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:  # as asyncio.start_server makes it
        return asyncio.StreamReaderProtocol(reader(limit=limit, loop=loop), callback, loop=loop)

    if addresses is None:
        addresses = distinct_addresses(await _resolve(host, port))
    sockets = bind_all(addresses, port)
    servers: list[asyncio.AbstractServer] = []
    try:
        for sock in sockets:
            servers.append(await loop.create_server(protocol, sock=sock, **kwargs))
    except BaseException:
        for server in servers:
            server.close()
        for sock in sockets:
            sock.close()
        raise
    return Listeners(servers)


class UnresolvableHost(ValueError):
    """The host name of ``--listen`` or ``--metrics-listen`` does not resolve, for good (no
    such name, or no address for it): the command must change (exit 2, as a bad flag)."""


#: ``getaddrinfo`` errors that say the name has no address (the resolver answered): a typo, a
#: name this host does not know. Any other (``EAI_AGAIN``: no answer for now, ``EAI_FAIL``: the
#: resolver failed) may pass with the same command.
NO_SUCH_NAME = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


def listen_failure(flag: str, address: str, host: str, exc: OSError) -> Exception:
    """The error to exit on when ``flag`` (``address``, whose host is ``host``) cannot be
    listened on: for a host name that does not resolve, :class:`UnresolvableHost` when it does
    not exist (exit 2), an OSError saying to start again when the resolver failed (exit 1);
    else :func:`shipper.errors.listen_error` (a port in use, an address not on this host)."""
    if not isinstance(exc, socket.gaierror):
        return listen_error(flag, address, exc)
    said = f"cannot listen on {address} ({flag}): the host name {host!r}"
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SUCH_NAME:
        return UnresolvableHost(
            f"{said} does not resolve ({reason}): use an IP address, :PORT (every address) or "
            "a name this host resolves"
        )
    if exc.errno == getattr(socket, "EAI_AGAIN", None):
        why = "for now ({}): a temporary DNS failure; retry once DNS answers"
    else:
        why = "({}): the resolver failed; check this host's DNS (/etc/resolv.conf) and retry"
    error = OSError(f"{said} could not be resolved {why.format(reason)}, or use an IP address")
    error.errno = exc.errno
    return error


async def resolved(flag: str, address: str, host: str, port: int) -> list[Address]:
    """The addresses of ``host`` to listen on, for :func:`start_server`'s ``addresses``;
    :func:`listen_failure`'s error if it does not resolve: called at start-up before the
    buffer is read, so that a name that cannot be listened on is said at once."""
    try:
        return distinct_addresses(await _resolve(host, port))
    except OSError as exc:
        raise listen_failure(flag, address, host, exc) from exc


async def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """The ``getaddrinfo`` results of a listening ``host`` (``""``: every address)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:  # (as asyncio says it)
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return infos


def distinct_addresses(infos: Sequence[tuple[Any, ...]]) -> list[Address]:
    """The (family, sockaddr) of ``getaddrinfo`` results, each once, IPv4 first (then in the
    resolver's order): the first one bound picks the port."""
    seen: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        address = (int(family), tuple(sockaddr))
        if address not in seen:
            seen.append(address)
    return sorted(seen, key=lambda a: a[0] != socket.AF_INET)


def bind_all(addresses: Sequence[Address], port: int) -> list[socket.socket]:
    """A bound (not yet listening) socket for each address, all on ``port``; port 0: on the
    one the kernel gave the first address. An address of a family this host has not enabled
    is skipped as asyncio skips it (:func:`_bound`), unless none is left. Raises the OSError of
    an address that cannot be bound (after :data:`PORT_TRIES` tries for a port 0 taken on a
    later address), nothing left bound."""
    for attempt in range(1, PORT_TRIES + 1):
        sockets: list[socket.socket] = []
        skipped: list[OSError] = []
        chosen = port
        try:
            for family, sockaddr in addresses:
                bound = _bound(family, (sockaddr[0], chosen, *sockaddr[2:]))
                if isinstance(bound, OSError):
                    skipped.append(bound)
                    continue
                sockets.append(bound)
                chosen = bound.getsockname()[1]
            if not sockets and skipped:  # no family of them is usable: say why
                raise skipped[0]
            return sockets
        except OSError as exc:
            for sock in sockets:
                sock.close()
            picked = port == 0 and bool(sockets)  # the port the first address was given
            if not (picked and exc.errno == errno.EADDRINUSE) or attempt == PORT_TRIES:
                raise
    raise AssertionError("unreachable")  # (the last try returned or raised)


def _bound(family: int, sockaddr: tuple[Any, ...]) -> socket.socket | OSError:
    """A TCP socket bound to ``sockaddr`` as asyncio binds one: ``SO_REUSEADDR`` (a restart
    binds past the old connections in TIME_WAIT), IPv6 sockets IPv6 only (the IPv4 address
    has its own socket). The error, returned rather than raised, for an address of a family
    this host has not enabled, which :func:`bind_all` skips as asyncio does: no socket of that
    family can be made (a kernel booted with ``ipv6.disable=1``: ``:PORT`` resolves to ``::``
    too; asyncio skips it), or the address is not on this host (``::1`` in a container whose
    IPv6 is off, where /etc/hosts names it ``localhost``: Python 3.13's asyncio skips it)."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return OSError(exc.errno, f"cannot open a socket for {sockaddr[0]!r}: {exc.strerror}")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            error = OSError(
                exc.errno, f"error while attempting to bind on address {sockaddr!r}: {reason}"
            )
            if exc.errno == errno.EADDRNOTAVAIL:
                sock.close()
                return error
            raise error from None
    except BaseException:
        sock.close()
        raise
    return sock
