"""One budget for the bytes of Forward messages in flight on all connections.

Why: a message costs memory from its first byte read until it is durable (appended to the
buffer and fsync'd): its bytes sit in the connection's unpacker, then the decoded message
exists while it is stored. Without a budget shared by all connections, N clients sending at
once (a reconnect rush after a restart: each Fluent Bit connection brings a ~2 MB chunk) cost
N times that, whatever the limits per connection. With it, past ``limit`` bytes in flight a
connection reads nothing more from its socket (TCP pushes back on its client) until bytes are
released, in turn.

The rules, which keep every connection moving:

* **In turn.** Readers wait in one queue, served in ticket order: a ticket is taken when a
  connection's message begins, so a message already arriving goes before one not begun yet,
  and earlier messages before later ones (no connection is starved by a busier one).
* **The oldest message always proceeds.** The connection whose message began first among all
  messages in flight is granted even past the limit: it can always finish, so a message larger
  than the whole budget still gets in (alone), and half-received messages filling the budget
  never wait on each other. The limit may thus be passed by one message and one read (plus
  the first reads below).
* **An idle connection holds nothing.** A connection between messages waits for room before it
  reads, but is not charged while it waits for its client: only the bytes it gets are
  (:meth:`Share.take`), so idle keep-alive connections never block the others. That first read
  is small (``first_read`` bytes) so that connections receiving at the same moment pass the
  limit by little.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field


@dataclass(eq=False)
class Share:
    """What one connection holds of an :class:`InflightBytes` budget."""

    budget: InflightBytes
    held: int = 0
    """Bytes read from the socket and not yet released (durable, or dropped)."""
    ticket: int | None = None
    """Order of the message this connection is receiving; None between messages."""
    _wanted: int = 0
    _hold: bool = False
    _grant: asyncio.Future[None] | None = field(default=None, repr=False)

    async def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes for the next read of a message that has begun, waiting for
        this connection's turn; :meth:`give_back` what the read did not fill. True when it had
        to wait (the caller's clocks for slow clients should not count our pause)."""
        return await self.budget._admit(self, size, hold=True)

    async def wait_for_room(self) -> bool:
        """Wait, in turn, until a first read (``budget.first_read`` bytes) would fit, holding
        nothing: for a connection between messages, which may then wait long for its
        client's next one. True when it had to wait."""
        try:
            return await self.budget._admit(self, self.budget.first_read, hold=False)
        finally:
            self.ticket = None  # taken again when bytes arrive (take)
            self.budget._wake()

    def take(self, size: int) -> None:
        """Charge ``size`` bytes read without a reservation (a first read, or bytes read ahead):
        they may pass the limit by that much."""
        if size <= 0:
            return
        if self.ticket is None:
            self.ticket = self.budget._next_ticket()
        self.budget._charge(self, size)

    def give_back(self, size: int) -> None:
        """Release ``size`` reserved bytes that a read did not fill."""
        self._release(min(size, self.held))

    def keep(self, unfinished: int) -> None:
        """The messages read so far are durable (or were refused): keep only the ``unfinished``
        bytes of a message still arriving and release the rest."""
        self._release(max(0, self.held - unfinished))
        if self.held == 0 and self.ticket is not None:
            self.ticket = None
            self.budget._wake()  # the oldest message may have changed

    def close(self) -> None:
        """The connection ended: release everything and leave the queue."""
        self.budget._leave(self)
        self.ticket = None
        self._release(self.held)
        self.budget._wake()

    def _release(self, size: int) -> None:
        if size > 0:
            self.held -= size
            self.budget.used -= size
            self.budget._wake()


class InflightBytes:
    """The budget shared by all connections of a server (see the module docstring)."""

    def __init__(self, limit: int, first_read: int) -> None:
        if limit <= 0:
            raise ValueError(f"the in-flight budget must be positive, got {limit}")
        self.limit = limit
        self.first_read = first_read
        """Size of the read of a connection between messages (charged, not reserved)."""
        self.used = 0
        self.peak = 0
        """Most bytes ever in flight at once (for tests and figures)."""
        self._tickets = 0
        self._shares: set[Share] = set()
        self._queue: list[Share] = []
        """Waiting shares, in ticket order."""

    @property
    def waiting(self) -> int:
        """Connections waiting for their turn to read."""
        return len(self._queue)

    def share(self) -> Share:
        """A connection's share (close it when the connection ends)."""
        share = Share(self)
        self._shares.add(share)
        return share

    def _next_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    async def _admit(self, share: Share, size: int, hold: bool) -> bool:
        if share.ticket is None:
            share.ticket = self._next_ticket()
        share._wanted, share._hold = size, hold
        grant = share._grant = asyncio.get_running_loop().create_future()
        bisect.insort(self._queue, share, key=_ticket)
        self._wake()  # granted at once if it is first in line and may go
        try:
            if grant.done():
                return False
            await grant
        except BaseException:  # cancelled: the connection is closing
            if share in self._queue:
                self._queue.remove(share)
                self._wake()
            raise
        finally:
            share._grant = None
        return True

    def _grantable(self, share: Share) -> bool:
        if self.used + share._wanted <= self.limit:
            return True
        oldest = min((s.ticket for s in self._shares if s.ticket is not None), default=None)
        return share.ticket == oldest

    def _allot(self, share: Share) -> None:
        """Let ``share`` read; a reservation is charged at once, so that the next in line is
        judged on what will be in flight."""
        if share._hold:
            self._charge(share, share._wanted)

    def _charge(self, share: Share, size: int) -> None:
        share.held += size
        self.used += size
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        """Grant the waiting shares, in ticket order, while the first one may go."""
        while self._queue and self._grantable(self._queue[0]):
            share = self._queue.pop(0)
            self._allot(share)
            if share._grant is not None and not share._grant.done():
                share._grant.set_result(None)

    def _leave(self, share: Share) -> None:
        self._shares.discard(share)
        if share in self._queue:
            self._queue.remove(share)
            if share._grant is not None and not share._grant.done():
                share._grant.cancel()


def _ticket(share: Share) -> int:
    return share.ticket if share.ticket is not None else 0
