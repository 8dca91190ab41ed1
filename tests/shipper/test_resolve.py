"""Aggregator names with several addresses: one endpoint per address, kept current."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from shipper.config import Endpoint
from shipper.resolve import Resolver, addresses_of, expand, flatten
from shipper.sender import ForwardClient, tls_context
from tests.shipper.receiver import Receiver
from tests.shipper.test_sender import message
from tests.shipper.tlsgen import make_ca_and_server, server_context


def aggs_client(resolver: Resolver, **kw: Any) -> ForwardClient:
    """A client given the one name ``aggs.test``, resolved by ``resolver``."""
    kw.setdefault("give_up_after", 3.0)
    return ForwardClient((Endpoint("aggs.test", 24224),), hostname="h", resolver=resolver, **kw)


def info(family: socket.AddressFamily, address: str, port: int = 24224) -> tuple:
    return (family, socket.SOCK_STREAM, 6, "", (address, port))


def test_addresses_of_one_family_in_resolver_order() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    infos = [info(v4, "10.0.0.2"), info(v6, "fd00::2"), info(v4, "10.0.0.1"), info(v4, "10.0.0.2")]
    assert addresses_of(infos) == [("10.0.0.2", 24224), ("10.0.0.1", 24224)]
    assert addresses_of([info(v6, "::1"), info(v4, "127.0.0.1")]) == [("::1", 24224)]
    assert addresses_of([]) == []


def test_expand_names_addresses_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    answers: dict[str, list[tuple[str, int]] | OSError] = {
        "aggs.svc": [("10.0.0.1", 24224), ("10.0.0.2", 24224)],
        "one.svc": [("10.0.0.9", 24224)],
    }

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return answer

    aggs, one, ip = (
        Endpoint("aggs.svc", 24224),
        Endpoint("one.svc", 24224),
        Endpoint("10.0.0.2", 24224),
    )
    members, unresolved = asyncio.run(expand((aggs, one, ip), resolver, {}))
    assert members[aggs] == (
        Endpoint("10.0.0.1", 24224, "aggs.svc"),
        Endpoint("10.0.0.2", 24224, "aggs.svc"),
    )
    assert members[one] == (one,)  # one address: stays a name, connect resolves it
    assert members[ip] == (ip,)
    assert not unresolved
    assert [str(e) for e in flatten(members)] == [
        "10.0.0.1:24224",
        "10.0.0.2:24224",
        "one.svc:24224",
    ]

    answers["aggs.svc"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with caplog.at_level(logging.WARNING, logger="logq.shipper.resolve"):
        again, unresolved = asyncio.run(expand((aggs, one, ip), resolver, members))
    assert again[aggs] == members[aggs], "a failed lookup keeps the addresses found last"
    assert unresolved == {aggs: "temporary failure in name resolution"}
    assert "cannot resolve aggregator name=aggs.svc" in caplog.text
    assert asyncio.run(expand((aggs,), resolver, {})).members[aggs] == (aggs,)


def test_a_name_with_two_addresses_spreads_sources_and_follows_changes() -> None:
    a, b, c = Receiver(), Receiver(), Receiver()
    answers = {"aggs.test": [("127.0.0.1", a.port), ("127.0.0.1", b.port)]}

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        assert port == 24224
        return answers[host]

    try:

        async def go() -> None:
            client = aggs_client(resolver)
            for src in range(24):
                await client.deliver(*message(1, first=src), affinity=f"source-{src}")
            assert a.messages > 0 and b.messages > 0
            assert {str(e) for e in client.endpoints} == {a.address, b.address}

            # b is replaced by c (a pod rescheduled); the background refresh every 30 s does:
            answers["aggs.test"] = [("127.0.0.1", a.port), ("127.0.0.1", c.port)]
            await client._resolve()
            assert {str(e) for e in client.endpoints} == {a.address, c.address}
            assert b.address not in {str(ep) for ep in client._conns}, "idle connection closed"
            before_b = b.messages
            for src in range(24):
                await client.deliver(*message(1, first=100 + src), affinity=f"source-{src}")
            assert b.messages == before_b
            assert c.messages > 0
            await client.close()

        asyncio.run(go())
        assert a.messages + b.messages + c.messages == 48
    finally:
        for r in (a, b, c):
            r.close()


def test_tls_verifies_the_name_not_the_address(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path, dns_names=("aggs.test",))
    a, b = Receiver(tls=server_context(cert, key)), Receiver(tls=server_context(cert, key))

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        return [("127.0.0.1", a.port), ("127.0.0.1", b.port)]

    try:

        async def go() -> None:
            c = aggs_client(resolver, tls=tls_context(ca))
            for src in range(6):
                await c.deliver(*message(1, first=src), affinity=f"source-{src}")
            await c.close()

        asyncio.run(go())
        assert a.messages + b.messages == 6
    finally:
        a.close()
        b.close()


def test_names_are_resolved_again_in_the_background() -> None:
    a, b, c = Receiver(), Receiver(), Receiver()
    answers = {"aggs.test": [("127.0.0.1", a.port), ("127.0.0.1", b.port)]}
    lookups = 0

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        nonlocal lookups
        lookups += 1
        return answers[host]

    try:

        async def go() -> None:
            client = aggs_client(resolver, dns_refresh=0.05)
            await client.deliver(*message(1))
            assert lookups == 1, "resolved once before the first delivery"
            answers["aggs.test"] = [("127.0.0.1", b.port), ("127.0.0.1", c.port)]
            for i in range(50):
                await asyncio.sleep(0.01)
                await client.deliver(*message(1, first=i + 1), affinity=f"s{i}")
                if {str(e) for e in client.endpoints} == {b.address, c.address}:
                    break
            assert {str(e) for e in client.endpoints} == {b.address, c.address}
            assert lookups >= 2
            await client.close()

        asyncio.run(go())
    finally:
        for r in (a, b, c):
            r.close()


def test_a_failing_resolver_keeps_delivering_to_what_it_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = Receiver()
    calls = 0

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("resolver bug")
        return [("127.0.0.1", a.port), ("127.0.0.1", a.port)]  # listed twice: one endpoint

    try:

        async def go() -> None:
            client = aggs_client(resolver)
            await client.deliver(*message(1))
            with caplog.at_level(logging.ERROR, logger="logq.shipper.sender"):
                await client._resolve()
            assert "resolving aggregator names failed" in caplog.text
            assert [str(e) for e in client.endpoints] == [a.address]
            await client.deliver(*message(1, first=1))
            await client.close()

        asyncio.run(go())
        assert a.messages == 2
    finally:
        a.close()
