"""The checkpoint registry: how far each log file has been acknowledged, surviving restarts.

One JSON document under ``--state-dir`` maps *file identity* -> position. A file's identity is
``<device>:<inode>:<fingerprint>`` where the fingerprint hashes the file's first line (at most
1 KiB). A recycled inode holding a new file usually gets a new fingerprint -- but not when every
file of a program starts with the same line (a fixed banner), nor when a file is truncated in
place and written again from the same first line. So each entry also keeps a hash of the bytes
just before its position (:attr:`FileState.tail`, up to 256 bytes the shipper read and had
acknowledged): a file whose bytes there differ at the next open, or that is shorter than the
position, holds other content (replaced while the shipper was down), and is read from its start
under a new ``source_id`` epoch (see :meth:`shipper.resume.Resume._verified`). What is left
undetected: new content whose bytes before that position are the very same as the old ones.
Entries advance only after the aggregator acknowledged the batch, and the
document is replaced atomically (write tmp, fsync, rename, fsync the directory), so after a
crash -- also ``kill -9`` -- the shipper resumes at the last acknowledged line. A file's entry
is also saved soon after the file is opened (:attr:`Registry.on_new`), so that a file deleted
while the shipper is down is known, and counted as lost, even if nothing of it was acknowledged.
Files read to their end and forgotten are kept for a moment under ``finished`` (see
:meth:`Registry.finish`), so that a restart does not read them again.
The service and container name of each source with files here are kept under ``sources`` (see
:meth:`Registry.describe`): a container removed while the shipper is down can still be named.
The epoch new content must start at on an inode whose entry went while the inode stayed (a file
truncated while the shipper was down) is kept under ``epochs`` (see :meth:`Registry.keep_epoch`):
an epoch is never used twice for a first line on an inode.
The aggregator a file's batches went to last, when that is not its first choice (a failover), is
kept under ``sent_to``, and how far the lines sent there reach under ``sent_through`` (see
:meth:`Registry.place`), until those lines are acknowledged: a restart sends its
unacknowledged lines there again, to the aggregator whose offset marks recognise them.

A lock file keeps two shippers from sharing one state directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from shipper.errors import StartError, clipped, preview, unusable_dir_message
from shipper.regular import kind, read_regular

log = logging.getLogger("logq.shipper.checkpoint")

FORMAT_VERSION = 1
"""Still 1 with :attr:`FileState.tail`, :attr:`FileState.rotated` and the document's
``finished`` part added: an older shipper ignores keys it does not know (see
:func:`parse_entry`), an entry without a tail resumes unchecked, as before, one without
``rotated`` is judged as a file that was live at the stop (a page when it is gone, as before),
and a document without ``finished`` has no file finished moments before its save. Also with
:attr:`FileState.floor`: an entry without it numbers its lines from their ends, as before. And
with the document's ``sent_to`` part (see :meth:`Registry.place`): a shipper of 2026-11-30
(886beb7) loads a document with it as one without (it reads only the parts it knows) and
leaves it out of its next save; a document without it sends every file to its first choice.
And with ``sent_through`` beside it: a shipper from before it keeps the placements and drops
their reaches (its next save leaves them out); a placement without one sends only the first
batch read again there, as before."""


@dataclass(slots=True)
class FileState:
    """The acknowledged position of one file."""

    source: str
    """Key of the source (``docker:<id>``...) the file belongs to."""
    path: str
    """Where the file was last seen (informational; identity is the registry key)."""
    source_id: str
    """``source_id`` put into its records; kept across restarts and renames."""
    offset: int
    """Where reading resumes: just past the last acknowledged complete line (or the start of a
    split line that was not complete yet)."""
    acked: int
    """Highest acknowledged record offset; re-read lines at or below it are not sent again."""
    epoch: int = 0
    """Bumped when the file was truncated in place (copytruncate): keeps source ids distinct."""
    updated: float = 0.0
    cuts: list[list[int | str]] = field(default_factory=list)
    """``[position, offset, stream]``: where an unfinished split line of ``stream`` was shipped
    as it was (its next part had not come), and the offset its record got (``[position,
    offset]``, written before the stream was kept: every line open there). Kept until the
    checkpoint passes the position (put back while it goes back before it: see
    :meth:`shipper.cursor.Cursor.place_cuts`): a restart that reads the parts again must cut
    them there again, into the same record, which the aggregator then recognises as one it
    has -- joined with a part written later, the parts would be stored twice. The stream says
    which line: the other stream's, still waiting for its next part then, is not cut."""
    acked_to: int = 0
    """Where the acknowledged batches end when :attr:`offset` is kept below it (a file read
    while an earlier one held a split line's first part, see
    :meth:`shipper.tailer.Tailer._checkpoint_offset`); 0 when it is :attr:`offset`. A file
    compressed while the shipper was down whose size is this was read to its end: not a loss
    (see :meth:`shipper.resume.Resume._count_vanished`). Entries written before it have none."""
    tail: str = ""
    """Hash of the bytes just before :attr:`offset` (see :func:`shipper.fingerprint.tail_hash`),
    '' when unknown (offset 0, an entry written by an older shipper, a file closed before its
    last acknowledgement): a file whose bytes there differ is not resumed at :attr:`offset`."""
    seen: int | None = None
    """The file's size at the shipper's last look before this entry was saved (taken about
    every second while it runs, and until its tailer closes at a stop; also when the running
    shipper sees it renamed away, and when it lets it go), None when unknown (an
    older shipper's entry). A file gone at the next start with :attr:`seen` past
    :attr:`offset` held bytes never acknowledged: lost for sure, and how many is known (see
    :mod:`shipper.removed`)."""
    shipped: bool = False
    """``--multiline``: every line of this file (rotated away, read to its end) is in a record
    already acknowledged; its checkpoint stays back only so that a restart groups the lines
    after it as the run did. Gone at a restart, it lost nothing (see
    :meth:`shipper.resume.Resume._count_vanished`). Saved only when set."""
    grouped: str = ""
    """``--multiline``: the parser (a key of :data:`shipper.multiline.BUILTIN`) whose open
    record keeps :attr:`offset` back; a restart groups with it until the file's next quiet
    point, also with the option turned off meanwhile (the lines read again are at or below
    :attr:`acked`: shipped one by one, they were dropped). Saved only when set."""
    left_at: list[int] | None = None
    """``[size, modification time in ns]`` of the file when the running shipper handled its
    truncation in place and left this entry at offset 0 for its new content (see
    :mod:`shipper.copytruncate`), None otherwise. A file at the next start with that very size
    and time was not written since, whatever its change time says: a change of its status
    alone (chmod, chown, xattrs, a hard link) moves only that (see
    :func:`shipper.resume._unchanged_since`). Saved only when set."""
    rotated: bool = False
    """The running shipper saw this file renamed away by a rotation (its path named another
    file: the writer moved on to a new one), and has not seen it at the live path since. A
    file gone at the next start that was read to :attr:`seen` (its size at the stop) then
    lost nothing a Docker json-file writer could have written (dockerd writes nothing to a
    file once it rotated it); another writer may have appended to it after the stop (see
    :meth:`shipper.resume.Resume._rotated_then_deleted`). False in an older shipper's entry:
    judged as a live file's, a page when it is gone. Saved only when set."""
    floor: int = 0
    """The highest offset given to a record of this file that ends at or before
    :attr:`offset`, when it is above :attr:`offset` (else 0): a split line flushed as it is
    there gets an offset past the read position (see
    :meth:`shipper.split_lines.SplitLines._flush_offset`), and the lines after it are numbered
    above it (:meth:`shipper.cursor.Cursor.number`). A restart resumes the numbering from it,
    so a line read again gets the offset it had -- numbered from its end alone, a one-byte
    line got an offset at or below :attr:`acked` and was dropped unsent. Saved only when set;
    an older entry has none and numbers from the file's bytes, as before."""


#: Cuts kept per file at most (each one is a split line flushed and not acknowledged yet, or
#: passed by the checkpoint while it can still go back before it).
MAX_CUTS = 64

FINISHED_SAVE_SECONDS = 2.0
"""A file finished (read to its end, acknowledged, forgotten) is saved in the registry's
``finished`` part for this long after: see :meth:`Registry.finish`."""
MAX_FINISHED = 4096
"""Finished files remembered at most (the oldest go first)."""


def _entry(state: FileState) -> dict[str, object]:
    """``state`` as saved: the ``--multiline`` fields, :attr:`FileState.left_at`,
    :attr:`FileState.rotated` and :attr:`FileState.floor` only when set, so that the
    checkpoints of sources without the option, and of files never rotated away, are as they
    were."""
    out = asdict(state)
    for name in ("shipped", "grouped", "left_at", "rotated", "floor"):
        if not out[name]:
            del out[name]
    return out


def file_key(dev: int, ino: int, fingerprint: str) -> str:
    return f"{dev}:{ino}:{fingerprint}"


#: A key :func:`file_key` makes: a device and an inode number (ASCII decimal, at most 20
#: digits: 64-bit) and a first-line hash without a colon.
_FILE_KEY = re.compile(r"[0-9]{1,20}:[0-9]{1,20}:[^:]+")


def valid_file_key(key: object) -> bool:
    """Whether a saved entry's key is one :func:`file_key` makes. Others (a hand edit, a
    corrupt file) are dropped at load: the code that resumes files reads the device and inode
    back from the key, and one it cannot read failed the source at every retry."""
    return isinstance(key, str) and _FILE_KEY.fullmatch(key) is not None


#: No file offset is larger (off_t is a signed 64-bit integer); past it a value is corrupt.
MAX_OFFSET = 2**63 - 1

MAX_FLOOR_LEAD = 2 * MAX_CUTS
"""How far above its offset a checkpoint's :attr:`FileState.floor` can be. A flushed split
line or record is numbered at most one past the highest offset given before, and a line
longer than a byte brings the numbering back to the file's bytes: a few streams flushed at
one place lead by a few. A floor further ahead is corrupt: kept, it numbered every later line
of the file far from its bytes (up to past the aggregator's 64-bit column), each in a Python
loop."""


def parse_entry(value: object) -> tuple[FileState | None, str]:
    """One registry entry as a :class:`FileState`, and what was wrong with it ('' if nothing).

    An entry that does not say which source and file it is (no text ``source``, ``path``,
    ``source_id``) is unusable: (None, problem). Bad positions -- not integers, negative, past
    any possible file size -- are reset to the start of the file, keeping its ``source_id``, so
    that the aggregator recognises the re-read lines as ones it has (per-source offset dedup)
    instead of storing them again under a new id. Unknown keys (a newer shipper's) are ignored.
    """
    if not isinstance(value, dict):
        return None, f"entry is a JSON {_json_type(value)}, not an object"
    for name in ("source", "path", "source_id"):
        if not isinstance(value.get(name), str) or not value[name]:
            return None, f"{name} is {preview(value.get(name), 40)}, not a non-empty string"
    problems: list[str] = []
    positions: dict[str, int] = {}
    for name in ("offset", "acked", "epoch", "acked_to"):
        v = value.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_OFFSET:
            problems.append(f"{name}={preview(v, 40)}")
            v = 0
        positions[name] = v
    if any(p.startswith(("offset=", "acked=")) for p in problems):
        # Neither position can be trusted when one is corrupt: re-read the whole file.
        positions["offset"] = positions["acked"] = positions["acked_to"] = 0
        problems.append(
            "the file is read again from its start (the aggregator drops lines it already "
            "stored under this source_id)"
        )
    elif problems:
        problems.append("reset to 0")
    updated = value.get("updated", 0.0)
    if (
        isinstance(updated, bool)
        or not isinstance(updated, int | float)
        or not (0 <= updated < 1e11)
    ):
        updated = 0.0  # only orders files for rotation bookkeeping; not worth a warning
    cuts = value.get("cuts", [])
    if not _valid_cuts(cuts):
        problems.append(f"cuts={preview(cuts, 40)} dropped")
        cuts = []
    tail = value.get("tail", "")
    if not _valid_tail(tail):
        # Only a check: without it the file resumes at its offset, as entries of older
        # shippers (which have none) do.
        problems.append(f"tail={preview(tail, 40)} dropped")
        tail = ""
    seen = value.get("seen")
    if seen is not None and (type(seen) is not int or not 0 <= seen <= MAX_OFFSET):
        problems.append(f"seen={preview(seen, 40)} dropped")
        seen = None
    left_at = value.get("left_at")
    if left_at is not None and not (
        type(left_at) is list
        and len(left_at) == 2
        and all(type(v) is int and 0 <= v <= MAX_OFFSET for v in left_at)
    ):
        problems.append(f"left_at={preview(left_at, 40)} dropped")
        left_at = None
    floor = value.get("floor", 0)
    if type(floor) is not int or not 0 <= floor <= positions["offset"] + MAX_FLOOR_LEAD:
        problems.append(f"floor={preview(floor, 40)} dropped")
        floor = 0
    state = FileState(
        source=value["source"],
        path=value["path"],
        source_id=value["source_id"],
        offset=positions["offset"],
        acked=positions["acked"],
        epoch=positions["epoch"],
        acked_to=positions["acked_to"],
        updated=float(updated),
        cuts=cuts,
        tail=tail,
        seen=seen,
        shipped=value.get("shipped") is True,
        grouped=grouped if isinstance(grouped := value.get("grouped"), str) else "",
        left_at=left_at,
        rotated=value.get("rotated") is True,  # anything else: judged as a live file, as before
        floor=floor,
    )
    return state, ", ".join(problems)


def _finished_entries(value: object) -> dict[str, FileState]:
    """The ``finished`` part of a registry document (see :meth:`Registry.finish`); entries
    that do not parse cleanly are dropped without a word: only a guard against reading a
    finished file again, and a registry written before it existed has none."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, FileState] = {}
    for key, entry in list(value.items())[:MAX_FINISHED]:
        state, problem = parse_entry(entry)
        if valid_file_key(key) and state is not None and not problem:
            out[key] = state
    return out


class Described(NamedTuple):
    """What a source is, as discovery found it (see :meth:`Registry.describe`)."""

    service: str
    """Its service (the ``service`` label of its metrics)."""
    container_name: str
    """Its container name (``<namespace>/<pod>/<container>`` for a pod), '' for a plain file."""


def _source_entries(value: object) -> dict[str, Described]:
    """The ``sources`` part of a registry document; entries that are not two strings are
    dropped without a word (only names for a loss warning; older documents have none)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Described] = {}
    for key, entry in value.items():
        if not isinstance(entry, dict):
            continue
        service, name = entry.get("service"), entry.get("container_name")
        if isinstance(key, str) and isinstance(service, str) and isinstance(name, str):
            out[key] = Described(service, name)
    return out


MAX_FOLLOWED = 4096
"""Sources saved under ``followed`` at most (those followed most recently; see
:meth:`Registry.note_followed`). One past the bound is taken for a source no run followed:
at a restart that finds it without a checkpoint, its rotated files are read again (the
aggregator drops the lines it stored from those files in the last 14 days, by offset), never
skipped unread."""


def _followed_entries(value: object) -> dict[str, float]:
    """The ``followed`` part of a registry document (source key -> when a run last had all
    its files in hand, seconds since the epoch: see :meth:`Registry.note_followed`); malformed
    entries are dropped without a word.

    So is a time later than now (the wall clock stepped back since, or a value no run wrote:
    ``Infinity``, ``1e20``): taken as it is, every rotated file of the source looked written
    before it and was skipped unread. Without its entry the source is read as one no run
    followed: its rotated files again, the aggregator dropping the lines it has by offset."""
    if not isinstance(value, dict):
        return {}
    now = time.time()
    return {
        k: float(v)
        for k, v in value.items()
        if isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v <= now
    }


MAX_ENDPOINT_TEXT = 300
"""Longest ``host:port`` kept under ``sent_to`` (a DNS name is at most 253 bytes); past it a
value is corrupt."""


def _sent_to_entries(value: object) -> tuple[dict[str, str], str]:
    """The ``sent_to`` part of a registry document (source id -> the ``host:port``, see
    :attr:`shipper.config.Endpoint.hash_key`, its batches went to last when not its first
    choice: :meth:`Registry.place`), and what was dropped from it ('' if nothing). A malformed
    entry is dropped: that file's next batch goes to its first choice, as before the part
    existed (a batch a failover aggregator stored may then be stored twice)."""
    if value is None:
        return {}, ""  # an older shipper's registry, or no file away from its first choice
    if not isinstance(value, dict):
        return {}, f"sent_to is a JSON {_json_type(value)}, not an object"
    out: dict[str, str] = {}
    bad: list[str] = []
    for sid, where in value.items():
        if isinstance(where, str) and 0 < len(where) <= MAX_ENDPOINT_TEXT and ":" in where:
            out[sid] = where
        else:
            bad.append(f"{preview(sid, 40)}={preview(where, 40)}")
    return out, (f"entries {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else "")


def _sent_through_entries(value: object, placed: dict[str, str]) -> tuple[dict[str, int], str]:
    """The ``sent_through`` part of a registry document (source id -> the highest record
    offset of its lines sent to its ``sent_to`` aggregator: :meth:`Registry.place`), for the
    placements in ``placed``, and what was dropped from it ('' if nothing). Without its entry
    a placement sends only the first batch read again there, as placements saved before the
    part existed do; an entry without a placement is dropped without a word."""
    if value is None:
        return {}, ""  # an older shipper's registry, or no file away from its first choice
    if not isinstance(value, dict):
        return {}, f"sent_through is a JSON {_json_type(value)}, not an object"
    out: dict[str, int] = {}
    bad: list[str] = []
    for sid, through in value.items():
        if sid not in placed:
            continue
        if type(through) is int and 0 <= through <= MAX_OFFSET:
            out[sid] = through
        else:
            bad.append(f"{preview(sid, 40)}={preview(through, 40)}")
    listed = f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    return out, (f"sent_through entries {listed}" if bad else "")


#: Epochs remembered for inodes whose content's checkpoint was dropped while the inode stayed
#: (see :meth:`Registry.keep_epoch`): at most this many, each for a week at most.
MAX_EPOCH_FLOORS = 4096
EPOCH_FLOOR_SECONDS = 7 * 24 * 3600.0


def _epoch_floors(value: object) -> dict[str, tuple[int, float]]:
    """The ``epochs`` part of a registry document (``"dev:ino": [epoch, when]``); malformed
    entries are dropped without a word (older documents have none)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, tuple[int, float]] = {}
    for inode, entry in value.items():
        if (
            isinstance(inode, str)
            and isinstance(entry, list)
            and len(entry) == 2
            and type(entry[0]) is int
            and 0 <= entry[0] <= MAX_OFFSET
            and isinstance(entry[1], int | float)
        ):
            out[inode] = (entry[0], float(entry[1]))
    return out


def _valid_cuts(cuts: object) -> bool:
    return (
        isinstance(cuts, list)
        and len(cuts) <= MAX_CUTS
        and all(
            isinstance(c, list)
            and len(c) in (2, 3)
            and all(type(v) is int and 0 <= v <= MAX_OFFSET for v in c[:2])
            and (len(c) == 2 or isinstance(c[2], str))
            for c in cuts
        )
    )


def _valid_tail(tail: object) -> bool:
    """'' (unknown) or a hash as :func:`~shipper.fingerprint.tail_hash` makes it (16 hex
    digits): a damaged value would force a re-read from 0 under a new id (R1)."""
    return tail == "" or (isinstance(tail, str) and len(tail) == 16 and set(tail) <= _HEX)


_HEX = frozenset("0123456789abcdef")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


#: errno -> why the state directory cannot be used and what to do. An unwritable directory is
#: the usual first-deployment mistake: a host path created by Docker or the kubelet belongs to
#: root while the image runs as another user, or the volume is mounted read-only.
_UNUSABLE = {
    errno.EACCES: (
        "is not writable by this process",
        "give it to that user (chown -R {uid}:{gid} {dir}) or point --state-dir at a "
        "writable directory",
    ),
    errno.EROFS: (
        "is on a read-only file system",
        "mount a writable volume there (the checkpoints must survive restarts)",
    ),
    errno.ENOTDIR: ("is not a directory", "a file is in the way: point --state-dir at a directory"),
    errno.EEXIST: ("is not a directory", "a file is in the way: point --state-dir at a directory"),
    errno.ENOSPC: ("is on a full file system", "free space there or use another volume"),
}
_UNUSABLE[errno.EPERM] = _UNUSABLE[errno.EACCES]


def unusable_state_dir(state_dir: Path, exc: OSError) -> StartError:
    """``exc`` (raised while creating or locking ``state_dir``) as one line naming the
    directory, the cause, the uid/gid this process runs as and what to do."""
    what, todo = _UNUSABLE.get(
        exc.errno or 0, ("cannot be used", "check the directory and its volume")
    )
    if exc.errno in (errno.EACCES, errno.EPERM) and not state_dir.is_dir():
        what = "cannot be created by this process"
        todo = (
            "create it for that user (install -d -o {uid} -g {gid} {dir}) or point --state-dir "
            "at a writable directory"
        )
    return StartError(unusable_dir_message("--state-dir", state_dir, exc, what, todo))


class Registry:
    """Checkpoints of every file, persisted in ``<state-dir>/checkpoints.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "checkpoints.json"
        self._files: dict[str, FileState] = {}
        self._finished: dict[str, FileState] = {}
        """Files finished by this process, by key (see :meth:`finish`)."""
        self._inherited: dict[str, FileState] = {}
        """Files the previous run had finished moments before its last save, by key: kept
        until their source starts (see :meth:`forget_finished`)."""
        self.dirty = False
        self.saved_at: float | None = None
        """When the previous run last saved this registry (the file's mtime at load); None
        on a first run or after an unreadable registry was set aside. Rotated files of a
        source first seen are read if they were written after it."""
        self.on_new: Callable[[], None] | None = None
        """Called when an entry for a file the registry did not know is put (a file just
        opened, at offset 0): the daemon then saves soon (see
        :meth:`shipper.daemon.Shipper.checkpoint_changed`), not only at the file's first
        acknowledgement. Killed before that ack, with the file rotated away and deleted (or
        compressed) while it was down, the next start did not know the file had existed: its
        unread lines were lost without a count (``deleted_unread``)."""
        self._sources: dict[str, Described] = {}
        """Source key -> its service and container name, saved under ``sources`` for the
        sources that have files here: a container or pod removed while the shipper is down
        is named by its loss count and warning (see :meth:`describe`)."""
        self._floors: dict[str, tuple[int, float]] = {}
        """``dev:ino`` -> (the lowest epoch new content there may get, when that was noted), for
        inodes whose content's checkpoint was dropped while the inode stayed (see
        :meth:`keep_epoch`); saved under ``epochs``."""
        self._followed: dict[str, float] = {}
        """Source key -> when a tailer (of this run or an earlier one) last had all its files
        in hand, saved under ``followed`` (see :meth:`note_followed`)."""
        self._sent_to: dict[str, str] = {}
        """Source id -> the aggregator (``host:port``) its batches went to last, for the files
        whose last batch did not go to their first choice and is not acknowledged everywhere
        yet; saved under ``sent_to`` (see :meth:`place`)."""
        self._sent_through: dict[str, int] = {}
        """Source id -> the highest record offset of the lines sent to its :attr:`_sent_to`
        aggregator (none for a placement an older shipper saved); under ``sent_through``."""
        self.followed_before: dict[str, float] | None = None
        """The ``followed`` part the previous run saved: which sources a run ever followed,
        and when one last had all its files in hand. None on a first run, after an unreadable
        registry was set aside, and when an older shipper saved it (it kept no such part: a
        source without checkpoints then has its rotated files read if written after
        :attr:`saved_at`, as it did). See :meth:`shipper.resume.Resume._first_seen`."""
        self._lock_fd: int | None = None
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable_state_dir(state_dir, exc) from None
        self._lock()
        try:
            self._load()
        except StartError:
            self.close()
            raise

    def _lock(self) -> None:
        try:
            fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unusable_state_dir(self.state_dir, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartError(
                f"--state-dir {self.state_dir} is in use by another logq-shipper; "
                "give each shipper its own state directory"
            ) from None
        except OSError as exc:  # ENOLCK: a file system without locks (some NFS setups)
            os.close(fd)
            raise unusable_state_dir(self.state_dir, exc) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self) -> None:
        try:
            st = self.path.stat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                # A FIFO's open() waited for a writer for ever: the shipper never started, and
                # SIGTERM could not stop it. Set aside, its checkpoints would be saved into it.
                raise StartError(
                    f"--state-dir {self.state_dir}: {self.path.name} is {kind(st.st_mode)}, "
                    "not a regular file: remove it (the shipper writes its checkpoints there)"
                )
            saved_at = st.st_mtime
            doc = json.loads(read_regular(self.path))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as exc:
            self._set_aside(f"unreadable ({clipped(str(exc), 120)})")
            return
        if not isinstance(doc, dict):
            self._set_aside(f"of the wrong shape (a JSON {_json_type(doc)}, not an object)")
            return
        files = doc.get("files", {})
        if not isinstance(files, dict):
            self._set_aside(f"of the wrong shape (files is a JSON {_json_type(files)})")
            return
        self.saved_at = saved_at
        self._inherited = _finished_entries(doc.get("finished"))
        self._sources = _source_entries(doc.get("sources"))
        self._floors = _epoch_floors(doc.get("epochs"))
        if "followed" in doc:
            self._followed = _followed_entries(doc["followed"])
            self.followed_before = dict(self._followed)
        self._sent_to, problem = _sent_to_entries(doc.get("sent_to"))
        if problem:
            log.warning(
                "ignoring malformed aggregator placements in the checkpoint registry: the "
                "files they were for send their next batch to their first-choice aggregator, "
                "which stores it a second time if a failover aggregator had stored it before "
                "the stop path=%s problem=%s",
                self.path,
                problem,
            )
            self.dirty = True
        self._sent_through, problem = _sent_through_entries(doc.get("sent_through"), self._sent_to)
        if problem:
            log.warning(
                "ignoring malformed aggregator placements in the checkpoint registry (how far "
                "their lines reach): the files they were for send only their first batch read "
                "again to the aggregator saved for them, the rest to their first-choice "
                "aggregator, which stores it a second time if the other had stored it before "
                "the stop path=%s problem=%s",
                self.path,
                problem,
            )
            self.dirty = True
        self._prune_floors()
        for key, value in files.items():
            if valid_file_key(key):
                state, problem = parse_entry(value)
            else:
                state, problem = None, "the key is not <device>:<inode>:<first-line hash>"
            if state is None:
                log.warning(
                    "ignoring malformed checkpoint entry: its file is read from its start "
                    "as a new one path=%s key=%s problem=%s",
                    self.path,
                    clipped(key, 120),
                    problem,
                )
                self.dirty = True
                continue
            if problem:
                log.warning(
                    "repaired a malformed checkpoint entry path=%s key=%s file=%s problem=%s",
                    self.path,
                    key,
                    state.path,
                    problem,
                )
                self.dirty = True
            self._files[key] = state

    def _set_aside(self, why: str) -> None:
        """Start with no checkpoints, keeping the bad file (renamed) for inspection.

        Losing the registry means re-reading files from the start: duplicates, never loss.
        The aggregator drops them by offset only if their source ids are those it stored,
        and a source id embeds the host name (``--hostname``): one that differs from the
        previous run's (a container's default, new at each restart) stores them again."""
        bad = self.path.with_suffix(f".bad-{int(time.time())}")
        log.error(
            "checkpoint registry is %s, starting fresh: every file is read from its start; "
            "the aggregator drops the lines it already stored only if --hostname is the same "
            "as in the previous run (it is part of each file's source id), else they are "
            "stored twice path=%s moved_to=%s",
            why,
            self.path,
            bad,
        )
        try:
            os.replace(self.path, bad)
        except OSError as exc:
            raise StartError(
                f"checkpoint registry {self.path} is {why} and cannot be moved aside ({exc}); "
                "move or delete it"
            ) from None

    def get(self, key: str) -> FileState | None:
        return self._files.get(key)

    def put(self, key: str, state: FileState) -> None:
        state.updated = time.time()
        new = key not in self._files
        self._files[key] = state
        self.dirty = True
        inode = key.rsplit(":", 1)[0]
        floor = self._floors.get(inode)
        if floor is not None and state.epoch >= floor[0]:
            del self._floors[inode]  # the entry says it from now on (see next_epoch)
        if new and self.on_new is not None:
            self.on_new()

    def remove(self, key: str) -> None:
        if self._files.pop(key, None) is not None:
            self.dirty = True

    def finish(self, key: str, end: int, tail: str) -> None:
        """Forget the checkpoint of a file read to ``end`` and acknowledged there (``tail``:
        the check of the bytes before it, '' when unknown), remembering it for
        :data:`FINISHED_SAVE_SECONDS` (saved under ``finished``).

        A start reads a source's rotated files if they were written after the previous run's
        last save (see :meth:`shipper.resume.Resume._first_seen`). With file times of whole
        seconds (a coarse file system) a file finished and forgotten just before that save
        looks written after it: it was read again from its start, and the first part of a
        split line shipped cut was joined to a later part and stored twice (R1). A start that
        finds it here passes over it (see :meth:`finished`). Later saves are later than the
        file's last write, and its time alone tells: not saved any more."""
        state = self._files.pop(key, None)
        if state is None:
            return
        state.updated = time.time()
        # Done to its end: a checkpoint held back for a split line (or kept below the
        # acknowledged batches) would read parts again that went out joined to later ones.
        state.offset = max(state.offset, end)
        state.acked_to = 0
        state.tail = tail if state.offset == end else ""
        state.cuts = [c for c in state.cuts if int(c[0]) > state.offset]
        self._finished.pop(key, None)
        self._finished[key] = state
        if len(self._finished) > MAX_FINISHED:
            del self._finished[next(iter(self._finished))]
        self.dirty = True

    def holds_finished(self) -> bool:
        """Whether the next :meth:`snapshot` may still save files finished moments ago."""
        return bool(self._finished)

    def finished(self, key: str) -> FileState | None:
        """The last checkpoint of the file ``key`` if it was finished moments ago (see
        :meth:`finish`), else None. Only for :data:`FINISHED_SAVE_SECONDS`, as saved: kept
        until the next save prunes it, on a quiet host a new file on its inode with its first
        line (a plain log's banner) was passed over for as long (R2)."""
        state = self._finished.get(key)
        if state is not None and state.updated >= time.time() - FINISHED_SAVE_SECONDS:
            return state
        return self._inherited.get(key)

    def forget_finished(self, source: str) -> None:
        """``source`` has started: its files finished by the previous run are passed over by
        identity from now on (see :meth:`shipper.resume.Resume._pass_over`)."""
        for key in [k for k, s in self._inherited.items() if s.source == source]:
            del self._inherited[key]

    def note_followed(self, source: str, at: float) -> None:
        """A tailer of ``source`` had all its files in hand at ``at`` (wall clock): each file
        last written before then was open (so it has a checkpoint until read to its end) or
        passed over by the start's rules -- at the tailer's start, when it finds its live
        file still at its path with nothing before it left to read, and at its end when it
        read every file still there to its end (see
        :meth:`shipper.resume.Resume._note_read_to_end`). Not when it merely looked:
        a tailer started before its container wrote (no file to open), stopped before it
        looked again, had not opened the files written and rotated meanwhile. Saved with the
        next write, not a change worth a write of its own. A later start that finds the source
        without checkpoints (its files finished and forgotten: the container stopped) -- in
        this process, or after a restart (see :meth:`followed_at`) -- skips
        its rotated files last written before that, which this run read; a source no run
        followed has them all read (see :meth:`shipper.resume.Resume._first_seen`)."""
        self._followed[source] = at

    def followed_at(self, source: str) -> float | None:
        """When a tailer of ``source`` last had all its files in hand (:meth:`note_followed`),
        in this run or -- saved under ``followed`` -- an earlier one; None if none did (or
        its entry was forgotten, or pruned past :data:`MAX_FOLLOWED`). What a source found
        without checkpoints skips of its rotated files: also in this process, when its runner
        ended and discovery found it again (see :meth:`shipper.resume.Resume._first_seen`)."""
        return self._followed.get(source)

    def followed_sources(self) -> list[str]:
        """The sources with a ``followed`` entry (see :meth:`note_followed`)."""
        return list(self._followed)

    def forget_followed(self, source: str) -> None:
        """``source`` is gone for good (its folder was removed): its key never comes back."""
        self._followed.pop(source, None)

    def items(self) -> list[tuple[str, FileState]]:
        return list(self._files.items())

    def describe(self, source: str, service: str, container_name: str) -> None:
        """Remember what ``source`` is, for the day it is gone: discovery cannot name a
        container or pod whose folder was removed while the shipper was down (its metadata
        went with it). Saved with the next write; not a change worth a write of its own."""
        self._sources[source] = Described(service, container_name)

    def described(self, source: str) -> Described | None:
        """What :meth:`describe` (in this run or the previous one) said of ``source``."""
        return self._sources.get(source)

    def sent_to(self, source_id: str) -> str:
        """The aggregator (``host:port``) the last batch of ``source_id`` went to, when that was
        not its first choice and its lines are not all acknowledged (see :meth:`place`); ''
        otherwise."""
        return self._sent_to.get(source_id, "")

    def sent_through(self, source_id: str) -> int | None:
        """The highest record offset of the lines of ``source_id`` sent to :meth:`sent_to`;
        None when unknown (a placement saved by an older shipper, or none)."""
        return self._sent_through.get(source_id)

    def place(self, source_id: str, endpoint: str, through: int | None = None) -> bool:
        """Note that the next batch of ``source_id``, whose lines reach record offset
        ``through`` (None: unknown), goes to ``endpoint`` (``host:port``), or to its
        first-choice aggregator (''). Whether that changed what is saved: the caller then
        saves before sending, for a restart to send those lines, if unacknowledged, to the
        aggregator that may have stored them -- whose offset marks drop them -- not to the
        first choice, which would store them again (a shipper killed during a failover).

        The reach only grows while the endpoint stays (every line sent there may be read
        again); a batch within it changes nothing. A placement leaves with the save that
        has its lines acknowledged (see :meth:`snapshot`): at most one save per batch sent
        away from the first choice (none for a batch read before the last ack: see
        :meth:`reach`), none for a source on it."""
        old = self._sent_to.get(source_id, "")
        if not endpoint:
            if not old:
                return False
            del self._sent_to[source_id]
            self._sent_through.pop(source_id, None)
        elif old == endpoint:
            reach = self._sent_through.get(source_id)
            if through is None or (reach is not None and reach >= through):
                return False
            self._sent_through[source_id] = through
        else:
            self._sent_to[source_id] = endpoint
            if through is None:
                self._sent_through.pop(source_id, None)
            else:
                self._sent_through[source_id] = through
        self.dirty = True
        return True

    def next_epoch(self, dev: int, ino: int) -> int:
        """One past the highest epoch of any entry on inode ``dev``:``ino`` (finished ones
        included), 0 when there is none: the epoch new content on that inode must start at.

        The ``source_id`` is made of the inode, the first line and the epoch (see
        :func:`shipper.opening.source_id`), and the aggregator drops as resends the lines of a
        known id below its high-water mark. Content truncated in place while the shipper was
        down and written again with a first line used before on this inode (a fixed banner, a
        CSV header) had no entry of its own any more when an earlier content had taken it over
        (:meth:`take_restarted`): started at epoch 0, it got the first content's id, and the
        aggregator dropped its lines (R4s18). Epochs only grow on an inode: the content there
        last has the highest, and its entry is still here when the next one is opened."""
        prefix = f"{dev}:{ino}:"
        epochs = [
            state.epoch
            for entries in (self._files, self._finished)
            for key, state in entries.items()
            if key.startswith(prefix)
        ]
        floor = self._floors.get(prefix[:-1], (0, 0.0))[0]
        return max(max(epochs) + 1 if epochs else 0, floor)

    def keep_epoch(self, key: str) -> None:
        """Remember past which epoch new content on the inode of entry ``key`` must start,
        before that entry is dropped while its inode stays (a file truncated while the shipper
        was down and found empty at start: its old content is gone, its checkpoint too). New
        content there with the old first line (a banner) got epoch 0 and the old content's
        ``source_id`` again, and the aggregator dropped its lines as resends."""
        state = self._files.get(key)
        if state is None:
            return
        inode = key.rsplit(":", 1)[0]
        floor = self._floors.get(inode, (0, 0.0))[0]
        self._floors[inode] = (max(floor, state.epoch + 1), time.time())
        self.dirty = True

    def take_restarted(
        self, dev: int, ino: int, source: str, fp: str, keep: Collection[str] = ()
    ) -> FileState | None:
        """Remove and return the entry that :meth:`shipper.copytruncate.CopyTruncate._truncated`
        left on inode ``dev``:``ino`` of ``source`` for a file truncated in place ("read it
        from 0 under the next epoch"), when that inode now starts with another first line
        (``fp``): its new content gets its own key, and this entry stood for it.

        Left behind under the old first line, it was never opened again, and the next start
        counted it as a file deleted unread (a false ``deleted_unread`` page after every
        copytruncate or Docker ``max-file=1`` rotation). Its epoch goes on in the new entry:
        started again at epoch 0, content that comes back to the old first line later would
        get the old content's ``source_id``, and the aggregator would drop its lines as
        resends. Only such an entry is taken: nothing read or acknowledged under its epoch,
        and not one of ``keep``: a file held for a split line or ``--multiline`` record open in
        it has such an entry too, kept for a restart to read it again, and its inode is free
        for the next file once the runtime deleted it (gzip): taken, a restart skipped its
        lines."""
        prefix = f"{dev}:{ino}:"
        for key, state in self._files.items():
            if (
                key.startswith(prefix)
                and key != prefix + fp
                and key not in keep
                and state.source == source
                and state.epoch > 0
                and not (state.offset or state.acked or state.acked_to or state.cuts)
            ):
                del self._files[key]
                self.dirty = True
                return state
        return None

    def reach(self, source_id: str, endpoint: str, through: int) -> None:
        """The lines of ``source_id`` up to record offset ``through`` are read and go out
        after its batch acknowledged at ``endpoint`` (``host:port``): when that is its saved
        placement (a failover), its reach grows to them in memory, saved with the write the
        acknowledgement makes anyway. Their own :meth:`place` then changes nothing: away
        from the first choice a batch read ahead costs no write of its own. Saved before
        they are sent, as a :meth:`place` would save it; if they go elsewhere, that
        :meth:`place` saves the change first, and lines of the reach never sent are read
        again at a restart and sent there, where nothing stored them."""
        if self._sent_to.get(source_id) == endpoint:
            self.place(source_id, endpoint, through)

    def _prune_placements(self) -> None:
        """Drop the placements no restart needs: of files without a checkpoint (never read
        again), and of files whose checkpoint has every line sent there acknowledged (lines
        at or below :attr:`FileState.acked` are not sent again) -- a file idle on its failover
        aggregator sends its next lines, after a restart too, to its first choice. Taken in
        the same snapshot as that checkpoint: never on disk without it."""
        acked: dict[str, int] = {}
        for state in self._files.values():
            # Two entries of one id (a copy followed): the one acknowledged least decides.
            acked[state.source_id] = min(acked.get(state.source_id, MAX_OFFSET), state.acked)
        through = self._sent_through
        self._sent_to = {
            sid: where
            for sid, where in self._sent_to.items()
            if sid in acked and (sid not in through or through[sid] > acked[sid])
        }
        self._sent_through = {k: v for k, v in through.items() if k in self._sent_to}

    def _prune_floors(self) -> None:
        """Drop epochs remembered longer than :data:`EPOCH_FLOOR_SECONDS` (the inode has long
        been reused or freed) and the oldest beyond :data:`MAX_EPOCH_FLOORS`."""
        cutoff = time.time() - EPOCH_FLOOR_SECONDS
        kept = sorted(
            ((k, v) for k, v in self._floors.items() if v[1] >= cutoff), key=lambda kv: kv[1][1]
        )
        self._floors = dict(kept[-MAX_EPOCH_FLOORS:])

    def snapshot(self) -> bytes:
        """The document to persist, taken in the event loop (cheap) before writing elsewhere."""
        recent = time.time() - FINISHED_SAVE_SECONDS
        for key in [k for k, s in self._finished.items() if s.updated < recent]:
            del self._finished[key]
        doc: dict[str, object] = {
            "version": FORMAT_VERSION,
            "files": {k: _entry(v) for k, v in self._files.items()},
        }
        if self._finished:
            doc["finished"] = {k: _entry(v) for k, v in self._finished.items()}
        having = {s.source for s in self._files.values()}
        if len(self._sources) > 2 * len(having) + MAX_FINISHED:
            # Sources gone without a file left. Not at every save: one just found has no
            # file entry until its first file is opened, moments later.
            self._sources = {k: v for k, v in self._sources.items() if k in having}
        named = {k: v._asdict() for k, v in self._sources.items() if k in having}
        if named:
            doc["sources"] = named
        if len(self._followed) > MAX_FOLLOWED:
            newest = sorted(self._followed.items(), key=lambda kv: kv[1])[-MAX_FOLLOWED:]
            self._followed = dict(newest)
        # Always written, also empty: its presence tells a later start that no source
        # missing from it was ever followed (an older shipper's registry has none).
        doc["followed"] = {k: round(v, 3) for k, v in self._followed.items()}
        if self._sent_to:
            self._prune_placements()
            if self._sent_to:
                doc["sent_to"] = dict(self._sent_to)
            if self._sent_through:
                doc["sent_through"] = dict(self._sent_through)
        self._prune_floors()
        if self._floors:
            doc["epochs"] = {k: list(v) for k, v in self._floors.items()}
        self.dirty = False
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def write(self, data: bytes) -> None:
        """Atomically replace the registry file with ``data``: tmp -> fsync -> rename.

        A nearly full disk makes ``write`` return short without an error: every byte is written
        or :class:`OSError` is raised (and the partial tmp removed), never a truncated registry
        renamed into place."""
        tmp = self.state_dir / ".checkpoints.json.tmp"
        # O_NONBLOCK: a FIFO left at the tmp path fails (ENXIO) instead of waiting for a reader.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def save(self) -> None:
        self.write(self.snapshot())
