"""The Forward protocol v1 server: decode, buffer durably, then ack (asyncio).

Per connection: optional TLS, optional shared-key handshake (HELO / PING / PONG, digests from
:mod:`shipper.wire`, with user authentication when users are configured), then a stream of
Forward messages in any of the four modes -- msgpack, or JSON text as Fluentd also accepts.
All complete messages of one read are appended to the buffer, one group fsync covers them, and
only then are their ``{"ack": chunk}`` replies written: an ack always means "durable".

Limits keep one client from hurting the others: ``--max-frame-bytes`` bounds what a connection
may buffer (a larger message closes it), ``--max-connections`` and the idle timeout bound sockets,
``--max-inflight-bytes`` bounds the bytes of messages read and not yet durable on all
connections together (past it connections read no more, in turn: :mod:`aggregator.inflight`),
a message (and the handshake) must arrive whole within the idle timeout of its first byte (a
slowloris client trickling one byte at a time is closed, not kept forever), and while the
buffer is over ``--buffer-limit-bytes`` no connection is read (backpressure: the senders keep
their data and wait for acks). Anything malformed closes only its own connection,
with the reason logged and counted; a bad entry in a well-formed message does not (it is
stored as a marked row, :func:`aggregator.decode.bad_entry_line`). At --max-connections a new
client takes the slot of a connection stalled in a message or idle
(:meth:`ForwardServer._make_room`) rather than be locked out by clients that hold slots
without sending; repeated refusals and failed handshakes are logged at a bounded rate, a
failed shared-key handshake is answered late (:meth:`ForwardServer._auth_delay`), and an
address with several failures gets its keys checked at a bounded rate
(:meth:`ForwardServer._check_turn`). A stop ends the backpressure pause: what a held
connection had sent is stored past the limit (:meth:`ForwardServer.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pyarrow as pa

from aggregator import big_messages, listen
from aggregator.allowed import Network, allowed
from aggregator.batch import lacks_service
from aggregator.buffer import Buffer
from aggregator.chunks import RecentChunks, chunk_key, frame_payload, names_data
from aggregator.declared import DeclaredSize
from aggregator.decode import (
    BAD_ENTRY_MARKER,
    FLUENT_SIGNALS,
    ChunkId,
    chunk_of,
    decode,
    has_chunk,
    other_signal,
)
from aggregator.flag_values import DEFAULT_BUFFER_COMPRESSION, MAX_INFLIGHT_BYTES
from aggregator.inflate import Inflater, Unfinished
from aggregator.inflight import InflightBytes, Share
from aggregator.metrics import Metrics
from aggregator.open_files import fd_limit_hint
from aggregator.stop_reads import CutReader
from aggregator.tags import PATH_TAG_SERVICE, file_path_tag
from aggregator.throttle import Throttle
from aggregator.tls_files import TlsFiles
from aggregator.udp_heartbeat import answer_heartbeats
from shipper import wire
from shipper.config import weak_key_warning

log = logging.getLogger("logq.aggregator.server")

READ_SIZE = 256 * 1024
#: Read of a connection between messages: charged to the in-flight budget without waiting for
#: room to be reserved (an idle connection must not hold any), so it is kept small.
FIRST_READ = 64 * 1024
#: ``StreamReader`` limit: asyncio reads a socket ahead until twice this is buffered, on every
#: connection, outside the in-flight budget (so, per connection: 128 KiB plus one recv).
STREAM_LIMIT = 64 * 1024
#: Kernel receive buffer of each connection (``SO_RCVBUF``; Linux doubles it, capped by
#: ``net.core.rmem_max``). Left to autotuning it grows to ``tcp_rmem``'s maximum (6-32 MiB):
#: a thousand connections held back by the in-flight budget then queue gigabytes in the kernel,
#: charged to the pod's memory cgroup, and drive TCP into memory pressure (dropped segments,
#: senders backing off for minutes). 256 KiB still moves ~250 MB/s per connection at 1 ms RTT.
SOCKET_RCVBUF = 128 * 1024
#: A connection's unpacker keeps the buffer its largest message needed for as long as the
#: connection lives (msgpack grows it, never shrinks it): between messages, past this many
#: bytes fed, it is replaced by a new one (a Fluent Bit connection lives for hours).
UNPACKER_RENEW_BYTES = 1024 * 1024
#: Most bytes of an unfinished message the unpacker has not parsed yet (a value still arriving:
#: the blob of a PackedForward message, a long string) that a connection also keeps between
#: reads (:attr:`_Conn.kept`), i.e. holds twice. Past it the message's bytes are dropped, and
#: it cannot be read again with its map keys as text (:meth:`ForwardServer._read_keyed`; it is
#: refused then, and its resend read so from its first byte, :data:`KEYED_CLIENTS_MAX`): only
#: its option map could hold one then, or a record with a value longer than this. Without it a
#: rush of clients each sending a 2 MB PackedForward message held the in-flight budget twice.
KEPT_UNPARSED_BYTES = 64 * 1024
#: Client addresses remembered as sending records keyed by a map
#: (:meth:`ForwardServer._remember_keyed`), whose connections are then read with such keys as
#: text from their first byte: a message that could not be read again (see above) is refused,
#: and its resend, on a new connection, must not be refused the same way for good. The one
#: that sent one least recently is forgotten first (that costs it a message read again, or one
#: more refusal and resend).
KEYED_CLIENTS_MAX = 1024
HANDSHAKE_TIMEOUT = 30.0
#: Most bytes a client may send before its PING is complete. A PING is a few hundred bytes;
#: without this bound an unauthenticated client could make the server buffer a PING of up to
#: --max-frame-bytes (32 MiB by default; a thousand connections: 32 GiB) and charge it to the
#: in-flight budget the authenticated clients wait on.
MAX_PING_BYTES = FIRST_READ
#: A connection left unread this long because the buffer is full is closed without reading
#: what it sent since: its client (whose ack timeout should be longer: logq-shipper's is 30 s,
#: Fluentd's 190 s) resends later or elsewhere, and no copy of those batches stays behind here to
#: be stored a second time once the buffer drains.
BACKPRESSURE_CLOSE_SECONDS = 10.0
#: Messages of all connections together that may be between a gzip inflate and the buffer write
#: of a big message at once (:meth:`ForwardServer._store`): their inflated blobs, which the
#: in-flight budget does not count (a gzip blob of a few KiB can inflate to 64 MiB), and their
#: decoded slices live across awaits. Two: one inflating in the worker while one is decoded.
HEAVY_AT_ONCE = 2
#: The end of a refusal over --max-frame-bytes: its client resends the same message as it was
#: (a logq-shipper batch, a Fluentd chunk), forever, and all the client itself logs is a closed
#: connection, so the aggregator's WARNING is the one that can say what to change.
SEND_SMALLER = (
    "the client resends it as it is, forever: it must send smaller messages (logq-shipper: "
    "--batch-bytes, --batch-lines; Fluentd: chunk_limit_size) or raise --max-frame-bytes"
)
#: An unfinished message that gets no byte for this long while other connections wait for the
#: in-flight budget is closed (its connection is the one the budget lets read first). Shorter
#: than BACKPRESSURE_CLOSE_SECONDS, the longest those others wait.
MESSAGE_STALL_SECONDS = 5.0
#: How long connections read on normally once a graceful stop begins (less if the stop gives
#: them less in all); then each reads what had reached this host by the end of it and no more
#: (:mod:`aggregator.stop_reads`).
STOP_DRAIN_SECONDS = 0.3
#: How long a connection being closed may go without its client taking any of its last bytes
#: (acks, and with TLS close_notify) before its socket is dropped (:func:`_release`). Without a
#: bound, asyncio waits up to 30 s (``ssl_shutdown_timeout``) for the close_notify of a client
#: that is gone or does not answer, after an idle timeout, a protocol error, a full buffer or a
#: stop, and for ever for a plain TCP client that reads nothing: the socket and its file
#: descriptor stayed open that long after the connection was closed. A client that reads is
#: given the time it takes (up to --idle-timeout, as for its acks, :meth:`ForwardServer._drain`).
CLOSE_GRACE_SECONDS = 1.0
#: With --max-connections reached, a connection that got no byte between messages, or whose
#: unfinished message began, at least this long ago may be closed to make room for a new one
#: (:meth:`ForwardServer._make_room`); one that is storing or acking a message never is.
EVICT_AFTER_SECONDS = 2.0
#: Repeated WARNINGs (refused connections, failed handshakes, bad entries): once per key this
#: often; the counters count every one.
WARN_EVERY_SECONDS = 10.0
#: A failed shared-key handshake answers after this delay, doubled for each failure from the
#: same address in the last :data:`AUTH_FAILURES_FORGOTTEN_SECONDS` up to
#: :data:`AUTH_DELAY_MAX_SECONDS` (a guessing client gets a few tries a minute, not thousands).
AUTH_DELAY_SECONDS = 0.5
#: Closures whose WARNING is already said at most once per address every
#: :data:`WARN_EVERY_SECONDS` where they are raised (their level lowered there); the others are
#: throttled where they are logged (:meth:`ForwardServer._closed_level`).
THROTTLED_WHERE_RAISED = frozenset({"auth_failed", "tls_failed"})
AUTH_DELAY_MAX_SECONDS = 8.0
AUTH_FAILURES_FORGOTTEN_SECONDS = 300.0
#: Failed handshakes from one address (within AUTH_FAILURES_FORGOTTEN_SECONDS of each other)
#: after which its key checks are rate-limited: at most one every
#: :data:`AUTH_CHECK_INTERVAL_SECONDS`, the right key's included (checking a right key at once
#: would tell a guesser which guess was right). The delay alone did not bound guessing: each
#: failed connection waits on its own, so an address holding --max-connections (1024) of them
#: at the 8 s cap tried 128 keys a second. A handshake waits its turn (delayed, not answered)
#: if that comes within :data:`AUTH_CHECK_WAIT_MAX_SECONDS`, else it is closed unanswered, its
#: key unchecked (``auth_rate_limited``). Not a lockout: a client with the right key behind the
#: same address (NAT, or the host of a misconfigured Fluent Bit) that keeps retrying still gets
#: its turn, and passes. A success below the threshold forgets the failures; past it, they are
#: kept until AUTH_FAILURES_FORGOTTEN_SECONDS after the last (a guesser behind a NAT must not
#: get fresh tries from its neighbours' successes).
AUTH_RATE_LIMIT_FAILURES = 5
#: 0.25 checks a second per address (900 an hour): slow for a guesser, at most 2 turns ahead.
AUTH_CHECK_INTERVAL_SECONDS = 4.0
#: Below the shipper's 10 s handshake timeout, and twice the interval: beside one failing
#: client (one connection at a time, so one turn taken at most) a right-key client's first
#: try always gets a turn, and is in within 8 s.
AUTH_CHECK_WAIT_MAX_SECONDS = 8.0
#: Addresses whose failed handshakes are remembered at most; past it the one whose last failure
#: is oldest is forgotten, so a client with many addresses cannot grow the table without bound.
AUTH_FAILURES_MAX_ADDRESSES = 10_000


class ConnectionClosed(Exception):
    """The server decided to close a connection; the message is the logged reason, at
    ``level`` (WARNING: something is wrong with the client or the server; INFO for a normal
    end, such as a quiet client's connection idle past ``--idle-timeout``)."""

    def __init__(self, reason: str, label: str, level: int = logging.WARNING):
        super().__init__(reason)
        self.label = label
        self.level = level


class _DecodeNotes:
    """What decoding one message told: whether some of its event times were replaced by the
    receive time (counted at once) and its bad entries per reason (counted once stored)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.replaced = False
        self.bad: dict[str, int] = {}

    def on_replaced(self, rows: Any, example: str) -> None:
        self.replaced = True
        self.metrics.event_times_replaced(rows, example)

    def on_bad_entries(self, tag: str, reasons: dict[str, int]) -> None:
        self.replaced = True  # their rows carry the receive time, which a resend would not
        self.bad.update(reasons)


@dataclass
class _AuthRecord:
    """One address's recent failed handshakes (:meth:`ForwardServer._auth_delay`) and its
    turn for the next key check once rate-limited (:meth:`ForwardServer._check_turn`)."""

    failures: int
    last_failure: float
    """Monotonic time of the last failure."""
    next_check: float
    """Monotonic time before which no key of this address is checked (when rate-limited)."""

    def limited(self, now: float) -> bool:
        """Whether this address's key checks are rate-limited now."""
        return (
            self.failures >= AUTH_RATE_LIMIT_FAILURES
            and now - self.last_failure <= AUTH_FAILURES_FORGOTTEN_SECONDS
        )


@dataclass
class ServerLimits:
    max_frame_bytes: int = 32 * 1024 * 1024
    max_connections: int = 1024
    idle_timeout: float = 600.0
    max_message_entries: int = wire.MAX_MESSAGE_ENTRIES
    """Entries one message may hold: its memory grows with them, not with its (compressed)
    bytes, so this, not ``max_frame_bytes``, bounds what one message costs."""
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    """Bytes of messages read and not yet durable on all connections together: past it,
    connections stop reading (TCP backpressure), in turn (:mod:`aggregator.inflight`)."""

    @property
    def max_decompressed_bytes(self) -> int:
        return max(4 * self.max_frame_bytes, 64 * 1024 * 1024)


#: First bytes of a msgpack array (fixarray, array16, array32): every Forward message is one.
_ARRAY_HEADS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


@dataclass
class _Conn:
    peer: str
    """``host:port`` of the client."""
    task: asyncio.Task[None] | None = None
    reading: bool = False
    held: bool = False
    """Whether the server holds it back from reading (the buffer over --buffer-limit-bytes,
    the in-flight budget, the objects of unfinished messages): at the stop's cut, a held
    connection with nothing left to read is closed (:meth:`ForwardServer.stop`)."""
    reader: CutReader | None = None
    """The connection's reader, which the stop cuts (:meth:`ForwardServer.stop`)."""
    secured: bool = False
    """Whether its TLS handshake is done: its kernel receive queue holds application records."""
    received: int = field(default=0)
    fed: int = 0
    """Bytes fed to this connection's unpacker."""
    boundary: int = 0
    """Stream offset just past the last complete message: ``boundary == fed`` means no message
    is half-received. (``Unpacker.tell()`` cannot tell: it also moves past the headers and
    the complete elements of an unfinished message.)"""
    partial_since: float | None = None
    """Monotonic time the unfinished message in the unpacker began arriving (None: none)."""
    budget: wire.ObjectBudget | None = None
    """Counts the objects of the message being unpacked (:func:`shipper.wire.message_budget`)."""
    acks: bool | None = None
    """Whether the client asks for acks (a ``chunk`` option; None: no message seen yet). One
    that does resends what is not acked, so a connection stalled by a full buffer may be
    closed; one that does not cannot resend, so it never is."""
    early: bytes = b""
    """Bytes read ahead while the buffer was full (to see whether the client asks for acks),
    not fed to the unpacker yet."""
    share: Share | None = None
    """What this connection holds of the server's in-flight byte budget."""
    abandoned: list[int] = field(default_factory=list)
    """Line counts of the messages with a chunk id not stored because the client had closed
    the connection before they were buffered (see :func:`_peer_closed`), not yet reported."""
    warned_abandoned: bool = False
    """Whether this connection logged its WARNING about abandoned messages (once is enough)."""
    last_byte: float = field(default_factory=time.monotonic)
    """Monotonic time of the last bytes read (or of the accept)."""
    evicted: str | None = None
    """Why the server closed this connection to make room for a new one (None: it did not)."""
    in_ping: bool = False
    """Whether the unfinished "message" is the ``--shared-key`` PING (see :meth:`stalled_for`)."""

    unfed: bytes | memoryview = b""
    """Bytes read (and charged to the in-flight budget) not fed yet: those a client wrote with
    its PING, or the rest of a read that held more than the unpacker had room for (several
    messages under a small --max-frame-bytes), fed once the messages before them are stored."""
    read: bytes | memoryview = b""
    """The last read, fed to the unpacker, until its complete messages are stored: the
    unfinished message's part of it is walked then (:meth:`ForwardServer._declared_error`),
    and the read dropped before the fsync is awaited."""
    declared: DeclaredSize | None = None
    """The headers of the unfinished message, walked so far (None: none walked)."""
    unpacker: msgpack.Unpacker | None = None
    """The connection's unpacker (:meth:`ForwardServer._renew_unpacker`; a ``keyed`` one
    after a map key Python cannot hash, :meth:`ForwardServer._read_keyed`)."""
    keyed: bool = False
    """Whether :attr:`unpacker` reads such map keys as text (until it is renewed)."""
    kept: list[bytes | memoryview] = field(default_factory=list)
    """The bytes fed since the unfinished message began (from stream offset
    :attr:`kept_from`; the reads as they were fed): msgpack raises TypeError on a map key
    Python cannot hash and cannot go on, so that message is read again from them
    (:meth:`ForwardServer._read_keyed`). They are the unfinished message's bytes, which the
    in-flight budget charges anyway; those of the complete messages are dropped with the read,
    and those of a message with more than :data:`KEPT_UNPARSED_BYTES` not parsed yet, which
    the unpacker holds too (:func:`_keep_unfinished`)."""
    kept_from: int = 0
    """Stream offset of the first byte of :attr:`kept`: past :attr:`boundary`, the unfinished
    message's bytes were dropped."""

    def stalled_for(self, now: float) -> float | None:
        """How long the unfinished message has waited on its client (None: none is unfinished).
        From its last byte: a message still coming, however slowly (a large chunk over a slow
        link), is being sent, not stalled, and closing it for a newcomer lost what was sent and
        had the client resend it all. A PING (and a TLS handshake: no byte of it is read here)
        from its start instead: a real client sends it at once, and one trickled a byte at a
        time by a client without the key must not hold the slot for the handshake timeout."""
        if self.partial_since is None:
            return None
        return now - (
            self.partial_since if self.in_ping else max(self.partial_since, self.last_byte)
        )

    @property
    def client(self) -> str:
        """The client's host, without the port (a resend comes on a new connection)."""
        return _host(self.peer)


def bound_addresses(names: Iterable[tuple[Any, ...]]) -> list[tuple[str, int]]:
    """The ``getsockname()`` of listening sockets as (host, port), IPv4 first. ``:PORT`` binds
    ``0.0.0.0`` and ``::`` in asyncio's (set) order, which changes from run to run: the
    ``listening on`` line then read ``[::]:PORT`` (IPv6 only, by the README) as often as not,
    and with ``:0`` the port returned was either family's."""
    return sorted(((str(n[0]), int(n[1])) for n in names), key=lambda a: (":" in a[0], a))


class ForwardServer:
    """Accepts Forward connections and feeds the buffer."""

    def __init__(
        self,
        buffer: Buffer,
        metrics: Metrics,
        limits: ServerLimits,
        shared_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        tls_files: TlsFiles | None = None,
        on_append: Callable[[], None] | None = None,
        buffer_compression: str = DEFAULT_BUFFER_COMPRESSION,
        allowed_networks: tuple[Network, ...] = (),
    ):
        self.buffer = buffer
        self.allowed_networks = allowed_networks
        """``--allow-network``: the client addresses taken (none: every one)."""
        self.metrics = metrics
        self.limits = limits
        self.shared_key = shared_key
        self.users = users or {}
        """``username -> password``: user authentication in the handshake when not empty."""
        self.tls_files = tls_files
        """Where a new connection's TLS context comes from, loaded again when the files change
        (None: ``ssl_context`` for good)."""
        self.ssl_context = tls_files.context if tls_files is not None else ssl_context
        self.on_append = on_append
        self.buffer_compression = buffer_compression
        self.hostname = socket.gethostname()
        self.listening: list[tuple[str, int]] = []
        """(host, port) of each listening socket once started, IPv4 first."""
        self.chunks = RecentChunks()
        """Chunk ids buffered recently: a resend of one is acked and not stored again. Those of
        a previous run are restored before listening (``Aggregator._restore_chunks``)."""
        self._server: listen.Listeners | None = None
        self._heartbeats: list[asyncio.BaseTransport] = []
        """Fluentd's UDP heartbeat, answered on the same port (:mod:`.udp_heartbeat`)."""
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._cut = asyncio.Event()
        """Set at the stop's cut: from then on, no connection waits for room in the buffer."""
        # Connection unpackers build Forward- and Message-mode messages as their bytes arrive
        # and keep a half-received one between reads. Past one message's worth of objects in
        # all, connections in the middle of a message read no more, except the one whose
        # message began first (it finishes and frees its share): N slow clients cannot each
        # hold one message's worth. Twice that (plus one read) is a hard ceiling, never reached
        # by that rule: a connection going over it is closed.
        self._objects_soft = wire.message_objects(limits.max_message_entries)
        self._objects = wire.ObjectBudget(2 * self._objects_soft + READ_SIZE)
        self.inflight = InflightBytes(limits.max_inflight_bytes, FIRST_READ)
        """Bytes of messages read and not yet durable, all connections together."""
        metrics.inflight_bytes.set_function(lambda: self.inflight.used)
        metrics.inflight_waiting.set_function(lambda: self.inflight.waiting)
        self._warnings = Throttle(WARN_EVERY_SECONDS, what="connection limits", logger=log)
        """The rate-limited WARNINGs of the connection limits (a few fixed keys). Kept apart
        from the many keys below, which could otherwise fill it and hide these."""
        self._peer_warnings = Throttle(
            WARN_EVERY_SECONDS,
            what="client addresses refused or failing their handshake",
            logger=log,
        )
        """Per address: refusals, failed handshakes."""
        self._tag_warnings = Throttle(
            WARN_EVERY_SECONDS, what="tags with bad entries or other signals", logger=log
        )
        """Per tag: bad entries, messages of other signals."""
        self._inflater = Inflater()
        """Inflates big gzip blobs in one worker thread, off the event loop."""
        self._heavy = asyncio.Semaphore(HEAVY_AT_ONCE)
        """Turns of the messages inflated or decoded across awaits (:data:`HEAVY_AT_ONCE`)."""
        self._auth_failures: dict[str, _AuthRecord] = {}
        """Client address -> its failed handshakes, oldest last failure first (bounded by
        :data:`AUTH_FAILURES_MAX_ADDRESSES`)."""
        self._keyed_clients: dict[str, None] = {}
        """Client addresses (:attr:`_Conn.client`: a resend comes from another port) that sent
        a map key Python cannot hash, least recently first (bounded by
        :data:`KEYED_CLIENTS_MAX`): their connections' unpackers are ``keyed`` from the first
        byte (:meth:`_renew_unpacker`)."""

    async def start(
        self, host: str, port: int, addresses: Sequence[listen.Address] | None = None
    ) -> tuple[str, int]:
        """Listen on every address of ``host`` (``addresses``: resolved already, see
        :func:`listen.start_server`); the first address listened on."""
        # TLS is started per connection (:meth:`_start_tls`), not by the listener: a handshake
        # that fails there is dropped by asyncio without a word (it logs OSErrors only in debug
        # mode), and a misconfigured client then got no logged reason at all.
        # Every address of ``host`` on one port, ``:0`` too (:mod:`.listen`).
        self._server = await listen.start_server(
            self._accept,
            host,
            port,
            backlog=1024,
            limit=STREAM_LIMIT,
            reader=CutReader,
            addresses=addresses,
        )
        for listening in self._server.sockets:  # accepted sockets inherit it
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        # ``:PORT`` binds one socket per family, in no fixed order: IPv4 first, every run.
        self.listening = bound_addresses(s.getsockname() for s in self._server.sockets)
        # Fluentd's UDP heartbeat, on exactly those addresses and port (never fatal).
        self._heartbeats = await answer_heartbeats(self._server.sockets, self.allowed_networks)
        log.info(
            "at most %s bytes of messages in flight on all connections (--max-inflight-bytes)",
            f"{self.inflight.limit:,}",
        )
        if weak := weak_key_warning(self.shared_key):
            log.warning("%s", weak)
        return self.listening[0]

    async def stop(self, grace: float) -> None:
        """Stop accepting; let connections read on for STOP_DRAIN_SECONDS, then read what had
        reached this host by then and no more (the cut), finish the batch they are acking, and
        close. ``grace``: how long all that may take from now (the service gives a share of
        --stop-timeout, :func:`aggregator.stop_budget.connections_grace`); the connections
        still open then are closed.

        Clients without acks (fluent-logger, Fluent Bit or Fluentd without
        require_ack_response) cannot resend what they wrote: every complete message in the
        socket when the window ends is stored, also on a connection busy then (waiting for the
        fsync of an earlier message), which used to leave without reading it. A connection
        waiting for bytes with none left is stopped at once; one whose client keeps streaming
        stops at what had arrived (:mod:`.stop_reads`), so it does not hold the stop open.

        A connection held back at the cut (the buffer over --buffer-limit-bytes, the in-flight
        budget) is closed at once if nothing is left to read from it; otherwise what it had
        sent is read, stored past --buffer-limit-bytes and acknowledged (:meth:`_past_the_limit`):
        the stop flushes the buffer and what is left to read is bounded by the cut, while a
        pause would last until the stop closed the connection, its client's data unread and
        unacknowledged (lost, without acks). With the buffer's volume short of disk it is closed
        unacknowledged instead: its client resends later."""
        end = time.monotonic() + grace
        if self._server:
            self._server.close()
        for heartbeat in self._heartbeats:
            heartbeat.close()
        await asyncio.sleep(min(STOP_DRAIN_SECONDS, grace))
        tls = self.ssl_context is not None
        for task, conn in list(self._conns.items()):
            left = conn.reader is not None and conn.reader.cut(tls, handshake_done=conn.secured)
            if (conn.reading or conn.held) and not (left or conn.early):
                task.cancel()
        self._cut.set()  # the held connections with bytes left read them
        tasks = list(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        await self._inflater.close()
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1)

    # --- one connection -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        task = asyncio.current_task()
        assert task is not None
        if not allowed(writer.get_extra_info("peername"), self.allowed_networks):
            self._not_allowed(peer, writer)
            return
        if self._open_connections() >= self.limits.max_connections and not self._make_room():
            self.metrics.connections_rejected.labels("max_connections").inc()
            if self._warnings.due("max_connections", time.time()):
                log.warning(
                    "closing connection from %s: over --max-connections (%d), none idle or "
                    "stalled for %.0fs to close instead; raise --max-connections or add "
                    "aggregators (said once every %.0fs; connections_closed_total"
                    '{reason="max_connections"} counts them all)',
                    peer,
                    self.limits.max_connections,
                    EVICT_AFTER_SECONDS,
                    WARN_EVERY_SECONDS,
                )
            writer.close()
            return
        cut_reader = reader if isinstance(reader, CutReader) else None
        conn = _Conn(peer, task, reader=cut_reader, share=self.inflight.share())
        self._conns[task] = conn
        self.metrics.connections.inc()
        try:
            if self.ssl_context is not None:  # first: nothing may be read before the handshake
                await self._start_tls(conn, writer)
            await self._serve(conn, reader, writer)
        except ConnectionClosed as exc:
            level, note = self._closed_level(exc, conn.client)
            log.log(level, "closing connection from %s: %s%s", peer, exc, note)
            self.metrics.connections_rejected.labels(exc.label).inc()
        except asyncio.CancelledError:
            if conn.evicted is not None:
                self.metrics.connections_rejected.labels("evicted").inc()
                if self._warnings.due("evicted", time.time()):
                    log.warning(
                        "closing connection from %s: %s, to make room for a new one at "
                        "--max-connections (%d) (said once every %.0fs; connections_closed_total"
                        '{reason="evicted"} counts them all)',
                        peer,
                        conn.evicted,
                        self.limits.max_connections,
                        WARN_EVERY_SECONDS,
                    )
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("connection from %s ended: %s", peer, exc)
        except Exception:  # never let one connection take the server down
            log.exception("closing connection from %s after an unexpected error", peer)
            self.metrics.connections_rejected.labels("internal_error").inc()
        finally:
            if conn.budget is not None:
                conn.budget.reset()  # its unfinished message is dropped with the connection
            if conn.share is not None:
                conn.share.close()
            self._conns.pop(task, None)
            try:
                await _release(writer, self.limits.idle_timeout)
            finally:  # counted until its socket is closed: the gauge tells the sockets held
                self.metrics.connections.dec()

    def _closed_level(self, exc: ConnectionClosed, client: str) -> tuple[int, str]:
        """The level of a closed connection's line, and a note to append to it. A WARNING about
        a client is said once every :data:`WARN_EVERY_SECONDS` per address, reason and text (a
        health check or an HTTP client pointed at the Forward port, a client retrying a message
        over --max-frame-bytes), later repeats at DEBUG: each closure was a WARNING, 200
        connections of a load balancer's probe 200 lines. A buffer error stays an ERROR each
        time (it pages)."""
        if exc.label == "buffer_error":
            return logging.ERROR, ""
        if exc.level != logging.WARNING or exc.label in THROTTLED_WHERE_RAISED:
            return exc.level, ""
        if not self._peer_warnings.due((exc.label, client, str(exc)), time.time()):
            return logging.DEBUG, ""
        return logging.WARNING, (
            f" (the same from this address is said at most once every {WARN_EVERY_SECONDS:.0f}s;"
            f' connections_closed_total{{reason="{exc.label}"}} counts them all)'
        )

    def _not_allowed(self, peer: str, writer: asyncio.StreamWriter) -> None:
        """Close a connection from outside ``--allow-network`` before anything is read."""
        self.metrics.connections_rejected.labels("not_allowed").inc()
        if self._peer_warnings.due(("not_allowed", _host(peer)), time.time()):
            log.warning(
                "closing connection from %s: not in --allow-network (said once every %.0fs "
                'per address; connections_closed_total{reason="not_allowed"} counts them all)',
                peer,
                WARN_EVERY_SECONDS,
            )
        writer.close()

    async def _start_tls(self, conn: _Conn, writer: asyncio.StreamWriter) -> None:
        """The TLS handshake, within the handshake timeout. A failure (a plaintext client on
        the TLS port, an untrusted certificate, a stalled handshake) closes the connection with
        its reason logged at INFO, once every WARN_EVERY_SECONDS per client address (a
        misconfigured client retries in a loop)."""
        if self.tls_files is not None:
            self.ssl_context = self.tls_files.current()  # a rotated certificate, once changed
        assert self.ssl_context is not None
        timeout = min(HANDSHAKE_TIMEOUT, self.limits.idle_timeout)
        # Waiting on the client, as for an unfinished message: a newcomer at --max-connections
        # may take its slot (:meth:`_make_room`). Otherwise connections that never finish their
        # TLS handshake (silent, or half a ClientHello) held every slot for the handshake
        # timeout, and clients without the certificate locked out the ones with it.
        conn.reading, conn.partial_since = True, time.monotonic()
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=timeout)
            conn.secured = True
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            due = self._peer_warnings.due(("tls_failed", conn.client), time.time())
            raise ConnectionClosed(
                f"TLS handshake failed ({exc.__class__.__name__}: {exc or 'connection lost'}): "
                f"{self._tls_causes()} (said at most once every {WARN_EVERY_SECONDS:.0f}s per "
                "address)",
                "tls_failed",
                logging.INFO if due else logging.DEBUG,
            ) from None
        finally:
            conn.reading, conn.partial_since = False, None

    def _tls_causes(self) -> str:
        """What a failed TLS handshake may mean, for its log line."""
        causes = "is the client sending plaintext, or does it not trust this server's certificate?"
        if self.ssl_context is not None and self.ssl_context.verify_mode == ssl.CERT_REQUIRED:
            causes = (
                "is the client sending plaintext, does it not trust this server's certificate, "
                "or has it no certificate signed by --tls-client-ca?"
            )
        return causes

    def _open_connections(self) -> int:
        """Connections that count against --max-connections (not those being closed)."""
        return sum(1 for c in self._conns.values() if c.evicted is None)

    def _make_room(self) -> bool:
        """Close one connection so a new one can be served instead of refused: the one whose
        unfinished message has waited longest on its client (:meth:`_Conn.stalled_for`: from
        its last byte, so one still arriving is not stalled), else the one idle longest between
        messages, if that was at least EVICT_AFTER_SECONDS ago. Only connections waiting to read
        qualify: one storing or acking a message, or held back by the server (full buffer,
        in-flight budget), is never closed. Without this, connections that sent one byte (or
        nothing) held every slot for --idle-timeout and locked every new client out. The closed
        client loses nothing: an unfinished message was never acked and is resent, and a quiet
        client reconnects when it has lines."""
        now = time.monotonic()
        stalled: list[tuple[float, _Conn]] = []
        idle: list[tuple[float, _Conn]] = []
        for task, conn in self._conns.items():
            if conn.evicted is not None or not conn.reading or task.done():
                continue
            stalled_for = conn.stalled_for(now)
            if stalled_for is not None:
                stalled.append((stalled_for, conn))
            elif conn.fed == conn.boundary:
                idle.append((now - conn.last_byte, conn))
        for kind, candidates in (("no byte of its unfinished message", stalled), ("idle", idle)):
            age, victim = max(candidates, key=lambda c: c[0], default=(0.0, None))
            if victim is not None and age >= EVICT_AFTER_SECONDS and victim.task is not None:
                victim.evicted = f"{kind} for {age:.0f}s"
                victim.task.cancel()
                return True
        return False

    async def _read(
        self, conn: _Conn, reader: asyncio.StreamReader, timeout: float, size: int = READ_SIZE
    ) -> bytes:
        conn.reading = True
        try:
            # asyncio.timeout, not wait_for: wait_for runs the read as a task of its own, one
            # more task per read on the ingest path (and per in-flight turn, per drain).
            async with asyncio.timeout(timeout):
                data = await reader.read(size)
            conn.last_byte = time.monotonic()
            self.metrics.bytes_in.inc(len(data))
            return data
        except TimeoutError:
            raise ConnectionClosed(f"idle for {timeout:.0f}s", "idle_timeout") from None
        finally:
            conn.reading = False

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait for the peer to take our acks, but not forever (it holds a connection slot)."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                await writer.drain()
        except TimeoutError:
            raise ConnectionClosed(
                f"not reading its acks for {self.limits.idle_timeout:.0f}s", "idle_timeout"
            ) from None

    def _feed(self, unpacker: msgpack.Unpacker, data: bytes | memoryview) -> None:
        try:
            unpacker.feed(data)
        except msgpack.BufferFull:
            raise self._too_large() from None

    def _too_large(self, what: str = "message") -> ConnectionClosed:
        return ConnectionClosed(
            f"{what} larger than --max-frame-bytes ({self.limits.max_frame_bytes:,} bytes); "
            + SEND_SMALLER,
            "frame_too_large",
        )

    async def _serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn.budget = wire.message_budget(
            self.limits.max_message_entries, self.limits.max_frame_bytes, self._objects
        )
        self._renew_unpacker(conn)
        if self.shared_key is not None:
            # What the client wrote with its PING (messages right behind it): read and charged
            # already, taken as the first read, through the same checks as any other.
            conn.unfed = await self._handshake(conn, reader, writer)
        while True:  # until the client closes, or the stop's cut (:meth:`stop`)
            data = await self._next_bytes(conn, reader)
            if not data:
                return
            if conn.boundary == conn.fed and data[:1] == b"[":
                # Fluentd's in_forward also reads JSON text messages: so do we, for the rest of
                # this connection.
                return await self._serve_json(conn, reader, writer, bytes(data))
            if conn.boundary == conn.fed and data[0] not in _ARRAY_HEADS:
                # A new message starts here and it is not an array: refuse at once instead of
                # waiting (up to the idle timeout) for the body a junk str/bin/map header announces.
                raise ConnectionClosed(
                    f"not the Forward protocol: a message is a msgpack array, got first byte "
                    f"0x{data[0]:02x}",
                    "protocol_error",
                )
            # msgpack refuses a feed that would leave more than --max-frame-bytes unparsed: fed
            # whole, a read of several small messages was refused as one message too large.
            assert conn.unpacker is not None
            unparsed = conn.fed - conn.unpacker.tell()
            data = _fit(conn, data, self.limits.max_frame_bytes - unparsed)
            self._feed(conn.unpacker, data)
            conn.fed += len(data)
            conn.read = data  # for _declared_error, which drops it
            conn.kept.append(data)  # for _read_keyed (_process keeps the unfinished part)
            del data  # not kept while the messages in it are made durable
            await self._process(conn, writer)
            _note_partial(conn, conn.boundary != conn.fed)
            if conn.boundary == conn.fed > UNPACKER_RENEW_BYTES:
                self._renew_unpacker(conn)

    async def _next_bytes(self, conn: _Conn, reader: asyncio.StreamReader) -> bytes | memoryview:
        """The bytes to feed next (empty: the client closed): those read already and not fed
        (:attr:`_Conn.unfed`), else the next read, once the buffer and the object pool let
        this connection read."""
        if conn.unfed:
            data, conn.unfed = conn.unfed, b""
            return data
        await self._wait_for_space(conn, reader)
        await self._wait_for_objects(conn)
        return await self._read_next(conn, reader)

    def _renew_unpacker(self, conn: _Conn) -> None:
        """A fresh unpacker for a connection between messages (its old one holds a buffer as
        large as the largest message it took, for good): the stream offsets start over.
        ``keyed`` only for a client remembered as sending a key Python cannot hash
        (:meth:`_remember_keyed`): most clients never do, and the pairs hook costs every map
        built; such a client's message is then read whole at once, not read again, and one
        that could not be read again (:meth:`_read_keyed`) is read when resent."""
        conn.fed = conn.boundary = conn.kept_from = 0
        conn.declared = None
        conn.kept.clear()
        conn.keyed = conn.client in self._keyed_clients
        conn.unpacker = wire.new_unpacker(
            self.limits.max_frame_bytes,
            max_array_len=self.limits.max_message_entries,
            budget=conn.budget,
            keyed=conn.keyed,
        )

    def _unpacked(self, conn: _Conn) -> Iterator[tuple[Any, int]]:
        """The complete messages fed to the connection's unpacker, each with its bytes on the
        wire (:attr:`_Conn.boundary` moved past it). A message keyed by a map (or an array
        holding one) somewhere, which Fluentd forwards (Ruby hashes any key) and msgpack cannot
        build, is read again from its bytes with such keys as text (:meth:`_read_keyed`): as
        :func:`shipper.wire.unpack_entries` reads a PackedForward blob, so every mode stores
        the same rows."""
        again: list[bytes | memoryview] = []  # what is fed again, read by read
        while True:
            unpacker = conn.unpacker
            assert unpacker is not None
            try:
                for obj in wire.iter_messages(unpacker, conn.budget):
                    start, conn.boundary = conn.boundary, unpacker.tell()
                    yield obj, conn.boundary - start
            except wire.UnhashableKey:
                if conn.keyed:
                    raise
                again = self._read_keyed(conn)
            if not again:
                return
            self._feed(conn.unpacker, again.pop(0))

    def _read_keyed(self, conn: _Conn) -> list[bytes | memoryview]:
        """Replace the connection's unpacker, which msgpack left unusable at a map key Python
        cannot hash, with a ``keyed`` one starting at the unfinished message (the stream
        offsets start over there, as at :meth:`_renew_unpacker`): the bytes fed since, to be
        fed to it again read by read, as they were, so that its buffer holds no more than the
        old one did. The message's objects counted so far are given back to the object pool,
        to be counted again. Its client is remembered (:meth:`_remember_keyed`). Refused
        (ConnectionClosed, ``protocol_error``) when its bytes were dropped
        (:data:`KEPT_UNPARSED_BYTES`): its client resends it on a new connection, read with
        such keys as text from its first byte, so it is stored then (once: nothing of it was)."""
        self._remember_keyed(conn)
        if conn.kept_from > conn.boundary:
            raise ConnectionClosed(
                "a map key Python cannot hash (a map, or an array holding one) in a message "
                f"that had more than {KEPT_UNPARSED_BYTES:,} bytes of one value pending between "
                "reads, too many to keep to read it again with such keys as text: closed "
                "unacknowledged; its resend on a new connection is read with such keys as text "
                "from its first byte, as this address's connections are from now on (a client "
                "that sends without acks cannot resend it: it is lost, so send such records "
                "keyed by text)",
                "protocol_error",
            )
        pieces = _kept_since(conn, conn.boundary)
        if conn.budget is not None:
            conn.budget.reset()
        conn.fed -= conn.boundary
        conn.boundary = conn.kept_from = 0
        conn.declared = None
        conn.kept = list(pieces)
        conn.keyed = True
        conn.unpacker = wire.new_unpacker(
            self.limits.max_frame_bytes,
            max_array_len=self.limits.max_message_entries,
            budget=conn.budget,
            keyed=True,
        )
        return pieces

    def _remember_keyed(self, conn: _Conn) -> None:
        """Remember ``conn``'s client address as one sending map keys Python cannot hash (the
        most recent, :data:`KEYED_CLIENTS_MAX` at most): a client that sends one sends more
        (a Fluentd whose records carry a Ruby hash as a key), and any of them may come with
        a long value split between reads, too long to keep to read its message again. Said
        at INFO the first time (the least recent is forgotten past the bound)."""
        client = conn.client
        known = client in self._keyed_clients
        self._keyed_clients.pop(client, None)  # re-added last: the most recent
        while len(self._keyed_clients) >= KEYED_CLIENTS_MAX:
            del self._keyed_clients[next(iter(self._keyed_clients))]
        self._keyed_clients[client] = None
        if not known:
            log.info(
                "client %s sent a record keyed by a map (or by an array holding one; Fluentd "
                "forwards Ruby records so keyed): such keys are stored as their JSON text, "
                "and its connections are read so from their first byte from now on (slower "
                "per map; the last %d such client addresses are remembered)",
                client,
                KEYED_CLIENTS_MAX,
            )

    async def _wait_for_space(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """While the buffer is full, read nothing (TCP backpressure), until the stop's cut
        (:meth:`_paused`); from the cut on, read past the limit (:meth:`_past_the_limit`)."""
        if not self.buffer.full:
            return
        if not self._cut.is_set():
            conn.held = True
            try:
                await self._paused(conn, reader)
            finally:
                conn.held = False
        if self._cut.is_set() and self.buffer.full:
            self._past_the_limit()
        if conn.partial_since is not None:  # our pause, not the client's slowness
            conn.partial_since = time.monotonic()

    async def _paused(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Wait for room in the buffer, or for the stop's cut. A client that asks for
        acks is closed after BACKPRESSURE_CLOSE_SECONDS so it resends elsewhere or later (and
        no copy stays here to be stored once the buffer drains, after it gave up); one that
        never asked (fluent-logger, Fluent Bit or Fluentd without require_ack_response) cannot
        resend what it already wrote, so it waits as long as the buffer stays full. A new
        connection is told apart by its first message, read ahead when the time is up."""
        self.metrics.backpressure.inc()
        if self.on_append:
            self.on_append()
        timeout = None if conn.acks is False else BACKPRESSURE_CLOSE_SECONDS
        try:
            await asyncio.wait_for(self._until_cut(self.buffer.wait_for_space()), timeout)
        except TimeoutError:
            if conn.acks is None and not conn.early and await self._asks_no_acks(conn, reader):
                conn.acks = False
                await self._until_cut(self.buffer.wait_for_space())
            else:
                why = self.buffer.short_of_disk() or "the warehouse is not taking data"
                raise ConnectionClosed(
                    f"buffer full for {BACKPRESSURE_CLOSE_SECONDS:.0f}s ({why}): closed unread, "
                    "the client resends later or elsewhere",
                    "backpressure",
                ) from None

    async def _until_cut(self, wait: Awaitable[None]) -> None:
        """Await ``wait``, or the stop's cut if it comes first (``wait`` is then cancelled)."""
        waiting = asyncio.ensure_future(wait)
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({waiting, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            cut.cancel()
        if waiting.done() and not waiting.cancelled():
            waiting.result()  # its error, if it failed

    def _past_the_limit(self) -> None:
        """A connection reads past --buffer-limit-bytes after the stop's cut: the stop
        flushes the buffer, and what is left to read is what had reached this host by then.
        Not when the buffer's volume is short of disk (the disk guard's reserve is what a
        flush needs): the connection is closed unread, unacknowledged."""
        short = self.buffer.short_of_disk()
        if short is not None:
            raise ConnectionClosed(
                "stopping with the buffer's volume short of disk: closed unread, the client "
                f"resends later or elsewhere ({short})",
                "backpressure",
            )

    async def _wait_for_objects(self, conn: _Conn) -> None:
        """Hold a connection in the middle of a message while the unfinished messages of all
        connections hold more objects than one message may, unless its message began first."""
        pool, budget = self._objects, conn.budget
        if budget is None or not budget.used or pool.used <= self._objects_soft:
            return
        conn.held = True
        try:
            while pool.used > self._objects_soft and not self._first_unfinished(conn):
                await asyncio.sleep(0.05)
        finally:
            conn.held = False
        if conn.partial_since is not None:  # our pause, not the client's slowness
            conn.partial_since = time.monotonic()

    def _first_unfinished(self, conn: _Conn) -> bool:
        """Whether ``conn``'s unfinished message began before every other one. Told by the
        in-flight budget's tickets, the order that budget lets the oldest message go in: the
        two rules must agree on it, or each could hold the message the other lets go."""
        ticket = conn.share.ticket if conn.share is not None else None
        started = [
            c.share.ticket
            for c in self._conns.values()
            if c.budget is not None and c.budget.used and c.share and c.share.ticket is not None
        ]
        return ticket is not None and ticket <= min(started, default=ticket)

    async def _asks_no_acks(self, conn: _Conn, reader: asyncio.StreamReader) -> bool:
        """Read what a new connection has sent (kept in ``conn.early``) and tell whether its
        first message, complete in it, has no ``chunk`` option. Unknown (nothing sent yet, a
        message longer than one read, not msgpack): False, the connection is closed."""
        try:
            conn.early = await asyncio.wait_for(reader.read(READ_SIZE), 1.0)
        except TimeoutError:
            return False
        self.metrics.bytes_in.inc(len(conn.early))
        probe = wire.new_unpacker(READ_SIZE, keyed=True)  # once a connection: any key goes
        probe.feed(conn.early)
        try:
            first = next(probe, None)
        except (ValueError, TypeError, msgpack.UnpackException):
            return False
        return isinstance(first, list) and not has_chunk(first)

    async def _read_next(self, conn: _Conn, reader: asyncio.StreamReader) -> bytes:
        """The next bytes (those read ahead first), in turn with the other connections (the
        in-flight budget): within the idle timeout, or, while a message is unfinished, by the
        deadline its first byte set (see :meth:`_read_rest`)."""
        assert conn.share is not None
        if conn.early:
            data, conn.early = conn.early, b""
            conn.share.take(len(data))
            return data
        idle = self.limits.idle_timeout

        async def read(size: int) -> bytes:
            if conn.partial_since is None:
                return await self._read_between_messages(conn, reader, idle, size)
            deadline = conn.partial_since + idle
            while time.monotonic() + MESSAGE_STALL_SECONDS < deadline:
                # While others wait for the budget, an unfinished message must keep coming, or
                # one stalled client would hold every other one up to --idle-timeout.
                try:
                    return await self._read(conn, reader, MESSAGE_STALL_SECONDS, size)
                except ConnectionClosed:
                    if self.inflight.waiting:
                        raise ConnectionClosed(
                            f"no byte of its unfinished message for {MESSAGE_STALL_SECONDS:.0f}s "
                            "while other connections wait for the in-flight budget (slow "
                            "client)",
                            "slow_client",
                        ) from None
            return await self._read_rest(conn, reader, deadline, size)

        return await self._read_in_turn(conn, read)

    async def _read_in_turn(self, conn: _Conn, read: Callable[[int], Awaitable[bytes]]) -> bytes:
        """``read(size)``, once the in-flight budget lets ``conn`` read: between messages
        after waiting for room, charged for what it got; in the middle of one, with the read
        reserved in turn (the oldest message always goes, so it finishes)."""
        share = conn.share
        assert share is not None
        if conn.fed == conn.boundary:
            await self._in_turn(conn, share.wait_for_room())
            data = await read(FIRST_READ)
            share.take(len(data))
            return data
        if await self._in_turn(conn, share.reserve(READ_SIZE)) and conn.partial_since is not None:
            conn.partial_since = time.monotonic()  # our pause, not the client's slowness
        data = await read(READ_SIZE)
        share.give_back(READ_SIZE - len(data))
        return data

    async def _in_turn(self, conn: _Conn, turn: Awaitable[bool | None]) -> bool | None:
        """Wait for the in-flight budget's ``turn``. A client that asks for acks gives up on a
        message it gets no ack for (logq-shipper after 30 s) and sends it elsewhere, while its
        bytes still wait in this socket: read later, they would be stored twice. So, like a
        full buffer, a wait past BACKPRESSURE_CLOSE_SECONDS closes such a connection unread
        (its message is resent later or elsewhere); one that never asks for acks waits. At
        the stop's cut a waiting connection with bytes left waits on: the others, no longer
        held by the buffer, make theirs durable and free the budget."""
        timeout = None if conn.acks is False else BACKPRESSURE_CLOSE_SECONDS
        conn.held = True
        try:
            async with asyncio.timeout(timeout):
                return await turn
        except TimeoutError:
            self.metrics.inflight_closed.inc()
            raise ConnectionClosed(
                f"waited {BACKPRESSURE_CLOSE_SECONDS:.0f}s for the in-flight budget "
                f"(--max-inflight-bytes {self.inflight.limit}, {self.inflight.waiting} "
                "connections waiting): closed unread, the client resends later or elsewhere",
                "backpressure",
            ) from None
        finally:
            conn.held = False

    async def _serve_json(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        data: bytes,
    ) -> None:
        """JSON messages (``["tag", time, {record}, {"chunk": …}]``, or a Forward-mode array of
        entries), acked as JSON; the same limits as msgpack: size, a whole message within the
        idle timeout of its first byte, malformed text closes the connection."""
        pending = b""
        parsed = 0  # bytes parsed so far for the unfinished message
        scanner = _JsonScanner(wire.message_objects(self.limits.max_message_entries))
        while True:
            # At most what fills the unfinished message to --max-frame-bytes: the limit is a
            # message's, not a read's (the rest is taken next, once the messages before it are
            # stored).
            data = bytes(_fit(conn, data, self.limits.max_frame_bytes - len(pending)))
            conn.fed += len(data)
            pending += data
            if len(pending) > self.limits.max_frame_bytes:
                raise self._too_large("JSON message")
            # The json module cannot resume a parse: an unfinished message is parsed again from
            # its start. So a scanner (linear) says when a message is complete and only then is
            # it parsed for sure; before that, a parse is tried only while all the tries for
            # this message stay under a few times its size (early errors for junk, never the
            # quadratic CPU of a message sent a byte at a time).
            scanner.feed(data)
            messages: list[Any] = []
            within = (
                parsed + len(pending) <= JSON_REPARSE_FACTOR * len(pending) + JSON_REPARSE_SLACK
            )
            if scanner.complete or within:
                parsed += len(pending)
                messages, pending = _json_messages(pending, unfinished=scanner.depth > 0)
                if messages:
                    parsed = 0
                    scanner.complete = False
            if not pending.strip():
                pending = b""
            conn.boundary = conn.fed - len(pending)
            if messages:
                await self._process(conn, writer, messages)
            assert conn.share is not None
            conn.share.keep(len(pending) + len(conn.unfed))  # also what was only whitespace
            _note_partial(conn, bool(pending))
            data = await self._next_bytes(conn, reader)
            if not data:
                return

    async def _read_between_messages(
        self, conn: _Conn, reader: asyncio.StreamReader, idle: float, size: int
    ) -> bytes:
        """Read with no message under way. Silence past ``--idle-timeout`` here is a quiet
        client (a shipper on a host whose containers log nothing for a while), not a fault:
        the close is logged at INFO (a WARNING per quiet shipper every 10 minutes was noise in
        the log operators are told to watch); the client reconnects when it has lines."""
        try:
            return await self._read(conn, reader, idle, size)
        except ConnectionClosed as exc:
            raise ConnectionClosed(str(exc), exc.label, logging.INFO) from None

    async def _read_rest(
        self, conn: _Conn, reader: asyncio.StreamReader, deadline: float, size: int = READ_SIZE
    ) -> bytes:
        """Read more of an unfinished message, which must be complete by ``deadline``.

        Without it a client sending one byte just inside every idle timeout (slowloris) would
        hold its connection slot and its buffer forever.
        """
        remaining = deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(ConnectionClosed):
                return await self._read(conn, reader, remaining, size)
        raise ConnectionClosed(
            f"a message still incomplete {self.limits.idle_timeout:.0f}s after its first byte "
            f"(slow client)",
            "slow_client",
        )

    def _decode(self, obj: Any) -> tuple[Any, ChunkId | None, bool, dict[str, int]]:
        """:func:`decode` ``obj``: its batch, its ``chunk``, whether some of its event times
        were replaced by the receive time (counted here; its chunk key then cannot use them),
        and its bad entries per reason (counted once stored, :meth:`_bad_entries`)."""
        notes = _DecodeNotes(self.metrics)
        batch, chunk = decode(
            obj,
            self.limits.max_decompressed_bytes,
            self.limits.max_message_entries,
            notes.on_replaced,
            notes.on_bad_entries,
        )
        self.metrics.messages_received(batch)
        return batch, chunk, notes.replaced, notes.bad

    def _bad_entries(self, tag: str, reasons: dict[str, int]) -> None:
        """Count a message's bad entries (stored as rows of their own, see
        :func:`aggregator.decode.bad_entry_line`) and say so, once per tag and reason every
        WARN_EVERY_SECONDS."""
        for reason, count in reasons.items():
            self.metrics.bad_entries.labels(reason).inc(count)
            if self._tag_warnings.due(("bad_entry", tag, reason), time.time()):
                log.warning(
                    "bad Forward entries (%s) stored as rows whose line starts with %r, with "
                    "the receive time; the message's other entries were stored and acked; fix "
                    "the sender (said once every %.0fs per tag and reason; "
                    "logq_aggregator_bad_entries_total counts them) tag=%s count=%d",
                    reason,
                    BAD_ENTRY_MARKER,
                    WARN_EVERY_SECONDS,
                    tag,
                    count,
                )

    async def _process(
        self, conn: _Conn, writer: asyncio.StreamWriter, messages: list[Any] | None = None
    ) -> None:
        """Buffer the complete messages of the connection's unpacker (or the decoded JSON
        ``messages``), then ack them in the connection's own encoding once durable, and give
        their bytes back to the in-flight budget.

        A message whose client has already given up on the connection (it closed it, past its
        ack timeout while this process was stopped, and resends the message here or to another
        aggregator: :func:`_peer_closed`) is not stored when it carries a chunk id: it would be
        stored twice. Its acks could not reach the client anyway. Checked again before the acks are
        written, for messages the client gave up on while they were being made durable."""
        entries, error = await self._store(conn, messages, writer)
        if error is None and messages is None:
            if conn.fed - conn.boundary > self.limits.max_frame_bytes:
                # The unpacker's own limit counts only the bytes it has not parsed yet, and it
                # parses the entries of a Forward-mode message as they come: the whole message
                # is held to the limit here (and in _store, one that completed in this read).
                error = self._too_large()
            else:
                error = self._declared_error(conn)
        conn.read = b""
        if messages is None:
            _keep_unfinished(conn)
        self._report_abandoned(conn)
        # Ack, in order, what is durable before a bad message or a failed write: it is in the
        # buffer either way, and an unacked copy would be resent and stored twice.
        waits = [w for w, _ in entries if w is not None]
        results = await asyncio.gather(*waits, return_exceptions=True) if waits else []
        assert conn.share is not None
        # Durable: only the unfinished message, and what is not fed yet, stay.
        conn.share.keep(conn.fed - conn.boundary + len(conn.unfed))
        if waits and self.on_append:
            self.on_append()
        outcome = iter(results)
        acks: list[ChunkId] = []
        for wait, chunk in entries:
            if wait is not None:
                result = next(outcome)
                if isinstance(result, BaseException):
                    error = _buffer_error(result)
                    break
            if chunk is not None:
                acks.append(chunk)
        if acks and _peer_closed(writer):
            self._stored_abandoned(conn, len(acks))
        if acks:
            encode = wire.encode_ack if messages is None else _json_ack
            writer.write(b"".join(encode(c) for c in acks))
            await self._drain(writer)
            self.metrics.acks.inc(len(acks))
        if error is not None:
            raise error

    def _declared_error(self, conn: _Conn) -> ConnectionClosed | None:
        """A refusal of the unfinished message when its headers, read so far, declare more than
        ``--max-frame-bytes`` (an array of 10^8 elements, a bin of 100 MB): msgpack checks a
        length only once all its bytes are there, so such a message was read until the limit
        filled the unpacker or ``--idle-timeout`` ran out. Walks only the unfinished message's
        bytes of the last read (:mod:`aggregator.declared`); None when there is none."""
        read = conn.read
        if conn.boundary == conn.fed or not read:
            conn.declared = None
            return None
        walker = conn.declared
        if walker is None or walker.start != conn.boundary:
            walker = conn.declared = DeclaredSize(conn.boundary)
        first = conn.fed - len(read)  # the stream offset of the read's first byte
        if walker.done or not first <= walker.next_offset <= conn.fed:
            walker.done = True  # bytes of it were not walked: its whole size is still checked
            return None
        walker.feed(read, walker.next_offset - first)
        declared, limit = walker.least_size(), self.limits.max_frame_bytes
        if declared <= limit:
            return None
        # (Under a small limit, short headers alone -- a str of 20 bytes -- can declare more:
        # no length header is then named.)
        largest = f" ({walker.largest})" if walker.largest else ""
        return ConnectionClosed(
            f"a message whose msgpack headers declare {declared:,} bytes at least{largest}, "
            f"over --max-frame-bytes ({limit:,} bytes): refused from its "
            "headers, before its body is read; " + SEND_SMALLER,
            "frame_too_large",
        )

    def _report_abandoned(self, conn: _Conn) -> None:
        """Count the messages :meth:`_store_one` did not store because their client was gone,
        and tell the operator once per connection (a stalled aggregator can find dozens)."""
        if not conn.abandoned:
            return
        messages, lines = len(conn.abandoned), sum(conn.abandoned)
        conn.abandoned.clear()
        self.metrics.abandoned.labels("dropped").inc(messages)
        level = logging.INFO if conn.warned_abandoned else logging.WARNING
        conn.warned_abandoned = True
        log.log(
            level,
            "client %s closed its connection before %d messages it sent (%d lines) were "
            "buffered: not stored here, the client resends them (it stopped with them "
            "unacknowledged, as logq-shipper does at its own stop, or gave up waiting for their "
            "acks: if the client did not stop, was this aggregator stalled, e.g. stopped, "
            "swapping or in a hung fsync, for longer than the client's ack timeout?)",
            conn.peer,
            messages,
            lines,
        )

    def _stored_abandoned(self, conn: _Conn, messages: int) -> None:
        """Count and report acks that cannot reach their client: it closed the connection while
        its messages were being made durable, so it resends them, and they are stored twice."""
        self.metrics.abandoned.labels("stored").inc(messages)
        log.warning(
            "client %s closed its connection while %d messages it sent were being made durable: "
            "they are stored, but their acks cannot reach it and it resends them (here, where "
            "a resent chunk is recognised, or to another aggregator), so their lines may be "
            "stored twice; a buffer fsync slower than the client's ack timeout does this (check "
            "the --buffer-dir volume)",
            conn.peer,
            messages,
        )

    async def _store(
        self, conn: _Conn, messages: list[Any] | None, writer: asyncio.StreamWriter
    ) -> tuple[list[tuple[asyncio.Future[None] | None, ChunkId | None]], ConnectionClosed | None]:
        """Decode and append the complete messages: for each, its fsync future (None: nothing
        to store) and its chunk, and the error that stopped them, if one did. Once the client
        has closed the connection (:func:`_peer_closed`), messages with a chunk id are not
        stored.

        Apart from :meth:`_process` so that no decoded message, batch or frame outlives it:
        they are garbage before the fsync is awaited (N connections waiting for it would
        otherwise hold N messages, three times their wire size). ``messages`` is emptied.

        A big gzip blob is inflated in a worker thread (:mod:`aggregator.inflate`), and a big
        message decoded a slice at a time (:meth:`_store_big`): the other connections go on
        meanwhile, this one waits for it, so its messages stay in order. Such messages take
        turns (:data:`HEAVY_AT_ONCE` of all connections at once), so that their inflated blobs
        and decoded slices, which no budget counts, are held by a few connections only. A small
        gzip blob (inflated inline, to a message that is not big) takes no turn: it is stored
        without an await, holding nothing meanwhile, and did wait up to ~0.5 s behind two big
        messages' turns."""
        entries: list[tuple[asyncio.Future[None] | None, ChunkId | None]] = []
        error: ConnectionClosed | None = None
        peer_closed = _peer_closed(writer)
        max_decompressed = self.limits.max_decompressed_bytes
        max_entries = self.limits.max_message_entries
        try:
            # With each message, its bytes on the wire (JSON: measured below).
            unpacked = self._unpacked(conn) if messages is None else ((m, None) for m in messages)
            for obj, size in unpacked:
                if size is not None and size > self.limits.max_frame_bytes:
                    error = self._too_large()  # (see _process)
                    break
                logs = other_signal(obj) is None
                if logs:  # JSON: a Forward-mode message's entries measured here, once
                    size = big_messages.message_bytes(obj, size, max_entries)
                # A small gzip blob is inflated inline at once, no await: a message that is
                # small then is stored without a turn. A gzip blob for the worker, or a big
                # message, waits its turn before it is inflated or decoded: every connection
                # at once would otherwise hold its inflated blob and decoded slices across the
                # awaits, which no budget counts. (Without a wait, taking a turn does not
                # yield.) A Forward-mode message is big by its entries or its wire bytes.
                quick = self._inflater.inline(obj, max_decompressed, max_entries) if logs else obj
                heavy = isinstance(quick, Unfinished) or (logs and big_messages.is_big(quick, size))
                if heavy and quick is not obj and self._heavy.locked():
                    # Inflated big, or partly: not held across the wait for a turn (the
                    # worker inflates it again, from its start).
                    quick = None
                async with self._heavy if heavy else contextlib.nullcontext():
                    # Inflated in the worker: its client may have left meanwhile.
                    if quick is None:
                        obj = await self._inflater.inflated(
                            obj, max_decompressed, max_entries, inline=False
                        )
                        peer_closed = _peer_closed(writer)
                    elif isinstance(quick, Unfinished):  # begun inline: the rest, not again
                        obj = await self._inflater.finish(quick)
                        peer_closed = _peer_closed(writer)
                    else:
                        obj = quick
                    del quick  # (an Unfinished holds its output so far)
                    try:
                        if logs and big_messages.is_big(obj, size):
                            entries.append(await self._store_big(conn, obj, writer, size))
                            peer_closed = _peer_closed(writer)  # (it may have left meanwhile)
                            continue
                        entries.append(self._store_one(conn, obj, peer_closed))
                    except ConnectionClosed as exc:  # the buffer write failed
                        error = exc
                        break
        except ConnectionClosed as exc:  # a keyed read again: its bytes dropped, or too large
            error = exc
        except wire.ObjectPoolFull as exc:
            error = ConnectionClosed(str(exc), "objects_pool_full")
        except wire.ProtocolError as exc:
            reason = str(exc)
            if exc.__cause__ is not None and not str(exc.__cause__):
                reason += type(exc.__cause__).__name__  # msgpack errors can have no message
            error = ConnectionClosed(f"not the Forward protocol: {reason}", "protocol_error")
        except Exception as exc:  # a bug decoding one message: still ack those before it
            log.exception("a message from %s could not be decoded", conn.peer)
            error = ConnectionClosed(
                f"unexpected error decoding a message: {exc!r}", "internal_error"
            )
        if messages is not None:
            messages.clear()
        return entries, error

    def _store_one(
        self, conn: _Conn, obj: Any, peer_closed: bool = False
    ) -> tuple[asyncio.Future[None] | None, ChunkId | None]:
        """Decode one message and append it to the buffer (unless it is a resend of a chunk
        stored recently, or the client gave it up): its fsync future (None: nothing stored) and
        its chunk (None: no ack to write); ConnectionClosed when the buffer write failed.

        A message with a chunk id whose client has closed the connection (``peer_closed``) is
        given up by that client: it holds its lines until acked and resends them, so dropping
        them is safe, and storing them would store them twice. A message without a chunk id
        (fluent-logger, Fluent Bit or Fluentd without acks) is always stored: its client cannot
        resend it."""
        signal = other_signal(obj)
        if signal is not None:  # never stored: a client that left has nothing to resend
            return None, None if peer_closed else self._skip_signal(conn, obj, signal)
        batch, chunk, replaced, bad = self._decode(obj)
        key = (
            chunk_key(chunk, obj[0], batch, conn.client, by_text=replaced)
            if chunk and batch.num_rows
            else None
        )
        return self._buffered(conn, batch, chunk, key, None, bad, peer_closed)

    async def _store_big(
        self, conn: _Conn, obj: Any, writer: asyncio.StreamWriter, size: int | None = None
    ) -> tuple[asyncio.Future[None] | None, ChunkId | None]:
        """:meth:`_store_one` of a big message (:mod:`aggregator.big_messages`; ``size``: its
        wire bytes, or a JSON Forward-mode message's measured entries): decoded a slice of
        entries at a time, the other connections served between slices (their acks,
        /metrics), then joined and framed in the worker thread, whose Arrow calls release the
        GIL. The chunk dedup is asked after the last wait, in one step with the buffer write:
        two copies of a chunk decoded at once are stored once."""
        notes = _DecodeNotes(self.metrics)
        steps = big_messages.decode_steps(
            obj,
            self.limits.max_decompressed_bytes,
            self.limits.max_message_entries,
            notes.on_replaced,
            notes.on_bad_entries,
            size,
        )
        while True:
            try:
                next(steps)
            except StopIteration as done:
                batches, chunk = done.value
                break
            await asyncio.sleep(0)
        client, compression, by_text = conn.client, self.buffer_compression, notes.replaced
        tag = obj[0]  # a str or bytes: decode_steps refused any other

        def framed() -> tuple[pa.RecordBatch, bytes | None, bytes | None]:
            batch = big_messages.joined(batches)
            if not batch.num_rows:
                return batch, None, None
            key = chunk_key(chunk, tag, batch, client, by_text=by_text) if chunk else None
            return batch, key, frame_payload(batch, compression, key)

        batch, key, payload = await self._inflater.run(framed)
        self.metrics.messages_received(batch)
        return self._buffered(conn, batch, chunk, key, payload, notes.bad, _peer_closed(writer))

    def _buffered(
        self,
        conn: _Conn,
        batch: pa.RecordBatch,
        chunk: ChunkId | None,
        key: bytes | None,
        payload: bytes | None,
        bad: dict[str, int],
        peer_closed: bool,
    ) -> tuple[asyncio.Future[None] | None, ChunkId | None]:
        """Append a decoded message to the buffer, unless its client gave it up or it is a
        resend (see :meth:`_store_one`): its fsync future and its chunk. ``payload``: its
        buffer frame, when already made (None: made here)."""
        if chunk is not None and peer_closed:
            conn.acks = True
            conn.abandoned.append(batch.num_rows)
            return None, None
        known, earlier = self.chunks.earlier(key) if key else (False, None)
        # Asked on the resend path only: a new chunk (logq-shipper's every one) pays nothing.
        if known and names_data(chunk):
            # A resend (its ack was lost): acked once the first copy is durable.
            self.metrics.records_in.inc(batch.num_rows)
            self.metrics.duplicates.inc(batch.num_rows)
            self.metrics.duplicate_chunks.inc()
            conn.acks = True
            return earlier, chunk
        wait = None
        if batch.num_rows:
            try:
                if payload is None:
                    payload = frame_payload(batch, self.buffer_compression, key)
                wait = self.buffer.write(payload, chunk=key)
            except OSError as exc:  # disk full, I/O error: this frame was cut off
                raise _buffer_error(exc) from exc
            self.metrics.records_in.inc(batch.num_rows)
            if key:
                self.chunks.add(key, wait)
            if bad:
                self._bad_entries(batch.column("tag")[0].as_py(), bad)
            self._path_tag_service(batch)
        conn.acks = bool(conn.acks) or chunk is not None
        return wait, chunk

    def _path_tag_service(self, batch: pa.RecordBatch) -> None:
        """Say, once every WARN_EVERY_SECONDS, that records tagged with a tailed file's path
        (:func:`aggregator.tags.file_path_tag`) and naming no service are stored under the
        service ``log``: with every other container tailed so, where nobody looks for them."""
        tag = batch.column("tag")[0].as_py()
        if not isinstance(tag, str) or not file_path_tag(tag):
            return
        if not lacks_service(batch.column(wire.KEY_SERVICE)):
            return
        if self._tag_warnings.due(("path_tag",), time.time()):
            log.warning(
                "records tagged with a tailed file's path name no service: stored under the "
                "tag's last part, %r, with every container tailed so; have Fluent Bit's ecs "
                "filter ADD ecs_task_definition $TaskDefinitionFamily (ECS EC2), run its "
                "kubernetes filter (Kubernetes), or give the input a Tag that ends in the "
                'service: docs/operations.md, "Fluent Bit and Fluentd clients" (said once '
                "every %.0fs) tag=%s",
                PATH_TAG_SERVICE,
                WARN_EVERY_SECONDS,
                tag,
            )

    def _skip_signal(self, conn: _Conn, obj: list[Any], signal: int) -> ChunkId | None:
        """Ack a message of Fluent Bit's metrics, traces or other non-log signal without storing
        it (logq keeps logs only; refused, it would be resent forever), count it
        (``logq_aggregator_signal_messages_dropped_total{signal}``) and say so, once per tag
        and signal every WARN_EVERY_SECONDS. Its chunk, if it wants an ack."""
        chunk = chunk_of(obj)
        conn.acks = bool(conn.acks) or chunk is not None
        tag = obj[0].decode("utf-8", "replace") if isinstance(obj[0], bytes) else str(obj[0])
        kind = FLUENT_SIGNALS.get(signal, "other")
        self.metrics.signals_dropped.labels(kind).inc()
        if self._tag_warnings.due(("signal", tag, signal), time.time()):
            log.warning(
                "dropped a Fluent Bit message of fluent_signal=%s (%s) from %s: logq stores "
                "logs only; narrow the Match of that forward output to log tags (said once "
                "every %.0fs per tag and signal) tag=%s",
                signal,
                kind,
                conn.peer,
                WARN_EVERY_SECONDS,
                tag,
            )
        return chunk

    async def _handshake(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        """HELO -> PING -> PONG as in Forward protocol v1, with user authentication (the HELO
        carries an ``auth`` salt, the PING a username and password digest) when users are set.

        The bytes read behind the PING (a client may write its first messages with it) are
        returned, still charged to the in-flight budget, for :meth:`_serve` to feed as its first
        read (:attr:`_Conn.unfed`): unpacked with the PING they escaped the checks of a message
        read later (its size, declared and whole, its first byte, JSON text)."""
        assert self.shared_key is not None
        nonce = os.urandom(16)
        auth = os.urandom(16) if self.users else b""
        writer.write(wire.encode_helo(nonce, auth=auth, keepalive=True))
        await self._drain(writer)
        limit = min(HANDSHAKE_TIMEOUT, self.limits.idle_timeout)
        deadline = time.monotonic() + limit
        ping = None
        conn.in_ping = True
        # The PING's own unpacker: it takes every byte the loop may read, and no more than one
        # PING is unpacked from it.
        unpacker = wire.new_unpacker(MAX_PING_BYTES + FIRST_READ, budget=conn.budget)
        received = bytearray()
        while ping is None:
            slow = ConnectionClosed(
                f"no complete PING within {limit:.0f}s of HELO (slow client)", "slow_client"
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise slow
            try:
                # Not queued for the in-flight budget, only charged: a PING is a few hundred
                # bytes, and a wait there would run out its deadline (a rush of clients with a
                # shared key would all fail the handshake while the budget is full).
                data = await self._read(conn, reader, remaining, FIRST_READ)
            except ConnectionClosed:
                raise slow from None
            assert conn.share is not None
            conn.share.take(len(data))
            if not data:
                raise ConnectionClosed("closed during the handshake", "handshake_failed")
            unpacker.feed(data)
            received += data
            try:
                ping = next(wire.iter_messages(unpacker, conn.budget), None)
            except wire.ProtocolError as exc:
                raise ConnectionClosed(f"bad PING: {exc}", "handshake_failed") from None
            if ping is None and len(received) > MAX_PING_BYTES:
                raise ConnectionClosed(
                    f"no complete PING in the first {MAX_PING_BYTES} bytes (a PING is a few "
                    "hundred): not a Forward client with a shared key, or a hostile one",
                    "handshake_failed",
                )
            # An unfinished PING is a stalled message (:meth:`_make_room`): otherwise one byte
            # of PING on every connection held all the slots for the handshake timeout, and
            # unauthenticated clients locked the authenticated ones out.
            _note_partial(conn, ping is None)
        conn.in_ping = False
        behind = bytes(received[unpacker.tell() :])
        assert conn.share is not None
        conn.share.keep(len(behind))  # the PING's bytes are released; those behind it stay
        if not (isinstance(ping, list) and len(ping) >= 4 and ping[0] == "PING"):
            raise ConnectionClosed("expected PING after HELO", "handshake_failed")
        hostname, salt, digest = ping[1], ping[2], ping[3]
        if not isinstance(hostname, str) or not isinstance(salt, bytes | str):
            raise ConnectionClosed("PING has fields of the wrong type", "handshake_failed")
        salt_b = salt if isinstance(salt, bytes) else salt.encode("utf-8", "surrogateescape")
        # The turn is taken, and a key checked at once, in one step with no await: PINGs sent
        # together on many connections cannot all be checked before the rate limit begins.
        wait = self._check_turn(conn.client)
        if wait is None:
            raise self._rate_limited(conn, hostname)
        if wait > 0:
            await asyncio.sleep(wait)  # delayed, not answered: the PONG tells the check
        expected = wire.ping_digest(salt_b, hostname, nonce, self.shared_key)
        ok = wire.same_digest(digest, expected)
        reason, fix = ("", "") if ok else ("shared_key mismatch", "check the client's shared key")
        if ok and self.users and not self._user_ok(ping, auth):
            ok, reason = False, "username/password mismatch"
            fix = "check the client's username and password against --user"
        if ok:
            record = self._auth_failures.get(conn.client)
            if record is not None and not record.limited(time.monotonic()):
                del self._auth_failures[conn.client]  # a success forgets a few failures
        else:
            await asyncio.sleep(self._auth_delay(conn.client))
        writer.write(wire.encode_pong(ok, reason, self.hostname, salt_b, nonce, self.shared_key))
        await self._drain(writer)
        if not ok:
            due = self._peer_warnings.due(("auth_failed", conn.client), time.time())
            raise ConnectionClosed(
                f"handshake failed from {hostname!r}: {reason} ({fix}; "
                "later failures from this address are logged at most once every "
                f"{WARN_EVERY_SECONDS:.0f}s)",
                "auth_failed",
                logging.WARNING if due else logging.DEBUG,
            )
        return behind

    def _auth_delay(self, client: str) -> float:
        """Seconds to wait before answering a failed handshake from ``client``: doubled with
        each recent failure from the same address, so that a shared key cannot be guessed at
        thousands of tries a second. (An asyncio sleep: the other connections go on.) The
        failure is counted towards ``client``'s rate limit (:meth:`_check_turn`)."""
        now = time.monotonic()
        record = self._auth_failures.pop(client, None)  # re-added last: the newest failure
        if record is None or now - record.last_failure > AUTH_FAILURES_FORGOTTEN_SECONDS:
            record = _AuthRecord(0, now, now + AUTH_CHECK_INTERVAL_SECONDS)
        count = record.failures
        while len(self._auth_failures) >= AUTH_FAILURES_MAX_ADDRESSES:
            del self._auth_failures[next(iter(self._auth_failures))]  # the oldest failure
        record.failures, record.last_failure = count + 1, now
        self._auth_failures[client] = record
        if count + 1 == AUTH_RATE_LIMIT_FAILURES:
            log.warning(
                "%d failed shared-key handshakes from %s: its key checks are now limited to "
                "one every %gs, until %gs after its last failure (a handshake waits its "
                "turn up to %gs, else is closed unchecked: connections_closed_total"
                '{reason="auth_rate_limited"}); a client there has a wrong key or is guessing '
                "it (the auth_failed WARNINGs name its hostname): fix or block it",
                count + 1,
                client,
                AUTH_CHECK_INTERVAL_SECONDS,
                AUTH_FAILURES_FORGOTTEN_SECONDS,
                AUTH_CHECK_WAIT_MAX_SECONDS,
            )
        return min(AUTH_DELAY_MAX_SECONDS, AUTH_DELAY_SECONDS * 2**count)

    def _check_turn(self, client: str) -> float | None:
        """Seconds a handshake from ``client`` waits before its key is checked (0: at once),
        its turn taken; None: no turn within :data:`AUTH_CHECK_WAIT_MAX_SECONDS`, so it is
        refused unchecked. An address under :data:`AUTH_RATE_LIMIT_FAILURES` recent failures
        is checked at once; past it, one check every :data:`AUTH_CHECK_INTERVAL_SECONDS`, in
        the order the handshakes came: a right-key client that keeps retrying gets a turn
        (where a lockout renewed by its failing neighbour's retries refused it for ever), and
        a guesser, however many connections it opens, gets one check per interval."""
        now = time.monotonic()
        record = self._auth_failures.get(client)
        if record is None:
            return 0.0
        turn = max(now, record.next_check) if record.limited(now) else now
        if turn - now > AUTH_CHECK_WAIT_MAX_SECONDS:
            return None
        record.next_check = turn + AUTH_CHECK_INTERVAL_SECONDS
        return turn - now

    def _rate_limited(self, conn: _Conn, hostname: str) -> ConnectionClosed:
        """The close, unanswered, of a handshake refused by the rate limit: its client takes it
        for a network error and retries (a PONG refusal would make a logq shipper with the
        right key report a key problem, and ``--once`` give up). Logged once every
        :data:`WARN_EVERY_SECONDS` per address."""
        due = self._peer_warnings.due(("auth_rate_limited", conn.client), time.time())
        return ConnectionClosed(
            f"handshake from {hostname!r} closed unanswered, its key unchecked: {conn.client} "
            f"had {AUTH_RATE_LIMIT_FAILURES} or more failed handshakes, so its key checks are "
            f"limited to one every {AUTH_CHECK_INTERVAL_SECONDS:g}s and none is free within "
            f"{AUTH_CHECK_WAIT_MAX_SECONDS:g}s (a client there has a wrong key or is "
            "guessing it: fix or block it; later ones from this address are logged at most "
            f"once every {WARN_EVERY_SECONDS:.0f}s)",
            "auth_rate_limited",
            logging.WARNING if due else logging.DEBUG,
        )

    def _user_ok(self, ping: list[Any], auth: bytes) -> bool:
        username = ping[4] if len(ping) > 4 else None
        digest = ping[5] if len(ping) > 5 else None
        if not isinstance(username, str):
            return False
        password = self.users.get(username)
        if password is None:
            return False
        return wire.same_digest(digest, wire.password_digest(auth, username, password))


#: TCP states (``tcpi_state`` of Linux's ``TCP_INFO``, ``include/net/tcp_states.h``) in which
#: the peer has sent its FIN on a connection this server has not closed (CLOSE_WAIT; LAST_ACK
#: and CLOSING once ours went too): it has closed, or only half-closed (``shutdown(SHUT_WR)``).
_PEER_FIN_STATES = frozenset({8, 9, 11})
#: ``tcpi_state`` when the peer reset the connection (CLOSE): it can read no ack.
_TCP_CLOSE = 7
#: Offset and size of ``tcpi_last_data_recv`` (ms since the last data segment was received) in
#: ``struct tcp_info``: after 8 one-byte fields and 11 ``__u32`` (rto ... last_ack_sent).
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 52

#: A client that closed its side with a FIN is taken as having given up on its messages only
#: when their data reached this host at least this long ago: the aggregator was stalled
#: (stopped, paused, swapping, a hung fsync) while the data waited in its socket. A client that
#: gives up has waited its ack timeout since sending (Fluentd's ack_response_timeout 190 s), so
#: its data is far older than this when the stalled process reads it; a client that half-closes
#: right after sending and then reads its acks (``nc -N``, scripts, proxies that pass a
#: half-close on) sent its data moments before, and a serving aggregator reads it within
#: milliseconds. 2 s leaves room for a loaded aggregator (a busy event loop, reads paused by
#: backpressure) without dropping such a client's messages. It is a guess about the client's
#: ack timeout, and a client giving up sooner has its lines stored twice; logq-shipper, whose
#: ``--ack-timeout`` goes down to 0.1 s, resets the connections it gives up on instead (see
#: :func:`shipper.sender.reset_connection`), which this tells exactly.
GIVEN_UP_AFTER_S = 2.0


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    """Whether the client has given up on the connection, which its kernel told ours (FIN or
    RST) even while this process was stopped and before the bytes it sent earlier are read:
    asked of the socket's TCP state, not of the stream (whose end-of-file comes only after every
    byte before it was read). A reset connection has (logq-shipper resets the connections it
    gives up on); one the client closed (or half-closed) has only when its last data arrived
    :data:`GIVEN_UP_AFTER_S` ago or more: a stall, past which it gave up waiting for the acks.
    A client that half-closes right after sending waits for its acks. Clients that ask for acks
    (logq-shipper, Fluent Bit, Fluentd's out_forward with ``require_ack_response``) keep the
    connection open until the ack comes or they give up. False when it cannot be told (no
    ``TCP_INFO``: not Linux)."""
    if writer.is_closing():  # TLS: the transport closes when the peer's close_notify comes
        return True
    size = _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size
    info = _tcp_info(writer, size)
    if not info:
        return False
    if info[0] == _TCP_CLOSE:
        return True
    if info[0] not in _PEER_FIN_STATES or len(info) < size:
        return False
    (idle_ms,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_OFFSET)
    return idle_ms >= GIVEN_UP_AFTER_S * 1000


#: Offset and size of ``tcpi_bytes_acked`` (bytes of ours the peer's TCP acknowledged, Linux
#: 4.1+) in ``struct tcp_info``: after the fields :data:`_LAST_DATA_RECV_OFFSET` counts, 13 more
#: ``__u32`` (last_data_recv ... total_retrans) and two ``__u64`` (the pacing rates).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120


async def _release(writer: asyncio.StreamWriter, limit: float) -> None:
    """Close a connection, and drop its socket once its client stops taking its last bytes.

    The close first hands what is still queued (acks) to the client and, with TLS, sends
    close_notify and waits for the client's. A client that closed answers at once; one that is
    gone or does not read (an idle timeout, a protocol error) would hold the socket for
    asyncio's 30 s SSL shutdown timeout (plain TCP: for ever), so once it has taken nothing for
    :data:`CLOSE_GRACE_SECONDS` the socket is dropped (abort). A client that reads its acks
    slowly (its kernel buffers full, the rest queued here) is not cut off while it makes
    progress: an ack dropped then would have its chunk resent, stored twice if it goes to
    another aggregator (this one stopping). ``limit`` bounds that; a cancelled wait (the stop
    past its grace) drops the socket too."""
    if not writer.is_closing():  # a second close() of a TLS transport would make abort() a no-op
        writer.close()
    closed = asyncio.ensure_future(writer.wait_closed())
    give_up = time.monotonic() + limit
    try:
        seen = _delivery(writer)
        while not (await asyncio.wait((closed,), timeout=CLOSE_GRACE_SECONDS))[0]:
            now = _delivery(writer)
            if now == seen or time.monotonic() >= give_up:
                writer.transport.abort()
                return
            seen = now
        with contextlib.suppress(Exception):  # the error that ended it (a reset): it is closed
            closed.result()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    finally:
        closed.cancel()


def _delivery(writer: asyncio.StreamWriter) -> tuple[int, int]:
    """How far a closing connection's last bytes got: the bytes its client's TCP acknowledged
    (``TCP_INFO``, 0 where it cannot be told) and those asyncio still holds. They change only
    while the client takes them (once the kernel buffers are full, while it reads)."""
    size = _BYTES_ACKED_OFFSET + _BYTES_ACKED.size
    info = _tcp_info(writer, size)
    acked = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0] if len(info) >= size else 0
    return acked, writer.transport.get_write_buffer_size()


def _tcp_info(writer: asyncio.StreamWriter, size: int) -> bytes:
    """The first ``size`` bytes of the connection's Linux ``struct tcp_info`` (fewer from an
    older kernel), or none where it cannot be asked (not Linux, the socket closed)."""
    sock = writer.get_extra_info("socket")
    tcp_info = getattr(socket, "TCP_INFO", None)
    if sock is None or tcp_info is None:
        return b""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, tcp_info, size)
    except OSError:
        return b""


def _fit(conn: _Conn, data: bytes | memoryview, room: int) -> bytes | memoryview:
    """``data``, or its first ``room`` bytes (one at least: a message that fills the room alone
    is over the limit, which the next byte tells) with the rest kept in :attr:`_Conn.unfed`."""
    if len(data) <= room:
        return data
    view = memoryview(data)
    room = max(room, 1)
    conn.unfed = view[room:]
    return view[:room]


def _kept_since(conn: _Conn, offset: int) -> list[bytes | memoryview]:
    """The bytes of :attr:`_Conn.kept` from stream ``offset`` on, piece by piece."""
    pieces: list[bytes | memoryview] = []
    at = conn.kept_from
    for piece in conn.kept:
        end = at + len(piece)
        if end > offset:
            pieces.append(piece if at >= offset else memoryview(piece)[offset - at :])
        at = end
    return pieces


def _keep_unfinished(conn: _Conn) -> None:
    """Keep in :attr:`_Conn.kept` only the unfinished message's bytes (none between messages,
    the usual case), copied out of a read that held more: not the whole read for its tail.
    None of them when more than :data:`KEPT_UNPARSED_BYTES` are not parsed yet (the unpacker
    holds those: they would be held twice); the next reads are kept from their start."""
    unpacker = conn.unpacker
    if unpacker is not None and conn.fed - unpacker.tell() > KEPT_UNPARSED_BYTES:
        conn.kept = []
        conn.kept_from = conn.fed
        return
    pieces = _kept_since(conn, conn.boundary)
    conn.kept = [p if isinstance(p, bytes) else bytes(p) for p in pieces]
    conn.kept_from = max(conn.kept_from, conn.boundary)  # (past it: dropped, see above)


def _note_partial(conn: _Conn, partial: bool) -> None:
    """Note when an unfinished message started arriving (cleared once none is pending)."""
    if not partial:
        conn.partial_since = None
    elif conn.partial_since is None:
        conn.partial_since = time.monotonic()


#: Parses of an unfinished JSON message (each from its start) stop once they add up to this
#: many times its size, plus the slack; then only its completion triggers one (``_serve_json``).
JSON_REPARSE_FACTOR = 8
JSON_REPARSE_SLACK = 1024 * 1024
#: Deepest JSON nesting accepted (a Forward message needs ~5 levels; the json module recurses).
MAX_JSON_DEPTH = 256
_JSON_SIGNIFICANT = re.compile(rb'["\\\[\]{},]')
_QUOTE, _BACKSLASH, _COMMA, _OPENERS, _CLOSERS = ord('"'), ord("\\"), ord(","), b"[{", b"]}"


class _JsonScanner:
    """Follows the nesting of JSON text read so far, without parsing it: ``complete`` turns
    True when a top-level value closes. Only ASCII bytes matter, so UTF-8 can be scanned as
    bytes; the state carries over between reads (an escape may be split by one).

    It also counts a message's values (commas and containers outside strings, at least as many
    as the objects the json module would build) and refuses a message over ``max_values``
    before it is parsed: the msgpack object budget, for JSON (``[[],[],…]`` is 3 bytes a list)."""

    def __init__(self, max_values: int = wire.MAX_MESSAGE_OBJECTS) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.complete = False
        self.values = 0
        self.max_values = max_values

    def feed(self, data: bytes) -> None:
        pos = 0
        if self.escaped and data:
            self.escaped, pos = False, 1
        while (match := _JSON_SIGNIFICANT.search(data, pos)) is not None:
            at = match.start()
            char = data[at]
            pos = at + 1
            if self.in_string:
                if char == _BACKSLASH:
                    if pos == len(data):
                        self.escaped = True
                    pos += 1
                elif char == _QUOTE:
                    self.in_string = False
            elif char == _QUOTE:
                self.in_string = True
            elif char == _COMMA:
                self._count()
            elif char in _OPENERS:
                if self.depth == 0:
                    self.values = 0  # a new message
                self._count()
                self.depth += 1
                if self.depth > MAX_JSON_DEPTH:
                    raise ConnectionClosed(
                        "not the Forward protocol: JSON message nested too deeply", "protocol_error"
                    )
            elif char in _CLOSERS and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.complete = True

    def _count(self) -> None:
        self.values += 1
        if self.values > self.max_values:
            raise ConnectionClosed(
                f"not the Forward protocol: JSON message of more than {self.max_values:,} values "
                "(the per-message limit)",
                "protocol_error",
            )


#: An error this close to the end of the text read so far may be a token cut by the read.
_JSON_TOKEN_CHARS = 64


def _json_messages(pending: bytes, unfinished: bool = True) -> tuple[list[Any], bytes]:
    """The complete JSON messages at the start of ``pending``, and the bytes after them.

    ``unfinished``: the text ends inside a message (the scanner's view), so an error near its
    end may be a token the read cut; when every bracket is closed, an error is an error."""
    decoder = json.JSONDecoder()
    try:
        text = pending.decode("utf-8")
        tail = b""
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":
            raise ConnectionClosed(
                "not the Forward protocol: JSON text that is not UTF-8", "protocol_error"
            ) from None
        text, tail = pending[: exc.start].decode("utf-8"), pending[exc.start :]
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return out, tail
        if text[pos] != "[":
            raise ConnectionClosed(
                f"not the Forward protocol: a JSON message is an array, got {text[pos]!r}",
                "protocol_error",
            )
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except RecursionError:  # "[[[[…" 1000 deep: the json module parses recursively
            raise ConnectionClosed(
                "not the Forward protocol: JSON message nested too deeply", "protocol_error"
            ) from None
        except json.JSONDecodeError as exc:
            cut = unfinished and exc.pos >= len(text) - _JSON_TOKEN_CHARS
            if cut or exc.pos >= len(text) or exc.msg.startswith("Unterminated"):
                # The rest has not arrived yet: the read ended inside a number (``23953.``), a
                # word (``tr``) or an escape (``\u00``), which fails just before the end.
                return out, text[pos:].encode("utf-8") + tail
            raise ConnectionClosed(
                f"not the Forward protocol: bad JSON message ({exc.msg})", "protocol_error"
            ) from None
        except ValueError as exc:  # an integer of over 4,300 digits (sys.get_int_max_str_digits)
            raise ConnectionClosed(
                # Not its advice to call sys.set_int_max_str_digits(): the sender is wrong.
                f"not the Forward protocol: a JSON value that cannot be read "
                f"({str(exc).split(';')[0]})",
                "protocol_error",
            ) from None
        out.append(obj)


def _json_ack(chunk: str) -> bytes:
    return json.dumps({"ack": chunk}).encode("utf-8")


def _buffer_error(exc: BaseException) -> ConnectionClosed:
    todo = fd_limit_hint(exc) or "free space under --buffer-dir"
    return ConnectionClosed(
        f"could not write to the buffer ({exc}); nothing after this was acknowledged and the "
        f"client will resend it: {todo}",
        "buffer_error",
    )


def _host(peer: str) -> str:
    """The host of a :func:`_peer` ``host:port``."""
    return peer.rsplit(":", 1)[0]


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
