"""The Forward client against an in-test receiver: acks, resend, failover, key, TLS, gzip."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
from pathlib import Path

import pytest

from shipper import wire
from shipper.batch import encode_message, pack_entries
from shipper.config import Endpoint, parse_endpoint
from shipper.errors import DeliveryError, HandshakeError
from shipper.lines import Lines
from shipper.sender import ForwardClient, _Connection, rendezvous_order, tls_context
from shipper.tls_reload import RELOAD_CHECK_SECONDS, ReloadingTls
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.tlsgen import make_ca_and_server, make_client_cert, server_context


def message(n: int, compress: bool = False, first: int = 0) -> tuple[bytes, str]:
    lines = Lines()
    for i in range(first, first + n):
        lines.add(i + 1, "2026-11-28T12:00:00Z", 1_795_867_200 * 10**9 + i, "stdout", f"l{i}")
    chunk = wire.new_chunk_id()
    body = pack_entries(lines, {"service": "s", "source_id": "src"})
    return encode_message("logq.s", body, n, chunk, compress), chunk


def client(*addrs: str, **kw) -> ForwardClient:
    kw.setdefault("hostname", "test-host")
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.1)
    return ForwardClient(tuple(parse_endpoint(a) for a in addrs), **kw)


def test_ack_and_gzip(receiver: Receiver) -> None:
    async def go() -> None:
        c = client(receiver.address)
        for compress in (False, True):
            payload, chunk = message(100, compress, first=0 if not compress else 100)
            await c.deliver(payload, chunk)
        await c.close()

    asyncio.run(go())
    assert [r["log"] for _, _, r in receiver.records] == [f"l{i}" for i in range(200)]
    assert receiver.options[1]["compressed"] == "gzip"


def test_resend_when_connection_drops_before_ack(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry's WARNING gives the message's size: an aggregator that closed the connection
    on a message over its --max-frame-bytes gets the same message again, forever, and the
    shipper's operator sees only a closed connection."""
    r = Receiver(drop_first=2)
    size = len(message(10)[0])
    try:

        async def go() -> None:
            c = client(r.address)
            payload, chunk = message(10)
            await c.deliver(payload, chunk)
            assert sum(c.stats.retries.values()) == 2
            await c.close()

        caplog.set_level(logging.WARNING, logger="logq.shipper.sender")
        asyncio.run(go())
        assert len(r.records) == 10 and r.messages == 3
        retries = [m.getMessage() for m in caplog.records if "will retry" in m.getMessage()]
        assert len(retries) == 2
        assert all(f" attempt={n} bytes={size} error=" in m for n, m in enumerate(retries, 1))
    finally:
        r.close()


def test_failover_to_second_endpoint(receiver: Receiver) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def go() -> None:
        c = client(dead, receiver.address)
        for i in range(6):
            payload, chunk = message(5, first=i * 5)
            await c.deliver(payload, chunk)
        await c.close()

    asyncio.run(go())
    assert len(receiver.records) == 30


def test_ack_timeout_then_resend(receiver: Receiver) -> None:
    receiver.ack = False

    async def go() -> None:
        c = client(receiver.address, ack_timeout=0.3, give_up_after=1.0)
        payload, chunk = message(1)
        with pytest.raises(DeliveryError, match=r"no ack within 0\.3 s"):
            await c.deliver(payload, chunk)
        await c.close()

    asyncio.run(go())
    assert receiver.messages >= 2  # it was sent again after the timeout


def test_give_up_names_the_endpoint() -> None:
    port = free_port()

    async def go() -> None:
        c = client(f"127.0.0.1:{port}", give_up_after=0.3)
        with pytest.raises(DeliveryError) as err:
            await c.deliver(*message(1))
        assert str(err.value).startswith(f"cannot reach aggregator 127.0.0.1:{port}")
        assert "connection refused; is logq-aggregator running?" in str(err.value)

    asyncio.run(go())


def test_shared_key_handshake_ok_and_wrong_key() -> None:
    r = Receiver(shared_key="s3cret")
    try:

        async def good() -> None:
            c = client(r.address, shared_key="s3cret")
            await c.deliver(*message(3))
            await c.close()

        asyncio.run(good())
        assert len(r.records) == 3

        async def bad() -> None:
            c = client(r.address, shared_key="wrong", give_up_after=5.0)
            with pytest.raises(HandshakeError, match=r"rejected the handshake.*check --shared-key"):
                await c.deliver(*message(1))
            await c.close()

        asyncio.run(bad())

        async def missing() -> None:
            c = client(r.address, give_up_after=5.0)
            with pytest.raises(HandshakeError, match="requires a shared key"):
                await c.deliver(*message(1))
            await c.close()

        asyncio.run(missing())
        assert len(r.records) == 3 and r.handshake_failures == 1
    finally:
        r.close()


def test_a_rogue_servers_rejection_reason_is_quoted_and_cut() -> None:
    """The PONG's reason went into the error (and the shipper's log) as given: a hostile server
    could forge log lines with newlines, hide them with terminal escapes, or send megabytes."""
    forged = 'no\nts=2026-12-01T00:00:00.000Z level=info msg="all good"\r\x1b[2K' + "x" * 100_000
    r = Receiver(shared_key="s3cret", reject_reason=forged)
    try:

        async def bad() -> str:
            c = client(r.address, shared_key="wrong", give_up_after=5.0)
            with pytest.raises(HandshakeError) as err:
                await c.deliver(*message(1))
            await c.close()
            return str(err.value)

        text = asyncio.run(bad())
    finally:
        r.close()
    assert "rejected the handshake: 'no\\nts=2026" in text, text[:300]
    assert not any(ch in text for ch in "\n\r\x1b"), text[:300]
    assert len(text) < 400 and text.endswith("...; check --shared-key"), text[:300]


def test_tls_with_self_signed_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    r = Receiver(tls=server_context(cert, key))
    try:

        async def good() -> None:
            c = client(r.address, tls=tls_context(ca))
            await c.deliver(*message(4))
            await c.close()

        asyncio.run(good())
        assert len(r.records) == 4

        async def untrusted() -> None:
            c = client(r.address, tls=tls_context(None), give_up_after=0.3)
            with pytest.raises(DeliveryError, match=r"certificate not trusted.*--tls-ca"):
                await c.deliver(*message(1))
            await c.close()

        asyncio.run(untrusted())
        assert len(r.records) == 4
    finally:
        r.close()


def test_a_certificate_for_another_name_says_so_not_check_the_ca(tmp_path: Path) -> None:
    """The chain is trusted (--tls-ca is right) but the certificate names another host: the
    error named --tls-ca, the one setting that was not wrong."""
    ca, cert, key = make_ca_and_server(tmp_path, dns_names=("aggregator.example",))
    r = Receiver(tls=server_context(cert, key))
    try:

        async def other_name() -> None:
            c = client(r.address, tls=tls_context(ca), give_up_after=0.3)
            with pytest.raises(DeliveryError, match="not for this address") as err:
                await c.deliver(*message(1))
            assert "--tls-ca" not in str(err.value) and "subjectAltName" in str(err.value)
            await c.close()

        asyncio.run(other_name())
        assert len(r.records) == 0
    finally:
        r.close()


def test_endpoint_str() -> None:
    assert str(Endpoint("h", 1)) == "h:1"


def test_sources_stick_to_one_aggregator_and_spread() -> None:
    a, b = Receiver(), Receiver()
    try:

        async def go() -> None:
            c = client(a.address, b.address)
            for src in range(64):
                used = await c.deliver(*message(1), affinity=f"source-{src}")
                for _ in range(2):
                    assert used == (await c.deliver(*message(1), affinity=f"source-{src}"))
            await c.close()

        asyncio.run(go())
        # 64 sources spread over both (the ports are random: with 8 sources, all of them
        # ranked one aggregator first in 1 run of 128).
        assert a.messages > 0 and b.messages > 0
        assert a.messages + b.messages == 3 * 64
    finally:
        a.close()
        b.close()


def test_a_dead_aggregators_sources_spread_over_every_survivor() -> None:
    """Rendezvous hashing: an even share each; when one is down only its sources move, and
    they split over the survivors instead of all landing on its neighbour in the list."""
    eps = tuple(Endpoint(f"agg-{i}", 24224) for i in range(4))
    c = ForwardClient(eps, hostname="h")
    sources = [f"host-7:{inode}:fp{inode * 31}" for inode in range(4000)]
    before = {s: c._pick(s)[0] for s in sources}
    shares = {ep: sum(1 for e in before.values() if e == ep) for ep in eps}
    assert all(800 <= n <= 1200 for n in shares.values()), shares  # 1,000 expected each
    assert before == {s: rendezvous_order(s, eps)[0] for s in sources}
    assert rendezvous_order("x", eps) == rendezvous_order("x", tuple(reversed(eps)))

    c._mark_down(eps[1], ConnectionRefusedError("down"))
    after = {s: c._pick(s)[0] for s in sources}
    moved = [s for s in sources if after[s] != before[s]]
    assert set(moved) == {s for s in sources if before[s] == eps[1]}, "only its sources move"
    landed = {ep: sum(1 for s in moved if after[s] == ep) for ep in eps}
    assert landed[eps[1]] == 0
    assert all(landed[ep] >= len(moved) / 6 for ep in (eps[0], eps[2], eps[3])), landed


class _NeverAcks:
    """An aggregator that reads every byte and acks nothing: :attr:`ended` is how the first
    connection ended (``b""``: the client's FIN; a ConnectionResetError: its reset),
    :attr:`arrived` is set once it has read data."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[BaseException | bytes] = (
            asyncio.get_running_loop().create_future()
        )
        self.arrived = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcome: BaseException | bytes = b""  # end of file: the client sent a FIN
        try:
            while await reader.read(65536):
                self.arrived.set()  # read on, ack nothing
        except ConnectionResetError as exc:
            outcome = exc
        finally:
            writer.close()
        if not self.ended.done():  # the first connection's end (the client reconnects)
            self.ended.set_result(outcome)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_a_connection_given_up_after_the_ack_timeout_is_reset_not_closed() -> None:
    """A batch without an ack within ``ack_timeout`` goes again (maybe to another aggregator),
    so the connection it was on ends with a reset (RST), not a FIN: an aggregator that has not
    read the batch yet (stopped, paused) tells the reset apart from a client that half-closes
    and waits for its acks whatever the delay, and does not store the batch a second time
    (x2s24: ``--ack-timeout 1`` and an aggregator stopped for 1-5 s stored lines twice).
    ``tests/aggregator/test_given_up_messages.py`` has the two aggregators of that run."""

    async def go() -> BaseException | bytes:
        aggregator = _NeverAcks()
        c = client(await aggregator.start(), ack_timeout=0.2, give_up_after=30)
        payload, chunk = message(10)
        delivery = asyncio.create_task(c.deliver(payload, chunk))
        try:
            return await asyncio.wait_for(aggregator.ended, 30)
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError, DeliveryError):
                await delivery
            await c.close()
            await aggregator.close()

    assert isinstance(asyncio.run(go()), ConnectionResetError)


def test_a_stop_with_batches_unacked_resets_their_connection_and_closes_idle_ones() -> None:
    """A stop (``ForwardClient.close``) gives up on the batches still waiting for their acks as
    an ack timeout does: the next start reads and sends them again, maybe to another
    aggregator. So their connection ends with a reset too, which an aggregator that has not
    read them yet tells apart from a half-close at any delay (a FIN within 2 s of the data, a
    second SIGTERM just after a send, had them stored and acked into the void). A connection
    with nothing pending still ends with a FIN: there is nothing to give up."""

    async def go(pending: bool) -> BaseException | bytes:
        aggregator = _NeverAcks()
        c = client(await aggregator.start(), ack_timeout=60, give_up_after=60)
        payload, chunk = message(10)
        delivery = asyncio.create_task(c.deliver(payload, chunk))
        try:
            await asyncio.wait_for(aggregator.arrived.wait(), 30)
            if not pending:  # the ack-less batch given up on its own: only an idle connection
                delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivery
                for conn in c._conns.values():
                    conn.pending.clear()
            await c.close()
            return await asyncio.wait_for(aggregator.ended, 30)
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError, DeliveryError, ConnectionError):
                await delivery
            await aggregator.close()

    assert isinstance(asyncio.run(go(pending=True)), ConnectionResetError)
    assert asyncio.run(go(pending=False)) == b""


def test_a_batch_sent_on_a_tls_connection_closed_meanwhile_fails_as_a_connection_error(
    tmp_path: Path,
) -> None:
    """asyncio's TLS transport, closed twice (the aggregator's end, then ours), raises
    AttributeError on a write: a batch sent on it then ended ``--once`` as an internal error
    instead of a retry. Seen with an aggregator refusing the shipper's client certificate."""
    ca, cert, key = make_ca_and_server(tmp_path)

    async def scenario() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context(cert, key))
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_context(ca), server_hostname="127.0.0.1"
            )
            conn = _Connection(Endpoint("127.0.0.1", port), reader, writer, wire.new_unpacker())
            writer.close()
            writer.close()  # as both ends' closing did: the transport forgets its TLS protocol
            with pytest.raises(ConnectionError, match="connection closed"):
                await conn.send(b"message", "chunk-1")
            conn.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_tls_connections_closed_without_a_client_certificate_say_once_what_to_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An aggregator with ``--tls-client-ca`` refuses a shipper without a certificate in the
    TLS handshake, which the shipper sees only as its connections closing: after a few such
    retries it says once what to pass; with the certificate it delivers."""
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, client_cert, client_key = make_client_cert(tmp_path)
    server = server_context(cert, key, client_ca)
    r = Receiver(tls=server)
    try:

        async def without() -> None:
            c = client(r.address, tls=tls_context(ca), give_up_after=1.5)
            with pytest.raises(DeliveryError):
                await c.deliver(*message(1))
            await c.close()

        with caplog.at_level(logging.WARNING, logger="logq.shipper.sender"):
            asyncio.run(without())
        hints = [m for m in caplog.messages if "pass --tls-cert and --tls-key" in m]
        assert len(hints) == 1, caplog.messages[-5:]
        assert "keep closing" in hints[0]
        assert r.records == []

        async def with_cert() -> None:
            ctx = tls_context(ca)
            ctx.load_cert_chain(client_cert, client_key)
            c = client(r.address, tls=ctx, client_cert=True)
            await c.deliver(*message(3))
            await c.close()

        asyncio.run(with_cert())
        assert len(r.records) == 3
    finally:
        r.close()


def test_a_client_certificate_rotated_in_place_is_used_without_a_restart(tmp_path: Path) -> None:
    """``--tls-cert``/``--tls-key`` rewritten in place (cert-manager): new connections present
    the new pair once the files are looked at again, and no earlier."""
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, good_cert, good_key = make_client_cert(tmp_path)
    _, old_cert, old_key = make_client_cert(tmp_path, "expired")
    server = server_context(cert, key, client_ca)
    cert_file, key_file = tmp_path / "client-now.pem", tmp_path / "client-now.key"
    shutil.copy(old_cert, cert_file)
    shutil.copy(old_key, key_file)
    now = [0.0]

    def build() -> ssl.SSLContext:
        ctx = tls_context(ca)
        ctx.load_cert_chain(cert_file, key_file)
        return ctx

    files = ReloadingTls(
        (ca, cert_file, key_file), build, (ssl.SSLError,), logging.getLogger("t"), lambda: now[0]
    )
    r = Receiver(tls=server)
    try:

        async def refused() -> None:
            c = client(r.address, tls_files=files, client_cert=True, give_up_after=0.5)
            with pytest.raises(DeliveryError):
                await c.deliver(*message(1))
            await c.close()

        asyncio.run(refused())  # the old pair, which the aggregator does not take
        shutil.copy(good_cert, cert_file)
        shutil.copy(good_key, key_file)
        asyncio.run(refused())  # rotated, but not looked at before RELOAD_CHECK_SECONDS
        now[0] += RELOAD_CHECK_SECONDS

        async def delivered() -> None:
            c = client(r.address, tls_files=files, client_cert=True, give_up_after=15)
            await c.deliver(*message(2))
            await c.close()

        asyncio.run(delivered())
        assert len(r.records) == 2
    finally:
        r.close()
