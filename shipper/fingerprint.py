"""How a log file is known whatever its name: the hash of its first line.

Rotation renames files and reuses inodes, and copytruncate keeps the inode while replacing the
content, so neither the path nor the inode alone says whether a file is the one a checkpoint
was taken in. Its first line does: it is part of the checkpoint key (see
:func:`shipper.checkpoint.file_key`), and it tells a copy of a file (plain or gzip-compressed)
from a file that only took its name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from shipper.regular import open_regular

FINGERPRINT_BYTES = 1024
TAIL_BYTES = 256
"""Bytes just before a checkpoint's position that its :func:`tail_hash` covers."""


def _fingerprint_bytes(head: bytes) -> str | None:
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def fingerprint(fd: int) -> str | None:
    """Hash of the file's first line (at most 1 KiB); None while that line is incomplete."""
    return _fingerprint_bytes(os.pread(fd, FINGERPRINT_BYTES, 0))


def tail_hash(fd: int, pos: int) -> str | None:
    """Hash of the (at most :data:`TAIL_BYTES`) bytes just before ``pos``; None at 0 or when
    the file no longer holds them all.

    The first line tells files apart only while it differs: a program that starts its log with
    a fixed banner writes the same first line into every file, and a file deleted and created
    again gets the inode just freed, so ``(device, inode, first line)`` names the old and the
    new content alike. The bytes just before a checkpoint's position were read and
    acknowledged: kept as a hash in the checkpoint, they tell at the next open whether that
    position still follows the same content (see :meth:`shipper.resume.Resume._verified`).
    """
    data = bytes_before(fd, pos) if pos > 0 else None
    if data is None:
        return None
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def bytes_before(fd: int, pos: int) -> bytes | None:
    """The (at most :data:`TAIL_BYTES`) bytes just before ``pos`` (empty at 0); None when the
    file no longer holds them all. What :func:`tail_hash` hashes; kept as they are by a
    cursor while it reads (see :meth:`shipper.cursor.Cursor.read_before`)."""
    start = max(pos - TAIL_BYTES, 0)
    data = os.pread(fd, pos - start, start)
    return data if len(data) == pos - start else None


def gzip_identity(path: Path) -> tuple[str | None, int] | None:
    """(fingerprint of the uncompressed first line, uncompressed size mod 2**32) of a gzip
    file, or None if unreadable: tells whether a file that vanished was compressed whole."""
    try:
        with open(open_regular(path), "rb") as f:  # a FIFO named *.gz: never waited on
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
            f.seek(0)
            with gzip.GzipFile(fileobj=f) as gz:
                head = gz.read(FINGERPRINT_BYTES)
    except (OSError, EOFError, zlib.error, ValueError):
        return None
    return _fingerprint_bytes(head), isize
