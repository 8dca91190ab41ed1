"""The Forward client: deliver a batch to one of several aggregators and wait for its ack.

Each batch is written as one PackedForward message with a ``chunk`` option; it counts as
delivered only when the server answers ``{"ack": chunk}``. A missing ack (timeout), a closed
connection or a refused connect make the batch go again -- to the next endpoint (failover), after
an exponential backoff with full jitter. A source's batches go to the healthy endpoint that ranks
first for it by rendezvous hashing (sources spread evenly, and a dead endpoint's sources spread
evenly over the survivors); batches without a source go round-robin. A source's batch that goes
elsewhere than where a restart would send it first (a failover) has its endpoint saved first,
with how far its lines reach (:class:`Placements`): a restart then sends those lines, if
unacknowledged, to the aggregator that may have stored them, whose offset marks drop them, not
to the first choice -- waiting for the aggregator names to resolve when that aggregator is not
among the endpoints at a start without DNS (:data:`PLACEMENT_DNS_WAIT_SECONDS`). One connection
per endpoint, with many batches in flight on it. A name with several addresses is several
endpoints, resolved again every 30 s (:mod:`shipper.resolve`).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack

from shipper import resolve, wire
from shipper.config import Endpoint
from shipper.errors import (
    CLIENT_CERT_HINT,
    DeliveryError,
    HandshakeError,
    closed_by_peer,
    preview,
)
from shipper.tls_reload import ReloadingTls

log = logging.getLogger("logq.shipper.sender")

HANDSHAKE_TIMEOUT = 10.0
#: Failed deliveries of a batch, its connections closed each time, before a shipper with TLS
#: and no client certificate says once that the aggregator may require one.
CLIENT_CERT_HINT_AFTER = 3
WRITE_SLICE = 256 * 1024
#: Characters of a server's handshake rejection reason kept in the error (quoted, then cut).
REASON_CHARS = 200


#: Sources whose endpoint ranking is kept (a host has hundreds; past this the cache restarts).
RANK_CACHE = 65_536

PLACEMENT_DNS_WAIT_SECONDS = 60.0
"""How long a file's batch read again waits, at most, for the aggregator names to resolve when
the aggregator its lines went to before the restart is not among the endpoints (a name that
did not resolve at the start: DNS down, a headless Service without ready pods yet). That
address may be one of the name's, whose offset marks drop those lines; sent to the first
choice, they would be stored twice. Past it, the file goes to its first choice, with a
WARNING. Only that file waits: the others are sent as usual, the window left to them (the
waiting batch steps out of it and its file reads no further: :class:`shipper.source.Window`)."""
PLACEMENT_DNS_POLL_SECONDS = 2.0
"""How often the names are resolved again while a batch waits for them (see
:data:`PLACEMENT_DNS_WAIT_SECONDS`), instead of every 30 s."""


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
    """Where each source's (file's) batches went last, and how far their lines reach, kept
    across restarts (the shipper's checkpoint registry: :meth:`shipper.checkpoint.Registry.place`).

    Aggregators drop a resent line by the offset marks of its ``source_id``, and each has
    marks only for the lines sent to it. A shipper killed with a batch in flight to a failover
    aggregator (its first choice was down moments before) sent it, after its restart, to the
    first choice again, which stored it a second time. Only the first batch read again went
    there while the reach was not kept: the same lines read again in more batches (a lower
    ``--batch-lines``) sent the others to the first choice."""

    def sent_to(self, affinity: str) -> str:
        """The ``host:port`` (:attr:`Endpoint.hash_key`) the last batch of ``affinity`` went
        to, if not its first choice and not acknowledged everywhere yet; '' otherwise."""
        ...

    def sent_through(self, affinity: str) -> int | None:
        """The highest record offset of the lines of ``affinity`` sent to :meth:`sent_to`;
        None when unknown (saved by a shipper that kept no reach): then only the first batch
        read again goes there, as before."""
        ...

    async def place(self, affinity: str, endpoint: str, through: int | None = None) -> None:
        """Save (durably: returns once on disk, or once the write failed, as shipping goes on
        without durable checkpoints) that the next batch of ``affinity``, whose lines reach
        record offset ``through`` (None: unknown), goes to ``endpoint`` (a ``host:port``), or
        to its first choice (''); a no-op when what is saved says that already (the same
        endpoint, reaching as far)."""
        ...


class HeldAtStop(Exception):
    """The shipper stops (:meth:`ForwardClient.stop_holding`) while this batch waits for the
    aggregator names (see :data:`PLACEMENT_DNS_WAIT_SECONDS`): sent nowhere, it is read again
    at the next start, its placement still saved."""


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
                "--aggregator (or --tls-server-name) a name or IP address the aggregator's "
                "certificate lists (subjectAltName), or reissue the certificate with this one"
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
    if isinstance(exc, socket.gaierror):
        return (
            f"could not resolve the name ({resolve.why_unresolved(exc)}); check DNS or --aggregator"
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
                if self.closed or self.writer.is_closing():
                    # Closed meanwhile (the aggregator ended it, or another batch's failure
                    # did). Not written on: asyncio's TLS transport, closed twice (its end and
                    # ours), raised AttributeError on a write, which ended --once as an
                    # "internal error" instead of a retry.
                    raise ConnectionError("connection closed")
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
    unresolved: str = ""
    """Why its name did not resolve at the last connect ('' if it failed otherwise): when
    every endpoint fails so, ``--once`` gives up naming DNS (see
    :meth:`ForwardClient._check_give_up`)."""


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
        tls_files: ReloadingTls | None = None,
        client_cert: bool = False,
        server_name: str | None = None,
        ack_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        give_up_after: float | None = None,
        on_retry: Any = None,
        resolver: resolve.Resolver = resolve.system_resolver,
        dns_refresh: float = resolve.DNS_REFRESH_SECONDS,
        placements: Placements | None = None,
        placement_wait: float = PLACEMENT_DNS_WAIT_SECONDS,
        placement_poll: float = PLACEMENT_DNS_POLL_SECONDS,
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
        self.tls = tls_files.context if tls_files is not None else tls
        self.tls_files = tls_files
        """Where a new connection's TLS context comes from, built again when its files change
        (a client certificate or CA rotated in place; None: ``tls`` for good)."""
        self.client_cert = client_cert
        """Whether ``tls`` presents a client certificate (``--tls-cert``)."""
        self.server_name = server_name
        """The name every aggregator's certificate is verified against (``--tls-server-name``;
        None: the name or address each endpoint was given by)."""
        self._cert_hint_given = False
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
        """Sources with a batch acknowledged in this run past the lines a saved placement
        reaches: it no longer says where their next batch goes (see :meth:`_resumed_at`)."""
        self.placement_wait = placement_wait
        self.placement_poll = placement_poll
        self._unresolved: dict[Endpoint, str] = {
            ep: "not resolved yet" for ep in endpoints if not resolve.is_address(ep.host)
        }
        """The configured names that have not resolved at the last try (all of them before
        the first), each with why: a placement not among the endpoints may be one of their
        addresses."""
        self._holds: dict[str, float] = {}
        """Source -> since when (monotonic) its batch waits for the names (see :meth:`_held`)."""
        self._held_any = False
        """A batch has waited for the names in this run: ``--once`` gives up no sooner than
        such a wait ends (see :meth:`_give_up_after`)."""
        self._stop_holding = asyncio.Event()
        """Set at a stop: batches waiting for the names give up (:class:`HeldAtStop`)."""

    # -- endpoints --------------------------------------------------------------------------

    async def _resolve_when_due(self) -> None:
        """Resolve the names before the first delivery, then again in the background."""
        if self._resolved_at is None:
            async with self._first_resolution:
                if self._resolved_at is None:
                    await self._resolve()
            return
        # A batch waiting for the names (see _held) has them resolved again soon.
        every = self.placement_poll if self._holds and self._unresolved else self._dns_refresh
        due = time.monotonic() - self._resolved_at >= every
        if due and (self._resolving is None or self._resolving.done()):
            self._resolving = asyncio.get_running_loop().create_task(self._resolve())

    async def _resolve(self) -> None:
        try:
            self._members, self._unresolved = await resolve.expand(
                self.configured, self._resolver, self._members
            )
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

    def _pick(self, affinity: str | None, first: int | None = None) -> tuple[Endpoint, float]:
        """The endpoint for a batch (its lines from record offset ``first``, None: unknown),
        or the one back soonest and how long to wait for it.

        With an ``affinity`` (the source id) a source sticks to one aggregator while it is
        healthy: a resent batch then reaches the aggregator that can drop it as a duplicate,
        and sources still spread over all aggregators. Without one: round-robin.
        """
        now = time.monotonic()
        if affinity is not None:
            order = self._rank(affinity)
            resumed = self._resumed_at(affinity, first)
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

    def _saved_place(self, affinity: str, first: int | None) -> Endpoint | str | None:
        """Where the placement saved for ``affinity`` sends its batch whose lines start at
        record offset ``first`` (see :meth:`_resumed_at`): that endpoint, its ``host:port``
        when it is not among the endpoints now, or None when none applies (none saved, the
        source settled, or the batch starts past the lines sent there: never sent)."""
        if self._placements is None or affinity in self._settled:
            return None
        where = self._placements.sent_to(affinity)
        if not where:
            return None
        through = self._placements.sent_through(affinity)
        if through is not None and first is not None and first > through:
            return None
        for ep in self.endpoints:
            if ep.hash_key == where:
                return ep
        return where

    def _resumed_at(self, affinity: str, first: int | None) -> Endpoint | None:
        """The endpoint to try first for ``affinity``'s batch of lines from record offset
        ``first``: the one its lines went to before a restart, when that was not its first
        choice (see :class:`Placements`), for every batch of the lines sent there (read
        again: they were in flight), which that aggregator drops. A placement saved without
        its reach applies to the first batch alone, as before. Once a batch past them is
        acknowledged, the source is ranked as always (and a down endpoint is passed over as
        always)."""
        place = self._saved_place(affinity, first)
        if not isinstance(place, str):
            return place
        self._settle(affinity)  # said once
        log.warning(
            "the aggregator a file's last batch went to before the restart is not among the "
            "aggregator endpoints now (removed from --aggregator, no longer an address its "
            "name resolves to, or its name did not resolve within %g s); its unacknowledged "
            "lines go to the file's first choice, which stores them a second time if that "
            "aggregator had stored them endpoint=%s source_id=%s",
            self.placement_wait,
            place,
            affinity,
        )
        return None

    def _held(self, affinity: str | None, first: int | None) -> bool:
        """Whether ``affinity``'s batch of lines from record offset ``first`` waits for the
        aggregator names: its saved placement is not among the endpoints while a name has not
        resolved (DNS down at the start). That address may be one of the name's: sent to the
        first choice at once, the lines it stored were stored twice. At most
        :attr:`placement_wait` per source, the names resolved again every
        :attr:`placement_poll` meanwhile; other sources are not held up."""
        if affinity is None:
            return False
        place = self._saved_place(affinity, first) if self._unresolved else None
        if not isinstance(place, str):
            self._holds.pop(affinity, None)
            return False
        now = time.monotonic()
        if affinity not in self._holds:
            self._holds[affinity] = now
            self._held_any = True
            log.info(
                "waiting for the aggregator names to resolve (at most %g s) before sending a "
                "file's unacknowledged lines: before the restart they went to endpoint=%s, "
                "which may be an address of names=%s source_id=%s",
                self.placement_wait,
                place,
                ",".join(sorted(map(str, self._unresolved))),
                affinity,
            )
        if now - self._holds[affinity] < self.placement_wait:
            return True
        del self._holds[affinity]  # _resumed_at gives up on it next, with a WARNING
        return False

    def may_hold(self, affinity: str, first: int | None) -> bool:
        """Whether ``affinity``'s batch of lines from record offset ``first`` may wait for the
        aggregator names (see :meth:`_held`): its source then reads no further batch until it
        is sent (:meth:`shipper.source.SourceRunner._until_sent`). Before the first resolution
        every name counts as not resolved: a batch that goes at once cost only its read-ahead."""
        return bool(self._unresolved) and isinstance(self._saved_place(affinity, first), str)

    def _placed_through(self, affinity: str, last: int | None) -> bool:
        """Whether an acknowledged batch of ``affinity`` ending at record offset ``last``
        reached the end of the lines its saved placement went to (or the reach is unknown):
        the source is then settled (see :meth:`_resumed_at`)."""
        if self._placements is None or last is None:
            return True
        through = self._placements.sent_through(affinity)
        return through is None or last >= through or not self._placements.sent_to(affinity)

    def stop_holding(self) -> None:
        """The shipper stops: the batches waiting for the names (see :meth:`_held`) end with
        :class:`HeldAtStop` at once, sent nowhere, rather than holding the stop up."""
        self._stop_holding.set()

    def _settle(self, affinity: str) -> None:
        if len(self._settled) >= RANK_CACHE:
            self._settled.clear()
        self._settled.add(affinity)
        self._holds.pop(affinity, None)

    async def _place(self, affinity: str | None, ep: Endpoint, last: int | None) -> None:
        """Before a batch of ``affinity`` whose lines reach record offset ``last`` goes to
        ``ep``: save where a restart must send them first, if not where it would anyway (see
        :class:`Placements`). Away from the first choice, that is a save per batch (each
        reaches further) unless its reach went with the last ack's checkpoint
        (:meth:`shipper.checkpoint.Registry.reach`); the registry drops the placement once
        its lines are acknowledged (:meth:`shipper.checkpoint.Registry.snapshot`), with their
        checkpoint."""
        if self._placements is None or affinity is None:
            return
        if ep == self._rank(affinity)[0]:
            await self._placements.place(affinity, "")
        else:
            await self._placements.place(affinity, ep.hash_key, last)

    def forget(self, affinity: str) -> None:
        """``affinity`` (a file's source id) is done: its file was read to its end and
        acknowledged. Its ranking goes, or the cache would keep one per file the host ever
        had (up to :data:`RANK_CACHE`). Only a cache: a later batch of it is ranked the same.
        (Its placement, if any, left the registry with its last acknowledgement.)"""
        self._ranks.pop(affinity, None)
        self._settled.discard(affinity)
        self._holds.pop(affinity, None)

    def _mark_down(self, ep: Endpoint, exc: BaseException) -> None:
        h = self._health.setdefault(ep, _Health())
        h.failures += 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(h.failures - 1, 16))
        h.down_until = time.monotonic() + random.uniform(delay / 2, delay)
        h.last_error = describe_error(exc)
        h.unresolved = resolve.why_unresolved(exc) if isinstance(exc, socket.gaierror) else ""
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
        if self.tls_files is not None:
            self.tls = self.tls_files.current()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    ep.host,
                    ep.port,
                    ssl=self.tls,
                    server_hostname=(
                        (self.server_name or ep.server_name or ep.host) if self.tls else None
                    ),
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

    async def deliver(
        self,
        payload: bytes,
        chunk: str,
        affinity: str | None = None,
        offsets: tuple[int, int] | None = None,
        hold: bool = True,
        on_hold: Callable[[bool], Awaitable[None]] | None = None,
    ) -> Endpoint:
        """Send until acknowledged; raises :class:`DeliveryError` only when giving up, and
        :class:`HeldAtStop` at a stop while the batch waits for the aggregator names.
        ``offsets``: the record offsets of the batch's first and last lines (None: unknown),
        for where its source's lines went before a restart (:class:`Placements`). Without
        ``hold`` the batch does not wait for the names (see :meth:`_held`): its source's
        saved placement is then given up at once if not among the endpoints. ``on_hold`` is
        awaited with True as the batch begins to wait for the names (not again at each poll
        of that wait: a batch refused room aside waits for it by itself,
        :class:`shipper.source.StepAside`), with False as it stops waiting to be sent (not
        when it ends by an error: the caller sees that itself)."""
        first, last = offsets if offsets is not None else (None, None)
        attempt = 0
        waiting = False
        while True:
            await self._resolve_when_due()
            if self._held(affinity if hold else None, first):
                if self._stop_holding.is_set():
                    raise HeldAtStop(affinity)
                if not waiting and on_hold is not None:
                    await on_hold(True)
                waiting = True
                self._check_give_up()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.placement_poll):
                        await self._stop_holding.wait()
                continue
            if waiting and on_hold is not None:
                await on_hold(False)
            waiting = False
            ep, wait = self._pick(affinity, first)
            if wait > 0:
                self._check_give_up()
                await asyncio.sleep(min(wait, 1.0))
                continue
            try:
                conn = await self._connection(ep)
                await self._place(affinity, ep, last)
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
                # The message's size: an aggregator that closes the connection on a message
                # over its --max-frame-bytes says so only in its own log, and the same message
                # goes again, forever; this is what to compare with that limit.
                why = describe_error(exc)
                log.warning(
                    "delivery failed, will retry endpoint=%s attempt=%d bytes=%d error=%r",
                    ep,
                    attempt,
                    len(payload),
                    why,
                )
                self._hint_client_cert(ep, attempt, why)
                self._check_give_up()
            else:
                h = self._health.setdefault(ep, _Health())
                h.failures = 0
                h.down_until = 0.0
                h.last_error = h.unresolved = ""  # up now: a later give-up must not cite it
                self._last_success = time.monotonic()
                self.stats.delivered += 1
                if affinity is not None and self._placed_through(affinity, last):
                    self._settle(affinity)
                return ep

    def _hint_client_cert(self, ep: Endpoint, attempt: int, why: str) -> None:
        """Say once (a WARNING) what to pass when TLS connections keep being closed on a
        shipper without a client certificate: an aggregator with ``--tls-client-ca`` refuses
        it so, and the retries' own lines only say that the connection closed."""
        if self._cert_hint_given or attempt < CLIENT_CERT_HINT_AFTER:
            return
        if self.may_lack_client_cert(why):
            self._cert_hint_given = True
            log.warning("TLS connections to %s keep closing (%s); %s", ep, why, CLIENT_CERT_HINT)

    def may_lack_client_cert(self, why: str) -> bool:
        """Whether a delivery failure (``why``) may be an aggregator with ``--tls-client-ca``
        refusing this shipper, which presents no client certificate: under TLS 1.3 the client
        sees that only as its connections closing (:func:`shipper.errors.closed_by_peer`)."""
        return self.tls is not None and not self.client_cert and closed_by_peer(why)

    def _check_give_up(self) -> None:
        """Raise :class:`DeliveryError` once nothing was acknowledged for ``give_up_after``
        seconds (``--once``), not while a batch waits for the names and no sooner than such a
        wait ends (:meth:`_give_up_after`). When every endpoint tried failed because its name
        did not resolve -- or none was tried, the batches waiting for the names
        (:meth:`_held`) -- the error says DNS, not "cannot reach": the aggregators may be
        fine."""
        if self.give_up_after is None or self._holds:
            return  # a batch waiting for the names is tried once its wait ends (at most
            # placement_wait): given up before, a name resolving later, or the first choice
            # it goes to then, would have taken it
        give_up_after = self._give_up_after()
        if time.monotonic() - self._last_success < give_up_after:
            return
        tried = f"{give_up_after:g} s"
        if give_up_after > self.give_up_after:
            tried += (
                ", as long as a file's unacknowledged lines waited for the aggregator names: "
                "before the restart they went to an address that may be one of theirs"
            )
        failed = {str(ep): h.unresolved for ep, h in self._health.items() if h.last_error}
        if not failed:
            failed = {str(ep): why for ep, why in self._unresolved.items()}
        if failed and all(failed.values()):
            raise DeliveryError(
                f"could not resolve aggregator name(s) {', '.join(failed)} (tried for "
                f"{tried}): {'; '.join(dict.fromkeys(failed.values()))}; "
                "check DNS or --aggregator"
            )
        if len(self.endpoints) == 1:
            reasons = self._health[self.endpoints[0]].last_error
        else:
            reasons = "; ".join(
                f"{ep}: {h.last_error}" for ep, h in self._health.items() if h.last_error
            )
        names = ", ".join(str(ep) for ep in self.endpoints)
        why = reasons or "no endpoint answered"
        hint = f" ({CLIENT_CERT_HINT})" if self.may_lack_client_cert(why) else ""
        raise DeliveryError(f"cannot reach aggregator {names} after {tried}: {why}{hint}")

    def _give_up_after(self) -> float:
        """Seconds without an acknowledgement before ``--once`` gives up: ``give_up_after``
        (``--retry-timeout``), or :attr:`placement_wait` if longer once a batch waited for
        the names in this run. Given up sooner (30 s by default, against 60 s), a batch whose
        wait would have ended with the names resolved, or with its first choice taking it,
        failed the run; its wait is the longer one it may need."""
        assert self.give_up_after is not None
        if self._held_any:
            return max(self.give_up_after, self.placement_wait)
        return self.give_up_after

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
