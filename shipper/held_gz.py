"""A file a checkpoint still holds, read again from its gzip-compressed copy.

With ``--multiline`` a file's checkpoint stays at the quiet point before a record still open
(a stack trace whose next lines may come), also once the file is rotated away: a restart reads
the record's lines again from there. Without the option a rotated file's checkpoint stays at
the start of a line the runtime split (Docker's 16 KiB partial entries, CRI ``P`` parts) whose
last part is in the next file, until that line is acknowledged (see
:mod:`shipper.split_lines`). Docker's ``compress: true`` gzips the rotated file at once, and
the kubelet gzips the previous one at its next rotation -- while the shipper runs. The file
the checkpoint points into is then only ``x-json.log.1.gz``: read again from the ``.gz``,
decompressed into an anonymous temporary file (gone when closed), under the checkpoint's own
``source_id`` and offsets, the record (or the split line) comes out whole and no line is lost
or stored twice (the aggregator drops what it stored by offset). Without it the record's head
lines were lost at any stop, SIGTERM included (R1s19 #1), and the split line's first parts at
any restart with the option off (H1s20: the next file's last part was stored alone).

Without the option, a source's compressed copies are read so only when one of them ends inside
a split line read from its checkpoint on (:func:`ends_in_split_line`): a file whose checkpoint
was left behind for another reason (the shipper was behind at its stop) is counted lost as
before (docs/operations.md: compressed generations are not read).
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
from shipper.formats import LineParser
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
            "cannot read the compressed copy of a log file a checkpoint holds: what was open "
            "in it (a multi-line record, a split line's first parts) is lost; check the file "
            "and free space in the temporary directory (TMPDIR) path=%s error=%s",
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


SCAN_BLOCK = 1 << 20
"""Bytes of a decompressed copy parsed at a time by :func:`ends_in_split_line`."""


def ends_in_split_line(fd: int, offset: int, parser: LineParser) -> bool:
    """Whether the decompressed copy at ``fd``, parsed from the checkpoint's ``offset`` with
    ``parser`` (a fresh one of the source's format), ends inside a line the runtime split: a
    stream's last entry is a part whose next one is not in this file.

    Without ``--multiline`` that is what a checkpoint held back at a split line's start looks
    like (the file was read to its end and let go holding the parts): its copy is read again,
    so that the parts meet the next file's last part. A checkpoint left behind because the
    shipper was behind at its stop usually ends in a whole line, and is counted lost as
    before; one that ends inside a split line is read again too, and its unread lines with
    it. A physical line longer than a block (never a part: the runtime splits at 16 KiB) is
    skipped; a read that fails: False."""
    if not parser.splits:
        return False
    parser.origin = fd
    pos = offset
    try:
        while data := os.pread(fd, SCAN_BLOCK, pos):
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < SCAN_BLOCK:
                    break  # an unterminated last line: not a part the runtime wrote whole
                pos = _past_line(fd, pos + len(data))
                continue
            parser.feed(data[:end].split(b"\n"), pos)
            pos += end + 1
    except OSError:
        return False
    return bool(parser.pending_streams())


def _past_line(fd: int, pos: int) -> int:
    """The position after the next newline at or past ``pos`` (the end of the file if none)."""
    while data := os.pread(fd, SCAN_BLOCK, pos):
        nl = data.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(data)
    return pos
