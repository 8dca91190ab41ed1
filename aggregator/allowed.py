"""``--allow-network``: the client addresses the Forward port takes, as Fluentd's in_forward
``<client> network 10.0.0.0/8`` and Fluent Bit's firewalling users expect. A connection from
any other address is closed at once, before a TLS handshake or a byte is read, and counted
(``connections_closed_total{reason="not_allowed"}``). None given: every address, as before.

A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``):
they are checked as the IPv4 address they are, and a network given in that spelling
(``::ffff:10.0.0.0/104``) is taken as the IPv4 network it names (``10.0.0.0/8``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Each value as a network (an address alone: that one address); ValueError naming the
    value that is neither."""
    networks = []
    for value in values:
        try:
            networks.append(_as_ipv4(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"--allow-network must be an address or a network such as 10.0.0.0/8 or "
                f"2001:db8::/32, got {value[:80]!r}"
            ) from None
    return tuple(networks)


#: Where IPv4-mapped IPv6 addresses are (``::ffff:a.b.c.d``).
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _as_ipv4(network: Network) -> Network:
    """An IPv4-mapped IPv6 network as the IPv4 network it names (clients are compared as
    IPv4 addresses); any other network as it is."""
    if not isinstance(network, ipaddress.IPv6Network) or not network.subnet_of(_IPV4_MAPPED):
        return network
    first = network.network_address.ipv4_mapped
    assert first is not None  # inside ::ffff:0:0/96
    return ipaddress.IPv4Network((first, network.prefixlen - 96))


def allowed(peer: object, networks: tuple[Network, ...]) -> bool:
    """Whether ``peer`` (a socket's ``peername``) is in one of ``networks``; every peer is
    when there are none. A peer that is no IP address is refused when there are some."""
    if not networks:
        return True
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
