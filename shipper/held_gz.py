"""``--multiline``: a file a checkpoint still holds, read again from its gzip-compressed copy.

With ``--multiline`` a file's checkpoint stays at the quiet point before a record still open
(a stack trace whose next lines may come), also once the file is rotated away: a restart reads
the record's lines again from there. Docker's ``compress: true`` gzips the rotated file at once,
and the kubelet gzips the previous one at its next rotation -- while the shipper runs. The
file the checkpoint points into is then only ``x-json.log.1.gz``: read again from the ``.gz``,
decompressed into an anonymous temporary file (gone when closed), under the checkpoint's own
``source_id`` and offsets, the record comes out whole and no line is lost or stored twice (the
aggregator drops what it stored by offset). Without it the record's head lines were lost at any
stop, SIGTERM included (R1s19 #1).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from shipper.checkpoint import FileState
from shipper.discover import compressed_siblings
from shipper.fingerprint import gzip_identity, tail_hash
from shipper.rotated import rotation_path

log = logging.getLogger("logq.shipper.tailer")


def held_by_compressed(
    path: Path, vanished: list[tuple[str, FileState]]
) -> list[tuple[str, FileState, list[Path]]]:
    """(key, checkpoint, candidate ``.gz`` files) of those ``vanished`` checkpoints (files of
    the source at ``path`` that are gone) that compressed copies beside it may hold: same
    first line, an uncompressed size past the checkpoint's offset. Generations that share a
    first line (a banner) leave several candidates: the one whose bytes before the offset
    are those checked at the last acknowledgement is taken (:func:`verified`)."""
    try:
        copies = compressed_siblings(rotation_path(path))
    except OSError:
        return []
    idents = [(copy, ident) for copy in copies if (ident := gzip_identity(copy)) is not None]
    found: list[tuple[str, FileState, list[Path]]] = []
    for key, state in vanished:
        if _left_at_truncation(state):
            continue
        fp = key.rsplit(":", 1)[-1]
        fits = [c for c, (cfp, size) in idents if cfp == fp and _past(size, state.offset)]
        if fits:
            found.append((key, state, fits))
    return found


def _left_at_truncation(state: FileState) -> bool:
    """Whether ``state`` is the entry a truncation in place left at offset 0 for the file's new
    content (:attr:`FileState.left_at`, written only there), none of it acknowledged since.
    The compressed copy beside it (logrotate ``copytruncate`` + ``compress``) holds the *old*
    content, read and acknowledged under the entry before it, and shares its first line: taken
    for a held file, it was read again from 0 under the new epoch's ``source_id`` and stored
    twice (R5s19 #1). Only a restart before any of the new content is acknowledged meets it."""
    return (
        state.left_at is not None
        and state.offset == 0
        and state.acked == 0
        and state.acked_to == 0
        and not state.cuts
        and not state.tail
    )


def _past(isize: int, offset: int) -> bool:
    """Whether a gzip file of uncompressed size ``isize`` (mod 2**32, gzip's ISIZE) holds bytes
    past ``offset``: compared mod 2**32, as ISIZE is (files of 4 GiB are not log files)."""
    return isize % (1 << 32) > offset % (1 << 32)


def decompressed(gz: Path) -> int | None:
    """A read-only descriptor of ``gz``'s content, decompressed into an unlinked temporary
    file beside the system's others; None (logged) when it cannot be read or written."""
    try:
        with tempfile.TemporaryFile(prefix="logq-held-") as tmp, gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            return os.dup(tmp.fileno())
    except (OSError, EOFError, zlib.error) as exc:
        log.warning(
            "cannot read the compressed copy of a log file a checkpoint holds: the open "
            "multi-line record in it is lost; check the file and free space in the temporary "
            "directory (TMPDIR) path=%s error=%s",
            gz,
            exc,
        )
        return None


def verified(fd: int, state: FileState) -> bool:
    """Whether the decompressed copy at ``fd`` holds the bytes checked before the
    checkpoint's offset (:attr:`FileState.tail`; an entry without the check: yes)."""
    if not state.tail:
        return True
    try:
        return tail_hash(fd, state.offset) == state.tail
    except OSError:
        return False
