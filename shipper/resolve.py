"""Aggregator names -> the addresses to send to, resolved again while the shipper runs.

A name that resolves to several addresses (a Kubernetes headless Service, a DNS round-robin
record) stands for several aggregators, as Fluentd's ``service_discovery`` and Vector's DNS
load balancing treat it: every address becomes an endpoint of its own, so sources spread over
all of them by rendezvous hashing (sender.py), and an aggregator that is added or replaced is
used within :data:`DNS_REFRESH_SECONDS`. A name with one address stays a name, resolved by every
connect as before. When DNS fails, the addresses found last are kept.

Only the addresses of one family are used, the family of the resolver's first answer (the
system's preference): a dual-stack name is one aggregator per pod, not two, and ``localhost``
(``::1`` and ``127.0.0.1``) stays one endpoint.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from shipper.config import Endpoint

log = logging.getLogger("logq.shipper.resolve")

#: How often the names are resolved again.
DNS_REFRESH_SECONDS = 30.0
#: How long one resolution may take before the addresses found last are kept.
RESOLVE_TIMEOUT = 5.0

Resolver = Callable[[str, int], Awaitable[list[tuple[str, int]]]]
"""``(host, port)`` -> the addresses to connect to, as ``(address, port)`` pairs."""


class Expansion(NamedTuple):
    """What one resolution of the configured endpoints found."""

    members: dict[Endpoint, tuple[Endpoint, ...]]
    """Each configured endpoint -> the endpoints it stands for now."""
    unresolved: dict[Endpoint, str]
    """The configured names that did not resolve this time (their addresses found last, or
    the name itself, kept), each with why (:func:`why_unresolved`): a saved placement may yet
    be one of their addresses (see :meth:`shipper.sender.ForwardClient._held`), and
    ``--once`` names them when it gives up."""


async def system_resolver(host: str, port: int) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    return addresses_of(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def why_unresolved(exc: BaseException) -> str:
    """Why a name did not resolve, in words for an error line: the resolver's own
    (``name or service not known``, ``temporary failure in name resolution``)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {RESOLVE_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def addresses_of(infos: Iterable[tuple[Any, ...]]) -> list[tuple[str, int]]:
    """The distinct ``(address, port)`` of ``getaddrinfo`` results in the first one's family."""
    infos = list(infos)
    if not infos:
        return []
    family = infos[0][0]
    out: list[tuple[str, int]] = []
    for fam, _, _, _, sockaddr in infos:
        pair = (str(sockaddr[0]), int(sockaddr[1]))
        if fam == family and pair not in out:
            out.append(pair)
    return out


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def needs_dns(configured: Iterable[Endpoint]) -> bool:
    return any(not is_address(ep.host) for ep in configured)


async def expand(
    configured: tuple[Endpoint, ...],
    resolver: Resolver,
    previous: dict[Endpoint, tuple[Endpoint, ...]],
) -> Expansion:
    """Each configured endpoint -> the endpoints it stands for now (see the module docstring),
    and the names that did not resolve."""
    members: dict[Endpoint, tuple[Endpoint, ...]] = {}
    unresolved: dict[Endpoint, str] = {}
    for ep in configured:
        if is_address(ep.host):
            members[ep] = (ep,)
            continue
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                addresses = await resolver(ep.host, ep.port)
        except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: a bad IDNA name
            members[ep] = previous.get(ep, (ep,))
            unresolved[ep] = why_unresolved(exc)
            log.warning(
                "cannot resolve aggregator name=%s error=%r; keeping addresses=%s",
                ep.host,
                str(exc) or type(exc).__name__,
                ",".join(map(str, members[ep])),
            )
            continue
        if len(addresses) >= 2:
            members[ep] = tuple(Endpoint(a, p, server_name=ep.host) for a, p in addresses)
        else:
            members[ep] = (ep,)
    return Expansion(members, unresolved)


def flatten(members: dict[Endpoint, tuple[Endpoint, ...]]) -> tuple[Endpoint, ...]:
    """Every member once (an address listed and also resolved from a name counts once)."""
    out: dict[tuple[str, int], Endpoint] = {}
    for group in members.values():
        for ep in group:
            out.setdefault((ep.host, ep.port), ep)
    return tuple(out.values())
