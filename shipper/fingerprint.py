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

FINGERPRINT_BYTES = 1024


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


def gzip_identity(path: Path) -> tuple[str | None, int] | None:
    """(fingerprint of the uncompressed first line, uncompressed size mod 2**32) of a gzip
    file, or None if unreadable: tells whether a file that vanished was compressed whole."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
            f.seek(0)
            with gzip.GzipFile(fileobj=f) as gz:
                head = gz.read(FINGERPRINT_BYTES)
    except (OSError, EOFError, zlib.error, ValueError):
        return None
    return _fingerprint_bytes(head), isize
