"""The least size an unfinished msgpack message declares, read from its headers as it arrives.

The server feeds a connection's bytes to a streaming unpacker, which builds a message only once
all of it is there, and msgpack checks a ``str``, ``bin`` or ``ext`` length against its limit
only then: a message whose header declares a 100 MB ``bin`` (or a ``str`` that size in a
record) was read until ``--max-frame-bytes`` of it filled the unpacker, or until
``--idle-timeout`` ran out waiting for bytes that never came. Each header tells a least size:
the bytes before it, its payload, and one byte at least for every element still to come of the
arrays and maps around it. :class:`DeclaredSize` walks the headers of the message being
received and tells that size, so that one over the limit is refused as soon as its header is
read.

Cheap on the hot path: the server walks only the unfinished message at the end of a read (the
messages completed in it are not walked), a payload is skipped without reading it (a
PackedForward message is four headers, then its blob), and at most :data:`MAX_HEADERS` headers
per message are read: a Forward-mode message of many small entries is followed that far only,
then left to the unpacker's own limit, as before.
"""

from __future__ import annotations

#: Headers read per message at most: a Message-mode record or the first entries of a
#: Forward-mode message, their strings and maps. A header that declares too much later in a
#: message is caught by the unpacker's buffer limit instead (``msgpack.BufferFull``).
MAX_HEADERS = 256

#: First byte -> (length bytes, other header bytes, what the length counts) of the msgpack
#: formats whose header carries a length: ``raw`` payload bytes (str, bin, ext: the ext's type
#: byte is the other header byte), ``array`` elements, ``map`` pairs.
_SIZED: dict[int, tuple[int, int, str]] = {
    0xC4: (1, 0, "raw"),  # bin 8
    0xC5: (2, 0, "raw"),  # bin 16
    0xC6: (4, 0, "raw"),  # bin 32
    0xC7: (1, 1, "raw"),  # ext 8
    0xC8: (2, 1, "raw"),  # ext 16
    0xC9: (4, 1, "raw"),  # ext 32
    0xD9: (1, 0, "raw"),  # str 8
    0xDA: (2, 0, "raw"),  # str 16
    0xDB: (4, 0, "raw"),  # str 32
    0xDC: (2, 0, "array"),  # array 16
    0xDD: (4, 0, "array"),  # array 32
    0xDE: (2, 0, "map"),  # map 16
    0xDF: (4, 0, "map"),  # map 32
}
#: First byte -> payload bytes of the fixed-size formats (numbers, fixext: type byte and data).
_FIXED = {
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
    0xD4: 2,
    0xD5: 3,
    0xD6: 5,
    0xD7: 9,
    0xD8: 17,
}
_WORDS = {
    "raw": ("a str, bin or ext", "bytes"),
    "array": ("an array", "elements"),
    "map": ("a map", "pairs"),
}
_NEVER_USED = 0xC1
#: Header bytes at most (an ext 32: first byte, four length bytes, the type byte).
_LONGEST_HEADER = 6


class DeclaredSize:
    """The headers of one message, walked as its bytes arrive (:meth:`feed`), and the least
    size they declare (:meth:`least_size`), in bytes from the message's first byte.

    Kept per connection by the server while a message is unfinished; ``start`` is the stream
    offset of its first byte, so that the server can tell a new message (another start) and
    hand over only the bytes not walked yet (:attr:`next_offset`)."""

    __slots__ = (
        "_most",
        "at",
        "done",
        "head",
        "headers",
        "largest",
        "left",
        "skip",
        "start",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.at = start
        """Stream offset up to which the message is walked (a split header's bytes excepted)."""
        self.skip = 0
        """Bytes still to come of the payload of the last header."""
        self.left = [1]
        """Per open array or map, innermost last: its elements still to come (the message
        itself, first); each is a byte at least."""
        self.head = b""
        """The first bytes of a header that a read split."""
        self.headers = 0
        self.largest = ""
        """The header that declares the most, as words (``a bin of 100,000,000 bytes``)."""
        self.done = False
        """Nothing more to learn: the message's last header is read, the headers allowed
        (:data:`MAX_HEADERS`) are, or a byte no msgpack starts with came (the unpacker
        refuses it)."""
        self._most = 0

    @property
    def next_offset(self) -> int:
        """Stream offset of the first byte not handed to :meth:`feed` yet."""
        return self.at + len(self.head)

    def least_size(self) -> int:
        """Bytes the message holds at least, by the headers walked so far."""
        return self.at - self.start + self.skip + sum(self.left)

    def feed(self, data: bytes, offset: int = 0) -> None:
        """Walk ``data[offset:]``: the message's next bytes, from :attr:`next_offset` on."""
        if self.done or offset >= len(data):
            return
        if self.head:  # a header split by the last read (a few bytes; rare)
            joined = self.head + bytes(data[offset : offset + _LONGEST_HEADER])
            size = self._header(joined, 0)
            if size is None:  # still not whole: the read was shorter than the header
                self.head = joined
                return
            offset += size - len(self.head)
            self.at += size
            self.head = b""
        self.at += self._walk(data, offset) - offset

    def _walk(self, data: bytes, i: int) -> int:
        """Walk ``data`` from ``i``; the offset reached (a split header is kept in ``head``)."""
        n = len(data)
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            if self.done or not self.left or self.headers >= MAX_HEADERS:
                self.done = True
                return i
            header = self._header(data, i)
            if header is None:
                self.head = bytes(data[i:])
                return i
            i += header
        return i

    def _header(self, data: bytes, i: int) -> int | None:
        """Read the header at ``data[i]``: its length (None: not all of it is there)."""
        first = data[i]
        size, count, payload = 1, 0, 0
        if 0x80 <= first <= 0x8F:
            count = 2 * (first & 0x0F)
        elif 0x90 <= first <= 0x9F:
            count = first & 0x0F
        elif 0xA0 <= first <= 0xBF:
            payload = first & 0x1F
        elif first in _FIXED:
            payload = _FIXED[first]
        elif first in _SIZED:
            width, extra, kind = _SIZED[first]
            size = 1 + width + extra
            if i + size > len(data):
                return None
            length = int.from_bytes(data[i + 1 : i + 1 + width], "big")
            if kind == "raw":
                payload = length
            else:
                count = 2 * length if kind == "map" else length
            self._note(kind, length, count or payload)
        elif first == _NEVER_USED:
            self.done = True
            return 1
        self.headers += 1
        self.left[-1] -= 1
        if count:
            self.left.append(count)
        else:
            while self.left and not self.left[-1]:
                self.left.pop()
        self.skip = payload
        return size

    def _note(self, kind: str, length: int, declared: int) -> None:
        """Remember the header that declares the most, for the refusal's words."""
        if declared > self._most:
            self._most = declared
            what, unit = _WORDS[kind]
            self.largest = f"{what} of {length:,} {unit}"
