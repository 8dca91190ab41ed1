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

The same for a file the shipper had not read to its end (behind at its stop, or stopped --
a DaemonSet or ECS agent update -- while the container wrote on and the runtime rotated and
compressed the file): its unread lines exist only in the ``.gz``, and are read from it, from
the checkpoint on, before the newer files. Only files rotated *and* compressed while the
shipper knew nothing of them (no checkpoint has their first line) are not read (see
docs/operations.md).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

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


def decompressed(gz: Path, opened: BinaryIO | None = None) -> int | None:
    """A read-only descriptor of ``gz``'s content (read from ``opened``, the file already
    open, if given), decompressed into an unlinked temporary file beside the system's others;
    None (logged) when it cannot be read or written."""
    try:
        with (
            tempfile.TemporaryFile(prefix="logq-held-") as tmp,
            gzip.open(opened or gz, "rb") as src,
        ):
            shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.flush()
            return os.dup(tmp.fileno())
    except (OSError, EOFError, zlib.error) as exc:
        log.warning(
            "cannot read the compressed copy of a log file a checkpoint holds: its lines from "
            "the checkpoint on are not read from it (counted lost if the file is gone); check "
            "the file and free space in the temporary directory (TMPDIR) path=%s error=%s",
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


GzIdent = tuple[int, int, int, int, int]
"""(device, inode, size, mtime in ns, ctime in ns) of a compressed copy: the same file,
unchanged. The ctime is there because the others can all come back with other bytes: a file
rewritten in place to the same size with its mtime set back (``touch -r``, ``rsync
--inplace``, gzip keeps the original's mtime), or a new file on a freed inode number; user
space cannot set a ctime, and any write, rename or new file moves it."""


def gz_ident(st: os.stat_result) -> GzIdent:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_T = TypeVar("_T")


def _read_unchanged(
    gz: Path, read: Callable[[BinaryIO], _T], discard: Callable[[_T], None] = lambda _: None
) -> tuple[GzIdent, _T] | None:
    """(the identity of ``gz``, what ``read`` made of it): None when it cannot be opened, or
    when it changed while it was read (being written: the answer is not kept, ``discard``
    gets it)."""
    try:
        with open(gz, "rb") as f:
            before = gz_ident(os.fstat(f.fileno()))
            got = read(f)
            after = gz_ident(os.fstat(f.fileno()))
    except OSError:
        return None
    if before != after:
        discard(got)
        return None
    return before, got


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


class HeldPlan(NamedTuple):
    """The compressed copies beside a source that a start of it may read a held file again
    from (:meth:`shipper.resume.Resume._held_compressed`): each is decompressed.

    Immutable: it is answered off the event loop (:func:`prepare_held`, see
    :meth:`shipper.resume.Resume.prepare_off_loop`). It may ask more than the start will
    (the copies of every checkpoint of the source, not only of those whose files are gone):
    the start takes what it needs and the rest is closed."""

    copies: tuple[Path, ...]


@dataclass
class HeldCopies:
    """The answers of :func:`prepare_held`, each kept with the identity (:func:`gz_ident`)
    of the copy it was read from. A start uses an answer only for the very same file,
    unchanged, that the worker read; for any other (replaced, renamed over, still being
    written, not asked) it reads the copy itself, as without a prepared answer."""

    copies: dict[GzIdent, int | None] = field(default_factory=dict)
    """Identity -> a descriptor of the decompressed copy (None: it could not be read, logged)."""

    def decompressed(self, gz: Path) -> int | None:
        """:func:`decompressed`, taken from the worker's if it decompressed ``gz`` (once: the
        descriptor is the caller's from then on)."""
        try:
            ident: GzIdent | None = gz_ident(os.stat(gz))
        except OSError:
            ident = None
        if ident is not None and ident in self.copies:
            return self.copies.pop(ident)
        return decompressed(gz)

    def close(self) -> None:
        """Close the decompressed copies no start took."""
        for fd in self.copies.values():
            _close(fd)
        self.copies.clear()


def prepare_held(plan: HeldPlan) -> HeldCopies:
    """Answer ``plan`` (see :class:`HeldPlan`): each copy decompressed. What a start otherwise
    did on the event loop: about 0.6 s per 100 MiB copy (``bench/unread_scan.py --case
    held``), during which the shipper sent, acknowledged and reported nothing. Reads only the
    files; run in a worker thread (:mod:`shipper.gz_pool`)."""
    out = HeldCopies()
    for gz in plan.copies:
        got_fd = _read_unchanged(gz, lambda f, g=gz: decompressed(g, f), _close)
        if got_fd is None:
            continue
        ident, fd = got_fd
        if ident in out.copies:  # the same file under two names: one copy is enough
            _close(fd)
            continue
        out.copies[ident] = fd
    return out
