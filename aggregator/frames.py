"""Checksummed frames: the record format of buffer segments and of the offsets journal.

A frame is ``[u32 length][u32 crc32][payload]`` (big-endian). Both files are only appended to,
each append fsync'd before anyone relies on it, so a crash can leave one torn frame at the end:
reading stops there. A frame whose checksum fails but which is followed by a valid frame was
written and fsync'd before those: the disk damaged it. It is reported (``on_damage``) and skipped,
and the frames after it are kept.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

HEADER = struct.Struct(">II")


def encode_frame(payload: bytes) -> bytes:
    return frame_header(payload) + payload


def frame_header(payload: bytes) -> bytes:
    """The ``[length][crc32]`` that starts the frame of ``payload`` (zlib's checksum of a big
    payload releases the GIL: a worker thread can make it)."""
    return HEADER.pack(len(payload), zlib.crc32(payload))


@dataclass
class Scan:
    """Where reading ended: the end of the last whole frame (a torn tail starts there)."""

    end: int = 0


def scan_frames(
    fh: BinaryIO, size: int, scan: Scan, on_damage: Callable[[int, int], None]
) -> Iterator[bytes]:
    """The good payloads of the ``size`` bytes of ``fh``, read from its start, frame by frame
    (a caller holds one at a time, never the file). A damaged frame followed by a valid one is
    passed to ``on_damage(offset, frame bytes)`` and skipped; ``scan.end`` tells where the last
    whole frame ended, so a caller can report or cut off a torn tail."""
    pos = 0
    fh.seek(0)
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack(fh.read(HEADER.size))
        if length > size - pos - HEADER.size:
            break  # torn: the frame claims more bytes than the file holds
        payload = fh.read(length)
        end = pos + HEADER.size + length
        if zlib.crc32(payload) != crc:
            if not _valid_frame_at(fh, end, size):
                break
            on_damage(pos, end - pos)
        else:
            yield payload
        pos = scan.end = end


def _valid_frame_at(fh: BinaryIO, at: int, size: int) -> bool:
    """Whether a whole frame with a good checksum starts at ``at``; ``fh`` is left there."""
    fh.seek(at)
    try:
        if at + HEADER.size > size:
            return False
        length, crc = HEADER.unpack(fh.read(HEADER.size))
        return length <= size - at - HEADER.size and zlib.crc32(fh.read(length)) == crc
    finally:
        fh.seek(at)
