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
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

from shipper.checkpoint import FileState
from shipper.discover import compressed_siblings
from shipper.fingerprint import gzip_identity, tail_hash
from shipper.formats import PARSERS, LineParser
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


SCAN_BYTES = 2 << 20
"""At least this many bytes of a copy's end are parsed by :func:`ends_in_split_line` (four of
the parser's longest lines, if more)."""


def ends_in_split_line(fd: int, offset: int, parser: LineParser) -> bool:
    """Whether the decompressed copy at ``fd``, past the checkpoint's ``offset``, ends inside
    a line the runtime split, parsed with ``parser`` (a fresh one of the source's format): a
    stream's last entry is a part whose next one is not in this file.

    Without ``--multiline`` that is what a checkpoint held back at a split line's start looks
    like (the file was read to its end and let go holding the parts): its copy is read again,
    so that the parts meet the next file's last part. A checkpoint left behind because the
    shipper was behind at its stop usually ends in a whole line, and is counted lost as
    before; one that ends inside a split line is read again too, and its unread lines with
    it. Only the file's end is parsed (:func:`_tail_start`): parsed from the offset, a copy
    the shipper was far behind in cost seconds of the event loop per 100 MiB at every start,
    all sources waiting, to count it lost as before (R3s20). A read that fails: False."""
    if not parser.splits:
        return False
    try:
        size = os.fstat(fd).st_size
        start = _tail_start(offset, size, parser)
        data = os.pread(fd, size - start, start) if size > start else b""
    except OSError:
        return False
    return _data_ends_in_split_line(data, start, start == offset, parser)


def compressed_ends_in_split_line(gz: Path, offset: int, parser: LineParser) -> bool:
    """:func:`ends_in_split_line` for the gzip file ``gz`` itself, streamed: only its end is
    kept, nothing is written. Without ``--multiline`` a start decides with it which copies to
    decompress (:func:`decompressed`): a file the shipper was behind in at its stop, which
    ends in whole lines, is counted lost as before without a temporary copy of it. A copy
    that cannot be read: False (its loss is counted as before)."""
    if not parser.splits:
        return False
    keep = _tail_bytes(parser)
    tail = bytearray()
    total = 0
    try:
        with gzip.open(gz, "rb") as src:
            while block := src.read(1 << 20):
                total += len(block)
                tail += block
                if len(tail) > 2 * keep:
                    del tail[: len(tail) - keep]
    except (OSError, EOFError, zlib.error):
        return False
    start = _tail_start(offset, total, parser)
    data = bytes(tail[len(tail) - (total - start) :]) if total > start else b""
    return _data_ends_in_split_line(data, start, start == offset, parser)


def _tail_bytes(parser: LineParser) -> int:
    """How many bytes of a copy's end are parsed: :data:`SCAN_BYTES`, or four of ``parser``'s
    longest lines."""
    return max(SCAN_BYTES, 4 * parser.max_line_bytes)


def _tail_start(offset: int, size: int, parser: LineParser) -> int:
    """Where the parse of a copy of ``size`` bytes held at ``offset`` starts: the offset, or
    the last :func:`_tail_bytes` if it is further back. A split line still open there has
    its last part among them (the runtime writes its parts one after the other; only the
    other stream's lines come in between, for at most the few seconds it waits)."""
    return max(offset, size - _tail_bytes(parser))


def _data_ends_in_split_line(
    data: bytes, base: int, at_line_start: bool, parser: LineParser
) -> bool:
    """Whether ``data`` (a copy's bytes from position ``base`` to its end, which is a line's
    start if ``at_line_start``) ends inside a split line, parsed with ``parser``. A line cut
    at the start is skipped; so is an unterminated last line, not a part the runtime wrote
    whole."""
    if not at_line_start:
        first = data.find(b"\n") + 1
        if not first:
            return False
        data, base = data[first:], base + first
    end = data.rfind(b"\n")
    if end < 0:
        return False
    parser.feed(data[:end].split(b"\n"), base)
    return bool(parser.pending_streams())


def streams_with_entries(gz: Path, streams: Collection[str], parser: LineParser) -> set[str]:
    """The streams of ``streams`` of which the gzip file ``gz`` holds an entry (a whole line
    or a split line's part), parsed with ``parser`` (a fresh one of the source's format),
    streamed and stopped once each was seen. A copy that cannot be read: the streams seen
    before the error (none if it cannot be opened).

    A file read again from its compressed copy (:func:`decompressed`) that ends with a line
    of one of ``streams`` still open has that line's next entry in the next file of the
    stream. If that file is a compressed copy the shipper never opened (rotated and
    compressed while it was down), the line's end is lost with it: joined to the next line
    of the live file instead, two lines became one record (R3s20 #3). A copy holding only
    the other stream's lines (read and forgotten by an earlier run) says nothing of it, and
    a line of that other stream open at the same time is not cut for it (R7s20)."""
    wanted = set(streams)
    seen: set[str] = set()
    rest = b""
    base = 0
    try:
        with gzip.open(gz, "rb") as src:
            while block := src.read(1 << 20):
                data = rest + block
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                rest = data[end + 1 :]
                out = parser.feed(data[:end].split(b"\n"), base)
                base += end + 1
                seen |= wanted & {*out.streams, *parser.pending_streams()}
                if seen == wanted:
                    break
    except (OSError, EOFError, zlib.error):
        pass
    return seen


class UnseenQuestion(NamedTuple):
    """Which of ``streams`` (lines open at the end of a file read again from its compressed
    copy) have an entry in ``copies`` (compressed files rotated after it that no checkpoint
    knew, oldest first), parsed as ``fmt`` with lines of at most ``max_line_bytes``.

    Immutable, and everything :func:`unseen_cut` needs: the answer depends on the files alone,
    so it is taken off the event loop (:meth:`shipper.split_lines.SplitLines.scan_off_loop`)
    and used only for the very same question."""

    copies: tuple[Path, ...]
    streams: frozenset[str]
    fmt: str
    max_line_bytes: int


UnseenAnswer = tuple[list[str], list[Path]]
"""(the streams cut, sorted; the copies holding their next entries, in order)."""


def unseen_cut(q: UnseenQuestion) -> UnseenAnswer:
    """The streams of ``q.streams`` whose next entry is in one of ``q.copies``, and those
    copies: each copy is streamed (:func:`streams_with_entries`) for the streams not found in
    an earlier one, until all are found. A copy holding none of them is read whole -- about a
    second of parsing per 100 MiB, which is why the shipper runs this in a worker thread.
    Reads only the files (each opened once: one the runtime deletes meanwhile stays readable)
    and a fresh parser of its own."""
    cut: set[str] = set()
    unseen: list[Path] = []
    kind = PARSERS[q.fmt]
    for gz in q.copies:
        found = streams_with_entries(gz, q.streams - cut, kind(q.max_line_bytes))
        if found:
            cut |= found
            unseen.append(gz)
        if cut == q.streams:
            break
    return sorted(cut), unseen
