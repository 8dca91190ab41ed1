"""What a Forward connection still reads once the stop's drain window has ended.

A graceful stop (:meth:`aggregator.server.ForwardServer.stop`) lets connections read on for
``STOP_DRAIN_SECONDS``: clients that never ask for acks (fluent-logger, Fluent Bit or Fluentd
without ``require_ack_response``) cannot resend what they already wrote, so every message that
reached this aggregator's socket by then must be read, made durable and flushed. A connection
busy at that moment (waiting for the buffer's fsync of an earlier message, for the in-flight
budget) used to leave the loop when it came back, unread bytes and all: those messages were
lost. Each connection's reader now counts the bytes it received; the end of the window *cuts*
it at what had arrived by then (in its buffer, and for plain TCP in the kernel's receive queue
too), and from there it hands out those bytes and then an end of stream, without waiting for
more: a client that keeps streaming does not hold the stop open.
"""

from __future__ import annotations

import asyncio
import struct
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
        """Stream offset where reading stops (None: not cut)."""
        self._socket: Any = None

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        self._socket = transport.get_extra_info("socket")  # the TCP socket, before any TLS

    def feed_data(self, data: bytes) -> None:
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
        self.taken += len(data)
        return data

    def cut(self, tls: bool) -> bool:
        """Stop reading at what has arrived so far; whether some of it is still to be read.
        With plain TCP that includes the kernel's receive queue (the transport stops pulling
        from it while this reader's buffer is full): those bytes reached this host and come in
        a moment. With TLS that queue is ciphertext, of another length: only what was
        deciphered counts (bytes queued behind a full buffer are not read)."""
        if self.end is None:
            self.end = self.received + (0 if tls else _kernel_queue(self._socket))
        return self.end > self.taken


def _kernel_queue(sock: Any) -> int:
    """Bytes waiting in ``sock``'s kernel receive queue (``FIONREAD``); 0 when unknown."""
    try:
        import fcntl  # not on Windows
        import termios

        fd = sock.fileno()
        if fd < 0:
            return 0
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0])
    except (ImportError, AttributeError, OSError, ValueError):
        return 0
