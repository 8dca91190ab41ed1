"""A Forward protocol receiver for the shipper's tests: decodes with shipper.wire and acks.

It runs its own asyncio loop in a thread, binds 127.0.0.1 on a free port, and behaves like an
aggregator as far as the shipper can tell: acks ``chunk`` options (optionally only after a delay,
or never, or by closing the connection), runs the shared-key handshake, speaks TLS, and drops
records whose offset is not above the highest stored for their ``source_id`` -- the aggregator's
dedup rule -- while counting them, so tests can assert exactly-once delivery.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections import defaultdict
from typing import Any

from shipper import wire


class Receiver:
    def __init__(
        self,
        *,
        shared_key: str | None = None,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
        drop_first: int = 0,
        ack: bool = True,
        ack_delay: float = 0.0,
        ack_first: int | None = None,
        reject_reason: str = "shared_key mismatch",
    ) -> None:
        self.shared_key = shared_key
        self.reject_reason = reject_reason
        """The reason its PONG gives for a wrong key (a hostile server's can be anything)."""
        self.tls = tls
        self.drop_first = drop_first
        """Close the connection instead of acking the first N messages."""
        self.ack = ack
        self.ack_delay = ack_delay
        """Seconds to wait before each ack (a slow aggregator)."""
        self.ack_first = ack_first
        """Ack only the first N messages; later ones are stored and their acks lost (None: no
        limit). Decided here, as each message comes, not by a test racing the shipper."""
        self.chunks: list[list[str]] = []
        """The log texts of each message, in the order they came (resends included)."""
        self.records: list[tuple[str, int, dict[str, Any]]] = []
        self.duplicates = 0
        self.messages = 0
        self.sizes: list[int] = []
        """The bytes of each message on the wire, in the order they came (resends included)."""
        self.options: list[dict[str, Any]] = []
        self.handshake_failures = 0
        self.high: dict[str, int] = defaultdict(lambda: -1)
        self._lock = threading.Lock()
        self._tasks: set[Any] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self, port: int) -> int:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", port, ssl=self.tls, backlog=128
        )
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = wire.new_unpacker()
        self._tasks.add(asyncio.current_task())
        try:
            if self.shared_key is not None and not await self._handshake(reader, writer, unpacker):
                return
            at = unpacker.tell()
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                unpacker.feed(data)
                for obj in wire.iter_messages(unpacker):
                    msg = wire.decode_message(obj)
                    size, at = unpacker.tell() - at, unpacker.tell()
                    with self._lock:
                        self.messages += 1
                        self.sizes.append(size)
                        if self.drop_first > 0:
                            self.drop_first -= 1
                            writer.close()
                            return
                        self.options.append(msg.options)
                        self.chunks.append([str(ev.record.get(wire.KEY_LOG)) for ev in msg.events])
                        acking = self.ack_first is None or len(self.chunks) <= self.ack_first
                        for ev in msg.events:
                            sid = ev.record.get(wire.KEY_SOURCE_ID)
                            off = ev.record.get(wire.KEY_OFFSET)
                            if sid is not None and off is not None:
                                if off <= self.high[sid]:
                                    self.duplicates += 1
                                    continue
                                self.high[sid] = off
                            self.records.append((ev.tag, ev.time_ns, ev.record))
                    if msg.chunk and self.ack and acking:
                        if self.ack_delay:
                            await asyncio.sleep(self.ack_delay)
                        writer.write(wire.encode_ack(msg.chunk))
                        await writer.drain()
        except (ConnectionError, wire.ProtocolError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def _handshake(self, reader: Any, writer: Any, unpacker: Any) -> bool:
        nonce = os.urandom(16)
        writer.write(wire.encode_helo(nonce))
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                return False
            unpacker.feed(data)
            objs = list(wire.iter_messages(unpacker))
            if objs:
                break
        ping = objs[0]
        _, client_host, salt, digest = ping[:4]
        salt_b = salt if isinstance(salt, bytes) else salt.encode("utf-8", "surrogateescape")
        ok = digest == wire.ping_digest(salt_b, client_host, nonce, self.shared_key or "")
        server_host = "receiver"
        if not ok:
            self.handshake_failures += 1
            writer.write(wire.encode_pong(False, self.reject_reason, server_host, b"", nonce, ""))
            await writer.drain()
            return False
        writer.write(wire.encode_pong(True, "", server_host, salt_b, nonce, self.shared_key or ""))
        await writer.drain()
        return True

    def lines(self, source_key: str | None = None) -> list[str]:
        with self._lock:
            return [r[wire.KEY_LOG] for _, _, r in self.records]

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= n:
                    return
            time.sleep(0.05)
        raise AssertionError(f"expected {n} records, got {len(self.records)}")

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
