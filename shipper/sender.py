"""The Forward client: deliver a batch to one of several aggregators and wait for its ack.

Each batch is written as one PackedForward message with a ``chunk`` option; it counts as
delivered only when the server answers ``{"ack": chunk}``. A missing ack (timeout), a closed
connection or a refused connect make the batch go again -- to the next endpoint (failover), after
an exponential backoff with full jitter. A source's batches go to the healthy endpoint that ranks
first for it by rendezvous hashing (sources spread evenly, and a dead endpoint's sources spread
evenly over the survivors); batches without a source go round-robin. A source's batch that goes
elsewhere than where a restart would send it first (a failover) has its endpoint saved first
(:class:`Placements`): a restart then sends it, if unacknowledged, to the aggregator that may
have stored it, whose offset marks drop it, not to the first choice. One connection per
endpoint, with many batches in flight on it. A name with several addresses is several endpoints,
resolved again every 30 s (:mod:`shipper.resolve`).

With a shared key the Fluentd handshake runs first: the server's ``HELO`` (nonce, auth salt),
our ``PING`` (salted SHA-512 digest), the server's ``PONG`` (its own digest, verified here).
TLS (``--tls``) verifies the server's certificate and host name unless told otherwise.

An endpoint that answers something other than the protocol (bytes that are not msgpack, a
message that is no ack, no HELO, no PONG) is a failed connection like a refused one: closed,
backed off, its batches sent to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack

from shipper import resolve, wire
from shipper.config import Endpoint
from shipper.errors import DeliveryError, HandshakeError, preview

log = logging.getLogger("logq.shipper.sender")

HANDSHAKE_TIMEOUT = 10.0
WRITE_SLICE = 256 * 1024
#: Characters of a server's handshake rejection reason kept in the error (quoted, then cut).
REASON_CHARS = 200


#: Sources whose endpoint ranking is kept (a host has hundreds; past this the cache restarts).
RANK_CACHE = 65_536


def rendezvous_order(affinity: str, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """``endpoints`` by descending hash of (source, endpoint): rendezvous (highest random weight)
    hashing. Every shipper ranks a source the same way, each endpoint comes first for an even
    share of sources, and removing one only moves its own sources -- each to its own next
    choice, so they spread evenly over the rest instead of all landing on one neighbour."""

    def weight(ep: Endpoint) -> bytes:
        return hashlib.blake2b(f"{affinity}\x00{ep.hash_key}".encode(), digest_size=8).digest()

    return tuple(sorted(endpoints, key=weight, reverse=True))


def tls_context(ca: Path | None, verify: bool = True) -> ssl.SSLContext:
    """Client TLS context: system CAs or ``ca``; hostname + chain verification on by default."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Placements(Protocol):
    """Where each source's (file's) batches went last, kept across restarts (the shipper's
    checkpoint registry: :meth:`shipper.checkpoint.Registry.place`).

    Aggregators drop a resent line by the offset marks of its ``source_id``, and each has
    marks only for the lines sent to it. A shipper killed with a batch in flight to a failover
    aggregator (its first choice was down moments before) sent it, after its restart, to the
    first choice again, which stored it a second time."""

    def sent_to(self, affinity: str) -> str:
        """The ``host:port`` (:attr:`Endpoint.hash_key`) the last batch of ``affinity`` went
        to, if not its first choice; '' otherwise."""
        ...

    async def place(self, affinity: str, endpoint: str) -> None:
        """Save (durably: returns once on disk, or once the write failed, as shipping goes on
        without durable checkpoints) that the next batch of ``affinity`` goes to ``endpoint``
        (a ``host:port``), or to its first choice (''); a no-op when that is what is saved."""
        ...


class HandshakeTimeout(TimeoutError):
    """The aggregator accepted the connection but a step of the shared-key handshake did not
    come in time; the message names the step and its likely cause (no HELO: the aggregator has
    no shared key). A timeout like any other, not a :class:`HandshakeError`: the endpoint backs
    off and is tried again, and ``--once`` keeps retrying (other endpoints too) until
    ``--retry-timeout`` -- a busy or restarting aggregator may yet answer."""


class PeerProtocolError(ConnectionError):
    """The aggregator answered bytes that are not the Forward protocol (not msgpack, or not an
    ack map): a wrong port, another service, a broken peer. A connection error like any other:
    the connection is dropped, the endpoint backs off and its batches fail over to the others."""


def _protocol_error(ep: Endpoint, exc: BaseException | None = None, obj: Any = None) -> str:
    if exc is not None:
        cause = exc.__cause__ or exc  # wire.ProtocolError wraps msgpack's own error
        detail = str(cause).strip() or type(cause).__name__
        what = f"bytes that are not msgpack ({detail})"
    else:
        what = f"{preview(obj)} where an ack map was expected"
    return f"aggregator {ep} answered {what}; is this address a logq-aggregator (Forward) port?"


#: OpenSSL's verify codes for a trusted certificate issued to another name
#: (``X509_V_ERR_HOSTNAME_MISMATCH``, ``X509_V_ERR_IP_ADDRESS_MISMATCH``): --tls-ca is right,
#: the address is not, so "check --tls-ca" would send the operator the wrong way.
_NAME_MISMATCH = frozenset({62, 64})


def describe_error(exc: BaseException) -> str:
    """A short human explanation of why a delivery attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; is logq-aggregator running?"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return (
                f"TLS certificate is not for this address ({exc.verify_message}); give "
                "--aggregator a name or IP address the aggregator's certificate lists "
                "(subjectAltName), or reissue the certificate with this one"
            )
        return f"TLS certificate not trusted ({exc.verify_message}); check --tls-ca"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc}); is the aggregator listening with TLS?"
    if type(exc) is ConnectionResetError and not exc.args:
        # Only asyncio's TLS layer raises it bare: the peer closed the connection before the TLS
        # handshake finished, as a plain-text Forward server does on a ClientHello.
        return (
            "connection closed during the TLS handshake; is the aggregator serving TLS "
            "(--tls-cert)?"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _Connection:
    """One TCP (or TLS) connection to an aggregator, with the acks it is waiting for."""

    def __init__(self, endpoint: Endpoint, reader: Any, writer: Any, unpacker: Any) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.unpacker = unpacker
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.closed = False
        self._write_lock = asyncio.Lock()
        self.task = asyncio.get_running_loop().create_task(self._read_acks())

    async def _read_acks(self) -> None:
        error: BaseException = ConnectionError("aggregator closed the connection")
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                problem = self._take_acks(data)
                if problem is not None:
                    error = problem
                    return
        except OSError as exc:
            error = exc
        except asyncio.CancelledError:
            error = ConnectionError("connection closed")
        finally:
            self._fail(error)

    def _take_acks(self, data: bytes) -> BaseException | None:
        """Resolve the acks in ``data``; the error to fail the connection with, if any.

        Acks before a malformed object still count (those batches are stored); everything
        after it is unusable, so the connection ends there."""
        try:
            self.unpacker.feed(data)
            for obj in wire.iter_messages(self.unpacker):
                if isinstance(obj, list) and obj and obj[0] == "HELO":
                    return HandshakeError(
                        f"aggregator {self.endpoint} requires a shared key; "
                        "pass --shared-key (the aggregator's)"
                    )
                chunk = wire.decode_ack(obj)
                if chunk is None:
                    return PeerProtocolError(_protocol_error(self.endpoint, obj=obj))
                fut = self.pending.pop(chunk, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        except (wire.ProtocolError, msgpack.UnpackException) as exc:
            return PeerProtocolError(_protocol_error(self.endpoint, exc))
        return None

    def _fail(self, error: BaseException, reset: bool = False) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()
        with contextlib.suppress(Exception):
            if reset:
                reset_connection(self.writer)
            else:
                self.writer.close()

    async def send(self, payload: bytes, chunk: str) -> asyncio.Future[None]:
        """Write one message; returns the future its ack resolves.

        The message goes out in slices, each drained before the next, so the transport never
        holds a second copy of a large batch; the lock keeps concurrent messages whole.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A batch whose write failed, timed out or was cancelled at shutdown goes again or is
        # re-read; its future's error is expected, so mark it seen (no "never retrieved").
        fut.add_done_callback(_consume)
        self.pending[chunk] = fut
        view = memoryview(payload)
        async with self._write_lock:
            for i in range(0, len(view), WRITE_SLICE):
                self.writer.write(view[i : i + WRITE_SLICE])
                await self.writer.drain()
        return fut

    def close(self, reset: bool = False) -> None:
        """Close the connection; ``reset``: with a reset (see :func:`reset_connection`), as
        the batches sent on it go again, to this aggregator or another one."""
        if not self.task.done():
            self.task.cancel()
        self._fail(ConnectionError("connection closed"), reset)


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a reset (RST: SO_LINGER 0) and drop what it has not sent yet.

    The shipper gives a connection up this way when a batch on it failed (no ack within
    ``--ack-timeout``) or is still unacked at a stop (:meth:`ForwardClient.close`): its batches
    go again, maybe to another aggregator. An aggregator that
    has not read them yet (stopped, paused, swapped out) finds the reset in its socket's TCP
    state when it resumes, whatever the delay, and stores none of them; a FIN it could not tell
    from a client that half-closes and waits for its acks, and it stored them too
    (:func:`aggregator.server._peer_closed`). The aggregator's metrics port drops clients that
    do not read their replies this way too: close() would leave the reply in the kernel's send
    buffer (up to 4 MB) for as long as the client does not read it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


@dataclass(slots=True)
class _Health:
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""


@dataclass
class ClientStats:
    """Counters the metrics module reads."""

    retries: dict[str, int] = field(default_factory=dict)
    delivered: int = 0


class ForwardClient:
    """Delivers batches with acks, retries, backoff and failover over several endpoints."""

    def __init__(
        self,
        endpoints: tuple[Endpoint, ...],
        *,
        hostname: str,
        shared_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        ack_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        give_up_after: float | None = None,
        on_retry: Any = None,
        resolver: resolve.Resolver = resolve.system_resolver,
        dns_refresh: float = resolve.DNS_REFRESH_SECONDS,
        placements: Placements | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one aggregator endpoint is needed")
        self.configured = endpoints
        """The endpoints as given; ``endpoints`` is what they stand for now (names resolved)."""
        self.endpoints = endpoints
        self.hostname = hostname
        self.shared_key = shared_key
        self.username = username
        self.password = password
        self.tls = tls
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.give_up_after = give_up_after
        self.on_retry = on_retry
        self.stats = ClientStats()
        self._conns: dict[Endpoint, _Connection] = {}
        self._connecting: dict[Endpoint, asyncio.Lock] = {}
        self._health = {ep: _Health() for ep in endpoints}
        self._rr = random.randrange(len(endpoints))
        self._last_success = time.monotonic()
        self._ranks: dict[str, tuple[Endpoint, ...]] = {}
        self._resolver = resolver
        self._dns_refresh = dns_refresh
        self._members: dict[Endpoint, tuple[Endpoint, ...]] = {ep: (ep,) for ep in endpoints}
        self._resolved_at: float | None = None if resolve.needs_dns(endpoints) else float("inf")
        self._resolving: asyncio.Task[None] | None = None
        self._first_resolution = asyncio.Lock()
        self._placements = placements
        self._settled: set[str] = set()
        """Sources with a batch acknowledged in this run: a saved placement no longer says
        where their next batch goes (see :meth:`_resumed_at`)."""

    # -- endpoints --------------------------------------------------------------------------

    async def _resolve_when_due(self) -> None:
        """Resolve the names before the first delivery, then again in the background."""
        if self._resolved_at is None:
            async with self._first_resolution:
                if self._resolved_at is None:
                    await self._resolve()
            return
        due = time.monotonic() - self._resolved_at >= self._dns_refresh
        if due and (self._resolving is None or self._resolving.done()):
            self._resolving = asyncio.get_running_loop().create_task(self._resolve())

    async def _resolve(self) -> None:
        try:
            self._members = await resolve.expand(self.configured, self._resolver, self._members)
        except Exception:  # a resolver bug must not stop deliveries: keep the endpoints we have
            log.exception("resolving aggregator names failed; keeping the current endpoints")
            return
        finally:
            self._resolved_at = time.monotonic()
        endpoints = resolve.flatten(self._members)
        if endpoints != self.endpoints:
            self._use(endpoints)

    def _use(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Send to ``endpoints`` from now on; connections to dropped ones close once idle."""
        log.info("aggregator endpoints=%s", ",".join(map(str, endpoints)))
        self.endpoints = endpoints
        for ep in endpoints:
            self._health.setdefault(ep, _Health())
        self._ranks.clear()
        self._rr %= len(endpoints)
        for ep, conn in list(self._conns.items()):
            if ep not in endpoints and not conn.pending:
                del self._conns[ep]
                conn.close()
        self._health = {
            ep: h for ep, h in self._health.items() if ep in endpoints or ep in self._conns
        }

    def _pick(self, affinity: str | None) -> tuple[Endpoint, float]:
        """The endpoint for a batch, or the one back soonest and how long to wait for it.

        With an ``affinity`` (the source id) a source sticks to one aggregator while it is
        healthy: a resent batch then reaches the aggregator that can drop it as a duplicate,
        and sources still spread over all aggregators. Without one: round-robin.
        """
        now = time.monotonic()
        if affinity is not None:
            order = self._rank(affinity)
            resumed = self._resumed_at(affinity)
            if resumed is not None:
                order = (resumed, *(ep for ep in order if ep != resumed))
        else:
            n = len(self.endpoints)
            start = self._rr
            self._rr = (self._rr + 1) % n
            order = tuple(self.endpoints[(start + i) % n] for i in range(n))
        for ep in order:
            if self._health[ep].down_until <= now:
                return ep, 0.0
        ep = min(self.endpoints, key=lambda e: self._health[e].down_until)
        return ep, self._health[ep].down_until - now

    def _rank(self, affinity: str) -> tuple[Endpoint, ...]:
        """The endpoints in a source's order of preference (cached: sources are long-lived)."""
        order = self._ranks.get(affinity)
        if order is None:
            if len(self._ranks) >= RANK_CACHE:
                self._ranks.clear()
            order = rendezvous_order(affinity, self.endpoints)
            self._ranks[affinity] = order
        return order

    def _resumed_at(self, affinity: str) -> Endpoint | None:
        """The endpoint to try first for ``affinity``'s first batch in this run: the one its
        last batch went to before a restart, when that was not its first choice (see
        :class:`Placements`). The batch read again is the one that was in flight there; that
        aggregator drops what it stored of it. Once a batch is acknowledged, the source is
        ranked as always (and a down endpoint is passed over as always)."""
        if self._placements is None or affinity in self._settled:
            return None
        where = self._placements.sent_to(affinity)
        if not where:
            return None
        for ep in self.endpoints:
            if ep.hash_key == where:
                return ep
        self._settle(affinity)  # said once
        log.warning(
            "the aggregator a file's last batch went to before the restart is not among the "
            "aggregator endpoints now (removed from --aggregator, or no longer an address its "
            "name resolves to); its unacknowledged lines go to the file's first choice, which "
            "stores them a second time if that aggregator had stored them endpoint=%s "
            "source_id=%s",
            where,
            affinity,
        )
        return None

    def _settle(self, affinity: str) -> None:
        if len(self._settled) >= RANK_CACHE:
            self._settled.clear()
        self._settled.add(affinity)

    async def _place(self, affinity: str | None, ep: Endpoint) -> None:
        """Before a batch of ``affinity`` goes to ``ep``: save where a restart must send it
        first, if not where it would anyway (see :class:`Placements`)."""
        if self._placements is None or affinity is None:
            return
        first = self._rank(affinity)[0]
        await self._placements.place(affinity, "" if ep == first else ep.hash_key)

    def forget(self, affinity: str) -> None:
        """``affinity`` (a file's source id) is done: its file was read to its end and
        acknowledged. Its ranking goes, or the cache would keep one per file the host ever
        had (up to :data:`RANK_CACHE`). Only a cache: a later batch of it is ranked the same."""
        self._ranks.pop(affinity, None)
        self._settled.discard(affinity)

    def _mark_down(self, ep: Endpoint, exc: BaseException) -> None:
        h = self._health.setdefault(ep, _Health())
        h.failures += 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(h.failures - 1, 16))
        h.down_until = time.monotonic() + random.uniform(delay / 2, delay)
        h.last_error = describe_error(exc)
        conn = self._conns.pop(ep, None)
        if conn is not None:
            conn.close(reset=True)  # its batches go again: the aggregator must not store them

    async def _connection(self, ep: Endpoint) -> _Connection:
        conn = self._conns.get(ep)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(ep, asyncio.Lock())
        async with lock:
            conn = self._conns.get(ep)
            if conn is not None and not conn.closed:
                return conn
            conn = await self._connect(ep)
            self._conns[ep] = conn
            return conn

    async def _connect(self, ep: Endpoint) -> _Connection:
        # asyncio.timeout() runs in this task; wait_for() would wrap the coroutine in a task of
        # its own whose error goes unretrieved ("Task exception was never retrieved") when this
        # task is cancelled at the moment it fails.
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    ep.host,
                    ep.port,
                    ssl=self.tls,
                    server_hostname=(ep.server_name or ep.host) if self.tls else None,
                    limit=1 << 20,
                )
        except TimeoutError:
            raise TimeoutError(f"connect timed out after {self.connect_timeout:g} s") from None
        unpacker = wire.new_unpacker(max_buffer_size=1 << 20)
        if self.shared_key is not None:
            try:
                await self._handshake(ep, reader, writer, unpacker)
            except BaseException:
                writer.close()
                raise
        log.info("connected to aggregator endpoint=%s tls=%s", ep, self.tls is not None)
        return _Connection(ep, reader, writer, unpacker)

    async def _handshake(self, ep: Endpoint, reader: Any, writer: Any, unpacker: Any) -> None:
        """HELO, PING, PONG within one deadline of ``HANDSHAKE_TIMEOUT`` seconds.

        The deadline is checked by each step itself (no timeout around the whole): a timeout
        around it fired first and said only "timed out", never which step was missing."""
        deadline = asyncio.get_running_loop().time() + HANDSHAKE_TIMEOUT
        try:
            helo = await _read_one(ep, reader, unpacker, deadline)
        except TimeoutError:
            # A server without a key sends nothing and waits for Forward messages.
            raise HandshakeTimeout(
                f"aggregator {ep} sent no HELO within {HANDSHAKE_TIMEOUT:g} s: it does not "
                "expect --shared-key; drop it here, or give the aggregator the same --shared-key"
            ) from None
        if not (isinstance(helo, list) and len(helo) >= 2 and helo[0] == "HELO"):
            # Not a Forward server (or a broken one): a connection error, not a key problem.
            raise PeerProtocolError(
                f"aggregator {ep} answered {preview(helo)} instead of HELO; "
                "is this address a logq-aggregator (Forward) port?"
            )
        opts = helo[1] if isinstance(helo[1], dict) else {}
        nonce = _as_bytes(opts.get("nonce", b""))
        auth = _as_bytes(opts.get("auth", b""))
        if auth and not self.username:
            raise HandshakeError(
                f"aggregator {ep} requires user authentication; pass --username and --password"
            )
        salt = os.urandom(16)
        writer.write(
            wire.encode_ping(
                self.hostname,
                salt,
                nonce,
                self.shared_key or "",
                username=self.username or "",
                password=self.password or "",
                auth_salt=auth,
            )
        )
        try:
            async with asyncio.timeout_at(deadline):
                await writer.drain()
            pong = await _read_one(ep, reader, unpacker, deadline)
        except TimeoutError:
            raise HandshakeTimeout(
                f"aggregator {ep} sent HELO but no PONG within {HANDSHAKE_TIMEOUT:g} s; "
                "is it overloaded?"
            ) from None
        if not (isinstance(pong, list) and len(pong) >= 5 and pong[0] == "PONG"):
            raise PeerProtocolError(
                f"aggregator {ep} answered {preview(pong)} instead of PONG; "
                "is this address a logq-aggregator (Forward) port?"
            )
        _, ok, reason, server_host, digest = pong[:5]
        if not ok:
            # The server's words, quoted and cut (:func:`preview`): a hostile one could put
            # newlines or terminal escapes in them, or megabytes, to forge lines in our log.
            raise HandshakeError(
                f"aggregator {ep} rejected the handshake: {preview(reason, REASON_CHARS)}; "
                "check --shared-key" + (" and --username/--password" if auth else "")
            )
        expected = wire.pong_digest(salt, str(server_host), nonce, self.shared_key or "")
        if digest != expected:
            raise HandshakeError(
                f"aggregator {ep} does not know our shared key (PONG digest mismatch); "
                "check --shared-key on both sides"
            )

    # -- delivery ---------------------------------------------------------------------------

    async def deliver(self, payload: bytes, chunk: str, affinity: str | None = None) -> Endpoint:
        """Send until acknowledged; raises :class:`DeliveryError` only when giving up."""
        attempt = 0
        while True:
            await self._resolve_when_due()
            ep, wait = self._pick(affinity)
            if wait > 0:
                self._check_give_up()
                await asyncio.sleep(min(wait, 1.0))
                continue
            try:
                conn = await self._connection(ep)
                await self._place(affinity, ep)
                if conn.closed:
                    # Closed while the placement was being saved (the aggregator ended it, or
                    # another batch's failure did): nothing was sent on it, so not a failure
                    # of ``ep``. Sent on, it failed as one: ``ep`` marked down, and a new
                    # connection another source had opened to it meanwhile was reset.
                    continue
                fut = await conn.send(payload, chunk)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), self.ack_timeout)
                except TimeoutError:
                    conn.pending.pop(chunk, None)
                    raise TimeoutError(f"no ack within {self.ack_timeout:g} s") from None
            except HandshakeError as exc:
                self._mark_down(ep, exc)
                self._health[ep].down_until = time.monotonic() + self.backoff_cap
                if self.give_up_after is not None:
                    raise
                log.error("handshake failed endpoint=%s error=%s", ep, exc)
            except (
                OSError,
                TimeoutError,
                ConnectionError,
                ssl.SSLError,
                wire.ProtocolError,
            ) as exc:
                self._mark_down(ep, exc)
                attempt += 1
                self.stats.retries[str(ep)] = self.stats.retries.get(str(ep), 0) + 1
                if self.on_retry is not None:
                    self.on_retry(str(ep))
                log.warning(
                    "delivery failed, will retry endpoint=%s attempt=%d error=%r",
                    ep,
                    attempt,
                    describe_error(exc),
                )
                self._check_give_up()
            else:
                h = self._health.setdefault(ep, _Health())
                h.failures = 0
                h.down_until = 0.0
                self._last_success = time.monotonic()
                self.stats.delivered += 1
                if affinity is not None:
                    self._settle(affinity)
                return ep

    def _check_give_up(self) -> None:
        if self.give_up_after is None:
            return
        if time.monotonic() - self._last_success < self.give_up_after:
            return
        if len(self.endpoints) == 1:
            reasons = self._health[self.endpoints[0]].last_error
        else:
            reasons = "; ".join(
                f"{ep}: {h.last_error}" for ep, h in self._health.items() if h.last_error
            )
        names = ", ".join(str(ep) for ep in self.endpoints)
        raise DeliveryError(
            f"cannot reach aggregator {names} after {self.give_up_after:g} s: "
            f"{reasons or 'no endpoint answered'}"
        )

    async def close(self) -> None:
        if self._resolving is not None and not self._resolving.done():
            self._resolving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolving
        for conn in list(self._conns.values()):
            # Batches still unacked are given up as at an ack timeout: read and sent again at
            # the next start, maybe to another aggregator, so reset as _mark_down does.
            conn.close(reset=bool(conn.pending))
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
        self._conns.clear()


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b""


async def _read_one(ep: Endpoint, reader: Any, unpacker: Any, deadline: float) -> Any:
    """The next msgpack object from the aggregator; ``TimeoutError`` past ``deadline``
    (event-loop time)."""
    while True:
        try:
            for obj in wire.iter_messages(unpacker):
                return obj
        except wire.ProtocolError as exc:
            raise PeerProtocolError(_protocol_error(ep, exc)) from None
        async with asyncio.timeout_at(deadline):
            data = await reader.read(65536)
        if not data:
            raise ConnectionError(
                "aggregator closed the connection during the handshake (retried; a "
                "logq-aggregator does so while it rate-limits the key checks of this address "
                "after failed handshakes of another client here: see its WARNINGs)"
            )
        try:
            unpacker.feed(data)
        except msgpack.UnpackException as exc:  # BufferFull: no message fits in 1 MiB
            raise PeerProtocolError(_protocol_error(ep, exc)) from None
