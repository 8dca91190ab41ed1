"""Local files that survive a power cut: written whole or not at all.

One recipe for every small state file and every local Parquet object the aggregator writes:
a uniquely named temp file in the same folder (names starting with ``.``, which readers skip),
fsync'd, renamed over the target, then the folder fsync'd so the rename itself is durable.
A unique temp name keeps two writers of the same file (a replayed flush racing the shutdown
flush) from renaming each other's half-written temp file away.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary stream whose content appears at ``path`` whole once the block ends, or never."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (see :func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data)
