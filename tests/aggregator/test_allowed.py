"""``--allow-network`` (aggregator/allowed.py): which peers the Forward port takes."""

from __future__ import annotations

import pytest

from aggregator.allowed import allowed, parse_networks


def test_peers_in_a_listed_network_or_address_are_taken_others_not() -> None:
    networks = parse_networks(["10.0.0.0/8", " 2001:db8::/32 ", "192.168.1.7"])
    assert allowed(("10.200.3.4", 50000), networks)
    assert allowed(("2001:db8::42", 50000, 0, 0), networks)
    assert allowed(("192.168.1.7", 1), networks)
    assert not allowed(("192.168.1.8", 1), networks)
    assert not allowed(("11.0.0.1", 1), networks)
    assert not allowed(("2001:db9::1", 1, 0, 0), networks)


def test_ipv4_clients_of_a_dual_stack_listener_are_checked_as_ipv4() -> None:
    """A dual-stack socket names an IPv4 client ``::ffff:10.1.2.3``."""
    networks = parse_networks(["10.0.0.0/8"])
    assert allowed(("::ffff:10.1.2.3", 1, 0, 0), networks)
    assert not allowed(("::ffff:11.1.2.3", 1, 0, 0), networks)


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::/0", "::/0"),
    ],
)
def test_an_ipv4_mapped_network_is_taken_as_the_ipv4_network_it_names(
    given: str, meant: str
) -> None:
    """IPv4 clients are compared as IPv4 addresses, so ``::ffff:10.0.0.0/104`` must mean
    ``10.0.0.0/8`` to take any of them; other IPv6 networks stay as they are."""
    assert [str(n) for n in parse_networks([given])] == [meant]


def test_an_ipv4_mapped_network_takes_its_ipv4_clients_either_way() -> None:
    networks = parse_networks(["::ffff:10.0.0.0/104"])
    assert allowed(("10.9.8.7", 1), networks)
    assert allowed(("::ffff:10.9.8.7", 1, 0, 0), networks)
    assert not allowed(("11.0.0.1", 1), networks)


def test_none_listed_takes_every_peer_and_a_list_refuses_what_is_no_address() -> None:
    assert allowed(("203.0.113.9", 1), ())
    assert allowed("/run/socket", ())
    networks = parse_networks(["fe80::/10"])
    assert allowed(("fe80::1%eth0", 1, 0, 2), networks)  # a zone id is not part of the address
    assert not allowed("/run/socket", networks)
    assert not allowed((), networks)


@pytest.mark.parametrize("value", ["10.0.0.0/33", "ten", "10.0.0.0/8/1", "", "::g"])
def test_a_value_that_is_no_network_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=r"--allow-network must be an address or a network"):
        parse_networks(["127.0.0.1", value])
