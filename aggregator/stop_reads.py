"""What a Forward connection still reads once the stop's drain window has ended.

A graceful stop (:meth:`aggregator.server.ForwardServer.stop`) lets connections read on for
``STOP_DRAIN_SECONDS``: clients that never ask for acks (fluent-logger, Fluent Bit or Fluentd
without ``require_ack_response``) cannot resend what they already wrote, so every message that
reached this aggregator's socket by then must be read, made durable and flushed. A connection
busy at that moment (waiting for the buffer's fsync of an earlier message, for the in-flight
budget) used to leave the loop when it came back, unread bytes and all: those messages were
lost. Each connection's reader now counts the bytes it received; the end of the window *cuts*
it at what had arrived by then (in its buffer, and in the kernel's receive queue too), and from
there it hands out those bytes and then an end of stream, without waiting for more: a client
that keeps streaming does not hold the stop open.

Over TLS the kernel's queue is ciphertext, whose plaintext length is known only once it is
deciphered: the cut lets the TLS layer pull exactly the ciphertext queued at the cut (no byte
more, :class:`_CountedPulls`), and ends the stream at what that deciphered to.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any


class CutReader(asyncio.StreamReader):
    """A StreamReader that can be cut (:meth:`cut`): from then on, it gives the bytes that had
    arrived by the cut, then ``b""`` (end of stream), never waiting for bytes sent later.
    Only :meth:`read` is counted and cut: the Forward server reads with nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        """Bytes the transport gave this reader (plaintext, with TLS)."""
        self.taken = 0
        """Bytes read from it."""
        self.end: int | None = None
        """Stream offset where reading stops (None: not cut, or over TLS, not known yet)."""
        self._cut = False
        self._ended = False
        """Whether the end of stream was fed at the cut: later bytes are dropped."""
        self._transport_below: asyncio.BaseTransport | None = None
        self._socket: Any = None

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        # The TCP transport and socket: StreamWriter.start_tls puts TLS above them, not here.
        self._transport_below = transport
        self._socket = transport.get_extra_info("socket")

    def feed_data(self, data: bytes) -> None:
        if self._ended:  # sent after the cut, never read: keep no copy
            return
        self.received += len(data)
        super().feed_data(data)

    async def read(self, n: int = -1) -> bytes:
        if n < 0:  # asyncio reads it as a loop of read(limit): each is counted and cut there
            return await super().read(n)
        if self.end is not None:
            n = min(n, self.end - self.taken)
            if n <= 0:
                return b""
        data = await super().read(n)
        if self.end is not None and len(data) > self.end - self.taken:
            # Cut while this read waited: the socket read that woke it may have brought bytes
            # from after the cut too (the rest of the TLS record, or later data): never read.
            data = data[: max(self.end - self.taken, 0)]
        self.taken += len(data)
        return data

    def cut(self, tls: bool, *, handshake_done: bool = True) -> bool:
        """Stop reading at what has arrived so far; whether some of it is still to be read.

        That includes the kernel's receive queue (the transport stops pulling from it while
        this reader's buffer is full): those bytes reached this host and come in a moment.
        Over TLS (``tls`` with ``handshake_done``) the queue is ciphertext: the end is set
        once it is pulled and deciphered (:meth:`_ciphertext_pulled`). A TLS record only
        partly queued is not deciphered: its plaintext needs bytes that came after the cut,
        as a message only partly arrived over plain TCP. During the handshake (or where the
        TLS layer cannot be counted) only what was deciphered counts."""
        if not self._cut:
            self._cut = True
            queued = _kernel_queue(self._socket) if not tls or handshake_done else 0
            if not tls:
                self.end = self.received + queued
            elif not (queued and self._pull_ciphertext(queued)):
                self.end = self.received
        return self.end is None or self.end > self.taken

    def _pull_ciphertext(self, queued: int) -> bool:
        """Let the TLS layer below this reader pull the ``queued`` bytes of ciphertext and no
        more; whether it could be set up (not on a transport of another kind)."""
        below = self._transport_below
        if below is None or below.is_closing():
            return False
        tls = below.get_protocol()
        if not isinstance(tls, asyncio.BufferedProtocol):  # uvloop's, say: not counted
            return False
        below.set_protocol(_CountedPulls(below, tls, queued, self._ciphertext_pulled))
        return True

    def _ciphertext_pulled(self) -> None:
        """The ciphertext queued at the cut is deciphered: what it gave is the rest to read.
        With nothing left, a read waiting for bytes gets the end of stream now."""
        if self.end is None:
            self.end = self.received
            if self.end <= self.taken:
                self._ended = True
                self.feed_eof()


class _CountedPulls(asyncio.BufferedProtocol):
    """Stands between a TCP transport and the TLS protocol above it after a cut, until that
    protocol has been given ``left`` more bytes: each socket read is capped at what is left,
    so no byte sent after the cut is deciphered with the ones before it (a read takes up to
    256 KiB, and the TLS layer hands the plaintext of one read over at once). Then it puts
    the TLS protocol back and calls ``pulled``. Installed only by a stop's cut: the normal
    reads of a connection pass through nothing."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        tls: asyncio.BufferedProtocol,
        left: int,
        pulled: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._tls = tls
        self._left = left
        self._pulled = pulled

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._tls.get_buffer(sizehint))[: self._left]

    def buffer_updated(self, nbytes: int) -> None:
        self._left -= nbytes
        self._tls.buffer_updated(nbytes)  # deciphers the complete records: to the reader
        if self._left <= 0:
            self._done()

    def _done(self) -> None:
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._tls)
        self._pulled()

    def eof_received(self) -> bool | None:
        return self._tls.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tls.connection_lost(exc)
        self._done()  # the stream has ended (or failed) in the reader already

    def pause_writing(self) -> None:
        self._tls.pause_writing()

    def resume_writing(self) -> None:
        self._tls.resume_writing()


def _kernel_queue(sock: Any) -> int:
    """Bytes waiting in ``sock``'s kernel receive queue (``FIONREAD``); 0 when unknown.
    It never counts a byte that is not there: only in-order bytes, without the FIN."""
    try:
        import fcntl  # not on Windows
        import termios

        fd = sock.fileno()
        if fd < 0:
            return 0
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0])
    except (ImportError, AttributeError, OSError, ValueError):
        return 0
