"""The msgpack bytes of one Forward entry, built as a line is parsed.

A PackedForward body is a concatenation of ``[EventTime, record]`` entries. Each record holds
four per-line keys (``log``, ``stream``, ``time``, ``offset``) and the keys shared by the whole
source (service, container, host...). The per-line part is packed right where the line is
parsed -- one ``struct`` call and one msgpack call per line -- and the shared part is appended
when the batch is encoded: ``shared.join(entries) + shared``. The record's map header counts both
parts, so a parser is told how many shared keys there will be.
"""

from __future__ import annotations

import re
import struct

import msgpack

from shipper import wire

PER_LINE_KEYS = 4
DEFAULT_SHARED_KEYS = 6
_HEAD = struct.Struct(">3sIIc")
_EVENT_TIME = b"\x92\xd7\x00"  # fixarray(2), fixext8 of type 0 (EventTime)
_SURROGATE = re.compile("[\ud800-\udfff]")


def map_header(shared_keys: int) -> bytes:
    """The record's map header byte for ``shared_keys`` + the per-line keys (< 16 in all)."""
    n = shared_keys + PER_LINE_KEYS
    if n >= 16:
        raise ValueError("too many record keys for a fixmap")
    return bytes([0x80 | n])


class EntryPacker:
    """Packs the per-line part of entries for records with ``shared_keys`` shared keys."""

    __slots__ = ("_head", "_mh", "_pack", "shared_keys")

    def __init__(self, shared_keys: int = DEFAULT_SHARED_KEYS) -> None:
        self.shared_keys = shared_keys
        self._mh = map_header(shared_keys)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._head = _HEAD.pack

    def pack(self, t_ns: int, log: str, stream: str, t: str, offset: int) -> bytes:
        sec, ns = divmod(t_ns, 1_000_000_000)
        kv = (wire.KEY_LOG, log, wire.KEY_STREAM, stream, wire.KEY_TIME, t, wire.KEY_OFFSET, offset)
        try:
            body = self._pack(kv)
        except UnicodeEncodeError:  # lone surrogates from JSON "\ud800" escapes
            body = self._pack(tuple(_clean(x) for x in kv))
        return self._head(_EVENT_TIME, sec, ns, self._mh) + body[1:]

    @property
    def raw(self) -> tuple:
        """(struct pack, map header, msgpack pack) for inlined hot loops."""
        return self._head, self._mh, self._pack


def _clean(value: object) -> object:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    return value


def pack_shared(shared: dict) -> bytes:
    """The shared keys of a source's records, packed once per batch."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return b"".join(pack(k) + pack(v) for k, v in shared.items())
