"""The files the aggregator keeps in ``--buffer-dir`` must be regular files: checked at start.

A plain ``open()`` of a FIFO waits for a writer: a ``last-seq``, ``node-id``, ``offsets.json``,
``chunks.journal`` or segment made a FIFO (by mistake, or by anyone who can write there) hung
the start for ever, with no log line, no port, and SIGTERM unheard (the buffer dir is read in a
worker thread a stop cannot interrupt). A folder or a device there failed later, with a bare
errno or a misleading "holds '', not a node id". So before any of them is read,
:func:`check_state_files` stats each one present (a ``stat`` never waits, an ``open`` may) and
refuses one that is no regular file with one line naming it and what to do, in the words the
shipper uses for its own files (:func:`shipper.regular.kind`). Whatever is there holds none of
the aggregator's data, so the advice is about what its absence means.

Segments and the other files are read only after this check, at start; a FIFO made there
while the aggregator runs is the doing of someone who can write to the buffer dir anyway.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from aggregator.chunks import JOURNAL_NAME
from aggregator.dedup import OFFSETS_JOURNAL_NAME, OFFSETS_NAME
from shipper.regular import kind

# The names of buffer.py's layout are here rather than there, as :data:`LOCK_NAME` is:
# buffer.py imports this module, which checks them.

#: The buffer dir's random node id, prefix of every object key it writes.
NODE_ID_NAME = "node-id"
#: The highest segment number the buffer dir ever opened (buffer.py's layout).
LAST_SEQ_NAME = "last-seq"
#: The suffix of a segment's name (:func:`segment_name`).
SEGMENT_SUFFIX = ".seg"
#: A segment's name, ``<seq>.seg`` with its number in 16 digits (group 1); for ``fullmatch``.
SEGMENT_RE = re.compile(r"(\d{16})" + re.escape(SEGMENT_SUFFIX))
#: The suffix of a segment's end marker, ``<seq>.acked`` (buffer.py, "A failed fsync").
ACKED_SUFFIX = ".acked"
#: What to do about dedup.py's snapshot or journal when it is no regular file.
_OFFSETS_HINT = "put this buffer's file back, or remove it (resent lines may then be stored twice)"
#: What to do when a state file of the buffer dir, by name, is no regular file. The names are
#: those of buffer.py's layout (its module docstring); ``OFFSETS_*`` are dedup.py's.
_HINTS = {
    NODE_ID_NAME: "put this buffer's node-id file back, or remove it to get a new node id",
    LAST_SEQ_NAME: "replace it with a file holding a number above the highest segment number in "
    "the object keys of the warehouse (<node-id>-<seq>-<n>): segment numbers are never reused",
    OFFSETS_NAME: _OFFSETS_HINT,
    OFFSETS_JOURNAL_NAME: _OFFSETS_HINT,
    JOURNAL_NAME: "remove it (resends of the chunks flushed in the last minutes may then be "
    "stored again)",
}
#: The lock file, checked when the lock is taken (before the others: see buffer.py).
LOCK_NAME = "lock"
_LOCK_HINT = "remove it (the aggregator makes it again)"
_SEGMENT_HINT = (
    "move it out of the buffer dir (the aggregator writes its segments and their .acked "
    "markers as regular files)"
)
#: Sub-folder of the notes of flushes under way (flusher.py), ``<seq>.json`` each.
_FLUSHING_DIR = "flushing"
_NOTE_HINT = (
    "remove it (that segment's flush then finds what earlier attempts wrote by listing the "
    "warehouse)"
)


def segment_name(seq: int) -> str:
    """The name of segment number ``seq`` in the buffer dir (what :data:`SEGMENT_RE` matches)."""
    return f"{seq:016d}{SEGMENT_SUFFIX}"


class NotRegularStateFile(OSError):
    """A state file of the buffer dir is a FIFO, a device, a folder...: a start error (exit 1,
    as a buffer dir that cannot be used); ``str()`` is the whole line."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def check_state_file(directory: Path, path: Path, hint: str) -> None:
    """Raise :class:`NotRegularStateFile` if ``path`` (followed if a link) exists and is no
    regular file; ``hint`` says what to do then."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # absent (a dangling link too): made or done without, as usual
    if not stat.S_ISREG(mode):
        raise NotRegularStateFile(
            f"--buffer-dir {directory}: {path} is {kind(mode)}, not a regular file: {hint}",
            path,
        )


def check_state_files(directory: Path) -> None:
    """Refuse (:class:`NotRegularStateFile`) the first state file of the buffer dir
    ``directory`` that is no regular file, before any is opened (see the module docstring)."""
    for path, hint in _state_files(directory):
        check_state_file(directory, path, hint)


def _state_files(directory: Path) -> Iterator[tuple[Path, str]]:
    """Every state file that may be in ``directory`` but the lock (:func:`check_lock_file`),
    with what to do should it be no regular file."""
    for name, hint in _HINTS.items():
        yield directory / name, hint
    for entry in sorted(os.listdir(directory)):
        if SEGMENT_RE.fullmatch(entry) or entry.endswith(ACKED_SUFFIX):
            yield directory / entry, _SEGMENT_HINT
    notes = directory / _FLUSHING_DIR
    if notes.is_dir():
        for entry in sorted(os.listdir(notes)):
            if entry.endswith(".json"):
                yield notes / entry, _NOTE_HINT


def check_lock_file(directory: Path) -> None:
    """Refuse a ``lock`` of the buffer dir ``directory`` that is no regular file (opened for
    writing to take the lock, a FIFO would not wait, but a folder failed with a bare errno,
    and a device was locked as if it were the file)."""
    check_state_file(directory, directory / LOCK_NAME, _LOCK_HINT)
