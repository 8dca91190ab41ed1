"""An endpoint prints IPv6 hosts in brackets, but hashes as it always did.

``::1:24224`` in a log line cannot be read back (the port, or the last group?); ``[::1]:24224``
can. Rendezvous hashing (per-source affinity over several ``--aggregator``) ranks endpoints by a
string, though: had it followed the display, a rolling upgrade would have moved sources to other
aggregators, whose offset dedup does not know their resent batches.
"""

from __future__ import annotations

import hashlib

import pytest

from shipper.config import Endpoint, parse_endpoint
from shipper.sender import rendezvous_order
from tests.shipper.shipping import plain_id

ENDPOINTS = (
    Endpoint("::1", 24224),
    Endpoint("fd00::a", 24224),
    Endpoint("2001:db8::7", 24225),
    Endpoint("10.0.0.1", 24224),
    Endpoint("10.0.0.2", 24224),
    Endpoint("agg.example", 24224),
    Endpoint("fd00::b", 24224, server_name="agg.internal"),  # an address resolved from a name
)

#: The rankings computed by the code before IPv6 hosts were printed in brackets (hosts only:
#: they are unique here). They must never change.
RANKINGS = {
    "docker:" + "a" * 64: [
        "fd00::b", "10.0.0.1", "::1", "2001:db8::7", "10.0.0.2", "fd00::a", "agg.example"
    ],
    "docker:" + "b" * 64: [
        "agg.example", "10.0.0.2", "fd00::a", "::1", "2001:db8::7", "fd00::b", "10.0.0.1"
    ],
    "cri:default_web-1_0123/envoy/0.log": [
        "10.0.0.2", "fd00::b", "fd00::a", "agg.example", "2001:db8::7", "::1", "10.0.0.1"
    ],
    "src-1": ["2001:db8::7", "agg.example", "10.0.0.1", "10.0.0.2", "fd00::a", "fd00::b", "::1"],
    "src-2": ["2001:db8::7", "10.0.0.2", "agg.example", "10.0.0.1", "::1", "fd00::a", "fd00::b"],
    "": ["2001:db8::7", "agg.example", "10.0.0.2", "::1", "fd00::b", "10.0.0.1", "fd00::a"],
    "s\u00e9": ["fd00::b", "::1", "10.0.0.2", "agg.example", "fd00::a", "10.0.0.1", "2001:db8::7"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        (Endpoint("::1", 24224), "[::1]:24224"),
        (Endpoint("fd00::b", 24224, server_name="agg.internal"), "[fd00::b]:24224"),
        (Endpoint("10.0.0.1", 24224), "10.0.0.1:24224"),
        (Endpoint("agg.example", 1), "agg.example:1"),
    ],
    ids=plain_id,
)
def test_ipv6_hosts_print_in_brackets(endpoint: Endpoint, shown: str) -> None:
    assert str(endpoint) == shown
    assert f"{endpoint}" == shown
    assert parse_endpoint(shown) == Endpoint(endpoint.host, endpoint.port)  # reads back


def test_the_hash_key_is_the_unbracketed_host_and_port() -> None:
    assert [ep.hash_key for ep in ENDPOINTS[:3]] == [
        "::1:24224",
        "fd00::a:24224",
        "2001:db8::7:24225",
    ]
    assert Endpoint("10.0.0.1", 24224).hash_key == "10.0.0.1:24224"


@pytest.mark.parametrize("source", list(RANKINGS))
def test_rankings_are_those_of_the_old_code(source: str) -> None:
    assert [ep.host for ep in rendezvous_order(source, ENDPOINTS)] == RANKINGS[source]


def test_the_hash_input_is_byte_for_byte_the_old_one() -> None:
    """The weight of (source, endpoint), as the old code computed it from ``str(endpoint)``."""
    order = rendezvous_order("src-1", ENDPOINTS)
    weights = [
        hashlib.blake2b(f"src-1\x00{ep.host}:{ep.port}".encode(), digest_size=8).digest()
        for ep in order
    ]
    assert weights == sorted(weights, reverse=True)
